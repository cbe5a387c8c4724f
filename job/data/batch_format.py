"""The CIFAR-10 python format: which files an archive holds, and what each batch must contain.

A batch is a pickled dict with bytes keys: b'data' a uint8 (10000, 3072) array (R, G, B planes
of 32x32, row-major), b'labels' a list of 10,000 ints 0..9. batches.meta has b'label_names',
ten names that end up in a Markdown model card and Triton label files, so they are held to a
short, printable, markup-free form. Parsing goes through `safe_pickle`, which builds nothing
but plain values and that one array.
"""

from __future__ import annotations

import math

import numpy as np

from job.models.contract import CLASS_COUNT, IMAGE_SHAPE
from job.core.errors import DataError
from job.data.safe_pickle import Refused, load_dict

ROOT = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
README = "readme.html"
IMAGES_PER_BATCH = 10_000
PIXELS = math.prod(IMAGE_SHAPE)  # one image, stored channel-first (3, 32, 32) and flattened

# Largest file accepted for each name: a batch pickled by Python 3 at protocol 2 stores its
# pixels as UTF-8 text, up to twice the 30,720,000 pixel bytes, plus labels and file names.
MAX_BATCH_BYTES = 64 << 20
MAX_SMALL_FILE_BYTES = 64 << 10
FILE_LIMITS = {
    **{name: MAX_BATCH_BYTES for name in (*TRAIN_BATCHES, TEST_BATCH)},
    META: MAX_SMALL_FILE_BYTES,
    README: MAX_SMALL_FILE_BYTES,
}

MAX_CLASS_NAME_CHARS = 64
_MARKUP = set("<>&|`\\")  # HTML, Markdown tables and code spans


def read_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Images as (10000, 3072) uint8 rows (read-only) and labels as int64, or a DataError."""
    d = _load(blob, where, (IMAGES_PER_BATCH, PIXELS))
    data, labels = d.get(b"data"), d.get(b"labels")
    if not isinstance(data, np.ndarray):
        raise DataError(f"{where}: b'data' must be a uint8 ({IMAGES_PER_BATCH}, {PIXELS}) array, got {type(data).__name__}")
    if not isinstance(labels, list) or len(labels) != IMAGES_PER_BATCH or not all(type(v) is int for v in labels):
        raise DataError(f"{where}: b'labels' must be a list of {IMAGES_PER_BATCH} ints")
    y = np.asarray(labels, dtype=np.int64)
    bad = np.flatnonzero((y < 0) | (y >= CLASS_COUNT))
    if bad.size:
        raise DataError(f"{where}: label {y[bad[0]]} at index {bad[0]} is outside 0..{CLASS_COUNT - 1}")
    return data, y


def read_class_names(blob: bytes, where: str) -> tuple[str, ...]:
    """The ten class names from batches.meta, each safe to print in Markdown and label files."""
    names = _load(blob, where, None).get(b"label_names")
    if not isinstance(names, list) or len(names) != CLASS_COUNT or not all(isinstance(n, bytes) for n in names):
        raise DataError(f"{where}: b'label_names' must list {CLASS_COUNT} names as bytes")
    decoded = []
    for index, raw in enumerate(names):
        problem = _class_name_problem(raw)
        if problem:
            raise DataError(f"{where}: class name {index} {raw[:40]!r}: {problem}")
        decoded.append(raw.decode())
    if len(set(decoded)) != CLASS_COUNT:
        raise DataError(f"{where}: class names are not unique")
    return tuple(decoded)


def _class_name_problem(raw: bytes) -> str | None:
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    if not 0 < len(name) <= MAX_CLASS_NAME_CHARS:
        return f"must have 1 to {MAX_CLASS_NAME_CHARS} characters"
    if not name.isprintable() or name != name.strip():
        return "control characters or surrounding spaces"
    if _MARKUP & set(name):
        return "markup characters (any of " + "".join(sorted(_MARKUP)) + ")"
    return None


def _load(blob: bytes, where: str, array_shape: tuple[int, int] | None) -> dict[object, object]:
    try:
        d = load_dict(blob, array_shape)
    except Refused as e:
        raise DataError(f"{where}: refused pickle: {e}") from None
    if not all(isinstance(key, bytes) for key in d):
        raise DataError(f"{where}: dict keys must be bytes, as in the CIFAR-10 python format")
    return d
