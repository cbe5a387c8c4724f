"""Config layering and validation, through the command line a user types."""

from __future__ import annotations

import hashlib
import http.server
import json
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from job.cli import main
from job.config.settings import SECTIONS, TRAINING_DEFAULTS_VERSION, TRAINING_SECTIONS, Config, load_config, parse_sets
from job.core.errors import ConfigError

pytestmark = pytest.mark.fast  # no training, no fuzzing: the tier `bash tests/run.sh -m fast` runs


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
    assert result.stderr.startswith(f"cifar-job: error: config key train.epoch (from {file}): unknown key; did you mean epochs? expected one of: epochs, ")
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


# --- Hostile and faulty input: refused before any work, one short line, exit 2 ---------------------

ALIAS_BOMB = "train:\n  epochs:\n    - &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
    f"    - &{b} [{','.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefg", "bcdefgh")
)  # 330 bytes; 9**8 (43 million) strings once expanded


def _float_keys() -> list[str]:
    return [
        f"{Config.model_fields[section].alias or section}.{key}"
        for section, model in SECTIONS.items()
        for key, field in model.model_fields.items()
        if "float" in str(field.annotation)
    ]


HOSTILE_FILES = {
    "alias bomb": (ALIAS_BOMB, "line 3: not valid YAML: anchors (&) and aliases (*) are not supported"),
    "merge key": ("train: &t {epochs: 3}\nexport: {<<: *t}\n", "anchors (&) and aliases (*) are not supported"),
    "not UTF-8": (b"train:\n  epochs: \xff\xfe\n", "not UTF-8 text (byte 17)"),
    "flow nesting": ("train: " + "[" * 20_000, "not valid YAML"),
    "block nesting": ("".join(" " * i + "- \n" for i in range(100)), "line 11: not valid YAML: nested deeper than 10 levels"),
    "too many values": ("train: [" + "1," * 20_000 + "1]\n", "not valid YAML: more than 10000 values"),
    "too large": ("#" * (1 << 20) + "\n", "larger than 1048576 bytes"),
    "long integer": ("train: {patience: " + "9" * 5000 + "}\n", "not valid YAML: a value longer than 4096 characters"),
    "huge hex integer": ("train: {patience: 0x" + "f" * 4000 + "}\n", "train.patience (from FILE): input should be less than or equal to 10000, got <integer of 16000 bits>"),
    "duplicate key": ("train:\n  epochs: 3\n  epochs: 4\n", "line 3: not valid YAML: duplicate key 'epochs'"),
    "duplicate section": ("train: {}\ndata: {}\ntrain: {}\n", "line 3: not valid YAML: duplicate key 'train'"),
    "binary tag": ("data: {source: !!binary aGVsbG8=}\n", "tag !!binary is not supported"),
    "timestamp tag": ("metrics: {run_id: !!timestamp 2024-01-01}\n", "tag !!timestamp is not supported"),
    "python tag": ("train: !!python/object/apply:os.system [echo owned]\n", "tag !!python/object/apply:os.system is not supported"),
    "set tag": ("train: !!set {epochs}\n", "tag !!set is not supported"),
    "local tag": ("train: {epochs: !int 3}\n", "tag !int is not supported"),
    "seed of 2**32": ("train: {seed: 4294967296}\n", "config key train.seed (from FILE): input should be less than 4294967296, got 4294967296"),
    "split seed of 2**32": ("data: {split_seed: 4294967296}\n", "config key data.split_seed (from FILE): input should be less than 4294967296"),
    "no training images": (
        "data: {train_limit: 10, validation_fraction: 0.99}\n",
        "config key data.validation_fraction (from FILE): splits 10 training images into 0 for training and 10 for validation; both need at least one",
    ),
    "no validation images": ("data: {train_limit: 10, validation_fraction: 0.01}\n", "into 10 for training and 0 for validation"),
    "more parity images than data": (
        "data: {train_limit: 400, test_limit: 200}\nexport: {parity_images: 601}\n",
        "config key export.parity_images (from FILE): 601 images wanted for the parity check; the data config yields 600",
    ),
    "parity images beyond CIFAR-10": ("export: {parity_images: 60001}\n", "60001 images wanted for the parity check; the data config yields 60000"),
    "NUL in a path": ('out: "runs/a\\0b"\n', "config key out (from FILE): expected printable text of at most 4096 characters, got 'runs/a\\x00b'"),
    "newline in the cache path": ('data: {cache_dir: "/tmp/a\\nb"}\n', "config key data.cache_dir (from FILE): expected printable text"),
    "escape in the publish root": ('publish: {root: "\\e[2J"}\n', "config key publish.root (from FILE): expected printable text"),
    "right-to-left override in the source": ('data: {source: "archive\\u202Ezg.tar"}\n', "config key data.source (from FILE): expected printable text"),
    "slash in run_id": ("metrics: {run_id: ../../job}\n", "config key metrics.run_id (from FILE): string should match pattern"),
    "long job_name": (f"metrics: {{job_name: {'j' * 129}}}\n", "config key metrics.job_name (from FILE): string should match pattern"),
    "bad metrics address": ("metrics: {address: 'http://0.0.0.0:80'}\n", "config key metrics.address (from FILE): expected an IP address or a host name"),
    "huge unknown key": ("train:\n  ? " + "k" * 4000 + "\n  : 1\n", "config key 'train." + "k" * 70 + "... (from FILE): unknown key;"),
    "internal section name": ("validate_: {device: cpu}\n", "config key validate_ (from FILE): unknown key; did you mean validate? expected one of: out, recipe, data,"),
    "bad value echoed in part": (f"data: {{checksum: md5:{'0' * 4000}}}\n", "got 'md5:" + "0" * 72 + "..."),
    "sequence of sections": ("- train\n", "expected a mapping of sections, got list"),
}
HOSTILE_FILES |= {
    f"{word} in {key}": (f"{key.split('.')[0]}: {{{key.split('.')[1]}: {spelling}}}\n", f"config key {key} (from FILE): input should be a finite number")
    for key in _float_keys()
    for word, spelling in (("NaN", ".nan"), ("infinity", ".inf"), ("-infinity", "-.inf"))
}


def _one_error_line(result) -> str:
    """The CLI's answer to bad config: exit 2, one short line, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("cifar-job: error: ") and result.stderr.count("\n") == 1, result.stderr[:2000]
    assert len(result.stderr) < 600
    return result.stderr.removeprefix("cifar-job: error: ").rstrip("\n")


@pytest.mark.parametrize("case", HOSTILE_FILES)
def test_hostile_config_file_is_refused_before_any_work(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, expected = HOSTILE_FILES[case]
    file = tmp_path / "job.yaml"
    file.write_bytes(text if isinstance(text, bytes) else text.encode())
    expected = expected.replace("FILE", str(file))
    with pytest.raises(ConfigError) as raised:
        load_config(file, env={})
    assert expected in str(raised.value)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert _one_error_line(_invoke(["train", "--config", str(file)])) == str(raised.value)
    assert list(cwd.iterdir()) == []  # no run directory


def _limited(seconds: int, gigabytes: float) -> Callable[[], None]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))
        resource.setrlimit(resource.RLIMIT_AS, (int(gigabytes * 2**30),) * 2)

    return limit


def test_alias_bomb_costs_well_under_a_second_and_little_memory(tmp_path: Path) -> None:
    """Measured before the fix: 11-15 s, 1.4 GB and a 351 MB "line"; the loader now stops at the first anchor."""
    file = tmp_path / "bomb.yaml"
    file.write_text(ALIAS_BOMB)
    started = time.perf_counter()
    with pytest.raises(ConfigError):
        load_config(file, env={})
    assert time.perf_counter() - started < 0.1
    # The whole command, start-up included, in a process allowed 5 s of CPU and 1.5 GiB of address space.
    proc = subprocess.run([sys.executable, "-m", "job", "data", "verify", "--config", str(file)],
                          capture_output=True, text=True, timeout=60, preexec_fn=_limited(5, 1.5))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr == f"cifar-job: error: config file {file} line 3: not valid YAML: anchors (&) and aliases (*) are not supported\n"


HOSTILE_COMMAND_LINES = {
    "invalid YAML in --set": (["--set", "train.learning_rate=["], {},
                              "config key train.learning_rate (from command line): not valid YAML: did not find expected node content"),
    "alias in --set": (["--set", "train.epochs=[&a [1, 1], *a]"], {}, "config key train.epochs (from command line): not valid YAML: anchors"),
    "tag in --set": (["--set", "data.source=!!binary aGVsbG8="], {}, "not valid YAML: tag !!binary is not supported"),
    "NUL in --set": (["--set", 'out="a\\0b"'], {}, "config key out (from command line): expected printable text"),
    "huge --set key": (["--set", "k" * 100_000 + "=1"], {}, "config key '" + "k" * 76 + "... (from command line): unknown key"),
    "--set without value": (["--set", "x" * 100_000], {}, "--set '" + "x" * 76 + "...: expected KEY=VALUE"),
    "empty --set value unsets": (["--set", "train.epochs="], {}, "config key train.epochs (from command line): input should be a valid integer, got None"),
    "word for a number flag": (["--epochs", "many"], {}, "config key train.epochs (from command line): input should be a valid integer, unable to parse"),
    "seed flag of 2**32": (["--seed", "4294967296"], {}, "config key train.seed (from command line): input should be less than 4294967296"),
    "infinite decay": (["--set", "train.lr_decay=.inf"], {}, "config key train.lr_decay (from command line): input should be a finite number"),
    "NaN from the environment": ([], {"CIFAR_JOB_GATE_MIN_ACCURACY": "nan"}, "config key gate.min_accuracy (from environment): input should be a finite number"),
    "huge environment value": ([], {"CIFAR_JOB_TRAIN_EPOCHS": "9" * 100_000},
                               "config key train.epochs (from environment): expected printable text of at most 4096 characters, got '999"),
    "huge environment name": ([], {"CIFAR_JOB_" + "X" * 100_000: "1"}, "environment variable 'CIFAR_JOB_XXXX"),
    "two variables for one key": ([], {"CIFAR_JOB_TRAIN_EPOCHS": "3", "CIFAR_JOB_TRAIN_epochs": "4"},
                                  "environment variables CIFAR_JOB_TRAIN_EPOCHS and CIFAR_JOB_TRAIN_epochs both set train.epochs"),
    "password in a bad URL": (["--set", "metrics.pushgateway_url=http://ci:hunter2@push:9091/a b"], {},
                              "config key metrics.pushgateway_url (from command line): string should match pattern"),
    "escape sequence in the environment": ([], {"CIFAR_JOB_METRICS_RUN_ID": "\x1b]0;owned\x07"}, "config key metrics.run_id (from environment)"),
}


@pytest.mark.parametrize("case", HOSTILE_COMMAND_LINES)
def test_hostile_flags_and_environment_are_refused_with_one_short_line(case: str, tmp_path: Path) -> None:
    args, env, expected = HOSTILE_COMMAND_LINES[case]
    out = tmp_path / "run"
    message = _one_error_line(_invoke(["train", "--out", str(out), *args], env=env))
    assert expected in message and message.isprintable() and "hunter2" not in message
    assert not out.exists()


def test_yaml_reads_dates_and_special_words_as_text(tmp_path: Path) -> None:
    """YAML 1.1 would make a date of 2024-01-01 and fail on a bare '=' (its 'value' tag); a config wants the text."""
    file = tmp_path / "job.yaml"
    file.write_text("metrics: {run_id: 2024-01-01}\n")
    c = load_config(file, env={}, overrides=parse_sets(("data.cache_dir==", "data.source=<<")))
    assert (c.metrics.run_id, c.data.cache_dir, c.data.source) == ("2024-01-01", Path("="), "<<")


def test_negative_zero_is_zero_and_trains_the_same_weights() -> None:
    c = load_config(env={}, overrides={"train.min_delta": -0.0, "gate.max_regression": -0.0})
    assert str(c.train.min_delta) == str(c.gate.max_regression) == "0.0"
    assert c.training_digest() == load_config(env={}, overrides={"train.min_delta": 0.0}).training_digest()


def test_default_parity_images_shrink_to_what_the_data_limits_leave() -> None:
    small = {"data.train_limit": 400, "data.test_limit": 200}
    assert load_config(env={}, overrides=small).export.parity_images == 600
    assert load_config(env={}, overrides={**small, "export.parity_images": 600}).export.parity_images == 600
    assert load_config(env={}).export.parity_images == 1000


@pytest.mark.parametrize(("fraction", "limit"), [(0.2, None), (0.5, 15), (0.85, 10), (0.15, 10), (0.25, 10)])
def test_split_sizes_are_what_the_data_layer_loads(fraction: float, limit: int | None, cifar_files: dict[str, bytes], tmp_path: Path) -> None:
    """The config refuses empty splits by counting them as job/data/dataset.py splits them (half to even included)."""
    from job.data.dataset import load_dataset

    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for name, payload in cifar_files.items():
        (batches / name).write_bytes(payload)
    data = load_config(env={}, overrides={"data.source": str(tmp_path), "data.validation_fraction": fraction, "data.train_limit": limit}).data
    loaded = load_dataset(data)
    assert data.split_sizes() == (len(loaded.train_labels), len(loaded.val_labels), len(loaded.test_labels))


def test_empty_set_value_unsets_what_the_file_set(tmp_path: Path) -> None:
    file = tmp_path / "job.yaml"
    file.write_text(f"data: {{checksum: md5:{'0' * 32}}}\n")
    assert load_config(file, env={}, overrides=parse_sets(("data.checksum=",))).data.checksum is None


# --- SIGTERM at any moment of the process: exit 75, at most one line ---------------------------------

PREEMPTED_LINE = "cifar-job: error: SIGTERM received; finished stages and epochs are saved, rerun to resume\n"

# The window is held open by the child itself and announced by a marker file, so the signal always lands in it.
SHUTDOWN_WINDOW = """
import sys, threading, time
from pathlib import Path

marker = Path(sys.argv[1])

def outlive_main():  # a non-daemon thread: the interpreter waits for it after main() has exited
    while threading.main_thread().is_alive():
        time.sleep(0.01)
    marker.touch()
    time.sleep(60)

threading.Thread(target=outlive_main).start()
sys.argv[1:] = ["--version"]
from job.cli import main
main(prog_name="cifar-job")
"""

STARTUP_WINDOW = """
import sys, time
from pathlib import Path

import job.cli  # the entry point's module, imported: main() has not started yet
Path(sys.argv[1]).touch()
time.sleep(60)
"""


@pytest.mark.parametrize("window", [SHUTDOWN_WINDOW, STARTUP_WINDOW], ids=["interpreter shutdown", "start-up"])
def test_sigterm_outside_a_command_exits_75_with_one_line(window: str, tmp_path: Path) -> None:
    marker = tmp_path / "in-window"
    proc = subprocess.Popen([sys.executable, "-c", window, str(marker)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), proc.communicate(timeout=60)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert (proc.returncode, stderr) == (75, PREEMPTED_LINE)
    assert stdout == ("cifar-job, version 0.1.0\n" if window is SHUTDOWN_WINDOW else "")


def test_a_finished_command_keeps_its_exit_code_and_output() -> None:
    """The process ends through the CLI's own exit handler: output flushed, status kept."""
    ok = subprocess.run([sys.executable, "-m", "job", "--version"], capture_output=True, text=True, timeout=60)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "cifar-job, version 0.1.0\n", "")
    bad = subprocess.run([sys.executable, "-m", "job", "train", "--epochs", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stdout == ""


# The defaults TRAINING_DEFAULTS_VERSION 1 stands for. A key added later needs no entry; a default changed or
# removed needs the version bumped (old checkpoints must not resume under a new meaning) and this updated.
TRAINING_DEFAULTS_V1 = {
    "data.validation_fraction": 0.2,
    "data.split_seed": 1337,
    "data.train_limit": None,
    "data.test_limit": None,
    "data.folds": None,
    "data.fold": 0,
    "model.name": "reference_cnn",
    "train.epochs": 75,
    "train.batch_size": 32,
    "train.learning_rate": 0.01,
    "train.momentum": 0.9,
    "train.nesterov": False,
    "train.weight_decay": 0.0,
    "train.lr_schedule": "inverse_time",
    "train.lr_decay": 0.00013333333333333334,
    "train.warmup_fraction": 0.23,
    "train.lr_start_factor": 0.2,
    "train.lr_end_factor": 0.07,
    "train.label_smoothing": 0.0,
    "train.patience": 5,
    "train.min_delta": 0.0,
    "train.augment": True,
    "train.augmentation": "affine",
    "train.crop_pixels": 2,
    "train.rotation_degrees": 15.0,
    "train.shift_fraction": 0.1,
    "train.horizontal_flip": True,
    "train.seed": 42,
    "train.deterministic": False,
    "train.mixed_precision": False,
}


def test_a_changed_training_default_bumps_the_digest_version() -> None:
    d = Config().to_dict()
    now = {f"{s}.{k}": v for s in TRAINING_SECTIONS for k, v in d[s].items()}
    changed = sorted(k for k, v in TRAINING_DEFAULTS_V1.items() if k not in now or now[k] != v)
    assert TRAINING_DEFAULTS_VERSION == 1 and changed == [], f"defaults changed: {changed}; bump TRAINING_DEFAULTS_VERSION"


def test_the_digest_holds_only_settings_that_differ_from_the_defaults() -> None:
    """So a release that adds a key (at a default that keeps the old behaviour) keeps run directories resumable."""
    empty = {"data": {}, "defaults_version": TRAINING_DEFAULTS_VERSION, "model": {}, "train": {}}
    assert Config().training_digest() == hashlib.sha256(json.dumps(empty, sort_keys=True).encode()).hexdigest()
    changed = load_config(env={}, overrides={"train.label_smoothing": 0.1})
    assert changed.training_digest() != Config().training_digest()
    moved = load_config(env={}, overrides={"train.device": "cpu", "data.source": "/elsewhere.tar.gz"})
    assert moved.training_digest() == Config().training_digest()  # where it runs and reads from is not what it trains


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--bogus"], "command line of cifar-job train: No such option '--bogus'."),
        (["trian"], "command line of cifar-job: No such command 'trian'."),
        (["--bogus", "train"], "command line of cifar-job: No such option '--bogus'."),
        (["experiment", "run"], "command line of cifar-job experiment run: Missing argument 'SPEC'."),
        (["train", "--recipe"], "command line of cifar-job: Option '--recipe' requires an argument."),  # Click names no command here
    ],
)
def test_usage_errors_are_one_line_too(args: list[str], expected: str) -> None:
    """A wrong flag or command reads like any other bad input: one line naming the command, exit 2."""
    assert _one_error_line(CliRunner().invoke(main, args, prog_name="cifar-job")).startswith(expected)


def test_a_group_without_a_command_still_shows_its_help() -> None:
    result = CliRunner().invoke(main, ["experiment"], prog_name="cifar-job")
    assert result.exit_code == 2 and "Usage: cifar-job experiment" in result.output and "Commands:" in result.output


def test_a_run_directory_s_recorded_config_is_the_lowest_layer_and_read_as_strictly_as_a_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("out: /elsewhere\ntrain: {epochs: 9, seed: 5}\ndata: {source: /data/cifar.tar.gz}\n")
    config = load_config(env={"CIFAR_JOB_TRAIN_SEED": "6"}, overrides={"out": str(run), "train.batch_size": 64}, continue_run=True)
    assert (config.out, config.train.epochs, config.train.seed, config.train.batch_size) == (run, 9, 6, 64)
    assert config.data.source == "/data/cifar.tar.gz"
    assert load_config(env={}, overrides={"out": str(run)}).train.epochs == 75  # only the commands that continue a run read it
    (run / "config.yaml").write_text("train: {epochs: [\n")
    result = CliRunner().invoke(main, ["export", "--out", str(run)])
    assert result.exit_code == 2 and result.stderr.startswith("cifar-job: error: recorded config ") and result.stderr.count("\n") == 1
