"""Neural style transfer (Gatys et al. 2015; Chollet, Deep Learning with Python, 2nd ed. 12.3):
optimise the pixels of an image so a pretrained convnet sees the content of one image in the
style (Gram matrices) of another, kept smooth by a total variation loss.

Reads top to bottom: colour preservation -> losses -> the compiled loss-and-gradient step ->
coarse-to-fine scales, each solved by one of the optimisers in optimizers.py.

Beyond the book: content features and style Gram matrices are computed once per scale, not at
every step (the book pushes all three images through the network each step); several style
images blend by weight; luminance-only transfer keeps the content's colours; a coarse-to-fine
schedule solves small and continues at full size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from tasks.backbones import MIN_INPUT_SIZE, Backbone
from tasks.images import ImageError
from tasks.style_transfer.data import resize_to_height
from tasks.style_transfer.optimizers import LossHistory, optimize
from tasks.style_transfer.params import AdamParams, GridPoint, LbfgsParams, SgdParams

log = logging.getLogger(__name__)

LOSS_TERMS = ("loss", "content_loss", "style_loss", "total_variation_loss")


# --- Colour preservation ---------------------------------------------------------------------


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
        raise ImageError(
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
) -> tuple[np.ndarray, LossHistory]:
    """Transfer the blended style of `styles` onto `content` ([0, 255] RGB arrays), solving at
    each of `heights` in turn from the upscaled previous solution; `iterations` per scale.

    Returns the final [0, 255] image and its loss history (losses per step, snapshots).
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
    history = LossHistory(snapshot_every, present)
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
        history.scale = scale
        generated = optimize(
            point.optimizer, loss_and_grads, generated, iterations, history, sgd, adam, lbfgs_params
        )
        log.info(
            "scale %d/%d (%dx%d): loss %.4g",
            scale + 1,
            len(heights),
            shape[1],
            shape[0],
            history.records[-1]["loss"],
        )
    # The losses of the image returned (the last update, or L-BFGS's best), not of the last step.
    history.final = {name: float(value) for name, value in loss_and_grads(generated)[0].items()}
    return present(generated), history
