"""The chart rendered to manifests: values as Helm takes them, the real Helm engine, objects in install order.

`render` runs helm-python-sdk on the chart (charts/cifar-job, shipped in the package), so `cifar-job k8s submit` creates the objects
`helm install` would (labelled managed-by cifar-job), and k8s/ is this rendering with the default
values (see the README for the command). No Kubernetes client here: job/kube/cli.py hands these
objects to job/kube/cluster.py, which talks to the cluster.

An experiment spec (`experiment.spec`) renders as one Indexed Job, a pod per trial. Selection,
export, validation and publishing run in the pod that finds every trial finished, under a lock
file on the shared claim, rather than in a second Job or a controller: the chart's objects alone
then carry the experiment to a published model, the same whether they came from `kubectl apply`,
`helm install` or `cifar-job k8s submit` (which may exit or lose its connection meanwhile), and
nothing needs API rights inside the cluster. A pod preempted while selecting is retried as the
same index, finds every trial finished again and takes its own stale lock over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from job.core.atomic import atomic_write
from job.config.settings import read_yaml
from job.core.errors import ConfigError

# The chart ships inside the package (job/kube/chart is charts/cifar-job, copied into the wheel), so
# `cifar-job k8s render` works from any directory after `pip install`.
DEFAULT_CHART = Path(__file__).parent / "chart"
RELEASE = "cifar-job"
# Helm's install order for the kinds the chart renders.
_ORDER = ("NetworkPolicy", "ServiceAccount", "PersistentVolumeClaim", "ConfigMap", "Job", "PodMonitor", "PrometheusRule", "InferenceService")


def load_values(
    files: Sequence[Path] = (), sets: Sequence[str] = (), experiment: Path | None = None, queue: str | None = None
) -> dict[str, Any]:
    """Values from YAML files, then Helm `--set` expressions, then an experiment spec file and a Kueue queue; later ones win, maps merge.

    Every file is read before the Helm engine is loaded: its Go runtime reserves address space, so a
    hostile file must be refused while the process is small (the hostile-input tests cap its memory).
    """
    layers = [read_yaml(file, "values file") for file in files]
    spec = read_yaml(experiment, "experiment spec") if experiment is not None else None
    values: dict[str, Any] = {}
    for layer in [*layers, *(_parse_set(expression) for expression in sets)]:
        _merge(values, layer)
    if spec is not None:
        values.setdefault("experiment", {})["spec"] = spec  # replaces, not merges
    if queue is not None:
        values["queueName"] = queue
    return values


def _parse_set(expression: str) -> dict[str, Any]:
    """One Helm `--set` expression, parsed by Helm itself."""
    import helm_python as helm

    try:
        return helm.parse_set_string(expression)
    except helm.HelmError as e:
        raise ConfigError(f"--set {expression!r}: {e}") from None


def _merge(into: dict[str, Any], layer: Mapping[str, Any]) -> None:
    """Helm's rule: maps merge key by key, anything else replaces."""
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def render(
    values: Mapping[str, Any],
    *,
    run_name: str | None = None,
    release: str = RELEASE,
    chart: Path = DEFAULT_CHART,
) -> dict[str, str]:
    """Render the chart: template file name -> manifest text (with the chart's comments).

    Objects made this way are labelled managed-by cifar-job unless the values say otherwise;
    `run_name` names the Job (default: the chart's hash of the values).
    """
    import helm_python as helm

    values = {"managedBy": "cifar-job", **values, **({"runName": run_name} if run_name else {})}
    if not Path(chart, "Chart.yaml").is_file():
        raise ConfigError(f"chart {chart}: not found; pass --chart with the path of charts/cifar-job")
    try:
        with helm.Chart.load(chart) as loaded:
            rendered = loaded.render(values=values, name=release, namespace="default")
    except helm.HelmError as e:
        raise ConfigError(f"chart {chart}: {' '.join(str(e).split())}") from None
    texts = {Path(path).name: text.strip() + "\n" for path, text in rendered.items() if not path.endswith("NOTES.txt")}
    return {name: text for name, text in sorted(texts.items()) if text.strip()}


def objects(manifests: Mapping[str, str]) -> list[dict[str, Any]]:
    """The rendered objects in install order."""
    docs = [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]
    return sorted(docs, key=lambda doc: _ORDER.index(doc["kind"]))


def write_manifests(manifests: Mapping[str, str], directory: Path, header: str) -> list[Path]:
    """One file per template, each starting with `header` (how k8s/ is generated)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in manifests.items():
            atomic_write(directory / name, header + text)
            written.append(directory / name)
    except OSError as e:
        raise ConfigError(f"output directory {directory}: not writable ({e.strerror or type(e).__name__})") from None
    return written
