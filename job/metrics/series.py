"""Prometheus metrics of a run: every metric declared once, and how what the run does sets them.

Two registries, as the Pushgateway guidance for batch jobs asks: `scraped` holds the state of
the running process (stage, training progress, export and validation results) for Prometheus
to scrape; `outcome` holds only how the run ended, for the Pushgateway, so the result outlives
the pod. Neither is the global default registry. An experiment's trial adds its `experiment` and
`trial` labels to every scraped series (`labels`: one label set for the whole registry, as
prometheus_client has no constant labels), so the declarations stay those of a plain run, which
carries no extra label; its pushed outcome is told apart by the Pushgateway's grouping key instead. `reference_markdown()` turns the declarations
into the README's metrics reference (`python -m tests.generate`), so the two cannot drift.

Dependency rule: this module imports only job's config and errors and prometheus_client. Stage
results come in through the small protocols below (`ExportFacts`, `ValidationFacts`), never by
their types, so nothing here imports export/. Serving /metrics and lingering live in
job.metrics.server, the push in job.metrics.pushgateway, and job.metrics.session ties them to one
command; the Keras callback (job.metrics.keras_callback, imported only when training runs) knows
nothing of this module but the `TrainingRecorder` calls that `RunMetrics` answers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from job.config.settings import Config
from job.core.errors import EXPECTED_FAILURES, GateFailed

if TYPE_CHECKING:
    import keras

PREFIX = "cifar_job_"
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
    "experiment": "/metrics of a local experiment, and Pushgateway, experiments",
    "selection": "Pushgateway, experiments that selected a trial",
    "tracking": "/metrics and Pushgateway, commands with MLflow tracking on",
}
TRIAL_STATES = ("completed", "failed", "running", "pending")


class GateVerdict(Protocol):
    @property
    def passed(self) -> bool: ...


@runtime_checkable
class ExportFacts(Protocol):
    """What the metrics read from an export's result (export.convert.ExportResult)."""

    @property
    def duration_s(self) -> float: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def parity_max_abs_diff(self) -> float: ...


@runtime_checkable
class ValidationFacts(Protocol):
    """What the metrics read from a validation's result (export.validate.ValidationResult)."""

    @property
    def accuracy(self) -> float: ...
    @property
    def macro_f1(self) -> float: ...
    @property
    def weighted_f1(self) -> float: ...
    @property
    def per_class(self) -> Mapping[str, Mapping[str, float]]: ...
    @property
    def batch_latencies_s(self) -> Sequence[float]: ...
    @property
    def images_per_second(self) -> float: ...
    @property
    def providers(self) -> Sequence[str]: ...
    @property
    def gate(self) -> GateVerdict: ...


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

    def __init__(self, labels: Mapping[str, str] | None = None) -> None:
        self.labels = dict(labels or {})
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

    def share(self, group: str, other: _Registry) -> None:
        """Expose `other`'s group here too (the same metric objects, documented once)."""
        self._groups[group] = other._groups[group]

    def show(self, group: str) -> None:
        if group not in self._shown:
            self._shown.append(group)

    def collect(self) -> Iterator[Metric]:
        for group in tuple(self._shown):
            for metric in self._groups[group]:
                yield from (_labelled(family, self.labels) for family in metric.collect())


def _labelled(family: Metric, labels: Mapping[str, str]) -> Metric:
    """`family` with `labels` added to every sample; unchanged without labels."""
    if labels:
        family.samples = [sample._replace(labels={**labels, **sample.labels}) for sample in family.samples]
    return family


class RunMetrics:
    """All metrics of one `cifar-job` command and the recording of them; job.metrics.session opens one per command."""

    def __init__(self, config: Config, command: str, labels: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.command = command
        self._started = time.time()
        self._gate_passed: bool | None = None
        self._epoch_started = self._last_step = time.monotonic()
        self._epoch_images = 0

        s = self.scraped = _Registry(labels)
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
        self.train_best_epoch = s.add("train", Gauge, "train_best_epoch", "Epoch (1-based) whose weights are kept: the lowest validation loss so far, or the latest under train.keep=last.")
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
            "1 for how the command ended: success, interrupted, unexpected or a failure kind of job/core/errors.py (data, gate_failed, preempted, ...).",
            ["command", "reason"],
        )
        self.run_duration = o.add("outcome", Gauge, "run_duration_seconds", "Wall time of the command.")
        self.last_success = o.add("success", Gauge, "last_success_timestamp_seconds", "Unix time the run succeeded.")
        self.gate_passed = o.add("gate", Gauge, "gate_passed", "1 if the model passed the quality gate, 0 if it failed.")

        self.experiment_trials = s.add(
            "experiment", Gauge, "experiment_trials", "Trials of the experiment by state: completed, failed, running or pending (the sum is the number of trials).", ["state"]
        )
        o.share("experiment", s)
        self.tracking_failure = s.add(
            "tracking", Gauge, "tracking_failed", "1 once an MLflow tracking step failed (server down, slow or refusing) and tracking was turned off "
            "for the rest of the command, which went on; 0 while tracking works.",
        )
        o.share("tracking", s)
        self.selected_trial = o.add("selection", Gauge, "experiment_selected_trial", "Index of the trial the experiment selected (on validation results).")
        self.selected_value = o.add(
            "selection", Gauge, "experiment_selected_validation_value", "The selected trial's validation figure the selection ranked by: val_accuracy or val_loss.", ["metric"]
        )

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
        from job.metrics.keras_callback import TrainingMetrics  # imports Keras: only when training runs

        return TrainingMetrics(self)

    # -- training, called by the Keras callback (job.metrics.keras_callback.TrainingRecorder) --------

    def training_began(self, epochs: int, steps_per_epoch: int) -> None:
        self.scraped.show("train")
        self.train_epochs.set(epochs)
        self.train_steps_per_epoch.set(steps_per_epoch)
        self.train_patience.set(self.config.train.patience)
        self.progress.set_to_current_time()

    def epoch_began(self) -> None:
        self._epoch_started = self._last_step = time.monotonic()
        self._epoch_images = 0
        self.train_step.set(0)

    def step_ended(self, steps_done: int) -> None:
        """Per step only a few numbers are set (no tensor is read), so the metrics do not slow training down."""
        batch_size = self.config.train.batch_size
        self.train_step.set(steps_done)
        self.train_steps.inc()
        self.train_images.inc(batch_size)
        self.progress.set_to_current_time()
        self._epoch_images += batch_size
        self._last_step = time.monotonic()

    def epoch_ended(self, epochs_done: int, logs: Mapping[str, float]) -> None:
        """`logs` come from job.training.train, which adds learning_rate, best_val_loss, best_epoch and patience_wait to Keras' losses and accuracies."""
        self.train_epoch.set(epochs_done)
        self.train_epoch_duration.observe(time.monotonic() - self._epoch_started)
        training_seconds = self._last_step - self._epoch_started
        if training_seconds > 0:
            self.train_images_per_second.set(self._epoch_images / training_seconds)
        for split, prefix in (("train", ""), ("validation", "val_")):
            if prefix + "loss" in logs:
                self.train_loss.labels(split).set(logs[prefix + "loss"])
            if prefix + "accuracy" in logs:
                self.train_accuracy.labels(split).set(logs[prefix + "accuracy"])
        for gauge, key in (
            (self.train_learning_rate, "learning_rate"),
            (self.train_best_val_loss, "best_val_loss"),
            (self.train_best_epoch, "best_epoch"),
            (self.train_patience_wait, "patience_wait"),
        ):
            if key in logs:
                gauge.set(logs[key])
        self.progress.set_to_current_time()

    # -- stage results ---------------------------------------------------------------------

    def record(self, result: object) -> None:
        """What a finished stage returned: an export or a validation result sets its metrics, any other sets none."""
        if isinstance(result, ExportFacts):
            self.record_export(result)
        if isinstance(result, ValidationFacts):
            self.record_validation(result)

    def record_export(self, result: ExportFacts) -> None:
        """Duration, file size and Keras/onnxruntime parity of an ONNX export."""
        self.export_duration.set(result.duration_s)
        self.export_model_size.set(result.size_bytes)
        self.export_parity.set(result.parity_max_abs_diff)
        self.scraped.show("export")

    def record_validation(self, result: ValidationFacts) -> None:
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

    # -- experiments ---------------------------------------------------------------------

    def record_trials(self, states: Mapping[str, int]) -> None:
        """How many trials are in each state (TRIAL_STATES; a missing state is 0): served, and pushed with the outcome."""
        for state in TRIAL_STATES:
            self.experiment_trials.labels(state).set(states.get(state, 0))
        self.scraped.show("experiment")
        self.outcome.show("experiment")

    def record_selection(self, trial: int, metric: str, value: float) -> None:
        """The trial the experiment publishes and its validation figure, pushed with the outcome."""
        self.selected_trial.set(trial)
        self.selected_value.labels(metric).set(value)
        self.outcome.show("selection")

    # -- MLflow tracking, called by job.tracking (its TrackingRecorder) ----------------------------

    def tracking_began(self) -> None:
        self.tracking_failure.set(0)
        self.scraped.show("tracking")
        self.outcome.show("tracking")

    def tracking_failed(self) -> None:
        self.tracking_failure.set(1)

    # -- the run's end ---------------------------------------------------------------------

    def record_outcome(self, error: BaseException | None) -> str:
        """How the command ended (None: success) into the `outcome` registry; returns the exit reason."""
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
        return reason


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
    """The metrics reference as a Markdown table: the README's metrics-reference block (tests/generate/docs_blocks.py)."""
    lines = ["| name | type | labels | exposed | meaning |", "| --- | --- | --- | --- | --- |"]
    for d in reference():
        labels = ", ".join(f"`{label}`" for label in d.labels) or "-"
        lines.append(f"| `{d.name}` | {d.type} | {labels} | {d.exposed} | {d.help} |")
    return "\n".join(lines) + "\n"
