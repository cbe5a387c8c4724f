"""Open and read files that a user names: never blocking on them, never reading more than a limit."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from job.core.errors import JobError


def open_regular(path: Path, error: type[JobError], where: str, problem: str = "not a regular file") -> BinaryIO:
    """`path` opened for reading, or `error` (naming `where`) when it cannot be, or is no regular file.

    Opened non-blocking and checked before any read: a FIFO or device in place of a file would
    otherwise hang the job on open or read, with no deadline to end it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise _unreadable(e, error, where) from None
    return os.fdopen(_regular(fd, error, f"{where}: {problem}"), "rb")


def open_append(path: Path, error: type[JobError], where: str) -> BinaryIO:
    """`path` opened for appending (created if missing), or `error` when it cannot be, or is no regular file.

    Opened non-blocking and without following a link: a FIFO in place of a log would block the
    open until some reader appears, and a link would send the output elsewhere.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        raise error(f"{where}: cannot open for writing ({e.strerror or type(e).__name__})") from None
    return os.fdopen(_regular(fd, error, f"{where}: not a regular file"), "ab")


def _regular(fd: int, error: type[JobError], message: str) -> int:
    """`fd`, made blocking again, if it is a regular file; else it is closed and `error(message)` raised."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(message)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: Path, limit: int, error: type[JobError], where: str) -> bytes:
    """The bytes of `path`, or `error` (naming `where`) when it cannot be read or holds more than `limit` bytes."""
    with open_regular(path, error, where) as f:
        try:
            raw = f.read(limit + 1)
        except OSError as e:
            raise _unreadable(e, error, where) from None
    if len(raw) > limit:
        raise error(f"{where}: larger than {limit} bytes")
    return raw


def _unreadable(e: OSError, error: type[JobError], where: str) -> JobError:
    return error(f"{where}: cannot read ({e.strerror or type(e).__name__})")
