"""Neural style transfer: gendl (`tasks.style_transfer`) against the book's listing, measured in one run.

    python -m benchmarks.style_transfer [--quick] [--policies float32,mixed_bfloat16]

gendl's side runs under each Keras dtype policy of --policies (applied with
`tasks.runtime.configure_runtime`, as gendl's steps do; mixed_bfloat16 is what `auto` picks on a
CPU with AVX512_BF16); the book's side runs once, in float32 as printed.

a. per-step time and peak memory: the book's step (base, style and generated image through the
   network as one batch of 3, every step) against gendl's `make_loss_and_grads` step (targets
   computed once, only the generated image each step), both followed by the same SGD update;
   and faithfulness: from the same image, with the same weights and style pixels, the first
   losses of the book's loop and of gendl's `stylize` with SGD agree;
b. the optimiser choice: the book's schedule (its SGD, its iterations) sets the loss to reach,
   L_book; gendl's `stylize` with sgd, adam and lbfgs, each with the same budget of
   evaluations, reports the evaluations and wall seconds it needs to reach L_book, and its loss
   at the end of the budget;
c. coarse to fine: at twice the height, num_scales 2 against 1 with the fastest optimiser of b
   at the default policy, the wall time to reach the single-scale run's final loss;
d. what bounds a step: its FLOPs (TensorFlow's profiler count of the traced step, and of the ops
   that run), its FLOP/s against this CPU's matmul peak for the compute dtype, the share of the
   step that the compiled call, the SGD update and an empty call take, and an op profile; and
   which dtype each op of gendl's step computes in (Gram matrices and losses must stay float32).

Every measured run is its own interpreter (`run_in_child`), one after the other: each starts
equally cold, and its peak memory is its own. Backbone loading is not timed. Prints markdown
tables and writes benchmarks/results/style_transfer[_quick].json.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
    run_in_child,
    time_calls,
    timed,
    write_results,
)
from tasks.params import load_params

CONTENT = "bundled:china"  # 640x427, ships with scikit-learn
STYLE = "https://img-datasets.s3.amazonaws.com/starry_night.jpg"  # 512x238, from the Keras cache
CONTENT_LAYER = "block5_conv2"  # the book's
STYLE_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")
# (content, style, total variation). HED's VGG16 activations are on another scale than ImageNet
# VGG19's: with the book's weights the content term is negligible (see "weighted terms").
WEIGHTS = (1e-4, 1e-4, 1e-6)
BOOK_WEIGHTS = (2.5e-8, 1e-6, 1e-6)
OPTIMIZERS = ("sgd", "adam", "lbfgs")
# b.'s runs: gendl's optimisers as shipped, and L-BFGS again with one OpenBLAS thread. SciPy's
# L-BFGS-B calls BLAS between evaluations; OpenBLAS's threads then spin-wait and take the cores
# from TensorFlow's next step (measured: ~50 ms instead of ~32 per evaluation at 96x64).
RUNS = {
    "sgd": ("sgd", {}),
    "adam": ("adam", {}),
    "lbfgs": ("lbfgs", {}),
    "lbfgs, 1 BLAS thread": ("lbfgs", {"OPENBLAS_NUM_THREADS": "1"}),
}
# "Reaching" L_book allows this relative slack. gendl's SGD follows the book's trajectory within
# float rounding (2e-7 over the first steps, ~5e-4 after 4,000), so it reaches L_book within a few
# of the book's own iterations, on either side: a strict `<=` would make that a coin toss.
REACH_TOLERANCE = 1e-4
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}
POLICIES = ("float32", "mixed_bfloat16")  # --policies' default: float32 and what `auto` picks here
# Under a mixed policy these ops of gendl's step must compute in float32: the Gram matrices
# (MatMul), the squared differences and their sums, the style loss's normalisation (RealDiv) and
# the total variation's power. The convolutions, biases and ReLUs may take the compute dtype.
FLOAT32_OPERATIONS = ("MatMul", "Square", "Sum", "RealDiv", "Pow")
# Kinds of ops in the op profile, by the kernel's type (oneDNN's names: _MklNativeFusedConv2D, ...).
OP_KINDS = (
    ("BackpropFilter", "conv filter gradients"),
    ("BackpropInput", "conv input gradients"),
    ("Conv2D", "conv forward"),
    ("MatMul", "Gram matmuls"),
    ("Cast", "casts"),
)
CONVOLUTION_KINDS = ("conv forward", "conv input gradients", "conv filter gradients")


@dataclass(frozen=True)
class Scale:
    height: int  # the content's height in a. (also timed at large_height) and b.; the style is
    # stretched to the content's size
    iterations: int  # the book's loop; also each gendl optimiser's budget of evaluations
    step_timing_steps: int  # a.: timed steps after the warm-up step
    step_timing_rounds: int  # a.: each round times the book and gendl (each policy) once, ABBA across rounds
    first_losses: int  # a.: losses compared from the same start
    large_height: int  # c.
    large_iterations: int  # c.: evaluations per scale


# On 2 shared cores a gendl float32 step takes 30-60 ms at 96x64 (90-170 ms at 192x128) and the
# book's 2.5-3x that: the book's 4,000 iterations and gendl's four float32 runs of 4,000 evaluations
# fit in ~20 minutes at this height (the three mixed_bfloat16 runs add ~5); at 128 px the book's
# loop alone took ~30 minutes.
REAL = Scale(
    height=64,
    iterations=4000,
    step_timing_steps=30,
    step_timing_rounds=2,
    first_losses=5,
    large_height=128,
    large_iterations=500,
)
QUICK = Scale(
    height=64,
    iterations=100,
    step_timing_steps=5,
    step_timing_rounds=1,
    first_losses=5,
    large_height=128,
    large_iterations=30,
)


# --- In the children -------------------------------------------------------------------------------


def prepare_inputs(heights: list[int], directory: str) -> dict[str, Any]:
    """The content photo at each height, stored as gendl's `images` step stores it (PNG), and the
    policy `runtime.dtype_policy: auto` picks on this machine."""
    import numpy as np
    import tensorflow as tf

    from tasks import images
    from tasks.runtime import choose_dtype_policy, cpu_has_bfloat16
    from tasks.style_transfer.data import resize_to_height

    photo = images.read_image(images.resolve_source(CONTENT))
    contents = {}
    for height in heights:
        path = Path(directory) / f"content_{height}.png"
        pixels = resize_to_height(photo, height).numpy()
        images.save_image(np.clip(pixels, 0, 255), path)
        contents[str(height)] = {"path": str(path), "shape": list(pixels.shape[:2])}
    style = images.resolve_source(STYLE)
    return {
        "contents": contents,
        "style_path": str(style),
        "style_shape": list(images.read_image(style).shape[:2]),
        "photo_shape": list(photo.shape[:2]),
        "default_policy": choose_dtype_policy(
            "auto", len(tf.config.list_physical_devices("GPU")), cpu_has_bfloat16()
        ),
    }


def compute_peaks(dtypes: list[str]) -> dict[str, Any]:
    """d.: this CPU's matmul FLOP/s for each compute dtype, the yardstick of a step's FLOP/s."""
    return {"peaks": {dtype: matmul_peak_flops(dtype) for dtype in dtypes}}


def apply_policy(policy: str, seed: int) -> str:
    """Set up the runtime as gendl's steps do, under `policy`; returns its compute dtype."""
    import keras

    from tasks.runtime import configure_runtime

    configure_runtime(seed, dtype_policy=policy)
    return keras.mixed_precision.global_policy().compute_dtype


def step_flops(concrete_function: Any) -> dict[str, int]:
    """FLOPs of one call: in the whole traced graph (`harness.float_ops`), in the ops that run,
    and in the convolutions among those."""
    needed = executed_operations(concrete_function)
    return {
        "graph_flops": float_ops(concrete_function),
        "executed_flops": int(sum(operation_flops(operation) for operation in needed)),
        "convolution_flops": int(sum(operation_flops(op) for op in needed if op.type.startswith("Conv2D"))),
    }


def float32_checks(
    concrete_function: Any, losses: dict[str, Any], gradient: Any, pixels: Any
) -> dict[str, Any]:
    """Which dtype gendl's step computes each part in: its ops by type, the losses, the gradient,
    the image optimised and the targets (content features, style Grams) the step captures."""
    import tensorflow as tf

    dtypes = operation_dtypes(executed_operations(concrete_function))
    captured = sorted(
        {tensor.dtype.name for tensor in concrete_function.captured_inputs if tensor.dtype != tf.resource}
    )
    values = {
        "losses": sorted({value.dtype.name for value in losses.values()}),
        "gradient": [gradient.dtype.name],
        "image": [pixels.dtype.name],
        "targets": captured,
        **{f"op {kind}": dtypes.get(kind, []) for kind in FLOAT32_OPERATIONS},
    }
    return {
        "operations": dtypes,
        "must_be_float32": values,
        "all_float32": all(names == ["float32"] for names in values.values() if names),
        "convolutions": dtypes.get("Conv2D", []),
    }


def op_kind(kernel_type: str) -> str:
    return next((kind for key, kind in OP_KINDS if key in kernel_type), "other ops")


def op_profile(call: Callable[[], Any], calls: int) -> dict[str, float]:
    """Seconds per call spent in each kind of op (OP_KINDS, by the kernel's type)."""
    return kernel_seconds(call, lambda name, op_type: op_kind(op_type), calls)


def time_parts(evaluate: Callable[[], Any], update: Callable[[], Any], calls: int) -> dict[str, float]:
    """Median seconds of the step's parts alone: the compiled loss-and-gradient call (its losses
    read back, as the loop does), the optimiser's update, and an empty compiled call (the price
    of calling into TensorFlow from Python at all)."""
    import tensorflow as tf

    empty = tf.function(lambda: tf.constant(0.0))
    return {
        "evaluate_seconds": time_calls(evaluate, repeats=calls).median_seconds,
        "update_seconds": time_calls(update, repeats=calls).median_seconds,
        "empty_call_seconds": time_calls(lambda: float(empty()), repeats=calls).median_seconds,
    }


def stretched_style(style_path: str, shape: Sequence[int]):
    """The style pixels the book optimises against: load_img with target_size, nearest-neighbour."""
    import keras

    return keras.utils.img_to_array(keras.utils.load_img(style_path, target_size=tuple(shape)))


def set_up_book(content_path: str, style_path: str, height: int, weights: Sequence[float]):
    from benchmarks import book_style_transfer as book

    model, load_seconds = timed(book.load_model)
    book.set_up(model, tuple(weights))
    book.set_image_size(content_path, height)
    return book, load_seconds, book.prepare_images(content_path, style_path)


def gendl_settings(sgd: dict[str, float], adam_learning_rate: float, lbfgs_history: int):
    from tasks.style_transfer.params import AdamParams, LbfgsParams, SgdParams

    return (
        SgdParams(**sgd),
        AdamParams(learning_rate=adam_learning_rate),
        LbfgsParams(history=lbfgs_history),
    )


def timed_progress_class():
    """`LossHistory` (tasks/style_transfer/optimizers.py) that also keeps the wall and CPU time of each
    evaluation."""
    from tasks.style_transfer.optimizers import LossHistory

    @dataclass
    class TimedProgress(LossHistory):
        times: list[tuple[float, float]] = field(default_factory=list)  # (perf_counter, process_time)

        def __call__(self, losses, image) -> None:
            super().__call__(losses, image)
            self.times.append((time.perf_counter(), time.process_time()))

    return TimedProgress


class LogMessages(logging.Handler):
    """Keeps the messages logged to it."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def book_steps(
    height: int, steps: int, content_path: str, style_path: str, weights: list[float]
) -> dict[str, Any]:
    """a.: the book's step (listing 12.24's loop body), timed after one warm-up (tracing) step;
    then d.: its FLOPs, its parts timed alone and an op profile."""
    import tensorflow as tf

    book, load_seconds, (base_image, style_reference_image, combination_image) = set_up_book(
        content_path, style_path, height, weights
    )
    rss_before = current_rss_bytes()
    optimizer = book.make_optimizer()

    def loop(iterations: int):
        return book.run(
            optimizer,
            base_image,
            style_reference_image,
            combination_image,
            iterations,
            report=lambda message: None,
            save_img=lambda fname, img: None,
        )

    _, warmup_seconds = timed(lambda: loop(1))
    cpu_started = time.process_time()
    _, seconds = timed(lambda: loop(steps))
    step_cpu_seconds = (time.process_time() - cpu_started) / steps
    steps_peak_rss = peak_rss_bytes()  # before d., whose profiler trace takes memory of its own

    # d.: what bounds the step, measured after the timed steps.
    images = (combination_image, base_image, style_reference_image)
    copy, update_optimizer = tf.Variable(combination_image), book.make_optimizer()
    _, gradients = book.compute_loss_and_grads(*images)

    def evaluate() -> float:
        return float(book.compute_loss_and_grads(*images)[0])

    return {
        "backbone_load_seconds": load_seconds,
        "rss_before_steps_bytes": rss_before,
        "warmup_seconds": warmup_seconds,
        "step_seconds": seconds / steps,
        "step_cpu_seconds": step_cpu_seconds,
        "steps_peak_rss_bytes": steps_peak_rss,
        "steps": steps,
        "compute_dtype": "float32",
        **step_flops(book.compute_loss_and_grads.get_concrete_function(*images)),
        **time_parts(evaluate, lambda: update_optimizer.apply_gradients([(gradients, copy)]), steps),
        "op_seconds": op_profile(evaluate, steps),
    }


def gendl_steps(
    height: int,
    steps: int,
    content_path: str,
    style_path: str,
    weights: list[float],
    sgd: dict[str, float],
    adam_learning_rate: float,
    lbfgs_history: int,
    policy: str,
    seed: int,
) -> dict[str, Any]:
    """a.: gendl's step under `policy`: `make_loss_and_grads` (targets once) and `descend`'s loop
    with the SGD; then d.: its FLOPs, the dtype of each part, its parts timed alone, an op profile."""
    import tensorflow as tf

    from tasks import images
    from tasks.backbones import load_backbone
    from tasks.style_transfer import model, optimizers
    from tasks.style_transfer.params import GridPoint

    compute_dtype = apply_policy(policy, seed)
    content = images.read_image(Path(content_path))
    style = stretched_style(style_path, content.shape[:2])
    backbone, load_seconds = timed(lambda: load_backbone("hed_vgg16"))
    sgd_params, adam_params, _ = gendl_settings(sgd, adam_learning_rate, lbfgs_history)
    point = GridPoint(*weights, STYLE_LAYERS, "sgd")
    rss_before = current_rss_bytes()
    extractor = backbone.feature_extractor([CONTENT_LAYER, *STYLE_LAYERS])  # as stylize builds it
    loss_and_grads, target_seconds = timed(
        lambda: model.make_loss_and_grads(
            extractor, tf.constant(content), [tf.constant(style)], [1.0], point, CONTENT_LAYER
        )
    )
    progress = timed_progress_class()(0, lambda pixels: pixels)
    optimizer = optimizers.keras_optimizer("sgd", sgd_params, adam_params)
    started, cpu_started = time.perf_counter(), time.process_time()
    optimizers.descend(loss_and_grads, tf.constant(content), steps + 1, optimizer, progress)
    ended, cpu_ended = time.perf_counter(), time.process_time()
    steps_peak_rss = peak_rss_bytes()  # before d., whose profiler trace takes memory of its own
    # The first evaluation traces; from its end to the loop's end are `steps` whole steps.
    first_wall, first_cpu = progress.times[0]

    # d.: what bounds the step, measured after the timed steps.
    pixels, copy = tf.Variable(content), tf.Variable(content)
    losses, gradients = loss_and_grads(pixels)
    update_optimizer = optimizers.keras_optimizer("sgd", sgd_params, adam_params)
    concrete_function = loss_and_grads.get_concrete_function(pixels)

    def evaluate() -> list[float]:
        return [float(value) for value in loss_and_grads(pixels)[0].values()]  # as LossHistory reads them

    return {
        "backbone_load_seconds": load_seconds,
        "rss_before_steps_bytes": rss_before,
        "target_seconds": target_seconds,
        "warmup_seconds": first_wall - started,
        "step_seconds": (ended - first_wall) / steps,
        "step_cpu_seconds": (cpu_ended - first_cpu) / steps,
        "steps_peak_rss_bytes": steps_peak_rss,
        "steps": steps,
        "warmup_cpu_seconds": first_cpu - cpu_started,
        "policy": policy,
        "compute_dtype": compute_dtype,
        **step_flops(concrete_function),
        "dtypes": float32_checks(concrete_function, losses, gradients, pixels),
        **time_parts(evaluate, lambda: update_optimizer.apply_gradients([(gradients, copy)]), steps),
        "op_seconds": op_profile(evaluate, steps),
    }


def first_losses(
    height: int,
    steps: int,
    content_path: str,
    style_path: str,
    weights: list[float],
    sgd: dict[str, float],
    adam_learning_rate: float,
    lbfgs_history: int,
    policy: str,
    seed: int,
) -> dict[str, Any]:
    """a.: the first `steps` losses of the book's loop (float32) and of gendl's `stylize` (sgd,
    under `policy`), same start.

    gendl gets the style pixels the book uses (stretched to the content's size); one more
    evaluation with the style at its own aspect ratio (gendl's way) shows what that changes.
    """
    from tasks import images
    from tasks.backbones import load_backbone
    from tasks.style_transfer import model
    from tasks.style_transfer.params import GridPoint

    book, _, (base_image, style_reference_image, combination_image) = set_up_book(
        content_path, style_path, height, weights
    )
    optimizer = book.make_optimizer()
    book_losses = [
        float(
            book.run(
                optimizer,
                base_image,
                style_reference_image,
                combination_image,
                1,  # one iteration at a time: the book reads its loss every 100
                report=lambda message: None,
                save_img=lambda fname, img: None,
            )
        )
        for _ in range(steps)
    ]

    apply_policy(policy, seed)  # after the book's network is built: the book stays float32
    content = images.read_image(Path(content_path))
    backbone = load_backbone("hed_vgg16")
    settings = gendl_settings(sgd, adam_learning_rate, lbfgs_history)
    point = GridPoint(*weights, STYLE_LAYERS, "sgd")

    def stylize(style, iterations):
        _, progress = model.stylize(
            content, [style], [1.0], backbone, CONTENT_LAYER, point, iterations, [height], False, 0, *settings
        )
        return progress.records

    records = stylize(stretched_style(style_path, content.shape[:2]), steps)
    own_aspect = stylize(images.read_image(Path(style_path)), 1)[0]
    gendl_losses = [record["loss"] for record in records]
    return {
        "policy": policy,
        "book": book_losses,
        "gendl": gendl_losses,
        "relative_differences": [abs(g - b) / abs(b) for g, b in zip(gendl_losses, book_losses)],
        "gendl_first_terms": records[0],
        "gendl_own_aspect_first_terms": own_aspect,
    }


def book_run(
    height: int, iterations: int, content_path: str, style_path: str, weights: list[float], output_path: str
) -> dict[str, Any]:
    """b.: the book's whole loop (listing 12.24), its loss read where it prints it, every 100."""
    import keras

    book, load_seconds, (base_image, style_reference_image, combination_image) = set_up_book(
        content_path, style_path, height, weights
    )
    optimizer = book.make_optimizer()
    reports: list[dict[str, float]] = []

    def report(message: str) -> None:  # "Iteration {i}: loss={loss:.2f}"
        iteration, loss = message.removeprefix("Iteration ").split(": loss=")
        reports.append(
            {
                "iteration": int(iteration),
                "loss": float(loss),
                "seconds": time.perf_counter() - started,
                "cpu_seconds": time.process_time() - cpu_started,
            }
        )

    with tempfile.TemporaryDirectory(prefix="gendl-bench-book-") as directory:
        started, cpu_started = time.perf_counter(), time.process_time()
        loss = book.run(
            optimizer,
            base_image,
            style_reference_image,
            combination_image,
            iterations,
            report=report,
            save_img=lambda fname, img: keras.utils.save_img(str(Path(directory) / fname), img),
        )
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    keras.utils.save_img(output_path, book.deprocess_image(combination_image.numpy()))
    return {
        "backbone_load_seconds": load_seconds,
        "final_loss": float(loss),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "reports": reports,
        "iterations": iterations,
    }


def gendl_run(
    optimizer: str,
    height: int,
    iterations: int,
    num_scales: int,
    content_path: str,
    style_path: str,
    weights: list[float],
    sgd: dict[str, float],
    adam_learning_rate: float,
    lbfgs_history: int,
    output_path: str,
    policy: str,
    seed: int,
) -> dict[str, Any]:
    """b. and c.: gendl's `stylize` under `policy` (`iterations` evaluations per scale), every
    evaluation's loss and time. Time runs from the call (targets, tracing and all) to each
    evaluation's end. The image returned is then scored once more in float32, so runs under
    different policies compare on the same objective."""
    from tasks import images
    from tasks.backbones import load_backbone
    from tasks.style_transfer import model
    from tasks.style_transfer.params import GridPoint

    apply_policy(policy, seed)

    content = images.read_image(Path(content_path))
    style = stretched_style(style_path, content.shape[:2])
    backbone, load_seconds = timed(lambda: load_backbone("hed_vgg16"))
    point = GridPoint(*weights, STYLE_LAYERS, optimizer)
    messages = LogMessages()  # gendl's INFO log, for L-BFGS's stop message
    logger = logging.getLogger("tasks.style_transfer")  # the package's: model's and optimizers' loggers
    logger.setLevel(logging.INFO)
    logger.addHandler(messages)
    heights = model.scale_heights(height, num_scales, 2.0)
    # stylize builds its LossHistory by name: this one also keeps each evaluation's time.
    model.LossHistory = timed_progress_class()
    # stylize returns its solution clipped to [0, 255]; the float32 score is of the solution itself,
    # the image its own final loss is of (stylize calls `optimize` by name too).
    solutions = []
    optimize = model.optimize

    def keeping_solution(*args: Any, **kwargs: Any) -> Any:
        solutions.append(optimize(*args, **kwargs))
        return solutions[-1]

    model.optimize = keeping_solution
    started, cpu_started = time.perf_counter(), time.process_time()
    final, progress = model.stylize(
        content,
        [style],
        [1.0],
        backbone,
        CONTENT_LAYER,
        point,
        iterations,
        heights,
        False,
        0,
        *gendl_settings(sgd, adam_learning_rate, lbfgs_history),
    )
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    images.save_image(final, Path(output_path))
    return {
        "policy": policy,
        "final_float32_loss": float32_loss(
            solutions[-1], content, style, point, None if policy != "float32" else backbone
        ),
        "optimizer": optimizer,
        "heights": heights,
        "backbone_load_seconds": load_seconds,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "losses": [record["loss"] for record in progress.records],
        "scales": [record["scale"] for record in progress.records],
        "times": [wall - started for wall, _ in progress.times],
        "cpu_times": [cpu - cpu_started for _, cpu in progress.times],
        "last_terms": progress.records[-1],
        "first_terms": progress.records[0],
        "log": messages.messages,
    }


def float32_loss(solution: Any, content: Any, style: Any, point: Any, backbone: Any = None) -> float:
    """The loss of `stylize`'s solution computed in float32 (with `backbone` if given, else with a
    float32 copy of hed_vgg16)."""
    import keras
    import tensorflow as tf

    from tasks.backbones import load_backbone
    from tasks.style_transfer import model

    if backbone is None:
        keras.mixed_precision.set_global_policy("float32")
        backbone = load_backbone("hed_vgg16")
    extractor = backbone.feature_extractor([CONTENT_LAYER, *STYLE_LAYERS])
    loss_and_grads = model.make_loss_and_grads(
        extractor, tf.constant(content), [tf.constant(style)], [1.0], point, CONTENT_LAYER
    )
    return float(loss_and_grads(tf.convert_to_tensor(solution, tf.float32))[0]["loss"])


# --- In the benchmark process ------------------------------------------------------------------------


def in_child(function: str, env: dict[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
    result = run_in_child("benchmarks.style_transfer", function, kwargs, {**CHILD_ENV, **(env or {})})
    shown = {
        k: v
        for k, v in kwargs.items()
        if k in ("optimizer", "height", "iterations", "num_scales", "steps", "policy")
    }
    print(f"  {function}({', '.join(f'{k}={v}' for k, v in shown.items())}) done", flush=True)
    return result


def reach(run: dict[str, Any], threshold: float, scale: int | None = None) -> dict[str, Any]:
    """The first evaluation (of `scale`, default the last) whose loss is within REACH_TOLERANCE
    of `threshold` or below, its wall and CPU seconds since the run's start; None if never."""
    scale = max(run["scales"]) if scale is None else scale
    limit = threshold * (1 + REACH_TOLERANCE)
    index_in_scale = 0
    for index, (loss, loss_scale) in enumerate(zip(run["losses"], run["scales"])):
        if loss_scale != scale:
            continue
        index_in_scale += 1
        if loss <= limit:
            return {
                "evaluation": index_in_scale,
                "total_evaluations": index + 1,
                "seconds": run["times"][index],
                "cpu_seconds": run["cpu_times"][index],
            }
    return {"evaluation": None, "total_evaluations": None, "seconds": None, "cpu_seconds": None}


def end_loss(run: dict[str, Any]) -> float:
    """The loss of the image `stylize` returns: L-BFGS returns the best image it evaluated; SGD and
    Adam the last iterate (taken as its last evaluated loss, one update before)."""
    last_scale = max(run["scales"])
    losses = [loss for loss, scale in zip(run["losses"], run["scales"]) if scale == last_scale]
    return min(losses) if run["optimizer"] == "lbfgs" else losses[-1]


def step_ms(run: dict[str, Any]) -> float:
    """Wall milliseconds per evaluation after the first (which computes targets and traces)."""
    times = run["times"]
    return 1000 * (times[-1] - times[0]) / (len(times) - 1)


CHECKPOINTS = (100, 200, 500, 1000, 2000, 4000)


def curve(run: dict[str, Any], points: int = 80) -> list[list[float]]:
    """[evaluation, seconds, loss] at the first, every len/`points`-th and the last evaluation."""
    count = len(run["losses"])
    every = max(1, count // points)
    evaluations = sorted({1, *range(every, count + 1, every), count})
    return [[n, round(run["times"][n - 1], 3), run["losses"][n - 1]] for n in evaluations]


def checkpoints(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The loss at each of CHECKPOINTS evaluations (of the last scale) and the best so far; keyed
    by str(evaluations), as JSON keeps them. L-BFGS may stop before the later ones."""
    last_scale = max(run["scales"])
    losses = [loss for loss, scale in zip(run["losses"], run["scales"]) if scale == last_scale]
    return {str(n): {"loss": losses[n - 1], "best": min(losses[:n])} for n in CHECKPOINTS if n <= len(losses)}


def compact(run: dict[str, Any]) -> dict[str, Any]:
    """A run for the results file: every field but the per-evaluation lists, plus a curve."""
    kept = {k: v for k, v in run.items() if k not in ("losses", "scales", "times", "cpu_times")}
    return {
        **kept,
        "evaluations": len(run["losses"]),
        "best_loss": min(run["losses"]),
        "end_loss": end_loss(run),
        "step_ms": step_ms(run),
        "checkpoints": checkpoints(run),
        "curve": curve(run),
    }


def gendl_kwargs(params: dict[str, Any], seed: int, policy: str) -> dict[str, Any]:
    return {
        "weights": list(WEIGHTS),
        "sgd": params["sgd"],
        "adam_learning_rate": params["adam"]["learning_rate"],
        "lbfgs_history": params["lbfgs"]["history"],
        "policy": policy,
        "seed": seed,
    }


MEDIAN_KEYS = (
    "step_seconds",
    "step_cpu_seconds",
    "warmup_seconds",
    "steps_peak_rss_bytes",
    "evaluate_seconds",
    "update_seconds",
    "empty_call_seconds",
)


def summarise_steps(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One implementation's step runs: the first run's fields, the medians of the timings, and
    every run."""
    kinds = sorted({kind for run in runs for kind in run["op_seconds"]})
    return {
        **runs[0],
        **{key: statistics.median(run[key] for run in runs) for key in MEDIAN_KEYS},
        "op_seconds": {
            kind: statistics.median(run["op_seconds"].get(kind, 0.0) for run in runs) for kind in kinds
        },
        "runs": runs,
    }


def measure_steps(
    scale: Scale, inputs: dict[str, Any], params: dict[str, Any], seed: int, policies: Sequence[str]
) -> dict[str, Any]:
    """a. and d.: per-step time, peak memory and what bounds the step at both heights, the book
    and gendl under each policy, each in its own process, rounds in ABBA order; then the first
    losses of both from the same start, under each policy."""
    result: dict[str, Any] = {}
    names = ["book", *policies]
    for height in (scale.height, scale.large_height):
        common = {
            "height": height,
            "steps": scale.step_timing_steps,
            "content_path": inputs["contents"][str(height)]["path"],
            "style_path": inputs["style_path"],
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for round_index in range(scale.step_timing_rounds):
            for name in names if round_index % 2 == 0 else reversed(names):
                if name == "book":
                    runs[name].append(in_child("book_steps", **common, weights=list(WEIGHTS)))
                else:
                    runs[name].append(in_child("gendl_steps", **common, **gendl_kwargs(params, seed, name)))
        result[str(height)] = {
            "book": summarise_steps(runs["book"]),
            "gendl": {policy: summarise_steps(runs[policy]) for policy in policies},
        }
    result["first_losses"] = {
        policy: in_child(
            "first_losses",
            height=scale.height,
            steps=scale.first_losses,
            content_path=inputs["contents"][str(scale.height)]["path"],
            style_path=inputs["style_path"],
            **gendl_kwargs(params, seed, policy),
        )
        for policy in policies
    }
    return result


def runs_of(policy: str) -> dict[str, tuple[str, dict[str, str]]]:
    """b.'s runs under `policy`: all of RUNS in float32; the optimisers as shipped otherwise (the
    one-BLAS-thread rerun only confirms what gendl's lbfgs now does itself)."""
    return dict(RUNS) if policy == "float32" else {name: RUNS[name] for name in OPTIMIZERS}


def measure_optimizers(
    scale: Scale,
    inputs: dict[str, Any],
    params: dict[str, Any],
    seed: int,
    policies: Sequence[str],
    directory: Path,
) -> dict[str, Any]:
    """b.: the book's schedule gives L_book; each gendl optimiser's evaluations and time to reach
    it, under each policy."""
    common = {
        "height": scale.height,
        "iterations": scale.iterations,
        "content_path": inputs["contents"][str(scale.height)]["path"],
        "style_path": inputs["style_path"],
    }
    book = in_child("book_run", **common, weights=list(WEIGHTS), output_path=str(directory / "book.png"))
    target = book["final_loss"]
    gendl: dict[str, dict[str, Any]] = {}
    for policy in policies:
        gendl[policy] = {}
        for name, (optimizer, env) in runs_of(policy).items():
            run = in_child(
                "gendl_run",
                env=env,
                optimizer=optimizer,
                num_scales=1,
                **common,
                **gendl_kwargs(params, seed, policy),
                output_path=str(directory / f"{image_name(name, policy)}.png"),
            )
            gendl[policy][name] = {**compact(run), "env": env, "reach": reach(run, target)}
    return {
        "book": book,
        "target_loss": target,
        "gendl": gendl,
        "images": {policy: image_differences(directory, policy, list(gendl[policy])) for policy in policies},
    }


def measure_scales(
    scale: Scale,
    inputs: dict[str, Any],
    params: dict[str, Any],
    seed: int,
    policy: str,
    optimizer: str,
    directory: Path,
) -> dict[str, Any]:
    """c.: num_scales 1 and 2 at the large height, the same evaluations per scale, under `policy`."""
    common = {
        "optimizer": optimizer,
        "height": scale.large_height,
        "iterations": scale.large_iterations,
        "content_path": inputs["contents"][str(scale.large_height)]["path"],
        "style_path": inputs["style_path"],
        **gendl_kwargs(params, seed, policy),
    }
    single = in_child(
        "gendl_run", num_scales=1, **common, output_path=str(directory / f"scales_1_{policy}.png")
    )
    double = in_child(
        "gendl_run", num_scales=2, **common, output_path=str(directory / f"scales_2_{policy}.png")
    )
    target = end_loss(single)
    return {
        "optimizer": optimizer,
        "target_loss": target,
        "single": {**compact(single), "reach": reach(single, target)},
        "double": {**compact(double), "reach": reach(double, target)},
        "double_coarse_seconds": double["times"][double["scales"].index(1) - 1],
    }


def image_differences(directory: Path, policy: str, names: Sequence[str]) -> dict[str, float]:
    """Mean absolute difference, in pixel levels, of each final image under `policy` from the book's."""
    import numpy as np
    from PIL import Image

    def load(name: str) -> Any:
        with Image.open(directory / f"{name}.png") as image:
            return np.asarray(image.convert("RGB"), dtype=np.int16)

    book = load("book")
    return {name: float(np.mean(np.abs(load(image_name(name, policy)) - book))) for name in names}


def image_name(run_name: str, policy: str) -> str:
    return f"gendl_{run_name.replace(', ', '_').replace(' ', '_')}_{policy}"


def winner(optimizers: dict[str, Any], policy: str, names: Sequence[str] = OPTIMIZERS) -> str:
    """Of `names` (default: the optimisers as shipped) under `policy`, the fastest to L_book; if
    none reached it, the one with the lowest loss at the end of the budget."""
    runs = {name: optimizers["gendl"][policy][name] for name in names}
    reached = {name: run for name, run in runs.items() if run["reach"]["seconds"] is not None}
    if reached:
        return min(reached, key=lambda name: reached[name]["reach"]["seconds"])
    return min(runs, key=lambda name: runs[name]["end_loss"])


def weighted_terms(terms: dict[str, float]) -> dict[str, Any]:
    """Each loss term times its weight, with WEIGHTS and with the book's, and its share of the sum."""
    names = ("content_loss", "style_loss", "total_variation_loss")
    result = {}
    for label, weights in (("benchmark", WEIGHTS), ("book", BOOK_WEIGHTS)):
        weighted = {name: weight * terms[name] for name, weight in zip(names, weights)}
        total = sum(weighted.values())
        result[label] = {
            "weights": list(weights),
            "weighted": weighted,
            "shares": {name: value / total for name, value in weighted.items()},
        }
    return {"unweighted": {name: terms[name] for name in names}, **result}


# --- What bounds a step (d.) and the goal line -----------------------------------------------------


def bound(run: dict[str, Any], peaks: dict[str, float]) -> dict[str, Any]:
    """A step's achieved FLOP/s against the matmul peak of its compute dtype, and where its time
    goes: the compiled call alone, the update and an empty call (the loop's own cost), the ops
    by kind (shares of the kernels' summed time)."""
    step, peak = run["step_seconds"], peaks[run["compute_dtype"]]
    op_seconds = run["op_seconds"]
    op_total = sum(op_seconds.values())
    return {
        "compute_dtype": run["compute_dtype"],
        "peak_flops_per_second": peak,
        "flops_per_second": run["executed_flops"] / step,
        "peak_share": run["executed_flops"] / step / peak,
        "call_flops_per_second": run["executed_flops"] / run["evaluate_seconds"],
        "loop_share": (run["update_seconds"] + run["empty_call_seconds"]) / step,
        "outside_call_share": max(0.0, step - run["evaluate_seconds"]) / step,
        "op_seconds_per_step": op_total,
        "op_shares": {kind: seconds / op_total for kind, seconds in op_seconds.items()} if op_total else {},
        "filter_gradients_ran": "conv filter gradients" in op_seconds,
    }


def bounds(
    steps: dict[str, Any], inputs: dict[str, Any], heights: Sequence[int], peaks: dict[str, float]
) -> dict[str, Any]:
    """d. for every step measured in a.: `bound`'s numbers and the verdict they give."""
    result: dict[str, Any] = {}
    for height in heights:
        runs = {"book": steps[str(height)]["book"]}
        runs.update({f"gendl {policy}": run for policy, run in steps[str(height)]["gendl"].items()})
        result[str(height)] = {}
        for name, run in runs.items():
            analysis = bound(run, peaks)
            analysis["verdict"] = verdict(
                analysis, run, block5_size(inputs["contents"][str(height)]["shape"])
            )
            result[str(height)][name] = analysis
    return result


def block5_size(shape: Sequence[int]) -> str:
    """VGG16's block5 feature map for an image of `shape`: four 2x2 poolings, rounding down."""
    return f"{shape[1] // 16}x{shape[0] // 16}"


def convolution_share(analysis: dict[str, Any]) -> float:
    return sum(analysis["op_shares"].get(kind, 0.0) for kind in CONVOLUTION_KINDS)


def verdict(analysis: dict[str, Any], run: dict[str, Any], feature_map: str) -> str:
    """What bounds a step, from its measured analysis, and the numbers that say so."""
    shares = analysis["op_shares"]
    measured = (
        f"{analysis['flops_per_second'] / 1e9:.0f} GFLOP/s, {analysis['peak_share']:.0%} of the "
        f"{analysis['compute_dtype']} matmul peak; convolutions {convolution_share(analysis):.0%} of the op "
        f"time (Gram matmuls {shares.get('Gram matmuls', 0.0):.0%}, casts {shares.get('casts', 0.0):.0%}); "
        f"SGD update {1000 * run['update_seconds']:.1f} ms and an empty compiled call "
        f"{1000 * run['empty_call_seconds']:.2f} ms of a {1000 * run['step_seconds']:.0f} ms step"
    )
    if analysis["loop_share"] >= 0.3:
        return f"the loop between compiled calls (Python, the update) bounds it: {measured}"
    if analysis["peak_share"] >= 0.5:
        return f"compute bounds it: {measured}"
    return (
        f"compute in the convolutions bounds it, on feature maps down to {feature_map} (block5) that "
        f"oneDNN runs below a 2048 matmul's rate, not Python: {measured}"
    )


def goal_lines(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 15 sets no goal for style transfer: one line says so, with the measured speed-up of
    gendl's step over the book's at the default policy (and at each policy measured)."""
    steps, heights = results["steps"], (results["scale"]["height"], results["scale"]["large_height"])
    speedups = {
        policy: {
            str(height): steps[str(height)]["book"]["step_seconds"]
            / steps[str(height)]["gendl"][policy]["step_seconds"]
            for height in heights
        }
        for policy in results["policies"]
    }
    return [
        {
            "goal": "none set by issue 15 for style transfer",
            "measure": "book seconds per step / gendl seconds per step",
            "policy": results["default_policy"],
            "ratios": speedups.get(results["default_policy"]),
            "ratios_by_policy": speedups,
            "target": None,
            "met": None,
        }
    ]


# --- Report -----------------------------------------------------------------------------------------


def steps_rss_bytes(run: dict[str, Any]) -> int:
    """How far the peak rose above the resident memory before the steps (backbone loaded)."""
    return run["steps_peak_rss_bytes"] - run["rss_before_steps_bytes"]


def mib(num_bytes: float) -> str:
    return f"{num_bytes / MIB:,.0f} MiB"


def size(shape: Sequence[int]) -> str:
    return f"{shape[1]}x{shape[0]}"


def seconds_cell(value: float | None) -> str:
    return "not reached" if value is None else f"{value:,.1f} s"


def step_table(results: dict[str, Any]) -> str:
    scale, inputs, steps = results["scale"], results["inputs"], results["steps"]

    def step_row(name: str, shape: Sequence[int], run: dict[str, Any]) -> list[str]:
        each = ", ".join(f"{1000 * r['step_seconds']:.0f}" for r in run["runs"])
        return [
            name,
            size(shape),
            f"**{1000 * run['step_seconds']:.0f}**" + (f" ({each})" if len(run["runs"]) > 1 else ""),
            f"{1000 * run['step_cpu_seconds']:.0f}",
            f"{run['warmup_seconds']:.1f} s",
            mib(run["rss_before_steps_bytes"]),
            f"**{mib(run['steps_peak_rss_bytes'])}**",
            mib(steps_rss_bytes(run)),
        ]

    def ratio_row(
        policy: str, shape: Sequence[int], book: dict[str, Any], gendl: dict[str, Any]
    ) -> list[str]:
        return [
            f"book / gendl {policy}",
            size(shape),
            f"**{book['step_seconds'] / gendl['step_seconds']:.2f}x**",
            f"{book['step_cpu_seconds'] / gendl['step_cpu_seconds']:.2f}x",
            "",
            "",
            f"{book['steps_peak_rss_bytes'] / gendl['steps_peak_rss_bytes']:.2f}x",
            f"{steps_rss_bytes(book) / steps_rss_bytes(gendl):.2f}x",
        ]

    rows = []
    for height in (scale["height"], scale["large_height"]):
        book, gendl = steps[str(height)]["book"], steps[str(height)]["gendl"]
        shape = inputs["contents"][str(height)]["shape"]
        rows.append(step_row("book: `compute_loss_and_grads` (batch of 3) + SGD, float32", shape, book))
        for policy, run in gendl.items():
            rows.append(
                step_row(f"gendl: `make_loss_and_grads` step + SGD (`descend`), {policy}", shape, run)
            )
        rows += [ratio_row(policy, shape, book, run) for policy, run in gendl.items()]
    return markdown_table(
        [
            "implementation",
            "image",
            "ms/step",
            "CPU ms/step",
            "first step (traces)",
            "RSS before steps",
            "peak RSS",
            "steps add",
        ],
        rows,
    )


def same_losses(results: dict[str, Any]) -> str:
    steps = results["steps"]
    gendl = steps[str(results["scale"]["height"])]["gendl"]
    lines = []
    for policy, first in steps["first_losses"].items():
        own, stretched = first["gendl_own_aspect_first_terms"], first["gendl_first_terms"]
        lines.append(
            f"Same losses, gendl under {policy} (targets computed once: "
            f"{gendl[policy]['target_seconds']:.2f} s): from the same image, the first {len(first['book'])} "
            f"losses of the book ({', '.join(f'{v:,.3f}' for v in first['book'])}) and of gendl's `stylize` "
            f"with sgd ({', '.join(f'{v:,.3f}' for v in first['gendl'])}) differ by at most "
            f"{max(first['relative_differences']):.1e} (relative). With the style at its own aspect "
            f"ratio (gendl's default, Gram rescaled), the first style loss is "
            f"{own['style_loss']:,.0f} against {stretched['style_loss']:,.0f} stretched."
        )
    return "\n\n".join(lines)


def optimizer_tables(results: dict[str, Any]) -> list[str]:
    scale, optimizers = results["scale"], results["optimizers"]
    shape = results["inputs"]["contents"][str(scale["height"])]["shape"]
    target, book_run = optimizers["target_loss"], optimizers["book"]
    book_ms = 1000 * book_run["seconds"] / book_run["iterations"]
    rows = [
        [
            "book: SGD, ExponentialDecay(100, 100, 0.96), float32",
            f"{book_run['iterations']:,} (defines L_book)",
            f"**{book_run['seconds']:,.1f} s**",
            f"{book_run['cpu_seconds']:,.1f} s",
            "1.00",
            f"{book_run['iterations']:,}",
            f"{target:,.2f}",
            "",
            f"{book_run['seconds']:,.1f} s",
            f"{book_ms:.0f}",
        ]
    ]
    shown = [n for n in CHECKPOINTS if n <= scale["iterations"]]
    book_losses = {r["iteration"]: r["loss"] for r in book_run["reports"]}
    curve_rows = [["book: SGD", *(f"{book_losses[n]:,.1f}" for n in shown)]]
    for policy, runs in optimizers["gendl"].items():
        for name, run in runs.items():
            reached = run["reach"]
            rows.append(
                [
                    f"gendl: {name}, {policy}",
                    "not reached" if reached["evaluation"] is None else f"{reached['evaluation']:,}",
                    f"**{seconds_cell(reached['seconds'])}**",
                    seconds_cell(reached["cpu_seconds"]),
                    "" if reached["seconds"] is None else f"{reached['seconds'] / book_run['seconds']:.3f}",
                    f"{run['evaluations']:,}",
                    f"{run['end_loss']:,.2f} ({run['end_loss'] / target:.3f}x)",
                    f"{run['final_float32_loss']:,.2f}",
                    f"{run['seconds']:,.1f} s",
                    f"{run['step_ms']:.0f}",
                ]
            )
            kind = "best" if name.startswith("lbfgs") else "loss"
            curve_rows.append(
                [
                    f"gendl: {name}, {policy}",
                    *(
                        f"{run['checkpoints'][str(n)][kind]:,.1f}"
                        if str(n) in run["checkpoints"]
                        else f"{run['best_loss']:,.1f} (stopped at {run['evaluations']:,})"
                        for n in shown
                    ),
                ]
            )
    terms = optimizers["weighted_terms"]
    shares = ", ".join(
        f"{label} weights {terms[label]['weights']}: "
        + " / ".join(f"{100 * share:.1f}%" for share in terms[label]["shares"].values())
        for label in ("benchmark", "book")
    )
    differences = "; ".join(
        f"{policy}: " + ", ".join(f"{name} {value:.2f}" for name, value in by_name.items())
        for policy, by_name in optimizers["images"].items()
    )
    return [
        f"b. Reaching the book's loss at {size(shape)}: L_book = {target:,.2f}, the book's loss at "
        f"its iteration {book_run['iterations']:,}; every gendl run has the same budget of "
        f"{scale['iterations']:,} evaluations (L-BFGS's line-search trials count; SciPy may stop it "
        f"earlier). 'Reached' = loss <= L_book x (1 + {REACH_TOLERANCE:g}), each run's loss as it "
        "computes it (under mixed_bfloat16, from bfloat16 features); 'float32 loss' is the loss of the "
        "solution (before stylize clips it to [0, 255]) computed in float32, the same objective for "
        "every policy.\n\n"
        + markdown_table(
            [
                "run",
                "evaluations to L_book",
                "wall time to L_book",
                "CPU time to L_book",
                "time / book's",
                "evaluations used",
                "loss at the end",
                "float32 loss of the solution",
                "wall time, all evaluations",
                "ms/evaluation",
            ],
            rows,
        ),
        "Loss after N evaluations (L-BFGS: best so far)\n\n"
        + markdown_table(["run", *(f"{n:,}" for n in shown)], curve_rows),
        (
            f"Final images against the book's, mean absolute difference in pixel levels: {differences}. "
            f"Weighted terms at the end of gendl's sgd run ({terms['policy']}; content / style / total "
            f"variation share of the loss): {shares}."
        ),
    ]


def scales_table(results: dict[str, Any]) -> str:
    scale = results["scale"]
    large_shape = results["inputs"]["contents"][str(scale["large_height"])]["shape"]
    rows = []
    for policy, scales in results["scales"].items():
        single, double = scales["single"], scales["double"]
        rows += [
            [
                f"num_scales 1 ({size(large_shape)}), {scales['optimizer']}, {policy}",
                f"{single['reach']['evaluation']:,}",
                f"**{single['reach']['seconds']:,.1f} s**",
                f"{single['end_loss']:,.2f} (target)",
                f"{single['final_float32_loss']:,.2f}",
                f"{single['seconds']:,.1f} s",
                f"{single['step_ms']:.0f}",
            ],
            [
                f"num_scales 2 (height {double['heights'][0]}, then {size(large_shape)}), "
                f"{scales['optimizer']}, {policy}",
                "not reached"
                if double["reach"]["evaluation"] is None
                else f"{double['reach']['evaluation']:,} at full size (+{scale['large_iterations']:,} coarse)",
                f"**{seconds_cell(double['reach']['seconds'])}**",
                f"{double['end_loss']:,.2f}",
                f"{double['final_float32_loss']:,.2f}",
                f"{double['seconds']:,.1f} s",
                "",
            ],
        ]
    return (
        f"c. Coarse to fine at {size(large_shape)} with the fastest optimiser of b. at the default policy, "
        f"{scale['large_iterations']:,} evaluations per scale; target = the same policy's single-scale "
        "loss at the end\n\n"
        + markdown_table(
            [
                "run",
                "evaluations to target",
                "wall time to target",
                "loss at end",
                "float32 loss of the solution",
                "wall time, whole run",
                "ms/evaluation",
            ],
            rows,
        )
    )


def bound_section(results: dict[str, Any]) -> str:
    scale, steps, peaks = results["scale"], results["steps"], results["peaks"]
    rows, sentences = [], []
    for height in (scale["height"], scale["large_height"]):
        shape = results["inputs"]["contents"][str(height)]["shape"]
        runs = {"book": steps[str(height)]["book"]}
        runs.update({f"gendl {policy}": run for policy, run in steps[str(height)]["gendl"].items()})
        for name, run in runs.items():
            analysis = results["bounds"][str(height)][name]
            shares = analysis["op_shares"]
            rows.append(
                [
                    name,
                    size(shape),
                    run["compute_dtype"],
                    f"{run['graph_flops'] / 1e9:.2f} / {run['executed_flops'] / 1e9:.2f}",
                    f"{1000 * run['step_seconds']:.0f}",
                    f"{analysis['flops_per_second'] / 1e9:.0f}",
                    f"**{analysis['peak_share']:.0%}**",
                    f"{1000 * run['evaluate_seconds']:.1f}",
                    f"{1000 * run['update_seconds']:.2f}",
                    f"{1000 * run['empty_call_seconds']:.2f}",
                    " / ".join(
                        f"{share:.0%}"
                        for share in (
                            convolution_share(analysis),
                            shares.get("Gram matmuls", 0.0),
                            shares.get("casts", 0.0),
                            shares.get("other ops", 0.0),
                        )
                    ),
                ]
            )
            if name != "book" and height == scale["height"]:  # one sentence per policy, at b.'s size
                sentences.append(f"{name} at {size(shape)}: {analysis['verdict']}.")
    dtypes = []
    for policy, run in steps[str(scale["height"])]["gendl"].items():
        checks = run["dtypes"]
        in_compute = sorted(
            kind for kind, names in checks["operations"].items() if run["compute_dtype"] in names
        )
        dtypes.append(
            f"{policy}: the convolutions compute in {', '.join(checks['convolutions'])}; ops in "
            f"{run['compute_dtype']}: {', '.join(in_compute)}; Gram matrices, their normalisation, the losses, "
            f"the gradient, the image optimised and the captured targets are "
            + ("all float32" if checks["all_float32"] else f"NOT all float32: {checks['must_be_float32']}")
        )
    filter_runs = [
        name
        for height in results["bounds"].values()
        for name, a in height.items()
        if a["filter_gradients_ran"]
    ]
    return "\n\n".join(
        [
            "d. What bounds a step. FLOPs are TensorFlow's profiler count of the traced step "
            "(`harness.float_ops`, the whole graph) / of the ops its outputs need, which are what runs: "
            "the graph also holds the convolutions' filter gradients, which TensorFlow prunes "
            + (
                "(the op profile shows none ran)"
                if not filter_runs
                else f"(but the op profile shows some ran: {', '.join(filter_runs)})"
            )
            + f". Peak = a 2048 matmul's FLOP/s in the compute dtype ({', '.join(f'{d} {v / 1e9:.0f}' for d, v in peaks.items())} GFLOP/s). "
            "The compiled call, the SGD update and an empty compiled call are timed alone; the op time "
            "is the kernels' time per step summed over TensorFlow's threads (a profiler trace of the "
            "compiled call), split into convolutions (forward and input gradients) / Gram matmuls / "
            "casts / other ops.\n\n"
            + markdown_table(
                [
                    "implementation",
                    "image",
                    "compute dtype",
                    "GFLOP/step (graph / run)",
                    "ms/step",
                    "GFLOP/s",
                    "share of peak",
                    "compiled call ms",
                    "SGD update ms",
                    "empty call ms",
                    "op time: conv / Gram / casts / other",
                ],
                rows,
            ),
            "Dtypes (gendl's step, from its traced graph): " + "; ".join(dtypes) + ".",
            "Bound: " + " ".join(sentences),
        ]
    )


def goal_line(results: dict[str, Any]) -> str:
    goal = results["goals"][0]
    scale, inputs = results["scale"], results["inputs"]
    heights = (scale["height"], scale["large_height"])

    def speedups(ratios: dict[str, float]) -> str:
        return " and ".join(
            f"{ratios[str(height)]:.2f}x at {size(inputs['contents'][str(height)]['shape'])}"
            for height in heights
        )

    others = "; ".join(
        f"{policy}: {speedups(ratios)}"
        for policy, ratios in goal["ratios_by_policy"].items()
        if policy != goal["policy"]
    )
    measured = (
        f"the book's step takes {speedups(goal['ratios'])} the time of gendl's"
        if goal["ratios"]
        else "gendl was not measured (not in --policies)"
    )
    return (
        f"Goal line (issue 15): no goal is set for style transfer; measured, not judged. At the default "
        f"policy on this machine ({goal['policy']}) {measured}" + (f" ({others})" if others else "") + "."
    )


def conclusion(results: dict[str, Any]) -> str:
    optimizers = results["optimizers"]
    book_seconds = optimizers["book"]["seconds"]
    lines = []
    for policy, best in results["winner"].items():
        run = optimizers["gendl"][policy][best]
        if run["reach"]["seconds"] is None:
            line = (
                f"Conclusion ({policy}): no gendl optimiser reached the book's loss within "
                f"{results['scale']['iterations']:,} evaluations; the lowest loss at the end of the budget is {best}'s."
            )
        else:
            line = (
                f"Conclusion ({policy}): {best} is the fastest to the book's loss: {run['reach']['seconds']:,.1f} s "
                f"({run['reach']['evaluation']:,} evaluations) against the book's {book_seconds:,.1f} s "
                f"({optimizers['book']['iterations']:,} iterations), {book_seconds / run['reach']['seconds']:.1f}x "
                f"faster."
            )
        overall = winner(optimizers, policy, list(optimizers["gendl"][policy]))
        if overall != best:
            seconds = optimizers["gendl"][policy][overall]["reach"]["seconds"]
            line += (
                f" Faster still: {overall}, {seconds:,.1f} s ({book_seconds / seconds:.1f}x the book's speed), "
                "within noise of each other: gendl's lbfgs now keeps BLAS to one thread itself."
            )
        scales = results["scales"][policy]
        double, single = scales["double"]["reach"]["seconds"], scales["single"]["reach"]["seconds"]
        if double is None:
            line += " Coarse to fine (2 scales) did not reach the single-scale loss."
        else:
            line += (
                f" Coarse to fine (2 scales) reaches the single-scale loss in {double:,.1f} s against "
                f"{single:,.1f} s ({single / double:.2f}x)."
            )
        lines.append(line)
    return "\n\n".join(lines)


def report(results: dict[str, Any]) -> str:
    scale, info = results["scale"], results["environment"]
    shape = results["inputs"]["contents"][str(scale["height"])]["shape"]
    return "\n\n".join(
        [
            (
                f"Neural style transfer benchmark ({results['scale_name']} scale), {info['date']}, "
                f"{info['cpu_count']} CPUs, TensorFlow {info['tensorflow']}, Keras {info['keras']}. "
                f"gendl under {', '.join(results['policies'])} (default here: {results['default_policy']}); "
                f"the book in float32, as printed. "
                f"Content {CONTENT} at {size(shape)}, style the starry night stretched to the same size "
                f"(as the book does), backbone hed_vgg16, content layer {CONTENT_LAYER}, style layers "
                f"{', '.join(STYLE_LAYERS)}, weights (content, style, total variation) {WEIGHTS}."
            ),
            "a. One step (ms, wall clock; each implementation and policy in its own process)\n\n"
            + step_table(results),
            same_losses(results),
            *optimizer_tables(results),
            scales_table(results),
            bound_section(results),
            goal_line(results),
            conclusion(results),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.style_transfer", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a sanity run of about five minutes")
    parser.add_argument(
        "--policies",
        type=parse_policies,
        default=list(POLICIES),
        help=f"Keras dtype policies to run gendl under (default: {','.join(POLICIES)})",
    )
    args = parser.parse_args(argv)
    policies = args.policies
    scale_name, scale = ("quick", QUICK) if args.quick else ("real", REAL)
    suffix = "_quick" if args.quick else ""
    all_params = load_params(REPO_ROOT)
    params, seed = all_params["style_transfer"], all_params["runtime"]["seed"]  # sgd, adam, lbfgs settings
    image_directory = Path(tempfile.gettempdir()) / f"gendl-bench-style-transfer{suffix}"
    image_directory.mkdir(parents=True, exist_ok=True)

    def measure() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="gendl-bench-") as directory:
            inputs = in_child(
                "prepare_inputs", heights=[scale.height, scale.large_height], directory=directory
            )
            peaks = in_child("compute_peaks", dtypes=["float32", "bfloat16"])["peaks"]
            steps = measure_steps(scale, inputs, params, seed, policies)
            optimizers = measure_optimizers(scale, inputs, params, seed, policies, image_directory)
            best = {policy: winner(optimizers, policy) for policy in policies}
            # c. runs one optimiser under every policy, so the policies compare: the default's winner.
            reference = inputs["default_policy"] if inputs["default_policy"] in policies else policies[0]
            scales = {
                policy: measure_scales(scale, inputs, params, seed, policy, best[reference], image_directory)
                for policy in policies
            }
        return {
            "inputs": inputs,
            "default_policy": inputs["default_policy"],
            "peaks": peaks,
            "steps": steps,
            "optimizers": optimizers,
            "winner": best,
            "scales": scales,
        }

    measured, seconds = timed(measure)
    terms_policy = "float32" if "float32" in policies else policies[0]
    measured["optimizers"]["weighted_terms"] = {
        "policy": terms_policy,
        **weighted_terms(measured["optimizers"]["gendl"][terms_policy]["sgd"]["last_terms"]),
    }
    results = {
        "scale_name": scale_name,
        "scale": asdict(scale),
        "environment": environment(),
        "policies": policies,
        "content": CONTENT,
        "style": STYLE,
        "content_layer": CONTENT_LAYER,
        "style_layers": list(STYLE_LAYERS),
        "weights": list(WEIGHTS),
        "book_weights": list(BOOK_WEIGHTS),
        "optimizer_params": {key: params[key] for key in ("sgd", "adam", "lbfgs")},
        "seed": seed,
        "reach_tolerance": REACH_TOLERANCE,
        "images_directory": str(image_directory),
        **measured,
        "benchmark_seconds": seconds,
    }
    results["bounds"] = bounds(
        results["steps"], results["inputs"], (scale.height, scale.large_height), results["peaks"]
    )
    results["goals"] = goal_lines(results)
    path = write_results(REPO_ROOT / "benchmarks" / "results" / f"style_transfer{suffix}.json", results)
    print(report(results))
    print(
        f"\nMeasured in {seconds:.0f} s; results in {path.relative_to(REPO_ROOT)}; images in {image_directory}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
