"""An experiment directory read back as an attacker or a crash may have left it: forged trial records, a FIFO
for a log, a broken, stale or contested finalisation lock, and grid values that alias or bypass the rules.

Trials are forged here (train.json of the trial's own config, a history, a weights file) rather than
trained, so each case is fast; export, validation and publishing are replaced by a recorder where a
test reaches them, as they are exercised for real in tests/test_experiment_run.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from job.experiments import runner as experiment
from job.core.errors import ConfigError, ModelFileError
from job.experiments.runner import finalise_if_last, finalise_lock
from job.config.experiment_spec import ExperimentSpec, load_spec
from job.core.paths import ExperimentPaths

from .test_experiment_run import ENV, FLAGS, small_spec

pytestmark = pytest.mark.fast  # no training, no fuzzing


def _spec(tmp_path: Path, **fields: Any) -> ExperimentSpec:
    return load_spec(small_spec(tmp_path, seeds=2, **fields), env={}, flags=FLAGS)


def _complete(spec: ExperimentSpec, out: Path, index: int, history: str | None = None, accuracy: float = 0.5) -> None:
    """Trial `index` as a finished training leaves it: train.json of its config, best weights, history."""
    run = ExperimentPaths(out).trial(index)
    run.root.mkdir(parents=True, exist_ok=True)
    run.best_weights.write_bytes(b"weights")
    rows = [{"epoch": 1, "best_epoch": 1, "val_accuracy": accuracy, "val_loss": 1.0}]
    run.history_json.write_text(history if history is not None else json.dumps(rows))
    run.train_result.write_text(json.dumps({"config_digest": spec.trials()[index].config(out).training_digest(), "train_seconds": 1.0}))
    ExperimentPaths(out).trial_failed(index).unlink(missing_ok=True)


def _fail(out: Path, index: int, record: str) -> None:
    path = ExperimentPaths(out).trial_failed(index)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record)


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Export, validation and publishing of the chosen trial, recorded instead of run: the trial each finalisation chose."""
    chosen: list[int] = []
    monkeypatch.setattr(experiment, "run_stages", lambda config, run, metrics, tracking, report: chosen.append(int(run.root.name)))
    return chosen


def _one_line_exit_5(error: pytest.ExceptionInfo[ModelFileError], names: Path) -> None:
    assert error.value.exit_code == 5 and str(names) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "record",
    [
        '{"exit_code": 0, "message": "it worked"}',  # every trial failed, yet the experiment would exit 0
        '{"exit_code": 75, "message": "m"}',  # Kubernetes would retry it forever
        '{"exit_code": -1, "message": "m"}',
        '{"exit_code": 256, "message": "m"}',
        f'{{"exit_code": {2**70}, "message": "m"}}',
        '{"exit_code": true, "message": "m"}',
        '{"exit_code": 3.0, "message": "m"}',
        '{"exit_code": 3, "message": "line\\nforged: line"}',
        '{"exit_code": 3, "message": "\\u001b]0;owned\\u0007"}',
        '{"exit_code": 3, "message": "' + "x" * 600 + '"}',
        '{"exit_code": 3}',
        "[",
    ],
)
def test_a_forged_failure_record_is_one_line_and_exit_5(record: str, tmp_path: Path, published: list[int]) -> None:
    spec, out = _spec(tmp_path), tmp_path / "exp"
    _fail(out, 0, '{"exit_code": 3, "message": "no data"}')
    _fail(out, 1, record)
    with pytest.raises(ModelFileError) as error:
        finalise_if_last(spec, out, 1, print)
    _one_line_exit_5(error, ExperimentPaths(out).trial_failed(1))
    assert published == []


def test_failure_records_that_this_code_writes_give_the_experiment_their_code(tmp_path: Path, published: list[int]) -> None:
    spec, out = _spec(tmp_path), tmp_path / "exp"
    for index in (0, 1):
        ExperimentPaths(out).trial(index).root.mkdir(parents=True)
        experiment._record_failure(out, index, 3 if index else 137, "cifar-job: error: data x: \x1b[31mred\x1b[0m\n" + "y" * 900)
    with pytest.raises(experiment.NothingToSelect) as error:
        finalise_if_last(spec, out, 1, print)
    assert error.value.exit_code == 137  # the first failed trial's, killed by SIGKILL
    message = json.loads(ExperimentPaths(out).trial_failed(1).read_text())["message"]
    assert message.isprintable() and len(message) <= 500


@pytest.mark.parametrize(
    "history",
    [
        '[{"epoch": 1, "best_epoch": 1, "val_accuracy": 1e400, "val_loss": 1.0}]',
        '[{"epoch": 1, "best_epoch": 1, "val_accuracy": NaN, "val_loss": 1.0}]',
        '[{"epoch": 1, "best_epoch": 1, "val_accuracy": 0.5, "val_loss": Infinity}]',
        '[{"epoch": 1, "best_epoch": 1, "val_accuracy": 0.5, "val_loss": ' + "9" * 400 + "}]",
        '[{"epoch": ' + "9" * 400 + ', "best_epoch": 1, "val_accuracy": 0.5, "val_loss": 1.0}]',
        '[{"epoch": 1, "best_epoch": 1, "val_accuracy": 2, "val_loss": 1.0}]',
        '[{"epoch": 1, "best_epoch": 1, "val_accuracy": 0.5, "val_loss": -1}]',
        '[{"epoch": 1.5, "best_epoch": 1, "val_accuracy": 0.5, "val_loss": 1.0}]',
        '[{"epoch": true, "best_epoch": 1, "val_accuracy": 0.5, "val_loss": 1.0}]',
        '[{"epoch": 1, "best_epoch": 7, "val_accuracy": 0.5, "val_loss": 1.0}]',
        "[]",
        "[" * 100_000,
    ],
)
def test_a_forged_history_is_one_line_and_exit_5(history: str, tmp_path: Path, published: list[int]) -> None:
    spec, out = _spec(tmp_path), tmp_path / "exp"
    _complete(spec, out, 0)
    _complete(spec, out, 1, history=history)
    with pytest.raises(ModelFileError) as error:
        finalise_if_last(spec, out, 1, print)
    _one_line_exit_5(error, ExperimentPaths(out).trial(1).history_json)
    assert published == []


def test_forged_train_seconds_are_left_out_not_a_crash(tmp_path: Path, published: list[int]) -> None:
    spec, out = _spec(tmp_path), tmp_path / "exp"
    for index, seconds in enumerate(("1e400", "9" * 400)):
        _complete(spec, out, index)
        run = ExperimentPaths(out).trial(index)
        run.train_result.write_text(run.train_result.read_text().replace('"train_seconds": 1.0', f'"train_seconds": {seconds}'))
    finalise_if_last(spec, out, 1, print)
    summary = json.loads((out / "summary.json").read_text())
    assert [row["seconds"] for row in summary["trial_rows"]] == [None, None] and published == [0]


def test_a_fifo_for_a_trial_log_is_one_line_not_a_hang(tmp_path: Path) -> None:
    spec, out = small_spec(tmp_path), tmp_path / "exp"
    log = ExperimentPaths(out).trial_log(0)
    log.parent.mkdir(parents=True)
    os.mkfifo(log)
    command = [sys.executable, "-m", "job", "experiment", "run", str(spec), "--out", str(out), "--set", f"data.source={FLAGS['data.source']}"]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=120, check=False)
    assert done.returncode == 5, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"cifar-job: error: trial log {log}: cannot open for writing (No such device or address)"


# --- the finalisation lock ----------------------------------------------------------------------------


def _holds(lock: Path, index: int) -> str | None:
    """Who holds `lock` when `index` tries for it (None: `index` got it, and released it again)."""
    with finalise_lock(lock, index) as holder:
        return holder


def test_two_finalisers_at_once_let_exactly_one_through(tmp_path: Path) -> None:
    lock, start, results = tmp_path / "finalize.lock", threading.Barrier(8), {}

    def contend(index: int) -> None:
        start.wait()
        with finalise_lock(lock, index) as holder:
            results[index] = holder
            time.sleep(0.5)  # the work, while the others look

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [index for index, holder in results.items() if holder is None]
    assert len(winners) == 1 and {results[i] for i in results if i != winners[0]} == {f"index {winners[0]}"}
    assert list(tmp_path.iterdir()) == []  # released, and nothing left beside it


@pytest.mark.parametrize("content", [b"", b"garbage", b"3\n", b'{"index": "3", "token": "t"}', b"\xff" * 10_000])
def test_a_broken_lock_is_taken_over(content: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lock = tmp_path / "finalize.lock"
    lock.write_bytes(content)
    assert _holds(lock, 1) is None
    assert "unreadable" in caplog.text and not lock.exists()


def test_a_fifo_as_the_lock_is_taken_over_without_a_hang(tmp_path: Path) -> None:
    lock = tmp_path / "finalize.lock"
    os.mkfifo(lock)
    assert _holds(lock, 1) is None and not lock.exists()


def test_a_directory_as_the_lock_is_one_line(tmp_path: Path) -> None:
    lock = tmp_path / "finalize.lock"
    lock.mkdir()
    with pytest.raises(ModelFileError, match="finalize lock .*: a directory, not a lock file"):
        _holds(lock, 1)


def test_a_live_holder_keeps_the_lock_and_a_dead_one_loses_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finaliser SIGKILLed mid-way: its lock is renewed no more, and after the lease another index takes over."""
    lock = tmp_path / "finalize.lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from job.experiments import runner as experiment
        experiment.RENEW_SECONDS = 0.2
        with experiment.finalise_lock(Path({str(lock)!r}), 3) as holder:
            assert holder is None
            print("holding", flush=True)
            time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        monkeypatch.setattr(experiment, "LEASE_SECONDS", 2.0)
        first = lock.stat().st_mtime
        time.sleep(2.5)
        assert lock.stat().st_mtime > first  # renewed while alive
        assert _holds(lock, 1) == "index 3"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert _holds(lock, 1) == "index 3"  # within its lease still
    time.sleep(2.5)
    assert _holds(lock, 1) is None and not lock.exists()


def test_a_later_pod_of_the_holders_index_takes_its_lock_over(tmp_path: Path) -> None:
    lock = tmp_path / "finalize.lock"
    lock.write_text('{"index": 2, "token": "an earlier pod of index 2"}')
    assert _holds(lock, 1) == "index 2"
    assert _holds(lock, 2) is None


def test_a_trial_retried_after_finalisation_is_counted_by_the_next_finaliser(tmp_path: Path, published: list[int]) -> None:
    spec, out = _spec(tmp_path), tmp_path / "exp"
    _complete(spec, out, 0, accuracy=0.4)
    _fail(out, 1, '{"exit_code": 1, "message": "lost its node"}')
    finalise_if_last(spec, out, 0, print)
    assert json.loads((out / "summary.json").read_text())["failed"] == 1 and published == [0]

    _complete(spec, out, 1, accuracy=0.6)  # the failed index ran again (a rerun, a manual retry) and completed
    finalise_if_last(spec, out, 1, print)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["completed"], summary["failed"]) == (2, 0) and published == [0, 1]


# --- grid values ----------------------------------------------------------------------------------------


def _spec_file(tmp_path: Path, **fields: Any) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "g", **fields}))
    return path


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"grid": {"data": [{"folds": 2, "fold": 1}]}}, "key grid.data.fold: not allowed here (use folds:)"),
        ({"grid": {"data": [{"source": "/x.tar.gz", "folds": 2}]}}, "key grid.data.folds: not allowed here (use folds:)"),
        ({"grid": {"train": [{"seed": 7}]}, "seeds": 3}, "key grid.train.seed: not allowed here (seeds: sets it)"),
        ({"grid": {"train.seed": [1], "train": [{"seed": 2}]}}, "key grid.train.seed: set twice"),
    ],
)
def test_grid_mappings_obey_the_rules_of_dotted_keys(fields: dict[str, Any], problem: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        load_spec(_spec_file(tmp_path, **fields), env={})


def test_grid_values_are_not_shared_between_trials(tmp_path: Path) -> None:
    spec = load_spec(_spec_file(tmp_path, grid={"train": [{"learning_rate": 0.05}, {"learning_rate": 0.1}]}, seeds=3), env={})
    assert [t.seed for t in spec.trials()] == [42, 43, 44] * 2
    assert [t.settings.train.learning_rate for t in spec.trials()] == [0.05] * 3 + [0.1] * 3
    assert spec.trials()[0].overrides == {"train.learning_rate": 0.05, "train.seed": 42}
