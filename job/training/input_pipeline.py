"""tf.data input pipelines, with augmentation applied to training batches only.

Every random choice (epoch order, rotation, shift, flip) is a stateless function of
(seed, epoch, batch), so the batches of epoch `e` are the same whether the run started at
epoch 0 or resumed at `e` after a preemption. Augmentation lives here, not in the model,
so the exported ONNX graph holds inference ops only.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from job.config.settings import TrainConfig
from job.models.contract import CLASS_COUNT, PIXEL_MAX

if TYPE_CHECKING:
    import tensorflow as tf


FIRST_FLIPS_STREAM = -1  # the second seed word of the alternating scheme's first flips; epochs use 0, 1, 2, ...


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    return math.ceil(num_images / batch_size)


def training_dataset(images: np.ndarray, labels: np.ndarray, cfg: TrainConfig, first_epoch: int) -> tf.data.Dataset:
    """Batches for epochs first_epoch..cfg.epochs-1, back to back, each epoch in its own seeded order."""
    import tensorflow as tf

    n = len(labels)
    x = tf.constant(images)
    y = tf.one_hot(tf.constant(labels), CLASS_COUNT)
    starts = tf.range(0, n, cfg.batch_size, dtype=tf.int64)
    first_flips = tf.random.stateless_uniform([n], seed=[cfg.seed, FIRST_FLIPS_STREAM]) < 0.5

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=tf.stack([cfg.seed, epoch]))

        def batch_at(start: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            idx = order[start : start + cfg.batch_size]
            images = tf.cast(tf.gather(x, idx), tf.float32) / PIXEL_MAX
            if cfg.augment:
                seed = tf.stack([cfg.seed, epoch * 1_000_003 + start])
                flips = tf.math.logical_xor(tf.gather(first_flips, idx), tf.equal(epoch % 2, 1)) if cfg.alternating_flip else None
                images = augment(images, cfg, seed, flips)
            return images, tf.gather(y, idx)

        return tf.data.Dataset.from_tensor_slices(starts).map(batch_at, num_parallel_calls=tf.data.AUTOTUNE)

    epochs = tf.data.Dataset.range(first_epoch, cfg.epochs)
    return epochs.flat_map(epoch_batches).prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Scaled, one-hot, in order, cached after the first pass."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, tf.one_hot(labels, CLASS_COUNT))).batch(batch_size)
    return ds.map(lambda x, y: (tf.cast(x, tf.float32) / PIXEL_MAX, y)).cache().prefetch(tf.data.AUTOTUNE)


def augment(images: tf.Tensor, cfg: TrainConfig, seed: tf.Tensor, flips: tf.Tensor | None = None) -> tf.Tensor:
    """Random rotation, shift and horizontal flip as one affine warp per image (`flips`, when given, chooses the flips).

    The warp is the matrix product rotate . shift . flip, mapping output to input pixel
    coordinates as ImageProjectiveTransformV3 expects; Keras' RandomRotation and
    RandomTranslation build the same matrices. `affine` (the study's): any angle and shift,
    bilinear, nearest fill; `flip_crop`: no rotation, whole-pixel shifts, reflected borders
    (a random crop of the reflect-padded image).
    """
    import tensorflow as tf

    n = tf.shape(images)[0]
    size = tf.cast(tf.shape(images)[1], tf.float32)  # square images
    seeds = tf.random.experimental.stateless_split(seed, 4)
    flip = tf.random.stateless_uniform([n], seeds[2]) < 0.5 if flips is None else flips
    flip = tf.logical_and(flip, cfg.horizontal_flip)
    if cfg.augmentation == "flip_crop":
        angle = tf.zeros([n])
        shift = tf.cast(tf.random.stateless_uniform([n, 2], seeds[1], -cfg.crop_pixels, cfg.crop_pixels + 1, dtype=tf.int32), tf.float32)
        interpolation, fill_mode = "NEAREST", "REFLECT"
    else:
        angle = tf.random.stateless_uniform([n], seeds[0], -1.0, 1.0) * (cfg.rotation_degrees * math.pi / 180.0)
        shift = tf.random.stateless_uniform([n, 2], seeds[1], -1.0, 1.0) * (cfg.shift_fraction * size)
        interpolation, fill_mode = "BILINEAR", "NEAREST"

    c, s = tf.cos(angle), tf.sin(angle)
    last = size - 1.0
    zeros, ones = tf.zeros_like(c), tf.ones_like(c)
    rotate = _matrices([c, -s, (last - (c * last - s * last)) / 2, s, c, (last - (s * last + c * last)) / 2], zeros, ones)
    move = _matrices([ones, zeros, -shift[:, 0], zeros, ones, -shift[:, 1]], zeros, ones)
    sign = tf.where(flip, -ones, ones)
    mirror = _matrices([sign, zeros, tf.where(flip, last * ones, zeros), zeros, ones, zeros], zeros, ones)
    warp = tf.reshape(rotate @ move @ mirror, [n, 9])[:, :8]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=warp,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode=fill_mode,
    )


def _matrices(top_rows: list[tf.Tensor], zeros: tf.Tensor, ones: tf.Tensor) -> tf.Tensor:
    """Batch of 3x3 affine matrices from their first two rows."""
    import tensorflow as tf

    return tf.reshape(tf.stack([*top_rows, zeros, zeros, ones], axis=1), [-1, 3, 3])
