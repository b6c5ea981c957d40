"""Text generation: gendl (`tasks.text.char_lstm`) against the book's listing, measured in one run.

    KERAS_HOME=/path/to/keras-home python -m benchmarks.text_generation [--quick]
        [--policies float32,mixed_bfloat16]

The book's side runs once, float32 as printed. gendl's runs under each Keras dtype policy of
`--policies`, each case in its own process set up by `tasks.runtime.configure_runtime`.

a. sampling speed (characters per second) at the temperatures 0.2, 0.5, 1.0, 1.2, with the
   same weights in both models;
b. memory of the training data: the book's one-hot arrays against gendl's integer ids;
c. training throughput (sequences per second) and peak resident memory, each implementation
   in its own process;
d. what bounds a training step: its FLOPs (TensorFlow's profiler), the FLOP/s it reaches against
   this CPU's matmul peak for its compute dtype, a batch-1 step (the same recurrence with almost
   no arithmetic), the recurrence's own matmul alone, and gendl's input pipeline alone.

The goal line: gendl's training under this machine's default policy (`dtype_policy: auto`)
against the book's, >= 1.2x. Prints markdown tables and writes
benchmarks/results/text_generation[_quick].json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from benchmarks import book_text, training_runs
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
from tasks.text.char_lstm.model import (
    Generated,
    build_char_lstm,
    compile_model,
    generate_text,
    make_generator,
)
from tasks.text.corpus import Vocabulary, build_vocabulary, corpus_seed, read_corpus, split_corpus
from tasks.text.sequences import sequence_dataset

SEED = 1337
VALIDATION_SPLIT = 0.1  # params.yaml text.data.validation_split
TARGETS = {"sampling_speedup": 100.0, "data_memory_reduction": 20.0, "training_speedup": 1.0}
TRAINING_GOAL = 1.2  # issue 15: gendl's training under the default policy against the book
CONTAINER_OPS = {"While", "StatelessWhile", "PartitionedCall", "StatefulPartitionedCall", "If", "StatelessIf"}
COMPUTE_BOUND_SHARE = 0.5  # a step at this share of the matmul peak or more is bound by compute
DEFAULT_POLICIES = "float32,mixed_bfloat16"
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}


@dataclass(frozen=True)
class Scale:
    max_chars: int  # corpus characters used; 0 = all
    book_chars_per_temperature: int  # the book manages ~10-20 characters per second
    gendl_chars_per_temperature: int
    gendl_repeats: int  # timed generate calls after the warm-up one
    num_train_sequences: int  # sequences in the timed training epoch
    batch_size: int
    training_rounds: int  # each round trains the book and gendl once, in ABBA order across rounds
    step_repeats: int  # timed calls of a bare train step, for the bound analysis


REAL = Scale(
    max_chars=0,
    book_chars_per_temperature=50,
    gendl_chars_per_temperature=400,
    gendl_repeats=5,
    num_train_sequences=40_000,
    batch_size=book_text.BATCH_SIZE,
    training_rounds=2,
    step_repeats=20,
)
QUICK = Scale(
    max_chars=60_000,
    book_chars_per_temperature=5,
    gendl_chars_per_temperature=100,
    gendl_repeats=2,
    num_train_sequences=2_000,
    batch_size=book_text.BATCH_SIZE,
    training_rounds=1,
    step_repeats=5,
)


def default_policy() -> str:
    """The policy `runtime.dtype_policy: auto` picks on this machine."""
    return choose_dtype_policy("auto", len(tf.config.list_physical_devices("GPU")), cpu_has_bfloat16())


# --- a. Sampling speed --------------------------------------------------------------------------


def twin_models(vocab_size: int) -> tuple[keras.Model, keras.Model]:
    """gendl's model with random weights and the book's Sequential model holding the same weights."""
    keras.utils.set_random_seed(SEED)
    gendl_model = build_char_lstm(vocab_size, book_text.UNITS)
    book_model = book_text.build_model(book_text.MAXLEN, vocab_size)
    # gendl's first weight is its frozen identity embedding (the one-hot encoding); the rest are
    # the LSTM's kernel, recurrent kernel and bias and the Dense kernel and bias, as the book's.
    book_model.set_weights(gendl_model.get_weights()[1:])
    return gendl_model, book_model


def book_next_char_probs(book_model: keras.Model, seed_text: str, vocabulary: Vocabulary) -> np.ndarray:
    """The book's next-character distribution after the seed, (vocab,)."""
    one_hot = np.zeros((1, book_text.MAXLEN, vocabulary.size))
    one_hot[0, np.arange(len(seed_text)), vocabulary.encode(seed_text)] = 1.0
    return book_model.predict(one_hot, verbose=0)[0]


def measure_book_sampling(
    model: keras.Model, seed_text: str, chars: list[str], char_indices: dict[str, int], num_chars: int
) -> dict[str, Any]:
    """The book's loop, one `model.predict` per character, timed per temperature."""
    np.random.seed(SEED)
    # One character first: the first predict builds the predict function.
    _, first_seconds = timed(
        lambda: book_text.generate_at_temperature(model, seed_text, 1.0, 1, chars, char_indices)
    )
    per_temperature = {}
    for temperature in book_text.TEMPERATURES:
        text, seconds = timed(
            lambda: book_text.generate_at_temperature(
                model, seed_text, temperature, num_chars, chars, char_indices
            )
        )
        per_temperature[str(temperature)] = {
            "seconds": seconds,
            "chars_per_second": num_chars / seconds,
            "text": text,
        }
    total_seconds = sum(result["seconds"] for result in per_temperature.values())
    return {
        "chars_per_temperature": num_chars,
        "first_char_seconds": first_seconds,
        "per_temperature": per_temperature,
        "chars_per_second": num_chars * len(book_text.TEMPERATURES) / total_seconds,
    }


def measure_gendl_sampling(
    model: keras.Model, seed_text: str, vocabulary: Vocabulary, num_chars: int, repeats: int
) -> dict[str, Any]:
    """`generate_text` at all temperatures in one batch, and one temperature at a time."""
    generator = make_generator(model, jit_compile=False)
    temperatures = list(book_text.TEMPERATURES)

    def generate(batch_temperatures: Sequence[float]) -> list[Generated]:
        return generate_text(generator, vocabulary, seed_text, batch_temperatures, num_chars, SEED)

    batched = time_calls(lambda: generate(temperatures), warmup=1, repeats=repeats)
    # The same traced function serves batch 1 (its signature has a dynamic batch dimension).
    one_at_a_time = time_calls(lambda: [generate([t]) for t in temperatures], warmup=0, repeats=repeats)
    num_generated = num_chars * len(temperatures)
    return {
        "chars_per_temperature": num_chars,
        "first_call_seconds": batched.warmup_seconds[0],
        "first_call_chars_per_second": num_generated / batched.warmup_seconds[0],
        "batched_seconds": batched.seconds,
        "chars_per_second": num_generated / batched.median_seconds,
        "one_at_a_time_seconds": one_at_a_time.seconds,
        "one_at_a_time_chars_per_second": num_generated / one_at_a_time.median_seconds,
        "texts": {str(sample.temperature): sample.text for sample in generate(temperatures)},
    }


def gendl_sampling(
    policy: str,
    weights_path: str,
    vocabulary_chars: list[str],
    seed_text: str,
    book_probs: list[float],
    num_chars: int,
    repeats: int,
) -> dict[str, Any]:
    """A child process: gendl's sampling under `policy`, with the weights the book's twin holds."""
    configure_runtime(SEED, dtype_policy=policy)
    vocabulary = Vocabulary(vocabulary_chars)
    model = build_char_lstm(vocabulary.size, book_text.UNITS)
    with np.load(weights_path) as saved:
        model.set_weights([saved[f"arr_{index}"] for index in range(len(saved.files))])
    gendl_probs = model.predict(vocabulary.encode(seed_text)[None].astype(np.int32), verbose=0)[0]
    return {
        "policy": policy,
        "max_prediction_difference": float(np.max(np.abs(np.asarray(book_probs) - gendl_probs))),
        **measure_gendl_sampling(model, seed_text, vocabulary, num_chars, repeats),
    }


def measure_sampling(corpus_path: str, scale: Scale, policies: Sequence[str]) -> dict[str, Any]:
    text = read_corpus(Path(corpus_path))
    text = text[: scale.max_chars] if scale.max_chars else text
    vocabulary = build_vocabulary(text)
    book_chars, book_char_indices = book_text.char_vocabulary(
        book_text.read_text(corpus_path, scale.max_chars)
    )
    if book_chars != vocabulary.chars:
        raise RuntimeError("the book's and gendl's vocabularies differ: the comparison would not be fair")
    seed_text = corpus_seed(vocabulary.encode(text), vocabulary, book_text.MAXLEN, SEED)
    gendl_model, book_model = twin_models(vocabulary.size)
    book_probs = book_next_char_probs(book_model, seed_text, vocabulary)
    book = measure_book_sampling(
        book_model, seed_text, book_chars, book_char_indices, scale.book_chars_per_temperature
    )
    with tempfile.TemporaryDirectory(prefix="gendl-bench-") as directory:
        weights_path = Path(directory) / "gendl_weights.npz"
        np.savez(weights_path, *gendl_model.get_weights())
        arguments = {
            "weights_path": str(weights_path),
            "vocabulary_chars": vocabulary.chars,
            "seed_text": seed_text,
            "book_probs": book_probs.tolist(),
            "num_chars": scale.gendl_chars_per_temperature,
            "repeats": scale.gendl_repeats,
        }
        gendl = {
            policy: run_in_child(
                "benchmarks.text_generation", "gendl_sampling", {**arguments, "policy": policy}, CHILD_ENV
            )
            for policy in policies
        }
    return {"seed_text": seed_text, "book": book, "gendl": gendl}


# --- b. and c. Training data memory, throughput and peak memory ---------------------------------


def gendl_training(policy: str, **arguments: Any) -> dict[str, Any]:
    """A child process: `training_runs.gendl_training` under `policy`."""
    configure_runtime(arguments["seed"], dtype_policy=policy)
    return {"policy": policy, **training_runs.gendl_training(**arguments)}


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first run's fields, with median throughputs and the largest peak memory of all runs."""
    return {
        **runs[0],
        "sequences_per_second": statistics.median(run["sequences_per_second"] for run in runs),
        "sequences_per_cpu_second": statistics.median(run["sequences_per_cpu_second"] for run in runs),
        "peak_rss_bytes": max(run["peak_rss_bytes"] for run in runs),
        "runs": runs,
    }


def measure_training(corpus_path: str, scale: Scale, policies: Sequence[str]) -> dict[str, Any]:
    """One epoch over the same first sequences per run, each run in a fresh process.

    Rounds alternate the order (book, gendl per policy, then the reverse), so a burst of other
    work on the machine does not always land on the same case.
    """
    common = {
        "corpus_path": corpus_path,
        "max_chars": scale.max_chars,
        "num_sequences": scale.num_train_sequences,
        "batch_size": scale.batch_size,
        "seed": SEED,
    }
    gendl_arguments = {
        **common,
        "maxlen": book_text.MAXLEN,
        "step": book_text.STEP,
        "units": book_text.UNITS,
        "learning_rate": book_text.LEARNING_RATE,
        "validation_split": VALIDATION_SPLIT,
    }
    cases = {"book": ("benchmarks.training_runs", "book_training", common)}
    for policy in policies:
        cases[policy] = (
            "benchmarks.text_generation",
            "gendl_training",
            {**gendl_arguments, "policy": policy},
        )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    for round_index in range(scale.training_rounds):
        names = list(cases)
        for name in names if round_index % 2 == 0 else reversed(names):
            module, function, arguments = cases[name]
            runs[name].append(run_in_child(module, function, arguments, CHILD_ENV))
    return {
        "book": summarise_runs(runs["book"]),
        "gendl": {policy: summarise_runs(runs[policy]) for policy in policies},
    }


# --- d. What bounds a training step -------------------------------------------------------------


def first_windows(ids: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The training run's first `batch_size` windows (batch, maxlen) and next ids (batch,), int32."""
    starts = np.arange(batch_size) * book_text.STEP
    windows = ids[starts[:, None] + np.arange(book_text.MAXLEN)].astype(np.int32)
    return windows, ids[starts + book_text.MAXLEN].astype(np.int32)


def unrolled_copy(model: keras.Model) -> keras.Model:
    """`model` with its LSTM unrolled and compiled as `model` is: the same arithmetic, but in the
    graph itself, where TensorFlow's profiler counts it (it does not look inside a loop's body)."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if isinstance(layer, keras.layers.LSTM):
            config["unroll"] = True
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.compile(optimizer=keras.optimizers.RMSprop(book_text.LEARNING_RATE), loss=model.loss)
    return copy


def train_step_flops(model: keras.Model, x: np.ndarray, y: np.ndarray) -> int:
    """FLOPs of one train step on a batch shaped as (x, y): forward, backward and RMSprop update."""
    spec = (tf.TensorSpec(x.shape, x.dtype), tf.TensorSpec(y.shape, y.dtype))
    return float_ops(tf.function(unrolled_copy(model).train_step).get_concrete_function(spec))


def step_seconds(train_step: Any, x: np.ndarray, y: np.ndarray, repeats: int) -> float:
    """Best seconds of `repeats` calls of the compiled train step on (x, y), after two warm-up calls
    (tracing); the best, as the peak is, so that other work on the machine counts least."""
    data = (tf.constant(x), tf.constant(y))
    return min(time_calls(lambda: float(train_step(data)["loss"]), warmup=2, repeats=repeats).seconds)


def op_time_shares(function: Any, num_calls: int) -> dict[str, Any]:
    """Where the time of `num_calls` calls of `function` goes, by op type, as TensorFlow's profiler
    traces the ops on the CPU (loop and call ops, which only contain others, left out)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory(prefix="gendl-bench-") as log_dir:
        tf.profiler.experimental.start(log_dir)
        for _ in range(num_calls):
            function()
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(next(Path(log_dir).rglob("*.xplane.pb")).read_bytes())
    seconds: Counter[str] = Counter()
    num_ops = 0
    for plane in (plane for plane in space.planes if plane.name == "/host:CPU"):
        for line in (line for line in plane.lines if line.name.startswith("tf_Compute")):
            for event in line.events:
                # An op's event is named "op_name:OpType"; the executor's own are "Class::method".
                op_name, _, op_type = plane.event_metadata[event.metadata_id].name.rpartition(":")
                if op_name and not op_name.endswith(":") and op_type not in CONTAINER_OPS:
                    seconds[op_type] += event.duration_ps * 1e-12
                    num_ops += 1
    total = sum(seconds.values())
    return {
        "ops_per_call": num_ops / num_calls,
        "op_seconds_per_call": total / num_calls,
        "shares": {op_type: op_seconds / total for op_type, op_seconds in seconds.most_common()},
    }


def recurrent_matmul_flops(batch_size: int, units: int, num_steps: int, dtype: str, repeats: int) -> float:
    """FLOP/s of the recurrence's own matmul, (batch, units) @ (units, 4 units), `num_steps` in a
    row as the LSTM's loop runs them: what these shapes allow, against the 2048-matmul peak."""
    state = tf.cast(tf.random.stateless_uniform((batch_size, units), seed=(1, 2)), dtype)
    # Scaled so the state keeps its size from step to step (no overflow, no slow denormals).
    kernel = tf.cast(tf.random.stateless_uniform((units, 4 * units), seed=(3, 4)) * 2 / units, dtype)

    @tf.function
    def recurrence(state: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        for _ in range(num_steps):
            state = tf.matmul(state, kernel)[:, :units]
        return tf.reduce_sum(tf.cast(state, tf.float32))

    best = min(time_calls(lambda: recurrence(state, kernel).numpy(), warmup=1, repeats=repeats).seconds)
    return num_steps * 2 * batch_size * units * 4 * units / best


def pipeline_sequences_per_second(ids: np.ndarray, num_sequences: int, batch_size: int, seed: int) -> float:
    """gendl's input pipeline alone over the training run's windows, with no model: sequences/s
    from the end of the first batch, as training is timed."""
    ids = ids[: (num_sequences - 1) * book_text.STEP + book_text.MAXLEN + 1]
    dataset = sequence_dataset(ids, book_text.MAXLEN, book_text.STEP, batch_size, shuffle=True, seed=seed)
    batches = iter(dataset)
    next(batches)
    started = time.perf_counter()
    num_timed = sum(int(windows.shape[0]) for windows, _ in batches)
    return num_timed / (time.perf_counter() - started)


def step_bounds(
    implementation: str,
    policy: str,
    corpus_path: str,
    max_chars: int,
    num_sequences: int,
    batch_size: int,
    repeats: int,
    seed: int,
) -> dict[str, Any]:
    """A child process: the measurements that say what bounds a training step of `implementation`
    ("book" or "gendl") under `policy`, on the training run's first batch."""
    configure_runtime(seed, dtype_policy=policy)
    text = read_corpus(Path(corpus_path))
    text = text[:max_chars] if max_chars else text
    vocabulary = build_vocabulary(text)
    train_ids, _ = split_corpus(vocabulary.encode(text), book_text.MAXLEN, VALIDATION_SPLIT)
    windows, next_ids = first_windows(train_ids, batch_size)
    if implementation == "book":
        model = book_text.build_model(book_text.MAXLEN, vocabulary.size)  # compiled as printed
        one_hot = np.eye(vocabulary.size, dtype=np.float32)
        x, y = one_hot[windows], one_hot[next_ids]  # what fit makes of the book's bool arrays
    else:
        model = build_char_lstm(vocabulary.size, book_text.UNITS)
        compile_model(model, book_text.LEARNING_RATE, clipnorm=0.0, jit_compile=False)
        x, y = windows, next_ids
    compute_dtype = keras.mixed_precision.global_policy().compute_dtype
    # The function fit traces around train_step (Keras's one_step_on_data), without fit's loop.
    train_step = tf.function(model.train_step, reduce_retracing=True, autograph=False)
    result = {
        "implementation": implementation,
        "policy": policy,
        "compute_dtype": compute_dtype,
        "flops_per_step": train_step_flops(model, x, y),
        "step_seconds": step_seconds(train_step, x, y, repeats),
        "batch1_step_seconds": step_seconds(train_step, x[:1], y[:1], repeats),
        "op_time": op_time_shares(lambda: float(train_step((tf.constant(x), tf.constant(y)))["loss"]), 3),
        "peak_flops_per_second": matmul_peak_flops(compute_dtype),
        "recurrent_matmul_flops_per_second": recurrent_matmul_flops(
            batch_size, book_text.UNITS, book_text.MAXLEN, compute_dtype, repeats
        ),
    }
    if implementation == "gendl":
        result["pipeline_sequences_per_second"] = pipeline_sequences_per_second(
            train_ids, num_sequences, batch_size, seed
        )
    return result


def measure_bounds(corpus_path: str, scale: Scale, policies: Sequence[str]) -> dict[str, Any]:
    """`step_bounds` for the book (float32, as printed) and for gendl under each policy."""
    common = {
        "corpus_path": corpus_path,
        "max_chars": scale.max_chars,
        "num_sequences": scale.num_train_sequences,
        "batch_size": scale.batch_size,
        "repeats": scale.step_repeats,
        "seed": SEED,
    }

    def bounds(implementation: str, policy: str) -> dict[str, Any]:
        arguments = {**common, "implementation": implementation, "policy": policy}
        return run_in_child("benchmarks.text_generation", "step_bounds", arguments, CHILD_ENV)

    return {
        "book": bounds("book", "float32"),
        "gendl": {policy: bounds("gendl", policy) for policy in policies},
    }


def matmul_share(op_time: dict[str, Any]) -> float:
    return sum(share for op_type, share in op_time["shares"].items() if "MatMul" in op_type)


def bound_analysis(bounds: dict[str, Any], training: dict[str, Any], batch_size: int) -> dict[str, float]:
    """A step's FLOP/s in fit and bare, its share of the peak, and the shares of what else costs."""
    flops, peak = bounds["flops_per_step"], bounds["peak_flops_per_second"]
    fit_step_seconds = batch_size / training["sequences_per_second"]
    analysis = {
        "flops_per_step": flops,
        "fit_step_seconds": fit_step_seconds,
        "fit_flops_per_second": flops / fit_step_seconds,
        "peak_share": flops / fit_step_seconds / peak,
        "bare_step_flops_per_second": flops / bounds["step_seconds"],
        "bare_step_peak_share": flops / bounds["step_seconds"] / peak,
        # The batch-1 step runs every op of the recurrence with 1/batch_size of the arithmetic.
        "batch1_share": bounds["batch1_step_seconds"] / bounds["step_seconds"],
        "matmul_op_time_share": matmul_share(bounds["op_time"]),
        "recurrent_matmul_peak_share": bounds["recurrent_matmul_flops_per_second"] / peak,
        "fit_overhead_share": max(0.0, 1.0 - bounds["step_seconds"] / fit_step_seconds),
    }
    if "pipeline_sequences_per_second" in bounds:
        analysis["pipeline_over_training"] = (
            bounds["pipeline_sequences_per_second"] / training["sequences_per_second"]
        )
    return analysis


def policy_gain(float32_bounds: dict[str, Any], other_bounds: dict[str, Any]) -> dict[str, float]:
    """How much faster each part of gendl's bare step runs under another policy than float32: the
    batch-1 part (per-op cost) and the rest (the arithmetic that grows with the batch)."""

    def arithmetic(bounds: dict[str, Any]) -> float:
        return bounds["step_seconds"] - bounds["batch1_step_seconds"]

    return {
        "step": float32_bounds["step_seconds"] / other_bounds["step_seconds"],
        "batch1_step": float32_bounds["batch1_step_seconds"] / other_bounds["batch1_step_seconds"],
        "arithmetic": arithmetic(float32_bounds) / arithmetic(other_bounds)
        if arithmetic(other_bounds) > 0
        else float("nan"),
        "recurrent_matmul": other_bounds["recurrent_matmul_flops_per_second"]
        / float32_bounds["recurrent_matmul_flops_per_second"],
        "peak": other_bounds["peak_flops_per_second"] / float32_bounds["peak_flops_per_second"],
        "float32_ops_per_step": float32_bounds["op_time"]["ops_per_call"],
        "ops_per_step": other_bounds["op_time"]["ops_per_call"],
        "cast_op_time_share": other_bounds["op_time"]["shares"].get("Cast", 0.0),
    }


# --- Report ---------------------------------------------------------------------------------------


def ratios(sampling: dict[str, Any], training: dict[str, Any], policy: str) -> dict[str, float]:
    """gendl under `policy` against the book; each is "higher is better for gendl"."""
    gendl_sampling, book_sampling = sampling["gendl"][policy], sampling["book"]
    gendl_train, book_train = training["gendl"][policy], training["book"]
    return {
        "sampling_speedup": gendl_sampling["chars_per_second"] / book_sampling["chars_per_second"],
        "sampling_speedup_one_at_a_time": gendl_sampling["one_at_a_time_chars_per_second"]
        / book_sampling["chars_per_second"],
        "data_memory_reduction": book_train["data_bytes"] / gendl_train["data_bytes"],
        "training_speedup": gendl_train["sequences_per_second"] / book_train["sequences_per_second"],
        "training_cpu_efficiency": gendl_train["sequences_per_cpu_second"]
        / book_train["sequences_per_cpu_second"],
        "peak_rss_reduction": book_train["peak_rss_bytes"] / gendl_train["peak_rss_bytes"],
    }


def targets_met(ratio: dict[str, float]) -> dict[str, bool]:
    return {name: ratio[name] >= target for name, target in TARGETS.items()}


def training_goal(all_ratios: dict[str, dict[str, float]], policy: str) -> dict[str, Any]:
    """Issue 15's goal for the text technique, under this machine's default policy."""
    ratio = all_ratios[policy]["training_speedup"] if policy in all_ratios else None
    return {
        "measure": "training sequences/s, gendl / book",
        "policy": policy,
        "goal": TRAINING_GOAL,
        "ratio": ratio,
        "met": None if ratio is None else ratio >= TRAINING_GOAL,
    }


def goal_line(goal: dict[str, Any]) -> str:
    head = (
        f"Goal: text training, gendl under {goal['policy']} (this machine's default policy) / the "
        f"book's listing (float32) >= {goal['goal']:g}x:"
    )
    if goal["ratio"] is None:
        return f"{head} not measured ({goal['policy']} is not among --policies)."
    return f"{head} {goal['ratio']:.2f}x, {'met' if goal['met'] else 'MISSED'}."


def throughput_per_run(result: dict[str, Any]) -> str:
    each = ", ".join(f"{run['sequences_per_second']:,.0f}" for run in result["runs"])
    return f"{result['sequences_per_second']:,.0f} ({each})"


def verdict(name: str, ratio: dict[str, float]) -> str:
    met = ratio[name] >= TARGETS[name]
    return f"{'met' if met else 'MISSED'} (target >= {TARGETS[name]:g}x)"


def gflops(flops: float) -> str:
    return f"{flops / 1e9:,.1f}"


def top_op_types(op_time: dict[str, Any], count: int) -> str:
    """The `count` op types other than matmuls that take the most traced time, with their shares."""
    others = [(op_type, share) for op_type, share in op_time["shares"].items() if "MatMul" not in op_type]
    return ", ".join(f"{op_type} {share:.0%}" for op_type, share in others[:count])


def bound_statement(name: str, bounds: dict[str, Any], analysis: dict[str, float], batch_size: int) -> str:
    """Two sentences: the step's share of the peak, then what the other measurements say bounds it."""
    share = analysis["peak_share"]
    first = (
        f"{name}: {gflops(analysis['flops_per_step'])} GFLOP per step at "
        f"{gflops(analysis['fit_flops_per_second'])} GFLOP/s in fit = {share:.0%} of the "
        f"{bounds['compute_dtype']} matmul peak ({gflops(bounds['peak_flops_per_second'])} GFLOP/s; the bare "
        f"step {analysis['bare_step_peak_share']:.0%})"
        + (": compute bounds it." if share >= COMPUTE_BOUND_SHARE else ": not compute-bound.")
    )
    parts = [
        f"a batch-1 step (the same {book_text.MAXLEN}-step recurrence forward and backward, "
        f"{bounds['op_time']['ops_per_call']:,.0f} ops, 1/{batch_size} of the arithmetic) takes "
        f"{analysis['batch1_share']:.0%} of the batch-{batch_size} step: the per-op cost of a sequential "
        "loop run op by op (no cuDNN kernel on a CPU)",
        f"matmuls take {analysis['matmul_op_time_share']:.0%} of the traced op time "
        f"(then {top_op_types(bounds['op_time'], 3)})",
        f"the recurrence's matmul alone reaches {analysis['recurrent_matmul_peak_share']:.0%} of the peak "
        "at its size",
        f"{analysis['fit_overhead_share']:.0%} of a step in fit is spent outside the bare step "
        "(fit's loop, the data feed)",
    ]
    if "pipeline_over_training" in analysis:
        ratio = analysis["pipeline_over_training"]
        parts.append(
            f"the input pipeline alone runs {ratio:,.1f}x as fast as training"
            + (" (a bound)" if ratio < 1.5 else " (not the bound)")
        )
    return f"{first} Measured: " + "; ".join(parts) + "."


def gain_statement(policy: str, gain: dict[str, float]) -> str:
    return (
        f"gendl {policy} against gendl float32, bare steps: {gain['step']:.2f}x as fast; the batch-1 "
        f"part (per-op cost) {gain['batch1_step']:.2f}x, the rest (arithmetic) {gain['arithmetic']:.2f}x; "
        f"{gain['ops_per_step']:,.0f} ops per step against {gain['float32_ops_per_step']:,.0f}, casts "
        f"{gain['cast_op_time_share']:.0%} of its op time; the recurrence's matmul alone "
        f"{gain['recurrent_matmul']:.2f}x, a 2048 matmul {gain['peak']:.2f}x."
    )


def sampling_rows(sampling: dict[str, Any], all_ratios: dict[str, dict[str, float]]) -> list[list[str]]:
    book = sampling["book"]
    rows = [
        [
            f"book, T={temperature}",
            f"{book['chars_per_temperature']} chars",
            f"{result['chars_per_second']:,.1f}",
            "",
        ]
        for temperature, result in book["per_temperature"].items()
    ]
    rows.append(
        [
            "book, all four",
            f"{4 * book['chars_per_temperature']} chars",
            f"{book['chars_per_second']:,.1f}",
            "1x",
        ]
    )
    for policy, gendl in sampling["gendl"].items():
        ratio = all_ratios[policy]
        generated = f"{4 * gendl['chars_per_temperature']} chars"
        rows += [
            [
                f"gendl {policy}, four temperatures in one batch",
                generated,
                f"{gendl['chars_per_second']:,.0f}",
                f"**{ratio['sampling_speedup']:,.0f}x** {verdict('sampling_speedup', ratio)}",
            ],
            [
                f"gendl {policy}, one temperature at a time",
                generated,
                f"{gendl['one_at_a_time_chars_per_second']:,.0f}",
                f"{ratio['sampling_speedup_one_at_a_time']:,.0f}x",
            ],
            [
                f"gendl {policy}, first call (tracing included)",
                generated,
                f"{gendl['first_call_chars_per_second']:,.0f}",
                f"{gendl['first_call_chars_per_second'] / book['chars_per_second']:,.0f}x "
                f"({gendl['first_call_seconds']:.2f} s)",
            ],
        ]
    return rows


def memory_rows(training: dict[str, Any], ratio: dict[str, float]) -> list[list[str]]:
    book_train = training["book"]
    gendl_train = next(iter(training["gendl"].values()))  # the same ids under every policy
    return [
        [
            "book: one-hot x + y (bool)",
            f"{book_train['total_sequences']:,} sequences",
            mib(book_train["data_bytes"]),
            f"{book_train['data_seconds']:.1f} s",
            "1x",
        ],
        [
            "gendl: train + validation ids (uint8)",
            "windows made per batch",
            mib(gendl_train["data_bytes"]),
            f"{gendl_train['data_seconds']:.1f} s",
            f"**{ratio['data_memory_reduction']:,.0f}x smaller** {verdict('data_memory_reduction', ratio)}",
        ],
    ]


def training_rows(training: dict[str, Any], all_ratios: dict[str, dict[str, float]]) -> list[list[str]]:
    cases = [("book: fit(x[:N], y[:N]), float32", training["book"])] + [
        (f"gendl {policy}: fit(sequence_dataset)", result) for policy, result in training["gendl"].items()
    ]
    rows = [
        [
            name,
            f"{result['num_sequences']:,}",
            throughput_per_run(result),
            f"{result['sequences_per_cpu_second']:,.0f}",
            f"{result['first_batch_seconds']:.1f} s",
            mib(result["rss_after_imports_bytes"]),
            mib(result["rss_after_data_bytes"]),
            mib(result["peak_rss_bytes"]),
        ]
        for name, result in cases
    ]
    for policy, ratio in all_ratios.items():
        rows.append(
            [
                f"gendl {policy} / book",
                "",
                f"**{ratio['training_speedup']:.3f}x** {verdict('training_speedup', ratio)}",
                f"{ratio['training_cpu_efficiency']:.3f}x",
                "",
                "",
                "",
                f"{ratio['peak_rss_reduction']:.1f}x smaller",
            ]
        )
    return rows


def bound_rows(results: dict[str, Any]) -> list[list[str]]:
    bounds, analyses = results["bounds"], results["bound_analysis"]
    cases = [("book float32", bounds["book"], analyses["book"])] + [
        (f"gendl {policy}", bounds["gendl"][policy], analyses["gendl"][policy]) for policy in bounds["gendl"]
    ]
    return [
        [
            name,
            gflops(analysis["flops_per_step"]),
            f"{1e3 * analysis['fit_step_seconds']:.1f} ms",
            f"{1e3 * case['step_seconds']:.1f} ms",
            gflops(analysis["fit_flops_per_second"]),
            f"{gflops(case['peak_flops_per_second'])} ({case['compute_dtype']})",
            f"**{analysis['peak_share']:.0%}**",
            f"{1e3 * case['batch1_step_seconds']:.1f} ms ({analysis['batch1_share']:.0%})",
            f"{analysis['matmul_op_time_share']:.0%}",
            f"{gflops(case['recurrent_matmul_flops_per_second'])} ({analysis['recurrent_matmul_peak_share']:.0%})",
            f"{case['pipeline_sequences_per_second']:,.0f}"
            if "pipeline_sequences_per_second" in case
            else "",
        ]
        for name, case, analysis in cases
    ]


def report(results: dict[str, Any]) -> str:
    sampling, training, all_ratios = results["sampling"], results["training"], results["ratios"]
    environment_info, batch_size = results["environment"], results["scale"]["batch_size"]
    differences = ", ".join(
        f"{gendl['max_prediction_difference']:.1e} ({policy})" for policy, gendl in sampling["gendl"].items()
    )
    bounds, analyses = results["bounds"], results["bound_analysis"]
    statements = [bound_statement("book float32", bounds["book"], analyses["book"], batch_size)] + [
        bound_statement(f"gendl {policy}", bounds["gendl"][policy], analyses["gendl"][policy], batch_size)
        for policy in bounds["gendl"]
    ]
    statements += [gain_statement(policy, gain) for policy, gain in results["policy_gain"].items()]
    return "\n\n".join(
        [
            f"Text generation benchmark ({results['scale_name']} scale), {environment_info['date']}, "
            f"{environment_info['cpu_count']} CPUs, TensorFlow {environment_info['tensorflow']}, "
            f"Keras {environment_info['keras']}; gendl under {', '.join(results['policies'])}, the book "
            f"float32 as printed. Same weights in both models: next-character distributions differ "
            f"from the book's by at most {differences}.",
            "Sampling speed\n\n"
            + markdown_table(
                ["implementation", "generated", "chars/s", "gendl / book"],
                sampling_rows(sampling, all_ratios),
            ),
            "Training data in memory\n\n"
            + markdown_table(
                ["implementation", "covers", "bytes", "build time", "gendl / book"],
                memory_rows(training, next(iter(all_ratios.values()))),
            ),
            f"Training, one epoch, batch {batch_size}, {results['scale']['training_rounds']} "
            "run(s) each (throughput from the end of batch 1: median, then each run)\n\n"
            + markdown_table(
                [
                    "implementation",
                    "sequences",
                    "sequences/s",
                    "sequences/CPU-s",
                    "first batch",
                    "RSS after imports",
                    "RSS after data",
                    "peak RSS",
                ],
                training_rows(training, all_ratios),
            ),
            goal_line(results["goal"]),
            f"What bounds a training step (batch {batch_size}; FLOPs by TensorFlow's profiler on the "
            "step with the LSTM unrolled; bare step = best call of the compiled train step on one batch, "
            "without fit's loop; peak = best 2048 matmul in the compute dtype; matmul op time = matmuls' "
            "share of the op time TensorFlow's profiler traces in 3 bare steps)\n\n"
            + markdown_table(
                [
                    "implementation",
                    "GFLOP/step",
                    "step in fit",
                    "bare step",
                    "GFLOP/s in fit",
                    "peak GFLOP/s",
                    "share of peak",
                    "batch-1 step",
                    "matmul op time",
                    "recurrent matmul GFLOP/s",
                    "input pipeline seq/s",
                ],
                bound_rows(results),
            ),
            "\n".join(f"- {statement}" for statement in statements),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.text_generation", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a sanity run of a few minutes")
    parser.add_argument(
        "--policies",
        type=parse_policies,
        default=parse_policies(DEFAULT_POLICIES),
        help=f"gendl's Keras dtype policies, comma-separated (default {DEFAULT_POLICIES})",
    )
    args = parser.parse_args(argv)
    scale_name, scale = ("quick", QUICK) if args.quick else ("real", REAL)

    corpus_path = book_text.corpus_path()
    (sampling, training, bounds), seconds = timed(
        lambda: (
            measure_sampling(corpus_path, scale, args.policies),
            measure_training(corpus_path, scale, args.policies),
            measure_bounds(corpus_path, scale, args.policies),
        )
    )
    all_ratios = {policy: ratios(sampling, training, policy) for policy in args.policies}
    results = {
        "scale_name": scale_name,
        "scale": asdict(scale),
        "policies": args.policies,
        "default_policy": default_policy(),
        "environment": environment(),
        "sampling": sampling,
        "training": training,
        "bounds": bounds,
        "bound_analysis": {
            "book": bound_analysis(bounds["book"], training["book"], scale.batch_size),
            "gendl": {
                policy: bound_analysis(bounds["gendl"][policy], training["gendl"][policy], scale.batch_size)
                for policy in args.policies
            },
        },
        "policy_gain": {
            policy: policy_gain(bounds["gendl"]["float32"], bounds["gendl"][policy])
            for policy in args.policies
            if policy != "float32" and "float32" in args.policies
        },
        "ratios": all_ratios,
        "targets_met": {policy: targets_met(ratio) for policy, ratio in all_ratios.items()},
        "benchmark_seconds": seconds,
    }
    results["goal"] = training_goal(all_ratios, results["default_policy"])
    suffix = "_quick" if args.quick else ""
    path = write_results(REPO_ROOT / "benchmarks" / "results" / f"text_generation{suffix}.json", results)
    print(report(results))
    print(f"\nMeasured in {seconds:.0f} s; results in {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
