"""Model registry: architectures by name, built from Keras layers (no code is ever deserialized).

Every model honours job/models/contract.py: it takes `images` (float32 NHWC, pixels in [0, 1]) and
returns `probabilities`; augmentation is not part of it, so the exported graph holds inference
ops only. An architecture may need the training images before it trains (a data-dependent
first layer); `initialise` does that. Test-time augmentation wraps a trained model for
serving (`with_test_time_augmentation`), so the exported graph is the model that is measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from job.models.contract import CLASS_COUNT, IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAME, scale
from job.core.errors import ConfigError

if TYPE_CHECKING:
    import keras


def reference_cnn() -> keras.Model:
    """The CNN of the published study: 2,193,226 parameters."""
    import keras
    from keras import layers

    inputs = keras.Input(IMAGE_SHAPE, name=INPUT_NAME)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", kernel_constraint=keras.constraints.MaxNorm(3))(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(128, 3, padding="same", activation="relu")(x)
    x = layers.Dropout(0.3)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    # float32 softmax keeps probabilities exact under a mixed-precision policy.
    outputs = layers.Dense(CLASS_COUNT, activation="softmax", dtype="float32", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="reference_cnn")


# airbench94 (K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024), built from the
# paper's description: a frozen patch-whitening 2x2 conv, three conv groups (conv, pool, norm,
# conv, norm) of widths 64/256/256, a 3x3 max pool and a linear head scaled by 1/9. Differences,
# chosen for CPUs: ReLU instead of GELU (GELU costs 1.45x the step time here), and batch-norm
# epsilon 1e-5 (bf16-safe). 1,973,944 parameters, about 0.24 GFLOP per image. airbench95 is the
# same network with widths 128/384/384 (4,608,312 parameters, about 0.60 GFLOP per image).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # per-channel pixel statistics of the CIFAR-10 training set
CIFAR_STD = (0.2470, 0.2435, 0.2616)
WHITENING_IMAGES = 5000
WHITENING_EPS = 5e-4
NORM_BIAS_SCALE = 8.0  # normalisation biases learn at 64x the weights' rate, as airbench's
AIRBENCH94_WIDTHS = (64, 256, 256)


def airbench(widths: Sequence[int] = AIRBENCH94_WIDTHS) -> keras.Model:
    import keras
    from keras import layers

    from job.models.layers import PartialIdentity, ScaledBias

    def norm_relu(x: keras.KerasTensor) -> keras.KerasTensor:
        x = layers.BatchNormalization(momentum=0.6, epsilon=1e-5, center=False, scale=False)(x)
        return layers.ReLU()(ScaledBias(NORM_BIAS_SCALE)(x))

    def conv(width: int) -> layers.Layer:
        return layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=PartialIdentity())

    inputs = keras.Input(IMAGE_SHAPE, name=INPUT_NAME)
    x = layers.Rescaling(1 / np.float32(CIFAR_STD), offset=-np.float32(CIFAR_MEAN) / np.float32(CIFAR_STD))(inputs)
    x = layers.Conv2D(24, 2, use_bias=False, trainable=False, name="whitening")(x)
    x = layers.ReLU()(ScaledBias(1.0)(x))
    for width in widths:
        x = norm_relu(layers.MaxPooling2D(2)(conv(width)(x)))
        x = norm_relu(conv(width)(x))
    x = layers.Flatten()(layers.MaxPooling2D(3)(x))
    x = layers.Rescaling(1 / 9)(layers.Dense(CLASS_COUNT, use_bias=False)(x))
    outputs = layers.Activation("softmax", dtype="float32", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="airbench")


def whiten_first_layer(model: keras.Model, images: np.ndarray) -> None:
    """Set the frozen 2x2 conv to the eigenbasis of the images' 2x2 patches, scaled to unit variance (both signs).

    Every training image patch then arrives decorrelated, which is most of why airbench trains fast.
    """
    layer = model.get_layer("whitening")
    kh, kw, channels, filters = layer.kernel.shape
    normalised = (scale(images[:WHITENING_IMAGES]) - np.float32(CIFAR_MEAN)) / np.float32(CIFAR_STD)
    covariance = np.zeros((kh * kw * channels,) * 2)
    for chunk in np.array_split(normalised, max(1, len(normalised) // 500)):
        patches = np.lib.stride_tricks.sliding_window_view(chunk, (kh, kw), axis=(1, 2))  # N, H', W', C, kh, kw
        flat = patches.transpose(0, 1, 2, 4, 5, 3).reshape(-1, kh * kw * channels).astype(np.float64)
        covariance += flat.T @ flat
    covariance /= len(normalised) * patches.shape[1] * patches.shape[2]
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    basis = (eigenvectors / np.sqrt(eigenvalues + WHITENING_EPS)).T.reshape(-1, kh, kw, channels)  # one filter per eigenvector
    kernel = np.concatenate([basis, -basis]).transpose(1, 2, 3, 0)
    if kernel.shape != tuple(layer.kernel.shape):
        raise ValueError(f"whitening layer of {filters} filters needs {kernel.shape[-1]}")
    layer.kernel.assign(kernel.astype(np.float32))


@dataclass(frozen=True)
class Architecture:
    build: Callable[..., keras.Model]  # takes `widths` where the config may set them (model.widths)
    initialise: Callable[[keras.Model, np.ndarray], None] | None = None  # from the training images, before training


REGISTRY: dict[str, Architecture] = {
    "reference_cnn": Architecture(reference_cnn),
    "airbench": Architecture(airbench, initialise=whiten_first_layer),
}


def build_model(name: str, widths: Sequence[int] | None = None) -> keras.Model:
    """Build a registered architecture (the config's model.name and model.widths); an unknown name is a config error."""
    try:
        architecture = REGISTRY[name]
    except KeyError:
        raise ConfigError(f"config key model.name: unknown architecture {name!r}; expected one of: {', '.join(REGISTRY)}") from None
    return architecture.build() if widths is None else architecture.build(widths)


def initialise(model: keras.Model, train_images: np.ndarray) -> None:
    """The architecture's data-dependent initialisation, if it has one (uint8 training images)."""
    step = REGISTRY[model.name].initialise
    if step is not None:
        step(model, train_images)


def with_test_time_augmentation(model: keras.Model, mode: str) -> keras.Model:
    """The served model: `model`'s probabilities averaged over the views of `mode` ("none": `model` itself)."""
    if mode == "none":
        return model
    import keras

    from job.models.layers import MeanOverViews, TestTimeViews

    inputs = keras.Input(IMAGE_SHAPE, name=INPUT_NAME)
    outputs = MeanOverViews(mode, name=OUTPUT_NAME)(model(TestTimeViews(mode)(inputs)))
    return keras.Model(inputs, outputs, name=model.name)
