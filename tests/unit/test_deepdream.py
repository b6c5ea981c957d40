"""DeepDream: the loss against NumPy, gradient ascent on a real photo with the offline pretrained
backbone, tiling, tracing, octaves and lost-detail re-injection, layer settings, params
validation and the DVC step end to end."""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tasks import images, storage
from tasks.backbones import MIN_INPUT_SIZE, BackboneError, load_backbone
from tasks.deepdream.data import fetch_image
from tasks.deepdream.model import (
    check_octaves,
    dream,
    dream_loss,
    gradient_ascent,
    make_loss_and_grads,
    octave_shapes,
    tile_edges,
    tiled_loss_and_grads,
)
from tasks.deepdream.params import DeepDreamParams, DeepDreamPaths
from tasks.deepdream.steps import all_settings, draw_random_settings, dream_with, setting_name
from tasks.params import BACKBONES, ParamsError, RuntimeParams, load_params, parse_section

REPO_ROOT = Path(__file__).resolve().parents[2]
BOOK_WEIGHTS = {0.5, 1.0, 1.5, 2.0, 2.5}
PHOTO_SIZE = 128  # longer side of the test photo: 128 x 86 pixels
SETTING = {"block3_conv3": 1.0, "block4_conv3": 1.5}


@pytest.fixture(scope="module")
def hed_backbone():
    """The offline pretrained VGG16, loaded once for the module."""
    return load_backbone("hed_vgg16")


@pytest.fixture(scope="module")
def photo() -> tf.Tensor:
    """The bundled china photo, (86, 128, 3) in [-1, 1]."""
    pixels = images.read_image(images.resolve_source("bundled:china"), max_size=PHOTO_SIZE)
    return tf.constant(pixels / 127.5 - 1.0, tf.float32)


@pytest.fixture(scope="module")
def repo_params() -> dict:
    return load_params(REPO_ROOT)


def as_numpy(tensor) -> np.ndarray:
    return np.asarray(tensor)


def dream_loss_reference(features: dict[str, np.ndarray], setting: dict[str, float]) -> float:
    """sum of weight * mean(activation^2) over the layers, a 2-pixel border left out when the
    map is larger than 4 pixels both ways (float64 NumPy)."""
    total = 0.0
    for name, weight in setting.items():
        activation = np.asarray(features[name], dtype=np.float64)
        if activation.shape[1] > 4 and activation.shape[2] > 4:
            activation = activation[:, 2:-2, 2:-2, :]
        total += weight * np.mean(activation**2)
    return total


def mean_square_identity_step(tile: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A stand-in for loss_and_grads: loss mean(tile^2), 'gradient' the tile itself."""
    return tf.reduce_mean(tf.square(tile)), tile


def zero_gradient_step(tile: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Loss = the tile's height (tells octaves apart), gradient 0: nothing is dreamt."""
    return tf.cast(tf.shape(tile)[1], tf.float32), tf.zeros_like(tile)


def constant_gradient_step(tile: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.zeros(()), tf.ones_like(tile)


def random_image(height: int, width: int, seed: int = 0) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).uniform(-1, 1, size=(height, width, 3)), tf.float32)


# --- dream_loss -----------------------------------------------------------------------------


def test_dream_loss_matches_numpy():
    rng = np.random.default_rng(0)
    shapes = {
        "wide": (2, 9, 12, 5),  # cropped to 5 x 8
        "five": (1, 5, 5, 3),  # cropped to its centre pixel
        "four": (1, 4, 4, 2),  # 4 pixels: kept whole
        "narrow": (1, 3, 10, 2),  # cropping 3 rows would leave nothing: kept whole
        "dot": (1, 1, 1, 4),
    }
    features = {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
    setting = {"wide": 1.0, "five": 0.5, "four": 2.0, "narrow": 1.5, "dot": 2.5}

    loss = float(dream_loss({name: tf.constant(value) for name, value in features.items()}, setting))

    assert loss == pytest.approx(dream_loss_reference(features, setting), rel=1e-5)


def test_dream_loss_of_each_layer_alone_and_its_weight():
    rng = np.random.default_rng(1)
    features = {"a": rng.normal(size=(1, 8, 8, 4)), "b": rng.normal(size=(1, 6, 7, 3))}
    tensors = {name: tf.constant(value, tf.float32) for name, value in features.items()}

    loss_a = float(dream_loss(tensors, {"a": 1.0}))
    loss_b = float(dream_loss(tensors, {"b": 1.0}))

    assert loss_a == pytest.approx(np.mean(features["a"][:, 2:-2, 2:-2] ** 2), rel=1e-5)
    assert float(dream_loss(tensors, {"a": 2.0, "b": 0.5})) == pytest.approx(
        2 * loss_a + 0.5 * loss_b, rel=1e-5
    )


def test_dream_loss_ignores_the_border():
    activation = np.random.default_rng(2).normal(size=(1, 10, 10, 3)).astype(np.float32)
    loud_border = activation.copy()
    loud_border[:, :2] = loud_border[:, -2:] = 1e3
    loud_border[:, :, :2] = loud_border[:, :, -2:] = 1e3

    plain = float(dream_loss({"x": tf.constant(activation)}, {"x": 1.0}))
    loud = float(dream_loss({"x": tf.constant(loud_border)}, {"x": 1.0}))

    assert loud == pytest.approx(plain, rel=1e-6)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_dream_loss_of_tiny_maps_is_finite_and_uncropped(size):
    activation = np.random.default_rng(size).normal(size=(1, size, size, 2)).astype(np.float32)

    loss = float(dream_loss({"x": tf.constant(activation)}, {"x": 1.0}))

    assert math.isfinite(loss)
    assert loss == pytest.approx(np.mean(activation.astype(np.float64) ** 2), rel=1e-5)


def test_dream_loss_of_half_precision_features_is_float32():
    activation = np.random.default_rng(3).normal(size=(1, 8, 8, 2)).astype(np.float16)

    loss = dream_loss({"x": tf.constant(activation)}, {"x": 1.0})

    assert loss.dtype == tf.float32
    assert float(loss) == pytest.approx(dream_loss_reference({"x": activation}, {"x": 1.0}), rel=1e-3)


# --- Gradient ascent ------------------------------------------------------------------------


def test_gradient_ascent_takes_l2_normalised_steps():
    image = random_image(6, 10)
    step, iterations = 0.5, 3

    dreamed, losses = gradient_ascent(
        image, constant_gradient_step, iterations, step, 0.0, 0, np.random.default_rng(0)
    )

    # The normalised all-ones gradient is 1 / sqrt(number of values) everywhere.
    expected = as_numpy(image) + iterations * step / math.sqrt(6 * 10 * 3)
    np.testing.assert_allclose(as_numpy(dreamed), expected, atol=1e-6)
    assert len(losses) == iterations


def test_gradient_ascent_stops_once_the_loss_passes_max_loss():
    calls = []

    def rising_loss(tile):
        calls.append(1)
        return tf.constant(float(len(calls))), tf.ones_like(tile)

    _, losses = gradient_ascent(random_image(4, 4), rising_loss, 10, 1.0, 2.5, 0, np.random.default_rng(0))

    assert losses == [1.0, 2.0, 3.0]  # 3.0 is the first loss above 2.5


def test_loss_rises_on_a_photo_with_the_pretrained_backbone(hed_backbone, photo):
    loss_and_grads = make_loss_and_grads(hed_backbone.feature_extractor(list(SETTING)), SETTING)

    dreamed, losses = gradient_ascent(photo, loss_and_grads, 8, 2.0, 0.0, 0, np.random.default_rng(0))

    assert len(losses) == 8 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] > losses[0]
    assert np.mean(np.diff(losses) > 0) >= 0.75  # mostly monotone
    assert dreamed.shape == photo.shape
    assert np.abs(as_numpy(dreamed) - as_numpy(photo)).max() > 0.05


def test_loss_rises_with_tiles_smaller_than_the_photo(hed_backbone, photo):
    loss_and_grads = make_loss_and_grads(hed_backbone.feature_extractor(list(SETTING)), SETTING)
    tile_size = 64
    assert max(photo.shape[:2]) > tile_size

    dreamed, losses = gradient_ascent(photo, loss_and_grads, 8, 2.0, 0.0, tile_size, np.random.default_rng(0))

    assert len(losses) == 8 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] > losses[0]
    # Random shifts move tile borders, so single steps may dip: compare halves.
    assert np.mean(losses[4:]) > np.mean(losses[:4])
    assert np.abs(as_numpy(dreamed) - as_numpy(photo)).max() > 0.05


# --- Tiling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tile_size", [16, 32, 40, 64, 100])
def test_tile_edges_cover_the_size_with_tiles_of_bounded_size(tile_size):
    for size in range(1, 301):
        edges = tile_edges(size, tile_size)
        widths = np.diff(edges)

        assert edges[0] == 0 and edges[-1] == size, (size, edges)
        assert (widths > 0).all(), (size, edges)
        assert widths.max() <= tile_size, (size, edges)
        if size >= tile_size:
            assert widths.min() >= tile_size / 2, (size, edges)
        else:
            assert list(edges) == [0, size]
        assert len(widths) == math.ceil(size / tile_size)  # no more tiles than needed


def test_tile_size_zero_is_one_tile():
    assert list(tile_edges(77, 0)) == [0, 77]


@pytest.mark.parametrize("tile_size", [0, PHOTO_SIZE])
def test_a_single_unshifted_tile_is_the_untiled_step(hed_backbone, photo, tile_size):
    loss_and_grads = make_loss_and_grads(hed_backbone.feature_extractor(list(SETTING)), SETTING)

    loss, gradient = tiled_loss_and_grads(loss_and_grads, photo, tile_size, (0, 0))

    untiled_loss, untiled_gradient = loss_and_grads(photo[None])
    assert loss == pytest.approx(float(untiled_loss), rel=1e-5)
    assert gradient.shape == photo.shape
    np.testing.assert_allclose(as_numpy(gradient), as_numpy(untiled_gradient[0]), rtol=1e-4, atol=1e-7)


def test_tiled_loss_is_the_area_weighted_mean_of_the_tile_losses(hed_backbone, photo):
    loss_and_grads = make_loss_and_grads(hed_backbone.feature_extractor(list(SETTING)), SETTING)
    height, width = photo.shape[:2]
    tile_size, shift = 64, (17, 40)
    assert height % 2 == 0 and width % 2 == 0 and tile_size < height < 2 * tile_size <= width
    # 2 x 2 tiles of height / 2 x width / 2 pixels over the image rolled by `shift`.
    row_edges, column_edges = (0, height // 2, height), (0, width // 2, width)
    rolled = np.roll(as_numpy(photo), shift, axis=(0, 1))
    expected_loss, expected_gradient = 0.0, np.zeros_like(rolled)
    for top, bottom in itertools.pairwise(row_edges):
        for left, right in itertools.pairwise(column_edges):
            tile_loss, tile_gradient = loss_and_grads(tf.constant(rolled[None, top:bottom, left:right]))
            expected_loss += float(tile_loss) * (bottom - top) * (right - left) / (height * width)
            expected_gradient[top:bottom, left:right] = as_numpy(tile_gradient[0])
    expected_gradient = np.roll(expected_gradient, (-shift[0], -shift[1]), axis=(0, 1))

    loss, gradient = tiled_loss_and_grads(loss_and_grads, photo, tile_size, shift)

    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert gradient.shape == photo.shape
    np.testing.assert_allclose(as_numpy(gradient), expected_gradient, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "shape, tile_size, shift", [((37, 53), 16, (5, 11)), ((20, 20), 7, (19, 0)), ((9, 30), 10, (0, 0))]
)
def test_tiled_gradient_lands_back_on_its_pixels(shape, tile_size, shift):
    """With loss mean(x^2) and gradient x per tile, the tiled loss is mean(x^2) of the whole image
    (an area-weighted mean of tile means) and the gradient is the image itself, for any tiling and
    shift: a misplaced tile or a wrong roll back would show."""
    image = random_image(*shape, seed=4)

    loss, gradient = tiled_loss_and_grads(mean_square_identity_step, image, tile_size, shift)

    assert loss == pytest.approx(float(np.mean(as_numpy(image).astype(np.float64) ** 2)), rel=1e-5)
    np.testing.assert_array_equal(as_numpy(gradient), as_numpy(image))


# --- Tracing --------------------------------------------------------------------------------


def distinct_tile_shapes(height: int, width: int, tile_size: int) -> set[tuple[int, int]]:
    rows, columns = np.diff(tile_edges(height, tile_size)), np.diff(tile_edges(width, tile_size))
    return {(int(rows_), int(columns_)) for rows_ in rows for columns_ in columns}


@pytest.mark.parametrize("tile_size", [0, 64])
def test_one_trace_for_every_step_on_one_image_shape(hed_backbone, photo, tile_size):
    setting = {"block2_conv2": 1.0}
    loss_and_grads = make_loss_and_grads(hed_backbone.feature_extractor(list(setting)), setting)
    height, width = photo.shape[:2]
    assert len(distinct_tile_shapes(height, width, tile_size)) == 1

    gradient_ascent(photo, loss_and_grads, 5, 1.0, 0.0, tile_size, np.random.default_rng(0))

    assert loss_and_grads.experimental_get_tracing_count() == 1


def test_tracing_count_is_bounded_by_the_tile_shapes_not_the_steps(hed_backbone):
    setting = {"block2_conv2": 1.0}
    loss_and_grads = make_loss_and_grads(hed_backbone.feature_extractor(list(setting)), setting)
    image, tile_size = random_image(86, 100), 40
    num_shapes = len(distinct_tile_shapes(86, 100, tile_size))
    assert num_shapes > 1

    gradient_ascent(image, loss_and_grads, 4, 1.0, 0.0, tile_size, np.random.default_rng(0))
    traces = loss_and_grads.experimental_get_tracing_count()
    gradient_ascent(image, loss_and_grads, 4, 1.0, 0.0, tile_size, np.random.default_rng(1))

    assert 1 <= traces <= num_shapes
    assert loss_and_grads.experimental_get_tracing_count() == traces  # more steps, no more traces


def test_xla_step_is_traced_exactly_once_per_tile_shape(hed_backbone):
    setting = {"block1_conv2": 1.0}
    loss_and_grads = make_loss_and_grads(
        hed_backbone.feature_extractor(list(setting)), setting, jit_compile=True
    )
    image, tile_size = random_image(86, 100), 40

    gradient_ascent(image, loss_and_grads, 6, 1.0, 0.0, tile_size, np.random.default_rng(0))

    assert loss_and_grads.experimental_get_tracing_count() == len(distinct_tile_shapes(86, 100, tile_size))


# --- Octaves --------------------------------------------------------------------------------


def test_octave_shapes_follow_the_book():
    shape, num_octave, octave_scale = (300, 400), 3, 1.4
    book = [tuple(int(dim / octave_scale**octave) for dim in shape) for octave in range(num_octave)][::-1]

    shapes = octave_shapes(shape, num_octave, octave_scale)

    assert shapes == book
    assert shapes[-1] == shape
    assert all(small[0] < large[0] and small[1] < large[1] for small, large in itertools.pairwise(shapes))


def test_one_octave_is_the_image_itself():
    assert octave_shapes((123, 45), 1, 1.4) == [(123, 45)]


@pytest.mark.parametrize("backbone", ["hed_vgg16", "inception_v3"])
def test_check_octaves_names_the_size_and_the_minimum(backbone):
    minimum = MIN_INPUT_SIZE[backbone]
    shape = (minimum * 3 // 2, minimum * 2)  # 3 octaves at 1.4: the smallest is 1 / 1.96 of this
    shapes = octave_shapes(shape, 3, 1.4)
    smallest = shapes[0]
    assert min(smallest) < minimum

    with pytest.raises(images.ImageError) as error:
        check_octaves(shapes, backbone)

    message = str(error.value)
    assert f"{smallest[1]}x{smallest[0]}" in message
    assert str(minimum) in message and backbone in message


@pytest.mark.parametrize("backbone", ["hed_vgg16", "inception_v3"])
def test_check_octaves_accepts_the_minimum(backbone):
    minimum = MIN_INPUT_SIZE[backbone]

    check_octaves([(minimum, minimum + 5), (minimum * 2, minimum * 2 + 10)], backbone)


def test_dream_without_gradients_returns_the_original_thanks_to_reinjected_detail(photo):
    num_octave, octave_scale = 3, 1.4
    shapes = octave_shapes(tuple(photo.shape[:2]), num_octave, octave_scale)
    # What the octave loop gives without re-injection: the image shrunk, then grown back.
    without_reinjection = photo
    for shape in shapes:
        without_reinjection = tf.image.resize(without_reinjection, shape, method="bilinear")

    dreamed, _ = dream(photo, zero_gradient_step, num_octave, octave_scale, 2, 1.0, 0.0, 0)

    assert dreamed.shape == photo.shape
    error = np.abs(as_numpy(dreamed) - as_numpy(photo)).max()
    error_without_reinjection = np.abs(as_numpy(without_reinjection) - as_numpy(photo)).max()
    assert error < 1e-4  # resize round-off only
    assert error_without_reinjection > 100 * error
    assert error_without_reinjection > 0.05  # downscaling really loses detail on this photo


def test_dream_records_every_step_of_every_octave_in_order():
    image = random_image(60, 90)
    num_octave, octave_scale, iterations = 3, 1.3, 2
    shapes = octave_shapes((60, 90), num_octave, octave_scale)

    dreamed, records = dream(image, zero_gradient_step, num_octave, octave_scale, iterations, 1.0, 0.0, 0)

    assert dreamed.shape == image.shape
    assert [record["octave"] for record in records] == [
        octave for octave in range(num_octave) for _ in range(iterations)
    ]
    assert [record["step"] for record in records] == list(range(iterations)) * num_octave
    # The stub's loss is the height it was given: octaves run small to large.
    assert [record["loss"] for record in records] == [
        float(shape[0]) for shape in shapes for _ in range(iterations)
    ]


def test_dream_keeps_what_every_octave_added():
    """An all-ones gradient adds step / sqrt(values) per step at each octave; upscaling keeps a
    constant and re-injection adds only the original's detail, so the dream is the original
    plus the sum of those offsets."""
    image = random_image(40, 50)
    num_octave, octave_scale, iterations, step = 3, 1.25, 2, 0.3
    shapes = octave_shapes((40, 50), num_octave, octave_scale)
    offset = sum(iterations * step / math.sqrt(height * width * 3) for height, width in shapes)

    dreamed, _ = dream(image, constant_gradient_step, num_octave, octave_scale, iterations, step, 0.0, 0)

    np.testing.assert_allclose(as_numpy(dreamed), as_numpy(image) + offset, atol=1e-5)


# --- Layer settings -------------------------------------------------------------------------

POOL = ["mixed2", "mixed3", "mixed4", "mixed5", "mixed6", "mixed7", "mixed8"]


def test_random_settings_draw_from_the_pool_without_repeats():
    settings = draw_random_settings(POOL, count=6, layers_per_setting=3, seed=0)

    assert len(settings) == 6
    for setting in settings:
        assert len(setting) == 3  # a dict: no layer twice
        assert set(setting) <= set(POOL)
        assert set(setting.values()) <= BOOK_WEIGHTS
        assert all(isinstance(layer, str) for layer in setting)
        assert all(isinstance(weight, float) for weight in setting.values())


def test_random_settings_depend_on_the_seed_only():
    first = draw_random_settings(POOL, 5, 2, seed=7)

    assert draw_random_settings(POOL, 5, 2, seed=7) == first
    assert draw_random_settings(POOL, 5, 2, seed=8) != first
    assert draw_random_settings(POOL, 0, 2, seed=7) == []


def test_random_settings_explore_the_pool_and_the_weights():
    settings = draw_random_settings(POOL, count=200, layers_per_setting=2, seed=1)

    assert {layer for setting in settings for layer in setting} == set(POOL)
    assert {weight for setting in settings for weight in setting.values()} == BOOK_WEIGHTS


# --- Params ---------------------------------------------------------------------------------


@pytest.fixture
def deepdream_section(repo_params) -> dict:
    """A copy of the repo's deepdream section to break."""
    return copy.deepcopy(repo_params["deepdream"])


def parse_error(section: dict) -> str:
    with pytest.raises(ParamsError) as error:
        parse_section({"deepdream": section}, "deepdream", DeepDreamParams)
    return str(error.value)


def test_repo_deepdream_params_parse(deepdream_section):
    params = parse_section({"deepdream": deepdream_section}, "deepdream", DeepDreamParams)

    assert params.backbone in BACKBONES
    assert params.num_octave >= 1 and params.octave_scale >= 1.0


def test_unknown_backbone_is_named(deepdream_section):
    deepdream_section["backbone"] = "resnet50"

    message = parse_error(deepdream_section)

    assert "deepdream.backbone" in message and "resnet50" in message


def test_no_setting_at_all_is_rejected(deepdream_section):
    deepdream_section["layer_settings"] = []
    deepdream_section["random_settings"]["count"] = 0

    message = parse_error(deepdream_section)

    assert "layer setting" in message and "random_settings.count" in message


def test_a_setting_without_layers_is_rejected(deepdream_section):
    deepdream_section["layer_settings"] = [{"mixed4": 1.0}, {}]

    assert "layer setting needs layers" in parse_error(deepdream_section)


def test_random_pool_smaller_than_layers_per_setting_is_rejected(deepdream_section):
    deepdream_section["random_settings"].update(count=2, pool=["mixed4"], layers_per_setting=2)

    assert "random_settings.pool" in parse_error(deepdream_section)


@pytest.mark.parametrize("key, value", [("octave_scale", 0.5), ("step", 0.0), ("step", -1.0)])
def test_out_of_range_values_are_named(deepdream_section, key, value):
    deepdream_section[key] = value

    message = parse_error(deepdream_section)

    assert f"deepdream.{key}" in message and repr(value) in message


# --- The DVC step end to end ----------------------------------------------------------------


def step_params(repo_params: dict, **overrides) -> DeepDreamParams:
    section = copy.deepcopy(repo_params["deepdream"])
    section.update(
        image="bundled:china",
        max_size=PHOTO_SIZE,
        backbone="hed_vgg16",
        step=2.0,
        num_octave=2,
        octave_scale=1.4,
        iterations=3,
        max_loss=0.0,
        tile_size=64,
        layer_settings=[{"block3_conv3": 1.0}, {"block4_conv1": 1.0, "block4_conv3": 1.5}],
        random_settings={
            "count": 1,
            "pool": ["block3_conv3", "block4_conv1", "block4_conv3", "block5_conv1"],
            "layers_per_setting": 2,
            "seed": 0,
        },
    )
    section.update(overrides)
    return parse_section({"deepdream": section}, "deepdream", DeepDreamParams)


def dream_params(
    paths: DeepDreamPaths, params: DeepDreamParams, runtime: RuntimeParams, weights: str = "pretrained"
) -> list[dict]:
    """The dream step's work on a params section."""
    return dream_with(paths, params, runtime, weights)


@pytest.fixture
def runtime(repo_params) -> RuntimeParams:
    return parse_section(repo_params, "runtime", RuntimeParams)


@pytest.fixture
def step_paths(tmp_path) -> DeepDreamPaths:
    paths = storage.under(tmp_path, DeepDreamPaths())
    fetch_image(paths, "bundled:china", "", max_size=PHOTO_SIZE)
    return paths


def test_dream_settings_writes_dreams_grid_results_and_metrics(step_paths, repo_params, runtime):
    params = step_params(repo_params)
    settings = all_settings(params)
    names = [setting_name(setting) for setting in settings]
    assert len(settings) == 3 and len(set(names)) == 3
    with Image.open(step_paths.image) as source:
        assert source.format == "PNG" and max(source.size) == PHOTO_SIZE
        input_size = source.size
    input_pixels = images.read_image(step_paths.image)

    results = dream_params(step_paths, params, runtime)

    # One dream per setting, a valid PNG of the input's size that differs from the input.
    dreams = []
    for index in range(len(settings)):
        path = step_paths.dreams / f"setting_{index:02d}.png"
        with Image.open(path) as dreamt:
            dreamt.verify()
        with Image.open(path) as dreamt:
            assert dreamt.format == "PNG" and dreamt.size == input_size
        dreams.append(images.read_image(path))
        assert np.abs(dreams[-1] - input_pixels).mean() > 1.0

    # The grid: the original and one tile per setting, in one row of 4 columns.
    with Image.open(step_paths.dreams / "grid.png") as grid_file:
        grid_width, grid_height = grid_file.size
    tile_width = 256 * input_size[0] / input_size[1]  # each tile scaled to 256 pixels high
    assert 4 * tile_width < grid_width < 5 * tile_width
    assert 256 < grid_height < 2 * 256
    expected_grid = images.labelled_grid([("original", input_pixels)] + list(zip(names, dreams)))
    assert (grid_height, grid_width) == expected_grid.shape[:2]

    # results.json: every setting with its losses, octave by octave.
    summary = json.loads((step_paths.dreams / "results.json").read_text())
    assert summary["backbone"] == "hed_vgg16"
    assert [entry["name"] for entry in summary["settings"]] == names
    assert [entry["setting"] for entry in summary["settings"]] == settings
    for entry in summary["settings"]:
        assert [record["octave"] for record in entry["losses"]] == [0, 0, 0, 1, 1, 1]
        assert all(math.isfinite(record["loss"]) and record["loss"] > 0 for record in entry["losses"])
    assert results == summary["settings"]

    # metrics.json: the final loss of each setting, keyed by its image (names may repeat).
    metrics = json.loads(step_paths.metrics.read_text())
    assert list(metrics) == [Path(entry["image"]).stem for entry in summary["settings"]]
    for entry in summary["settings"]:
        assert metrics[Path(entry["image"]).stem]["final_loss"] == entry["losses"][-1]["loss"]
        assert metrics[Path(entry["image"]).stem]["steps"] == 6


def test_an_unknown_layer_in_any_setting_fails_before_any_dream_is_written(step_paths, repo_params, runtime):
    params = step_params(
        repo_params, layer_settings=[{"block3_conv3": 1.0}, {"block4_conv3": 1.0, "mixed4": 1.0}]
    )

    with pytest.raises(BackboneError, match="'mixed4'") as error:
        dream_params(step_paths, params, runtime)

    assert "block4_conv3" in str(error.value)  # the valid layers are listed
    assert not step_paths.dreams.exists()
    assert not step_paths.metrics.exists()


def test_too_small_input_fails_before_any_dream_is_written(tmp_path, repo_params, runtime):
    paths = storage.under(tmp_path, DeepDreamPaths())
    fetch_image(paths, "bundled:china", "", max_size=48)  # 48 x 32: 3 octaves go below 32 pixels

    with pytest.raises(images.ImageError, match="32 pixels"):
        dream_params(paths, step_params(repo_params, num_octave=3), runtime)

    assert not paths.dreams.exists()


def test_tiles_below_the_backbone_minimum_fail_clearly_or_dream_finitely(step_paths, repo_params, runtime):
    """tile_size 40 cuts the 128 x 86 photo into tiles of 28 to 32 pixels, below the 32 that
    hed_vgg16's block5_pool needs. Either refuse up front, as check_octaves does for a too small
    image, or dream with finite losses; not a Keras shape error after the first dream is written."""
    params = step_params(
        repo_params,
        tile_size=40,
        num_octave=1,
        iterations=1,
        layer_settings=[{"block3_conv3": 1.0}, {"block5_pool": 1.0}],
        random_settings={"count": 0, "pool": [], "layers_per_setting": 1, "seed": 0},
    )
    assert min(np.diff(tile_edges(PHOTO_SIZE * 86 // 128, 40))) < MIN_INPUT_SIZE["hed_vgg16"]

    try:
        results = dream_params(step_paths, params, runtime, weights="random")
    except (images.ImageError, ParamsError) as error:
        assert "tile" in str(error)
        assert not step_paths.dreams.exists()
    else:
        assert all(math.isfinite(record["loss"]) for result in results for record in result["losses"])
