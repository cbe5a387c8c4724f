"""Metrics against real servers: Debian's Prometheus and Pushgateway, started on 127.0.0.1.

Prometheus scrapes the job's /metrics and the Pushgateway every second and evaluates the chart's
alert rules; every assertion about a value goes through Prometheus' HTTP query API, so it checks
what a dashboard or an alert would see. A second Pushgateway requires basic auth (a bcrypt hash
made by Apache's htpasswd). tests/run.sh installs the three packages.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from export.convert import ExportResult
from export.gate import check_gate
from export.scores import classification_scores, confusion_matrix
from export.validate import ValidationResult
from job.config.settings import Config, GateConfig, load_config
from job.core.errors import ConfigError, DataError, GateFailed, Preempted
from job.metrics.series import RunMetrics, reference
from job.metrics.server import CLIENT_TIMEOUT_SECONDS
from job.metrics.session import metrics_session
from job.core.credentials import BasicAuth
from job.metrics.pushgateway import PASSWORD_FILE_ENV, USERNAME_ENV, PushFailed, Pushgateway

from .conftest import CLASS_NAMES

REPO = Path(__file__).resolve().parents[1]
ALERT_RULES = REPO / "charts/cifar-job/files/alerts.rules.yaml"
RULE_TESTS = REPO / "tests/rules/alerts_test.yaml"
JOB_SCRAPE = "cifar-job-pods"  # the scrape job of the job's own /metrics

# --- real servers ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(check: Callable[[], Any], what: str, deadline_s: float = 90.0) -> Any:
    """Poll `check` until it returns something truthy; the deadline only guards against hanging."""
    end = time.monotonic() + deadline_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what} (last: {result!r})")
        time.sleep(0.2)


def http_get(url: str, auth: tuple[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def _start(argv: list[str], ready_url: str, log_file: Path, auth: tuple[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def ready() -> bool:
        assert proc.poll() is None, f"{argv[0]} exited:\n{log_file.read_text()[-3000:]}"
        try:
            return http_get(ready_url, auth) is not None
        except OSError:
            return False

    eventually(ready, f"{argv[0]} ready at {ready_url}")
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Pushgateway (Debian prometheus-pushgateway) on a free 127.0.0.1 port; yields its URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("pushgateway") / "pushgateway.log"
    argv = [
        "prometheus-pushgateway",
        f"--web.listen-address=127.0.0.1:{port}",
        "--persistence.file=",  # Debian's default persists to /var/lib/prometheus; these tests start empty
    ]
    proc = _start(argv, f"http://127.0.0.1:{port}/-/ready", log)
    yield f"http://127.0.0.1:{port}"
    _stop(proc)


@dataclass(frozen=True)
class SecuredPushgateway:
    url: str
    username: str
    password: str
    password_file: Path

    @property
    def env(self) -> dict[str, str]:
        """What a pod gets from the chart: the username, and the path of the mounted Secret."""
        return {USERNAME_ENV: self.username, PASSWORD_FILE_ENV: str(self.password_file)}

    def groups(self) -> list[dict[str, str]]:
        """The grouping labels of every group the Pushgateway holds (its own API)."""
        body = json.loads(http_get(f"{self.url}/api/v1/metrics", (self.username, self.password)))
        return [group["labels"] for group in body["data"]]


@pytest.fixture(scope="module")
def secured_pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredPushgateway]:
    """A real Pushgateway that requires basic auth (--web.config.file, bcrypt hash from Apache's htpasswd)."""
    home = tmp_path_factory.mktemp("secured-pushgateway")
    username, password = "pusher", "pw-" + secrets.token_urlsafe(24)
    password_file = home / "password"
    password_file.write_text(password + "\n")  # as `echo` or a Secret made from a file leaves it
    hashed = subprocess.run(["htpasswd", "-niB", "-C", "4", username], input=password, capture_output=True, text=True, check=True)
    web_config = home / "web.yml"
    web_config.write_text(yaml.safe_dump({"basic_auth_users": dict([hashed.stdout.strip().split(":", 1)])}))
    port = free_port()
    argv = ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}", "--persistence.file=", f"--web.config.file={web_config}"]
    url = f"http://127.0.0.1:{port}"
    proc = _start(argv, f"{url}/-/ready", home / "pushgateway.log", auth=(username, password))
    yield SecuredPushgateway(url, username, password, password_file)
    _stop(proc)


@pytest.fixture(scope="module")
def job_port() -> int:
    """The port the job under test serves /metrics on, Prometheus scrapes it; the next one is free too,
    for a local experiment's trial process.

    Both lie below the kernel's ephemeral range: a client that polls a port in that range before
    anything listens there can be handed that very port as its own source and connect to itself,
    leaving the server "Address already in use" (TCP self-connect).
    """
    lowest_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    while True:
        port = rng.randrange(10_000, lowest_ephemeral - 1)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, pushgateway: str, secured_pushgateway: SecuredPushgateway, job_port: int
) -> Iterator[str]:
    """A real Prometheus scraping the job and both Pushgateways every second, with the chart's alert rules; yields its URL."""
    home = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERT_RULES)],
        "scrape_configs": [
            {"job_name": JOB_SCRAPE, "static_configs": [{"targets": [f"127.0.0.1:{job_port}"]}]},
            {
                "job_name": "pushgateway",
                "honor_labels": True,  # keep the pushed job and run_id
                "static_configs": [{"targets": [urllib.parse.urlsplit(pushgateway).netloc]}],
            },
            {
                "job_name": "secured-pushgateway",
                "honor_labels": True,
                "basic_auth": {"username": secured_pushgateway.username, "password_file": str(secured_pushgateway.password_file)},
                "static_configs": [{"targets": [urllib.parse.urlsplit(secured_pushgateway.url).netloc]}],
            },
        ],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        "prometheus",
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    proc = _start(argv, f"http://127.0.0.1:{port}/-/ready", home / "prometheus.log")
    yield f"http://127.0.0.1:{port}"
    _stop(proc)


def query(prometheus: str, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Instant query; {sorted labels without __name__: value}."""
    body = json.loads(http_get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert body["status"] == "success", body
    return {
        tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(r["value"][1]) for r in body["data"]["result"]
    }


def value(prometheus: str, expr: str) -> float:
    """The single value of `expr`, once Prometheus has it."""
    found = eventually(lambda: query(prometheus, expr), f"a series for {expr}")
    assert len(found) == 1, f"{expr}: expected one series, got {found}"
    return next(iter(found.values()))


def firing_alerts(prometheus: str, name: str) -> list[dict[str, str]]:
    body = json.loads(http_get(f"{prometheus}/api/v1/alerts"))
    return [a["labels"] for a in body["data"]["alerts"] if a["labels"]["alertname"] == name and a["state"] == "firing"]


# --- running the real command line ------------------------------------------------------------


def cifar_job_process(*args: str, cwd: Path, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen[str]:
    """`cifar-job ARGS` started in a subprocess with `env` added, and no CIFAR_JOB_* or PUSHGATEWAY_* variables of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIFAR_JOB_", "PUSHGATEWAY_"))} | (env or {})
    argv = [sys.executable, "-m", "job", *args]
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def cifar_job(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`cifar-job ARGS` run to its end."""
    with cifar_job_process(*args, cwd=cwd, env=env) as proc:
        stdout, stderr = proc.communicate(timeout=900)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


# 400 images, 20 % held out: 320 training images, 10 steps of 32 per epoch.
SMALL_RUN = ["--set", "data.train_limit=400", "--set", "data.test_limit=200", "--epochs", "2", "--batch-size", "32"]


@pytest.fixture(scope="module")
def trained_run(
    tmp_path_factory: pytest.TempPathFactory, real_archive: Path, prometheus: str, pushgateway: str, job_port: int
) -> dict[str, Any]:
    """A short real training on the real archive, scraped by Prometheus and pushing its outcome."""
    out = tmp_path_factory.mktemp("run") / "scraped-run"
    started = time.time()
    proc = cifar_job(
        "train", "--out", str(out), "--data", str(real_archive), *SMALL_RUN,
        "--set", f"metrics.port={job_port}",
        "--set", f"metrics.pushgateway_url={pushgateway}",
        "--set", "metrics.linger_seconds=120",
        cwd=out.parent,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "started": started, "ended": time.time(), "stderr": proc.stderr}


# --- the whole path: real training, real scrapes, real push ----------------------------------


def last_scraped(prometheus: str, name: str, **labels: str) -> float:
    """The last value Prometheus scraped from the job: once the run has ended its series are stale, not gone."""
    matchers = ",".join([f'job="{JOB_SCRAPE}"', *(f'{k}="{v}"' for k, v in labels.items())])
    return value(prometheus, f"last_over_time({name}{{{matchers}}}[10m])")


def test_training_metrics_reach_prometheus_with_the_run_values(trained_run: dict[str, Any], prometheus: str) -> None:
    last = json.loads((trained_run["out"] / "history.json").read_text())[-1]
    result = json.loads((trained_run["out"] / "train.json").read_text())

    def scraped(name: str, **labels: str) -> float:
        return last_scraped(prometheus, name, **labels)

    assert scraped("cifar_job_train_epoch") == 2
    assert scraped("cifar_job_train_epochs") == 2
    assert scraped("cifar_job_train_steps_per_epoch") == 10
    assert scraped("cifar_job_train_step") == 10
    assert scraped("cifar_job_train_steps_total") == 20
    assert scraped("cifar_job_train_images_total") == 640
    assert scraped("cifar_job_train_epoch_duration_seconds_count") == 2
    assert scraped("cifar_job_train_images_per_second") > 0
    assert scraped("cifar_job_train_early_stopping_patience_epochs") == 5
    assert scraped("cifar_job_train_loss", split="train") == pytest.approx(last["loss"], rel=1e-6)
    assert scraped("cifar_job_train_loss", split="validation") == pytest.approx(last["val_loss"], rel=1e-6)
    assert scraped("cifar_job_train_accuracy_ratio", split="train") == pytest.approx(last["accuracy"], rel=1e-6)
    assert scraped("cifar_job_train_accuracy_ratio", split="validation") == pytest.approx(last["val_accuracy"], rel=1e-6)
    assert scraped("cifar_job_train_learning_rate") == pytest.approx(last["learning_rate"], rel=1e-6)
    assert scraped("cifar_job_train_early_stopping_wait_epochs") == last["patience_wait"]
    assert scraped("cifar_job_train_best_validation_loss") == pytest.approx(result["best_val_loss"], rel=1e-6)
    assert scraped("cifar_job_train_best_epoch") == result["best_epoch"]

    start = scraped("cifar_job_stage_start_timestamp_seconds", stage="train")
    end = scraped("cifar_job_stage_end_timestamp_seconds", stage="train")
    assert trained_run["started"] <= start < end <= trained_run["ended"]
    assert scraped("cifar_job_stage_active", stage="train") == 0  # the final scrape, kept for by the linger


def test_training_outcome_is_pushed_grouped_by_job_and_run_id(trained_run: dict[str, Any], prometheus: str) -> None:
    group = 'job="cifar-job",run_id="scraped-run"'  # run_id defaults to the run directory's name
    assert value(prometheus, f"cifar_job_exit_code{{{group}}}") == 0
    assert query(prometheus, f"cifar_job_exit_reason{{{group}}}") == {
        (("command", "train"), ("job", "cifar-job"), ("reason", "success"), ("run_id", "scraped-run")): 1
    }
    assert trained_run["started"] <= value(prometheus, f"cifar_job_last_success_timestamp_seconds{{{group}}}") <= trained_run["ended"]
    assert 0 < value(prometheus, f"cifar_job_run_duration_seconds{{{group}}}") <= trained_run["ended"] - trained_run["started"]
    assert query(prometheus, f"cifar_job_gate_passed{{{group}}}") == {}  # train alone never meets the gate
    assert "pushed outcome 'success'" in trained_run["stderr"] and "WARNING job.metrics." not in trained_run["stderr"]


def test_unreachable_pushgateway_is_a_warning_not_a_failure(trained_run: dict[str, Any], real_archive: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    proc = cifar_job(
        "train", "--out", str(trained_run["out"]), "--data", str(real_archive), *SMALL_RUN,
        "--set", f"metrics.pushgateway_url={closed}",
        cwd=trained_run["out"].parent,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained 2 epochs" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if "WARNING job.metrics." in line]
    assert len(warnings) == 1 and f"could not push the outcome to the Pushgateway {closed}" in warnings[0], proc.stderr[-3000:]


def test_sigterm_while_lingering_keeps_the_success(trained_run: dict[str, Any], real_archive: Path) -> None:
    out = trained_run["out"]
    proc = cifar_job_process(
        "train", "--out", str(out), "--data", str(real_archive), *SMALL_RUN,
        "--set", f"metrics.port={free_port()}", "--set", "metrics.linger_seconds=600",  # a port nobody scrapes
        cwd=out.parent,
    )  # fmt: skip
    with proc:
        for line in proc.stderr:  # training is complete already: the command ends at once and lingers
            if "keeping /metrics up" in line:
                proc.send_signal(signal.SIGTERM)
                break
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "stopped waiting for the final scrape" in stderr


def test_failed_run_pushes_its_failure_and_alerts(tmp_path: Path, pushgateway: str, prometheus: str) -> None:
    proc = cifar_job(
        "train", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "missing.tar.gz"),
        "--set", f"metrics.pushgateway_url={pushgateway}", "--set", "metrics.run_id=bad-data",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == DataError.exit_code, proc.stderr[-3000:]
    group = 'job="cifar-job",run_id="bad-data"'
    assert value(prometheus, f"cifar_job_exit_code{{{group}}}") == DataError.exit_code
    assert value(prometheus, f'cifar_job_exit_reason{{{group},command="train",reason="data"}}') == 1
    assert query(prometheus, f"cifar_job_last_success_timestamp_seconds{{{group}}}") == {}
    alerts = eventually(lambda: [a for a in firing_alerts(prometheus, "CifarJobFailed") if a["run_id"] == "bad-data"], "CifarJobFailed")
    assert [(a["command"], a["reason"], a["severity"]) for a in alerts] == [("train", "data", "critical")]


def test_sigterm_during_training_pushes_a_preemption(tmp_path: Path, real_archive: Path, pushgateway: str, prometheus: str) -> None:
    port = free_port()
    proc = cifar_job_process(
        "train", "--out", str(tmp_path / "run"), "--data", str(real_archive), *SMALL_RUN, "--epochs", "1000",
        "--set", f"metrics.port={port}",
        "--set", f"metrics.pushgateway_url={pushgateway}",
        "--set", "metrics.run_id=stopped",
        "--set", "metrics.linger_seconds=600",
        cwd=tmp_path,
    )  # fmt: skip
    try:

        def training() -> bool:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                return "cifar_job_train_step " in http_get(f"http://127.0.0.1:{port}/metrics").decode()
            except OSError:
                return False

        eventually(training, "training under way")
        proc.send_signal(signal.SIGTERM)  # what Kubernetes sends a pod it stops
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == Preempted.exit_code, stderr[-3000:]
    assert "keeping /metrics up" not in stderr  # a stopped pod does not linger
    group = 'job="cifar-job",run_id="stopped"'
    assert value(prometheus, f"cifar_job_exit_code{{{group}}}") == Preempted.exit_code
    assert value(prometheus, f'cifar_job_exit_reason{{{group},command="train",reason="preempted"}}') == 1
    assert not [a for a in firing_alerts(prometheus, "CifarJobFailed") if a["run_id"] == "stopped"]


@pytest.fixture(scope="module")
def gated_run(
    trained_run: dict[str, Any], real_archive: Path, prometheus: str, secured_pushgateway: SecuredPushgateway, job_port: int
) -> dict[str, Any]:
    """`cifar-job run` resuming the trained run at export, pushing with basic auth; the tiny model then fails the reference gate."""
    out = trained_run["out"]
    started = time.time()
    proc = cifar_job(
        "run", "--out", str(out), "--data", str(real_archive), *SMALL_RUN, "--device", "cpu",
        "--set", "export.parity_images=200", "--set", "validate.batch_size=50",
        "--set", f"publish.root={out.parent / 'models'}",
        "--set", f"metrics.port={job_port}",
        "--set", f"metrics.pushgateway_url={secured_pushgateway.url}",
        "--set", "metrics.run_id=gated-run",
        "--set", "metrics.linger_seconds=120",
        cwd=out.parent, env=secured_pushgateway.env,
    )  # fmt: skip
    assert proc.returncode == GateFailed.exit_code, proc.stderr[-3000:]
    return {"out": out, "started": started, "ended": time.time(), "output": proc.stdout + proc.stderr}


def test_export_and_validation_metrics_reach_prometheus(gated_run: dict[str, Any], prometheus: str) -> None:
    out = gated_run["out"]
    export = json.loads((out / "export.json").read_text())
    validation = json.loads((out / "metrics.json").read_text())

    def scraped(name: str, **labels: str) -> float:
        return last_scraped(prometheus, name, **labels)

    assert scraped("cifar_job_export_model_size_bytes") == (out / "model.onnx").stat().st_size == export["size_bytes"]
    assert scraped("cifar_job_export_parity_max_abs_difference") == pytest.approx(export["parity_max_abs_diff"], rel=1e-9)
    assert scraped("cifar_job_export_duration_seconds") == pytest.approx(export["duration_s"])
    assert scraped("cifar_job_validation_accuracy_ratio") == pytest.approx(validation["accuracy"])
    assert scraped("cifar_job_validation_f1_score", average="macro") == pytest.approx(validation["macro_f1"])
    assert scraped("cifar_job_validation_f1_score", average="weighted") == pytest.approx(validation["weighted_f1"])
    for metric, key in [("precision_ratio", "precision"), ("recall_ratio", "recall"), ("f1_score", "f1")]:
        series = query(prometheus, f'last_over_time(cifar_job_validation_class_{metric}{{job="{JOB_SCRAPE}"}}[10m])')
        by_class = {dict(labels)["class_name"]: v for labels, v in series.items()}
        assert by_class == pytest.approx({name: scores[key] for name, scores in validation["per_class"].items()}), metric
        assert sorted(by_class) == sorted(CLASS_NAMES)
    assert scraped("cifar_job_validation_batch_latency_seconds_count") == 4  # 200 test images in batches of 50
    assert scraped("cifar_job_validation_images_per_second") == pytest.approx(validation["inference"]["images_per_second"])
    assert scraped("cifar_job_validation_execution_provider_info", provider="CPUExecutionProvider") == 1

    times = {
        stage: (scraped("cifar_job_stage_start_timestamp_seconds", stage=stage), scraped("cifar_job_stage_end_timestamp_seconds", stage=stage))
        for stage in ("export", "validate")
    }
    assert gated_run["started"] <= times["export"][0] < times["export"][1] <= times["validate"][0] < times["validate"][1]
    assert times["validate"][1] <= gated_run["ended"]
    # The failed gate stops the run at validate: publishing never starts.
    assert query(prometheus, f'cifar_job_stage_start_timestamp_seconds{{job="{JOB_SCRAPE}",stage="publish"}}') == {}


def test_a_failed_gate_is_pushed_and_alerts(gated_run: dict[str, Any], prometheus: str) -> None:
    group = 'job="cifar-job",run_id="gated-run"'
    assert value(prometheus, f"cifar_job_exit_code{{{group}}}") == GateFailed.exit_code
    assert value(prometheus, f'cifar_job_exit_reason{{{group},command="run",reason="gate_failed"}}') == 1
    assert value(prometheus, f"cifar_job_gate_passed{{{group}}}") == 0
    assert query(prometheus, f"cifar_job_last_success_timestamp_seconds{{{group}}}") == {}
    alerts = eventually(
        lambda: [a for a in firing_alerts(prometheus, "CifarJobQualityGateFailed") if a["run_id"] == "gated-run"], "gate alert"
    )
    assert [a["severity"] for a in alerts] == ["warning"]
    assert not [a for a in firing_alerts(prometheus, "CifarJobFailed") if a["run_id"] == "gated-run"]


# --- hostile and faulty inputs: credentials, URLs, grouping values, slow servers -------------


def test_basic_auth_push_leaks_the_password_nowhere(gated_run: dict[str, Any], secured_pushgateway: SecuredPushgateway) -> None:
    """The push authenticates (the failed-gate alert above fires from it); no output or run file holds the password."""
    assert "pushed outcome 'gate_failed'" in gated_run["output"]
    assert {"job": "cifar-job", "run_id": "gated-run"} in secured_pushgateway.groups()
    secret = secured_pushgateway.password.encode()
    assert (gated_run["out"] / "metrics.json").is_file() and (gated_run["out"] / "config.yaml").is_file()
    assert secret not in gated_run["output"].encode()
    assert [p for p in gated_run["out"].rglob("*") if p.is_file() and secret in p.read_bytes()] == []


def _use_credentials(monkeypatch: pytest.MonkeyPatch, username: str, password_file: Path) -> None:
    monkeypatch.setenv(USERNAME_ENV, username)
    monkeypatch.setenv(PASSWORD_FILE_ENV, str(password_file))


def test_a_wrong_password_is_one_warning_without_it(
    tmp_path: Path, secured_pushgateway: SecuredPushgateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password-" + secrets.token_hex(8))
    _use_credentials(monkeypatch, secured_pushgateway.username, wrong)
    caplog.set_level(logging.INFO, logger="job")
    with metrics_session(_config(tmp_path, pushgateway_url=secured_pushgateway.url, run_id="wrong-password"), "train"):
        pass
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"could not push the outcome to the Pushgateway {secured_pushgateway.url}: HTTP 401 Unauthorized (the run's result is unaffected)"
    ]
    assert wrong.read_text() not in caplog.text
    assert not [g for g in secured_pushgateway.groups() if g.get("run_id") == "wrong-password"]


IN_URL = "pw-" + secrets.token_hex(8)  # a password or token someone put into the URL


@pytest.mark.parametrize(
    "url",
    [f"http://pusher:{IN_URL}@127.0.0.1:9091", f"http://{IN_URL}@127.0.0.1:9091", f"http://127.0.0.1:9091/?token={IN_URL}"],
    ids=["user-password", "token-as-user", "query-token"],
)
def test_credentials_in_the_url_are_refused_before_any_work(url: str, tmp_path: Path) -> None:
    """urllib would never send them, and config.yaml, the ConfigMap and every log line would show them."""
    proc = cifar_job(
        "train", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "missing.tar.gz"),
        "--set", f"metrics.pushgateway_url={url}",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == ConfigError.exit_code, proc.stderr[-3000:]
    assert IN_URL not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if "metrics.pushgateway_url" in line]
    assert USERNAME_ENV in line and PASSWORD_FILE_ENV in line
    assert not (tmp_path / "run").exists()  # nothing was recorded


@pytest.mark.parametrize(
    "url", ["http://[::1:9091", "http://127.0.0.1:99999", "http://127.0.0.1:0", "http://:9091", "http://exämple.org:9091", "http://h#x"]
)
def test_a_malformed_pushgateway_url_is_a_config_error_before_any_work(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^(config key )?metrics.pushgateway_url "):
        with metrics_session(_config(tmp_path, pushgateway_url=url), "train"):
            pytest.fail("the body ran")


@pytest.mark.parametrize(
    ("username", "password_file", "problem"),
    [
        ("pusher", None, f"{PASSWORD_FILE_ENV} is not set"),
        (None, "password", f"{USERNAME_ENV} is not set"),
        ("push:er", "password", "cannot contain ':'"),
        ("pusher", "missing", "cannot read (No such file or directory)"),
        ("pusher", "empty", "empty"),
        ("pusher", "huge", "larger than 4096 bytes"),
        ("pusher", "/dev/zero", "not a regular file"),
    ],
)
def test_unusable_credentials_are_config_errors(username: str | None, password_file: str | None, problem: str, tmp_path: Path) -> None:
    (tmp_path / "password").write_text("p4ssw0rd\n")
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "huge").write_text("p4ssw0rd" * 1000)
    env = {USERNAME_ENV: username, PASSWORD_FILE_ENV: password_file and str(tmp_path / password_file)}
    with pytest.raises(ConfigError, match=re.escape(problem)) as raised:
        Pushgateway.from_settings("http://127.0.0.1:9091", {k: v for k, v in env.items() if v})
    assert "p4ssw0rd" not in str(raised.value)


HOSTILE_RUN_DIRECTORIES = ["a b", "...", "%2F..%2Fother", "ü?#%&=;", "run_id@base64"]


def test_grouping_values_cannot_change_the_group(
    tmp_path: Path, secured_pushgateway: SecuredPushgateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The default run id, the run directory's name, may hold `%`, `?`, `@` or spaces: each goes to exactly its own group."""
    _use_credentials(monkeypatch, secured_pushgateway.username, secured_pushgateway.password_file)
    for name in HOSTILE_RUN_DIRECTORIES:
        config = load_config(env={}, overrides={"out": str(tmp_path / name), "metrics.pushgateway_url": secured_pushgateway.url,
                                                "metrics.job_name": "hostile-run-ids"})
        with metrics_session(config, "train"):
            pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    pushed = [g for g in secured_pushgateway.groups() if g["job"] == "hostile-run-ids"]
    assert sorted(pushed, key=lambda g: g["run_id"]) == [{"job": "hostile-run-ids", "run_id": r} for r in sorted(HOSTILE_RUN_DIRECTORIES)]


@contextlib.contextmanager
def hostile_server(answer: Callable[[socket.socket], None]) -> Iterator[tuple[str, list[bytes]]]:
    """A real HTTP-ish server on 127.0.0.1: reads each request, then `answer(connection)`; yields its URL and the requests."""
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            with connection:
                requests.append(connection.recv(65536))
                with contextlib.suppress(OSError):  # the client gave up or closed: that is the point
                    answer(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", requests
    finally:
        listener.close()


def _trickle(connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    for _ in range(600):  # one byte every 0.1 s of a header line that never ends
        connection.sendall(b"x")
        time.sleep(0.1)


def _flood(connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n")
    while True:
        connection.sendall(b"\0" * 65536)


def _push(url: str, timeout: float = 1.0, auth: BasicAuth | None = None) -> float:
    """Push an empty outcome to `url`; returns the seconds it took."""
    started = time.monotonic()
    Pushgateway(url, auth).push("cifar-job", {"run_id": "hostile"}, CollectorRegistry(), timeout)
    return time.monotonic() - started


def test_a_push_ends_within_its_timeout_however_the_server_answers() -> None:
    with hostile_server(_trickle) as (url, _):
        started = time.monotonic()
        with pytest.raises(PushFailed, match=r"^no complete answer within 1s$"):
            _push(url)
        assert time.monotonic() - started < 2
    with hostile_server(_flood) as (url, _):
        assert _push(url) < 2  # a 200 with an endless body: the body is never read


def test_a_redirect_is_not_followed_and_a_garbled_answer_is_one_printable_line() -> None:
    with hostile_server(lambda c: None) as (elsewhere, stolen):
        location = f"Location: {elsewhere}/steal\r\n".encode()
        with hostile_server(lambda c: c.sendall(b"HTTP/1.1 307 Temporary Redirect\r\n" + location + b"\r\n")) as (url, _):
            with pytest.raises(PushFailed, match=r"^HTTP 307 Temporary Redirect$"):
                _push(url, auth=BasicAuth("pusher", "p4ssw0rd"))
        assert stolen == []
    with hostile_server(lambda c: c.sendall(b"HTTP/1.1 200 \x1b[2J OK\r\n" + b"Bad Header\r\n" * 200 + b"\r\n")) as (url, _):
        with pytest.raises(PushFailed) as raised:
            _push(url)
    assert str(raised.value).isprintable() and len(str(raised.value)) <= 200


def test_a_stalled_metrics_client_is_dropped(tmp_path: Path) -> None:
    """A client that connects and sends nothing does not hold a server thread for the rest of the run."""
    port = free_port()
    with metrics_session(_config(tmp_path, port=port), "train"):
        with socket.create_connection(("127.0.0.1", port)) as idle:
            idle.settimeout(CLIENT_TIMEOUT_SECONDS + 10)
            started = time.monotonic()
            assert idle.recv(1) == b""  # closed by the server
        assert CLIENT_TIMEOUT_SECONDS - 1 < time.monotonic() - started < CLIENT_TIMEOUT_SECONDS + 5


# --- how a session ends: outcome, push, linger -----------------------------------------------


def _config(tmp_path: Path, **metrics: Any) -> Config:
    return load_config(env={}, overrides={"out": str(tmp_path / "run"), **{f"metrics.{k}": v for k, v in metrics.items()}})


@pytest.mark.parametrize(
    ("error", "reason", "code"),
    [
        (RuntimeError("boom"), "unexpected", 1),
        (KeyboardInterrupt(), "interrupted", 1),
        (Preempted("SIGTERM after epoch 3"), "preempted", 75),
        (GateFailed("accuracy 0.1 < 0.75"), "gate_failed", 6),
    ],
)
def test_a_failing_body_pushes_its_reason_and_is_reraised(
    error: BaseException, reason: str, code: int, tmp_path: Path, pushgateway: str, prometheus: str, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = f"session-{reason}"
    config = _config(tmp_path, pushgateway_url=pushgateway, run_id=run_id, port=free_port(), linger_seconds=0.2)
    caplog.set_level(logging.INFO, logger="job")
    with pytest.raises(type(error)) as raised:
        with metrics_session(config, "validate") as metrics, metrics.stage("validate"):
            raise error
    assert raised.value is error
    group = f'job="cifar-job",run_id="{run_id}"'
    assert value(prometheus, f"cifar_job_exit_code{{{group}}}") == code
    assert value(prometheus, f'cifar_job_exit_reason{{{group},command="validate",reason="{reason}"}}') == 1
    assert query(prometheus, f"cifar_job_last_success_timestamp_seconds{{{group}}}") == {}
    gate = query(prometheus, f"cifar_job_gate_passed{{{group}}}")
    assert list(gate.values()) == ([0] if reason == "gate_failed" else [])
    lingered = any("keeping /metrics up" in r.getMessage() for r in caplog.records)
    assert lingered == (reason in ("unexpected", "gate_failed"))  # a stopped pod or a Ctrl-C does not wait


def test_linger_serves_the_final_values_until_scraped(tmp_path: Path) -> None:
    port = free_port()
    config = _config(tmp_path, port=port, linger_seconds=600)
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            with metrics_session(config, "train") as metrics, metrics.stage("train"):
                pass
            outcome.append(None)
        except BaseException as e:  # report it to the test thread
            outcome.append(e)

    session = threading.Thread(target=run)
    session.start()
    scrapes: list[str] = []

    def scrape_until_the_session_ends() -> bool:
        if not session.is_alive():
            return True
        try:
            scrapes.append(http_get(f"http://127.0.0.1:{port}/metrics").decode())
        except OSError:  # not serving yet, or just stopped
            pass
        return False

    # linger_seconds is 600, far beyond the deadline: the session can only end this soon because of a scrape
    eventually(scrape_until_the_session_ends, "the session ends after a scrape of its final values")
    session.join()
    assert outcome == [None]
    assert 'cifar_job_stage_active{stage="train"} 0.0' in scrapes[-1]  # the last scrape saw the run's end
    assert "cifar_job_stage_end_timestamp_seconds{stage=\"train\"}" in scrapes[-1]
    with pytest.raises(OSError):
        http_get(f"http://127.0.0.1:{port}/metrics")


def test_a_metrics_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = _config(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(ConfigError, match=r"metrics.address/metrics.port 127.0.0.1:\d+: cannot serve /metrics") as raised:
            with metrics_session(config, "train"):
                pass
    assert raised.value.exit_code == 2


# --- exposition format, alert rules, reference ------------------------------------------------


def _validation_result(gate_passes: bool = True) -> ValidationResult:
    """A real ValidationResult: scores from a confusion matrix, verdict from the real gate."""
    labels = np.repeat(np.arange(10), 20)
    predictions = np.where(np.arange(200) % 4 == 0, (labels + 1) % 10, labels)  # 75 % right
    cm = confusion_matrix(labels, predictions, 10)
    scores = classification_scores(cm, tuple(CLASS_NAMES))
    gate = GateConfig(min_accuracy=0.7 if gate_passes else 0.8, min_weighted_f1=0.7)
    return ValidationResult(
        model_sha256="0" * 64, class_names=tuple(CLASS_NAMES), **scores, confusion_matrix=cm.tolist(), device="cpu",
        providers=("CPUExecutionProvider",), batch_size=64, batch_latencies_s=(0.01, 0.012, 0.011, 0.004), duration_s=0.04,
        test_set={}, gate=check_gate(scores, gate),
    )  # fmt: skip


def _populated(tmp_path: Path) -> RunMetrics:
    """Every metric with a value, the training ones set by the real Keras callback."""
    metrics = RunMetrics(_config(tmp_path), "run")
    callback = metrics.keras_callback()
    callback.set_params({"epochs": 3, "steps": 4, "verbose": 0})
    with metrics.stage("train"):
        callback.on_train_begin()
        callback.on_epoch_begin(0)
        for step in range(4):
            callback.on_train_batch_end(step, {"loss": 2.0, "accuracy": 0.1})
        logs = {"loss": 2.1, "accuracy": 0.2, "val_loss": 2.0, "val_accuracy": 0.25}
        callback.on_epoch_end(0, {**logs, "learning_rate": 0.0099, "best_val_loss": 2.0, "best_epoch": 1, "patience_wait": 0})
    with metrics.stage("export"):
        export = ExportResult(
            onnx_sha256="0" * 64, size_bytes=8_774_321, weights_sha256="1" * 64, opset=17, ir_version=8,
            parity_images=1000, parity_max_abs_diff=4e-8, duration_s=12.5, settings={},
        )  # fmt: skip
        metrics.record(export)
    with metrics.stage("validate"):
        metrics.record(_validation_result())
    metrics.record_trials({"completed": 3, "failed": 1})
    metrics.record_selection(2, "val_accuracy", 0.61)
    metrics.tracking_began()
    metrics.tracking_failed()
    metrics.record_outcome(None)
    return metrics


def test_exposition_passes_promtool_check_metrics(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    metrics = _populated(tmp_path)
    for registry in (metrics.scraped.registry, metrics.outcome.registry):
        text = generate_latest(registry)
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
        assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), (check.stdout, check.stderr)
    exposed = generate_latest(metrics.scraped.registry).decode() + generate_latest(metrics.outcome.registry).decode()
    for doc in reference():  # every documented metric is really exposed with a value
        assert f"\n{doc.name}" in exposed or exposed.startswith(doc.name), doc.name
    assert "cifar_job_train_images_total 128.0" in exposed  # 4 steps of 32


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    check = subprocess.run(["promtool", "check", "rules", str(ALERT_RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(["promtool", "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_reference_documents_every_metric_once_with_prometheus_names() -> None:
    docs = reference()
    names = [d.name for d in docs]
    assert len(names) == len(set(names))
    for d in docs:
        assert d.name.startswith("cifar_job_") and d.help
        assert d.type != "counter" or d.name.endswith("_total")
        assert not d.name.endswith("_total") or d.type == "counter"



# --- how results reach the metrics, and the modules' one-way imports ---------------------------


def test_results_are_read_through_their_protocols_not_their_types(tmp_path: Path) -> None:
    """Export and validation results set their metrics whatever the stage's name; other results set none."""
    from prometheus_client import generate_latest

    from export.publish import PublishResult

    metrics = RunMetrics(_config(tmp_path), "publish")
    metrics.record(PublishResult(name="m", version=1, directory="d", sha256="0" * 64, validated_sha256="0" * 64,
                                 size_bytes=10, newly_published=True, duration_s=1.0))  # fmt: skip
    metrics.record(object())
    assert generate_latest(metrics.scraped.registry) == b""  # nothing shown: neither an export nor a validation

    @dataclass(frozen=True)
    class Export:  # anything with an export's facts is recorded as one
        duration_s: float = 3.0
        size_bytes: int = 42
        parity_max_abs_diff: float = 1e-7

    metrics.record(Export())
    metrics.record(_validation_result(gate_passes=False))
    exposed = generate_latest(metrics.scraped.registry).decode()
    assert "cifar_job_export_model_size_bytes 42.0" in exposed and "cifar_job_validation_accuracy_ratio 0.75" in exposed
    metrics.record_outcome(None)
    assert "cifar_job_gate_passed 0.0" in generate_latest(metrics.outcome.registry).decode()
