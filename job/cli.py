"""The `cifar-job` command line: parse, load the config, dispatch to a stage. No logic of its own.

Every expected failure is a `JobError`: it becomes one line on stderr and its exit code.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml

from job.config import Config, load_config
from job.errors import ConfigError, JobError
from job.paths import RunPaths

log = logging.getLogger("cifar_job")


class _JobGroup(click.Group):
    """Turns a JobError raised anywhere below into a one-line message and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobError as e:
            click.echo(f"cifar-job: error: {e}", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=_JobGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@click.version_option(package_name="cifar-job")
def main(log_level: str) -> None:
    """Train the reference CIFAR-10 CNN, export it to ONNX, validate it and publish it."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


# Flags for the most common keys; any other key goes through --set section.key=value.
_FLAG_KEYS = {
    "out": "out",
    "data": "data.source",
    "checksum": "data.checksum",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "seed": "train.seed",
    "device": "validate.device",  # declared by the commands that validate (see the ONNX block below)
}


def config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the config-layer options and hand the command a validated `Config` as `config`."""

    @click.option("--config", "config_file", type=click.Path(path_type=Path), envvar="CIFAR_JOB_CONFIG", help="YAML config file.")
    @click.option("--out", type=click.Path(path_type=Path), help="Run directory.  [default: runs/cifar10]")
    @click.option("--data", help="CIFAR-10 archive, extracted directory or http(s) URL.")
    @click.option("--checksum", help="Expected archive checksum, md5:<hex> or sha256:<hex>, or 'none'.")
    @click.option("--epochs", type=int, help="Maximum epochs.  [default: 75]")
    @click.option("--batch-size", type=int, help="Global batch size.  [default: 32]")
    @click.option("--seed", type=int, help="Training seed.  [default: 42]")
    @click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any config key, e.g. --set train.patience=3 (repeatable).")
    @functools.wraps(command)
    def wrapper(config_file: Path | None, sets: tuple[str, ...], **kwargs: Any) -> Any:
        overrides = {_FLAG_KEYS[name]: kwargs.pop(name) for name in list(kwargs) if name in _FLAG_KEYS}
        overrides.update(_parse_sets(sets))
        return command(config=load_config(config_file, overrides=overrides), **kwargs)

    return wrapper


def _parse_sets(sets: tuple[str, ...]) -> dict[str, Any]:
    parsed = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.patience=3")
        parsed[key.strip()] = yaml.safe_load(raw) if raw else None
    return parsed


def _prepare(config: Config) -> RunPaths:
    """The run directory, checked writable; stages create it once their inputs verify."""
    return RunPaths(config.out).check_writable()


@main.command()
@config_options
def train(config: Config) -> None:
    """Train the model; keep the best weights, history and plots in the run directory.

    Rerun with the same --out to resume from the last complete epoch.
    """
    from job.train import train_model

    result = train_model(config, _prepare(config))
    click.echo(result.summary())


@main.group()
def data() -> None:
    """Inspect a CIFAR-10 source."""


@data.command("verify")
@config_options
def data_verify(config: Config) -> None:
    """Load and verify a source; print counts per split and class and the checksum."""
    from job.data import load_dataset

    dataset = load_dataset(config.data)
    click.echo(dataset.describe())


# --- ONNX export, validation, quality gate, publishing, and the end-to-end run ----------------

_device_option = click.option(
    "--device",
    type=click.Choice(["auto", "gpu", "cpu"]),
    help="onnxruntime execution provider: auto (CUDA, else CPU with a warning), gpu (CUDA or fail), cpu.  [default: auto]",
)


@main.command("export")
@config_options
def export_command(config: Config) -> None:
    """Convert the best weights to ONNX (model.onnx) and prove it matches Keras on real images."""
    from export.onnx import export_onnx

    click.echo(export_onnx(config, _prepare(config)).summary())


@main.command()
@_device_option
@config_options
def validate(config: Config) -> None:
    """Measure model.onnx on the test set with onnxruntime; write metrics.json, the model card and plot; apply the gate."""
    from export.validate import validate_model

    result = validate_model(config, _prepare(config))
    click.echo(result.summary())
    result.gate.enforce()


@main.command()
@config_options
def publish(config: Config) -> None:
    """Publish the validated model as the next version under publish.root, if it passes the gate."""
    from export.publish import publish_model

    click.echo(publish_model(config, _prepare(config)).summary())


@main.command()
@_device_option
@config_options
def run(config: Config) -> None:
    """Train, export, validate and publish in one go (the container's default).

    Rerun with the same --out to resume at the first incomplete stage.
    """
    from job.stages import run_stages

    for stage, result in run_stages(config, _prepare(config)):
        click.echo(f"{stage}: {result.summary()}")
