"""One command's MLflow run: opened where the metrics session is, fed by the stage runner, ended however the command ends.

On when `tracking.mlflow_uri` or MLFLOW_TRACKING_URI names a tracking server (or store); a URI with credentials,
a query or a fragment is refused as every recorded URL is, since MLflow reads its credentials from
MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN. MLflow itself is imported only
then; without it, the command stops before any work with one line that says how to install it.

What a run holds: params, the effective config as `Config.to_dict()` records it (redacted), flattened to dotted
keys; per-epoch metrics from history.json with step = epoch (1-based, as history.json and TensorBoard count),
each epoch once however often training resumed; a tag `stage.<name>` (ok or failed) per stage and each stage
result's numbers as metrics `<stage>.<field>` (validate.accuracy, validate.weighted_f1, validate.macro_f1, ...);
the run directory's records and reports (RunPaths names) as artifacts after every stage; and every model
publishing put in the repository, logged with `mlflow.onnx.log_model` from the published file itself (signature
and input example included) and registered as a version of `tracking.registered_model` (a variant: of
`<name>-<variant>`), tagged with its gate verdict, measured figures, repository path and version number.

Which run: a run directory (or experiment directory) records its run in mlflow.json, so a resumed command goes on
with the same run. An experiment has one parent run, the experiment directory's, and a nested run per trial: the
first of its processes to need the parent creates it and records it with an exclusive create, a process that
lost that race deletes the run it made and takes the recorded one; a local trial's process is told its parent
by PARENT_ENV instead. Every MLflow step goes through job.tracking.steps, which bounds its time and turns
tracking off at the first failure, so tracking never fails or holds up the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from job.config.settings import CREDENTIALS_IN_URL, MLFLOW_CREDENTIALS_ENV, Config
from job.core.atomic import atomic_write
from job.core.bounded import read_bounded
from job.core.errors import ConfigError, ModelFileError, Preempted, one_line
from job.core.paths import RunPaths
from job.core.records import MAX_RECORD_BYTES, read_marker, strict_json
from job.core.redact import redact_url
from job.models.contract import scale
from job.stage import StageInputs
from job.tracking.steps import Steps, TrackingRecorder, redact_urls

log = logging.getLogger(__name__)

URI_ENV = "MLFLOW_TRACKING_URI"
RECORD = "mlflow.json"  # in a run or experiment directory: its MLflow run
PARENT_ENV, OFF = "CIFAR_EXPERIMENT_MLFLOW_PARENT", "off"  # a local trial's process: its experiment's run id, or off
INSTALL = "pip install 'cifar-job[mlflow]'"
# What a run directory holds for people to read, uploaded after every stage (when new or changed).
ARTIFACTS = ("config", "history_json", "history_csv", "plots_dir", "train_result", "export_result", "metrics_json", "model_card",
             "confusion_png", "publish_result", "experiment")  # fmt: skip
SIDECAR, MODEL_FILE = "metadata.json", "model.onnx"  # a published version, as every consumer reads it (export/repository.py)
ALIAS = "published"  # the newest version this tracking registered: models:/<name>@published
STOPPED = (Preempted, KeyboardInterrupt)  # the pod is going away: no time for more than ending the run
STOP_DEADLINE = 5.0
T = TypeVar("T")


@dataclass(frozen=True)
class Experiment:
    """An experiment's parent run: recorded in `directory`, named `name`, with the experiment's settings as `params`."""

    directory: Path
    name: str
    params: Mapping[str, Any]


@runtime_checkable
class Published(Protocol):
    """What tracking reads of a publish result (export.publish.PublishResult): the version directory it went to."""

    @property
    def directory(self) -> str: ...


@runtime_checkable
class PublishedVariants(Protocol):
    """What tracking reads of a variants result (export.variants.VariantsResult)."""

    @property
    def variants(self) -> Sequence[Any]: ...  # VariantOutcome: variant, name, published, version, accuracy, ...


def tracking_uri(config: Config, env: Mapping[str, str]) -> str | None:
    """tracking.mlflow_uri, else MLFLOW_TRACKING_URI (refused as the config key is when it carries credentials); None: off."""
    uri = config.tracking.mlflow_uri or env.get(URI_ENV) or None
    if uri is not None and uri != config.tracking.mlflow_uri and (re.match(CREDENTIALS_IN_URL, uri) or not re.fullmatch(r"\S+", uri)):
        username, password, alternative = MLFLOW_CREDENTIALS_ENV
        raise ConfigError(
            f"environment variable {URI_ENV} {redact_url(uri)}: credentials, a query or a fragment in the URI are refused (it is shown "
            f"and recorded with the run); for basic auth set {username} and {password} ({alternative})"
        )
    return uri


@contextlib.contextmanager
def tracking_session(config: Config, recorder: TrackingRecorder, experiment: Experiment | None = None, trial: bool = False) -> Iterator[Tracker]:
    """Track the body in MLflow when a tracking URI is set; the run ends FINISHED, FAILED or KILLED as the body does.

    Whose run: `experiment` alone, the experiment's parent run; with `trial`, config.out's run nested in it;
    neither, config.out's run, nested in PARENT_ENV's run in a local trial's process. The body's exception is
    re-raised unchanged: tracking never changes a run's result.
    """
    uri = tracking_uri(config, os.environ)
    parent = os.environ.get(PARENT_ENV) or None
    if parent is not None and parent != OFF and not re.fullmatch(r"[0-9a-zA-Z_-]{1,64}", parent):
        raise ConfigError(f"environment variable {PARENT_ENV}: expected an MLflow run id or {OFF!r}, got {parent[:80]!r}")
    if uri is None or parent == OFF:
        yield Tracker(config, None)
        return
    _import_mlflow()
    tracker = Tracker(config, Steps(uri, config.tracking.timeout_seconds, recorder))
    recorder.tracking_began()
    tracker.open(uri, experiment, trial, parent)
    try:
        yield tracker
    except BaseException as e:
        tracker.close(e)
        raise
    else:
        tracker.close(None)


def _import_mlflow() -> None:
    """MLflow, quiet unless --log-level debug (this module says what matters in one line), and never phoning home."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout holds the stages' summaries only
    try:
        import mlflow  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"tracking is on (tracking.mlflow_uri or {URI_ENV} is set) but the MLflow client cannot be imported ({e}); install it: {INSTALL}"
        ) from None
    logging.getLogger("mlflow").setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.ERROR)


class Tracker:
    """One MLflow run of a command, or nothing when tracking is off; every method is safe to call either way."""

    def __init__(self, config: Config, steps: Steps | None) -> None:
        self.config = config
        self._steps = steps
        self.run_id: str | None = None
        self._client: Any = None
        self._experiment_id = ""
        self._shown = ""  # the tracking URI as records and logs show it
        self._stage = ""
        self._inputs: StageInputs | None = None
        self._uploaded: dict[Path, tuple[int, int]] = {}
        self._epochs_logged: int | None = None  # the last epoch the run holds; None: not asked yet
        self._pending: tuple[Path, str] | None = None  # a record to write once its run directory exists

    @property
    def on(self) -> bool:
        return self._steps is not None and self._steps.on and self.run_id is not None

    def child_env(self) -> dict[str, str]:
        """For a local trial's process: nest its run in this one, or keep tracking off if it failed here."""
        if self._steps is None:
            return {}
        return {PARENT_ENV: self.run_id if self.on and self.run_id else OFF}

    # -- the run's start and end ---------------------------------------------------------------

    def open(self, uri: str, experiment: Experiment | None, trial: bool, parent: str | None) -> None:
        def start() -> None:
            import mlflow

            mlflow.set_tracking_uri(uri)
            self._shown = redact_url(uri)
            self._client = mlflow.MlflowClient(uri)
            self._experiment_id = self._find_experiment()
            parent_id = parent
            if experiment is not None:
                experiment.directory.mkdir(parents=True, exist_ok=True)
                parent_id = self._find_or_create(experiment.directory, experiment.name, None, _flat(experiment.params))
                if not trial:
                    self.run_id = parent_id
                    return
            name = f"trial-{self.config.out.name}" if parent_id else self.config.out.resolve().name or "run"
            self.run_id = self._find_or_create(self.config.out, name, parent_id, _flat(self.config.to_dict()))

        self._run(start, "starting the run", started=False)
        if self.on:
            log.info("tracking in MLflow at %s: experiment %r, run %s", redact_url(uri), self.config.tracking.experiment, self.run_id)

    def close(self, error: BaseException | None) -> None:
        status = "FINISHED" if error is None else "KILLED" if isinstance(error, STOPPED) else "FAILED"

        def end() -> None:
            self._write_pending()
            self._client.set_terminated(self.run_id, status)

        self._run(end, "ending the run", deadline=STOP_DEADLINE if isinstance(error, STOPPED) else None)

    def _find_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        name = self.config.tracking.experiment
        found = self._client.get_experiment_by_name(name)
        if found is None:
            try:
                return str(self._client.create_experiment(name))
            except MlflowException as e:  # another process of the experiment created it meanwhile
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = self._client.get_experiment_by_name(name)
        if found.lifecycle_stage != "active":
            raise RuntimeError(f"MLflow experiment {name!r} is deleted; restore it or set tracking.experiment")
        return str(found.experiment_id)

    def _find_or_create(self, directory: Path, name: str, parent_id: str | None, params: dict[str, str]) -> str:
        """The run `directory` records for this server and experiment, resumed; else a new one, recorded there."""
        record = directory / RECORD
        wanted = {"tracking_uri": self._shown, "experiment_id": self._experiment_id}
        known = read_marker(record)
        run = self._alive(known.get("run_id")) if {key: known.get(key) for key in wanted} == wanted else None
        if run is not None:
            self._client.update_run(run.info.run_id, status="RUNNING")
        else:
            tags = {"mlflow.source.type": "JOB", "mlflow.source.name": "cifar-job", "cifar_job.directory": str(directory.resolve())}
            run = self._client.create_run(self._experiment_id, run_name=name, tags=tags | ({"mlflow.parentRunId": parent_id} if parent_id else {}))
            text = json.dumps({**wanted, "run_id": run.info.run_id}) + "\n"
            if not directory.is_dir():  # a run directory is made once its inputs verify: recorded then
                self._pending = (record, text)
            elif known:  # for another server or experiment, or a deleted run
                atomic_write(record, text)
            elif not _create_once(record, text):  # another process of the experiment was first: its run is the one
                self._client.delete_run(run.info.run_id)
                run = self._alive(read_marker(record).get("run_id"))
                if run is None:
                    raise RuntimeError(f"{record}: the run recorded by another process is not there")
        self._log_params(run, params)
        return str(run.info.run_id)

    def _alive(self, run_id: Any) -> Any:
        """The run `run_id`, if the server has it and it is not deleted; else None."""
        from mlflow.exceptions import MlflowException

        if not isinstance(run_id, str):
            return None
        try:
            run = self._client.get_run(run_id)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def _log_params(self, run: Any, params: dict[str, str]) -> None:
        """The params the run lacks; MLflow keeps a param's first value, so a setting changed since is left (config.yaml has it)."""
        from mlflow.entities import Param

        existing = run.data.params
        missing = [Param(key, value) for key, value in params.items() if key not in existing]
        for batch in _batches(missing, 100):
            self._client.log_batch(run.info.run_id, params=batch)
        changed = sorted(key for key, value in params.items() if key in existing and existing[key] != value)
        if changed:
            log.info("MLflow run %s keeps the first value of %s (see its config.yaml artifact for the latest)", run.info.run_id, ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else ""))

    def _write_pending(self) -> None:
        if self._pending is not None and self._pending[0].parent.is_dir():
            atomic_write(*self._pending)
            self._pending = None

    # -- stages ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def stage(self, name: str, inputs: StageInputs) -> Iterator[None]:
        """Tag the stage ok or failed when it ends, and upload what it left in the run directory."""
        self._stage, self._inputs = name, inputs
        try:
            yield
        except STOPPED:
            raise
        except BaseException as e:
            self._stage_ended(name, inputs.paths, {f"stage.{name}": "failed", f"stage.{name}.error": one_line(redact_urls(str(e)), 500)})
            raise
        self._stage_ended(name, inputs.paths, {f"stage.{name}": "ok"})

    def _stage_ended(self, name: str, paths: RunPaths, tags: dict[str, str]) -> None:
        def step() -> None:
            self._write_pending()
            self._log(tags=tags)
            self._log_epochs(paths)
            self._upload(paths)

        self._run(step, f"recording stage {name}")

    def record(self, result: object) -> None:
        """A finished stage's result: its numbers as metrics, its flags as tags; published models logged and registered."""
        if not self.on or self._inputs is None:
            return
        stage, inputs = self._stage, self._inputs
        values = dataclasses.asdict(result) if dataclasses.is_dataclass(result) and not isinstance(result, type) else {}
        metrics = {f"{stage}.{key}": value for key, value in values.items() if _number(value)}
        metrics |= {f"{stage}.class.{_key(name)}.{key}": value for name, scores in _mapping(values.get("per_class")).items()
                    for key, value in _mapping(scores).items() if _number(value)}  # fmt: skip
        tags = {f"{stage}.{key}": str(value).lower() for key, value in values.items() if isinstance(value, bool)}
        if isinstance(values.get("gate"), dict) and isinstance(values["gate"].get("passed"), bool):
            tags["gate.passed"] = str(values["gate"]["passed"]).lower()
        registered = self.config.tracking.registered_model or self.config.publish.model_name
        published: list[tuple[Path, str]] = []
        if isinstance(result, Published):
            published.append((Path(result.directory), registered))
        if isinstance(result, PublishedVariants):
            for outcome in result.variants:
                prefix = f"{stage}.{_key(outcome.variant)}"
                metrics |= {f"{prefix}.{key}": getattr(outcome, key) for key in ("accuracy", "weighted_f1", "images_per_second")}
                tags[f"{prefix}.published"] = str(outcome.published).lower()
                if outcome.published:
                    published.append((self.config.publish.root / outcome.name / str(outcome.version), f"{registered}-{outcome.variant}"))
        self._run(lambda: self._log(metrics=metrics, tags=tags), f"recording stage {stage}")
        for directory, name in published:
            self._run(lambda directory=directory, name=name: self._register(directory, name, inputs), f"registering {name}")

    def keras_callback(self, paths: RunPaths) -> Any:
        """A Keras callback that logs each epoch as training ends it; for `StageInputs.training_callbacks`."""
        from job.tracking.keras_callback import EpochLogger  # imports Keras: only when training runs

        return EpochLogger(lambda: self._run(lambda: self._log_epochs(paths), "logging an epoch") if self.on else None)

    def log_outcome(self, tags: Mapping[str, Any], files: Sequence[Path]) -> None:
        """Tags and files of the run as a whole (an experiment's selection and summary)."""
        if self.on:
            self._run(lambda: (self._log(tags={key: str(value) for key, value in tags.items()}), self._upload_files(files)), "recording the outcome")

    # -- steps (on the worker thread) ----------------------------------------------------------

    def _run(self, step: Callable[[], T], what: str, deadline: float | None = None, started: bool = True) -> T | None:
        if self._steps is None or (started and not self.on):
            return None
        return self._steps.run(step, what, deadline)

    def _log(self, metrics: Mapping[str, float] | None = None, tags: Mapping[str, str] | None = None, step: int = 0) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, step) for key, value in (metrics or {}).items()]
        for batch in _batches(entries, 1000):
            self._client.log_batch(self.run_id, metrics=batch)
        if tags:
            self._client.log_batch(self.run_id, tags=[RunTag(key, value) for key, value in tags.items()])

    def _log_epochs(self, paths: RunPaths) -> None:
        """Every epoch of history.json the run does not hold yet, step = epoch; only the run's own directory's."""
        from mlflow.entities import Metric

        if paths.root != self.config.out or not paths.history_json.is_file():
            return
        rows = json.loads(read_bounded(paths.history_json, MAX_RECORD_BYTES, ModelFileError, f"history {paths.history_json}"))
        if self._epochs_logged is None:
            self._epochs_logged = max((m.step for m in self._client.get_metric_history(self.run_id, "loss")), default=0)
        now = int(time.time() * 1000)
        new = [row for row in rows if row["epoch"] > self._epochs_logged]
        entries = [Metric(key, float(value), now, int(row["epoch"])) for row in new for key, value in row.items() if key != "epoch" and _number(value)]
        for batch in _batches(entries, 1000):
            self._client.log_batch(self.run_id, metrics=batch)
        if new:
            self._epochs_logged = int(new[-1]["epoch"])

    def _upload(self, paths: RunPaths) -> None:
        for name in ARTIFACTS:
            path = getattr(paths, name)
            self._upload_files(sorted(path.iterdir()) if path.is_dir() else [path], folder=path.name if path.is_dir() else None)

    def _upload_files(self, files: Sequence[Path], folder: str | None = None) -> None:
        """Each regular file new or changed since this command uploaded it."""
        for file in files:
            if not file.is_file():
                continue
            stamp = (file.stat().st_mtime_ns, file.stat().st_size)
            if self._uploaded.get(file) != stamp:
                self._client.log_artifact(self.run_id, str(file), folder)
                self._uploaded[file] = stamp

    def _register(self, directory: Path, name: str, inputs: StageInputs) -> None:
        """The published version in `directory` as a logged ONNX model and a new version of registered model `name`; once per file."""
        import mlflow
        import onnx
        import onnxruntime
        from mlflow.exceptions import MlflowException
        from mlflow.models import ModelSignature

        sidecar = strict_json(read_bounded(directory / SIDECAR, MAX_RECORD_BYTES, ModelFileError, f"sidecar {directory / SIDECAR}"))
        if self._client.search_model_versions(f"name='{name}' and tag.sha256='{sidecar['sha256']}'"):
            log.info("MLflow: %s is registered already (%s version %s)", directory, name, sidecar["version"])
            return
        model = onnx.load_model_from_string(read_bounded(directory / MODEL_FILE, 1 << 31, ModelFileError, f"model {directory / MODEL_FILE}"))
        signature = ModelSignature.from_dict({key: json.dumps(sidecar["signature"][key]) for key in ("inputs", "outputs")})
        # MLflow runs the input example through the model; on a machine without CUDA, onnxruntime would print its
        # failed CUDA library loads in red before it falls back to the CPU.
        onnxruntime.set_default_logger_severity(4)
        try:
            info = mlflow.onnx.log_model(
                model, name=name, signature=signature, input_example=scale(inputs.data().test_images[:1]), run_id=self.run_id,
                pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"], save_as_external_data=False,
            )  # fmt: skip
        finally:
            onnxruntime.set_default_logger_severity(2)
        try:
            self._client.create_registered_model(name)
        except MlflowException as e:  # its first version was registered before
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = self._client.create_model_version(
            name, info.model_uri, self.run_id, tags=_version_tags(sidecar, directory), description=_description(sidecar, directory),
            await_creation_for=0, model_id=info.model_id,
        ).version  # fmt: skip
        self._client.set_registered_model_alias(name, ALIAS, version)
        self._log(tags={f"registered.{name}": str(version)})
        log.info("MLflow: registered %s as %s version %s (%s@%s)", directory, name, version, name, ALIAS)


def _version_tags(sidecar: Mapping[str, Any], directory: Path) -> dict[str, str]:
    """What a registered version says of itself: the gate's verdict and thresholds, the figures measured, where it is served."""
    gate, measured = sidecar["gate"], sidecar["metrics"]
    tags = {
        "sha256": sidecar["sha256"],
        "validated_sha256": sidecar["validated_sha256"],
        "repository.path": str(directory.resolve()),
        "repository.model": sidecar["name"],
        "repository.version": str(sidecar["version"]),
        "gate.passed": str(gate["passed"]).lower(),
        **{f"gate.{key}": str(value) for key, value in gate["thresholds"].items() if value is not None},
        **{f"test.{key}": str(measured[key]) for key in ("accuracy", "weighted_f1", "macro_f1", "images")},
    }
    if gate.get("baseline_version") is not None:
        tags["gate.baseline_version"] = str(gate["baseline_version"])
    if "variant" in sidecar:
        tags["variant"] = str(sidecar["variant"]["kind"])
        tags["derived_from.version"] = str(sidecar["variant"]["derived_from"]["version"])
    return tags


def _description(sidecar: Mapping[str, Any], directory: Path) -> str:
    measured = sidecar["metrics"]
    return (
        f"{sidecar['name']} version {sidecar['version']} in {directory.resolve().parent.parent}: test accuracy {measured['accuracy']:.4f}, "
        f"weighted F1 {measured['weighted_f1']:.4f}, macro F1 {measured['macro_f1']:.4f} on {measured['images']} images; quality gate passed"
    )


def _create_once(path: Path, text: str) -> bool:
    """`path` holding `text`, made whole by a hard link that fails if it exists; False when another process made it first."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)
    return True


def _flat(settings: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as dotted keys (`train.epochs`), values as text (JSON for all but strings)."""
    flat: dict[str, str] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _key(name: Any) -> str:
    """A class or variant name as part of an MLflow key (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^\w./ -]", "_", str(name))[:100]


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
