"""Export of a briefly trained model to ONNX: signature, graph, metadata, and the parity check."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from click.testing import CliRunner

from export.convert import TRAINING_ONLY_OPS
from export.modelfile import metadata
from job.cli import main
from job.config.settings import load_config
from job.models.contract import scale
from job.data.dataset import load_dataset

from .conftest import CLASS_NAMES, REAL_SHA256, TRAINED_SLICE


def _args(command: str, real_archive: Path, run: Path, *extra: str) -> list[str]:
    return [command, "--data", str(real_archive), "--checksum", f"sha256:{REAL_SHA256}", "--out", str(run), *TRAINED_SLICE, *extra]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(trained_run: Path, tmp_path_factory) -> Path:
    """This module's own copy of the session's training."""
    return shutil.copytree(trained_run, tmp_path_factory.mktemp("export") / "run")


@pytest.fixture(scope="module")
def exported(trained: Path, real_archive: Path) -> Path:
    result = CliRunner().invoke(main, _args("export", real_archive, trained))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("exported opset 17 (IR 8), ") and "parity on 1000 images" in result.stdout
    return trained


@pytest.fixture
def copy(exported: Path, tmp_path: Path) -> Path:
    return shutil.copytree(exported, tmp_path / "run")


def test_the_graph_has_the_serving_signature_and_inference_ops_only(exported: Path) -> None:
    model = onnx.load(exported / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] == [("", 17)]
    assert model.ir_version == 8

    def signature(value: onnx.ValueInfoProto) -> tuple:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        return value.name, value.type.tensor_type.elem_type, dims

    assert [signature(v) for v in model.graph.input] == [("images", onnx.TensorProto.FLOAT, ["N", 32, 32, 3])]
    assert [signature(v) for v in model.graph.output] == [("probabilities", onnx.TensorProto.FLOAT, ["N", 10])]
    ops = {node.op_type for node in model.graph.node}
    assert not ops & TRAINING_ONLY_OPS and {"Conv", "MaxPool", "MatMul", "Softmax"} <= ops

    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 7):  # the batch dimension is dynamic
        (p,) = session.run(["probabilities"], {"images": np.random.default_rng(batch).random((batch, 32, 32, 3), np.float32)})
        assert p.shape == (batch, 10) and np.allclose(p.sum(axis=1), 1, atol=1e-5)


def test_metadata_tells_a_serving_team_what_to_feed_and_where_it_came_from(exported: Path, real_archive: Path) -> None:
    meta = {p.key: p.value for p in onnx.load(exported / "model.onnx").metadata_props}
    config = load_config(env={}, overrides={"data.source": str(real_archive), "data.checksum": f"sha256:{REAL_SHA256}", "train.epochs": 2,
                                            "data.train_limit": 1000, "data.test_limit": 100, "train.augment": False})  # fmt: skip
    assert json.loads(meta["class_names"]) == CLASS_NAMES
    assert (meta["input_name"], meta["output_name"]) == ("images", "probabilities")
    assert meta["input_layout"] == "float32 NHWC [N, 32, 32, 3], RGB" and "/ 255" in meta["input_scaling"]
    assert meta["training_config_digest"] == config.training_digest()
    assert json.loads(meta["training_config"])["train"] == config.to_dict()["train"]
    assert meta["dataset_sha256"] == REAL_SHA256
    assert json.loads(meta["dataset"]) == {"source": str(real_archive), "train_images": 800, "validation_images": 200, "test_images": 100}
    assert meta["weights_sha256"] == _sha(exported / "best.weights.h5")
    assert meta["parameters"] == "2193226" and meta["onnx_opset"] == "17"
    assert meta["architecture"].startswith("reference_cnn: Conv2D(32, 3x3, relu) -> MaxPooling2D(2x2) -> Dropout(0.2) -> ")
    assert set(json.loads(meta["versions"])) == {"tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "cifar-job"}

    record = json.loads((exported / "export.json").read_text())
    assert record["onnx_sha256"] == _sha(exported / "model.onnx") and record["weights_sha256"] == meta["weights_sha256"]
    assert record["size_bytes"] == (exported / "model.onnx").stat().st_size and record["opset"] == 17


def test_onnxruntime_agrees_with_keras_on_1000_real_images(exported: Path, real_archive: Path) -> None:
    """Recomputed here, independently of the export's own check."""
    from job.models.registry import build_model

    record = json.loads((exported / "export.json").read_text())
    assert record["parity_images"] == 1000 and record["parity_max_abs_diff"] <= 1e-4

    images = scale(load_dataset(load_config(env={}, overrides={"data.source": str(real_archive)}).data).test_images[:1000])
    keras_model = build_model("reference_cnn")
    keras_model.load_weights(exported / "best.weights.h5")
    expected = keras_model.predict(images, batch_size=250, verbose=0)
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    (actual,) = session.run(["probabilities"], {"images": images})
    assert np.abs(expected - actual).max() <= 1e-4
    assert (expected.argmax(axis=1) == actual.argmax(axis=1)).all()
    assert len(np.unique(actual.argmax(axis=1))) > 1  # a trained model, not a constant one


def test_a_failed_parity_check_exits_4_and_keeps_the_previous_model(copy: Path, real_archive: Path) -> None:
    run = copy
    before = {name: (run / name).read_bytes() for name in ("model.onnx", "export.json")}
    # No two numerical back ends agree to 1e-12: the comparison must notice and refuse.
    result = CliRunner().invoke(main, _args("export", real_archive, run, "--set", "export.parity_atol=1e-12"))
    assert result.exit_code == 4, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cifar-job: error: parity check failed on 1000 images: max |Keras - onnxruntime| = ")
    assert last.endswith("(export.parity_atol = 1e-12), top class differs on 0; model.onnx not written")
    assert {name: (run / name).read_bytes() for name in before} == before


def test_export_needs_a_finished_training(real_archive: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, _args("export", real_archive, tmp_path / "never-trained"))
    assert result.exit_code == 5
    assert "no finished training (train.json, best.weights.h5); run `cifar-job train` first" in result.stderr


def test_export_refuses_a_config_the_weights_were_not_trained_with(copy: Path, real_archive: Path) -> None:
    before = (copy / "model.onnx").read_bytes()
    result = CliRunner().invoke(main, _args("export", real_archive, copy, "--set", "train.seed=7"))
    assert result.exit_code == 2
    assert "trained with a different training config" in result.stderr
    assert (copy / "model.onnx").read_bytes() == before


def test_corrupt_weights_are_a_clear_error(copy: Path, real_archive: Path) -> None:
    weights, before = copy / "best.weights.h5", (copy / "model.onnx").read_bytes()
    weights.write_bytes(weights.read_bytes()[:5000])
    result = CliRunner().invoke(main, _args("export", real_archive, copy))
    assert result.exit_code == 5
    assert result.stderr.strip().splitlines()[-1].startswith(f"cifar-job: error: weights {weights}: cannot load into reference_cnn (")
    assert (copy / "model.onnx").read_bytes() == before


def test_export_refuses_data_the_weights_were_not_trained_on(copy: Path, make_archive) -> None:
    """The same config over another archive: the model's metadata would name data it never saw."""
    before = (copy / "model.onnx").read_bytes()
    other = make_archive()
    result = CliRunner().invoke(main, ["export", "--data", str(other), "--checksum", "none", "--out", str(copy), *TRAINED_SLICE])
    assert result.exit_code == 3, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"cifar-job: error: data {other}: not the data set {copy} was trained on (fingerprints differ); export with the same data"
    )
    assert (copy / "model.onnx").read_bytes() == before


def test_the_model_records_the_fingerprint_of_its_training_data(exported: Path) -> None:
    fingerprint = json.loads((exported / "train.json").read_text())["dataset_fingerprint"]
    assert len(fingerprint) == 64 and metadata(onnx.load(exported / "model.onnx"))["dataset_fingerprint"] == fingerprint


def test_stage_commands_on_a_run_directory_start_from_its_recorded_config(copy: Path) -> None:
    """`validate --out RUN` alone measures on the data RUN recorded (a local file): no download, the same test slice."""
    result = CliRunner().invoke(main, ["validate", "--out", str(copy), "--device", "cpu", "--set", "gate.min_accuracy=0", "--set", "gate.min_weighted_f1=0"])
    assert result.exit_code == 0, result.output
    recorded = yaml.safe_load((copy / "config.yaml").read_text())
    assert recorded["gate"]["min_accuracy"] == 0 and recorded["data"]["test_limit"] == 100  # flags on top of the record
    assert json.loads((copy / "metrics.json").read_text())["data"]["images"] == 100


def test_a_different_recipe_on_a_run_directory_is_refused_with_one_line(copy: Path) -> None:
    before = (copy / "config.yaml").read_bytes()
    result = CliRunner().invoke(main, ["validate", "--out", str(copy), "--recipe", "fast"])
    assert result.exit_code == 2
    assert result.stderr.startswith("cifar-job: error: config key recipe: 'fast' asked, but run directory ")
    assert "a different recipe needs a new --out" in result.stderr and result.stderr.count("\n") == 1
    assert (copy / "config.yaml").read_bytes() == before
