"""Hand-built CIFAR pickles and tar streams: the real variants and hostile ones, byte by byte.

The canonical Toronto batches were pickled by Python 2 (SHORT_BINSTRING keys, the pixels in one
BINSTRING); `py2_batch` writes exactly that layout. `tar_header`/`tar_gz` write ustar records
directly, so tests can claim sizes (a 1 GiB pax header, a 3 GiB member) without the bytes.
"""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np

BLOCK = 512


def _short(b: bytes) -> bytes:
    return pickle.SHORT_BINSTRING + bytes([len(b)]) + b


def py2_batch(data: np.ndarray, labels: list[int], label: bytes = b"training batch 1 of 5") -> bytes:
    """A batch as Python 2 + numpy pickled it at protocol 2 (the layout of the canonical files)."""
    out = [pickle.PROTO + b"\x02", pickle.EMPTY_DICT, pickle.MARK, _short(b"batch_label"), _short(label), _short(b"labels")]
    out += [pickle.EMPTY_LIST, pickle.MARK] + [pickle.BININT1 + bytes([v]) for v in labels] + [pickle.APPENDS]
    out += [_short(b"data"), pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n", pickle.GLOBAL + b"numpy\nndarray\n"]
    out += [pickle.BININT1 + b"\0", pickle.TUPLE1, _short(b"b"), pickle.TUPLE3, pickle.REDUCE]
    out += [pickle.MARK, pickle.BININT1 + b"\1"] + [pickle.BININT2 + struct.pack("<H", n) for n in data.shape] + [pickle.TUPLE2]
    out += [pickle.GLOBAL + b"numpy\ndtype\n", _short(b"u1"), pickle.BININT1 + b"\0", pickle.BININT1 + b"\1", pickle.TUPLE3, pickle.REDUCE]
    out += [pickle.MARK, pickle.BININT1 + b"\3", _short(b"|"), pickle.NONE * 3, (pickle.BININT + struct.pack("<i", -1)) * 2]
    out += [pickle.BININT1 + b"\0", pickle.TUPLE, pickle.BUILD, pickle.NEWFALSE]
    out += [pickle.BINSTRING + struct.pack("<i", data.nbytes), data.tobytes(), pickle.TUPLE, pickle.BUILD, pickle.SETITEMS, pickle.STOP]
    return b"".join(out)


def meta(names: list[bytes]) -> bytes:
    """batches.meta with the given label names, pickled as the CIFAR tools do."""
    return pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2)


def tar_header(name: str | bytes, size: int, kind: bytes = b"0", *, magic: bytes = b"ustar\x0000", checksum_delta: int = 0) -> bytes:
    """One 512-byte ustar header; `size` is only claimed, never backed by data here."""
    raw_name = name.encode() if isinstance(name, str) else name
    h = bytearray(BLOCK)
    h[0 : len(raw_name[:100])] = raw_name[:100]
    h[100:108] = b"0000644\0"
    h[108:116] = h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = kind
    h[257:265] = magic
    h[148:156] = b"%06o\0 " % (sum(h) + checksum_delta)
    return bytes(h)


def tar_member(name: str, payload: bytes, kind: bytes = b"0") -> bytes:
    return tar_header(name, len(payload), kind) + payload + bytes(-len(payload) % BLOCK)


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n"
    length = len(body) + len(str(len(body)))
    length = len(body) + len(str(length))
    return f"{length}{body}".encode()


def tar_gz(*records: bytes, end: bool = True) -> bytes:
    """Concatenate tar records (plus the end marker) and gzip them."""
    return gzip.compress(b"".join(records) + (bytes(2 * BLOCK) if end else b""), compresslevel=1, mtime=0)
