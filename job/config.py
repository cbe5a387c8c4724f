"""One typed config whose defaults are the reference recipe.

Layers, later wins: defaults < YAML file (`--config`) < environment (`CIFAR_JOB_<SECTION>_<KEY>`,
e.g. `CIFAR_JOB_TRAIN_EPOCHS=10`) < command-line flags. Every value is validated before any
work starts; an unknown key, a wrong type or an out-of-range value is a `ConfigError` that
names the key, where it came from and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from job.atomic import atomic_write
from job.errors import ConfigError

CANONICAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CANONICAL_MD5 = "c58f30108f718f92721af3b95e74349a"
ENV_PREFIX = "CIFAR_JOB_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    source: str = Field(CANONICAL_URL, description="CIFAR-10 python archive (.tar.gz), extracted directory, or http(s) URL.")
    checksum: str | None = Field(
        None,
        pattern=r"^(none|md5:[0-9a-f]{32}|sha256:[0-9a-f]{64})$",
        description="Expected archive checksum as md5:HEX or sha256:HEX; 'none' skips it. "
        "Unset: the canonical md5 for the canonical URL, no check otherwise.",
    )
    cache_dir: Path = Field(Path("~/.cache/cifar-job"), description="Where downloaded archives are kept.")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the 50,000 training images held out for validation.")
    split_seed: int = Field(1337, ge=0, description="Seed of the random train/validation split.")
    train_limit: int | None = Field(None, ge=10, description="Use only the first N training images (before the split); for smoke runs.")
    test_limit: int | None = Field(None, ge=1, description="Use only the first N test images; for smoke runs.")
    max_archive_bytes: int = Field(1 << 30, ge=1, description="Refuse archives (downloaded or extracted) larger than this.")


class ModelConfig(_Section):
    name: str = Field("reference_cnn", description="Architecture from the model registry.")


class TrainConfig(_Section):
    epochs: int = Field(75, ge=1, le=10_000, description="Maximum number of epochs.")
    batch_size: int = Field(32, ge=1, le=65_536, description="Global batch size (split across GPUs).")
    learning_rate: float = Field(0.01, gt=0, le=10, description="Initial SGD learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    lr_decay: float = Field(0.01 / 75, ge=0, description="Time-based decay: lr_t = lr / (1 + lr_decay * step).")
    patience: int = Field(5, ge=0, description="Early stopping: epochs without validation-loss improvement.")
    min_delta: float = Field(0.0, ge=0, description="Early stopping: smallest decrease that counts as improvement.")
    augment: bool = Field(True, description="Apply the reference augmentation to training batches.")
    rotation_degrees: float = Field(15.0, ge=0, le=180, description="Random rotation range, degrees.")
    shift_fraction: float = Field(0.1, ge=0, lt=1, description="Random horizontal and vertical shift, fraction of the size.")
    horizontal_flip: bool = Field(True, description="Random horizontal flip.")
    seed: int = Field(42, ge=0, description="Seed for weights, shuffling, augmentation and dropout.")
    deterministic: bool = Field(False, description="Deterministic TensorFlow ops (slower; bit-exact reruns).")
    mixed_precision: bool = Field(False, description="float16 compute on GPU (ignored on CPU).")
    device: Literal["auto", "gpu", "cpu"] = Field("auto", description="auto: every visible GPU, else the CPU; gpu: fail (exit 7) without one; cpu: ignore GPUs.")


class ExportConfig(_Section):
    opset: int = Field(17, ge=13, le=18, description="ONNX opset; 17 needs onnxruntime >= 1.13 in the server (Triton, KServe); 13 for older runtimes.")
    parity_images: int = Field(
        1000, ge=1, description="Real images compared between Keras and onnxruntime (test images, topped up from validation/training)."
    )
    parity_atol: float = Field(1e-4, gt=0, description="Largest allowed absolute difference of probabilities.")


class ValidateConfig(_Section):
    device: Literal["auto", "gpu", "cpu"] = Field("auto", description="onnxruntime execution provider: auto prefers CUDA.")
    batch_size: int = Field(256, ge=1, description="Inference batch size.")


class GateConfig(_Section):
    min_accuracy: float = Field(0.7562, ge=0, le=1, description="Lowest test accuracy that passes (reference study: 0.7562).")
    min_weighted_f1: float = Field(0.7539, ge=0, le=1, description="Lowest weighted F1 that passes (reference study: 0.7539).")
    max_regression: float | None = Field(
        None, ge=0, le=1, description="If set, fail when accuracy or weighted F1 is more than this below the published model's."
    )


class PublishConfig(_Section):
    root: Path = Field(Path("models"), description="Serving repository: <root>/<model_name>/<version>/model.onnx.")
    model_name: str = Field("cifar10-cnn", pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$", description="Model name in the serving repository.")


class MetricsConfig(_Section):
    port: int = Field(0, ge=0, le=65535, description="Port of the /metrics endpoint; 0 turns it off.")
    address: str = Field("127.0.0.1", description="Address the /metrics endpoint binds to (0.0.0.0 in a pod).")
    pushgateway_url: str | None = Field(
        None, pattern=r"^https?://[^\s/]+(/\S*)?$", description="Pushgateway base URL (http://host:9091) for the run's outcome; unset: no push."
    )
    job_name: str = Field("cifar-job", min_length=1, description="Pushgateway grouping key 'job'.")
    run_id: str | None = Field(None, description="Pushgateway grouping key 'run_id'; default: the run directory's name.")
    linger_seconds: float = Field(
        0.0, ge=0, le=3600, description="After the run ends, keep /metrics up until it is scraped once more, at most this long."
    )


class Config(_Section):
    out: Path = Field(Path("runs/cifar10"), description="Run directory: checkpoints, history, ONNX model, reports.")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    gate: GateConfig = GateConfig()
    publish: PublishConfig = PublishConfig()
    metrics: MetricsConfig = MetricsConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def training_digest(self) -> str:
        """sha256 of everything that determines the trained weights (data, model, train)."""
        d = self.to_dict()
        relevant = {k: d[k] for k in ("data", "model", "train")}
        relevant["data"] = {k: v for k, v in relevant["data"].items() if k not in ("cache_dir", "source")}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()

    def write(self, path: Path) -> None:
        atomic_write(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


SECTIONS = {name: field.annotation for name, field in Config.model_fields.items() if field.annotation is not Path}
SECTION_NAMES = [Config.model_fields[n].alias or n for n in SECTIONS]


def load_config(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Merge the layers and validate; `overrides` maps dotted keys (`train.epochs`) to flag values."""
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if file is not None:
        _merge(merged, sources, _read_yaml(file), str(file))
    _merge(merged, sources, _env_layer(os.environ if env is None else env), "environment")
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    _merge(merged, sources, _nest(flags), "command line")
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_describe(e, sources)) from None


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(Path(file).read_text())
    except OSError as e:
        raise ConfigError(f"config file {file}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {file}{where}: not valid YAML") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {file}: expected a mapping of sections, got {type(loaded).__name__}")
    return loaded


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    """CIFAR_JOB_OUT and CIFAR_JOB_<SECTION>_<KEY>; anything else under the prefix is an error."""
    layer: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if rest == "out":
            layer["out"] = value
            continue
        section, _, key = rest.partition("_")
        if section not in SECTION_NAMES or not key:
            raise ConfigError(
                f"environment variable {name}: unknown; expected {ENV_PREFIX}OUT or {ENV_PREFIX}<SECTION>_<KEY> "
                f"with SECTION one of {', '.join(s.upper() for s in SECTION_NAMES)}"
            )
        layer.setdefault(section, {})[key] = None if value == "" else value
    return layer


def _nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        section, _, leaf = key.partition(".")
        if leaf:
            nested.setdefault(section, {})[leaf] = value
        else:
            nested[section] = value
    return nested


def _merge(into: dict[str, Any], sources: dict[str, str], layer: Mapping[str, Any], source: str) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and key in SECTION_NAMES:
            section = into.setdefault(key, {})
            if not isinstance(section, dict):
                section = into[key] = {}
            for leaf, leaf_value in value.items():
                section[leaf] = leaf_value
                sources[f"{key}.{leaf}"] = source
        else:
            into[key] = value
            sources[str(key)] = source


def _describe(error: ValidationError, sources: Mapping[str, str]) -> str:
    """The first problem as one line: key, where it came from, what is wrong, what is expected."""
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    source = sources.get(key) or sources.get(key.split(".")[0], "defaults")
    if first["type"] == "extra_forbidden":
        return f"config key {key} (from {source}): unknown key; expected one of: {_known_keys(first['loc'])}"
    got = first.get("input")
    message = first["msg"][:1].lower() + first["msg"][1:]  # lower the first letter only: patterns keep their case
    return f"config key {key} (from {source}): {message}, got {got!r}"


def _known_keys(loc: tuple[Any, ...]) -> str:
    if len(loc) == 1:
        return ", ".join(["out", *SECTION_NAMES])
    section = SECTIONS.get(loc[0]) or SECTIONS.get(f"{loc[0]}_")
    return ", ".join(section.model_fields) if section else "?"


def reference_markdown() -> str:
    """Every key with its default and meaning, as the README's configuration table."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    defaults = Config().to_dict()
    lines.append(f"| `out` | `{defaults['out']}` | {Config.model_fields['out'].description} |")
    for name, section in SECTIONS.items():
        alias = Config.model_fields[name].alias or name
        for key, field in section.model_fields.items():
            default = defaults[alias][key]
            shown = "unset" if default is None else f"`{default}`"
            lines.append(f"| `{alias}.{key}` | {shown} | {field.description} |")
    return "\n".join(lines) + "\n"
