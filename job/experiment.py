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
index's last try, recorded in failed.json) creates
`finalize.lock` with O_CREAT|O_EXCL and finalises; the others exit 0. A lock on the volume the
trials already share needs no second Job, controller or watcher, so `kubectl apply`, `helm install`
and `cifar-job k8s submit` behave alike. Each pod writes its train.json before it looks at the
others', so of two pods finishing together at least one sees all finished, and O_EXCL lets exactly
one of them through. A retried pod of the index that holds the lock (preempted while finalising)
takes it over; the lock stays after success, and finalising is idempotent anyway (the stages'
markers: a second run publishes nothing new).

Metrics: a trial's series and pushed outcome carry `experiment` and `trial` labels (in process, and
through TRIAL_ENV for a local trial's process). The experiment has a metrics session of its own,
labelled `experiment`: locally it lasts the whole run, serving the trials' states on `metrics.port`
(a trial's process then serves on the next port); on Kubernetes the finalising pod opens it and
counts the states from the shared volume. Its outcome (exit code, selected trial and its
validation figure, success time) is pushed under the experiment's own grouping key.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

from job.atomic import atomic_write
from job.bounded import read_bounded
from job.config import Config
from job.errors import NON_RETRYABLE_EXIT_CODES, ConfigError, JobError, Preempted
from job.experiment_spec import ExperimentSpec, Trial
from job.experiment_summary import NothingToSelect, TrialFailure, experiment_record, select, summarise, trial_row, write_summary
from job.metrics import RunMetrics
from job.metrics_session import TRIAL_ENV, metrics_session
from job.paths import ExperimentPaths, RunPaths
from job.records import read_marker
from job.stage import StageInputs
from job.stages import BY_NAME, run_stage, run_stages

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
    atomic_write(ExperimentPaths(root).trial_failed(index), TrialFailure(exit_code, message).to_json())


def _experiment_config(spec: ExperimentSpec, root: Path) -> Config:
    """The experiment session's settings: the trials' metrics settings, the experiment directory as the default run_id."""
    return spec.trials()[0].settings.model_copy(update={"out": root})


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
    with metrics_session(_experiment_config(spec, root), "experiment", {"experiment": spec.name}) as metrics:
        _run_trials(spec, root, parallel, report, metrics)
        finalise(spec, root, report, metrics)


def _run_trials(spec: ExperimentSpec, root: Path, parallel: int, report: Report, metrics: RunMetrics) -> None:
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
                running[trial.index] = _start(trial, root, spec.name)
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


def _start(trial: Trial, root: Path, experiment: str) -> subprocess.Popen[bytes]:
    """`cifar-job train --config <trial.yaml>`, its output appended to the trial's train.log, its metrics labelled as the trial's."""
    paths = ExperimentPaths(root)
    config = _prepare(trial, root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIFAR_JOB_")}  # trial.yaml already holds their effect
    env[TRIAL_ENV] = f"{experiment}/{trial.index}"
    if config.metrics.port:  # the experiment serves on metrics.port
        env["CIFAR_JOB_METRICS_PORT"] = str(config.metrics.port + 1)
    with open(paths.trial_log(trial.index), "ab") as output:
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
    with open(log_file, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_TAIL_BYTES))
        tail = f.read().decode(errors="replace")
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
            with metrics_session(config, "train", {"experiment": spec.name, "trial": str(index)}) as metrics:
                inputs = StageInputs(config, RunPaths(config.out), training_callbacks=lambda: [metrics.keras_callback()])
                run_stage(BY_NAME["train"], inputs, metrics, lambda result: report(f"trial {index}: {result.summary()}"))
        except Exception as e:
            code = e.exit_code if isinstance(e, JobError) else 1
            # Kubernetes fails the index for good: the experiment goes on without it. Preemption is never final.
            if code != Preempted.exit_code and (code in NON_RETRYABLE_EXIT_CODES or last_try()):
                _record_failure(root, index, code, (str(e).strip().splitlines() or [type(e).__name__])[0][:500])  # one bounded line
                _finalise_if_last(spec, root, index, report)
            raise
    _finalise_if_last(spec, root, index, report)


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


def _finalise_if_last(spec: ExperimentSpec, root: Path, index: int, report: Report) -> None:
    unfinished = [t.index for t in spec.trials() if status(t, root) == "unfinished"]
    if unfinished:
        report(f"trial {index}: done; {len(unfinished)} of {spec.trial_count} trials unfinished, the last to finish finalises")
    elif not take_lock(ExperimentPaths(root).finalize_lock, index):
        report(f"trial {index}: done; every trial is finished and another index holds {ExperimentPaths(root).finalize_lock}")
    else:
        with metrics_session(_experiment_config(spec, root), "experiment", {"experiment": spec.name}) as metrics:
            _record_states(metrics, {t.index: _state(status(t, root)) for t in spec.trials()})
            finalise(spec, root, report, metrics)


def take_lock(lock: Path, index: int) -> bool:
    """Create `lock` holding `index`, atomically; True if this index holds it now (created, or held already)."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return read_bounded(lock, 64, ConfigError, "finalize lock").decode(errors="replace").strip() == str(index)
    with os.fdopen(fd, "w") as f:
        f.write(f"{index}\n")
        f.flush()
        os.fsync(f.fileno())
    return True


# --- finalising: summary, selection, then the chosen trial through the stages ----------------------


def finalise(spec: ExperimentSpec, root: Path, report: Report, metrics: RunMetrics) -> None:
    """Summarise every trial, select on validation results, and export, validate, gate and publish the chosen trial (its stages into `metrics`)."""
    paths = ExperimentPaths(root)
    rows = [trial_row(t, paths, status(t, root) == "completed") for t in spec.trials()]
    summary = summarise(spec, rows)
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
    record = experiment_record(summary, selection)
    if read_marker(run.experiment) != record:  # the model must carry the summary it was chosen by: export and what follows are redone
        atomic_write(run.experiment, json.dumps(record, indent=1) + "\n")
        run.export_result.unlink(missing_ok=True)
    run_stages(config, run, metrics, report=lambda stage, result: report(f"{stage}: {result.summary()}"))
