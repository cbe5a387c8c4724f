"""One repository, many runs: a model directory records what it holds, and the root holds only servable models.

Each test builds its own hostile repository from one published pair (a float model and its INT8
variant of the mean-colour model, tests/onnx_models.py) and drives the real publish and variants
commands. Whatever the outcome, every directory left under the root must be a model Triton loads
at start-up: its config.pbtxt and at least one numbered version with a model.onnx.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from export import publish, repository, variants
from export.model_config import CONFIG_FILE
from export.repository import KIND_FILE, MAX_KIND_BYTES, lock_path, versions
from job.cli import main
from job.config.settings import load_config
from job.data.dataset import load_dataset

from .conftest import REAL_ARCHIVE
from .onnx_models import fit_mean_colour, mean_colour_model
from .test_publish import KILLER

NO_GATE = ["--set", "gate.min_accuracy=0", "--set", "gate.min_weighted_f1=0"]
INT8_ONLY = ["--set", "variants.enabled=[int8]"]
INT8 = [*INT8_ONLY, "--set", "variants.max_accuracy_drop=0.05"]  # what the mean-colour model needs: see tests/test_variants.py
FLOAT, VARIANT = "cifar10-cnn", "cifar10-cnn-int8"


@pytest.fixture(scope="module")
def made(real_archive: Path, tmp_path_factory) -> dict[str, Path]:
    """Runs `good` (fitted) and `worse` (always 'airplane': fails the default gate), a repository with `good` published
    (float_only), and one with its INT8 variant beside it (both)."""
    data = load_dataset(load_config(env={}, overrides={"data.source": str(real_archive)}).data)
    airplane = np.zeros(10)
    airplane[0] = 1.0
    models = {
        "good": mean_colour_model(*fit_mean_colour(data.train_images, data.train_labels), trained_on=data.fingerprint),
        "worse": mean_colour_model(np.zeros((3, 10)), airplane, trained_on=data.fingerprint),
    }
    base = tmp_path_factory.mktemp("kinds")
    for name, model in models.items():
        (base / name).mkdir()
        (base / name / "model.onnx").write_bytes(model.SerializeToString())
    float_only, both = base / "float_only", base / "both"
    assert _cli("publish", base / "good", float_only, *NO_GATE).exit_code == 0
    shutil.copytree(float_only, both)
    result = _cli("variants", base / "good", both, *NO_GATE, *INT8)
    assert result.exit_code == 0 and "int8 published as cifar10-cnn-int8 version 1" in result.stdout, result.output
    return {"good": base / "good", "worse": base / "worse", "float_only": float_only, "both": both}


@pytest.fixture
def copied(made: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """Fresh copies of the runs and repositories, and an empty `fresh` root."""
    return {name: shutil.copytree(path, tmp_path / name) for name, path in made.items()} | {"fresh": tmp_path / "fresh"}


def _args(run: Path, root: Path, *extra: str) -> list[str]:
    return ["--out", str(run), "--data", str(REAL_ARCHIVE), "--set", f"publish.root={root}", "--device", "cpu", *extra]


def _cli(command: str, run: Path, root: Path, *extra: str):
    return CliRunner().invoke(main, [command, *_args(run, root, *extra)])


def _process(command: str, run: Path, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The real command in a process of its own, with a deadline: a publisher that blocks fails the test instead of hanging it."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "job", command, *_args(run, root, *extra)], capture_output=True, text=True, timeout=120, env=env)


def _error_line(stderr: str) -> str:
    """The one error line the CLI printed (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("cifar-job: error: ")]
    assert len(errors) == 1 and errors[0] == stderr.strip().splitlines()[-1], stderr
    return errors[0]


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under the root, with its bytes (None for a directory)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def _assert_servable(root: Path) -> None:
    """Every directory under the root is a model a server loads: config.pbtxt and numbered versions, each with model.onnx;
    anything else there is a hidden file (a publish lock), which a server does not load."""
    for entry in root.iterdir() if root.exists() else ():
        if not entry.is_dir():
            assert entry.name.startswith(".") and not entry.is_symlink(), entry
            continue
        assert (entry / CONFIG_FILE).is_file() and versions(entry), sorted(p.name for p in entry.iterdir())
        assert all((entry / str(v) / "model.onnx").is_file() for v in versions(entry)), entry


def _kind(model_dir: Path) -> dict:
    return json.loads((model_dir / KIND_FILE).read_text())


def test_each_model_directory_records_what_it_holds(copied) -> None:
    root = copied["both"]
    assert _kind(root / FLOAT) == {"model": FLOAT, "variant": None}
    assert _kind(root / VARIANT) == {"model": FLOAT, "variant": "int8"}
    assert not (root / FLOAT / ".publish.lock").exists() and lock_path(root / FLOAT).is_file()  # the lock lives beside it
    _assert_servable(root)


@pytest.mark.parametrize("checked", ["before any work", "under the lock"])
def test_a_float_model_named_like_a_variant_is_refused_and_the_variant_is_untouched(copied, monkeypatch, checked: str) -> None:
    """A run whose publish.model_name is another run's variant name: its float model must not become a version of the INT8 model."""
    root = copied["both"]
    if checked == "under the lock":  # as if the directory was claimed after the early check
        monkeypatch.setattr(publish, "check_model_dir", lambda config, kind: None)
    before = _snapshot(root)
    result = _cli("publish", copied["worse"], root, *NO_GATE, "--set", f"publish.model_name={VARIANT}")
    assert result.exit_code == 5, result.output
    line = _error_line(result.stderr)
    assert f"model repository {root / VARIANT}: holds the int8 variant of {FLOAT}; refusing to publish the float model {VARIANT}" in line
    assert _snapshot(root) == before  # the variant's model, sidecar, config.pbtxt and record, byte for byte
    _assert_servable(root)


@pytest.mark.parametrize("checked", ["before any work", "under the lock"])
def test_a_variant_is_not_published_into_a_float_models_directory(copied, monkeypatch, checked: str) -> None:
    """Another run published its float model as `cifar10-cnn-int8`; the INT8 variant of cifar10-cnn must not join it."""
    root = copied["float_only"]
    assert _cli("publish", copied["worse"], root, *NO_GATE, "--set", f"publish.model_name={VARIANT}").exit_code == 0
    if checked == "under the lock":
        monkeypatch.setattr(variants, "check_model_dir", lambda config, kind: None)
    before, marker = _snapshot(root), (copied["good"] / "variants.json").read_bytes()  # the marker of the fixture's variants run
    result = _cli("variants", copied["good"], root, *NO_GATE, *INT8)
    assert result.exit_code == 5, result.output
    line = _error_line(result.stderr)
    assert f"model repository {root / VARIANT}: holds the float model {VARIANT}; refusing to publish the int8 variant of {FLOAT}" in line
    assert _snapshot(root) == before and (copied["good"] / "variants.json").read_bytes() == marker
    _assert_servable(root)


def test_variants_derive_only_from_a_directory_that_holds_the_float_model(copied) -> None:
    """`publish.model_name` naming a variant's directory: that is no float model to derive variants from."""
    root = copied["both"]
    result = _cli("variants", copied["good"], root, *NO_GATE, *INT8, "--set", f"publish.model_name={VARIANT}")
    assert result.exit_code == 5, result.output
    assert f"holds the int8 variant of {FLOAT}; refusing to publish the float model {VARIANT}" in _error_line(result.stderr)
    assert not (root / f"{VARIANT}-int8").exists()


def test_a_float_model_that_fails_the_gate_leaves_no_directory(copied) -> None:
    root = copied["fresh"]
    result = _cli("publish", copied["worse"], root)  # the default gate: accuracy 0.1 < 0.7562
    assert result.exit_code == 6, result.output
    assert [p.name for p in root.iterdir() if p.is_dir()] == []
    _assert_servable(root)


def test_a_variant_that_fails_its_gate_leaves_no_directory(copied) -> None:
    """Calibrated on one image, INT8 is far below the float model (see tests/test_variants.py)."""
    root = copied["float_only"]
    result = _cli("variants", copied["good"], root, *NO_GATE, *INT8_ONLY, "--set", "variants.calibration_images=1")
    assert result.exit_code == 0 and "int8 NOT published" in result.stdout, result.output
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [FLOAT]
    _assert_servable(root)


@pytest.mark.parametrize("failing", ["write_version", "write_model_files"])
def test_a_first_publish_that_fails_midway_removes_the_directory_it_made(copied, monkeypatch, failing: str) -> None:
    """A full disk while writing the first version, or the config.pbtxt after its rename: the new directory goes with the publish."""
    root = copied["fresh"]
    real = getattr(repository, failing)

    def full(directory: Path, files: dict[str, bytes], **seal: object) -> None:
        if failing == "write_version" or CONFIG_FILE in files:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        real(directory, files, **seal)

    monkeypatch.setattr(repository, failing, full)
    result = _cli("publish", copied["good"], root, *NO_GATE)
    assert result.exit_code == 12, result.output
    assert "No space left on device" in _error_line(result.stderr)
    assert [p.name for p in root.iterdir() if p.is_dir()] == []


def test_a_directory_left_without_a_version_by_a_killed_publish_is_removed_by_the_next(copied) -> None:
    """SIGKILL just before the first version's rename leaves a directory with the record and staging only; the next
    publisher of that name removes it under the lock, even when its own gate fails."""
    root = copied["fresh"]
    command = [sys.executable, "-c", KILLER, "os.rename", f"{FLOAT}/.staging-", "publish", *_args(copied["good"], root, *NO_GATE)]
    killed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert versions(root / FLOAT) == [] and (root / FLOAT / KIND_FILE).is_file()  # the crash's leftover

    result = _cli("publish", copied["worse"], root)
    assert result.exit_code == 6, result.output
    assert not (root / FLOAT).exists()
    _assert_servable(root)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _link(path: Path) -> None:
    target = path.parent.parent / "elsewhere"
    target.write_text("")
    path.symlink_to(target)


@pytest.mark.parametrize("make", [_fifo, _link, Path.mkdir], ids=["fifo", "symlink", "directory"])
def test_a_publish_lock_that_is_not_a_regular_file_is_refused_promptly(copied, make) -> None:
    root = copied["fresh"]
    root.mkdir()
    make(lock_path(root / FLOAT))
    done = _process("publish", copied["good"], root, *NO_GATE)
    assert done.returncode == 5, done.stderr
    line = _error_line(done.stderr)
    assert line.startswith(f"cifar-job: error: model repository {lock_path(root / FLOAT)}: ") and "must be a regular file" in line
    assert [p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink()] == ([lock_path(root / FLOAT).name] if make is Path.mkdir else [])


def _dir_link(path: Path) -> None:
    target = path.parent.parent / "elsewhere"
    target.mkdir()
    path.symlink_to(target, target_is_directory=True)


def _write(data: bytes):
    return lambda path: path.write_bytes(data)


FORGED = {
    "garbage": (_write(b"\xff\xfe not json"), "not a record this version of cifar-job wrote"),
    "huge": (_write(b" " * (MAX_KIND_BYTES + 1)), f"larger than {MAX_KIND_BYTES} bytes"),
    "fifo": (_fifo, "not a regular file"),
    "directory": (Path.mkdir, "not a regular file"),
    "deeply nested": (_write(b"[" * MAX_KIND_BYTES), "not a record this version of cifar-job wrote"),
    "other fields": (_write(b'{"model": "cifar10-cnn", "variant": null, "x": 1}'), "its fields differ"),
    "another directory": (_write(b'{"model": "other\\nline", "variant": null}'), "names another model directory, not cifar10-cnn"),
}


@pytest.mark.parametrize("forged", FORGED)
def test_a_forged_kind_record_is_one_error_line(copied, forged: str) -> None:
    root = copied["float_only"]
    make, problem = FORGED[forged]
    record = root / FLOAT / KIND_FILE
    record.unlink()
    make(record)
    done = _process("publish", copied["worse"], root, *NO_GATE)
    assert done.returncode == 5, done.stderr
    line = _error_line(done.stderr)
    assert line.startswith(f"cifar-job: error: model repository {record}: ") and problem in line
    assert versions(root / FLOAT) == [1]
    _assert_servable(root)


def test_versions_without_a_record_are_not_claimed(copied) -> None:
    """Versions no record vouches for (another tool's, or a cifar-job from before records): refused, with how to record them."""
    root = copied["float_only"]
    (root / FLOAT / KIND_FILE).unlink()
    before = _snapshot(root)
    result = _cli("publish", copied["worse"], root, *NO_GATE)
    assert result.exit_code == 5, result.output
    line = _error_line(result.stderr)
    assert f"model repository {root / FLOAT}: holds versions but no {KIND_FILE}" in line
    assert f'write {{"model": "{FLOAT}", "variant": null}} to {root / FLOAT / KIND_FILE}' in line
    assert _snapshot(root) == before


@pytest.mark.parametrize("make", [_fifo, _write(b"a file"), _dir_link], ids=["fifo", "file", "symlink"])
def test_a_model_directory_that_is_not_a_directory_is_refused(copied, make) -> None:
    root = copied["fresh"]
    root.mkdir()
    make(root / FLOAT)
    done = _process("publish", copied["good"], root, *NO_GATE)
    assert done.returncode == 5, done.stderr
    assert f"model repository {root / FLOAT}: a model must be a directory" in _error_line(done.stderr)


@pytest.mark.parametrize("command", ["publish", "variants"])
def test_a_published_model_file_that_is_a_fifo_is_one_error_line(copied, command: str) -> None:
    """The float model already published (publish reuses its version; variants derive from it): read without blocking."""
    root = copied["float_only"]
    published = root / FLOAT / "1" / "model.onnx"
    published.unlink()
    os.mkfifo(published)
    done = _process(command, copied["good"], root, *NO_GATE, *INT8)
    assert done.returncode == 5, done.stderr
    assert _error_line(done.stderr) == f"cifar-job: error: model {published}: not a regular file"
