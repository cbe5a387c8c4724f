"""Training on a slice of the real archive: artifacts, resume, and preemption by SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from job.cli import main
from job.config.settings import load_config
from job.training.input_pipeline import training_dataset

from .conftest import on_tmpfs, train_args


@pytest.fixture
def trained(trained_run: Path) -> Path:
    return trained_run


def test_training_writes_weights_history_plots_and_result(trained: Path) -> None:
    history = json.loads((trained / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "best_val_loss", "best_epoch"):
        assert all(np.isfinite(row[key]) for row in history), key
    assert history[1]["learning_rate"] < history[0]["learning_rate"] < 0.01  # time-based decay per step
    csv_lines = (trained / "history.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,") and len(csv_lines) == 3
    for plot in ("loss", "accuracy", "learning_rate"):
        assert (trained / "plots" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = json.loads((trained / "train.json").read_text())
    best = min(history, key=lambda row: row["val_loss"])
    assert (result["best_epoch"], result["best_val_loss"]) == (best["epoch"], best["val_loss"])
    assert result["epochs_run"] == 2 and result["devices"] == ["CPU"] and result["train_seconds"] > 0

    with h5py.File(trained / "best.weights.h5") as weights:  # a plain Keras weights file
        assert sum(a.size for a in _arrays(weights).values()) == 2_193_226
    effective = (trained / "config.yaml").read_text()
    assert "epochs: 2" in effective and "train_limit: 1000" in effective


def test_best_weights_load_into_the_registered_model(trained: Path) -> None:
    from job.models.registry import build_model

    model = build_model("reference_cnn")
    model.load_weights(trained / "best.weights.h5")
    probabilities = model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    assert probabilities.shape == (2, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_keep_last_keeps_the_final_epochs_weights_and_never_stops_early(real_archive: Path, tmp_path: Path) -> None:
    """train.keep=last: what a one-cycle recipe serves is the annealed end of training, whatever validation says."""
    from job.data.dataset import load_dataset
    from job.models.registry import build_model

    out = tmp_path / "run"
    result = CliRunner().invoke(main, train_args(out, "--set", "train.epochs=3", "--set", "train.patience=0", "--set", "train.min_delta=100", "--set", "train.keep=last"))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith("trained 3 epochs (epoch limit); best epoch 3")  # else: epoch 1, the only one to improve by 100, and a stop
    history = json.loads((out / "history.json").read_text())
    assert [row["best_epoch"] for row in history] == [1, 2, 3]
    assert json.loads((out / "train.json").read_text())["best_epoch"] == 3

    # The kept weights score the final epoch's validation loss, which no earlier epoch's weights did.
    data = load_dataset(load_config(env={}, overrides={"data.source": str(real_archive), "data.checksum": "none", "data.train_limit": 1000}).data)
    model = build_model("reference_cnn")
    model.load_weights(out / "best.weights.h5")
    probabilities = model.predict(data.val_images.astype(np.float32) / 255, verbose=0)
    loss = -np.log(probabilities[np.arange(len(data.val_labels)), data.val_labels]).mean()
    assert [row["val_loss"] for row in history] == pytest.approx([history[0]["val_loss"], history[1]["val_loss"], loss], rel=1e-4)
    assert loss != pytest.approx(history[1]["val_loss"], rel=1e-3)


def test_rerun_of_a_finished_run_does_not_train_again(trained: Path, real_archive: Path) -> None:
    before = (trained / "state" / "checkpoint.npz").stat().st_mtime_ns
    result = CliRunner().invoke(main, train_args(trained))
    assert result.exit_code == 0
    assert result.stdout.startswith("trained 2 epochs (epoch limit)")
    assert (trained / "state" / "checkpoint.npz").stat().st_mtime_ns == before


def test_a_different_training_config_cannot_reuse_the_run_directory(trained: Path, real_archive: Path, tmp_path: Path) -> None:
    run = shutil.copytree(trained, tmp_path / "run")
    (run / "train.json").unlink()
    result = CliRunner().invoke(main, train_args(run, "--epochs", "3", "--seed", "7"))
    assert result.exit_code == 2
    assert "holds a checkpoint of a different training config" in result.stderr


def test_input_pipeline_is_a_function_of_seed_and_epoch(real_archive: Path) -> None:
    """What makes a resumed run see the same batches as an uninterrupted one."""
    cfg = load_config(env={}, overrides={"train.epochs": 3, "train.batch_size": 8}).train
    images = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(20) % 10
    from_start = [x.numpy() for x, _ in training_dataset(images, labels, cfg, first_epoch=0)]
    resumed = [x.numpy() for x, _ in training_dataset(images, labels, cfg, first_epoch=2)]
    assert len(from_start) == 9 and len(resumed) == 3  # ceil(20 / 8) batches per epoch
    assert all(np.array_equal(a, b) for a, b in zip(from_start[6:], resumed))
    assert not np.array_equal(from_start[0], from_start[3])  # each epoch its own order and augmentation
    assert all(0.0 <= b.min() and b.max() <= 1.0 for b in from_start)


# --- preemption ---------------------------------------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "job", *args]


# Every recipe shape: the study's; a one-cycle bf16 recipe, also with lookahead's slow copy; a data-initialised
# architecture with batch norm.
RESUMABLE = {
    "study": [],
    "fast": ["--set", "recipe=fast"],
    "lookahead": ["--set", "recipe=fast", "--set", "train.lookahead_decay=0.774"],
    "airbench": ["--set", "model.name=airbench", "--batch-size", "128"],
}


# airbench's deterministic kernels take about half an hour on 2 CPU cores: in the slow tier
# (`bash tests/run.sh -m slow tests/test_train.py`); the study's and `fast` cover the default suite.
@pytest.mark.parametrize("recipe", [pytest.param(r, marks=pytest.mark.slow) if r == "airbench" else r for r in RESUMABLE])
def test_sigterm_mid_epoch_then_resume_ends_like_an_uninterrupted_run(real_archive: Path, tmp_path: Path, recipe: str) -> None:
    """A real training process is preempted mid-epoch and restarted on the same run directory."""
    args = [*RESUMABLE[recipe], "--set", "data.train_limit=2000", "--set", "data.test_limit=100", "--epochs", "4"]
    args += ["--set", "train.patience=2", "--set", "train.deterministic=true", "--seed", "3"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    straight = tmp_path / "straight"
    subprocess.run(_cli("train", "--data", str(real_archive), "--out", str(straight), *args), env=env, check=True, capture_output=True)

    preempted = tmp_path / "preempted"
    command = _cli("train", "--data", str(real_archive), "--out", str(preempted), *args)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    history = preempted / "history.json"
    first_epoch_done = preempted / "plots" / "learning_rate.png"  # the last file an epoch's end writes
    deadline = time.monotonic() + 300
    while not first_epoch_done.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the second epoch's steps (an epoch here takes seconds)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("cifar-job: error: SIGTERM during epoch ") and last_line.endswith("rerun to resume")
    epochs_saved = len(json.loads(history.read_text()))
    assert not (preempted / "train.json").exists()

    resumed = subprocess.run(command, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {epochs_saved}" in resumed.stderr

    a, b = (json.loads((run / "train.json").read_text()) for run in (straight, preempted))
    assert epochs_saved < b["epochs_run"]
    for key in ("epochs_run", "best_epoch", "best_val_loss", "stopped_early"):
        assert a[key] == b[key], key
    assert json.loads((straight / "history.json").read_text()) == json.loads(history.read_text())
    with h5py.File(straight / "best.weights.h5") as wa, h5py.File(preempted / "best.weights.h5") as wb:
        arrays_a, arrays_b = _arrays(wa), _arrays(wb)
    assert arrays_a.keys() == arrays_b.keys() and all(np.array_equal(arrays_a[k], arrays_b[k]) for k in arrays_a)


def _arrays(group: h5py.Group) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    group.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


def test_training_that_requires_a_gpu_fails_without_one_and_writes_nothing(real_archive: Path, tmp_path: Path) -> None:
    """This machine has no GPU: a GPU pod whose CUDA setup is broken must fail, not train on the CPU."""
    out = tmp_path / "run"
    result = CliRunner().invoke(main, train_args(out, "--set", "train.device=gpu"))
    assert result.exit_code == 7
    assert result.stderr.strip().splitlines()[-1].startswith("cifar-job: error: train.device=gpu: TensorFlow sees no GPU")
    assert not out.exists()


# --- a tampered run directory, a diverging recipe, a full disk -----------------------------------


def _tamper_train_json(run: Path) -> None:
    (run / "train.json").write_text((run / "train.json").read_text()[:40])  # truncated


def _wrong_shape_train_json(run: Path) -> None:
    record = json.loads((run / "train.json").read_text())
    (run / "train.json").write_text(json.dumps({**record, "epochs_run": "2"}))


def _truncated_checkpoint(run: Path) -> None:
    (run / "train.json").unlink()
    checkpoint = run / "state" / "checkpoint.npz"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100_000])


def _object_array_checkpoint(run: Path) -> None:
    """The state entry replaced by a pickled object array: loading it would unpickle."""
    (run / "train.json").unlink()
    checkpoint = run / "state" / "checkpoint.npz"
    with np.load(checkpoint) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["state"] = np.array([{"epochs_done": 1}], dtype=object)
    np.savez(checkpoint, **arrays)


def _forged_state(run: Path) -> None:
    (run / "train.json").unlink()
    checkpoint = run / "state" / "checkpoint.npz"
    with np.load(checkpoint) as npz:
        arrays = {k: npz[k] for k in npz.files}
    state = json.loads(str(arrays["state"]))
    arrays["state"] = np.array(json.dumps({**state, "history": "not a list"}))
    np.savez(checkpoint, **arrays)


TAMPERED = {
    "truncated train.json": (_tamper_train_json, "record {run}/train.json: not a record this version of cifar-job wrote"),
    "train.json of the wrong shape": (_wrong_shape_train_json, "record {run}/train.json: not a record this version of cifar-job wrote (epochs_run"),
    "truncated checkpoint": (_truncated_checkpoint, "checkpoint {run}/state/checkpoint.npz: unreadable"),
    "checkpoint holding an object array": (_object_array_checkpoint, "checkpoint {run}/state/checkpoint.npz: unreadable"),
    "checkpoint state of the wrong shape": (_forged_state, "checkpoint {run}/state/checkpoint.npz: not a record this version of cifar-job wrote (history"),
}


@pytest.mark.parametrize("kind", TAMPERED)
def test_a_tampered_run_directory_is_one_line_naming_the_file_and_exit_5(trained: Path, real_archive: Path, tmp_path: Path, kind: str) -> None:
    run = shutil.copytree(trained, tmp_path / "run")
    tamper, message = TAMPERED[kind]
    tamper(run)
    result = CliRunner().invoke(main, train_args(run))
    assert result.exit_code == 5, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cifar-job: error: " + message.format(run=run)) and "Traceback" not in result.stderr


def test_a_loss_that_becomes_nan_fails_training_with_exit_13_and_keeps_the_last_good_epoch(real_archive: Path, tmp_path: Path) -> None:
    """Weights poisoned in epoch 2 stand for a diverging recipe: that epoch is not saved and nothing claims success."""
    import keras

    from job.core.errors import TrainingDiverged
    from job.core.paths import RunPaths
    from job.training.train import train_model

    run = tmp_path / "run"
    checkpoint = run / "state" / "checkpoint.npz"

    class Poison(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch, self.saved = epoch, checkpoint.read_bytes() if epoch else b""

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if self.epoch == 1 and batch == 2:
                bias = self.model.trainable_variables[-1]  # the output layer's: NaN reaches every probability
                bias.assign(np.full(bias.shape, np.nan, np.float32))

    poison = Poison()
    overrides = {"out": str(run), "data.source": str(real_archive), "data.train_limit": 1000, "data.test_limit": 100, "train.epochs": 2}
    with pytest.raises(TrainingDiverged, match=r"loss became non-finite in epoch 2 \(loss nan, val_loss nan\).*Epochs 1\.\.1 are kept"):
        train_model(load_config(env={}, overrides=overrides), RunPaths(run), callbacks=[poison])
    assert checkpoint.read_bytes() == poison.saved and not (run / "train.json").exists()
    assert len(json.loads((run / "history.json").read_text())) == 1


def test_a_full_disk_during_training_is_one_line_exit_12_and_leaves_nothing_partial(real_archive: Path, tmp_path: Path) -> None:
    """--out on a real 1 MiB tmpfs (a private mount namespace): the 8.8 MB best weights cannot fit."""
    out = tmp_path / "small"
    out.mkdir()
    done, left = on_tmpfs(out, "size=1m", *train_args(out / "run", "--epochs", "1"))
    assert done.returncode == 12, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cifar-job: error: file {out}/run/best.weights.h5: ") and "nothing was changed" in last
    assert "Traceback" not in done.stderr
    assert left and not [f for f in left if ".tmp" in f or f.endswith(".h5")], left  # no partial weights, no temporary files


# --- several replicas in one pod (MirroredStrategy), on a CPU split in two ----------------------

_TWO_REPLICAS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from job.cli import main
main(sys.argv[1:])
"""


def test_two_replicas_train_like_one_with_the_same_global_batch(real_archive: Path, tmp_path: Path) -> None:
    """The several-GPU path (MirroredStrategy) on two logical CPU devices: each replica takes half of every batch."""
    args = ["--set", "data.train_limit=1000", "--set", "data.test_limit=100", "--epochs", "2", "--batch-size", "64"]
    args += ["--set", "train.augment=false", "--set", "train.deterministic=true"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_cli("train", "--data", str(real_archive), "--out", str(one), *args), env=env, check=True, capture_output=True)
    mirrored = [sys.executable, "-c", _TWO_REPLICAS, "train", "--data", str(real_archive), "--out", str(two), *args]
    result = subprocess.run(mirrored, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

    a, b = (json.loads((run / "train.json").read_text()) for run in (one, two))
    assert a["devices"] == ["CPU"] and len(b["devices"]) == 2 and all("CPU" in d for d in b["devices"])
    # Dropout draws its own masks per replica, so the runs agree to rounding and dropout noise, not bitwise.
    history_a, history_b = (json.loads((run / "history.json").read_text()) for run in (one, two))
    for epoch_a, epoch_b in zip(history_a, history_b, strict=True):
        for key in ("loss", "val_loss"):
            assert epoch_b[key] == pytest.approx(epoch_a[key], rel=2e-3), key
