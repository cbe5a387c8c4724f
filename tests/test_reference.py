"""The full reference run on the real archive: about 12 min on 2 CPU cores, so marked slow.

Run with `bash tests/run.sh -m slow`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REAL_SHA256


@pytest.mark.slow
def test_reference_recipe_passes_the_study_gate_and_is_published(real_archive: Path, tmp_path: Path) -> None:
    out, models = tmp_path / "run", tmp_path / "models"
    command = [sys.executable, "-m", "job", "run", "--data", str(real_archive), "--checksum", f"sha256:{REAL_SHA256}"]
    command += ["--out", str(out), "--set", f"publish.root={models}", "--device", "cpu"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=3 * 3600)
    assert finished.returncode == 0, finished.stderr[-3000:]

    trained = json.loads((out / "train.json").read_text())
    assert trained["stopped_early"] or trained["epochs_run"] == 75
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.7562 and metrics["weighted_f1"] >= 0.7539
    sidecar = json.loads((models / "cifar10-cnn" / "1" / "metadata.json").read_text())
    assert sidecar["metrics"]["accuracy"] == metrics["accuracy"]
