"""Best Keras weights to a serving-ready ONNX model, proven to agree with Keras before it is written.

The model is rebuilt from the registry and only the weights are loaded (no code is ever
deserialized), then converted with `tf2onnx.convert.from_function` and an explicit input
signature (`from_keras` fails on Keras 3). The graph is checked with `onnx.checker`, its
signature and the absence of training-only ops are verified, the metadata a serving team
needs is stamped in, and Keras and onnxruntime are compared on real images. Only then is
`model.onnx` written (atomically), followed by `export.json`, the stage's completion marker.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.modelfile import load_onnx, set_metadata, sha256, sha256_file, sha256_of
from export.session import open_session, predict
from job.core.atomic import atomic_write
from job.core.bounded import read_bounded
from job.config.settings import Config
from job.models.contract import BATCH_DIM, CLASS_COUNT, IMAGE_SHAPE, INPUT_LAYOUT, INPUT_NAME, INPUT_SCALING, OUTPUT_MEANING, OUTPUT_NAME, scale
from job.data.dataset import CifarData, load_dataset
from job.core.errors import ConfigError, DataError, ExportError, ModelFileError
from job.models.registry import build_model, with_test_time_augmentation
from job.core.paths import RunPaths
from job.core.records import MAX_RECORD_BYTES, Record, read_marker
from job.stage import Stage


# Ops that only make sense while training; none may reach a serving graph.
TRAINING_ONLY_OPS = frozenset({"Dropout", "RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli", "Multinomial"})
PARITY_BATCH = 256


@dataclass(frozen=True)
class ExportResult(Record):
    onnx_sha256: str
    size_bytes: int
    weights_sha256: str
    opset: int
    ir_version: int
    parity_images: int
    parity_max_abs_diff: float
    duration_s: float
    settings: dict[str, Any]  # the export config section it was made with

    def summary(self) -> str:
        return (
            f"exported opset {self.opset} (IR {self.ir_version}), {self.size_bytes / 1e6:.1f} MB, sha256 {self.onnx_sha256[:12]}; "
            f"parity on {self.parity_images} images: max |Keras - onnxruntime| {self.parity_max_abs_diff:.2e}, "
            "top class agrees on every image"
        )


def export_onnx(config: Config, paths: RunPaths, data: CifarData | None = None) -> ExportResult:
    """Convert the run's best weights, check the result, prove parity, then write model.onnx and export.json."""
    began = time.monotonic()
    trained_on = _require_trained(config, paths)
    weights_sha256 = sha256_file(paths.best_weights)
    trained = _load_keras(config, paths)
    model = with_test_time_augmentation(trained, config.export.test_time_augmentation)
    data = data if data is not None else load_dataset(config.data)
    if data.fingerprint != trained_on:
        raise DataError(f"data {data.source}: not the data set {paths.root} was trained on (fingerprints differ); export with the same data")

    proto = _convert(model, config.export.opset)
    set_metadata(proto, {**_metadata(config, trained, data, weights_sha256, trained_on), **_experiment(paths)})
    blob = proto.SerializeToString()
    try:
        load_onnx(blob, "converted model")
    except ModelFileError as e:
        raise ExportError(str(e)) from None
    training_ops = sorted({node.op_type for node in proto.graph.node} & TRAINING_ONLY_OPS)
    if training_ops:
        raise ExportError(f"converted model holds training-only ops: {', '.join(training_ops)}")

    max_diff, n = _parity(model, blob, _parity_images(data, config.export.parity_images), config.export.parity_atol)
    result = ExportResult(
        onnx_sha256=sha256(blob),
        size_bytes=len(blob),
        weights_sha256=weights_sha256,
        opset=config.export.opset,
        ir_version=proto.ir_version,
        parity_images=n,
        parity_max_abs_diff=max_diff,
        duration_s=round(time.monotonic() - began, 3),
        settings=config.export.model_dump(mode="json"),
    )
    config.record_in(paths)
    atomic_write(paths.onnx, blob)
    atomic_write(paths.export_result, result.to_json())
    return result


def _require_trained(config: Config, paths: RunPaths) -> str:
    """The weights must come from a finished training of this very config, or the metadata would lie.

    Returns the fingerprint of the data set they were trained on (train.json records both).
    """
    done = read_marker(paths.train_result)
    trained, fingerprint = done.get("config_digest"), done.get("dataset_fingerprint")
    if not (isinstance(trained, str) and isinstance(fingerprint, str) and paths.best_weights.is_file()):
        raise ModelFileError(f"run directory {paths.root}: no finished training (train.json, best.weights.h5); run `cifar-job train` first")
    if trained != config.training_digest():
        raise ConfigError(
            f"run directory {paths.root}: trained with a different training config (digest {trained[:12]}, "
            f"now {config.training_digest()[:12]}); export with the config it was trained with"
        )
    return fingerprint


def _load_keras(config: Config, paths: RunPaths) -> Any:
    model = build_model(config.model.name, config.model.widths)
    try:
        model.load_weights(paths.best_weights)
    except Exception as e:  # h5py's OSError, Keras' ValueError on a shape mismatch, ...
        raise ModelFileError(f"weights {paths.best_weights}: cannot load into {config.model.name} ({e})") from None
    return model


def keras_to_onnx(model: Any, opset: int) -> bytes:
    """Any Keras model as ONNX bytes, converted as export converts: what `cifar-job bench` measures."""
    return _convert(model, opset).SerializeToString()


def _convert(model: Any, opset: int) -> Any:
    """Keras model to ONNX with input `images` and output `probabilities`, both with a dynamic batch."""
    import tensorflow as tf
    import tf2onnx

    @tf.function(input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32, name=INPUT_NAME)])
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_NAME: model(images, training=False)}

    try:
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=opset)
    except Exception as e:
        raise ExportError(f"tf2onnx could not convert {model.name} at opset {opset}: {type(e).__name__}: {e}") from None
    for value in (*proto.graph.input, *proto.graph.output):  # tf2onnx names it unk__NN
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    proto.graph.name = model.name
    proto.doc_string = f"CIFAR-10 classifier {model.name}: {INPUT_NAME} {INPUT_LAYOUT} -> {OUTPUT_NAME} [{BATCH_DIM}, {CLASS_COUNT}]"
    return proto


def _metadata(config: Config, model: Any, data: CifarData, weights_sha256: str, fingerprint: str) -> dict[str, str]:
    """What a serving team needs to feed the model and to trace where it came from (all strings)."""
    settings = config.to_dict()
    return {
        "class_names": json.dumps(list(data.class_names)),
        "input_name": INPUT_NAME,
        "input_layout": INPUT_LAYOUT,
        "input_scaling": INPUT_SCALING,
        "output_name": OUTPUT_NAME,
        "output_meaning": OUTPUT_MEANING,
        "architecture": _architecture(model),
        "parameters": str(model.count_params()),
        "test_time_augmentation": config.export.test_time_augmentation,
        "onnx_opset": str(config.export.opset),
        "training_config": json.dumps({k: settings[k] for k in ("data", "model", "train")}),
        "training_config_digest": config.training_digest(),
        "dataset": json.dumps(
            {
                "source": data.source,
                "train_images": len(data.train_labels),
                "validation_images": len(data.val_labels),
                "test_images": len(data.test_labels),
            }
        ),
        "dataset_sha256": data.sha256 or "",
        "dataset_fingerprint": fingerprint,
        "weights_sha256": weights_sha256,
        "versions": json.dumps(_versions()),
    }


def _experiment(paths: RunPaths) -> dict[str, str]:
    """`experiment`: the summary of the experiment that chose this trial (job/experiments/runner.py writes it), if one did."""
    if not paths.experiment.is_file():
        return {}
    return {"experiment": read_bounded(paths.experiment, MAX_RECORD_BYTES, ModelFileError, f"experiment record {paths.experiment}").decode()}


def _architecture(model: Any) -> str:
    """One line, e.g. `reference_cnn: Conv2D(32, 3x3, relu) -> MaxPooling2D(2x2) -> ...`."""
    parts = []
    for layer in model.layers[1:]:  # [0] is the InputLayer
        cfg = layer.get_config()
        details = [str(cfg[k]) for k in ("filters", "units", "rate") if k in cfg]
        details += ["x".join(map(str, cfg[k])) for k in ("kernel_size", "pool_size") if k in cfg]
        if cfg.get("activation") not in (None, "linear"):
            details.append(cfg["activation"])
        if cfg.get("kernel_constraint"):
            constraint = cfg["kernel_constraint"]
            details.append(f"{constraint['class_name']}({', '.join(f'{k}={v}' for k, v in constraint['config'].items())})")
        parts.append(f"{type(layer).__name__}({', '.join(details)})")
    return f"{model.name}: " + " -> ".join(parts)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cifar-job": version("cifar-job"),
    }


def _parity_images(data: CifarData, n: int) -> np.ndarray:
    """The first `n` real images: test images first, topped up from validation and training (smoke runs)."""
    pool = np.concatenate([split[:n] for split in (data.test_images, data.val_images, data.train_images)])[:n]
    if len(pool) < n:
        raise ConfigError(f"config key export.parity_images: {n} images wanted for the parity check, the data set has {len(pool)}")
    return pool


def _parity(model: Any, blob: bytes, images: np.ndarray, atol: float) -> tuple[float, int]:
    """Compare Keras and onnxruntime (CPU) probabilities; fail unless every argmax agrees and max |diff| <= atol."""
    expected = model.predict(scale(images), batch_size=PARITY_BATCH, verbose=0)
    actual, _ = predict(open_session(blob, "cpu", "converted model"), images, PARITY_BATCH)
    max_diff = float(np.abs(expected - actual).max())
    disagree = int((expected.argmax(axis=1) != actual.argmax(axis=1)).sum())
    if disagree or max_diff > atol:
        raise ExportError(
            f"parity check failed on {len(images)} images: max |Keras - onnxruntime| = {max_diff:.3e} "
            f"(export.parity_atol = {atol:.0e}), top class differs on {disagree}; model.onnx not written"
        )
    return max_diff, len(images)


def is_exported(config: Config, paths: RunPaths) -> bool:
    """export.json made with these settings from the current best weights, and the model.onnx it wrote."""
    marker = read_marker(paths.export_result)
    return (
        marker.get("settings") == config.export.model_dump(mode="json")
        and marker.get("weights_sha256") == sha256_of(paths.best_weights)
        and marker.get("onnx_sha256") == sha256_of(paths.onnx)
    )


STAGE = Stage("export", run=lambda inputs: export_onnx(inputs.config, inputs.paths, inputs.data()), is_complete=is_exported)
