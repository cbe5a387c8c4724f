"""`cifar-job k8s`: render the chart, submit, follow, inspect and delete the training Job.

The command group only parses and dispatches: rendering is job/kube/chart.py's, every API call
job/kube/cluster.py's. job/cli.py registers the group on the main command (whose error handling turns
their failures into one line and an exit code); nothing here imports job/cli.py. Neither module
imports the Kubernetes client or Helm until a command runs, so the other commands stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from job.kube import chart

from job.kube import cluster


def _chart_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The chart's values, as `helm install` takes them."""
    for option in reversed(
        [
            click.option("-f", "--values", "values_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                         help="Helm values file, e.g. charts/cifar-job/values-prod.yaml (repeatable; later wins)."),
            click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                         help="Helm value in `helm --set` syntax, e.g. --set config.train.epochs=10 (repeatable)."),
            click.option("--experiment", "experiment", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                         help="Experiment spec file: one Indexed Job, a pod per trial (sets experiment.spec)."),
            click.option("--queue", "queue", metavar="NAME",
                         help="Kueue LocalQueue: the Job is created suspended until Kueue admits it (sets queueName)."),
            click.option("--name", "run_name", help="Job name and run directory.  [default: cifar-job-<hash of the values>]"),
            click.option("--chart", "chart_dir", type=click.Path(file_okay=False, path_type=Path), default=chart.DEFAULT_CHART,
                         help="The cifar-job chart directory.  [default: the chart shipped with this package]"),
        ]
    ):
        command = option(command)
    return command


def _cluster_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Which cluster and namespace: kubeconfig, else the in-cluster config."""
    for option in reversed(
        [
            click.option("--kubeconfig", envvar="KUBECONFIG", help="Kubeconfig path(s).  [default: KUBECONFIG, else ~/.kube/config, else in-cluster]"),
            click.option("--context", help="Kubeconfig context.  [default: the current one]"),
            click.option("-n", "--namespace", help="Namespace.  [default: the context's, else default]"),
        ]
    ):
        command = option(command)
    return command


@click.group()
def k8s() -> None:
    """Run the training Job on Kubernetes: render the chart, submit, follow, inspect, delete."""


@k8s.command("render")
@_chart_options
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), help="Write one file per template there instead of printing.")
def k8s_render(values_files: tuple[Path, ...], sets: tuple[str, ...], experiment: Path | None, queue: str | None, run_name: str | None,
               chart_dir: Path, output_dir: Path | None) -> None:
    """Print the manifests `submit` would create for these values (k8s/ is made with --output-dir)."""
    manifests = chart.render(chart.load_values(values_files, sets, experiment, queue), run_name=run_name, chart=chart_dir)
    if output_dir is None:
        click.echo("---\n".join(manifests.values()), nl=False)
        return
    flags = [*(f"-f {f}" for f in values_files), *(f"--set {s}" for s in sets), *([f"--experiment {experiment}"] if experiment else []),
             *([f"--queue {queue}"] if queue else []), *([f"--name {run_name}"] if run_name else [])]
    for path in chart.write_manifests(manifests, output_dir, _header(flags)):
        click.echo(path)


def _header(flags: list[str], width: int = 120) -> str:
    """`# Generated ... by: <the command>`, continued with ` \\` onto more comment lines to stay within `width` (yamllint's limit)."""
    lines = ["# Generated from charts/cifar-job by: cifar-job k8s render"]
    for flag in flags:
        if len(lines[-1]) + len(flag) + 3 > width:
            lines[-1] += " \\"
            lines.append("#   " + flag)
        else:
            lines[-1] += " " + flag
    return "\n".join(lines) + "\n"


@k8s.command("submit")
@_chart_options
@_cluster_options
@click.option("--wait", is_flag=True, help="Follow pod phases and stream the log (an experiment: its trials' progress) until the Job ends: "
                                            "exit 0 if it completes, 11 if it fails.")
def k8s_submit(values_files: tuple[Path, ...], sets: tuple[str, ...], experiment: Path | None, queue: str | None, run_name: str | None,
               chart_dir: Path, kubeconfig: str | None, context: str | None, namespace: str | None, wait: bool) -> None:
    """Create the training Job and its companions through the API; print the Job's name."""
    values = chart.load_values(values_files, sets, experiment, queue)
    manifest = chart.objects(chart.render(values, run_name=run_name, chart=chart_dir))
    target = cluster.connect(kubeconfig, context, namespace)
    name = cluster.submit(target, manifest)
    click.echo(name)
    if wait:
        cluster.wait(target, name, click.echo)


@k8s.command("status")
@click.argument("name")
@_cluster_options
def k8s_status(name: str, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
    """Show the Job's state and its pods' phases and exit codes."""
    click.echo(cluster.status(cluster.connect(kubeconfig, context, namespace), name))


@k8s.command("logs")
@click.argument("name")
@_cluster_options
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the container exits.")
def k8s_logs(name: str, kubeconfig: str | None, context: str | None, namespace: str | None, follow: bool) -> None:
    """Print the log of the Job's newest pod."""
    for line in cluster.logs(cluster.connect(kubeconfig, context, namespace), name, follow):
        click.echo(line)


@k8s.command("delete")
@click.argument("name")
@_cluster_options
def k8s_delete(name: str, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
    """Delete the Job with its pods and config; the run directory on the claim stays."""
    cluster.delete(cluster.connect(kubeconfig, context, namespace), name)
