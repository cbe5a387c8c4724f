"""The run directory's layout, in one place, so every stage and the docs agree on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from job.errors import ConfigError


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

    def prepare(self) -> RunPaths:
        """Create the run directory and prove it is writable before any work starts."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"output directory {self.root}: not writable ({e.strerror})") from None
        return self
