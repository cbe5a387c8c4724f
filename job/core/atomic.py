"""Write files so that a reader never sees half of one: temp name in the same directory, fsync, rename.

A write that fails for lack of space or on a read-only or failing file system becomes a
`StorageFull` (one line, exit 12) naming the file; the temporary file is removed and the
target is left as it was, so a full disk never leaves a partial artifact.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from job.core.errors import StorageFull

# errno values that mean "the storage cannot take this write", not "the program is wrong".
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})


@contextlib.contextmanager
def storage_errors(path: Path | None = None) -> Iterator[None]:
    """Turn an OSError of full or failing storage raised in the body into a `StorageFull` for `path`
    (default: the file the error names)."""
    try:
        yield
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            raise
        raise StorageFull(f"file {path or e.filename or '(unnamed)'}: cannot write ({os.strerror(e.errno)}); nothing was changed") from None


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is flushed and renamed over `path`.

    On any exception the temporary file is removed and `path` is left as it was. `suffix`
    ends the temporary name, for writers that insist on one (Keras wants `.weights.h5`).
    """
    path = Path(path)
    with storage_errors(path):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `data` (text is UTF-8 encoded) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def fsync_dir(directory: Path) -> None:
    """Persist a rename: the directory entry itself must reach the disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
