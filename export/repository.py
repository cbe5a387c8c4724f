"""The serving repository on disk: `<root>/<name>/<version>/model.onnx` + `metadata.json` + `model_card.md` beside `config.pbtxt`
and `labels.txt`, as Triton reads it (it loads model.onnx and leaves the version's other files alone).

Versions are directories named by ASCII digits only (what Triton parses as an int64; `²` or
`٩` are not versions), and whatever the repository holds is read strictly: a version that is
not a directory, or a sidecar that is not what this code writes, is a `ModelFileError`
naming the file, never a guess. A version appears all at once (staged, fsynced, renamed)
under an exclusive lock that one publisher holds at a time.

The repository is shared by runs of different names, and a name can be another run's variant
(`<name>-int8`), so a model directory records what it holds in `.cifar-job.json` (a dot-file:
Triton reads only `config.pbtxt` and the numbered directories there), and a publish of another
kind into it is refused. Triton loads every directory of the root at start-up and refuses to
start on one that is not a model, so a model directory is made only when its first version goes
in, under the lock (which is therefore a file beside it, `.<name>.publish.lock`: Triton loads
directories only), and a publish that fails in between removes it again. Every file read here is
opened without blocking and only if it is a regular file: a FIFO or device in the repository is
one error line, never a hang.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.core.atomic import atomic_path, fsync_dir, storage_errors
from job.core.bounded import read_bounded
from job.core.errors import ModelFileError
from job.core.records import Record, parse_record

log = logging.getLogger(__name__)

Seal = Callable[[Path], None]  # adds files to a staged version before it is published (export/signing.py signs it)

MODEL_FILE = "model.onnx"
SIDECAR = "metadata.json"
MODEL_CARD = "model_card.md"
STAGING_PREFIX = ".staging-"
LOCK_SUFFIX = ".publish.lock"
KIND_FILE = ".cifar-job.json"
MAX_SIDECAR_BYTES = 1 << 20
MAX_KIND_BYTES = 4096

SIGNATURE_SCHEMA = 3  # the first sidecar schema whose signature is tensor specs (export/publish.py SCHEMA_VERSION)

_VERSION = re.compile(r"[1-9][0-9]{0,17}")  # ASCII digits, no leading zero, fits int64


@dataclass(frozen=True)
class Kind(Record):
    """What a model directory holds: the float model `model`, or its `variant` (int8, fp16), served as `<model>-<variant>`."""

    model: str
    variant: str | None

    @property
    def directory(self) -> str:
        return self.model if self.variant is None else f"{self.model}-{self.variant}"

    def __str__(self) -> str:
        return f"the float model {self.model}" if self.variant is None else f"the {self.variant} variant of {self.model}"


def read_kind(model_dir: Path) -> Kind | None:
    """The model directory's record of what it holds; None if it has none."""
    path = model_dir / KIND_FILE
    if not os.path.lexists(path):
        return None
    where = f"model repository {path}"
    kind = parse_record(Kind, read_bounded(path, MAX_KIND_BYTES, ModelFileError, where), where)
    if kind.directory != model_dir.name:
        raise ModelFileError(f"{where}: names another model directory, not {model_dir.name}")
    return kind


def check_kind(model_dir: Path, kind: Kind) -> None:
    """Refuse to publish `kind` into a model directory that holds another kind, or versions that no record vouches for.

    A directory with versions but no record was not published by this cifar-job (another tool, or a
    cifar-job from before kinds were recorded): nothing says those versions are of `kind`, so the
    operator decides, and the message says how to record it if they are.
    """
    found = read_kind(model_dir) if _exists(model_dir) else None
    if found is None and versions(model_dir):
        record = json.dumps(dataclasses.asdict(kind))
        raise ModelFileError(
            f"model repository {model_dir}: holds versions but no {KIND_FILE} saying what they are; refusing to publish {kind} "
            f"into it (if they are that, write {record} to {model_dir / KIND_FILE})"
        )
    if found is not None and found != kind:
        raise ModelFileError(f"model repository {model_dir}: holds {found}; refusing to publish {kind} into it (choose another publish.model_name)")


def _exists(model_dir: Path) -> bool:
    """Whether the model directory is there; anything else by its name (a file, a link, a FIFO) is refused."""
    if not os.path.lexists(model_dir):
        return False
    if model_dir.is_symlink() or not model_dir.is_dir():
        raise ModelFileError(f"model repository {model_dir}: a model must be a directory (not a file or link)")
    return True


def versions(model_dir: Path) -> list[int]:
    """Published versions, ascending ([] while the model directory is not there); a version name that is not a directory is refused."""
    if not _exists(model_dir):
        return []
    found = []
    for entry in model_dir.iterdir():
        if _VERSION.fullmatch(entry.name):
            if entry.is_symlink() or not entry.is_dir():
                raise ModelFileError(f"model repository {entry}: a version must be a directory (not a file or link)")
            found.append(int(entry.name))
    return sorted(found)


def read_sidecar(version_dir: Path) -> dict[str, Any] | None:
    """The version's metadata.json, checked for what this code relies on and, from schema 3 on, its signature; None if it has none."""
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
        and (_schema(sidecar) < SIGNATURE_SCHEMA or _is_signature(sidecar.get("signature")))
    )
    if not valid:
        raise ModelFileError(f"sidecar {path}: not a metadata.json written by cifar-job (version, validated_sha256, metrics, signature)")
    return sidecar


def _is_score(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1


def _schema(sidecar: dict[str, Any]) -> int:
    """The sidecar's schema_version; 0 for one without (the first sidecars), so that old versions stay readable."""
    schema = sidecar.get("schema_version", 0)
    return schema if isinstance(schema, int) and not isinstance(schema, bool) else 0


def _is_signature(signature: Any) -> bool:
    """Tensor specs of inputs and outputs, the pixel conventions as text, and the class names, as export/publish.py writes them."""
    if not isinstance(signature, dict):
        return False
    tensors, names = (signature.get("inputs"), signature.get("outputs")), signature.get("class_names")
    return (
        all(isinstance(specs, list) and specs and all(map(_is_tensor_spec, specs)) for specs in tensors)
        and all(isinstance(signature.get(key), str) for key in ("pixel_layout", "channels", "scaling"))
        and isinstance(names, list)
        and all(isinstance(name, str) for name in names)
    )


def _is_tensor_spec(spec: Any) -> bool:
    """`{"name", "type": "tensor", "tensor-spec": {"dtype", "shape"}}`, each dimension a size or -1 (dynamic)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("tensor-spec"), dict):
        return False
    tensor = spec["tensor-spec"]
    shape = tensor.get("shape")
    return (
        isinstance(spec.get("name"), str)
        and spec.get("type") == "tensor"
        and isinstance(tensor.get("dtype"), str)
        and isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape)
    )


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


def lock_path(model_dir: Path) -> Path:
    """`<root>/.<name>.publish.lock`: beside the model directory, which must not exist before its first version."""
    return model_dir.parent / f".{model_dir.name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def locked(model_dir: Path) -> Iterator[None]:
    """An exclusive flock on the model's lock file; the kernel drops it if the process dies.

    Under the lock no one else is writing the model directory, so any staging directory or
    temporary file in it is a crashed publish's leftover and is removed first, and so is the
    directory itself if that leaves nothing in it but its record (a crash before its first version):
    the directory is made only with its first version, so none is left that a server would refuse.
    """
    fd = _open_lock(lock_path(model_dir))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _exists(model_dir):
            _remove_leftovers(model_dir)
        yield
    finally:
        os.close(fd)  # drops the flock


def _open_lock(path: Path) -> int:
    """The lock file, created if missing, opened without following a link or blocking (a FIFO, a device), and a regular file."""
    try:
        with storage_errors(path):
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ModelFileError(f"model repository {path}: cannot open the publish lock ({e.strerror}); it must be a regular file") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ModelFileError(f"model repository {path}: the publish lock must be a regular file (not a FIFO, device, link or directory)")
    return fd


def _remove_leftovers(model_dir: Path) -> None:
    """Staging directories and temporary files, then the model directory itself if that leaves nothing in it but its record."""
    for stale in [*model_dir.glob(STAGING_PREFIX + "*"), *model_dir.glob(".*.tmp")]:  # a version; a model-level file
        log.warning("removing %s, left by an interrupted publish", stale)
        _remove(stale)
    if {p.name for p in model_dir.iterdir()} <= {KIND_FILE}:  # made by a publish that died before its first version
        log.warning("removing %s, a model directory without a version (left by an interrupted publish)", model_dir)
        _remove(model_dir)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def add_version(
    model_dir: Path, kind: Kind, version: int, files: dict[str, bytes], model_files: dict[str, bytes], seal: Seal | None = None
) -> None:
    """Publish `files` (sealed by `seal`) as `version` of `kind`, then (re)write the model-level files; call under `locked`,
    after `check_kind`.

    The model directory is made here, when its first version is ready, never earlier; its record
    comes first, so from then on it says what it holds. The model-level files follow the version's
    rename, so a crash in between leaves the new version beside the previous files (whole; Triton
    reads them on its next poll) and the rerun, which finds the version published, rewrites them.
    A directory this call made is removed again on any failure: it holds only what it wrote.
    """
    made = not _exists(model_dir)
    if made:
        with storage_errors(model_dir):
            model_dir.mkdir()
            fsync_dir(model_dir.parent)
    try:
        write_model_files(model_dir, {KIND_FILE: kind.to_json().encode()})
        write_version(model_dir / str(version), files, seal=seal)
        write_model_files(model_dir, model_files)
    except BaseException:
        if made:
            _remove(model_dir)
        raise


def write_version(target: Path, files: dict[str, bytes], seal: Seal | None = None) -> None:
    """Write the files into a staging directory beside `target`, let `seal` add its own (a signature), fsync everything,
    then rename it to `target`. Call under `locked`. On any failure (a full disk included) the staging directory is removed.

    The staged version already has its final name (`.staging-XXXX/<version>`), so whatever `seal` records about the
    directory names the version it becomes.
    """
    with storage_errors(target):
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target.parent))
        staged = staging / target.name
        try:
            staged.mkdir(mode=0o755)
            for name, data in files.items():
                (staged / name).write_bytes(data)
            if seal is not None:
                seal(staged)
            for path in staged.iterdir():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
            os.chmod(staged, 0o755)  # whatever the umask; the server may run as another user
            fsync_dir(staged)
            os.rename(staged, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(target.parent)
        staging.rmdir()


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


