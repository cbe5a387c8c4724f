"""An experiment's metrics against the real Pushgateway and Prometheus of tests/test_metrics.py: trials labelled
`experiment` and `trial`, each its own pushed group beside a plain run's, the experiment's progress and outcome,
and its alerts. Trials train on 600 images for one epoch."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from job.config.settings import load_config
from job.core.errors import ConfigError
from job.metrics.session import TRIAL_ENV, metrics_session, trial_labels

from .conftest import REAL_ARCHIVE, REAL_SHA256
from .test_experiment_run import small_spec
from .test_metrics import (  # noqa: F401 - fixtures: the real servers
    cifar_job,
    eventually,
    firing_alerts,
    http_get,
    job_port,
    prometheus,
    pushgateway,
    secured_pushgateway,
    value,
)

DATA = ["--checksum", f"sha256:{REAL_SHA256}", "--device", "cpu"]


def _spec(tmp_path: Path, pushgateway: str, **metrics: Any) -> Path:
    return small_spec(tmp_path, name="mx", metrics={"pushgateway_url": pushgateway, **metrics}, seeds=2)


def _groups(pushgateway: str) -> dict[tuple[tuple[str, str], ...], dict[str, Any]]:
    """Every group the Pushgateway holds: {sorted grouping labels: {metric name: its first sample's value}}."""
    body = json.loads(http_get(f"{pushgateway}/api/v1/metrics"))["data"]
    return {
        tuple(sorted(group["labels"].items())): {
            name: family["metrics"][0]
            for name, family in group.items()
            if isinstance(family, dict) and "metrics" in family
        }
        for group in body
    }


def _pushed(groups: dict[tuple[tuple[str, str], ...], dict[str, Any]], **labels: str) -> dict[str, Any]:
    return groups[tuple(sorted({"job": "cifar-job", **labels}.items()))]


def _scrape_while(port: int, alive: threading.Event, into: list[str]) -> None:
    """Scrape a trial's /metrics as often as it answers, until told to stop (it lingers until scraped)."""
    while alive.is_set():
        try:
            into.append(http_get(f"http://127.0.0.1:{port}/metrics").decode())
        except OSError:
            alive.wait(0.2)


def test_a_local_experiment_labels_its_trials_and_pushes_progress_and_outcome(
    tmp_path: Path, pushgateway: str, prometheus: str, job_port: int
) -> None:
    out = tmp_path / "mx-run"
    plain = load_config(env={}, overrides={"out": str(out), "metrics.pushgateway_url": pushgateway})
    with metrics_session(plain, "train", labels={}):  # a plain run whose run_id is the experiment's: its group must stay
        pass
    spec = _spec(tmp_path, pushgateway, port=job_port, linger_seconds=30)
    trial_scrapes: list[str] = []
    alive = threading.Event()
    alive.set()
    scraper = threading.Thread(target=_scrape_while, args=(job_port + 1, alive, trial_scrapes), daemon=True)
    scraper.start()
    try:
        run = cifar_job("experiment", "run", str(spec), "--out", str(out), "--data", str(REAL_ARCHIVE), *DATA, cwd=tmp_path)
    finally:
        alive.clear()
        scraper.join()
    assert run.returncode == 0, run.stderr[-3000:]
    selection = json.loads((out / "selection.json").read_text())

    groups = _groups(pushgateway)
    assert _pushed(groups, run_id="mx-run")["cifar_job_exit_reason"]["labels"]["command"] == "train"  # the plain run's, untouched
    for trial in ("0", "1"):
        pushed = _pushed(groups, run_id=f"000{trial}", experiment="mx", trial=trial)
        assert float(pushed["cifar_job_exit_code"]["value"]) == 0
        assert pushed["cifar_job_exit_reason"]["labels"]["command"] == "train"
    experiment = _pushed(groups, run_id="mx-run", experiment="mx")
    assert experiment["cifar_job_exit_reason"]["labels"]["reason"] == "success"
    assert float(experiment["cifar_job_experiment_selected_trial"]["value"]) == selection["trial"]
    selected = float(experiment["cifar_job_experiment_selected_validation_value"]["value"])
    assert selected == pytest.approx(selection["trial_value"])
    assert "cifar_job_last_success_timestamp_seconds" in experiment

    # through Prometheus: the pushed states, and the states the experiment served while it ran
    pushed_states = 'cifar_job_experiment_trials{job="cifar-job",run_id="mx-run",experiment="mx",state="%s"}'
    assert value(prometheus, pushed_states % "completed") == 2
    assert value(prometheus, pushed_states % "failed") == 0
    served = 'max_over_time(cifar_job_experiment_trials{job="cifar-job-pods",experiment="mx",state="%s"}[10m])'
    assert value(prometheus, served % "running") == 1
    assert value(prometheus, served % "completed") == 2
    # each trial's process served its training series with its labels
    for trial in ("0", "1"):
        assert any(f'cifar_job_train_epoch{{experiment="mx",trial="{trial}"}} 1.0' in text for text in trial_scrapes), trial


def test_pods_whose_trials_all_fail_push_each_trial_and_the_experiment_and_alert(
    tmp_path: Path, pushgateway: str, prometheus: str
) -> None:
    spec = _spec(tmp_path, pushgateway)
    out = tmp_path / "mx-failed"
    for index in ("0", "1"):  # two pods of the Indexed Job; data missing: a failure no retry fixes
        run = cifar_job(
            "experiment", "run", str(spec), "--out", str(out), "--index", index, "--data", str(tmp_path / "missing.tar.gz"),
            *DATA, cwd=tmp_path,
        )  # fmt: skip
        assert run.returncode == 3, run.stderr[-3000:]
    groups = _groups(pushgateway)
    for index in ("0", "1"):
        assert _pushed(groups, run_id=f"000{index}", experiment="mx", trial=index)["cifar_job_exit_reason"]["labels"]["reason"] == "data"
    experiment = _pushed(groups, run_id="mx-failed", experiment="mx")
    assert experiment["cifar_job_exit_reason"]["labels"]["reason"] == "experiment_failed"
    assert "cifar_job_experiment_selected_trial" not in experiment
    assert value(prometheus, 'cifar_job_experiment_trials{run_id="mx-failed",state="failed"}') == 2

    def alerting() -> bool:
        failed = [a for a in firing_alerts(prometheus, "CifarJobExperimentTrialsFailed") if a.get("run_id") == "mx-failed"]
        unpublished = [a for a in firing_alerts(prometheus, "CifarJobExperimentNotPublished") if a.get("run_id") == "mx-failed"]
        return bool(failed and unpublished)

    eventually(alerting, "both experiment alerts firing")


def test_trial_labels_come_from_the_environment_and_a_plain_run_has_none() -> None:
    assert trial_labels({}) == {}
    assert trial_labels({TRIAL_ENV: "lr-seeds/0012"}) == {"experiment": "lr-seeds", "trial": "12"}
    with pytest.raises(ConfigError, match=TRIAL_ENV):
        trial_labels({TRIAL_ENV: "lr/x"})
