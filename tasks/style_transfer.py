"""Neural style transfer (Gatys et al. 2015; Chollet, Deep Learning with Python, 2nd ed. 12.3):
optimise the pixels of an image so a pretrained convnet sees the content of one image in the
style (Gram matrices) of another, kept smooth by a total variation loss.

Reads top to bottom: params -> the comparison grid -> images (colour preservation) -> losses
-> the compiled loss-and-gradient step -> optimisers (the book's SGD, Adam, L-BFGS) ->
coarse-to-fine scales -> the pipeline steps DVC runs -> MLflow logging.

Beyond the book: content features and style Gram matrices are computed once per scale, not at
every step (the book pushes all three images through the network each step); several style
images blend by weight; luminance-only transfer keeps the content's colours; a coarse-to-fine
schedule solves small and continues at full size; lists of loss weights, style layer sets and
optimisers expand into a grid of runs compared in MLflow.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
import pydantic
import scipy.optimize
import tensorflow as tf
import threadpoolctl

from tasks import data, images, steps, tracking
from tasks.backbones import BACKBONES, MIN_INPUT_SIZE, Backbone, BackboneError, load_backbone
from tasks.params import Params, ParamsError, load_params, parse_section
from tasks.runtime import RuntimeParams, configure_runtime

log = logging.getLogger(__name__)

TECHNIQUE = "style_transfer"
OPTIMIZERS = ("sgd", "adam", "lbfgs")
LOSS_TERMS = ("loss", "content_loss", "style_loss", "total_variation_loss")


# --- Params -------------------------------------------------------------------------------


class StyleImageParams(Params):
    image: str = pydantic.Field(min_length=1)  # URL, local path or bundled:<name>
    sha256: str = ""  # "" = not checked
    weight: float = pydantic.Field(default=1.0, ge=0.0, allow_inf_nan=False)  # share in the style blend


class SgdParams(Params):
    learning_rate: float = pydantic.Field(gt=0.0, allow_inf_nan=False)
    decay_steps: int = pydantic.Field(ge=1)
    decay_rate: float = pydantic.Field(gt=0.0, le=1.0)


class AdamParams(Params):
    learning_rate: float = pydantic.Field(gt=0.0, allow_inf_nan=False)


class LbfgsParams(Params):
    history: int = pydantic.Field(ge=1)  # corrections kept (SciPy's maxcor)


Weight = pydantic.NonNegativeFloat


class StyleTransferParams(Params):
    content_image: str = pydantic.Field(min_length=1)
    content_sha256: str
    style_images: list[StyleImageParams] = pydantic.Field(min_length=1)
    height: int = pydantic.Field(ge=32)
    backbone: Literal[BACKBONES]  # type: ignore[valid-type]
    content_layer: str = pydantic.Field(min_length=1)
    style_layers: list[list[str]] = pydantic.Field(min_length=1)
    content_weight: list[Weight] = pydantic.Field(min_length=1)
    style_weight: list[Weight] = pydantic.Field(min_length=1)
    total_variation_weight: list[Weight] = pydantic.Field(min_length=1)
    optimizer: list[Literal[OPTIMIZERS]] = pydantic.Field(min_length=1)  # type: ignore[valid-type]
    iterations: int = pydantic.Field(ge=1)
    sgd: SgdParams
    adam: AdamParams
    lbfgs: LbfgsParams
    num_scales: int = pydantic.Field(ge=1)
    scale_ratio: float = pydantic.Field(ge=1.0, allow_inf_nan=False)
    preserve_color: bool
    snapshot_every: int = pydantic.Field(ge=0)

    @pydantic.model_validator(mode="after")
    def _usable(self) -> StyleTransferParams:
        if any(not layers for layers in self.style_layers):
            raise ValueError("every entry of style_layers needs at least one layer")
        if not sum(style.weight for style in self.style_images):
            raise ValueError("the style_images weights are all 0: give at least one a weight > 0")
        if (
            not any(self.content_weight)
            and not any(self.style_weight)
            and not any(self.total_variation_weight)
        ):
            raise ValueError(
                "content_weight, style_weight and total_variation_weight are 0 everywhere: nothing to optimise"
            )
        return self


@dataclass(frozen=True)
class StyleTransferPaths:
    """Where each step reads and writes, relative to the repo root; dvc.yaml declares the same."""

    inputs: Path = Path("data/style_transfer")  # content.png, style_00.png, ...
    results: Path = Path("outputs/style_transfer/results")  # grid.png, results.json, point_NN/
    metrics: Path = Path("outputs/style_transfer/metrics.json")

    def under(self, root: Path) -> StyleTransferPaths:
        return StyleTransferPaths(**{item.name: root / getattr(self, item.name) for item in fields(self)})

    @property
    def content(self) -> Path:
        return self.inputs / "content.png"

    def style(self, index: int) -> Path:
        return self.inputs / f"style_{index:02d}.png"


# --- The comparison grid --------------------------------------------------------------------


@dataclass(frozen=True)
class GridPoint:
    """One run of the comparison: its loss weights, style layers and optimiser."""

    content_weight: float
    style_weight: float
    total_variation_weight: float
    style_layers: tuple[str, ...]
    optimizer: str

    def label(self, varying: Sequence[str]) -> str:
        """What tells this point apart from the others (every field if there is only one)."""
        names = varying or ("content_weight", "style_weight", "total_variation_weight", "optimizer")
        return ", ".join(f"{name}={_format(getattr(self, name))}" for name in names)


def _format(value: Any) -> str:
    if isinstance(value, tuple):
        return "+".join(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def grid_points(params: StyleTransferParams) -> list[GridPoint]:
    """The product of every list in params, skipping points whose weights are all zero."""
    points = [
        GridPoint(content, style, variation, tuple(layers), optimizer)
        for content, style, variation, layers, optimizer in itertools.product(
            params.content_weight,
            params.style_weight,
            params.total_variation_weight,
            params.style_layers,
            params.optimizer,
        )
    ]
    return [
        point
        for point in points
        if point.content_weight or point.style_weight or point.total_variation_weight
    ]


def varying_fields(points: Sequence[GridPoint]) -> list[str]:
    return [item.name for item in fields(GridPoint) if len({getattr(p, item.name) for p in points}) > 1]


# --- Images ----------------------------------------------------------------------------------


def resize_to_height(pixels: np.ndarray | tf.Tensor, height: int) -> tf.Tensor:
    """Resize to `height` rows, keeping the aspect ratio (the book's shared height)."""
    width = max(1, round(pixels.shape[1] * height / pixels.shape[0]))
    return tf.image.resize(pixels, (height, width), method="bicubic", antialias=True)


def luminance(pixels: tf.Tensor) -> tf.Tensor:
    """(height, width, 3) [0, 255] RGB -> (height, width, 1) luma Y of YIQ, in [0, 255]."""
    return tf.image.rgb_to_yiq(pixels)[..., :1]


def luminance_image(pixels: tf.Tensor, like: tf.Tensor | None = None) -> tf.Tensor:
    """Grey RGB image of `pixels`' luminance; with `like`, its mean and spread matched to `like`'s
    (Gatys et al. 2016: the style's luminance histogram follows the content's)."""
    luma = luminance(pixels)
    if like is not None:
        target = luminance(like)
        luma = (luma - tf.reduce_mean(luma)) / (tf.math.reduce_std(luma) + 1e-6)
        luma = luma * tf.math.reduce_std(target) + tf.reduce_mean(target)
    return tf.repeat(luma, 3, axis=-1)


def with_colors_of(generated: tf.Tensor, content: tf.Tensor) -> tf.Tensor:
    """The generated image's luminance with the content's chroma (the I and Q of YIQ)."""
    content_yiq = tf.image.rgb_to_yiq(content)
    return tf.image.yiq_to_rgb(tf.concat([luminance(generated), content_yiq[..., 1:]], axis=-1))


# --- Losses (the book's, with its normalisations, so its weights mean the same) -------------------


def gram_matrix(features: tf.Tensor) -> tf.Tensor:
    """(height, width, channels) -> (channels, channels): sum over positions of f f^T."""
    flat = tf.reshape(features, (-1, tf.shape(features)[-1]))  # (positions, channels)
    return tf.matmul(flat, flat, transpose_a=True)


def content_loss(content_features: tf.Tensor, generated_features: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(tf.square(generated_features - content_features))


def style_loss(style_gram: tf.Tensor, generated_features: tf.Tensor, image_size: int) -> tf.Tensor:
    """Squared Gram difference over 4 * 3**2 * image_size**2: the book's normalisation, whose
    "channels = 3" and size in image pixels (not the layer's) its style_weight was tuned for."""
    difference = style_gram - gram_matrix(generated_features)
    return tf.reduce_sum(tf.square(difference)) / (4.0 * 3**2 * float(image_size) ** 2)


def total_variation_loss(pixels: tf.Tensor) -> tf.Tensor:
    """(height, width, 3): sum of (dy^2 + dx^2)^1.25 over pixels, in pixel units."""
    down = tf.square(pixels[:-1, :-1, :] - pixels[1:, :-1, :])
    right = tf.square(pixels[:-1, :-1, :] - pixels[:-1, 1:, :])
    return tf.reduce_sum(tf.pow(down + right, 1.25))


def style_target(
    style_features: Sequence[tf.Tensor], blend: Sequence[float], generated_positions: int
) -> tf.Tensor:
    """The Gram matrix a layer should reach: the weighted mean over style images of each one's
    Gram, rescaled to the generated image's number of positions (style images keep their own
    aspect ratio). Matching the blend has the same gradient as the weighted sum of style losses.
    """
    total = sum(blend)
    target = 0.0
    for features, weight in zip(style_features, blend):
        positions = features.shape[0] * features.shape[1]
        target += (weight / total) * gram_matrix(features) * (generated_positions / positions)
    return target


# --- The compiled step ---------------------------------------------------------------------------


def make_loss_and_grads(
    extractor: Callable,
    content: tf.Tensor,
    styles: Sequence[tf.Tensor],
    blend: Sequence[float],
    point: GridPoint,
    content_layer: str,
    jit_compile: bool = False,
) -> Callable[[tf.Tensor], tuple[dict[str, tf.Tensor], tf.Tensor]]:
    """(height, width, 3) pixels -> ({"loss", "content_loss", ...}, d loss / d pixels).

    Targets are computed here once; the step only pushes the generated image through the net.
    The per-term losses are unweighted (comparable across weight grids); "loss" is the weighted sum.
    """

    def features_of(pixels):
        outputs = extractor(pixels[None] / 127.5 - 1.0)
        return {name: tf.cast(value[0], tf.float32) for name, value in outputs.items()}  # float16-safe

    content_features = features_of(content)  # the generated image has the content's shape
    content_target = content_features[content_layer]
    style_features = [features_of(style) for style in styles]
    image_size = int(content.shape[0] * content.shape[1])
    style_targets = {
        layer: style_target(
            [features[layer] for features in style_features],
            blend,
            content_features[layer].shape[0] * content_features[layer].shape[1],
        )
        for layer in point.style_layers
    }

    @tf.function(jit_compile=jit_compile)
    def loss_and_grads(pixels):
        with tf.GradientTape() as tape:
            tape.watch(pixels)
            features = features_of(pixels)
            terms = {
                "content_loss": content_loss(content_target, features[content_layer]),
                "style_loss": tf.add_n(
                    [
                        style_loss(style_targets[layer], features[layer], image_size)
                        for layer in point.style_layers
                    ]
                )
                / len(point.style_layers),
                "total_variation_loss": total_variation_loss(pixels),
            }
            loss = (
                point.content_weight * terms["content_loss"]
                + point.style_weight * terms["style_loss"]
                + point.total_variation_weight * terms["total_variation_loss"]
            )
        return {"loss": loss, **terms}, tape.gradient(loss, pixels)

    return loss_and_grads


# --- Optimisers: each evaluation of the step counts as one iteration -------------------------------


@dataclass
class Progress:
    """Losses at every evaluation and, every `snapshot_every` steps, the image as it stands."""

    snapshot_every: int
    present: Callable[[tf.Tensor], np.ndarray]  # optimised pixels -> the RGB image a user sees
    scale: int = 0
    records: list[dict[str, float]] = field(default_factory=list)  # {"step", "scale", "loss", ...}
    final: dict[str, float] = field(default_factory=dict)  # the losses of the image returned
    snapshots: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (step, uint8 image)

    def __call__(self, losses: dict[str, tf.Tensor], image: tf.Tensor) -> None:
        step = len(self.records) + 1
        self.records.append({"step": step, "scale": self.scale, **{k: float(v) for k, v in losses.items()}})
        if self.snapshot_every and step % self.snapshot_every == 0:
            self.snapshots.append((step, images.to_uint8(self.present(image))))
            log.info("step %d: loss %.4g", step, self.records[-1]["loss"])


def keras_optimizer(name: str, sgd: SgdParams, adam: AdamParams) -> keras.optimizers.Optimizer:
    if name == "sgd":  # the book's: 100, decayed x0.96 every 100 steps
        schedule = keras.optimizers.schedules.ExponentialDecay(
            sgd.learning_rate, sgd.decay_steps, sgd.decay_rate
        )
        return keras.optimizers.SGD(schedule)
    return keras.optimizers.Adam(adam.learning_rate)


def descend(
    loss_and_grads: Callable,
    initial: tf.Tensor,
    iterations: int,
    optimizer: keras.optimizers.Optimizer,
    progress,
) -> tf.Tensor:
    """The book's loop: one optimiser update per evaluation."""
    pixels = tf.Variable(initial)
    for _ in range(iterations):
        losses, gradients = loss_and_grads(pixels)
        progress(losses, pixels)
        optimizer.apply_gradients([(gradients, pixels)])
    return tf.convert_to_tensor(pixels)


class _BudgetSpent(Exception):
    """Raised inside SciPy's loop once `iterations` evaluations are done (its maxfun may overrun)."""


def lbfgs(loss_and_grads: Callable, initial: tf.Tensor, iterations: int, history: int, progress) -> tf.Tensor:
    """L-BFGS (Gatys et al.'s choice) through SciPy; returns the best image it evaluated.

    Line-search trials count as iterations, so its budget is comparable with SGD and Adam's.
    SciPy stops early once the float32 loss stalls; it then restarts from the best image
    (fresh curvature history) while budget is left and restarts still improve the loss.
    """
    shape = initial.shape
    best = {"loss": math.inf, "pixels": initial}
    start = len(progress.records)

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        if len(progress.records) - start == iterations:
            raise _BudgetSpent
        pixels = tf.constant(flat.reshape(shape), tf.float32)
        losses, gradients = loss_and_grads(pixels)
        loss = float(losses["loss"])
        if loss < best["loss"]:
            best.update(loss=loss, pixels=pixels)
        progress(losses, best["pixels"])
        return loss, gradients.numpy().astype(np.float64).ravel()

    # SciPy's BLAS threads would spin between evaluations and take the cores from TensorFlow's
    # next step (1.5x slower per evaluation on 2 cores, benchmarks/README.md).
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        previous_best = None
        while previous_best is None or best["loss"] < previous_best:
            previous_best = best["loss"]
            remaining = iterations - (len(progress.records) - start)
            try:
                result = scipy.optimize.minimize(
                    objective,
                    tf.reshape(best["pixels"], [-1]).numpy().astype(np.float64),
                    jac=True,
                    method="L-BFGS-B",
                    options={
                        "maxiter": remaining,
                        "maxfun": remaining,
                        "maxcor": history,
                        "ftol": 0.0,
                        "gtol": 0.0,
                    },
                )
            except _BudgetSpent:
                break
            log.info("L-BFGS stopped after %d evaluations: %s", len(progress.records) - start, result.message)
    return best["pixels"]


def optimize(
    name: str,
    loss_and_grads: Callable,
    initial: tf.Tensor,
    iterations: int,
    progress: Progress,
    sgd: SgdParams,
    adam: AdamParams,
    lbfgs_params: LbfgsParams,
) -> tf.Tensor:
    if name == "lbfgs":
        return lbfgs(loss_and_grads, initial, iterations, lbfgs_params.history, progress)
    return descend(loss_and_grads, initial, iterations, keras_optimizer(name, sgd, adam), progress)


# --- Coarse to fine --------------------------------------------------------------------------------


def scale_heights(height: int, num_scales: int, scale_ratio: float) -> list[int]:
    """From the coarsest scale to `height`, each `scale_ratio` times the previous."""
    return [round(height / scale_ratio**scale) for scale in reversed(range(num_scales))]


def check_sizes(
    shape: Sequence[int], heights: Sequence[int], backbone: str, name: str = "the content image"
) -> None:
    """An image of `shape` (height, width) resized to every one of `heights` must stay large
    enough for the backbone's pooling (style images keep their aspect ratio, so check each)."""
    minimum = MIN_INPUT_SIZE[backbone]
    smallest = min(heights)
    width = round(shape[1] * smallest / shape[0])
    if min(smallest, width) < minimum:
        raise images.ImageError(
            f"{name} would be {width}x{smallest} pixels at the coarsest scale, below the {minimum} pixels "
            f"{backbone} needs: use a larger height, fewer num_scales or a smaller scale_ratio"
        )


def stylize(
    content: np.ndarray,
    styles: Sequence[np.ndarray],
    blend: Sequence[float],
    backbone: Backbone,
    content_layer: str,
    point: GridPoint,
    iterations: int,
    heights: Sequence[int],
    preserve_color: bool,
    snapshot_every: int,
    sgd: SgdParams,
    adam: AdamParams,
    lbfgs_params: LbfgsParams,
    jit_compile: bool = False,
) -> tuple[np.ndarray, Progress]:
    """Transfer the blended style of `styles` onto `content` ([0, 255] RGB arrays), solving at
    each of `heights` in turn from the upscaled previous solution; `iterations` per scale.

    Returns the final [0, 255] image and the progress (losses per step, snapshots).
    """
    content = tf.convert_to_tensor(content, tf.float32)
    styles = [tf.convert_to_tensor(style, tf.float32) for style in styles]
    if preserve_color:  # luminance-only transfer, colours put back from the content at the end
        styles = [luminance_image(style, like=content) for style in styles]
        optimised_content = luminance_image(content)
    else:
        optimised_content = content

    def present(pixels: tf.Tensor) -> np.ndarray:
        pixels = tf.convert_to_tensor(pixels)
        if preserve_color:
            pixels = with_colors_of(pixels, tf.image.resize(content, pixels.shape[:2], method="area"))
        return np.clip(pixels.numpy(), 0.0, 255.0)

    extractor = backbone.feature_extractor([content_layer, *point.style_layers])
    progress = Progress(snapshot_every, present)
    generated = None
    for scale, height in enumerate(heights):
        content_at_scale = resize_to_height(optimised_content, height)
        shape = content_at_scale.shape[:2]
        # The book starts from the content image; later scales from the upscaled solution.
        generated = (
            content_at_scale if generated is None else tf.image.resize(generated, shape, method="bicubic")
        )
        loss_and_grads = make_loss_and_grads(
            extractor,
            content_at_scale,
            [resize_to_height(style, height) for style in styles],
            blend,
            point,
            content_layer,
            jit_compile,
        )
        progress.scale = scale
        generated = optimize(
            point.optimizer, loss_and_grads, generated, iterations, progress, sgd, adam, lbfgs_params
        )
        log.info(
            "scale %d/%d (%dx%d): loss %.4g",
            scale + 1,
            len(heights),
            shape[1],
            shape[0],
            progress.records[-1]["loss"],
        )
    # The losses of the image returned (the last update, or L-BFGS's best), not of the last step.
    progress.final = {name: float(value) for name, value in loss_and_grads(generated)[0].items()}
    return present(generated), progress


# --- Pipeline steps (the commands in dvc.yaml) -------------------------------------------------------


def fetch_images(paths: StyleTransferPaths, params: StyleTransferParams) -> None:
    """Read the content and style images (any source, size or mode) and store them as RGB PNGs at
    the shared height. Every image is read before any is written."""
    sources = [(params.content_image, params.content_sha256)] + [
        (s.image, s.sha256) for s in params.style_images
    ]
    resized = []
    for source, sha256 in sources:
        log.info("reading %s", source)
        pixels = images.read_image(images.resolve_source(source, sha256))
        resized.append(resize_to_height(pixels, params.height).numpy())
    targets = [paths.content] + [paths.style(index) for index in range(len(params.style_images))]
    for stale in paths.inputs.glob("style_*.png") if paths.inputs.is_dir() else []:
        stale.unlink()
    for pixels, target in zip(resized, targets):
        images.save_image(np.clip(pixels, 0, 255), target)
        log.info("%s: %dx%d", target, pixels.shape[1], pixels.shape[0])


def stylize_grid(
    paths: StyleTransferPaths,
    params: StyleTransferParams,
    runtime: RuntimeParams,
    weights: str = "pretrained",
) -> list[dict[str, Any]]:
    """One stylised image per grid point, with its losses and snapshots, plus a labelled grid.

    Results are written to a sibling folder and moved into place at the end, so a failure leaves
    the previous results (or none), never a partial set.
    """
    configure_runtime(runtime.seed, runtime.dtype_policy, runtime.memory_growth, runtime.distribute)
    content = images.read_image(paths.content)
    styles = [images.read_image(paths.style(index)) for index in range(len(params.style_images))]
    heights = scale_heights(content.shape[0], params.num_scales, params.scale_ratio)
    check_sizes(content.shape, heights, params.backbone)
    for index, (style, source) in enumerate(zip(styles, params.style_images)):
        check_sizes(style.shape, heights, params.backbone, f"style image {index} ({source.image})")
    points = grid_points(params)
    backbone = load_backbone(params.backbone, weights)
    backbone.check_layers(
        [params.content_layer, *sorted({layer for layers in params.style_layers for layer in layers})]
    )
    varying = varying_fields(points)

    staging = paths.results.with_name(f".{paths.results.name}.partial")
    _remove(staging)
    results, tiles = [], [("content", content)] + [(f"style {i}", style) for i, style in enumerate(styles)]
    for index, point in enumerate(points):
        label = point.label(varying)
        log.info("point %d/%d: %s", index + 1, len(points), label)
        started = time.perf_counter()
        final, progress = stylize(
            content,
            styles,
            [style.weight for style in params.style_images],
            backbone,
            params.content_layer,
            point,
            params.iterations,
            heights,
            params.preserve_color,
            params.snapshot_every,
            params.sgd,
            params.adam,
            params.lbfgs,
            runtime.jit_compile,
        )
        seconds = time.perf_counter() - started
        folder = f"point_{index:02d}"
        images.save_image(final, staging / folder / "final.png")
        for step, snapshot in progress.snapshots:
            images.save_image(snapshot, staging / folder / "snapshots" / f"step_{step:05d}.png")
        _write_csv(staging / folder / "losses.csv", progress.records)
        tiles.append((label, final))
        results.append(
            {
                "name": label,
                "folder": folder,
                "point": asdict(point),
                "seconds": seconds,
                **summarize(progress),
            }
        )
    images.save_image(images.labelled_grid(tiles), staging / "grid.png")
    settings = {
        "backbone": backbone.name,
        "content_layer": params.content_layer,
        "heights": heights,
        "iterations": params.iterations,
        "preserve_color": params.preserve_color,
    }
    data.write_json(staging / "results.json", {"settings": settings, "points": results})
    _remove(paths.results)
    staging.replace(paths.results)
    data.write_json(paths.metrics, {result["folder"]: _metrics_of(result) for result in results})
    return results


def summarize(progress: Progress) -> dict[str, Any]:
    return {
        "steps": len(progress.records),
        "best_loss": min([record["loss"] for record in progress.records] + [progress.final["loss"]]),
        "final": {term: progress.final[term] for term in LOSS_TERMS},
    }


def _metrics_of(result: dict[str, Any]) -> dict[str, float]:
    return {
        **{f"final_{term}": value for term, value in result["final"].items()},
        "best_loss": result["best_loss"],
        "seconds": result["seconds"],
        "seconds_per_step": result["seconds"] / result["steps"],
    }


def _remove(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)


def _write_csv(path: Path, rows: Sequence[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# --- MLflow logging of the steps' outputs (called by the flow) -------------------------------------------


def log_stylizations(parent_run_id: str, experiment_id: str, paths: StyleTransferPaths) -> list[str]:
    """The labelled comparison grid and the inputs on the parent run; one child run per grid point
    with its losses per step, its snapshots as a stepped image and its final image."""
    import mlflow
    from PIL import Image

    client = mlflow.MlflowClient()
    summary = json.loads((paths.results / "results.json").read_text())
    client.log_artifact(parent_run_id, str(paths.results / "grid.png"))
    client.log_artifacts(parent_run_id, str(paths.inputs), "inputs")
    child_ids = []
    for result in summary["points"]:
        folder = paths.results / result["folder"]
        point = result["point"]
        with mlflow.start_run(
            run_name=result["name"], experiment_id=experiment_id, parent_run_id=parent_run_id, nested=True
        ) as child:
            run_id = child.info.run_id
            mlflow.log_params(
                {
                    **point,
                    "style_layers": ",".join(point["style_layers"]),
                    **{key: str(value) for key, value in summary["settings"].items()},
                }
            )
            with (folder / "losses.csv").open() as file:
                rows = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(file)]
            tracking.log_metric_rows(run_id, rows, step_key="step")
            mlflow.log_metrics(_metrics_of(result))
            for snapshot in sorted((folder / "snapshots").glob("step_*.png")):
                with Image.open(snapshot) as image:
                    client.log_image(
                        run_id, image.copy(), key="generated", step=int(snapshot.stem.removeprefix("step_"))
                    )
            mlflow.log_artifact(str(folder / "final.png"))
            child_ids.append(run_id)
    return child_ids


# --- Command line: `python -m tasks.style_transfer <step>` from the repo root, as dvc.yaml runs it ---------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.style_transfer", description=__doc__.splitlines()[0]
    )
    parser.add_argument("step", choices=["images", "stylize"])
    parser.add_argument("--root", type=Path, default=Path("."), help="repo root holding params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    try:
        params = load_params(args.root)
        style_transfer = parse_section(params, TECHNIQUE, StyleTransferParams)
        runtime = parse_section(params, "runtime", RuntimeParams)
        paths = StyleTransferPaths().under(args.root)
        if args.step == "images":
            fetch_images(paths, style_transfer)
        else:
            stylize_grid(paths, style_transfer, runtime)
    except (ParamsError, images.ImageError, BackboneError, data.DownloadError) as error:
        return steps.report_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
