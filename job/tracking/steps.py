"""Every MLflow step of a command on one worker thread, each awaited a bounded time; the first failure turns tracking off.

A tracking server that is down, slow (accepts and never answers) or refusing (HTTP 500, 403) costs at most one
step's deadline, never the run: MLflow's HTTP requests wait at most `tracking.timeout_seconds` and are not
retried (MLFLOW_HTTP_REQUEST_TIMEOUT, MLFLOW_HTTP_REQUEST_MAX_RETRIES; MLflow's own 120 s and 7 retries with
backoff take minutes), and the command waits for a step (a few requests, or a model's upload) at most
STEP_FACTOR times that, whatever hangs (DNS, a store on a dead mount). The first step that fails or times out
prints one warning line, not a traceback, tells the recorder (the Prometheus series cifar_job_tracking_failed),
and no step runs after it; one left hanging on the daemon thread cannot hold the process.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from job.core.errors import one_line
from job.core.redact import redact_url

log = logging.getLogger(__name__)

T = TypeVar("T")
STEP_FACTOR = 3
MAX_REASON = 300
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


class TrackingRecorder(Protocol):
    """What the metrics hear of tracking (job.metrics.series.RunMetrics answers it)."""

    def tracking_began(self) -> None: ...
    def tracking_failed(self) -> None: ...


class Steps:
    """MLflow steps run one at a time on a daemon thread, each awaited at most `timeout * STEP_FACTOR` seconds."""

    def __init__(self, uri: str, timeout: int, recorder: TrackingRecorder) -> None:
        self.shown = redact_url(uri)
        self.deadline = float(timeout * STEP_FACTOR)
        self.on = True
        self._recorder = recorder
        # Read by MLflow at each request; set for this process (and the trials it starts), whatever was set before.
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout)
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], list[Any], threading.Event]] = queue.SimpleQueue()
        threading.Thread(target=self._work, name="mlflow-tracking", daemon=True).start()

    def run(self, step: Callable[[], T], what: str, deadline: float | None = None) -> T | None:
        """`step()` on the worker thread; None, and tracking off, when it fails or outlasts the deadline (default: the step's)."""
        if not self.on:
            return None
        outcome: list[Any] = []
        done = threading.Event()
        self._jobs.put((step, outcome, done))
        wait = self.deadline if deadline is None else deadline
        if not done.wait(wait):
            self.fail(what, f"no answer within {wait:g}s")
            return None
        value, error = outcome
        if error is not None:
            self.fail(what, _reason(error))
            return None
        return value

    def fail(self, what: str, reason: str) -> None:
        """One warning line; tracking stays off for the rest of the command."""
        self.on = False
        log.warning("MLflow tracking at %s failed (%s: %s); tracking is off for the rest of this command, the run goes on", self.shown, what, reason)
        self._recorder.tracking_failed()

    def _work(self) -> None:
        while True:
            step, outcome, done = self._jobs.get()
            try:
                outcome[:] = [step(), None]
            except BaseException as e:  # whatever MLflow or a file raises is the step's failure, reported by `run`
                outcome[:] = [None, e]
            done.set()


def _reason(error: BaseException) -> str:
    """The innermost cause (a refused connection, a read timeout), then the error, as one printable line, URLs redacted."""
    causes = [error]
    while (cause := causes[-1].__cause__ or causes[-1].__context__) is not None and cause not in causes and len(causes) < 10:
        causes.append(cause)
    text = "; ".join(dict.fromkeys(f"{type(e).__name__}: {str(e)[:MAX_REASON]}" for e in (causes[-1], causes[0])))
    return one_line(redact_urls(text), MAX_REASON)


def redact_urls(text: str) -> str:
    """`text` with every URL in it redacted (job.core.redact), the words around them kept."""
    return _URL.sub(lambda url: redact_url(url[0]), text)
