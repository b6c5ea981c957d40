"""The char-LSTM's model steps: train it on the prepared corpus, then sample texts from it.

    python -m tasks.text.char_lstm.steps {train,sample} [--root DIR]
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tasks import storage
from tasks.params import BlowupParams, EpochChoiceParams, RuntimeParams
from tasks.runtime import configure_runtime
from tasks.steps import run_steps
from tasks.text.char_lstm.model import (
    BitsPerCharacter,
    EpochSamples,
    build_char_lstm,
    compile_model,
    generate_text,
    make_generator,
)
from tasks.text.char_lstm.params import TextPaths, load
from tasks.text.corpus import TextError, corpus_seed, load_prepared
from tasks.text.metrics import text_metrics, words
from tasks.text.sequences import num_sequences, sequence_dataset
from tasks.training import ProgressLog, epoch_choice, restore_kept_epoch, save_model_atomically

log = logging.getLogger(__name__)


def train_char_lstm(
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
    choice: EpochChoiceParams,
    blowup: BlowupParams,
    runtime: RuntimeParams,
) -> dict[str, float]:
    """Train the LSTM; the model kept (`choice.keep`: the epoch with the lowest validation loss, or
    the last) is saved when its epoch ends. Writes model, history and metrics."""
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

    monitored = "val_loss" if validation_data is not None else "loss"
    chosen = epoch_choice(lambda epoch: save_model_atomically(model, paths.model), choice, blowup, monitored)
    callbacks: list[keras.callbacks.Callback] = [BitsPerCharacter(), *chosen.callbacks]
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
        ProgressLog(epochs, math.ceil(num_train / global_batch), global_batch),
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
    # The book's learning rate of 0.01 diverges late in its own 60-epoch run.
    restore_kept_epoch(
        model,
        chosen,
        paths.model,
        TextError,
        "lower text.train.learning_rate or set text.train.clipnorm (e.g. 1.0)",
    )

    storage.write_json(paths.epoch_samples, epoch_samples.records if epoch_samples else [])
    outcome = chosen.outcome()
    bits = monitored.replace("loss", "bits_per_char")
    metrics = {
        **outcome,
        **{f"{which}_{bits}": outcome[f"{which}_{monitored}"] / math.log(2.0) for which in ("kept", "best", "final")},
        "train_seconds": seconds,
        "sequences_per_second": num_train * len(history.epoch) / seconds,
    }
    storage.write_json(paths.train_metrics, metrics)
    log.info("trained: %s", metrics)
    return metrics


def sample_texts(
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
    storage.write_json(paths.samples / "samples.json", results)
    storage.write_json(paths.sample_metrics, metrics)
    return results


def train(root: Path) -> None:
    text, runtime = load(root)
    train_char_lstm(
        storage.under(root, TextPaths()),
        text.data.maxlen,
        text.data.step,
        **text.model.model_dump(),
        **text.train.model_dump(exclude={"keep", "patience", "blowup"}),
        choice=text.train,
        blowup=text.train.blowup,
        runtime=runtime,
    )


def sample(root: Path) -> None:
    text, runtime = load(root)
    sample_texts(
        storage.under(root, TextPaths()), **text.sample.model_dump(), maxlen=text.data.maxlen, runtime=runtime
    )


if __name__ == "__main__":
    sys.exit(run_steps({"train": train, "sample": sample}, __doc__))
