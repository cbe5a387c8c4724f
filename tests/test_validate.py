"""Validation with onnxruntime on the real test set: metrics, reports, gate, providers, bad model files."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from export.gate import check_gate
from export.modelfile import set_metadata
from export import session
from export.session import nvidia_driver_present, open_session
from export.validate import validate_model
from job.cli import main
from job.config.settings import load_config
from job.models.contract import scale
from job.data.dataset import load_dataset
from job.core.errors import DataError, DeviceUnavailable, GateFailed, ModelFileError
from job.core.paths import RunPaths

from .conftest import CLASS_NAMES, REAL_SHA256
from .onnx_models import fit_mean_colour, mean_colour_model, predict_numpy

# A GPU node has the NVIDIA device files; without them the CUDA provider cannot run.
HAS_GPU = Path("/dev/nvidiactl").exists()


def _sets(**keys: object) -> dict[str, object]:
    return {k.replace("__", "."): v for k, v in keys.items()}


@pytest.fixture(scope="module")
def data(real_archive: Path):
    return load_dataset(load_config(env={}, overrides={"data.source": str(real_archive)}).data)


@pytest.fixture(scope="module")
def model(data) -> onnx.ModelProto:
    weights, bias = fit_mean_colour(data.train_images, data.train_labels)
    return mean_colour_model(weights, bias, trained_on=data.fingerprint)


def _config(real_archive: Path, run: Path, **keys: object):
    overrides = {"out": str(run), "data.source": str(real_archive), "data.checksum": f"sha256:{REAL_SHA256}"}
    return load_config(env={}, overrides={**overrides, **_sets(**keys)})


def _run_dir(tmp_path: Path, model: onnx.ModelProto | bytes) -> Path:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "model.onnx").write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    return run


def _cli(real_archive: Path, run: Path, *args: str) -> list[str]:
    return ["validate", "--data", str(real_archive), "--out", str(run), "--set", f"publish.root={run.parent / 'models'}", *args]


def _independent_scores(model: onnx.ModelProto, data) -> dict:
    """Predictions from a plain onnxruntime session and per-class scores by counting, sharing no code with validate."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    predicted = session.run(["probabilities"], {"images": scale(data.test_images)})[0].argmax(axis=1)
    per_class = {}
    for c, name in enumerate(CLASS_NAMES):
        tp = int(np.sum((predicted == c) & (data.test_labels == c)))
        n_pred, n_true = int(np.sum(predicted == c)), int(np.sum(data.test_labels == c))
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": n_true}
    confusion = [[int(np.sum((data.test_labels == t) & (predicted == p))) for p in range(10)] for t in range(10)]
    return {
        "predicted": predicted,
        "accuracy": float(np.mean(predicted == data.test_labels)),
        "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])),
        "weighted_f1": float(sum(c["f1"] * c["support"] for c in per_class.values()) / len(predicted)),
        "per_class": per_class,
        "confusion_matrix": confusion,
    }


def test_metrics_match_an_independent_computation(real_archive: Path, tmp_path: Path, data, model) -> None:
    run = _run_dir(tmp_path, model)
    config = _config(real_archive, run, gate__min_accuracy=0, gate__min_weighted_f1=0, validate__device="cpu")
    result = validate_model(config, RunPaths(run), data)

    expected = _independent_scores(model, data)
    doc = json.loads((run / "metrics.json").read_text())
    for source in (doc, {"accuracy": result.accuracy, "macro_f1": result.macro_f1, "weighted_f1": result.weighted_f1}):
        for key in ("accuracy", "macro_f1", "weighted_f1"):
            assert source[key] == pytest.approx(expected[key], abs=1e-12), key
    assert doc["confusion_matrix"] == expected["confusion_matrix"]
    for name in CLASS_NAMES:
        assert doc["per_class"][name] == pytest.approx(expected["per_class"][name], abs=1e-12), name
    assert doc["data"] == {
        "split": "test", "source": str(real_archive), "sha256": REAL_SHA256,
        "fingerprint": data.fingerprint, "training_data": True, "images": 10_000,
    }  # fmt: skip
    # The fitted mean-colour model is weak but real: better than chance, and numpy agrees with onnxruntime.
    assert 0.15 < doc["accuracy"] < 0.5
    assert np.mean(predict_numpy(data.test_images, *fit_mean_colour(data.train_images, data.train_labels)) == expected["predicted"]) > 0.995


def test_reports_have_stable_keys_a_model_card_and_a_plot(real_archive: Path, tmp_path: Path, data, model) -> None:
    run = _run_dir(tmp_path, model)
    config = _config(real_archive, run, gate__min_accuracy=0, gate__min_weighted_f1=0, validate__device="cpu", validate__batch_size=1000)
    validate_model(config, RunPaths(run), data)

    doc = json.loads((run / "metrics.json").read_text())
    assert list(doc) == [
        "schema_version", "validated_at", "model", "data", "class_names", "accuracy", "macro_f1", "weighted_f1",
        "per_class", "confusion_matrix", "inference", "gate", "runtime", "duration_s",
    ]  # fmt: skip
    assert doc["schema_version"] == 1 and doc["class_names"] == CLASS_NAMES
    assert doc["model"]["sha256"] == __import__("hashlib").sha256((run / "model.onnx").read_bytes()).hexdigest()
    inference = doc["inference"]
    assert inference["providers"] == ["CPUExecutionProvider"] and inference["device"] == "cpu" and inference["batch_size"] == 1000
    assert inference["images_per_second"] > 0 and 0 < inference["batch_latency_ms"]["p50"] <= inference["batch_latency_ms"]["max"]
    assert doc["gate"] == {
        "passed": True, "failures": [], "baseline_version": None,
        "thresholds": {"min_accuracy": 0.0, "min_weighted_f1": 0.0, "max_regression": None},
    }  # fmt: skip

    card = (run / "model_card.md").read_text()
    assert "mean_colour: ReduceMean -> MatMul -> Softmax (test model)" in card
    assert f"- Accuracy: **{doc['accuracy']:.4f}**" in card
    for name in CLASS_NAMES:
        c = doc["per_class"][name]
        assert f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |" in card
        assert f"| {name} | " + " | ".join(map(str, doc["confusion_matrix"][CLASS_NAMES.index(name)])) + " |" in card
    png = (run / "confusion_matrix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.parametrize(
    "training_config, kept",
    [
        ({"train": {"keep": "last"}}, "- Last epoch 3 of 3 (train.keep=last: these weights); stopped by the epoch limit"),
        ({"train": {"keep": "best"}}, "- Best epoch 3 of 3 (lowest validation loss: these weights); stopped by the epoch limit"),
        ([1, 2], "- Best epoch 3 of 3 (lowest validation loss: these weights)"),  # metadata of another shape: still a card
        ({"model": "x", "train": 5}, "- Model `unknown`; recipe not known"),
    ],
)
def test_the_card_says_which_epoch_s_weights_the_model_holds(real_archive, tmp_path, data, model, training_config, kept) -> None:
    stamped = onnx.ModelProto()
    stamped.CopyFrom(model)
    set_metadata(stamped, {"training_config": json.dumps(training_config), "training_config_digest": "d" * 64})
    run = _run_dir(tmp_path, stamped)
    record = {"best_epoch": 3, "epochs_run": 3, "stopped_early": False, "config_digest": "d" * 64, "dataset_fingerprint": data.fingerprint}
    (run / "train.json").write_text(json.dumps(record))
    validate_model(_config(real_archive, run, gate__min_accuracy=0, gate__min_weighted_f1=0, validate__device="cpu"), RunPaths(run), data)
    assert kept in (run / "model_card.md").read_text()


@pytest.mark.parametrize("margin, exit_code", [(-0.001, 0), (0.001, 6)])
def test_gate_passes_or_fails_at_its_threshold_with_its_exit_code(real_archive, tmp_path, data, model, margin, exit_code) -> None:
    expected = _independent_scores(model, data)
    run = _run_dir(tmp_path, model)
    thresholds = ["--set", f"gate.min_accuracy={expected['accuracy'] + margin}", "--set", "gate.min_weighted_f1=0"]
    result = CliRunner().invoke(main, _cli(real_archive, run, "--device", "cpu", *thresholds))

    assert result.exit_code == exit_code, result.output
    doc = json.loads((run / "metrics.json").read_text())  # written either way: it says why
    assert doc["gate"]["passed"] is (exit_code == 0)
    if exit_code:
        assert result.stderr.strip().splitlines()[-1] == (
            f"cifar-job: error: quality gate failed: accuracy {expected['accuracy']:.4f} < {expected['accuracy'] + margin:.4f} (gate.min_accuracy)"
        )
        assert "Quality gate: **failed**" in (run / "model_card.md").read_text()
    else:
        assert result.stdout.startswith(f"accuracy {expected['accuracy']:.4f}, weighted F1 {expected['weighted_f1']:.4f}")
    assert not (run.parent / "models").exists()  # validation never publishes


def test_a_non_finite_score_never_passes_the_gate() -> None:
    lenient = load_config(env={}, overrides={"gate.min_accuracy": 0, "gate.min_weighted_f1": 0}).gate
    for forged in (float("nan"), float("inf")):
        verdict = check_gate({"accuracy": forged, "weighted_f1": 0.9}, lenient)
        assert not verdict.passed and verdict.failures[0] == f"accuracy is {forged!r}, not a finite number"


def test_a_model_that_outputs_nan_is_refused(real_archive: Path, tmp_path: Path, data) -> None:
    nan_bias = np.full(10, np.nan)
    run = _run_dir(tmp_path, mean_colour_model(np.zeros((3, 10)), nan_bias, trained_on=data.fingerprint))
    with pytest.raises(ModelFileError, match="outputs non-finite probabilities on the test set"):
        validate_model(_config(real_archive, run, validate__device="cpu"), RunPaths(run), data)
    assert sorted(p.name for p in run.iterdir()) == ["model.onnx"]


def test_one_process_measures_the_same_bytes_once_and_other_bytes_or_data_anew(data, model) -> None:
    """validate, publish and variants in one `cifar-job run` share one measurement of the same model on the same data;
    a model whose bytes changed in between, or another test set, is measured again."""
    import dataclasses

    from export.scores import measure_outputs

    blob = model.SerializeToString()
    first, probabilities = measure_outputs(blob, data, "cpu", 256, "model")
    again, scribbled = measure_outputs(blob, data, "cpu", 256, "model")
    assert again is first and np.array_equal(scribbled, probabilities)
    scribbled[:] = 0  # a caller's copy is its own
    assert np.array_equal(measure_outputs(blob, data, "cpu", 256, "model")[1], probabilities)

    always_nine = mean_colour_model(np.zeros((3, 10)), np.arange(10.0), trained_on=data.fingerprint).SerializeToString()
    assert measure_outputs(always_nine, data, "cpu", 256, "model")[0].accuracy == pytest.approx(0.1)
    relabelled = dataclasses.replace(data, test_labels=(data.test_labels + 1) % 10)
    assert measure_outputs(blob, relabelled, "cpu", 256, "model")[0].accuracy < first.accuracy / 2


def test_a_model_is_validated_only_on_the_data_set_it_was_trained_on(real_archive: Path, tmp_path: Path, data, model, make_archive) -> None:
    other = make_archive()
    unbound = mean_colour_model(*fit_mean_colour(data.train_images, data.train_labels))  # exported elsewhere: no fingerprint
    for candidate, source in ((unbound, real_archive), (model, other)):
        run = _run_dir(tmp_path, candidate)
        with pytest.raises(DataError, match=r"not the data set model .* was trained on .*validate.allow_other_test_set=true"):
            validate_model(_config(real_archive, run, data__source=str(source), data__checksum="none"), RunPaths(run))
        assert sorted(p.name for p in run.iterdir()) == ["model.onnx"]
    config = _config(real_archive, run, data__source=str(other), data__checksum="none", validate__allow_other_test_set=True,
                     gate__min_accuracy=0, gate__min_weighted_f1=0)  # fmt: skip
    validate_model(config, RunPaths(run))
    doc = json.loads((run / "metrics.json").read_text())
    assert doc["data"]["training_data"] is False and doc["data"]["source"] == str(other)
    assert "**not the data set the model was trained on**" in (run / "model_card.md").read_text()


def test_gate_defaults_are_the_reference_study_and_regression_is_checked_against_the_published_model() -> None:
    gate = load_config(env={}).gate
    assert (gate.min_accuracy, gate.min_weighted_f1, gate.max_regression) == (0.7562, 0.7539, None)
    assert check_gate({"accuracy": 0.7562, "weighted_f1": 0.7539}, gate).passed
    failed = check_gate({"accuracy": 0.80, "weighted_f1": 0.7538}, gate)
    assert not failed.passed and failed.failures == ("weighted_f1 0.7538 < 0.7539 (gate.min_weighted_f1)",)

    published = {"version": 4, "metrics": {"accuracy": 0.80, "weighted_f1": 0.79}}
    strict = load_config(env={}, overrides={"gate.max_regression": 0.01}).gate
    assert check_gate({"accuracy": 0.79, "weighted_f1": 0.78}, strict, published).passed  # within 0.01
    regressed = check_gate({"accuracy": 0.785, "weighted_f1": 0.79}, strict, published)
    assert not regressed.passed and regressed.baseline_version == 4
    assert regressed.failures == ("accuracy 0.7850 is more than 0.0100 below published version 4 (0.8000) (gate.max_regression)",)
    assert check_gate({"accuracy": 0.785, "weighted_f1": 0.79}, gate, published).passed  # regression check off by default


# --- execution providers -----------------------------------------------------------------------


def test_cpu_runs_on_the_cpu_provider_only(model) -> None:
    assert open_session(model.SerializeToString(), "cpu", "m").get_providers() == ["CPUExecutionProvider"]


def test_auto_prefers_cuda_and_falls_back_to_cpu_with_one_warning(model, caplog) -> None:
    """A run opens several sessions; the fallback is said once, in one line."""
    session._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="export.session"):
        providers = [open_session(model.SerializeToString(), "auto", "m").get_providers() for _ in range(3)]
    if HAS_GPU:
        assert providers[0][0] == "CUDAExecutionProvider"
    else:
        assert providers == [["CPUExecutionProvider"]] * 3
        warnings = [r.message for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "validate.device=auto" in warnings[0] and "validating on the CPU" in warnings[0]


def test_gpu_without_a_gpu_fails_with_exit_7_and_writes_nothing(real_archive: Path, tmp_path: Path, model) -> None:
    run = _run_dir(tmp_path, model)
    if HAS_GPU:  # the same request must then really run on CUDA
        assert open_session(model.SerializeToString(), "gpu", "m").get_providers()[0] == "CUDAExecutionProvider"
        return
    why = "CUDAExecutionProvider is not running" if nvidia_driver_present() else "no NVIDIA driver on this machine (libcuda.so.1 not found)"
    with pytest.raises(DeviceUnavailable, match=re.escape(f"validate.device=gpu: {why}")):
        open_session(model.SerializeToString(), "gpu", "m")
    result = CliRunner().invoke(main, _cli(real_archive, run, "--device", "gpu"))
    assert result.exit_code == 7
    assert result.stderr.strip().splitlines()[-1].startswith(f"cifar-job: error: validate.device=gpu: {why}")
    assert sorted(p.name for p in run.iterdir()) == ["model.onnx"]


# --- bad model files ---------------------------------------------------------------------------


def _with(model: onnx.ModelProto, edit) -> bytes:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    edit(copy)
    return copy.SerializeToString()


def _dims(value, dims):
    for d, size in zip(value.type.tensor_type.shape.dim, dims):
        d.Clear()
        if isinstance(size, int):
            d.dim_value = size
        else:
            d.dim_param = size


BAD_FILES = {
    "empty": (lambda m: b"", "not a valid ONNX model"),
    "garbage": (lambda m: b"\x08\x07not a model at all" * 50, "not a valid ONNX model"),
    "truncated": (lambda m: m.SerializeToString()[:-200], "not a valid ONNX model"),
    "small images": (
        lambda m: _with(m, lambda c: _dims(c.graph.input[0], ["N", 28, 28, 3])),
        "expected one float32 input 'images' of shape [N, 32, 32, 3], found float 'images' of shape [N, 28, 28, 3]",
    ),
    "fixed batch": (
        lambda m: _with(m, lambda c: (_dims(c.graph.input[0], [1, 32, 32, 3]), _dims(c.graph.output[0], [1, 10]))),
        "expected one float32 input 'images' of shape [N, 32, 32, 3], found float 'images' of shape [1, 32, 32, 3]",
    ),
    "wrong output name": (
        lambda m: mean_colour_model(np.zeros((3, 10)), np.zeros(10), output_name="scores").SerializeToString(),
        "expected one float32 output 'probabilities' of shape [N, 10], found float 'scores' of shape [N, 10]",
    ),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_corrupt_or_wrong_shaped_model_is_a_clear_error(real_archive: Path, tmp_path: Path, model, kind: str) -> None:
    make, message = BAD_FILES[kind]
    run = _run_dir(tmp_path, make(model))
    result = CliRunner().invoke(main, _cli(real_archive, run, "--device", "cpu"))
    assert result.exit_code == 5, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"cifar-job: error: model {run / 'model.onnx'}: ") and message in lines[-1]
    assert not (run / "metrics.json").exists()


def test_a_missing_model_names_the_stage_to_run(real_archive: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"model .*model.onnx: no such file; run `cifar-job export` first"):
        validate_model(_config(real_archive, tmp_path / "empty"), RunPaths(tmp_path / "empty"))


def test_validate_never_imports_tensorflow(real_archive: Path, tmp_path: Path, model) -> None:
    run = _run_dir(tmp_path, model)
    script = (
        "import sys\nfrom job.cli import main\n"
        "try:\n    main(sys.argv[1:], prog_name='cifar-job')\nexcept SystemExit as e:\n    code = e.code\n"
        "print('exit', code, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    args = _cli(real_archive, run, "--device", "cpu", "--set", "gate.min_accuracy=0", "--set", "gate.min_weighted_f1=0")
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "exit 0 False False", done.stderr


def test_validation_reports_a_failed_gate_and_leaves_enforcing_it_to_the_caller(real_archive: Path, tmp_path: Path, data, model) -> None:
    run = _run_dir(tmp_path, model)
    result = validate_model(_config(real_archive, run, validate__device="cpu"), RunPaths(run), data)
    assert not result.gate.passed and {p.name for p in run.iterdir()} >= {"metrics.json", "model_card.md", "confusion_matrix.png"}
    with pytest.raises(GateFailed, match=r"^quality gate failed: accuracy 0\.\d{4} < 0\.7562 \(gate\.min_accuracy\); weighted_f1 "):
        result.gate.enforce()
