"""`cifar-job experiment run` on slices of the real archive: parallel trials, SIGTERM and SIGKILL mid-way and
resumed, the summary recomputed from the trials' histories, the right trial selected and published exactly once,
and the finalise race of two Indexed Job pods finishing together."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
import yaml

from export.repository import versions
from job.config.experiment_spec import load_spec
from job.core.paths import ExperimentPaths

from .conftest import REAL_ARCHIVE, REAL_SHA256

DATA = ["--data", str(REAL_ARCHIVE), "--checksum", f"sha256:{REAL_SHA256}", "--device", "cpu"]
FLAGS = {"data.source": str(REAL_ARCHIVE), "data.checksum": f"sha256:{REAL_SHA256}", "train.device": "cpu", "validate.device": "cpu"}
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("CIFAR_JOB_")}, "TF_CPP_MIN_LOG_LEVEL": "2"}
TIMEOUT = 600


def small_spec(tmp_path: Path, name: str = "t", metrics: dict[str, Any] | None = None, **fields: Any) -> Path:
    """A spec on 600 training (480 + 120, or folds) and 100 test images, one epoch, no gate, no variants."""
    base = {
        "train": {"epochs": 1, "augment": False},
        "data": {"train_limit": 600, "test_limit": 100},
        "gate": {"min_accuracy": 0, "min_weighted_f1": 0},
        "variants": {"enabled": []},
        "publish": {"root": str(tmp_path / "models")},
        **({"metrics": metrics} if metrics else {}),
    }
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": name, "base": base, **fields}, sort_keys=False))
    return spec


def _start(spec: Path, out: Path, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "job", "experiment", "run", str(spec), "--out", str(out), *DATA, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    return process.returncode, stdout, stderr


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert process.poll() is None, _finish(process)
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _completed(out: Path, trials: int) -> set[int]:
    return {i for i in range(trials) if ExperimentPaths(out).trial(i).train_result.is_file()}


def _processes_in(out: Path) -> list[int]:
    """Processes whose command line names the experiment directory: none may outlive the experiment."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(out) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _recomputed(spec: Path, out: Path) -> tuple[dict[int, dict[str, Any]], dict[int, list[int]]]:
    """Each trial's best epoch and figures from its history.json alone, and the trials of each group."""
    trials = load_spec(spec, env={}, flags=FLAGS).trials()
    rows, groups = {}, {}
    for t in trials:
        history = json.loads((ExperimentPaths(out).trial(t.index).history_json).read_text())
        best = min(history, key=lambda row: row["val_loss"])  # the first lowest: what early stopping keeps (min_delta 0)
        rows[t.index] = {"best_epoch": best["epoch"], "val_accuracy": best["val_accuracy"], "val_loss": best["val_loss"], "epochs": len(history)}
        groups.setdefault(t.group, []).append(t.index)
    return rows, groups


def _check_summary_and_selection(spec: Path, out: Path, metric: str) -> int:
    """summary.json agrees with the histories; selection.json names the right trial; returns it."""
    rows, groups = _recomputed(spec, out)
    summary = json.loads((out / "summary.json").read_text())
    for row in summary["trial_rows"]:
        assert row["status"] == "completed"
        assert {k: row[k] for k in rows[row["index"]]} == rows[row["index"]]
    sign = 1 if metric == "val_accuracy" else -1
    means = {}
    for g in summary["groups"]:
        values = [rows[i][metric] for i in groups[g["group"]]]
        for name in ("val_accuracy", "val_loss"):
            figures = [rows[i][name] for i in groups[g["group"]]]
            assert g[name]["n"] == len(figures)
            assert g[name]["mean"] == pytest.approx(statistics.mean(figures), abs=1e-12)
            assert g[name]["std"] == pytest.approx(statistics.stdev(figures), abs=1e-12)
            assert (g[name]["min"], g[name]["max"]) == (min(figures), max(figures))
        means[g["group"]] = statistics.mean(values)
    best_group = max(means, key=lambda g: (sign * means[g], -g))
    best_trial = max(groups[best_group], key=lambda i: (sign * rows[i][metric], -i))
    selection = json.loads((out / "selection.json").read_text())
    assert (selection["group"], selection["trial"], selection["select"]) == (best_group, best_trial, metric)
    assert "| group | overrides | n |" in (out / "summary.md").read_text()
    assert (out / "summary.png").read_bytes().startswith(b"\x89PNG")
    return best_trial


def _published_experiment(tmp_path: Path, version: int) -> dict[str, Any]:
    """The experiment summary in the published model's metadata."""
    model = onnx.load(tmp_path / "models" / "cifar10-cnn" / str(version) / "model.onnx")
    return json.loads({p.key: p.value for p in model.metadata_props}["experiment"])


def _check_published_once(tmp_path: Path, out: Path, chosen: int, trials: int) -> None:
    assert versions(tmp_path / "models" / "cifar10-cnn") == [1]
    assert [i for i in range(trials) if ExperimentPaths(out).trial(i).publish_result.exists()] == [chosen]
    experiment = _published_experiment(tmp_path, 1)
    assert (experiment["trials"], experiment["selected"]["trial"]) == (trials, chosen)
    assert "## Experiment" in (ExperimentPaths(out).trial(chosen).model_card).read_text()


def test_a_local_experiment_stopped_by_sigterm_and_sigkill_resumes_and_publishes_the_best_trial_once(tmp_path: Path) -> None:
    spec, out = small_spec(tmp_path, grid={"train.learning_rate": [0.01, 0.05]}, seeds=2, select="val_loss"), tmp_path / "exp"

    first = _start(spec, out, "--parallel", "2")  # SIGTERM once a trial is complete: the others stop and save
    _wait_for(lambda: bool(_completed(out, 4)), first)
    first.send_signal(signal.SIGTERM)
    code, _, stderr = _finish(first)
    assert code == 75, stderr
    assert stderr.strip().splitlines()[-1].startswith("cifar-job: error: ")
    assert len(_completed(out, 4)) < 4 and _processes_in(out) == []
    before = _completed(out, 4)

    second = _start(spec, out, "--parallel", "2")  # SIGKILL once another trial is complete: its children die with it
    _wait_for(lambda: _completed(out, 4) > before, second)
    second.kill()
    second.wait()
    time.sleep(1)
    assert _processes_in(out) == []

    code, stdout, stderr = _finish(_start(spec, out, "--parallel", "2"))
    assert code == 0, stderr
    assert _completed(out, 4) == {0, 1, 2, 3}
    chosen = _check_summary_and_selection(spec, out, "val_loss")
    _check_published_once(tmp_path, out, chosen, 4)

    published = tmp_path / "models" / "cifar10-cnn" / "1" / "model.onnx"
    stamp = published.stat().st_mtime_ns
    code, stdout, stderr = _finish(_start(spec, out))  # a rerun after success changes nothing
    assert code == 0, stderr
    assert "4 of 4 trials complete, 0 to run" in stdout
    assert published.stat().st_mtime_ns == stamp
    _check_published_once(tmp_path, out, chosen, 4)


def test_k_fold_trials_finishing_together_on_two_indices_publish_once(tmp_path: Path) -> None:
    spec, out = small_spec(tmp_path, folds=3), tmp_path / "exp"
    pods = [_start(spec, out, "--index", str(i)) for i in (0, 1)]  # two pods of an Indexed Job, trial 2 still to come
    for code, stdout, stderr in map(_finish, pods):
        assert code == 0, stderr
        assert "of 3 trials unfinished, the last to finish finalises" in stdout
    trial = load_spec(spec, env={}, flags=FLAGS).trials()[2]  # trial 2 trained apart, so that no pod finalises yet
    ExperimentPaths(out).trial(2).root.mkdir(parents=True)
    trial.config(out).write(ExperimentPaths(out).trial_config(2))
    done = subprocess.run([sys.executable, "-m", "job", "train", "--config", str(ExperimentPaths(out).trial_config(2))], env=ENV, capture_output=True, timeout=TIMEOUT, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not (out / "summary.json").exists()

    racers = [_start(spec, out, "--index", str(i)) for i in (1, 2)]  # both find every trial finished at once
    results = [_finish(p) for p in racers]
    assert [code for code, _, _ in results] == [0, 0], [stderr for _, _, stderr in results]
    winners = [i for i, (_, stdout, _) in zip((1, 2), results, strict=True) if "selected trial" in stdout]
    assert len(winners) == 1
    assert f"index {winners[0]} is finalising" in results[(1, 2).index(3 - winners[0])][1]
    assert not (out / "finalize.lock").exists()  # released once the experiment was published

    chosen = _check_summary_and_selection(spec, out, "val_accuracy")
    _check_published_once(tmp_path, out, chosen, 3)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["fold"] for r in summary["trial_rows"]] == [0, 1, 2] and summary["groups"][0]["val_accuracy"]["n"] == 3

    code, stdout, stderr = _finish(_start(spec, out, "--index", str(3 - winners[0])))  # a later pod finalises again: nothing new
    assert code == 0, stderr
    assert "every stage is complete; nothing to do" in stderr
    _check_published_once(tmp_path, out, chosen, 3)

    run = ExperimentPaths(out).trial(chosen)
    run.experiment.write_text("{}")  # a summary other than the one the model carries: export and what follows are redone
    code, stdout, stderr = _finish(_start(spec, out, "--index", str(winners[0])))
    assert code == 0, stderr
    assert "export: exported" in stdout
    latest = versions(tmp_path / "models" / "cifar10-cnn")[-1]  # 1 again if tf2onnx names every node as it did before
    assert _published_experiment(tmp_path, latest) == json.loads(run.experiment.read_text())
    assert json.loads(run.experiment.read_text())["selected"]["trial"] == chosen


def test_trials_that_fail_are_recorded_and_an_experiment_with_none_left_fails_with_their_code(tmp_path: Path) -> None:
    spec, out = small_spec(tmp_path, seeds=2), tmp_path / "exp"
    command = [sys.executable, "-m", "job", "experiment", "run", str(spec), "--out", str(out), "--parallel", "2", "--data", str(tmp_path / "missing.tar.gz")]
    done = subprocess.run(command, check=False, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "cifar-job: error: experiment t: all 2 trials failed (trial 0: exit 3); nothing to publish"
    for i in (0, 1):
        failure = json.loads(ExperimentPaths(out).trial_failed(i).read_text())
        assert failure["exit_code"] == 3 and "no such file or directory" in failure["message"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["completed"], summary["failed"]) == (0, 2)
    assert not (out / "selection.json").exists() and not (tmp_path / "models").exists()


def test_a_pod_whose_trial_fails_for_good_records_it_and_exits_with_its_code(tmp_path: Path) -> None:
    spec, out = small_spec(tmp_path, seeds=2), tmp_path / "exp"
    command = [sys.executable, "-m", "job", "experiment", "run", str(spec), "--out", str(out), "--index", "1", "--data", str(tmp_path / "missing.tar.gz")]
    done = subprocess.run(command, check=False, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"cifar-job: error: data {tmp_path / 'missing.tar.gz'}: no such file")
    assert "trial 1: done; 1 of 2 trials unfinished" in done.stdout
    assert json.loads(ExperimentPaths(out).trial_failed(1).read_text())["exit_code"] == 3
    assert not ExperimentPaths(out).trial_failed(0).exists() and not (out / "finalize.lock").exists()
