"""What the shared rebuild's JPEG pixels cost a served model: a measurement, not a test.

The rebuild's test batch has 1,017 images with exact pixels (its pixel_provenance.json). This scores
a model.onnx on those images as they are and after a JPEG round trip whose error matches the
rebuild's (mean per-image RMSE about 7.8 on 0..255: Pillow quality 75 gives 7.9), so the same
images are compared with themselves and their difficulty cancels out.

    .venv/bin/python -m tests.data_penalty RUN/model.onnx [...] [--data ARCHIVE] [--quality 75]
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from export.session import open_session, predict
from job.config.settings import load_config
from job.data.dataset import load_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def jpeg_round_trip(images: np.ndarray, quality: int) -> np.ndarray:
    def one(image: np.ndarray) -> np.ndarray:
        encoded = io.BytesIO()
        Image.fromarray(image).save(encoded, format="JPEG", quality=quality)
        return np.asarray(Image.open(encoded))

    return np.stack([one(image) for image in images])


def exact_test_images(archive: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test images whose pixels are exact in the rebuild (pixel_provenance.json beside the archive), and their labels."""
    data = load_dataset(load_config(env={}, overrides={"data.source": str(archive), "data.checksum": "none"}).data)
    rows = json.loads((archive.parent / "pixel_provenance.json").read_text())["test_batch"]["exact_rows"]
    return data.test_images[rows], data.test_labels[rows]


def accuracy(model: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of a model.onnx through onnxruntime on the CPU."""
    session = open_session(model.read_bytes(), "cpu", str(model))
    return float((predict(session, images, 256)[0].argmax(axis=1) == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=SHARED / "cifar-10-python.tar.gz")
    parser.add_argument("--quality", type=int, default=75)
    args = parser.parse_args()

    exact, labels = exact_test_images(args.data)
    degraded = jpeg_round_trip(exact, args.quality)
    rmse = np.sqrt(((degraded.astype(np.float64) - exact) ** 2).reshape(len(exact), -1).mean(axis=1)).mean()
    print(f"{len(exact)} exact test images; JPEG quality {args.quality}: mean per-image RMSE {rmse:.2f}")
    for model in args.models:
        clean, lossy = accuracy(model, exact, labels), accuracy(model, degraded, labels)
        print(f"{model}: exact pixels {clean:.4f}, after JPEG {lossy:.4f} ({100 * (clean - lossy):+.2f} points)")


if __name__ == "__main__":
    main()
