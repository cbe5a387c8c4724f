"""Coverage-guided fuzzing (atheris) of the batch parser and the archive reader.

    .venv/bin/python -m tests.fuzz_data pickle  -max_total_time=600 -rss_limit_mb=1024 [CORPUS]
    .venv/bin/python -m tests.fuzz_data archive -max_total_time=600 -rss_limit_mb=1024 [CORPUS]

A finding is anything but a clean return or the module's own refusal (`Refused`, `DataError`,
`ArchiveError`): any other exception, a crash, a timeout or memory above the RSS limit; libFuzzer
then writes the input to `crash-*`/`oom-*`/`timeout-*` and exits non-zero. Seeds (written into
the corpus directory, a fresh temporary one if none is given) are the real variants: Python 2
and Python 3 pickles at protocols 2 to 5, and small archives in ustar, pax and GNU form.
The first input byte picks a sub-target, so one corpus covers related entry points.
"""

from __future__ import annotations

import gzip
import io
import pickle
import sys
import tarfile

import atheris
import numpy as np

with atheris.instrument_imports(include=["job"]):
    from job.data.archive import ArchiveError, read_members
    from job.data.batch_format import read_class_names
    from job.core.errors import DataError
    from job.data.safe_pickle import Refused, load_dict

from tests.cifar_bytes import meta, py2_batch
from tests.fuzzing import fuzz_main

SHAPE = (4, 6)  # the parser's array shape is a parameter: small arrays keep inputs small
NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
MEMBERS = {"cifar-10-batches-py/data_batch_1": 4096, "cifar-10-batches-py/batches.meta": 1024, "cifar-10-batches-py/readme.html": 256}


def pickle_target(data: bytes) -> None:
    """0: the generic reader with a small array shape; 1: batches.meta's class names."""
    if not data:
        return
    try:
        if data[0] & 1:
            read_class_names(data[1:], "fuzz")
        else:
            load_dict(data[1:], SHAPE)
    except (Refused, DataError):
        pass


def archive_target(data: bytes) -> None:
    """0: the input is the .tar.gz; 1: a tar stream, gzipped here; 2: the same with every ustar
    header checksum made valid first, so mutations reach the layers behind the checksum."""
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    if mode == 2:
        body = _fix_checksums(body)
    payload = body if mode == 0 else gzip.compress(body, compresslevel=0, mtime=0)
    try:
        read_members(io.BytesIO(payload), MEMBERS, {"cifar-10-batches-py"}, 8192)
    except ArchiveError:
        pass


def _fix_checksums(tar: bytes) -> bytes:
    blocks = bytearray(tar)
    for at in range(0, len(blocks) - 511, 512):
        if blocks[at + 257 : at + 262] == b"ustar":
            blocks[at + 148 : at + 156] = b" " * 8
            blocks[at + 148 : at + 156] = b"%06o\0 " % sum(blocks[at : at + 512])
    return bytes(blocks)


def pickle_seeds() -> list[bytes]:
    array = np.arange(np.prod(SHAPE), dtype=np.uint8).reshape(SHAPE)
    batch = {b"batch_label": b"x", b"labels": [1, 2, 3, 4], b"data": array, b"filenames": [b"a.png", b"b.png"]}
    seeds = [b"\0" + pickle.dumps(batch, protocol=p) for p in (2, 3, 4, 5)]
    seeds.append(b"\0" + py2_batch(array, [1, 2, 3, 4]))
    seeds += [b"\1" + meta(NAMES), b"\1" + pickle.dumps({b"label_names": NAMES}, protocol=4)]
    return seeds


def archive_seeds() -> list[bytes]:
    files = {"data_batch_1": b"batch" * 100, "batches.meta": b"meta", "readme.html": b"<p>"}
    seeds = []
    for fmt in (tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
            tar.addfile(_info("cifar-10-batches-py", tarfile.DIRTYPE, 0))
            for name, content in files.items():
                tar.addfile(_info(f"cifar-10-batches-py/{name}", tarfile.REGTYPE, len(content), fmt), io.BytesIO(content))
        seeds += [b"\0" + gzip.compress(raw.getvalue(), mtime=0), b"\1" + raw.getvalue(), b"\2" + raw.getvalue()]
    return seeds


def _info(name: str, kind: bytes, size: int, fmt: int = tarfile.USTAR_FORMAT) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    if fmt == tarfile.PAX_FORMAT:
        info.pax_headers = {"comment": "pax seed"}
    return info


TARGETS = {"pickle": (pickle_target, pickle_seeds), "archive": (archive_target, archive_seeds)}


if __name__ == "__main__":
    fuzz_main(sys.argv, TARGETS)
