"""Lookahead averaging (airbench's): the weights are pulled back toward a slow copy every few steps.

Every SYNC_EVERY optimizer steps, slow <- d * slow + (1 - d) * fast and then fast <- slow, where
d = decay * (step / total_steps)^3: no averaging early, when the weights must move, and more
toward the end, where averaging the noisy last steps is worth about a tenth of the epochs in
airbench's ablations. The last step of training takes the slow copy as it is (d = 1).

The copies are also synced at the last step of every epoch, so the weights that validation
measures, the best weights and the resume checkpoint are all the slow copy: a resumed run starts
its slow copy from the checkpoint and continues exactly like an uninterrupted one, with nothing
more to persist. Batch-norm statistics are averaged with the weights, as airbench does.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

SYNC_EVERY = 5  # optimizer steps between syncs (airbench's)


def sync_decay(decay: float, step: int, total_steps: int) -> float:
    """How much of the slow copy a sync at `step` keeps; 1 at the last step, so training ends on the slow copy."""
    return 1.0 if step >= total_steps else decay * (step / total_steps) ** 3


class Lookahead(keras.callbacks.Callback):
    def __init__(self, decay: float, steps_per_epoch: int, total_steps: int) -> None:
        super().__init__()
        self.decay, self.steps_per_epoch, self.total_steps = decay, steps_per_epoch, total_steps
        self.averaged: list[Any] = []
        self.slow: list[np.ndarray] = []

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # Every floating-point model variable: weights and batch-norm statistics (not seeds or counters).
        self.averaged = [v for v in self.model.variables if "float" in str(v.dtype)]
        self.slow = [np.array(v.numpy()) for v in self.averaged]  # a resumed run's fast weights are the slow copy

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        step = int(self.model.optimizer.iterations.numpy())
        if step % SYNC_EVERY and batch != self.steps_per_epoch - 1:  # the last step of training is an epoch's last
            return
        d = sync_decay(self.decay, step, self.total_steps)
        for slow, variable in zip(self.slow, self.averaged):
            fast = variable.numpy()
            slow += (1 - d) * (fast - slow)
            variable.assign(slow)
