"""DeepDream (Chollet, Deep Learning with Python, 2nd ed. 12.2): gradient ascent on an image to
maximise the activations of chosen layers of a pretrained convnet, octave by octave.

Reads top to bottom: the loss and its gradients -> tiled gradient ascent -> octaves with
lost-detail re-injection.

Beyond the book: gradients are computed over tiles with a random shift per step, so memory stays
bounded on large images and no seams show; the compiled loss-and-gradient step is traced at
most twice per dream, whatever the octaves and tiles. Per octave it runs at the book's speed
(benchmarks/README.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from tasks.backbones import MIN_INPUT_SIZE
from tasks.images import ImageError

log = logging.getLogger(__name__)

LayerSetting = dict[str, float]  # layer name -> weight of its activation in the loss


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
        raise ImageError(
            f"the smallest octave would be {smallest[1]}x{smallest[0]} pixels, below the {minimum} "
            f"pixels {backbone} needs: use a larger image or fewer octaves / a smaller octave_scale"
        )
    if tile_size and tile_size < 2 * minimum:  # tiles are at least half the tile size
        raise ImageError(
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
