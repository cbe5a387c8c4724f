"""The run directory's layout, in one place, so every stage and the docs agree on it."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from job.core.errors import ConfigError


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:  # effective config of the latest command
        return self.root / "config.yaml"

    @property
    def state_dir(self) -> Path:  # resume checkpoint of the last complete epoch
        return self.root / "state"

    @property
    def best_weights(self) -> Path:  # best weights so far (lowest validation loss)
        return self.root / "best.weights.h5"

    @property
    def best_keras(self) -> Path:  # the best model, architecture and weights, for keras.models.load_model; written when training ends
        return self.root / "best.keras"

    @property
    def tensorboard(self) -> Path:  # TensorBoard event files: train/ and validation/ every epoch, test/ by validate
        return self.root / "tensorboard"

    @property
    def history_json(self) -> Path:
        return self.root / "history.json"

    @property
    def history_csv(self) -> Path:
        return self.root / "history.csv"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    @property
    def train_result(self) -> Path:  # written last by `train`: the stage is complete
        return self.root / "train.json"

    @property
    def onnx(self) -> Path:
        return self.root / "model.onnx"

    @property
    def export_result(self) -> Path:  # written last by `export`: the stage is complete
        return self.root / "export.json"

    @property
    def metrics_json(self) -> Path:  # written last by `validate`: the stage is complete
        return self.root / "metrics.json"

    @property
    def model_card(self) -> Path:
        return self.root / "model_card.md"

    @property
    def confusion_png(self) -> Path:
        return self.root / "confusion_matrix.png"

    @property
    def publish_result(self) -> Path:  # where the model went; written last by `publish`
        return self.root / "publish.json"

    @property
    def experiment(self) -> Path:  # the experiment's summary, in the trial it chose: export stamps it into the model
        return self.root / "experiment.json"

    def check_writable(self) -> RunPaths:
        """Fail before any work if the run directory cannot be written; leaves nothing behind."""
        existing = self.root
        while not existing.exists():
            existing = existing.parent
        try:
            if not existing.is_dir():
                raise NotADirectoryError(20, "Not a directory")
            tempfile.TemporaryFile(dir=existing).close()
        except OSError as e:
            raise ConfigError(f"output directory {self.root}: not writable ({e.strerror} at {existing})") from None
        return self


@dataclass(frozen=True)
class ExperimentPaths:
    """An experiment's directory: one ordinary run directory per trial, and the experiment's own results."""

    root: Path

    def trial(self, index: int) -> RunPaths:
        return RunPaths(self.root / "trials" / f"{index:04d}")

    def trial_config(self, index: int) -> Path:  # the trial's effective config, which its `cifar-job train` reads
        return self.trial(index).root / "trial.yaml"

    def trial_failed(self, index: int) -> Path:  # the trial failed for good: its exit code and message
        return self.trial(index).root / "failed.json"

    def trial_log(self, index: int) -> Path:  # the output of the trial's process (local runs)
        return self.trial(index).root / "train.log"

    @property
    def summary_json(self) -> Path:
        return self.root / "summary.json"

    @property
    def summary_md(self) -> Path:
        return self.root / "summary.md"

    @property
    def summary_png(self) -> Path:
        return self.root / "summary.png"

    @property
    def selection(self) -> Path:  # the chosen trial, on validation results only
        return self.root / "selection.json"

    @property
    def finalize_lock(self) -> Path:  # the finaliser's index and token while it works (Kubernetes); renewed, then removed
        return self.root / "finalize.lock"
