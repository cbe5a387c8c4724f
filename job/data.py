"""CIFAR-10 in the canonical python format: fetch, read safely, verify, split.

Sources: a `.tar.gz` archive, an extracted directory, or an http(s) URL (downloaded once into
the cache directory). Archives are read in memory, never extracted to disk, and every member
is checked (no absolute paths, no `..`, no links, bounded size). Batches are unpickled with an
allow-list that admits only what the format needs, so a data file can never run code.
Any violation is a `DataError` naming the file and the problem. No TensorFlow here.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import posixpath
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from job.atomic import atomic_path
from job.config import CANONICAL_MD5, CANONICAL_URL, DataConfig
from job.errors import DataError

log = logging.getLogger(__name__)

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
IMAGES_PER_BATCH = 10_000
NUM_CLASSES = 10
PIXELS = 32 * 32 * 3


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

    def describe(self) -> str:
        """Counts per split and class, and the checksum: what `cifar-job data verify` prints."""
        width = max(len(n) for n in self.class_names)
        splits = {"train": self.train_labels, "validation": self.val_labels, "test": self.test_labels}
        lines = [f"source: {self.source}", f"sha256: {self.sha256 or '- (directory)'}"]
        lines.append(f"{'class':<{width}}  " + "  ".join(f"{s:>10}" for s in splits))
        counts = {s: np.bincount(labels, minlength=NUM_CLASSES) for s, labels in splits.items()}
        for c, name in enumerate(self.class_names):
            lines.append(f"{name:<{width}}  " + "  ".join(f"{counts[s][c]:>10}" for s in splits))
        lines.append(f"{'total':<{width}}  " + "  ".join(f"{len(labels):>10}" for labels in splits.values()))
        return "\n".join(lines)


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [0, 1]: the model's input contract."""
    return images.astype(np.float32) / np.float32(255.0)


def load_dataset(cfg: DataConfig) -> CifarData:
    """Resolve the source, verify it, and return the seeded train/validation split and the test set."""
    source = cfg.source
    if source.startswith(("http://", "https://")):
        path = _download(source, cfg)
    else:
        path = Path(source).expanduser()
    if path.is_dir():
        if cfg.checksum not in (None, "none"):
            raise DataError(f"data {path}: a checksum applies to an archive, not a directory")
        files, sha256 = _read_directory(path), None
    elif path.is_file():
        sha256 = _verify_checksum(path, _expected_checksum(cfg))
        files = _read_archive(path, cfg.max_archive_bytes)
    else:
        raise DataError(f"data {path}: no such file or directory")

    class_names = _class_names(files, path)
    train_x, train_y = _concat([_batch(files, name, path) for name in TRAIN_BATCHES])
    test_x, test_y = _batch(files, TEST_BATCH, path)
    if cfg.train_limit:
        train_x, train_y = train_x[: cfg.train_limit], train_y[: cfg.train_limit]
    if cfg.test_limit:
        test_x, test_y = test_x[: cfg.test_limit], test_y[: cfg.test_limit]

    order = np.random.default_rng(cfg.split_seed).permutation(len(train_y))
    n_val = int(round(len(order) * cfg.validation_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    return CifarData(
        train_images=train_x[train_idx],
        train_labels=train_y[train_idx],
        val_images=train_x[val_idx],
        val_labels=train_y[val_idx],
        test_images=test_x,
        test_labels=test_y,
        class_names=class_names,
        source=str(source),
        sha256=sha256,
    )


# --- sources -------------------------------------------------------------------------------


def _expected_checksum(cfg: DataConfig) -> str | None:
    if cfg.checksum == "none":
        return None
    if cfg.checksum is None:
        return f"md5:{CANONICAL_MD5}" if cfg.source == CANONICAL_URL else None
    return cfg.checksum


def _digests(path: Path) -> dict[str, str]:
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
            sha256.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def _verify_checksum(path: Path, expected: str | None) -> str:
    """Check `expected` (algo:hex) if given; return the archive's sha256 either way."""
    digests = _digests(path)
    if expected:
        algo, _, want = expected.partition(":")
        if digests[algo] != want:
            raise DataError(f"data {path}: {algo} checksum mismatch: expected {want}, got {digests[algo]}")
    return digests["sha256"]


def _download(url: str, cfg: DataConfig) -> Path:
    """Fetch `url` into the cache once; a partial or mismatching download never lands there."""
    cache = cfg.cache_dir.expanduser()
    target = cache / (posixpath.basename(url.split("?")[0]) or "cifar-10-python.tar.gz")
    if target.is_file():
        log.info("using cached %s", target)
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"data cache {cache}: cannot create ({e.strerror})") from None
    log.info("downloading %s to %s", url, target)
    with atomic_path(target) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                total = 0
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    total += len(chunk)
                    if total > cfg.max_archive_bytes:
                        raise DataError(f"data {url}: larger than data.max_archive_bytes={cfg.max_archive_bytes}")
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as e:
            raise DataError(f"data {url}: download failed: {getattr(e, 'reason', e)}") from None
        _verify_checksum(tmp, _expected_checksum(cfg))
    return target


def _read_archive(path: Path, max_bytes: int) -> dict[str, bytes]:
    """Read the batch members into memory, after checking that every member is safe."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = tar.getmembers()
            total = 0
            for m in members:
                where = f"data {path}: member {m.name!r}"
                if m.name.startswith("/") or ".." in m.name.split("/"):
                    raise DataError(f"{where}: unsafe path (absolute or '..')")
                if m.issym() or m.islnk():
                    raise DataError(f"{where}: links are not allowed")
                if not (m.isfile() or m.isdir()):
                    raise DataError(f"{where}: not a regular file")
                total += m.size
                if total > max_bytes:
                    raise DataError(f"data {path}: contents exceed data.max_archive_bytes={max_bytes}")
            wanted = {posixpath.basename(m.name): m for m in members if m.isfile()}
            return {name: tar.extractfile(m).read() for name, m in wanted.items() if name in (*TRAIN_BATCHES, TEST_BATCH, META)}
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise DataError(f"data {path}: not a readable .tar.gz archive ({e})") from None


def _read_directory(path: Path) -> dict[str, bytes]:
    root = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    found = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH, META):
        f = root / name
        if f.is_symlink():
            raise DataError(f"data {f}: links are not allowed")
        if f.is_file():
            found[name] = f.read_bytes()
    return found


# --- batches -------------------------------------------------------------------------------


class _RestrictedUnpickler(pickle.Unpickler):
    """Admit only the globals a CIFAR batch needs (numpy array reconstruction); refuse all else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return super().find_class(module, name)


def _unpickle(name: str, files: dict[str, bytes], origin: Path) -> dict[bytes, Any]:
    where = f"data {origin} [{name}]"
    if name not in files:
        raise DataError(f"{where}: missing")
    try:
        obj = _RestrictedUnpickler(io.BytesIO(files[name]), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{where}: refused to unpickle: {e}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise DataError(f"{where}: truncated or corrupt pickle ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a dict, got {type(obj).__name__}")
    return obj


def _batch(files: dict[str, bytes], name: str, origin: Path) -> tuple[np.ndarray, np.ndarray]:
    """Verify one batch and return its images as NHWC uint8 and labels as int64."""
    where = f"data {origin} [{name}]"
    d = _unpickle(name, files, origin)
    data, labels = d.get(b"data"), d.get(b"labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (IMAGES_PER_BATCH, PIXELS):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: b'data' must be uint8 ({IMAGES_PER_BATCH}, {PIXELS}), got {got}")
    if not isinstance(labels, list) or len(labels) != IMAGES_PER_BATCH or not all(type(v) is int for v in labels):
        raise DataError(f"{where}: b'labels' must be a list of {IMAGES_PER_BATCH} ints")
    y = np.asarray(labels, dtype=np.int64)
    bad = np.flatnonzero((y < 0) | (y >= NUM_CLASSES))
    if bad.size:
        raise DataError(f"{where}: label {y[bad[0]]} at index {bad[0]} is outside 0..{NUM_CLASSES - 1}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), y


def _class_names(files: dict[str, bytes], origin: Path) -> tuple[str, ...]:
    names = _unpickle(META, files, origin).get(b"label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES or not all(isinstance(n, bytes) for n in names):
        raise DataError(f"data {origin} [{META}]: b'label_names' must list {NUM_CLASSES} names")
    return tuple(n.decode() for n in names)


def _concat(batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])

