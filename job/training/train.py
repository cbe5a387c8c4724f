"""Train the registered model with the reference recipe, resumable after any interruption.

After every complete epoch the trainer saves, atomically, one checkpoint holding the model
and optimizer variables (so the learning-rate schedule position and dropout seed state too),
the early-stopping state and the history; when validation loss improves it saves the best
weights first. A rerun with the same run directory continues from the last complete epoch,
and since the input pipeline is a pure function of (seed, epoch), a resumed run with
deterministic ops ends exactly like an uninterrupted one. SIGTERM (preemption) abandons the
current step and raises `Preempted`. Each epoch's history row also goes to TensorBoard, and when
training ends the best weights are saved once more as a whole Keras model (best.keras).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import signal
import sys
import time
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from job.core.atomic import atomic_path, atomic_write
from job.config.settings import Config, ModelConfig, TrainConfig
from job.data.dataset import CifarData, load_dataset
from job.core.errors import ConfigError, DataError, DeviceUnavailable, ModelFileError, Preempted, StorageFull, TrainingDiverged
from job.training.history import write_history
from job.training.precision import compute_dtype, precision_policy
from job.training.tensorboard_scalars import EpochScalars
from job.models.registry import build_model, initialise
from job.core.paths import RunPaths
from job.core.records import Record, parse_record, read_marker
from job.stage import Stage

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Everything besides the variables that a resumed run needs; saved with them."""

    config_digest: str
    dataset_fingerprint: str = ""
    epochs_done: int = 0
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    patience_wait: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0  # complete epochs only, summed over every process that trained
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class TrainResult(Record):
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    best_val_accuracy: float
    stopped_early: bool
    train_seconds: float
    devices: list[str]
    compute_dtype: str  # job.training.precision: what the layers computed in on these devices
    config_digest: str
    dataset_fingerprint: str  # CifarData.fingerprint: export refuses other data

    def summary(self) -> str:
        how = "early stopping" if self.stopped_early else "epoch limit"
        return (
            f"trained {self.epochs_run} epochs ({how}); best epoch {self.best_epoch}: "
            f"val_loss {self.best_val_loss:.4f}, val_accuracy {self.best_val_accuracy:.4f}; "
            f"{self.train_seconds:.0f} s on {', '.join(self.devices)} in {self.compute_dtype}"
        )



def train_model(config: Config, paths: RunPaths, callbacks: Sequence[Any] = (), data: CifarData | None = None) -> TrainResult:
    """Train (or resume, or return the finished result of) the run in `paths`; `data` if already loaded."""
    digest = config.training_digest()
    if paths.train_result.exists():
        done = TrainResult.load(paths.train_result)
        if done.config_digest == digest:
            log.info("training already complete in %s", paths.root)
            return done
    state = _load_state(paths, digest)
    data = data if data is not None else load_dataset(config.data)
    fingerprint = data.fingerprint
    if state.epochs_done and state.dataset_fingerprint != fingerprint:
        raise DataError(f"data {data.source}: not the data set the checkpoint in {paths.root} was trained on; resume with the same data or use a new --out")
    state.dataset_fingerprint = fingerprint

    import keras
    import tensorflow as tf

    strategy, devices = _strategy(tf, config.train.device)
    log.info("training on %s", ", ".join(devices))
    config.record_in(paths)
    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    from job.training import input_pipeline

    train_cfg = config.train
    steps = input_pipeline.steps_per_epoch(len(data.train_labels), train_cfg.batch_size)
    dtype = compute_dtype(train_cfg.mixed_precision, devices)
    with strategy.scope(), precision_policy(keras, dtype):
        model = compiled_model(config, steps * train_cfg.epochs)
    if not state.epochs_done:
        initialise(model, data.train_images)
    else:
        _restore_variables(model, paths)
        log.info("resuming after epoch %d (best val_loss %.4f at epoch %d)", state.epochs_done, state.best_val_loss, state.best_epoch)

    with contextlib.closing(EpochScalars(paths.tensorboard)) as scalars:
        scalars.write(state.history)  # epochs an earlier process saved but did not log
        tracker = _EpochTracker(model, config.model, state, paths, scalars, train_cfg)
        if not state.stopped_early and state.epochs_done < train_cfg.epochs:
            with _sigterm_raises_preempted(tracker):
                model.fit(
                    input_pipeline.training_dataset(data.train_images, data.train_labels, train_cfg, state.epochs_done),
                    validation_data=input_pipeline.evaluation_dataset(data.val_images, data.val_labels, train_cfg.batch_size),
                    epochs=train_cfg.epochs,
                    initial_epoch=state.epochs_done,
                    steps_per_epoch=steps,
                    callbacks=[*_lookahead(train_cfg, steps), tracker.keras_callback(), *callbacks],
                    shuffle=False,  # the pipeline shuffles, seeded per epoch
                    verbose=1 if sys.stdout.isatty() else 2,
                )

    _save_best_model(config, paths)
    best = state.history[state.best_epoch - 1]
    result = TrainResult(
        epochs_run=state.epochs_done,
        best_epoch=state.best_epoch,
        best_val_loss=state.best_val_loss,
        best_val_accuracy=best["val_accuracy"],
        stopped_early=state.stopped_early,
        train_seconds=round(state.train_seconds, 1),
        devices=devices,
        compute_dtype=dtype,
        config_digest=digest,
        dataset_fingerprint=fingerprint,
    )
    atomic_write(paths.train_result, result.to_json())
    return result


def _lookahead(cfg: TrainConfig, steps_per_epoch: int) -> list[Any]:
    """The lookahead callback where the recipe asks for it; before the tracker, which measures and saves the synced weights."""
    from job.training.lookahead import Lookahead

    return [Lookahead(cfg.lookahead_decay, steps_per_epoch, steps_per_epoch * cfg.epochs)] if cfg.lookahead_decay else []


def _strategy(tf: Any, device: str) -> tuple[Any, list[str]]:
    """All visible GPUs (mirrored when several), else the CPU; `gpu` insists on one, `cpu` hides them.

    A CPU split into logical devices (tf.config.set_logical_device_configuration, before anything
    else touches TensorFlow) is mirrored too: how the several-GPU path is tested without GPUs.
    """
    if device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    gpus = tf.config.list_logical_devices("GPU")
    if device == "gpu" and not gpus:
        raise DeviceUnavailable("train.device=gpu: TensorFlow sees no GPU (no device, or its driver, CUDA or cuDNN libraries are missing)")
    replicas = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
    if len(replicas) > 1:
        return tf.distribute.MirroredStrategy(replicas), replicas
    return tf.distribute.get_strategy(), replicas if gpus else ["CPU"]


def compiled_model(config: Config, total_steps: int) -> Any:
    import keras

    from job.training.schedules import learning_rate_schedule

    cfg = config.train
    model = build_model(config.model.name, config.model.widths)
    optimizer = keras.optimizers.SGD(
        learning_rate=learning_rate_schedule(cfg, total_steps),
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay or None,
    )
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    optimizer.build(model.trainable_variables)
    return model


def _variables(model: Any) -> list[Any]:
    return [*model.variables, *model.optimizer.variables]


# --- checkpoint: one .npz holding the variables and the TrainState as JSON (no pickle) ----------


def _checkpoint_file(paths: RunPaths) -> Path:
    return paths.state_dir / "checkpoint.npz"


def _load_state(paths: RunPaths, digest: str) -> TrainState:
    file = _checkpoint_file(paths)
    if not file.exists():
        return TrainState(config_digest=digest)
    with _checkpoint(file) as npz:
        state = parse_record(TrainState, str(npz["state"]), f"checkpoint {file}")
    if state.config_digest != digest:
        raise ConfigError(
            f"run directory {paths.root}: holds a checkpoint of a different training config "
            f"(digest {state.config_digest[:12]}, now {digest[:12]}); use a new --out"
        )
    return state


def _save_checkpoint(model: Any, state: TrainState, paths: RunPaths) -> None:
    paths.state_dir.mkdir(exist_ok=True)
    arrays = {f"v{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(_variables(model))}
    names = [v.path for v in _variables(model)]
    with atomic_path(_checkpoint_file(paths)) as tmp, open(tmp, "wb") as f:
        np.savez(f, state=np.array(json.dumps(asdict(state))), names=np.array(names), **arrays)


def _restore_variables(model: Any, paths: RunPaths) -> None:
    variables, file = _variables(model), _checkpoint_file(paths)
    with _checkpoint(file) as npz:
        names = list(npz["names"])
        if names != [v.path for v in variables]:
            raise ConfigError(f"checkpoint {file}: variables do not match model {model.name}")
        for i, v in enumerate(variables):
            value = npz[f"v{i:04d}"]
            if value.dtype != v.dtype or value.shape != tuple(v.shape):
                raise ModelFileError(f"checkpoint {file}: variable {v.path} is {value.dtype} {value.shape}, expected {v.dtype} {tuple(v.shape)}")
            v.assign(value)


@contextlib.contextmanager
def _checkpoint(file: Path) -> Iterator[Any]:
    """The .npz checkpoint, opened without pickle; any corruption (truncation, object arrays, missing
    entries) is a `ModelFileError` naming the file."""
    try:
        with np.load(file, allow_pickle=False) as npz:
            yield npz
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ModelFileError(f"checkpoint {file}: unreadable ({type(e).__name__}); delete {file.parent} to train from scratch") from None



# --- the callback that owns early stopping, best weights and the checkpoint -----------------


class _EpochTracker:
    """Early stopping with persisted state; the kept weights and the resume checkpoint every epoch.

    Keras' own EarlyStopping keeps its state in memory only, so a resumed run would forget
    its patience count and its best weights. With train.keep "last" every epoch counts as
    the best, so the final epoch's weights are kept and training never stops early.
    """

    def __init__(self, model: Any, architecture: ModelConfig, state: TrainState, paths: RunPaths, scalars: EpochScalars, train: TrainConfig):
        self.model, self.state, self.paths, self.scalars = model, state, paths, scalars
        self.patience, self.min_delta, self.keep_last = train.patience, train.min_delta, train.keep == "last"
        self.architecture = architecture
        self.preempted = False
        self.inference_model: Any = None

    def keras_callback(self) -> Any:
        import keras

        return keras.callbacks.LambdaCallback(
            on_epoch_begin=self.on_epoch_begin,
            on_epoch_end=self.on_epoch_end,
            on_train_batch_end=self.on_batch_end,
            on_test_batch_end=self.on_batch_end,
        )

    def _save_best_weights(self) -> None:
        """Model weights only (no optimizer state): what export and serving load."""
        if self.inference_model is None:
            self.inference_model = build_model(self.architecture.name, self.architecture.widths)
        self.inference_model.set_weights(self.model.get_weights())
        _require_space(self.paths.best_weights, sum(w.nbytes for w in self.inference_model.get_weights()))
        with atomic_path(self.paths.best_weights, suffix=".tmp.weights.h5") as tmp:  # Keras insists on the suffix
            self.inference_model.save_weights(tmp)

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.preempted:
            raise Preempted(f"SIGTERM during epoch {self.state.epochs_done + 1}; epochs 1..{self.state.epochs_done} are saved, rerun to resume")

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        s = self.state
        s.train_seconds += time.monotonic() - self.epoch_started
        losses = {name: float(logs[name]) for name in ("loss", "val_loss")}
        if not all(math.isfinite(v) for v in losses.values()):
            raise TrainingDiverged(
                f"training {self.paths.root}: loss became non-finite in epoch {epoch + 1} "
                f"({', '.join(f'{k} {v}' for k, v in losses.items())}); lower train.learning_rate or check train.lr_decay. "
                f"Epochs 1..{s.epochs_done} are kept"
            )
        val_loss = losses["val_loss"]
        if self.keep_last or val_loss < s.best_val_loss - self.min_delta:
            s.best_val_loss, s.best_epoch, s.patience_wait = val_loss, epoch + 1, 0
            self._save_best_weights()
        else:
            s.patience_wait += 1
        s.stopped_early = not self.keep_last and s.patience_wait >= self.patience
        logs.update(
            learning_rate=float(self.model.optimizer.learning_rate),
            best_val_loss=s.best_val_loss,
            best_epoch=s.best_epoch,
            patience_wait=s.patience_wait,
        )
        s.history.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
        s.epochs_done = epoch + 1
        _save_checkpoint(self.model, s, self.paths)
        write_history(s.history, self.paths)
        self.scalars.write(s.history)
        if s.stopped_early:
            log.info("early stopping: val_loss has not improved for %d epochs; best epoch %d", s.patience_wait, s.best_epoch)
            self.model.stop_training = True
        if self.preempted:
            raise Preempted(f"SIGTERM after epoch {s.epochs_done}; saved, rerun to resume")


def _save_best_model(config: Config, paths: RunPaths) -> None:
    """best.keras: the best weights with the architecture, for whoever loads models with `keras.models.load_model`."""
    model = build_model(config.model.name, config.model.widths)
    model.load_weights(paths.best_weights)
    _require_space(paths.best_keras, sum(w.nbytes for w in model.get_weights()))
    with atomic_path(paths.best_keras, suffix=".keras") as tmp:  # Keras insists on the suffix
        model.save(tmp)


# HDF5 (under Keras' save_weights and save) crashes the process when a write fails for lack of space, so
# the space is checked before it writes: the weights, plus a margin for HDF5's own structures.
HDF5_MARGIN_BYTES = 4 << 20


def _require_space(path: Path, payload_bytes: int) -> None:
    free = shutil.disk_usage(path.parent).free
    if free < payload_bytes + HDF5_MARGIN_BYTES:
        raise StorageFull(f"file {path}: {free} bytes free, about {payload_bytes + HDF5_MARGIN_BYTES} needed; nothing was changed")


@contextlib.contextmanager
def _sigterm_raises_preempted(tracker: _EpochTracker) -> Iterator[None]:
    """Turn SIGTERM into a flag the tracker acts on at the next step boundary."""

    def handler(signum: int, frame: Any) -> None:
        log.warning("SIGTERM received: stopping at the next step boundary")
        tracker.preempted = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def is_trained(config: Config, paths: RunPaths) -> bool:
    """train.json of this very training config, beside the best weights it describes."""
    marker = read_marker(paths.train_result)
    return marker.get("config_digest") == config.training_digest() and paths.best_weights.is_file()


STAGE = Stage(
    "train",
    run=lambda inputs: train_model(inputs.config, inputs.paths, inputs.training_callbacks(), inputs.data()),
    is_complete=is_trained,
)
