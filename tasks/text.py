"""Character-level text generation with an LSTM (Chollet, Deep Learning with Python, 8.1).

Reads top to bottom: params -> corpus and sequences -> model -> temperature sampling ->
text metrics -> training -> the pipeline steps DVC runs -> MLflow logging of their outputs.

Two departures from the book, both on purpose:
- sequences are windows over an integer-encoded corpus, one-hot encoded inside the graph,
  instead of a (sequences, maxlen, vocabulary) boolean array (hundreds of MB);
- sampling carries the LSTM state one character at a time for all temperatures in one batch,
  instead of calling `model.predict` on the whole 60-character window for every character.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import keras
import numpy as np
import pydantic
import tensorflow as tf
from keras import layers, ops

from tasks import data, steps, tracking
from tasks.params import Params, ParamsError, load_params, parse_section
from tasks.runtime import RuntimeParams, configure_runtime
from tasks.training import Progress, read_history, save_model_atomically

log = logging.getLogger(__name__)

TECHNIQUE = "text"


class TextError(ValueError):
    """Bad input for text generation: corpus, seed text or temperatures."""


# --- Params -------------------------------------------------------------------------------


Temperature = Annotated[float, pydantic.Field(gt=0.0, allow_inf_nan=False)]


class TextDataParams(Params):
    url: str = pydantic.Field(min_length=1)
    sha256: str
    max_chars: int = pydantic.Field(ge=0)  # 0 = whole corpus
    maxlen: int = pydantic.Field(ge=1)
    step: int = pydantic.Field(ge=1)
    validation_split: float = pydantic.Field(ge=0.0, lt=1.0)


class TextModelParams(Params):
    units: int = pydantic.Field(ge=1)
    num_layers: int = pydantic.Field(ge=1)
    embedding_dim: int = pydantic.Field(ge=0)  # 0 = one-hot, as in the book


class TextTrainParams(Params):
    epochs: int = pydantic.Field(ge=1)
    batch_size: int = pydantic.Field(ge=1)
    learning_rate: float = pydantic.Field(gt=0.0, allow_inf_nan=False)
    clipnorm: float = pydantic.Field(ge=0.0, allow_inf_nan=False)  # 0 = no clipping
    epoch_sample_chars: int = pydantic.Field(ge=0)
    epoch_sample_temperatures: list[Temperature]


class TextSampleParams(Params):
    temperatures: list[Temperature] = pydantic.Field(min_length=1)
    num_chars: int = pydantic.Field(ge=1)
    seed_text: str  # "" = a random maxlen-character window of the corpus

    @pydantic.field_validator("temperatures")
    @classmethod
    def _distinct(cls, temperatures: list[float]) -> list[float]:
        if len(set(temperatures)) != len(temperatures):
            raise ValueError("temperatures must be distinct")
        return temperatures


class TextParams(Params):
    data: TextDataParams
    model: TextModelParams
    train: TextTrainParams
    sample: TextSampleParams


@dataclass(frozen=True)
class TextPaths:
    """Where each step reads and writes, relative to the repo root; dvc.yaml declares the same."""

    corpus: Path = Path("data/text/corpus.txt")
    prepared: Path = Path("data/text/prepared")
    model: Path = Path("models/text/model.keras")
    history: Path = Path("outputs/text/history.csv")
    train_metrics: Path = Path("outputs/text/train_metrics.json")
    epoch_samples: Path = Path("outputs/text/epoch_samples.json")
    samples: Path = Path("outputs/text/samples")
    sample_metrics: Path = Path("outputs/text/sample_metrics.json")

    def under(self, root: Path) -> TextPaths:
        return TextPaths(**{field.name: root / getattr(self, field.name) for field in fields(self)})


def check_temperature(temperature: float) -> float:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise TextError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


# --- Corpus and sequences -------------------------------------------------------------------


def read_corpus(path: Path) -> str:
    """The corpus lower-cased; the few bytes that are not UTF-8 become U+FFFD, not a crash."""
    if not path.is_file():
        raise TextError(f"corpus {path} not found: run the download step first")
    text = path.read_bytes().decode("utf-8", errors="replace").lower()
    if not text.strip():
        raise TextError(f"corpus {path} is empty")
    return text


@dataclass(frozen=True)
class Vocabulary:
    chars: list[str]

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        index = {char: position for position, char in enumerate(self.chars)}
        unknown = sorted(set(text) - index.keys())
        if unknown:
            raise TextError(
                f"text has characters outside the corpus vocabulary: {''.join(unknown)!r} "
                f"(vocabulary: {''.join(self.chars)!r})"
            )
        dtype = np.uint8 if self.size <= 256 else np.int32
        return np.fromiter((index[char] for char in text), dtype=dtype, count=len(text))

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def build_vocabulary(text: str) -> Vocabulary:
    return Vocabulary(sorted(set(text)))


def split_corpus(ids: np.ndarray, maxlen: int, validation_split: float) -> tuple[np.ndarray, np.ndarray]:
    """Train on the first part, validate on the last: overlapping windows never straddle both."""
    if not _split_fits(len(ids), maxlen, validation_split):
        minimum = next(n for n in itertools.count(maxlen + 1) if _split_fits(n, maxlen, validation_split))
        raise TextError(
            f"corpus has {len(ids)} characters, too short for maxlen={maxlen} with "
            f"validation_split={validation_split}: need at least {minimum}"
        )
    num_validation = int(len(ids) * validation_split)
    return ids[: len(ids) - num_validation], ids[len(ids) - num_validation :]


def _split_fits(num_chars: int, maxlen: int, validation_split: float) -> bool:
    """Both parts hold at least one sequence and its target (maxlen + 1 characters)."""
    num_validation = int(num_chars * validation_split)
    needed = maxlen + 1
    return num_chars - num_validation >= needed and (validation_split == 0 or num_validation >= needed)


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


# --- Temperature sampling -------------------------------------------------------------------


def reweighted_log_probs(probs, temperature):
    """log of the book's `reweight_distribution`: p**(1/T) renormalised, in log space.

    Zero probabilities stay zero at any temperature (no log(0) NaNs); T -> 0 tends to argmax
    and huge T to uniform over the characters the model deems possible.
    """
    probs = ops.convert_to_tensor(probs, "float32")
    temperature = ops.cast(temperature, "float32")
    scaled = ops.where(probs > 0, ops.log(ops.maximum(probs, 1e-38)), -np.inf) / temperature
    return scaled - ops.logsumexp(scaled, axis=-1, keepdims=True)


def reweight_distribution(probs, temperature: float):
    """The book's reweighting: a new distribution with p_i ** (1 / temperature), normalised."""
    check_temperature(temperature)
    return ops.exp(reweighted_log_probs(probs, temperature))


def entropy_bits(log_probs):
    """Shannon entropy in bits along the last axis, with 0 * log 0 taken as 0."""
    terms = ops.where(log_probs > -np.inf, ops.exp(log_probs) * log_probs, 0.0)
    return -ops.sum(terms, axis=-1) / math.log(2.0)


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


# --- Text metrics ---------------------------------------------------------------------------

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def corpus_word_share(generated_words: Sequence[str], corpus_words: set[str]) -> float:
    """Share of generated words that are real words of the corpus."""
    if not generated_words:
        return 0.0
    return sum(word in corpus_words for word in generated_words) / len(generated_words)


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(tokens[i:] for i in range(n))))


def distinct_n(tokens: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams (1.0 = no n-gram repeats; low = repetitive text)."""
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(tokens: Sequence[str], n: int = 3) -> float:
    """Share of n-grams that already occurred earlier in the text (loops at low temperature)."""
    grams = ngrams(tokens, n)
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams) if grams else 0.0


def text_metrics(text: str, corpus_words: set[str]) -> dict[str, float]:
    tokens = words(text)
    return {
        "corpus_word_share": corpus_word_share(tokens, corpus_words),
        "distinct_1": distinct_n(tokens, 1),
        "distinct_2": distinct_n(tokens, 2),
        "repetition_rate": repetition_rate(tokens, 3),
    }


# --- Training -------------------------------------------------------------------------------


class BitsPerCharacter(keras.callbacks.Callback):
    """Adds loss in bits per character (nats / ln 2) to the epoch logs; list it first."""

    def on_epoch_end(self, epoch, logs=None):
        for key in ("loss", "val_loss"):
            if logs is not None and key in logs:
                logs[key.replace("loss", "bits_per_char")] = float(logs[key]) / math.log(2.0)


class StopOnNaN(keras.callbacks.Callback):
    """Checkpoints every good epoch; on a NaN/inf loss stops and restores the last good one.

    The book's learning rate of 0.01 diverges late in its own 60-epoch run.
    """

    def __init__(self, checkpoint: Path):
        super().__init__()
        self.checkpoint = checkpoint
        self.last_good_epoch = 0  # 1-based; 0 = none yet
        self.diverged_at_epoch = 0

    def on_train_batch_end(self, batch, logs=None):
        if logs and not math.isfinite(float(logs.get("loss", 0.0))):
            self.diverged_at_epoch = self._epoch + 1
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged_at_epoch or not all(math.isfinite(float(v)) for v in (logs or {}).values()):
            self.diverged_at_epoch = self.diverged_at_epoch or epoch + 1
            self.model.stop_training = True
            return
        save_model_atomically(self.model, self.checkpoint)
        self.last_good_epoch = epoch + 1

    def on_train_end(self, logs=None):
        if not self.diverged_at_epoch:
            return
        if not self.last_good_epoch:
            raise TextError(
                f"loss became NaN in epoch {self.diverged_at_epoch}, before any epoch finished: "
                "lower text.train.learning_rate or set text.train.clipnorm (e.g. 1.0)"
            )
        log.warning(
            "loss became NaN in epoch %d: stopped, keeping the model of epoch %d",
            self.diverged_at_epoch,
            self.last_good_epoch,
        )
        self.model.load_weights(self.checkpoint)


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


def compile_model(model: keras.Model, learning_rate: float, clipnorm: float, jit_compile: bool) -> None:
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate, clipnorm=clipnorm or None),
        loss="sparse_categorical_crossentropy",  # = the book's categorical CE on one-hot targets
        jit_compile=jit_compile,
    )


# --- Pipeline steps (the commands in dvc.yaml) ------------------------------------------------


def download(paths: TextPaths, url: str, sha256: str) -> Path:
    """Fetch the corpus (through the Keras cache) into `paths.corpus`."""
    log.info("fetching %s", url)
    destination = data.fetch(url, paths.corpus, sha256)
    log.info("corpus: %s (%d bytes)", destination, destination.stat().st_size)
    return destination


def prepare(paths: TextPaths, maxlen: int, validation_split: float, max_chars: int = 0) -> dict[str, int]:
    """Encode the corpus as integers and split it; the sequences themselves are never stored."""
    text = read_corpus(paths.corpus)
    if max_chars:
        text = text[:max_chars]
    vocabulary = build_vocabulary(text)
    train_ids, validation_ids = split_corpus(vocabulary.encode(text), maxlen, validation_split)
    paths.prepared.mkdir(parents=True, exist_ok=True)
    np.save(paths.prepared / "train_ids.npy", train_ids)
    np.save(paths.prepared / "validation_ids.npy", validation_ids)
    data.write_json(paths.prepared / "vocabulary.json", {"chars": vocabulary.chars})
    stats = {"num_chars": len(text), "vocab_size": vocabulary.size, "num_train_chars": len(train_ids)}
    log.info("prepared: %s", stats)
    return stats


def load_prepared(prepared: Path) -> tuple[Vocabulary, np.ndarray, np.ndarray]:
    chars = json.loads((prepared / "vocabulary.json").read_text(encoding="utf-8"))["chars"]
    return (
        Vocabulary(chars),
        np.load(prepared / "train_ids.npy"),
        np.load(prepared / "validation_ids.npy"),
    )


def corpus_seed(train_ids: np.ndarray, vocabulary: Vocabulary, maxlen: int, seed: int) -> str:
    start = np.random.default_rng(seed).integers(0, len(train_ids) - maxlen)
    return vocabulary.decode(train_ids[start : start + maxlen])


def train(
    paths: TextPaths,
    maxlen: int,
    step: int,
    units: int,
    num_layers: int,
    embedding_dim: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    clipnorm: float,
    epoch_sample_chars: int,
    epoch_sample_temperatures: Sequence[float],
    runtime: RuntimeParams,
) -> dict[str, float]:
    """Train the LSTM, checkpointing each good epoch; writes model, history and metrics."""
    strategy = configure_runtime(
        runtime.seed, runtime.dtype_policy, runtime.memory_growth, runtime.distribute
    )
    vocabulary, train_ids, validation_ids = load_prepared(paths.prepared)
    global_batch = batch_size * strategy.num_replicas_in_sync
    train_data = sequence_dataset(train_ids, maxlen, step, global_batch, shuffle=True, seed=runtime.seed)
    validation_data = (
        sequence_dataset(validation_ids, maxlen, step, global_batch, shuffle=False)
        if len(validation_ids) > maxlen
        else None
    )
    num_train = num_sequences(len(train_ids), maxlen, step)
    log.info(
        "training on %d sequences (%d validation), vocabulary %d, %d epochs",
        num_train,
        num_sequences(len(validation_ids), maxlen, step),
        vocabulary.size,
        epochs,
    )
    with strategy.scope():
        model = build_char_lstm(vocabulary.size, units, num_layers, embedding_dim)
        compile_model(model, learning_rate, clipnorm, runtime.jit_compile)

    nan_guard = StopOnNaN(paths.model)
    callbacks: list[keras.callbacks.Callback] = [BitsPerCharacter(), nan_guard]
    epoch_samples = None
    if epoch_sample_chars and epoch_sample_temperatures:
        seed_text = corpus_seed(train_ids, vocabulary, maxlen, runtime.seed)
        epoch_samples = EpochSamples(
            vocabulary, seed_text, epoch_sample_temperatures, epoch_sample_chars, runtime.jit_compile
        )
        callbacks.append(epoch_samples)
    paths.history.parent.mkdir(parents=True, exist_ok=True)
    callbacks += [
        keras.callbacks.CSVLogger(str(paths.history)),
        Progress(epochs, math.ceil(num_train / global_batch), global_batch),
    ]
    started = time.perf_counter()
    history = model.fit(
        train_data,
        validation_data=validation_data,
        epochs=epochs,
        callbacks=callbacks,
        shuffle=False,
        verbose=0,
    )  # shuffle=False: the dataset reshuffles itself every epoch
    seconds = time.perf_counter() - started

    data.write_json(paths.epoch_samples, epoch_samples.records if epoch_samples else [])
    monitored = "val_loss" if validation_data is not None else "loss"
    losses = history.history[monitored][: nan_guard.last_good_epoch]
    best_epoch = int(np.argmin(losses))
    metrics = {
        "best_epoch": best_epoch + 1,
        f"best_{monitored}": losses[best_epoch],
        f"best_{monitored.replace('loss', 'bits_per_char')}": losses[best_epoch] / math.log(2.0),
        "epochs_completed": nan_guard.last_good_epoch,
        "diverged": int(bool(nan_guard.diverged_at_epoch)),
        "train_seconds": seconds,
        "sequences_per_second": num_train * len(history.epoch) / seconds,
    }
    data.write_json(paths.train_metrics, metrics)
    log.info("trained: %s", metrics)
    return metrics


def sample(
    paths: TextPaths,
    temperatures: Sequence[float],
    num_chars: int,
    seed_text: str,
    maxlen: int,
    runtime: RuntimeParams,
) -> list[dict[str, Any]]:
    """Generate `num_chars` characters per temperature after one seed; write texts and metrics."""
    configure_runtime(runtime.seed, runtime.dtype_policy, runtime.memory_growth, runtime.distribute)
    vocabulary, train_ids, validation_ids = load_prepared(paths.prepared)
    seed_text = seed_text.lower() or corpus_seed(train_ids, vocabulary, maxlen, runtime.seed)
    vocabulary.encode(seed_text)  # fail on unknown characters before loading the model
    model = keras.models.load_model(paths.model)
    generator = make_generator(model, runtime.jit_compile)
    log.info("generating %d characters at temperatures %s after %r", num_chars, list(temperatures), seed_text)
    started = time.perf_counter()
    generated = generate_text(generator, vocabulary, seed_text, temperatures, num_chars, runtime.seed)
    seconds = time.perf_counter() - started

    corpus_words = set(words(vocabulary.decode(np.concatenate([train_ids, validation_ids]))))
    results, metrics = [], {"chars_per_second": num_chars * len(generated) / seconds}
    for generation in generated:
        generation_metrics = {
            "entropy_bits": generation.entropy_bits,
            **text_metrics(generation.text, corpus_words),
        }
        results.append(
            {
                "temperature": generation.temperature,
                "seed": seed_text,
                "text": generation.text,
                "metrics": generation_metrics,
            }
        )
        metrics[f"temperature_{generation.temperature:g}"] = generation_metrics
        log.info("temperature %g: %s", generation.temperature, json.dumps(generation_metrics))
    paths.samples.mkdir(parents=True, exist_ok=True)
    for result in results:
        (paths.samples / f"temperature_{result['temperature']:g}.txt").write_text(
            result["seed"] + result["text"] + "\n", encoding="utf-8"
        )
    data.write_json(paths.samples / "samples.json", results)
    data.write_json(paths.sample_metrics, metrics)
    return results


# --- MLflow logging of the steps' outputs (called by the flow) -----------------------------------


def log_training(run_id: str, paths: TextPaths) -> dict[str, float]:
    """Per-epoch losses, the training summary, the per-epoch samples and the model."""
    tracking.log_metric_rows(run_id, read_history(paths.history), step_key="epoch")
    metrics = json.loads(paths.train_metrics.read_text())
    tracking.log_metrics(run_id, {f"train.{key}": value for key, value in metrics.items()})
    epoch_samples = json.loads(paths.epoch_samples.read_text(encoding="utf-8"))
    if epoch_samples:
        import mlflow

        tracking.log_metric_rows(  # MLflow groups "epoch_samples/..." charts together
            run_id,
            [
                {
                    "epoch": r["epoch"],
                    f"epoch_samples/temperature_{r['temperature']:g}/entropy_bits": r["entropy_bits"],
                }
                for r in epoch_samples
            ],
        )
        mlflow.log_table(
            {key: [record[key] for record in epoch_samples] for key in ("epoch", "temperature", "text")},
            "epoch_samples.json",
            run_id=run_id,
        )
        for epoch in sorted({record["epoch"] for record in epoch_samples}):
            mlflow.log_text(
                "\n\n".join(
                    f"--- temperature {record['temperature']:g}\n{record['text']}"
                    for record in epoch_samples
                    if record["epoch"] == epoch
                ),
                f"epoch_samples/epoch_{epoch:03d}.txt",
                run_id=run_id,
            )
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    model = keras.models.load_model(paths.model)
    vocab_size = model.output_shape[-1]
    signature = ModelSignature(  # any batch, any sequence length -> next-character distribution
        Schema([TensorSpec(np.dtype("int32"), (-1, -1), "char_ids")]),
        Schema([TensorSpec(np.dtype("float32"), (-1, vocab_size), "next_char")]),
    )
    model_uri = tracking.log_keras_model(run_id, model, signature=signature)
    tracking.set_tags(run_id, {"model_uri": model_uri})
    return metrics


def log_samples(parent_run_id: str, experiment_id: str, paths: TextPaths) -> list[str]:
    """One child run per temperature with its text and metrics, for side-by-side comparison."""
    import mlflow

    child_ids = []
    for result in json.loads((paths.samples / "samples.json").read_text(encoding="utf-8")):
        with mlflow.start_run(
            run_name=f"temperature={result['temperature']:g}",
            experiment_id=experiment_id,
            parent_run_id=parent_run_id,
            nested=True,
        ) as child:
            mlflow.log_params(
                {
                    "temperature": result["temperature"],
                    "num_chars": len(result["text"]),
                    "seed_text": result["seed"][:500],
                }
            )
            mlflow.log_metrics(result["metrics"])
            mlflow.log_text(result["seed"] + result["text"], "sample.txt")
            child_ids.append(child.info.run_id)
    metrics = json.loads(paths.sample_metrics.read_text())
    tracking.log_metrics(parent_run_id, {"sample.chars_per_second": metrics["chars_per_second"]})
    return child_ids


# --- Command line: `python -m tasks.text <step>` from the repo root, as dvc.yaml runs it --------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.text", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["download", "prepare", "train", "sample"])
    parser.add_argument("--root", type=Path, default=Path("."), help="repo root holding params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    try:
        params = load_params(args.root)
        text = parse_section(params, TECHNIQUE, TextParams)
        runtime = parse_section(params, "runtime", RuntimeParams)
        paths = TextPaths().under(args.root)
        if args.step == "download":
            download(paths, text.data.url, text.data.sha256)
        elif args.step == "prepare":
            prepare(paths, text.data.maxlen, text.data.validation_split, text.data.max_chars)
        elif args.step == "train":
            train(
                paths,
                text.data.maxlen,
                text.data.step,
                **text.model.model_dump(),
                **text.train.model_dump(),
                runtime=runtime,
            )
        else:
            sample(paths, **text.sample.model_dump(), maxlen=text.data.maxlen, runtime=runtime)
    except (ParamsError, TextError, data.DownloadError) as error:
        return steps.report_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
