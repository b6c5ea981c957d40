"""Neural style transfer: gendl (`tasks.style_transfer`) against the book's listing, measured in one run.

    python -m benchmarks.style_transfer [--quick]

a. per-step time and peak memory: the book's step (base, style and generated image through the
   network as one batch of 3, every step) against gendl's `make_loss_and_grads` step (targets
   computed once, only the generated image each step), both followed by the same SGD update;
   and faithfulness: from the same image, with the same weights and style pixels, the first
   losses of the book's loop and of gendl's `stylize` with SGD agree;
b. the optimiser choice: the book's schedule (its SGD, its iterations) sets the loss to reach,
   L_book; gendl's `stylize` with sgd, adam and lbfgs, each with the same budget of
   evaluations, reports the evaluations and wall seconds it needs to reach L_book, and its loss
   at the end of the budget;
c. coarse to fine: at twice the height, num_scales 2 against 1 with the fastest optimiser of b,
   the wall time to reach the single-scale run's final loss.

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    MIB,
    REPO_ROOT,
    current_rss_bytes,
    environment,
    markdown_table,
    run_in_child,
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


@dataclass(frozen=True)
class Scale:
    height: int  # the content's height in a. (also timed at large_height) and b.; the style is
    # stretched to the content's size
    iterations: int  # the book's loop; also each gendl optimiser's budget of evaluations
    step_timing_steps: int  # a.: timed steps after the warm-up step
    step_timing_rounds: int  # a.: each round times the book and gendl once, ABBA across rounds
    first_losses: int  # a.: losses compared from the same start
    large_height: int  # c.
    large_iterations: int  # c.: evaluations per scale


# On 2 shared cores a gendl step takes 30-60 ms at 96x64 (90-170 ms at 192x128) and the book's
# 2.5-3x that: the book's 4,000 iterations and gendl's four runs of 4,000 evaluations fit in ~20
# minutes at this height; at 128 px the book's loop alone took ~30 minutes.
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
    """The content photo at each height, stored as gendl's `images` step stores it (PNG)."""
    import numpy as np

    from tasks import images
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
    """a.: the book's step (listing 12.24's loop body), timed after one warm-up (tracing) step."""
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
    return {
        "backbone_load_seconds": load_seconds,
        "rss_before_steps_bytes": rss_before,
        "warmup_seconds": warmup_seconds,
        "step_seconds": seconds / steps,
        "step_cpu_seconds": (time.process_time() - cpu_started) / steps,
        "steps": steps,
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
) -> dict[str, Any]:
    """a.: gendl's step: `make_loss_and_grads` (targets once) and `descend`'s loop with the SGD."""
    import tensorflow as tf

    from tasks import images
    from tasks.backbones import load_backbone
    from tasks.style_transfer import model, optimizers
    from tasks.style_transfer.params import GridPoint

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
    # The first evaluation traces; from its end to the loop's end are `steps` whole steps.
    first_wall, first_cpu = progress.times[0]
    return {
        "backbone_load_seconds": load_seconds,
        "rss_before_steps_bytes": rss_before,
        "target_seconds": target_seconds,
        "warmup_seconds": first_wall - started,
        "step_seconds": (ended - first_wall) / steps,
        "step_cpu_seconds": (cpu_ended - first_cpu) / steps,
        "steps": steps,
        "warmup_cpu_seconds": first_cpu - cpu_started,
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
) -> dict[str, Any]:
    """a.: the first `steps` losses of the book's loop and of gendl's `stylize` (sgd), same start.

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
) -> dict[str, Any]:
    """b. and c.: gendl's `stylize` (`iterations` evaluations per scale), every evaluation's loss
    and time. Time runs from the call (targets, tracing and all) to each evaluation's end."""
    from tasks import images
    from tasks.backbones import load_backbone
    from tasks.style_transfer import model
    from tasks.style_transfer.params import GridPoint

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


# --- In the benchmark process ------------------------------------------------------------------------


def in_child(function: str, env: dict[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
    result = run_in_child("benchmarks.style_transfer", function, kwargs, {**CHILD_ENV, **(env or {})})
    shown = {
        k: v for k, v in kwargs.items() if k in ("optimizer", "height", "iterations", "num_scales", "steps")
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


def gendl_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "weights": list(WEIGHTS),
        "sgd": params["sgd"],
        "adam_learning_rate": params["adam"]["learning_rate"],
        "lbfgs_history": params["lbfgs"]["history"],
    }


def measure_steps(scale: Scale, inputs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """a.: per-step time and peak memory at both heights, each in its own process, rounds in ABBA
    order; then the first losses of both from the same start."""
    result: dict[str, Any] = {}
    for height in (scale.height, scale.large_height):
        common = {
            "height": height,
            "steps": scale.step_timing_steps,
            "content_path": inputs["contents"][str(height)]["path"],
            "style_path": inputs["style_path"],
        }
        runs: dict[str, list[dict[str, Any]]] = {"book": [], "gendl": []}
        for round_index in range(scale.step_timing_rounds):
            for name in ("book", "gendl") if round_index % 2 == 0 else ("gendl", "book"):
                if name == "book":
                    runs[name].append(in_child("book_steps", **common, weights=list(WEIGHTS)))
                else:
                    runs[name].append(in_child("gendl_steps", **common, **gendl_kwargs(params)))
        result[str(height)] = {
            name: {
                **each[0],
                **{
                    key: statistics.median(run[key] for run in each)
                    for key in ("step_seconds", "step_cpu_seconds", "warmup_seconds", "peak_rss_bytes")
                },
                "runs": each,
            }
            for name, each in runs.items()
        }
    result["first_losses"] = in_child(
        "first_losses",
        height=scale.height,
        steps=scale.first_losses,
        content_path=inputs["contents"][str(scale.height)]["path"],
        style_path=inputs["style_path"],
        **gendl_kwargs(params),
    )
    return result


def measure_optimizers(
    scale: Scale, inputs: dict[str, Any], params: dict[str, Any], directory: Path
) -> dict[str, Any]:
    """b.: the book's schedule gives L_book; each gendl optimiser's evaluations and time to reach it."""
    common = {
        "height": scale.height,
        "iterations": scale.iterations,
        "content_path": inputs["contents"][str(scale.height)]["path"],
        "style_path": inputs["style_path"],
    }
    book = in_child("book_run", **common, weights=list(WEIGHTS), output_path=str(directory / "book.png"))
    target = book["final_loss"]
    runs = {}
    for name, (optimizer, env) in RUNS.items():
        run = in_child(
            "gendl_run",
            env=env,
            optimizer=optimizer,
            num_scales=1,
            **common,
            **gendl_kwargs(params),
            output_path=str(directory / f"gendl_{image_name(name)}.png"),
        )
        runs[name] = {**compact(run), "env": env, "reach": reach(run, target)}
    return {"book": book, "target_loss": target, "gendl": runs, "images": image_differences(directory)}


def measure_scales(
    scale: Scale, inputs: dict[str, Any], params: dict[str, Any], optimizer: str, directory: Path
) -> dict[str, Any]:
    """c.: num_scales 1 and 2 at the large height, the same evaluations per scale."""
    common = {
        "optimizer": optimizer,
        "height": scale.large_height,
        "iterations": scale.large_iterations,
        "content_path": inputs["contents"][str(scale.large_height)]["path"],
        "style_path": inputs["style_path"],
        **gendl_kwargs(params),
    }
    single = in_child("gendl_run", num_scales=1, **common, output_path=str(directory / "scales_1.png"))
    double = in_child("gendl_run", num_scales=2, **common, output_path=str(directory / "scales_2.png"))
    target = end_loss(single)
    return {
        "optimizer": optimizer,
        "target_loss": target,
        "single": {**compact(single), "reach": reach(single, target)},
        "double": {**compact(double), "reach": reach(double, target)},
        "double_coarse_seconds": double["times"][double["scales"].index(1) - 1],
    }


def image_differences(directory: Path) -> dict[str, float]:
    """Mean absolute difference, in pixel levels, of each final image from the book's."""
    import numpy as np
    from PIL import Image

    def load(name: str) -> Any:
        with Image.open(directory / f"{name}.png") as image:
            return np.asarray(image.convert("RGB"), dtype=np.int16)

    book = load("book")
    return {name: float(np.mean(np.abs(load(f"gendl_{image_name(name)}") - book))) for name in RUNS}


def image_name(run_name: str) -> str:
    return run_name.replace(", ", "_").replace(" ", "_")


def winner(optimizers: dict[str, Any], names: Sequence[str] = OPTIMIZERS) -> str:
    """Of `names` (default: the optimisers as shipped), the fastest to L_book; if none reached it,
    the one with the lowest loss at the end of the budget."""
    runs = {name: optimizers["gendl"][name] for name in names}
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


# --- Report -----------------------------------------------------------------------------------------


def steps_rss_bytes(run: dict[str, Any]) -> int:
    """How far the peak rose above the resident memory before the steps (backbone loaded)."""
    return run["peak_rss_bytes"] - run["rss_before_steps_bytes"]


def mib(num_bytes: float) -> str:
    return f"{num_bytes / MIB:,.0f} MiB"


def size(shape: Sequence[int]) -> str:
    return f"{shape[1]}x{shape[0]}"


def seconds_cell(value: float | None) -> str:
    return "not reached" if value is None else f"{value:,.1f} s"


def report(results: dict[str, Any]) -> str:
    scale, info = results["scale"], results["environment"]
    inputs, steps, optimizers, scales = (
        results["inputs"],
        results["steps"],
        results["optimizers"],
        results["scales"],
    )
    shape = inputs["contents"][str(scale["height"])]["shape"]
    large_shape = inputs["contents"][str(scale["large_height"])]["shape"]

    def step_row(name: str, shape: Sequence[int], run: dict[str, Any]) -> list[str]:
        each = ", ".join(f"{1000 * r['step_seconds']:.0f}" for r in run["runs"])
        return [
            name,
            size(shape),
            f"**{1000 * run['step_seconds']:.0f}**" + (f" ({each})" if len(run["runs"]) > 1 else ""),
            f"{1000 * run['step_cpu_seconds']:.0f}",
            f"{run['warmup_seconds']:.1f} s",
            mib(run["rss_before_steps_bytes"]),
            f"**{mib(run['peak_rss_bytes'])}**",
            mib(steps_rss_bytes(run)),
        ]

    step_rows = []
    for height in (scale["height"], scale["large_height"]):
        book, gendl = steps[str(height)]["book"], steps[str(height)]["gendl"]
        height_shape = inputs["contents"][str(height)]["shape"]
        step_rows += [
            step_row("book: `compute_loss_and_grads` (batch of 3) + SGD", height_shape, book),
            step_row("gendl: `make_loss_and_grads` step + SGD (`descend`)", height_shape, gendl),
            [
                "book / gendl",
                size(height_shape),
                f"**{book['step_seconds'] / gendl['step_seconds']:.2f}x**",
                f"{book['step_cpu_seconds'] / gendl['step_cpu_seconds']:.2f}x",
                "",
                "",
                f"{book['peak_rss_bytes'] / gendl['peak_rss_bytes']:.2f}x",
                f"{steps_rss_bytes(book) / steps_rss_bytes(gendl):.2f}x",
            ],
        ]
    gendl = steps[str(scale["height"])]["gendl"]
    first = steps["first_losses"]
    own = first["gendl_own_aspect_first_terms"]
    stretched = first["gendl_first_terms"]

    target = optimizers["target_loss"]
    book_run = optimizers["book"]
    book_ms = 1000 * book_run["seconds"] / book_run["iterations"]
    optimizer_rows = [
        [
            "book: SGD, ExponentialDecay(100, 100, 0.96)",
            f"{book_run['iterations']:,} (defines L_book)",
            f"**{book_run['seconds']:,.1f} s**",
            f"{book_run['cpu_seconds']:,.1f} s",
            "1.00",
            f"{book_run['iterations']:,}",
            f"{target:,.2f}",
            f"{book_run['seconds']:,.1f} s",
            f"{book_ms:.0f}",
        ]
    ]
    for name, run in optimizers["gendl"].items():
        reached = run["reach"]
        optimizer_rows.append(
            [
                f"gendl: {name}",
                "not reached" if reached["evaluation"] is None else f"{reached['evaluation']:,}",
                f"**{seconds_cell(reached['seconds'])}**",
                seconds_cell(reached["cpu_seconds"]),
                "" if reached["seconds"] is None else f"{reached['seconds'] / book_run['seconds']:.3f}",
                f"{run['evaluations']:,}",
                f"{run['end_loss']:,.2f} ({run['end_loss'] / target:.3f}x)",
                f"{run['seconds']:,.1f} s",
                f"{run['step_ms']:.0f}",
            ]
        )
    shown = [n for n in CHECKPOINTS if n <= scale["iterations"]]
    book_losses = {r["iteration"]: r["loss"] for r in book_run["reports"]}
    curve_rows = [["book: SGD", *(f"{book_losses[n]:,.1f}" for n in shown)]]
    for name, run in optimizers["gendl"].items():
        kind = "best" if name.startswith("lbfgs") else "loss"
        curve_rows.append(
            [
                f"gendl: {name}",
                *(
                    f"{run['checkpoints'][str(n)][kind]:,.1f}"
                    if str(n) in run["checkpoints"]
                    else f"{run['best_loss']:,.1f} (stopped at {run['evaluations']:,})"
                    for n in shown
                ),
            ]
        )

    single, double = scales["single"], scales["double"]
    scale_rows = [
        [
            f"num_scales 1 ({size(large_shape)})",
            f"{single['reach']['evaluation']:,}",
            f"**{single['reach']['seconds']:,.1f} s**",
            f"{single['end_loss']:,.2f}",
            f"{single['seconds']:,.1f} s",
            f"{single['step_ms']:.0f}",
        ],
        [
            f"num_scales 2 ({scales_cell(double, large_shape)})",
            "not reached"
            if double["reach"]["evaluation"] is None
            else f"{double['reach']['evaluation']:,} at full size (+{scale['large_iterations']:,} coarse)",
            f"**{seconds_cell(double['reach']['seconds'])}**",
            f"{double['end_loss']:,.2f}",
            f"{double['seconds']:,.1f} s",
            "",
        ],
    ]
    terms = optimizers["weighted_terms"]
    shares = ", ".join(
        f"{label} weights {terms[label]['weights']}: "
        + " / ".join(f"{100 * share:.1f}%" for share in terms[label]["shares"].values())
        for label in ("benchmark", "book")
    )
    return "\n\n".join(
        [
            (
                f"Neural style transfer benchmark ({results['scale_name']} scale), {info['date']}, "
                f"{info['cpu_count']} CPUs, TensorFlow {info['tensorflow']}, Keras {info['keras']}. "
                f"Content {CONTENT} at {size(shape)}, style the starry night stretched to the same size "
                f"(as the book does), backbone hed_vgg16, content layer {CONTENT_LAYER}, style layers "
                f"{', '.join(STYLE_LAYERS)}, weights (content, style, total variation) {WEIGHTS}."
            ),
            "a. One step (ms, wall clock; each implementation in its own process)\n\n"
            + markdown_table(
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
                step_rows,
            ),
            (
                f"gendl computes its targets once: {gendl['target_seconds']:.2f} s. Same losses: from the "
                f"same image, the first {len(first['book'])} losses of the book "
                f"({', '.join(f'{v:,.3f}' for v in first['book'])}) and of gendl's `stylize` with sgd "
                f"({', '.join(f'{v:,.3f}' for v in first['gendl'])}) differ by at most "
                f"{max(first['relative_differences']):.1e} (relative). With the style at its own aspect "
                f"ratio (gendl's default, Gram rescaled), the first style loss is "
                f"{own['style_loss']:,.0f} against {stretched['style_loss']:,.0f} stretched."
            ),
            f"b. Reaching the book's loss at {size(shape)}: L_book = {target:,.2f}, the book's loss at "
            f"its iteration {book_run['iterations']:,}; every gendl run has the same budget of "
            f"{scale['iterations']:,} evaluations (L-BFGS's line-search trials count; SciPy may stop it "
            f"earlier). 'Reached' = "
            f"loss <= L_book x (1 + {REACH_TOLERANCE:g}).\n\n"
            + markdown_table(
                [
                    "run",
                    "evaluations to L_book",
                    "wall time to L_book",
                    "CPU time to L_book",
                    "time / book's",
                    "evaluations used",
                    "loss at the end",
                    "wall time, all evaluations",
                    "ms/evaluation",
                ],
                optimizer_rows,
            ),
            "Loss after N evaluations (L-BFGS: best so far)\n\n"
            + markdown_table(["run", *(f"{n:,}" for n in shown)], curve_rows),
            (
                "Final images against the book's, mean absolute difference in pixel levels: "
                + ", ".join(f"{name} {value:.2f}" for name, value in optimizers["images"].items())
                + f". Weighted terms at the end of gendl's sgd run (content / style / total variation "
                f"share of the loss): {shares}."
            ),
            f"c. Coarse to fine at {size(large_shape)} with {scales['optimizer']}, "
            f"{scale['large_iterations']:,} evaluations per scale; target = the single-scale run's "
            f"loss at the end, {scales['target_loss']:,.2f}\n\n"
            + markdown_table(
                [
                    "run",
                    "evaluations to target",
                    "wall time to target",
                    "loss at end",
                    "wall time, whole run",
                    "ms/evaluation",
                ],
                scale_rows,
            ),
            conclusion(results),
        ]
    )


def scales_cell(run: dict[str, Any], large_shape: Sequence[int]) -> str:
    coarse = run["heights"][0]
    return f"height {coarse}, then {size(large_shape)}"


def conclusion(results: dict[str, Any]) -> str:
    optimizers, scales = results["optimizers"], results["scales"]
    book_seconds = optimizers["book"]["seconds"]
    best = results["winner"]
    run = optimizers["gendl"][best]
    if run["reach"]["seconds"] is None:
        line = (
            f"Conclusion: no gendl optimiser reached the book's loss within {results['scale']['iterations']:,} "
            f"evaluations; the lowest loss at the end of the budget is {best}'s."
        )
    else:
        line = (
            f"Conclusion: {best} is the fastest to the book's loss: {run['reach']['seconds']:,.1f} s "
            f"({run['reach']['evaluation']:,} evaluations) against the book's {book_seconds:,.1f} s "
            f"({optimizers['book']['iterations']:,} iterations), {book_seconds / run['reach']['seconds']:.1f}x "
            f"faster."
        )
    overall = winner(optimizers, list(optimizers["gendl"]))
    if overall != best:
        seconds = optimizers["gendl"][overall]["reach"]["seconds"]
        line += (
            f" Faster still: {overall}, {seconds:,.1f} s ({book_seconds / seconds:.1f}x the book's speed), "
            "within noise of each other: gendl's lbfgs now keeps BLAS to one thread itself."
        )
    double = scales["double"]["reach"]["seconds"]
    single = scales["single"]["reach"]["seconds"]
    if double is None:
        line += " Coarse to fine (2 scales) did not reach the single-scale loss."
    else:
        line += (
            f" Coarse to fine (2 scales) reaches the single-scale loss in {double:,.1f} s against "
            f"{single:,.1f} s ({single / double:.2f}x)."
        )
    return line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.style_transfer", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a sanity run of about two minutes")
    args = parser.parse_args(argv)
    scale_name, scale = ("quick", QUICK) if args.quick else ("real", REAL)
    suffix = "_quick" if args.quick else ""
    params = load_params(REPO_ROOT)["style_transfer"]  # sgd, adam and lbfgs settings
    image_directory = Path(tempfile.gettempdir()) / f"gendl-bench-style-transfer{suffix}"
    image_directory.mkdir(parents=True, exist_ok=True)

    def measure() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="gendl-bench-") as directory:
            inputs = in_child(
                "prepare_inputs", heights=[scale.height, scale.large_height], directory=directory
            )
            steps = measure_steps(scale, inputs, params)
            optimizers = measure_optimizers(scale, inputs, params, image_directory)
            best = winner(optimizers)
            scales = measure_scales(scale, inputs, params, best, image_directory)
        return {"inputs": inputs, "steps": steps, "optimizers": optimizers, "winner": best, "scales": scales}

    measured, seconds = timed(measure)
    sgd_terms = measured["optimizers"]["gendl"]["sgd"]["last_terms"]
    measured["optimizers"]["weighted_terms"] = weighted_terms(sgd_terms)
    results = {
        "scale_name": scale_name,
        "scale": asdict(scale),
        "environment": environment(),
        "content": CONTENT,
        "style": STYLE,
        "content_layer": CONTENT_LAYER,
        "style_layers": list(STYLE_LAYERS),
        "weights": list(WEIGHTS),
        "book_weights": list(BOOK_WEIGHTS),
        "optimizer_params": {key: params[key] for key in ("sgd", "adam", "lbfgs")},
        "reach_tolerance": REACH_TOLERANCE,
        "images_directory": str(image_directory),
        **measured,
        "benchmark_seconds": seconds,
    }
    path = write_results(REPO_ROOT / "benchmarks" / "results" / f"style_transfer{suffix}.json", results)
    print(report(results))
    print(
        f"\nMeasured in {seconds:.0f} s; results in {path.relative_to(REPO_ROOT)}; images in {image_directory}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
