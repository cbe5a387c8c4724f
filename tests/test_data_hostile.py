"""Hostile and faulty data: crafted pickles, tar bombs, corrupt gzip, odd directories, bad splits.

Every case must end in a one-line DataError (exit 3 through the CLI), quickly and with bounded
memory; the real pickle and archive variants must still read exactly as `pickle` reads them.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from job.data.archive import ArchiveError, read_members
from job.data.batch_format import read_batch, read_class_names
from job.cli import main
from job.config.settings import load_config
from job.data.dataset import load_dataset
from job.core.errors import DataError

from .cifar_bytes import meta, pax_record, py2_batch, tar_gz, tar_header, tar_member
from .conftest import CLASS_NAMES, batch_bytes, write_archive

pytestmark = pytest.mark.fast  # no training, no fuzzing: the tier `bash tests/run.sh -m fast` runs

ROOT = "cifar-10-batches-py"
MEMBERS = {f"{ROOT}/data_batch_1": 4096, f"{ROOT}/batches.meta": 1024, f"{ROOT}/readme.html": 256}
PIXELS = np.arange(30_720_000, dtype=np.uint32).astype(np.uint8).reshape(10_000, 3072)
LABELS = [i % 10 for i in range(10_000)]


def data_config(source: Path | str, **keys: object):
    return load_config(env={}, overrides={"data.source": str(source), **{f"data.{k}": v for k, v in keys.items()}}).data


def refused(call, *args) -> str:
    """The DataError message of `call(*args)`, checked to be one short line."""
    with pytest.raises(DataError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def cli_error(source: Path | str, *extra: str) -> str:
    result = CliRunner().invoke(main, ["data", "verify", "--data", str(source), *extra])
    assert result.exit_code == 3, result.output
    *logged, error = result.stderr.splitlines()
    assert error.startswith("cifar-job: error: data "), result.stderr
    assert all(re.match(r"\d{4}-\d\d-\d\dT[\d:]+ (INFO|WARNING) ", line) for line in logged), result.stderr  # log lines only
    return error


# --- batches: the real variants --------------------------------------------------------------


@pytest.mark.parametrize("variant", ["python2", "protocol2", "protocol3", "protocol4", "protocol5"])
def test_every_real_batch_variant_reads_as_pickle_reads_it(variant: str) -> None:
    if variant == "python2":  # the canonical Toronto files: SHORT_BINSTRING keys, one BINSTRING of pixels
        blob = py2_batch(PIXELS, LABELS)
    else:
        blob = pickle.dumps({b"batch_label": b"b", b"labels": LABELS, b"data": PIXELS, b"filenames": [b"f.png"] * 10_000}, protocol=int(variant[-1]))
    images, labels = read_batch(blob, "t")
    assert np.array_equal(images, pickle.loads(blob, encoding="bytes")[b"data"]) and images.dtype == np.uint8
    assert labels.tolist() == LABELS and labels.dtype == np.int64


# --- batches: crafted pickles ----------------------------------------------------------------


def _reconstruct(shape: tuple[int, ...], dtype: str, raw: bytes) -> bytes:
    """A protocol-2 dict {b'data': array} whose array parts (shape, dtype, bytes) are ours to choose."""
    return (
        b"\x80\x02}(U\x04data"
        + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
        + b"(K\x01(" + b"".join(b"\x8a\x08" + struct.pack("<q", n) for n in shape) + b"t"
        + b"cnumpy\ndtype\nU" + bytes([len(dtype)]) + dtype.encode() + b"K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + b"\x89T" + struct.pack("<i", len(raw)) + raw + b"tbu."
    )


def _call(module: str, name: str, *args: bytes) -> bytes:
    """A protocol-2 dict {b'data': module.name(*args)} with args given as opcode bytes."""
    return b"\x80\x02}(U\x04datac" + f"{module}\n{name}\n".encode() + b"(" + b"".join(args) + b"tRu."


def _unicode(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


HOSTILE_PICKLES = {
    "object dtype with chosen pointers": (_reconstruct((10_000, 3072), "O8", struct.pack("<Q", 0xDEADBEEF) * 4), "is not a uint8 array construction"),
    "object array from numpy": (pickle.dumps({b"data": np.array([1, "a"], dtype=object)}, protocol=2), "is not a uint8 array construction"),
    "float dtype": (pickle.dumps({b"data": np.zeros((10_000, 3072), np.float32)}, protocol=2), "is not a uint8 array construction"),
    "huge shape": (_reconstruct((1 << 40, 1 << 40), "u1", b"\0" * 16), "array shape (1099511627776, 1099511627776) is not (10000, 3072)"),
    "nested dtype": (pickle.dumps({b"data": np.zeros(2, dtype=[("a", [("b", [("c", "u1")])])])}, protocol=2), "is not a uint8 array construction"),
    "os.system": (_call("os", "system", _unicode("touch /tmp/pwned")), "global 'os.system' is not allowed"),
    "builtins.eval": (_call("builtins", "eval", _unicode("1")), "global 'builtins.eval' is not allowed"),
    "numpy.frombuffer": (_call("numpy", "frombuffer", b"C\x04abcd"), "global 'numpy.frombuffer' is not allowed"),
    "unknown codec": (_call("_codecs", "encode", _unicode("abc"), _unicode("no-such-codec")), "is not a uint8 array construction"),
    "rot13 codec": (_call("_codecs", "encode", _unicode("abc"), _unicode("rot13")), "is not a uint8 array construction"),
    "label 2**64": (batch_bytes(labels=[2**64] + LABELS[1:]), "integer of 9 bytes (at most 8 allowed)"),
    "label 10": (batch_bytes(labels=LABELS[:-1] + [10]), "label 10 at index 9999 is outside 0..9"),
    "label -1": (batch_bytes(labels=[-1] + LABELS[1:]), "label -1 at index 0 is outside 0..9"),
    "label True": (batch_bytes(labels=[True] + LABELS[1:]), "b'labels' must be a list of 10000 ints"),
    "9,999 labels": (batch_bytes(labels=LABELS[1:]), "b'labels' must be a list of 10000 ints"),
    "string claiming 2 GiB": (b"\x80\x02}(U\x01aX\xff\xff\xff\x7fabc", "truncated: 2147483647 bytes wanted"),
    "bytes8 claiming 2**62": (b"\x80\x04}(U\x01a\x8e" + struct.pack("<Q", 1 << 62), "truncated: 4611686018427387904 bytes wanted"),
    "deep MARK nesting": (b"\x80\x02" + b"(" * 100_000, "more than 16 nested MARKs"),
    "list inside list": (b"\x80\x02}(U\x01a]]au.", "a list may hold only ints, strings and bytes"),
    "memo read before write": (b"\x80\x02}h\x07.", "memo entry 7 used before it is set"),
    "POP opcode": (b"\x80\x02}0.", "opcode POP at byte 3 is not part of the CIFAR batch format"),
    "two arrays": (pickle.dumps({b"data": PIXELS, b"more": PIXELS.copy()}, protocol=3), "more than one array"),
    "array memo reused": (pickle.dumps({b"data": PIXELS, b"more": PIXELS}, protocol=3), "dict value for b'more' is a _EmptyArray"),
    "duplicate key": (b"\x80\x02}(U\x04dataK\x01U\x04dataK\x02u.", "dict key b'data' appears twice"),
    "str keys": (pickle.dumps({"data": 1}, protocol=3), "dict keys must be bytes"),
    "bytes after STOP": (pickle.dumps({b"a": 1}, protocol=2) + b"junk", "4 bytes after STOP"),
    "not a dict": (pickle.dumps([1, 2], protocol=2), "does not hold exactly one dict"),
    "empty": (b"", "truncated"),
}


@pytest.mark.parametrize("case", list(HOSTILE_PICKLES))
def test_crafted_batch_is_refused_before_anything_is_built(case: str) -> None:
    blob, expected = HOSTILE_PICKLES[case]
    assert expected in refused(read_batch, blob, "data x [data_batch_1]")


def test_encoding_one_string_many_times_cannot_amplify_memory() -> None:
    big = _unicode("x" * 100_000) + b"q\x01"
    encode_again = b"c_codecs\nencode\nh\x01" + _unicode("latin1") + b"\x86R"
    blob = b"\x80\x02}(U\x01a" + big + b"U\x01b" + encode_again + b"U\x01c" + encode_again + b"u."
    assert "encoded strings exceed the pickle's size" in refused(read_batch, blob, "t")


def test_class_names_load_from_python2_and_python3_meta() -> None:
    names = [n.encode() for n in CLASS_NAMES]
    assert read_class_names(meta(names), "t") == tuple(CLASS_NAMES)
    assert read_class_names(pickle.dumps({b"label_names": names}, protocol=4), "t") == tuple(CLASS_NAMES)


BAD_NAMES = {
    "nine": CLASS_NAMES[:9],
    "eleven": [*CLASS_NAMES, "extra"],
    "empty": ["", *CLASS_NAMES[1:]],
    "65 characters": ["a" * 65, *CLASS_NAMES[1:]],
    "duplicate": ["cat", *CLASS_NAMES[1:]],
    "html": ["<img src=x onerror=alert(1)>", *CLASS_NAMES[1:]],
    "ampersand": ["cats & dogs", *CLASS_NAMES[1:]],
    "newline": ["air\nplane", *CLASS_NAMES[1:]],
    "markdown table": ["a|b", *CLASS_NAMES[1:]],
    "not UTF-8": [b"\xff\xfe".decode("latin1"), *CLASS_NAMES[1:]],
}


@pytest.mark.parametrize("case", list(BAD_NAMES))
def test_unsafe_class_names_are_refused(case: str) -> None:
    names = [n.encode("latin1" if case == "not UTF-8" else "utf-8") for n in BAD_NAMES[case]]
    refused(read_class_names, meta(names), "data x [batches.meta]")


# --- archives --------------------------------------------------------------------------------


def _read(archive: bytes) -> dict[str, bytes]:
    return read_members(io.BytesIO(archive), MEMBERS, {ROOT}, 8192)


def _refused_archive(archive: bytes) -> str:
    with pytest.raises(ArchiveError) as info:
        _read(archive)
    assert "\n" not in str(info.value)
    return str(info.value)


VALID_MEMBERS = (tar_member(ROOT, b"", b"5"), tar_member(f"{ROOT}/data_batch_1", b"batch"), tar_member(f"{ROOT}/batches.meta", b"meta"))


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_archives_written_by_tarfile_in_every_format_read(fmt: int) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", format=fmt) as tar:
        info = tarfile.TarInfo(f"{ROOT}/data_batch_1")
        info.size, info.pax_headers = 5, {"comment": "x"} if fmt == tarfile.PAX_FORMAT else {}
        tar.addfile(info, io.BytesIO(b"batch"))
    assert _read(raw.getvalue()) == {f"{ROOT}/data_batch_1": b"batch"}


def test_pax_path_and_size_are_honoured() -> None:
    pax = pax_record("path", f"{ROOT}/batches.meta") + pax_record("size", "4")
    archive = tar_gz(tar_member("PaxHeader", pax, b"x"), tar_header("short", 0) + b"meta" + bytes(508))
    assert _read(archive) == {f"{ROOT}/batches.meta": b"meta"}


HOSTILE_ARCHIVES = {
    "pax header claiming 1 GiB": (tar_gz(tar_header("PaxHeader", 1 << 30, b"x"), end=False), "claims 1073741824 bytes (limit 4096)"),
    "GNU long name claiming 3 GiB": (tar_gz(tar_header("././@LongLink", 3 << 30, b"L"), end=False), "claims 3221225472 bytes"),
    "member claiming 3 GiB": (tar_gz(tar_header(f"{ROOT}/data_batch_1", 3 << 30), end=False), "3221225472 bytes exceed its limit"),
    "100,000 members": (tar_gz(tar_member(f"{ROOT}/readme.html", b"") * 100_000), "appears twice"),
    "duplicate batch": (tar_gz(*VALID_MEMBERS, tar_member(f"{ROOT}/data_batch_1", b"other")), f"member '{ROOT}/data_batch_1': appears twice"),
    "same name via pax path": (tar_gz(*VALID_MEMBERS, tar_member("p", pax_record("path", f"{ROOT}/batches.meta"), b"x"), tar_member("x", b"m")), "appears twice"),
    "decoy in another folder": (tar_gz(tar_member(f"decoy/{ROOT}/data_batch_1", b"x")), "unexpected path"),
    "dot-dot": (tar_gz(tar_member(f"{ROOT}/../{ROOT}/data_batch_1", b"x")), "unexpected path"),
    "symlink": (tar_gz(tar_header(f"{ROOT}/data_batch_1", 0, b"2")), "links are not allowed"),
    "hard link": (tar_gz(tar_header(f"{ROOT}/data_batch_1", 0, b"1")), "links are not allowed"),
    "character device": (tar_gz(tar_header(f"{ROOT}/data_batch_1", 0, b"3")), "type b'3' is not a regular file or directory"),
    "fifo": (tar_gz(tar_header(f"{ROOT}/data_batch_1", 0, b"6")), "type b'6'"),
    "global pax header": (tar_gz(tar_member("g", pax_record("path", "x"), b"g")), "type b'g'"),
    "sparse pax": (tar_gz(tar_member("p", pax_record("GNU.sparse.map", "0,1"), b"x"), tar_member(f"{ROOT}/data_batch_1", b"x")), "sparse or repeated"),
    "two pax headers": (tar_gz(tar_member("p", b"", b"x") * 2), "two 'x' extended headers in a row"),
    "unexpected directory": (tar_gz(tar_member("etc/", b"", b"5")), "unexpected directory"),
    "bad header checksum": (tar_gz(tar_header(f"{ROOT}/data_batch_1", 0, checksum_delta=1)), "fails its checksum"),
    "not ustar (v7)": (tar_gz(tar_header(f"{ROOT}/data_batch_1", 0, magic=bytes(8))), "not a ustar header"),
    "content after end marker": (tar_gz(*VALID_MEMBERS) + b"", None),
    "no end marker": (tar_gz(*VALID_MEMBERS, end=False), "ends after"),
    "trailing garbage after gzip": (tar_gz(*VALID_MEMBERS) + b"garbage", "bytes after the end of the gzip stream"),
    "second gzip member": (tar_gz(*VALID_MEMBERS) + gzip.compress(tar_member(f"{ROOT}/readme.html", b"x")), "bytes after the end of the gzip stream"),
    "not gzip": (b"PK\x03\x04 not a tarball", "corrupt compressed data"),
}
HOSTILE_ARCHIVES["content after end marker"] = (
    gzip.compress(b"".join(VALID_MEMBERS) + bytes(1024) + tar_member(f"{ROOT}/readme.html", b"hidden")),
    "data after the end-of-archive marker",
)


@pytest.mark.parametrize("case", list(HOSTILE_ARCHIVES))
def test_hostile_archive_is_refused(case: str) -> None:
    archive, expected = HOSTILE_ARCHIVES[case]
    start = time.monotonic()
    assert expected in _refused_archive(archive)
    assert time.monotonic() - start < 5


def test_every_flipped_byte_is_refused_or_harmless() -> None:
    """A corrupt byte anywhere is an error, never silently different content (the gzip CRC is read)."""
    archive = tar_gz(*VALID_MEMBERS, tar_member(f"{ROOT}/readme.html", b"<p>readme</p>"))
    original = _read(archive)
    outcomes = {"refused": 0, "same": 0}
    for offset in range(len(archive)):
        corrupt = bytearray(archive)
        corrupt[offset] ^= 0x55
        try:
            assert _read(bytes(corrupt)) == original, f"offset {offset} changed the content silently"
            outcomes["same"] += 1  # gzip header fields outside the CRC (mtime, OS) or unused bits
        except ArchiveError as e:
            assert "\n" not in str(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] > len(archive) - 12


def test_every_truncation_is_refused() -> None:
    archive = tar_gz(*VALID_MEMBERS)
    for length in range(len(archive)):
        _refused_archive(archive[:length])


def test_zero_padding_bomb_after_the_end_marker_stops_at_a_mebibyte() -> None:
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    parts = [z.compress(b"".join(VALID_MEMBERS))] + [z.compress(bytes(1 << 20)) for _ in range(256)] + [z.flush()]
    assert "more than 1048576 bytes after the tar end marker" in _refused_archive(b"".join(parts))


def test_flipped_byte_deep_in_a_real_size_archive_fails_the_cli(synthetic_archive: Path, tmp_path: Path) -> None:
    corrupt = bytearray(synthetic_archive.read_bytes())
    corrupt[len(corrupt) * 2 // 3] ^= 0x01
    path = tmp_path / "corrupt.tar.gz"
    path.write_bytes(corrupt)
    assert "not a valid CIFAR-10 .tar.gz archive: gzip: corrupt compressed data" in cli_error(path)


def test_archive_bombs_through_the_cli(tmp_path: Path) -> None:
    pax_bomb = tmp_path / "pax.tar.gz"
    pax_bomb.write_bytes(HOSTILE_ARCHIVES["pax header claiming 1 GiB"][0])
    assert "claims 1073741824 bytes" in cli_error(pax_bomb)
    big = tmp_path / "big.tar.gz"
    big.write_bytes(b"\0" * 2048)
    assert "2048 bytes, larger than data.max_archive_bytes=1024" in cli_error(big, "--set", "data.max_archive_bytes=1024")


def test_bombs_stay_within_bounded_memory(tmp_path: Path) -> None:
    """In a fresh process: every bomb is refused while peak RSS stays far below the claimed sizes."""
    bombs = tmp_path / "bombs"
    bombs.mkdir()
    for name in ("pax header claiming 1 GiB", "GNU long name claiming 3 GiB", "member claiming 3 GiB", "100,000 members"):
        (bombs / name.replace(" ", "_")).write_bytes(HOSTILE_ARCHIVES[name][0])
    script = f"""
import io, pathlib
from job.data.archive import ArchiveError, read_members
from job.data.batch_format import FILE_LIMITS
from job.data.safe_pickle import Refused, load_dict
limits = {{"cifar-10-batches-py/" + k: v for k, v in FILE_LIMITS.items()}}
for path in sorted(pathlib.Path({str(bombs)!r}).iterdir()):
    try:
        read_members(io.BytesIO(path.read_bytes()), limits, {{"cifar-10-batches-py"}}, 1 << 30)
        raise SystemExit(f"{{path.name}} accepted")
    except ArchiveError:
        pass
for blob in (b"\\x80\\x04}}(U\\x01a\\x8e" + (1 << 62).to_bytes(8, "little"), b"\\x80\\x02" + b"(" * 1000000):
    try:
        load_dict(blob, (10000, 3072))
        raise SystemExit("pickle bomb accepted")
    except Refused:
        pass
status = pathlib.Path("/proc/self/status").read_text()  # VmHWM: this process only (ru_maxrss survives exec)
print(int(status.split("VmHWM:")[1].split()[0]) // 1024)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) < 300, f"peak RSS {out.stdout.strip()} MB"


# --- directories -----------------------------------------------------------------------------


@pytest.fixture
def extracted(tmp_path: Path, cifar_files: dict[str, bytes]) -> Path:
    root = tmp_path / "extracted"
    (root / ROOT).mkdir(parents=True)
    for name in ("batches.meta", "readme.html"):
        (root / ROOT / name).write_bytes(cifar_files.get(name, b"<p>"))
    return root


def test_sparse_3_gib_batch_file_is_refused_without_reading_it(extracted: Path) -> None:
    with open(extracted / ROOT / "data_batch_1", "wb") as f:
        f.truncate(3 << 30)
    start = time.monotonic()
    message = cli_error(extracted, "--set", "data.max_archive_bytes=1048576")
    assert "data_batch_1: 3221225472 bytes exceed its limit" in message
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("what", ["batch directory", "batch file", "source directory"])
def test_symlinks_in_a_directory_source_are_refused(what: str, extracted: Path, tmp_path: Path) -> None:
    source = extracted
    if what == "batch directory":
        (extracted / ROOT).rename(tmp_path / "elsewhere")
        (extracted / ROOT).symlink_to(tmp_path / "elsewhere")
    elif what == "batch file":
        (extracted / ROOT / "data_batch_1").symlink_to("/etc/passwd")
    else:
        source = tmp_path / "link"
        source.symlink_to(extracted)
    assert "links are not allowed" in refused(load_dataset, data_config(source))


def test_fifo_in_place_of_a_batch_is_refused_without_blocking(extracted: Path) -> None:
    os.mkfifo(extracted / ROOT / "data_batch_1")
    assert "data_batch_1: not a regular file" in refused(load_dataset, data_config(extracted))


# --- split edge cases ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"train_limit": 10, "validation_fraction": 0.01}, "leaves an empty validation set"),
        ({"train_limit": 10, "validation_fraction": 0.99}, "leaves an empty training set"),
        ({"train_limit": 60_000}, "a limit of 60000 images exceeds the 50000"),
        ({"test_limit": 20_000}, "a limit of 20000 images exceeds the 10000 in test_batch"),
    ],
)
def test_split_edge_cases_are_data_errors(keys: dict, expected: str, synthetic_archive: Path) -> None:
    """Config validation refuses these first; the loader must not depend on it (model_copy skips it)."""
    assert expected in refused(load_dataset, data_config(synthetic_archive).model_copy(update=keys))


def test_directory_and_archive_written_by_hand_give_the_same_data(synthetic_archive: Path, tmp_path: Path, cifar_files: dict[str, bytes]) -> None:
    py2 = {**cifar_files, "data_batch_1": py2_batch(PIXELS, LABELS)}
    archive = write_archive(tmp_path / "py2.tar.gz", py2)
    d = load_dataset(data_config(archive, validation_fraction=0.5))
    assert d.class_names == tuple(CLASS_NAMES) and len(d.test_labels) == 10_000
    assert np.bincount(np.concatenate([d.train_labels, d.val_labels])).tolist() == [5000] * 10
