"""The Keras callback that feeds `RunMetrics`' training metrics; imported only by training paths.

Per step it only sets a few numbers (no tensors are read), so it does not slow training down.
The epoch `logs` come from `job.train`, which adds `learning_rate`, `best_val_loss`,
`best_epoch` and `patience_wait` to Keras' losses and accuracies.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import keras

if TYPE_CHECKING:
    from job.metrics import RunMetrics


class TrainingMetrics(keras.callbacks.Callback):
    def __init__(self, metrics: RunMetrics) -> None:
        super().__init__()
        self._m = metrics
        self._batch_size = metrics.config.train.batch_size
        self._epoch_started = self._last_step = time.monotonic()
        self._epoch_images = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        m = self._m
        m.scraped.show("train")
        m.train_epochs.set(self.params["epochs"])
        m.train_steps_per_epoch.set(self.params["steps"] or 0)
        m.train_patience.set(m.config.train.patience)
        m.progress.set_to_current_time()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_started = self._last_step = time.monotonic()
        self._epoch_images = 0
        self._m.train_step.set(0)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        m = self._m
        m.train_step.set(batch + 1)
        m.train_steps.inc()
        m.train_images.inc(self._batch_size)
        m.progress.set_to_current_time()
        self._epoch_images += self._batch_size
        self._last_step = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        m, logs = self._m, logs or {}
        m.train_epoch.set(epoch + 1)
        m.train_epoch_duration.observe(time.monotonic() - self._epoch_started)
        training_seconds = self._last_step - self._epoch_started
        if training_seconds > 0:
            m.train_images_per_second.set(self._epoch_images / training_seconds)
        for split, prefix in (("train", ""), ("validation", "val_")):
            if prefix + "loss" in logs:
                m.train_loss.labels(split).set(logs[prefix + "loss"])
            if prefix + "accuracy" in logs:
                m.train_accuracy.labels(split).set(logs[prefix + "accuracy"])
        for gauge, key in (
            (m.train_learning_rate, "learning_rate"),
            (m.train_best_val_loss, "best_val_loss"),
            (m.train_best_epoch, "best_epoch"),
            (m.train_patience_wait, "patience_wait"),
        ):
            if key in logs:
                gauge.set(logs[key])
        m.progress.set_to_current_time()
