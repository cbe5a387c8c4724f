"""The validate stage: measure the run's model.onnx on the test set, report it, and judge it against the gate.

onnxruntime only, no TensorFlow (a test proves it): a serving team can rerun this with only
onnxruntime, and the command starts fast. The test set must be the one of the data set the
model was trained on (its fingerprint is in the model) unless the user allows another. For
TensorBoard it writes the confusion matrix and the misclassified images with the tensorboard
package's own protocol buffers, which need no TensorFlow either.
"""

from __future__ import annotations

import dataclasses
import io
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from export import report
from export.gate import GateResult, judge
from export.modelfile import load_onnx, metadata, read_model, sha256_of
from export.scores import Measurement, measure_outputs, test_set_record
from job.core.events import write_events
from job.config.settings import Config
from job.data.dataset import CifarData, load_dataset
from job.core.paths import RunPaths
from job.core.records import read_marker
from job.stage import Stage


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
    measured, probabilities = measure_outputs(blob, data, config.validate_.device, config.validate_.batch_size, where)
    gate = judge(measured.scores(), config.gate, config.publish.root / config.publish.model_name)
    fields = {f.name: getattr(measured, f.name) for f in dataclasses.fields(Measurement)}
    result = ValidationResult(**fields, test_set=test_set, gate=gate)
    config.record_in(paths)
    report.write_reports(measured, test_set, gate, meta, paths, config)
    _write_tensorboard_images(paths, data, probabilities.argmax(axis=1))  # after the reports: their confusion matrix plot is one of them
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


# --- TensorBoard: <out>/tensorboard/test/, one event file replaced by every validation ----------

TEST_EVENTS = "events.out.tfevents.validate"  # TensorBoard reads any file whose name holds "tfevents"
MISCLASSIFIED, COLUMNS = 36, 6  # at most a 6 x 6 grid


def _write_tensorboard_images(paths: RunPaths, data: CifarData, predicted: np.ndarray) -> None:
    from tensorboard.compat.proto.summary_pb2 import Summary

    wrong = np.flatnonzero(predicted != data.test_labels)
    images = [_image("confusion_matrix", paths.confusion_png.read_bytes(), "Rows true classes, columns predicted classes.")]
    if wrong.size:
        shown = wrong[:MISCLASSIFIED]
        note = f"The first {shown.size} of {wrong.size} misclassified test images (test set indices {', '.join(map(str, shown))}), titled true → predicted class."
        images.append(_image("misclassified", _misclassified_png(data, predicted, shown), note))
    write_events(paths.tensorboard / "test" / TEST_EVENTS, [(0, Summary(value=images))])


def _image(tag: str, png: bytes, description: str) -> Any:
    """A PNG as tf.summary.image writes one: the strings width, height and the encoded image, for the images plugin."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.image.metadata import create_summary_metadata
    from tensorboard.util.tensor_util import make_tensor_proto

    width, height = struct.unpack(">II", png[16:24])  # the PNG's IHDR chunk
    tensor = make_tensor_proto([str(width).encode(), str(height).encode(), png])
    return Summary.Value(tag=tag, tensor=tensor, metadata=create_summary_metadata(display_name=tag, description=description))


def _misclassified_png(data: CifarData, predicted: np.ndarray, shown: np.ndarray) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = -(-shown.size // COLUMNS)
    fig = Figure(figsize=(9, 1.6 * rows), dpi=100, layout="constrained")
    for position, index in enumerate(shown, start=1):
        ax = fig.add_subplot(rows, COLUMNS, position)
        ax.imshow(data.test_images[index], interpolation="nearest")
        ax.set_title(f"{data.class_names[data.test_labels[index]]}\n→ {data.class_names[predicted[index]]}", fontsize=8)
        ax.axis("off")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
