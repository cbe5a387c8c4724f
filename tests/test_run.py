"""`cifar-job run` end to end on a slice of the real data, and resuming at the first incomplete stage."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from export.repository import versions
from job.cli import main

from .conftest import REAL_SHA256

MARKERS = ("train.json", "export.json", "metrics.json", "publish.json")
ARTIFACTS = ("best.weights.h5", "model.onnx", "model_card.md", "confusion_matrix.png", *MARKERS)
# 480 training, 120 validation and 500 test images: the parity check tops its 1,000 up from train and validation.
SLICE = ["--epochs", "1", "--set", "data.train_limit=600", "--set", "data.test_limit=500", "--set", "train.augment=false"]
NO_GATE = ["--set", "gate.min_accuracy=0", "--set", "gate.min_weighted_f1=0"]


def _run(real_archive: Path, run: Path, root: Path, *extra: str):
    args = ["run", "--data", str(real_archive), "--checksum", f"sha256:{REAL_SHA256}", "--out", str(run)]
    return CliRunner().invoke(main, [*args, "--device", "cpu", "--set", f"publish.root={root}", *SLICE, *extra])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stamps(run: Path) -> dict[str, int]:
    return {name: (run / name).stat().st_mtime_ns for name in ARTIFACTS}


@pytest.fixture(scope="module")
def done(real_archive: Path, tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("run")
    run, root = base / "run", base / "models"
    result = _run(real_archive, run, root, *NO_GATE)
    assert result.exit_code == 0, result.output
    summaries = [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith(("train:", "export:", "validate:", "publish:"))]
    assert summaries == ["train", "export", "validate", "publish"]
    return run, root


@pytest.fixture
def copied(done: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    run, root = done
    return shutil.copytree(run, tmp_path / "run"), shutil.copytree(root, tmp_path / "models")


def test_run_trains_exports_validates_and_publishes(done: tuple[Path, Path]) -> None:
    run, root = done
    assert all((run / name).is_file() for name in ARTIFACTS)
    version = root / "cifar10-cnn" / "1"
    assert versions(root / "cifar10-cnn") == [1]
    sidecar = json.loads((version / "metadata.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert sidecar["sha256"] == _sha(version / "model.onnx") and sidecar["validated_sha256"] == _sha(run / "model.onnx")
    assert sidecar["metrics"]["accuracy"] == metrics["accuracy"] and metrics["data"]["images"] == 500
    assert json.loads((run / "export.json").read_text())["parity_images"] == 1000

    # What a serving team gets answers like the model that was validated.
    images = np.random.default_rng(0).random((16, 32, 32, 3), np.float32)
    answers = [
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["probabilities"], {"images": images})[0]
        for path in (version / "model.onnx", run / "model.onnx")
    ]
    assert np.array_equal(*answers)


def test_rerunning_a_complete_run_does_nothing(done: tuple[Path, Path], real_archive: Path) -> None:
    run, root = done
    before = _stamps(run)
    result = _run(real_archive, run, root, *NO_GATE)
    assert result.exit_code == 0 and result.stdout == ""
    assert "every stage is complete; nothing to do" in result.stderr
    assert _stamps(run) == before and versions(root / "cifar10-cnn") == [1]


@pytest.mark.parametrize("damage", ["missing", "wrong shape", "not JSON"])
def test_a_rerun_resumes_at_the_first_incomplete_stage(copied: tuple[Path, Path], real_archive: Path, damage: str) -> None:
    """A marker that is missing, or that this code did not write, means its stage is redone."""
    run, root = copied
    before = _stamps(run)
    marker = run / "metrics.json"
    if damage == "missing":
        marker.unlink()
    else:
        marker.write_text('[{"model": {"sha256": 1}}]' if damage == "wrong shape" else '{"model": ')
    result = _run(real_archive, run, root, *NO_GATE)
    assert result.exit_code == 0, result.output
    assert "resuming at validate -> publish" in result.stderr
    for name in ("best.weights.h5", "train.json", "model.onnx", "export.json"):
        assert (run / name).stat().st_mtime_ns == before[name], name
    assert (run / "metrics.json").is_file()
    assert "publish: already published:" in result.stdout and versions(root / "cifar10-cnn") == [1]


def test_a_redone_stage_makes_every_later_stage_run_again(copied: tuple[Path, Path], real_archive: Path) -> None:
    """A different export opset: the model is re-exported, so it is validated and published anew."""
    run, root = copied
    old_model = _sha(run / "model.onnx")
    result = _run(real_archive, run, root, *NO_GATE, "--set", "export.opset=13")
    assert result.exit_code == 0, result.output
    assert "resuming at export -> validate -> publish" in result.stderr

    model = onnx.load(run / "model.onnx")
    assert [o.version for o in model.opset_import if o.domain == ""] == [13] and _sha(run / "model.onnx") != old_model
    assert json.loads((run / "metrics.json").read_text())["model"]["sha256"] == _sha(run / "model.onnx")
    assert versions(root / "cifar10-cnn") == [1, 2]
    sidecar = json.loads((root / "cifar10-cnn" / "2" / "metadata.json").read_text())
    assert sidecar["validated_sha256"] == _sha(run / "model.onnx") and sidecar["provenance"]["onnx_opset"] == "13"


def test_a_failed_gate_stops_the_run_with_exit_6_and_publishes_nothing(copied: tuple[Path, Path], real_archive: Path) -> None:
    run, _ = copied
    root = run.parent / "fresh-models"  # where this model is not published yet
    for name in ("metrics.json", "publish.json"):
        (run / name).unlink()
    for attempt in ("validate -> publish", "publish"):  # and again on the rerun: publish judges the gate too
        result = _run(real_archive, run, root)
        assert result.exit_code == 6, result.output
        assert f"resuming at {attempt}" in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("cifar-job: error: quality gate failed: accuracy ")
        assert versions(root / "cifar10-cnn") == [] and not (run / "publish.json").exists()
