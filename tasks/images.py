"""Images shared by the techniques: where they come from, reading them robustly, writing them
atomically, mosaics of generated images, and labelled comparison grids for MLflow."""

from __future__ import annotations

import importlib.resources
import math
import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from tasks import storage
from tasks.steps import StepError

# Photos that installed packages ship, for offline runs ("bundled:<name>").
BUNDLED_IMAGES = {
    "china": ("sklearn.datasets", "images/china.jpg"),
    "flower": ("sklearn.datasets", "images/flower.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}


class ImageError(StepError, ValueError):
    """An image source that cannot be read, or is not an image."""


def resolve_source(source: str, sha256: str = "") -> Path:
    """A local file for `source`: a path, a file:// or http(s) URL, or "bundled:<name>".

    URLs are fetched through the Keras cache (so a filled cache works offline).
    """
    if source.startswith("bundled:"):
        name = source.removeprefix("bundled:")
        if name not in BUNDLED_IMAGES:
            raise ImageError(
                f"unknown bundled image {name!r} (available: {', '.join(sorted(BUNDLED_IMAGES))})"
            )
        package, resource = BUNDLED_IMAGES[name]
        return Path(str(importlib.resources.files(package).joinpath(resource)))
    parts = urllib.parse.urlsplit(source)
    if parts.scheme in ("http", "https"):
        return storage.cached_download(source, sha256)
    path = Path(urllib.parse.unquote(parts.path)) if parts.scheme == "file" else Path(source)
    if not path.is_file():
        raise ImageError(f"image {source} not found")
    return path


def read_image(path: Path, max_size: int = 0) -> np.ndarray:
    """(height, width, 3) float32 RGB in [0, 255], from any mode (grayscale, palette, RGBA on
    white), EXIF-rotated, downscaled so the longer side is at most `max_size` (0 = as is)."""
    try:
        with Image.open(path) as image:
            if max_size:
                image.draft("RGB", (max_size, max_size))  # JPEG: decode at reduced size, cheaply
            image.load()  # decodes fully: truncated files fail here, not later
            image = ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path} is not a readable image: {error}") from None
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{path} is an empty image ({image.width}x{image.height})")
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit: Pillow's convert would clip, not scale
        tones = np.clip(np.rint(np.asarray(image, np.float64) / 257.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(tones, "L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    image = image.convert("RGB")
    if max_size and max(image.size) > max_size:
        image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)  # keeps the aspect ratio
    return np.asarray(image, dtype=np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def save_image(image: np.ndarray, path: Path) -> Path:
    """Write a [0, 255] RGB array as PNG, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = storage.partial_path(path, ".png")
    Image.fromarray(to_uint8(image)).save(temporary, format="PNG")
    os.replace(temporary, path)
    return path


def mosaic(pixels: np.ndarray, columns: int = 0) -> np.ndarray:
    """(n, h, w, c) images in [0, 1] tiled row-major into one (rows * h, columns * w, 3) [0, 255]
    image; `columns` 0 = a near-square mosaic. Empty cells stay white."""
    count, height, width, channels = pixels.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = -(-count // columns)
    canvas = np.ones((rows * height, columns * width, channels), np.float32)
    for index, image in enumerate(pixels):
        row, column = divmod(index, columns)
        canvas[row * height : (row + 1) * height, column * width : (column + 1) * width] = image
    canvas = np.repeat(canvas, 3, axis=-1) if channels == 1 else canvas
    return canvas * 255.0


def labelled_grid(
    images: Sequence[tuple[str, np.ndarray]], tile_height: int = 256, columns: int = 4
) -> np.ndarray:
    """One (H, W, 3) uint8 image: each input scaled to `tile_height`, its label underneath."""
    label_height, margin = 24, 4
    tiles = []
    for label, image in images:
        tile = Image.fromarray(to_uint8(image))
        width = max(1, round(tile.width * tile_height / tile.height))
        tiles.append((label, tile.resize((width, tile_height), Image.Resampling.LANCZOS)))
    tile_width = max(tile.width for _, tile in tiles)
    rows = -(-len(tiles) // columns)
    columns = min(columns, len(tiles))
    canvas = Image.new(
        "RGB",
        (columns * (tile_width + margin) + margin, rows * (tile_height + label_height + margin) + margin),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    for index, (label, tile) in enumerate(tiles):
        left = margin + (index % columns) * (tile_width + margin)
        top = margin + (index // columns) * (tile_height + label_height + margin)
        canvas.paste(tile, (left, top))
        draw.text(
            (left + 2, top + tile_height + 3), label, fill="black", font=_font_to_fit(draw, label, tile_width)
        )
    return np.asarray(canvas)


AXIS_LABEL_MARGIN = 24  # pixels: room for one line of the largest label font (16)


def with_axis_labels(image: np.ndarray, x_label: str, y_label: str = "") -> np.ndarray:
    """(H + AXIS_LABEL_MARGIN, W [+ AXIS_LABEL_MARGIN], 3) uint8: `image` with `x_label` in a white
    margin under it and, if given, `y_label` in one at its left, reading upwards as a plot's y label."""
    height, width = image.shape[:2]
    left = AXIS_LABEL_MARGIN if y_label else 0
    canvas = Image.new("RGB", (left + width, height + AXIS_LABEL_MARGIN), "white")
    canvas.paste(Image.fromarray(to_uint8(image)), (left, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((left + 2, height + 3), x_label, fill="black", font=_font_to_fit(draw, x_label, width))
    if y_label:
        # Written along a horizontal strip, then turned a quarter counter-clockwise: it starts at the bottom.
        strip = Image.new("RGB", (height, AXIS_LABEL_MARGIN), "white")
        strip_draw = ImageDraw.Draw(strip)
        strip_draw.text((2, 3), y_label, fill="black", font=_font_to_fit(strip_draw, y_label, height))
        canvas.paste(strip.rotate(90, expand=True), (0, 0))
    return np.asarray(canvas)


def _font_to_fit(draw: ImageDraw.ImageDraw, label: str, width: int) -> ImageFont.ImageFont:
    for size in (16, 14, 12, 10, 8):
        font = ImageFont.load_default(size=size)
        if draw.textlength(label, font=font) <= width - 4:
            break
    return font
