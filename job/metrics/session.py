"""One command's metrics from start to end: serve /metrics, and however the command ends, record its outcome, push it, linger.

Dependency rule: this module ties job.metrics.series (declarations and recording), job.metrics.server
(HTTP) and job.metrics.pushgateway (the push) together; none of them imports it or each other. Only the
CLI and job.experiments.runner open sessions.

An experiment's sessions carry labels: a trial's `experiment` and `trial`, the experiment's own
`experiment`. They go on every scraped series and into the Pushgateway grouping key (after
`run_id`), so trials, their experiment and plain runs each keep a group of their own. A trial that
a local experiment runs as a `cifar-job train` process learns its labels from TRIAL_ENV.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping

from job.config.settings import Config
from job.core.errors import ConfigError, Preempted
from job.metrics.series import RunMetrics
from job.metrics.server import MetricsServer
from job.metrics.pushgateway import PushFailed, Pushgateway

log = logging.getLogger(__name__)

PUSH_TIMEOUT_SECONDS = 10.0  # the whole push, however slowly the Pushgateway answers
TRIAL_ENV = "CIFAR_EXPERIMENT_TRIAL"  # "<experiment>/<index>"; not CIFAR_JOB_*, which the config reads


def trial_labels(env: Mapping[str, str]) -> dict[str, str]:
    """The `experiment` and `trial` labels TRIAL_ENV gives a trial's process; none for a plain run."""
    value = env.get(TRIAL_ENV)
    if not value:
        return {}
    match = re.fullmatch(r"([a-z0-9][a-z0-9-]{0,39})/([0-9]{1,4})", value)
    if not match:
        raise ConfigError(f"environment variable {TRIAL_ENV}: expected <experiment>/<trial index>, got {value[:80]!r}")
    return {"experiment": match[1], "trial": str(int(match[2]))}


@contextlib.contextmanager
def metrics_session(config: Config, command: str, labels: Mapping[str, str] | None = None) -> Iterator[RunMetrics]:
    """Serve /metrics for the body; on the way out, however it ends, record and push the outcome and linger.

    The Pushgateway URL and credentials are checked before anything runs. The body's exception
    is re-raised unchanged: the metrics never change a run's result. `labels` default to the
    trial's from TRIAL_ENV (none for a plain run).
    """
    settings = config.metrics
    gateway = Pushgateway.from_settings(settings.pushgateway_url, os.environ) if settings.pushgateway_url else None
    metrics = RunMetrics(config, command, trial_labels(os.environ) if labels is None else labels)
    server = MetricsServer(metrics.scraped.registry, settings.address, settings.port) if settings.port else None
    try:
        yield metrics
    except BaseException as e:
        _finish(metrics, e, gateway, server)
        raise
    else:
        _finish(metrics, None, gateway, server)
    finally:
        if server:
            server.close()


def _finish(metrics: RunMetrics, error: BaseException | None, gateway: Pushgateway | None, server: MetricsServer | None) -> None:
    reason = metrics.record_outcome(error)
    if gateway:
        _push(metrics, gateway, reason)
    if server and not isinstance(error, KeyboardInterrupt | Preempted):  # a pod being stopped has no time to linger
        server.linger(metrics.config.metrics.linger_seconds)


def _push(metrics: RunMetrics, gateway: Pushgateway, reason: str) -> None:
    config = metrics.config
    job, run_id = config.metrics.job_name, config.metrics.run_id or config.out.resolve().name or "run"
    grouping_key = {"run_id": run_id, **metrics.scraped.labels}
    try:
        gateway.push(job, grouping_key, metrics.outcome.registry, PUSH_TIMEOUT_SECONDS)
    except PushFailed as e:
        log.warning("could not push the outcome to the Pushgateway %s: %s (the run's result is unaffected)", gateway.shown, e)
    else:
        log.info("pushed outcome %r to %s (job=%r, %s)", reason, gateway.shown, job, ", ".join(f"{k}={v!r}" for k, v in grouping_key.items()))
