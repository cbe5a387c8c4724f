"""What validation leaves behind: metrics.json (stable keys, for machines), a Markdown model card and
a confusion-matrix plot (for people). Everything is written atomically, metrics.json last: it is
the completion marker of the validate stage.

The model card describes the model from its own metadata (written at export), so it stays true
whatever config the validating command was given.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import numpy as np

from export.gate import GateResult
from export.modelfile import metadata_json
from export.scores import Measurement
from job.core.atomic import atomic_path, atomic_write
from job.core.paths import RunPaths

SCHEMA_VERSION = 1


def write_reports(result: Measurement, test_set: dict[str, Any], gate: GateResult, meta: dict[str, str], paths: RunPaths) -> dict[str, Any]:
    document = metrics_document(result, test_set, gate, meta)
    plot_confusion(result, paths)
    atomic_write(paths.model_card, model_card(document, meta))
    atomic_write(paths.metrics_json, json.dumps(document, indent=2) + "\n")
    return document


def metrics_document(result: Measurement, test_set: dict[str, Any], gate: GateResult, meta: dict[str, str]) -> dict[str, Any]:
    """The content of metrics.json; keys are a stable interface (bump SCHEMA_VERSION to change them)."""
    latencies_ms = np.asarray(result.batch_latencies_s) * 1000
    return {
        "schema_version": SCHEMA_VERSION,
        "validated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": {
            "sha256": result.model_sha256,
            "architecture": meta.get("architecture", ""),
            "onnx_opset": meta.get("onnx_opset", ""),
            "training_config_digest": meta.get("training_config_digest", ""),
            "dataset_sha256": meta.get("dataset_sha256", ""),
            "weights_sha256": meta.get("weights_sha256", ""),
        },
        "data": {**test_set, "images": result.images},
        "class_names": list(result.class_names),
        "accuracy": result.accuracy,
        "macro_f1": result.macro_f1,
        "weighted_f1": result.weighted_f1,
        "per_class": result.per_class,
        "confusion_matrix": result.confusion_matrix,
        "inference": {
            "device": result.device,
            "providers": list(result.providers),
            "batch_size": result.batch_size,
            "images_per_second": result.images_per_second,
            "batch_latency_ms": {
                "p50": float(np.percentile(latencies_ms, 50)),
                "p95": float(np.percentile(latencies_ms, 95)),
                "max": float(latencies_ms.max()),
            },
            "per_image_latency_ms": float(latencies_ms.sum() / result.images),
        },
        "gate": gate.to_json(),
        "duration_s": result.duration_s,
    }


def model_card(doc: dict[str, Any], meta: dict[str, str]) -> str:
    """A Markdown model card: model, data, recipe, metrics, per-class table, confusion matrix, provenance."""
    training = metadata_json(meta, "training_config")
    dataset = metadata_json(meta, "dataset")
    names = doc["class_names"]
    gate = doc["gate"]
    inference = doc["inference"]
    lines = [
        f"# Model card: {training.get('model', {}).get('name', 'model')} (CIFAR-10)",
        "",
        "## Model",
        "",
        f"- Architecture: {meta.get('architecture', 'unknown')}",
        f"- Parameters: {meta.get('parameters', 'unknown')}",
        f"- Input `{meta.get('input_name', '')}`: {meta.get('input_layout', '')}; scaling: {meta.get('input_scaling', '')}",
        f"- Output `{meta.get('output_name', '')}`: {meta.get('output_meaning', '')}",
        f"- Format: ONNX opset {meta.get('onnx_opset', '?')}; sha256 `{doc['model']['sha256']}`",
        "",
        "## Data",
        "",
        f"- Source: `{dataset.get('source', '?')}` (sha256 `{meta.get('dataset_sha256') or 'n/a: directory'}`)",
        f"- Training {dataset.get('train_images', '?')}, validation {dataset.get('validation_images', '?')}, "
        f"test {dataset.get('test_images', '?')} images; test metrics below are on {doc['data']['images']} test images",
        f"- Test set measured: `{doc['data']['source']}`, fingerprint `{doc['data']['fingerprint'][:16]}`: "
        + ("the test split of the training data set" if doc["data"]["training_data"]
           else "**not the data set the model was trained on** (validate.allow_other_test_set)"),
        "",
        "## Training recipe",
        "",
        "| setting | value |",
        "| --- | --- |",
        *(f"| {key} | {value} |" for key, value in training.get("train", {}).items()),
        "",
        *_experiment_section(metadata_json(meta, "experiment")),
        "## Test metrics",
        "",
        f"- Accuracy: **{doc['accuracy']:.4f}**",
        f"- Weighted F1: **{doc['weighted_f1']:.4f}**; macro F1: {doc['macro_f1']:.4f}",
        f"- Quality gate: **{'passed' if gate['passed'] else 'failed'}** (accuracy >= {gate['thresholds']['min_accuracy']}, "
        f"weighted F1 >= {gate['thresholds']['min_weighted_f1']}"
        + (f", at most {gate['thresholds']['max_regression']} below the published model" if gate["thresholds"]["max_regression"] is not None else "")
        + ")",
        *(f"  - {failure}" for failure in gate["failures"]),
        "",
        "### Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
            for name, c in doc["per_class"].items()
        ),
        "",
        "### Confusion matrix",
        "",
        "Rows: true class; columns: predicted class.",
        "",
        "| true \\ predicted | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
        *(f"| {name} | " + " | ".join(map(str, row)) + " |" for name, row in zip(names, doc["confusion_matrix"], strict=True)),
        "",
        "![Confusion matrix](confusion_matrix.png)",
        "",
        "## Inference",
        "",
        f"- onnxruntime providers: {', '.join(inference['providers'])} (requested: {inference['device']})",
        f"- Batch {inference['batch_size']}: {inference['images_per_second']:.0f} images/s; batch latency p50 "
        f"{inference['batch_latency_ms']['p50']:.1f} ms, p95 {inference['batch_latency_ms']['p95']:.1f} ms",
        "",
        "## Provenance",
        "",
        f"- Training config digest: `{meta.get('training_config_digest', '')}`",
        f"- Weights sha256: `{meta.get('weights_sha256', '')}`",
        f"- Dataset sha256: `{meta.get('dataset_sha256') or 'n/a'}`",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in metadata_json(meta, 'versions').items())}",
        f"- Validated: {doc['validated_at']}",
        "",
    ]
    return "\n".join(lines)


def _experiment_section(experiment: dict[str, Any]) -> list[str]:
    """How an experiment chose this model, when one did: its groups and the choice, on validation results only."""
    if not experiment:
        return []
    chosen = experiment["selected"]
    metric = chosen["select"]

    def mean_std(stats: dict[str, Any]) -> str:
        return "–" if stats["mean"] is None else f"{stats['mean']:.4f} ± {'–' if stats['std'] is None else format(stats['std'], '.4f')}"

    return [
        "## Experiment",
        "",
        f"Chosen by experiment `{experiment['name']}` ({experiment['trials']} trials, {experiment['failed']} failed): trial "
        f"{chosen['trial']} of group {chosen['group']}, the group with the best mean {metric} "
        f"({chosen['group_mean']:.4f}) and its best trial ({chosen['trial_value']:.4f}); the test set played no part.",
        "",
        "| group | overrides | n | val accuracy mean ± std | val loss mean ± std |",
        "| ---: | --- | ---: | --- | --- |",
        *(
            f"| {g['group']} | {', '.join(f'{k}={v}' for k, v in g['overrides'].items()) or 'base'} | {g['val_accuracy']['n']} | "
            f"{mean_std(g['val_accuracy'])} | {mean_std(g['val_loss'])} |"
            for g in experiment["groups"]
        ),
        "",
    ]


def plot_confusion(result: Measurement, paths: RunPaths) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    cm = np.asarray(result.confusion_matrix)
    fig = Figure(figsize=(8, 7), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = range(len(result.class_names))
    ax.set_xticks(ticks, result.class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, result.class_names)
    for (row, col), count in np.ndenumerate(cm):
        ax.text(col, row, str(count), ha="center", va="center", fontsize=8, color="white" if count > cm.max() / 2 else "black")
    ax.set(xlabel="predicted class", ylabel="true class", title=f"Confusion matrix (accuracy {result.accuracy:.4f}, {result.images} test images)")
    with atomic_path(paths.confusion_png) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
