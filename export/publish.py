"""The publish stage: measure the run's model again, judge it under the repository lock, and publish it as the next version.

Nothing read back from a file decides what is published: metrics.json can be edited, so
publishing measures the model itself on the test split of the data set it was trained on
(in `cifar-job run`, validate's in-memory measurement of the same bytes: export/scores.py) and stamps those numbers into the published model and its sidecar. The gate is
judged under the lock against the model published at that moment. Triton and KServe serve
the layout as it is (export/repository.py), with the model-level `config.pbtxt` and `labels.txt`
derived from the graph (export/model_config.py) and rewritten on every publish, after the version.
`publish_measured` is the one way a measured model enters the repository; the variants stage
publishes through it too, each model under the `Kind` its directory records (export/repository.py),
so a run can never publish into a directory that holds another run's model or variant.

A version describes itself: beside model.onnx, metadata.json carries a machine-readable signature
read from the graph (MLflow's tensor specs, plus the contract's pixel layout, channels and
scaling, and the class names in output order), and model_card.md is the run's model card made
from what publish just measured (export/report.py); all three enter in one staged rename. With a
signing key (publish.signing_key) the staged version is signed there too, with a signed record of
the gate's measurement (export/signing.py): a version is published signed or not at all.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from export import report, repository, signing, software
from export.gate import GateResult, judge
from export.model_config import CONFIG_FILE, LABELS_FILE, config_pbtxt, labels_txt
from export.modelfile import file_digest, load_onnx, metadata, metadata_json, read_model, set_metadata, sha256, sha256_of
from export.repository import MODEL_CARD, MODEL_FILE, SIDECAR, Kind
from export.scores import Measurement, measure, test_set_record
from job.core.atomic import atomic_write, storage_errors
from job.config.settings import Config
from job.models.contract import CHANNELS, PIXEL_LAYOUT, SCALING
from job.data.dataset import CifarData, load_dataset
from job.core.errors import ConfigError
from job.core.paths import RunPaths
from job.core.records import Record, read_marker
from job.stage import Stage


SCHEMA_VERSION = 3  # 2: metrics measured by publish itself, with their test set; 3: the signature as tensor specs read from the graph


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
    variant: Mapping[str, Any] | None = None,
) -> PublishResult:
    """Under the lock, in the model directory of `kind` (holding that kind, or not there yet): reuse the version this
    model already has, or judge the gate now and publish the next one; then (re)write the model-level files.
    `variant` (a variant's provenance and parity) joins the sidecar as `variant` and heads the model card."""
    model_dir = config.publish.root / kind.directory
    files = _model_files(config, model, model_dir.name, measured.class_names, str(model_dir))
    signer = signing.signer(config.publish)
    with repository.locked(model_dir):
        repository.check_kind(model_dir, kind)
        repository.check_model_files(model_dir, files)
        version = repository.version_of(model_dir, measured.model_sha256)
        newly = version is None
        if newly:
            version, version_files, record = _new_version(config, paths, measured, test_set, model, model_dir, judge_now(model_dir), variant)
            seal = functools.partial(signing.seal, signing=signer, statement=record) if signer is not None else None
            repository.add_version(model_dir, kind, version, version_files, files, seal=seal)
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
    signing.signer(config.publish)  # the signing key and certificates, checked before anything is measured


def _new_version(
    config: Config, paths: RunPaths, measured: Measurement, test_set: dict[str, Any], model: Any, model_dir: Path, gate: GateResult,
    variant: Mapping[str, Any] | None,
) -> tuple[int, dict[str, bytes], dict[str, Any]]:
    """Enforce the gate judged against what is published now, then the next version's number, its files and the in-toto
    statement of its gate record; call under the lock."""
    gate.enforce("nothing published")
    version = max(repository.versions(model_dir), default=0) + 1
    provenance = metadata(model)
    headline = _test_metrics(measured, test_set)
    set_metadata(model, {"test_metrics": json.dumps(headline)})
    stamped = model.SerializeToString()
    sidecar = _sidecar(model_dir.name, paths, measured, headline, gate, version, stamped, model)
    if variant:
        sidecar["variant"] = variant
    card = _model_card(config, paths, measured, test_set, gate, provenance, sidecar)
    record = signing.gate_statement(sidecar["sha256"], _gate_predicate(config, sidecar))
    return version, {MODEL_FILE: stamped, SIDECAR: (json.dumps(sidecar, indent=2) + "\n").encode(), MODEL_CARD: card}, record


def _gate_predicate(config: Config, sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """What the gate record vouches for: which model, what this code measured on which data, the verdict, and from what."""
    metrics, provenance = sidecar["metrics"], sidecar["provenance"]
    return {
        "model": {"name": sidecar["name"], "version": sidecar["version"], "file": MODEL_FILE, "variant": sidecar.get("variant")},
        "measurement": {
            **{key: metrics[key] for key in ("images", "accuracy", "weighted_f1", "macro_f1")},
            "dataset_fingerprint": metrics["test_set"]["fingerprint"],
            "dataset_sha256": metrics["test_set"]["sha256"],
            "training_data": metrics["test_set"]["training_data"],
            "measured_at": metrics["validated_at"],
        },
        "gate": sidecar["gate"],
        "config_sha256": hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest(),
        "training_config_digest": provenance["training_config_digest"],
        "trained_with": provenance["versions"],
        "measured_with": {package: version(package) for package in ("cifar-job", "onnxruntime-gpu", "onnx")},
        "runtime": provenance["runtime"],  # the image and its SBOM, where known
    }


def _model_card(
    config: Config, paths: RunPaths, measured: Measurement, test_set: dict[str, Any], gate: GateResult, meta: dict[str, str],
    sidecar: dict[str, Any],
) -> bytes:
    """The run's model card, made from what publish measured and judged, naming the file beside it (the stamped model, as
    the sidecar does); a variant's is headed by what it is."""
    document = report.metrics_document(measured, test_set, gate, meta)
    document["model"]["sha256"] = sidecar["sha256"]
    variant = sidecar.get("variant")
    header = report.variant_header(variant, measured.accuracy) if variant else ""
    return report.model_card(document, meta, report.lineage(config, paths, meta), header=header).encode()


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
    name: str, paths: RunPaths, measured: Measurement, headline: dict[str, Any], gate: GateResult, version: int, blob: bytes, model: Any
) -> dict[str, Any]:
    """metadata.json of `model` (`blob`, serialized): what a consumer checks (sha256), feeds (signature), expects (metrics)
    and traces (provenance)."""
    meta = metadata(model)
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
        "signature": signature(model, measured.class_names),
        "class_names": list(measured.class_names),
        "metrics": headline,
        "gate": gate.to_json(),
        "provenance": {
            **{k: meta.get(k, "") for k in ("architecture", "onnx_opset", "training_config_digest", "dataset_sha256", "dataset_fingerprint", "weights_sha256")},
            "versions": metadata_json(meta, "versions"),
            "runtime": software.runtime(),
        },
    }


def signature(model: Any, class_names: tuple[str, ...]) -> dict[str, Any]:
    """MLflow's tensor-spec signature read from the graph itself, so it cannot drift from the file served, plus what a
    graph cannot say: the contract's pixel layout, channel order and scaling, and the class of each output column."""
    return {
        "inputs": [_tensor_spec(value) for value in model.graph.input],
        "outputs": [_tensor_spec(value) for value in model.graph.output],
        "pixel_layout": PIXEL_LAYOUT,
        "channels": CHANNELS,
        "scaling": SCALING,
        "class_names": list(class_names),
    }


def _tensor_spec(value: Any) -> dict[str, Any]:
    """One graph input or output: its name, numpy dtype name and shape, -1 for a dynamic dimension (the batch)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    tensor = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    return {"name": value.name, "type": "tensor", "tensor-spec": {"dtype": tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": shape}}


def is_published(config: Config, paths: RunPaths) -> bool:
    """publish.json of the run's current model.onnx, and that version still in the configured repository, unchanged."""
    marker = read_marker(paths.publish_result)
    if marker.get("validated_sha256") != sha256_of(paths.onnx) or not isinstance(marker.get("directory"), str):
        return False
    where = Path(marker["directory"])
    model_dir = config.publish.root / config.publish.model_name
    return where.parent == model_dir and marker.get("sha256") == sha256_of(where / MODEL_FILE) and (model_dir / CONFIG_FILE).is_file()


STAGE = Stage("publish", run=lambda inputs: publish_model(inputs.config, inputs.paths, inputs.data()), is_complete=is_published)
