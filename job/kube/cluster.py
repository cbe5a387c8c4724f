"""The training Job through the Kubernetes API: submit, follow, report, clean up.

The objects come rendered from job/kube/chart.py; this module only talks to the cluster, with the
official `kubernetes` client (kubeconfig or in-cluster config, imported when a call is made).
Its errors become the exit codes of job/core/errors.py: 8 unreachable, 9 forbidden, 10 Job exists,
11 Job failed, 14 no such Job, 15 the API server failed (5xx); 2 for a request the server
refuses as invalid.

Tests run against kmock's KubernetesEmulator (real HTTP on 127.0.0.1, objects in memory)
because no real kube-apiserver can run in this project's test environment; the emulator has no
controllers, so the tests move Job and pod status themselves, and it checks no schemas, which
tests/test_k8s_manifests.py does against the official Kubernetes schemas instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from job.core import errors
from job.core.errors import (
    ClusterForbidden,
    ClusterJobFailed,
    ClusterJobNotFound,
    ClusterServerError,
    ClusterUnreachable,
    ConfigError,
    JobError,
    JobExists,
)

log = logging.getLogger(__name__)

CONTAINER = "cifar-job"  # the container name the chart's podFailurePolicy refers to
_TIMEOUT = (10, 60)  # connect, read seconds for every non-streaming API call
POLL_SECONDS = 2.0  # between looks at the Job while no pod log is streaming
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # Kueue admits a Job with it by unsuspending it
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"  # an Indexed Job's pod: its trial
_CORE = {  # kind -> (client API class, snake-case name in its create_namespaced_* method)
    "NetworkPolicy": ("NetworkingV1Api", "network_policy"),
    "ServiceAccount": ("CoreV1Api", "service_account"),
    "PersistentVolumeClaim": ("CoreV1Api", "persistent_volume_claim"),
    "ConfigMap": ("CoreV1Api", "config_map"),
    "Job": ("BatchV1Api", "job"),
}
# Custom resources (Prometheus Operator, KServe): optional companions, skipped with a warning without their CRDs.
_CUSTOM = {"PodMonitor": "podmonitors", "PrometheusRule": "prometheusrules", "InferenceService": "inferenceservices"}
_EPOCH = datetime.fromtimestamp(0, timezone.utc)
_EXIT_REASONS = {0: "success"} | {
    cls.exit_code: cls.reason for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.EXPECTED_FAILURES)
}


# --- connecting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """An authenticated API client and the namespace every call works in."""

    api: Any  # kubernetes.client.ApiClient
    namespace: str

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    def batch(self) -> Any:
        from kubernetes import client

        return client.BatchV1Api(self.api)


def connect(kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None) -> Target:
    """Kubeconfig (the given path(s), else ~/.kube/config) or, without one, the in-cluster config."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    path = kubeconfig or "~/.kube/config"
    if any(Path(p).expanduser().is_file() for p in path.split(":")):
        try:
            config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
            contexts, active = config.list_kube_config_contexts(config_file=path)
        except (ConfigException, OSError, ValueError) as e:
            raise ClusterUnreachable(f"kubeconfig {path}: {e}") from None
        if context:
            active = next(c for c in contexts if c["name"] == context)
        default_namespace = active.get("context", {}).get("namespace")
    elif kubeconfig or context:
        raise ClusterUnreachable(f"kubeconfig {path}: no such file")
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            raise ClusterUnreachable(
                "no cluster configured: no kubeconfig (--kubeconfig, KUBECONFIG or ~/.kube/config) and not running in a pod"
            ) from None
        default_namespace = _read(Path(config.incluster_config.SERVICE_TOKEN_FILENAME).with_name("namespace"))
    return Target(client.ApiClient(configuration), namespace or default_namespace or "default")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


@contextmanager
def _api(action: str, target: Target, conflict: JobError | None = None, not_found: type[JobError] = ConfigError) -> Iterator[None]:
    """Turn client errors into one-line JobErrors with the exit codes of job/core/errors.py.

    A 404 raises `not_found`: by default a config error (the request named a wrong namespace or
    kind); calls about one named Job pass ClusterJobNotFound, since there it means that Job is gone.
    """
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as e:
        message = _server_message(e)
        where = f"{action} in namespace {target.namespace}"
        if e.status == 409 and conflict is not None:
            raise conflict from None
        if e.status in (401, 403):
            raise ClusterForbidden(f"{where}: {e.reason.lower()}: {message}") from None
        if e.status == 404:
            raise not_found(f"{where}: {message}") from None
        if e.status in (400, 422):
            raise ConfigError(f"{where}: {message}") from None
        if e.status >= 500:
            raise ClusterServerError(f"{where}: API server error {e.status}: {message}") from None
        raise JobError(f"{where}: API server error {e.status}: {message}") from None
    except HTTPError as e:
        reason = getattr(e, "reason", None) or e
        raise ClusterUnreachable(f"{action}: cannot reach the Kubernetes API at {target.api.configuration.host}: {reason}") from None


def _server_message(e: Any) -> str:
    try:
        return yaml.safe_load(e.body)["message"]
    except Exception:  # a body that is no Status object: say what HTTP said
        return str(e.reason)


# --- submitting ---------------------------------------------------------------------------------


def submit(target: Target, manifest: Sequence[Mapping[str, Any]]) -> str:
    """Create the Job (JobExists if its name is taken) and its companions; return the Job's name.

    Shared companions (NetworkPolicy, ServiceAccount, claim, monitoring) are created when missing and kept when
    present. The run's ConfigMap comes last, owned by the Job, so deleting the Job removes it.
    """
    job = next(obj for obj in manifest if obj["kind"] == "Job")
    name, ns = job["metadata"]["name"], target.namespace
    run_config = next(o for o in manifest if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name)
    for obj in manifest:
        if obj is not job and obj is not run_config:
            _ensure(target, obj)
    taken = JobExists(f"Job {name} already exists in namespace {ns}: delete it (cifar-job k8s delete {name} -n {ns}) or pass another --name")
    with _api(f"create Job {name}", target, conflict=taken):
        created = _create(target, job)
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": created.metadata.uid}
    try:
        with _api(f"create ConfigMap {name}", target):
            _create(target, {**run_config, "metadata": {**run_config["metadata"], "ownerReferences": [owner]}})
    except JobError:
        delete(target, name)  # its pod would wait for the config forever
        raise
    log.info("created Job %s/%s", ns, name)
    return name


def _ensure(target: Target, obj: Mapping[str, Any]) -> None:
    """Create a shared companion unless it exists; monitoring objects are optional."""
    from kubernetes.client.exceptions import ApiException

    what = f"{obj['kind']} {obj['metadata']['name']}"
    with _api(f"create {what}", target):
        try:
            _create(target, obj)
            log.info("created %s", what)
        except ApiException as e:
            if e.status == 409:
                log.info("kept the existing %s", what)
            elif obj["kind"] in _CUSTOM and e.status in (403, 404):
                log.warning("%s not created (its CRD is not installed, or not allowed): %s", what, _server_message(e))
            else:
                raise


def _create(target: Target, obj: Mapping[str, Any]) -> Any:
    from kubernetes import client

    kind = obj["kind"]
    if kind in _CUSTOM:
        group, version = obj["apiVersion"].split("/")
        api = client.CustomObjectsApi(target.api)
        return api.create_namespaced_custom_object(group, version, target.namespace, _CUSTOM[kind], obj, _request_timeout=_TIMEOUT)
    api_class, snake = _CORE[kind]
    create = getattr(getattr(client, api_class)(target.api), f"create_namespaced_{snake}")
    return create(target.namespace, obj, _request_timeout=_TIMEOUT)


# --- following ----------------------------------------------------------------------------------


def wait(target: Target, name: str, write: Callable[[str], None]) -> None:
    """Report pod phases and stream every pod's log until the Job completes; ClusterJobFailed if it fails.

    A preempted pod's log ends with its exit (75); the retry's pod is followed next. An Indexed Job
    (an experiment) runs pods side by side, whose logs would interleave: its trials' progress is
    reported instead (`cifar-job k8s logs` shows the newest pod's log). A suspended Job is queued
    (by Kueue, until its quota admits it), not failed: the wait goes on.
    """
    phases: dict[str, str] = {}
    streamed: set[str] = set()
    reported: str | None = None
    while True:
        job = _read_job(target, name)
        pods = _pods(target, name)
        for pod in pods:
            phase = describe_pod(pod)
            if phases.get(pod.metadata.name) != phase:
                phases[pod.metadata.name] = phase
                log.info("pod %s%s: %s", pod.metadata.name, _trial(pod), phase)
        progress = _progress(job)
        if progress != reported:
            log.info("Job %s/%s: %s", target.namespace, name, progress or "admitted")
            reported = progress
        started = [p for p in pods if p.metadata.name not in streamed and _started(p)] if not _indexed(job) else []
        if started:
            streamed.add(started[0].metadata.name)
            for line in stream_logs(target, started[0].metadata.name, follow=True):
                write(line)
            continue  # the pod's log ended: look at the Job again before sleeping
        done = _finished(job)
        if done is not None:
            break
        time.sleep(POLL_SECONDS)
    if done.type == "Complete":
        log.info("Job %s/%s complete", target.namespace, name)
        return
    failed = f"; failed trials: {job.status.failed_indexes}" if _indexed(job) and job.status.failed_indexes else ""
    last = f"; last pod {pods[-1].metadata.name}{_trial(pods[-1])}: {describe_pod(pods[-1])}" if pods else ""
    raise ClusterJobFailed(f"Job {target.namespace}/{name} failed: {done.reason}: {done.message}{failed}{last}")


def status(target: Target, name: str) -> str:
    """The Job's state and each pod's phase, one line each."""
    job = _read_job(target, name)
    done = _finished(job)
    s = job.status
    queued = done is None and job.spec.suspend
    state = f"{done.type} ({done.reason}: {done.message})" if done else ("Queued" if queued else "Running" if s and s.active else "Pending")
    counts = f"active {s.active or 0}, succeeded {s.succeeded or 0}, failed {s.failed or 0}" if s else "no pods yet"
    lines = [f"Job {target.namespace}/{name}: {state}; {counts}"]
    progress = _progress(job)
    lines += [f"  {progress}"] if progress else []
    lines += [f"  pod {pod.metadata.name}{_trial(pod)}: {describe_pod(pod)}" for pod in _pods(target, name)]
    return "\n".join(lines)


def logs(target: Target, name: str, follow: bool) -> Iterator[str]:
    """The log of the Job's newest pod."""
    _read_job(target, name)
    pods = _pods(target, name)
    if not pods:
        log.info("Job %s/%s has no pods yet", target.namespace, name)
        return iter(())
    return stream_logs(target, pods[-1].metadata.name, follow)


def delete(target: Target, name: str) -> None:
    """Delete the Job; its pods and its run's ConfigMap go with it (the run directory stays)."""
    with _api(f"delete Job {name}", target, not_found=ClusterJobNotFound):
        target.batch().delete_namespaced_job(name, target.namespace, propagation_policy="Background", _request_timeout=_TIMEOUT)
    log.info("deleted Job %s/%s", target.namespace, name)


def stream_logs(target: Target, pod: str, follow: bool) -> Iterator[str]:
    """The container's log line by line; with `follow`, until the container exits."""
    from kubernetes.client.exceptions import ApiException

    with _api(f"read the log of pod {pod}", target):
        try:
            response = target.core().read_namespaced_pod_log(
                pod, target.namespace, container=CONTAINER, follow=follow, _preload_content=False
            )
        except ApiException as e:
            if e.status not in (400, 404):
                raise
            log.warning("pod %s: no log: %s", pod, _server_message(e))  # never started, or already gone
            return
        try:
            for line in response:
                yield line.decode(errors="replace").rstrip("\n")
        finally:
            response.release_conn()


def describe_pod(pod: Any) -> str:
    """Phase, plus why it waits, how it ended (exit code and its meaning) or what disrupted it."""
    phase = (pod.status and pod.status.phase) or "Pending"
    for condition in (pod.status and pod.status.conditions) or ():
        if condition.type == "DisruptionTarget" and condition.status == "True":
            return f"{phase} (disrupted: {condition.reason})"
    statuses = (pod.status and pod.status.container_statuses) or ()
    state = next((c.state for c in statuses if c.name == CONTAINER), None)
    if state and state.terminated:
        code = state.terminated.exit_code
        return f"{phase}, exit {code} ({_EXIT_REASONS.get(code, state.terminated.reason or 'unknown')})"
    if state and state.waiting and state.waiting.reason:
        return f"{phase} ({state.waiting.reason})"
    return phase


def _read_job(target: Target, name: str) -> Any:
    with _api(f"read Job {name}", target, not_found=ClusterJobNotFound):
        return target.batch().read_namespaced_job(name, target.namespace, _request_timeout=_TIMEOUT)


def _pods(target: Target, name: str) -> list[Any]:
    """The Job's pods, oldest first."""
    with _api(f"list the pods of Job {name}", target):
        pods = target.core().list_namespaced_pod(
            target.namespace, label_selector=f"batch.kubernetes.io/job-name={name}", _request_timeout=_TIMEOUT
        ).items
    return sorted(pods, key=lambda p: (p.metadata.creation_timestamp or _EPOCH, p.metadata.name))


def _started(pod: Any) -> bool:
    statuses = (pod.status and pod.status.container_statuses) or ()
    return any(c.name == CONTAINER and c.state and (c.state.running or c.state.terminated) for c in statuses)


def _indexed(job: Any) -> bool:
    return job.spec.completion_mode == "Indexed"


def _progress(job: Any) -> str | None:
    """Queued while suspended (by Kueue until its quota admits the Job); an Indexed Job's trials; else None."""
    if job.spec.suspend and _finished(job) is None:
        queue = (job.metadata.labels or {}).get(QUEUE_LABEL)
        return f"queued: suspended until Kueue admits it (queue {queue})" if queue else "queued: suspended"
    if not _indexed(job):
        return None
    s = job.status
    complete, failed = (s and s.completed_indexes) or "", (s and s.failed_indexes) or ""
    counts = f"trials {_count(complete)}/{job.spec.completions} complete, {_count(failed)} failed, {(s and s.active) or 0} running"
    listed = [f"{what} {indexes}" for what, indexes in (("complete", complete), ("failed", failed)) if indexes]
    return counts + (f" ({'; '.join(listed)})" if listed else "")


def _count(indexes: str) -> int:
    """How many indexes the Job status lists, e.g. "0-2,5" -> 4."""
    ranges = [part.split("-") for part in indexes.split(",") if part]
    return sum(int(r[-1]) - int(r[0]) + 1 for r in ranges)


def _trial(pod: Any) -> str:
    index = (pod.metadata.annotations or {}).get(INDEX_ANNOTATION)
    return f" (trial {index})" if index is not None else ""


def _finished(job: Any) -> Any:
    """The Complete or Failed condition once the Job has one."""
    conditions = (job.status and job.status.conditions) or ()
    return next((c for c in conditions if c.type in ("Complete", "Failed") and c.status == "True"), None)
