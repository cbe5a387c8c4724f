"""`cifar-job experiment`: count, list and run an experiment's trials (seeds, k-fold cross-validation, grids).

The group only parses and dispatches: the spec is job/config/experiment_spec.py's, running and finalising
job/experiments/runner.py's. job/cli.py registers it on the main command, whose error handling turns their
failures into one line and an exit code; nothing here imports job/cli.py. TensorFlow is imported only
when a trial trains in this process (`--index`) or the chosen one is exported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from job.config.settings import parse_sets
from job.core.errors import ConfigError
from job.config.experiment_spec import load_spec
from job.core.paths import RunPaths

_SPEC = click.argument("spec_file", metavar="SPEC", type=click.Path(path_type=Path))


@click.group()
def experiment() -> None:
    """Run many trials of one base config (seeds, k-fold cross-validation, grids) and publish the best."""


@experiment.command("trials")
@_SPEC
@click.option("--json", "as_json", is_flag=True, help="Print every trial (index, group, overrides) as JSON.")
def trials(spec_file: Path, as_json: bool) -> None:
    """Validate SPEC and print its number of trials (an Indexed Job's completions)."""
    spec = load_spec(spec_file)
    if as_json:
        click.echo(json.dumps([{"index": t.index, "group": t.group, "overrides": t.overrides} for t in spec.trials()], indent=1))
    else:
        click.echo(spec.trial_count)


@experiment.command("run")
@_SPEC
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Experiment directory: trials/<index>/, summary, selection.")
@click.option("--parallel", type=click.IntRange(1, 64), default=1, show_default=True, help="Trials trained at once, each its own process.")
@click.option("--index", type=click.IntRange(min=0), help="Train only this trial, in this process (an Indexed Job's $JOB_COMPLETION_INDEX).")
@click.option("--data", help="CIFAR-10 archive, extracted directory or http(s) URL, for every trial.")
@click.option("--checksum", help="Expected archive checksum, md5:<hex> or sha256:<hex>, or 'none'.")
@click.option("--device", type=click.Choice(["auto", "gpu", "cpu"]), help="Device for training and onnxruntime.  [default: auto]")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any config key for every trial (the grid still wins; repeatable).")
def run(spec_file: Path, out: Path, parallel: int, index: int | None, sets: tuple[str, ...], **flags: Any) -> None:
    """Run SPEC's unfinished trials, then summarise, select on validation results and publish the chosen trial.

    Rerun with the same --out to resume: finished trials are skipped, unfinished ones resume.
    """
    from job.experiments.runner import run_all, run_index

    given = {"data.source": flags["data"], "data.checksum": flags["checksum"]}
    given |= {"train.device": flags["device"], "validate.device": flags["device"]}
    overrides = {key: value for key, value in given.items() if value is not None} | parse_sets(sets)
    spec = load_spec(spec_file, flags=overrides)
    RunPaths(out).check_writable()
    if index is None:
        run_all(spec, out, parallel, click.echo)
    elif parallel != 1:
        raise ConfigError("--parallel: not with --index (one trial per process)")
    else:
        run_index(spec, out, index, click.echo)
