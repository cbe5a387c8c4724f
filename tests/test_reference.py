"""Full runs on the real archive, each recipe against its target: 3 to 70 minutes each on 2 CPU cores, so marked slow.

Run with `bash tests/run.sh -m slow tests/test_reference.py` (or `-k fast` for the 3-minute one).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REAL_SHA256
from .data_penalty import accuracy as onnx_accuracy
from .data_penalty import exact_test_images


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


# recipe flags -> (most epochs, lowest test accuracy, lowest weighted F1, lowest accuracy on the test images whose
# pixels are exact, or None): the targets of the recipes' results table.
RECIPE_TARGETS = {
    "fast": (["--recipe", "fast"], 10, 0.7562, 0.7539, None),  # the study's figures in at most 10 epochs
    "best": (["--recipe", "best"], 40, 0.80, 0.80, None),
    "airbench": (["--model", "airbench"], 18, 0.89, 0.89, None),  # its gate
    "airbench-long": (["--model", "airbench", "--recipe", "long"], 32, 0.90, 0.90, None),
    # its gate, and the one-hour goal's exact-pixel figure less a seed's spread (the whole-set 92 % is not reached)
    "airbench-wide": (["--model", "airbench", "--recipe", "wide"], 19, 0.91, 0.91, 0.935),
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPE_TARGETS))
def test_a_recipe_reaches_its_target_through_onnx_and_is_published(recipe: str, real_archive: Path, tmp_path: Path) -> None:
    flags, epochs, accuracy, weighted_f1, exact_pixels = RECIPE_TARGETS[recipe]
    out, models = tmp_path / "run", tmp_path / "models"
    command = [sys.executable, "-m", "job", "run", *flags, "--data", str(real_archive), "--checksum", f"sha256:{REAL_SHA256}"]
    command += ["--out", str(out), "--set", f"publish.root={models}", "--device", "cpu"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=3 * 3600)
    assert finished.returncode == 0, finished.stderr[-3000:]

    assert json.loads((out / "train.json").read_text())["epochs_run"] <= epochs
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] >= accuracy and metrics["weighted_f1"] >= weighted_f1
    published = models / "cifar10-cnn" / "1" / "model.onnx"
    assert published.is_file()
    if exact_pixels is not None:
        assert onnx_accuracy(published, *exact_test_images(real_archive)) >= exact_pixels
