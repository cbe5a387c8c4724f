"""What validation leaves behind: metrics.json (stable keys, for machines), a Markdown model card and
a confusion-matrix plot (for people). Everything is written atomically, metrics.json last: it is
the completion marker of the validate stage.

The model card describes the model from its own metadata (written at export) and claims a recipe
or how training ended only from a config and a train.json whose training digest is the model's,
so it stays true whatever config the validating or publishing command was given. Publishing
writes the same card, from what it measured itself, into each version (export/publish.py); a
variant's card is its float model's, headed by what the variant is and how it measured.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from export import software
from export.gate import GateResult
from export.modelfile import metadata_json
from export.scores import Measurement
from job.config.settings import Config
from job.core.atomic import atomic_path, atomic_write
from job.core.bounded import read_bounded
from job.core.errors import ModelFileError
from job.core.paths import RunPaths
from job.core.records import MAX_RECORD_BYTES, strict_json
from job.models.contract import CHANNELS, IMAGE_SHAPE

SCHEMA_VERSION = 1
TRAINING_FIELDS = {"best_epoch": int, "epochs_run": int, "stopped_early": bool, "config_digest": str, "dataset_fingerprint": str}


@dataclass(frozen=True)
class Lineage:
    """How the model came to be, as far as records bound to it by its training config digest say."""

    architecture: str | None  # model.name, from the model's own training config
    recipe: str | None  # None: the config at hand did not train this model
    training: dict[str, Any] | None  # train.json (TRAINING_FIELDS); None: the run directory holds no record of this training
    keep: str = "best"  # train.keep of the model's own training config: which epoch's weights these are


def write_reports(
    result: Measurement, test_set: dict[str, Any], gate: GateResult, meta: dict[str, str], paths: RunPaths, config: Config
) -> dict[str, Any]:
    """metrics.json, the card and the plot; the card names `config`'s recipe only if that config trained the model."""
    document = metrics_document(result, test_set, gate, meta)
    plot_confusion(result, paths)
    card = model_card(document, meta, lineage(config, paths, meta), plot=paths.confusion_png.name)
    atomic_write(paths.model_card, card)
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
        "runtime": software.runtime(),
        "duration_s": result.duration_s,
    }


def lineage(config: Config, paths: RunPaths, meta: Mapping[str, str]) -> Lineage:
    """The model's architecture, and its recipe only if `config` trained it (the same training digest)."""
    digest = meta.get("training_config_digest", "")
    trained_by = metadata_json(meta, "training_config")
    architecture = _section(trained_by, "model").get("name")
    recipe = config.recipe if digest and config.training_digest() == digest else None
    keep = "last" if _section(trained_by, "train").get("keep") == "last" else "best"
    return Lineage(architecture if isinstance(architecture, str) else None, recipe, _training_record(paths, meta), keep)


def _section(training_config: Any, section: str) -> dict[str, Any]:
    """One section of the training config stamped into the model; {} where that metadata has another shape."""
    values = training_config.get(section) if isinstance(training_config, dict) else None
    return values if isinstance(values, dict) else {}


def _training_record(paths: RunPaths, meta: Mapping[str, str]) -> dict[str, Any] | None:
    """train.json if it records the training of this model (its config digest and data set); read strictly."""
    path, where = paths.train_result, f"record {paths.train_result}"
    if not path.exists():
        return None
    try:
        record = strict_json(read_bounded(path, MAX_RECORD_BYTES, ModelFileError, where))
    except (ValueError, RecursionError):
        record = None
    if not isinstance(record, dict) or any(type(record.get(key)) is not kind for key, kind in TRAINING_FIELDS.items()):
        raise ModelFileError(f"{where}: not a record this version of cifar-job wrote ({', '.join(TRAINING_FIELDS)})")
    bound = (record["config_digest"], record["dataset_fingerprint"]) == (meta.get("training_config_digest"), meta.get("dataset_fingerprint"))
    return record if bound else None


def model_card(doc: dict[str, Any], meta: dict[str, str], about: Lineage, header: str = "", plot: str | None = None) -> str:
    """A Markdown model card: model, intended use, limitations, data, recipe and how training ended, metrics, per-class
    table, confusion matrix (and its `plot` beside the card, if any), provenance; `header` (a variant's) follows the title."""
    training = metadata_json(meta, "training_config")
    dataset = metadata_json(meta, "dataset")
    names = doc["class_names"]
    gate = doc["gate"]
    inference = doc["inference"]
    lines = [
        f"# Model card: {about.architecture or 'model'} (CIFAR-10)",
        "",
        *([header, ""] if header else []),
        "## Model",
        "",
        f"- Architecture: {meta.get('architecture', 'unknown')}",
        f"- Parameters: {meta.get('parameters', 'unknown')}",
        f"- Input `{meta.get('input_name', '')}`: {meta.get('input_layout', '')}; scaling: {meta.get('input_scaling', '')}",
        f"- Output `{meta.get('output_name', '')}`: {meta.get('output_meaning', '')}",
        f"- Format: ONNX opset {meta.get('onnx_opset', '?')}; sha256 `{doc['model']['sha256']}`",
        "",
        *_intended_use(names),
        *_limitations(doc),
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
        *_how_trained(about),
        "",
        "| setting | value |",
        "| --- | --- |",
        *(f"| {key} | {value} |" for key, value in _section(training, "train").items()),
        "",
        *_experiment_section(metadata_json(meta, "experiment")),
        "## Test metrics",
        "",
        f"- Accuracy: **{doc['accuracy']:.4f}**",
        f"- Weighted F1: **{doc['weighted_f1']:.4f}**; macro F1: {doc['macro_f1']:.4f}",
        f"- Quality gate: **{'passed' if gate['passed'] else 'failed'}** ({_gate_terms(gate['thresholds'])})",
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
        *([f"![Confusion matrix]({plot})", ""] if plot else []),
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
        *_runtime_lines(doc["runtime"]),
        f"- Validated: {doc['validated_at']}",
        "",
    ]
    return "\n".join(lines)


def _runtime_lines(runtime: dict[str, Any]) -> list[str]:
    """The image that measured the model and its SBOM, where known (in the image; see export/software.py)."""
    image, sbom = runtime["image"], runtime["sbom"]
    named = f"`{sbom['path']}` ({sbom['format']}, sha256 `{sbom['sha256']}`)" if sbom else "none (not run from the image)"
    return [f"- Measured in image: `{image}`" if image else "- Measured in image: not known (not run from it, or not named)", f"- Image SBOM: {named}"]


def _intended_use(names: list[str]) -> list[str]:
    """What the model is for: the contract's images of the data set's classes, as a reference, nothing else."""
    height, width, _ = IMAGE_SHAPE
    return [
        "## Intended use",
        "",
        f"- Classifying CIFAR-10-like {height}x{width} {CHANNELS} images into its {len(names)} classes: {', '.join(names)}.",
        "- A reference and teaching model: not for images of other domains, sizes or classes (it still answers with one of "
        "these classes), and not for decisions about people.",
        "",
    ]


def _limitations(doc: dict[str, Any]) -> list[str]:
    """What the numbers do not cover: the one data set they were measured on, per-class differences, untested properties."""
    data = doc["data"]
    recall = {name: c["recall"] for name, c in doc["per_class"].items()}
    worst, best = min(recall, key=recall.__getitem__), max(recall, key=recall.__getitem__)
    return [
        "## Limitations",
        "",
        f"- Trained and measured only on CIFAR-10: {data['images']} test images of `{data['source']}` "
        f"(sha256 `{data['sha256'] or 'n/a: directory'}`). The numbers hold for that copy; one whose pixels differ from "
        "the canonical archive (a rebuild from JPEG copies, say) gives other numbers.",
        f"- Accuracy differs by class: recall from {recall[worst]:.4f} ({worst}) to {recall[best]:.4f} ({best}); see Per class.",
        "- No robustness evaluation (noise, blur, other resolutions, distribution shift, adversarial inputs) and no "
        "fairness evaluation has been done.",
        "",
    ]


def _how_trained(about: Lineage) -> list[str]:
    """The recipe, the best epoch and why training stopped, or why the card cannot say."""
    recipe = (f"- Recipe `{about.recipe}` of model `{about.architecture}`" if about.recipe is not None
              else f"- Model `{about.architecture or 'unknown'}`; recipe not known (the config at hand did not train this model)")  # fmt: skip
    record = about.training
    if record is None:
        return [recipe, "- Best epoch and stop reason not known: the run directory holds no train.json of this model's training"]
    stop = "early stopping (validation loss stopped improving for train.patience epochs)" if record["stopped_early"] else "the epoch limit (train.epochs)"
    epochs = f"epoch {record['best_epoch']} of {record['epochs_run']}"
    kept = f"Last {epochs} (train.keep=last" if about.keep == "last" else f"Best {epochs} (lowest validation loss"
    return [recipe, f"- {kept}: these weights); stopped by {stop}"]


def _gate_terms(thresholds: Mapping[str, Any]) -> str:
    """The gate's thresholds in words: the float model's floors and regression cap, or a variant's drop from its float model."""
    if "max_accuracy_drop" in thresholds:
        return f"accuracy at most {thresholds['max_accuracy_drop']} below the float model's {thresholds['float_accuracy']:.4f}"
    cap = thresholds["max_regression"]
    return f"accuracy >= {thresholds['min_accuracy']}, weighted F1 >= {thresholds['min_weighted_f1']}" + (
        f", at most {cap} below the published model" if cap is not None else ""
    )


def variant_header(variant: Mapping[str, Any], accuracy: float) -> str:
    """What heads a variant's card: which variant, its own accuracy and agreement, and the float model it derives from."""
    source, agreement = variant["derived_from"], variant["parity"]
    return (
        f"> **{variant['kind'].upper()} variant** of `{source['name']}` version {source['version']} (model.onnx sha256 "
        f"`{source['sha256']}`). Its own test accuracy {accuracy:.4f} (the float model's {variant['float_accuracy']:.4f}, "
        f"measured in the same run on the same images); top-1 agreement with the float model {agreement['top1_agreement']:.2%}, "
        f"largest probability difference {agreement['max_abs_difference']:.2g}. The rest is the float model's card, "
        "with this variant's own file and test metrics."
    )


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
