"""A pod on its index's last try records any failure as final, so the last pod still finalises the experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from job.experiments import runner as experiment
from job.core.errors import Preempted
from job.experiments.runner import FAILURES_ENV, RETRIES_ENV, last_try, run_index
from job.config.experiment_spec import load_spec

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    ("env", "last"),
    [
        ({}, False),  # a local run: only the non-retryable exit codes are final
        ({FAILURES_ENV: "", RETRIES_ENV: "3"}, False),  # the first pod: the annotation is not there yet
        ({FAILURES_ENV: "2", RETRIES_ENV: "3"}, False),
        ({FAILURES_ENV: "3", RETRIES_ENV: "3"}, True),
        ({FAILURES_ENV: "0", RETRIES_ENV: "0"}, True),  # no retries at all
        ({FAILURES_ENV: "x", RETRIES_ENV: "3"}, False),
        ({FAILURES_ENV: "²", RETRIES_ENV: "1"}, False),  # a digit to str.isdigit, not to int()
        ({FAILURES_ENV: "9" * 5000, RETRIES_ENV: "3"}, False),
    ],
)
def test_the_last_try_is_when_the_failures_reach_the_retries(env: dict[str, str], last: bool) -> None:
    assert last_try(env) is last


def _failing_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, failures: str) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "retries", "base": {"data": {"train_limit": 600}}, "seeds": 2}))

    def fails(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(experiment, "run_stage", fails)
    monkeypatch.setenv(FAILURES_ENV, failures)
    monkeypatch.setenv(RETRIES_ENV, "2")
    out = tmp_path / "experiment"
    with pytest.raises(type(error)):
        run_index(load_spec(spec), out, 0, print)
    return out / "trials" / "0000" / "failed.json"


def test_an_unexpected_failure_on_the_last_try_is_recorded_as_final(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = _failing_trial(tmp_path, monkeypatch, RuntimeError("out of luck"), failures="2")
    assert json.loads(failed.read_text())["exit_code"] == 1


def test_an_unexpected_failure_with_retries_left_is_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not _failing_trial(tmp_path, monkeypatch, RuntimeError("out of luck"), failures="1").exists()


def test_preemption_on_the_last_try_is_not_final(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kubernetes does not count a disruption against the index: another pod follows."""
    assert not _failing_trial(tmp_path, monkeypatch, Preempted("SIGTERM"), failures="2").exists()
