"""The KServe V2 (Open Inference Protocol) request for CIFAR-10 images, and the response a server gives.

What a serving team needs to call the model: the request a client sends to
`POST /v2/models/<name>/infer` for uint8 NHWC images, scaled as the model's contract says, and the
response the published model gives to it (onnxruntime on the same tensor, as Triton and KServe run
it). `cifar-job v2-request` prints both; the docs' KServe example is its output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from export.modelfile import read_model
from export.session import open_session
from job.models.contract import IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAME, scale

SHOWN = 6  # input values a shortened request shows


def _fp32(values: np.ndarray) -> list[float]:
    """The shortest decimals that read back as the same float32 values."""
    return [float(np.format_float_positional(v, unique=True)) for v in values.astype(np.float32).ravel()]


def request(images: np.ndarray) -> dict[str, Any]:
    """The V2 request for uint8 NHWC `images`."""
    return {"inputs": [{"name": INPUT_NAME, "shape": [len(images), *IMAGE_SHAPE], "datatype": "FP32", "data": _fp32(scale(images))}]}


def response(model: Path, sent: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """What a V2 server answers to `sent` with the published `model` (<root>/<name>/<version>/model.onnx)."""
    tensor = sent["inputs"][0]
    images = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    session = open_session(read_model(model), device, f"model {model}")
    (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: images})
    outputs = [{"name": OUTPUT_NAME, "shape": list(probabilities.shape), "datatype": "FP32", "data": _fp32(probabilities)}]
    return {"model_name": model.parent.parent.name, "model_version": model.parent.name, "outputs": outputs}


def shortened(document: dict[str, Any]) -> str:
    """JSON on one line with each input's data cut after SHOWN values, as the docs show a request."""
    text = json.dumps(document)
    for tensor in document.get("inputs", []):
        full = json.dumps(tensor["data"])
        text = text.replace(full, full[: len(json.dumps(tensor["data"][:SHOWN])) - 1] + ", ...]")
    return text
