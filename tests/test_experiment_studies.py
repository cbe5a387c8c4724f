"""The issue's two studies of the reference CNN's fast recipe on the real archive: 3 seeds (about 10 min on
2 CPU cores) and a 5-fold cross-validation (about 17 min), so marked slow.

Run with `bash tests/run.sh -m slow tests/test_experiment_studies.py`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REAL_SHA256

EXAMPLE = Path(__file__).resolve().parents[1] / "charts" / "cifar-job" / "examples" / "experiment.yaml"  # 3 seeds of fast


@pytest.mark.slow
@pytest.mark.parametrize(("study", "trials"), [("seeds", 3), ("folds", 5)])
def test_a_study_reports_mean_and_spread_and_publishes_its_choice_once(study: str, trials: int, real_archive: Path, tmp_path: Path) -> None:
    spec = EXAMPLE
    if study == "folds":
        spec = tmp_path / "folds.yaml"
        spec.write_text("name: folds-fast\nbase: {recipe: fast}\nfolds: 5\n")
    out, models = tmp_path / "experiment", tmp_path / "models"
    command = [sys.executable, "-m", "job", "experiment", "run", str(spec), "--out", str(out)]
    command += ["--data", str(real_archive), "--checksum", f"sha256:{REAL_SHA256}", "--device", "cpu", "--set", f"publish.root={models}"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=3 * 3600)
    assert finished.returncode == 0, finished.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    (group,) = summary["groups"]
    accuracies = [row["val_accuracy"] for row in summary["trial_rows"]]
    assert summary["completed"] == trials == group["val_accuracy"]["n"] == len(accuracies)
    assert group["val_accuracy"]["mean"] == pytest.approx(statistics.mean(accuracies))
    assert group["val_accuracy"]["std"] == pytest.approx(statistics.stdev(accuracies)) and group["val_accuracy"]["std"] > 0
    assert "±" in (out / "summary.md").read_text()
    chosen = json.loads((out / "selection.json").read_text())["trial"]
    assert accuracies[chosen] == max(accuracies)
    assert [p.name for p in (models / "cifar10-cnn").iterdir() if p.is_dir()] == ["1"]  # published once
    metrics = json.loads((out / "trials" / f"{chosen:04d}" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.7562 and metrics["weighted_f1"] >= 0.7539  # the fast recipe's gate, on the test set, once
