"""The few Keras layers and initialisers that plain Keras lacks, for the registry's models.

Models are always rebuilt from the registry and only their weights loaded, so these classes
are never deserialised from a file; their ops are ones tf2onnx converts (Add, Pad, Slice,
Concat, Reshape, ReduceSum).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

# Views of an image that test-time augmentation averages, with their weights (airbench's
# scheme: half on the image and its mirror, half on the two diagonal one-pixel shifts of both).
TTA_VIEWS = {
    "flip": (("none", "mirror"), (0.5, 0.5)),
    "flip_translate": (("none", "mirror", "up_left", "up_left_mirror", "down_right", "down_right_mirror"), (0.25, 0.25, 0.125, 0.125, 0.125, 0.125)),
}


class ScaledBias(keras.layers.Layer):
    """x + scale * b: a bias whose effective learning rate is scale^2 times the optimizer's.

    Fast CIFAR recipes train normalisation biases with a much larger learning rate than the
    weights; one SGD optimizer gets there by this reparametrisation.
    """

    def __init__(self, scale: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = scale

    def build(self, input_shape: tuple[int, ...]) -> None:
        self.bias = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="bias")

    def call(self, x: Any) -> Any:
        return x + ops.cast(self.bias * self.scale, x.dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale}


class PartialIdentity(keras.initializers.Initializer):
    """A conv kernel whose first `in_channels` filters pass their input channel through unchanged.

    The rest are uniform with bound 1/sqrt(fan_in). The identity part makes a plain conv stack
    behave like a residual one early in training.
    """

    def __call__(self, shape: tuple[int, ...], dtype: Any = None) -> Any:
        kh, kw, cin, cout = shape
        kernel = keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform")(shape, dtype=dtype)
        identity = np.zeros((kh, kw, cin, min(cin, cout)), dtype="float32")
        identity[kh // 2, kw // 2, np.arange(min(cin, cout)), np.arange(min(cin, cout))] = 1.0
        return ops.concatenate([ops.convert_to_tensor(identity, dtype=dtype), kernel[..., min(cin, cout) :]], axis=-1)


class TestTimeViews(keras.layers.Layer):
    """[N, H, W, C] -> [V*N, H, W, C]: the views of `mode` stacked along the batch, so the network runs once."""

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, images: Any) -> Any:
        size = ops.shape(images)[1]
        padded = ops.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect")
        base = {"none": images, "down_right": padded[:, :size, :size, :], "up_left": padded[:, 2:, 2:, :]}
        views = []
        for name in TTA_VIEWS[self.mode][0]:
            shift, mirrored = name.removesuffix("_mirror"), name.endswith("mirror")
            view = base["none" if shift == "mirror" else shift]
            views.append(ops.flip(view, axis=2) if mirrored else view)
        return ops.concatenate(views, axis=0)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (None, *input_shape[1:])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


class MeanOverViews(keras.layers.Layer):
    """[V*N, K] -> [N, K]: the weighted mean over the views TestTimeViews stacked."""

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, x: Any) -> Any:
        weights = TTA_VIEWS[self.mode][1]
        per_view = ops.reshape(x, (len(weights), -1, x.shape[-1]))
        return ops.sum(per_view * ops.reshape(ops.convert_to_tensor(weights, dtype=x.dtype), (-1, 1, 1)), axis=0)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (None, input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}
