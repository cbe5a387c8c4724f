"""The chart's README from values.yaml's comments; `python -m tests.generate` rewrites it.

values.yaml documents a key with helm-docs' convention: a `# --` comment line and the comment
lines after it, right above the key (comment lines before `# --` are for readers of the file
only). A map whose keys carry no `# --` of their own is one value; a map with documented keys is
walked into, and every value must be documented. The hand-written rest of the README (what the
chart does, upgrade notes) is README.md.tmpl; the table replaces its `{{ values }}`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode

CHART = Path(__file__).resolve().parents[2] / "charts" / "cifar-job"
PLACEHOLDER = "{{ values }}"
DOC = "# --"


def values_markdown(text: str) -> str:
    """The values table: every documented key with its default and its description."""
    rows = ["| key | default | description |", "| --- | --- | --- |"]
    defaults = yaml.safe_load(text)
    for path, doc, is_value in _documented(yaml.compose(text), text.splitlines(), ()):
        shown = _cell(json.dumps(_get(defaults, path)), code=True) if is_value else ""
        rows.append(f"| `{'.'.join(path)}` | {shown} | {_cell(doc)} |")
    return "\n".join(rows) + "\n"


def render(template: str, values_yaml: str) -> str:
    """README.md: the template with its placeholder replaced by the values table."""
    if template.count(PLACEHOLDER) != 1:
        raise ValueError(f"README.md.tmpl must hold {PLACEHOLDER} once")
    return template.replace(PLACEHOLDER, values_markdown(values_yaml).rstrip("\n"))


def _documented(node: MappingNode, lines: list[str], prefix: tuple[str, ...]) -> list[tuple[tuple[str, ...], str, bool]]:
    """(key path, description, whether the row is a value) for `node`'s keys, in file order."""
    rows = []
    for key_node, value_node in node.value:
        path = (*prefix, key_node.value)
        doc = _doc_above(lines, key_node.start_mark.line)
        walk = isinstance(value_node, MappingNode) and _has_docs(value_node, lines)
        if doc is None and not walk:
            raise ValueError(f"values.yaml line {key_node.start_mark.line + 1}: {'.'.join(path)} has no `{DOC}` comment")
        if doc is not None:
            rows.append((path, doc, not walk))
        if walk:
            rows.extend(_documented(value_node, lines, path))
    return rows


def _has_docs(node: MappingNode, lines: list[str]) -> bool:
    return any(_doc_above(lines, key.start_mark.line) is not None or (isinstance(value, MappingNode) and _has_docs(value, lines))
               for key, value in node.value)


def _doc_above(lines: list[str], line: int) -> str | None:
    """The `# --` description in the comment block right above `line`, joined into one line; None without one."""
    block: list[str] = []
    while line > 0 and lines[line - 1].lstrip().startswith("#"):
        line -= 1
        block.insert(0, lines[line].strip())
    starts = [i for i, comment in enumerate(block) if comment.startswith(DOC)]
    if not starts:
        return None
    first, *rest = block[starts[-1]:]
    words = [first.removeprefix(DOC), *(comment.removeprefix("#") for comment in rest)]
    return " ".join(part.strip() for part in words if part.strip())


def _get(values: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        values = values[key]
    return values


def _cell(text: str, code: bool = False) -> str:
    """Text for a Markdown table cell: `|` would end the cell, and outside code spans `<name>` would be read as an HTML tag."""
    text = text.replace("|", "\\|")
    if code:
        return f"`{text}`"
    return "`".join(part if i % 2 else part.replace("<", "&lt;") for i, part in enumerate(text.split("`")))

