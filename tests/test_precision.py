"""Mixed precision only where the hardware computes it: a CPU without bfloat16 instructions trains in float32."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from job.cli import main
from job.training import precision
from job.training.precision import compute_dtype, has_bfloat16_instructions

from .conftest import train_args

AVX2_EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 fma bmi2 vaes\n\nprocessor\t: 1\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: avx2 avx512f amx_bf16 amx_tile amx_int8\n"
GRAVITON3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize(
    ("cpuinfo", "has"),
    [
        (AVX2_EPYC, False),
        (ZEN4, True),
        (SAPPHIRE_RAPIDS, True),
        (GRAVITON3, True),
        ("processor\t: 0\nflags\t\t: avx512f avx512bw avx512_vnni\n", False),  # AVX-512 without BF16: emulated
        ("model name\t: bf16 avx512_bf16 edition\nflags\t\t: avx2\n", False),  # only the flags line counts
        ("", False),  # no /proc/cpuinfo (not Linux)
    ],
)
def test_bfloat16_instructions_are_read_from_the_flags_line(cpuinfo: str, has: bool) -> None:
    assert has_bfloat16_instructions(cpuinfo) is has


def _cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cpuinfo: str) -> None:
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(precision, "CPU_INFO", tmp_path / "cpuinfo")


def test_mixed_precision_computes_in_float16_on_gpus_and_bfloat16_only_on_cpus_that_have_it(monkeypatch, tmp_path, caplog) -> None:
    _cpu(monkeypatch, tmp_path, ZEN4)
    assert (compute_dtype(True, ["CPU"]), compute_dtype(True, ["/device:GPU:0"]), compute_dtype(False, ["CPU"])) == ("bfloat16", "float16", "float32")
    _cpu(monkeypatch, tmp_path, AVX2_EPYC)
    with caplog.at_level(logging.WARNING):
        assert compute_dtype(True, ["CPU"]) == "float32"
    assert "no bfloat16 instructions" in caplog.text
    monkeypatch.setattr(precision, "CPU_INFO", tmp_path / "absent")
    assert compute_dtype(True, ["CPU"]) == "float32"


def _history(run: Path) -> list[float]:
    return [row[key] for row in json.loads((run / "history.json").read_text()) for key in ("loss", "val_loss")]


def test_a_mixed_precision_recipe_trains_in_float32_on_a_cpu_without_bfloat16_and_records_it(trained_run, monkeypatch, tmp_path) -> None:
    """The fallback is plain float32 training (the same history as mixed_precision=false); where the CPU has it, bfloat16."""
    _cpu(monkeypatch, tmp_path, AVX2_EPYC)
    fallback = tmp_path / "fallback"
    result = CliRunner().invoke(main, train_args(fallback, "--set", "train.mixed_precision=true"))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].endswith(" s on CPU in float32")
    assert json.loads((fallback / "train.json").read_text())["compute_dtype"] == "float32"
    assert _history(fallback) == pytest.approx(_history(trained_run), rel=1e-5)  # trained_run: mixed_precision=false

    _cpu(monkeypatch, tmp_path, SAPPHIRE_RAPIDS)
    reduced = tmp_path / "reduced"
    result = CliRunner().invoke(main, train_args(reduced, "--set", "train.mixed_precision=true"))
    assert result.exit_code == 0, result.output
    assert json.loads((reduced / "train.json").read_text())["compute_dtype"] == "bfloat16"
    assert _history(reduced) != pytest.approx(_history(trained_run), rel=1e-3)  # bfloat16 rounding moves every loss
