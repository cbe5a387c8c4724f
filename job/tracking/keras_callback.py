"""The Keras callback that tells tracking an epoch has ended; imported only when training runs (it imports Keras).

It runs after the training stage's own callback, which has written the epoch to history.json: tracking logs
the epochs from there (job.tracking.session), so live and resumed epochs are logged the same way, once each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras


class EpochLogger(keras.callbacks.Callback):
    def __init__(self, epoch_ended: Callable[[], object]) -> None:
        super().__init__()
        self._epoch_ended = epoch_ended

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_ended()
