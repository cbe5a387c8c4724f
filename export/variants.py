"""The variants stage: INT8 (CPUs) and FP16 (GPUs) copies of the published float model, each published only on its own proof.

A stage after publish rather than part of it, because a variant *derives from the published
float model*: it exists only beside a float model that passed the quality gate, and its sidecar
names that model's version and sha256. Its own gate is relative: at most
`variants.max_accuracy_drop` of accuracy below the float model, measured here in the same run
on the same test set (the float model is measured again, as publish does: no number is read
back from a file). A variant that fails its gate is a warning and a line in variants.json, not a
failed run: the float model stays published, and the variant is not. Each variant is measured
through export/scores.py exactly like the float model (accuracy, F1, images/s, same test-set
binding) plus parity against it (largest probability difference, top-1 agreement), and enters
the repository as `<model_name>-<variant>` through publish's one path (lock, staging, rename,
config.pbtxt and labels.txt), its directory recording it as that variant of that model, its version
holding the float model's card headed by what the variant is and how it measured; a variant
that fails its gate leaves nothing in the repository.

Resuming: variants.json is written last; the stage is complete while it names the run's current
model.onnx, the same variant settings and publish target, and each published variant is still
there unchanged. A rerun rebuilds the variants (seconds; the conversions are deterministic) and
finds the ones already published by their sha256, so nothing is published twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from export import precision, repository
from export.gate import GateResult
from export.modelfile import file_digest, load_onnx, metadata, read_model, set_metadata, sha256, sha256_of
from export.publish import check_model_dir, publish_measured
from export.repository import MODEL_FILE, Kind
from export.scores import Measurement, measure_outputs, parity, test_set_record
from job.core.atomic import atomic_write
from job.config.settings import Config
from job.data.dataset import CifarData, load_dataset
from job.core.errors import ModelFileError
from job.core.paths import RunPaths
from job.core.records import Record, read_marker
from job.stage import Stage

log = logging.getLogger(__name__)

MARKER = "variants.json"
CPU_ONLY = {"int8"}  # measured on the CPU it is made for; fp16 runs where validate.device says (on a CPU: for accuracy only)


@dataclass(frozen=True)
class VariantOutcome:
    variant: str
    name: str  # <model_name>-<variant>
    published: bool
    accuracy: float
    weighted_f1: float
    images_per_second: float
    provider: str
    parity: dict[str, float]
    gate: dict[str, Any]
    validated_sha256: str
    version: int | None  # None: not published
    sha256: str | None  # of the published model.onnx

    def summary(self) -> str:
        verdict = f"published as {self.name} version {self.version}" if self.published else "NOT published (" + "; ".join(self.gate["failures"]) + ")"
        return (
            f"{self.variant} {verdict}: accuracy {self.accuracy:.4f}, top-1 agreement {self.parity['top1_agreement']:.2%}, "
            f"max |dp| {self.parity['max_abs_difference']:.2e}, {self.images_per_second:.0f} images/s on {self.provider}"
        )


@dataclass(frozen=True)
class VariantsResult(Record):
    float_name: str
    float_version: int
    float_validated_sha256: str
    float_accuracy: float
    float_images_per_second: float
    settings: dict[str, Any]  # the variants section and the publish target they were made for
    variants: list[VariantOutcome]
    duration_s: float

    def summary(self) -> str:
        parts = [v.summary() for v in self.variants] or ["none enabled"]
        return f"variants of {self.float_name} version {self.float_version} (accuracy {self.float_accuracy:.4f}): " + "; ".join(parts)


def publish_variants(config: Config, paths: RunPaths, data: CifarData | None = None) -> VariantsResult:
    """Make, measure, judge and publish each enabled variant of the run's published model.onnx; write variants.json."""
    began = time.monotonic()
    where = str(paths.onnx)
    blob = read_model(paths.onnx)
    model = load_onnx(blob, where)
    float_dir = config.publish.root / config.publish.model_name
    repository.check_kind(float_dir, Kind(config.publish.model_name, None))
    float_version = repository.version_of(float_dir, sha256(blob))
    if float_version is None:
        raise ModelFileError(f"model {where}: not published in {float_dir}; variants derive from the published model: run `cifar-job publish` first")
    kinds = [Kind(config.publish.model_name, variant) for variant in config.variants.enabled]
    for kind in kinds:
        check_model_dir(config, kind)
    data = data if data is not None else load_dataset(config.data)
    test_set_record(metadata(model), data, config.validate_.allow_other_test_set, where)
    reference, probabilities = measure_outputs(blob, data, config.validate_.device, config.validate_.batch_size, where)
    derived_from = {"name": config.publish.model_name, "version": float_version, "validated_sha256": reference.model_sha256,
                    "sha256": file_digest(float_dir / str(float_version) / MODEL_FILE)[0]}  # fmt: skip

    outcomes = []
    for kind in kinds:
        candidate = _make(kind.variant, model, data, config)
        outcomes.append(_prove_and_publish(kind, candidate, config, paths, data, reference, probabilities, derived_from))
    result = VariantsResult(
        float_name=config.publish.model_name,
        float_version=float_version,
        float_validated_sha256=reference.model_sha256,
        float_accuracy=reference.accuracy,
        float_images_per_second=reference.images_per_second,
        settings=_settings(config),
        variants=outcomes,
        duration_s=round(time.monotonic() - began, 3),
    )
    atomic_write(paths.root / MARKER, result.to_json())
    return result


def _make(variant: str, model: Any, data: CifarData, config: Config) -> Any:
    """The variant's model: converted, stamped with what it is and what it derives from, and checked like any model file."""
    import onnx

    if variant == "int8":
        settings = config.variants
        converted = precision.to_int8(model, precision.calibration_images(data, settings.calibration_images, settings.calibration_seed))
    else:
        converted = precision.to_fp16(model)
    candidate = onnx.load_model_from_string(converted)
    set_metadata(candidate, {**metadata(model), "variant": variant, "derived_from_sha256": sha256(model.SerializeToString())})
    return load_onnx(candidate.SerializeToString(), f"{variant} variant")


def _prove_and_publish(
    kind: Kind, candidate: Any, config: Config, paths: RunPaths, data: CifarData,
    reference: Measurement, reference_probabilities: Any, derived_from: dict[str, Any],
) -> VariantOutcome:  # fmt: skip
    """Measure the variant like the float model, compare it with the float model, and publish it if it passes its gate."""
    began = time.monotonic()
    variant = kind.variant
    where = f"{variant} variant of {paths.onnx}"
    blob = candidate.SerializeToString()
    test_set = test_set_record(metadata(candidate), data, config.validate_.allow_other_test_set, where)
    device = "cpu" if variant in CPU_ONLY else config.validate_.device
    measured, probabilities = measure_outputs(blob, data, device, config.validate_.batch_size, where)
    agreement = parity(reference_probabilities, probabilities)
    gate = variant_gate(measured.accuracy, reference.accuracy, config.variants.max_accuracy_drop, derived_from["version"])
    outcome = {"variant": variant, "name": kind.directory, "accuracy": measured.accuracy, "weighted_f1": measured.weighted_f1,
               "images_per_second": measured.images_per_second, "provider": measured.providers[0], "parity": agreement,
               "gate": gate.to_json(), "validated_sha256": measured.model_sha256}  # fmt: skip
    if not gate.passed:
        log.warning("%s: %s; not published (the float model stays published)", kind.directory, gate.describe())
        return VariantOutcome(**outcome, published=False, version=None, sha256=None)
    provenance = {"kind": variant, "derived_from": derived_from, "parity": agreement, "float_accuracy": reference.accuracy}
    published = publish_measured(config, paths, kind, candidate, measured, test_set, judge_now=lambda _: gate, began=began, variant=provenance)
    return VariantOutcome(**outcome, published=True, version=published.version, sha256=published.sha256)


def variant_gate(accuracy: float, float_accuracy: float, max_drop: float, float_version: int) -> GateResult:
    """At most `max_drop` of accuracy below the float model (measure refuses non-finite outputs, so both are numbers)."""
    failures = () if accuracy >= float_accuracy - max_drop else (
        f"accuracy {accuracy:.4f} is more than {max_drop:.4f} below the float model's {float_accuracy:.4f} (variants.max_accuracy_drop)",
    )  # fmt: skip
    return GateResult(
        passed=not failures, failures=failures, thresholds={"max_accuracy_drop": max_drop, "float_accuracy": float_accuracy}, baseline_version=float_version
    )


def _settings(config: Config) -> dict[str, Any]:
    return {**config.variants.model_dump(mode="json"), "root": str(config.publish.root), "model_name": config.publish.model_name}


def is_complete(config: Config, paths: RunPaths) -> bool:
    """variants.json of the run's current model.onnx and settings, and every variant it published still there unchanged."""
    marker = read_marker(paths.root / MARKER)
    outcomes = marker.get("variants")
    if marker.get("float_validated_sha256") != sha256_of(paths.onnx) or marker.get("settings") != _settings(config) or not isinstance(outcomes, list):
        return False
    root = config.publish.root
    return all(
        isinstance(o, dict)
        and (not o.get("published") or o.get("sha256") == sha256_of(root / str(o.get("name")) / str(o.get("version")) / MODEL_FILE))
        for o in outcomes
    )


STAGE = Stage("variants", run=lambda inputs: publish_variants(inputs.config, inputs.paths, inputs.data()), is_complete=is_complete)
