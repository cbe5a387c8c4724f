"""The data layer: real archive, directory and URL sources; every bad input refused cleanly."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from job.cli import main
from job.config.settings import load_config
from job.data.dataset import load_dataset
from job.core.errors import DataError

from .conftest import CLASS_NAMES, REAL_SHA256, batch_bytes

pytestmark = pytest.mark.fast  # no training, no fuzzing: the tier `bash tests/run.sh -m fast` runs

NOT_CIFAR = "not a valid CIFAR-10 .tar.gz archive: "


def data_config(source: Path | str, **keys: object):
    return load_config(env={}, overrides={"data.source": str(source), **{f"data.{k}": v for k, v in keys.items()}}).data


def test_real_archive_loads_with_the_documented_counts_and_split(real_archive: Path) -> None:
    d = load_dataset(data_config(real_archive, checksum=f"sha256:{REAL_SHA256}"))
    assert (len(d.train_labels), len(d.val_labels), len(d.test_labels)) == (40_000, 10_000, 10_000)
    assert d.train_images.shape == (40_000, 32, 32, 3) and d.train_images.dtype == np.uint8
    assert d.class_names == tuple(CLASS_NAMES)
    assert d.sha256 == REAL_SHA256
    # 5,000 training images per class in the archive, all of them in train + validation.
    assert (np.bincount(d.train_labels, minlength=10) + np.bincount(d.val_labels, minlength=10) == 5000).all()
    assert (np.bincount(d.test_labels, minlength=10) == 1000).all()
    # The README's training-set pixel mean proves the HWC layout (R, G, B channels last).
    train_mean = np.concatenate([d.train_images, d.val_images]).reshape(-1, 3).mean(axis=0)
    assert np.allclose(train_mean, (125.275, 122.936, 113.862), atol=0.01)


def test_split_is_seeded(make_archive) -> None:
    archive = make_archive()
    first, again = load_dataset(data_config(archive)), load_dataset(data_config(archive))
    other = load_dataset(data_config(archive, split_seed=7))
    assert np.array_equal(first.val_labels, again.val_labels) and np.array_equal(first.val_images, again.val_images)
    assert len(first.val_labels) == 10_000
    assert not np.array_equal(first.val_labels, other.val_labels)


def test_directory_source_equals_archive_source(make_archive, tmp_path: Path) -> None:
    archive = make_archive()
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    from_dir = load_dataset(data_config(tmp_path / "extracted"))
    from_archive = load_dataset(data_config(archive))
    assert from_dir.sha256 is None
    assert np.array_equal(from_dir.train_labels, from_archive.train_labels)


def test_url_source_downloads_once_into_the_cache(make_archive, tmp_path: Path) -> None:
    archive = make_archive()
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(archive.parent), **kwargs)

        def log_message(self, *args):
            hits.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{archive.name}"
        md5 = hashlib.md5(archive.read_bytes()).hexdigest()
        cfg = data_config(url, cache_dir=str(tmp_path / "cache"), checksum=f"md5:{md5}")
        assert len(load_dataset(cfg).test_labels) == 10_000
        assert len(load_dataset(cfg).test_labels) == 10_000
        assert hits == [f"/{archive.name}"]
        (cached,) = (tmp_path / "cache").glob(f"*/{archive.name}")  # one entry, keyed by URL and checksum
        assert cached.read_bytes() == archive.read_bytes()

        bad = data_config(url, cache_dir=str(tmp_path / "cache2"), checksum="md5:" + "0" * 32)
        with pytest.raises(DataError, match="md5 checksum mismatch"):
            load_dataset(bad)
        assert list((tmp_path / "cache2").iterdir()) == []  # no partial or wrong download kept
    finally:
        server.shutdown()


def test_data_verify_prints_counts_per_split_and_class(real_archive: Path) -> None:
    result = CliRunner().invoke(main, ["data", "verify", "--data", str(real_archive), "--checksum", f"sha256:{REAL_SHA256}"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert f"sha256: {REAL_SHA256}" in lines
    assert lines[-1].split() == ["total", "40000", "10000", "10000"]
    cat = next(line for line in lines if line.startswith("cat "))
    assert int(cat.split()[1]) + int(cat.split()[2]) == 5000 and cat.split()[3] == "1000"


# --- bad input: one line, exit code 3, nothing written ------------------------------------------


class _RunsCode:
    """A pickle that would create a file if loaded naively."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _symlink(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("cifar-10-batches-py/extra")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tar.addfile(info)


def _member(name: str):
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))

    return add


def _bad_inputs(marker: Path) -> dict[str, tuple[dict, str]]:
    """case -> (make_archive arguments, expected message after 'data <archive>')."""
    return {
        "truncated batch": ({"data_batch_2": batch_bytes()[:5000]}, " [data_batch_2]: refused pickle: truncated: 1 bytes wanted at byte 5000, 0 left"),
        "wrong array shape": (
            {"data_batch_3": batch_bytes(data=np.zeros((10_000, 1024), np.uint8))},
            " [data_batch_3]: refused pickle: array shape (10000, 1024) is not (10000, 3072)",
        ),
        "label out of range": (
            {"test_batch": batch_bytes(labels=[3] * 9_999 + [10])},
            " [test_batch]: label 10 at index 9999 is outside 0..9",
        ),
        "code-running pickle": (
            {"data_batch_1": pickle.dumps({b"data": _RunsCode(marker)}, protocol=2)},
            " [data_batch_1]: refused pickle: global 'posix.system' is not allowed",
        ),
        "dot-dot member": ({"extra": _member("cifar-10-batches-py/../../evil")}, f": {NOT_CIFAR}member 'cifar-10-batches-py/../../evil': unexpected path (not one of the 8 expected files)"),
        "absolute member": ({"extra": _member("/tmp/evil")}, f": {NOT_CIFAR}member '/tmp/evil': unexpected path (not one of the 8 expected files)"),
        "symlink member": ({"extra": _symlink}, f": {NOT_CIFAR}member 'cifar-10-batches-py/extra': links are not allowed"),
        "missing batch": ({"data_batch_4": None}, " [data_batch_4]: missing"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs(Path("x"))))
def test_bad_archive_is_refused_with_one_line_and_nothing_written(case: str, make_archive, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    replace, expected = _bad_inputs(marker)[case]
    archive = make_archive(**replace)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(archive), "--out", str(out)])
    assert result.exit_code == 3, result.output
    assert result.stderr == f"cifar-job: error: data {archive}{expected}\n"
    assert not out.exists()
    assert not marker.exists()


def test_checksum_mismatch_is_refused(make_archive, tmp_path: Path) -> None:
    archive = make_archive()
    actual = hashlib.sha256(archive.read_bytes()).hexdigest()
    wrong = "sha256:" + "f" * 64
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(archive), "--checksum", wrong, "--out", str(out)])
    assert result.exit_code == 3
    assert result.stderr == f"cifar-job: error: data {archive}: sha256 checksum mismatch: expected {'f' * 64}, got {actual}\n"
    assert not out.exists()


def test_corrupt_gzip_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 100)
    result = CliRunner().invoke(main, ["data", "verify", "--data", str(archive)])
    assert result.exit_code == 3
    assert result.stderr.startswith(f"cifar-job: error: data {archive}: {NOT_CIFAR}gzip: corrupt compressed data")
    assert result.stderr.count("\n") == 1
