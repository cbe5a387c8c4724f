"""No credential in any byte the job writes or prints, however a user passes one.

A password planted in every place a config value can come from (flag, --set, environment, config
file, experiment base and grid, chart values, chart --set) is refused with one line before any
work, and appears in nothing written or printed. Credentials given the supported way (a username
variable and a password file, as a mounted Secret) reach the server and nothing else: a whole run
against a real HTTP server that demands them is grepped byte by byte.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from job.cli import main
from job.config.settings import Config, DataConfig, MetricsConfig
from job.core.credentials import DATA_PASSWORD_FILE_ENV, DATA_USERNAME_ENV

from .conftest import REAL_ARCHIVE, TRAINED_SLICE
from .test_data_download import SECRET, Server

URLS = [
    f"http://user:{SECRET}@127.0.0.1:1/cifar.tar.gz",
    f"https://{SECRET}@example.com/cifar.tar.gz",
    f"https://example.com/cifar.tar.gz?token={SECRET}",
    f"https://example.com/cifar.tar.gz#{SECRET}",
]


def _written(root: Path, *skip: Path) -> Iterator[Path]:
    """Every regular file under `root` but the inputs the test planted."""
    yield from (path for path in root.rglob("*") if path.is_file() and not path.is_symlink() and path not in skip)


def _assert_nowhere(root: Path, output: str, *inputs: Path) -> None:
    assert SECRET not in output
    leaked = [path for path in _written(root, *inputs) if SECRET.encode() in path.read_bytes()]
    assert leaked == []


def _write_inputs(tmp_path: Path, url: str) -> list[Path]:
    """The files that carry `url`: a config, experiment specs (base, grid, grid of mappings, none), chart values."""
    documents = {
        "config.yaml": {"data": {"source": url}},
        "spec.yaml": {"name": "leak", "base": {"data": {"source": url}}},
        "grid.yaml": {"name": "leak", "grid": {"data.source": ["/data/a.tar.gz", url]}},
        "mapping.yaml": {"name": "leak", "grid": {"data": [{"source": url}]}},
        "plain.yaml": {"name": "leak", "seeds": 2},
        "values.yaml": {"config": {"data": {"source": url}}},
        "push-values.yaml": {"config": {"metrics": {"pushgateway_url": url}}},
    }
    for name, document in documents.items():
        (tmp_path / name).write_text(yaml.safe_dump(document))
    return [tmp_path / name for name in documents]


def _plants(tmp_path: Path, url: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each way to pass `url` into a command: its arguments and its environment (files from _write_inputs)."""
    out = str(tmp_path / "out")
    return {
        "--data": (["run", "--out", out, "--data", url], {}),
        "--set data.source": (["run", "--out", out, "--set", f"data.source={url}"], {}),
        "--set pushgateway_url": (["run", "--out", out, "--set", f"metrics.pushgateway_url={url}"], {}),
        "environment": (["run", "--out", out], {"CIFAR_JOB_DATA_SOURCE": url}),
        "config file": (["run", "--out", out, "--config", str(tmp_path / "config.yaml")], {}),
        "experiment --data": (["experiment", "run", str(tmp_path / "plain.yaml"), "--out", out, "--data", url], {}),
        "experiment base": (["experiment", "run", str(tmp_path / "spec.yaml"), "--out", out], {}),
        "experiment grid": (["experiment", "run", str(tmp_path / "grid.yaml"), "--out", out], {}),
        "experiment grid mapping": (["experiment", "run", str(tmp_path / "mapping.yaml"), "--out", out], {}),
        "experiment trials --json": (["experiment", "trials", str(tmp_path / "grid.yaml"), "--json"], {}),
        "chart values file": (["k8s", "render", "-f", str(tmp_path / "values.yaml"), "--output-dir", out], {}),
        "chart pushgateway values": (["k8s", "render", "-f", str(tmp_path / "push-values.yaml"), "--output-dir", out], {}),
        "chart --set": (["k8s", "render", "--set", f"config.data.source={url}", "--output-dir", out], {}),
        "chart experiment grid": (["k8s", "render", "--experiment", str(tmp_path / "grid.yaml"), "--output-dir", out], {}),
    }


PLANT_NAMES = list(_plants(Path("/unused"), URLS[0]))


@pytest.mark.fast
@pytest.mark.parametrize("url", URLS, ids=["userinfo", "user only", "query", "fragment"])
@pytest.mark.parametrize("plant", PLANT_NAMES)
def test_a_credential_in_a_url_is_refused_and_written_nowhere(plant: str, url: str, tmp_path: Path) -> None:
    inputs = _write_inputs(tmp_path, url)
    args, env = _plants(tmp_path, url)[plant]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("cifar-job: error: ") and result.stderr.count("\n") == 1, result.stderr[-2000:]
    _assert_nowhere(tmp_path, result.output, *inputs)
    assert not (tmp_path / "out").exists()


@pytest.mark.fast
def test_the_recording_boundary_redacts_a_url_that_slipped_past_validation(tmp_path: Path) -> None:
    """Config.to_dict is where a config becomes bytes: a URL built around the validators is still masked there."""
    config = Config().model_copy(
        update={
            "data": DataConfig.model_construct(**{**DataConfig().model_dump(), "source": f"http://user:{SECRET}@h/c.tar.gz?t={SECRET}"}),
            "metrics": MetricsConfig.model_construct(**{**MetricsConfig().model_dump(), "pushgateway_url": f"http://{SECRET}@push:9091"}),
        }
    )
    config.write(tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert SECRET not in text and "http://***@h/c.tar.gz?t=***" in text and "http://***@push:9091" in text


def test_a_run_with_data_credentials_sends_them_and_writes_them_nowhere(tmp_path: Path) -> None:
    """The whole run (train, export, validate, publish, variants) on data that a real server serves only with basic auth."""
    server = Server(REAL_ARCHIVE.read_bytes())
    threading.Thread(target=server.httpd.serve_forever, daemon=True).start()
    (tmp_path / "secret").mkdir()
    password_file = tmp_path / "secret" / "password"
    password_file.write_text(SECRET + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIFAR_JOB_")}
    env |= {DATA_USERNAME_ENV: "user", DATA_PASSWORD_FILE_ENV: str(password_file), "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [
        sys.executable, "-m", "job", "run", "--out", str(tmp_path / "run"), "--data", f"{server.base}/auth/cifar-10-python.tar.gz",
        "--checksum", "none", *TRAINED_SLICE, "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", f"publish.root={tmp_path / 'models'}",
        "--set", "gate.min_accuracy=0", "--set", "gate.min_weighted_f1=0", "--set", "variants.max_accuracy_drop=1",
        "--set", "export.parity_images=50", "--set", "variants.calibration_images=50",
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    finally:
        server.httpd.shutdown()
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(server.auth) == {"Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()}
    published = sorted(p.relative_to(tmp_path / "models").parts[0] for p in (tmp_path / "models").glob("*/1/model.onnx"))
    assert published == ["cifar10-cnn", "cifar10-cnn-fp16", "cifar10-cnn-int8"]
    _assert_nowhere(tmp_path, result.stdout + result.stderr, password_file)
