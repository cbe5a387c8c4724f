"""The KServe v2 (Open Inference Protocol) request and response for one real CIFAR-10 test image.

The README's KServe example is this module's output, so its numbers are real:

    .venv/bin/python -m tests.kserve_request [--model MODEL.onnx] [--full]

prints (on stdout, one JSON document a line) the request for test image 0 of the shared archive (pixels scaled as job/models/contract.py says)
and, with --model, the response onnxruntime computes for it, in the shape a v2 server returns.
Without --full the input's 3,072 values are cut to the first few, as the README shows them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from job.config.settings import DataConfig
from job.models.contract import IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAME, scale
from job.data.dataset import load_dataset

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar-10-python.tar.gz"
SHOWN = 6  # input values the README shows


def cifar_test_image(archive: Path = ARCHIVE, index: int = 0) -> tuple[np.ndarray, str]:
    """Test image `index` (uint8 HWC) and its class name, read by the project's own data layer."""
    data = load_dataset(DataConfig(source=str(archive), checksum="none", train_limit=100, test_limit=index + 1))
    return data.test_images[index], data.class_names[int(data.test_labels[index])]


def _fp32(values: np.ndarray) -> list[float]:
    """The shortest decimals that read back as the same float32 values."""
    return [float(np.format_float_positional(v, unique=True)) for v in values.astype(np.float32).ravel()]


def v2_request(image: np.ndarray) -> dict[str, Any]:
    pixels = scale(image[np.newaxis])
    return {"inputs": [{"name": INPUT_NAME, "shape": [1, *IMAGE_SHAPE], "datatype": "FP32", "data": _fp32(pixels)}]}


def v2_response(model: Path, request: dict[str, Any], model_name: str, version: str) -> dict[str, Any]:
    """What a v2 server answers: onnxruntime on the request's tensor."""
    import onnxruntime as ort

    tensor = request["inputs"][0]
    images = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: images})
    return {"model_name": model_name, "model_version": version,
            "outputs": [{"name": OUTPUT_NAME, "shape": list(probabilities.shape), "datatype": "FP32", "data": _fp32(probabilities)}]}


def shown(doc: dict[str, Any]) -> str:
    """JSON as the README shows it: one line per tensor, the input's data cut after SHOWN values."""
    text = json.dumps(doc)
    for tensor in doc.get("inputs", []):
        full = json.dumps(tensor["data"])
        text = text.replace(full, full[: len(json.dumps(tensor["data"][:SHOWN])) - 1] + ", ...]")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a published model.onnx (<root>/<name>/<version>/model.onnx)")
    parser.add_argument("--full", action="store_true", help="print every input value")
    args = parser.parse_args()
    image, label = cifar_test_image()
    request = v2_request(image)
    print(f"test image 0 of {ARCHIVE.name}: {label}", file=sys.stderr)  # stdout stays a request file
    print(json.dumps(request) if args.full else shown(request))
    if args.model:
        response = v2_response(args.model, request, args.model.parent.parent.name, args.model.parent.name)
        print(json.dumps(response))


if __name__ == "__main__":
    main()
