"""Coverage-guided fuzzing of the batch parser and the archive reader (atheris, see tests/fuzz_data.py).

The default suite fuzzes each target for a few seconds; the `slow` run for CIFAR_FUZZ_SECONDS
per target (default 600): `CIFAR_FUZZ_SECONDS=600 pytest tests/test_fuzz_data.py -m slow`.
A finding fails the test and leaves the input under the test's temporary directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fuzzing import run_fuzzer


def fuzz(target: str, seconds: int, workdir: Path) -> None:
    (workdir / "corpus").mkdir()
    runs, _ = run_fuzzer("tests.fuzz_data", seconds, workdir, target, str(workdir / "corpus"))
    assert runs > 0


@pytest.mark.parametrize("target", ["pickle", "archive"])
def test_short_fuzz_run_finds_nothing(target: str, tmp_path: Path) -> None:
    fuzz(target, 10, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["pickle", "archive"])
def test_long_fuzz_run_finds_nothing(target: str, tmp_path: Path) -> None:
    fuzz(target, int(os.environ.get("CIFAR_FUZZ_SECONDS", "600")), tmp_path)
