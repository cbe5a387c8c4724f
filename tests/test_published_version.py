"""A published version describes itself: model.onnx, metadata.json with a signature read from the graph, and model_card.md,
all three entering in one staged rename, for the float model and its variants alike."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from export.repository import read_sidecar, versions
from job.cli import main
from job.config.settings import load_config
from job.core.errors import ModelFileError
from job.data.dataset import load_dataset
from job.models.contract import CHANNELS, PIXEL_LAYOUT, SCALING

from .conftest import REAL_ARCHIVE, REAL_SHA256, TRAINED_SLICE
from .onnx_models import fit_mean_colour, mean_colour_model
from .test_publish import KILLER

NO_GATE = ["--set", "gate.min_accuracy=0", "--set", "gate.min_weighted_f1=0"]
VERSION_FILES = ["metadata.json", "model.onnx", "model_card.md"]
CARD_SECTIONS = ["## Model", "## Intended use", "## Limitations", "## Data", "## Training recipe", "## Test metrics", "## Provenance"]


@pytest.fixture(scope="module")
def models(real_archive: Path, tmp_path_factory) -> dict[str, bytes]:
    """Two mean-colour models bound to the real data set: `good` (fitted) and `worse` (always 'airplane', accuracy 0.1)."""
    data = load_dataset(load_config(env={}, overrides={"data.source": str(real_archive)}).data)
    bias = np.eye(10)[0]
    return {
        "good": mean_colour_model(*fit_mean_colour(data.train_images, data.train_labels), trained_on=data.fingerprint).SerializeToString(),
        "worse": mean_colour_model(np.zeros((3, 10)), bias, trained_on=data.fingerprint).SerializeToString(),
    }


@pytest.fixture
def runs(models: dict[str, bytes], tmp_path: Path) -> dict[str, Path]:
    """A run directory per model, holding only its model.onnx (publish measures the model itself)."""
    for name, blob in models.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.onnx").write_bytes(blob)
    return {name: tmp_path / name for name in models}


def _args(run: Path, root: Path, *extra: str) -> list[str]:
    return ["--out", str(run), "--data", str(REAL_ARCHIVE), "--set", f"publish.root={root}", "--device", "cpu", *extra]


def _invoke(command: str, run: Path, root: Path, *extra: str):
    return CliRunner().invoke(main, [command, *_args(run, root, *extra)])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_describes_itself(version_dir: Path) -> tuple[dict, str]:
    """The three files and nothing else; the sidecar and the card name the model.onnx beside them; the card is whole."""
    assert sorted(p.name for p in version_dir.iterdir()) == VERSION_FILES
    sidecar = read_sidecar(version_dir)
    card = (version_dir / "model_card.md").read_text()
    assert sidecar["sha256"] == _sha(version_dir / "model.onnx") and f"sha256 `{sidecar['sha256']}`" in card
    assert [line for line in card.splitlines() if line in CARD_SECTIONS] == CARD_SECTIONS and "\n- Validated: " in card
    assert "confusion_matrix.png" not in card  # the plot stays in the run directory
    return sidecar, card


def _assert_signature_is_the_graph(version_dir: Path) -> None:
    """Every field of the signature from the served graph (names, dtypes, -1 for the batch), the contract and labels.txt."""
    graph = onnx.load(version_dir / "model.onnx").graph
    signature = read_sidecar(version_dir)["signature"]

    def specs(values) -> list[dict]:
        return [
            {"name": v.name, "type": "tensor", "tensor-spec": {
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]}}
            for v in values
        ]  # fmt: skip

    assert signature["inputs"] == specs(graph.input) == [{"name": "images", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 32, 32, 3]}}]
    assert signature["outputs"] == specs(graph.output) == [{"name": "probabilities", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}}]
    assert (signature["pixel_layout"], signature["channels"], signature["scaling"]) == (PIXEL_LAYOUT, CHANNELS, SCALING) == ("NHWC", "RGB", "uint8 pixel / 255 -> [0, 1]")
    assert signature["class_names"] == (version_dir.parent / "labels.txt").read_text().splitlines()


def test_a_version_holds_its_model_signature_and_card(runs, tmp_path: Path) -> None:
    root = tmp_path / "models"
    result = _invoke("publish", runs["good"], root, *NO_GATE)
    assert result.exit_code == 0, result.output
    version_dir = root / "cifar10-cnn" / "1"
    sidecar, card = _assert_describes_itself(version_dir)
    _assert_signature_is_the_graph(version_dir)
    assert sidecar["schema_version"] == 3 and sidecar["signature"]["class_names"] == sidecar["class_names"]

    names = ", ".join(sidecar["class_names"])
    assert f"- Classifying CIFAR-10-like 32x32 RGB images into its 10 classes: {names}." in card
    assert "A reference and teaching model: not for images of other domains" in card
    assert f"- Trained and measured only on CIFAR-10: 10000 test images of `{REAL_ARCHIVE}` (sha256 `{REAL_SHA256}`)" in card
    assert _recall_range(sidecar) in card
    assert "No robustness evaluation" in card and "no fairness evaluation" in card
    assert f"- Accuracy: **{sidecar['metrics']['accuracy']:.4f}**" in card
    # A model exported elsewhere carries no training digest: the card claims no recipe and no training record.
    assert "recipe not known (the config at hand did not train this model)" in card
    assert "- Best epoch and stop reason not known: the run directory holds no train.json of this model's training" in card


def test_a_failed_gate_publishes_no_card(runs, tmp_path: Path) -> None:
    root = tmp_path / "models"
    assert _invoke("publish", runs["good"], root, *NO_GATE).exit_code == 0
    result = _invoke("publish", runs["worse"], root)
    assert result.exit_code == 6, result.output
    assert versions(root / "cifar10-cnn") == [1] and [p.parent.name for p in root.rglob("model_card.md")] == ["1"]
    assert not list(root.rglob(".staging-*"))


KILL_POINTS = {
    "before writing the card": ("open", ".staging-|model_card.md"),
    "with the card written, before the rename": ("os.rename", ".staging-"),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_publish_killed_around_the_card_leaves_no_card_visible(runs, tmp_path: Path, point: str) -> None:
    root = tmp_path / "models"
    event, needles = KILL_POINTS[point]
    args = ["publish", *_args(runs["good"], root, *NO_GATE)]
    killed = subprocess.run([sys.executable, "-c", KILLER, event, needles, *args], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr  # it really died at that step

    model_dir = root / "cifar10-cnn"
    assert versions(model_dir) == [] and [p.parent.parent.name for p in root.rglob("model_card.md")] == (
        [next(model_dir.glob(".staging-*")).name] if point.startswith("with") else []
    )  # a card, if any, only in the staging directory (.staging-XXXX/1), which no server reads
    rerun = _invoke("publish", runs["good"], root, *NO_GATE)
    assert rerun.exit_code == 0, rerun.output
    assert versions(model_dir) == [1] and not list(model_dir.glob(".staging-*"))
    _assert_describes_itself(model_dir / "1")


def test_a_variant_version_holds_the_float_card_headed_by_what_it_is(runs, tmp_path: Path) -> None:
    root = tmp_path / "models"
    assert _invoke("publish", runs["good"], root, *NO_GATE).exit_code == 0
    result = _invoke("variants", runs["good"], root, *NO_GATE, "--set", "variants.enabled=[fp16]")
    assert result.exit_code == 0, result.output

    float_sidecar, float_card = _assert_describes_itself(root / "cifar10-cnn" / "1")
    version_dir = root / "cifar10-cnn-fp16" / "1"
    sidecar, card = _assert_describes_itself(version_dir)
    _assert_signature_is_the_graph(version_dir)  # float32 in and out, like the float model
    assert sidecar["signature"] == float_sidecar["signature"]
    header = card.split("\n\n")[1]
    variant = sidecar["variant"]
    assert header.startswith(f"> **FP16 variant** of `cifar10-cnn` version 1 (model.onnx sha256 `{float_sidecar['sha256']}`).")
    assert f"Its own test accuracy {sidecar['metrics']['accuracy']:.4f} (the float model's {float_sidecar['metrics']['accuracy']:.4f}" in header
    assert f"top-1 agreement with the float model {variant['parity']['top1_agreement']:.2%}" in header
    assert f"- Accuracy: **{sidecar['metrics']['accuracy']:.4f}**" in card  # its own measurement, not the float model's
    assert f"accuracy at most 0.01 below the float model's {float_sidecar['metrics']['accuracy']:.4f}" in card
    # Below the header, the float model's card (its intended use, data, training), with the variant's own numbers.
    for section in ("## Intended use", "## Data", "## Training recipe"):
        assert _section(card, section) == _section(float_card, section)
    assert _limitations(card) == _limitations(float_card) and _recall_range(sidecar) in card


def _limitations(card: str) -> list[str]:
    """The limitations a card states, less its per-class range (each model's own)."""
    return [line for line in _section(card, "## Limitations").splitlines() if "differs by class" not in line]


def _recall_range(sidecar: dict) -> str:
    recall = {name: c["recall"] for name, c in sidecar["metrics"]["per_class"].items()}
    worst, best = min(recall, key=recall.get), max(recall, key=recall.get)
    return f"- Accuracy differs by class: recall from {recall[worst]:.4f} ({worst}) to {recall[best]:.4f} ({best})"


def _section(card: str, heading: str) -> str:
    return card.split(heading + "\n", 1)[1].split("\n## ", 1)[0]


def test_old_sidecars_stay_readable_and_a_new_one_needs_its_signature(runs, tmp_path: Path) -> None:
    root = tmp_path / "models"
    assert _invoke("publish", runs["good"], root, *NO_GATE).exit_code == 0
    version_dir = root / "cifar10-cnn" / "1"
    sidecar = json.loads((version_dir / "metadata.json").read_text())
    old = {**sidecar, "schema_version": 2, "signature": {"input": {"name": "images", "layout": "", "scaling": ""}, "output": {"name": "probabilities"}}}
    broken = {**sidecar["signature"], "inputs": [{"name": "images", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": ["N", 32, 32, 3]}}]}
    cases = {"schema 2": (old, True), "no signature": ({**sidecar, "signature": None}, False), "a shape in words": ({**sidecar, "signature": broken}, False)}
    for case, (document, readable) in cases.items():
        (version_dir / "metadata.json").write_text(json.dumps(document))
        if readable:
            assert read_sidecar(version_dir) == document, case
        else:
            with pytest.raises(ModelFileError, match=r"metadata.json: not a metadata.json written by cifar-job \(.*signature\)"):
                read_sidecar(version_dir)


# --- the real CNN: the session's training, resumed through export, validate and publish ---------------


def test_the_trained_cnn_s_card_names_its_recipe_best_epoch_and_why_training_stopped(trained_run: Path, tmp_path: Path) -> None:
    run, root = shutil.copytree(trained_run, tmp_path / "run"), tmp_path / "models"
    command = ["run", "--checksum", f"sha256:{REAL_SHA256}", *TRAINED_SLICE, *_args(run, root, *NO_GATE, "--set", "variants.enabled=[]")]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output
    version_dir = root / "cifar10-cnn" / "1"
    _, card = _assert_describes_itself(version_dir)
    _assert_signature_is_the_graph(version_dir)

    trained = json.loads((run / "train.json").read_text())
    stop = "early stopping (validation loss" if trained["stopped_early"] else "the epoch limit (train.epochs)"
    for text in (card, (run / "model_card.md").read_text()):  # the run's card says the same
        assert "- Recipe `default` of model `reference_cnn`" in text
        assert f"- Best epoch {trained['best_epoch']} of {trained['epochs_run']} (lowest validation loss: these weights); stopped by {stop}" in text

    # Published with a config that did not train it (another seed): the card does not claim that config's recipe.
    other = CliRunner().invoke(main, ["publish", *TRAINED_SLICE, *_args(run, tmp_path / "other", *NO_GATE, "--set", "train.seed=7")])
    assert other.exit_code == 0, other.output
    assert "recipe not known (the config at hand did not train this model)" in (tmp_path / "other" / "cifar10-cnn" / "1" / "model_card.md").read_text()


def test_a_version_names_the_image_and_the_sbom_it_was_measured_in(runs, tmp_path: Path, monkeypatch) -> None:
    """In the image, CIFAR_SBOM names its CycloneDX SBOM (Dockerfile) and the chart passes the image in CIFAR_IMAGE."""
    sbom = tmp_path / "sbom.cdx.json"
    sbom.write_text('{"bomFormat": "CycloneDX", "components": []}')
    image = "registry.example/cifar-job@sha256:" + "ab" * 32
    monkeypatch.setenv("CIFAR_SBOM", str(sbom))
    monkeypatch.setenv("CIFAR_IMAGE", image)
    root = tmp_path / "models"
    assert _invoke("publish", runs["good"], root, *NO_GATE).exit_code == 0
    runtime = read_sidecar(root / "cifar10-cnn" / "1")["provenance"]["runtime"]
    assert runtime == {"image": image, "sbom": {"path": str(sbom), "sha256": _sha(sbom), "format": "CycloneDX JSON"}}
    card = (root / "cifar10-cnn" / "1" / "model_card.md").read_text()
    assert f"- Measured in image: `{image}`" in card and f"sha256 `{_sha(sbom)}`" in card

    monkeypatch.delenv("CIFAR_IMAGE")
    sbom.unlink()  # named but gone: the record says there is none rather than guess
    assert _invoke("publish", runs["worse"], root, *NO_GATE).exit_code == 0
    assert read_sidecar(root / "cifar10-cnn" / "2")["provenance"]["runtime"] == {"image": None, "sbom": None}
