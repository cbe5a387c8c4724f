"""Per-epoch training history as JSON, CSV and PNG plots (train against validation)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from job.core.atomic import atomic_path, atomic_write
from job.core.paths import RunPaths

PLOTS = {"loss": "Loss (categorical cross-entropy)", "accuracy": "Accuracy", "learning_rate": "Learning rate (at the epoch's end)"}


def write_history(history: list[dict[str, Any]], paths: RunPaths) -> None:
    """Rewrite all three forms from the full history; cheap enough to do every epoch."""
    atomic_write(paths.history_json, json.dumps(history, indent=1))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write(paths.history_csv, buffer.getvalue())
    paths.plots_dir.mkdir(exist_ok=True)
    for metric, title in PLOTS.items():
        _plot(history, metric, title, paths)


def _plot(history: list[dict[str, Any]], metric: str, title: str, paths: RunPaths) -> None:
    """One metric per epoch, train against validation where both exist; epochs are whole numbers on the axis."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    ax.plot(epochs, [row[metric] for row in history], marker="o", label="train")
    if f"val_{metric}" in history[0]:
        ax.plot(epochs, [row[f"val_{metric}"] for row in history], marker="o", label="validation")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    best = min(history, key=lambda row: row["val_loss"])["epoch"]
    ax.axvline(best, color="grey", linestyle=":", label=f"best epoch ({best})")
    ax.set(title=title, xlabel="epoch", ylabel=metric)
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_path(paths.plots_dir / f"{metric}.png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
