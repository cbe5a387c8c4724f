"""Per-epoch scalars for TensorBoard, from the rows of history.json, with step = epoch (1-based).

Loss and accuracy go to the `train/` and `validation/` runs, so TensorBoard draws them on one
chart (the tags of Keras' own TensorBoard callback); the learning rate goes to `train/`. Each
process appends event files of its own. A row is logged after the checkpoint that holds it is
saved, and a process first logs whatever rows are missing from the runs (a kill between the two),
so a resumed run logs every epoch exactly once.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from job.core.errors import StorageFull

RUNS = {
    "train": {"epoch_loss": "loss", "epoch_accuracy": "accuracy", "epoch_learning_rate": "learning_rate"},
    "validation": {"epoch_loss": "val_loss", "epoch_accuracy": "val_accuracy"},
}  # run -> {tag: history key}


class EpochScalars:
    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.logged = {run: _last_step(logdir / run) for run in RUNS}
        self.writers: dict[str, Any] = {}

    def write(self, history: list[dict[str, Any]]) -> None:
        """Log every row of `history` not logged yet (normally only the last), and flush."""
        import tensorflow as tf

        try:
            for run, tags in RUNS.items():
                rows = [row for row in history if row["epoch"] > self.logged[run]]
                if not rows:
                    continue
                if run not in self.writers:
                    self.writers[run] = tf.summary.create_file_writer(str(self.logdir / run))
                with self.writers[run].as_default():
                    for row in rows:
                        for tag, key in tags.items():
                            tf.summary.scalar(tag, row[key], step=row["epoch"])
                self.writers[run].flush()
                self.logged[run] = rows[-1]["epoch"]
        except tf.errors.ResourceExhaustedError:  # what TensorFlow makes of ENOSPC and EDQUOT
            raise StorageFull(f"TensorBoard events in {self.logdir}: cannot write (no space left on device)") from None

    def close(self) -> None:
        """Every write was flushed, so this only has events left after a failed write, which raised already."""
        import tensorflow as tf

        for writer in self.writers.values():
            with contextlib.suppress(tf.errors.OpError):
                writer.close()


def _last_step(run: Path) -> int:
    """The last epoch the run's event files hold (0: none); a record cut short by a kill is skipped."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = (event.step for file in run.glob("*tfevents*") for event in EventFileLoader(str(file)).Load() if event.HasField("summary"))
    return max(steps, default=0)
