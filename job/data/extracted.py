"""Read the batch files of an extracted CIFAR directory under the same bounds as an archive.

Each file is opened without following links (the directory itself and its
cifar-10-batches-py/ included), must be a regular file, and is sized with fstat before it is
read; at most its limit is ever read, so a sparse 3 GiB file or a FIFO costs nothing.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from job.core.errors import DataError

_NO_FOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def read_files(path: Path, subdir: str, files: Mapping[str, int], max_total: int) -> dict[str, bytes]:
    """Name -> content of each of `files` (name -> size limit) found in `path/subdir`, else in `path`."""
    root = _open(path, None, path, directory=True)
    try:
        inner = _open(path / subdir, root, subdir, directory=True, missing_ok=True)
        folder, base = (root, path) if inner is None else (inner, path / subdir)
        try:
            return _read_all(folder, base, files, max_total)
        finally:
            if inner is not None:
                os.close(inner)
    finally:
        os.close(root)


def _read_all(folder: int, base: Path, files: Mapping[str, int], max_total: int) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    total = 0
    for name, limit in files.items():
        fd = _open(base / name, folder, name, directory=False, missing_ok=True)
        if fd is None:
            continue
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit or total + size > max_total:
                raise DataError(f"data {base / name}: {size} bytes exceed its limit ({limit}) or data.max_archive_bytes ({max_total} in all)")
            content = f.read(size + 1)
        if len(content) != size:
            raise DataError(f"data {base / name}: changed size while being read")
        total += size
        found[name] = content
    return found


def _open(shown: Path, folder: int | None, name: str | Path, *, directory: bool, missing_ok: bool = False) -> int | None:
    """An fd for `name` (relative to `folder`), refusing links and anything of the wrong type."""
    try:
        fd = os.open(name, _NO_FOLLOW | (os.O_DIRECTORY if directory else 0), dir_fd=folder)
    except OSError as e:
        if e.errno == errno.ENOENT and missing_ok:
            return None
        if e.errno in (errno.ELOOP, errno.EMLINK) or _is_link(name, folder):
            raise DataError(f"data {shown}: links are not allowed") from None
        if e.errno == errno.ENOTDIR:
            raise DataError(f"data {shown}: not a directory") from None
        raise DataError(f"data {shown}: cannot open ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISDIR(mode) if directory else stat.S_ISREG(mode)):
        os.close(fd)
        raise DataError(f"data {shown}: not a {'directory' if directory else 'regular file'}")
    return fd


def _is_link(name: str | Path, folder: int | None) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=folder).st_mode)
    except OSError:
        return False
