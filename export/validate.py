"""The validate stage: measure the run's model.onnx on the test set, report it, and judge it against the gate.

onnxruntime only, no TensorFlow (a test proves it): a serving team can rerun this with only
onnxruntime, and the command starts fast. The test set must be the one of the data set the
model was trained on (its fingerprint is in the model) unless the user allows another.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from export import report
from export.gate import GateResult, judge
from export.modelfile import load_onnx, metadata, read_model, sha256_of
from export.scores import Measurement, measure, test_set_record
from job.config.settings import Config
from job.data.dataset import CifarData, load_dataset
from job.core.paths import RunPaths
from job.core.records import read_marker
from job.stage import Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationResult(Measurement):
    """A measurement, where its test set came from, and the gate's verdict on it."""

    test_set: dict[str, Any]
    gate: GateResult

    def summary(self) -> str:
        return (
            f"accuracy {self.accuracy:.4f}, weighted F1 {self.weighted_f1:.4f}, macro F1 {self.macro_f1:.4f} "
            f"on {self.images} test images; {self.images_per_second:.0f} images/s on {self.providers[0]}; {self.gate.describe()}"
        )


def validate_model(config: Config, paths: RunPaths, data: CifarData | None = None) -> ValidationResult:
    """Measure the run's model.onnx on the test set, judge it against the gate, write metrics.json and the reports.

    The verdict is in the result; the caller enforces it (`result.gate.enforce()`) after recording
    it, and `publish` measures and judges again before publishing anything.
    """
    where = str(paths.onnx)
    blob = read_model(paths.onnx)
    meta = metadata(load_onnx(blob, where))
    data = data if data is not None else load_dataset(config.data)
    test_set = test_set_record(meta, data, config.validate_.allow_other_test_set, where)
    measured = measure(blob, data, config.validate_.device, config.validate_.batch_size, where)
    gate = judge(measured.scores(), config.gate, config.publish.root / config.publish.model_name)
    fields = {f.name: getattr(measured, f.name) for f in dataclasses.fields(Measurement)}
    result = ValidationResult(**fields, test_set=test_set, gate=gate)
    config.record_in(paths)
    report.write_reports(measured, test_set, gate, meta, paths)
    log.info(result.summary())
    return result


def is_validated(config: Config, paths: RunPaths) -> bool:
    """metrics.json measured on the run's current model.onnx."""
    model = read_marker(paths.metrics_json).get("model")
    return isinstance(model, dict) and model.get("sha256") == sha256_of(paths.onnx)


STAGE = Stage(
    "validate",
    run=lambda inputs: validate_model(inputs.config, inputs.paths, inputs.data()),
    is_complete=is_validated,
    check=lambda result: result.gate.enforce(),
)
