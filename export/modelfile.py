"""The ONNX model file: read it, check it, read and stamp its metadata. Needs `onnx` only.

Every stage that takes a model file in (validate, publish, the parity check of export) goes
through `load_onnx`, so a corrupt, truncated or wrong-shaped file is refused the same way
everywhere: a `ModelFileError` that names the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import os
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from job.core.bounded import open_regular, read_bounded
from job.models.contract import BATCH_DIM, CLASS_COUNT, IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAME
from job.core.errors import ModelFileError

MAX_MODEL_BYTES = 2 << 30  # protobuf's limit for one message, so for one ONNX file

if TYPE_CHECKING:
    import onnx


def read_model(path: Path) -> bytes:
    """The model's bytes: a regular file (a FIFO in its place is refused, never waited on) within protobuf's 2 GiB."""
    if not os.path.lexists(path):
        raise ModelFileError(f"model {path}: no such file; run `cifar-job export` first")
    return read_bounded(path, MAX_MODEL_BYTES, ModelFileError, f"model {path}")


def load_onnx(data: bytes, where: str) -> onnx.ModelProto:
    """Parse, run `onnx.checker` (full check) and verify the serving signature."""
    import onnx

    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # protobuf's DecodeError, onnx's ValidationError and friends
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(f"model {where}: not a valid ONNX model ({first})") from None
    check_signature(model, where)
    return model


def check_signature(model: onnx.ModelProto, where: str) -> None:
    """One float32 input `images` [N, 32, 32, 3] and one float32 output `probabilities` [N, 10], N dynamic."""
    import onnx

    expected = {"input": (INPUT_NAME, (None, *IMAGE_SHAPE)), "output": (OUTPUT_NAME, (None, CLASS_COUNT))}
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        name, shape = expected[kind]
        want = f"one float32 {kind} {name!r} of shape {_shape_text(shape)}"
        if len(values) != 1:
            raise ModelFileError(f"model {where}: expected {want}, found {len(values)} {kind}s")
        tensor = values[0].type.tensor_type
        got = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        if values[0].name != name or tensor.elem_type != onnx.TensorProto.FLOAT or got != shape:
            element = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
            raise ModelFileError(f"model {where}: expected {want}, found {element} {values[0].name!r} of shape {_shape_text(got)}")


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join(BATCH_DIM if d is None else str(d) for d in shape) + "]"


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def metadata_json(meta: Mapping[str, str], key: str) -> Any:
    """A JSON-valued metadata entry; {} when absent or not JSON (a model exported elsewhere)."""
    try:
        return json.loads(meta[key])
    except (KeyError, ValueError):
        return {}


def set_metadata(model: onnx.ModelProto, entries: Mapping[str, str]) -> None:
    """Add or replace `metadata_props` entries, keeping the others in order."""
    merged = {**metadata(model), **entries}
    del model.metadata_props[:]
    for key, value in merged.items():
        model.metadata_props.add(key=key, value=value)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 and size of a model file, opened without blocking and only if it is a regular file."""
    with open_regular(path, ModelFileError, f"model {path}") as f:
        return hashlib.file_digest(f, "sha256").hexdigest(), os.fstat(f.fileno()).st_size


def sha256_file(path: Path) -> str:
    return file_digest(path)[0]


def sha256_of(path: Path) -> str | None:
    """The file's sha256, or None when it is missing or no regular file: for comparing against a marker."""
    try:
        return sha256_file(path)
    except ModelFileError:
        return None
