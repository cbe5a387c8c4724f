"""`cifar-job bench`: one short real run (the reference recipe, two timed steps), its figures and ratios, and its errors."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from click.testing import CliRunner

from job.bench import forward_flops, render
from job.cli import main

# The study's CNN: conv 32x32x32 of 27 multiply-adds, 16x16x64 of 288, 8x8x128 of 576; dense 8192x256, 256x10.
REFERENCE_CNN_GFLOP = 2 * (32 * 32 * 32 * 27 + 16 * 16 * 64 * 288 + 8 * 8 * 128 * 576 + 8192 * 256 + 256 * 10) / 1e9
QUICK_RUN = ["bench", "--model", "reference_cnn", "--recipe", "study", "--quick", "--steps", "2", "--set", "train.batch_size=16", "--json"]


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    result = CliRunner().invoke(main, QUICK_RUN)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # the whole of stdout is the document: log lines go to stderr


def _positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_the_report_names_the_machine_and_a_positive_peak(report) -> None:
    machine, peak = report["machine"], report["peak"]
    assert machine["cpu_count"] >= 1 and machine["device"] == "auto"
    assert set(machine["versions"]) == {"tensorflow", "keras", "onnxruntime", "tf2onnx"}
    assert len(peak["matmul_gflops"]) == 2 and "float32" in peak["matmul_gflops"]  # float32 and the mixed-precision dtype
    assert all(_positive(v) for v in [*peak["matmul_gflops"].values(), *peak["conv3x3_gflops"].values()])


def test_training_is_measured_for_the_chosen_recipe_only(report) -> None:
    (row,) = report["training"]
    assert (row["model"], row["recipe"], row["precision"], row["batch_size"], row["steps"]) == ("reference_cnn", "study", "float32", 16, 2)
    assert report["overrides"] == {"train.batch_size": 16}  # --set reaches the measured config
    assert all(_positive(row[k]) for k in ("images_per_s", "gflop_per_image", "gflops"))
    assert row["gflop_per_image"] == pytest.approx(3 * REFERENCE_CNN_GFLOP, abs=1e-6)  # forward and backward: three forward passes


def test_training_ratios_agree_with_the_figures(report) -> None:
    (row,) = report["training"]
    peak = report["peak"]["matmul_gflops"]["float32"]
    assert row["gflops"] == pytest.approx(row["images_per_s"] * row["gflop_per_image"], rel=1e-3)
    assert list(row["ratio_to_peak"]) == ["float32"]  # a float32 recipe has no mixed-precision ratio
    assert row["ratio_to_peak"]["float32"] == pytest.approx(row["gflops"] / peak, rel=1e-3, abs=1e-4)
    assert row["ratio_to_reference"] == 1.0  # it is the reference


def test_inference_is_measured_at_each_batch_size(report) -> None:
    rows = report["inference"]
    peak = report["peak"]["matmul_gflops"]["float32"]
    assert [r["batch_size"] for r in rows] == [1, 32, 256]
    for r in rows:
        assert (r["model"], r["test_time_augmentation"]) == ("reference_cnn", "none")
        assert r["runs"] >= 2 and r["provider"].endswith("ExecutionProvider")
        assert all(_positive(r[k]) for k in ("images_per_s", "latency_p50_ms", "latency_p95_ms", "gflops"))
        assert r["latency_p50_ms"] <= r["latency_p95_ms"]
        assert r["images_per_s"] == pytest.approx(r["batch_size"] / (r["latency_p50_ms"] / 1e3), rel=1e-3)
        assert r["gflop_per_image"] == pytest.approx(REFERENCE_CNN_GFLOP, abs=1e-6)
        assert r["gflops"] == pytest.approx(r["images_per_s"] * r["gflop_per_image"], rel=1e-3)
        assert r["ratio_to_peak"]["float32"] == pytest.approx(r["gflops"] / peak, rel=1e-3, abs=1e-4)
        assert r["ratio_to_reference"] == 1.0


def test_the_table_shows_every_row(report) -> None:
    text = render(report)
    assert sum(line.startswith("reference_cnn  study") for line in text.splitlines()) == 1
    assert sum(line.startswith("reference_cnn  none") for line in text.splitlines()) == 3
    assert f"{report['training'][0]['images_per_s']:,.1f}" in text


@pytest.mark.fast
def test_the_flop_counter_counts_conv_and_dense_multiply_adds_of_nested_models() -> None:
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)  # 6x6x4 outputs of 27 multiply-adds: 7,776 FLOPs
    x = keras.layers.Conv2D(5, 3, strides=2, padding="same", use_bias=False)(x)  # 3x3x5 of 36: 3,240
    x = keras.layers.ReLU()(keras.layers.Flatten()(x))  # elementwise: not counted
    inner = keras.Model(inputs, keras.layers.Dense(10)(x))  # 45 -> 10: 900
    assert forward_flops(inner) == 7_776 + 3_240 + 900
    outer_inputs = keras.Input((8, 8, 3))
    outer = keras.Model(outer_inputs, keras.layers.Dense(2)(inner(outer_inputs)))  # 10 -> 2: 40
    assert forward_flops(outer) == 7_776 + 3_240 + 900 + 40


@pytest.mark.fast
@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--model", "resnet"], "--model 'resnet'"),
        (["--recipe", "fastest"], "--recipe 'fastest'"),
        (["--model", "airbench", "--recipe", "study"], "--recipe 'study'"),  # a recipe of another architecture
        (["--steps", "0"], "--steps '0'"),
        (["--steps", "ten"], "--steps 'ten'"),
        (["--device", "tpu"], "--device 'tpu'"),
    ],
)
def test_bad_options_are_one_line_errors(args: list[str], names: str) -> None:
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"cifar-job: error: {names}")
