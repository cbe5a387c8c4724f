"""What an experiment's trials achieved, per trial and per group, and which trial it publishes.

Every figure comes from the trials' own records, so anyone can recompute it: best epoch, best
validation accuracy and loss from `history.json` (the row of the epoch whose weights training kept,
the lowest validation loss), epochs from its length, seconds from `train.json`. Groups (one grid
point: its seeds or folds) get n, mean, sample standard deviation, min and max.

Selection reads validation results only; the test set is touched once, when the chosen model is
validated. Groups are ranked by their mean validation metric (`select`), so the choice of settings
rests on every seed or fold; the chosen group's best trial is then published as it is. For k-fold
cross-validation that is the best fold's model, trained on (k-1)/k of the training images: no extra
training run, and the published model is one whose validation figures are in the summary. The price
is a model that saw one fold fewer than a retrain on all images would, and a validation figure that
is the best of k (optimistic); the test set measures the chosen model independently before the gate.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from job.core.atomic import atomic_path, atomic_write
from job.core.bounded import read_bounded
from job.core.errors import FAILED_TRIAL_EXIT_CODES, JobError, ModelFileError
from job.config.experiment_spec import ExperimentSpec, Trial
from job.core.paths import ExperimentPaths, RunPaths
from job.core.records import MAX_NUMBER, MAX_RECORD_BYTES, Record, read_marker, strict_json

METRICS = ("val_accuracy", "val_loss")
MAX_PLOT_INCHES, MAX_GROUP_TICKS = 30, 40  # a plot of up to 1,000 groups stays an image a viewer opens
MAX_MESSAGE = 500  # a failed trial's error line
MAX_EPOCHS = 10_000  # train.epochs' bound
MAX_SECONDS = 10**9  # a training's seconds, read from train.json (about 30 years)


class NothingToSelect(JobError):
    """Every trial failed: there is no model to publish. Exits with the first failed trial's code."""

    reason = "experiment_failed"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class TrialFailure(Record):
    """`<trial>/failed.json`: the trial failed in a way no retry fixes; the experiment goes on without it.

    Its exit code becomes the experiment's when every trial failed, so only a failure's code is
    accepted (never 0, nor 75, which Kubernetes would retry forever); the message goes into logs
    and summary.md, so it is one printable line.
    """

    exit_code: int
    message: str

    def __post_init__(self) -> None:
        if self.exit_code not in FAILED_TRIAL_EXIT_CODES:
            raise ValueError(f"exit_code {self.exit_code} is not a failure's (1-15, or 128+signal)")
        if len(self.message) > MAX_MESSAGE or not self.message.isprintable():
            raise ValueError(f"message is not one printable line of at most {MAX_MESSAGE} characters")


@dataclass(frozen=True)
class TrialRow:
    index: int
    group: int
    overrides: dict[str, Any]
    seed: int
    fold: int | None
    status: str  # completed, failed
    best_epoch: int | None = None
    val_accuracy: float | None = None
    val_loss: float | None = None
    epochs: int | None = None
    seconds: float | None = None
    exit_code: int | None = None


def trial_row(trial: Trial, paths: ExperimentPaths, completed: bool) -> TrialRow:
    """A completed trial's figures, read from its run directory; a failed one's exit code (failed.json)."""
    run = paths.trial(trial.index)
    common = {"index": trial.index, "group": trial.group, "overrides": trial.overrides, "seed": trial.seed, "fold": trial.fold}
    if not completed:
        return TrialRow(**common, status="failed", exit_code=TrialFailure.load(paths.trial_failed(trial.index)).exit_code)
    history = _history(run)
    best_epoch = history[-1]["best_epoch"]
    best = next((row for row in history if row["epoch"] == best_epoch), None)
    if best is None:
        raise ModelFileError(f"history {run.history_json}: no row for best epoch {best_epoch}")
    seconds = read_marker(run.train_result).get("train_seconds")
    return TrialRow(
        **common, status="completed", best_epoch=int(best_epoch), val_accuracy=best["val_accuracy"], val_loss=best["val_loss"],
        epochs=len(history), seconds=seconds if _number_in(seconds, 0, MAX_SECONDS) else None,
    )  # fmt: skip


def _history(run: RunPaths) -> list[dict[str, float]]:
    where = f"history {run.history_json}"
    try:
        history = strict_json(read_bounded(run.history_json, MAX_RECORD_BYTES, ModelFileError, where))
        if not (isinstance(history, list) and history and all(_is_row(row) for row in history)):
            raise ValueError("expected a non-empty list of epochs with epoch and best_epoch (1-10000), val_accuracy (0-1) and val_loss (finite, >= 0)")
    except (ValueError, RecursionError) as e:
        raise ModelFileError(f"{where}: not what training writes ({str(e)[:120]})") from None
    return history


def _is_row(row: Any) -> bool:
    """An epoch as training writes it: whole epoch numbers in range, an accuracy, a finite loss (bools are no numbers)."""
    if not isinstance(row, dict):
        return False
    epochs, accuracy, loss = (row.get("epoch"), row.get("best_epoch")), row.get("val_accuracy"), row.get("val_loss")
    return (
        all(_number_in(epoch, 1, MAX_EPOCHS) and float(epoch).is_integer() for epoch in epochs)  # training writes best_epoch as 1.0
        and _number_in(accuracy, 0, 1)
        and _number_in(loss, 0, MAX_NUMBER)
    )


def _number_in(value: Any, low: float, high: float) -> bool:
    """A JSON number within [low, high]; NaN compares false, and a 400-digit integer compares without overflow."""
    return type(value) in (int, float) and low <= value <= high


def _stats(values: list[float]) -> dict[str, float | None]:
    """n, mean, sample standard deviation (None for one value), min and max."""
    if not values:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"n": len(values), "mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values)}


def summarise(spec: ExperimentSpec, rows: list[TrialRow]) -> dict[str, Any]:
    """The experiment's summary: every trial's row and every group's statistics (summary.json)."""
    groups = []
    for group, point in spec.groups().items():
        done = [r for r in rows if r.group == group and r.status == "completed"]
        failed = sum(1 for r in rows if r.group == group and r.status == "failed")
        groups.append({"group": group, "overrides": point, "failed": failed, **{m: _stats([getattr(r, m) for r in done]) for m in METRICS}})
    return {
        "name": spec.name,
        "select": spec.select,
        "trials": len(rows),
        "completed": sum(1 for r in rows if r.status == "completed"),
        "failed": sum(1 for r in rows if r.status == "failed"),
        "groups": groups,
        "trial_rows": [asdict(r) for r in rows],
    }


def select(summary: dict[str, Any]) -> dict[str, Any]:
    """The best group by mean validation metric, then its best trial (ties: the lower number); selection.json."""
    metric = summary["select"]
    sign = 1 if metric == "val_accuracy" else -1  # higher accuracy wins, lower loss wins
    ranked = [g for g in summary["groups"] if g[metric]["n"]]
    if not ranked:
        failed = [r for r in summary["trial_rows"] if r["status"] == "failed"]
        raise NothingToSelect(
            f"experiment {summary['name']}: all {len(failed)} trials failed (trial {failed[0]['index']}: exit {failed[0]['exit_code']}); nothing to publish",
            failed[0]["exit_code"],
        )
    group = max(ranked, key=lambda g: (sign * g[metric]["mean"], -g["group"]))
    members = [r for r in summary["trial_rows"] if r["group"] == group["group"] and r["status"] == "completed"]
    trial = max(members, key=lambda r: (sign * r[metric], -r["index"]))
    return {
        "select": metric,
        "rule": "group with the best mean validation metric, then its best trial; validation results only",
        "group": group["group"],
        "overrides": group["overrides"],
        "group_mean": group[metric]["mean"],
        "trial": trial["index"],
        "trial_value": trial[metric],
    }


def experiment_record(summary: dict[str, Any], selection: dict[str, Any]) -> dict[str, Any]:
    """What the chosen model carries (ONNX metadata, model card): the groups and the choice, not every trial."""
    keys = ("name", "select", "trials", "completed", "failed", "groups")
    return {**{k: summary[k] for k in keys}, "selected": selection}


# --- the summary's files -----------------------------------------------------------------------


def write_summary(summary: dict[str, Any], selection: dict[str, Any] | None, paths: ExperimentPaths) -> None:
    atomic_write(paths.summary_json, json.dumps(summary, indent=1) + "\n")
    atomic_write(paths.summary_md, markdown(summary, selection))
    _plot(summary, selection, paths)


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mean_std(stats: dict[str, Any]) -> str:
    return "–" if stats["mean"] is None else f"{stats['mean']:.4f} ± {_number(stats['std'])}"


def _point(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "base"


def markdown(summary: dict[str, Any], selection: dict[str, Any] | None) -> str:
    """summary.md: the groups (mean ± sample std, min, max), the choice, then every trial."""
    lines = [
        f"# Experiment {summary['name']}",
        "",
        f"{summary['trials']} trials: {summary['completed']} completed, {summary['failed']} failed. "
        f"Selection on {summary['select']} (validation only).",
        "",
    ]
    if selection:
        lines += [f"Selected: trial {selection['trial']} of group {selection['group']} ({_point(selection['overrides'])}).", ""]
    lines += [
        "| group | overrides | n | failed | val accuracy mean ± std | min | max | val loss mean ± std | min | max |",
        "| ---: | --- | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for g in summary["groups"]:
        acc, loss = g["val_accuracy"], g["val_loss"]
        lines.append(
            f"| {g['group']} | {_point(g['overrides'])} | {acc['n']} | {g['failed']} | {_mean_std(acc)} | {_number(acc['min'])} | "
            f"{_number(acc['max'])} | {_mean_std(loss)} | {_number(loss['min'])} | {_number(loss['max'])} |"
        )
    lines += [
        "",
        "| trial | group | seed | fold | status | best epoch | val accuracy | val loss | epochs | seconds |",
        "| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in summary["trial_rows"]:
        status = r["status"] if r["status"] == "completed" else f"failed (exit {r['exit_code']})"
        lines.append(
            f"| {r['index']} | {r['group']} | {r['seed']} | {'–' if r['fold'] is None else r['fold']} | {status} | "
            f"{r['best_epoch'] or '–'} | {_number(r['val_accuracy'])} | {_number(r['val_loss'])} | {r['epochs'] or '–'} | {_number(r['seconds'], 1)} |"
        )
    return "\n".join(lines) + "\n"


def _plot(summary: dict[str, Any], selection: dict[str, Any] | None, paths: ExperimentPaths) -> None:
    """summary.png: each trial's best validation accuracy and loss per group, with the group's mean ± std."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    groups = summary["groups"]
    fig = Figure(figsize=(min(MAX_PLOT_INCHES, max(6, 0.6 * len(groups) + 2)), 7), dpi=100)
    for position, metric in enumerate(METRICS, start=1):
        ax = fig.add_subplot(2, 1, position)
        done = [r for r in summary["trial_rows"] if r["status"] == "completed"]
        ax.scatter([r["group"] for r in done], [r[metric] for r in done], color="tab:blue", alpha=0.6, label="trial")
        means = [g for g in groups if g[metric]["n"]]
        ax.errorbar(
            [g["group"] for g in means], [g[metric]["mean"] for g in means], yerr=[g[metric]["std"] or 0 for g in means],
            fmt="_", color="black", markersize=16, capsize=6, label="mean ± std",
        )  # fmt: skip
        if selection:
            chosen = next(r for r in done if r["index"] == selection["trial"])
            ax.scatter([chosen["group"]], [chosen[metric]], marker="*", s=200, color="tab:red", label=f"selected (trial {chosen['index']})")
        if len(groups) <= MAX_GROUP_TICKS:
            ax.set_xticks([g["group"] for g in groups], [str(g["group"]) for g in groups])
        ax.set(xlabel="group", ylabel=f"best {metric}")
        ax.grid(alpha=0.3)
    fig.axes[0].set_title(f"Experiment {summary['name']}: best validation figures per trial")
    fig.axes[0].legend()
    with atomic_path(paths.summary_png) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
