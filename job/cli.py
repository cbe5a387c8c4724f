"""The `cifar-job` command line: parse, load the config, dispatch to a stage. No logic of its own.

Every expected failure (job/core/errors.py) becomes one line on stderr and its exit code.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import sys
from typing import Any, NoReturn

from job.core.errors import EXPECTED_FAILURES, Preempted, one_line

PREEMPTED = "SIGTERM received; finished stages and epochs are saved, rerun to resume"


class _Process:
    """SIGTERM and exit, for the whole life of the process: a pod stopped at any moment ends with 75 and one line.

    Kubernetes sends SIGTERM before it kills a pod. Inside a command the first one raises
    `Preempted`: every artifact is written atomically, so whatever is interrupted leaves the last
    good state (training replaces this handler with one that stops at a step boundary). Outside a
    command (imports, argument parsing, interpreter shutdown) nothing would catch an exception, and
    once Python has torn its signal handling down the default action would end the process with
    143; so there the process ends at once, and a process that runs one command ends through
    `end` before that teardown.
    """

    command_running = False
    raised = False
    exit_status = 1  # unless the command exits normally: an uncaught exception ends Python with 1

    @classmethod
    def on_sigterm(cls, signum: int, frame: Any) -> None:
        if cls.command_running and not cls.raised:
            cls.raised = True
            raise Preempted(PREEMPTED)
        cls.exit_now(Preempted.exit_code, f"cifar-job: error: {PREEMPTED}")

    @classmethod
    def end(cls) -> NoReturn:
        """The last exit handler: flush the log and the output, then exit without the interpreter's teardown."""
        logging.shutdown()
        cls.exit_now(cls.exit_status)

    @staticmethod
    def exit_now(status: int, line: str = "") -> NoReturn:
        try:
            if line:
                print(line, file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


# Before the imports below (a fraction of a second, and TensorFlow's later): from here on a SIGTERM ends in 75.
signal.signal(signal.SIGTERM, _Process.on_sigterm)

import functools  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

from job.core.atomic import storage_errors  # noqa: E402
from job.bench import bench  # noqa: E402
from job.config.settings import Config, load_config, parse_sets  # noqa: E402
from job.experiments.cli import experiment  # noqa: E402
from job.kube.cli import k8s  # noqa: E402
from job.metrics.session import metrics_session  # noqa: E402
from job.core.paths import RunPaths  # noqa: E402
from job.config.recipes import recipe_summary  # noqa: E402

log = logging.getLogger("cifar_job")


class _JobGroup(click.Group):
    """Turns an expected failure raised anywhere below into a one-line message and its exit code."""

    def main(self, args: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Click's main; when it reads the process's own arguments (cifar-job, python -m job), the process ends with it."""
        if args is None:
            atexit.register(_Process.end)  # before the command registers its own exit handlers, so it runs after them
        try:
            return super().main(args, **kwargs)
        except Preempted as e:  # raised after the command's error handling ended: still this one line and code
            click.echo(f"cifar-job: error: {one_line(str(e))}", err=True)
            _Process.exit_status = e.exit_code
            raise SystemExit(e.exit_code) from None
        except SystemExit as e:
            _Process.exit_status = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
            raise

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        """The top-level options parsed; a usage error there is one line too (see `_usage_error`)."""
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            _usage_error(e)

    def invoke(self, ctx: click.Context) -> Any:
        _Process.command_running, _Process.raised = True, False
        try:
            with storage_errors():  # a full disk anywhere is exit 12 and one line; the writers leave nothing partial
                return super().invoke(ctx)
        except click.UsageError as e:  # a subcommand's arguments, or an unknown subcommand
            _usage_error(e)
        except EXPECTED_FAILURES as e:
            click.echo(f"cifar-job: error: {one_line(str(e))}", err=True)
            ctx.exit(e.exit_code)
        finally:
            _Process.command_running = False


def _usage_error(e: click.UsageError) -> NoReturn:
    """Click's usage errors as the job's one line (Click prints usage, a hint and the error on four), exit 2 as Click's.

    A group called without a command is no error: Click shows its help, as before.
    """
    if isinstance(e, click.exceptions.NoArgsIsHelpError):
        raise e
    command = e.ctx.command_path if e.ctx is not None else "cifar-job"
    click.echo(f"cifar-job: error: command line of {command}: {one_line(e.format_message())} (see {command} --help)", err=True)
    raise SystemExit(e.exit_code)


@click.group(cls=_JobGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@click.version_option(package_name="cifar-job")
def main(log_level: str) -> None:
    """Train the reference CIFAR-10 CNN, export it to ONNX, validate it and publish it."""
    # TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) drowns the job's own log lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


# Flags for the most common keys; any other key goes through --set section.key=value.
_FLAG_KEYS = {
    "out": ("out",),
    "recipe": ("recipe",),
    "model": ("model.name",),
    "data": ("data.source",),
    "checksum": ("data.checksum",),
    "epochs": ("train.epochs",),
    "batch_size": ("train.batch_size",),
    "seed": ("train.seed",),
    # --device, declared by each command that uses a device (below), sets the device of what it runs.
    "train_device": ("train.device",),
    "validate_device": ("validate.device",),
    "device": ("train.device", "validate.device"),
}


def config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the config-layer options and hand the command a validated `Config` as `config`.

    A command on an existing run directory starts from the config recorded there (flags on top).
    """

    @click.option("--config", "config_file", type=click.Path(path_type=Path), envvar="CIFAR_JOB_CONFIG", help="YAML config file.")
    @click.option("--out", type=click.Path(path_type=Path), help="Run directory.  [default: runs/cifar10]")
    @click.option("--model", metavar="NAME", help="Architecture: reference_cnn or airbench.  [default: reference_cnn]")
    @click.option("--recipe", metavar="NAME", help=f"Named recipe of the architecture ({recipe_summary()}).  [default: its own]")
    @click.option("--data", help="CIFAR-10 archive, extracted directory or http(s) URL.")
    @click.option("--checksum", help="Expected archive checksum, md5:<hex> or sha256:<hex>, or 'none'.")
    @click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any config key, e.g. --set train.patience=3 (repeatable).")
    @functools.wraps(command)
    def wrapper(config_file: Path | None, sets: tuple[str, ...], **kwargs: Any) -> Any:
        flags = {name: kwargs.pop(name) for name in list(kwargs) if name in _FLAG_KEYS}
        overrides = {key: value for name, value in flags.items() if value is not None for key in _FLAG_KEYS[name]}  # None: not given
        overrides.update(parse_sets(sets))
        return command(config=load_config(config_file, overrides=overrides, continue_run=True), **kwargs)

    return wrapper


def training_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The shortcuts for training settings, on the commands that train (put it above `config_options`).

    Numbers are checked with the config, so a bad one gets the same one-line error as in a file.
    """
    for option in reversed(
        [
            click.option("--epochs", metavar="INTEGER", help="Maximum epochs.  [default: 75]"),
            click.option("--batch-size", metavar="INTEGER", help="Global batch size.  [default: 32]"),
            click.option("--seed", metavar="INTEGER", help="Training seed.  [default: 42]"),
        ]
    ):
        command = option(command)
    return command


def _prepare(config: Config) -> RunPaths:
    """The run directory, checked writable; stages create it once their inputs verify."""
    return RunPaths(config.out).check_writable()


def _device_option(dest: str, what: str) -> Callable[..., Any]:
    return click.option(
        "--device", dest, type=click.Choice(["auto", "gpu", "cpu"]),
        help=f"Device for {what}: auto (GPU if one works, else CPU with a warning), gpu (or fail, exit 7), cpu.  [default: auto]",
    )  # fmt: skip


def _run_one(config: Config, name: str) -> None:
    """One stage as its own command, through the same runner as `run`: metrics session, record, summary, verdict."""
    from job.stages import BY_NAME, run_stage, stage_inputs
    from job.tracking.session import tracking_session

    with metrics_session(config, name) as metrics, tracking_session(config, metrics) as tracking:
        inputs = stage_inputs(config, _prepare(config), metrics, tracking)
        run_stage(BY_NAME[name], inputs, metrics, tracking, report=lambda result: click.echo(result.summary()))


@main.command()
@_device_option("train_device", "training")
@training_options
@config_options
def train(config: Config) -> None:
    """Train the model; keep the best weights, history and plots in the run directory.

    Rerun with the same --out to resume from the last complete epoch.

    \b
    Example:
      cifar-job train --recipe fast --out runs/fast --data cifar-10-python.tar.gz
    """
    _run_one(config, "train")


@main.group()
def data() -> None:
    """Inspect a CIFAR-10 source."""


@data.command("verify")
@config_options
def data_verify(config: Config) -> None:
    """Load and verify a source; print counts per split and class and the checksum.

    \b
    Example:
      cifar-job data verify --data cifar-10-python.tar.gz --checksum md5:c58f30108f718f92721af3b95e74349a
    """
    from job.data.dataset import load_dataset

    dataset = load_dataset(config.data)
    click.echo(dataset.describe())


# --- ONNX export, validation, quality gate, publishing, and the end-to-end run ----------------

@main.command("export")
@config_options
def export_command(config: Config) -> None:
    """Convert the best weights to ONNX (model.onnx) and prove it matches Keras on real images.

    \b
    Example:
      cifar-job export --out runs/fast --data cifar-10-python.tar.gz
    """
    _run_one(config, "export")


@main.command()
@_device_option("validate_device", "onnxruntime")
@config_options
def validate(config: Config) -> None:
    """Measure model.onnx on the test set with onnxruntime; write metrics.json, the model card and plot; apply the gate.

    \b
    Example:
      cifar-job validate --out runs/fast --data cifar-10-python.tar.gz --device cpu
    """
    _run_one(config, "validate")


@main.command()
@_device_option("validate_device", "onnxruntime")
@config_options
def publish(config: Config) -> None:
    """Measure the run's model.onnx again and publish it as the next version under publish.root, if it passes the gate.

    \b
    Example:
      cifar-job publish --out runs/fast --data cifar-10-python.tar.gz --set publish.root=/srv/models
    """
    _run_one(config, "publish")


@main.command()
@_device_option("validate_device", "onnxruntime")
@config_options
def variants(config: Config) -> None:
    """Make the INT8 and FP16 variants of the published model; publish each that passes its own gate (variants.*).

    \b
    Example:
      cifar-job variants --out runs/fast --data cifar-10-python.tar.gz --set variants.enabled=int8
    """
    _run_one(config, "variants")


@main.command()
@_device_option("device", "training and onnxruntime")
@training_options
@config_options
def run(config: Config) -> None:
    """Train, export, validate and publish in one go (the container's default).

    Rerun with the same --out to resume at the first incomplete stage.

    \b
    Example:
      cifar-job run --recipe smoke --out runs/smoke --data cifar-10-python.tar.gz
    """
    from job.stages import run_stages
    from job.tracking.session import tracking_session

    with metrics_session(config, "run") as metrics, tracking_session(config, metrics) as tracking:
        run_stages(config, _prepare(config), metrics, tracking, report=lambda stage, result: click.echo(f"{stage}: {result.summary()}"))


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--public-key", type=click.Path(dir_okay=False, path_type=Path), help="The publisher's PEM public key (of publish.signing_key).")
@click.option(
    "--cert-chain", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
    help="PEM CA certificates that a signing certificate must chain to (repeatable), for certificate-based signing.",
)  # fmt: skip
def verify(path: Path, public_key: Path | None, cert_chain: tuple[Path, ...]) -> None:
    """Verify published versions offline before serving them: every file, and the signed record of what the gate measured.

    PATH is a version directory, a model directory (each version) or a repository root (every
    version of every model). The first version that does not verify ends the command: exit 16.

    \b
    Example:
      cifar-job verify /srv/models/cifar10-cnn/3 --public-key publisher.pub.pem
    """
    from export.verification import Trust
    from export.verification import verify as verify_versions

    if (public_key is None) == (not cert_chain):
        raise click.UsageError("give either --public-key or --cert-chain")
    for verified in verify_versions(path, Trust(public_key, cert_chain)):
        click.echo(verified.summary())


@main.command("v2-request")
@click.option("--data", help="CIFAR-10 archive, extracted directory or http(s) URL.  [default: the canonical archive]")
@click.option("--checksum", help="Expected archive checksum, md5:<hex> or sha256:<hex>, or 'none'.")
@click.option("--index", type=click.IntRange(0, 9999), default=0, show_default=True, help="Which test image.")
@click.option("--onnx", type=click.Path(dir_okay=False, path_type=Path), help="A published <root>/<name>/<version>/model.onnx: print its response too.")
@click.option("--full", is_flag=True, help="Print every input value (a request file for curl); default: the first few.")
def v2_request(data: str | None, checksum: str | None, index: int, onnx: Path | None, full: bool) -> None:
    """Print the KServe V2 (Open Inference Protocol) request for one CIFAR-10 test image, one JSON document a line.

    With --onnx, also the response that model gives (onnxruntime on the same tensor, as Triton and
    KServe run it). Example: cifar-job v2-request --data cifar-10-python.tar.gz --full > request.json
    """
    from export import v2_protocol
    from job.data.dataset import load_dataset

    given = {"data.source": data, "data.checksum": checksum, "data.test_limit": index + 1, "validate.device": "cpu"}
    config = load_config(overrides={key: value for key, value in given.items() if value is not None})
    dataset = load_dataset(config.data)
    sent = v2_protocol.request(dataset.test_images[index : index + 1])
    click.echo(f"test image {index} of {dataset.source}: {dataset.class_names[int(dataset.test_labels[index])]}", err=True)
    click.echo(json.dumps(sent) if full else v2_protocol.shortened(sent))
    if onnx is not None:
        click.echo(json.dumps(v2_protocol.response(onnx, sent, config.validate_.device)))


main.add_command(k8s)  # the Kubernetes commands, from the module that owns them
main.add_command(bench)  # the benchmark, likewise
main.add_command(experiment)  # experiments (seeds, k-fold, grids), likewise
