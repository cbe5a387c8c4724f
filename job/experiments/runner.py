"""Run an experiment's trials, each an ordinary resumable run directory, then summarise, select and publish once.

Locally (`run_all`) every unfinished trial runs as its own `cifar-job train` process, `parallel` at
a time, reading the trial's effective config (`trial.yaml`); a rerun skips trials whose train.json
matches their config and resumes the others from their checkpoints. A child dies with its parent
(PR_SET_PDEATHSIG), so a killed experiment leaves no trial training behind; on SIGTERM the children
are stopped, save their epoch and the experiment exits 75. A trial that fails (any exit but 0 or 75)
is recorded in its `failed.json` and the others go on; a rerun tries it again.

On Kubernetes (`run_index`) each pod of an Indexed Job trains trial $JOB_COMPLETION_INDEX in
process. Selection, export, validation and publishing must then run once, with no human step,
however the Job was started: the pod that, after its own trial, finds every trial finished
(completed, or failed for good: a non-retryable exit code, or any failure but preemption on the
index's last try, recorded in failed.json) takes `finalize.lock` and finalises; the others exit 0.
A lock on the volume the trials already share needs no second Job, controller or watcher, so
`kubectl apply`, `helm install` and `cifar-job k8s submit` behave alike. Each pod writes its
train.json before it looks at the others', so of two pods finishing together at least one sees all
finished, and O_EXCL lets exactly one of them through. The lock is a lease: its holder renews it
(the file's mtime) while it works and removes it when done; a lock that is unreadable, or not
renewed for LEASE_SECONDS (its holder died), or left by an earlier pod of the same index, is taken
over. Every pod that finds every trial finished finalises again once the lock is free: the summary
is made anew from the trials' records, so a trial retried after an earlier finalisation is counted,
and the stages' markers and the repository's lock make the rest idempotent (a second run publishes
nothing new); the rare double takeover of an expired lease costs time, not correctness.

Metrics: a trial's series and pushed outcome carry `experiment` and `trial` labels (in process, and
through TRIAL_ENV for a local trial's process). The experiment has a metrics session of its own,
labelled `experiment`: locally it lasts the whole run, serving the trials' states on `metrics.port`
(a trial's process then serves on the next port); on Kubernetes the finalising pod opens it and
counts the states from the shared volume. Its outcome (exit code, selected trial and its
validation figure, success time) is pushed under the experiment's own grouping key.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from job.core.atomic import atomic_write
from job.core.events import write_events
from job.core.bounded import open_append, open_regular, read_bounded
from job.config.settings import Config
from job.core.errors import NON_RETRYABLE_EXIT_CODES, ConfigError, JobError, ModelFileError, Preempted, one_line
from job.config.experiment_spec import ExperimentSpec, Trial
from job.experiments.summary import METRICS, MAX_MESSAGE, NothingToSelect, TrialFailure, TrialRow, experiment_record, select, summarise, trial_row, write_summary
from job.metrics.series import RunMetrics
from job.metrics.session import TRIAL_ENV, metrics_session
from job.core.paths import ExperimentPaths, RunPaths
from job.core.records import read_marker, strict_json
from job.stages import BY_NAME, run_stage, run_stages, stage_inputs
from job.tracking.session import Experiment, Tracker, tracking_session

log = logging.getLogger(__name__)

Report = Callable[[str], None]
POLL_SECONDS = 0.2
LOG_TAIL_BYTES = 16384  # where a failed trial's error line is looked for
STOP_SECONDS = 120  # a trial stopped by SIGTERM finishes its step and saves; then it is killed
PR_SET_PDEATHSIG = 1


def status(trial: Trial, root: Path) -> str:
    """completed (train.json of this config), failed (failed.json) or unfinished."""
    paths = ExperimentPaths(root)
    if BY_NAME["train"].is_complete(trial.config(root), paths.trial(trial.index)):
        return "completed"
    return "failed" if paths.trial_failed(trial.index).is_file() else "unfinished"


def _prepare(trial: Trial, root: Path) -> Config:
    """The trial's run directory with its effective config; a new attempt forgets an old failure."""
    paths, config = ExperimentPaths(root), trial.config(root)
    paths.trial(trial.index).root.mkdir(parents=True, exist_ok=True)
    config.write(paths.trial_config(trial.index))
    paths.trial_failed(trial.index).unlink(missing_ok=True)
    return config


def _record_failure(root: Path, index: int, exit_code: int, message: str) -> None:
    atomic_write(ExperimentPaths(root).trial_failed(index), TrialFailure(exit_code, one_line(message, MAX_MESSAGE)).to_json())


def _experiment_config(spec: ExperimentSpec, root: Path) -> Config:
    """The experiment session's settings: the trials' metrics and tracking settings, the experiment directory as the default run_id."""
    return spec.trials()[0].settings.model_copy(update={"out": root})


def _tracked(spec: ExperimentSpec, root: Path) -> Experiment:
    """The experiment's MLflow parent run, recorded in its directory: its trials' runs are nested in it."""
    params = {"name": spec.name, "trials": spec.trial_count, "select": spec.select, "seeds": spec.seeds, "folds": spec.folds, "spec": str(spec.path)}
    return Experiment(root, spec.name, {"experiment": params})


@contextlib.contextmanager
def _experiment_sessions(spec: ExperimentSpec, root: Path) -> Iterator[tuple[RunMetrics, Tracker]]:
    """The experiment's own metrics session, labelled `experiment`, and its MLflow parent run."""
    config = _experiment_config(spec, root)
    with metrics_session(config, "experiment", {"experiment": spec.name}) as metrics, tracking_session(config, metrics, _tracked(spec, root)) as tracking:
        yield metrics, tracking


def _state(trial_status: str) -> str:
    """A trial's status as the metrics count it: unfinished trials not running are pending."""
    return "pending" if trial_status == "unfinished" else trial_status


def _record_states(metrics: RunMetrics, states: Mapping[int, str]) -> None:
    metrics.record_trials(Counter(states.values()))


# --- locally: one process per trial ---------------------------------------------------------------


def run_all(spec: ExperimentSpec, root: Path, parallel: int, report: Report) -> None:
    """Run every trial not yet completed, `parallel` at a time, then finalise; the experiment's metrics session spans it all."""
    ports = {t.settings.metrics.port for t in spec.trials()} - {0}
    if parallel > 1 and ports:
        raise ConfigError(f"--parallel {parallel}: the trials would all serve /metrics on port {min(ports)}; set metrics.port=0 or run one at a time")
    if ports and max(ports) == 65535:
        raise ConfigError("metrics.port 65535: the experiment serves /metrics on it and its trials on the next port; choose a lower one")
    with _experiment_sessions(spec, root) as (metrics, tracking):
        _run_trials(spec, root, parallel, report, metrics, tracking)
        finalise(spec, root, report, metrics, tracking)


def _run_trials(spec: ExperimentSpec, root: Path, parallel: int, report: Report, metrics: RunMetrics, tracking: Tracker) -> None:
    """Every trial not yet completed, `parallel` at a time, their states counted as they change; Preempted if any was stopped."""
    states = {t.index: _state(status(t, root)) for t in spec.trials()}
    todo = [t for t in spec.trials() if states[t.index] != "completed"]
    report(f"experiment {spec.name}: {spec.trial_count - len(todo)} of {spec.trial_count} trials complete, {len(todo)} to run")
    running: dict[int, subprocess.Popen[bytes]] = {}
    interrupted = []
    _record_states(metrics, states)
    try:
        while todo or running:
            while todo and len(running) < parallel:
                trial = todo.pop(0)
                running[trial.index] = _start(trial, root, spec.name, tracking.child_env())
                states[trial.index] = "running"
                _record_states(metrics, states)
            time.sleep(POLL_SECONDS)
            for index, process in list(running.items()):
                if process.poll() is not None:
                    del running[index]
                    if not _ended(root, index, process.returncode, report):
                        interrupted.append(index)
                    states[index] = _state(status(spec.trials()[index], root))
                    _record_states(metrics, states)
    except BaseException:
        _stop(running)
        _record_states(metrics, {t.index: _state(status(t, root)) for t in spec.trials()})
        raise
    if interrupted:
        raise Preempted(f"experiment {spec.name}: trials {', '.join(map(str, interrupted))} were stopped (exit 75); rerun to resume")


def _start(trial: Trial, root: Path, experiment: str, tracking_env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """`cifar-job train --config <trial.yaml>`, its output appended to the trial's train.log, its metrics labelled as the trial's,
    its MLflow run nested in the experiment's (`tracking_env`)."""
    paths = ExperimentPaths(root)
    config = _prepare(trial, root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIFAR_JOB_")}  # trial.yaml already holds their effect
    env[TRIAL_ENV] = f"{experiment}/{trial.index}"
    env.update(tracking_env)
    if config.metrics.port:  # the experiment serves on metrics.port
        env["CIFAR_JOB_METRICS_PORT"] = str(config.metrics.port + 1)
    with open_append(paths.trial_log(trial.index), ModelFileError, f"trial log {paths.trial_log(trial.index)}") as output:
        command = [sys.executable, "-m", "job", "train", "--config", str(paths.trial_config(trial.index))]
        die_with_parent = functools.partial(_die_with_parent, os.getpid())
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)  # noqa: PLW1509 - no threads in this process before the trials start


def _die_with_parent(parent: int) -> None:
    """In the child before exec: the kernel kills it when the experiment process dies, even by SIGKILL."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def _ended(root: Path, index: int, code: int, report: Report) -> bool:
    """Record how a trial's process ended; False when it was stopped (75) and must be resumed."""
    if code == 0:
        report(f"trial {index}: completed")
    elif code == Preempted.exit_code:
        report(f"trial {index}: stopped (exit 75)")
        return False
    else:
        code = code if code > 0 else 128 - code  # killed by a signal: the shell's convention
        message = _last_error(ExperimentPaths(root).trial_log(index))
        _record_failure(root, index, code, message)
        report(f"trial {index}: failed with exit {code}: {message}")
    return True


def _last_error(log_file: Path) -> str:
    """The trial's one-line error, from the end of its log."""
    with open_regular(log_file, ModelFileError, f"trial log {log_file}") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_TAIL_BYTES))
        tail = f.read(LOG_TAIL_BYTES).decode(errors="replace")
    errors = [line for line in tail.splitlines() if line.startswith("cifar-job: error:")]
    return errors[-1] if errors else f"no error line; see {log_file}"


def _stop(running: dict[int, subprocess.Popen[bytes]]) -> None:
    """SIGTERM every running trial, let each save its epoch, and kill what is left."""
    for process in running.values():
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for process in running.values():
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- on Kubernetes: one trial per pod, the last one finalises --------------------------------------


def run_index(spec: ExperimentSpec, root: Path, index: int, report: Report) -> None:
    """Train trial `index` in this process; finalise if it was the last to finish."""
    if not 0 <= index < spec.trial_count:
        raise ConfigError(f"--index {index}: experiment {spec.name} has {spec.trial_count} trials (0..{spec.trial_count - 1})")
    trial = spec.trials()[index]
    if status(trial, root) != "completed":
        config = _prepare(trial, root)
        try:
            with (
                metrics_session(config, "train", {"experiment": spec.name, "trial": str(index)}) as metrics,
                tracking_session(config, metrics, _tracked(spec, root), trial=True) as tracking,
            ):
                inputs = stage_inputs(config, RunPaths(config.out), metrics, tracking)
                run_stage(BY_NAME["train"], inputs, metrics, tracking, lambda result: report(f"trial {index}: {result.summary()}"))
        except Exception as e:
            code = e.exit_code if isinstance(e, JobError) else 1
            # Kubernetes fails the index for good: the experiment goes on without it. Preemption is never final.
            if code != Preempted.exit_code and (code in NON_RETRYABLE_EXIT_CODES or last_try()):
                _record_failure(root, index, code, (str(e).strip().splitlines() or [type(e).__name__])[0])
                finalise_if_last(spec, root, index, report)
            raise
    finalise_if_last(spec, root, index, report)


FAILURES_ENV, RETRIES_ENV = "CIFAR_EXPERIMENT_INDEX_FAILURES", "CIFAR_EXPERIMENT_INDEX_RETRIES"


def last_try(env: Mapping[str, str] | None = None) -> bool:
    """Whether no pod will follow this one for its index, whatever it fails with.

    The chart passes the index's failed pods so far (the Job controller's
    batch.kubernetes.io/job-index-failure-count annotation) and backoffLimitPerIndex; without
    them (a local run) only the non-retryable exit codes are final.
    """
    env = os.environ if env is None else env
    failures, retries = env.get(FAILURES_ENV, "") or "0", env.get(RETRIES_ENV, "")
    counts = [text for text in (failures, retries) if text.isascii() and text.isdigit() and len(text) <= 9]  # not '²' nor 10**10000
    return len(counts) == 2 and int(failures) >= int(retries)


def finalise_if_last(spec: ExperimentSpec, root: Path, index: int, report: Report) -> None:
    paths = ExperimentPaths(root)
    unfinished = [t.index for t in spec.trials() if status(t, root) == "unfinished"]
    if unfinished:
        report(f"trial {index}: done; {len(unfinished)} of {spec.trial_count} trials unfinished, the last to finish finalises")
        return
    with finalise_lock(paths.finalize_lock, index) as holder:
        if holder is not None:
            report(f"trial {index}: done; every trial is finished and {holder} is finalising ({paths.finalize_lock})")
            return
        with _experiment_sessions(spec, root) as (metrics, tracking):
            _record_states(metrics, {t.index: _state(status(t, root)) for t in spec.trials()})
            finalise(spec, root, report, metrics, tracking)


LEASE_SECONDS = 120.0  # a finaliser that has not renewed its lock for this long is taken to have died
RENEW_SECONDS = 15.0
SETTLE_SECONDS = 1.0  # after taking a lock over: long enough for a rival's rename to land before the check
MAX_LOCK_BYTES = 256


@contextlib.contextmanager
def finalise_lock(lock: Path, index: int) -> Iterator[str | None]:
    """Hold `lock` for index `index` while the body runs, renewing it; yields None when held, else who holds it."""
    token = secrets.token_hex(16)
    holder = _acquire(lock, index, token)
    if holder is not None:
        yield holder
        return
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(lock, token, stop), name="finalize-lock", daemon=True)
    renewer.start()
    try:
        yield None
    finally:
        stop.set()
        renewer.join()
        if _read_lock(lock).get("token") == token:
            lock.unlink(missing_ok=True)


def _acquire(lock: Path, index: int, token: str) -> str | None:
    """Take `lock` (create it, or take a dead, broken or own-index one over); None when taken, else the live holder."""
    record = json.dumps({"index": index, "token": token}).encode()
    if _create(lock, record):
        return None
    current, age = _read_lock(lock), _age(lock)
    if current and current["index"] != index and age < LEASE_SECONDS:
        return f"index {current['index']}"
    if not current:
        why = "unreadable"
    elif current["index"] == index:
        why = "left by an earlier pod of this index"
    else:
        why = f"index {current['index']} stopped renewing it"
    log.warning("taking %s over (%s; last renewed %.0f s ago)", lock, why, age)
    try:
        atomic_write(lock, record)
    except IsADirectoryError:
        raise ModelFileError(f"finalize lock {lock}: a directory, not a lock file") from None
    time.sleep(SETTLE_SECONDS)
    current = _read_lock(lock)
    return None if current.get("token") == token else f"index {current.get('index', '?')}"


def _create(lock: Path, record: bytes) -> bool:
    """Create `lock` holding `record`, all at once (a hard link of a complete file, which fails if it exists); False if it exists."""
    complete = lock.with_name(f".{lock.name}.{secrets.token_hex(8)}")
    try:
        atomic_write(complete, record)
        os.link(complete, lock)
    except FileExistsError:
        return False
    except OSError as e:
        raise ModelFileError(f"finalize lock {lock}: cannot create ({e.strerror})") from None
    finally:
        complete.unlink(missing_ok=True)
    return True


def _read_lock(lock: Path) -> dict[str, Any]:
    """The lock's record; {} when missing or not one this code writes (a FIFO, garbage, another version's)."""
    try:
        record = strict_json(read_bounded(lock, MAX_LOCK_BYTES, ModelFileError, f"finalize lock {lock}"))
    except (ModelFileError, ValueError, RecursionError):
        return {}
    valid = isinstance(record, dict) and set(record) == {"index", "token"} and type(record["index"]) is int and isinstance(record["token"], str)
    return record if valid else {}


def _age(lock: Path) -> float:
    """Seconds since the lock was last renewed (its mtime)."""
    try:
        return max(0.0, time.time() - lock.lstat().st_mtime)
    except OSError:
        return math.inf


def _renew(lock: Path, token: str, stop: threading.Event) -> None:
    """Touch the lock every RENEW_SECONDS while it is ours, so no one takes it over from a live finaliser."""
    while not stop.wait(RENEW_SECONDS):
        if _read_lock(lock).get("token") != token:
            log.warning("%s was taken over by another pod; this one finishes its finalisation anyway (it is idempotent)", lock)
            return
        with contextlib.suppress(OSError):
            os.utime(lock, follow_symlinks=False)


# --- finalising: summary, selection, then the chosen trial through the stages ----------------------


def finalise(spec: ExperimentSpec, root: Path, report: Report, metrics: RunMetrics, tracking: Tracker) -> None:
    """Summarise every trial, select on validation results, and export, validate, gate and publish the chosen trial (its stages into
    `metrics`, and into the experiment's MLflow run)."""
    paths = ExperimentPaths(root)
    rows = [trial_row(t, paths, status(t, root) == "completed") for t in spec.trials()]
    summary = summarise(spec, rows)
    _write_hparams(rows, paths)
    try:
        selection = select(summary)
    except NothingToSelect:
        write_summary(summary, None, paths)
        raise
    write_summary(summary, selection, paths)
    atomic_write(paths.selection, json.dumps(selection, indent=1) + "\n")
    chosen = spec.trials()[selection["trial"]]
    config, run = chosen.config(root), paths.trial(chosen.index)
    report(f"experiment {spec.name}: selected trial {chosen.index} (group {chosen.group}, {spec.select} {selection['trial_value']:.4f})")
    metrics.record_selection(chosen.index, spec.select, selection["trial_value"])
    selected = {"experiment.selected_trial": chosen.index, f"experiment.selected_{spec.select}": selection["trial_value"]}
    tracking.log_outcome(selected, [paths.summary_json, paths.summary_md, paths.summary_png, paths.selection])
    record = experiment_record(summary, selection)
    if read_marker(run.experiment) != record:  # the model must carry the summary it was chosen by: export and what follows are redone
        atomic_write(run.experiment, json.dumps(record, indent=1) + "\n")
        run.export_result.unlink(missing_ok=True)
    run_stages(config, run, metrics, tracking, report=lambda stage, result: report(f"{stage}: {result.summary()}"))


HPARAMS_EVENTS = "events.out.tfevents.hparams"  # TensorBoard reads any file whose name holds "tfevents"


def _write_hparams(rows: list[TrialRow], paths: ExperimentPaths) -> None:
    """Each trial's overrides and best validation figures, for TensorBoard's HParams view over `<experiment>/trials`.

    One event file per trial's tensorboard directory, replaced by every finalisation, so finalising again adds nothing.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import summary_v2 as hp  # what hparams.api exports, without its Keras callback's TensorFlow import

    names = sorted({name for row in rows for name in row.overrides})
    experiment = hp.hparams_config_pb(hparams=[hp.HParam(name) for name in names], metrics=[hp.Metric(f"best_{m}") for m in METRICS])
    for row in rows:
        values = {name: value if isinstance(value, bool | int | float | str) else json.dumps(value) for name, value in row.overrides.items()}
        figures = Summary(value=[Summary.Value(tag=f"best_{m}", simple_value=getattr(row, m)) for m in METRICS if getattr(row, m) is not None])
        summaries = [(0, experiment), (0, hp.hparams_pb(values, trial_id=f"{row.index:04d}")), (row.best_epoch or 0, figures)]
        write_events(paths.trial(row.index).tensorboard / HPARAMS_EVENTS, summaries)
