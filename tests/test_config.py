"""Config layering and validation, through the command line a user types."""

from __future__ import annotations

import http.server
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from job.cli import main
from job.config import Config, load_config


def test_defaults_are_the_reference_recipe() -> None:
    c = Config()
    assert (c.train.epochs, c.train.batch_size, c.train.learning_rate, c.train.momentum) == (75, 32, 0.01, 0.9)
    assert c.train.lr_decay == pytest.approx(0.01 / 75)
    assert (c.train.patience, c.data.validation_fraction) == (5, 0.2)
    assert (c.train.rotation_degrees, c.train.shift_fraction, c.train.horizontal_flip) == (15, 0.1, True)
    assert (c.gate.min_accuracy, c.gate.min_weighted_f1) == (0.7562, 0.7539)


def test_layers_file_then_environment_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "job.yaml"
    file.write_text(yaml.safe_dump({"train": {"epochs": 10, "patience": 2, "batch_size": 64}, "validate": {"device": "cpu"}}))
    env = {"CIFAR_JOB_TRAIN_EPOCHS": "20", "CIFAR_JOB_TRAIN_PATIENCE": "3", "PATH": "/bin"}
    c = load_config(file, env=env, overrides={"train.epochs": 30})
    assert (c.train.epochs, c.train.patience, c.train.batch_size, c.validate_.device) == (30, 3, 64, "cpu")
    assert c.train.momentum == 0.9  # untouched keys keep the defaults


def _invoke(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(main, args, env=env)


def test_unknown_config_key_names_key_file_and_choices(tmp_path: Path) -> None:
    file = tmp_path / "job.yaml"
    file.write_text("train:\n  epoch: 3\n")
    out = tmp_path / "run"
    result = _invoke(["train", "--config", str(file), "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"cifar-job: error: config key train.epoch (from {file}): unknown key; expected one of: epochs, ")
    assert result.stderr.count("\n") == 1
    assert not out.exists()


def test_negative_epochs_is_rejected_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _invoke(["train", "--epochs", "-3", "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr == "cifar-job: error: config key train.epochs (from command line): input should be greater than or equal to 1, got '-3'\n"
    assert not out.exists()


def test_bad_environment_value_names_the_variable_layer(tmp_path: Path) -> None:
    result = _invoke(["train", "--out", str(tmp_path / "run")], env={"CIFAR_JOB_VALIDATE_DEVICE": "tpu"})
    assert result.exit_code == 2
    assert result.stderr == "cifar-job: error: config key validate.device (from environment): input should be 'auto', 'gpu' or 'cpu', got 'tpu'\n"


def test_misspelt_environment_section_is_an_error(tmp_path: Path) -> None:
    result = _invoke(["train", "--out", str(tmp_path / "run")], env={"CIFAR_JOB_TRIAN_EPOCHS": "3"})
    assert result.exit_code == 2
    assert result.stderr.startswith("cifar-job: error: environment variable CIFAR_JOB_TRIAN_EPOCHS: unknown;")


def test_set_accepts_any_key_with_yaml_typed_values(tmp_path: Path) -> None:
    result = _invoke(["train", "--set", "train.augment=maybe", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "config key train.augment (from command line): input should be a valid boolean" in result.stderr
    result = _invoke(["train", "--set", "train.patience", "--out", str(tmp_path / "run")])
    assert result.stderr == "cifar-job: error: --set 'train.patience': expected KEY=VALUE, e.g. train.patience=3\n"


def test_unwritable_output_directory_fails_before_any_work(tmp_path: Path, real_archive: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = blocker / "run"
    result = _invoke(["train", "--data", str(real_archive), "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr == f"cifar-job: error: output directory {out}: not writable (Not a directory at {blocker})\n"
    assert blocker.read_text() == "not a directory"


def test_malformed_yaml_is_a_config_error_with_line(tmp_path: Path) -> None:
    file = tmp_path / "job.yaml"
    file.write_text("train:\n  epochs: [1,\n")
    result = _invoke(["train", "--config", str(file), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"cifar-job: error: config file {file} line ")


def test_sigterm_outside_training_exits_75_and_keeps_no_partial_download(tmp_path: Path) -> None:
    """A pod stopped while it is not training ends with one line and exit 75, not a kill.

    The command is caught mid-download from a server that stalls after a few bytes.
    """
    requested, release = threading.Event(), threading.Event()

    class Stalling(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + b"\0" * 1000)
            self.wfile.flush()
            requested.set()
            release.wait(60)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cache = tmp_path / "cache"
    url = f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz"
    command = [sys.executable, "-m", "job", "data", "verify", "--data", url, "--set", f"data.cache_dir={cache}"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert requested.wait(60), "the download never started"
        time.sleep(0.2)  # blocked reading the stalled body
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        release.set()
        server.shutdown()
    assert proc.returncode == 75, stderr
    assert stderr.strip().splitlines()[-1] == "cifar-job: error: SIGTERM received; finished stages and epochs are saved, rerun to resume"
    assert list(cache.iterdir()) == []  # the partial download was removed
