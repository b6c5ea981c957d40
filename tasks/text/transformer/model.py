"""Word-level text generation with a Transformer decoder (Chollet, Deep Learning with Python, 2nd
edition, 12.1): a language model of movie reviews.

Reads top to bottom: the positional embedding and the book's Transformer decoder -> the model ->
generating text with a key/value cache, every prompt and sampler in one batch -> what training adds
to Keras's `fit` (perplexity, the book's per-epoch samples).

Departures from the book, on purpose:
- its sampling callback never passes the temperature (every "temperature" samples at 1.0) and
  reads the prediction at position i instead of at the last word of the prefix; here each step
  draws from the model's prediction after the whole prefix, reweighted by the sampler's temperature;
- it re-vectorizes the sentence and runs the whole model for every word; here the attention keys
  and values of earlier positions are kept (a KV cache) and each step computes one position;
- the padding id is never drawn (the book appends "" and then predicts the same position again).
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
from keras import layers, ops

from tasks.text.corpus import TextError
from tasks.text.sampling import entropy_bits, reweighted_log_probs, truncated_log_probs
from tasks.text.transformer.params import Sampler
from tasks.text.transformer.vectorize import PADDING, UNKNOWN, WordVocabulary

log = logging.getLogger(__name__)


# --- Model ----------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="gendl")
class PositionalEmbedding(layers.Layer):
    """Token embedding + learned position embedding; id 0 (padding) is masked downstream."""

    def __init__(self, sequence_length: int, input_dim: int, output_dim: int, **kwargs):
        super().__init__(**kwargs)
        # Sublayers take this layer's dtype policy: a model saved under mixed precision loads as it was.
        self.token_embeddings = layers.Embedding(input_dim, output_dim, dtype=self.dtype_policy)
        self.position_embeddings = layers.Embedding(sequence_length, output_dim, dtype=self.dtype_policy)
        self.sequence_length, self.input_dim, self.output_dim = sequence_length, input_dim, output_dim

    def build(self, input_shape):
        self.token_embeddings.build(input_shape)
        self.position_embeddings.build((None,))

    def call(self, inputs):
        positions = ops.arange(ops.shape(inputs)[-1])
        return self.token_embeddings(inputs) + self.position_embeddings(positions)

    def compute_mask(self, inputs, mask=None):
        return ops.not_equal(inputs, PADDING)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "sequence_length": self.sequence_length,
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
        }


@keras.saving.register_keras_serializable(package="gendl")
class TransformerDecoder(layers.Layer):
    """The book's decoder: causal self-attention, then attention over `encoder_outputs` (the
    language model passes the same sequence), then a dense projection; a residual connection and a
    layer norm after each. Both attentions are masked causally and for padding."""

    def __init__(self, embed_dim: int, dense_dim: int, num_heads: int, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim, self.dense_dim, self.num_heads = embed_dim, dense_dim, num_heads
        dtype = self.dtype_policy  # for the sublayers: a model saved under mixed precision loads as it was
        self.attention_1 = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim, dtype=dtype)
        self.attention_2 = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim, dtype=dtype)
        self.dense_proj = keras.Sequential(
            [layers.Dense(dense_dim, activation="relu", dtype=dtype), layers.Dense(embed_dim, dtype=dtype)]
        )
        self.layernorm_1 = layers.LayerNormalization(dtype=dtype)
        self.layernorm_2 = layers.LayerNormalization(dtype=dtype)
        self.layernorm_3 = layers.LayerNormalization(dtype=dtype)
        self.supports_masking = True

    def build(self, inputs_shape, encoder_outputs_shape=None):
        self.attention_1.build(inputs_shape, inputs_shape)
        self.attention_2.build(inputs_shape, encoder_outputs_shape or inputs_shape)
        self.dense_proj.build(inputs_shape)
        for layernorm in (self.layernorm_1, self.layernorm_2, self.layernorm_3):
            layernorm.build(inputs_shape)

    def call(self, inputs, encoder_outputs, mask=None):
        length = ops.shape(inputs)[1]
        attention_mask = ops.expand_dims(ops.tril(ops.ones((length, length), "bool")), 0)  # (1, query, key)
        if mask is not None:
            attention_mask = ops.logical_and(attention_mask, ops.expand_dims(ops.cast(mask, "bool"), 1))
        attended = self.attention_1(query=inputs, value=inputs, key=inputs, attention_mask=attention_mask)
        x = self.layernorm_1(inputs + attended)
        attended = self.attention_2(
            query=x, value=encoder_outputs, key=encoder_outputs, attention_mask=attention_mask
        )
        x = self.layernorm_2(x + attended)
        return self.layernorm_3(x + self.dense_proj(x))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "embed_dim": self.embed_dim,
            "dense_dim": self.dense_dim,
            "num_heads": self.num_heads,
        }


def build_transformer_lm(
    vocab_size: int, sequence_length: int, embed_dim: int, dense_dim: int, num_heads: int
) -> keras.Model:
    """Word ids -> the next word's distribution at every position (the book's listing 12.10)."""
    word_ids = keras.Input(shape=(None,), dtype="int32", name="word_ids")
    x = PositionalEmbedding(sequence_length, vocab_size, embed_dim, name="positional_embedding")(word_ids)
    x = TransformerDecoder(embed_dim, dense_dim, num_heads, name="transformer_decoder")(x, x)
    next_word = layers.Dense(vocab_size, activation="softmax", dtype="float32", name="next_word")(x)
    return keras.Model(word_ids, next_word, name="transformer_lm")


def compile_model(model: keras.Model, learning_rate: float, jit_compile: bool) -> None:
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",  # padded positions are masked out of it
        jit_compile=jit_compile,
    )


def language_model_dataset(sequences: np.ndarray, batch_size: int, shuffle: bool, seed: int | None = None):
    """(x, y) = (seq[:, :-1], seq[:, 1:]): each position predicts the next word."""
    dataset = tf.data.Dataset.from_tensor_slices(sequences.astype(np.int32))
    if shuffle:
        dataset = dataset.shuffle(len(sequences), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).map(lambda seq: (seq[:, :-1], seq[:, 1:])).prefetch(tf.data.AUTOTUNE)


# --- Generating text ------------------------------------------------------------------------


def make_generator(model: keras.Model, draw_unknown: bool = True, return_distributions: bool = False):
    """A compiled `generate(prompt_ids, prompt_lengths, temperatures, top_k, top_p, num_words,
    rng_seed)` for `model`: one row per prompt and sampler.

    `prompt_ids` (batch, prompt) are right-padded with 0, `prompt_lengths` (batch,) count the real
    words; `top_k` 0 and `top_p` 1 turn those filters off. Padding is never drawn, nor [UNK] unless
    `draw_unknown` (the book draws it like any word). The prompts run through the model once,
    which gives the keys and values of both attentions at every prompt position; each new word then
    appends its own (a KV cache), so a step computes one position. Returns the drawn ids (batch,
    num_words), the entropy in bits of each distribution drawn from (batch, num_words) and, with
    `return_distributions`, the model's prediction at each step (batch, num_words, vocab).
    """
    embedding = model.get_layer("positional_embedding")
    decoder = model.get_layer("transformer_decoder")
    head = model.get_layer("next_word")
    attentions = (decoder.attention_1, decoder.attention_2)
    vocab_size = head.units

    # The keys and values of a position depend only on its embedding: both attentions read the
    # embedded sequence (the decoder is called as decoder(x, x)). MultiHeadAttention's projections
    # are its `_query_dense`, `_key_dense`, `_value_dense` and `_output_dense` layers; a test checks
    # this cache against the model's own forward pass.
    def keys_and_values(embedded):
        return [
            projection(embedded) for mha in attentions for projection in (mha._key_dense, mha._value_dense)
        ]

    def attend(mha, query, keys, values, visible):
        scores = tf.einsum("btnh,bsnh->bnts", mha._query_dense(query), keys) * mha._inverse_sqrt_key_dim
        scores = tf.where(visible[:, None, None, :], scores, tf.cast(-1e9, scores.dtype))
        weights = tf.nn.softmax(scores, axis=-1)
        return mha._output_dense(tf.einsum("bnts,bsnh->btnh", weights, values))

    def next_word_probs(word_ids, positions, cache, visible):
        """Append the words at `positions` (batch,) to the cache; the distribution of the word after."""
        embedded = embedding.token_embeddings(word_ids[:, None]) + embedding.position_embeddings(
            positions[:, None]
        )
        cache = [
            tf.concat([old, new], axis=1) for old, new in zip(cache, keys_and_values(embedded), strict=True)
        ]
        visible = tf.concat([visible, tf.ones_like(visible[:, :1])], axis=1)
        x = decoder.layernorm_1(embedded + attend(decoder.attention_1, embedded, *cache[0:2], visible))
        x = decoder.layernorm_2(x + attend(decoder.attention_2, x, *cache[2:4], visible))
        x = decoder.layernorm_3(x + decoder.dense_proj(x))
        return head(x)[:, 0], cache, visible

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, None), tf.int32),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((None,), tf.float32),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((None,), tf.float32),
            tf.TensorSpec((), tf.int32),
            tf.TensorSpec((2,), tf.int32),
        ],
    )
    def generate(prompt_ids, prompt_lengths, temperatures, top_k, top_p, num_words, rng_seed):
        probs = tf.gather(model(prompt_ids, training=False), prompt_lengths - 1, batch_dims=1)
        # Each row's cache is shifted right so that its prompt ends in the last column: then every
        # row appends its new word at the same column, and the padding sits in front, masked.
        prompt_width = tf.shape(prompt_ids)[1]
        columns = tf.range(prompt_width)[None, :]
        shift = prompt_width - prompt_lengths[:, None]
        embedded = embedding.token_embeddings(prompt_ids) + embedding.position_embeddings(columns)
        cache = [
            tf.gather(tensor, tf.math.floormod(columns - shift, prompt_width), batch_dims=1)
            for tensor in keys_and_values(embedded)
        ]
        visible = columns >= shift
        drawable = 1.0 - tf.one_hot(PADDING, vocab_size)
        if not draw_unknown:
            drawable -= tf.one_hot(UNKNOWN, vocab_size)
        filtered = tf.reduce_any(top_k > 0) | tf.reduce_any(top_p < 1.0)
        chosen = tf.TensorArray(tf.int32, size=num_words)
        entropies = tf.TensorArray(tf.float32, size=num_words)
        distributions = tf.TensorArray(tf.float32, size=num_words if return_distributions else 0)
        for step in tf.range(num_words):
            tf.autograph.experimental.set_loop_options(
                shape_invariants=[
                    (cache, [tf.TensorShape([None, None, *t.shape[2:]]) for t in cache]),
                    (visible, tf.TensorShape([None, None])),
                ]
            )
            words = probs * drawable
            # A model sure of padding can leave no word any float32 mass: then draw uniformly.
            words = tf.where(tf.reduce_sum(words, axis=-1, keepdims=True) > 0, words, drawable)
            log_probs = reweighted_log_probs(words, temperatures[:, None])
            if filtered:
                log_probs = truncated_log_probs(log_probs, top_k, top_p)
            next_ids = tf.random.stateless_categorical(
                log_probs, 1, seed=rng_seed + tf.stack([0, step]), dtype=tf.int32
            )[:, 0]
            chosen = chosen.write(step, next_ids)
            entropies = entropies.write(step, entropy_bits(log_probs))
            if return_distributions:
                distributions = distributions.write(step, probs)
            if step < num_words - 1:  # the last word is not fed back
                probs, cache, visible = next_word_probs(next_ids, prompt_lengths + step, cache, visible)
        ids, entropy = tf.transpose(chosen.stack()), tf.transpose(entropies.stack())
        if return_distributions:
            return ids, entropy, tf.transpose(distributions.stack(), [1, 0, 2])
        return ids, entropy

    return generate


@dataclass(frozen=True)
class Generated:
    prompt: str
    sampler: Sampler
    text: str  # the generated words, after the prompt
    entropy_bits: float  # mean entropy of the distributions drawn from


def generator_inputs(
    vocabulary: WordVocabulary,
    prompts: Sequence[str],
    samplers: Sequence[Sampler],
    num_words: int,
    rng_seed: int = 0,
    allow_unknown: bool = False,
) -> tuple[list[tuple[Sampler, int]], tuple[tf.Tensor, ...]]:
    """The rows (sampler, prompt index), sampler-major, and the generator's arguments for them."""
    prompt_ids, prompt_lengths = vocabulary.encode_prompts(prompts, allow_unknown)
    check_fits(int(prompt_lengths.max()), num_words, vocabulary.sequence_length)
    rows = [(sampler, index) for sampler in samplers for index in range(len(prompts))]
    return rows, (
        tf.constant(np.stack([prompt_ids[index] for _, index in rows])),
        tf.constant([prompt_lengths[index] for _, index in rows], tf.int32),
        tf.constant([sampler.temperature for sampler, _ in rows], tf.float32),
        tf.constant([sampler.top_k or 0 for sampler, _ in rows], tf.int32),
        tf.constant([sampler.top_p or 1.0 for sampler, _ in rows], tf.float32),
        tf.constant(num_words, tf.int32),
        tf.constant([rng_seed, 0], tf.int32),
    )


def generate_texts(
    generator,
    vocabulary: WordVocabulary,
    prompts: Sequence[str],
    samplers: Sequence[Sampler],
    num_words: int,
    rng_seed: int = 0,
    allow_unknown: bool = False,
) -> list[Generated]:
    """`num_words` words after each prompt with each sampler, all in one batch (sampler-major)."""
    rows, inputs = generator_inputs(vocabulary, prompts, samplers, num_words, rng_seed, allow_unknown)
    ids, entropies = generator(*inputs)[:2]
    return [
        Generated(prompts[index], sampler, vocabulary.decode(row), float(np.mean(entropy)))
        for (sampler, index), row, entropy in zip(rows, ids.numpy(), entropies.numpy(), strict=True)
    ]


def check_fits(prompt_words: int, num_words: int, sequence_length: int) -> None:
    """The model has position embeddings for `sequence_length` words: prompt and generated text
    must fit in them."""
    if prompt_words + num_words > sequence_length:
        raise TextError(
            f"a prompt of {prompt_words} words and {num_words} generated words exceed the model's "
            f"sequence length of {sequence_length} words: lower num_words to at most "
            f"{sequence_length - prompt_words} or shorten the prompt"
        )


# --- Training -------------------------------------------------------------------------------


class Perplexity(keras.callbacks.Callback):
    """Adds perplexity (exp of the mean cross-entropy per word) to the epoch logs; list it first."""

    def on_epoch_end(self, epoch, logs=None):
        for key in ("loss", "val_loss"):
            if logs is not None and key in logs:
                logs[key.replace("loss", "perplexity")] = math.exp(min(float(logs[key]), 700.0))


class EpochSamples(keras.callbacks.Callback):
    """The book's per-epoch sampling, with its two bugs fixed: a few temperatures after each epoch."""

    def __init__(self, vocabulary: WordVocabulary, prompt: str, temperatures, num_words: int):
        super().__init__()
        self.vocabulary, self.prompt, self.num_words = vocabulary, prompt, num_words
        self.samplers = [Sampler(temperature=temperature) for temperature in temperatures]
        self.records: list[dict[str, Any]] = []

    def on_train_begin(self, logs=None):
        self.generator = make_generator(self.model)

    def on_epoch_end(self, epoch, logs=None):
        if logs and not math.isfinite(float(logs.get("loss", 0.0))):
            return
        for sample in generate_texts(
            self.generator,
            self.vocabulary,
            [self.prompt],
            self.samplers,
            self.num_words,
            epoch,
            allow_unknown=True,
        ):
            self.records.append(
                {
                    "epoch": epoch + 1,
                    "temperature": sample.sampler.temperature,
                    "text": f"{sample.prompt} {sample.text}",
                    "entropy_bits": sample.entropy_bits,
                }
            )
            log.info(
                "epoch %d, temperature %.2f: %r", epoch + 1, sample.sampler.temperature, sample.text[:100]
            )
