"""The Helm chart: lint, values schema, per-environment renderings, upgrades, and Helm 3.

Rendering uses the real Helm engine (helm-python-sdk, Helm 4) and, for the environments, also
a real Helm 3 binary, the version most clusters are managed with.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from job.kube import chart
from job.config.settings import SECTION_NAMES, TOP_LEVEL_KEYS, load_config
from job.core.errors import ConfigError
from job.metrics.pushgateway import PASSWORD_FILE_ENV, USERNAME_ENV

from .k8s_tools import CHART, ENVIRONMENTS, KUBE_VERSIONS, helm3, load_docs

pytestmark = pytest.mark.fast  # no training, no fuzzing: the tier `bash tests/run.sh -m fast` runs

VALUE_FILES = {"default": None, **{env: CHART / f"values-{env}.yaml" for env in ENVIRONMENTS}}


def values_of(env: str) -> dict[str, Any]:
    path = VALUE_FILES[env]
    return yaml.safe_load(path.read_text()) if path else {}


def rendered(values: dict[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
    return chart.objects(chart.render(values, **kwargs))


def job_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Job")


@pytest.mark.parametrize("env", VALUE_FILES)
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_helm_lint_strict_passes(env: str, kube: str) -> None:
    report = helm.lint(CHART, values_of(env), strict=True, kube_version=f"v{kube}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors; info is fine
    assert report["errors"] == [] and problems == []


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_helm3_lints_and_renders_what_the_sdk_renders(env: str) -> None:
    binary = str(helm3())
    lint = subprocess.run([binary, "lint", "--strict", str(CHART), "-f", str(VALUE_FILES[env])], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    template = subprocess.run([binary, "template", "cifar-job", str(CHART), "-f", str(VALUE_FILES[env]), "--kube-version", "1.29.0"],
                              capture_output=True, text=True, check=True, timeout=60)
    with helm.Chart.load(CHART) as chart:
        sdk = chart.render(values=values_of(env), name="cifar-job", namespace="default")
    sdk_docs = [d for path, text in sdk.items() if not path.endswith("NOTES.txt") for d in load_docs(text)]
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(load_docs(template.stdout), key=key) == sorted(sdk_docs, key=key)


BAD_VALUES = [
    ({"gpu": {"count": -1}}, "/gpu/count"),
    ({"gpu": {"count": "one"}}, "/gpu/count"),
    ({"imageTag": "v1"}, "imageTag"),
    ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"job": {"backoffLimit": -2}}, "/job/backoffLimit"),
    ({"job": {"activeDeadlineSeconds": 0}}, "/job/activeDeadlineSeconds"),
    ({"storage": {"size": "lots"}}, "/storage/size"),
    ({"storage": {"accessModes": ["ReadWriteSometimes"]}}, "/storage/accessModes"),
    ({"resources": {"requests": {"cpu": "four"}}}, "/resources/requests/cpu"),
    ({"resources": {"request": {"cpu": "4"}}}, "request"),
    ({"tolerations": [{"key": "a", "operater": "Exists"}]}, "operater"),
    ({"podMonitor": {"interval": "15 seconds"}}, "/podMonitor/interval"),
    ({"runName": "Not_A_DNS_Label"}, "/runName"),
    ({"metrics": {"port": 70000}}, "/metrics/port"),
    ({"config": {"trian": {"epochs": 3}}}, "trian"),
    ({"config": {"out": "/elsewhere"}}, "out"),
    ({"config": {"data": {"cache_dir": "/elsewhere"}}}, "/config/data/cache_dir"),
    ({"config": {"metrics": {"port": 8000}}}, "/config/metrics/port"),
    ({"metrics": {"pushgateway": {"username": "user:password"}}}, "/metrics/pushgateway/username"),
    ({"metrics": {"pushgateway": {"passwordSecret": {"name": "Pushgateway_Auth"}}}}, "/metrics/pushgateway/passwordSecret/name"),
    ({"networkPolicy": {"ingress": {"from": [{}]}}}, "/networkPolicy/ingress/from/0"),  # {} would admit everyone
    ({"networkPolicy": {"ingress": {"from": [{"podSelecter": {}}]}}}, "podSelecter"),
    ({"networkPolicy": {"egress": {"dataSource": {"to": [{"ipBlock": {"cidr": "everywhere"}}]}}}}, "/networkPolicy/egress/dataSource/to/0"),
    ({"networkPolicy": {"egress": {"dns": {"to": []}}}}, "/networkPolicy/egress/dns/to"),
    ({"networkPolicy": {"egress": {"pushgateway": {"port": 0}}}}, "/networkPolicy/egress/pushgateway/port"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_schema_rejects_bad_values(values: dict[str, Any], where: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as raised:
        chart.render(values=values, name="cifar-job")
    assert where in str(raised.value)


def test_every_value_is_typed_and_documented() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(values: dict[str, Any], node: dict[str, Any], path: str) -> None:
        assert node.get("additionalProperties") is False, f"{path or 'values'}: unknown keys are not rejected"
        for key, value in values.items():
            assert key in node["properties"], f"{path}{key}: not in values.schema.json"
            child = node["properties"][key]
            assert child.get("description"), f"{path}{key}: no description"
            if isinstance(value, dict) and "properties" in child and key != "config":
                walk(value, child, f"{path}{key}.")

    walk(yaml.safe_load((CHART / "values.yaml").read_text()), schema, "")
    assert {*TOP_LEVEL_KEYS, *SECTION_NAMES} == schema["properties"]["config"]["properties"].keys()  # generated: tests/test_chart_schema.py


@pytest.mark.parametrize("env", VALUE_FILES)
def test_pod_config_is_valid_for_the_job(env: str, tmp_path: Path) -> None:
    """The ConfigMap plus the container's environment load as job/config/settings.py's Config."""
    docs = rendered(values_of(env))
    job = job_of(docs)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env_vars = {e["name"]: e["value"] for e in container["env"]}
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    config = load_config(path, env=env_vars)
    assert str(config.out) == f"/data/runs/{job['metadata']['name']}"
    assert config.metrics.port == container["ports"][0]["containerPort"] and config.metrics.address == "0.0.0.0"
    assert str(config.publish.root).startswith("/data/") and str(config.data.cache_dir).startswith("/data/")


def _pod_config(values: dict[str, Any]) -> dict[str, Any]:
    config_map = next(d for d in rendered(values) if d["kind"] == "ConfigMap")
    return yaml.safe_load(config_map["data"]["config.yaml"]) or {}


def test_a_gpu_pod_trains_and_validates_on_the_gpu_or_fails() -> None:
    """TensorFlow and onnxruntime fall back to the CPU silently: a pod given a GPU must not, on a broken CUDA setup."""
    assert _pod_config({})["train"]["device"] == _pod_config({})["validate"]["device"] == "gpu"
    assert not {"train", "validate"} & _pod_config({"gpu": {"count": 0}}).keys()
    kept = _pod_config({"config": {"validate": {"device": "auto", "batch_size": 64}}})["validate"]
    assert kept == {"device": "auto", "batch_size": 64}


def test_pushgateway_password_is_a_file_from_the_secret() -> None:
    """The Secret is mounted read-only and named by PUSHGATEWAY_PASSWORD_FILE; no variable holds the password."""
    auth = {"username": "pusher", "passwordSecret": {"name": "pushgateway-auth", "key": "pw"}}
    pod = job_of(rendered({"metrics": {"pushgateway": auth}}))["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env[USERNAME_ENV]["value"] == "pusher" and not [e for e in env.values() if "valueFrom" in e]
    volume = next(v for v in pod["volumes"] if "secret" in v)
    assert volume["secret"]["secretName"] == "pushgateway-auth" and volume["secret"]["defaultMode"] == 0o440
    (item,) = volume["secret"]["items"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert item["key"] == "pw" and mount["readOnly"] is True
    assert env[PASSWORD_FILE_ENV]["value"] == f"{mount['mountPath']}/{item['path']}"
    plain = job_of(rendered({}))["spec"]["template"]["spec"]
    assert not {USERNAME_ENV, PASSWORD_FILE_ENV} & {e["name"] for e in plain["containers"][0]["env"]}
    assert not [v for v in plain["volumes"] if "secret" in v]
    for half in ({"username": "pusher"}, {"passwordSecret": {"name": "pushgateway-auth"}}):
        with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError, match="is required with"):
            chart.render(values={"metrics": {"pushgateway": half}}, name="cifar-job")


def _network_policy(values: dict[str, Any]) -> dict[str, Any] | None:
    return next((d["spec"] for d in rendered(values) if d["kind"] == "NetworkPolicy"), None)


def test_network_policy_follows_the_config_and_can_be_relaxed_or_dropped() -> None:
    on_claim = _network_policy({"config": {"data": {"source": "/data/cifar-10-python.tar.gz"}}})
    assert [rule["ports"][0]["port"] for rule in on_claim["egress"]] == [53]  # the archive is on the claim: no download
    pushing = _network_policy({"config": {"metrics": {"pushgateway_url": "http://pg:9091"}}, "networkPolicy": {"egress": {"pushgateway": {
        "to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}], "port": 8443}}}})
    assert {"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}], "ports": [{"port": 8443, "protocol": "TCP"}]} in pushing["egress"]
    assert _network_policy({"networkPolicy": {"ingress": {"from": []}}})["ingress"] == []  # no one may connect
    open_egress = _network_policy({"networkPolicy": {"egress": {"enabled": False}}})
    assert open_egress["policyTypes"] == ["Ingress"] and "egress" not in open_egress
    assert _network_policy({"networkPolicy": {"enabled": False}}) is None


def test_helm_upgrade_replaces_the_job_only_when_values_change() -> None:
    """A Job's pod template is immutable: a changed rendering must come with a new Job name."""
    first = job_of(rendered({}))["metadata"]["name"]
    assert job_of(rendered({}))["metadata"]["name"] == first  # unchanged values: the running Job stays
    changed = job_of(rendered({"config": {"train": {"epochs": 10}}}))
    assert changed["metadata"]["name"] != first
    configs = {v["name"]: v for v in changed["spec"]["template"]["spec"]["volumes"]}["config"]["configMap"]["name"]
    assert configs == changed["metadata"]["name"]  # each run reads its own config
    assert job_of(rendered({}, run_name="nightly-7"))["metadata"]["name"] == "nightly-7"


def test_job_name_fits_the_label_limit_for_long_release_names() -> None:
    docs = chart.objects(chart.render({}, release="a-very-long-release-name-for-the-cifar-training-pipeline-of-team-x"))
    assert len(job_of(docs)["metadata"]["name"]) <= 63


def test_cpu_only_drops_the_gpu_and_its_node_pool() -> None:
    pod = job_of(rendered(values_of("dev")))["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"].get("limits", {})
    assert "nodeSelector" not in pod and "tolerations" not in pod
    pod = job_of(rendered({"gpu": {"count": 2}, "tolerations": [{"key": "spot", "operator": "Exists"}]}))["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert [t["key"] for t in pod["tolerations"]] == ["nvidia.com/gpu", "spot"]


def test_prometheus_rule_embeds_the_alert_rules_file() -> None:
    rules = yaml.safe_load((CHART / "files" / "alerts.rules.yaml").read_text())
    docs = rendered({"prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}})
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    assert rule["spec"] == rules and rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    slower = next(d for d in rendered({"prometheusRule": {"enabled": True, "stalledAfterSeconds": 1800}}) if d["kind"] == "PrometheusRule")
    stalled = [r["expr"] for g in slower["spec"]["groups"] for r in g["rules"] if r.get("alert") == "CifarJobTrainingStalled"]
    assert len(stalled) == 1 and "> 1800" in stalled[0] and "> 900" not in stalled[0]
    assert not any(d["kind"] in ("PodMonitor", "PrometheusRule") for d in rendered({"podMonitor": {"enabled": False}}))


def test_labels_follow_the_kubernetes_conventions() -> None:
    for doc in rendered({}):
        labels = doc["metadata"]["labels"]
        assert {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"} <= labels.keys()
        assert labels["app.kubernetes.io/managed-by"] == "cifar-job"  # made by cifar-job k8s, not a Helm release
    with helm.Chart.load(CHART) as chart:
        sa = yaml.safe_load(chart.render(values={}, name="cifar-job")["cifar-job/templates/serviceaccount.yaml"])
    assert sa["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_notes_tell_how_to_follow_the_run() -> None:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values={}, name="cifar-job", namespace="ml")
    name = job_of(load_docs(out["cifar-job/templates/job.yaml"]))["metadata"]["name"]
    assert f"kubectl -n ml logs -f job/{name}" in out["cifar-job/templates/NOTES.txt"]
    assert f"/data/runs/{name}" in out["cifar-job/templates/NOTES.txt"]


# --- experiments and Kueue ----------------------------------------------------------------------

EXAMPLE_SPEC = CHART / "examples" / "experiment.yaml"
SPECS = {  # spec -> trials: the grid's list lengths x seeds x folds
    "grid": ({"name": "lr", "grid": {"train.learning_rate": [0.1, 0.01, 0.001]}}, 3),
    "seeds": ({"name": "seeds", "seeds": 5}, 5),
    "folds": ({"name": "cv", "folds": 4}, 4),
    "product": ({"name": "sweep", "grid": {"train.learning_rate": [0.1, 0.01], "model.name": ["reference_cnn", "airbench"]},
                 "seeds": 3, "folds": 2}, 24),
}
SHARED = {"storage": {"accessModes": ["ReadWriteMany"]}}


def experiment(spec: dict[str, Any], **values: Any) -> dict[str, Any]:
    """Values for `spec` on a ReadWriteMany claim, plus `values`."""
    return {**SHARED, **values, "experiment": {"spec": spec, **values.get("experiment", {})}}


@pytest.mark.parametrize("name", SPECS)
def test_an_experiment_is_an_indexed_job_with_a_completion_per_trial(name: str) -> None:
    spec, trials = SPECS[name]
    job = job_of(rendered(experiment(spec)))
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == trials
    assert job["spec"]["parallelism"] == 2 and job["spec"]["backoffLimitPerIndex"] == 3
    assert "backoffLimit" not in job["spec"] and "maxFailedIndexes" not in job["spec"]  # per index instead; no limit by default
    assert job_of(rendered(experiment(spec, experiment={"maxFailedIndexes": 0})))["spec"]["maxFailedIndexes"] == 0


@pytest.mark.parametrize("name", SPECS)
def test_completions_equal_the_experiment_modules_trial_count(name: str, tmp_path: Path) -> None:
    """`cifar-job experiment trials` (job/experiment*.py) and the chart's template arithmetic agree."""
    from click.testing import CliRunner

    from job.cli import main

    spec, trials = SPECS[name]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(main, ["experiment", "trials", str(path)])
    assert result.exit_code == 0, result.output
    assert int(result.stdout.strip()) == trials == job_of(rendered(experiment(spec)))["spec"]["completions"]


def test_each_pod_runs_its_trial_in_the_jobs_experiment_directory() -> None:
    docs = rendered(experiment(SPECS["product"][0], config={"train": {"epochs": 5}, "recipe": "fast"}))
    job = job_of(docs)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    name = job["metadata"]["name"]
    assert container["args"] == ["experiment", "run", "/etc/cifar-job/experiment.yaml", "--out", f"/data/experiments/{name}",
                                 "--index", "$(JOB_COMPLETION_INDEX)"]
    env = {e["name"] for e in container["env"]}
    assert not {"CIFAR_JOB_CONFIG", "CIFAR_JOB_OUT"} & env  # every trial has its own out, under --out
    assert {"CIFAR_JOB_DATA_CACHE_DIR", "CIFAR_JOB_PUBLISH_ROOT", "CIFAR_JOB_METRICS_PORT"} <= env
    # the pod can tell its index's last try: the controller's failure count and the retries it gets
    from job.experiments.runner import FAILURES_ENV, RETRIES_ENV

    by_name = {e["name"]: e for e in container["env"]}
    annotation = "metadata.annotations['batch.kubernetes.io/job-index-failure-count']"
    assert by_name[FAILURES_ENV]["valueFrom"]["fieldRef"]["fieldPath"] == annotation
    assert by_name[RETRIES_ENV]["value"] == str(job["spec"]["backoffLimitPerIndex"])
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    stored = yaml.safe_load(config_map["data"]["experiment.yaml"])
    assert "config.yaml" not in config_map["data"]
    assert stored["grid"] == SPECS["product"][0]["grid"] and stored["seeds"] == 3 and stored["folds"] == 2
    assert stored["base"] == {"recipe": "fast", "train": {"epochs": 5, "device": "gpu"}, "validate": {"device": "gpu"}}


@pytest.mark.parametrize("env", VALUE_FILES)
def test_the_pods_spec_and_environment_load_as_the_experiment_module_reads_them(env: str, tmp_path: Path) -> None:
    """The ConfigMap's spec (config merged under its base) with the container's environment: every trial's config is valid."""
    from job.config.experiment_spec import load_spec

    docs = rendered({**values_of(env), **experiment(SPECS["product"][0], config=values_of(env).get("config", {}))})
    (container,) = job_of(docs)["spec"]["template"]["spec"]["containers"]
    path = tmp_path / "experiment.yaml"
    path.write_text(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["experiment.yaml"])
    spec = load_spec(path, env={e["name"]: e["value"] for e in container["env"] if "value" in e})  # valueFrom: set in the pod
    assert spec.trial_count == SPECS["product"][1]
    for trial in spec.trials():
        assert str(trial.settings.publish.root) == "/data/models" and str(trial.settings.data.cache_dir) == "/data/cache"
        assert trial.settings.metrics.port == container["ports"][0]["containerPort"]


def test_the_specs_base_wins_over_config() -> None:
    spec = {"name": "cpu", "seeds": 2, "base": {"train": {"epochs": 3, "device": "cpu"}}}
    docs = rendered(experiment(spec, config={"train": {"epochs": 9, "batch_size": 64}}))
    base = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["experiment.yaml"])["base"]
    assert base == {"train": {"epochs": 3, "device": "cpu", "batch_size": 64}, "validate": {"device": "gpu"}}


def test_parallel_trials_on_a_read_write_once_claim_are_refused_unless_on_one_node() -> None:
    spec = SPECS["seeds"][0]
    with helm.Chart.load(CHART) as loaded, pytest.raises(helm.HelmError) as raised:
        loaded.render(values={"experiment": {"spec": spec}}, name="cifar-job")
    message = "experiment.parallelism above 1 needs storage.accessModes [ReadWriteMany] (pods on several nodes share the claim), " \
              "or experiment.sameNode true to run every pod on one node"
    assert message in str(raised.value) and "\n" not in str(raised.value).strip()
    with helm.Chart.load(CHART) as loaded, pytest.raises(helm.HelmError, match="ReadWriteOncePod claim admits one pod"):
        loaded.render(values={"experiment": {"spec": spec, "sameNode": True}, "storage": {"accessModes": ["ReadWriteOncePod"]}},
                      name="cifar-job")
    one_at_a_time = job_of(rendered({"experiment": {"spec": spec, "parallelism": 1}}))["spec"]["template"]["spec"]
    assert "affinity" not in one_at_a_time
    job = job_of(rendered({"experiment": {"spec": spec, "sameNode": True}}))
    (term,) = job["spec"]["template"]["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term == {"labelSelector": {"matchLabels": {"batch.kubernetes.io/job-name": job["metadata"]["name"]}},
                    "topologyKey": "kubernetes.io/hostname"}
    assert "affinity" not in job_of(rendered(experiment(spec)))["spec"]["template"]["spec"]  # ReadWriteMany: any node


@pytest.mark.parametrize("spec", [None, SPECS["seeds"][0]], ids=["run", "experiment"])
def test_a_queue_name_hands_the_job_to_kueue_suspended(spec: dict[str, Any] | None) -> None:
    values = experiment(spec) if spec else {}
    plain = job_of(rendered(values, run_name="run-1"))
    assert "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"] and "suspend" not in plain["spec"]
    queued = job_of(rendered({**values, "queueName": "team-a"}, run_name="run-1"))
    assert queued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and queued["spec"]["suspend"] is True
    assert {k: v for k, v in queued["spec"].items() if k != "suspend"} == plain["spec"]


def test_without_a_spec_the_single_job_is_unchanged_by_the_experiment_values() -> None:
    tuned = {"experiment": {"parallelism": 8, "backoffLimitPerIndex": 1, "maxFailedIndexes": 2, "sameNode": True}}
    job, plain = job_of(rendered(tuned, run_name="run-1")), job_of(rendered({}, run_name="run-1"))
    assert {k: v for k, v in job.items() if k != "metadata"} == {k: v for k, v in plain.items() if k != "metadata"}
    assert plain["spec"]["podFailurePolicy"]["rules"][0]["action"] == "FailJob" and "completionMode" not in plain["spec"]


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("values", [experiment(SPECS["product"][0], queueName="team-a"),
                                    {"experiment": {"spec": SPECS["folds"][0], "sameNode": True}}], ids=["rwx-kueue", "same-node"])
def test_helm_lint_strict_passes_with_an_experiment(values: dict[str, Any], kube: str) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{kube}.0")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []


def test_helm3_lints_and_renders_an_experiment_as_the_sdk_does(tmp_path: Path) -> None:
    values = experiment(SPECS["product"][0], queueName="team-a")
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    lint = subprocess.run([str(helm3()), "lint", "--strict", str(CHART), "-f", str(path)], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    template = subprocess.run([str(helm3()), "template", "cifar-job", str(CHART), "-f", str(path), "--kube-version", "1.29.0"],
                              capture_output=True, text=True, check=True, timeout=60)
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(load_docs(template.stdout), key=key) == sorted(_sdk_docs(values), key=key)


def _sdk_docs(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as loaded:
        out = loaded.render(values=values, name="cifar-job", namespace="default")
    return [d for path, text in out.items() if not path.endswith("NOTES.txt") for d in load_docs(text)]


def test_submit_flags_set_the_spec_and_the_queue(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPECS["grid"][0]))
    values = chart.load_values([], ["experiment.spec.seeds=9", "storage.accessModes={ReadWriteMany}"], experiment=spec, queue="team-b")
    assert values["experiment"]["spec"] == SPECS["grid"][0] and values["queueName"] == "team-b"  # the file replaces the whole spec
    assert job_of(rendered(values))["spec"]["completions"] == 3
    spec.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match=f"experiment spec {spec}: expected a mapping.*, got list"):
        chart.load_values([], [], experiment=spec)


BAD_EXPERIMENTS = [
    ({"experiment": {"spec": {"seeds": 3}}}, "/experiment/spec"),  # no name
    ({"experiment": {"spec": {"name": "Bad_Name"}}}, "/experiment/spec/name"),
    ({"experiment": {"spec": {"name": "cv", "folds": 11}}}, "/experiment/spec/folds"),
    ({"experiment": {"spec": {"name": "s", "seeds": 0}}}, "/experiment/spec/seeds"),
    ({"experiment": {"spec": {"name": "g", "grid": {"train.learning_rate": []}}}}, "/experiment/spec/grid"),
    ({"experiment": {"spec": {"name": "t", "sedes": 3}}}, "sedes"),
    ({"experiment": {"spec": {"name": "b", "base": {"trian": {}}}}}, "trian"),
    ({"experiment": {"spec": {"name": "o", "base": {"out": "/x"}}}}, "/experiment/spec/base/out"),
    ({"experiment": {"spec": {"name": "p", "select": "test_accuracy"}}}, "/experiment/spec/select"),  # never the test set
    ({"experiment": {"parallelism": 0}}, "/experiment/parallelism"),
    ({"experiment": {"maxFailedIndexes": -1}}, "/experiment/maxFailedIndexes"),
    ({"queueName": "Team A"}, "/queueName"),
]


@pytest.mark.parametrize(("values", "where"), BAD_EXPERIMENTS, ids=[w for _, w in BAD_EXPERIMENTS])
def test_schema_rejects_bad_experiment_values(values: dict[str, Any], where: str) -> None:
    with helm.Chart.load(CHART) as loaded, pytest.raises(helm.HelmValuesError) as raised:
        loaded.render(values={**SHARED, **values}, name="cifar-job")
    assert where in str(raised.value)


def test_more_trials_than_the_experiment_module_runs_are_refused() -> None:
    with helm.Chart.load(CHART) as loaded, pytest.raises(helm.HelmError, match=r"experiment.spec: 1001 trials \(grid x seeds x folds\); at most 1000"):
        loaded.render(values=experiment({"name": "big", "grid": {"train.seed": list(range(143))}, "seeds": 7}), name="cifar-job")


def test_more_failed_trials_allowed_than_there_are_is_refused() -> None:
    """The API server would refuse the Job (maxFailedIndexes <= completions); say so at install time."""
    assert job_of(rendered(experiment(SPECS["seeds"][0], experiment={"maxFailedIndexes": 5})))["spec"]["maxFailedIndexes"] == 5
    with helm.Chart.load(CHART) as loaded, pytest.raises(helm.HelmError, match="experiment.maxFailedIndexes 6: more than the experiment's 5 trials"):
        loaded.render(values=experiment(SPECS["seeds"][0], experiment={"maxFailedIndexes": 6}), name="cifar-job")


def test_the_example_spec_renders_with_its_trials() -> None:
    values = chart.load_values([], ["experiment.sameNode=true"], experiment=EXAMPLE_SPEC)
    assert job_of(rendered(values))["spec"]["completions"] == yaml.safe_load(EXAMPLE_SPEC.read_text())["seeds"]


def test_notes_tell_how_to_follow_an_experiment_and_a_queued_job() -> None:
    values = {"experiment": {"spec": SPECS["product"][0], "sameNode": True}, "queueName": "team-a"}
    with helm.Chart.load(CHART) as loaded:
        out = loaded.render(values=values, name="cifar-job", namespace="ml")
    name = job_of(load_docs(out["cifar-job/templates/job.yaml"]))["metadata"]["name"]
    notes = out["cifar-job/templates/NOTES.txt"]
    assert notes.startswith(f"Experiment sweep started as Indexed Job ml/{name}: 24 trials,\n2 at once")
    assert f"/data/experiments/{name}" in notes and "LocalQueue team-a" in notes
