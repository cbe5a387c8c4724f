"""Coverage-guided fuzzing of the experiment spec loader and the chart values reader (atheris, see tests/fuzz_inputs.py).

The default suite fuzzes each target for a few seconds; the `slow` run for CIFAR_FUZZ_SECONDS
per target (default 600): `CIFAR_FUZZ_SECONDS=600 pytest tests/test_fuzz_experiment.py -m slow`.
A finding fails the test and leaves the input under the test's temporary directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fuzzing import run_fuzzer

MAX_LEN = {"spec": 8192, "values": 16384}  # values.yaml, a seed, is 14 kB


def fuzz(target: str, seconds: int, workdir: Path) -> int:
    (workdir / "corpus").mkdir()
    runs, _ = run_fuzzer("tests.fuzz_inputs", seconds, workdir, target, f"-max_len={MAX_LEN[target]}", str(workdir / "corpus"))
    return runs


@pytest.mark.parametrize("target", ["spec", "values"])
def test_short_fuzz_run_finds_nothing(target: str, tmp_path: Path) -> None:
    assert fuzz(target, 10, tmp_path) >= 200  # it really ran


@pytest.mark.slow
@pytest.mark.parametrize("target", ["spec", "values"])
def test_long_fuzz_run_finds_nothing(target: str, tmp_path: Path) -> None:
    assert fuzz(target, int(os.environ.get("CIFAR_FUZZ_SECONDS", "600")), tmp_path) >= 10_000
