"""Word-level Transformer: gendl (`tasks.text.transformer`) against the book's listing, generation
and training, gendl under each dtype policy.

    KERAS_HOME=/path/to/keras-home python -m benchmarks.transformer_generation [--quick]
        [--policies float32,mixed_bfloat16]

a. sampling speed (words per second) at the book's configuration (vocabulary 15,000, sequence
   length 100, embedding 256, dense 2048, 2 heads; "This movie", 50 words, temperatures 0.2, 0.5,
   0.7, 1.0, 1.5): one model's random weights driven by the book's loop (float32, as printed) and
   by gendl's generator under each policy, each policy in its own process; then where a step's
   time goes (batch size, model size, the output layer, memory bandwidth, FLOP/s against this
   CPU's matmul peak);
b. same distributions: a small model trained briefly on the Nietzsche corpus (float32); under each
   policy, for each word gendl drew, the book's fixed loop run on the same prefix (float32 model)
   must give the distribution gendl drew from, and so must the same weights' whole-model pass under
   gendl's policy (within a tolerance per policy); the book's printed loop reads another position,
   and its temperatures are never applied;
c. training steps at the book's size (batch 256 of 100-word chunks): the book's model compiled
   and fed the book's way (float32), and gendl's compile and input pipeline under each policy,
   each in its own process; then what bounds a step (its FLOP/s against the peak, the softmax and
   loss over the vocabulary alone, a tiny model's step, the input pipeline alone).

The vocabulary is the Nietzsche corpus's words (Keras cache: datasets/nietzsche.txt), with the
prompts' words, padded with synthetic words to 15,000 for (a) and (c). Prints markdown tables and
writes benchmarks/results/transformer_generation[_quick].json.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from benchmarks import book_text, book_transformer
from benchmarks.harness import (
    REPO_ROOT,
    environment,
    float_ops,
    markdown_table,
    matmul_peak_flops,
    mib,
    parse_policies,
    run_in_child,
    time_calls,
    timed,
    write_results,
)
from tasks.runtime import choose_dtype_policy, configure_runtime, cpu_has_bfloat16
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
POLICIES = ("float32", "mixed_bfloat16")  # the policies --policies accepts (peaks are measured for both)
PEAK_DTYPES = ("float32", "bfloat16")
LEARNING_RATE = 1e-3  # params.yaml transformer.train.learning_rate (RMSprop's default: the book's "rmsprop")
JIT_COMPILE = False  # params.yaml runtime.jit_compile
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}
MODULE = "benchmarks.transformer_generation"  # what child processes import (not __main__)
# How far the distribution gendl draws from (after the temperature) may be from its references.
# Against the whole-model pass of the same weights under the same policy (max |difference|): in
# float32 the KV cache computes what the whole pass computes, to rounding; in bfloat16 the two
# paths multiply matrices of different shapes, whose results can round one bfloat16 unit (2^-8)
# apart at some step (measured: 5.4e-5 at worst at the real scale, identical at most steps).
REFERENCE_TOLERANCES = {"float32": 1e-5, "mixed_bfloat16": 1e-3}
# Against the book's fixed loop on the float32 model (total variation): bfloat16 rounds every
# activation of the decoder (measured: 4.6e-3 at worst at the real scale; the book as printed is
# 0.39 to 0.79 away).
BOOK_TOLERANCES = {"float32": 1e-4, "mixed_bfloat16": 2e-2}
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
    train_batch_size: int  # (c): the book's batch of reviews
    train_warmup_steps: int  # untimed training steps (the first one traces)
    train_timed_steps: int


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
    train_batch_size=256,
    train_warmup_steps=1,
    train_timed_steps=3,
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
    train_batch_size=64,
    train_warmup_steps=1,
    train_timed_steps=3,
)
SCALES = {"real": REAL, "quick": QUICK}


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


def write_vocabulary(path: Path, vocabulary: Sequence[str]) -> str:
    """The vocabulary as a file for a child process (15,000 words are too long for its command line)."""
    path.write_text(json.dumps(list(vocabulary)))
    return str(path)


def read_vocabulary_file(path: str) -> list[str]:
    return json.loads(Path(path).read_text())


# --- Compute bounds -------------------------------------------------------------------------------


def product_flops(operation: tf.Operation) -> int:
    """FLOPs of one MatMul, BatchMatMulV2 or Einsum: 2 x (every index's size, multiplied)."""
    if operation.type == "Einsum":
        equation = operation.get_attr("equation").decode()
        if "." in equation:
            raise ValueError(f"{operation.name}: ellipsis einsum {equation!r} is not counted")
        sizes: dict[str, int] = {}
        for letters, tensor in zip(equation.split("->")[0].split(","), operation.inputs, strict=True):
            sizes.update(zip(letters, tensor.shape.as_list(), strict=True))
        return 2 * math.prod(sizes.values())
    left = operation.inputs[0].shape.as_list()
    transposed = operation.get_attr("transpose_a" if operation.type == "MatMul" else "adj_x")
    inner = left[-2] if transposed else left[-1]
    return 2 * math.prod(operation.outputs[0].shape.as_list()) * inner


def matmul_flops_by_dtype(concrete_function) -> dict[str, int]:
    """FLOPs of the matrix products of one call of a traced function, by the dtype they compute in.

    Counted here because TensorFlow's profiler (`harness.float_ops`) counts no Einsum and takes the
    wrong inner size for a transposed batch matmul, and attention is made of both.
    """
    flops: dict[str, int] = {}
    for operation in concrete_function.graph.get_operations():
        if operation.type in ("MatMul", "BatchMatMulV2", "Einsum"):
            dtype = operation.inputs[0].dtype.name
            flops[dtype] = flops.get(dtype, 0) + product_flops(operation)
    return flops


def seconds_at_peak(flops_by_dtype: dict[str, float], peaks: dict[str, float]) -> float:
    """Seconds the matrix products would take at this CPU's matmul peak of their dtype."""
    return sum(flops / peaks[dtype] for dtype, flops in flops_by_dtype.items())


def matmul_weights_by_dtype(model: keras.Model) -> dict[str, int]:
    """Weights a KV-cache step multiplies each row by, by the dtype the layer computes in: every
    kernel of the decoder and the output layer (the embeddings are looked up, not multiplied)."""
    counts: dict[str, int] = {}
    for layer in (model.get_layer("transformer_decoder"), model.get_layer("next_word")):
        for weight in layer.weights:
            if len(weight.shape) >= 2:
                counts[layer.compute_dtype] = counts.get(layer.compute_dtype, 0) + math.prod(weight.shape)
    return counts


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
    """Where a gendl step's time goes: batch size, model size, the output layer."""
    repeats = max(2, scale.gendl_repeats - 2)
    sweep = {str(batch): step_ms(generator, batch, scale.num_words, repeats) for batch in scale.sweep_batches}
    models = {
        "tiny": build_transformer_lm(
            TINY["vocab_size"], scale.sequence_length, TINY["embed_dim"], TINY["dense_dim"], scale.num_heads
        ),
        "decoder": build_transformer_lm(
            TINY["vocab_size"], scale.sequence_length, scale.embed_dim, scale.dense_dim, scale.num_heads
        ),
    }
    ladder = {
        name: {
            str(batch): step_ms(make_generator(small_model), batch, scale.num_words, repeats)
            for batch in scale.ladder_batches
        }
        for name, small_model in models.items()
    }
    ladder["full"] = {
        str(batch): step_ms(generator, batch, scale.num_words, repeats) for batch in scale.ladder_batches
    }
    head = model.get_layer("next_word")
    return {
        "ms_per_step_by_batch": sweep,
        "words_per_second_by_batch": {batch: int(batch) * 1000 / ms for batch, ms in sweep.items()},
        "ladder_ms_per_step": ladder,
        "head_ms_by_batch": {
            str(batch): head_ms(head, batch) for batch in sorted({1, *scale.ladder_batches})
        },
    }


def gendl_speed(policy: str, scale_name: str, vocabulary_path: str, weights_path: str) -> dict[str, Any]:
    """gendl's side of (a) under `policy`, in a child process: the parent's model weights, loaded
    into the model built under the policy."""
    scale = SCALES[scale_name]
    configure_runtime(SEED, dtype_policy=policy)
    vocabulary = read_vocabulary_file(vocabulary_path)
    model = build_transformer_lm(
        scale.vocab_size, scale.sequence_length, scale.embed_dim, scale.dense_dim, scale.num_heads
    )
    model.load_weights(weights_path)
    generator = make_generator(model)
    return {
        "policy": keras.mixed_precision.global_policy().name,
        "matmul_weights_by_dtype": matmul_weights_by_dtype(model),
        "gendl": measure_gendl(generator, vocabulary, scale),
        "breakdown": measure_breakdown(model, generator, scale),
    }


def measure_speed(
    vocabulary: list[str],
    vocabulary_path: str,
    scale: Scale,
    scale_name: str,
    policies: Sequence[str],
    directory: Path,
) -> dict[str, Any]:
    """The book's loops on a float32 model here; gendl under each policy in a child, same weights."""
    keras.utils.set_random_seed(SEED)
    model = build_transformer_lm(
        scale.vocab_size, scale.sequence_length, scale.embed_dim, scale.dense_dim, scale.num_heads
    )
    book = {
        "as_printed": measure_book(model, vocabulary, scale, fixed=False, num_words=scale.num_words),
        "fixed": measure_book(model, vocabulary, scale, fixed=True, num_words=scale.num_words),
        "word_parts": book_word_parts(model, vocabulary, scale),
    }
    weights_path = directory / "speed.weights.h5"
    model.save_weights(weights_path)
    arguments = {
        "scale_name": scale_name,
        "vocabulary_path": vocabulary_path,
        "weights_path": str(weights_path),
    }
    gendl = {
        policy: run_in_child(MODULE, "gendl_speed", {"policy": policy, **arguments}, CHILD_ENV)
        for policy in policies
    }
    bandwidth = copy_gb_per_second(scale.copy_mib)
    weights = weights_read_per_step(model)
    return {
        "vocabulary_size": len(vocabulary),
        "synthetic_words": sum(re.fullmatch(r"synthetic\d{5}", word) is not None for word in vocabulary),
        "book": book,
        "gendl": {policy: result["gendl"] for policy, result in gendl.items()},
        "breakdown": {policy: result["breakdown"] for policy, result in gendl.items()},
        "matmul_weights_by_dtype": {
            policy: result["matmul_weights_by_dtype"] for policy, result in gendl.items()
        },
        "gendl_peak_rss_bytes": {policy: result["peak_rss_bytes"] for policy, result in gendl.items()},
        "weights_read_per_step": weights,
        "memory_copy_gb_per_second": bandwidth,
        "weights_at_memory_bandwidth_ms": 1000 * weights["total_bytes"] / (bandwidth * 1e9),
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
    model = check_model(len(vocabulary), scale)
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


def check_model(vocab_size: int, scale: Scale, weights_path: str | None = None) -> keras.Model:
    """The model of (b), under the global dtype policy, with the trained weights when given."""
    model = build_transformer_lm(
        vocab_size, scale.sequence_length, scale.check_embed_dim, scale.check_dense_dim, scale.num_heads
    )
    if weights_path is not None:
        model.load_weights(weights_path)
    return model


def draw_with_distributions(
    model: keras.Model, word_vocabulary: WordVocabulary, num_words: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """gendl's draws after CHECK_PROMPT at each temperature: prompt ids (1, width), drawn ids (rows,
    words), entropies (rows, words) and the model's predictions drawn from (rows, words, vocab)."""
    temperatures = book_transformer.TEMPERATURES
    prompt_ids, prompt_lengths = word_vocabulary.encode_prompts([CHECK_PROMPT], allow_unknown=False)
    num_rows = len(temperatures)
    generator = make_generator(model, return_distributions=True)
    ids, entropies, distributions = generator(
        tf.constant(np.repeat(prompt_ids, num_rows, axis=0)),
        tf.constant(np.repeat(prompt_lengths, num_rows)),
        tf.constant(temperatures, tf.float32),
        tf.zeros((num_rows,), tf.int32),
        tf.ones((num_rows,)),
        tf.constant(num_words),
        tf.constant([SEED, 0]),
    )
    if distributions.dtype != tf.float32:
        raise TypeError(
            f"gendl's sampler must draw from float32 probabilities, got {distributions.dtype.name}"
        )
    return prompt_ids[0, : int(prompt_lengths[0])], ids.numpy(), entropies.numpy(), distributions.numpy()


def total_variation(first: np.ndarray, second: np.ndarray) -> float:
    return float(0.5 * np.sum(np.abs(np.asarray(first, np.float64) - np.asarray(second, np.float64))))


def gendl_distributions(
    policy: str, scale_name: str, vocabulary_path: str, weights_path: str
) -> dict[str, Any]:
    """(b) under `policy`, in a child process: gendl's draws against the book's fixed and printed
    loops on the float32 model, and against the whole-model pass of gendl's own model (the same
    weights under the policy)."""
    scale = SCALES[scale_name]
    vocabulary = read_vocabulary_file(vocabulary_path)
    keras.mixed_precision.set_global_policy("float32")  # the book's model, as printed
    book_model = check_model(len(vocabulary), scale, weights_path)
    configure_runtime(SEED, dtype_policy=policy)
    model = check_model(len(vocabulary), scale, weights_path)
    word_vocabulary = WordVocabulary(tuple(vocabulary), scale.sequence_length)
    prompt_ids, ids, entropies, distributions = draw_with_distributions(
        model, word_vocabulary, scale.num_words
    )
    never_padding = 1.0 - np.eye(len(vocabulary), dtype=np.float32)[PADDING]
    text_vectorization = book_transformer.make_text_vectorization(
        vocabulary, len(vocabulary), scale.sequence_length
    )
    same_model = policy == "float32"  # gendl's model computes as the book's: one whole pass serves both

    def predictions(on_model: keras.Model, sentence: str, step: int, fixed: bool) -> np.ndarray:
        return np.asarray(
            book_transformer.next_word_predictions(on_model, text_vectorization, sentence, step, fixed)
        )

    per_temperature = {}
    for row, temperature in enumerate(book_transformer.TEMPERATURES):
        gendl_drawn = np.exp(reweighted_log_probs(distributions[row] * never_padding, temperature).numpy())
        comparisons: dict[str, list[float]] = {}
        mismatched_prefixes = 0
        for step in range(scale.num_words):
            # The prompt and the words gendl drew before this step, as the book's sentence.
            sentence = " ".join([CHECK_PROMPT] + [vocabulary[i] for i in ids[row, :step]])
            expected = np.concatenate([prompt_ids, ids[row, :step]])
            tokenized = text_vectorization([sentence]).numpy()[0]
            mismatched_prefixes += int(not np.array_equal(tokenized[: len(expected)], expected))
            fixed = predictions(book_model, sentence, step, fixed=True)
            printed = predictions(book_model, sentence, step, fixed=False)
            reference = fixed if same_model else predictions(model, sentence, step, fixed=True)
            fixed_drawn = book_drawn_from(fixed * never_padding, temperature)
            reference_drawn = book_drawn_from(reference * never_padding, temperature)
            printed_drawn_from = book_drawn_from(printed, 1.0)  # the temperature is never passed
            drawn = gendl_drawn[step]
            for name, value in (
                ("fixed_max_abs_diff_predictions", np.max(np.abs(fixed - distributions[row, step]))),
                ("fixed_max_abs_diff_drawn_from", np.max(np.abs(fixed_drawn - drawn))),
                (
                    "fixed_max_abs_diff_entropy_bits",
                    abs(entropy_bits(fixed_drawn) - float(entropies[row, step])),
                ),
                ("fixed_max_total_variation", total_variation(fixed_drawn, drawn)),
                ("reference_max_abs_diff_predictions", np.max(np.abs(reference - distributions[row, step]))),
                ("reference_max_abs_diff_drawn_from", np.max(np.abs(reference_drawn - drawn))),
                ("reference_max_total_variation", total_variation(reference_drawn, drawn)),
                ("printed_max_abs_diff_predictions", np.max(np.abs(printed - distributions[row, step]))),
                ("printed_max_abs_diff_drawn_from", np.max(np.abs(printed_drawn_from - drawn))),
                ("printed_mean_total_variation", total_variation(printed_drawn_from, drawn)),
            ):
                comparisons.setdefault(name, []).append(float(value))
        per_temperature[str(temperature)] = {
            "gendl_text": " ".join(vocabulary[i] for i in ids[row]),
            "gendl_mean_entropy_bits": float(np.mean(entropies[row])),
            "mismatched_prefixes": mismatched_prefixes,
            **{
                name: float(np.mean(values) if name.endswith("mean_total_variation") else max(values))
                for name, values in comparisons.items()
            },
        }
    worst_reference = max(r["reference_max_abs_diff_drawn_from"] for r in per_temperature.values())
    worst_book = max(r["fixed_max_total_variation"] for r in per_temperature.values())
    return {
        "policy": keras.mixed_precision.global_policy().name,
        "decoder_compute_dtype": model.get_layer("transformer_decoder").compute_dtype,
        "output_layer_compute_dtype": model.get_layer("next_word").compute_dtype,
        "distributions_dtype": "float32",  # draw_with_distributions raises otherwise
        "per_temperature": per_temperature,
        "max_abs_diff_predictions": max(
            r["fixed_max_abs_diff_predictions"] for r in per_temperature.values()
        ),
        "max_abs_diff_drawn_from": max(r["fixed_max_abs_diff_drawn_from"] for r in per_temperature.values()),
        "reference_max_abs_diff_drawn_from": worst_reference,
        "reference_tolerance": REFERENCE_TOLERANCES[policy],
        "book_max_total_variation": worst_book,
        "book_tolerance": BOOK_TOLERANCES[policy],
        "within_tolerance": worst_reference <= REFERENCE_TOLERANCES[policy]
        and worst_book <= BOOK_TOLERANCES[policy],
    }


def check_distributions(
    text: str, scale: Scale, scale_name: str, policies: Sequence[str], directory: Path
) -> dict[str, Any]:
    """Train the model of (b) here (float32), run the book's loops on it, compare under each policy
    in a child."""
    model, vocabulary, training = train_check_model(text, scale)
    weights_path = directory / "check.weights.h5"
    model.save_weights(weights_path)
    arguments = {
        "scale_name": scale_name,
        "vocabulary_path": write_vocabulary(directory / "check_vocabulary.json", vocabulary),
        "weights_path": str(weights_path),
    }
    by_policy = {
        policy: run_in_child(MODULE, "gendl_distributions", {"policy": policy, **arguments}, CHILD_ENV)
        for policy in policies
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
        "by_policy": by_policy,
        "entropies": book_loop_entropies(model, vocabulary, scale),
    }


def book_loop_entropies(
    model: keras.Model, vocabulary: list[str], scale: Scale
) -> dict[str, dict[str, float]]:
    """Mean entropy (bits) of the distributions each book loop actually drew from, per temperature,
    and at its first word."""
    text_vectorization = book_transformer.make_text_vectorization(
        vocabulary, len(vocabulary), scale.sequence_length
    )
    tokens_index = dict(enumerate(text_vectorization.get_vocabulary()))
    result: dict[str, dict[str, float]] = {str(t): {} for t in book_transformer.TEMPERATURES}
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


# --- c. Training steps ----------------------------------------------------------------------------


def training_chunks(text: str, scale: Scale) -> list[str]:
    """The corpus's 100-word chunks, repeated to fill exactly the measured steps' batches."""
    chunks = word_chunks(text, scale.sequence_length)
    needed = scale.train_batch_size * (scale.train_warmup_steps + scale.train_timed_steps)
    return (chunks * math.ceil(needed / len(chunks)))[:needed]


def book_lm_dataset(chunks: list[str], vocabulary: list[str], scale: Scale) -> tf.data.Dataset:
    """The book's training input (12.1): batches of raw texts, vectorized inside the pipeline."""
    text_vectorization = book_transformer.make_text_vectorization(
        vocabulary, len(vocabulary), scale.sequence_length
    )

    def prepare_lm_dataset(text_batch):
        vectorized_sequences = text_vectorization(text_batch)
        x = vectorized_sequences[:, :-1]
        y = vectorized_sequences[:, 1:]
        return x, y

    # book: keras.utils.text_dataset_from_directory(directory="aclImdb", label_mode=None, batch_size=256)
    dataset = tf.data.Dataset.from_tensor_slices(chunks).batch(scale.train_batch_size)
    dataset = dataset.map(lambda x: tf.strings.regex_replace(x, "<br />", " "))
    return dataset.map(prepare_lm_dataset, num_parallel_calls=4)


def book_compile(model: keras.Model) -> None:
    model.compile(loss="sparse_categorical_crossentropy", optimizer="rmsprop")  # the book's


def gendl_lm_dataset(chunks: list[str], vocabulary: list[str], scale: Scale) -> tf.data.Dataset:
    """gendl's: its prepare step vectorizes the documents once (uint16 ids); training batches them."""
    vectorizer = make_vectorizer(vocabulary=vocabulary, sequence_length=scale.sequence_length)
    sequences = vectorizer(tf.constant(chunks)).numpy().astype(np.uint16)
    return language_model_dataset(sequences, scale.train_batch_size, shuffle=True, seed=SEED)


def gendl_compile(model: keras.Model) -> None:
    compile_model(model, learning_rate=LEARNING_RATE, jit_compile=JIT_COMPILE)


class StepEnds(keras.callbacks.Callback):
    """The wall-clock time at which each training step ends (and training begins)."""

    def on_train_begin(self, logs=None):
        self.times = [time.perf_counter()]

    def on_train_batch_end(self, batch, logs=None):
        float((logs or {}).get("loss", 0.0))  # waits for the step's result
        self.times.append(time.perf_counter())


def time_training(model: keras.Model, dataset: tf.data.Dataset, scale: Scale) -> dict[str, Any]:
    """One epoch of `fit` over the dataset; seconds of each step, the warm-up ones apart."""
    step_ends = StepEnds()
    model.fit(dataset, epochs=1, verbose=0, callbacks=[step_ends])
    seconds = np.diff(step_ends.times).tolist()
    timed_seconds = seconds[scale.train_warmup_steps :]
    return {
        "warmup_step_seconds": seconds[: scale.train_warmup_steps],
        "step_seconds": timed_seconds,
        "median_step_seconds": statistics.median(timed_seconds),
    }


def training_step_flops(model: keras.Model, batch_size: int, length: int) -> dict[str, Any]:
    """FLOPs of one step's forward and backward pass (the optimizer's update is elementwise)."""

    @tf.function
    def loss_gradients(x, y):
        with tf.GradientTape() as tape:
            loss = ops.mean(keras.losses.sparse_categorical_crossentropy(y, model(x, training=True)))
        return tape.gradient(loss, model.trainable_variables)

    spec = tf.TensorSpec((batch_size, length), tf.int32)
    concrete_function = loss_gradients.get_concrete_function(spec, spec)
    return {
        "matmul_flops_by_dtype": matmul_flops_by_dtype(concrete_function),
        "profiler_float_ops": float_ops(concrete_function),
    }


def softmax_loss_seconds(batch_size: int, length: int, vocab_size: int) -> float:
    """Seconds of the output softmax and the cross-entropy, forward and backward, alone (float32, as
    the model's output layer computes them): elementwise work over every word of every position."""
    logits = tf.random.stateless_normal((batch_size, length, vocab_size), seed=[SEED, 2])
    labels = tf.random.stateless_uniform(
        (batch_size, length), seed=[SEED, 3], minval=1, maxval=vocab_size, dtype=tf.int32
    )

    @tf.function
    def gradient_sum(logits):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            probabilities = keras.activations.softmax(logits)
            loss = ops.mean(keras.losses.sparse_categorical_crossentropy(labels, probabilities))
        return tf.reduce_sum(tape.gradient(loss, logits))

    return time_calls(lambda: gradient_sum(logits).numpy(), warmup=1, repeats=3).median_seconds


def tiny_step_seconds(
    dataset: tf.data.Dataset, compile_function: Callable[[keras.Model], None], scale: Scale
) -> float:
    """A tiny model's step through the same compile, `fit` and input pipeline: what a step costs
    besides its model's arithmetic (ids folded into the tiny vocabulary)."""
    tiny = build_transformer_lm(
        TINY["vocab_size"], scale.sequence_length, TINY["embed_dim"], TINY["dense_dim"], scale.num_heads
    )
    compile_function(tiny)
    folded = dataset.map(lambda x, y: (x % TINY["vocab_size"], y % TINY["vocab_size"]))
    return time_training(tiny, folded, scale)["median_step_seconds"]


def pipeline_seconds_per_batch(dataset: tf.data.Dataset) -> float:
    """The input pipeline alone: seconds per batch of iterating it (the second pass), no training."""
    counted: list[int] = []

    def iterate() -> None:
        counted[:] = [sum(1 for _ in dataset)]

    return time_calls(iterate, warmup=1, repeats=1).median_seconds / counted[0]


def measure_training(
    dataset: tf.data.Dataset,
    vocab_size: int,
    compile_function: Callable[[keras.Model], None],
    scale: Scale,
) -> dict[str, Any]:
    """A model of the book's size trained on `dataset`, then the parts that bound its step."""
    model = build_transformer_lm(
        vocab_size, scale.sequence_length, scale.embed_dim, scale.dense_dim, scale.num_heads
    )
    compile_function(model)
    steps = time_training(model, dataset, scale)
    length = scale.sequence_length - 1
    return {
        "policy": keras.mixed_precision.global_policy().name,
        "batch_size": scale.train_batch_size,
        **steps,
        "sequences_per_second": scale.train_batch_size / steps["median_step_seconds"],
        **training_step_flops(model, scale.train_batch_size, length),
        "softmax_loss_seconds": softmax_loss_seconds(scale.train_batch_size, length, vocab_size),
        "tiny_step_seconds": tiny_step_seconds(dataset, compile_function, scale),
        "pipeline_seconds_per_batch": pipeline_seconds_per_batch(dataset),
    }


def book_training(scale_name: str, vocabulary_path: str) -> dict[str, Any]:
    """The book's training in a child process: float32, compiled and fed the book's way."""
    scale = SCALES[scale_name]
    keras.utils.set_random_seed(SEED)
    vocabulary = read_vocabulary_file(vocabulary_path)
    chunks = training_chunks(read_corpus(Path(book_text.corpus_path())), scale)
    return measure_training(book_lm_dataset(chunks, vocabulary, scale), len(vocabulary), book_compile, scale)


def gendl_training(policy: str, scale_name: str, vocabulary_path: str) -> dict[str, Any]:
    """gendl's training under `policy` in a child process: its compile, its pre-vectorized input."""
    scale = SCALES[scale_name]
    configure_runtime(SEED, dtype_policy=policy)
    vocabulary = read_vocabulary_file(vocabulary_path)
    chunks = training_chunks(read_corpus(Path(book_text.corpus_path())), scale)
    return measure_training(
        gendl_lm_dataset(chunks, vocabulary, scale), len(vocabulary), gendl_compile, scale
    )


def measure_training_cases(scale_name: str, policies: Sequence[str], vocabulary_path: str) -> dict[str, Any]:
    """The book's training, then gendl's under each policy, each in a fresh process."""
    arguments = {"scale_name": scale_name, "vocabulary_path": vocabulary_path}
    return {
        "book": run_in_child(MODULE, "book_training", arguments, CHILD_ENV),
        "gendl": {
            policy: run_in_child(MODULE, "gendl_training", {"policy": policy, **arguments}, CHILD_ENV)
            for policy in policies
        },
    }


# --- Analysis -------------------------------------------------------------------------------------

GENDL_LABELS = {
    "book_setting": "1 prompt x 5 temperatures (the book's setting)",
    "four_prompts": "4 prompts x 5 temperatures",
    "with_top_k_top_p": "1 prompt x (5 temperatures + top-k 40 + top-p 0.9)",
    "four_prompts_with_top_k_top_p": "4 prompts x 7 samplers",
}


def default_policy() -> str:
    """What `runtime.dtype_policy: auto` picks on this machine."""
    return choose_dtype_policy("auto", len(tf.config.list_physical_devices("GPU")), cpu_has_bfloat16())


def ratios(speed: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    book = speed["book"]["as_printed"]["words_per_second"]
    fixed = speed["book"]["fixed"]["words_per_second"]
    book_step = training["book"]["median_step_seconds"]
    result: dict[str, Any] = {"book_fixed_vs_printed": fixed / book}
    for policy, configurations in speed["gendl"].items():
        by_policy: dict[str, float] = {}
        for name in GENDL_LABELS:
            gendl = configurations[name]
            by_policy[f"{name}_vs_book"] = gendl["words_per_second"] / book
            by_policy[f"{name}_vs_book_fixed"] = gendl["words_per_second"] / fixed
            by_policy[f"{name}_alone_vs_book"] = gendl["generator_alone_words_per_second"] / book
        by_policy["sampling_speedup"] = by_policy["book_setting_vs_book"]
        by_policy["training_speedup"] = book_step / training["gendl"][policy]["median_step_seconds"]
        result[policy] = by_policy
    return result


def goals(ratio: dict[str, Any], policy: str) -> list[dict[str, Any]]:
    """Each goal at this machine's default policy; None when that policy was not measured."""
    return [
        {
            "name": name,
            "policy": policy,
            "ratio": ratio[policy][name] if policy in ratio else None,
            "goal": target,
            "met": ratio[policy][name] >= target if policy in ratio else None,
        }
        for name, target in TARGETS.items()
    ]


def generation_bounds(speed: dict[str, Any], peaks: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per policy, gendl's step at the book's setting (generator alone) against its arithmetic at the
    peak, and the ladder's step split into what each larger model adds."""
    bounds = {}
    for policy, configurations in speed["gendl"].items():
        rows = configurations["book_setting"]["rows"]
        step_seconds = rows / configurations["book_setting"]["generator_alone_words_per_second"]
        flops = {dtype: 2 * rows * count for dtype, count in speed["matmul_weights_by_dtype"][policy].items()}
        breakdown = speed["breakdown"][policy]
        ladder = breakdown["ladder_ms_per_step"]
        batch = str(rows) if str(rows) in ladder["full"] else next(iter(ladder["full"]))
        tiny, decoder, full = (ladder[name][batch] for name in ("tiny", "decoder", "full"))
        at_peak_ms = 1000 * seconds_at_peak(flops, peaks)
        parts = {  # the ladder's differences: each model adds one part to the one before
            "matrix products at the peak": at_peak_ms,
            "per-op dispatch (the tiny model's step)": tiny,
            "the decoder's small-batch kernels (decoder - tiny)": decoder - tiny,
            "the output layer and sampling over the vocabulary (full - decoder)": full - decoder,
        }
        bounds[policy] = {
            "rows": rows,
            "ms_per_step": 1000 * step_seconds,
            "flops_per_step_by_dtype": flops,
            "flops_per_second": sum(flops.values()) / step_seconds,
            "ms_at_peak": at_peak_ms,
            "share_of_peak_time": at_peak_ms / (1000 * step_seconds),
            "ladder_batch": int(batch),
            "ladder_full_ms": full,
            "parts_ms": parts,
            "head_ms": breakdown["head_ms_by_batch"][batch],
            "largest_part": max(parts, key=lambda part: parts[part]),
        }
    return bounds


def training_bounds(training: dict[str, Any], peaks: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per training case: its matmuls' rate against the peak and the parts of a step measured apart."""
    cases = {
        "book": training["book"],
        **{f"gendl {policy}": case for policy, case in training["gendl"].items()},
    }
    bounds = {}
    for name, case in cases.items():
        step = case["median_step_seconds"]
        flops = case["matmul_flops_by_dtype"]
        compute_dtype = keras.mixed_precision.Policy(case["policy"]).compute_dtype
        parts = {
            "matrix products at the peak": seconds_at_peak(flops, peaks),
            "softmax and loss over the vocabulary (float32)": case["softmax_loss_seconds"],
            "a tiny model's step (fit, input pipeline, op dispatch)": case["tiny_step_seconds"],
        }
        # Negative when the parts, measured apart, overlap or ran slower alone than inside the step.
        parts["the rest (matrix products below the peak, other elementwise ops)"] = step - sum(parts.values())
        bounds[name] = {
            "step_seconds": step,
            "matmul_flops": sum(flops.values()),
            "bfloat16_share_of_flops": flops.get("bfloat16", 0) / sum(flops.values()),
            "flops_per_second": sum(flops.values()) / step,
            "compute_dtype": compute_dtype,
            "share_of_compute_dtype_peak": sum(flops.values()) / step / peaks[compute_dtype],
            "share_of_peak_time": parts["matrix products at the peak"] / step,
            "matmul_seconds_at_peak_by_dtype": {
                dtype: seconds_at_peak({dtype: count}, peaks) for dtype, count in flops.items()
            },
            "parts_seconds": parts,
            "pipeline_share": case["pipeline_seconds_per_batch"] / step,
            "largest_part": max(parts, key=lambda part: parts[part]),
        }
    return bounds


# --- Report ---------------------------------------------------------------------------------------


def verdict(value: float, target: float) -> str:
    return f"{'met' if value >= target else 'MISSED'} (target >= {target:g}x)"


def goal_lines(results: dict[str, Any]) -> str:
    lines = []
    for goal in results["goals"]:
        if goal["ratio"] is None:
            lines.append(
                f"Goal {goal['name']} >= {goal['goal']:g}x: not measured ({goal['policy']} not in --policies)"
            )
            continue
        lines.append(
            f"Goal, sampling at the book's setting: gendl ({goal['policy']}, this machine's default) "
            f"{goal['ratio']:,.1f}x the book as printed, goal >= {goal['goal']:g}x: "
            f"{'met' if goal['met'] else 'MISSED'}"
        )
    training = ", ".join(
        f"{policy} {ratio['training_speedup']:.2f}x"
        for policy, ratio in results["ratios"].items()
        if isinstance(ratio, dict)
    )
    lines.append(f"Training step, gendl / the book (no goal for the Transformer in the issue): {training}")
    return "\n".join(lines)


def speed_table(results: dict[str, Any]) -> str:
    speed, ratio = results["speed"], results["ratios"]
    rows = []
    for name, label in (("as_printed", "book loop, as printed"), ("fixed", "book loop, bugs fixed")):
        book = speed["book"][name]
        rows.append(
            [
                label,
                "float32",
                "1",
                f"{5 * book['words_per_temperature']}",
                f"{book['words_per_second']:,.1f}",
                f"{book['ms_per_word']:.1f} ms/word",
                "1x" if name == "as_printed" else f"{ratio['book_fixed_vs_printed']:.2f}x",
                "",
            ]
        )
    for name, label in GENDL_LABELS.items():
        for policy, configurations in speed["gendl"].items():
            gendl = configurations[name]
            value = ratio[policy][f"{name}_vs_book"]
            shown = (
                f"**{value:,.0f}x** {verdict(value, TARGETS['sampling_speedup'])}"
                if name == "book_setting"
                else f"{value:,.0f}x"
            )
            rows.append(
                [
                    f"gendl, {label}",
                    policy,
                    str(gendl["rows"]),
                    str(gendl["words"]),
                    f"{gendl['words_per_second']:,.0f}",
                    f"{gendl['ms_per_step']:.2f} ms/step",
                    shown,
                    f"{gendl['generator_alone_words_per_second']:,.0f} "
                    f"({ratio[policy][f'{name}_alone_vs_book']:,.0f}x)",
                ]
            )
    book_words_per_second = speed["book"]["as_printed"]["words_per_second"]
    for policy, configurations in speed["gendl"].items():
        first = configurations["book_setting"]
        rows.append(
            [
                "gendl, first call (tracing included)",
                policy,
                str(first["rows"]),
                str(first["words"]),
                f"{first['words'] / first['warmup_seconds']:,.0f}",
                f"{first['warmup_seconds']:.2f} s ({first['tracing_seconds']:.2f} s tracing)",
                f"{first['words'] / first['warmup_seconds'] / book_words_per_second:,.0f}x",
                "",
            ]
        )
    headers = [
        "implementation",
        "policy",
        "rows in batch",
        "words",
        "words/s",
        "time",
        "gendl / book",
        "generator alone: words/s",
    ]
    return markdown_table(headers, rows) + (
        "\n\n`generate_texts` = the generator plus the prompts' vectorization and decoding. The book "
        "runs float32, as printed; gendl's model under each policy loads the book's model's weights."
    )


def ladder_label(name: str, scale: dict[str, Any]) -> str:
    return {
        "tiny": f"tiny (vocab {TINY['vocab_size']}, embed {TINY['embed_dim']}, dense {TINY['dense_dim']})",
        "decoder": f"decoder (vocab {TINY['vocab_size']}, embed {scale['embed_dim']}, dense {scale['dense_dim']})",
        "full": f"full (vocab {scale['vocab_size']})",
    }[name]


def breakdown_tables(results: dict[str, Any]) -> str:
    speed, scale = results["speed"], results["scale"]
    breakdowns, parts = speed["breakdown"], speed["book"]["word_parts"]
    policies = list(breakdowns)
    book_rows = [
        ["text_vectorization([sentence]) (padded to 100 ids)", f"{parts['vectorize_ms']:.2f}"],
        ["model(tokenized_sentence), eager, all 100 positions", f"{parts['model_eager_ms']:.2f}"],
        ["the same call in a tf.function (for reference)", f"{parts['model_compiled_ms']:.2f}"],
        ["sample_next (float64 reweighting, multinomial)", f"{parts['sample_next_ms']:.2f}"],
    ]
    batches = list(breakdowns[policies[0]]["ms_per_step_by_batch"])
    sweep_rows = [
        [
            batch,
            *(
                f"{breakdowns[p]['ms_per_step_by_batch'][batch]:.2f} "
                f"({breakdowns[p]['words_per_second_by_batch'][batch]:,.0f} words/s)"
                for p in policies
            ),
        ]
        for batch in batches
    ]
    ladder_batches = list(breakdowns[policies[0]]["ladder_ms_per_step"]["full"])
    ladder_rows = [
        [
            ladder_label(name, scale),
            policy,
            *(f"{breakdowns[policy]['ladder_ms_per_step'][name][b]:.2f}" for b in ladder_batches),
        ]
        for name in ("tiny", "decoder", "full")
        for policy in policies
    ]
    head_batches = list(breakdowns[policies[0]]["head_ms_by_batch"])
    head_rows = [
        [b, *(f"{breakdowns[p]['head_ms_by_batch'][b]:.3f}" for p in policies)] for b in head_batches
    ]
    weights = speed["weights_read_per_step"]
    head_gb_per_second = {
        p: weights["head_bytes"] / (breakdowns[p]["head_ms_by_batch"]["1"] / 1000) / 1e9 for p in policies
    }
    bandwidth = (
        f"Weights read in full per step: {weights['total_bytes'] / 1e6:.1f} MB as float32 variables (output "
        f"layer {weights['head_bytes'] / 1e6:.1f} MB, decoder {weights['decoder_bytes'] / 1e6:.1f} MB; under "
        "mixed_bfloat16 the decoder's are cast to bfloat16 at every step, the output layer stays float32). The "
        "output layer alone runs at "
        + ", ".join(f"{head_gb_per_second[p]:.0f} GB/s ({p})" for p in policies)
        + f" of weights at batch 1; a NumPy copy larger than the L3 cache moves "
        f"{speed['memory_copy_gb_per_second']:.0f} GB/s (read + write), at which reading every weight once "
        f"takes {speed['weights_at_memory_bandwidth_ms']:.2f} ms."
    )
    return "\n\n".join(
        [
            "The book's time per word, by part (ms, median of 20; float32)\n\n"
            + markdown_table(["part", "ms"], book_rows),
            "gendl, ms per step by batch size (1 prompt repeated, T=1)\n\n"
            + markdown_table(["rows", *policies], sweep_rows),
            "gendl, ms per step by model size\n\n"
            + markdown_table(["model", "policy", *(f"batch {b}" for b in ladder_batches)], ladder_rows),
            "Output layer alone (matmul + softmax, float32 under every policy) in a compiled loop, ms per call\n\n"
            + markdown_table(["rows", *policies], head_rows),
            bandwidth,
        ]
    )


def megaflops(flops: float) -> str:
    return f"{flops / 1e6:.3g} MFLOP"


def generation_bound_lines(results: dict[str, Any]) -> str:
    lines = []
    for policy, bound in results["generation_bounds"].items():
        dtypes = ", ".join(
            f"{megaflops(flops)} in {dtype}" for dtype, flops in bound["flops_per_step_by_dtype"].items()
        )
        parts = ", ".join(
            f"{part} {ms:.3f} ms ({ms / bound['ladder_full_ms']:.0%})"
            for part, ms in bound["parts_ms"].items()
        )
        lines.append(
            f"- gendl {policy}, the book's setting ({bound['rows']} rows): a step multiplies "
            f"{megaflops(sum(bound['flops_per_step_by_dtype'].values()))} ({dtypes}) in "
            f"{bound['ms_per_step']:.2f} ms (generator alone): {bound['flops_per_second'] / 1e9:.2f} GFLOP/s, "
            f"{bound['share_of_peak_time']:.1%} of the step at the matmul peak. The ladder's "
            f"{bound['ladder_full_ms']:.2f} ms step at batch {bound['ladder_batch']} = {parts} (the output "
            f"layer alone: {bound['head_ms']:.3f} ms). Bound: {bound['largest_part']}."
        )
    return (
        "Where gendl's generation step is bound (FLOPs: 2 x rows x the decoder's and output layer's "
        "kernels; attention over <= 52 positions adds < 1%)\n\n" + "\n".join(lines)
    )


def distribution_tables(results: dict[str, Any]) -> str:
    check = results["distributions"]
    rows, reference_rows = [], []
    for policy, result in check["by_policy"].items():
        for temperature, r in result["per_temperature"].items():
            rows.append(
                [
                    temperature,
                    policy,
                    f"{r['fixed_max_abs_diff_predictions']:.1e}",
                    f"{r['fixed_max_abs_diff_drawn_from']:.1e}",
                    f"{r['fixed_max_total_variation']:.1e}"
                    + ("" if r["fixed_max_total_variation"] <= result["book_tolerance"] else " (over)"),
                    f"{r['fixed_max_abs_diff_entropy_bits']:.1e}",
                    f"{r['printed_max_abs_diff_predictions']:.1e}",
                    f"{r['printed_mean_total_variation']:.2f}",
                    str(r["mismatched_prefixes"]),
                ]
            )
            reference_rows.append(
                [
                    temperature,
                    policy,
                    f"{r['reference_max_abs_diff_predictions']:.1e}",
                    f"{r['reference_max_abs_diff_drawn_from']:.1e}",
                    f"{r['reference_max_total_variation']:.1e}",
                    f"{result['reference_tolerance']:.0e}",
                    "yes"
                    if r["reference_max_abs_diff_drawn_from"] <= result["reference_tolerance"]
                    else "NO",
                ]
            )
    policies = list(check["by_policy"])
    entropy_rows = [
        [
            temperature,
            *(
                f"{check['by_policy'][p]['per_temperature'][temperature]['gendl_mean_entropy_bits']:.2f}"
                for p in policies
            ),
            f"{e['book_fixed']:.2f}",
            f"{e['book_as_printed']:.2f}",
            f"{e['book_fixed_first_word']:.3f}",
            f"{e['book_as_printed_first_word']:.3f}",
        ]
        for temperature, e in check["entropies"].items()
    ]
    dtypes = "; ".join(
        f"{p}: decoder {r['decoder_compute_dtype']}, output layer {r['output_layer_compute_dtype']}, "
        f"distributions drawn from {r['distributions_dtype']}"
        for p, r in check["by_policy"].items()
    )
    model, training = check["model"], check["training"]
    return "\n\n".join(
        [
            f"Same distributions: model vocabulary {model['vocab_size']}, embed {model['embed_dim']}, dense "
            f"{model['dense_dim']}, {model['num_heads']} heads, trained (float32) {training['epochs']} epoch(s) on "
            f"{training['documents']} Nietzsche chunks ({training['seconds']:.0f} s, perplexity "
            f"{training['final_perplexity']:.0f}); prompt {check['prompt']!r}, "
            f"{results['scale']['num_words']} words per temperature. gendl's model under each policy loads its "
            f"weights; compute dtypes: {dtypes}. For each word gendl drew, its prefix goes through the book's "
            "loop body on the float32 model; max |difference| over all steps. Total variation allowed: "
            + ", ".join(f"{p} {r['book_tolerance']:.0e}" for p, r in check["by_policy"].items())
            + " ((over) marks a step beyond it). "
            + "; ".join(
                f"{p}: {'within' if r['within_tolerance'] else 'OUTSIDE'} both tolerances"
                for p, r in check["by_policy"].items()
            )
            + ".\n\n"
            + markdown_table(
                [
                    "T",
                    "gendl policy",
                    "fixed: model prediction",
                    "fixed: distribution drawn from",
                    "fixed: total variation",
                    "fixed: entropy (bits)",
                    "as printed: model prediction",
                    "as printed: mean total variation",
                    "prefixes re-vectorized differently",
                ],
                rows,
            ),
            "The same prefixes through the whole-model pass of gendl's own model (the same weights under "
            "gendl's policy: the reference that computes what gendl's KV cache computes), max over all steps\n\n"
            + markdown_table(
                [
                    "T",
                    "gendl policy",
                    "model prediction",
                    "distribution drawn from",
                    "total variation",
                    "tolerance (drawn from)",
                    "within",
                ],
                reference_rows,
            ),
            "Entropy (bits) of the distributions each loop drew from, mean over its own run, and at the "
            "first word (same prefix for every temperature)\n\n"
            + markdown_table(
                [
                    "T",
                    *(f"gendl {p}" for p in policies),
                    "book fixed",
                    "book as printed",
                    "book fixed, 1st word",
                    "book as printed, 1st word",
                ],
                entropy_rows,
            ),
        ]
    )


def training_tables(results: dict[str, Any]) -> str:
    training, bounds, peaks = results["training"], results["training_bounds"], results["peaks"]
    cases = {"book": training["book"], **{f"gendl {p}": case for p, case in training["gendl"].items()}}
    book_step = training["book"]["median_step_seconds"]
    rows = []
    for name, case in cases.items():
        bound = bounds[name]
        each = ", ".join(f"{s:.2f}" for s in case["step_seconds"])
        rows.append(
            [
                "book (compiled and fed the book's way)"
                if name == "book"
                else f"{name} (compile_model, prepared ids)",
                case["policy"],
                f"{case['median_step_seconds']:.3f} ({each})",
                f"{case['sequences_per_second']:,.1f}",
                f"{book_step / case['median_step_seconds']:.2f}x",
                f"{bound['matmul_flops'] / 1e9:.1f} ({bound['bfloat16_share_of_flops']:.0%})",
                f"{bound['flops_per_second'] / 1e9:.1f} ({bound['share_of_compute_dtype_peak']:.0%} of {bound['compute_dtype']})",
                f"{bound['parts_seconds']['matrix products at the peak']:.3f}",
                f"{case['softmax_loss_seconds']:.3f}",
                f"{case['tiny_step_seconds']:.3f}",
                f"{1000 * case['pipeline_seconds_per_batch']:.1f}",
                mib(case["peak_rss_bytes"]),
            ]
        )
    headers = [
        "implementation",
        "policy",
        "s/step (each)",
        "sequences/s",
        "vs book",
        "matmul GFLOP/step (bf16 share)",
        "GFLOP/s (of the peak)",
        "matmuls at peak, s",
        "softmax + loss alone, s",
        "tiny model step, s",
        "pipeline alone, ms/batch",
        "peak RSS",
    ]
    lines = []
    for name, bound in bounds.items():
        parts = ", ".join(
            f"{part} {seconds:.3f} s ({seconds / bound['step_seconds']:.0%})"
            for part, seconds in bound["parts_seconds"].items()
        )
        by_dtype = ", ".join(
            f"{dtype} {seconds:.3f} s" for dtype, seconds in bound["matmul_seconds_at_peak_by_dtype"].items()
        )
        lines.append(
            f"- {name}: {bound['step_seconds']:.3f} s per step = {parts}; the input pipeline alone "
            f"{bound['pipeline_share']:.0%} of a step. The matrix products at the peak by dtype: {by_dtype}. "
            f"Bound: {bound['largest_part']}."
        )
    scale = results["scale"]
    return "\n\n".join(
        [
            f"Training steps: the book's model size (vocabulary {scale['vocab_size']:,}, embed {scale['embed_dim']}, "
            f"dense {scale['dense_dim']}), batch {scale['train_batch_size']} of Nietzsche's {scale['sequence_length']}-word "
            f"chunks, {scale['train_warmup_steps']} untimed + {scale['train_timed_steps']} timed steps of one `fit` "
            f"epoch, each case in its own process. Matmul peaks of this CPU (2048 matmul): "
            + ", ".join(f"{dtype} {flops / 1e9:.0f} GFLOP/s" for dtype, flops in peaks.items())
            + ". Matmul FLOPs counted from the traced step's MatMul, BatchMatMulV2 and Einsum ops (TensorFlow's "
            f"profiler counts {training['book']['profiler_float_ops'] / 1e9:.1f} GFLOP for the book's, elementwise ops "
            "included and Einsum left out). Under mixed_bfloat16 the output layer (dtype float32) keeps its "
            "matrix products in float32.\n\n" + markdown_table(headers, rows),
            "Where a training step goes (each part measured apart; the rest is what they leave)\n\n"
            + "\n".join(lines),
        ]
    )


def report(results: dict[str, Any]) -> str:
    environment_info, speed = results["environment"], results["speed"]
    scale = results["scale"]
    return "\n\n".join(
        [
            f"Word-level Transformer benchmark ({results['scale_name']} scale), "
            f"{environment_info['date']}, {environment_info['cpu_count']} CPUs, TensorFlow "
            f"{environment_info['tensorflow']}, Keras {environment_info['keras']}; gendl under "
            f"{', '.join(results['policies'])} (this machine's default: {results['default_policy']}). Model: "
            f"vocabulary {speed['vocabulary_size']:,} (synthetic words: {speed['synthetic_words']:,}), sequence "
            f"length {scale['sequence_length']}, embed {scale['embed_dim']}, dense {scale['dense_dim']}, "
            f"{scale['num_heads']} heads, random weights; {scale['num_words']} words per prompt and sampler.",
            goal_lines(results),
            "Sampling speed\n\n" + speed_table(results),
            breakdown_tables(results),
            generation_bound_lines(results),
            distribution_tables(results),
            training_tables(results),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.transformer_generation", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a sanity run of a few minutes")
    parser.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help="gendl's dtype policies, comma-separated (default: %(default)s); the book runs float32",
    )
    args = parser.parse_args(argv)
    try:
        policies = parse_policies(args.policies, POLICIES)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    scale_name, scale = ("quick", QUICK) if args.quick else ("real", REAL)
    keras.mixed_precision.set_global_policy("float32")  # the book's side, as printed

    def measure_all() -> dict[str, Any]:
        peaks = {dtype: matmul_peak_flops(dtype) for dtype in PEAK_DTYPES}
        text = read_corpus(Path(book_text.corpus_path()))
        with tempfile.TemporaryDirectory(prefix="gendl-transformer-bench-") as directory:
            vocabulary = speed_vocabulary(text, scale.vocab_size, scale.sequence_length, PROMPTS)
            vocabulary_path = write_vocabulary(Path(directory) / "speed_vocabulary.json", vocabulary)
            return {
                "peaks": peaks,
                "speed": measure_speed(
                    vocabulary, vocabulary_path, scale, scale_name, policies, Path(directory)
                ),
                "distributions": check_distributions(text, scale, scale_name, policies, Path(directory)),
                "training": measure_training_cases(scale_name, policies, vocabulary_path),
            }

    measured, seconds = timed(measure_all)
    results = {
        "scale_name": scale_name,
        "scale": asdict(scale),
        "policies": policies,
        "default_policy": default_policy(),
        "environment": environment(),
        **measured,
        "benchmark_seconds": seconds,
    }
    results["ratios"] = ratios(results["speed"], results["training"])
    results["goals"] = goals(results["ratios"], results["default_policy"])
    results["targets_met"] = {goal["name"]: goal["met"] for goal in results["goals"]}
    results["generation_bounds"] = generation_bounds(results["speed"], results["peaks"])
    results["training_bounds"] = training_bounds(results["training"], results["peaks"])
    suffix = "_quick" if args.quick else ""
    path = write_results(
        REPO_ROOT / "benchmarks" / "results" / f"transformer_generation{suffix}.json", results
    )
    print(report(results))
    print(f"\nMeasured in {seconds:.0f} s; results in {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
