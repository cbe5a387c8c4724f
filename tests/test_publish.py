"""Publishing into a serving layout: versions, sidecar, the gate under the lock, and crashes mid-publish."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from export.modelfile import load_onnx, metadata
from export.repository import latest, versions
from export.validate import validate_model
from job.cli import main
from job.config.settings import load_config
from job.data.dataset import load_dataset
from job.core.paths import RunPaths

from .conftest import REAL_ARCHIVE, on_tmpfs
from .onnx_models import fit_mean_colour, mean_colour_model
from .test_repository import assert_config_matches_graph

NO_GATE = ["--set", "gate.min_accuracy=0", "--set", "gate.min_weighted_f1=0"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def validated(real_archive: Path, tmp_path_factory) -> dict[str, Path]:
    """Two validated run directories: `good` (a fitted model) and `worse` (always answers 'airplane')."""
    data = load_dataset(load_config(env={}, overrides={"data.source": str(real_archive)}).data)
    bias = np.zeros(10)
    bias[0] = 1.0
    trained_on = data.fingerprint
    models = {
        "good": mean_colour_model(*fit_mean_colour(data.train_images, data.train_labels), trained_on=trained_on),
        "worse": mean_colour_model(np.zeros((3, 10)), bias, trained_on=trained_on),
    }
    runs = {}
    for name, model in models.items():
        run = tmp_path_factory.mktemp(name) / "run"
        run.mkdir()
        (run / "model.onnx").write_bytes(model.SerializeToString())
        config = load_config(env={}, overrides={"out": str(run), "data.source": str(real_archive), "gate.min_accuracy": 0, "gate.min_weighted_f1": 0})
        validate_model(config, RunPaths(run), data)
        runs[name] = run
    accuracy = {name: json.loads((run / "metrics.json").read_text())["accuracy"] for name, run in runs.items()}
    assert accuracy["good"] > accuracy["worse"] == 0.1
    return runs


@pytest.fixture
def runs(validated: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """Fresh copies, so that each test sees run directories without publish.json."""
    return {name: shutil.copytree(run, tmp_path / name) for name, run in validated.items()}


def _publish(run: Path, root: Path, *args: str):
    return CliRunner().invoke(main, ["publish", *_args(run, root), *args])


def _args(run: Path, root: Path) -> list[str]:
    return ["--out", str(run), "--data", str(REAL_ARCHIVE), "--set", f"publish.root={root}"]


def _published(root: Path, version: int) -> Path:
    return root / "cifar10-cnn" / str(version)


def _intact(version_dir: Path) -> bool:
    """A complete version: its three files, and the model's sha256 is the one its sidecar records."""
    sidecar = json.loads((version_dir / "metadata.json").read_text())
    files = sorted(p.name for p in version_dir.iterdir())
    return files == ["metadata.json", "model.onnx", "model_card.md"] and sidecar["sha256"] == _sha(version_dir / "model.onnx")


def test_publish_writes_the_serving_layout_with_sidecar_and_metrics_in_the_model(runs, tmp_path: Path) -> None:
    root = tmp_path / "models"
    result = _publish(runs["good"], root, *NO_GATE)
    assert result.exit_code == 0, result.output
    version_dir = _published(root, 1)
    assert result.stdout.strip() == f"published: {version_dir}/model.onnx (version 1, sha256 {_sha(version_dir / 'model.onnx')[:12]})"
    assert _intact(version_dir) and versions(root / "cifar10-cnn") == [1]

    metrics = json.loads((runs["good"] / "metrics.json").read_text())
    sidecar = json.loads((version_dir / "metadata.json").read_text())
    assert sidecar["name"] == "cifar10-cnn" and sidecar["version"] == 1 and sidecar["file"] == "model.onnx"
    assert sidecar["validated_sha256"] == metrics["model"]["sha256"] == _sha(runs["good"] / "model.onnx")
    assert sidecar["size_bytes"] == (version_dir / "model.onnx").stat().st_size
    assert sidecar["class_names"] == metrics["class_names"]
    for key in ("accuracy", "macro_f1", "weighted_f1", "per_class", "confusion_matrix"):
        assert sidecar["metrics"][key] == metrics[key], key
    assert sidecar["gate"]["passed"] and sidecar["signature"]["inputs"][0]["name"] == "images"

    # The published model is the validated graph with the test metrics stamped into metadata_props.
    validated_model = onnx.load(runs["good"] / "model.onnx")
    published = load_onnx((version_dir / "model.onnx").read_bytes(), "published")
    assert published.graph == validated_model.graph
    assert json.loads(metadata(published)["test_metrics"]) == sidecar["metrics"]
    assert_config_matches_graph((root / "cifar10-cnn" / "config.pbtxt").read_text(), published, "cifar10-cnn")
    assert (root / "cifar10-cnn" / "labels.txt").read_text().splitlines() == sidecar["class_names"] == metrics["class_names"]
    served = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    stamped = json.loads(served.get_modelmeta().custom_metadata_map["test_metrics"])
    assert stamped["accuracy"] == metrics["accuracy"] and stamped["images"] == 10_000

    record = json.loads((runs["good"] / "publish.json").read_text())
    assert record["version"] == 1 and record["newly_published"] and record["sha256"] == sidecar["sha256"]

    again = _publish(runs["good"], root, *NO_GATE)  # the same model is not published twice
    assert again.exit_code == 0 and again.stdout.startswith("already published:") and versions(root / "cifar10-cnn") == [1]


def test_versions_increase_and_latest_is_the_highest(runs, tmp_path: Path) -> None:
    root = tmp_path / "models"
    assert _publish(runs["good"], root, *NO_GATE).exit_code == 0
    assert _publish(runs["worse"], root, *NO_GATE).exit_code == 0
    assert versions(root / "cifar10-cnn") == [1, 2]
    newest = latest(root / "cifar10-cnn")
    assert newest["version"] == 2 and newest["validated_sha256"] == _sha(runs["worse"] / "model.onnx")


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "quality gate failed: accuracy 0.1000 < 0.7562 (gate.min_accuracy); weighted_f1 "),
        ([*NO_GATE, "--set", "gate.max_regression=0.05"], "accuracy 0.1000 is more than 0.0500 below published version 1 ("),
    ],
)
def test_a_failed_gate_publishes_nothing_and_exits_6(runs, tmp_path: Path, args: list[str], message: str) -> None:
    root = tmp_path / "models"
    assert _publish(runs["good"], root, *NO_GATE).exit_code == 0
    before = _sha(_published(root, 1) / "model.onnx")

    result = _publish(runs["worse"], root, *args)
    assert result.exit_code == 6, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cifar-job: error: ") and message in last and last.endswith("; nothing published")
    assert versions(root / "cifar10-cnn") == [1] and _sha(_published(root, 1) / "model.onnx") == before
    assert not (runs["worse"] / "publish.json").exists()
    assert sorted(p.name for p in (root / "cifar10-cnn").iterdir() if not p.name.isdigit()) == [".cifar-job.json", "config.pbtxt", "labels.txt"]


def test_publish_measures_the_model_itself_so_an_edited_metrics_json_cannot_pass_the_gate(runs, tmp_path: Path) -> None:
    metrics_json = runs["worse"] / "metrics.json"
    forged = json.loads(metrics_json.read_text())
    forged.update(accuracy=0.99, weighted_f1=0.99, gate={**forged["gate"], "passed": True, "failures": []})
    metrics_json.write_text(json.dumps(forged))
    result = _publish(runs["worse"], tmp_path / "models")
    assert result.exit_code == 6, result.output
    assert "accuracy 0.1000 < 0.7562 (gate.min_accuracy)" in result.stderr
    assert versions(tmp_path / "models" / "cifar10-cnn") == []


def test_publish_stamps_what_it_measured_not_what_metrics_json_says(runs, tmp_path: Path) -> None:
    """A model swapped in after validation is published with its own numbers; metrics.json is not needed."""
    (runs["good"] / "model.onnx").write_bytes((runs["worse"] / "model.onnx").read_bytes())
    (runs["good"] / "metrics.json").unlink()
    root = tmp_path / "models"
    assert _publish(runs["good"], root, *NO_GATE).exit_code == 0
    sidecar = json.loads((_published(root, 1) / "metadata.json").read_text())
    assert sidecar["metrics"]["accuracy"] == 0.1 and sidecar["validated_sha256"] == _sha(runs["worse"] / "model.onnx")
    assert sidecar["metrics"]["test_set"]["training_data"] is True


def test_a_model_is_measured_only_on_the_data_set_it_was_trained_on(runs, tmp_path: Path, make_archive) -> None:
    other = make_archive()  # a valid CIFAR archive, but not the one the models were trained on
    args = ["publish", "--out", str(runs["good"]), "--data", str(other), "--set", f"publish.root={tmp_path / 'models'}", *NO_GATE]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 3, refused.output
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("cifar-job: error: data ") and last.endswith("set validate.allow_other_test_set=true to measure it anyway")
    assert "Traceback" not in refused.stderr and versions(tmp_path / "models" / "cifar10-cnn") == []

    allowed = CliRunner().invoke(main, [*args, "--set", "validate.allow_other_test_set=true"])
    assert allowed.exit_code == 0, allowed.output
    test_set = json.loads((_published(tmp_path / "models", 1) / "metadata.json").read_text())["metrics"]["test_set"]
    assert test_set["training_data"] is False and test_set["source"] == str(other)


@pytest.mark.parametrize(
    "entry, problem",
    [
        ("3", "a version must be a directory"),  # a file where a version would go
        ("sidecar", "not a metadata.json written by cifar-job"),  # a version whose sidecar lost its metrics
        ("config.pbtxt", "must be a regular file"),  # a directory where the model's config goes
    ],
)
def test_a_tampered_repository_is_refused_with_one_line_naming_the_file(runs, tmp_path: Path, entry: str, problem: str) -> None:
    root = tmp_path / "models"
    assert _publish(runs["good"], root, *NO_GATE).exit_code == 0
    model_dir = root / "cifar10-cnn"
    if entry == "sidecar":
        sidecar = json.loads((model_dir / "1" / "metadata.json").read_text())
        del sidecar["metrics"]
        (model_dir / "1" / "metadata.json").write_text(json.dumps(sidecar))
    elif entry == "config.pbtxt":
        (model_dir / entry).unlink()
        (model_dir / entry).mkdir()
    else:
        (model_dir / entry).write_text("not a version")
    result = _publish(runs["worse"], root, *NO_GATE, "--set", "gate.max_regression=1")
    assert result.exit_code == 5, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("cifar-job: error: ") and problem in line and str(model_dir) in line and "Traceback" not in result.stderr
    assert not (model_dir / "2").exists()


@pytest.mark.parametrize("options, code, problem", [("size=4k", 12, "No space left on device"), ("ro", 12, "Read-only file system")])
def test_a_full_or_read_only_repository_is_one_line_exit_12_and_leaves_nothing(runs, tmp_path: Path, options: str, code: int, problem: str) -> None:
    """publish.root on a real tmpfs too small for a version (one page), or mounted read-only."""
    root = tmp_path / "models"
    root.mkdir()
    done, left = on_tmpfs(root, options, "publish", *_args(runs["good"], root), *NO_GATE)
    assert done.returncode == code, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cifar-job: error: file {root}/cifar10-cnn") and problem in last and "Traceback" not in done.stderr
    assert not [f for f in left if "/1/" in f or ".staging-" in f], left  # no version, no staging debris
    assert not (runs["good"] / "publish.json").exists()


def test_only_ascii_digit_directories_are_versions(runs, tmp_path: Path) -> None:
    model_dir = tmp_path / "models" / "cifar10-cnn"
    for name in ("²", "٩٩", "007", "1" * 30):
        (model_dir / name).mkdir(parents=True)
    assert versions(model_dir) == []
    assert _publish(runs["good"], tmp_path / "models", *NO_GATE).exit_code == 0
    assert versions(model_dir) == [1]


# --- crashes: a real publishing process is killed with SIGKILL at each step -------------------------

# The audit hook kills the process the moment it reaches the step: no test seam in the code.
KILLER = """
import os, signal, sys
event, needles = sys.argv[1], sys.argv[2].split("|")
def hook(name, args):
    if name == event and all(n in " ".join(map(str, args)) for n in needles):
        os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(hook)
from job.cli import main
main(sys.argv[3:], prog_name="cifar-job")
"""

KILL_POINTS = {
    "before writing the model": ("open", ".staging-|model.onnx"),
    "before writing the sidecar": ("open", ".staging-|metadata.json"),
    "before the rename": ("os.rename", ".staging-"),
    "after the rename, before config.pbtxt": ("os.rename", "config.pbtxt"),
    "after the rename, before labels.txt": ("os.rename", "labels.txt"),
    "after the rename, before publish.json": ("os.rename", "publish.json"),
}


def _model_files_match(model_dir: Path) -> bool:
    """config.pbtxt and labels.txt are whole and describe the model (the same signature and classes in every version)."""
    config = (model_dir / "config.pbtxt").read_text()
    return config.startswith('name: "cifar10-cnn"\n') and config.endswith("dynamic_batching { }\n") and (
        (model_dir / "labels.txt").read_text().splitlines() == json.loads((model_dir / "1" / "metadata.json").read_text())["class_names"]
    )


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_publish_killed_midway_leaves_the_previous_version_intact(runs, tmp_path: Path, point: str) -> None:
    root = tmp_path / "models"
    assert _publish(runs["good"], root, *NO_GATE).exit_code == 0
    v1 = _sha(_published(root, 1) / "model.onnx")

    event, needles = KILL_POINTS[point]
    args = ["publish", *_args(runs["worse"], root), *NO_GATE]
    killed = subprocess.run([sys.executable, "-c", KILLER, event, needles, *args], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr  # it really died at that step

    model_dir = root / "cifar10-cnn"
    renamed = point.startswith("after")
    assert versions(model_dir) == ([1, 2] if renamed else [1])
    assert _intact(_published(root, 1)) and _sha(_published(root, 1) / "model.onnx") == v1
    assert renamed or any(p.name.startswith(".staging-") for p in model_dir.iterdir())  # the crash left its debris
    assert not renamed or _intact(_published(root, 2))  # a visible version is always complete
    assert _model_files_match(model_dir)  # the previous publish's files, whole: each is replaced atomically
    assert not (runs["worse"] / "publish.json").exists()

    rerun = _publish(runs["worse"], root, *NO_GATE)
    assert rerun.exit_code == 0, rerun.output
    assert rerun.stdout.startswith("already published:" if renamed else "published:")
    assert versions(model_dir) == [1, 2] and _intact(_published(root, 2)) and _model_files_match(model_dir)
    assert sorted(p.name for p in model_dir.iterdir() if p.name.startswith(".")) == [".cifar-job.json"]  # no staging, no temporary file


def test_concurrent_publishers_get_distinct_versions(runs, tmp_path: Path) -> None:
    root = tmp_path / "models"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "job", "publish", *_args(run, root), *NO_GATE],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        for run in runs.values()
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    model_dir = root / "cifar10-cnn"
    assert versions(model_dir) == [1, 2] and all(_intact(model_dir / str(v)) for v in (1, 2))
    published = {json.loads((model_dir / str(v) / "metadata.json").read_text())["validated_sha256"] for v in (1, 2)}
    assert published == {_sha(run / "model.onnx") for run in runs.values()}
