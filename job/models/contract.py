"""The model's I/O contract, stated once: what every model takes and returns, and how pixels become its input.

The data layer, the input pipeline, the model registry, the ONNX signature check, the export
metadata, the model card, the published signature and the tests all derive from these names;
change them here or not at all.
"""

from __future__ import annotations

import numpy as np

CLASS_COUNT = 10
IMAGE_SHAPE = (32, 32, 3)  # height, width, RGB channels (NHWC without the batch)
PIXEL_MAX = 255.0  # uint8 pixels are divided by this: model inputs are float32 in [0, 1]

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
BATCH_DIM = "N"  # the symbolic name of the dynamic batch dimension of input and output
PIXEL_LAYOUT = "NHWC"  # batch, height, width, channels: IMAGE_SHAPE after the batch
CHANNELS = "RGB"  # the order of IMAGE_SHAPE's last dimension
SCALING = f"uint8 pixel / {PIXEL_MAX:g} -> [0, 1]"  # the published signature's short form of INPUT_SCALING

INPUT_LAYOUT = f"float32 {PIXEL_LAYOUT} [{BATCH_DIM}, {', '.join(map(str, IMAGE_SHAPE))}], {CHANNELS}"
INPUT_SCALING = f"uint8 pixel / {PIXEL_MAX:g}, so every value is in [0, 1]"
OUTPUT_MEANING = f"softmax probabilities [{BATCH_DIM}, {CLASS_COUNT}], columns in class_names order"


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC pixels to the model's float32 input."""
    return images.astype(np.float32) / np.float32(PIXEL_MAX)
