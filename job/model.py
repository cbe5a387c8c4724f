"""Model registry: architectures by name, built from plain Keras layers (no custom code to deserialize).

Every model honours job/contract.py: it takes `images` (float32 NHWC, pixels in [0, 1]) and
returns `probabilities`; augmentation is not part of it, so the exported graph holds inference
ops only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from job.contract import CLASS_COUNT, IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAME
from job.errors import ConfigError

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


REGISTRY: dict[str, Callable[[], keras.Model]] = {"reference_cnn": reference_cnn}


def build_model(name: str) -> keras.Model:
    """Build a registered architecture; an unknown name is a config error."""
    try:
        builder = REGISTRY[name]
    except KeyError:
        raise ConfigError(f"config key model.name: unknown architecture {name!r}; expected one of: {', '.join(REGISTRY)}") from None
    return builder()
