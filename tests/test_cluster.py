"""`cifar-job k8s` against a Kubernetes API emulator on 127.0.0.1 (kmock; no real kube-apiserver
can run here). The emulator keeps objects but runs no controllers: `Kubelet` below plays the Job
controller and the kubelet, creating pods, their logs and the Job's final condition.
"""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from click.testing import CliRunner
from kubernetes import client

from job.kube import chart

from job.kube import cluster
from job.cli import main
from job.core.errors import ClusterJobNotFound, ClusterServerError, Preempted

from .k8s_tools import CHART, ROOT, emulator, kubeconfig

NS = "ml"
JOB_LABEL = "batch.kubernetes.io/job-name"
INDEX = "batch.kubernetes.io/job-completion-index"  # an Indexed Job's pod: its index


@dataclass
class Cluster:
    api: Any  # the emulator's handler: stored objects and requests
    url: str
    kubeconfig: Path

    def cli(self, *args: str) -> Any:
        return CliRunner().invoke(main, [*args, "--kubeconfig", str(self.kubeconfig)])

    def stored(self, plural: str, name: str, namespace: str = NS) -> dict[str, Any] | None:
        for (resource, ns, obj_name), obj in self.api.objects.items():
            if resource.plural == plural and ns == namespace and obj_name == name and not obj.deleted:
                return obj.raw
        return None

    def requests(self, method: str, path_part: str) -> list[Any]:
        return [r for r in self.api if r.method.name == method and path_part in r.url.path]


@pytest.fixture
def k8s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    monkeypatch.setattr(cluster, "POLL_SECONDS", 0.02)
    with emulator() as (api, url):
        yield Cluster(api, url, kubeconfig(tmp_path / "kubeconfig", url, namespace=NS))


class Kubelet:
    """Pods with states and logs, and the Job's final condition, as a cluster would report them."""

    def __init__(self, k8s: Cluster) -> None:
        api = client.ApiClient(client.Configuration(host=k8s.url))
        self.k8s, self.core, self.batch = k8s, client.CoreV1Api(api), client.BatchV1Api(api)
        self.count = 0

    def pod(self, job: str, log: str, exit_code: int | None = None, disrupted: bool = False, index: int | None = None) -> str:
        self.count += 1
        name = f"{job}-{self.count}"
        self.k8s.api["get", kmock.resource("v1/pods"), kmock.name(name), kmock.subresource("log")] << log.encode()
        state = {"running": {"startedAt": "2026-01-01T00:00:00Z"}} if exit_code is None else {
            "terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed"}}
        phase = "Running" if exit_code is None else ("Succeeded" if exit_code == 0 else "Failed")
        conditions = [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}] if disrupted else []
        self.core.create_namespaced_pod(NS, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {JOB_LABEL: job}, "creationTimestamp": f"2026-01-01T00:00:{self.count:02d}Z",
                         "annotations": {} if index is None else {INDEX: str(index)}},
            "status": {"phase": phase, "conditions": conditions,
                       "containerStatuses": [{"name": "cifar-job", "state": state, "ready": False, "restartCount": 0,
                                              "image": "cifar-job", "imageID": ""}]},
        })
        return name

    def finish(self, job: str, kind: str, reason: str, message: str, succeeded: int = 0, failed: int = 0) -> None:
        condition = {"type": kind, "status": "True", "reason": reason, "message": message}
        status = {"conditions": [condition], "active": 0, "succeeded": succeeded, "failed": failed}
        self.batch.patch_namespaced_job_status(job, NS, {"status": status})

    def after_submit(self, job: str, steps: Any) -> threading.Thread:
        """Run `steps(self)` once the Job exists, as the controllers would."""
        def run() -> None:
            deadline = time.monotonic() + 30
            while self.k8s.stored("jobs", job) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            steps(self)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


def error_line(result: Any) -> str:
    """The CLI's one-line error (stderr also carries the log)."""
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("cifar-job: error:")]
    return line


def test_submit_creates_the_job_its_companions_and_its_owned_config(k8s: Cluster) -> None:
    values = CHART / "values-staging.yaml"
    result = k8s.cli("k8s", "submit", "-f", str(values), "--name", "run-1")
    assert result.exit_code == 0, result.output
    assert result.stdout == "run-1\n"
    expected = {d["kind"]: d for d in chart.objects(chart.render(chart.load_values([values]), run_name="run-1"))}
    job = k8s.stored("jobs", "run-1")
    assert job["spec"] == expected["Job"]["spec"]
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "cifar-job"
    config = k8s.stored("configmaps", "run-1")
    assert config["data"] == expected["ConfigMap"]["data"]
    assert config["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "run-1", "uid": job["metadata"]["uid"]}
    ]
    for plural, kind in (("serviceaccounts", "ServiceAccount"), ("persistentvolumeclaims", "PersistentVolumeClaim"),
                         ("podmonitors", "PodMonitor"), ("prometheusrules", "PrometheusRule")):
        stored = k8s.stored(plural, expected[kind]["metadata"]["name"])
        assert stored is not None and stored.get("spec") == expected[kind].get("spec"), kind


def test_submit_creates_the_inference_service_when_kserve_is_enabled(k8s: Cluster) -> None:
    result = k8s.cli("k8s", "submit", "--set", "kserve.enabled=true", "--name", "run-s")
    assert result.exit_code == 0, result.output
    expected = {d["kind"]: d for d in chart.objects(chart.render(chart.load_values([], ["kserve.enabled=true"]), run_name="run-s"))}
    stored = k8s.stored("inferenceservices", expected["InferenceService"]["metadata"]["name"])
    assert stored is not None and stored["spec"] == expected["InferenceService"]["spec"]


def test_submit_uses_the_contexts_namespace_unless_told(k8s: Cluster) -> None:
    assert k8s.cli("k8s", "submit", "--name", "run-a").exit_code == 0
    assert k8s.cli("k8s", "submit", "--name", "run-b", "-n", "research").exit_code == 0
    assert k8s.stored("jobs", "run-a", NS) and k8s.stored("jobs", "run-b", "research")


def test_submit_wait_streams_the_log_and_exits_0_when_the_job_completes(k8s: Cluster) -> None:
    def complete(kubelet: Kubelet) -> None:
        kubelet.pod("run-ok", "epoch 1/2\nepoch 2/2\npublished cifar10-cnn/1\n", exit_code=0)
        kubelet.finish("run-ok", "Complete", "CompletionsReached", "Reached expected number of succeeded pods")

    thread = Kubelet(k8s).after_submit("run-ok", complete)
    result = k8s.cli("k8s", "submit", "--name", "run-ok", "--wait")
    thread.join(10)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["run-ok", "epoch 1/2", "epoch 2/2", "published cifar10-cnn/1"]
    assert "pod run-ok-1: Succeeded, exit 0 (success)" in result.stderr
    assert "Job ml/run-ok complete" in result.stderr


def test_submit_wait_exits_11_and_names_the_cause_when_the_job_fails(k8s: Cluster) -> None:
    def fail(kubelet: Kubelet) -> None:
        kubelet.pod("run-bad", "accuracy 0.61 < gate 0.7562\n", exit_code=6)
        kubelet.finish("run-bad", "Failed", "PodFailurePolicy",
                       "Container cifar-job for pod ml/run-bad-1 failed with exit code 6 matching FailJob rule at index 0")

    thread = Kubelet(k8s).after_submit("run-bad", fail)
    result = k8s.cli("k8s", "submit", "--name", "run-bad", "--wait")
    thread.join(10)
    assert result.exit_code == 11
    assert "accuracy 0.61 < gate 0.7562" in result.stdout
    error = error_line(result)
    assert error.startswith("cifar-job: error: Job ml/run-bad failed: PodFailurePolicy:")
    assert "last pod run-bad-1: Failed, exit 6 (gate_failed)" in error


def test_wait_follows_the_retry_after_a_preemption(k8s: Cluster) -> None:
    assert k8s.cli("k8s", "submit", "--name", "run-p").exit_code == 0
    kubelet = Kubelet(k8s)
    kubelet.pod("run-p", "epoch 1/3\nepoch 2/3\npreempted: state saved at epoch 2\n", exit_code=75, disrupted=True)
    kubelet.pod("run-p", "resuming at epoch 3\nepoch 3/3\n", exit_code=0)
    kubelet.finish("run-p", "Complete", "CompletionsReached", "done")
    lines: list[str] = []
    cluster.wait(cluster.connect(str(k8s.kubeconfig)), "run-p", lines.append)
    assert lines == ["epoch 1/3", "epoch 2/3", "preempted: state saved at epoch 2", "resuming at epoch 3", "epoch 3/3"]
    pod_lists = [r for r in k8s.requests("GET", "/pods") if not r.url.path.endswith("/log")]
    assert pod_lists and all(r.params.get("labelSelector") == f"{JOB_LABEL}=run-p" for r in pod_lists)


def test_logs_streams_the_newest_pod(k8s: Cluster) -> None:
    assert k8s.cli("k8s", "submit", "--name", "run-l").exit_code == 0
    kubelet = Kubelet(k8s)
    kubelet.pod("run-l", "old pod\n", exit_code=75)
    kubelet.pod("run-l", "new pod line 1\nnew pod line 2\n")
    result = k8s.cli("k8s", "logs", "run-l", "--follow")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["new pod line 1", "new pod line 2"]
    (request,) = k8s.requests("GET", "/log")
    assert "run-l-2/log" in request.url.path and request.params["follow"] == "true" and request.params["container"] == "cifar-job"


def test_status_shows_the_outcome_and_each_pods_exit(k8s: Cluster) -> None:
    assert k8s.cli("k8s", "submit", "--name", "run-s").exit_code == 0
    kubelet = Kubelet(k8s)
    kubelet.pod("run-s", "", exit_code=75, disrupted=True)
    kubelet.pod("run-s", "", exit_code=3)
    kubelet.finish("run-s", "Failed", "PodFailurePolicy", "exit code 3 matching FailJob rule", failed=1)  # disruptions do not count
    result = k8s.cli("k8s", "status", "run-s")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "Job ml/run-s: Failed (PodFailurePolicy: exit code 3 matching FailJob rule); active 0, succeeded 0, failed 1",
        "  pod run-s-1: Failed (disrupted: PreemptionByScheduler)",
        "  pod run-s-2: Failed, exit 3 (data)",
    ]


def test_an_existing_job_of_the_same_name_is_exit_10_and_left_alone(k8s: Cluster) -> None:
    assert k8s.cli("k8s", "submit", "--name", "run-x", "--set", "config.train.epochs=5").exit_code == 0
    result = k8s.cli("k8s", "submit", "--name", "run-x", "--set", "config.train.epochs=9")
    assert result.exit_code == 10
    assert error_line(result) == (
        "cifar-job: error: Job run-x already exists in namespace ml: "
        "delete it (cifar-job k8s delete run-x -n ml) or pass another --name"
    )
    assert "epochs: 5" in k8s.stored("configmaps", "run-x")["data"]["config.yaml"]


def test_forbidden_is_exit_9_with_the_servers_reason(k8s: Cluster) -> None:
    message = 'jobs.batch is forbidden: User "alice" cannot create resource "jobs" in API group "batch" in the namespace "ml"'
    k8s.api["post", kmock.resource("batch/v1/jobs")] << (lambda: kmock.KubernetesError(status=403, reason="Forbidden", message=message))
    result = k8s.cli("k8s", "submit", "--name", "run-f")
    assert result.exit_code == 9
    assert error_line(result) == f"cifar-job: error: create Job run-f in namespace ml: forbidden: {message}"
    assert k8s.stored("configmaps", "run-f") is None


def test_delete_removes_the_job_with_its_pods_in_the_background(k8s: Cluster) -> None:
    assert k8s.cli("k8s", "submit", "--name", "run-d").exit_code == 0
    result = k8s.cli("k8s", "delete", "run-d")
    assert result.exit_code == 0, result.output
    (request,) = k8s.requests("DELETE", "/jobs/run-d")
    assert request.params["propagationPolicy"] == "Background"
    missing = k8s.cli("k8s", "status", "run-d")
    assert missing.exit_code == ClusterJobNotFound.exit_code
    assert error_line(missing).startswith("cifar-job: error: read Job run-d in namespace ml:")


@pytest.mark.parametrize("command", [("status",), ("logs",), ("logs", "--follow"), ("delete",)])
def test_a_missing_job_is_exit_14_not_a_config_error(k8s: Cluster, command: tuple[str, ...]) -> None:
    result = k8s.cli("k8s", command[0], "never-made", *command[1:])
    assert result.exit_code == ClusterJobNotFound.exit_code == 14
    action = "delete" if command[0] == "delete" else "read"
    assert error_line(result).startswith(f"cifar-job: error: {action} Job never-made in namespace ml: ")
    assert "not found" in error_line(result)


def test_a_job_deleted_while_waiting_is_exit_14(k8s: Cluster) -> None:
    thread = Kubelet(k8s).after_submit("run-gone", lambda kubelet: kubelet.batch.delete_namespaced_job("run-gone", NS))
    result = k8s.cli("k8s", "submit", "--name", "run-gone", "--wait")
    thread.join(10)
    assert result.exit_code == 14
    assert error_line(result).startswith("cifar-job: error: read Job run-gone in namespace ml: ")


def test_a_missing_namespace_on_create_stays_a_config_error(k8s: Cluster) -> None:
    message = 'namespaces "nowhere" not found'
    k8s.api["post", kmock.resource("v1/serviceaccounts")] << (lambda: kmock.KubernetesError(status=404, reason="NotFound", message=message))
    result = k8s.cli("k8s", "submit", "--name", "run-n", "-n", "nowhere")
    assert result.exit_code == 2
    assert error_line(result) == f"cifar-job: error: create ServiceAccount cifar-job in namespace nowhere: {message}"


@pytest.mark.parametrize("status", [500, 503])
def test_an_api_server_failure_is_exit_15_not_a_bug(k8s: Cluster, status: int) -> None:
    assert k8s.cli("k8s", "submit", "--name", "run-5").exit_code == 0
    message = "etcdserver: request timed out"
    k8s.api["get", kmock.resource("batch/v1/jobs"), kmock.name("run-5")] << (
        lambda: kmock.KubernetesError(status=status, reason="InternalError", message=message))
    result = k8s.cli("k8s", "status", "run-5")
    assert result.exit_code == ClusterServerError.exit_code == 15
    assert error_line(result) == f"cifar-job: error: read Job run-5 in namespace ml: API server error {status}: {message}"
    assert "Traceback" not in result.output


def test_an_api_server_failure_on_create_is_exit_15_and_creates_no_config(k8s: Cluster) -> None:
    k8s.api["post", kmock.resource("batch/v1/jobs")] << (lambda: kmock.KubernetesError(status=503, reason="ServiceUnavailable", message="overloaded"))
    result = k8s.cli("k8s", "submit", "--name", "run-u")
    assert result.exit_code == 15
    assert error_line(result) == "cifar-job: error: create Job run-u in namespace ml: API server error 503: overloaded"
    assert k8s.stored("configmaps", "run-u") is None


def test_an_unreachable_cluster_is_exit_8(k8s: Cluster, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    config = kubeconfig(tmp_path / "down", f"http://127.0.0.1:{closed}")
    result = CliRunner().invoke(main, ["k8s", "submit", "--kubeconfig", str(config)])
    assert result.exit_code == 8
    assert error_line(result).startswith(f"cifar-job: error: create NetworkPolicy cifar-job: cannot reach the Kubernetes API at http://127.0.0.1:{closed}")


def test_no_cluster_configured_is_exit_8(tmp_path: Path) -> None:
    result = CliRunner(env={"KUBECONFIG": None, "HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": None}).invoke(main, ["k8s", "status", "x"])
    assert result.exit_code == 8
    assert error_line(result) == (
        "cifar-job: error: no cluster configured: no kubeconfig (--kubeconfig, KUBECONFIG or ~/.kube/config) and not running in a pod"
    )


def test_k8s_commands_do_not_load_tensorflow() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from job.cli import main; "
        "r = CliRunner().invoke(main, ['k8s', 'render']); assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'onnxruntime') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "[]"


def _imports(module: str) -> set[str]:
    """Every module `module` imports anywhere in its source (function bodies included), as written."""
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    return names


def test_rendering_and_api_calls_stay_apart() -> None:
    """The chart never talks to a cluster, the API layer never renders, and the command group sits above both."""
    chart_imports, cluster_imports, cli_imports = (_imports(m) for m in ("job.kube.chart", "job.kube.cluster", "job.kube.cli"))
    assert not any(name.startswith("kubernetes") for name in chart_imports)
    assert not any(name.startswith(("helm_python", "job.kube.chart")) for name in cluster_imports)
    assert not any(name.startswith("job.cli") for name in cli_imports)


# --- experiments (Indexed Jobs) and Kueue -------------------------------------------------------

class Controller(Kubelet):
    """Kubelet, plus an Indexed Job's status and Kueue's admission, each step seen by the waiter before the next."""

    def status(self, job: str, **status: Any) -> None:
        self.batch.patch_namespaced_job_status(job, NS, {"status": status})
        self.seen(job)

    def seen(self, job: str) -> None:
        """Return once the waiter has read the Job twice more: it has reported what is there now."""
        reads = lambda: len([r for r in self.k8s.requests("GET", f"/jobs/{job}")])  # noqa: E731
        target, deadline = reads() + 2, time.monotonic() + 30
        while reads() < target and time.monotonic() < deadline:
            time.sleep(0.01)


def spec_file(tmp_path: Path, **spec: Any) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "seeds", **spec}))
    return str(path)


def test_submit_wait_reports_each_trial_and_the_outcome_of_an_experiment(k8s: Cluster, tmp_path: Path) -> None:
    def run(c: Controller) -> None:
        c.seen("exp-1")
        c.pod("exp-1", "", index=0), c.pod("exp-1", "", index=1)
        c.status("exp-1", active=2)
        c.pod("exp-1", "", index=0, exit_code=0)
        c.status("exp-1", active=2, completedIndexes="0")
        c.pod("exp-1", "", index=1, exit_code=Preempted.exit_code, disrupted=True)  # preempted: the index is retried, uncounted
        c.pod("exp-1", "", index=2, exit_code=1)  # an unexpected failure: retried within backoffLimitPerIndex
        c.status("exp-1", active=2, completedIndexes="0", failed=1)
        c.pod("exp-1", "", index=1, exit_code=0), c.pod("exp-1", "", index=2, exit_code=0)  # the last one selected and published
        c.status("exp-1", active=0, completedIndexes="0-2", failed=1, succeeded=3)
        c.finish("exp-1", "Complete", "CompletionsReached", "Reached expected number of succeeded pods", succeeded=3, failed=1)

    thread = Controller(k8s).after_submit("exp-1", run)
    result = k8s.cli("k8s", "submit", "--experiment", spec_file(tmp_path, seeds=3), "--set", "storage.accessModes={ReadWriteMany}",
                     "--name", "exp-1", "--wait")
    thread.join(30)
    assert result.exit_code == 0, result.output
    assert result.stdout == "exp-1\n"  # side-by-side pods' logs are not interleaved
    job = k8s.stored("jobs", "exp-1")
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 3
    progress = [line.split("Job ml/exp-1: ", 1)[1] for line in result.stderr.splitlines() if "Job ml/exp-1: " in line]
    assert progress == [
        "trials 0/3 complete, 0 failed, 0 running",
        "trials 0/3 complete, 0 failed, 2 running",
        "trials 1/3 complete, 0 failed, 2 running (complete 0)",
        "trials 3/3 complete, 0 failed, 0 running (complete 0-2)",
    ]
    assert "pod exp-1-4 (trial 1): Failed (disrupted: PreemptionByScheduler)" in result.stderr
    assert "pod exp-1-5 (trial 2): Failed, exit 1 (error)" in result.stderr
    assert "pod exp-1-7 (trial 2): Succeeded, exit 0 (success)" in result.stderr
    assert "Job ml/exp-1 complete" in result.stderr


def test_submit_wait_names_the_failed_trials_when_an_experiment_fails(k8s: Cluster, tmp_path: Path) -> None:
    def run(c: Controller) -> None:
        c.seen("exp-2")
        c.pod("exp-2", "", index=0, exit_code=0)
        c.pod("exp-2", "", index=1, exit_code=13)  # diverged: FailIndex, the other trials go on
        c.status("exp-2", active=0, completedIndexes="0", failedIndexes="1", failed=1, succeeded=1)
        c.finish("exp-2", "Failed", "FailedIndexes", "Job has failed indexes", succeeded=1, failed=1)

    thread = Controller(k8s).after_submit("exp-2", run)
    result = k8s.cli("k8s", "submit", "--experiment", spec_file(tmp_path, seeds=2), "--set", "experiment.sameNode=true",
                     "--name", "exp-2", "--wait")
    thread.join(30)
    assert result.exit_code == 11, result.output
    assert "Job ml/exp-2: trials 1/2 complete, 1 failed, 0 running (complete 0; failed 1)" in result.stderr
    error = error_line(result)
    assert error.startswith("cifar-job: error: Job ml/exp-2 failed: FailedIndexes: Job has failed indexes; failed trials: 1; ")
    assert error.endswith("last pod exp-2-2 (trial 1): Failed, exit 13 (diverged)")


def test_a_job_queued_by_kueue_is_reported_queued_until_admitted(k8s: Cluster) -> None:
    def admit(c: Controller) -> None:
        c.seen("q-1")
        c.batch.patch_namespaced_job("q-1", NS, {"spec": {"suspend": False}})  # Kueue admits it
        c.pod("q-1", "epoch 1/1\n", exit_code=0)
        c.finish("q-1", "Complete", "CompletionsReached", "done", succeeded=1)

    thread = Controller(k8s).after_submit("q-1", admit)
    result = k8s.cli("k8s", "submit", "--queue", "team-a", "--name", "q-1", "--wait")
    thread.join(30)
    assert result.exit_code == 0, result.output
    job = k8s.stored("jobs", "q-1")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    lines = [line for line in result.stderr.splitlines() if ": Job ml/q-1" in line]
    assert [line.split(": Job ml/q-1", 1)[1] for line in lines] == [
        ": queued: suspended until Kueue admits it (queue team-a)", ": admitted", " complete"]
    assert result.stdout.splitlines() == ["q-1", "epoch 1/1"]


def test_status_says_queued_for_a_suspended_job(k8s: Cluster) -> None:
    assert k8s.cli("k8s", "submit", "--queue", "team-a", "--name", "q-2").exit_code == 0
    result = k8s.cli("k8s", "status", "q-2")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:2] == ["Job ml/q-2: Queued; no pods yet", "  queued: suspended until Kueue admits it (queue team-a)"]
    assert k8s.cli("k8s", "submit", "--name", "plain").exit_code == 0
    assert k8s.cli("k8s", "status", "plain").stdout.splitlines() == ["Job ml/plain: Pending; no pods yet"]
