"""`cifar-job bench`: how fast this machine trains and serves each recipe, against what its kernels reach.

In one process it measures TensorFlow's matmul and conv peak, the training throughput of every
(architecture, recipe) pair through the real model builder and input pipeline, and onnxruntime
inference of each served model. On a shared node absolute figures move with the load, ratios
measured moments apart much less, so each figure is also given as a ratio: to the measured peak
and to the reference (reference_cnn with the study's recipe). Images are synthetic and weights
random: neither changes the work done. Runs as a Kubernetes Job on any node type:
`cifar-job bench --json` prints one document for machines.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import click

from job.config.settings import Config, load_config, parse_sets
from job.core.errors import ConfigError, DeviceUnavailable
from job.config.recipes import RECIPES
from job.training.precision import compute_dtype, precision_policy, reduced_dtype

log = logging.getLogger(__name__)

REFERENCE = ("reference_cnn", "study")
INFERENCE_BATCHES = (1, 32, 256)
DEVICES = ("auto", "gpu", "cpu")
CONV_SHAPE = (256, 32, 32, 64)  # batch, height, width, channels in and out of the 3x3 conv


@dataclass(frozen=True)
class Settings:
    """How long each measurement runs; `QUICK` trades steadiness for time."""

    steps: int = 10  # timed training steps, after the untimed first one
    matmul_size: int = 2048
    repeats: int = 5  # timed runs of each peak kernel, after a warm-up; the best counts
    inference_seconds: float = 2.0  # per batch size, after a warm-up run
    inference_runs: int = 5  # at least this many, however long they take


QUICK = Settings(steps=3, matmul_size=1024, repeats=3, inference_seconds=0.5, inference_runs=2)


@dataclass(frozen=True)
class TrainingRow:
    model: str
    recipe: str
    precision: str  # compute dtype of the recipe on this device
    batch_size: int
    steps: int
    images_per_s: float
    gflop_per_image: float  # forward and backward: three forward passes
    gflops: float
    ratio_to_peak: dict[str, float]  # GFLOP/s over the matmul peak of float32 and, if mixed, of the compute dtype
    ratio_to_reference: float | None  # images/s over reference_cnn/study's; None when it was not measured


@dataclass(frozen=True)
class InferenceRow:
    model: str
    test_time_augmentation: str
    provider: str
    batch_size: int
    runs: int
    images_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float
    gflop_per_image: float  # every test-time view included
    gflops: float
    ratio_to_peak: dict[str, float]  # over TensorFlow's float32 matmul peak: another engine, the same silicon
    ratio_to_reference: float | None  # images/s over reference_cnn's at the same batch size


# --- what to measure ---------------------------------------------------------------------------


def select_pairs(models: Sequence[str], recipes: Sequence[str]) -> list[tuple[str, str]]:
    """The (architecture, recipe) pairs the options name; all of them by default."""
    unknown = sorted(set(models) - RECIPES.keys())
    if unknown:
        raise ConfigError(f"--model {unknown[0]!r}: no such architecture; expected one of: {', '.join(RECIPES)}")
    pairs = [(a, r) for a in RECIPES for r in RECIPES[a] if (not models or a in models) and (not recipes or r in recipes)]
    missing = sorted(set(recipes) - {r for _, r in pairs})
    if missing:
        offered = sorted({r for a in models or RECIPES for r in RECIPES[a]})
        raise ConfigError(f"--recipe {missing[0]!r}: not a recipe of the chosen architectures; expected one of: {', '.join(offered)}")
    return pairs


def recipe_config(architecture: str, recipe: str, device: str, overrides: Mapping[str, Any] | None = None) -> Config:
    """The recipe as defined (and `--set`), not as this process's environment would change it (CIFAR_JOB_*)."""
    chosen = {"model.name": architecture, "recipe": recipe, "train.device": device, "validate.device": device}
    return load_config(env={}, overrides={**chosen, **(overrides or {})})


def forward_flops(model: Any) -> int:
    """FLOPs of one image's forward pass: 2 per multiply-add of every Conv2D and Dense (nested models too).

    Elementwise work (activations, normalisation, pooling) is left out: next to the convolutions
    it is a few per cent of the arithmetic, though not always of the time.
    """
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_flops(layer)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            fan_in = math.prod(layer.kernel.shape[:-1])
            total += 2 * fan_in * math.prod(layer.output.shape[1:])
    return total


def _views(test_time_augmentation: str) -> int:
    from job.models.layers import TTA_VIEWS

    return len(TTA_VIEWS[test_time_augmentation][0]) if test_time_augmentation != "none" else 1


# --- TensorFlow: the device, the peak, training ------------------------------------------------


def tensorflow_device(device: str) -> str:
    """The one device TensorFlow measures on: the first GPU (auto, gpu), else `CPU`; `cpu` hides the GPUs."""
    import tensorflow as tf

    if device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    gpus = tf.config.list_logical_devices("GPU")
    if device == "gpu" and not gpus:
        raise DeviceUnavailable("--device gpu: TensorFlow sees no GPU (no device, or its driver, CUDA or cuDNN libraries are missing)")
    return gpus[0].name if gpus else "CPU"


def _best_seconds(run: Callable[[], Any], repeats: int) -> float:
    """Fastest of `repeats` timed runs after a warm-up: the peak is what the kernels reach when the machine lets them."""
    run()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return min(times)


def _matmul_gflops(n: int, dtype: str, repeats: int) -> float:
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_uniform([n, n], seed=[0, 1]), dtype)
    seconds = _best_seconds(lambda: tf.matmul(a, a)[0, 0].numpy(), repeats)  # .numpy(): wait for the result
    gflops = 2 * n**3 / seconds / 1e9
    log.info("peak: %dx%d matmul %s %.1f GFLOP/s", n, n, dtype, gflops)
    return gflops


def measure_peak(tf_device: str, settings: Settings) -> dict[str, Any]:
    """GFLOP/s of a square matmul (float32 and the mixed dtype) and of a 3x3 conv (float32), with TensorFlow."""
    import tensorflow as tf

    n = settings.matmul_size
    matmul = {dtype: _matmul_gflops(n, dtype, settings.repeats) for dtype in ("float32", reduced_dtype(tf_device))}
    batch, height, width, channels = CONV_SHAPE
    images = tf.random.stateless_uniform(CONV_SHAPE, seed=[0, 2])
    kernel = tf.random.stateless_uniform([3, 3, channels, channels], seed=[0, 3])
    seconds = _best_seconds(lambda: tf.nn.conv2d(images, kernel, 1, "SAME")[0, 0, 0, 0].numpy(), settings.repeats)
    conv = 2 * 9 * channels * channels * batch * height * width / seconds / 1e9
    log.info("peak: 3x3 conv %s float32 %.1f GFLOP/s", "x".join(map(str, CONV_SHAPE)), conv)
    return {
        "matmul_size": n,
        "matmul_gflops": {k: round(v, 2) for k, v in matmul.items()},
        "conv3x3_shape": list(CONV_SHAPE),
        "conv3x3_gflops": {"float32": round(conv, 2)},
        "repeats": settings.repeats,
    }


def measure_training(config: Config, tf_device: str, steps: int, peak: dict[str, Any]) -> TrainingRow:
    """Images/s of the recipe, trained as `cifar-job train` trains it, from the median time of the steps after the first (tracing) one."""
    import keras
    import numpy as np

    from job.models.contract import CLASS_COUNT, IMAGE_SHAPE
    from job.training.input_pipeline import training_dataset
    from job.models.registry import initialise
    from job.training.train import compiled_model

    cfg = config.train
    rng = np.random.default_rng(0)
    count = cfg.batch_size * (steps + 1)
    images = rng.integers(0, 256, (count, *IMAGE_SHAPE), dtype=np.uint8)
    labels = rng.integers(0, CLASS_COUNT, count)
    precision = compute_dtype(cfg.mixed_precision, [tf_device])
    with precision_policy(keras, precision):
        model = compiled_model(config, steps + 1)
    initialise(model, images)
    ends: list[float] = []  # a batch-end callback gets the step's loss as a number: the step has finished
    clock = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
    log.info("training %s/%s: %d steps of %d images (%s)", config.model.name, config.recipe, steps + 1, cfg.batch_size, precision)
    dataset = training_dataset(images, labels, cfg, 0)
    model.fit(dataset, epochs=1, steps_per_epoch=steps + 1, callbacks=[clock], shuffle=False, verbose=0)
    images_per_s = cfg.batch_size / float(np.median(np.diff(ends)))  # the median step: a neighbour's burst moves it least
    flop = 3 * forward_flops(model)
    gflops = images_per_s * flop / 1e9
    return TrainingRow(
        model=config.model.name,
        recipe=config.recipe,
        precision=precision,
        batch_size=cfg.batch_size,
        steps=steps,
        images_per_s=round(images_per_s, 2),
        gflop_per_image=round(flop / 1e9, 6),
        gflops=round(gflops, 2),
        ratio_to_peak={dtype: round(gflops / peak["matmul_gflops"][dtype], 4) for dtype in dict.fromkeys(["float32", precision])},
        ratio_to_reference=None,
    )


# --- onnxruntime: the served model --------------------------------------------------------------


def measure_inference(config: Config, device: str, settings: Settings, peak: dict[str, Any]) -> list[InferenceRow]:
    """Images/s and latency of the served model (its test-time augmentation included) at each batch size."""
    import numpy as np

    from export.convert import keras_to_onnx
    from export.session import open_session
    from job.models.registry import build_model, with_test_time_augmentation

    name, tta = config.model.name, config.export.test_time_augmentation
    trained = build_model(name, config.model.widths)
    flop = forward_flops(trained) * _views(tta)
    log.info("inference %s (test-time augmentation %s): converting to ONNX", name, tta)
    session = open_session(keras_to_onnx(with_test_time_augmentation(trained, tta), config.export.opset), device, f"{name} (random weights)")
    rows = []
    for batch in INFERENCE_BATCHES:
        latencies = _latencies(session, batch, settings)
        images_per_s = batch / float(np.median(latencies))  # as for training: the median run
        gflops = images_per_s * flop / 1e9
        rows.append(
            InferenceRow(
                model=name,
                test_time_augmentation=tta,
                provider=session.get_providers()[0],
                batch_size=batch,
                runs=len(latencies),
                images_per_s=round(images_per_s, 2),
                latency_p50_ms=round(float(np.percentile(latencies, 50)) * 1e3, 4),
                latency_p95_ms=round(float(np.percentile(latencies, 95)) * 1e3, 4),
                gflop_per_image=round(flop / 1e9, 6),
                gflops=round(gflops, 2),
                ratio_to_peak={"float32": round(gflops / peak["matmul_gflops"]["float32"], 4)},
                ratio_to_reference=None,
            )
        )
    return rows


def _latencies(session: Any, batch: int, settings: Settings) -> list[float]:
    """Seconds of each `run` on one random batch: a warm-up, then runs until the time is up (at least the minimum)."""
    import numpy as np

    from job.models.contract import IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAME, scale

    images = scale(np.random.default_rng(batch).integers(0, 256, (batch, *IMAGE_SHAPE), dtype=np.uint8))
    session.run([OUTPUT_NAME], {INPUT_NAME: images})  # allocations, kernel selection
    latencies: list[float] = []
    began = time.perf_counter()
    while len(latencies) < settings.inference_runs or time.perf_counter() - began < settings.inference_seconds:
        start = time.perf_counter()
        session.run([OUTPUT_NAME], {INPUT_NAME: images})
        latencies.append(time.perf_counter() - start)
    return latencies


# --- the whole benchmark -------------------------------------------------------------------------


def _with_reference_ratio(rows: list[Any], is_reference: Callable[[Any], bool], key: Callable[[Any], Any]) -> list[Any]:
    """Each row's images/s over that of the reference row with the same key (None where none was measured)."""
    reference = {key(row): row.images_per_s for row in rows if is_reference(row)}
    return [replace(row, ratio_to_reference=round(row.images_per_s / reference[key(row)], 4) if key(row) in reference else None) for row in rows]


def machine(device: str, tf_device: str) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "device": device,
        "tensorflow_device": tf_device,
        "versions": {name: importlib.import_module(name).__version__ for name in ("tensorflow", "keras", "onnxruntime", "tf2onnx")},
    }


def run_bench(pairs: Sequence[tuple[str, str]], device: str, settings: Settings, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Peak first, then training and inference: the document `--json` prints."""
    configs = [recipe_config(a, r, device, overrides) for a, r in pairs]
    tf_device = tensorflow_device(device)
    peak = measure_peak(tf_device, settings)
    training = [measure_training(c, tf_device, settings.steps, peak) for c in configs]
    served = {(c.model.name, c.export.test_time_augmentation): c for c in configs}  # one per distinct served model
    inference = [row for c in served.values() for row in measure_inference(c, device, settings, peak)]
    return {
        "machine": machine(device, tf_device),
        "overrides": dict(overrides or {}),
        "peak": peak,
        "training": [asdict(r) for r in _with_reference_ratio(training, lambda r: (r.model, r.recipe) == REFERENCE, lambda r: None)],
        "inference": [
            asdict(r) for r in _with_reference_ratio(inference, lambda r: r.model == REFERENCE[0] and r.test_time_augmentation == "none", lambda r: r.batch_size)
        ],
    }


# --- the report -----------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [list(headers), *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 10 else f"{value:,.1f}"
    return str(value)


def render(report: dict[str, Any]) -> str:
    """The report as text tables: ratios to the peak (x peak) and to the reference (x ref)."""
    m, p = report["machine"], report["peak"]
    v = m["versions"]
    mixed = next(dtype for dtype in p["matmul_gflops"] if dtype != "float32")
    lines = [
        f"machine: {m['cpus_usable']} of {m['cpu_count']} CPUs usable; TensorFlow on {m['tensorflow_device']}; "
        + ", ".join(f"{k} {v[k]}" for k in v),
        (
            f"peak (TensorFlow, best of {p['repeats']}): matmul {p['matmul_size']}^2 float32 {p['matmul_gflops']['float32']:,.1f} GFLOP/s, "
            f"{mixed} {p['matmul_gflops'][mixed]:,.1f} GFLOP/s; 3x3 conv {'x'.join(map(str, p['conv3x3_shape']))} "
            f"float32 {p['conv3x3_gflops']['float32']:,.1f} GFLOP/s"
        ),
        *([f"every recipe with: {', '.join(f'{k}={v}' for k, v in report['overrides'].items())}"] if report["overrides"] else []),
        "",
        "training (images/s from the median step, the first (tracing) step excluded; GFLOP/s = images/s x 3 forward passes)",
        _table(
            ["model", "recipe", "precision", "batch", "steps", "images/s", "GFLOP/s", "x fp32 peak", f"x {mixed} peak", "x ref"],
            (
                [r["model"], r["recipe"], r["precision"], r["batch_size"], r["steps"], r["images_per_s"], r["gflops"],
                 r["ratio_to_peak"]["float32"], r["ratio_to_peak"].get(mixed), r["ratio_to_reference"]]
                for r in report["training"]
            ),
        ),
        "",
        "inference (onnxruntime, served model, random weights; latency per batch, images/s from the median)",
        _table(
            ["model", "tta", "provider", "batch", "images/s", "p50 ms", "p95 ms", "GFLOP/s", "x fp32 peak", "x ref"],
            (
                [r["model"], r["test_time_augmentation"], r["provider"].removesuffix("ExecutionProvider"), r["batch_size"], r["images_per_s"],
                 r["latency_p50_ms"], r["latency_p95_ms"], r["gflops"], r["ratio_to_peak"]["float32"], r["ratio_to_reference"]]
                for r in report["inference"]
            ),
        ),
    ]
    return "\n".join(lines)


def _positive(value: str | None, option: str) -> int | None:
    """Numbers are checked here, not by click, so a bad one is the usual one-line error."""
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"{option} {value!r}: expected a positive integer")
    return number


@click.command()
@click.option("--model", "models", multiple=True, metavar="NAME", help=f"Architecture to measure (repeatable).  [default: all: {', '.join(RECIPES)}]")
@click.option("--recipe", "recipes", multiple=True, metavar="NAME", help="Recipe to measure (repeatable).  [default: every recipe of each architecture]")
@click.option("--device", default="auto", metavar="auto|gpu|cpu", help="TensorFlow and onnxruntime device: auto (GPU if one works), gpu (or fail, exit 7), cpu.  [default: auto]")
@click.option("--steps", metavar="INTEGER", help="Timed training steps per recipe, after the untimed first one.  [default: 10; 3 with --quick]")
@click.option("--quick", is_flag=True, help="Shorter measurements: smaller matmul, fewer repeats and inference runs.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="A config key for every recipe, e.g. --set train.mixed_precision=false (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
def bench(models: tuple[str, ...], recipes: tuple[str, ...], device: str, steps: str | None, quick: bool, sets: tuple[str, ...], as_json: bool) -> None:
    """Measure this machine: matmul/conv peak, training images/s per recipe, onnxruntime inference.

    Every figure is also given as a ratio to the peak and to reference_cnn/study, measured in the same run.
    """
    if device not in DEVICES:
        raise ConfigError(f"--device {device!r}: expected one of: {', '.join(DEVICES)}")
    settings = QUICK if quick else Settings()
    timed = _positive(steps, "--steps")
    settings = replace(settings, steps=timed) if timed is not None else settings
    report = run_bench(select_pairs(models, recipes), device, settings, parse_sets(sets))
    click.echo(json.dumps(report, indent=2) if as_json else render(report))
