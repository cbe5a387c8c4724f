"""Read a .gz file as a stream of exact-size pieces, verified to the very end.

A tar reader stops at the archive's end marker, so the gzip trailer (CRC-32 and length) of a
stream read that way is never checked and a flipped byte loads silently. `finish()` reads the
rest, lets zlib verify the trailer, and refuses a second gzip member or any other bytes after
the first: one file, one meaning. Output is produced in bounded pieces, never all at once.
"""

from __future__ import annotations

import zlib
from typing import BinaryIO

_CHUNK = 1 << 20


class GzipError(ValueError):
    """The stream is not one complete, intact gzip member; the message says where it broke."""


class GzipStream:
    def __init__(self, file: BinaryIO):
        self._file = file
        self._z = zlib.decompressobj(wbits=31)  # gzip header and trailer, checked by zlib
        self._buffer = b""
        self.offset = 0  # decompressed bytes handed out so far

    def read(self, n: int) -> bytes:
        """Exactly `n` decompressed bytes; `GzipError` if the stream ends first."""
        pieces, have = [self._buffer[:n]], len(self._buffer[:n])
        self._buffer = self._buffer[n:]
        while have < n:
            more = self._inflate()
            if not more:
                raise GzipError(f"ends after {self.offset + have} bytes, inside a record of {n}")
            pieces.append(more[: n - have])
            self._buffer = more[n - have :]
            have += len(pieces[-1])
        self.offset += n
        return b"".join(pieces)

    def skip(self, n: int) -> None:
        """Read and drop `n` bytes, a bounded piece at a time."""
        while n:
            step = min(n, _CHUNK)
            self.read(step)
            n -= step

    def finish(self, max_rest: int) -> bytes:
        """The remaining output (at most `max_rest` bytes), once CRC, length and end are verified."""
        rest = [self._buffer]
        size = len(self._buffer)
        while more := self._inflate():
            size += len(more)
            if size > max_rest:
                raise GzipError(f"more than {max_rest} bytes after the tar end marker")
            rest.append(more)
        self._buffer = b""
        return b"".join(rest)

    def _inflate(self) -> bytes:
        """The next piece of output, or b'' at the verified end of the one gzip member."""
        while not self._z.eof:
            data = self._z.unconsumed_tail or self._file.read(_CHUNK)
            try:
                out = self._z.decompress(data, _CHUNK)  # with b"": what zlib still holds back
            except zlib.error as e:
                raise GzipError(f"corrupt compressed data ({e})") from None
            if out:
                return out
            if not data:
                raise GzipError("truncated: the compressed stream ends before its trailer")
        if self._z.unused_data or self._file.read(1):
            raise GzipError("bytes after the end of the gzip stream (a second member or garbage)")
        return b""
