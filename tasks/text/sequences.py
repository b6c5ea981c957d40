"""The (window, next id) pairs a text generator trains on, cut from the integer-encoded corpus.

Sequences are windows over the encoded corpus, made batch by batch inside the input pipeline,
instead of the book's (sequences, maxlen, vocabulary) boolean array (hundreds of MB). Apart from
tasks/text/corpus.py, so the data steps never load TensorFlow.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def num_sequences(num_chars: int, maxlen: int, step: int) -> int:
    return len(range(0, num_chars - maxlen, step))


def sequence_dataset(
    ids: np.ndarray, maxlen: int, step: int, batch_size: int, shuffle: bool, seed: int | None = None
) -> tf.data.Dataset:
    """(batch, maxlen) int32 windows every `step` characters and the (batch,) next character.

    Only the start positions are shuffled (fully, again every epoch); each batch of windows is
    then gathered from the encoded corpus in one op. (keras.utils.timeseries_dataset_from_array
    builds one element per window and was measured about 30% slower on 2 cores.)
    """
    corpus = tf.constant(ids, tf.int32)
    starts = tf.data.Dataset.from_tensor_slices(np.arange(0, len(ids) - maxlen, step, dtype=np.int32))
    if shuffle:
        starts = starts.shuffle(len(ids) // step + 1, seed=seed, reshuffle_each_iteration=True)

    def windows(batch_starts):
        positions = batch_starts[:, None] + tf.range(maxlen)  # (batch, maxlen)
        return tf.gather(corpus, positions), tf.gather(corpus, batch_starts + maxlen)

    return (
        starts.batch(batch_size).map(windows, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    )
