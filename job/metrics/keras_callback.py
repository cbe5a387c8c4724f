"""The Keras callback that feeds a run's training metrics; imported only when training runs (it imports Keras).

It only turns Keras' hooks into the four calls of `TrainingRecorder`; what they set is
job.metrics.series' business (`RunMetrics` answers them). Nothing of job/ is imported here, so
job.metrics.series can make this callback without an import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import keras


class TrainingRecorder(Protocol):
    """What the training metrics need to hear; counts are 1-based: steps and epochs done."""

    def training_began(self, epochs: int, steps_per_epoch: int) -> None: ...
    def epoch_began(self) -> None: ...
    def step_ended(self, steps_done: int) -> None: ...
    def epoch_ended(self, epochs_done: int, logs: Mapping[str, float]) -> None: ...


class TrainingMetrics(keras.callbacks.Callback):
    def __init__(self, recorder: TrainingRecorder) -> None:
        super().__init__()
        self._recorder = recorder

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._recorder.training_began(self.params["epochs"], self.params["steps"] or 0)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._recorder.epoch_began()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._recorder.step_ended(batch + 1)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._recorder.epoch_ended(epoch + 1, logs or {})
