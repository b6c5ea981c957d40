"""Style transfer's input step: `python -m tasks.style_transfer.data images` (from the repo root, as
dvc.yaml runs it) reads the content and style images from any source, size or mode and stores them
as RGB PNGs at the shared height."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from tasks import storage
from tasks.images import ImageError, read_image, resolve_source, save_image
from tasks.steps import run_steps
from tasks.style_transfer.params import MAX_PIXELS, StyleImageParams, StyleTransferPaths, load

log = logging.getLogger(__name__)


def resize_to_height(pixels: np.ndarray | tf.Tensor, height: int) -> tf.Tensor:
    """Resize to `height` rows, keeping the aspect ratio (the book's shared height)."""
    width = max(1, round(pixels.shape[1] * height / pixels.shape[0]))
    return tf.image.resize(pixels, (height, width), method="bicubic", antialias=True)


def check_pixels(shape: Sequence[int], height: int, source: str) -> None:
    """An image of `shape` (height, width) at the shared `height` must stay within MAX_PIXELS."""
    width = max(1, round(shape[1] * height / shape[0]))
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{source} would be {width}x{height} pixels at style_transfer.height {height}, over the "
            f"{MAX_PIXELS} pixels that keep the convnet's activations in memory: use a smaller height "
            "or a less elongated image"
        )


def fetch_images(
    paths: StyleTransferPaths,
    content_image: str,
    content_sha256: str,
    style_images: Sequence[StyleImageParams],
    height: int,
) -> None:
    """Read the content and style images (any source, size or mode) and store them as RGB PNGs at
    the shared height. Every image is read and checked before any is written."""
    sources = [(content_image, content_sha256)] + [(style.image, style.sha256) for style in style_images]
    resized = []
    for source, sha256 in sources:
        log.info("reading %s", source)
        pixels = read_image(resolve_source(source, sha256))
        check_pixels(pixels.shape, height, source)
        resized.append(resize_to_height(pixels, height).numpy())
    targets = [paths.content] + [paths.style(index) for index in range(len(style_images))]
    for stale in paths.inputs.glob("style_*.png") if paths.inputs.is_dir() else []:
        stale.unlink()
    for pixels, target in zip(resized, targets):
        save_image(np.clip(pixels, 0, 255), target)
        log.info("%s: %dx%d", target, pixels.shape[1], pixels.shape[0])


def images(root: Path) -> None:
    """The `images` step."""
    params, _ = load(root)
    fetch_images(
        storage.under(root, StyleTransferPaths()),
        params.content_image,
        params.content_sha256,
        params.style_images,
        params.height,
    )


if __name__ == "__main__":
    sys.exit(run_steps({"images": images}, __doc__))
