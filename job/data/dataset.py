"""CIFAR-10 in the canonical python format: fetch, read strictly, verify, split.

Sources: a `.tar.gz` archive, an extracted directory, or an http(s) URL (downloaded once into
the cache and kept only once it verifies: `download`). Archives are streamed in memory, never
extracted, by a reader that accepts exactly the canonical member paths, each once, bounds
every size before reading it and verifies the gzip CRC (`archive`); directories get the same
bounds (`extracted`). Batches are parsed by a pickle reader that builds plain values and one
uint8 array, never what the data names (`batch_format`, `safe_pickle`). Any violation is a
one-line `DataError` naming the source and the problem. No TensorFlow here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from job.data.archive import ArchiveError, read_members
from job.data.batch_format import FILE_LIMITS, IMAGES_PER_BATCH, META, README, ROOT, TEST_BATCH, TRAIN_BATCHES, read_batch, read_class_names
from job.core.bounded import open_regular
from job.config.settings import CANONICAL_MD5, CANONICAL_URL, DataConfig
from job.core.credentials import DATA_PASSWORD_FILE_ENV, DATA_USERNAME_ENV, basic_auth_from_env
from job.models.contract import CLASS_COUNT
from job.data.download import cached_download, is_url
from job.core.errors import DataError
from job.data.extracted import read_files
from job.core.redact import redact_url

__all__ = ["CifarData", "load_dataset"]


@dataclass(frozen=True)
class CifarData:
    """Images are uint8 NHWC (N, 32, 32, 3); labels int64 (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    source: str
    sha256: str | None

    @functools.cached_property
    def fingerprint(self) -> str:
        """The identity of the content: what binds a model to the data it was trained on.

        sha256 over the class names and every split's images and labels in a fixed order. Training
        records it, export stamps it into the model, and validation and publishing refuse another
        test set unless the user says so. It hashes the decoded arrays, not the archive, so an archive
        and its extracted directory agree, and another split seed, limit or archive does not. Computed
        once per loaded data set, however many stages of a run ask.
        """
        digest = hashlib.sha256(json.dumps(list(self.class_names)).encode())
        for array in (self.train_images, self.train_labels, self.val_images, self.val_labels, self.test_images, self.test_labels):
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array))
        return digest.hexdigest()

    def describe(self) -> str:
        """Counts per split and class, and the checksum: what `cifar-job data verify` prints."""
        width = max(len(n) for n in self.class_names)
        splits = {"train": self.train_labels, "validation": self.val_labels, "test": self.test_labels}
        lines = [f"source: {self.source}", f"sha256: {self.sha256 or '- (directory)'}"]
        lines.append(f"{'class':<{width}}  " + "  ".join(f"{s:>10}" for s in splits))
        counts = {s: np.bincount(labels, minlength=CLASS_COUNT) for s, labels in splits.items()}
        for c, name in enumerate(self.class_names):
            lines.append(f"{name:<{width}}  " + "  ".join(f"{counts[s][c]:>10}" for s in splits))
        lines.append(f"{'total':<{width}}  " + "  ".join(f"{len(labels):>10}" for labels in splits.values()))
        return "\n".join(lines)


def load_dataset(cfg: DataConfig) -> CifarData:
    """Resolve the source, verify it, and return the seeded train/validation split and the test set."""
    expected = _expected_checksum(cfg)
    if is_url(cfg.source):
        shown = redact_url(cfg.source)
        files, sha256 = cached_download(
            cfg.source,
            expected,
            cfg.cache_dir.expanduser(),
            cfg.max_archive_bytes,
            lambda path, where: _read_archive(path, where, expected, cfg.max_archive_bytes),
            basic_auth_from_env(DATA_USERNAME_ENV, DATA_PASSWORD_FILE_ENV, os.environ),
        )
    else:
        path = Path(cfg.source).expanduser()
        shown = str(path)
        files, sha256 = _read_local(path, expected, cfg)
    class_names = read_class_names(_take(files, META, shown), f"data {shown} [{META}]")
    train_x, train_y = _images(files, TRAIN_BATCHES, shown, cfg.train_limit)
    test_x, test_y = _images(files, (TEST_BATCH,), shown, cfg.test_limit)
    train_idx, val_idx = split_indices(train_y, cfg)
    return CifarData(
        train_images=train_x[train_idx],
        train_labels=train_y[train_idx],
        val_images=train_x[val_idx],
        val_labels=train_y[val_idx],
        test_images=test_x,
        test_labels=test_y,
        class_names=class_names,
        source=shown,
        sha256=sha256,
    )


# --- sources -------------------------------------------------------------------------------


def _expected_checksum(cfg: DataConfig) -> str | None:
    if cfg.checksum == "none":
        return None
    if cfg.checksum is None:
        return f"md5:{CANONICAL_MD5}" if cfg.source == CANONICAL_URL else None
    return cfg.checksum


def _read_local(path: Path, expected: str | None, cfg: DataConfig) -> tuple[dict[str, bytes], str | None]:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise DataError(f"data {path}: no such file or directory") from None
    if not stat.S_ISDIR(mode):
        return _read_archive(path, str(path), expected, cfg.max_archive_bytes)
    if cfg.checksum not in (None, "none"):
        raise DataError(f"data {path}: a checksum applies to an archive, not a directory")
    limits = {name: limit for name, limit in FILE_LIMITS.items() if name != README}
    return read_files(path, ROOT, limits, cfg.max_archive_bytes), None


def _read_archive(path: Path, where: str, expected: str | None, max_bytes: int) -> tuple[dict[str, bytes], str]:
    """Batch name -> bytes of a verified archive, and its sha256; one open file for both passes."""
    try:
        with open_regular(path, DataError, f"data {where}", "not a regular file or directory") as f:
            info = os.fstat(f.fileno())
            if info.st_size > max_bytes:
                raise DataError(f"data {where}: {info.st_size} bytes, larger than data.max_archive_bytes={max_bytes}")
            sha256 = _verify_checksum(f, where, expected)
            f.seek(0)
            members = read_members(f, {f"{ROOT}/{name}": limit for name, limit in FILE_LIMITS.items()}, {ROOT}, max_bytes)
    except ArchiveError as e:
        raise DataError(f"data {where}: not a valid CIFAR-10 .tar.gz archive: {e}") from None
    except OSError as e:
        raise DataError(f"data {where}: cannot read ({e.strerror})") from None
    return {member.rsplit("/", 1)[1]: content for member, content in members.items()}, sha256


def _verify_checksum(f, where: str, expected: str | None) -> str:  # type: ignore[no-untyped-def]
    """Check `expected` (algo:hex) if given; return the archive's sha256 either way."""
    digests = {"md5": hashlib.md5(usedforsecurity=False), "sha256": hashlib.sha256()}
    for chunk in iter(lambda: f.read(1 << 20), b""):
        for digest in digests.values():
            digest.update(chunk)
    if expected:
        algo, _, want = expected.partition(":")
        got = digests[algo].hexdigest()
        if got != want:
            raise DataError(f"data {where}: {algo} checksum mismatch: expected {want}, got {got}")
    return digests["sha256"].hexdigest()


# --- batches and split ---------------------------------------------------------------------


def _take(files: dict[str, bytes], name: str, shown: str) -> bytes:
    """The file's bytes, dropped from `files` so that each batch is freed once parsed."""
    if name not in files:
        raise DataError(f"data {shown} [{name}]: missing")
    return files.pop(name)


def _images(files: dict[str, bytes], names: tuple[str, ...], shown: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Images NHWC uint8 and labels int64 of the named batches, the first `limit` of them."""
    available = IMAGES_PER_BATCH * len(names)
    if limit is not None and limit > available:
        raise DataError(f"data {shown}: a limit of {limit} images exceeds the {available} in {', '.join(names)}")
    images = np.empty((available, 32, 32, 3), np.uint8)
    labels = np.empty(available, np.int64)
    for i, name in enumerate(names):
        rows, y = read_batch(_take(files, name, shown), f"data {shown} [{name}]")
        part = slice(i * IMAGES_PER_BATCH, (i + 1) * IMAGES_PER_BATCH)
        images[part] = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels[part] = y
    return images[:limit], labels[:limit]


def split_indices(labels: np.ndarray, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random (train, validation) indices of the training images; both must be non-empty.

    Without folds, the first `validation_fraction` of a seeded permutation is the validation split.
    With `folds` k, the permutation is sorted by class (stably, so each class stays in random order)
    and dealt round-robin into k folds: every image is in exactly one fold, each fold holds every
    class in proportion (within one image) and has ceil((n - f) / k) images, and fold `fold` is the
    validation split. Both splits keep the permutation's random order.
    """
    n = len(labels)
    order = np.random.default_rng(cfg.split_seed).permutation(n)
    if cfg.folds:
        by_class = order[np.argsort(labels[order], kind="stable")]
        in_validation = np.zeros(n, bool)
        in_validation[by_class[cfg.fold :: cfg.folds]] = True
        return order[~in_validation[order]], order[in_validation[order]]
    n_val = int(round(n * cfg.validation_fraction))
    if not 0 < n_val < n:
        raise DataError(f"data split: validation_fraction {cfg.validation_fraction} of {n} images leaves an empty {'validation' if n_val == 0 else 'training'} set")
    return order[n_val:], order[:n_val]
