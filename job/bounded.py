"""Read a file whole only up to a limit: a file never decides how much memory reading it takes."""

from __future__ import annotations

from pathlib import Path

from job.errors import JobError


def read_bounded(path: Path, limit: int, error: type[JobError], where: str) -> bytes:
    """The bytes of `path`, or `error` (naming `where`) when it cannot be read or holds more than `limit` bytes."""
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:
        raise error(f"{where}: cannot read ({e.strerror or type(e).__name__})") from None
    if len(raw) > limit:
        raise error(f"{where}: larger than {limit} bytes")
    return raw
