"""Triton's model-level files, derived from the ONNX graph itself: `config.pbtxt` and the label file it names.

A serving team should not have to write them by hand or guess: names, data types and dims are
read from the graph (so they cannot drift from the file Triton loads) and checked against the
I/O contract (job/models/contract.py) before anything is written. The batch dimension must be dynamic:
`max_batch_size` > 0 tells Triton that the first dimension is the batch, so the dims listed
here leave it out, and `dynamic_batching {}` lets Triton merge single-image requests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from job.models.contract import CLASS_COUNT, IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAME
from job.core.errors import ModelFileError

if TYPE_CHECKING:
    import onnx

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
PLATFORM = "onnxruntime_onnx"

# ONNX TensorProto element types -> Triton's DataType names (model_config.proto).
_TRITON_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16"}  # FLOAT, FLOAT16: what a float, INT8 (QDQ) or FP16 variant may take and return


def _tensor(value: onnx.ValueInfoProto, expected: tuple[int, ...], where: str) -> str:
    """One `input`/`output` entry: name, Triton type and the dims after the dynamic batch dimension."""
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if not dims or dims[0] is not None or None in dims[1:] or tuple(dims[1:]) != expected or tensor.elem_type not in _TRITON_TYPES:
        raise ModelFileError(f"model {where}: {value.name!r} is not [batch, {', '.join(map(str, expected))}] of a type Triton serves")
    return f'  {{ name: {json.dumps(value.name)} data_type: {_TRITON_TYPES[tensor.elem_type]} dims: [ {", ".join(map(str, dims[1:]))} ]'


def config_pbtxt(model: onnx.ModelProto, name: str, max_batch_size: int, where: str) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig) for `model` served as `name`."""
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be positive: the graph's batch dimension is dynamic")
    (image,), (probabilities,) = model.graph.input, model.graph.output
    if (image.name, probabilities.name) != (INPUT_NAME, OUTPUT_NAME):
        raise ModelFileError(f"model {where}: I/O {image.name!r} -> {probabilities.name!r}, not {INPUT_NAME!r} -> {OUTPUT_NAME!r}")
    return (
        f"name: {json.dumps(name)}\n"
        f'platform: "{PLATFORM}"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{_tensor(image, IMAGE_SHAPE, where)} }}\n]\n"
        f'output [\n{_tensor(probabilities, (CLASS_COUNT,), where)} label_filename: "{LABELS_FILE}" }}\n]\n'
        "dynamic_batching { }\n"
    )


def labels_txt(class_names: Sequence[str]) -> str:
    """One class name per line, in the order of the output's columns (Triton's classification extension reads it)."""
    if len(class_names) != CLASS_COUNT:
        raise ValueError(f"expected {CLASS_COUNT} class names, got {len(class_names)}")
    return "".join(f"{name}\n" for name in class_names)
