"""GAN: gendl (`tasks.gan.model`) against the book's DCGAN listing, training steps per second in one run.

    KERAS_HOME=/path/to/keras-home python -m benchmarks.gan [--quick] [--policies float32,mixed_bfloat16]

The book trains on CelebA at 64x64x3, which is not available offline. The benchmark writes a
temporary folder of 64x64 RGB PNGs (Fashion-MNIST training images from the Keras cache, upscaled)
and both implementations train the book's full architecture on those images: batch 32,
latent_dim 128, Adam(1e-4) for each network, label noise 0.05, dropout 0.2. gendl's side runs under
each Keras dtype policy of --policies (applied with `tasks.runtime.configure_runtime`, as gendl's
train step does; mixed_bfloat16 is what `auto` picks on a CPU with AVX512_BF16); the book's side
runs once, in float32 as printed.

a. training steps per second from the end of step 1 (which traces) over a fixed number of steps:
   the book's GAN fed by `image_dataset_from_directory` as printed; gendl's compiled GAN (width
   1.0) on the uint8 array its data step stores (`read_folder`), fed by `image_dataset`, under each
   policy; and gendl with a moving average of the generator (ema_decay 0.999), for what the average
   costs; the goal line: gendl's speed-up over the book at this machine's default policy against
   issue 15's 1.5x;
b. peak resident memory of each training process, and the memory its training data takes;
c. the d_loss and g_loss each reports, and the sizes of the models (the same architecture);
d. what bounds a step: its FLOPs (TensorFlow's count of the traced train step) at the measured
   steps/s against this CPU's matmul peak for the policy's compute dtype (measured in each run's
   process right after its steps, so both meet the same load); the input pipeline alone
   and an empty `fit` step (the per-step cost of everything but the networks); and each layer's
   forward and backward pass timed alone under each policy, to show where the time goes.

Each run is its own interpreter (`run_in_child`), so its peak memory is its own; rounds alternate
the order (book, then gendl and gendl EMA under each policy, then the reverse). Prints markdown
tables and writes benchmarks/results/gan[_quick].json.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    REPO_ROOT,
    current_rss_bytes,
    environment,
    float_ops,
    markdown_table,
    matmul_peak_flops,
    mib,
    parse_policies,
    per_run,
    policy_goal_not_measured,
    run_in_child,
    time_calls,
    timed,
    write_results,
)

SEED = 1337
IMAGE_SIZE = 64  # the book's CelebA size
CHANNELS = 3
BATCH_SIZE = 32  # the book's (its image_dataset_from_directory batches by 32)
LATENT_DIM = 128  # the book's, params.yaml gan.model.latent_dim
LEARNING_RATE = 1e-4  # both Adams: the book's, params.yaml gan.train.learning_rate
LABEL_NOISE = 0.05  # the book's, params.yaml gan.train.label_noise
DROPOUT = 0.2  # the book's, params.yaml gan.model.dropout
WIDTH = 1.0  # gendl's multiplier of the book's filter counts: the book's network
EMA_DECAY = 0.999  # the extra row: gendl with a moving average of the generator
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}
NUM_SOURCE_IMAGES = 60_000  # Fashion-MNIST's training set
POLICIES = ("float32", "mixed_bfloat16")  # --policies' default: float32 and what `auto` picks here
COMPUTE_DTYPES = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
GOAL_SPEEDUP = 1.5  # issue 15: the GAN train step >= 1.5x the book's listing
OVERHEAD_SHARE = 0.1  # below this share of a step, the input pipeline and Python do not bound it
NOISY_SPREAD = 0.2  # runs of the same code further apart than this in steps/s: a shared machine


@dataclass(frozen=True)
class Scale:
    num_steps: int  # timed training steps, after step 1 (which traces)
    rounds: int  # each round trains every implementation once, in alternating order
    layer_repeats: int  # timed calls of each layer's forward and backward pass (best kept)

    @property
    def num_images(self) -> int:
        """One epoch over the folder is step 1 plus the timed steps, every batch full."""
        return (self.num_steps + 1) * BATCH_SIZE


# A float32 step of the book's network at 64x64 takes ~4 CPU seconds (~2 s on 2 idle cores), and
# each run spends ~15-20 s more on imports and step 1: 16 steps keep the 10 runs near 9 minutes.
REAL = Scale(num_steps=16, rounds=2, layer_repeats=3)
QUICK = Scale(num_steps=4, rounds=2, layer_repeats=2)


def training_cases(policies: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """name: (child function, its own arguments), in the order of the first round."""
    cases: dict[str, tuple[str, dict[str, Any]]] = {"book": ("book_training", {})}
    for policy in policies:
        cases[f"gendl_{policy}"] = ("gendl_training", {"ema_decay": 0.0, "policy": policy})
        cases[f"gendl_ema_{policy}"] = ("gendl_training", {"ema_decay": EMA_DECAY, "policy": policy})
    return cases


def label(result: dict[str, Any]) -> str:
    if result["implementation"] == "book":
        return "book: `image_dataset_from_directory`, `GAN` (as printed, float32)"
    if result["ema_decay"]:
        return f"gendl {result['dtype_policy']}, `ema_decay` {result['ema_decay']:g}"
    return f"gendl {result['dtype_policy']}: `GAN`, `read_folder` uint8, `image_dataset`"


# --- The runs each child process makes --------------------------------------------------------


def write_image_folder(folder: str, num_images: int) -> dict[str, Any]:
    """The first Fashion-MNIST training images as 64x64 RGB PNGs in `folder`/images (CelebA's
    folder holds its images in one subfolder too, which `label_mode=None` ignores)."""
    import keras
    from PIL import Image

    (x_train, _), _ = keras.datasets.fashion_mnist.load_data()
    images = Path(folder) / "images"
    images.mkdir(parents=True)
    for index, pixels in enumerate(x_train[:num_images]):  # (28, 28) uint8
        image = Image.fromarray(pixels).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC).convert("RGB")
        image.save(images / f"{index:06d}.png")
    return {
        "num_images": num_images,
        "folder_bytes": sum(path.stat().st_size for path in images.iterdir()),
    }


def runtime_facts() -> dict[str, Any]:
    """The policy `auto` picks on this machine, and its matmul peak for each compute dtype."""
    import tensorflow as tf

    from tasks.runtime import choose_dtype_policy, cpu_has_bfloat16

    num_gpus = len(tf.config.list_physical_devices("GPU"))
    return {
        "default_policy": choose_dtype_policy("auto", num_gpus, cpu_has_bfloat16()),
        "peak_flops": {dtype: matmul_peak_flops(dtype) for dtype in ("float32", "bfloat16")},
    }


def step_summary(timer, history, num_steps: int, gan) -> dict[str, Any]:
    """Steps per second after step 1, the epoch's mean losses as Keras reports them, model sizes."""
    if timer.num_batches != num_steps + 1:
        raise RuntimeError(f"expected {num_steps + 1} training steps, the epoch had {timer.num_batches}")
    # The timer was written for text; its "sequences" are images here.
    timing = {
        key.replace("sequences", "images"): value
        for key, value in timer.summary((num_steps + 1) * BATCH_SIZE, BATCH_SIZE).items()
    }
    seconds, cpu_seconds = timing["seconds_after_first_batch"], timing["cpu_seconds_after_first_batch"]
    return {
        **timing,
        "num_steps": num_steps,
        "steps_per_second": num_steps / seconds,
        "steps_per_cpu_second": num_steps / cpu_seconds,
        "run_eagerly": bool(gan.run_eagerly),
        "jit_compile": bool(gan.jit_compile),
        "discriminator_params": gan.discriminator.count_params(),
        "generator_params": gan.generator.count_params(),
        "losses": {term: float(history.history[term][-1]) for term in ("d_loss", "g_loss")},
    }


def seconds_per_batch(dataset) -> float:
    """The input pipeline alone: one pass over `dataset` without training, per batch."""
    started, num_batches = time.perf_counter(), 0
    for _ in dataset:
        num_batches += 1
    return (time.perf_counter() - started) / num_batches


def train_step_float_ops(gan) -> int:
    """FLOPs of one call of `gan.train_step` on a full batch, traced apart from `fit`'s."""
    import tensorflow as tf

    spec = tf.TensorSpec((BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, CHANNELS), tf.float32)
    return float_ops(tf.function(gan.train_step).get_concrete_function(spec))


def book_training(folder: str, num_steps: int, seed: int) -> dict[str, Any]:
    """Listings 12.31-12.38 on the folder: one epoch, step 1 plus `num_steps` timed steps; then,
    untimed, the FLOPs of its train step, its input pipeline alone and the float32 matmul peak."""
    import keras

    from benchmarks import book_gan
    from benchmarks.training_runs import ThroughputAfterFirstBatch

    keras.utils.set_random_seed(seed)
    rss_after_imports = current_rss_bytes()
    dataset, data_seconds = timed(lambda: book_gan.load_dataset(folder))  # lists the files
    rss_after_data = current_rss_bytes()
    gan = book_gan.compile_gan(book_gan.build_discriminator(), book_gan.build_generator())
    timer = ThroughputAfterFirstBatch()
    # GANMonitor saves its samples in the working directory, as in the notebook: a temporary one.
    with tempfile.TemporaryDirectory(prefix="gendl-bench-") as directory, contextlib.chdir(directory):
        history = book_gan.train(gan, dataset, epochs=1, callbacks=[timer], verbose=0)
    return {
        "implementation": "book",
        "dtype_policy": "float32",
        "ema_decay": 0.0,
        "data_bytes": 0,  # decoded from the files a batch at a time, every epoch
        "data_seconds": data_seconds,
        "rss_after_imports_bytes": rss_after_imports,
        "rss_after_data_bytes": rss_after_data,
        **step_summary(timer, history, num_steps, gan),
        "step_float_ops": train_step_float_ops(gan),
        "input_seconds_per_batch": seconds_per_batch(dataset),  # decodes the PNG files again
        "peak_flops": matmul_peak_flops("float32"),  # under the load the steps just met
    }


def build_gendl_gan(image_shape: tuple[int, int, int], ema_decay: float, policy: str, seed: int):
    """What `tasks.gan.steps.train_point` builds, under `policy`: runtime, networks, optimisers."""
    import numpy as np

    from tasks.gan import model as gendl
    from tasks.runtime import configure_runtime

    strategy = configure_runtime(seed, dtype_policy=policy, memory_growth=True, distribute="auto")
    with strategy.scope():
        gan = gendl.GAN(
            gendl.build_discriminator(image_shape, DROPOUT, WIDTH),
            gendl.build_generator(image_shape, LATENT_DIM, WIDTH),
            LATENT_DIM,
            LABEL_NOISE,
            ema_decay,
            seed,
        )
        gan.compile(
            d_optimizer=gendl.adam(LEARNING_RATE), g_optimizer=gendl.adam(LEARNING_RATE), jit_compile=False
        )
        gan(np.zeros((1, LATENT_DIM), np.float32))  # as train_point: built before fit
    return gan


def gendl_training(folder: str, num_steps: int, seed: int, ema_decay: float, policy: str) -> dict[str, Any]:
    """The data of the GAN's data step (a folder) and the model, optimisers and dataset of
    `train_point` under `policy`, without its per-epoch grids, scores and resume checkpoints (the
    book's GANMonitor runs at the epoch's end, after the timed steps, too), for one epoch; then,
    untimed, its input pipeline alone and the matmul peak of the policy's compute dtype."""
    import keras

    from benchmarks.training_runs import ThroughputAfterFirstBatch
    from tasks.image_batches import image_dataset
    from tasks.image_data import read_folder

    rss_after_imports = current_rss_bytes()
    # What the data step stores and the train step loads: uint8, decoded once. All of it, so both
    # train on the same images (the data step would hold out 5% for the score).
    (pixels, _, _), data_seconds = timed(lambda: read_folder(Path(folder), IMAGE_SIZE, CHANNELS))
    rss_after_data = current_rss_bytes()
    gan = build_gendl_gan(pixels.shape[1:], ema_decay, policy, seed)
    dataset = image_dataset(pixels, BATCH_SIZE, shuffle=True, seed=seed)
    timer = ThroughputAfterFirstBatch()
    history = gan.fit(dataset, epochs=1, callbacks=[timer], shuffle=False, verbose=0)
    return {
        "implementation": "gendl",
        "dtype_policy": keras.mixed_precision.global_policy().name,
        "data_shape": list(pixels.shape),
        "data_dtype": str(pixels.dtype),
        "data_bytes": pixels.nbytes,
        "data_seconds": data_seconds,
        "rss_after_imports_bytes": rss_after_imports,
        "rss_after_data_bytes": rss_after_data,
        "ema_decay": ema_decay,
        **step_summary(timer, history, num_steps, gan),
        "input_seconds_per_batch": seconds_per_batch(dataset),
        "peak_flops": matmul_peak_flops(COMPUTE_DTYPES[policy]),  # under the load the steps just met
    }


def empty_step_model():
    """A model whose train step only reads its batch: `fit` over it costs the input pipeline, the
    Keras loop and the dispatch of a compiled step, without the networks."""
    import keras
    from keras import ops

    class EmptyStep(keras.Model):
        def train_step(self, images):
            return {"mean": ops.mean(images)}

    model = EmptyStep()
    model.compile()
    return model


def forward_and_backward(layer):
    """A compiled call of `layer` and the gradients of its summed output for its input and weights."""
    import tensorflow as tf

    @tf.function
    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            total = tf.reduce_sum(tf.cast(layer(inputs, training=True), tf.float32))
        return tape.gradient(total, [inputs, *layer.trainable_weights])

    return step


def profile_layer(layer, batch_size: int, repeats: int) -> dict[str, Any]:
    """`layer` alone, at its input shape and dtype in its model: the FLOPs and the best seconds of
    its forward and backward pass."""
    import tensorflow as tf

    inputs = tf.random.stateless_uniform((batch_size, *layer.input.shape[1:]), seed=(SEED, 0))
    inputs = tf.cast(inputs, layer.input.dtype)
    step = forward_and_backward(layer)
    timing = time_calls(lambda: [gradient.numpy() for gradient in step(inputs)], warmup=1, repeats=repeats)
    return {
        "layer": layer.name,
        "kind": type(layer).__name__,
        "dtype_policy": layer.dtype_policy.name,
        "input_dtype": str(layer.input.dtype),
        "batch_size": batch_size,
        "float_ops": float_ops(step.get_concrete_function(inputs)),
        "seconds": min(timing.seconds),
    }


def layer_profile(model, batch_size: int, repeats: int) -> list[dict[str, Any]]:
    """Each layer of `model` but its input, profiled alone (`profile_layer`)."""
    import keras

    return [
        {"model": model.name, **profile_layer(layer, batch_size, repeats)}
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]


def gendl_bounds(folder: str, num_steps: int, seed: int, policy: str, layer_repeats: int) -> dict[str, Any]:
    """What bounds gendl's step under `policy`: the FLOPs of its train step, an empty `fit` step
    over the same dataset, and each layer's forward and backward pass alone (the generator at the
    batch, the discriminator at twice it: real and generated images)."""
    from benchmarks.training_runs import ThroughputAfterFirstBatch
    from tasks.image_batches import image_dataset
    from tasks.image_data import read_folder

    pixels, _, _ = read_folder(Path(folder), IMAGE_SIZE, CHANNELS)
    gan = build_gendl_gan(pixels.shape[1:], 0.0, policy, seed)
    timer = ThroughputAfterFirstBatch()
    empty_step_model().fit(
        image_dataset(pixels, BATCH_SIZE, shuffle=True, seed=seed), epochs=1, callbacks=[timer], verbose=0
    )
    empty = timer.summary((num_steps + 1) * BATCH_SIZE, BATCH_SIZE)
    return {
        "policy": policy,
        "step_float_ops": train_step_float_ops(gan),
        "empty_step_seconds": empty["seconds_after_first_batch"] / num_steps,
        "layers": layer_profile(gan.generator, BATCH_SIZE, layer_repeats)
        + layer_profile(gan.discriminator, 2 * BATCH_SIZE, layer_repeats),
    }


# --- Measuring --------------------------------------------------------------------------------


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first run's fields, with median times and throughputs and the largest peak memory."""
    medians = (
        "steps_per_second",
        "steps_per_cpu_second",
        "images_per_second",
        "seconds_after_first_batch",
        "cpu_seconds_after_first_batch",
        "first_batch_seconds",
        "input_seconds_per_batch",
        "peak_flops",
    )
    return {
        **runs[0],
        **{key: statistics.median(run[key] for run in runs) for key in medians},
        "peak_rss_bytes": max(run["peak_rss_bytes"] for run in runs),
        "runs": runs,
    }


def measure_training(scale: Scale, folder: str, policies: Sequence[str]) -> dict[str, Any]:
    common = {"folder": folder, "num_steps": scale.num_steps, "seed": SEED}
    cases = training_cases(policies)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    for round_index in range(scale.rounds):
        order = list(cases)
        for name in order if round_index % 2 == 0 else reversed(order):
            function, arguments = cases[name]
            run = run_in_child("benchmarks.gan", function, {**common, **arguments}, CHILD_ENV)
            print(
                f"  {name}: {run['steps_per_second']:.3f} steps/s, "
                f"{run['steps_per_cpu_second']:.3f} steps/CPU-s",
                flush=True,
            )
            runs[name].append(run)
    return {name: summarise_runs(name_runs) for name, name_runs in runs.items()}


def measure_bounds(scale: Scale, folder: str, policies: Sequence[str]) -> dict[str, Any]:
    return {
        policy: run_in_child(
            "benchmarks.gan",
            "gendl_bounds",
            {
                "folder": folder,
                "num_steps": scale.num_steps,
                "seed": SEED,
                "policy": policy,
                "layer_repeats": scale.layer_repeats,
            },
            CHILD_ENV,
        )
        for policy in policies
    }


def ratios(training: dict[str, Any], policies: Sequence[str]) -> dict[str, dict[str, float]]:
    """Under each policy, gendl against the book and the moving average against plain gendl; and
    gendl under each policy against gendl in float32."""
    book = training["book"]
    result = {}
    for policy in policies:
        gendl, ema = training[f"gendl_{policy}"], training[f"gendl_ema_{policy}"]
        result[policy] = {
            "speedup": gendl["steps_per_second"] / book["steps_per_second"],
            "cpu_speedup": gendl["steps_per_cpu_second"] / book["steps_per_cpu_second"],
            "ema_speedup": ema["steps_per_second"] / book["steps_per_second"],
            "ema_relative_throughput": ema["steps_per_second"] / gendl["steps_per_second"],
            "ema_relative_cpu_throughput": ema["steps_per_cpu_second"] / gendl["steps_per_cpu_second"],
            "peak_rss_ratio": gendl["peak_rss_bytes"] / book["peak_rss_bytes"],
        }
        if "float32" in policies and policy != "float32":
            float32 = training["gendl_float32"]
            result[policy]["over_float32"] = gendl["steps_per_second"] / float32["steps_per_second"]
            result[policy]["cpu_over_float32"] = (
                gendl["steps_per_cpu_second"] / float32["steps_per_cpu_second"]
            )
    return result


def spread(result: dict[str, Any]) -> float:
    """How far apart the runs of one case are in steps/s, relative to their median."""
    rates = [run["steps_per_second"] for run in result["runs"]]
    return (max(rates) - min(rates)) / statistics.median(rates)


def goal(training: dict[str, Any], ratio: dict[str, dict[str, float]], default_policy: str) -> dict[str, Any]:
    """Issue 15's goal: gendl's train step at this machine's default policy >= GOAL_SPEEDUP times
    the book's steps per second."""
    measured = ratio.get(default_policy)
    speedup = None if measured is None else measured["speedup"]
    return {
        "goal": f"GAN train step >= {GOAL_SPEEDUP}x the book's listing",
        "measure": "gendl steps/s / book steps/s after step 1 (medians)",
        "policy": default_policy,
        "measured": measured is not None,
        "ratio": speedup,
        "cpu_ratio": None if measured is None else measured["cpu_speedup"],
        "target": GOAL_SPEEDUP,
        "met": None if speedup is None else speedup >= GOAL_SPEEDUP,
        "spread": None
        if measured is None
        else max(spread(training["book"]), spread(training[f"gendl_{default_policy}"])),
    }


def step_bounds(result: dict[str, Any], step_float_ops: int) -> dict[str, Any]:
    """A training case's FLOP/s against the matmul peak of its compute dtype (each run's own, measured
    in its process right after its steps, so both met the same load), and the share of its step that
    the input pipeline alone would take."""
    step_seconds = 1 / result["steps_per_second"]
    return {
        "compute_dtype": COMPUTE_DTYPES[result["dtype_policy"]],
        "step_float_ops": step_float_ops,
        "step_seconds": step_seconds,
        "flops_per_second": step_float_ops / step_seconds,
        "peak_flops": result["peak_flops"],
        "share_of_peak": statistics.median(
            step_float_ops * run["steps_per_second"] / run["peak_flops"] for run in result["runs"]
        ),
        "input_share": result["input_seconds_per_batch"] / step_seconds,
    }


def layer_shares(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each profiled layer's share of the layers' summed time and of their FLOPs."""
    total_seconds = sum(layer["seconds"] for layer in layers)
    total_flops = sum(layer["float_ops"] for layer in layers)
    return [
        {
            **layer,
            "time_share": layer["seconds"] / total_seconds,
            "flop_share": layer["float_ops"] / total_flops,
        }
        for layer in layers
    ]


def bounds_summary(training: dict[str, Any], bounds: dict[str, Any]) -> dict[str, Any]:
    """Per training case its FLOP/s and share of the peak; per policy the empty step's share of the
    step and the layer that takes the most time beyond its share of the FLOPs."""
    cases = {
        name: step_bounds(
            result, result.get("step_float_ops") or bounds[result["dtype_policy"]]["step_float_ops"]
        )
        for name, result in training.items()
    }
    policies = {}
    for policy, measured in bounds.items():
        layers = layer_shares(measured["layers"])
        step_seconds = cases[f"gendl_{policy}"]["step_seconds"]
        policies[policy] = {
            **measured,
            "empty_step_share": measured["empty_step_seconds"] / step_seconds,
            "layers": layers,
            "most_excess_layer": max(layers, key=lambda layer: layer["time_share"] - layer["flop_share"]),
            "slowest_layer": max(layers, key=lambda layer: layer["time_share"]),
        }
    return {"cases": cases, "policies": policies}


# --- Report -----------------------------------------------------------------------------------


def training_table(training: dict[str, Any], ratio: dict[str, dict[str, float]]) -> str:
    rows = [
        [
            label(result),
            f"**{per_run(result, 'steps_per_second', '.3f')}**",
            per_run(result, "seconds_after_first_batch", ".1f"),
            f"{result['cpu_seconds_after_first_batch']:.1f}",
            f"{result['steps_per_cpu_second']:.3f}",
            f"{result['images_per_second']:.1f}",
            f"{result['first_batch_seconds']:.1f} s",
        ]
        for result in training.values()
    ]
    for policy, policy_ratio in ratio.items():
        rows += [
            [
                f"**gendl {policy} speed-up** (gendl steps/s / book's)",
                f"**{policy_ratio['speedup']:.2f}x**",
                "",
                "",
                f"{policy_ratio['cpu_speedup']:.2f}x",
                "",
                "",
            ],
            [
                f"gendl {policy} with EMA over the book",
                f"{policy_ratio['ema_speedup']:.2f}x",
                "",
                "",
                "",
                "",
                "",
            ],
            [
                f"gendl {policy} with EMA / without (the average's cost)",
                f"{policy_ratio['ema_relative_throughput']:.3f}x",
                "",
                "",
                f"{policy_ratio['ema_relative_cpu_throughput']:.3f}x",
                "",
                "",
            ],
        ]
        if "over_float32" in policy_ratio:
            rows.append(
                [
                    f"gendl {policy} / gendl float32",
                    f"{policy_ratio['over_float32']:.2f}x",
                    "",
                    "",
                    f"{policy_ratio['cpu_over_float32']:.2f}x",
                    "",
                    "",
                ]
            )
    return markdown_table(
        ["implementation", "steps/s", "seconds", "CPU seconds", "steps/CPU-s", "images/s", "step 1 (traces)"],
        rows,
    )


def memory_table(training: dict[str, Any], ratio: dict[str, dict[str, float]]) -> str:
    def data_cell(result: dict[str, Any]) -> str:
        if result["implementation"] == "book":
            return "none held: PNG files decoded per batch"
        return f"uint8, {'x'.join(map(str, result['data_shape']))}"

    rows = [
        [
            label(result),
            data_cell(result),
            mib(result["data_bytes"]),
            f"{result['data_seconds']:.2f} s",
            mib(result["rss_after_imports_bytes"]),
            mib(result["rss_after_data_bytes"]),
            f"**{mib(result['peak_rss_bytes'])}**",
        ]
        for result in training.values()
    ]
    rows += [
        [f"gendl {policy} / book", "", "", "", "", "", f"**{policy_ratio['peak_rss_ratio']:.2f}x**"]
        for policy, policy_ratio in ratio.items()
    ]
    return markdown_table(
        [
            "implementation",
            "training data",
            "data bytes",
            "data step",
            "RSS after imports",
            "RSS after data",
            "peak RSS",
        ],
        rows,
    )


def model_table(training: dict[str, Any]) -> str:
    rows = [
        [
            label(result),
            f"{result['discriminator_params']:,}",
            f"{result['generator_params']:,}",
            ", ".join(f"{run['losses']['d_loss']:.3f}" for run in result["runs"]),
            ", ".join(f"{run['losses']['g_loss']:.3f}" for run in result["runs"]),
        ]
        for result in training.values()
    ]
    return markdown_table(
        ["implementation", "discriminator params", "generator params", "d_loss", "g_loss"], rows
    )


def goal_line(record: dict[str, Any], training: dict[str, Any]) -> str:
    policy = record["policy"]
    if not record["measured"]:
        return policy_goal_not_measured(record)
    gendl, book = training[f"gendl_{policy}"], training["book"]
    return (
        f"Goal (issue 15): {record['goal']} under {policy}, this machine's default: "
        f"**{record['ratio']:.2f}x** (gendl {gendl['steps_per_second']:.3f} steps/s against the book's "
        f"{book['steps_per_second']:.3f}; per CPU second {record['cpu_ratio']:.2f}x) - "
        f"**{'met' if record['met'] else 'missed'}**."
        + (
            f" The runs of the same code are up to {record['spread']:.0%} apart in steps/s (a shared "
            "machine): the per-CPU-second ratio is the steadier."
            if record["spread"] > NOISY_SPREAD
            else ""
        )
    )


def bound_table(training: dict[str, Any], summary: dict[str, Any]) -> str:
    rows = []
    for name, result in training.items():
        case = summary["cases"][name]
        rows.append(
            [
                label(result),
                f"{case['step_float_ops'] / 1e9:.1f}",
                f"{case['step_seconds']:.2f} s",
                f"{case['flops_per_second'] / 1e9:.0f}",
                case["compute_dtype"],
                f"{case['peak_flops'] / 1e9:.0f}",
                f"**{case['share_of_peak']:.0%}**",
                f"{result['input_seconds_per_batch'] * 1e3:.1f} ms ({case['input_share']:.1%})",
            ]
        )
    return markdown_table(
        [
            "implementation",
            "GFLOP a step",
            "step (median)",
            "GFLOP/s",
            "compute dtype",
            "matmul peak GFLOP/s (in the run)",
            "share of peak",
            "input pipeline alone, a batch (share of the step)",
        ],
        rows,
    )


def layer_table(summary: dict[str, Any]) -> str:
    """Each layer's forward and backward pass alone under each policy, and bfloat16's speed-up."""
    policies = list(summary["policies"])
    per_policy = [summary["policies"][policy]["layers"] for policy in policies]
    headers = ["layer (batch)", "kind", "GFLOP"]
    for policy in policies:
        headers += [f"{policy}: dtype", "ms", "GFLOP/s", "time share"]
    if "float32" in policies and len(policies) > 1:
        headers += [f"{policy} / float32 speed-up" for policy in policies if policy != "float32"]
    rows = []
    for index, first in enumerate(per_policy[0]):
        row = [
            f"{first['model']} {first['layer']} ({first['batch_size']})",
            first["kind"],
            f"{first['float_ops'] / 1e9:.2f}",
        ]
        for layers in per_policy:
            layer = layers[index]
            rate = layer["float_ops"] / layer["seconds"] / 1e9 if layer["float_ops"] else 0.0
            row += [
                f"{layer['dtype_policy']} ({layer['input_dtype']} in)",
                f"{layer['seconds'] * 1e3:.1f}",
                f"{rate:.0f}" if rate else "",
                f"{layer['time_share']:.1%}",
            ]
        if "float32" in policies and len(policies) > 1:
            float32_seconds = per_policy[policies.index("float32")][index]["seconds"]
            row += [
                f"{float32_seconds / per_policy[position][index]['seconds']:.2f}x"
                for position, policy in enumerate(policies)
                if policy != "float32"
            ]
        rows.append(row)
    return markdown_table(headers, rows)


def bound_sentences(training: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """Per policy, in two sentences: how much of the peak the step uses, and what else is measured."""
    lines = []
    for policy, measured in summary["policies"].items():
        case = summary["cases"][f"gendl_{policy}"]
        gendl = training[f"gendl_{policy}"]
        overhead = max(measured["empty_step_share"], case["input_share"])
        excess, slowest = measured["most_excess_layer"], measured["slowest_layer"]
        if overhead < OVERHEAD_SHARE:
            verdict = (
                f"neither the input pipeline ({gendl['input_seconds_per_batch'] * 1e3:.1f} ms a batch "
                f"alone) nor Python (an empty `fit` step: {measured['empty_step_seconds'] * 1e3:.1f} ms, "
                f"{measured['empty_step_share']:.2%} of the step) "
                f"bounds it: the convolutions do"
            )
        else:
            verdict = (
                f"the input pipeline and the `fit` loop take {overhead:.0%} of the step "
                f"(input alone {case['input_share']:.0%}, empty `fit` step {measured['empty_step_share']:.0%})"
            )
        lines.append(
            f"- **{policy}**: the step's {case['step_float_ops'] / 1e9:.0f} GFLOP at "
            f"{case['flops_per_second'] / 1e9:.0f} GFLOP/s are {case['share_of_peak']:.0%} of this CPU's "
            f"{case['compute_dtype']} matmul peak ({case['peak_flops'] / 1e9:.0f} GFLOP/s); {verdict}. "
            f"Layer by layer, the {slowest['model']}'s {slowest['layer']} ({slowest['dtype_policy']}) takes "
            f"{slowest['time_share']:.0%} of the time for {slowest['flop_share']:.0%} of the FLOPs, and the "
            f"{excess['model']}'s {excess['layer']} ({excess['dtype_policy']}, {excess['input_dtype']} in) "
            f"{excess['time_share']:.0%} of the time for {excess['flop_share']:.0%} of them."
        )
    return lines


def report(results: dict[str, Any]) -> str:
    training, ratio, scale, info = (
        results["training"],
        results["ratios"],
        results["scale"],
        results["environment"],
    )
    summary = results["bounds"]
    num_steps = scale["num_steps"]
    peaks = ", ".join(
        f"{dtype} {flops / 1e9:.0f}" for dtype, flops in results["runtime"]["peak_flops"].items()
    )
    return "\n\n".join(
        [
            f"GAN benchmark ({results['scale_name']} scale), {info['date']}, {info['cpu_count']} CPUs, "
            f"TensorFlow {info['tensorflow']}, Keras {info['keras']}. {results['num_images']:,} Fashion-MNIST "
            f"images as {IMAGE_SIZE}x{IMAGE_SIZE} RGB PNGs, one epoch: step 1 (traces) + {num_steps} timed "
            f"steps, batch {BATCH_SIZE}, latent_dim {LATENT_DIM}, Adam {LEARNING_RATE:g} (both), label noise "
            f"{LABEL_NOISE:g}, dropout {DROPOUT:g}; gendl under {', '.join(results['policies'])}, the book in "
            f"float32; {scale['rounds']} run(s) each in its own process.",
            goal_line(results["goal"], training),
            f"a. Training, the {num_steps} steps after step 1 (median, then each run)\n\n"
            + training_table(training, ratio),
            "b. Memory: the training data, and the process's resident memory (peak: largest of the runs)\n\n"
            + memory_table(training, ratio),
            "c. Models, and the losses after the epoch (Keras's mean over its steps, each run)\n\n"
            + model_table(training),
            "d. What bounds a step. FLOPs: TensorFlow's count of the traced train step (gendl's EMA rows: "
            "without the average's elementwise update); the peak: the best 2048x2048 matmul of the compute "
            "dtype, measured in each run's process right after its steps (median; the share of peak is the "
            f"median of each run's own; measured alone before the runs, GFLOP/s: {peaks}); the input "
            "pipeline: one pass over the dataset without training\n\n" + bound_table(training, summary),
            "Each layer alone, forward and backward (gradients of its input and weights), best of "
            f"{scale['layer_repeats']} calls; time share: of the layers' summed time\n\n"
            + layer_table(summary),
            "\n".join(bound_sentences(training, summary)),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gan", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"a sanity run of {QUICK.num_steps} steps after step 1"
    )
    parser.add_argument(
        "--policies",
        type=parse_policies,
        default=list(POLICIES),
        help=f"Keras dtype policies for gendl's side, comma-separated (default: {','.join(POLICIES)})",
    )
    args = parser.parse_args(argv)
    scale_name, scale = ("quick", QUICK) if args.quick else ("real", REAL)
    if scale.num_images > NUM_SOURCE_IMAGES:
        raise ValueError(
            f"num_steps must be <= {NUM_SOURCE_IMAGES // BATCH_SIZE - 1} (Fashion-MNIST's training "
            f"set in batches of {BATCH_SIZE}), got {scale.num_steps}"
        )

    def measure() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
        # The peaks first, while no training run has warmed or fragmented anything.
        facts = run_in_child("benchmarks.gan", "runtime_facts", {}, CHILD_ENV)
        with tempfile.TemporaryDirectory(prefix="gendl-bench-gan-") as folder:
            written = run_in_child(
                "benchmarks.gan",
                "write_image_folder",
                {"folder": folder, "num_images": scale.num_images},
                CHILD_ENV,
            )
            training = measure_training(scale, folder, args.policies)
            return facts, written, training, measure_bounds(scale, folder, args.policies)

    (facts, folder, training, bounds), seconds = timed(measure)
    ratio = ratios(training, args.policies)
    results = {
        "scale_name": scale_name,
        "scale": asdict(scale),
        "policies": args.policies,
        "num_images": scale.num_images,
        "image_folder": folder,
        "environment": environment(),
        "runtime": facts,
        "seed": SEED,
        "batch_size": BATCH_SIZE,
        "latent_dim": LATENT_DIM,
        "learning_rate": LEARNING_RATE,
        "label_noise": LABEL_NOISE,
        "dropout": DROPOUT,
        "width": WIDTH,
        "ema_decay": EMA_DECAY,
        "training": training,
        "ratios": ratio,
        "goal": goal(training, ratio, facts["default_policy"]),
        "bounds": bounds_summary(training, bounds),
        "benchmark_seconds": seconds,
    }
    suffix = "_quick" if args.quick else ""
    path = write_results(REPO_ROOT / "benchmarks" / "results" / f"gan{suffix}.json", results)
    print(report(results))
    print(f"\nMeasured in {seconds:.0f} s; results in {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
