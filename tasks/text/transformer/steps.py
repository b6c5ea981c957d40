"""The word-level Transformer's model steps: train it on the vectorized documents, then sample texts
from it with every sampler.

    python -m tasks.text.transformer.steps {train,sample} [--root DIR]
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
from tasks.text.corpus import TextError
from tasks.text.metrics import text_metrics
from tasks.text.transformer.model import (
    EpochSamples,
    Perplexity,
    build_transformer_lm,
    check_fits,
    compile_model,
    generate_texts,
    language_model_dataset,
    make_generator,
)
from tasks.text.transformer.params import Sampler, TransformerPaths, TransformerSampleParams, load
from tasks.text.transformer.vectorize import read_vocabulary
from tasks.training import ProgressLog, epoch_choice, restore_kept_epoch, save_model_atomically

log = logging.getLogger(__name__)


def train_transformer(
    paths: TransformerPaths,
    embed_dim: int,
    dense_dim: int,
    num_heads: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    epoch_sample_prompt: str,
    epoch_sample_words: int,
    epoch_sample_temperatures: Sequence[float],
    choice: EpochChoiceParams,
    blowup: BlowupParams,
    runtime: RuntimeParams,
) -> dict[str, float]:
    """Train the language model; the model kept (`choice.keep`: the epoch with the lowest validation
    loss, or the last) is saved when its epoch ends. Writes model, history and metrics."""
    strategy = configure_runtime(
        runtime.seed, runtime.dtype_policy, runtime.memory_growth, runtime.distribute
    )
    vocabulary = read_vocabulary(paths.prepared / "vocabulary.json")
    if epoch_sample_words:
        check_fits(len(epoch_sample_prompt.split()), epoch_sample_words, vocabulary.sequence_length)
    train = np.load(paths.prepared / "train.npy")
    validation = np.load(paths.prepared / "validation.npy")
    global_batch = batch_size * strategy.num_replicas_in_sync
    train_data = language_model_dataset(train, global_batch, shuffle=True, seed=runtime.seed)
    validation_data = (
        language_model_dataset(validation, global_batch, shuffle=False) if len(validation) else None
    )
    log.info(
        "training on %d documents (%d validation) of %d words, vocabulary %d, %d epochs",
        len(train),
        len(validation),
        vocabulary.sequence_length,
        len(vocabulary.tokens),
        epochs,
    )
    with strategy.scope():
        model = build_transformer_lm(
            len(vocabulary.tokens), vocabulary.sequence_length, embed_dim, dense_dim, num_heads
        )
        compile_model(model, learning_rate, runtime.jit_compile)

    monitored = "val_loss" if validation_data is not None else "loss"
    chosen = epoch_choice(lambda epoch: save_model_atomically(model, paths.model), choice, blowup, monitored)
    callbacks: list[keras.callbacks.Callback] = [Perplexity(), *chosen.callbacks]
    epoch_samples = None
    if epoch_sample_words and epoch_sample_temperatures:
        epoch_samples = EpochSamples(
            vocabulary, epoch_sample_prompt, epoch_sample_temperatures, epoch_sample_words
        )
        callbacks.append(epoch_samples)
    paths.history.parent.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = math.ceil(len(train) / global_batch)
    callbacks += [
        keras.callbacks.CSVLogger(str(paths.history)),
        ProgressLog(epochs, steps_per_epoch, global_batch),
    ]
    started = time.perf_counter()
    history = model.fit(
        train_data, validation_data=validation_data, epochs=epochs, callbacks=callbacks, verbose=0
    )
    seconds = time.perf_counter() - started
    restore_kept_epoch(model, chosen, paths.model, TextError, "lower transformer.train.learning_rate")

    storage.write_json(paths.epoch_samples, epoch_samples.records if epoch_samples else [])
    outcome = chosen.outcome()
    perplexity = monitored.replace("loss", "perplexity")
    metrics = {
        **outcome,
        **{
            f"{which}_{perplexity}": math.exp(outcome[f"{which}_{monitored}"])
            for which in ("kept", "best", "final")
        },
        "train_seconds": seconds,
        "documents_per_second": len(train) * len(history.epoch) / seconds,
    }
    storage.write_json(paths.train_metrics, metrics)
    log.info("trained: %s", metrics)
    return metrics


def sample_texts(
    paths: TransformerPaths, sample: TransformerSampleParams, runtime: RuntimeParams
) -> list[dict[str, Any]]:
    """Generate `num_words` words after each prompt with each sampler; write texts and metrics."""
    configure_runtime(runtime.seed, runtime.dtype_policy, runtime.memory_growth, runtime.distribute)
    vocabulary = read_vocabulary(paths.prepared / "vocabulary.json")
    samplers = sample.all_samplers
    allow_unknown = sample.unknown_prompt == "generate"
    generator = make_generator(keras.models.load_model(paths.model), sample.draw_unknown)

    def generate() -> list:
        return generate_texts(
            generator, vocabulary, sample.prompts, samplers, sample.num_words, runtime.seed, allow_unknown
        )

    generate()  # the first call traces and compiles the sampler: time the second
    started = time.perf_counter()
    generated = generate()
    seconds = time.perf_counter() - started
    corpus_words = set(vocabulary.tokens[2:])
    results = [sampler_result(sampler, generated, corpus_words) for sampler in samplers]
    paths.samples.mkdir(parents=True, exist_ok=True)
    for result in results:
        (paths.samples / f"{result['file']}.txt").write_text(
            "\n\n".join(f"{text['prompt']} {text['text']}" for text in result["texts"]) + "\n",
            encoding="utf-8",
        )
    storage.write_json(paths.samples / "samples.json", results)
    words_per_second = sample.num_words * len(generated) / seconds
    storage.write_json(
        paths.sample_metrics,
        {"words_per_second": words_per_second, **{result["label"]: result["metrics"] for result in results}},
    )
    log.info(
        "%d texts of %d words in %.3f s (%.0f words/s)",
        len(generated),
        sample.num_words,
        seconds,
        words_per_second,
    )
    return results


def sampler_result(sampler: Sampler, generated: list, corpus_words: set[str]) -> dict[str, Any]:
    """One sampler's texts (one per prompt) and their metrics, averaged over the prompts."""
    texts = [g for g in generated if g.sampler == sampler]
    per_text = [{"entropy_bits": g.entropy_bits, **text_metrics(g.text, corpus_words)} for g in texts]
    metrics = {key: float(np.mean([m[key] for m in per_text])) for key in per_text[0]}
    log.info("%s: %s", sampler.label, json.dumps(metrics))
    return {
        "label": sampler.label,
        "file": sampler.label.replace(", ", "_").replace("=", "_"),
        "sampler": sampler.model_dump(),
        "texts": [{"prompt": g.prompt, "text": g.text, **m} for g, m in zip(texts, per_text, strict=True)],
        "metrics": metrics,
    }


def train(root: Path) -> None:
    params, runtime = load(root)
    train_transformer(
        storage.under(root, TransformerPaths()),
        **params.model.model_dump(),
        **params.train.model_dump(exclude={"keep", "patience", "blowup"}),
        choice=params.train,
        blowup=params.train.blowup,
        runtime=runtime,
    )


def sample(root: Path) -> None:
    params, runtime = load(root)
    sample_texts(storage.under(root, TransformerPaths()), params.sample, runtime)


if __name__ == "__main__":
    sys.exit(run_steps({"train": train, "sample": sample}, __doc__))
