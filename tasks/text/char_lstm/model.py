"""Character-level text generation with an LSTM (Chollet, Deep Learning with Python, 8.1).

Reads top to bottom: the model -> generating text at several temperatures -> what training adds
to Keras's `fit` (bits per character, the book's per-epoch samples).

A departure from the book, on purpose: sampling carries the LSTM state one character at a time
for all temperatures in one batch, instead of calling `model.predict` on the whole 60-character
window for every character.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from tasks.text.corpus import TextError, Vocabulary
from tasks.text.sampling import check_temperature, entropy_bits, reweighted_log_probs

log = logging.getLogger(__name__)


# --- Model ----------------------------------------------------------------------------------


def build_char_lstm(vocab_size: int, units: int, num_layers: int = 1, embedding_dim: int = 0) -> keras.Model:
    """LSTM(units) x num_layers + Dense softmax over the next character (the book's model)."""
    char_ids = keras.Input(shape=(None,), dtype="int32", name="char_ids")
    if embedding_dim:
        encoding = layers.Embedding(vocab_size, embedding_dim, name="char_encoding")
    else:
        # A frozen identity embedding is a one-hot encoding that needs no custom layer to reload.
        encoding = layers.Embedding(
            vocab_size, vocab_size, embeddings_initializer="identity", trainable=False, name="char_encoding"
        )
    x = encoding(char_ids)
    for index in range(num_layers):
        x = layers.LSTM(units, return_sequences=index < num_layers - 1, name=f"lstm_{index}")(x)
    next_char = layers.Dense(vocab_size, activation="softmax", dtype="float32", name="next_char")(x)
    return keras.Model(char_ids, next_char, name="char_lstm")


def compile_model(model: keras.Model, learning_rate: float, clipnorm: float, jit_compile: bool) -> None:
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate, clipnorm=clipnorm or None),
        loss="sparse_categorical_crossentropy",  # = the book's categorical CE on one-hot targets
        jit_compile=jit_compile,
    )


# --- Generating text ------------------------------------------------------------------------


def make_generator(model: keras.Model, jit_compile: bool = False):
    """A compiled `generate(seed_ids, temperatures, num_chars, rng_seed)` for `model`.

    One row per temperature; the LSTM state is carried from character to character, so each
    step costs one cell update rather than a pass over the whole window. Returns generated ids
    (batch, num_chars), the model's distribution before each choice (batch, num_chars, vocab)
    and the entropy in bits of the reweighted distribution sampled from (batch, num_chars).
    """
    encoding = model.get_layer("char_encoding")
    cells = [layer.cell for layer in model.layers if isinstance(layer, layers.LSTM)]
    head = model.get_layer("next_char")
    vocab_size = head.units

    def advance(char_ids, states):
        x = encoding(char_ids)  # (batch,) -> (batch, features)
        next_states = []
        for cell, state in zip(cells, states):
            x, state = cell(x, state, training=False)
            next_states.append(state)
        return head(x), next_states

    @tf.function(
        jit_compile=jit_compile,
        input_signature=[
            tf.TensorSpec((None, None), tf.int32),
            tf.TensorSpec((None,), tf.float32),
            tf.TensorSpec((), tf.int32),
            tf.TensorSpec((2,), tf.int32),
        ],
    )
    def generate(seed_ids, temperatures, num_chars, rng_seed):
        batch = tf.shape(seed_ids)[0]
        states = [
            [
                tf.zeros((batch, cell.units), cell.compute_dtype),
                tf.zeros((batch, cell.units), cell.compute_dtype),
            ]
            for cell in cells
        ]
        probs = tf.zeros((batch, vocab_size), tf.float32)
        for position in tf.range(tf.shape(seed_ids)[1]):
            probs, states = advance(seed_ids[:, position], states)
        chosen = tf.TensorArray(tf.int32, size=num_chars)
        distributions = tf.TensorArray(tf.float32, size=num_chars)
        entropies = tf.TensorArray(tf.float32, size=num_chars)
        for index in tf.range(num_chars):
            log_probs = reweighted_log_probs(probs, temperatures[:, None])
            next_ids = tf.random.stateless_categorical(
                log_probs, 1, seed=rng_seed + tf.stack([0, index]), dtype=tf.int32
            )[:, 0]
            chosen = chosen.write(index, next_ids)
            distributions = distributions.write(index, probs)
            entropies = entropies.write(index, entropy_bits(log_probs))
            probs, states = advance(next_ids, states)
        return (
            tf.transpose(chosen.stack()),
            tf.transpose(distributions.stack(), [1, 0, 2]),
            tf.transpose(entropies.stack()),
        )

    return generate


@dataclass(frozen=True)
class Generated:
    temperature: float
    text: str
    entropy_bits: float  # mean entropy of the distributions sampled from


def generate_text(
    generator,
    vocabulary: Vocabulary,
    seed_text: str,
    temperatures: Sequence[float],
    num_chars: int,
    rng_seed: int = 0,
) -> list[Generated]:
    """`num_chars` characters after `seed_text` at each temperature, all in one batch."""
    temperatures = [check_temperature(t) for t in temperatures]
    if not seed_text:
        raise TextError("seed text is empty")
    seed_ids = vocabulary.encode(seed_text).astype(np.int32)
    ids, _, entropies = generator(
        tf.constant(np.tile(seed_ids, (len(temperatures), 1))),
        tf.constant(temperatures, tf.float32),
        tf.constant(num_chars, tf.int32),
        tf.constant([rng_seed, 0], tf.int32),
    )
    return [
        Generated(temperature, vocabulary.decode(row), float(np.mean(entropy)))
        for temperature, row, entropy in zip(temperatures, ids.numpy(), entropies.numpy())
    ]


# --- Training -------------------------------------------------------------------------------


class BitsPerCharacter(keras.callbacks.Callback):
    """Adds loss in bits per character (nats / ln 2) to the epoch logs; list it first."""

    def on_epoch_end(self, epoch, logs=None):
        for key in ("loss", "val_loss"):
            if logs is not None and key in logs:
                logs[key.replace("loss", "bits_per_char")] = float(logs[key]) / math.log(2.0)


class EpochSamples(keras.callbacks.Callback):
    """The book's per-epoch sampling loop: generate at a few temperatures after each epoch."""

    def __init__(
        self, vocabulary: Vocabulary, seed_text: str, temperatures, num_chars: int, jit_compile: bool
    ):
        super().__init__()
        self.vocabulary, self.seed_text = vocabulary, seed_text
        self.temperatures, self.num_chars, self.jit_compile = list(temperatures), num_chars, jit_compile
        self.records: list[dict[str, Any]] = []

    def on_train_begin(self, logs=None):
        self.generator = make_generator(self.model, self.jit_compile)

    def on_epoch_end(self, epoch, logs=None):
        if logs and not math.isfinite(float(logs.get("loss", 0.0))):
            return
        for sample in generate_text(
            self.generator, self.vocabulary, self.seed_text, self.temperatures, self.num_chars, epoch
        ):
            self.records.append(
                {
                    "epoch": epoch + 1,
                    "temperature": sample.temperature,
                    "text": sample.text,
                    "entropy_bits": sample.entropy_bits,
                }
            )
            log.info("epoch %d, temperature %.2f: %r", epoch + 1, sample.temperature, sample.text[:100])
