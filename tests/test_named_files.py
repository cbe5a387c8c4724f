"""Files a user names on the command line: a FIFO, a device or a directory in place of a file.

Each must end in one line and its exit code at once; before, a FIFO hung the job on open with
no deadline to end it. Run as a real process with a timeout, so a regression fails rather than hangs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

CASES = {
    "config": (["data", "verify", "--config", "{path}"], 2, "config file {path}: "),
    "data": (["data", "verify", "--data", "{path}", "--checksum", "none"], 3, "data {path}: "),
    "experiment spec": (["experiment", "trials", "{path}"], 2, "{path}: "),
}


def special_file(kind: str, tmp_path: Path) -> Path:
    if kind == "fifo":
        path = tmp_path / "named-pipe"
        os.mkfifo(path)
        return path
    return Path("/dev/zero")


@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("what", CASES)
def test_special_file_in_place_of_a_named_file_is_refused_at_once(what: str, kind: str, tmp_path: Path) -> None:
    path = special_file(kind, tmp_path)
    args, code, where = CASES[what]
    result = subprocess.run(
        [sys.executable, "-m", "job", "--log-level", "error", *(a.format(path=path) for a in args)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == code, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("cifar-job: error: ") and where.format(path=path) in error, result.stderr
    assert "not a regular file" in error, error
