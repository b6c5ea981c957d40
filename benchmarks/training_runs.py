"""One training epoch of each implementation; `harness.run_in_child` runs each in its own process.

Each run imports only its own implementation (inside the function, on purpose), so the peak
memory of the process is that implementation's: data, model, training and the libraries it
pulls in.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import keras

from benchmarks.harness import current_rss_bytes, timed


class ThroughputAfterFirstBatch(keras.callbacks.Callback):
    """Times training from the end of the first batch, which carries tracing and compilation.

    Besides wall-clock time it keeps the process's CPU time (all threads): when other work
    shares the cores, CPU seconds per sequence move much less than wall-clock seconds.
    """

    def on_train_begin(self, logs=None):
        self.train_started = time.perf_counter()
        self.first_batch_seconds = 0.0
        self.first_batch_ended = self.last_batch_ended = self.train_started
        self.first_batch_cpu = self.last_batch_cpu = time.process_time()
        self.num_batches = 0

    def on_train_batch_end(self, batch, logs=None):
        now, cpu_now = time.perf_counter(), time.process_time()
        if batch == 0:
            self.first_batch_seconds = now - self.train_started
            self.first_batch_ended, self.first_batch_cpu = now, cpu_now
        self.last_batch_ended, self.last_batch_cpu = now, cpu_now
        self.num_batches = batch + 1

    def summary(self, num_sequences: int, batch_size: int) -> dict[str, Any]:
        seconds = self.last_batch_ended - self.first_batch_ended
        cpu_seconds = self.last_batch_cpu - self.first_batch_cpu
        num_timed = num_sequences - batch_size  # every batch but the first
        return {
            "num_sequences": num_sequences,
            "num_batches": self.num_batches,
            "first_batch_seconds": self.first_batch_seconds,
            "seconds_after_first_batch": seconds,
            "cpu_seconds_after_first_batch": cpu_seconds,
            "sequences_per_second": num_timed / seconds if seconds > 0 else float("nan"),
            "sequences_per_cpu_second": num_timed / cpu_seconds if cpu_seconds > 0 else float("nan"),
        }


def book_training(
    corpus_path: str, max_chars: int, num_sequences: int, batch_size: int, seed: int
) -> dict[str, Any]:
    """The book's data on the whole corpus, then `model.fit(x, y, batch_size, epochs=1)` on the first rows."""
    from benchmarks import book_text

    keras.utils.set_random_seed(seed)
    rss_after_imports = current_rss_bytes()

    def build_data() -> tuple:
        text = book_text.read_text(corpus_path, max_chars)
        sentences, next_chars = book_text.extract_sequences(text)
        chars, char_indices = book_text.char_vocabulary(text)
        return (sentences, next_chars, chars) + book_text.vectorize(
            sentences, next_chars, chars, char_indices
        )

    # The sentence lists stay alive through fit, as the book's module-level globals do.
    (sentences, next_chars, chars, x, y), data_seconds = timed(build_data)
    if num_sequences > len(x):
        raise ValueError(f"num_sequences={num_sequences} exceeds the {len(x)} sequences of the corpus")
    rss_after_data = current_rss_bytes()

    model = book_text.build_model(book_text.MAXLEN, len(chars))
    timer = ThroughputAfterFirstBatch()
    # verbose=0 for both implementations: the book's progress bar would only add console time.
    history = model.fit(
        x[:num_sequences], y[:num_sequences], batch_size=batch_size, epochs=1, verbose=0, callbacks=[timer]
    )
    return {
        "total_sequences": len(sentences),
        "vocab_size": len(chars),
        "data_bytes": x.nbytes + y.nbytes,
        "data_seconds": data_seconds,
        "rss_after_imports_bytes": rss_after_imports,
        "rss_after_data_bytes": rss_after_data,
        "loss": float(history.history["loss"][-1]),
        **timer.summary(num_sequences, batch_size),
    }


def gendl_training(
    corpus_path: str,
    max_chars: int,
    num_sequences: int,
    batch_size: int,
    seed: int,
    maxlen: int,
    step: int,
    units: int,
    learning_rate: float,
    validation_split: float,
) -> dict[str, Any]:
    """gendl's prepare and load, then `fit(sequence_dataset(...))` over the first `num_sequences` windows."""
    from tasks.text import corpus, sequences
    from tasks.text.char_lstm import model as char_lstm
    from tasks.text.char_lstm.data import prepare_corpus
    from tasks.text.char_lstm.params import TextPaths

    keras.utils.set_random_seed(seed)
    rss_after_imports = current_rss_bytes()

    def build_data() -> tuple:
        with tempfile.TemporaryDirectory(prefix="gendl-bench-") as directory:
            paths = TextPaths(corpus=Path(corpus_path), prepared=Path(directory) / "prepared")
            prepare_corpus(paths, maxlen, validation_split, max_chars)
            return corpus.load_prepared(paths.prepared)

    (vocabulary, train_ids, validation_ids), data_seconds = timed(build_data)
    rss_after_data = current_rss_bytes()

    # The first num_sequences windows: window i starts at i * step and predicts ids[i * step + maxlen].
    ids = train_ids[: (num_sequences - 1) * step + maxlen + 1]
    if sequences.num_sequences(len(ids), maxlen, step) != num_sequences:
        raise ValueError(f"num_sequences={num_sequences} exceeds the training part of the corpus")
    dataset = sequences.sequence_dataset(ids, maxlen, step, batch_size, shuffle=True, seed=seed)
    model = char_lstm.build_char_lstm(vocabulary.size, units)
    char_lstm.compile_model(model, learning_rate, clipnorm=0.0, jit_compile=False)
    timer = ThroughputAfterFirstBatch()
    history = model.fit(dataset, epochs=1, verbose=0, callbacks=[timer], shuffle=False)
    return {
        "total_sequences": sequences.num_sequences(len(train_ids), maxlen, step)
        + sequences.num_sequences(len(validation_ids), maxlen, step),
        "vocab_size": vocabulary.size,
        "data_bytes": train_ids.nbytes + validation_ids.nbytes,
        "batch_window_bytes": batch_size * maxlen * 4,  # one (batch, maxlen) int32 batch, made on the fly
        "data_seconds": data_seconds,
        "rss_after_imports_bytes": rss_after_imports,
        "rss_after_data_bytes": rss_after_data,
        "loss": float(history.history["loss"][-1]),
        **timer.summary(num_sequences, batch_size),
    }
