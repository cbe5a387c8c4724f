"""KServe serving of the published repository: the chart's InferenceService and k8s/kserve/.

The InferenceService is checked strictly against KServe's API types (tests/kserve_schema.py: the
kserve 0.21.0 SDK's generated models, since no registry package ships the CRD YAML), and for what
serving needs: onnx, protocol v2, storageUri at the root of the repository the Job publishes to.
The docs' request example (docs/pages/kubernetes.md) is checked against the real test image it was generated from.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import numpy as np
import onnx
import pytest
import yaml
from click.testing import CliRunner

from job.kube import chart
from job.cli import main
from job.models.contract import CLASS_COUNT, INPUT_NAME, OUTPUT_NAME

from .conftest import REAL_ARCHIVE, REAL_SHA256
from .k8s_tools import CHART, ENVIRONMENTS, K8S, ROOT, kube_validate, load_docs
from .onnx_models import mean_colour_model, predict_numpy
from .kserve_schema import inference_service_schema

pytestmark = pytest.mark.fast  # no training, no fuzzing: the tier `bash tests/run.sh -m fast` runs

PLAIN = K8S / "kserve" / "inferenceservice.yaml"
RENDER = ["k8s", "render", "--set", "managedBy=kubectl", "--set", "kserve.enabled=true", "--output-dir"]


def rendered(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object of the chart; chart.objects() orders only the kinds `submit` creates."""
    return [doc for text in chart.render(values).values() for doc in load_docs(text)]


def isvc_of(values: dict[str, Any]) -> dict[str, Any]:
    return next(d for d in rendered({"kserve": {"enabled": True}, **values}) if d["kind"] == "InferenceService")


def schema_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(inference_service_schema())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_plain_manifest_is_the_charts_current_rendering(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [*RENDER, str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert PLAIN.read_text() == (tmp_path / "inferenceservice.yaml").read_text(), (
        "k8s/kserve/inferenceservice.yaml is stale: copy it from "
        "`cifar-job k8s render --set managedBy=kubectl --set kserve.enabled=true --output-dir DIR`")


def test_off_by_default_and_outside_what_kubectl_apply_f_k8s_applies() -> None:
    """`kubectl apply -f k8s/` (not recursive) and -k k8s/ must work on clusters without KServe's CRDs."""
    for env in ("default", *ENVIRONMENTS):
        values = chart.load_values([CHART / f"values-{env}.yaml"] if env != "default" else [])
        assert "InferenceService" not in {d["kind"] for d in rendered(values)}, env
    assert "InferenceService" not in {d["kind"] for p in K8S.glob("*.yaml") for d in load_docs(p.read_text())}
    kustomization = yaml.safe_load((K8S / "Kustomization").read_text())
    assert not [r for r in kustomization["resources"] if "kserve" in r]
    assert yaml.safe_load((K8S / "kserve" / "Kustomization").read_text())["resources"] == [PLAIN.name]


VARIANTS = {
    "k8s/kserve": lambda: load_docs(PLAIN.read_text())[0],
    "defaults": lambda: isvc_of({}),
    "options": lambda: isvc_of({"kserve": {"enabled": True, "name": "cifar", "runtime": "kserve-tritonserver", "minReplicas": 0,
                                           "maxReplicas": 3, "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"},
                                           "resources": {"requests": {"cpu": "2"}, "limits": {"memory": "4Gi", "nvidia.com/gpu": "1"}}},
                                "storage": {"create": False, "existingClaim": "models"}}),
    "prod": lambda: isvc_of(chart.load_values([CHART / "values-prod.yaml"], ["kserve.enabled=true"])),  # prod sets kserve.verify
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_passes_kserves_api_schema_strictly(variant: str) -> None:
    doc = VARIANTS[variant]()
    assert schema_errors(doc) == []
    kube_validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]})  # labels, annotations, name


def test_schema_check_catches_misspelt_misplaced_and_missing_fields() -> None:
    doc = load_docs(PLAIN.read_text())[0]
    model = doc["spec"]["predictor"]["model"]
    bad = json.loads(json.dumps(doc))
    bad["spec"]["predictor"]["model"]["storageURI"] = bad["spec"]["predictor"]["model"].pop("storageUri")
    assert any("storageURI" in e for e in schema_errors(bad))
    bad = json.loads(json.dumps(doc))
    bad["spec"]["predictor"]["protocolVersion"] = "v2"  # belongs to the model
    assert any("protocolVersion" in e for e in schema_errors(bad))
    bad = json.loads(json.dumps(doc))
    del bad["spec"]["predictor"]["model"]["modelFormat"]
    assert any("modelFormat" in e for e in schema_errors(bad))
    assert model["modelFormat"] == {"name": "onnx"} and model["protocolVersion"] == "v2"


@pytest.mark.parametrize("values", [{}, {"storage": {"create": False, "existingClaim": "shared-models", "mountPath": "/mnt/claim"}}])
def test_storage_uri_is_the_root_of_the_repository_the_job_publishes_to(values: dict[str, Any]) -> None:
    docs = rendered({"kserve": {"enabled": True}, **values})
    pod = next(d for d in docs if d["kind"] == "Job")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    publish_root = {e["name"]: e.get("value") for e in container["env"]}["CIFAR_JOB_PUBLISH_ROOT"]
    mount = next(m for m in container["volumeMounts"] if publish_root.startswith(m["mountPath"] + "/"))
    claim = next(v for v in pod["volumes"] if v["name"] == mount["name"])["persistentVolumeClaim"]["claimName"]
    isvc = next(d for d in docs if d["kind"] == "InferenceService")
    path_on_claim = publish_root[len(mount["mountPath"]) + 1:]
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == f"pvc://{claim}/{path_on_claim}"


def test_the_jobs_network_policy_and_pod_monitor_do_not_select_the_predictor() -> None:
    """KServe copies the InferenceService's labels to its pods: the Job's selectors must not match them."""
    docs = rendered({"kserve": {"enabled": True}})
    labels = next(d for d in docs if d["kind"] == "InferenceService")["metadata"]["labels"]
    for kind in ("NetworkPolicy", "PodMonitor"):
        spec = next(d for d in docs if d["kind"] == kind)["spec"]
        selector = (spec.get("podSelector") or spec["selector"])["matchLabels"]
        assert not selector.items() <= labels.items(), kind
    assert labels["app.kubernetes.io/component"] == "serving"


@pytest.mark.parametrize(("values", "where"), [
    ({"kserve": {"enabld": True}}, "enabld"),
    ({"kserve": {"enabled": True, "name": "Cifar_Job"}}, "/kserve/name"),
    ({"kserve": {"enabled": True, "minReplicas": -1}}, "/kserve/minReplicas"),
    ({"kserve": {"enabled": True, "resources": {"requests": {"cpu": "two"}}}}, "/kserve/resources/requests/cpu"),
])
def test_values_schema_rejects_bad_kserve_values(values: dict[str, Any], where: str) -> None:
    with helm.Chart.load(CHART) as loaded, pytest.raises(helm.HelmValuesError) as raised:
        loaded.render(values=values, name="cifar-job")
    assert where in str(raised.value)


def test_plain_manifest_lints_clean() -> None:
    config = "{extends: default, rules: {document-start: disable, line-length: {max: 120}}}"
    files = [str(PLAIN), str(K8S / "kserve" / "Kustomization")]
    done = subprocess.run([sys.executable, "-m", "yamllint", "-s", "-d", config, *files], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def _docs_example() -> tuple[dict[str, Any] | str, dict[str, Any]]:
    section = (ROOT / "docs" / "pages" / "kubernetes.md").read_text().split("<!-- kserve-example:start -->")[1].split("<!-- kserve-example:end -->")[0]
    request = re.search(r"^\{\"inputs\".*$", section, flags=re.M).group(0)
    response = json.loads(re.search(r"^\{\"model_name\".*$", section, flags=re.M).group(0))
    return request, response


def _v2_request(*args: str) -> list[str]:
    result = CliRunner().invoke(main, ["v2-request", "--data", str(REAL_ARCHIVE), "--checksum", f"sha256:{REAL_SHA256}", *args])
    assert result.exit_code == 0, result.output
    assert f"test image 0 of {REAL_ARCHIVE}: cat" in result.stderr.splitlines()
    return result.stdout.splitlines()


def test_docs_request_is_what_v2_request_prints_for_a_real_test_image() -> None:
    request, _ = _docs_example()
    assert _v2_request() == [request], "regenerate the docs' example with `cifar-job v2-request`"
    (tensor,) = json.loads(_v2_request("--full")[0])["inputs"]
    assert tensor["name"] == INPUT_NAME and tensor["shape"] == [1, 32, 32, 3] and len(tensor["data"]) == 32 * 32 * 3
    assert all(0.0 <= v <= 1.0 for v in tensor["data"])


def test_v2_request_answers_with_the_published_models_response(tmp_path: Path) -> None:
    weights, bias = np.eye(3, CLASS_COUNT, dtype=np.float32), np.zeros(CLASS_COUNT, dtype=np.float32)
    published = tmp_path / "cifar10-cnn" / "7" / "model.onnx"
    published.parent.mkdir(parents=True)
    onnx.save(mean_colour_model(weights, bias), published)
    request, response = _v2_request("--full", "--onnx", str(published))
    (tensor,) = json.loads(request)["inputs"]
    image = np.asarray(tensor["data"], dtype=np.float32).reshape(1, 32, 32, 3)
    answer = json.loads(response)
    assert (answer["model_name"], answer["model_version"]) == ("cifar10-cnn", "7")
    probabilities = np.asarray(answer["outputs"][0]["data"])
    assert abs(probabilities.sum() - 1) < 1e-5
    assert probabilities.argmax() == predict_numpy((image * 255).round().astype(np.uint8), weights, bias)[0]


def test_docs_response_is_one_row_of_class_probabilities() -> None:
    _, response = _docs_example()
    (output,) = response["outputs"]
    assert output["name"] == OUTPUT_NAME and output["datatype"] == "FP32" and output["shape"] == [1, CLASS_COUNT]
    assert len(output["data"]) == CLASS_COUNT and abs(sum(output["data"]) - 1) < 1e-4
