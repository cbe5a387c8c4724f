"""Coverage-guided fuzzing of the batch parser and the archive reader (atheris, see tests/fuzz_data.py).

The default suite fuzzes each target for a few seconds; the `slow` run for CIFAR_FUZZ_SECONDS
per target (default 600): `CIFAR_FUZZ_SECONDS=600 pytest tests/test_fuzz_data.py -m slow`.
A finding fails the test and leaves the input under the test's temporary directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def fuzz(target: str, seconds: int, workdir: Path) -> None:
    command = [sys.executable, "-m", "tests.fuzz_data", target, f"-max_total_time={seconds}", "-rss_limit_mb=1024", "-timeout=10", f"-artifact_prefix={workdir}/", str(workdir / "corpus")]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    findings = [p.name for p in workdir.iterdir() if p.name.startswith(("crash-", "oom-", "timeout-", "leak-"))]
    assert proc.returncode == 0 and not findings, f"{findings}\n{proc.stderr[-3000:]}"
    assert "Done" in proc.stderr  # libFuzzer's summary: the run happened and ended on time


@pytest.mark.parametrize("target", ["pickle", "archive"])
def test_short_fuzz_run_finds_nothing(target: str, tmp_path: Path) -> None:
    fuzz(target, 10, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["pickle", "archive"])
def test_long_fuzz_run_finds_nothing(target: str, tmp_path: Path) -> None:
    fuzz(target, int(os.environ.get("CIFAR_FUZZ_SECONDS", "600")), tmp_path)
