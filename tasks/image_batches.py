"""The stored uint8 images fed to Keras a batch at a time, as the VAE and the GAN train and the
VAE encodes. Apart from tasks/image_data.py, so the data step never loads TensorFlow."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def image_dataset(
    pixels: np.ndarray, batch_size: int, shuffle: bool, seed: int | None = None
) -> tf.data.Dataset:
    """Batches of (batch, h, w, c) float32 in [0, 1], converted per batch from the uint8 images
    (4x less memory than the book's float array). Only indices are shuffled (no second copy of the
    images in a shuffle buffer); each batch is gathered in one op."""
    stored = tf.constant(pixels)
    indices = tf.data.Dataset.range(len(pixels))
    if shuffle:
        indices = indices.shuffle(len(pixels), seed=seed, reshuffle_each_iteration=True)
    return (
        indices.batch(batch_size)
        .map(
            lambda batch: tf.cast(tf.gather(stored, batch), tf.float32) / 255.0,
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .prefetch(tf.data.AUTOTUNE)
    )
