"""The chart's README documents every value of values.yaml with its default, and is current."""

from __future__ import annotations

import pytest

from tests.generate import chart_docs

pytestmark = pytest.mark.fast  # no training, no fuzzing: the tier `bash tests/run.sh -m fast` runs

CHART = chart_docs.CHART


def test_chart_readme_is_current() -> None:
    fresh = chart_docs.render((CHART / "README.md.tmpl").read_text(), (CHART / "values.yaml").read_text())
    assert (CHART / "README.md").read_text() == fresh, "charts/cifar-job/README.md is stale: run `python -m tests.generate`"


def test_rows_follow_the_comment_convention() -> None:
    values = """\
# File notes are not documentation.

# Notes for readers of values.yaml only.
# -- Replicas: one
# per <zone> | at most.
replicas: 1
probe:
  # -- Seconds between probes.
  period: 10
# -- Extra labels, as a whole.
labels:
  team: ml
"""
    assert chart_docs.values_markdown(values).splitlines()[2:] == [
        "| `replicas` | `1` | Replicas: one per &lt;zone> \\| at most. |",
        "| `probe.period` | `10` | Seconds between probes. |",
        '| `labels` | `{"team": "ml"}` | Extra labels, as a whole. |',
    ]


def test_an_undocumented_value_is_refused() -> None:
    with pytest.raises(ValueError, match=r"line 4: probe.timeout has no `# --` comment"):
        chart_docs.values_markdown("probe:\n  # -- Seconds between probes.\n  period: 10\n  timeout: 5\n")
