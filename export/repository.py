"""The serving repository on disk: `<root>/<name>/<version>/model.onnx` + `metadata.json` beside `config.pbtxt` and `labels.txt`, as Triton reads it.

Versions are directories named by ASCII digits only (what Triton parses as an int64; `²` or
`٩` are not versions), and whatever the repository holds is read strictly: a version that is
not a directory, or a sidecar that is not what this code writes, is a `ModelFileError`
naming the file, never a guess. A version appears all at once (staged, fsynced, renamed)
under an exclusive lock that one publisher holds at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from job.atomic import atomic_path, fsync_dir, storage_errors
from job.bounded import read_bounded
from job.errors import ModelFileError

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
SIDECAR = "metadata.json"
STAGING_PREFIX = ".staging-"
LOCK_FILE = ".publish.lock"
MAX_SIDECAR_BYTES = 1 << 20

_VERSION = re.compile(r"[1-9][0-9]{0,17}")  # ASCII digits, no leading zero, fits int64


def versions(model_dir: Path) -> list[int]:
    """Published versions, ascending; a version name that is not a directory is refused."""
    if not model_dir.is_dir():
        return []
    found = []
    for entry in model_dir.iterdir():
        if _VERSION.fullmatch(entry.name):
            if entry.is_symlink() or not entry.is_dir():
                raise ModelFileError(f"model repository {entry}: a version must be a directory (not a file or link)")
            found.append(int(entry.name))
    return sorted(found)


def read_sidecar(version_dir: Path) -> dict[str, Any] | None:
    """The version's metadata.json, checked for what this code relies on; None if it has none."""
    path = version_dir / SIDECAR
    if not path.exists():
        return None
    try:
        sidecar = json.loads(read_bounded(path, MAX_SIDECAR_BYTES, ModelFileError, f"sidecar {path}"))
    except (ValueError, RecursionError):
        sidecar = None
    metrics = sidecar.get("metrics") if isinstance(sidecar, dict) else None
    valid = (
        isinstance(metrics, dict)
        and sidecar.get("version") == int(version_dir.name)
        and isinstance(sidecar.get("validated_sha256"), str)
        and all(_is_score(metrics.get(name)) for name in ("accuracy", "weighted_f1"))
    )
    if not valid:
        raise ModelFileError(f"sidecar {path}: not a metadata.json written by cifar-job (version, validated_sha256, metrics)")
    return sidecar


def _is_score(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1


def latest(model_dir: Path) -> dict[str, Any] | None:
    """The sidecar of the newest version that has one; None if nothing is published."""
    for version in reversed(versions(model_dir)):
        sidecar = read_sidecar(model_dir / str(version))
        if sidecar is not None:
            return sidecar
        log.warning("published version %s has no %s; skipping it", model_dir / str(version), SIDECAR)
    return None


def version_of(model_dir: Path, validated_sha256: str) -> int | None:
    """The version this very model was already published as (a rerun after a crash), if any."""
    for version in versions(model_dir):
        sidecar = read_sidecar(model_dir / str(version))
        if sidecar is not None and sidecar["validated_sha256"] == validated_sha256:
            return version
    return None


@contextlib.contextmanager
def locked(model_dir: Path) -> Iterator[None]:
    """An exclusive flock on `<model_dir>/.publish.lock`; the kernel drops it if the process dies.

    Under the lock no one else is staging, so any staging directory or temporary file is a
    crashed publish's leftover and is removed first.
    """
    with storage_errors(model_dir / LOCK_FILE), open(model_dir / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for stale in [*model_dir.glob(STAGING_PREFIX + "*"), *model_dir.glob(".*.tmp")]:  # a version; a model-level file
                log.warning("removing %s, left by an interrupted publish", stale)
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_version(target: Path, files: dict[str, bytes]) -> None:
    """Write the files into a staging directory beside `target`, fsync everything, then rename it to `target`.

    Call under `locked`. On any failure (a full disk included) the staging directory is removed.
    """
    with storage_errors(target):
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target.parent))
        try:
            for name, data in files.items():
                with open(staging / name, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(staging, 0o755)  # mkdtemp makes it 0700; the server may run as another user
            fsync_dir(staging)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(target.parent)


def check_model_files(model_dir: Path, names: Iterable[str]) -> None:
    """Refuse a model-level file that is a directory or a link before anything is published."""
    for name in names:
        path = model_dir / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise ModelFileError(f"model repository {path}: must be a regular file (not a directory or link)")


def write_model_files(model_dir: Path, files: dict[str, bytes]) -> None:
    """Replace the model-level files (config.pbtxt, labels.txt) one by one, each atomically; call under `locked`.

    Written after the version's rename and on every publish, so a crash in between leaves the
    new version beside the previous files (whole; Triton reads them on its next poll) and the
    rerun, which finds the version already published, rewrites them.
    """
    for name, data in files.items():
        with atomic_path(model_dir / name) as tmp:
            tmp.write_bytes(data)
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the server may run as another user
