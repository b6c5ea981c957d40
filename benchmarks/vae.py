"""Variational autoencoder: gendl (`tasks.vae`) against the book's listing, measured in one run.

    KERAS_HOME=/path/to/keras-home python -m benchmarks.vae [--quick]
        [--policies float32,mixed_bfloat16] [--xla mixed_bfloat16]

a. training throughput: one epoch over the same Fashion-MNIST training images, batch 128, Adam
   1e-3, latent_dim 2; the book's VAE eager as printed (`run_eagerly=True`), the same code
   compiled, and gendl's compiled VAE fed by `image_dataset` (uint8 -> float per batch) under
   each Keras dtype policy of --policies (the book stays float32, as printed), and under each
   policy of --xla with `runtime.jit_compile: true` too;
b. peak resident memory of each training process and the memory its training data takes;
c. the losses each reaches, in the book's units and in gendl's (the book averages the KL term
   over the latent dimensions, gendl sums it);
d. what bounds a step: its FLOPs (`harness.float_ops`) against this CPU's matmul peak for its
   compute dtype (`harness.matmul_peak_flops`), the train step alone on one batch in memory,
   the input pipeline alone, `fit` with an empty step, and the kernels' time by kind; then the
   goal line of issue 15 (the epoch >= 5x the book as printed, under this machine's default policy).

Each run is its own interpreter (`run_in_child`), so its peak memory is its own; rounds alternate
the order (book, gendl per policy, then with XLA, book compiled, then the reverse). Prints markdown tables and
writes benchmarks/results/vae[_quick].json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.harness import (
    REPO_ROOT,
    current_rss_bytes,
    environment,
    float_ops,
    kernel_seconds,
    markdown_table,
    matmul_peak_flops,
    mib,
    parse_policies,
    peak_rss_bytes,
    per_run,
    run_in_child,
    time_calls,
    timed,
    write_results,
)

SEED = 1337
LATENT_DIM = 2  # the book's
LEARNING_RATE = 1e-3  # Adam's default (the book's), params.yaml vae.train.learning_rate
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}
LOSS_TERMS = ("total_loss", "reconstruction_loss", "kl_loss")
NUM_TRAIN_IMAGES = 60_000  # Fashion-MNIST's training set; the book's array continues with the test set
POLICIES = ("float32", "mixed_bfloat16")  # --policies' default: float32 and what `auto` picks here
XLA_POLICIES = ("mixed_bfloat16",)  # --xla's default: the default policy, XLA-compiled
KERAS_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16", "bfloat16", "float16")
GOAL_SPEEDUP = 5.0  # issue 15: the VAE epoch >= 5x the book as printed (eager)
STEPS_PER_CALL = 10  # d.: the step alone is timed over this many steps, then its losses read back
STEP_REPEATS = 5  # d.: timed calls of STEPS_PER_CALL steps each (median)
# d.: kinds of kernels in the op profile, first match of the kernel's "op name:op type" wins.
# gendl names its output layer "reconstruction": a 1-filter conv kept float32 under mixed policies.
OP_KINDS = (
    ("reconstruction", "output conv (1 filter)"),
    ("BackpropFilter", "conv filter gradients"),
    ("BackpropInput", "conv input gradients"),
    ("Conv2D", "conv forward"),
    ("Cast", "casts"),
)
CONVOLUTION_KINDS = ("conv forward", "conv input gradients", "conv filter gradients")
LOOP_BOUND_SHARE = 0.3  # d.: above this share of a step spent outside the train step, the loop bounds it


@dataclass(frozen=True)
class Scale:
    num_train_images: int  # images in the timed epoch, the first of Fashion-MNIST's training set
    batch_size: int
    rounds: int  # each round trains every implementation once, in alternating order


REAL = Scale(num_train_images=60_000, batch_size=128, rounds=2)
QUICK = Scale(num_train_images=6_000, batch_size=128, rounds=2)


@dataclass(frozen=True)
class Case:
    """One implementation the rounds train: its child function, that function's own arguments,
    and its labels in the tables."""

    function: str
    arguments: dict[str, Any]
    label: str
    short_label: str  # for ratio rows and sentences


def cases(policies: Sequence[str], xla_policies: Sequence[str]) -> dict[str, Case]:
    """The implementations by name, in the order of the first round: the book as printed, gendl
    under each policy (then with XLA), the book's code compiled."""
    gendl = {"latent_dim": LATENT_DIM, "learning_rate": LEARNING_RATE}
    return {
        "book": Case("book_training", {"run_eagerly": True}, "book: `run_eagerly=True` (as printed)", "book"),
        **{
            f"gendl_{policy}": Case(
                "gendl_training",
                {**gendl, "dtype_policy": policy, "jit_compile": False},
                f"gendl {policy}: `VAE`, compiled, `image_dataset`",
                f"gendl {policy}",
            )
            for policy in policies
        },
        **{
            f"gendl_{policy}_xla": Case(
                "gendl_training",
                {**gendl, "dtype_policy": policy, "jit_compile": True},
                f"gendl {policy} + XLA (`runtime.jit_compile: true`)",
                f"gendl {policy} + XLA",
            )
            for policy in xla_policies
        },
        "book_compiled": Case(
            "book_training",
            {"run_eagerly": False},
            "book's code, compiled (`run_eagerly=False`)",
            "book compiled",
        ),
    }


# --- The runs each child process makes --------------------------------------------------------


def batch_end_times():
    """A callback that appends `time.perf_counter()` at the end of every training batch, and its list."""
    import keras

    times: list[float] = []
    callback = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: times.append(time.perf_counter())
    )
    return callback, times


def batch_durations(ends: Sequence[float]) -> dict[str, float]:
    """d.: the median seconds of a full batch after the first (fit's steady step) and of the last
    batch, which is partial (60,000 = 468 x 128 + 96) and recompiles under XLA (a new shape)."""
    durations = [later - earlier for earlier, later in zip(ends, ends[1:])]
    return {
        "median_batch_seconds": statistics.median(durations[:-1] or durations),
        "last_batch_seconds": durations[-1],
    }


def epoch_summary(
    timer, history, num_images: int, batch_size: int, vae, ends: Sequence[float]
) -> dict[str, Any]:
    """Throughput after the first batch, batch times and the epoch's mean losses, as Keras reports them."""
    # The timer was written for text; its "sequences" are images here.
    timing = {
        key.replace("sequences", "images"): value
        for key, value in timer.summary(num_images, batch_size).items()
    }
    return {
        **timing,
        **batch_durations(ends),
        "batch_size": batch_size,
        "run_eagerly": bool(vae.run_eagerly),
        "jit_compile": bool(vae.jit_compile),
        "losses": {term: float(history.history[term][-1]) for term in LOSS_TERMS},
    }


def train_step_flops_per_image(vae, batch_shape: Sequence[int]) -> float:
    """FLOPs of one traced `train_step` on a float32 batch, per image (the forward pass, the
    gradients and Adam's update; the same network on both sides)."""
    import tensorflow as tf

    concrete = tf.function(vae.train_step).get_concrete_function(tf.TensorSpec(batch_shape, tf.float32))
    return float_ops(concrete) / batch_shape[0]


def book_training(num_images: int, batch_size: int, seed: int, run_eagerly: bool) -> dict[str, Any]:
    """Listing 12.28: the book's data (train + test as float32), then one epoch on the first images."""
    import keras

    from benchmarks import book_vae
    from benchmarks.training_runs import ThroughputAfterFirstBatch

    keras.utils.set_random_seed(seed)
    rss_after_imports = current_rss_bytes()
    # x_train and x_test stay alive through fit, as the notebook's globals do.
    (mnist_digits, x_train, x_test), data_seconds = timed(book_vae.load_data)
    rss_after_data, peak_after_data = current_rss_bytes(), peak_rss_bytes()
    vae = book_vae.compile_vae(book_vae.build_encoder(), book_vae.build_decoder(), run_eagerly)
    timer, (batch_timer, ends) = ThroughputAfterFirstBatch(), batch_end_times()
    history = book_vae.train(
        vae,
        mnist_digits[:num_images],
        epochs=1,
        batch_size=batch_size,
        verbose=0,
        callbacks=[timer, batch_timer],
    )
    peak_after_training = peak_rss_bytes()
    return {
        "data_shape": list(mnist_digits.shape),
        "data_dtype": str(mnist_digits.dtype),
        "data_bytes": mnist_digits.nbytes,
        "source_bytes": x_train.nbytes + x_test.nbytes,  # the uint8 arrays load_data returned
        "data_seconds": data_seconds,
        "rss_after_imports_bytes": rss_after_imports,
        "rss_after_data_bytes": rss_after_data,
        "peak_rss_after_data_bytes": peak_after_data,  # loading's temporaries included
        "peak_rss_after_training_bytes": peak_after_training,
        "compute_dtype": "float32",
        "flops_per_image": train_step_flops_per_image(vae, (batch_size, *mnist_digits.shape[1:])),
        "peak_flops_per_second": matmul_peak_flops("float32"),  # d.: the yardstick, measured now
        **epoch_summary(timer, history, num_images, batch_size, vae, ends),
    }


def gendl_training(
    num_images: int,
    batch_size: int,
    seed: int,
    latent_dim: int,
    learning_rate: float,
    dtype_policy: str,
    jit_compile: bool,
) -> dict[str, Any]:
    """The model, optimiser and dataset of `tasks.vae.model.train_point`, without its validation pass and
    per-epoch checkpoint and CSV callbacks (the book has none), for one epoch on the first images;
    then, after the peak memory of training is read, what the step's parts cost (`step_costs`)."""
    import keras
    import tensorflow as tf

    from benchmarks.training_runs import ThroughputAfterFirstBatch
    from tasks.image_batches import image_dataset
    from tasks.image_data import conform, load_keras_dataset
    from tasks.runtime import choose_dtype_policy, configure_runtime, cpu_has_bfloat16
    from tasks.vae.model import VAE, build_decoder, build_encoder

    rss_after_imports = current_rss_bytes()

    def load():
        # What the data step stores and the train step loads: uint8 with a channel axis.
        train, _ = load_keras_dataset("fashion_mnist", "vae")
        return conform(train.images, image_size=28, channels=1)

    train_images, data_seconds = timed(load)
    rss_after_data, peak_after_data = current_rss_bytes(), peak_rss_bytes()
    strategy = configure_runtime(seed, dtype_policy=dtype_policy, memory_growth=True, distribute="auto")
    image_shape = train_images.shape[1:]
    with strategy.scope():
        vae = VAE(
            build_encoder(image_shape, latent_dim),
            build_decoder(image_shape, latent_dim),
            beta=1.0,
            seed=seed,
        )
        vae.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=jit_compile)

    def dataset():
        return image_dataset(train_images[:num_images], batch_size, shuffle=True, seed=seed)

    timer, (batch_timer, ends) = ThroughputAfterFirstBatch(), batch_end_times()
    history = vae.fit(dataset(), epochs=1, callbacks=[timer, batch_timer], shuffle=False, verbose=0)
    peak_after_training = peak_rss_bytes()
    return {
        "data_shape": list(train_images.shape),
        "data_dtype": str(train_images.dtype),
        "data_bytes": train_images.nbytes,
        "data_seconds": data_seconds,
        "rss_after_imports_bytes": rss_after_imports,
        "rss_after_data_bytes": rss_after_data,
        "peak_rss_after_data_bytes": peak_after_data,  # loading's temporaries included
        "peak_rss_after_training_bytes": peak_after_training,
        "dtype_policy": keras.mixed_precision.global_policy().name,
        "auto_policy": choose_dtype_policy(
            "auto", len(tf.config.list_physical_devices("GPU")), cpu_has_bfloat16()
        ),
        "compute_dtype": keras.mixed_precision.global_policy().compute_dtype,
        "flops_per_image": train_step_flops_per_image(vae, (batch_size, *image_shape)),
        **epoch_summary(timer, history, num_images, batch_size, vae, ends),
        **step_costs(vae, dataset, jit_compile),
        "peak_flops_per_second": matmul_peak_flops(keras.mixed_precision.global_policy().compute_dtype),
    }


def step_costs(vae, dataset: Callable[[], Any], jit_compile: bool) -> dict[str, Any]:
    """d.: the train step alone, called on one batch held in memory (compiled as fit compiles it),
    its kernels' time by kind, the input pipeline alone and `fit` with an empty step."""
    import tensorflow as tf

    batch = next(iter(dataset()))
    step = tf.function(vae.train_step, jit_compile=jit_compile)

    def steps() -> float:
        for _ in range(STEPS_PER_CALL):
            logs = step(batch)
        return float(logs["total_loss"])  # waits for the last step

    timing = time_calls(steps, warmup=1, repeats=STEP_REPEATS)
    return {
        "step_seconds": timing.median_seconds / STEPS_PER_CALL,
        "op_seconds": {kind: seconds / STEPS_PER_CALL for kind, seconds in op_profile(steps).items()},
        "pipeline_seconds_per_batch": pipeline_seconds_per_batch(dataset()),
        "empty_step_seconds": empty_step_seconds(dataset()),
    }


def op_kind(kernel: str) -> str:
    return next((kind for key, kind in OP_KINDS if key in kernel), "other ops")


def op_profile(call: Callable[[], Any]) -> dict[str, float]:
    """Seconds of one `call` spent in each kind of kernel (OP_KINDS, by "name:type"). An
    XLA-compiled step shows as its clusters ("other ops")."""
    return kernel_seconds(call, lambda name, op_type: op_kind(f"{name}:{op_type}"))


def pipeline_seconds_per_batch(dataset) -> float:
    """Seconds per batch of iterating the dataset alone, after its first batch, as fit would."""
    batches = iter(dataset)
    next(batches)
    num_batches, seconds = timed(lambda: sum(1 for _ in batches))
    return seconds / num_batches


def empty_step_seconds(dataset) -> float:
    """Median seconds per step of `fit` over the dataset when the step only reads the batch: the
    price of Keras's loop (iterator, callbacks, Python) with the pipeline behind it."""
    import keras
    import tensorflow as tf

    class EmptyStep(keras.Model):
        def train_step(self, images):
            return {"images": tf.shape(images)[0]}

    model = EmptyStep()
    model.compile()
    batch_timer, ends = batch_end_times()
    model.fit(dataset, epochs=1, callbacks=[batch_timer], verbose=0)
    return batch_durations(ends)["median_batch_seconds"]


# --- Measuring --------------------------------------------------------------------------------

MEDIANS = (
    "images_per_second",
    "images_per_cpu_second",
    "seconds_after_first_batch",
    "cpu_seconds_after_first_batch",
    "first_batch_seconds",
    "step_seconds",
    "pipeline_seconds_per_batch",
    "empty_step_seconds",
    "peak_flops_per_second",
    "median_batch_seconds",
    "last_batch_seconds",
)


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first run's fields, with median times, throughputs and kernel seconds, and the largest
    peak memory."""
    summary = {
        **runs[0],
        **{key: statistics.median(run[key] for run in runs) for key in MEDIANS if key in runs[0]},
        "peak_rss_after_training_bytes": max(run["peak_rss_after_training_bytes"] for run in runs),
        "peak_rss_bytes": max(run["peak_rss_bytes"] for run in runs),
        "runs": runs,
    }
    if "op_seconds" in runs[0]:
        kinds = sorted({kind for run in runs for kind in run["op_seconds"]})
        summary["op_seconds"] = {
            kind: statistics.median(run["op_seconds"].get(kind, 0.0) for run in runs) for kind in kinds
        }
    return summary


def measure_training(scale: Scale, named_cases: dict[str, Case]) -> dict[str, Any]:
    common = {"num_images": scale.num_train_images, "batch_size": scale.batch_size, "seed": SEED}
    if scale.num_train_images > NUM_TRAIN_IMAGES:
        raise ValueError(
            f"num_train_images must be <= {NUM_TRAIN_IMAGES:,} (Fashion-MNIST's training set), "
            f"got {scale.num_train_images:,}: beyond it the book would train on test images"
        )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in named_cases}
    for round_index in range(scale.rounds):
        order = list(named_cases)
        for name in order if round_index % 2 == 0 else reversed(order):
            case = named_cases[name]
            run = run_in_child("benchmarks.vae", case.function, {**common, **case.arguments}, CHILD_ENV)
            print(f"  {name}: {run['seconds_after_first_batch']:.1f} s after batch 1", flush=True)
            runs[name].append(run)
    return {name: summarise_runs(name_runs) for name, name_runs in runs.items()}


def elbo_terms(result: dict[str, Any], kl_summed: bool) -> dict[str, float]:
    """The epoch's losses in gendl's units: KL summed over the latent dimensions, -ELBO per image."""
    losses = result["losses"]
    kl_sum = losses["kl_loss"] if kl_summed else losses["kl_loss"] * LATENT_DIM
    return {"kl_summed": kl_sum, "negative_elbo": losses["reconstruction_loss"] + kl_sum}


def gendl_names(training: dict[str, Any]) -> list[str]:
    return [name for name in training if name.startswith("gendl")]


def ratios(training: dict[str, Any]) -> dict[str, Any]:
    """Each gendl case against the book; each is "higher is better for gendl"."""
    book, compiled = training["book"], training["book_compiled"]

    def against_book(gendl: dict[str, Any]) -> dict[str, float]:
        return {
            "speedup": book["seconds_after_first_batch"] / gendl["seconds_after_first_batch"],
            "cpu_speedup": book["cpu_seconds_after_first_batch"] / gendl["cpu_seconds_after_first_batch"],
            "speedup_over_book_compiled": compiled["seconds_after_first_batch"]
            / gendl["seconds_after_first_batch"],
            "data_memory_reduction": book["data_bytes"] / gendl["data_bytes"],
            "peak_rss_reduction": book["peak_rss_after_training_bytes"]
            / gendl["peak_rss_after_training_bytes"],
        }

    return {
        "gendl": {name: against_book(training[name]) for name in gendl_names(training)},
        "book_compiled_speedup": book["seconds_after_first_batch"] / compiled["seconds_after_first_batch"],
    }


# --- What bounds a step (d.) and the goal line -----------------------------------------------------


def bound(result: dict[str, Any], book_seconds: float) -> dict[str, Any]:
    """A run's achieved FLOP/s against the matmul peak of its compute dtype (measured in the same
    process after its epoch); for gendl, where a step's time goes: the train step alone, the rest
    of fit, the kernels by kind."""
    peak = result["peak_flops_per_second"]
    epoch_flops = result["flops_per_image"] * (result["num_images"] - result["batch_size"])
    seconds = result["seconds_after_first_batch"]
    fit_step = result["median_batch_seconds"]
    analysis = {
        "compute_dtype": result["compute_dtype"],
        "fit_step_seconds": fit_step,
        "peak_flops_per_second": peak,
        "flops_per_second": epoch_flops / seconds,
        "peak_share": epoch_flops / seconds / peak,
        # 5x the book as printed, at these FLOPs: the rate that takes, and its share of the peak
        "goal_flops_per_second": epoch_flops / (book_seconds / GOAL_SPEEDUP),
        "goal_peak_share": epoch_flops / (book_seconds / GOAL_SPEEDUP) / peak,
    }
    if "step_seconds" not in result:
        return analysis
    step_flops = result["flops_per_image"] * result["batch_size"]
    op_seconds = result["op_seconds"]
    op_total = sum(op_seconds.values())

    def op_share(kinds: Sequence[str]) -> float | None:
        return sum(op_seconds.get(kind, 0.0) for kind in kinds) / op_total if op_total else None

    return {
        **analysis,
        "step_flops_per_second": step_flops / result["step_seconds"],
        "step_peak_share": step_flops / result["step_seconds"] / peak,
        "outside_step_share": max(0.0, fit_step - result["step_seconds"]) / fit_step,
        "op_seconds_per_step": op_total,
        "convolution_share_of_ops": op_share(CONVOLUTION_KINDS),
        "output_conv_share_of_ops": op_share(["output conv (1 filter)"]),
        "cast_share_of_ops": op_share(["casts"]),
    }


def bounds(training: dict[str, Any]) -> dict[str, Any]:
    book_seconds = training["book"]["seconds_after_first_batch"]
    return {name: bound(result, book_seconds) for name, result in training.items()}


def peaks(training: dict[str, Any]) -> dict[str, float]:
    """Each compute dtype's matmul peak: the median over the implementations' runs that computed in it."""
    by_dtype: dict[str, list[float]] = {}
    for result in training.values():
        by_dtype.setdefault(result["compute_dtype"], []).extend(
            run["peak_flops_per_second"] for run in result["runs"]
        )
    return {dtype: statistics.median(values) for dtype, values in sorted(by_dtype.items())}


def percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.0%}"


def loop_clause(analysis: dict[str, Any], result: dict[str, Any]) -> str:
    return (
        f"fit spends {analysis['outside_step_share']:.0%} of a step ({1e3 * analysis['fit_step_seconds']:.1f} ms, "
        f"median) outside the train step: the input pipeline alone takes "
        f"{1e3 * result['pipeline_seconds_per_batch']:.1f} ms a batch (prefetched) and fit with an empty step "
        f"{1e3 * result['empty_step_seconds']:.1f} ms"
    )


def kernel_clause(name: str, results: dict[str, Any]) -> str:
    """Where the step alone spends its time: oneDNN's kernels by kind, or, under XLA, against the
    same policy without it."""
    analysis, result = results["bounds"][name], results["training"][name]
    if not result["jit_compile"]:
        float32 = results["training"].get("gendl_float32")
        faster = (
            f"; {float32['step_seconds'] / result['step_seconds']:.2f}x as fast as the float32 step alone"
            if float32 and name != "gendl_float32"
            else ""
        )
        return (
            f"convolutions take {percent(analysis['convolution_share_of_ops'])} of the kernel time, the "
            f"1-filter output conv {percent(analysis['output_conv_share_of_ops'])}, casts "
            f"{percent(analysis['cast_share_of_ops'])}{faster}"
        )
    without = results["training"].get(name.removesuffix("_xla"))
    slower = (
        f"{result['step_seconds'] / without['step_seconds']:.1f}x the step without XLA; " if without else ""
    )
    return (
        f"XLA's own CPU code runs it instead of oneDNN's kernels: {slower}the last, partial batch "
        f"compiles again for its shape ({result['last_batch_seconds']:.1f} s)"
    )


def verdict(name: str, results: dict[str, Any]) -> str:
    """What bounds the epoch of one implementation, in a sentence or two, from its measurements."""
    analysis, result = results["bounds"][name], results["training"][name]
    label = results["short_labels"][name]
    rate = (
        f"{analysis['flops_per_second'] / 1e9:.0f} GFLOP/s, {analysis['peak_share']:.0%} of the "
        f"{analysis['compute_dtype']} matmul peak"
    )
    if "step_seconds" not in result:
        if name == "book":
            return (
                f"The book as printed runs at {rate}; its own code compiled is "
                f"{results['ratios']['book_compiled_speedup']:.2f}x faster, so dispatching every op of every "
                "step from Python (`run_eagerly=True`) bounds it."
            )
        return f"The {label} runs at {rate}."
    goal = (
        f"5x the book needs {analysis['goal_flops_per_second'] / 1e9:.0f} GFLOP/s, "
        f"{analysis['goal_peak_share']:.0%} of that peak"
    )
    if analysis["outside_step_share"] >= LOOP_BOUND_SHARE:
        return f"{label} runs at {rate}; the loop around the step bounds it: {loop_clause(analysis, result)}. {goal}."
    return (
        f"{label} runs at {rate}; compute bounds it: the train step alone on a batch in memory takes "
        f"{1e3 * result['step_seconds']:.1f} ms, {analysis['step_peak_share']:.0%} of the peak "
        f"({kernel_clause(name, results)}), and {loop_clause(analysis, result)}. {goal}."
    )


def goal_lines(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 15's goal for the VAE: gendl's epoch >= 5x the book as printed (eager), under this
    machine's default policy (`runtime.dtype_policy: auto`, `runtime.jit_compile: false`)."""
    policy = results["default_policy"]
    by_case = {name: ratio["speedup"] for name, ratio in results["ratios"]["gendl"].items()}
    ratio = by_case.get(f"gendl_{policy}")
    return [
        {
            "goal": "VAE epoch >= 5x the book as printed (eager)",
            "measure": "book seconds after batch 1 / gendl seconds after batch 1 (median)",
            "policy": policy,
            "ratio": ratio,
            "ratios_by_case": by_case,
            "target": GOAL_SPEEDUP,
            "met": None if ratio is None else ratio >= GOAL_SPEEDUP,
        }
    ]


def goal_text(goal: dict[str, Any]) -> str:
    if goal["ratio"] is None:
        return (
            f"Goal: {goal['goal']}: not measured (the default policy {goal['policy']} is not in --policies)."
        )
    others = ", ".join(
        f"{name.removeprefix('gendl_')} {ratio:.2f}x" for name, ratio in goal["ratios_by_case"].items()
    )
    return (
        f"Goal: {goal['goal']}: gendl under {goal['policy']} (this machine's default) "
        f"**{goal['ratio']:.2f}x**, goal {goal['target']:g}x: **{'met' if goal['met'] else 'missed'}** "
        f"(each case: {others})."
    )


# --- Report -----------------------------------------------------------------------------------


def training_table(results: dict[str, Any]) -> str:
    training, ratio = results["training"], results["ratios"]
    labels, short_labels = results["labels"], results["short_labels"]
    rows = [
        [
            labels[name],
            f"**{per_run(result, 'seconds_after_first_batch', '.1f')}**",
            f"{result['cpu_seconds_after_first_batch']:.1f}",
            per_run(result, "images_per_second", ",.0f"),
            f"{result['images_per_cpu_second']:,.0f}",
            f"{result['first_batch_seconds']:.1f} s",
        ]
        for name, result in training.items()
    ]
    for name, gendl in ratio["gendl"].items():
        rows += [
            [
                f"**{short_labels[name]} speed-up** (book s / gendl s)",
                f"**{gendl['speedup']:.2f}x**",
                f"{gendl['cpu_speedup']:.2f}x",
                "",
                "",
                "",
            ],
            [
                f"{short_labels[name]} over the book's code compiled",
                f"{gendl['speedup_over_book_compiled']:.2f}x",
                "",
                "",
                "",
                "",
            ],
        ]
    rows.append(["book compiled over book eager", f"{ratio['book_compiled_speedup']:.2f}x", "", "", "", ""])
    return markdown_table(
        ["implementation", "seconds", "CPU seconds", "images/s", "images/CPU-s", "first batch"], rows
    )


def memory_table(results: dict[str, Any]) -> str:
    training, labels = results["training"], results["labels"]

    def data_cell(name: str) -> str:
        if name == "book":
            return "train + test, float32 (`mnist_digits`)"
        return "as the book" if name == "book_compiled" else "train, uint8 (floats made per batch)"

    rows = [
        [
            labels[name],
            f"{data_cell(name)}, {'x'.join(map(str, result['data_shape']))}",
            mib(result["data_bytes"]),
            mib(result["rss_after_imports_bytes"]),
            mib(result["rss_after_data_bytes"]),
            mib(result["peak_rss_after_data_bytes"]),
            f"**{mib(result['peak_rss_after_training_bytes'])}**",
        ]
        for name, result in training.items()
    ]
    rows += [
        [
            f"book / {results['short_labels'][name]}",
            "",
            f"**{gendl['data_memory_reduction']:.2f}x smaller**",
            "",
            "",
            "",
            f"**{gendl['peak_rss_reduction']:.2f}x smaller**",
        ]
        for name, gendl in results["ratios"]["gendl"].items()
    ]
    return markdown_table(
        [
            "implementation",
            "training data",
            "data bytes",
            "RSS after imports",
            "RSS after data",
            "peak by end of loading",
            "peak RSS by end of training",
        ],
        rows,
    )


def loss_table(results: dict[str, Any]) -> str:
    rows = []
    for name, result in results["training"].items():
        is_gendl = name.startswith("gendl")
        losses, units = result["losses"], elbo_terms(result, kl_summed=is_gendl)
        rows.append(
            [
                results["labels"][name],
                f"{losses['total_loss']:.2f}",
                f"{losses['reconstruction_loss']:.2f}",
                f"{losses['kl_loss']:.3f}" + (" (sum)" if is_gendl else " (mean over dims)"),
                f"{units['kl_summed']:.3f}",
                f"{units['negative_elbo']:.2f}",
            ]
        )
    return markdown_table(
        ["implementation", "total", "reconstruction", "KL as reported", "KL summed", "-ELBO"], rows
    )


def step_part_cells(analysis: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """d.'s cells that only gendl's runs measure: the step alone, the loop, the kernels."""
    if "step_seconds" not in result:
        return [""] * 5
    kernels = (
        ""
        if result["jit_compile"]
        else " / ".join(
            percent(analysis[key])
            for key in ("convolution_share_of_ops", "output_conv_share_of_ops", "cast_share_of_ops")
        )
    )
    return [
        f"{1e3 * result['step_seconds']:.1f} ({analysis['step_peak_share']:.0%})",
        percent(analysis["outside_step_share"]),
        f"{1e3 * result['pipeline_seconds_per_batch']:.2f}",
        f"{1e3 * result['empty_step_seconds']:.2f}",
        kernels,
    ]


def bound_table(results: dict[str, Any]) -> str:
    rows = [
        [
            results["labels"][name],
            analysis["compute_dtype"],
            f"{results['training'][name]['flops_per_image'] / 1e6:.1f}",
            f"{analysis['flops_per_second'] / 1e9:.0f} ({analysis['peak_share']:.0%})",
            f"{1e3 * analysis['fit_step_seconds']:.1f}",
            f"{1e3 * results['training'][name]['last_batch_seconds']:,.0f}",
            *step_part_cells(analysis, results["training"][name]),
        ]
        for name, analysis in results["bounds"].items()
    ]
    return markdown_table(
        [
            "implementation",
            "computes in",
            "MFLOP per image",
            "epoch GFLOP/s (share of peak)",
            "fit ms per step (median)",
            "last, partial batch ms",
            "step alone ms (share of peak)",
            "outside the step",
            "pipeline alone ms/batch",
            "fit, empty step ms",
            "kernel time: convs / output conv / casts",
        ],
        rows,
    )


def report(results: dict[str, Any]) -> str:
    scale, info, peaks = results["scale"], results["environment"], results["peaks"]
    peak_text = ", ".join(f"{dtype} {flops / 1e9:.0f} GFLOP/s" for dtype, flops in peaks.items())
    verdicts = [verdict(name, results) for name in results["training"] if name != "book_compiled"]
    return "\n\n".join(
        [
            f"VAE benchmark ({results['scale_name']} scale), {info['date']}, {info['cpu_count']} CPUs, "
            f"TensorFlow {info['tensorflow']}, Keras {info['keras']}. Fashion-MNIST, one epoch over the "
            f"first {scale['num_train_images']:,} training images, batch {scale['batch_size']}, Adam "
            f"{LEARNING_RATE:g}, latent_dim {LATENT_DIM}, {scale['rounds']} run(s) each in its own process; "
            f"gendl under {', '.join(results['policies'])} (the book float32, as printed).",
            "a. Training, from the end of batch 1 to the end of the epoch (median, then each run)\n\n"
            + training_table(results),
            "b. Memory: the training data, and the process's resident memory (peak: largest of the runs, "
            "read when fit returns)\n\n" + memory_table(results),
            "c. Losses after the epoch (Keras's mean over the epoch's batches, first run); the book's KL is "
            f"averaged over the {LATENT_DIM} latent dimensions, gendl's summed, so 'KL summed' and '-ELBO' "
            "put both in gendl's units\n\n" + loss_table(results),
            f"d. What bounds a step (medians). FLOPs of one traced train step (`harness.float_ops`) against "
            f"this CPU's matmul peak for its compute dtype, measured in each run after its epoch "
            f"(`harness.matmul_peak_flops`, medians: {peak_text}); 'step alone': gendl's train "
            f"step called {STEPS_PER_CALL} times on one batch in memory; 'outside the step': the share of fit's "
            "time per step beyond it; kernel time: a profiler trace of the step alone, summed over threads\n\n"
            + bound_table(results)
            + "\n\n"
            + "\n".join(f"- {text}" for text in verdicts),
            "\n".join(goal_text(goal) for goal in results["goals"]),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vae", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a sanity run on 6,000 images")
    parser.add_argument(
        "--policies",
        type=lambda text: parse_policies(text, KERAS_POLICIES, allow_none=True),
        default=",".join(POLICIES),
        help="gendl's Keras dtype policies, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--xla",
        type=lambda text: parse_policies(text, KERAS_POLICIES, allow_none=True),
        default=",".join(XLA_POLICIES),
        help="policies gendl also runs under with jit_compile=True; '' for none (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if not args.policies:
        parser.error("--policies needs at least one policy")
    scale_name, scale = ("quick", QUICK) if args.quick else ("real", REAL)
    named_cases = cases(args.policies, args.xla)
    training, seconds = timed(lambda: measure_training(scale, named_cases))
    results = {
        "scale_name": scale_name,
        "scale": asdict(scale),
        "environment": environment(),
        "seed": SEED,
        "latent_dim": LATENT_DIM,
        "learning_rate": LEARNING_RATE,
        "policies": args.policies,
        "xla_policies": args.xla,
        "default_policy": next(
            result["auto_policy"] for name, result in training.items() if name.startswith("gendl")
        ),
        "peaks": peaks(training),
        "labels": {name: case.label for name, case in named_cases.items()},
        "short_labels": {name: case.short_label for name, case in named_cases.items()},
        "training": training,
        "ratios": ratios(training),
        "bounds": bounds(training),
        "benchmark_seconds": seconds,
    }
    results["goals"] = goal_lines(results)
    suffix = "_quick" if args.quick else ""
    path = write_results(REPO_ROOT / "benchmarks" / "results" / f"vae{suffix}.json", results)
    print(report(results))
    print(f"\nMeasured in {seconds:.0f} s; results in {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
