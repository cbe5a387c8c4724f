"""Validate an ONNX model with onnxruntime alone: execution provider, test-set metrics, quality gate.

No TensorFlow here (a test proves it): a serving team can rerun this with only onnxruntime,
and the command starts fast. onnxruntime-gpu quietly falls back to the CPU when a CUDA or
cuDNN library is missing, so the providers a session actually runs are checked, not assumed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from export import publish, report
from export.gate import GateResult, check_gate
from export.modelfile import load_onnx, metadata, read_model, sha256
from job.config import Config
from job.data import CifarData, load_dataset, scale
from job.errors import DeviceUnavailable, ModelFileError
from job.model import INPUT_NAME, OUTPUT_NAME
from job.paths import RunPaths

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


# --- execution providers ---------------------------------------------------------------------


def open_session(data: bytes, device: str, where: str) -> ort.InferenceSession:
    """A session on the requested device: `cpu`, `gpu` (CUDA or fail) or `auto` (CUDA, else CPU with a warning)."""
    import onnxruntime as ort

    cuda_built = CUDA in ort.get_available_providers()
    requested = [CUDA, CPU] if device != "cpu" and cuda_built else [CPU]
    try:
        session = ort.InferenceSession(data, providers=requested)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
        raise ModelFileError(f"model {where}: onnxruntime cannot load it ({str(e).strip().splitlines()[0]})") from None
    running = session.get_providers()
    if device != "cpu" and running[0] != CUDA:
        reason = (
            f"{CUDA} is not running (onnxruntime fell back to {running[0]}; its log above names the missing CUDA/cuDNN library)"
            if cuda_built
            else f"this onnxruntime build ({ort.__version__}) has no {CUDA}"
        )
        if device == "gpu":
            raise DeviceUnavailable(f"validate.device=gpu: {reason}")
        log.warning("validate.device=auto: %s; validating on the CPU", reason)
    log.info("onnxruntime %s: execution providers in use: %s", ort.__version__, ", ".join(running))
    return session


def predict(session: ort.InferenceSession, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, list[float]]:
    """Probabilities for uint8 NHWC `images`, and the seconds each batch's `run` took (after one warm-up)."""
    session.run([OUTPUT_NAME], {INPUT_NAME: scale(images[:batch_size])})  # allocations, kernel selection
    outputs, latencies = [], []
    for start in range(0, len(images), batch_size):
        batch = scale(images[start : start + batch_size])
        began = time.perf_counter()
        (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        latencies.append(time.perf_counter() - began)
        outputs.append(probabilities)
    return np.concatenate(outputs), latencies


# --- metrics ---------------------------------------------------------------------------------


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    return np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise; 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def classification_scores(cm: np.ndarray, class_names: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, macro and weighted F1, and per-class precision, recall, F1 and support from a confusion matrix."""
    support, predicted, hits = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    precision, recall = _ratio(hits, predicted), _ratio(hits, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {
        "accuracy": float(hits.sum() / cm.sum()),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
    }


@dataclass(frozen=True)
class ValidationResult:
    model_sha256: str
    class_names: tuple[str, ...]
    accuracy: float
    macro_f1: float
    weighted_f1: float
    per_class: dict[str, dict[str, float | int]]
    confusion_matrix: list[list[int]]  # rows true classes, columns predicted
    device: str  # requested: auto, gpu or cpu
    providers: tuple[str, ...]  # what the session runs, in priority order
    batch_size: int
    batch_latencies_s: tuple[float, ...]
    duration_s: float
    gate: GateResult

    @property
    def images(self) -> int:
        return sum(c["support"] for c in self.per_class.values())

    @property
    def images_per_second(self) -> float:
        return self.images / sum(self.batch_latencies_s)

    def summary(self) -> str:
        return (
            f"accuracy {self.accuracy:.4f}, weighted F1 {self.weighted_f1:.4f}, macro F1 {self.macro_f1:.4f} "
            f"on {self.images} test images; {self.images_per_second:.0f} images/s on {self.providers[0]}; {self.gate.describe()}"
        )


def validate_model(config: Config, paths: RunPaths, data: CifarData | None = None) -> ValidationResult:
    """Measure the run's model.onnx on the test set, judge it against the gate, write metrics.json and the reports.

    The verdict is in the result; the caller enforces it (`result.gate.enforce()`) after recording
    it, and `publish` judges it again before publishing anything.
    """
    blob = read_model(paths.onnx)
    model = load_onnx(blob, str(paths.onnx))
    session = open_session(blob, config.validate_.device, str(paths.onnx))
    data = data if data is not None else load_dataset(config.data)
    began = time.monotonic()
    probabilities, latencies = predict(session, data.test_images, config.validate_.batch_size)
    cm = confusion_matrix(data.test_labels, probabilities.argmax(axis=1), len(data.class_names))
    scores = classification_scores(cm, data.class_names)
    result = ValidationResult(
        model_sha256=sha256(blob),
        class_names=data.class_names,
        **scores,
        confusion_matrix=cm.tolist(),
        device=config.validate_.device,
        providers=tuple(session.get_providers()),
        batch_size=config.validate_.batch_size,
        batch_latencies_s=tuple(latencies),
        duration_s=round(time.monotonic() - began, 3),
        gate=check_gate(scores, config.gate, publish.latest(config.publish)),
    )
    paths.begin(config)
    report.write_reports(result, metadata(model), data, paths)
    log.info(result.summary())
    return result
