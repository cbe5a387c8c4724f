"""Learning-rate schedules, functions of the optimizer step (which the checkpoint carries, so a resumed run continues on the curve).

Imported only once training starts: it imports Keras.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from job.config.settings import TrainConfig


def learning_rate_schedule(cfg: TrainConfig, total_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    if cfg.lr_schedule == "inverse_time":
        # Keras 2's time-based `decay`, which the study used: lr / (1 + decay * step).
        return keras.optimizers.schedules.InverseTimeDecay(cfg.learning_rate, decay_steps=1, decay_rate=cfg.lr_decay)
    return OneCycle(cfg.learning_rate, total_steps, cfg.warmup_fraction, cfg.lr_start_factor, cfg.lr_end_factor)


class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise linear: start_factor * peak at step 0, the peak at warmup_fraction of the steps, end_factor * peak at the last."""

    def __init__(self, peak: float, total_steps: int, warmup_fraction: float, start_factor: float, end_factor: float) -> None:
        self.peak, self.total_steps = peak, total_steps
        self.warmup_fraction, self.start_factor, self.end_factor = warmup_fraction, start_factor, end_factor
        self.peak_step = max(1, round(warmup_fraction * total_steps))

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        rising = self.start_factor + (1 - self.start_factor) * step / self.peak_step
        falling = 1 + (self.end_factor - 1) * (step - self.peak_step) / max(1, self.total_steps - self.peak_step)
        return self.peak * ops.where(step < self.peak_step, rising, ops.maximum(falling, self.end_factor))

    def get_config(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("peak", "total_steps", "warmup_fraction", "start_factor", "end_factor")}
