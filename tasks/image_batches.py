"""The stored uint8 images fed to Keras a batch at a time, as the VAE and the GAN train, the VAE
encodes and the GAN's scoring classifier learns rotations. Apart from tasks/image_data.py, so the
data step never loads TensorFlow."""

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


def rotation_dataset(
    pixels: np.ndarray, batch_size: int, shuffle: bool, seed: int | None = None
) -> tf.data.Dataset:
    """The rotation task (Gidaris et al. 2018) for unlabelled images: batches of (images, k), each
    image four times, turned k x 90 degrees counter-clockwise and labelled k, float32 in [0, 1].
    Built image by image from the uint8 images: the four rotated float copies of CelebA would take
    ~40 GB."""
    stored, count = tf.constant(pixels), len(pixels)
    indices = tf.data.Dataset.range(4 * count)  # k * count + image
    if shuffle:
        indices = indices.shuffle(4 * count, seed=seed, reshuffle_each_iteration=True)

    def rotated(index):
        turns = tf.cast(index // count, tf.int32)
        image = tf.image.rot90(tf.gather(stored, index % count), turns)
        return tf.cast(image, tf.float32) / 255.0, turns

    return (
        indices.map(rotated, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    )
