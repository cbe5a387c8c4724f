"""The publish stage: measure the run's model again, judge it under the repository lock, and publish it as the next version.

Nothing read back from a file decides what is published: metrics.json can be edited, so
publishing measures the model itself on the test split of the data set it was trained on
(seconds) and stamps those numbers into the published model and its sidecar. The gate is
judged under the lock against the model published at that moment. Triton and KServe serve
the layout as it is (export/repository.py), with the model-level `config.pbtxt` and `labels.txt`
derived from the graph (export/model_config.py) and rewritten on every publish, after the version.
`publish_measured` is the one way a measured model enters the repository; the variants stage
publishes through it too, each model under the `Kind` its directory records (export/repository.py),
so a run can never publish into a directory that holds another run's model or variant.
"""

from __future__ import annotations

import datetime
import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export import repository
from export.gate import GateResult, judge
from export.model_config import CONFIG_FILE, LABELS_FILE, config_pbtxt, labels_txt
from export.modelfile import file_digest, load_onnx, metadata, metadata_json, read_model, set_metadata, sha256, sha256_of
from export.repository import MODEL_FILE, SIDECAR, Kind
from export.scores import Measurement, measure, test_set_record
from job.core.atomic import atomic_write, storage_errors
from job.config.settings import Config
from job.models.contract import INPUT_NAME, OUTPUT_NAME
from job.data.dataset import CifarData, load_dataset
from job.core.errors import ConfigError
from job.core.paths import RunPaths
from job.core.records import Record, read_marker
from job.stage import Stage

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: metrics measured by publish itself, with the test set they were measured on


@dataclass(frozen=True)
class PublishResult(Record):
    name: str
    version: int
    directory: str
    sha256: str  # of the published model.onnx (metrics stamped in)
    validated_sha256: str  # of the run's model.onnx that publishing measured
    size_bytes: int
    newly_published: bool  # False: this model was already published as `version`
    duration_s: float

    def summary(self) -> str:
        verb = "published" if self.newly_published else "already published"
        return f"{verb}: {self.directory}/{MODEL_FILE} (version {self.version}, sha256 {self.sha256[:12]})"


def publish_model(config: Config, paths: RunPaths, data: CifarData | None = None) -> PublishResult:
    """Measure the run's model.onnx, and publish it as the next version if it passes the gate now."""
    began = time.monotonic()
    where = str(paths.onnx)
    blob = read_model(paths.onnx)
    model = load_onnx(blob, where)
    kind = Kind(config.publish.model_name, None)
    check_model_dir(config, kind)
    data = data if data is not None else load_dataset(config.data)
    test_set = test_set_record(metadata(model), data, config.validate_.allow_other_test_set, where)
    measured = measure(blob, data, config.validate_.device, config.validate_.batch_size, where)
    result = publish_measured(
        config, paths, kind, model, measured, test_set, judge_now=lambda published: judge(measured.scores(), config.gate, published), began=began
    )
    atomic_write(paths.publish_result, result.to_json())
    log.info(result.summary())
    return result


def publish_measured(
    config: Config,
    paths: RunPaths,
    kind: Kind,
    model: Any,
    measured: Measurement,
    test_set: dict[str, Any],
    judge_now: Callable[[Path], GateResult],
    began: float,
    extra: Mapping[str, Any] | None = None,
) -> PublishResult:
    """Under the lock, in the model directory of `kind` (holding that kind, or not there yet): reuse the version this
    model already has, or judge the gate now and publish the next one; then (re)write the model-level files.
    `extra` joins the sidecar (a variant's provenance and parity)."""
    model_dir = config.publish.root / kind.directory
    files = _model_files(config, model, model_dir.name, measured.class_names, str(model_dir))
    with repository.locked(model_dir):
        repository.check_kind(model_dir, kind)
        repository.check_model_files(model_dir, files)
        version = repository.version_of(model_dir, measured.model_sha256)
        newly = version is None
        if newly:
            version, version_files = _new_version(config, paths, measured, test_set, model, model_dir, judge_now(model_dir), extra or {})
            repository.add_version(model_dir, kind, version, version_files, files)
        else:
            repository.write_model_files(model_dir, files)

    published = model_dir / str(version) / MODEL_FILE
    digest, size = file_digest(published)
    return PublishResult(
        name=model_dir.name,
        version=version,
        directory=str(published.parent),
        sha256=digest,
        validated_sha256=measured.model_sha256,
        size_bytes=size,
        newly_published=newly,
        duration_s=round(time.monotonic() - began, 3),
    )


def _model_files(config: Config, model: Any, name: str, class_names: tuple[str, ...], where: str) -> dict[str, bytes]:
    """config.pbtxt from the graph (the largest batch it is measured at is the largest Triton may form), and labels.txt."""
    return {
        CONFIG_FILE: config_pbtxt(model, name, config.validate_.batch_size, where).encode(),
        LABELS_FILE: labels_txt(class_names).encode(),
    }


def check_model_dir(config: Config, kind: Kind) -> None:
    """Before any work: the repository root made and proven writable (the model directory too if it is there: it is
    made only with its first version), and the model directory holding `kind` or nothing yet."""
    model_dir = config.publish.root / kind.directory
    try:
        with storage_errors(model_dir):
            config.publish.root.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=model_dir if model_dir.is_dir() else config.publish.root).close()
    except OSError as e:
        raise ConfigError(f"config key publish.root: {model_dir} is not a writable directory ({e.strerror})") from None
    repository.check_kind(model_dir, kind)


def _new_version(
    config: Config, paths: RunPaths, measured: Measurement, test_set: dict[str, Any], model: Any, model_dir: Path, gate: GateResult,
    extra: Mapping[str, Any],
) -> tuple[int, dict[str, bytes]]:
    """Enforce the gate judged against what is published now, then the next version's number and files; call under the lock."""
    gate.enforce("nothing published")
    version = max(repository.versions(model_dir), default=0) + 1
    provenance = metadata(model)
    headline = _test_metrics(measured, test_set)
    set_metadata(model, {"test_metrics": json.dumps(headline)})
    stamped = model.SerializeToString()
    sidecar = {**_sidecar(model_dir.name, paths, measured, headline, gate, version, stamped, provenance), **extra}
    return version, {MODEL_FILE: stamped, SIDECAR: (json.dumps(sidecar, indent=2) + "\n").encode()}


def _test_metrics(measured: Measurement, test_set: dict[str, Any]) -> dict[str, Any]:
    """The headline test metrics, as stamped into the published model and its sidecar."""
    return {
        "images": measured.images,
        "accuracy": measured.accuracy,
        "macro_f1": measured.macro_f1,
        "weighted_f1": measured.weighted_f1,
        "per_class": measured.per_class,
        "confusion_matrix": measured.confusion_matrix,
        "test_set": test_set,
        "validated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _sidecar(
    name: str, paths: RunPaths, measured: Measurement, headline: dict[str, Any], gate: GateResult, version: int, blob: bytes, meta: dict[str, str]
) -> dict[str, Any]:
    """metadata.json: what a consumer checks (sha256), feeds (signature), expects (metrics) and traces (provenance)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "file": MODEL_FILE,
        "sha256": sha256(blob),
        "size_bytes": len(blob),
        "validated_sha256": measured.model_sha256,
        "published_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "run_dir": str(paths.root.resolve()),
        "signature": {
            "input": {"name": INPUT_NAME, "layout": meta.get("input_layout", ""), "scaling": meta.get("input_scaling", "")},
            "output": {"name": OUTPUT_NAME, "meaning": meta.get("output_meaning", "")},
        },
        "class_names": list(measured.class_names),
        "metrics": headline,
        "gate": gate.to_json(),
        "provenance": {
            **{k: meta.get(k, "") for k in ("architecture", "onnx_opset", "training_config_digest", "dataset_sha256", "dataset_fingerprint", "weights_sha256")},
            "versions": metadata_json(meta, "versions"),
        },
    }


def is_published(config: Config, paths: RunPaths) -> bool:
    """publish.json of the run's current model.onnx, and that version still in the configured repository, unchanged."""
    marker = read_marker(paths.publish_result)
    if marker.get("validated_sha256") != sha256_of(paths.onnx) or not isinstance(marker.get("directory"), str):
        return False
    where = Path(marker["directory"])
    model_dir = config.publish.root / config.publish.model_name
    return where.parent == model_dir and marker.get("sha256") == sha256_of(where / MODEL_FILE) and (model_dir / CONFIG_FILE).is_file()


STAGE = Stage("publish", run=lambda inputs: publish_model(inputs.config, inputs.paths, inputs.data()), is_complete=is_published)
