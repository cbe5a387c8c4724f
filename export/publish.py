"""Publish a validated model into a serving repository: `<root>/<name>/<version>/model.onnx` + `metadata.json`.

Triton and KServe serve this layout as it is (integer versions, highest is latest). A version
appears all at once: its files are written and fsynced in a hidden staging directory beside
the versions, which is then renamed to the next integer. A crash leaves at most a stale
staging directory, which the next publish removes, and never touches a published version.
Publishers of one model take a lock file first, so two runs cannot claim the same version,
and the gate is judged again under that lock against the model published at that moment.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from export.gate import GateResult, check_gate
from export.modelfile import load_onnx, metadata, metadata_json, read_model, set_metadata, sha256, sha256_file
from job.atomic import atomic_write, fsync_dir
from job.config import Config, PublishConfig
from job.errors import ConfigError, ModelFileError
from job.model import INPUT_NAME, OUTPUT_NAME
from job.paths import RunPaths

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
SIDECAR = "metadata.json"
STAGING_PREFIX = ".staging-"
LOCK_FILE = ".publish.lock"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PublishResult:
    name: str
    version: int
    directory: str
    sha256: str  # of the published model.onnx (metrics stamped in)
    validated_sha256: str  # of the run's model.onnx that validation measured
    size_bytes: int
    newly_published: bool  # False: this model was already published as `version`
    duration_s: float

    def summary(self) -> str:
        verb = "published" if self.newly_published else "already published"
        return f"{verb}: {self.directory}/{MODEL_FILE} (version {self.version}, sha256 {self.sha256[:12]})"


def versions(model_dir: Path) -> list[int]:
    """Published versions, ascending: the integer-named directories, as Triton sees them."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"))


def read_sidecar(version_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((version_dir / SIDECAR).read_text())
    except (OSError, ValueError):
        return None


def latest(cfg: PublishConfig) -> dict[str, Any] | None:
    """The sidecar of the newest version that has a readable one; None if nothing is published."""
    model_dir = cfg.root / cfg.model_name
    for version in reversed(versions(model_dir)):
        sidecar = read_sidecar(model_dir / str(version))
        if sidecar is not None:
            return sidecar
        log.warning("published version %s has no readable %s; skipping it", model_dir / str(version), SIDECAR)
    return None


def publish_model(config: Config, paths: RunPaths) -> PublishResult:
    """Publish the run's validated model.onnx as the next version, if it passes the gate now."""
    began = time.monotonic()
    metrics = _read_metrics(paths)
    blob = read_model(paths.onnx)
    validated = metrics["model"]["sha256"]
    if sha256(blob) != validated:
        raise ModelFileError(f"model {paths.onnx}: changed since it was validated (metrics.json); run `cifar-job validate` again")
    model = load_onnx(blob, str(paths.onnx))

    model_dir = config.publish.root / config.publish.model_name
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"config key publish.root: cannot create {model_dir} ({e.strerror})") from None
    with _locked(model_dir):
        _remove_stale_staging(model_dir)
        version = _version_of(model_dir, validated)
        newly = version is None
        if newly:
            version = _publish_new(config, paths, metrics, model, model_dir)

    published = model_dir / str(version) / MODEL_FILE
    result = PublishResult(
        name=config.publish.model_name,
        version=version,
        directory=str(published.parent),
        sha256=sha256_file(published),
        validated_sha256=validated,
        size_bytes=published.stat().st_size,
        newly_published=newly,
        duration_s=round(time.monotonic() - began, 3),
    )
    atomic_write(paths.publish_result, json.dumps(asdict(result), indent=2) + "\n")
    log.info(result.summary())
    return result


def _publish_new(config: Config, paths: RunPaths, metrics: dict[str, Any], model: Any, model_dir: Path) -> int:
    """Judge the gate against what is published now, then publish as the next version; call under the lock."""
    gate = check_gate(metrics, config.gate, latest(config.publish))
    gate.enforce("nothing published")
    version = max(versions(model_dir), default=0) + 1
    provenance = metadata(model)
    set_metadata(model, {"test_metrics": json.dumps(_test_metrics(metrics))})
    stamped = model.SerializeToString()
    sidecar = _sidecar(config, paths, metrics, gate, version, stamped, provenance)
    _publish_version(model_dir / str(version), {MODEL_FILE: stamped, SIDECAR: (json.dumps(sidecar, indent=2) + "\n").encode()})
    return version


def _read_metrics(paths: RunPaths) -> dict[str, Any]:
    try:
        return json.loads(paths.metrics_json.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{paths.metrics_json}: no such file; run `cifar-job validate` first") from None
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{paths.metrics_json}: unreadable ({e}); run `cifar-job validate` again") from None


def _version_of(model_dir: Path, validated_sha256: str) -> int | None:
    """The version this very model was already published as (a rerun after a crash), if any."""
    for version in versions(model_dir):
        sidecar = read_sidecar(model_dir / str(version))
        if sidecar is not None and sidecar.get("validated_sha256") == validated_sha256:
            return version
    return None


@contextlib.contextmanager
def _locked(model_dir: Path) -> Iterator[None]:
    """An exclusive flock on `<model_dir>/.publish.lock`; the kernel drops it if the process dies."""
    with open(model_dir / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_stale_staging(model_dir: Path) -> None:
    """Under the lock no one else is staging, so any staging directory is a crashed publish's leftover."""
    for stale in model_dir.glob(STAGING_PREFIX + "*"):
        log.warning("removing %s, left by an interrupted publish", stale)
        shutil.rmtree(stale, ignore_errors=True)


def _publish_version(target: Path, files: dict[str, bytes]) -> None:
    """Write the files into a staging directory beside `target`, fsync everything, then rename it to `target`."""
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target.parent))
    for name, data in files.items():
        _write_synced(staging / name, data)
    os.chmod(staging, 0o755)  # mkdtemp makes it 0700; the server may run as another user
    fsync_dir(staging)
    os.rename(staging, target)
    fsync_dir(target.parent)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _test_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline test metrics, as stamped into the published model and its sidecar."""
    keys = ("accuracy", "macro_f1", "weighted_f1", "per_class", "confusion_matrix")
    return {"images": metrics["data"]["images"], **{k: metrics[k] for k in keys}, "validated_at": metrics["validated_at"]}


def _sidecar(
    config: Config, paths: RunPaths, metrics: dict[str, Any], gate: GateResult, version: int, blob: bytes, meta: dict[str, str]
) -> dict[str, Any]:
    """metadata.json: what a consumer checks (sha256), feeds (signature), expects (metrics) and traces (provenance)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "name": config.publish.model_name,
        "version": version,
        "file": MODEL_FILE,
        "sha256": sha256(blob),
        "size_bytes": len(blob),
        "validated_sha256": metrics["model"]["sha256"],
        "published_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "run_dir": str(paths.root.resolve()),
        "signature": {
            "input": {"name": INPUT_NAME, "layout": meta.get("input_layout", ""), "scaling": meta.get("input_scaling", "")},
            "output": {"name": OUTPUT_NAME, "meaning": meta.get("output_meaning", "")},
        },
        "class_names": metrics["class_names"],
        "metrics": _test_metrics(metrics),
        "gate": gate.to_json(),
        "provenance": {
            **{k: meta.get(k, "") for k in ("architecture", "onnx_opset", "training_config_digest", "dataset_sha256", "weights_sha256")},
            "versions": metadata_json(meta, "versions"),
        },
    }
