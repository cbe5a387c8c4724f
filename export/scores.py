"""Measure a model on a test set: predictions through onnxruntime, then accuracy, F1 and per-class scores.

The only place test-set numbers are made. Validation reports them and publishing measures
again before it publishes, so a published number is always one this code just measured on
this model, never one read back from a file. Within one process (`cifar-job run`) the last
measurement is kept in memory, keyed by the model's and the data's digests, so validate,
publish and variants measure the same bytes once: a few minutes on CPUs with test-time views.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.modelfile import sha256
from export.session import open_session, predict
from job.data.dataset import CifarData
from job.core.errors import DataError, ModelFileError

log = logging.getLogger(__name__)


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
class Measurement:
    """A model's scores on a test set, and how they were obtained."""

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

    @property
    def images(self) -> int:
        return sum(c["support"] for c in self.per_class.values())

    @property
    def images_per_second(self) -> float:
        return self.images / sum(self.batch_latencies_s)

    def scores(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "weighted_f1": self.weighted_f1}


def measure(blob: bytes, data: CifarData, device: str, batch_size: int, where: str) -> Measurement:
    """Run the model `blob` on the test split of `data` and score it; a model that outputs non-finite values fails."""
    return measure_outputs(blob, data, device, batch_size, where)[0]


_last_measured: dict[tuple[str, str, str, int], tuple[Measurement, np.ndarray]] = {}  # this process's last, at most one


def measure_outputs(blob: bytes, data: CifarData, device: str, batch_size: int, where: str) -> tuple[Measurement, np.ndarray]:
    """`measure`, and the probabilities it scored: what `parity` compares between a variant and its float model."""
    key = (sha256(blob), data.fingerprint, device, batch_size)
    if key in _last_measured:
        measured, probabilities = _last_measured[key]
        return measured, probabilities.copy()
    measured, probabilities = _measure_outputs(blob, data, device, batch_size, where)
    _last_measured.clear()
    _last_measured[key] = measured, probabilities.copy()
    return measured, probabilities


def _measure_outputs(blob: bytes, data: CifarData, device: str, batch_size: int, where: str) -> tuple[Measurement, np.ndarray]:
    session = open_session(blob, device, where)
    began = time.monotonic()
    probabilities, latencies = predict(session, data.test_images, batch_size)
    if not np.isfinite(probabilities).all():
        raise ModelFileError(f"model {where}: outputs non-finite probabilities on the test set")
    cm = confusion_matrix(data.test_labels, probabilities.argmax(axis=1), len(data.class_names))
    scores = classification_scores(cm, data.class_names)
    measured = Measurement(
        model_sha256=sha256(blob),
        class_names=data.class_names,
        **scores,
        confusion_matrix=cm.tolist(),
        device=device,
        providers=tuple(session.get_providers()),
        batch_size=batch_size,
        batch_latencies_s=tuple(latencies),
        duration_s=round(time.monotonic() - began, 3),
    )
    return measured, probabilities


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """How far a variant's test-set probabilities are from its float model's: the largest absolute difference and
    the share of images whose top class agrees."""
    return {
        "max_abs_difference": float(np.abs(reference - candidate).max()),
        "top1_agreement": float((reference.argmax(axis=1) == candidate.argmax(axis=1)).mean()),
    }


def test_set_record(meta: Mapping[str, str], data: CifarData, allow_other: bool, where: str) -> dict[str, Any]:
    """Where the numbers come from, after checking that `data` is the data set the model was trained on.

    Export stamps the fingerprint of the training data into the model; a different test set
    (another archive, split or limit) is refused unless `allow_other` says so, and is then
    recorded as such.
    """
    fingerprint = data.fingerprint
    trained_on = meta.get("dataset_fingerprint", "")
    if fingerprint != trained_on:
        problem = f"not the data set model {where} was trained on (fingerprint {fingerprint[:12]}, model {trained_on[:12] or 'unknown'})"
        if not allow_other:
            raise DataError(f"data {data.source}: {problem}; set validate.allow_other_test_set=true to measure it anyway")
        log.warning("data %s: %s; measuring anyway (validate.allow_other_test_set)", data.source, problem)
    return {
        "split": "test",
        "source": data.source,
        "sha256": data.sha256 or "",
        "fingerprint": fingerprint,
        "training_data": fingerprint == trained_on,
    }
