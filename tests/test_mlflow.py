"""MLflow tracking and Model Registry against a real `mlflow server` (SQLite store, proxied artifacts), read back with
MlflowClient: a run's params, per-epoch metrics, stage tags, artifacts, logged ONNX model and registered versions; an
experiment's parent and nested trial runs; a parent created once by racing processes; and a tracking server that is
down, silent or failing, which costs the run a few seconds and one warning line, never its result."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from job.cli import main
from job.config.settings import load_config
from job.core.errors import ConfigError
from job.tracking.session import INSTALL, RECORD, tracking_uri

from .conftest import REAL_ARCHIVE, REAL_SHA256, TRAINED_SLICE
from .test_experiment_run import small_spec

SECRET = "planted-Tr4cking-s3cret"
ARCHIVE = ["--data", str(REAL_ARCHIVE), "--checksum", f"sha256:{REAL_SHA256}"]
DATA = [*ARCHIVE, "--device", "cpu"]
RELAXED = ["--set", "gate.min_accuracy=0", "--set", "gate.min_weighted_f1=0", "--set", "export.parity_images=50"]
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
TIMEOUT = 600
# MLflow's own defaults: 120 s a request, 7 retries with backoff factor 2, minutes in all; a run with a broken server
# must stay far below, whatever the machine's load.
FAR_BELOW_MLFLOW_DEFAULTS = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`mlflow server` on 127.0.0.1, its SQLite store and artifact directory in a temporary directory."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(root / "server.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (root / "server.log").read_text()[-3000:]
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            assert time.monotonic() < deadline, "mlflow server did not become healthy within 180 s"
            time.sleep(0.5)
        yield {"uri": uri, "root": root}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def client(server: dict[str, Any]) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(server["uri"])


def _env(tmp_path: Path) -> dict[str, str]:
    """The environment of a tracked run, with a planted password where MLflow and the data download read credentials."""
    password = tmp_path / "password"
    password.write_text(SECRET + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIFAR_JOB_", "MLFLOW_"))}
    return env | {"TF_CPP_MIN_LOG_LEVEL": "2", "MLFLOW_TRACKING_USERNAME": "tracker", "MLFLOW_TRACKING_PASSWORD": SECRET,
                  "DATA_USERNAME": "reader", "DATA_PASSWORD_FILE": str(password)}  # fmt: skip


def _cifar_job(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "job", *args], capture_output=True, text=True, env=env, timeout=TIMEOUT)
    return done, time.monotonic() - began


def _runs(client: Any, experiment: str) -> list[Any]:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- a tracked run ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracked(trained_run: Path, server: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The shared training, continued by a tracked `cifar-job run` (export, validate, publish, the int8 variant)."""
    base = tmp_path_factory.mktemp("tracked")
    run, models = base / "run", base / "models"
    shutil.copytree(trained_run, run)
    done, _ = _cifar_job(
        _env(base), "run", "--out", str(run), *DATA, *TRAINED_SLICE, *RELAXED, "--set", f"publish.root={models}",
        "--set", "variants.enabled=[int8]", "--set", "variants.max_accuracy_drop=1", "--set", "variants.calibration_images=50",
        "--set", f"tracking.mlflow_uri={server['uri']}", "--set", "tracking.experiment=tracked-run",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return {"run": run, "models": models, "stdout": done.stdout, "stderr": done.stderr}


def test_a_run_is_one_mlflow_run_with_the_redacted_config_as_params_and_its_stages_tagged(tracked: dict[str, Any], client: Any) -> None:
    (run,) = _runs(client, "tracked-run")
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert json.loads((tracked["run"] / RECORD).read_text())["run_id"] == run.info.run_id  # a resumed command goes on with it
    recorded = yaml.safe_load((tracked["run"] / "config.yaml").read_text())  # a config is two levels deep: sections, keys
    dotted = {f"{section}.{key}": value for section, keys in recorded.items() if isinstance(keys, dict) for key, value in keys.items()}
    dotted |= {key: value for key, value in recorded.items() if not isinstance(value, dict)}
    assert run.data.params == {key: value if isinstance(value, str) else json.dumps(value) for key, value in dotted.items()}
    assert run.data.params["train.epochs"] == "2" and run.data.params["tracking.experiment"] == "tracked-run"
    tags = run.data.tags
    assert {tags[f"stage.{stage}"] for stage in ("export", "validate", "publish", "variants")} == {"ok"}
    assert "stage.train" not in tags  # training was done before: this command resumed at export
    assert tags["gate.passed"] == "true" and tags["variants.int8.published"] == "true"
    measured = json.loads((tracked["run"] / "metrics.json").read_text())
    assert run.data.metrics["validate.accuracy"] == pytest.approx(measured["accuracy"])
    assert run.data.metrics["validate.weighted_f1"] == pytest.approx(measured["weighted_f1"])
    assert run.data.metrics["validate.macro_f1"] == pytest.approx(measured["macro_f1"])
    assert [line for line in tracked["stderr"].splitlines() if " WARNING " in line] == [] and "View run" not in tracked["stdout"]


def test_every_epoch_is_a_metric_step_numbered_from_one_as_history_json(tracked: dict[str, Any], client: Any) -> None:
    (run,) = _runs(client, "tracked-run")
    history = json.loads((tracked["run"] / "history.json").read_text())
    for key in EPOCH_METRICS:
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert logged == [(row["epoch"], pytest.approx(row[key])) for row in history] and [s for s, _ in logged] == [1, 2], key


def test_the_run_directory_records_and_reports_are_artifacts(tracked: dict[str, Any], client: Any, tmp_path: Path) -> None:
    (run,) = _runs(client, "tracked-run")
    names = {a.path for a in client.list_artifacts(run.info.run_id)} | {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"config.yaml", "history.json", "history.csv", "metrics.json", "model_card.md", "publish.json", "plots/loss.png"} <= names
    local = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path)))
    assert local.read_bytes() == (tracked["run"] / "metrics.json").read_bytes()


def test_the_published_model_is_logged_as_onnx_and_registered_with_its_gate_and_repository_version(
    tracked: dict[str, Any], client: Any, server: dict[str, Any], tmp_path: Path
) -> None:
    import mlflow.onnx
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    (run,) = _runs(client, "tracked-run")
    version = client.get_model_version_by_alias("cifar10-cnn", "published")
    directory = tracked["models"] / "cifar10-cnn" / "1"
    sidecar = json.loads((directory / "metadata.json").read_text())
    assert version.run_id == run.info.run_id and run.data.tags["registered.cifar10-cnn"] == version.version
    assert version.tags["repository.path"] == str(directory.resolve()) and (directory / "model.onnx").is_file()
    assert version.tags["repository.version"] == "1" and version.tags["sha256"] == _sha256(directory / "model.onnx")
    assert version.tags["gate.passed"] == "true" and version.tags["gate.min_accuracy"] == "0.0" and version.tags["gate.min_weighted_f1"] == "0.0"
    assert float(version.tags["test.accuracy"]) == pytest.approx(sidecar["metrics"]["accuracy"])
    assert float(version.tags["test.weighted_f1"]) == pytest.approx(sidecar["metrics"]["weighted_f1"])

    location = client.get_logged_model(version.model_id or version.source.removeprefix("models:/")).artifact_location
    logged = download_artifacts(artifact_uri=location, dst_path=str(tmp_path), tracking_uri=server["uri"])
    model = mlflow.onnx.load_model(logged)
    assert model.SerializeToString() == (directory / "model.onnx").read_bytes()  # the very file the repository serves
    info = Model.load(logged)
    (image,), (probabilities,) = info.signature.inputs.inputs, info.signature.outputs.inputs
    assert (image.name, image.type.name, image.shape) == ("images", "float32", (-1, 32, 32, 3))
    assert (probabilities.name, probabilities.type.name, probabilities.shape) == ("probabilities", "float32", (-1, 10))
    assert info.saved_input_example_info is not None

    variant = client.get_model_version_by_alias("cifar10-cnn-int8", "published")
    assert variant.tags["variant"] == "int8" and variant.tags["derived_from.version"] == "1"
    assert variant.tags["repository.path"] == str((tracked["models"] / "cifar10-cnn-int8" / "1").resolve())
    assert variant.tags["gate.max_accuracy_drop"] == "1.0" and variant.run_id == run.info.run_id


def test_no_credential_reaches_the_tracking_server(tracked: dict[str, Any], client: Any, server: dict[str, Any]) -> None:
    """The planted password is sent (basic auth) but recorded nowhere: params, tags, metric keys, every stored byte."""
    (run,) = _runs(client, "tracked-run")
    versions = [*client.search_model_versions("name='cifar10-cnn'"), *client.search_model_versions("name='cifar10-cnn-int8'")]
    texts = [json.dumps(run.data.params), json.dumps(run.data.tags), json.dumps(sorted(run.data.metrics))]
    texts += [json.dumps([v.tags, v.description, v.source]) for v in versions]
    assert not any(SECRET in text for text in texts)
    stored = [p for p in server["root"].rglob("*") if p.is_file() and p.name != "server.log"]
    assert any(p.suffix == ".onnx" for p in stored) and any(p.name == "history.json" for p in stored)
    assert [p for p in stored if SECRET.encode() in p.read_bytes()] == []
    assert SECRET not in tracked["stdout"] + tracked["stderr"]


# --- an experiment: a parent run, a nested run per trial ---------------------------------------------------------------


def test_an_experiment_is_a_parent_run_with_a_nested_run_per_trial(tmp_path: Path, server: dict[str, Any], client: Any) -> None:
    spec, out = small_spec(tmp_path, name="tracked", seeds=2), tmp_path / "exp"
    done, _ = _cifar_job(
        _env(tmp_path), "experiment", "run", str(spec), "--out", str(out), *DATA, "--set", f"tracking.mlflow_uri={server['uri']}",
        "--set", "tracking.experiment=tracked-experiment", "--set", "tracking.registered_model=tracked-experiment-model",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    runs = _runs(client, "tracked-experiment")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id), key=lambda r: r.info.run_name)
    assert len(runs) == 3 and [r.info.run_name for r in trials] == ["trial-0000", "trial-0001"]
    assert parent.info.run_name == "tracked" and parent.info.status == "FINISHED" and {r.info.status for r in trials} == {"FINISHED"}
    assert json.loads((out / RECORD).read_text())["run_id"] == parent.info.run_id
    for index, trial in enumerate(trials):
        assert json.loads((out / "trials" / f"{index:04d}" / RECORD).read_text())["run_id"] == trial.info.run_id
        assert [m.step for m in client.get_metric_history(trial.info.run_id, "val_loss")] == [1]  # logged live, as the epoch ended
        assert trial.data.tags["stage.train"] == "ok"
    assert trials[0].data.params["train.seed"] != trials[1].data.params["train.seed"]
    assert parent.data.params["experiment.trials"] == "2" and parent.data.params["experiment.select"] == "val_accuracy"
    selection = json.loads((out / "selection.json").read_text())
    assert parent.data.tags["experiment.selected_trial"] == str(selection["trial"])
    assert {"summary.json", "selection.json", "model_card.md"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    version = client.get_model_version_by_alias("tracked-experiment-model", "published")
    assert version.run_id == parent.info.run_id and Path(version.tags["repository.path"]).is_dir()


def test_racing_pods_create_the_experiment_parent_run_once(tmp_path: Path, server: dict[str, Any], client: Any) -> None:
    """Indexed Job pods, each opening its trial's run, find or create the parent through the experiment directory: one is
    created and recorded, every trial's run is nested in it, and a pod that lost the race deleted the parent it made."""
    script = """if True:
        import sys
        from pathlib import Path
        from job.config.settings import load_config
        from job.tracking.session import Experiment, tracking_session

        class Recorder:
            def tracking_began(self): pass
            def tracking_failed(self): raise SystemExit(3)

        root, index, uri = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
        out = root / "trials" / index
        out.mkdir(parents=True)
        config = load_config(env={}, overrides={"out": str(out), "tracking.mlflow_uri": uri, "tracking.experiment": "race"})
        with tracking_session(config, Recorder(), Experiment(root, "race", {"experiment": {"name": "race"}}), trial=True) as tracker:
            print(tracker.run_id)
    """
    env = {**_env(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    root = tmp_path / "exp"
    commands = [[sys.executable, "-c", script, str(root), f"{index:04d}", server["uri"]] for index in range(4)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for command in commands]
    outputs = [p.communicate(timeout=TIMEOUT) for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, outputs
    runs = _runs(client, "race")  # active runs only
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert json.loads((root / RECORD).read_text())["run_id"] == parent.info.run_id
    trials = {r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert trials == {stdout.strip() for stdout, _ in outputs} and len(runs) == 5
    for index in range(4):
        assert json.loads((root / "trials" / f"{index:04d}" / RECORD).read_text())["run_id"] in trials


# --- a tracking server that is down, silent or failing ------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared training, exported (untracked): a run that goes on at validation."""
    run = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(trained_run, run)
    result = CliRunner().invoke(main, ["export", "--out", str(run), *ARCHIVE, *TRAINED_SLICE, *RELAXED])
    assert result.exit_code == 0, result.output
    return run


@contextlib.contextmanager
def _closed_port() -> Iterator[str]:
    yield f"http://127.0.0.1:{free_port()}"


@contextlib.contextmanager
def _silent() -> Iterator[str]:
    """Accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in [*accepted, listener]:
            connection.close()


class _Failing(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = b'{"error_code": "INTERNAL_ERROR", "message": "the store is on fire"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _failing() -> Iterator[str]:
    """Answers HTTP 500 to everything."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _scrape_until_exit(process: subprocess.Popen[str], port: int) -> str:
    """/metrics scraped while the run lives; it lingers until one scrape after its end, so the last answer is its final state."""
    last = ""
    while process.poll() is None:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                last = answer.read().decode()
        time.sleep(0.2)
    return last


@pytest.mark.parametrize("broken", [_closed_port, _silent, _failing], ids=["down", "silent", "http-500"])
def test_a_broken_tracking_server_costs_seconds_and_one_warning_never_the_run(broken: Any, exported_run: Path, tmp_path: Path) -> None:
    run, port = tmp_path / "run", free_port()
    shutil.copytree(exported_run, run)
    with broken() as uri:
        command = [
            sys.executable, "-m", "job", "run", "--out", str(run), *DATA, *TRAINED_SLICE, *RELAXED, "--set", f"publish.root={tmp_path / 'models'}",
            "--set", "variants.enabled=[]", "--set", f"tracking.mlflow_uri={uri}", "--set", "tracking.timeout_seconds=2",
            "--set", f"metrics.port={port}", "--set", "metrics.linger_seconds=60",
        ]  # fmt: skip
        began = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
        final = _scrape_until_exit(process, port)
        stdout, stderr = process.communicate(timeout=TIMEOUT)
        took = time.monotonic() - began
    assert process.returncode == 0, stderr[-4000:]
    assert "publish: published:" in stdout and (tmp_path / "models" / "cifar10-cnn" / "1" / "model.onnx").is_file()
    warnings = [line for line in stderr.splitlines() if "tracking" in line.lower() and "WARNING" in line]
    assert len(warnings) == 1 and "tracking is off for the rest of this command" in warnings[0], stderr[-4000:]
    assert "Traceback" not in stderr and SECRET not in stdout + stderr
    assert took < FAR_BELOW_MLFLOW_DEFAULTS, took
    assert "\ncifar_job_tracking_failed 1.0\n" in final, final[-2000:]


# --- switching tracking on ---------------------------------------------------------------------------------------------


@pytest.mark.fast
def test_tracking_is_off_by_default_and_on_with_the_config_key_or_mlflow_s_variable() -> None:
    config = load_config(env={})
    assert tracking_uri(config, {}) is None
    assert tracking_uri(config, {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}) == "http://mlflow:5000"
    set_here = load_config(env={}, overrides={"tracking.mlflow_uri": "http://here:5000"})
    assert tracking_uri(set_here, {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}) == "http://here:5000"


@pytest.mark.fast
@pytest.mark.parametrize("uri", [f"http://user:{SECRET}@mlflow:5000", f"http://mlflow:5000/?token={SECRET}", f"http://mlflow:5000/#{SECRET}"])
def test_a_tracking_uri_with_credentials_is_refused_in_the_config_and_in_the_environment(uri: str) -> None:
    with pytest.raises(ConfigError) as in_config:
        load_config(env={}, overrides={"tracking.mlflow_uri": uri})
    with pytest.raises(ConfigError) as in_environment:
        tracking_uri(load_config(env={}), {"MLFLOW_TRACKING_URI": uri})
    for error in (in_config.value, in_environment.value):
        assert SECRET not in str(error) and "MLFLOW_TRACKING_PASSWORD" in str(error) and "MLFLOW_TRACKING_TOKEN" in str(error)


@pytest.mark.fast
def test_tracking_without_the_mlflow_extra_stops_before_any_work_with_how_to_install_it(tmp_path: Path) -> None:
    script = "import sys; sys.modules['mlflow'] = None; from job.cli import main; main()"
    command = [sys.executable, "-c", script, "train", "--out", str(tmp_path / "run"), *DATA, "--set", "tracking.mlflow_uri=http://127.0.0.1:1"]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(tmp_path), timeout=TIMEOUT)
    assert done.returncode == 2
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("cifar-job: error:")]
    assert line.startswith("cifar-job: error: tracking is on") and INSTALL in line
    assert not (tmp_path / "run").exists()


@pytest.mark.fast
def test_the_chart_lets_a_pod_reach_the_tracking_server_only_when_tracking_is_set() -> None:
    from .test_chart import rendered

    def egress(values: dict[str, Any]) -> list[dict[str, Any]]:
        return next(d["spec"]["egress"] for d in rendered(values) if d["kind"] == "NetworkPolicy")

    on_claim = {"data": {"source": "/data/cifar-10-python.tar.gz"}}
    tracked = egress({"config": {**on_claim, "tracking": {"mlflow_uri": "http://mlflow.mlflow:5000"}},
                      "networkPolicy": {"egress": {"mlflow": {"to": [{"ipBlock": {"cidr": "10.9.8.7/32"}}], "port": 8080}}}})  # fmt: skip
    assert {"to": [{"ipBlock": {"cidr": "10.9.8.7/32"}}], "ports": [{"port": 8080, "protocol": "TCP"}]} in tracked
    assert len(tracked) == len(egress({"config": on_claim})) + 1
    with pytest.raises(ConfigError, match="/config/tracking/mlflow_uri"):  # the chart's schema refuses what the job would
        rendered({"config": {"tracking": {"mlflow_uri": f"http://user:{SECRET}@mlflow:5000"}}})
