"""Shared fixtures: the real CIFAR-10 archive, and CIFAR-format archives the tests build."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REAL_ARCHIVE = Path(__file__).resolve().parents[2] / "shared/data/cifar10/cifar-10-python.tar.gz"
REAL_SHA256 = "bacb65a76d54dccc7e298ac217f75c31f4cce42077e544942e9f82f296a5caf7"
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# The one small training the tests share (training, export): 2 epochs on 1,000 of the real images.
TRAINED_SLICE = ["--set", "train.epochs=2", "--set", "data.train_limit=1000", "--set", "data.test_limit=100", "--set", "train.augment=false"]


def train_args(out: Path, *extra: str) -> list[str]:
    """`cifar-job train` arguments for TRAINED_SLICE of the real archive into `out`; `extra` may override."""
    return ["train", "--data", str(REAL_ARCHIVE), "--checksum", f"sha256:{REAL_SHA256}", "--out", str(out), *TRAINED_SLICE, *extra]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished training of TRAINED_SLICE, made once per session. Shared: copy it before changing anything."""
    from click.testing import CliRunner

    from job.cli import main

    out = tmp_path_factory.mktemp("trained") / "run"
    result = CliRunner().invoke(main, train_args(out))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def real_archive() -> Path:
    """The real data set (a faithful rebuild, see shared/data/cifar10/README.md)."""
    assert REAL_ARCHIVE.is_file(), f"real CIFAR-10 archive missing at {REAL_ARCHIVE}"
    return REAL_ARCHIVE


def batch_bytes(data: np.ndarray | None = None, labels: list[int] | None = None, **extra: object) -> bytes:
    """A CIFAR batch pickled as the canonical archive has it (protocol 2, bytes keys)."""
    if data is None:
        data = np.tile(np.arange(3072, dtype=np.uint8), (10_000, 1))
    if labels is None:
        labels = [i % 10 for i in range(10_000)]
    return pickle.dumps({b"batch_label": b"synthetic", b"labels": labels, b"data": data, **extra}, protocol=2)


@pytest.fixture(scope="session")
def cifar_files() -> dict[str, bytes]:
    """Member name -> bytes of a complete, valid, synthetic CIFAR-10 python archive."""
    files = {f"data_batch_{i}": batch_bytes() for i in range(1, 6)}
    files["test_batch"] = batch_bytes()
    files["batches.meta"] = pickle.dumps({b"label_names": [n.encode() for n in CLASS_NAMES], b"num_vis": 3072}, protocol=2)
    return files


def write_archive(path: Path, files: dict[str, bytes], extra: Callable[[tarfile.TarFile], None] | None = None) -> Path:
    """Write `files` under cifar-10-batches-py/ into a .tar.gz; `extra` may add hostile members."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        if extra:
            extra(tar)
    return path


@pytest.fixture
def make_archive(tmp_path: Path, cifar_files: dict[str, bytes]) -> Callable[..., Path]:
    """Build an archive from the valid files with some replaced (None removes one)."""

    def make(name: str = "cifar.tar.gz", extra: Callable[[tarfile.TarFile], None] | None = None, **replace: bytes | None) -> Path:
        files = {**cifar_files, **{k.replace("__", "."): v for k, v in replace.items()}}
        return write_archive(tmp_path / name, {k: v for k, v in files.items() if v is not None}, extra)

    return make


@pytest.fixture(scope="session")
def synthetic_archive(tmp_path_factory: pytest.TempPathFactory, cifar_files: dict[str, bytes]) -> Path:
    """One valid synthetic archive shared by tests that only read it."""
    return write_archive(tmp_path_factory.mktemp("synthetic") / "cifar.tar.gz", cifar_files)


def on_tmpfs(directory: Path, options: str, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run `cifar-job ARGS` with a real tmpfs (mount `options`, e.g. size=1m or ro) on `directory`, in a
    private mount namespace; return the process and the files it left there (the tmpfs goes with it)."""
    script = 'd=$1; shift; mount -t tmpfs -o "$1" tmpfs "$d" || exit 99; shift; "$@"; rc=$?; echo LEFT; find "$d" -type f; exit $rc'
    command = ["unshare", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(directory), options, sys.executable, "-m", "job", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return done, done.stdout.split("LEFT\n")[-1].split()
