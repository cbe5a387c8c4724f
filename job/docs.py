"""The README's reference tables come from the code; `python -m job.docs README.md` rewrites them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from job import config, metrics

BLOCKS: dict[str, Callable[[], str]] = {
    "config-reference": config.reference_markdown,
    "metrics-reference": metrics.reference_markdown,
}


def render(readme: str) -> str:
    """`readme` with every generated block between its begin/end markers replaced."""
    for name, generate in BLOCKS.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        head, found_begin, rest = readme.partition(begin)
        _, found_end, tail = rest.partition(end)
        if not (found_begin and found_end):
            raise ValueError(f"README has no {begin} ... {end} block")
        readme = f"{head}{begin}\n{generate()}{end}{tail}"
    return readme


if __name__ == "__main__":
    from job.atomic import atomic_write

    if len(sys.argv) != 2:
        sys.exit("usage: python -m job.docs README.md")
    readme = Path(sys.argv[1])
    atomic_write(readme, render(readme.read_text()))
