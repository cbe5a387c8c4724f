"""TensorBoard's event files, read back as TensorBoard reads them: training's per-epoch scalars (a resumed run logs
every epoch exactly once), validation's confusion matrix and misclassified images, an experiment's HParams; and the
run's best.keras, which loads with plain Keras and predicts what the best weights and the ONNX export predict."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import onnxruntime as ort
import pytest
from tensorboard.backend.event_processing.event_accumulator import DEFAULT_SIZE_GUIDANCE, EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util.tensor_util import make_ndarray

from job.config.settings import load_config
from job.core.errors import StorageFull
from job.core.paths import ExperimentPaths, RunPaths
from job.data.dataset import load_dataset
from job.models.contract import scale
from job.models.registry import build_model
from job.training.tensorboard_scalars import RUNS
from job.training.train import train_model

from .test_experiment_run import DATA, ENV, TIMEOUT, small_spec

PNG = b"\x89PNG\r\n\x1a\n"
LEARNING_RATES = [0.01, 0.05]


@pytest.fixture(scope="module")
def images(real_archive: Path) -> np.ndarray:
    """A few real test images as the model takes them."""
    return scale(load_dataset(load_config(env={}, overrides={"data.source": str(real_archive), "data.test_limit": 100}).data).test_images[:8])


def _events(directory: Path) -> EventAccumulator:
    """Everything in one run directory's event files, nothing sampled away."""
    accumulator = EventAccumulator(str(directory), size_guidance=dict.fromkeys(DEFAULT_SIZE_GUIDANCE, 0))
    accumulator.Reload()
    return accumulator


# --- training: train/ and validation/ every epoch, across a resume ----------------------------------


class _Interrupted(Exception):
    pass


class _StopBeforeEpoch(keras.callbacks.Callback):
    """Ends the process's training before epoch `epoch` (0-based), as a preemption would after a saved epoch."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.epoch:
            raise _Interrupted


@pytest.fixture(scope="module")
def resumed(real_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 epochs on 1,000 images: 2 here, then the third in a new process (a resume), with validation/'s events of the
    first process lost, as a kill between the checkpoint and the logging would lose them."""
    run = tmp_path_factory.mktemp("tensorboard") / "run"
    overrides = {"out": str(run), "data.source": str(real_archive), "data.train_limit": 1000, "data.test_limit": 100}
    config = load_config(env={}, overrides={**overrides, "train.epochs": 3, "train.augment": False})
    keras.backend.clear_session()  # layer names as a fresh process makes them, which the resume's checkpoint check compares
    with pytest.raises(_Interrupted):
        train_model(config, RunPaths(run), callbacks=[_StopBeforeEpoch(2)])
    assert [row["epoch"] for row in json.loads((run / "history.json").read_text())] == [1, 2]
    for file in (run / "tensorboard" / "validation").glob("*tfevents*"):
        file.unlink()
    resume = [sys.executable, "-m", "job", "train", "--config", str(run / "config.yaml")]  # the effective config it recorded
    done = subprocess.run(resume, capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
    assert done.returncode == 0 and "resuming after epoch 2" in done.stderr, done.stderr
    return run


def test_a_resumed_training_logs_every_epoch_exactly_once_from_its_history(resumed: Path) -> None:
    history = json.loads((resumed / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    for run, tags in RUNS.items():
        events = _events(resumed / "tensorboard" / run)
        assert sorted(events.Tags()["tensors"]) == sorted(tags), run
        for tag, key in tags.items():
            logged = events.Tensors(tag)
            assert [e.step for e in logged] == [1, 2, 3], (run, tag)
            assert [float(make_ndarray(e.tensor_proto)) for e in logged] == pytest.approx([row[key] for row in history], rel=1e-6)
    assert len(list((resumed / "tensorboard" / "train").glob("*tfevents*"))) == 2  # one per process


def test_best_keras_loads_with_keras_and_predicts_what_the_best_weights_predict(resumed: Path, images: np.ndarray) -> None:
    weights = build_model("reference_cnn")
    weights.load_weights(resumed / "best.weights.h5")
    model = keras.models.load_model(resumed / "best.keras")
    assert np.array_equal(model.predict(images, verbose=0), weights.predict(images, verbose=0))
    assert not [p.name for p in resumed.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_full_disk_while_logging_is_storage_full(tmp_path: Path) -> None:
    """A real tmpfs, filled up, under the writer (a private mount namespace)."""
    script = (
        "import sys\nfrom pathlib import Path\nfrom job.training.tensorboard_scalars import EpochScalars\n"
        "d = Path(sys.argv[1])\n"
        "(d / 'filler').write_bytes(bytes(60 << 10))  # one 4 KiB page of 64 KiB left\n"
        "rows = [{'epoch': e, 'loss': 1.0, 'accuracy': 0.5, 'learning_rate': 0.01, 'val_loss': 1.0, 'val_accuracy': 0.5} for e in range(1, 200)]\n"
        "try:\n    EpochScalars(d / 'tensorboard').write(rows)\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    mount = tmp_path / "small"
    mount.mkdir()
    command = 'mount -t tmpfs -o size=64k tmpfs "$1" || exit 99; shift; exec "$@"'
    done = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c", command, "sh", str(mount), sys.executable, "-c", script, str(mount)],
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"{StorageFull.__name__} TensorBoard events in {mount}/tensorboard: cannot write (no space left on device)"


# --- an experiment: HParams per trial; its chosen trial validated: test images ------------------------


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two trials (learning rates), one epoch on 600 images each, then selection, export, validation, publishing."""
    tmp_path = tmp_path_factory.mktemp("tb-experiment")
    spec, out = small_spec(tmp_path, grid={"train.learning_rate": LEARNING_RATES}), tmp_path / "exp"
    command = [sys.executable, "-m", "job", "experiment", "run", str(spec), "--out", str(out), *DATA]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
    assert done.returncode == 0, done.stderr
    return out


def test_each_trial_carries_its_hyperparameters_and_best_figures_for_the_hparams_view(experiment: Path) -> None:
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    rows = json.loads((experiment / "summary.json").read_text())["trial_rows"]
    for row, rate in zip(rows, LEARNING_RATES, strict=True):
        directory = ExperimentPaths(experiment).trial(row["index"]).tensorboard
        events = _events(directory)
        content = {tag: HParamsPluginData.FromString(data) for tag, data in events.PluginTagToContent(hparams_metadata.PLUGIN_NAME).items()}
        session = content[hparams_metadata.SESSION_START_INFO_TAG].session_start_info
        assert session.group_name == f"{row['index']:04d}"
        assert session.hparams["train.learning_rate"].number_value == rate
        declared = content[hparams_metadata.EXPERIMENT_TAG].experiment
        assert [m.name.tag for m in declared.metric_infos] == ["best_val_accuracy", "best_val_loss"]
        assert [h.name for h in declared.hparam_infos] == ["train.learning_rate"]
        for metric in ("val_accuracy", "val_loss"):
            (logged,) = events.Scalars(f"best_{metric}")
            assert (logged.step, logged.value) == (row["best_epoch"], pytest.approx(row[metric], rel=1e-6))
        for run in RUNS:  # the trial's training, beside: `tensorboard --logdir <experiment>/trials` shows it all
            assert [e.step for e in _events(directory / run).Tensors("epoch_loss")] == [1]


def test_validation_writes_the_confusion_matrix_and_misclassified_test_images(experiment: Path) -> None:
    chosen = ExperimentPaths(experiment).trial(json.loads((experiment / "selection.json").read_text())["trial"])
    events = _events(chosen.tensorboard / "test")
    assert sorted(events.PluginTagToContent("images")) == ["confusion_matrix", "misclassified"]
    for tag in ("confusion_matrix", "misclassified"):
        (image,) = events.Tensors(tag)
        width, height, png = make_ndarray(image.tensor_proto)  # as tf.summary.image writes it
        assert png.startswith(PNG) and len(png) > 10_000
        assert struct.unpack(">II", png[16:24]) == (int(width), int(height))
        assert 400 <= int(width) <= 2000 and 300 <= int(height) <= 2000, (tag, width, height)
    assert make_ndarray(events.Tensors("confusion_matrix")[0].tensor_proto)[2] == chosen.confusion_png.read_bytes()
    metrics = json.loads(chosen.metrics_json.read_text())
    wrong = metrics["data"]["images"] - sum(row[i] for i, row in enumerate(metrics["confusion_matrix"]))
    assert wrong > 36  # one epoch on 480 images: most of the 100 test images are wrong
    description = events.SummaryMetadata("misclassified").summary_description
    assert description.startswith(f"The first 36 of {wrong} misclassified test images") and "true → predicted" in description


def test_best_keras_predicts_what_the_onnx_export_predicts(experiment: Path, images: np.ndarray) -> None:
    chosen = ExperimentPaths(experiment).trial(json.loads((experiment / "selection.json").read_text())["trial"])
    session = ort.InferenceSession(chosen.onnx.read_bytes(), providers=["CPUExecutionProvider"])
    onnx_probabilities = session.run(None, {session.get_inputs()[0].name: images})[0]
    keras_probabilities = keras.models.load_model(chosen.best_keras).predict(images, verbose=0)
    assert np.allclose(keras_probabilities, onnx_probabilities, atol=1e-5)
