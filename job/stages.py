"""`cifar-job run`: train -> export -> validate -> publish, resuming at the first incomplete stage.

A stage is complete when its marker exists and still matches its inputs: train.json holds
the training config digest, export.json the sha256 of the weights it converted (and its
settings) and of the model it wrote, metrics.json the sha256 of the model it measured,
publish.json the sha256 of the model it published and where. A stage that is redone changes
what the next one finds, so every later stage is redone too and no stale artifact is reused.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from export.modelfile import sha256_file
from export.onnx import export_onnx
from export.publish import publish_model
from export.repository import MODEL_FILE
from export.validate import validate_model
from job.config import Config
from job.data import CifarData, load_dataset
from job.metrics import RunMetrics
from job.paths import RunPaths

log = logging.getLogger(__name__)

STAGES = ("train", "export", "validate", "publish")


def _marker(path: Path) -> dict[str, Any]:
    """A marker's JSON object; {} when missing, unreadable or of another shape (the stage is then redone)."""
    try:
        marker = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _sha256(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def _trained(config: Config, paths: RunPaths) -> bool:
    marker = _marker(paths.train_result)
    return bool(marker) and marker.get("config_digest") == config.training_digest() and paths.best_weights.is_file()


def _exported(config: Config, paths: RunPaths) -> bool:
    marker = _marker(paths.export_result)
    return (
        bool(marker)
        and marker.get("settings") == config.export.model_dump(mode="json")
        and marker.get("weights_sha256") == _sha256(paths.best_weights)
        and marker.get("onnx_sha256") == _sha256(paths.onnx)
    )


def _validated(config: Config, paths: RunPaths) -> bool:
    marker = _marker(paths.metrics_json)
    model = marker.get("model")
    return isinstance(model, dict) and model.get("sha256") == _sha256(paths.onnx)


def _published(config: Config, paths: RunPaths) -> bool:
    marker = _marker(paths.publish_result)
    if marker.get("validated_sha256") != _sha256(paths.onnx) or not isinstance(marker.get("directory"), str):
        return False
    where = Path(marker["directory"])
    return where.parent == config.publish.root / config.publish.model_name and marker.get("sha256") == _sha256(where / MODEL_FILE)


_COMPLETE = {"train": _trained, "export": _exported, "validate": _validated, "publish": _published}


def first_incomplete(config: Config, paths: RunPaths) -> str | None:
    """The first stage whose marker is missing or stale; None when the whole run is done."""
    return next((stage for stage in STAGES if not _COMPLETE[stage](config, paths)), None)


def run_stages(config: Config, paths: RunPaths, metrics: RunMetrics) -> list[tuple[str, Any]]:
    """Run from the first incomplete stage to the end; `metrics` times each stage and records its result."""
    start = first_incomplete(config, paths)
    if start is None:
        log.info("run %s: every stage is complete; nothing to do", paths.root)
        return []
    todo = STAGES[STAGES.index(start) :]
    log.info("run %s: %s %s", paths.root, "starting with" if start == "train" else "resuming at", " -> ".join(todo))
    dataset = functools.cache(lambda: load_dataset(config.data))  # loaded once for every stage
    runners = {
        "train": lambda: _train(config, paths, [metrics.keras_callback()], dataset()),
        "export": lambda: export_onnx(config, paths, dataset()),
        "validate": lambda: validate_model(config, paths, dataset()),
        "publish": lambda: publish_model(config, paths, dataset()),
    }
    results = []
    for stage in todo:
        with metrics.stage(stage):
            result = runners[stage]()
            metrics.record(stage, result)
        results.append((stage, result))
    return results


def _train(config: Config, paths: RunPaths, callbacks: Sequence[Any], data: CifarData) -> Any:
    from job.train import train_model  # imports Keras

    return train_model(config, paths, callbacks=callbacks, data=data)
