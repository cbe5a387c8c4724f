"""k8s/ and the chart's renderings are valid Kubernetes objects that do what the Job needs.

Every object of k8s/ and of the chart with each environment's values is checked against the
official schemas (strict: unknown fields fail) of the oldest supported and the newest
Kubernetes, and the Prometheus Operator objects against that operator's API schemas.
k8s/ must be the chart's current rendering, `kubectl kustomize k8s/` must render the same
objects, and `kubectl apply -f k8s/` must accept the directory as it is.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from job.kube import chart
from job.cli import main
from job.core.errors import NON_RETRYABLE_EXIT_CODES, Preempted

from .k8s_tools import CHART, ENVIRONMENTS, K8S, ROOT, crd_errors, emulator, kube_validate, kubeconfig, load_docs

pytestmark = pytest.mark.fast  # no training, no fuzzing: the tier `bash tests/run.sh -m fast` runs

REGENERATE = ["k8s", "render", "--set", "managedBy=kubectl", "--output-dir"]
MONITORING = {"PodMonitor", "PrometheusRule"}


def k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_docs(path.read_text())]


def env_docs(env: str) -> list[dict[str, Any]]:
    values = chart.load_values([CHART / f"values-{env}.yaml"])
    return chart.objects(chart.render(values))


RENDERINGS = {"k8s/": k8s_docs, **{f"values-{env}.yaml": (lambda env=env: env_docs(env)) for env in ENVIRONMENTS}}


def test_k8s_dir_is_the_charts_current_rendering(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [*REGENERATE, str(tmp_path)])
    assert result.exit_code == 0, result.output
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    current = {p.name: p.read_text() for p in K8S.glob("*.yaml")}
    assert current == fresh, "k8s/ is stale: run `cifar-job k8s render --set managedBy=kubectl --output-dir k8s`"


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_objects_pass_the_official_schemas_strictly(rendering: str) -> None:
    docs = RENDERINGS[rendering]()
    assert {"NetworkPolicy", "ServiceAccount", "PersistentVolumeClaim", "ConfigMap", "Job"} <= {d["kind"] for d in docs}
    for doc in docs:
        if doc["kind"] not in MONITORING:
            kube_validate(doc)
    monitoring = [d for d in docs if d["kind"] in MONITORING]
    assert crd_errors(monitoring) == [None] * len(monitoring)


def test_schema_validation_catches_a_misspelt_field() -> None:
    job = next(d for d in k8s_docs() if d["kind"] == "Job")
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(Exception, match="readOnlyRootFileSystem"):
        kube_validate(job)
    monitor = next(d for d in k8s_docs() if d["kind"] == "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    assert "interval" in crd_errors([monitor])[0]


@pytest.mark.parametrize("directory", ["k8s", "experiment"])
def test_kustomize_renders_the_same_objects(directory: str) -> None:
    path, docs = (K8S, k8s_docs) if directory == "k8s" else (EXPERIMENT_DIR, experiment_docs)
    kustomization = yaml.safe_load((path / "Kustomization").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in path.glob("*.yaml"))
    rendered = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=True, timeout=60)
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(load_docs(rendered.stdout), key=key) == sorted(docs(), key=key)


def test_kubectl_apply_accepts_the_directory_as_it_is(tmp_path: Path) -> None:
    """kubectl maps every file to an API resource (and skips Kustomization); the emulator serves no
    OpenAPI document, so kubectl's own schema check is off: the official schemas are checked above."""
    with emulator() as (api, url):
        config = kubeconfig(tmp_path / "kubeconfig", url, namespace="ml")
        done = subprocess.run(["kubectl", "--kubeconfig", str(config), "apply", "--validate=false", "-f", str(K8S)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        created = sorted((key[0].plural, key[1], key[2]) for key in api.objects)
    plural = lambda kind: re.sub("y$", "ie", kind.lower()) + "s"  # noqa: E731
    expected = sorted((plural(d["kind"]), "ml", d["metadata"]["name"]) for d in k8s_docs())
    assert created == expected


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_job_fails_fast_on_fatal_exit_codes_and_ignores_disruptions(rendering: str) -> None:
    job = next(d for d in RENDERINGS[rendering]() if d["kind"] == "Job")
    spec = job["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["podReplacementPolicy"] == "Failed"
    assert {"backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"} <= spec.keys()
    rules = spec["podFailurePolicy"]["rules"]
    container = spec["template"]["spec"]["containers"][0]["name"]
    fail = [r["onExitCodes"] for r in rules if r["action"] == "FailJob"]
    assert fail == [{"containerName": container, "operator": "In", "values": list(NON_RETRYABLE_EXIT_CODES)}]
    ignored_codes = [c for r in rules if r["action"] == "Ignore" and "onExitCodes" in r for c in r["onExitCodes"]["values"]]
    assert ignored_codes == [Preempted.exit_code]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_pod_is_hardened(rendering: str) -> None:
    pod = next(d for d in RENDERINGS[rendering]() if d["kind"] == "Job")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in volumes[mounts["/tmp"]]
    env = {e["name"]: e.get("value") for e in container["env"]}
    writable = [path for path in mounts if path != "/etc/cifar-job"]
    for key in ("HOME", "CIFAR_JOB_OUT", "CIFAR_JOB_DATA_CACHE_DIR", "CIFAR_JOB_PUBLISH_ROOT"):
        assert any(env[key].startswith(path) for path in writable), f"{key}={env[key]} is on the read-only root"


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_network_policy_admits_only_the_scrape_and_lets_out_only_what_the_run_needs(rendering: str) -> None:
    docs = RENDERINGS[rendering]()
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")["spec"]
    pod = next(d for d in docs if d["kind"] == "Job")["spec"]["template"]
    assert policy["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    metrics_port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
    (scrape,) = policy["ingress"]
    assert scrape["ports"] == [{"port": metrics_port, "protocol": "TCP"}] and all(scrape["from"])
    ports = [[(p["port"], p["protocol"]) for p in rule["ports"]] for rule in policy["egress"]]
    config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.yaml"]) or {}
    pushes = bool(config.get("metrics", {}).get("pushgateway_url"))
    assert ports == [[(53, "UDP"), (53, "TCP")], *([[(9091, "TCP")]] if pushes else []), [(443, "TCP")]]
    download = policy["egress"][-1]["to"]
    assert {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"]} in [
        peer["ipBlock"] for peer in download
    ]  # public addresses only: not the cluster, the nodes or the cloud metadata endpoint (169.254.169.254)


def test_job_runs_on_the_gpu_pool_and_resumes_in_one_run_directory() -> None:
    docs = k8s_docs()
    job = next(d for d in docs if d["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    name = job["metadata"]["name"]
    assert env["CIFAR_JOB_OUT"].endswith(f"/runs/{name}")  # the Job's name: the same for every retry
    claim = {v["name"]: v for v in pod["volumes"]}["data"]["persistentVolumeClaim"]["claimName"]
    assert claim in {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    config_map = {v["name"]: v for v in pod["volumes"]}["config"]["configMap"]["name"]
    assert config_map in {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}


def test_podmonitor_scrapes_the_jobs_pod() -> None:
    docs = k8s_docs()
    pod = next(d for d in docs if d["kind"] == "Job")["spec"]["template"]
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["CIFAR_JOB_METRICS_PORT"] == str(ports[endpoint["port"]]) and env["CIFAR_JOB_METRICS_ADDRESS"] == "0.0.0.0"


def test_yaml_lints_clean() -> None:
    files = [*K8S.glob("*.yaml"), K8S / "Kustomization", *K8S.glob("experiment/*"), *CHART.glob("values*.yaml"), *CHART.glob("examples/*")]
    config = "{extends: default, rules: {document-start: disable, line-length: {max: 120}}}"
    done = subprocess.run([sys.executable, "-m", "yamllint", "-s", "-d", config, *map(str, files)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


# --- the experiment: an Indexed Job, with and without Kueue --------------------------------------

EXPERIMENT_DIR = K8S / "experiment"
EXAMPLE_SPEC = "charts/cifar-job/examples/experiment.yaml"
REGENERATE_EXPERIMENT = ["k8s", "render", "--set", "managedBy=kubectl", "--set", "experiment.sameNode=true", "--experiment", EXAMPLE_SPEC,
                         "--output-dir"]


def experiment_docs(directory: Path = EXPERIMENT_DIR) -> list[dict[str, Any]]:
    return [doc for path in sorted(directory.glob("*.yaml")) for doc in load_docs(path.read_text())]


def _experiment(*sets: str, queue: str | None = None) -> list[dict[str, Any]]:
    values = chart.load_values([CHART / "values-prod.yaml"], sets, experiment=CHART / "examples" / "experiment.yaml", queue=queue)
    return chart.objects(chart.render(values))


EXPERIMENTS = {
    "k8s/experiment/": experiment_docs,
    "indexed": lambda: _experiment("storage.accessModes={ReadWriteMany}", "experiment.maxFailedIndexes=1"),
    "kueue": lambda: chart.objects(chart.render(chart.load_values([], [], queue="team-a"))),
    "indexed+kueue": lambda: _experiment("experiment.sameNode=true", queue="team-a"),
}


def test_k8s_experiment_is_the_charts_current_rendering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the header names the spec by the path given
    result = CliRunner().invoke(main, [*REGENERATE_EXPERIMENT, str(tmp_path)])
    assert result.exit_code == 0, result.output
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    assert {p.name: p.read_text() for p in EXPERIMENT_DIR.glob("*.yaml")} == fresh, (
        f"k8s/experiment/ is stale: run `cifar-job {' '.join(REGENERATE_EXPERIMENT)} k8s/experiment`")
    shared = {p.name for p in K8S.glob("*.yaml")} - {"job.yaml", "configmap.yaml"}
    for name in shared:  # the same claim and companions as k8s/: applying both changes nothing
        assert load_docs((EXPERIMENT_DIR / name).read_text()) == load_docs((K8S / name).read_text()), name


@pytest.mark.parametrize("rendering", EXPERIMENTS)
def test_experiment_and_kueue_objects_pass_the_official_schemas_strictly(rendering: str) -> None:
    docs = EXPERIMENTS[rendering]()
    job = next(d for d in docs if d["kind"] == "Job")
    assert ("completionMode" in job["spec"]) == (rendering != "kueue") and ("suspend" in job["spec"]) == ("kueue" in rendering)
    for doc in docs:
        if doc["kind"] not in MONITORING:
            kube_validate(doc)


def test_schema_validation_catches_a_misspelt_indexed_job_field() -> None:
    job = next(d for d in experiment_docs() if d["kind"] == "Job")
    job["spec"]["backoffLimitPerIndexes"] = 3
    with pytest.raises(Exception, match="backoffLimitPerIndexes"):
        kube_validate(job)


@pytest.mark.parametrize("rendering", [r for r in EXPERIMENTS if r != "kueue"])
def test_a_trial_fails_its_index_on_fatal_exit_codes_and_ignores_disruptions(rendering: str) -> None:
    spec = next(d for d in EXPERIMENTS[rendering]() if d["kind"] == "Job")["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == 3 and spec["backoffLimitPerIndex"] >= 0
    assert "backoffLimit" not in spec and spec["podReplacementPolicy"] == "Failed"
    rules = spec["podFailurePolicy"]["rules"]
    assert [r["onExitCodes"]["values"] for r in rules if r["action"] == "FailIndex"] == [list(NON_RETRYABLE_EXIT_CODES)]
    assert not [r for r in rules if r["action"] == "FailJob"]
    assert [r["onExitCodes"]["values"] for r in rules if r["action"] == "Ignore" and "onExitCodes" in r] == [[Preempted.exit_code]]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_kubectl_apply_accepts_k8s_then_the_experiment(tmp_path: Path) -> None:
    with emulator() as (api, url):
        config = kubeconfig(tmp_path / "kubeconfig", url, namespace="ml")
        for directory in (K8S, EXPERIMENT_DIR):
            done = subprocess.run(["kubectl", "--kubeconfig", str(config), "apply", "--validate=false", "-f", str(directory)],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
        jobs = sorted(key[2] for key in api.objects if key[0].plural == "jobs")
    assert jobs == sorted(next(d for d in docs if d["kind"] == "Job")["metadata"]["name"] for docs in (k8s_docs(), experiment_docs()))
