"""An experiment spec: a base config and the trials it expands to (grid points x seeds x folds).

It is read as strictly as a config (the same bounded YAML loader, one-line errors naming the spec
file and the key), and every trial's config is validated when the spec is loaded, so a bad grid
value fails before any trial trains. Trials are numbered deterministically: grid points outermost
(keys in the order written, the last key varying fastest), then seeds, then folds. A group is one
grid point: its trials differ only in seed or fold, and the summary aggregates over them.

```yaml
name: lr-seeds                        # ^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$
base: {recipe: fast}                  # a config mapping, as --config takes it, without `out`
grid: {train.learning_rate: [0.05, 0.1]}
seeds: 3                              # trial seed = the base's train.seed + i
folds: 5                              # k-fold cross-validation (data.folds, data.fold)
select: val_accuracy                  # or val_loss
```
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from job.config.settings import Config, excerpt, label, load_config, read_yaml
from job.core.errors import ConfigError
from job.core.redact import redact_values
from job.core.paths import ExperimentPaths

MAX_TRIALS = 1000  # an Indexed Job's completions, and a summary a person can still read
NAME = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"  # a DNS label with room for a Job name's suffixes
SELECT = ("val_accuracy", "val_loss")
OWNED = {"out": "the experiment sets each trial's run directory", "data.folds": "use folds:", "data.fold": "use folds:"}


class _SpecFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(pattern=NAME)
    base: dict[str, Any] = {}
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = {}
    seeds: int | None = Field(None, ge=1, le=MAX_TRIALS)
    folds: int | None = Field(None, ge=2, le=10)
    select: Literal["val_accuracy", "val_loss"] = "val_accuracy"


@dataclass(frozen=True)
class Trial:
    index: int
    group: int  # the grid point
    overrides: dict[str, Any]  # dotted keys: the grid point, and train.seed, data.folds, data.fold where the spec varies them; URLs redacted (records and displays only; `settings` holds the values)
    settings: Config  # validated; `out` is set by `config`

    def config(self, root: Path) -> Config:
        """The trial's config, its run directory `<root>/trials/<index:04d>`."""
        return self.settings.model_copy(update={"out": ExperimentPaths(root).trial(self.index).root})

    @property
    def seed(self) -> int:
        return self.settings.train.seed

    @property
    def fold(self) -> int | None:
        return self.settings.data.fold if self.settings.data.folds else None


@dataclass(frozen=True)
class ExperimentSpec:
    path: Path
    name: str
    select: Literal["val_accuracy", "val_loss"]
    seeds: int | None
    folds: int | None
    _trials: tuple[Trial, ...]

    def trials(self) -> list[Trial]:
        return list(self._trials)

    @property
    def trial_count(self) -> int:
        return len(self._trials)

    def groups(self) -> dict[int, dict[str, Any]]:
        """Group number -> its grid point (dotted keys)."""
        return {t.group: {k: v for k, v in t.overrides.items() if k not in ("train.seed", "data.folds", "data.fold")} for t in self._trials}


def load_spec(path: Path, env: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None) -> ExperimentSpec:
    """Read and validate the spec and every trial's config; `env` and `flags` as `load_config` takes them (all trials)."""
    where = f"experiment spec {label(path)}"
    try:
        spec = _SpecFile.model_validate(read_yaml(path, "experiment spec"))
    except ValidationError as e:
        raise ConfigError(_describe(e, where)) from None
    count = math.prod(len(values) for values in spec.grid.values()) * (spec.seeds or 1) * (spec.folds or 1)
    if count > MAX_TRIALS:
        raise ConfigError(f"{where}: {count} trials (grid x seeds x folds); at most {MAX_TRIALS}")
    points = [_dotted(dict(zip(spec.grid, point, strict=True)), where) for point in itertools.product(*spec.grid.values())]
    _refuse_owned(spec, {key for point in points for key in point}, where)

    base = (spec.base, f"{where} base")
    first_seed = load_config(env=env, overrides=flags, base=base).train.seed
    trials = []
    for group, point in enumerate(points):
        for seed, fold in itertools.product(range(spec.seeds or 1), range(spec.folds or 1)):
            overrides = copy.deepcopy(point)  # no two trials share a value: load_config may nest into it
            overrides |= {"train.seed": first_seed + seed} if spec.seeds else {}
            overrides |= {"data.folds": spec.folds, "data.fold": fold} if spec.folds else {}
            settings = load_config(env=env, overrides=flags, base=base, trial=(overrides, f"{where} trial {len(trials)}"))
            trials.append(Trial(len(trials), group, redact_values(overrides), settings))  # overrides are only ever recorded
    return ExperimentSpec(path, spec.name, spec.select, spec.seeds, spec.folds, tuple(trials))


def _dotted(point: dict[str, Any], where: str) -> dict[str, Any]:
    """A grid point with every key dotted: `data: {folds: 2}` is `data.folds: 2`, so one set of rules covers both spellings."""
    dotted: dict[str, Any] = {}
    for key, value in point.items():
        leaves = {f"{key}.{leaf}": v for leaf, v in value.items()} if "." not in key and isinstance(value, dict) else {key: value}
        for leaf in leaves:
            if leaf in dotted:
                raise ConfigError(f"{where} key grid.{label(leaf)}: set twice (once dotted, once inside its section)")
        dotted |= leaves
    return dotted


def _refuse_owned(spec: _SpecFile, grid_keys: set[str], where: str) -> None:
    """Keys the experiment sets itself may not be set in its base or grid."""
    data = spec.base.get("data") if isinstance(spec.base.get("data"), dict) else {}
    for key in (key for key in OWNED if key in spec.base or (key.startswith("data.") and key.removeprefix("data.") in data)):
        raise ConfigError(f"{where} key base.{key}: not allowed here ({OWNED[key]})")
    for key in sorted(grid_keys):
        if key in OWNED or (key == "train.seed" and spec.seeds):
            raise ConfigError(f"{where} key grid.{label(key)}: not allowed here ({OWNED.get(key, 'seeds: sets it')})")


def _describe(error: ValidationError, where: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{where} key {label(key)}: unknown key; expected one of: {', '.join(_SpecFile.model_fields)}"
    message = first["msg"][:1].lower() + first["msg"][1:]
    got = "" if first["type"] == "missing" else f", got {excerpt(first.get('input'))}"
    return f"{where} key {label(key)}: {message}{got}"
