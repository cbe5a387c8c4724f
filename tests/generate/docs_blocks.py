"""The docs site's reference blocks come from the code: the CLI from the Click commands, the configuration
from the config model, the metrics from their declarations. Each sits between `<!-- NAME:begin -->` and
`<!-- NAME:end -->` in its page; `python -m tests.generate` rewrites them and tests/test_docs.py fails
while one is stale.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from job.cli import main
from job.config.settings import reference_markdown as config_reference
from job.metrics.series import reference_markdown as metrics_reference

PAGES = Path(__file__).resolve().parents[2] / "docs" / "pages"
HELP_WIDTH = 100


def cli_reference() -> str:
    """Every command's --help, as `cifar-job COMMAND --help` prints it."""
    sections: list[str] = []

    def walk(command: click.Command, path: list[str], parent: click.Context | None) -> None:
        settings = {"max_content_width": HELP_WIDTH, "terminal_width": HELP_WIDTH, **command.context_settings}
        context = click.Context(command, info_name=path[-1], parent=parent, **settings)
        sections.append(f"### `{' '.join(path)}`\n\n```text\n{command.get_help(context)}\n```\n")
        if isinstance(command, click.Group):
            for name in command.list_commands(context):
                walk(command.get_command(context, name), [*path, name], context)  # type: ignore[arg-type]

    walk(main, ["cifar-job"], None)
    return "\n".join(sections)


BLOCKS: dict[str, dict[str, Callable[[], str]]] = {
    "cli.md": {"cli-reference": cli_reference},
    "configuration.md": {"config-reference": config_reference},
    "metrics.md": {"metrics-reference": metrics_reference},
}


def render(page: str, text: str) -> str:
    """`text` of `page` with every generated block between its begin/end markers replaced."""
    for name, generate in BLOCKS[page].items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        head, found_begin, rest = text.partition(begin)
        _, found_end, tail = rest.partition(end)
        if not (found_begin and found_end):
            raise ValueError(f"docs/pages/{page} has no {begin} ... {end} block")
        text = f"{head}{begin}\n{generate()}{end}{tail}"
    return text
