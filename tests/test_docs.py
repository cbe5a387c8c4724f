"""The documentation site: its generated reference blocks match the code, and it builds with no broken link or anchor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .generate import docs_blocks

pytestmark = pytest.mark.fast  # no training, no fuzzing: the tier `bash tests/run.sh -m fast` runs

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = DOCS.parent / "README.md"


@pytest.mark.parametrize("page", list(docs_blocks.BLOCKS))
def test_generated_reference_blocks_are_current(page: str) -> None:
    text = (docs_blocks.PAGES / page).read_text()
    assert docs_blocks.render(page, text) == text, f"docs/pages/{page} is stale: run `python -m tests.generate`"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """mkdocs --strict: a broken link, a missing anchor or a page left out of the nav fails the build."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(DOCS / "mkdocs.yml"), "-d", str(tmp_path / "site")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "cli" / "index.html").is_file()


def test_the_readme_is_a_short_entry_that_links_into_the_site() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    linked = {line.split("](docs/pages/")[1].split(")")[0].split("#")[0] for line in text.splitlines() if "](docs/pages/" in line}
    assert linked and all((docs_blocks.PAGES / page).is_file() for page in linked)
