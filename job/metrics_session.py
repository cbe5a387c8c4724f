"""One command's metrics from start to end: serve /metrics, and however the command ends, record its outcome, push it, linger.

Dependency rule: this module ties job.metrics (declarations and recording), job.metrics_server
(HTTP) and job.pushgateway (the push) together; none of them imports it or each other. Only the
CLI opens a session.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from job.config import Config
from job.errors import Preempted
from job.metrics import RunMetrics
from job.metrics_server import MetricsServer
from job.pushgateway import PushFailed, Pushgateway

log = logging.getLogger(__name__)

PUSH_TIMEOUT_SECONDS = 10.0  # the whole push, however slowly the Pushgateway answers


@contextlib.contextmanager
def metrics_session(config: Config, command: str) -> Iterator[RunMetrics]:
    """Serve /metrics for the body; on the way out, however it ends, record and push the outcome and linger.

    The Pushgateway URL and credentials are checked before anything runs. The body's exception
    is re-raised unchanged: the metrics never change a run's result.
    """
    settings = config.metrics
    gateway = Pushgateway.from_settings(settings.pushgateway_url, os.environ) if settings.pushgateway_url else None
    metrics = RunMetrics(config, command)
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
    try:
        gateway.push(job, {"run_id": run_id}, metrics.outcome.registry, PUSH_TIMEOUT_SECONDS)
    except PushFailed as e:
        log.warning("could not push the outcome to the Pushgateway %s: %s (the run's result is unaffected)", gateway.shown, e)
    else:
        log.info("pushed outcome %r to %s (job=%r, run_id=%r)", reason, gateway.shown, job, run_id)
