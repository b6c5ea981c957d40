"""DeepDream (Chollet, Deep Learning with Python, 2nd ed. 12.2): gradient ascent on an image to
maximise the activations of chosen layers of a pretrained convnet, octave by octave.

Reads top to bottom: params -> layer settings -> loss and its gradients -> tiled gradient ascent
-> octaves with lost-detail re-injection -> the pipeline steps DVC runs -> MLflow logging.

Beyond the book: gradients are computed over tiles with a random shift per step, so memory stays
bounded on large images and no seams show; the compiled loss-and-gradient step is traced at
most twice per dream, whatever the octaves and tiles; several layer settings (given or drawn
at random) are dreamt and compared in one run. Per octave it runs at the book's speed
(benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydantic
import tensorflow as tf

from tasks import data, images, steps, tracking
from tasks.backbones import BACKBONES, MIN_INPUT_SIZE, BackboneError, from_unit_to_pixels, load_backbone
from tasks.params import Params, ParamsError, load_params, parse_section
from tasks.runtime import RuntimeParams, configure_runtime

log = logging.getLogger(__name__)

TECHNIQUE = "deepdream"

LayerSetting = dict[str, float]  # layer name -> weight of its activation in the loss


# --- Params -------------------------------------------------------------------------------


class RandomSettingsParams(Params):
    count: int = pydantic.Field(ge=0)  # 0 = none
    pool: list[str]
    layers_per_setting: int = pydantic.Field(ge=1)
    seed: int = pydantic.Field(ge=0)


class DeepDreamParams(Params):
    image: str = pydantic.Field(min_length=1)
    image_sha256: str
    max_size: int = pydantic.Field(ge=32)
    backbone: Literal[BACKBONES]  # type: ignore[valid-type]
    step: float = pydantic.Field(gt=0.0, allow_inf_nan=False)
    num_octave: int = pydantic.Field(ge=1)
    octave_scale: float = pydantic.Field(ge=1.0, allow_inf_nan=False)
    iterations: int = pydantic.Field(ge=1)
    max_loss: float = pydantic.Field(ge=0.0, allow_inf_nan=False)  # 0 = no cap
    tile_size: int = pydantic.Field(ge=0)  # 0 = the whole image at once, as in the book
    layer_settings: list[dict[str, float]]
    random_settings: RandomSettingsParams

    @pydantic.model_validator(mode="after")
    def _some_setting(self) -> DeepDreamParams:
        if not self.layer_settings and not self.random_settings.count:
            raise ValueError("give at least one layer setting or random_settings.count > 0")
        for setting in self.layer_settings:
            if not setting or not all(math.isfinite(weight) for weight in setting.values()):
                raise ValueError(f"a layer setting needs layers with finite weights, got {setting}")
        if (
            self.random_settings.count
            and len(self.random_settings.pool) < self.random_settings.layers_per_setting
        ):
            raise ValueError("random_settings.pool has fewer layers than layers_per_setting")
        return self


@dataclass(frozen=True)
class DeepDreamPaths:
    """Where each step reads and writes, relative to the repo root; dvc.yaml declares the same."""

    image: Path = Path("data/deepdream/image.png")
    dreams: Path = Path("outputs/deepdream/dreams")
    metrics: Path = Path("outputs/deepdream/metrics.json")

    def under(self, root: Path) -> DeepDreamPaths:
        return DeepDreamPaths(**{field.name: root / getattr(self, field.name) for field in fields(self)})


# --- Layer settings -------------------------------------------------------------------------


def setting_name(setting: LayerSetting) -> str:
    return ",".join(f"{layer}={weight:g}" for layer, weight in setting.items())


def draw_random_settings(
    pool: Sequence[str], count: int, layers_per_setting: int, seed: int
) -> list[LayerSetting]:
    """The book's suggestion: explore random layers, each weighted in [0.5, 2.5] (steps of 0.5)."""
    rng = np.random.default_rng(seed)
    settings = []
    for _ in range(count):
        layers = sorted(rng.choice(pool, size=layers_per_setting, replace=False), key=list(pool).index)
        settings.append({str(layer): float(rng.choice([0.5, 1.0, 1.5, 2.0, 2.5])) for layer in layers})
    return settings


def all_settings(params: DeepDreamParams) -> list[LayerSetting]:
    random = params.random_settings
    return [dict(s) for s in params.layer_settings] + draw_random_settings(
        random.pool, random.count, random.layers_per_setting, random.seed
    )


# --- Loss and gradients ---------------------------------------------------------------------


def dream_loss(features: dict[str, tf.Tensor], setting: LayerSetting, crop_border: bool = True) -> tf.Tensor:
    """Weighted mean of squared activations, leaving out a 2-pixel border (border artifacts).

    Feature maps of 4 pixels or less keep their border: cropping would leave nothing. Tiled
    dreaming does not crop (`crop_border=False`): at deep layers a tile's border is a large
    share of it, and the random shift per step already keeps tile edges from showing.
    """
    loss = tf.zeros(())
    for name, weight in setting.items():
        activation = tf.cast(features[name], tf.float32)
        height, width = tf.shape(activation)[1], tf.shape(activation)[2]
        border = tf.where((height > 4) & (width > 4) & crop_border, 2, 0)
        inner = activation[:, border : height - border, border : width - border, :]
        loss += weight * tf.reduce_mean(tf.square(inner))
    return loss


def make_loss_and_grads(
    extractor: Callable, setting: LayerSetting, jit_compile: bool = False, crop_border: bool = True
) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """The compiled step: (1, height, width, 3) image -> (loss, d loss / d image).

    Shapes are relaxed after the first trace, so one graph serves every octave and tile (the
    book's step retraces at each octave); with XLA each shape is compiled once.
    """

    @tf.function(jit_compile=jit_compile, reduce_retracing=not jit_compile)
    def loss_and_grads(image):
        with tf.GradientTape() as tape:
            tape.watch(image)
            loss = dream_loss(extractor(image), setting, crop_border)
        return loss, tape.gradient(loss, image)

    return loss_and_grads


def tile_edges(size: int, tile_size: int) -> np.ndarray:
    """Edges of near-equal tiles of at most `tile_size` pixels (no sliver at the end)."""
    num_tiles = max(1, math.ceil(size / tile_size)) if tile_size else 1
    return np.linspace(0, size, num_tiles + 1).round().astype(int)


def tiled_loss_and_grads(
    loss_and_grads: Callable, image: tf.Tensor, tile_size: int, shift: tuple[int, int]
) -> tuple[float, tf.Tensor]:
    """Loss (area-weighted mean over tiles) and gradient of a (height, width, 3) image.

    The image is rolled by `shift` first so tile borders fall elsewhere at every step.
    """
    height, width = int(image.shape[0]), int(image.shape[1])
    row_edges, column_edges = tile_edges(height, tile_size), tile_edges(width, tile_size)
    if len(row_edges) == len(column_edges) == 2 and shift == (0, 0):  # one tile: the book's step
        loss, gradients = loss_and_grads(image[None])
        return float(loss), gradients[0]
    rolled = tf.roll(image, shift, axis=(0, 1))
    gradient_rows, total_loss = [], 0.0
    for top, bottom in zip(row_edges[:-1], row_edges[1:]):
        gradient_row = []
        for left, right in zip(column_edges[:-1], column_edges[1:]):
            loss, gradient = loss_and_grads(rolled[None, top:bottom, left:right])
            total_loss += float(loss) * float((bottom - top) * (right - left)) / (height * width)
            gradient_row.append(gradient[0])
        gradient_rows.append(tf.concat(gradient_row, axis=1))
    gradients = tf.roll(tf.concat(gradient_rows, axis=0), (-shift[0], -shift[1]), axis=(0, 1))
    return total_loss, gradients


def gradient_ascent(
    image: tf.Tensor,
    loss_and_grads: Callable,
    iterations: int,
    step: float,
    max_loss: float,
    tile_size: int,
    rng: np.random.Generator,
) -> tuple[tf.Tensor, list[float]]:
    """The book's loop: L2-normalised gradient steps, stopping once the loss passes `max_loss`."""
    height, width = int(image.shape[0]), int(image.shape[1])
    tiled = tile_size and max(height, width) > tile_size
    losses = []
    for _ in range(iterations):
        shift = (int(rng.integers(0, height)), int(rng.integers(0, width))) if tiled else (0, 0)
        loss, gradients = tiled_loss_and_grads(loss_and_grads, image, tile_size, shift)
        image = image + step * tf.math.l2_normalize(gradients)
        losses.append(loss)
        if max_loss and loss > max_loss:
            break
    return image, losses


# --- Octaves --------------------------------------------------------------------------------


def octave_shapes(shape: tuple[int, int], num_octave: int, octave_scale: float) -> list[tuple[int, int]]:
    """From the smallest octave to the original size, each `octave_scale` times the previous."""
    return [
        tuple(int(dimension / octave_scale**octave) for dimension in shape)
        for octave in reversed(range(num_octave))
    ]


def check_octaves(shapes: Sequence[tuple[int, int]], backbone: str, tile_size: int = 0) -> None:
    """Every octave, and every tile of one, must be large enough for the backbone's pooling."""
    smallest, minimum = min(shapes), MIN_INPUT_SIZE[backbone]
    if min(smallest) < minimum:
        raise images.ImageError(
            f"the smallest octave would be {smallest[1]}x{smallest[0]} pixels, below the {minimum} "
            f"pixels {backbone} needs: use a larger image or fewer octaves / a smaller octave_scale"
        )
    if tile_size and tile_size < 2 * minimum:  # tiles are at least half the tile size
        raise images.ImageError(
            f"tile_size {tile_size} gives tiles below the {minimum} pixels {backbone} needs: "
            f"use a tile_size of at least {2 * minimum}, or 0 for no tiling"
        )


def resize(image: tf.Tensor, shape: tuple[int, int]) -> tf.Tensor:
    return tf.image.resize(image, shape, method="bilinear")


def dream(
    image: tf.Tensor,
    loss_and_grads: Callable,
    num_octave: int,
    octave_scale: float,
    iterations: int,
    step: float,
    max_loss: float,
    tile_size: int,
    seed: int = 0,
) -> tuple[tf.Tensor, list[dict[str, float]]]:
    """Dream over octaves, small to large, re-injecting the detail lost by upscaling.

    `image` is (height, width, 3) in [-1, 1]; returns the dream (same shape) and the loss at
    every step as {"octave", "step", "loss"} records.
    """
    original = tf.convert_to_tensor(image, tf.float32)
    shapes = octave_shapes(tuple(original.shape[:2]), num_octave, octave_scale)
    rng = np.random.default_rng(seed)
    shrunk_original = resize(original, shapes[0])
    dreamed, records = original, []
    for octave, shape in enumerate(shapes):
        dreamed = resize(dreamed, shape)
        dreamed, losses = gradient_ascent(dreamed, loss_and_grads, iterations, step, max_loss, tile_size, rng)
        records += [{"octave": octave, "step": index, "loss": loss} for index, loss in enumerate(losses)]
        # Upscaling the small original loses detail; add back what the full-size one has.
        lost_detail = resize(original, shape) - resize(shrunk_original, shape)
        dreamed = dreamed + lost_detail
        shrunk_original = resize(original, shape)
        log.info(
            "octave %d/%d %dx%d: loss %.3f after %d steps",
            octave + 1,
            len(shapes),
            shape[1],
            shape[0],
            losses[-1],
            len(losses),
        )
    return dreamed, records


# --- Pipeline steps (the commands in dvc.yaml) ------------------------------------------------


def fetch_image(paths: DeepDreamPaths, source: str, sha256: str, max_size: int) -> np.ndarray:
    """Resolve, validate and normalise the input image into an RGB PNG of at most `max_size`."""
    log.info("reading %s", source)
    image = images.read_image(images.resolve_source(source, sha256), max_size)
    images.save_image(image, paths.image)
    log.info("image: %s (%dx%d)", paths.image, image.shape[1], image.shape[0])
    return image


def dream_settings(
    paths: DeepDreamPaths, params: DeepDreamParams, runtime: RuntimeParams, weights: str = "pretrained"
) -> list[dict[str, Any]]:
    """Dream once per layer setting; writes each dream, its losses, and a labelled grid."""
    configure_runtime(runtime.seed, runtime.dtype_policy, runtime.memory_growth, runtime.distribute)
    original_pixels = images.read_image(paths.image)
    shapes = octave_shapes(original_pixels.shape[:2], params.num_octave, params.octave_scale)
    check_octaves(shapes, params.backbone, params.tile_size)
    settings = all_settings(params)
    backbone = load_backbone(params.backbone, weights)
    for setting in settings:  # every unknown layer is reported before any dreaming starts
        backbone.check_layers(setting)

    original = original_pixels / 127.5 - 1.0
    results, tiles = [], [("original", original_pixels)]
    paths.dreams.mkdir(parents=True, exist_ok=True)
    for index, setting in enumerate(settings):
        name = setting_name(setting)
        log.info("setting %d/%d: %s", index + 1, len(settings), name)
        started = time.perf_counter()
        dreamed, losses = dream(
            original,
            make_loss_and_grads(
                backbone.feature_extractor(list(setting)),
                setting,
                runtime.jit_compile,
                crop_border=not params.tile_size,
            ),
            params.num_octave,
            params.octave_scale,
            params.iterations,
            params.step,
            params.max_loss,
            params.tile_size,
            seed=runtime.seed + index,
        )
        seconds = time.perf_counter() - started
        pixels = np.clip(from_unit_to_pixels(dreamed).numpy(), 0, 255)
        file_name = f"setting_{index:02d}.png"
        images.save_image(pixels, paths.dreams / file_name)
        tiles.append((name, pixels))
        results.append(
            {"name": name, "setting": setting, "image": file_name, "losses": losses, "seconds": seconds}
        )
    images.save_image(images.labelled_grid(tiles), paths.dreams / "grid.png")
    data.write_json(paths.dreams / "results.json", {"backbone": backbone.name, "settings": results})
    data.write_json(paths.metrics, summarize(results, params.num_octave))
    return results


def summarize(results: Sequence[dict[str, Any]], num_octave: int) -> dict[str, Any]:
    """Per setting, keyed by its image ("setting_00"): two settings may share a name."""
    metrics: dict[str, Any] = {}
    for result in results:
        losses = result["losses"]
        metrics[Path(result["image"]).stem] = {
            "first_loss": losses[0]["loss"],
            "final_loss": losses[-1]["loss"],
            "steps": len(losses),
            "mean_seconds_per_octave": result["seconds"] / num_octave,
        }
    return metrics


# --- MLflow logging of the steps' outputs (called by the flow) -----------------------------------


def log_dreams(parent_run_id: str, experiment_id: str, paths: DeepDreamPaths) -> list[str]:
    """The comparison grid on the parent run; one child run per layer setting."""
    import mlflow

    client = mlflow.MlflowClient()
    summary = json.loads((paths.dreams / "results.json").read_text())
    client.log_artifact(parent_run_id, str(paths.dreams / "grid.png"))
    client.log_artifact(parent_run_id, str(paths.image), "input")
    child_ids = []
    for result in summary["settings"]:
        with mlflow.start_run(
            run_name=result["name"], experiment_id=experiment_id, parent_run_id=parent_run_id, nested=True
        ) as child:
            mlflow.log_params(
                {"backbone": summary["backbone"], **{f"layer.{k}": v for k, v in result["setting"].items()}}
            )
            tracking.log_metric_rows(
                child.info.run_id,
                [
                    {"step": index, "loss": record["loss"], f"loss_octave_{record['octave']}": record["loss"]}
                    for index, record in enumerate(result["losses"])
                ],
                step_key="step",
            )
            mlflow.log_metrics(
                {
                    "final_loss": result["losses"][-1]["loss"],
                    "seconds": result["seconds"],
                    "steps": len(result["losses"]),
                }
            )
            mlflow.log_artifact(str(paths.dreams / result["image"]))
            child_ids.append(child.info.run_id)
    return child_ids


# --- Command line: `python -m tasks.deepdream <step>` from the repo root, as dvc.yaml runs it ----


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.deepdream", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["image", "dream"])
    parser.add_argument("--root", type=Path, default=Path("."), help="repo root holding params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    try:
        params = load_params(args.root)
        deepdream = parse_section(params, TECHNIQUE, DeepDreamParams)
        runtime = parse_section(params, "runtime", RuntimeParams)
        paths = DeepDreamPaths().under(args.root)
        if args.step == "image":
            fetch_image(paths, deepdream.image, deepdream.image_sha256, deepdream.max_size)
        else:
            dream_settings(paths, deepdream, runtime)
    except (ParamsError, images.ImageError, BackboneError, data.DownloadError) as error:
        return steps.report_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
