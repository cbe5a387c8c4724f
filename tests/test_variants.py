"""INT8 and FP16 variants: made from the published float model, proven on the test set, published only past their own gate.

Tolerances: on the 2-epoch CNN, INT8 probabilities stay within 0.25 of float32 and every image
whose top-2 margin exceeds twice that difference keeps its class (near-ties may flip; at least 80 %
agree overall); FP16 agrees on at least 99 %, within 0.01. The mean-colour models of tests/onnx_models.py are linear and tiny, so the
repository, gate and crash tests run on them in seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from click.testing import CliRunner

from export.modelfile import load_onnx, metadata
from export.repository import versions
from export.variants import is_complete
from job.cli import main
from job.config.settings import load_config
from job.data.dataset import load_dataset
from job.core.paths import RunPaths
from job.models.contract import scale

from .conftest import REAL_ARCHIVE, REAL_SHA256, TRAINED_SLICE
from .onnx_models import fit_mean_colour, mean_colour_model
from .test_publish import KILLER
from .test_repository import assert_config_matches_graph

NO_GATE = ["--set", "gate.min_accuracy=0", "--set", "gate.min_weighted_f1=0"]
# The mean-colour model leans on colour differences finer than uint8 steps: INT8 costs it about 1.6 points of accuracy.
MEAN_COLOUR_DROP = ["--set", "variants.max_accuracy_drop=0.05"]


def _args(run: Path, root: Path, *extra: str) -> list[str]:
    return ["--out", str(run), "--data", str(REAL_ARCHIVE), "--set", f"publish.root={root}", "--device", "cpu", *NO_GATE, *extra]


@pytest.fixture(scope="module")
def published(real_archive: Path, tmp_path_factory) -> tuple[Path, Path]:
    """A run directory whose mean-colour model is published (float only) in its own repository."""
    data = load_dataset(load_config(env={}, overrides={"data.source": str(real_archive)}).data)
    model = mean_colour_model(*fit_mean_colour(data.train_images, data.train_labels), trained_on=data.fingerprint)
    base = tmp_path_factory.mktemp("variants")
    run, root = base / "run", base / "models"
    run.mkdir()
    (run / "model.onnx").write_bytes(model.SerializeToString())
    result = CliRunner().invoke(main, ["publish", *_args(run, root)])
    assert result.exit_code == 0, result.output
    return run, root


@pytest.fixture
def copied(published: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    run, root = published
    return shutil.copytree(run, tmp_path / "run"), shutil.copytree(root, tmp_path / "models")


def _variants(run: Path, root: Path, *extra: str):
    return CliRunner().invoke(main, ["variants", *_args(run, root, *extra)])


def _check_published_variant(root: Path, variant: str, float_dir: Path, drop: float) -> dict:
    """The variant's model directory is a complete Triton model and its sidecar says what it derives from."""
    model_dir = root / f"cifar10-cnn-{variant}"
    assert versions(model_dir) == [1]
    model = load_onnx((model_dir / "1" / "model.onnx").read_bytes(), variant)  # the float32 serving signature, checker passes
    assert_config_matches_graph((model_dir / "config.pbtxt").read_text(), model, model_dir.name)
    sidecar = json.loads((model_dir / "1" / "metadata.json").read_text())
    float_sidecar = json.loads((float_dir / "1" / "metadata.json").read_text())
    assert (model_dir / "labels.txt").read_text().splitlines() == sidecar["class_names"] == float_sidecar["class_names"]
    derived = sidecar["variant"]["derived_from"]
    assert sidecar["variant"]["kind"] == variant == metadata(model)["variant"] and sidecar["name"] == model_dir.name
    assert (derived["name"], derived["version"], derived["sha256"], derived["validated_sha256"]) == (
        "cifar10-cnn", 1, float_sidecar["sha256"], float_sidecar["validated_sha256"]
    )
    assert sidecar["metrics"]["test_set"] == float_sidecar["metrics"]["test_set"]  # the same test set, bound the same way
    assert sidecar["metrics"]["accuracy"] >= sidecar["variant"]["float_accuracy"] - drop and sidecar["gate"]["passed"]
    assert sidecar["gate"]["thresholds"] == {"max_accuracy_drop": drop, "float_accuracy": sidecar["variant"]["float_accuracy"]}
    return sidecar


def test_variants_are_published_beside_the_float_model_and_a_rerun_reuses_them(copied) -> None:
    run, root = copied
    result = _variants(run, root, *MEAN_COLOUR_DROP)
    assert result.exit_code == 0, result.output
    assert "int8 published as cifar10-cnn-int8 version 1" in result.stdout and "fp16 published as cifar10-cnn-fp16 version 1" in result.stdout

    int8 = _check_published_variant(root, "int8", root / "cifar10-cnn", 0.05)
    fp16 = _check_published_variant(root, "fp16", root / "cifar10-cnn", 0.05)
    # Its classes are near-tied (accuracy about 0.22), so uint8 steps flip many top classes; the CNN test holds the real tolerance.
    assert int8["variant"]["parity"]["top1_agreement"] >= 0.5 and fp16["variant"]["parity"]["max_abs_difference"] <= 1e-2
    int8_ops = {n.op_type for n in onnx.load(root / "cifar10-cnn-int8" / "1" / "model.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= int8_ops
    fp16_model = onnx.load(root / "cifar10-cnn-fp16" / "1" / "model.onnx")
    assert {i.data_type for i in fp16_model.graph.initializer} == {onnx.TensorProto.FLOAT16}

    config = load_config(env={}, overrides={"out": str(run), "data.source": str(REAL_ARCHIVE), "publish.root": str(root), "variants.max_accuracy_drop": 0.05})
    assert is_complete(config, RunPaths(run))
    assert not is_complete(config.model_copy(update={"variants": config.variants.model_copy(update={"enabled": ["int8"]})}), RunPaths(run))
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    again = _variants(run, root, *MEAN_COLOUR_DROP)
    assert again.exit_code == 0, again.output
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # nothing published twice, nothing rewritten differently


def test_a_variant_that_fails_its_own_gate_is_not_published_while_the_float_model_stays(copied) -> None:
    """Calibrated on one image, INT8 clips almost every colour: far below the float model."""
    run, root = copied
    result = _variants(run, root, "--set", "variants.calibration_images=1", "--set", "variants.enabled=[int8]")
    assert result.exit_code == 0, result.output
    assert "int8 NOT published (accuracy " in result.stdout and "below the float model's" in result.stdout
    assert "WARNING" in result.stderr and "cifar10-cnn-int8" in result.stderr
    assert versions(root / "cifar10-cnn-int8") == [] and versions(root / "cifar10-cnn") == [1]
    (outcome,) = json.loads((run / "variants.json").read_text())["variants"]
    assert not outcome["published"] and outcome["version"] is None and outcome["gate"]["failures"]


@pytest.mark.parametrize(
    "setting, code, message",
    [
        ([], 5, "not published in "),  # no float model published here: nothing to derive from
        (["--set", "variants.enabled=[int4]"], 2, "config key variants.enabled"),
        (["--set", "variants.max_accuracy_drop=-0.1"], 2, "config key variants.max_accuracy_drop"),
    ],
)
def test_bad_inputs_are_one_line(copied, tmp_path: Path, setting: list[str], code: int, message: str) -> None:
    run, _ = copied
    result = _variants(run, tmp_path / "elsewhere", *setting)
    assert result.exit_code == code, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cifar-job: error: ") and message in last and "Traceback" not in result.stderr


KILL_POINTS = {
    "before the int8 version's rename": ("os.rename", "cifar10-cnn-int8/.staging-"),
    "after it, before its config.pbtxt": ("os.rename", "cifar10-cnn-int8/config.pbtxt"),
    "before the fp16 labels.txt": ("os.rename", "cifar10-cnn-fp16/labels.txt"),
    "before variants.json": ("os.rename", "variants.json"),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_variants_run_killed_midway_leaves_complete_models_and_resumes(copied, point: str) -> None:
    run, root = copied
    event, needles = KILL_POINTS[point]
    command = [sys.executable, "-c", KILLER, event, needles, "variants", *_args(run, root, *MEAN_COLOUR_DROP)]
    killed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    for variant in ("int8", "fp16"):
        model_dir = root / f"cifar10-cnn-{variant}"
        for version in versions(model_dir):  # a visible version is always whole
            assert sorted(p.name for p in (model_dir / str(version)).iterdir()) == ["metadata.json", "model.onnx", "model_card.md"]
        if (model_dir / "config.pbtxt").exists():  # a model-level file is whole or absent
            assert_config_matches_graph((model_dir / "config.pbtxt").read_text(), onnx.load(model_dir / "1" / "model.onnx"), model_dir.name)
    assert not (run / "variants.json").exists()

    rerun = _variants(run, root, *MEAN_COLOUR_DROP)
    assert rerun.exit_code == 0, rerun.output
    for variant in ("int8", "fp16"):
        _check_published_variant(root, variant, root / "cifar10-cnn", 0.05)
        assert sorted(p.name for p in (root / f"cifar10-cnn-{variant}").iterdir() if p.name.startswith(".")) == [".cifar-job.json"]


# --- the real CNN: the session's training, exported once -----------------------------------------


def test_the_trained_cnn_gets_int8_and_fp16_variants_within_tolerance(trained_run: Path, tmp_path: Path) -> None:
    """`run` resumes the trained run at export and goes through publish to the variants (100 test images: a gate of 0.1)."""
    run, root = shutil.copytree(trained_run, tmp_path / "run"), tmp_path / "models"
    args = ["run", "--data", str(REAL_ARCHIVE), "--checksum", f"sha256:{REAL_SHA256}", *TRAINED_SLICE, *_args(run, root)]
    result = CliRunner().invoke(main, [*args, "--set", "variants.max_accuracy_drop=0.1"])
    assert result.exit_code == 0, result.output
    assert "resuming at export -> validate -> publish -> variants" in result.stderr
    parity = {v: _check_published_variant_cnn(root, v) for v in ("int8", "fp16")}
    assert parity["int8"]["max_abs_difference"] <= 0.25 and parity["fp16"]["max_abs_difference"] <= 1e-2, parity
    assert parity["fp16"]["top1_agreement"] >= 0.99, parity
    import onnxruntime as ort

    # A 2-epoch model has many near-ties, which INT8 noise may flip; any image whose top-2 margin exceeds twice the
    # largest probability difference cannot be flipped, and must keep its class.
    test = scale(load_dataset(load_config(env={}, overrides={"data.source": str(REAL_ARCHIVE), "data.test_limit": 100}).data).test_images)
    float_p, int8_p = (
        ort.InferenceSession(str(root / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]).run(["probabilities"], {"images": test})[0]
        for name in ("cifar10-cnn", "cifar10-cnn-int8")
    )
    top2 = np.sort(float_p, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * np.abs(float_p - int8_p).max(axis=1)
    assert clear.sum() >= 25 and (float_p.argmax(1)[clear] == int8_p.argmax(1)[clear]).all(), (int(clear.sum()), parity)
    assert parity["int8"]["top1_agreement"] >= 0.8, parity
    # 7-bit weights: x86 u8s8 kernels without VNNI add two uint8 x int8 products in 16 bits, which 8-bit weights saturate.
    int8 = onnx.load(root / "cifar10-cnn-int8" / "1" / "model.onnx")
    weights = [numpy_helper.to_array(t) for t in int8.graph.initializer if t.data_type == onnx.TensorProto.INT8 and t.name.endswith("_quantized")]
    assert len(weights) == 5 and max(int(np.abs(w).max()) for w in weights) == 64  # 255 * 64 * 2 < 32,767
    images = np.random.default_rng(0).random((4, 32, 32, 3), np.float32)  # float32 in, float32 out, dynamic batch

    for variant in ("int8", "fp16"):
        session = ort.InferenceSession(str(root / f"cifar10-cnn-{variant}" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        (probabilities,) = session.run(["probabilities"], {"images": images})
        assert probabilities.dtype == np.float32 and probabilities.shape == (4, 10)


def _check_published_variant_cnn(root: Path, variant: str) -> dict:
    sidecar = json.loads((root / f"cifar10-cnn-{variant}" / "1" / "metadata.json").read_text())
    assert sidecar["variant"]["kind"] == variant and sidecar["metrics"]["images"] == 100
    assert_config_matches_graph((root / f"cifar10-cnn-{variant}" / "config.pbtxt").read_text(), onnx.load(root / f"cifar10-cnn-{variant}" / "1" / "model.onnx"), f"cifar10-cnn-{variant}")
    return sidecar["variant"]["parity"]
