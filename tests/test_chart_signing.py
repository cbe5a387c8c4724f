"""The chart's signing: the key as a read-only file from a Secret in every pod that may publish, production refusing to
publish unsigned, and KServe's predictor starting only after an init container verified every version.

The init container is tested as it will run: its rendered args after the image's ENTRYPOINT (from the Dockerfile), its
mount paths mapped onto a claim that the Job's rendered environment published to with a real key, run as the installed
`cifar-job`: exit 0 on the signed repository, 16 once a byte of a model changed or on a version published unsigned.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from job.cli import main
from job.config.settings import load_config
from job.kube import chart

from .conftest import REAL_ARCHIVE
from .k8s_tools import CHART, ROOT, kube_validate, load_docs
from .kserve_schema import inference_service_schema
from .test_published_version import NO_GATE, models, runs  # noqa: F401 - two measured models and their run directories
from .test_signing import keys  # noqa: F401 - a publisher's P-256 key pair and a small CA

pytestmark = pytest.mark.fast  # no training, no fuzzing: the tier `bash tests/run.sh -m fast` runs

PROD = chart.load_values([CHART / "values-prod.yaml"])
SIGNING = {"secretName": "cifar-job-signing", "keyKey": "publisher.key", "certificateKey": "publisher.crt", "chainKey": "issuers.pem"}
SPEC = {"name": "seeds", "seeds": 2}
SIGNING_ENV = ("CIFAR_JOB_PUBLISH_SIGNING_KEY", "CIFAR_JOB_PUBLISH_SIGNING_CERTIFICATE", "CIFAR_JOB_PUBLISH_CERTIFICATE_CHAIN")
CIFAR_JOB = Path(sys.executable).with_name("cifar-job")  # the installed command, as the image installs it


def rendered(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [doc for text in chart.render(values).values() for doc in load_docs(text)]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind)


def render_error(values: Mapping[str, Any]) -> str:
    with helm.Chart.load(CHART) as loaded, pytest.raises(helm.HelmError) as raised:
        loaded.render(values=dict(values), name="cifar-job")
    return " ".join(str(raised.value).split())


def merged(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Values files on top of each other, maps merged as Helm merges them."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


# The Job's pod: the key from the Secret, as files, in every pod that may publish.


@pytest.mark.parametrize("spec", [None, SPEC], ids=["run", "experiment"])
def test_the_signing_key_is_a_read_only_file_from_the_secret_and_nowhere_else(spec: dict[str, Any] | None, tmp_path: Path) -> None:
    values = {"signing": SIGNING, **({"experiment": {"spec": spec, "parallelism": 1}} if spec else {})}
    docs = rendered(values)
    pod = of_kind(docs, "Job")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    (volume,) = [v for v in pod["volumes"] if v["name"] == "signing"]
    assert volume["secret"]["secretName"] == "cifar-job-signing" and volume["secret"]["defaultMode"] == 0o440
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "signing"]
    assert mount["readOnly"] is True and "subPath" not in mount
    files = {item["key"]: f"{mount['mountPath']}/{item['path']}" for item in volume["secret"]["items"]}
    assert [env[name]["value"] for name in SIGNING_ENV] == [files[SIGNING[key]] for key in ("keyKey", "certificateKey", "chainKey")]
    assert not [e for e in env.values() if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]]
    kube_validate(of_kind(docs, "Job"))
    # Only names and paths are rendered: the Secret's name in the volume, never in a ConfigMap or a value.
    text = yaml.safe_dump_all(docs)
    assert "PRIVATE KEY" not in text and "BEGIN" not in text
    config_map = of_kind(docs, "ConfigMap")
    assert "cifar-job-signing" not in json.dumps(config_map) and "publisher.key" not in json.dumps(config_map)
    # The pod's files and variables are what the job reads as publish.signing_key, signing_certificate and certificate_chain.
    if spec is None:
        path = tmp_path / "config.yaml"
        path.write_text(config_map["data"]["config.yaml"])
        publish = load_config(path, env={k: e["value"] for k, e in env.items() if "value" in e}).publish
    else:
        from job.config.experiment_spec import load_spec

        path = tmp_path / "experiment.yaml"
        path.write_text(config_map["data"]["experiment.yaml"])
        publish = load_spec(path, env={k: e["value"] for k, e in env.items() if "value" in e}).trials()[0].settings.publish
    assert [str(publish.signing_key), str(publish.signing_certificate), [str(p) for p in publish.certificate_chain]] == [
        files["publisher.key"], files["publisher.crt"], [files["issuers.pem"]]]


def test_without_a_secret_nothing_is_mounted_and_versions_are_published_unsigned() -> None:
    pod = of_kind(rendered({}), "Job")["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if "secret" in v]
    assert not set(SIGNING_ENV) & {e["name"] for e in pod["containers"][0]["env"]}
    key_only = of_kind(rendered({"signing": {"secretName": "cifar-job-signing"}}), "Job")["spec"]["template"]["spec"]
    (volume,) = [v for v in key_only["volumes"] if v["name"] == "signing"]
    assert volume["secret"]["items"] == [{"key": "key.pem", "path": "key.pem"}]
    assert [e["name"] for e in key_only["containers"][0]["env"] if e["name"] in SIGNING_ENV] == [SIGNING_ENV[0]]


PEM_KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBd\n-----END EC PRIVATE KEY-----\n"


@pytest.mark.parametrize("key", ["signing_key", "signing_certificate", "certificate_chain"])
def test_a_key_or_certificate_in_config_is_refused_before_it_reaches_the_config_map(key: str) -> None:
    value = [PEM_KEY] if key == "certificate_chain" else PEM_KEY
    with helm.Chart.load(CHART) as loaded, pytest.raises(helm.HelmValuesError) as raised:
        loaded.render(values={"config": {"publish": {key: value}}}, name="cifar-job")
    assert f"/config/publish/{key}" in str(raised.value)


@pytest.mark.parametrize(("signing", "message"), [
    ({"certificateKey": "leaf.crt"}, "signing.secretName is required with signing.certificateKey"),
    ({"chainKey": "chain.pem"}, "signing.secretName is required with signing.chainKey"),
    ({"secretName": "cifar-job-signing", "chainKey": "chain.pem"}, "signing.certificateKey is required with signing.chainKey"),
])  # fmt: skip
def test_half_set_signing_values_fail_rendering(signing: dict[str, str], message: str) -> None:
    assert message in render_error({"signing": signing})


@pytest.mark.parametrize(("values", "where"), [
    ({"signing": {"secretName": "Cifar_Signing"}}, "/signing/secretName"),
    ({"signing": {"keyKey": ""}}, "/signing/keyKey"),
    ({"signing": {"certificateKey": "a/b"}}, "/signing/certificateKey"),
    ({"signing": {"secretname": "x"}}, "secretname"),
    ({"kserve": {"verify": {"configMap": "Verify Key"}}}, "/kserve/verify/configMap"),
    ({"kserve": {"verify": {"publicKey": "pub.pem"}}}, "publicKey"),
])  # fmt: skip
def test_the_schema_rejects_bad_signing_values(values: dict[str, Any], where: str) -> None:
    with helm.Chart.load(CHART) as loaded, pytest.raises(helm.HelmValuesError) as raised:
        loaded.render(values=values, name="cifar-job")
    assert where in str(raised.value)


REQUIRED = "config.publish.require_signature is true, but no signing key is mounted: set signing.secretName"


@pytest.mark.parametrize("values", [
    {"config": {"publish": {"require_signature": True}}},
    {"experiment": {"spec": {**SPEC, "base": {"publish": {"require_signature": True}}}, "parallelism": 1}},
    {"config": {"publish": {"require_signature": True}}, "experiment": {"spec": SPEC, "parallelism": 1}},
    {**PROD, "signing": {"secretName": ""}},
], ids=["config", "spec-base", "config-under-spec", "prod-without-secret"])  # fmt: skip
def test_requiring_signatures_without_a_secret_fails_rendering_saying_what_to_set(values: dict[str, Any]) -> None:
    message = render_error(values)
    assert REQUIRED in message and "kubectl create secret generic cifar-job-signing --from-file=key.pem=" in message


def test_a_spec_base_that_does_not_require_signatures_wins_over_config() -> None:
    values = {"config": {"publish": {"require_signature": True}}, "experiment": {
        "spec": {**SPEC, "base": {"publish": {"require_signature": False}}}, "parallelism": 1}}
    assert of_kind(rendered(values), "Job")


def test_production_publishes_signed_versions_only(tmp_path: Path) -> None:
    docs = chart.objects(chart.render(PROD))
    (container,) = of_kind(docs, "Job")["spec"]["template"]["spec"]["containers"]
    path = tmp_path / "config.yaml"
    path.write_text(of_kind(docs, "ConfigMap")["data"]["config.yaml"])
    publish = load_config(path, env={e["name"]: e["value"] for e in container["env"]}).publish
    assert publish.require_signature is True and str(publish.signing_key) == "/var/run/secrets/cifar-job/signing/key.pem"
    secret = next(v for v in of_kind(docs, "Job")["spec"]["template"]["spec"]["volumes"] if v["name"] == "signing")["secret"]
    assert secret["secretName"] == "cifar-job-signing"
    comments = (CHART / "values-prod.yaml").read_text()
    assert "kubectl -n ml create secret generic cifar-job-signing --from-file=key.pem=./key.pem" in comments
    assert "openssl ecparam -name prime256v1 -genkey -noout -out key.pem" in comments


# KServe: the predictor's verifying init container.


def isvc_of(*layers: Mapping[str, Any]) -> dict[str, Any]:
    return of_kind(rendered(merged(*layers, {"kserve": {"enabled": True}})), "InferenceService")


def schema_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(inference_service_schema())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def predictor_pod(isvc: dict[str, Any]) -> dict[str, Any]:
    """The pod KServe makes of the predictor: its PodSpec fields as given, the model server as a stand-in container."""
    predictor = isvc["spec"]["predictor"]
    spec = {key: value for key, value in predictor.items() if key not in ("model", "minReplicas", "maxReplicas")}
    spec["containers"] = [{"name": "kserve-container", "image": "nvcr.io/nvidia/tritonserver:25.01-py3"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": spec}


VERIFYING = {
    "prod": lambda: isvc_of(PROD),
    "public-key": lambda: isvc_of({"signing": {"secretName": "s"}, "kserve": {"verify": {"configMap": "cifar-job-verify"}}}),
    "cert-chain": lambda: isvc_of({"imagePullSecrets": [{"name": "regcred"}], "storage": {"create": False, "existingClaim": "models"},
                                   "image": {"digest": "sha256:" + "a" * 64},
                                   "kserve": {"verify": {"configMap": "ca", "publicKeyKey": "", "certChainKey": "root.pem"}}}),
}


@pytest.mark.parametrize("variant", VERIFYING)
def test_the_verifying_predictor_passes_kserves_and_kubernetes_schemas_strictly(variant: str) -> None:
    isvc = VERIFYING[variant]()
    assert schema_errors(isvc) == []
    kube_validate(predictor_pod(isvc))
    (init,) = isvc["spec"]["predictor"]["initContainers"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True and init["securityContext"]["runAsNonRoot"] is True
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]} and init["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_init_container_runs_the_jobs_image_on_the_repository_the_predictor_serves() -> None:
    values = {"imagePullSecrets": [{"name": "regcred"}], "image": {"repository": "registry.example/cifar-job", "tag": "1.2.3"},
              "storage": {"create": False, "existingClaim": "shared-models", "mountPath": "/mnt/claim"},
              "kserve": {"enabled": True, "verify": {"configMap": "cifar-job-verify"}}}
    docs = rendered(values)
    (job_container,) = of_kind(docs, "Job")["spec"]["template"]["spec"]["containers"]
    predictor = of_kind(docs, "InferenceService")["spec"]["predictor"]
    (init,) = predictor["initContainers"]
    assert (init["image"], init["imagePullPolicy"]) == (job_container["image"], job_container["imagePullPolicy"])
    assert predictor["imagePullSecrets"] == [{"name": "regcred"}]
    volumes = {v["name"]: v for v in predictor["volumes"]}
    (models_mount,) = [m for m in init["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]]
    claim = volumes[models_mount["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] is True and models_mount["readOnly"] is True and models_mount["mountPath"] == "/mnt/models"
    assert predictor["model"]["storageUri"] == f"pvc://{claim['claimName']}/{models_mount['subPath']}"
    publish_root = {e["name"]: e.get("value") for e in job_container["env"]}["CIFAR_JOB_PUBLISH_ROOT"]
    assert publish_root == f"/mnt/claim/{models_mount['subPath']}"
    assert init["args"][:2] == ["verify", models_mount["mountPath"]]


def test_without_a_verify_config_map_the_predictor_is_unchanged() -> None:
    predictor = isvc_of({})["spec"]["predictor"]
    assert not {"initContainers", "volumes", "imagePullSecrets"} & predictor.keys()
    plain = load_docs((ROOT / "k8s" / "kserve" / "inferenceservice.yaml").read_text())[0]
    assert "initContainers" not in plain["spec"]["predictor"]  # k8s/kserve/ serves without a ConfigMap no one made (docs say how)


@pytest.mark.parametrize(("values", "message"), [
    ({**PROD, "kserve": {"verify": {"configMap": ""}}},
     "kserve.enabled with config.publish.require_signature true: set kserve.verify.configMap"),
    ({"kserve": {"verify": {"configMap": "v", "certChainKey": "root.pem"}}}, "kserve.verify: set one of publicKeyKey"),
    ({"kserve": {"verify": {"configMap": "v", "publicKeyKey": ""}}}, "kserve.verify: set one of publicKeyKey"),
])  # fmt: skip
def test_serving_unverified_where_signatures_are_required_or_an_unclear_trust_fails_rendering(values: dict[str, Any], message: str) -> None:
    assert message in render_error(merged(values, {"kserve": {"enabled": True}}))


# The faithful test: the rendered init container's argv on a claim that the rendered Job published to.


def _entrypoint() -> list[str]:
    (line,) = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("ENTRYPOINT ")]
    return json.loads(line.removeprefix("ENTRYPOINT "))


class Pod:
    """A rendered container's paths on this machine: each mount to a directory of its volume, a Secret's or ConfigMap's
    items as files (contents given by key), a claim's subPath under the claim's directory."""

    def __init__(self, container: dict[str, Any], volumes: list[dict[str, Any]], claims: Mapping[str, Path],
                 objects: Mapping[str, Mapping[str, bytes]], scratch: Path) -> None:
        by_name = {v["name"]: v for v in volumes}
        self.mounts: dict[str, Path] = {}
        for mount in container["volumeMounts"]:
            volume = by_name[mount["name"]]
            if "persistentVolumeClaim" in volume:
                local = claims[volume["persistentVolumeClaim"]["claimName"]] / mount.get("subPath", "")
            elif "secret" in volume or "configMap" in volume:
                source = volume.get("secret") or volume["configMap"]
                data = objects[source.get("secretName") or source.get("name")]
                local = scratch / mount["name"]
                local.mkdir(parents=True)
                for item in source.get("items") or [{"key": key, "path": key} for key in data]:
                    (local / item["path"]).write_bytes(data[item["key"]])
            else:
                local = scratch / mount["name"]
                local.mkdir(parents=True)
            self.mounts[mount["mountPath"]] = local

    def path(self, value: str) -> str:
        """`value` with the longest mount path it lies under replaced by that mount's directory here."""
        for mount_path in sorted(self.mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(self.mounts[mount_path]) + value[len(mount_path):]
        assert not value.startswith("/"), f"{value}: on the image's read-only root, not on a mounted volume"
        return value


def _publish(values: Mapping[str, Any], run: Path, claims: Mapping[str, Path], secrets: Mapping[str, Mapping[str, bytes]],
             scratch: Path) -> None:
    """`cifar-job publish` with the rendered Job's publishing: its CIFAR_JOB_PUBLISH_* variables (the repository root, the key
    files) mapped onto this machine, and the ConfigMap's publish section."""
    docs = rendered(values)
    pod = of_kind(docs, "Job")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    local = Pod(container, pod["volumes"], claims, {of_kind(docs, "ConfigMap")["metadata"]["name"]: {}, **secrets}, scratch)
    env = {e["name"]: local.path(e["value"]) for e in container["env"] if e["name"].startswith("CIFAR_JOB_PUBLISH_")}
    publish = (yaml.safe_load(of_kind(docs, "ConfigMap")["data"]["config.yaml"]) or {}).get("publish", {})
    sets = [arg for key, value in publish.items() for arg in ("--set", f"publish.{key}={json.dumps(value)}")]
    result = CliRunner().invoke(main, ["publish", "--out", str(run), "--data", str(REAL_ARCHIVE), "--device", "cpu", *NO_GATE, *sets],
                                env=env)
    assert result.exit_code == 0, result.output


def _init_container(values: Mapping[str, Any], claims: Mapping[str, Path], config_maps: Mapping[str, Mapping[str, bytes]],
                    scratch: Path) -> list[str]:
    """Run the predictor's rendered init container here: ENTRYPOINT + args, paths mapped, the container's environment only."""
    predictor = isvc_of(values)["spec"]["predictor"]
    (init,) = predictor["initContainers"]
    assert "command" not in init  # the image's ENTRYPOINT runs the args
    local = Pod(init, predictor["volumes"], claims, config_maps, scratch)
    argv = [local.path(arg) for arg in [*_entrypoint(), *init["args"]]]
    assert argv[0] == "cifar-job"
    env = {e["name"]: local.path(e["value"]) for e in init.get("env", [])}
    done = subprocess.run([str(CIFAR_JOB), *argv[1:]], env={**env, "PATH": os.environ["PATH"]}, capture_output=True, text=True,
                          timeout=300)
    return [str(done.returncode), done.stdout, done.stderr]


def test_the_rendered_init_container_verifies_what_the_rendered_job_signed(runs, keys, tmp_path: Path) -> None:  # noqa: F811
    claim = tmp_path / "claim"
    claims = {"cifar-job-data": claim}
    secrets = {"cifar-job-signing": {"key.pem": keys["key"].read_bytes()}}
    for name in ("good", "worse"):
        _publish(PROD, runs[name], claims, secrets, tmp_path / f"publish-{name}")
    assert sorted(p.name for p in (claim / "models" / "cifar10-cnn").iterdir() if p.is_dir()) == ["1", "2"]
    config_maps = {"cifar-job-verify": {"pub.pem": keys["pub"].read_bytes()}}
    verify = lambda n: _init_container(PROD, claims, config_maps, tmp_path / f"verify-{n}")  # noqa: E731

    code, out, err = verify(0)
    assert code == "0", out + err
    assert [line.split(":")[0] for line in out.splitlines()] == [f"verified {claim}/models/cifar10-cnn/{v}" for v in (1, 2)]

    model = claim / "models" / "cifar10-cnn" / "2" / "model.onnx"
    original = model.read_bytes()
    model.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
    code, out, err = verify(1)
    assert code == "16" and f"signature of {claim}/models/cifar10-cnn/2: files differ from what was signed: changed model.onnx" in err
    model.write_bytes(original)
    assert verify(2)[0] == "0"

    # A later version published by a Job without the key (the default chart) stops the predictor, on a claim of its own
    # (publishing the same model again would reuse its signed version).
    mixed = tmp_path / "mixed"
    _publish(PROD, runs["good"], {"cifar-job-data": mixed}, secrets, tmp_path / "publish-signed")
    _publish({}, runs["worse"], {"cifar-job-data": mixed}, {}, tmp_path / "publish-unsigned")
    code, out, err = _init_container(PROD, {"cifar-job-data": mixed}, config_maps, tmp_path / "verify-mixed")
    assert code == "16" and f"signature of {mixed}/models/cifar10-cnn/2: unsigned (no model.sig)" in err, out + err


def test_the_rendered_init_container_verifies_certificate_signing_against_the_ca(runs, keys, tmp_path: Path) -> None:  # noqa: F811
    signing = {"secretName": "cifar-job-signing", "keyKey": "leaf.key", "certificateKey": "leaf.crt", "chainKey": "chain.pem"}
    values = {"config": {"publish": {"require_signature": True}}, "signing": signing}
    claims = {"cifar-job-data": tmp_path / "claim"}
    secrets = {"cifar-job-signing": {"leaf.key": keys["leaf_key"].read_bytes(), "leaf.crt": keys["leaf"].read_bytes(),
                                     "chain.pem": keys["intermediate"].read_bytes()}}
    _publish(values, runs["good"], claims, secrets, tmp_path / "publish")
    serving = merged(values, {"kserve": {"verify": {"configMap": "cifar-job-ca", "publicKeyKey": "", "certChainKey": "root.pem"}}})
    code, out, err = _init_container(serving, claims, {"cifar-job-ca": {"root.pem": keys["root"].read_bytes()}}, tmp_path / "ok")
    assert code == "0", out + err
    other = _init_container(serving, claims, {"cifar-job-ca": {"root.pem": keys["other_root"].read_bytes()}}, tmp_path / "other")
    assert other[0] == "16" and "not signed by the trusted key or certificate chain" in other[2]


def test_every_pod_that_measures_a_model_is_told_its_image_for_the_model_card() -> None:
    """export/software.py names the image in each card and sidecar; the pod cannot know it unless the chart says."""
    pinned = {"image": {"repository": "registry.example/cifar-job", "digest": "sha256:" + "ab" * 32}}
    for values in (pinned, {**pinned, "experiment": {"spec": SPEC, "sameNode": True}}):
        (container,) = of_kind(rendered(values), "Job")["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["CIFAR_IMAGE"] == container["image"] == "registry.example/cifar-job@sha256:" + "ab" * 32
