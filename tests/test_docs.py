"""The README's generated reference tables match the code they describe."""

from pathlib import Path

import pytest

from job.docs import render

pytestmark = pytest.mark.fast  # no training, no fuzzing: the tier `bash tests/run.sh -m fast` runs

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_reference_tables_are_current() -> None:
    text = README.read_text()
    assert render(text) == text, "README reference tables are stale: run `python -m job.docs README.md`"
