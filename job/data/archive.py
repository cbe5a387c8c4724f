"""A strict, bounded reader for .tar.gz archives with a known list of members.

Python's tarfile reads a pax or GNU long-name header whole before any limit applies, takes
any number of members, and lets the last of two same-named members win. This reader walks
512-byte ustar headers itself: every header checksum is verified; only regular files and
directories are accepted, each under one of the expected paths and at most once (so the
member count is capped by the expected list); extended headers are bounded to a few KiB and
may set only the path and size; every size is checked against its limit before a byte of
the member is read; and the gzip stream is read to its verified end (see `gzip_stream`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import BinaryIO

from job.data.gzip_stream import GzipError, GzipStream

BLOCK = 512
MAX_EXTENDED_HEADER = 4096  # a pax record set or GNU long name; CIFAR paths are short
MAX_TRAILER = 1 << 20  # zero padding after the end marker (tar writes whole records)
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR, _DIRECTORY, _PAX, _GNU_LONG_NAME = (b"0", b"\0"), b"5", b"x", b"L"
_LINKS = (b"1", b"2")


class ArchiveError(ValueError):
    """The archive breaks a rule; the message names the member or offset."""


def read_members(file: BinaryIO, files: Mapping[str, int], directories: set[str], max_total: int) -> dict[str, bytes]:
    """Path -> content of every regular member; `files` maps each allowed path to its size limit.

    Members may only be the paths in `files` (regular files) or `directories`, each once;
    their contents may add up to `max_total` bytes at most.
    """
    stream = GzipStream(file)
    found: dict[str, bytes] = {}
    seen: set[str] = set()
    total = 0
    try:
        while (member := _next_member(stream)) is not None:
            name, kind, size = member
            where = f"member {_excerpt(name)}"
            if kind in _LINKS:
                raise ArchiveError(f"{where}: links are not allowed")
            if kind not in (*_REGULAR, _DIRECTORY):
                raise ArchiveError(f"{where}: type {kind!r} is not a regular file or directory")
            path = name.rstrip("/") if kind == _DIRECTORY else name
            if path in seen:
                raise ArchiveError(f"{where}: appears twice")
            seen.add(path)
            if kind == _DIRECTORY:
                if path not in directories or size:
                    raise ArchiveError(f"{where}: unexpected directory")
                continue
            if name not in files:
                raise ArchiveError(f"{where}: unexpected path (not one of the {len(files)} expected files)")
            if size > files[name] or total + size > max_total:
                raise ArchiveError(f"{where}: {size} bytes exceed its limit ({files[name]}) or the archive's ({max_total} in all)")
            total += size
            found[name] = stream.read(size)
            stream.skip(-size % BLOCK)
        if any(stream.finish(MAX_TRAILER)):
            raise ArchiveError("data after the end-of-archive marker")
    except GzipError as e:
        raise ArchiveError(f"gzip: {e}") from None
    return found


def _next_member(stream: GzipStream) -> tuple[str, bytes, int] | None:
    """(path, type flag, size) of the next member, with its extended headers applied; None at the end."""
    overrides: dict[str, str] = {}
    extended: set[bytes] = set()
    while True:
        at = stream.offset
        header = stream.read(BLOCK)
        if header == _ZERO_BLOCK:
            if extended:
                raise ArchiveError(f"extended header at byte {at} is followed by the end marker")
            return None
        kind, size = _check_header(header, at)
        if kind in (_PAX, _GNU_LONG_NAME):
            if kind in extended:
                raise ArchiveError(f"two {kind.decode()!r} extended headers in a row at byte {at}")
            if size > MAX_EXTENDED_HEADER:
                raise ArchiveError(f"extended header at byte {at} claims {size} bytes (limit {MAX_EXTENDED_HEADER})")
            extended.add(kind)
            body = stream.read(size)
            stream.skip(-size % BLOCK)
            _merge(overrides, _pax_records(body, at) if kind == _PAX else {"path": _long_name(body, at)}, at)
            continue
        name = overrides.get("path") or _ustar_name(header)
        if "size" in overrides:
            size = _decimal(overrides["size"], f"pax size at byte {at}")
        return name, kind, size


def _check_header(header: bytes, at: int) -> tuple[bytes, int]:
    if header[257:263] not in (b"ustar\0", b"ustar "):
        raise ArchiveError(f"header at byte {at} is not a ustar header")
    stored = _octal(header[148:156], f"header checksum at byte {at}")
    if stored != sum(header[:148]) + 8 * 0x20 + sum(header[156:]):
        raise ArchiveError(f"header at byte {at} fails its checksum")
    return header[156:157], _octal(header[124:136], f"size field at byte {at}")


def _octal(field: bytes, what: str) -> int:
    digits = field.rstrip(b"\0 ").lstrip(b" ")
    if not digits or not all(48 <= c <= 55 for c in digits):
        raise ArchiveError(f"{what} is not an octal number")
    return int(digits, 8)


def _decimal(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ArchiveError(f"{what} is not a decimal number")
    return int(text)


def _ustar_name(header: bytes) -> str:
    name, prefix = header[:100].split(b"\0", 1)[0], header[345:500].split(b"\0", 1)[0]
    return (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")


def _long_name(body: bytes, at: int) -> str:
    name = body.split(b"\0", 1)[0]
    if not name:
        raise ArchiveError(f"GNU long name at byte {at} is empty")
    return name.decode("utf-8", "surrogateescape")


def _pax_records(body: bytes, at: int) -> dict[str, str]:
    """Records `<length> <key>=<value>\\n`; only path and size matter, sparse files are refused."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos]:
        length_text, _, _ = body[pos : pos + 20].partition(b" ")
        length = _decimal(length_text.decode("ascii", "replace"), f"pax record length at byte {at}")
        record = body[pos : pos + length]
        if len(record) != length or not record.endswith(b"\n") or b"=" not in record:
            raise ArchiveError(f"pax header at byte {at} has a malformed record")
        key, _, value = record[len(length_text) + 1 : -1].partition(b"=")
        key_text = key.decode("utf-8", "surrogateescape")
        if key_text.startswith("GNU.sparse") or key_text in records:
            raise ArchiveError(f"pax header at byte {at}: record {_excerpt(key_text)} refused (sparse or repeated)")
        records[key_text] = value.decode("utf-8", "surrogateescape")
        pos += length
    return {k: v for k, v in records.items() if k in ("path", "size")}


def _merge(overrides: dict[str, str], new: dict[str, str], at: int) -> None:
    if overrides.keys() & new.keys():
        raise ArchiveError(f"extended headers at byte {at} set the same field twice")
    overrides.update(new)


def _excerpt(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")
