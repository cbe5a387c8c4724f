"""One typed config whose defaults are the reference recipe.

Layers, later wins: defaults < the run directory's recorded config (`<out>/config.yaml`, for the
commands that continue a run) < YAML file (`--config`) < environment (`CIFAR_JOB_<SECTION>_<KEY>`,
e.g. `CIFAR_JOB_TRAIN_EPOCHS=10`) < command-line flags. Every value is validated before any
work starts; an unknown key, a wrong type or an out-of-range value is a `ConfigError` that
names the key, where it came from and what was expected.

The input may be hostile (a ConfigMap, an environment, a command line written by someone
else), so reading it is bounded: the file's size, YAML's node count and nesting, every string's
length and characters; YAML anchors and aliases (the "billion laughs" bomb) and tags other than
plain maps, lists, strings, numbers, booleans and null are refused; and a message quotes at most
a short excerpt of any input.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from yaml._yaml import CParser  # libyaml's scanner: fast on a megabyte of anything
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent, ScalarEvent
from yaml.resolver import Resolver

from job.core.atomic import atomic_write
from job.core.bounded import read_bounded
from job.core.credentials import DATA_PASSWORD_FILE_ENV, DATA_USERNAME_ENV, PUSHGATEWAY_PASSWORD_FILE_ENV, PUSHGATEWAY_USERNAME_ENV
from job.core.errors import ConfigError
from job.core.paths import RunPaths
from job.config.recipes import DEFAULT, RECIPES, recipe_defaults, recipe_names, recipe_summary
from job.core.redact import redact_url, redact_values

CANONICAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CANONICAL_MD5 = "c58f30108f718f92721af3b95e74349a"
ENV_PREFIX = "CIFAR_JOB_"
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000  # CIFAR-10's two splits

MAX_FILE_BYTES = 1 << 20  # a real config is a few hundred bytes; a Kubernetes ConfigMap holds at most 1 MiB
MAX_YAML_NODES = 10_000
MAX_YAML_DEPTH = 10  # a config is 3 deep: sections, keys, values
MAX_TEXT = 4096  # longest string value (PATH_MAX); also keeps YAML integers within what Python parses
EXCERPT = 80  # most characters of an input a message quotes
SEED_BOUND = 2**32  # numpy and TensorFlow take seeds below 2**32
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"  # Pushgateway grouping-key values: safe in a URL path and a label


def excerpt(value: Any) -> str:
    """`repr(value)`, cut to EXCERPT characters: messages never echo a large or hostile input whole, nor a URL's password."""
    if isinstance(value, str):
        value = (redact_url(value) if "://" in value else value)[: EXCERPT + 1]
    try:
        text = repr(value)
    except ValueError:  # an integer with more digits than Python prints
        text = f"<integer of {value.bit_length()} bits>"
    return text if len(text) <= EXCERPT else text[: EXCERPT - 3] + "..."


def label(name: Any) -> str:
    """A key, variable or file name as given when short and printable, else its excerpt."""
    text = str(name)
    return text if len(text) <= 2 * EXCERPT and text.isprintable() else excerpt(text)


def _host(address: str) -> str:
    """An IP address or a DNS name: what the /metrics server can bind to."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        labels = address.removesuffix(".").split(".")
        if len(address) > 253 or not all(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", part) for part in labels):
            raise PydanticCustomError("host", "expected an IP address or a host name") from None
    return address


# A URL carrying `user:password@`, a query or a fragment, where tokens hide. RE2 syntax: Helm's
# schema check (values.schema.json) uses the same expression.
CREDENTIALS_IN_URL = r"^[A-Za-z][A-Za-z0-9+.-]*://([^/]*@|[^?#]*[?#])"


def _no_credentials(username_env: str, password_env: str, password_is: str = "a file holding the password, e.g. a mounted Secret") -> Any:
    """A URL that a recorded config may hold (see CREDENTIALS_IN_URL), for a field whose basic auth the two variables give.

    Whatever a config holds is recorded (config.yaml, the published model's metadata, a trial's
    record, a ConfigMap, a tracking server): credentials come from the environment and a mounted Secret file instead.
    """

    def check(url: str | None) -> str | None:
        if url is not None and re.match(CREDENTIALS_IN_URL, url):
            raise PydanticCustomError(
                "credentials",
                "credentials, a query or a fragment in a URL are refused (the config is recorded with the run and the published "
                "model); for basic auth set {username} and {password_file} ({password_is})",
                {"username": username_env, "password_file": password_env, "password_is": password_is},
            )
        return url

    return AfterValidator(check)


_NO_CREDENTIALS_SCHEMA = {"not": {"pattern": CREDENTIALS_IN_URL}}
# MLflow's own variables (its client reads them): the password, or a token, from the environment, never a recorded config.
MLFLOW_CREDENTIALS_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "or MLFLOW_TRACKING_TOKEN; MLflow reads them from the environment")


Seed = Annotated[int, Field(ge=0, lt=SEED_BOUND)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _bounded_printable_text(cls, value: Any) -> Any:
        """Paths, names and URLs with NUL, newlines or other control characters are never what a user meant."""
        if isinstance(value, str) and (len(value) > MAX_TEXT or not value.isprintable()):
            raise PydanticCustomError("text", "expected printable text of at most {max} characters", {"max": MAX_TEXT})
        return value

    @field_validator("*")
    @classmethod
    def _no_negative_zero(cls, value: Any) -> Any:
        """-0.0 means 0.0, and must hash the same in the training digest."""
        return 0.0 if isinstance(value, float) and value == 0 else value


def _conflict(key: str, problem: str) -> PydanticCustomError:
    """A value that is valid alone but not with the others; `key` (below the model's place) is the one to change."""
    return PydanticCustomError("conflict", "{problem}", {"key": key, "problem": problem})


class DataConfig(_Section):
    source: Annotated[str, _no_credentials(DATA_USERNAME_ENV, DATA_PASSWORD_FILE_ENV)] = Field(
        CANONICAL_URL,
        description="CIFAR-10 python archive (.tar.gz), extracted directory, or http(s) URL (credentials: DATA_USERNAME and DATA_PASSWORD_FILE, "
        "never in the URL).",
        json_schema_extra=_NO_CREDENTIALS_SCHEMA,
    )
    checksum: str | None = Field(
        None,
        pattern=r"^(none|md5:[0-9a-f]{32}|sha256:[0-9a-f]{64})$",
        description="Expected archive checksum as md5:HEX or sha256:HEX; 'none' skips it. "
        "Unset: the canonical md5 for the canonical URL, no check otherwise.",
    )
    cache_dir: Path = Field(Path("~/.cache/cifar-job"), description="Where downloaded archives are kept.")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the 50,000 training images held out for validation.")
    split_seed: Seed = Field(1337, description="Seed of the random train/validation split.")
    train_limit: int | None = Field(
        None, ge=10, le=TRAIN_IMAGES, description="Use only the first N training images (before the split); for smoke runs."
    )
    test_limit: int | None = Field(None, ge=1, le=TEST_IMAGES, description="Use only the first N test images; for smoke runs.")
    max_archive_bytes: int = Field(1 << 30, ge=1, le=1 << 40, description="Refuse archives (downloaded or extracted) larger than this.")
    folds: int | None = Field(
        None,
        ge=2,
        le=10,
        description="k-fold cross-validation: the training images are partitioned into this many stratified folds "
        "(seeded by split_seed) and fold `fold` is the validation split, in place of validation_fraction; unset: no folds.",
    )
    fold: int = Field(0, ge=0, le=9, description="With folds: which fold (0..folds-1) is the validation split.")

    def split_sizes(self) -> tuple[int, int, int]:
        """Images for (training, validation, test), counted as job/data/dataset.py's load_dataset splits them."""
        images = self.train_limit or TRAIN_IMAGES
        if self.folds:  # fold f holds the positions f, f + folds, f + 2 folds, ... of images
            validation = len(range(self.fold, images, self.folds))
        else:
            validation = int(round(images * self.validation_fraction))
        return images - validation, validation, self.test_limit or TEST_IMAGES

    @model_validator(mode="after")
    def _fold_is_one_of_the_folds(self) -> DataConfig:
        if self.folds is None and self.fold:
            raise _conflict("fold", f"fold {self.fold} without data.folds; set data.folds too")
        if self.folds is not None and self.fold >= self.folds:
            raise _conflict("fold", f"fold {self.fold} of {self.folds} folds; expected 0..{self.folds - 1}")
        return self

    @model_validator(mode="after")
    def _both_splits_have_images(self) -> DataConfig:
        training, validation, _ = self.split_sizes()
        if not (training and validation):
            raise _conflict(
                "validation_fraction",
                f"splits {training + validation} training images into {training} for training and {validation} for validation; "
                "both need at least one",
            )
        return self


_Width = Annotated[int, Field(ge=1, le=1024)]  # twice airbench96's widest; the bound keeps an edited config from allocating gigabytes


class ModelConfig(_Section):
    name: str = Field("reference_cnn", description="Architecture from the model registry.")
    widths: Annotated[list[_Width], Field(min_length=3, max_length=3)] | None = Field(
        None,
        description="airbench only: the widths of its three conv groups; unset, airbench94's 64/256/256 "
        "(airbench95's are 128/384/384).",
    )

    @model_validator(mode="after")
    def _widths_for_airbench(self) -> ModelConfig:
        if self.widths is not None and self.name != "airbench":
            raise _conflict("widths", f"{excerpt(self.name)} has fixed widths; only airbench takes model.widths")
        return self


class TrainConfig(_Section):
    epochs: int = Field(75, ge=1, le=10_000, description="Maximum number of epochs.")
    batch_size: int = Field(32, ge=1, le=65_536, description="Global batch size (split across GPUs).")
    learning_rate: float = Field(0.01, gt=0, le=10, description="SGD learning rate: the initial one (inverse_time) or the peak (one_cycle).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(False, description="Nesterov momentum.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="Decoupled weight decay: each step shrinks weights by weight_decay * lr_t.")
    lr_schedule: Literal["inverse_time", "one_cycle"] = Field(
        "inverse_time",
        description="inverse_time: lr_t = lr / (1 + lr_decay * step); one_cycle: linear from lr_start_factor * lr up to lr at "
        "warmup_fraction of the steps, then linear down to lr_end_factor * lr at the last step.",
    )
    lr_decay: float = Field(0.01 / 75, ge=0, description="inverse_time: decay per step.")
    warmup_fraction: float = Field(0.23, ge=0, le=1, description="one_cycle: share of the steps spent rising to the peak.")
    lr_start_factor: float = Field(0.2, ge=0, le=1, description="one_cycle: first learning rate, as a fraction of the peak.")
    lr_end_factor: float = Field(0.07, ge=0, le=1, description="one_cycle: last learning rate, as a fraction of the peak.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy loss.")
    patience: int = Field(5, ge=0, le=10_000, description="Early stopping: epochs without validation-loss improvement.")
    min_delta: float = Field(0.0, ge=0, description="Early stopping: smallest decrease that counts as improvement.")
    keep: Literal["best", "last"] = Field(
        "best",
        description="Which epoch's weights training keeps. best: the lowest validation loss (early stopping applies); "
        "last: the final epoch's, every epoch run (patience does not apply), for schedules that anneal to the end, where "
        "a small validation split cannot tell the last epochs apart.",
    )
    augment: bool = Field(True, description="Augment training batches.")
    augmentation: Literal["affine", "flip_crop"] = Field(
        "affine",
        description="affine: the study's rotation, shift and flip; flip_crop: horizontal flip and a whole-pixel translation "
        "of up to crop_pixels with reflected borders.",
    )
    crop_pixels: int = Field(2, ge=0, le=16, description="flip_crop: largest translation, pixels.")
    rotation_degrees: float = Field(15.0, ge=0, le=180, description="Random rotation range, degrees.")
    shift_fraction: float = Field(0.1, ge=0, lt=1, description="Random horizontal and vertical shift, fraction of the size.")
    horizontal_flip: bool = Field(True, description="Random horizontal flip.")
    alternating_flip: bool = Field(
        False,
        description="Flip each image in every other epoch (its first epoch's flip random) instead of tossing a coin each "
        "epoch: airbench's scheme, worth about a tenth more epochs of random flips in its ablations.",
    )
    lookahead_decay: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Lookahead averaging (airbench's): every 5 steps the weights move back toward a slow copy, keeping "
        "this share of it times (step / total steps)^3; training ends on the slow copy. 0: off; airbench: 0.95^5 = 0.774.",
    )
    seed: Seed = Field(42, description="Seed for weights, shuffling, augmentation and dropout.")
    deterministic: bool = Field(False, description="Deterministic TensorFlow ops (slower; bit-exact reruns).")
    mixed_precision: bool = Field(False, description="Mixed precision: float16 compute on GPUs, bfloat16 on CPUs with bfloat16 instructions (float32 on other CPUs, where emulated bfloat16 is slower); variables stay float32.")
    device: Literal["auto", "gpu", "cpu"] = Field("auto", description="auto: every visible GPU, else the CPU; gpu: fail (exit 7) without one; cpu: ignore GPUs.")


class ExportConfig(_Section):
    opset: int = Field(17, ge=13, le=18, description="ONNX opset; 17 needs onnxruntime >= 1.13 in the server (Triton, KServe); 13 for older runtimes.")
    parity_images: int = Field(
        1000,
        ge=1,
        description="Real images compared between Keras and onnxruntime (test images, topped up from validation/training); "
        "at most the images the data limits leave, to which the default is lowered.",
    )
    parity_atol: float = Field(1e-4, gt=0, le=1, description="Largest allowed absolute difference of probabilities.")
    test_time_augmentation: Literal["none", "flip", "flip_translate"] = Field(
        "none",
        description="Views averaged inside the exported model: flip (image and mirror image, 2x inference cost); "
        "flip_translate (also one-pixel shifts, 6x). Validation measures the model with them.",
    )


class ValidateConfig(_Section):
    device: Literal["auto", "gpu", "cpu"] = Field("auto", description="onnxruntime execution provider: auto prefers CUDA.")
    batch_size: int = Field(256, ge=1, le=65_536, description="Inference batch size.")
    allow_other_test_set: bool = Field(
        False,
        description="Measure and publish on a test set other than the one of the data set the model was trained on "
        "(recorded as such in metrics.json and the published sidecar); off: such a test set is refused (exit 3).",
    )


class GateConfig(_Section):
    min_accuracy: float = Field(0.7562, ge=0, le=1, description="Lowest test accuracy that passes (reference study: 0.7562).")
    min_weighted_f1: float = Field(0.7539, ge=0, le=1, description="Lowest weighted F1 that passes (reference study: 0.7539).")
    max_regression: float | None = Field(
        None, ge=0, le=1, description="If set, fail when accuracy or weighted F1 is more than this below the published model's."
    )


class PublishConfig(_Section):
    root: Path = Field(Path("models"), description="Serving repository: <root>/<model_name>/<version>/model.onnx.")
    model_name: str = Field("cifar10-cnn", pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$", description="Model name in the serving repository.")
    signing_key: Path | None = Field(
        None,
        description="PEM private key (ECDSA P-256, P-384 or P-521) that signs every published version and its gate record "
        "(OpenSSF model signing); on Kubernetes a Secret mounted as a file. Unset: versions are published unsigned.",
    )
    signing_certificate: Path | None = Field(
        None, description="PEM certificate of signing_key, for certificate-based signing (a private CA); its issuers go in certificate_chain."
    )
    certificate_chain: list[Path] = Field(
        [], description="PEM certificates from the signing certificate's issuer towards the root, carried in each signature. "
        "In the environment: comma-separated.",
    )  # fmt: skip
    require_signature: bool = Field(False, description="Refuse to publish unless signing_key is set (production environments).")

    @field_validator("certificate_chain", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split_commas(value)

    @model_validator(mode="after")
    def _signing_is_whole(self) -> PublishConfig:
        if self.require_signature and self.signing_key is None:
            raise _conflict("require_signature", "true, but no publish.signing_key is set: this environment publishes signed versions only")
        if self.signing_certificate is not None and self.signing_key is None:
            raise _conflict("signing_certificate", "set without publish.signing_key, the key it certifies")
        if self.certificate_chain and self.signing_certificate is None:
            raise _conflict("certificate_chain", "set without publish.signing_certificate, the certificate it vouches for")
        return self


def _split_commas(value: Any) -> Any:
    """An environment variable holds text: `a,b` is the list [a, b]."""
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


class VariantsConfig(_Section):
    """Reduced-precision models published beside the float model, each with its own gate."""

    enabled: list[Literal["int8", "fp16"]] = Field(
        ["int8", "fp16"],
        description="Variants published as <model_name>-<variant>: int8 (static QDQ, per-channel; for CPUs), fp16 (float32 I/O; "
        "for GPUs); [] for none. In the environment: comma-separated.",
    )
    max_accuracy_drop: float = Field(
        0.01, ge=0, le=1, description="A variant is published only if its test accuracy is at most this below the float model's, measured in the same run."
    )
    calibration_images: int = Field(
        512, ge=1, le=TRAIN_IMAGES, description="Training images (a seeded sample of the training split, never test images) that calibrate int8."
    )
    calibration_seed: Seed = Field(0, description="Seed of the calibration sample.")

    @field_validator("enabled", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split_commas(value)  # `int8,fp16`

    @field_validator("enabled")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise PydanticCustomError("unique", "expected each variant at most once")
        return value


class MetricsConfig(_Section):
    port: int = Field(0, ge=0, le=65535, description="Port of the /metrics endpoint; 0 turns it off.")
    address: Annotated[str, AfterValidator(_host)] = Field(
        "127.0.0.1", description="Address the /metrics endpoint binds to (0.0.0.0 in a pod): an IP address or a host name."
    )
    pushgateway_url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$"), _no_credentials(PUSHGATEWAY_USERNAME_ENV, PUSHGATEWAY_PASSWORD_FILE_ENV)] | None = Field(
        None,
        description="Pushgateway base URL (http://host:9091) for the run's outcome; unset: no push.",
        json_schema_extra=_NO_CREDENTIALS_SCHEMA,
    )
    job_name: str = Field("cifar-job", pattern=NAME, description="Pushgateway grouping key 'job' (letters, digits, '_.-').")
    run_id: str | None = Field(
        None, pattern=NAME, description="Pushgateway grouping key 'run_id' (letters, digits, '_.-'); default: the run directory's name."
    )
    linger_seconds: float = Field(
        0.0, ge=0, le=3600, description="After the run ends, keep /metrics up until it is scraped once more, at most this long."
    )


class TrackingConfig(_Section):
    """MLflow tracking and Model Registry (job/tracking/): off unless a tracking URI is set here or in MLFLOW_TRACKING_URI."""

    mlflow_uri: Annotated[str, Field(pattern=r"^\S+$", json_schema_extra=_NO_CREDENTIALS_SCHEMA), _no_credentials(*MLFLOW_CREDENTIALS_ENV)] | None = Field(
        None,
        description="MLflow tracking URI (http(s)://host:5000, or a local store such as sqlite:///mlflow.db); unset: MLFLOW_TRACKING_URI "
        "from the environment, else no tracking. Credentials: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or "
        "MLFLOW_TRACKING_TOKEN, never in the URI.",
    )  # the schema's refusal sits on the text: null, the default, passes
    experiment: str = Field("cifar-job", min_length=1, max_length=256, description="MLflow experiment the runs are logged to (created if missing).")
    registered_model: str | None = Field(
        None, pattern=NAME, description="Registered model each published model becomes a version of (a variant: <name>-<variant>); default: publish.model_name."
    )
    timeout_seconds: int = Field(
        10,
        ge=1,
        le=600,
        description="Longest wait for one request to the tracking server (a step such as a model's upload may take three times that); "
        "the first that fails or takes longer turns tracking off for the rest of the command, with one warning line.",
    )


class Config(_Section):
    out: Path = Field(Path("runs/cifar10"), description="Run directory: checkpoints, history, ONNX model, reports.")
    recipe: str = Field(
        DEFAULT,
        description=f"Named recipe of model.name whose settings become the defaults ({recipe_summary()}); default: the architecture's own.",
        json_schema_extra={"enum": sorted({name for architecture in RECIPES for name in recipe_names(architecture)})},
    )
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    gate: GateConfig = GateConfig()
    publish: PublishConfig = PublishConfig()
    variants: VariantsConfig = VariantsConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracking: TrackingConfig = TrackingConfig()

    model_config = ConfigDict(populate_by_name=True)

    @model_validator(mode="after")
    def _recipe_exists(self) -> Config:
        if self.model.name not in RECIPES:
            raise _conflict("model.name", f"unknown architecture {excerpt(self.model.name)}; expected one of: {', '.join(RECIPES)}")
        if recipe_defaults(self.model.name, self.recipe) is None:
            names = ", ".join(recipe_names(self.model.name))
            raise _conflict("recipe", f"{self.model.name} has no recipe {excerpt(self.recipe)}; expected one of: {names}")
        return self

    @model_validator(mode="after")
    def _parity_images_exist(self) -> Config:
        """The parity check runs after training: a count the data cannot supply must fail now, not then."""
        available = sum(self.data.split_sizes())
        if self.export.parity_images <= available:
            return self
        if "parity_images" in self.export.model_fields_set:
            raise _conflict(
                "export.parity_images", f"{self.export.parity_images} images wanted for the parity check; the data config yields {available}"
            )
        return self.model_copy(update={"export": self.export.model_copy(update={"parity_images": available})})

    def to_dict(self) -> dict[str, Any]:
        """The config as it is recorded anywhere (a file, a model, a card, a log, a ConfigMap): every URL redacted.

        Validation already refuses credentials in URLs; this is the one boundary where a config
        becomes bytes, so a value that slips past a validator is still never written.
        """
        return redact_values(self.model_dump(mode="json", by_alias=True))

    def training_digest(self) -> str:
        """sha256 of the settings that determine the trained weights (data, model, train), defaults left out.

        Where the data comes from and how it is verified are left out: the data set's content is
        bound separately, by its fingerprint (CifarData.fingerprint). Settings at their defaults are
        left out too, so a release that adds a key, at a default that keeps the old behaviour, keeps
        every checkpoint resumable and every finished run exportable; TRAINING_DEFAULTS_VERSION
        stands in for the defaults themselves.
        """
        settings, defaults = self.to_dict(), _training_defaults()
        relevant: dict[str, Any] = {"defaults_version": TRAINING_DEFAULTS_VERSION}
        for section in TRAINING_SECTIONS:
            relevant[section] = {
                k: v for k, v in settings[section].items() if k not in NOT_TRAINING.get(section, ()) and v != defaults[section][k]
            }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()

    def write(self, path: Path) -> None:
        atomic_write(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def record_in(self, paths: RunPaths) -> None:
        """Create the run directory and record this effective config in it; call once inputs are verified."""
        paths.root.mkdir(parents=True, exist_ok=True)
        self.write(paths.config)


TOP_LEVEL_KEYS = ("out", "recipe")
TRAINING_SECTIONS = ("data", "model", "train")
NOT_TRAINING = {"data": ("cache_dir", "source", "checksum", "max_archive_bytes"), "train": ("device",)}  # a resumed run may move
# Bump when a default of data, model or train changes meaning: the digest leaves defaults out, so an
# old checkpoint would otherwise resume under the new default. tests/test_config.py holds the
# defaults this version stands for and fails until it is bumped.
TRAINING_DEFAULTS_VERSION = 1


@functools.cache
def _training_defaults() -> dict[str, Any]:
    return Config().to_dict()
SECTIONS = {name: field.annotation for name, field in Config.model_fields.items() if name not in TOP_LEVEL_KEYS}
SECTION_NAMES = [Config.model_fields[n].alias or n for n in SECTIONS]


Layer = tuple[Mapping[str, Any], str]  # settings, and the source an error names


def load_config(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Layer | None = None,
    trial: Layer | None = None,
    continue_run: bool = False,
) -> Config:
    """Merge the layers and validate; `overrides` maps dotted keys (`train.epochs`) to flag values (None: unset).

    With `continue_run`, a run directory that already holds a recorded config starts from it, so
    `cifar-job validate --out RUN` measures on the data RUN was trained on; see `_recorded_layer`.

    An experiment (job/config/experiment_spec.py) gives its base config as `base` (nested, in place of the file)
    and each trial's settings as `trial` (dotted keys) above the command line: a grid point beats `--set`.
    """
    layers = [(read_yaml(file), label(file))] if file is not None else []
    layers += [(dict(base[0]), base[1])] if base is not None else []
    layers += [(_env_layer(os.environ if env is None else env), "environment"), (_nest(overrides or {}, "command line"), "command line")]
    layers += [(_nest(trial[0], trial[1]), trial[1])] if trial is not None else []
    layers = ([_recorded_layer(layers)] if continue_run else []) + layers
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer, source in [_recipe_layer(layers), *layers]:
        _merge(merged, sources, layer, source)
    try:
        return Config.model_validate(merged, by_name=False)
    except ValidationError as e:
        raise ConfigError(_describe(e, sources)) from None


RECORDED_KEYS = ("recipe", "data", "model", "train", "export", "validate")


def _recorded_layer(layers: list[tuple[dict[str, Any], str]]) -> tuple[dict[str, Any], str]:
    """`<out>/config.yaml` of the run the other layers name, as the lowest of them; empty when there is none.

    Only what the run is comes from it (RECORDED_KEYS: its recipe, data, model, training, export and
    validation settings); what the operator decides (the gate, where and how to publish, variants'
    gate, metrics) comes from the command's own layers and defaults, never from a file in a run
    directory that others may write. The record holds every key, the recipe's values among them, so
    a different recipe or architecture on top would silently keep the old recipe's settings: that is
    refused, as a run directory holds one training.
    """
    out = Config.model_fields["out"].default
    for layer, _ in layers:
        out = layer.get("out", out)
    if not isinstance(out, (str, Path)) or not RunPaths(Path(out)).config.is_file():
        return {}, ""
    file = RunPaths(Path(out)).config
    source = f"recorded config {label(file)}"
    recorded = {key: value for key, value in read_yaml(file, "recorded config").items() if key in RECORDED_KEYS}
    asked: dict[str, Any] = {}
    for layer, layer_source in layers:
        _merge(asked, {}, layer, layer_source)
    for key, now, was in [("recipe", asked.get("recipe"), recorded.get("recipe")), ("model.name", _name(asked), _name(recorded))]:
        if now is not None and now != was:
            raise ConfigError(
                f"config key {key}: {excerpt(now)} asked, but run directory {label(out)} was made with {excerpt(was)} "
                f"({source}); a different {key} needs a new --out"
            )
    return recorded, source


def _name(settings: Mapping[str, Any]) -> Any:
    model = settings.get("model")
    return model.get("name") if isinstance(model, Mapping) else None


def _recipe_layer(layers: list[tuple[dict[str, Any], str]]) -> tuple[dict[str, Any], str]:
    """The chosen recipe's settings as the layer beneath the user's; an unknown one is left to the validation to report."""
    architecture, recipe = ModelConfig().name, DEFAULT
    for layer, _ in layers:
        model = layer.get("model")
        if isinstance(model, Mapping) and "name" in model:
            architecture = model["name"]
        recipe = layer.get("recipe", recipe)
    defaults = recipe_defaults(architecture, recipe) if isinstance(architecture, str) and isinstance(recipe, str) else None
    return _nest(defaults or {}, f"recipe {recipe}"), f"recipe {recipe}"


def parse_sets(items: tuple[str, ...]) -> dict[str, Any]:
    """`--set KEY=VALUE` flags as overrides: VALUE is YAML (`3`, `true`, `null`) read as strictly as a config file."""
    parsed = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {excerpt(item)}: expected KEY=VALUE, e.g. train.patience=3")
        parsed[key] = _load_yaml(raw, f"config key {label(key)} (from command line)", lines=False) if raw else None
    return parsed


_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("map", "seq", "str", "int", "float", "bool", "null")}


class _ConfigLoader(Composer, SafeConstructor, Resolver, CParser):
    """YAML as a config needs it: maps, lists, strings, numbers, booleans and null, in bounded amounts.

    libyaml scans; the composer (Python, ahead of CParser's own in the MRO) counts nodes and depth,
    refuses anchors, aliases and long values, and the constructor refuses duplicate keys, which
    plain YAML lets the last one win silently. Dates, `=` and `<<` stay strings.
    """

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag in _TAGS] for first, resolvers in Resolver.yaml_implicit_resolvers.items()
    }

    def __init__(self, text: str) -> None:
        CParser.__init__(self, text)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.nodes = self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, AliasEvent) or event.anchor is not None:
            raise ComposerError(None, None, "anchors (&) and aliases (*) are not supported", event.start_mark)
        if isinstance(event, ScalarEvent) and len(event.value) > MAX_TEXT:
            raise ComposerError(None, None, f"a value longer than {MAX_TEXT} characters", event.start_mark)
        self.nodes += 1
        if self.nodes > MAX_YAML_NODES:
            raise ComposerError(None, None, f"more than {MAX_YAML_NODES} values", event.start_mark)
        if self.depth == MAX_YAML_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        self.depth += 1
        node = super().compose_node(parent, index)
        self.depth -= 1
        if node.tag not in _TAGS:
            raise ComposerError(None, None, f"tag {label(node.tag.replace('tag:yaml.org,2002:', '!!'))} is not supported", event.start_mark)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        mapping = super().construct_mapping(node, deep)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node)
            if key in seen:
                raise ConstructorError(None, None, f"duplicate key {excerpt(key)}", key_node.start_mark)
            seen.add(key)
        return mapping


def _load_yaml(text: str, where: str, lines: bool = True) -> Any:
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - _ConfigLoader is stricter than SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if lines and mark else ""
        problem = getattr(e, "problem", None) or getattr(e, "reason", None) or "unreadable"
        raise ConfigError(f"{where}{at}: not valid YAML: {label(problem)}") from None


def read_yaml(file: Path, what: str = "config file") -> dict[str, Any]:
    """A YAML mapping from `file`, read as strictly as a config; errors name it as `what`."""
    where = f"{what} {label(file)}"
    raw = read_bounded(file, MAX_FILE_BYTES, ConfigError, where)
    try:
        text = raw.decode()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 text (byte {e.start})") from None
    loaded = _load_yaml(text, where)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(loaded).__name__}")
    return loaded


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    """CIFAR_JOB_OUT and CIFAR_JOB_<SECTION>_<KEY> (any case); two variables for one key are an error, not a race."""
    layer: dict[str, Any] = {}
    names: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        key = _env_key(name)
        if key in names:
            raise ConfigError(f"environment variables {label(names[key])} and {label(name)} both set {label(key)}")
        names[key] = name
        layer[key] = None if value == "" else value
    return _nest(layer, "environment")


def _env_key(name: str) -> str:
    rest = name[len(ENV_PREFIX) :].lower()
    if rest in TOP_LEVEL_KEYS:
        return rest
    section, _, key = rest.partition("_")
    if section not in SECTION_NAMES or not key:
        raise ConfigError(
            f"environment variable {label(name)}: unknown; expected {ENV_PREFIX}OUT, {ENV_PREFIX}RECIPE or {ENV_PREFIX}<SECTION>_<KEY> "
            f"with SECTION one of {', '.join(s.upper() for s in SECTION_NAMES)}"
        )
    return f"{section}.{key}"


def _nest(dotted: Mapping[str, Any], source: str) -> dict[str, Any]:
    """`{"train.epochs": 3}` as `{"train": {"epochs": 3}}`; a section set both whole and by key in one layer is refused."""
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        section, dot, leaf = key.partition(".")
        if dot and (section in nested and not isinstance(nested[section], dict) or section in dotted):
            raise ConfigError(f"config key {label(key)} (from {source}): its section {label(section)} is also set whole; set one or the other")
        if dot:
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
    """The first problem as one line: key, where it came from, what is wrong, what is expected, an excerpt of what was given."""
    first = error.errors()[0]
    loc = (*first["loc"], first["ctx"]["key"]) if first["type"] == "conflict" else first["loc"]
    key = ".".join(str(p) for p in loc)
    where = f"config key {label(key)} (from {sources.get(key) or sources.get(key.split('.')[0], 'defaults')})"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key; {_known_keys(loc)}"
    message = first["msg"][:1].lower() + first["msg"][1:]  # lower the first letter only: patterns keep their case
    if first["type"] == "conflict":
        return f"{where}: {message}"
    return f"{where}: {message}, got {excerpt(first.get('input'))}"


def _known_keys(loc: tuple[Any, ...]) -> str:
    """`did you mean X? ` for a near miss, then every key valid in that place."""
    if len(loc) == 1:
        known = [*TOP_LEVEL_KEYS, *SECTION_NAMES]
    else:
        section = SECTIONS.get(loc[0]) or SECTIONS.get(f"{loc[0]}_")
        known = list(section.model_fields) if section else []
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return (f"did you mean {close[0]}? " if close else "") + "expected one of: " + (", ".join(known) or "?")


def reference_markdown() -> str:
    """Every key with its default and meaning, as the README's configuration table."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    defaults = Config().to_dict()
    for key in TOP_LEVEL_KEYS:
        lines.append(f"| `{key}` | `{defaults[key]}` | {Config.model_fields[key].description} |")
    for name, section in SECTIONS.items():
        alias = Config.model_fields[name].alias or name
        for key, field in section.model_fields.items():
            default = defaults[alias][key]
            shown = "unset" if default is None else f"`{default}`"
            lines.append(f"| `{alias}.{key}` | {shown} | {field.description} |")
    return "\n".join(lines) + "\n"
