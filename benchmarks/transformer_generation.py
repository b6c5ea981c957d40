"""Word-level Transformer generation: gendl (`tasks.text.transformer`) against the book's loop.

    KERAS_HOME=/path/to/keras-home python -m benchmarks.transformer_generation [--quick]

a. sampling speed (words per second) at the book's configuration (vocabulary 15,000, sequence
   length 100, embedding 256, dense 2048, 2 heads; "This movie", 50 words, temperatures 0.2, 0.5,
   0.7, 1.0, 1.5), one model with random weights driven by both loops; then where a step's time
   goes (batch size, model size, the output layer's weights against memory bandwidth);
b. same distributions: a small model trained briefly on the Nietzsche corpus; for each word gendl
   drew, the book's fixed loop run on the same prefix must give the distribution gendl drew from,
   the book's printed loop reads another position, and its temperatures are never applied.

The vocabulary is the Nietzsche corpus's words (Keras cache: datasets/nietzsche.txt), with the
prompts' words, padded with synthetic words to 15,000 for (a). Prints markdown tables and writes
benchmarks/results/transformer_generation[_quick].json.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from benchmarks import book_text, book_transformer
from benchmarks.harness import REPO_ROOT, environment, markdown_table, time_calls, timed, write_results
from tasks.text.corpus import read_corpus
from tasks.text.sampling import reweighted_log_probs
from tasks.text.transformer.data import word_chunks
from tasks.text.transformer.model import (
    build_transformer_lm,
    compile_model,
    generate_texts,
    generator_inputs,
    language_model_dataset,
    make_generator,
)
from tasks.text.transformer.params import Sampler
from tasks.text.transformer.vectorize import PADDING, WordVocabulary, make_vectorizer

SEED = 1337
TARGETS = {"sampling_speedup": 50.0}  # gendl at the book's setting against the book's loop as printed
PROMPTS = ("This movie", "I thought this film", "The acting was", "What a waste of")
FILTER_SAMPLERS = (Sampler(temperature=1.0, top_k=40), Sampler(temperature=1.0, top_p=0.9))  # params.yaml's
CHECK_PROMPT = "The free spirit"  # words of the Nietzsche corpus, for the trained model of (b)
TINY = {"vocab_size": 100, "embed_dim": 8, "dense_dim": 16}  # a model whose step is all op overhead


@dataclass(frozen=True)
class Scale:
    vocab_size: int
    sequence_length: int
    embed_dim: int
    dense_dim: int
    num_heads: int
    num_words: int  # words generated per prompt and sampler
    gendl_repeats: int  # timed generate calls after the warm-up one
    sweep_batches: tuple[int, ...]  # batch sizes of the per-step sweep
    ladder_batches: tuple[int, ...]  # batch sizes of the model-size ladder
    copy_mib: int  # array size of the memory bandwidth measurement (larger than the L3 cache)
    check_vocab_size: int  # (b): the small trained model
    check_embed_dim: int
    check_dense_dim: int
    check_documents: int  # Nietzsche chunks of sequence_length words to train on; 0 = all
    check_epochs: int


REAL = Scale(
    vocab_size=book_transformer.VOCAB_SIZE,
    sequence_length=book_transformer.SEQUENCE_LENGTH,
    embed_dim=book_transformer.EMBED_DIM,
    dense_dim=book_transformer.LATENT_DIM,
    num_heads=book_transformer.NUM_HEADS,
    num_words=book_transformer.GENERATE_LENGTH,
    gendl_repeats=5,
    sweep_batches=(1, 5, 20, 80),
    ladder_batches=(5, 20),
    copy_mib=256,
    check_vocab_size=5000,
    check_embed_dim=64,
    check_dense_dim=256,
    check_documents=0,
    check_epochs=10,
)
QUICK = Scale(
    vocab_size=2000,
    sequence_length=book_transformer.SEQUENCE_LENGTH,
    embed_dim=32,
    dense_dim=64,
    num_heads=2,
    num_words=8,
    gendl_repeats=2,
    sweep_batches=(1, 5),
    ladder_batches=(5,),
    copy_mib=32,
    check_vocab_size=500,
    check_embed_dim=16,
    check_dense_dim=32,
    check_documents=100,
    check_epochs=1,
)


# --- Vocabulary ---------------------------------------------------------------------------------


def corpus_vocabulary(text: str, max_tokens: int, sequence_length: int) -> list[str]:
    """The corpus's likeliest words as the book's TextVectorization adapts to them ("" and [UNK] first)."""
    vectorizer = make_vectorizer(max_tokens=max_tokens)
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(word_chunks(text, sequence_length)).batch(1024))
    return vectorizer.get_vocabulary()


def speed_vocabulary(text: str, vocab_size: int, sequence_length: int, prompts: Sequence[str]) -> list[str]:
    """`vocab_size` words: the corpus's, then the prompts' missing words, then synthetic ones."""
    vocabulary = corpus_vocabulary(text, vocab_size, sequence_length)
    known = set(vocabulary)
    missing = sorted({word for prompt in prompts for word in prompt.lower().split()} - known)
    vocabulary = vocabulary[: vocab_size - len(missing)] + missing
    vocabulary += [f"synthetic{index:05d}" for index in range(vocab_size - len(vocabulary))]
    assert len(vocabulary) == len(set(vocabulary)) == vocab_size
    return vocabulary


# --- a. Speed -------------------------------------------------------------------------------------


def measure_book(
    model: keras.Model, vocabulary: list[str], scale: Scale, fixed: bool, num_words: int
) -> dict[str, Any]:
    """The book's loop at the five temperatures, `num_words` words each, after one untimed word."""
    text_vectorization = book_transformer.make_text_vectorization(
        vocabulary, len(vocabulary), scale.sequence_length
    )
    tokens_index = dict(enumerate(text_vectorization.get_vocabulary()))
    np.random.seed(SEED)

    def generate(length: int, temperatures: Sequence[float]) -> dict[float, str]:
        return book_transformer.book_generate(
            model, text_vectorization, tokens_index, book_transformer.PROMPT, length, temperatures, fixed
        )

    _, first_seconds = timed(lambda: generate(1, (1.0,)))
    texts, seconds = timed(lambda: generate(num_words, book_transformer.TEMPERATURES))
    total_words = num_words * len(book_transformer.TEMPERATURES)
    return {
        "words_per_temperature": num_words,
        "first_word_seconds": first_seconds,
        "seconds": seconds,
        "words_per_second": total_words / seconds,
        "ms_per_word": 1000 * seconds / total_words,
        "texts": {str(temperature): text for temperature, text in texts.items()},
    }


def book_word_parts(
    model: keras.Model, vocabulary: list[str], scale: Scale, repeats: int = 20
) -> dict[str, float]:
    """Milliseconds of each part of one book word (median of `repeats`), at a 40-word sentence."""
    text_vectorization = book_transformer.make_text_vectorization(
        vocabulary, len(vocabulary), scale.sequence_length
    )
    sentence = " ".join([book_transformer.PROMPT] + vocabulary[2:40])
    tokenized = text_vectorization([sentence])
    predictions = model(tokenized)
    compiled = tf.function(lambda ids: model(ids, training=False))
    compiled(tokenized)  # traces

    def median_ms(function) -> float:
        return 1000 * time_calls(function, warmup=1, repeats=repeats).median_seconds

    return {
        "vectorize_ms": median_ms(lambda: text_vectorization([sentence])),
        "model_eager_ms": median_ms(lambda: model(tokenized)),
        "model_compiled_ms": median_ms(lambda: compiled(tokenized)),
        "sample_next_ms": median_ms(lambda: book_transformer.sample_next(predictions[0, 39, :], 1.0)),
    }


def gendl_configurations() -> dict[str, tuple[tuple[str, ...], list[Sampler]]]:
    temperatures = [Sampler(temperature=t) for t in book_transformer.TEMPERATURES]
    filtered = temperatures + list(FILTER_SAMPLERS)
    return {
        "book_setting": ((book_transformer.PROMPT,), temperatures),
        "four_prompts": (PROMPTS, temperatures),
        "with_top_k_top_p": ((book_transformer.PROMPT,), filtered),
        "four_prompts_with_top_k_top_p": (PROMPTS, filtered),
    }


def measure_gendl(generator, vocabulary: list[str], scale: Scale) -> dict[str, Any]:
    """`generate_texts` for each configuration: warm-up call (the first one traces), then repeats."""
    word_vocabulary = WordVocabulary(tuple(vocabulary), scale.sequence_length)
    word_vocabulary.vectorizer  # built (then cached) outside the timings, as a loaded model's would be
    results: dict[str, Any] = {}
    for name, (prompts, samplers) in gendl_configurations().items():
        last: list = []

        def generate(prompts=prompts, samplers=samplers, last=last) -> None:
            last[:] = generate_texts(generator, word_vocabulary, prompts, samplers, scale.num_words, SEED)

        timing = time_calls(generate, warmup=1, repeats=scale.gendl_repeats)
        _, arguments = generator_inputs(word_vocabulary, prompts, samplers, scale.num_words, SEED)
        alone = time_calls(
            lambda arguments=arguments: generator(*arguments), warmup=1, repeats=scale.gendl_repeats
        )
        num_rows = len(prompts) * len(samplers)
        results[name] = {
            "num_prompts": len(prompts),
            "samplers": [sampler.label for sampler in samplers],
            "rows": num_rows,
            "words": num_rows * scale.num_words,
            "warmup_seconds": timing.warmup_seconds[0],
            "seconds": timing.seconds,
            "median_seconds": timing.median_seconds,
            "words_per_second": num_rows * scale.num_words / timing.median_seconds,
            "ms_per_step": 1000 * timing.median_seconds / scale.num_words,
            "generator_alone_seconds": alone.seconds,
            "generator_alone_words_per_second": num_rows * scale.num_words / alone.median_seconds,
            "texts": [{"prompt": g.prompt, "sampler": g.sampler.label, "text": g.text} for g in last],
        }
    first = results["book_setting"]
    first["tracing_seconds"] = first["warmup_seconds"] - first["median_seconds"]
    return results


def step_ms(generator, batch: int, num_words: int, repeats: int) -> float:
    """Milliseconds per generated position of `generator` at `batch` rows (two-word prompts, T=1)."""
    arguments = (
        tf.fill((batch, 2), 5),
        tf.fill((batch,), 2),
        tf.ones((batch,)),
        tf.zeros((batch,), tf.int32),
        tf.ones((batch,)),
        tf.constant(num_words),
        tf.constant([SEED, 0]),
    )
    return (
        1000 * time_calls(lambda: generator(*arguments), warmup=1, repeats=repeats).median_seconds / num_words
    )


def head_ms(head: keras.layers.Layer, batch: int, iterations: int = 200) -> float:
    """Milliseconds of the output layer alone (matmul + softmax) on (batch, embed), in a compiled loop."""
    inputs = tf.random.stateless_normal((batch, head.kernel.shape[0]), seed=[SEED, 1])

    @tf.function
    def run(x):
        total = tf.zeros(())
        for step in tf.range(iterations):  # shifting the input keeps the call inside the loop
            total += tf.reduce_sum(head(x + tf.cast(step, x.dtype) * 1e-6))
        return total

    return 1000 * time_calls(lambda: run(inputs), warmup=1, repeats=3).median_seconds / iterations


def copy_gb_per_second(mib: int) -> float:
    """Main-memory bandwidth: bytes read + written per second by a NumPy copy of `mib` MiB."""
    source = np.ones(mib * 2**20 // 4, np.float32)
    destination = np.empty_like(source)
    seconds = time_calls(lambda: np.copyto(destination, source), warmup=1, repeats=5).median_seconds
    return 2 * source.nbytes / seconds / 1e9


def weights_read_per_step(model: keras.Model) -> dict[str, int]:
    """Bytes of the weights a KV-cache step reads in full: all but the two embedding tables, of which
    it gathers one row per batch row."""
    embedding = model.get_layer("positional_embedding")
    skipped = {id(w) for w in embedding.weights}
    head = model.get_layer("next_word")
    head_bytes = sum(int(np.prod(w.shape)) * 4 for w in head.weights)
    total = sum(int(np.prod(w.shape)) * 4 for w in model.weights if id(w) not in skipped)
    return {"head_bytes": head_bytes, "decoder_bytes": total - head_bytes, "total_bytes": total}


def measure_breakdown(model: keras.Model, generator, scale: Scale) -> dict[str, Any]:
    """Where a gendl step's time goes: batch size, model size, the output layer, memory bandwidth."""
    repeats = max(2, scale.gendl_repeats - 2)
    sweep = {str(batch): step_ms(generator, batch, scale.num_words, repeats) for batch in scale.sweep_batches}
    ladder: dict[str, dict[str, float]] = {}
    models = {
        "tiny (vocab 100, embed 8, dense 16)": build_transformer_lm(
            TINY["vocab_size"], scale.sequence_length, TINY["embed_dim"], TINY["dense_dim"], scale.num_heads
        ),
        f"decoder (vocab 100, embed {scale.embed_dim}, dense {scale.dense_dim})": build_transformer_lm(
            TINY["vocab_size"], scale.sequence_length, scale.embed_dim, scale.dense_dim, scale.num_heads
        ),
    }
    for name, small_model in models.items():
        small_generator = make_generator(small_model)
        ladder[name] = {
            str(batch): step_ms(small_generator, batch, scale.num_words, repeats)
            for batch in scale.ladder_batches
        }
    ladder[f"full (vocab {scale.vocab_size})"] = {
        str(batch): step_ms(generator, batch, scale.num_words, repeats) for batch in scale.ladder_batches
    }
    head = model.get_layer("next_word")
    weights = weights_read_per_step(model)
    head_times = {str(batch): head_ms(head, batch) for batch in sorted({1, *scale.ladder_batches})}
    bandwidth = copy_gb_per_second(scale.copy_mib)
    return {
        "ms_per_step_by_batch": sweep,
        "words_per_second_by_batch": {batch: int(batch) * 1000 / ms for batch, ms in sweep.items()},
        "ladder_ms_per_step": ladder,
        "head_ms_by_batch": head_times,
        "head_gb_per_second_batch_1": weights["head_bytes"] / (head_times["1"] / 1000) / 1e9,
        "weights_read_per_step": weights,
        "memory_copy_gb_per_second": bandwidth,
        "weights_at_memory_bandwidth_ms": 1000 * weights["total_bytes"] / (bandwidth * 1e9),
    }


def measure_speed(text: str, scale: Scale) -> dict[str, Any]:
    vocabulary = speed_vocabulary(text, scale.vocab_size, scale.sequence_length, PROMPTS)
    keras.utils.set_random_seed(SEED)
    model = build_transformer_lm(
        scale.vocab_size, scale.sequence_length, scale.embed_dim, scale.dense_dim, scale.num_heads
    )
    book = {
        "as_printed": measure_book(model, vocabulary, scale, fixed=False, num_words=scale.num_words),
        "fixed": measure_book(model, vocabulary, scale, fixed=True, num_words=scale.num_words),
        "word_parts": book_word_parts(model, vocabulary, scale),
    }
    generator = make_generator(model)
    return {
        "vocabulary_size": len(vocabulary),
        "synthetic_words": sum(re.fullmatch(r"synthetic\d{5}", word) is not None for word in vocabulary),
        "book": book,
        "gendl": measure_gendl(generator, vocabulary, scale),
        "breakdown": measure_breakdown(model, generator, scale),
    }


# --- b. Same distributions ------------------------------------------------------------------------


def entropy_bits(distribution: np.ndarray) -> float:
    distribution = np.asarray(distribution, np.float64)
    positive = distribution[distribution > 0]
    return float(-np.sum(positive * np.log2(positive)))


def book_drawn_from(predictions: np.ndarray, temperature: float) -> np.ndarray:
    """The distribution `sample_next(predictions, temperature)` draws from (float64)."""
    with np.errstate(divide="ignore"):
        return book_transformer.reweight_distribution(np.asarray(predictions).astype("float64"), temperature)


def train_check_model(text: str, scale: Scale) -> tuple[keras.Model, list[str], dict[str, float]]:
    """A small language model trained on the corpus's chunks for `check_epochs` epochs."""
    vocabulary = corpus_vocabulary(text, scale.check_vocab_size, scale.sequence_length)
    vectorizer = make_vectorizer(vocabulary=vocabulary, sequence_length=scale.sequence_length)
    chunks = word_chunks(text, scale.sequence_length)
    chunks = chunks[: scale.check_documents] if scale.check_documents else chunks
    sequences = vectorizer(tf.constant(chunks)).numpy()
    sequences = sequences[(sequences != PADDING).sum(axis=1) >= 2]
    keras.utils.set_random_seed(SEED)
    model = build_transformer_lm(
        len(vocabulary), scale.sequence_length, scale.check_embed_dim, scale.check_dense_dim, scale.num_heads
    )
    compile_model(model, learning_rate=1e-3, jit_compile=False)
    history, seconds = timed(
        lambda: model.fit(
            language_model_dataset(sequences, 64, shuffle=True, seed=SEED),
            epochs=scale.check_epochs,
            verbose=0,
        )
    )
    loss = float(history.history["loss"][-1])
    training = {
        "documents": len(sequences),
        "epochs": scale.check_epochs,
        "seconds": seconds,
        "final_loss": loss,
        "final_perplexity": math.exp(loss),
    }
    return model, vocabulary, training


def check_distributions(text: str, scale: Scale) -> dict[str, Any]:
    model, vocabulary, training = train_check_model(text, scale)
    temperatures = book_transformer.TEMPERATURES
    word_vocabulary = WordVocabulary(tuple(vocabulary), scale.sequence_length)
    prompt_ids, prompt_lengths = word_vocabulary.encode_prompts([CHECK_PROMPT], allow_unknown=False)
    num_rows, prompt_length = len(temperatures), int(prompt_lengths[0])
    generator = make_generator(model, return_distributions=True)
    ids, entropies, distributions = (
        output.numpy()
        for output in generator(
            tf.constant(np.repeat(prompt_ids, num_rows, axis=0)),
            tf.constant(np.repeat(prompt_lengths, num_rows)),
            tf.constant(temperatures, tf.float32),
            tf.zeros((num_rows,), tf.int32),
            tf.ones((num_rows,)),
            tf.constant(scale.num_words),
            tf.constant([SEED, 0]),
        )
    )
    never_padding = 1.0 - np.eye(len(vocabulary), dtype=np.float32)[PADDING]
    text_vectorization = book_transformer.make_text_vectorization(
        vocabulary, len(vocabulary), scale.sequence_length
    )
    per_temperature = {}
    for row, temperature in enumerate(temperatures):
        gendl_drawn = np.exp(reweighted_log_probs(distributions[row] * never_padding, temperature).numpy())
        raw, drawn, printed_raw, printed_drawn, printed_total_variation, entropy = [], [], [], [], [], []
        mismatched_prefixes = 0
        for step in range(scale.num_words):
            # The prompt and the words gendl drew before this step, as the book's sentence.
            sentence = " ".join([CHECK_PROMPT] + [vocabulary[i] for i in ids[row, :step]])
            expected = np.concatenate([prompt_ids[0, :prompt_length], ids[row, :step]])
            tokenized = text_vectorization([sentence]).numpy()[0]
            mismatched_prefixes += int(not np.array_equal(tokenized[: len(expected)], expected))
            fixed = np.asarray(
                book_transformer.next_word_predictions(model, text_vectorization, sentence, step, fixed=True)
            )
            printed = np.asarray(
                book_transformer.next_word_predictions(model, text_vectorization, sentence, step, fixed=False)
            )
            fixed_drawn = book_drawn_from(fixed * never_padding, temperature)
            printed_drawn_from = book_drawn_from(printed, 1.0)  # the temperature is never passed
            raw.append(np.max(np.abs(fixed - distributions[row, step])))
            drawn.append(np.max(np.abs(fixed_drawn - gendl_drawn[step])))
            entropy.append(abs(entropy_bits(fixed_drawn) - float(entropies[row, step])))
            printed_raw.append(np.max(np.abs(printed - distributions[row, step])))
            printed_drawn.append(np.max(np.abs(printed_drawn_from - gendl_drawn[step])))
            printed_total_variation.append(0.5 * np.sum(np.abs(printed_drawn_from - gendl_drawn[step])))
        per_temperature[str(temperature)] = {
            "gendl_text": " ".join(vocabulary[i] for i in ids[row]),
            "mismatched_prefixes": mismatched_prefixes,
            "fixed_max_abs_diff_predictions": float(max(raw)),
            "fixed_max_abs_diff_drawn_from": float(max(drawn)),
            "fixed_max_abs_diff_entropy_bits": float(max(entropy)),
            "printed_max_abs_diff_predictions": float(max(printed_raw)),
            "printed_max_abs_diff_drawn_from": float(max(printed_drawn)),
            "printed_mean_total_variation": float(np.mean(printed_total_variation)),
        }
    return {
        "prompt": CHECK_PROMPT,
        "model": {
            "vocab_size": len(vocabulary),
            "embed_dim": scale.check_embed_dim,
            "dense_dim": scale.check_dense_dim,
            "num_heads": scale.num_heads,
        },
        "training": training,
        "per_temperature": per_temperature,
        "max_abs_diff_predictions": max(
            r["fixed_max_abs_diff_predictions"] for r in per_temperature.values()
        ),
        "max_abs_diff_drawn_from": max(r["fixed_max_abs_diff_drawn_from"] for r in per_temperature.values()),
        "entropies": loop_entropies(model, vocabulary, entropies, scale),
    }


def loop_entropies(model: keras.Model, vocabulary: list[str], gendl_entropies: np.ndarray, scale: Scale):
    """Mean entropy (bits) of the distributions each loop actually drew from, per temperature."""
    text_vectorization = book_transformer.make_text_vectorization(
        vocabulary, len(vocabulary), scale.sequence_length
    )
    tokens_index = dict(enumerate(text_vectorization.get_vocabulary()))
    result: dict[str, dict[str, float]] = {
        str(t): {"gendl": float(np.mean(row))}
        for t, row in zip(book_transformer.TEMPERATURES, gendl_entropies, strict=True)
    }
    for name, fixed in (("book_fixed", True), ("book_as_printed", False)):
        record: list[tuple[float, float, np.ndarray]] = []
        np.random.seed(SEED)
        book_transformer.book_generate(
            model, text_vectorization, tokens_index, CHECK_PROMPT, scale.num_words,
            book_transformer.TEMPERATURES, fixed, record,
        )  # fmt: skip
        for temperature in book_transformer.TEMPERATURES:
            rows = [(applied, row) for t, applied, row in record if t == temperature]
            bits = [entropy_bits(book_drawn_from(row, applied)) for applied, row in rows]
            result[str(temperature)][name] = float(np.mean(bits))
            result[str(temperature)][f"{name}_first_word"] = bits[0]
    return result


# --- Report ---------------------------------------------------------------------------------------

GENDL_LABELS = {
    "book_setting": "gendl, 1 prompt x 5 temperatures (the book's setting)",
    "four_prompts": "gendl, 4 prompts x 5 temperatures",
    "with_top_k_top_p": "gendl, 1 prompt x (5 temperatures + top-k 40 + top-p 0.9)",
    "four_prompts_with_top_k_top_p": "gendl, 4 prompts x 7 samplers",
}


def ratios(speed: dict[str, Any]) -> dict[str, float]:
    book = speed["book"]["as_printed"]["words_per_second"]
    fixed = speed["book"]["fixed"]["words_per_second"]
    result = {"book_fixed_vs_printed": fixed / book}
    for name in GENDL_LABELS:
        gendl = speed["gendl"][name]
        result[f"{name}_vs_book"] = gendl["words_per_second"] / book
        result[f"{name}_vs_book_fixed"] = gendl["words_per_second"] / fixed
        result[f"{name}_alone_vs_book"] = gendl["generator_alone_words_per_second"] / book
    result["sampling_speedup"] = result["book_setting_vs_book"]
    return result


def verdict(value: float, target: float) -> str:
    return f"{'met' if value >= target else 'MISSED'} (target >= {target:g}x)"


def speed_table(results: dict[str, Any]) -> str:
    speed, ratio = results["speed"], results["ratios"]
    rows = []
    for name, label in (("as_printed", "book loop, as printed"), ("fixed", "book loop, bugs fixed")):
        book = speed["book"][name]
        rows.append(
            [
                label,
                "1",
                f"{5 * book['words_per_temperature']}",
                f"{book['words_per_second']:,.1f}",
                f"{book['ms_per_word']:.1f} ms/word",
                "1x" if name == "as_printed" else f"{ratio['book_fixed_vs_printed']:.2f}x",
                "",
            ]
        )
    for name, label in GENDL_LABELS.items():
        gendl = speed["gendl"][name]
        value = ratio[f"{name}_vs_book"]
        shown = (
            f"**{value:,.0f}x** {verdict(value, TARGETS['sampling_speedup'])}"
            if name == "book_setting"
            else f"{value:,.0f}x"
        )
        rows.append(
            [
                label,
                str(gendl["rows"]),
                str(gendl["words"]),
                f"{gendl['words_per_second']:,.0f}",
                f"{gendl['ms_per_step']:.2f} ms/step",
                shown,
                f"{gendl['generator_alone_words_per_second']:,.0f} ({ratio[f'{name}_alone_vs_book']:,.0f}x)",
            ]
        )
    first = speed["gendl"]["book_setting"]
    rows.append(
        [
            "gendl, first call (tracing included)",
            str(first["rows"]),
            str(first["words"]),
            f"{first['words'] / first['warmup_seconds']:,.0f}",
            f"{first['warmup_seconds']:.2f} s ({first['tracing_seconds']:.2f} s tracing)",
            f"{first['words'] / first['warmup_seconds'] / speed['book']['as_printed']['words_per_second']:,.0f}x",
            "",
        ]
    )
    headers = [
        "implementation",
        "rows in batch",
        "words",
        "words/s",
        "time",
        "gendl / book",
        "generator alone: words/s",
    ]
    return markdown_table(headers, rows) + (
        "\n\n`generate_texts` = the generator plus the prompts' vectorization and decoding."
    )


def breakdown_tables(results: dict[str, Any]) -> str:
    speed = results["speed"]
    breakdown, parts = speed["breakdown"], speed["book"]["word_parts"]
    book_rows = [
        ["text_vectorization([sentence]) (padded to 100 ids)", f"{parts['vectorize_ms']:.2f}"],
        ["model(tokenized_sentence), eager, all 100 positions", f"{parts['model_eager_ms']:.2f}"],
        ["the same call in a tf.function (for reference)", f"{parts['model_compiled_ms']:.2f}"],
        ["sample_next (float64 reweighting, multinomial)", f"{parts['sample_next_ms']:.2f}"],
    ]
    sweep_rows = [
        [batch, f"{ms:.2f}", f"{breakdown['words_per_second_by_batch'][batch]:,.0f}"]
        for batch, ms in breakdown["ms_per_step_by_batch"].items()
    ]
    batches = list(next(iter(breakdown["ladder_ms_per_step"].values())))
    ladder_rows = [
        [name, *(f"{times[batch]:.2f}" for batch in batches)]
        for name, times in breakdown["ladder_ms_per_step"].items()
    ]
    weights = breakdown["weights_read_per_step"]
    head_rows = [[batch, f"{ms:.3f}"] for batch, ms in breakdown["head_ms_by_batch"].items()]
    bandwidth = (
        f"Weights read in full per step: {weights['total_bytes'] / 1e6:.1f} MB (output layer "
        f"{weights['head_bytes'] / 1e6:.1f} MB, decoder {weights['decoder_bytes'] / 1e6:.1f} MB). The output "
        f"layer alone runs at {breakdown['head_gb_per_second_batch_1']:.0f} GB/s of weights at batch 1; a "
        f"NumPy copy larger than the L3 cache moves {breakdown['memory_copy_gb_per_second']:.0f} GB/s "
        f"(read + write), at which reading every weight once takes "
        f"{breakdown['weights_at_memory_bandwidth_ms']:.2f} ms."
    )
    return "\n\n".join(
        [
            "The book's time per word, by part (ms, median of 20)\n\n"
            + markdown_table(["part", "ms"], book_rows),
            "gendl, time per step by batch size (1 prompt repeated, T=1)\n\n"
            + markdown_table(["rows", "ms/step", "words/s"], sweep_rows),
            "gendl, time per step by model size (ms)\n\n"
            + markdown_table(["model", *(f"batch {b}" for b in batches)], ladder_rows),
            "Output layer alone (matmul + softmax) in a compiled loop\n\n"
            + markdown_table(["rows", "ms/call"], head_rows),
            bandwidth,
        ]
    )


def distribution_tables(results: dict[str, Any]) -> str:
    check = results["distributions"]
    rows = [
        [
            temperature,
            f"{r['fixed_max_abs_diff_predictions']:.1e}",
            f"{r['fixed_max_abs_diff_drawn_from']:.1e}",
            f"{r['fixed_max_abs_diff_entropy_bits']:.1e}",
            f"{r['printed_max_abs_diff_predictions']:.1e}",
            f"{r['printed_mean_total_variation']:.2f}",
            str(r["mismatched_prefixes"]),
        ]
        for temperature, r in check["per_temperature"].items()
    ]
    entropy_rows = [
        [
            temperature,
            f"{e['gendl']:.2f}",
            f"{e['book_fixed']:.2f}",
            f"{e['book_as_printed']:.2f}",
            f"{e['book_fixed_first_word']:.3f}",
            f"{e['book_as_printed_first_word']:.3f}",
        ]
        for temperature, e in check["entropies"].items()
    ]
    model, training = check["model"], check["training"]
    return "\n\n".join(
        [
            f"Same distributions: model vocabulary {model['vocab_size']}, embed {model['embed_dim']}, dense "
            f"{model['dense_dim']}, {model['num_heads']} heads, trained {training['epochs']} epoch(s) on "
            f"{training['documents']} Nietzsche chunks ({training['seconds']:.0f} s, perplexity "
            f"{training['final_perplexity']:.0f}); prompt {check['prompt']!r}, "
            f"{results['scale']['num_words']} words per temperature. For each word gendl drew, its prefix "
            "goes through the book's loop body; max |difference| over all steps.\n\n"
            + markdown_table(
                [
                    "T",
                    "fixed: model prediction",
                    "fixed: distribution drawn from",
                    "fixed: entropy (bits)",
                    "as printed: model prediction",
                    "as printed: mean total variation",
                    "prefixes re-vectorized differently",
                ],
                rows,
            ),
            "Entropy (bits) of the distributions each loop drew from, mean over its own run, and at the "
            "first word (same prefix for every temperature)\n\n"
            + markdown_table(
                [
                    "T",
                    "gendl",
                    "book fixed",
                    "book as printed",
                    "book fixed, 1st word",
                    "book as printed, 1st word",
                ],
                entropy_rows,
            ),
        ]
    )


def report(results: dict[str, Any]) -> str:
    environment_info, speed = results["environment"], results["speed"]
    scale = results["scale"]
    return "\n\n".join(
        [
            f"Word-level Transformer generation benchmark ({results['scale_name']} scale), "
            f"{environment_info['date']}, {environment_info['cpu_count']} CPUs, TensorFlow "
            f"{environment_info['tensorflow']}, Keras {environment_info['keras']}. Model: vocabulary "
            f"{speed['vocabulary_size']:,} (synthetic words: {speed['synthetic_words']:,}), sequence length "
            f"{scale['sequence_length']}, embed {scale['embed_dim']}, dense {scale['dense_dim']}, "
            f"{scale['num_heads']} heads, random weights; {scale['num_words']} words per prompt and sampler.",
            "Sampling speed\n\n" + speed_table(results),
            breakdown_tables(results),
            distribution_tables(results),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.transformer_generation", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a sanity run of under a minute")
    args = parser.parse_args(argv)
    scale_name, scale = ("quick", QUICK) if args.quick else ("real", REAL)

    text = read_corpus(Path(book_text.corpus_path()))
    (speed, distributions), seconds = timed(
        lambda: (measure_speed(text, scale), check_distributions(text, scale))
    )
    results = {
        "scale_name": scale_name,
        "scale": asdict(scale),
        "environment": environment(),
        "speed": speed,
        "distributions": distributions,
        "benchmark_seconds": seconds,
    }
    results["ratios"] = ratios(speed)
    results["targets_met"] = {name: results["ratios"][name] >= target for name, target in TARGETS.items()}
    suffix = "_quick" if args.quick else ""
    path = write_results(
        REPO_ROOT / "benchmarks" / "results" / f"transformer_generation{suffix}.json", results
    )
    print(report(results))
    print(f"\nMeasured in {seconds:.0f} s; results in {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
