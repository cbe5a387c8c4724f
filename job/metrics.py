"""Prometheus metrics of a run: served on /metrics while it runs, its outcome pushed when it ends.

Two registries, as the Pushgateway guidance for batch jobs asks: `scraped` holds the state of
the running process (stage, training progress, export and validation results) and is served
over HTTP for Prometheus to scrape; `outcome` holds only how the run ended and is pushed to a
Pushgateway, grouped by job name and run id, so the result outlives the pod. Neither is the
global default registry. Every metric is declared once here; `reference_markdown()` turns the
declarations into the README's metrics reference (`python -m job.docs README.md`), so the two
cannot drift.

TensorFlow is never imported here: the Keras callback lives in `job.metrics_callback`; the push
itself (URL checks, basic auth, bounded time) lives in `job.pushgateway`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric

from job.config import Config
from job.errors import EXPECTED_FAILURES, ConfigError, GateFailed, Preempted
from job.pushgateway import Pushgateway, PushFailed

if TYPE_CHECKING:
    import keras

    from export.convert import ExportResult
    from export.validate import ValidationResult

log = logging.getLogger(__name__)

PREFIX = "cifar_job_"
PUSH_TIMEOUT_SECONDS = 10.0  # the whole push, however slowly the Pushgateway answers
CLIENT_TIMEOUT_SECONDS = 10.0  # each read from or write to a /metrics client
EPOCH_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


# When each group of metrics appears: none reads 0 before it means something.
GROUPS = {
    "stages": "/metrics, from the first stage on",
    "train": "/metrics, once training starts",
    "export": "/metrics, after the export",
    "validation": "/metrics, after validation",
    "outcome": "Pushgateway, every run",
    "success": "Pushgateway, runs that succeeded",
    "gate": "Pushgateway, runs that reached the quality gate",
}


@dataclass(frozen=True)
class MetricDoc:
    """One row of the metrics reference: the name as exposed, its type, labels, meaning and when it appears."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str
    exposed: str


class _Registry:
    """A dedicated CollectorRegistry whose metrics appear group by group, once their group is shown."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self.docs: list[MetricDoc] = []
        self._groups: dict[str, list[Any]] = {}
        self._shown: list[str] = []

    def add(self, group: str, kind: type, name: str, help: str, labels: Iterable[str] = (), **kwargs: Any) -> Any:
        metric = kind(PREFIX + name, help, tuple(labels), registry=None, **kwargs)
        self._groups.setdefault(group, []).append(metric)
        exposed = PREFIX + name + ("_total" if kind is Counter else "")
        self.docs.append(MetricDoc(exposed, kind.__name__.lower(), tuple(labels), help, GROUPS[group]))
        return metric

    def show(self, group: str) -> None:
        if group not in self._shown:
            self._shown.append(group)

    def collect(self) -> Iterator[Metric]:
        for group in tuple(self._shown):
            for metric in self._groups[group]:
                yield from metric.collect()


class RunMetrics:
    """All metrics of one `cifar-job` command; build it with `RunMetrics.session(config, command)`."""

    def __init__(self, config: Config, command: str) -> None:
        self.config = config
        self.command = command
        self.run_id = config.metrics.run_id or config.out.resolve().name or "run"
        self._started = time.time()
        self._gate_passed: bool | None = None
        self._server: _MetricsServer | None = None
        url = config.metrics.pushgateway_url  # checked, with its credentials, before any work
        self._pushgateway = Pushgateway.from_settings(url, os.environ) if url else None

        s = self.scraped = _Registry()
        self.stage_active = s.add("stages", Gauge, "stage_active", "1 while the stage runs, 0 once it has ended.", ["stage"])
        self.stage_start = s.add("stages", Gauge, "stage_start_timestamp_seconds", "Unix time the stage started.", ["stage"])
        self.stage_end = s.add("stages", Gauge, "stage_end_timestamp_seconds", "Unix time the stage ended, successfully or not.", ["stage"])
        self.progress = s.add(
            "stages", Gauge, "last_progress_timestamp_seconds", "Unix time of the last progress: a stage started or ended, a training step."
        )

        self.train_epoch = s.add("train", Gauge, "train_epoch", "Epochs completed, counting epochs done before a resume.")
        self.train_epochs = s.add("train", Gauge, "train_epochs", "Maximum number of epochs (train.epochs).")
        self.train_step = s.add("train", Gauge, "train_step", "Training steps (batches) completed in the current epoch.")
        self.train_steps_per_epoch = s.add("train", Gauge, "train_steps_per_epoch", "Training steps (batches) per epoch.")
        self.train_steps = s.add("train", Counter, "train_steps", "Training steps (batches) completed by this process.")
        self.train_images = s.add(
            "train", Counter, "train_images", "Training images processed by this process: steps times batch size."
        )
        self.train_images_per_second = s.add(
            "train", Gauge, "train_images_per_second", "Training throughput of the last epoch, validation pass excluded."
        )
        self.train_epoch_duration = s.add(
            "train", Histogram, "train_epoch_duration_seconds", "Wall time of an epoch, validation pass included.", buckets=EPOCH_BUCKETS
        )
        self.train_loss = s.add("train", Gauge, "train_loss", "Categorical cross-entropy of the last epoch.", ["split"])
        self.train_accuracy = s.add("train", Gauge, "train_accuracy_ratio", "Accuracy of the last epoch.", ["split"])
        self.train_learning_rate = s.add("train", Gauge, "train_learning_rate", "SGD learning rate at the end of the last epoch.")
        self.train_best_val_loss = s.add("train", Gauge, "train_best_validation_loss", "Lowest validation loss so far.")
        self.train_best_epoch = s.add("train", Gauge, "train_best_epoch", "Epoch (1-based) of the lowest validation loss so far.")
        self.train_patience_wait = s.add(
            "train", Gauge, "train_early_stopping_wait_epochs", "Epochs since the validation loss last improved; training stops at the patience."
        )
        self.train_patience = s.add("train", Gauge, "train_early_stopping_patience_epochs", "Early-stopping patience (train.patience).")

        self.export_duration = s.add("export", Gauge, "export_duration_seconds", "Wall time of the ONNX export, parity check included.")
        self.export_model_size = s.add("export", Gauge, "export_model_size_bytes", "Size of the exported ONNX file.")
        self.export_parity = s.add(
            "export", Gauge, "export_parity_max_abs_difference", "Largest absolute difference of probabilities, Keras against onnxruntime."
        )

        self.val_accuracy = s.add("validation", Gauge, "validation_accuracy_ratio", "Test-set accuracy of the ONNX model.")
        self.val_f1 = s.add("validation", Gauge, "validation_f1_score", "Test-set F1 averaged over classes.", ["average"])
        self.val_class_precision = s.add(
            "validation", Gauge, "validation_class_precision_ratio", "Test-set precision of one class.", ["class_name"]
        )
        self.val_class_recall = s.add("validation", Gauge, "validation_class_recall_ratio", "Test-set recall of one class.", ["class_name"])
        self.val_class_f1 = s.add("validation", Gauge, "validation_class_f1_score", "Test-set F1 of one class.", ["class_name"])
        self.val_latency = s.add(
            "validation", Histogram, "validation_batch_latency_seconds", "onnxruntime inference time of one test batch.", buckets=LATENCY_BUCKETS
        )
        self.val_images_per_second = s.add(
            "validation", Gauge, "validation_images_per_second", "onnxruntime inference throughput on the test set."
        )
        self.val_provider = s.add(
            "validation", Gauge, "validation_execution_provider_info", "1 for the onnxruntime execution provider that ran the test set.", ["provider"]
        )

        o = self.outcome = _Registry()
        self.exit_code = o.add("outcome", Gauge, "exit_code", "Exit status of the command: 0 on success, else the failure kind's code.")
        self.exit_reason = o.add(
            "outcome",
            Gauge,
            "exit_reason",
            "1 for how the command ended: success, interrupted, unexpected or a failure kind of job/errors.py (data, gate_failed, preempted, ...).",
            ["command", "reason"],
        )
        self.run_duration = o.add("outcome", Gauge, "run_duration_seconds", "Wall time of the command.")
        self.last_success = o.add("success", Gauge, "last_success_timestamp_seconds", "Unix time the run succeeded.")
        self.gate_passed = o.add("gate", Gauge, "gate_passed", "1 if the model passed the quality gate, 0 if it failed.")

    @classmethod
    @contextlib.contextmanager
    def session(cls, config: Config, command: str) -> Iterator[RunMetrics]:
        """Serve /metrics for the body; on the way out, however it ends, record and push the outcome and linger.

        The body's exception is re-raised unchanged; the metrics never change a run's result.
        """
        metrics = cls(config, command)
        metrics._serve()
        try:
            yield metrics
        except BaseException as e:
            metrics._finish(e)
            raise
        else:
            metrics._finish(None)
        finally:
            if metrics._server:
                metrics._server.close()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Mark `name` as the running stage for the body, with its start and end times."""
        self.scraped.show("stages")
        self.stage_active.labels(name).set(1)
        self.stage_start.labels(name).set_to_current_time()
        self.progress.set_to_current_time()
        try:
            yield
        finally:
            self.stage_active.labels(name).set(0)
            self.stage_end.labels(name).set_to_current_time()
            self.progress.set_to_current_time()

    def keras_callback(self) -> keras.callbacks.Callback:
        """A Keras callback that feeds the training metrics; for `train_model(..., callbacks=[...])`."""
        from job.metrics_callback import TrainingMetrics

        return TrainingMetrics(self)

    def record(self, stage: str, result: Any) -> None:
        """What a finished stage returned; the export and validate results carry metrics."""
        recorders: dict[str, Callable[[Any], None]] = {"export": self.record_export, "validate": self.record_validation}
        if stage in recorders:
            recorders[stage](result)

    def record_export(self, result: ExportResult) -> None:
        """Duration, file size and Keras/onnxruntime parity of an ONNX export."""
        self.export_duration.set(result.duration_s)
        self.export_model_size.set(result.size_bytes)
        self.export_parity.set(result.parity_max_abs_diff)
        self.scraped.show("export")

    def record_validation(self, result: ValidationResult) -> None:
        """The test-set scores, latencies and execution provider of a validation, and its gate verdict."""
        self.val_accuracy.set(result.accuracy)
        self.val_f1.labels("macro").set(result.macro_f1)
        self.val_f1.labels("weighted").set(result.weighted_f1)
        for name, scores in result.per_class.items():
            self.val_class_precision.labels(name).set(scores["precision"])
            self.val_class_recall.labels(name).set(scores["recall"])
            self.val_class_f1.labels(name).set(scores["f1"])
        for seconds in result.batch_latencies_s:
            self.val_latency.observe(seconds)
        self.val_images_per_second.set(result.images_per_second)
        self.val_provider.labels(result.providers[0]).set(1)
        self._gate_passed = result.gate.passed
        self.scraped.show("validation")

    # -- the run's end ---------------------------------------------------------------------

    def _finish(self, error: BaseException | None) -> None:
        reason, code = _outcome(error)
        self.exit_code.set(code)
        self.exit_reason.labels(self.command, reason).set(1)
        self.run_duration.set(time.time() - self._started)
        self.outcome.show("outcome")
        if error is None:
            self.last_success.set_to_current_time()
            self.outcome.show("success")
        if isinstance(error, GateFailed):
            self._gate_passed = False
        if self._gate_passed is not None:
            self.gate_passed.set(int(self._gate_passed))
            self.outcome.show("gate")
        self._push(reason)
        if not isinstance(error, KeyboardInterrupt | Preempted):  # a pod being stopped has no time to linger
            self._linger()

    def _push(self, reason: str) -> None:
        gateway, job = self._pushgateway, self.config.metrics.job_name
        if gateway is None:
            return
        try:
            gateway.push(job, {"run_id": self.run_id}, self.outcome.registry, PUSH_TIMEOUT_SECONDS)
        except PushFailed as e:
            log.warning("could not push the outcome to the Pushgateway %s: %s (the run's result is unaffected)", gateway.shown, e)
        else:
            log.info("pushed outcome %r to %s (job=%r, run_id=%r)", reason, gateway.shown, job, self.run_id)

    def _serve(self) -> None:
        settings = self.config.metrics
        if settings.port:
            self._server = _MetricsServer(self.scraped.registry, settings.address, settings.port)
            log.info("serving metrics on http://%s:%d/metrics", settings.address, settings.port)

    def _linger(self) -> None:
        seconds = self.config.metrics.linger_seconds
        if not self._server or seconds <= 0:
            return
        try:
            log.info("keeping /metrics up until the final values are scraped, at most %gs", seconds)
            if not self._server.wait_for_final_scrape(seconds):
                log.info("no scrape of the final values within %gs", seconds)
        except (KeyboardInterrupt, Preempted):  # the work is done and pushed; Ctrl-C or SIGTERM only cut the wait short
            log.info("stopped waiting for the final scrape")


class _MetricsServer:
    """/metrics on a daemon thread; can wait until a response sent after the run's end has been written."""

    def __init__(self, registry: CollectorRegistry, address: str, port: int) -> None:
        self._ended = threading.Event()
        self._final_served = threading.Event()
        exposition = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            final = self._ended.is_set()
            body = exposition(environ, start_response)
            return _then(body, self._final_served.set) if final else body

        try:
            family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
            server_class = type("_Server", (ThreadingWSGIServer,), {"address_family": family})
            self._httpd = make_server(address, port, app, server_class, handler_class=_QuietHandler)
        except OSError as e:
            raise ConfigError(f"metrics.address/metrics.port {address}:{port}: cannot serve /metrics ({e.strerror or e})") from None
        threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True).start()

    def wait_for_final_scrape(self, timeout: float) -> bool:
        self._ended.set()
        return self._final_served.wait(timeout)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _then(body: Iterable[bytes], done: Callable[[], None]) -> Iterator[bytes]:
    """`body`, then `done()` once the server has written all of it (WSGI asks for the next chunk)."""
    yield from body
    done()


class _QuietHandler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT_SECONDS  # a client that connects and stalls holds a server thread this long at most

    def log_message(self, format: str, *args: Any) -> None:  # no access log in the job's output
        pass


def _outcome(error: BaseException | None) -> tuple[str, int]:
    """The exit reason and the exit status the CLI will end with."""
    if error is None:
        return "success", 0
    if isinstance(error, EXPECTED_FAILURES):
        return error.reason, error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", 1  # click turns Ctrl-C into "Aborted!" and status 1
    return "unexpected", 1


# -- the README's metrics reference ----------------------------------------------------------


def reference() -> list[MetricDoc]:
    """Every metric a run can serve or push, straight from the declarations in `RunMetrics`."""
    metrics = RunMetrics(Config(), "run")
    return metrics.scraped.docs + metrics.outcome.docs


def reference_markdown() -> str:
    """The metrics reference as a Markdown table: the README's metrics-reference block (job/docs.py)."""
    lines = ["| name | type | labels | exposed | meaning |", "| --- | --- | --- | --- | --- |"]
    for d in reference():
        labels = ", ".join(f"`{label}`" for label in d.labels) or "-"
        lines.append(f"| `{d.name}` | {d.type} | {labels} | {d.exposed} | {d.help} |")
    return "\n".join(lines) + "\n"
