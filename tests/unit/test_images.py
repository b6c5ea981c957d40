"""Shared image helpers: where images come from, reading any mode robustly, atomic PNG writes and
the labelled comparison grid."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks import images, storage

CLOSED_PORT_URL = "http://127.0.0.1:9"  # the discard port: nothing listens, connecting fails at once
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_rgb_float_pixels(image: np.ndarray, height: int, width: int) -> None:
    assert image.shape == (height, width, 3)
    assert image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 255.0


def china_pixels() -> np.ndarray:
    """The bundled photo as (427, 640, 3) uint8, read with PIL only."""
    with Image.open(images.resolve_source("bundled:china")) as photo:
        return np.asarray(photo.convert("RGB"))


# --- resolve_source -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(images.BUNDLED_IMAGES))
def test_bundled_images_resolve_to_files_that_read(name):
    path = images.resolve_source(f"bundled:{name}")

    assert path.is_file()
    image = images.read_image(path, max_size=64)
    assert image.ndim == 3 and max(image.shape[:2]) == 64


def test_unknown_bundled_image_lists_the_available_ones():
    with pytest.raises(images.ImageError, match="'mona_lisa'") as error:
        images.resolve_source("bundled:mona_lisa")

    for name in images.BUNDLED_IMAGES:
        assert name in str(error.value)


def test_missing_local_file_is_an_image_error_naming_it(tmp_path):
    missing = tmp_path / "no such photo.jpg"

    with pytest.raises(images.ImageError, match="not found") as error:
        images.resolve_source(str(missing))
    assert str(missing) in str(error.value)


def test_missing_file_url_is_an_image_error(tmp_path):
    url = (tmp_path / "missing.png").as_uri()

    with pytest.raises(images.ImageError, match="not found") as error:
        images.resolve_source(url)
    assert url in str(error.value)


def test_file_url_resolves_to_the_local_file(tmp_path):
    path = tmp_path / "my photo.png"  # a space: percent-encoded in the URL
    Image.new("RGB", (4, 3), "red").save(path)

    assert "%20" in path.as_uri()
    assert images.resolve_source(path.as_uri()) == path
    assert images.resolve_source(str(path)) == path


def test_unreachable_url_is_a_download_error_naming_the_url(keras_home):
    name = f"not-cached-{uuid.uuid4().hex[:8]}.jpg"
    url = f"{CLOSED_PORT_URL}/{name}"
    assert not (keras_home / "datasets" / name).exists()

    with pytest.raises(storage.DownloadError) as error:
        images.resolve_source(url)

    assert url in str(error.value)
    assert error.value.retryable
    assert not (keras_home / "datasets" / name).exists()


# --- read_image: modes ----------------------------------------------------------------------


def test_grayscale_image_becomes_three_equal_channels(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, size=(9, 13), dtype=np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)

    image = images.read_image(path)

    assert_rgb_float_pixels(image, 9, 13)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], gray)


def test_palette_image_is_looked_up_and_its_transparent_index_is_white(tmp_path):
    palette = np.array([[0, 0, 0], [200, 10, 30], [5, 250, 7], [40, 50, 60]], dtype=np.uint8)
    indices = np.random.default_rng(1).integers(0, len(palette), size=(7, 11), dtype=np.uint8)
    transparent_index = 3
    paletted = Image.fromarray(indices, mode="P")
    paletted.putpalette(palette.ravel().tolist())
    path = tmp_path / "palette.png"
    paletted.save(path, transparency=transparent_index)
    expected = palette[indices].astype(np.float32)
    expected[indices == transparent_index] = 255.0

    image = images.read_image(path)

    assert_rgb_float_pixels(image, 7, 11)
    np.testing.assert_array_equal(image, expected)


def test_rgba_image_is_composited_on_white(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(6, 8, 3)).astype(np.float64)
    alpha = rng.choice([0, 128, 255], size=(6, 8)).astype(np.float64)
    path = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, alpha]).astype(np.uint8), mode="RGBA").save(path)
    coverage = alpha[..., None] / 255.0
    expected = rgb * coverage + 255.0 * (1.0 - coverage)  # "over" a white background

    image = images.read_image(path)

    assert_rgb_float_pixels(image, 6, 8)
    np.testing.assert_allclose(image, expected, atol=1.0)
    np.testing.assert_array_equal(image[alpha == 0], 255.0)
    np.testing.assert_array_equal(image[alpha == 255], rgb[alpha == 255])


def sixteen_bit_ramp(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 16-bit grayscale PNG of every 8-bit level times 257 (so 255 -> 65535), and those levels."""
    levels = np.arange(256, dtype=np.uint16).reshape(16, 16)
    path = tmp_path / "sixteen_bit.png"
    image = Image.fromarray(levels * 257)
    assert image.mode == "I;16"
    image.save(path)
    return path, levels


def test_sixteen_bit_image_comes_back_as_rgb_pixels(tmp_path):
    path, levels = sixteen_bit_ramp(tmp_path)

    assert_rgb_float_pixels(images.read_image(path), *levels.shape)


def test_sixteen_bit_image_keeps_its_tones(tmp_path):
    """16-bit levels are scaled to 8 bits (v / 257), not clipped: mid-grey stays mid-grey."""
    path, levels = sixteen_bit_ramp(tmp_path)

    image = images.read_image(path)

    for channel in range(3):
        np.testing.assert_allclose(image[..., channel], levels, atol=1.0)


# --- read_image: orientation and size -------------------------------------------------------


def quadrants(height: int, width: int) -> np.ndarray:
    """Red, green / blue, white quadrants: every rotation and flip looks different."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    half_height, half_width = height // 2, width // 2
    pixels[:half_height, :half_width] = (255, 0, 0)
    pixels[:half_height, half_width:] = (0, 255, 0)
    pixels[half_height:, :half_width] = (0, 0, 255)
    pixels[half_height:, half_width:] = (255, 255, 255)
    return pixels


# EXIF orientation -> the counter-clockwise quarter turns that show the picture upright.
@pytest.mark.parametrize("orientation, quarter_turns", [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, quarter_turns):
    stored = quadrants(32, 64)
    exif = Image.Exif()
    exif[0x0112] = orientation  # the Orientation tag
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    expected = np.rot90(stored, k=quarter_turns).astype(np.float32)

    image = images.read_image(path)

    assert image.shape == expected.shape
    # JPEG blurs the quadrant edges a little; a wrong rotation is off by ~100 on average.
    assert np.abs(image - expected).mean() < 10


@pytest.mark.parametrize("max_size", [64, 128, 200])
def test_max_size_downscales_keeping_the_aspect_ratio(max_size):
    original = china_pixels()
    height, width = original.shape[:2]

    image = images.read_image(images.resolve_source("bundled:china"), max_size=max_size)

    assert max(image.shape[:2]) == max_size
    assert image.shape[1] == max_size  # the photo is landscape
    assert abs(image.shape[0] - height * max_size / width) <= 1.0
    assert_rgb_float_pixels(image, *image.shape[:2])


def test_max_size_downscales_portrait_pngs_too(tmp_path):
    path = tmp_path / "portrait.png"
    Image.fromarray(china_pixels()).transpose(Image.Transpose.ROTATE_90).save(path)  # 427 x 640

    image = images.read_image(path, max_size=100)

    assert image.shape[0] == 100
    assert abs(image.shape[1] - 427 * 100 / 640) <= 1.0


@pytest.mark.parametrize("max_size", [0, 640, 1000])
def test_max_size_never_upscales(max_size):
    original = china_pixels()

    image = images.read_image(images.resolve_source("bundled:china"), max_size=max_size)

    np.testing.assert_array_equal(image, original.astype(np.float32))


def test_downscaled_image_looks_like_the_original():
    original = china_pixels().astype(np.float32)

    image = images.read_image(images.resolve_source("bundled:china"), max_size=64)

    # Mean colour survives downscaling (a channel swap or garbage would not).
    np.testing.assert_allclose(image.mean(axis=(0, 1)), original.mean(axis=(0, 1)), atol=3.0)


# --- read_image: broken files ---------------------------------------------------------------


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(china_pixels()[:128, :128]).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_valid_jpeg_bytes_read(tmp_path):
    """The control for the truncated case below: the whole file reads."""
    path = tmp_path / "whole.jpg"
    path.write_bytes(jpeg_bytes())

    assert images.read_image(path).shape == (128, 128, 3)


@pytest.mark.parametrize("max_size", [0, 64])
def test_truncated_jpeg_is_an_image_error_naming_the_path(tmp_path, max_size):
    content = jpeg_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(content[: len(content) // 2])

    with pytest.raises(images.ImageError) as error:
        images.read_image(path, max_size=max_size)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "file_name, content",
    [("notes.jpg", b"this is a text file, not a photo\n" * 20), ("empty.jpg", b""), ("empty.png", b"")],
)
def test_non_image_files_are_image_errors_naming_the_path(tmp_path, file_name, content):
    path = tmp_path / file_name
    path.write_bytes(content)

    with pytest.raises(images.ImageError) as error:
        images.read_image(path)
    assert str(path) in str(error.value)


# --- save_image -----------------------------------------------------------------------------


def test_save_image_round_trips_uint8_content_exactly(tmp_path):
    pixels = np.random.default_rng(3).integers(0, 256, size=(13, 17, 3), dtype=np.uint8)
    path = tmp_path / "nested" / "dir" / "out.png"

    assert images.save_image(pixels.astype(np.float32), path) == path

    assert path.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(path) as saved:
        assert saved.format == "PNG" and saved.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(saved), pixels)
    np.testing.assert_array_equal(images.read_image(path), pixels.astype(np.float32))
    assert [child.name for child in path.parent.iterdir()] == ["out.png"]  # no .partial left


def test_save_image_rounds_and_clips_to_bytes(tmp_path):
    values = np.array([-30.0, 0.4, 0.6, 127.3, 254.7, 300.0], dtype=np.float32)
    path = images.save_image(np.repeat(values[None, :, None], 3, axis=2), tmp_path / "clipped.png")

    with Image.open(path) as saved:
        np.testing.assert_array_equal(np.asarray(saved)[0, :, 0], [0, 0, 1, 127, 255, 255])


def test_save_image_replaces_an_existing_file(tmp_path):
    path = tmp_path / "out.png"
    images.save_image(np.zeros((4, 4, 3)), path)

    images.save_image(np.full((5, 6, 3), 200.0), path)

    np.testing.assert_array_equal(images.read_image(path), np.full((5, 6, 3), 200.0))
    assert [child.name for child in tmp_path.iterdir()] == ["out.png"]


# --- labelled_grid --------------------------------------------------------------------------

# (height, width) of inputs of different sizes and aspect ratios, each a solid colour.
GRID_SHAPES = [(20, 30), (40, 20), (10, 10), (25, 50), (30, 30)]
GRID_COLOURS = [(200, 0, 0), (0, 150, 0), (0, 0, 220), (90, 90, 0), (0, 120, 120)]
TILE_HEIGHT = 32
COLUMNS = 4


def grid_inputs(count: int) -> list[tuple[str, np.ndarray]]:
    return [
        (f"image {index}", np.full((*GRID_SHAPES[index], 3), GRID_COLOURS[index], dtype=np.float32))
        for index in range(count)
    ]


def scaled_width(shape: tuple[int, int]) -> int:
    height, width = shape
    return max(1, round(width * TILE_HEIGHT / height))


def test_labelled_grid_layout_follows_columns_and_tile_height():
    grids = {count: images.labelled_grid(grid_inputs(count), TILE_HEIGHT, COLUMNS) for count in (1, 4, 5)}
    tile_widths = {count: max(scaled_width(shape) for shape in GRID_SHAPES[:count]) for count in grids}

    for grid in grids.values():
        assert grid.ndim == 3 and grid.shape[2] == 3 and grid.dtype == np.uint8

    # One tile: a margin on each side, the label strip under the tile.
    height_1, width_1 = grids[1].shape[:2]
    margin = (width_1 - tile_widths[1]) / 2
    label_height = height_1 - TILE_HEIGHT - 2 * margin
    assert margin >= 0 and margin == int(margin)
    assert label_height > 0
    column_pitch = {count: tile_widths[count] + margin for count in grids}
    row_pitch = TILE_HEIGHT + label_height + margin

    # 4 tiles: one full row of 4 columns; 5 tiles: still 4 columns, a second row.
    assert grids[4].shape[:2] == (1 * row_pitch + margin, 4 * column_pitch[4] + margin)
    assert grids[5].shape[:2] == (2 * row_pitch + margin, 4 * column_pitch[5] + margin)


def test_labelled_grid_places_each_tile_row_by_row():
    inputs = grid_inputs(5)

    grid = images.labelled_grid(inputs, TILE_HEIGHT, COLUMNS)

    grid_height, grid_width = grid.shape[:2]
    column_width, row_height = grid_width / COLUMNS, grid_height / 2
    for index, colour in enumerate(GRID_COLOURS):
        row, column = divmod(index, COLUMNS)
        left = round(column * column_width)
        top = round(row * row_height)
        # The tile sits at its cell's top-left, after the margin, in its own colour.
        tile = grid[top : top + TILE_HEIGHT + 8, left : left + scaled_width(GRID_SHAPES[index]) + 8]
        is_colour = np.all(tile == colour, axis=-1)
        assert is_colour.sum() >= 0.8 * TILE_HEIGHT * scaled_width(GRID_SHAPES[index]), index
    # Cells without a tile are blank.
    assert np.all(grid[round(row_height) :, round(column_width) :] != GRID_COLOURS[4], axis=-1).all()
    assert (grid == 255).all(axis=-1).mean() > 0.3


def test_labelled_grid_of_one_image_scales_it_to_the_tile_height():
    grid = images.labelled_grid([("only", np.full((50, 100, 3), 77.0))], tile_height=40)

    is_tile = np.all(grid == 77, axis=-1)
    rows, columns = np.nonzero(is_tile)
    assert rows.max() - rows.min() + 1 == 40
    assert columns.max() - columns.min() + 1 == 80
    label_strip = grid[rows.max() + 1 :, columns.min() : columns.max() + 1]
    assert (label_strip.max(axis=-1) < 128).any()  # the label is drawn (dark text) under the tile


def test_a_url_that_serves_a_web_page_instead_of_an_image_is_rejected(tmp_path):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        name = f"page-{uuid.uuid4().hex[:8]}.jpg"
        (tmp_path / name).write_text("<html><body>Not found</body></html>")
        downloaded = images.resolve_source(f"http://127.0.0.1:{server.server_address[1]}/{name}")
        with pytest.raises(images.ImageError, match=f"{name} is not a readable image"):
            images.read_image(downloaded)
    finally:
        server.shutdown()
