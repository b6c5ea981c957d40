"""Neural style transfer: the losses against closed forms and NumPy, blended style targets and
their gradient, the compiled step, each optimiser on a real photo with the offline pretrained
backbone, colour preservation, coarse-to-fine scales, the comparison grid, params validation
and the DVC steps end to end."""

from __future__ import annotations

import copy
import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from tasks import images, storage
from tasks.backbones import MIN_INPUT_SIZE, BackboneError, load_backbone
from tasks.grid import label, varying_fields
from tasks.params import ParamsError, RuntimeParams, load_params, parse_section
from tasks.steps import run_steps
from tasks.style_transfer.data import fetch_images, resize_to_height
from tasks.style_transfer.data import images as images_step
from tasks.style_transfer.model import (
    check_sizes,
    content_loss,
    gram_matrix,
    luminance,
    luminance_image,
    make_loss_and_grads,
    scale_heights,
    style_loss,
    style_target,
    stylize,
    total_variation_loss,
    with_colors_of,
)
from tasks.style_transfer.optimizers import LossHistory, descend, keras_optimizer, lbfgs
from tasks.style_transfer.params import (
    MAX_HEIGHT,
    MAX_PIXELS,
    AdamParams,
    GridPoint,
    LbfgsParams,
    SgdParams,
    StyleTransferParams,
    StyleTransferPaths,
)
from tasks.style_transfer.steps import SINGLE_POINT_LABEL, grid_points, stylize_with

REPO_ROOT = Path(__file__).resolve().parents[2]
HEIGHT = 48  # test images are 48 pixels high: china is 48 x 72, the starry night 48 x 103
CONTENT_LAYER = "block5_conv2"
STYLE_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")
# Weights under which every term weighs in on the 48-pixel photo.
WEIGHTS = {"content_weight": 1e-3, "style_weight": 1e-4, "total_variation_weight": 1e-6}
SGD = SgdParams(learning_rate=100.0, decay_steps=100, decay_rate=0.96)
ADAM = AdamParams(learning_rate=10.0)
LBFGS = LbfgsParams(history=10)
RUNTIME = RuntimeParams(
    seed=0, dtype_policy="float32", jit_compile=False, memory_growth=True, distribute="default"
)


@pytest.fixture(scope="module")
def hed_backbone():
    """The offline pretrained VGG16, loaded once for the module."""
    return load_backbone("hed_vgg16")


@pytest.fixture(scope="module")
def starry_night_path(keras_home) -> Path:
    path = keras_home / "datasets" / "starry_night.jpg"
    if not path.is_file():
        pytest.skip("no Keras cache with datasets/starry_night.jpg (set KERAS_HOME)")
    return path


@pytest.fixture(scope="module")
def content() -> np.ndarray:
    """The bundled china photo, (48, 72, 3) float32 in [0, 255]."""
    pixels = images.read_image(images.resolve_source("bundled:china"))
    return np.clip(resize_to_height(pixels, HEIGHT).numpy(), 0.0, 255.0)


@pytest.fixture(scope="module")
def style(starry_night_path) -> np.ndarray:
    """The starry night, (48, 103, 3) float32 in [0, 255]."""
    return np.clip(resize_to_height(images.read_image(starry_night_path), HEIGHT).numpy(), 0.0, 255.0)


@pytest.fixture(scope="module")
def repo_params() -> dict:
    return load_params(REPO_ROOT)


def point(optimizer: str = "adam", layers=STYLE_LAYERS, **weights) -> GridPoint:
    weights = {**WEIGHTS, **weights}
    return GridPoint(
        weights["content_weight"],
        weights["style_weight"],
        weights["total_variation_weight"],
        tuple(layers),
        optimizer,
    )


def run_stylize(content, style, backbone, grid_point, iterations, heights=(HEIGHT,), **options):
    options = {"preserve_color": False, "snapshot_every": 0, **options}
    return stylize(
        content,
        [style],
        [1.0],
        backbone,
        CONTENT_LAYER,
        grid_point,
        iterations,
        list(heights),
        options["preserve_color"],
        options["snapshot_every"],
        SGD,
        ADAM,
        LBFGS,
    )


def step_for(backbone, content, style, grid_point):
    extractor = backbone.feature_extractor([CONTENT_LAYER, *grid_point.style_layers])
    return make_loss_and_grads(
        extractor, tf.constant(content), [tf.constant(style)], [1.0], grid_point, CONTENT_LAYER
    )


def yiq(pixels) -> np.ndarray:
    return tf.image.rgb_to_yiq(tf.constant(pixels, tf.float32)).numpy()


def random_features(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def numpy_gram(features: np.ndarray) -> np.ndarray:
    flat = np.asarray(features, np.float64).reshape(-1, features.shape[-1])
    return flat.T @ flat


def numpy_total_variation(pixels: np.ndarray) -> float:
    x = np.asarray(pixels, np.float64)
    down = (x[:-1, :-1] - x[1:, :-1]) ** 2
    right = (x[:-1, :-1] - x[:-1, 1:]) ** 2
    return float(np.sum((down + right) ** 1.25))


# --- Losses ---------------------------------------------------------------------------------


def test_gram_matrix_matches_numpy():
    features = random_features((5, 7, 4), seed=0)

    gram = gram_matrix(tf.constant(features)).numpy()

    assert gram.shape == (4, 4)
    np.testing.assert_allclose(gram, numpy_gram(features), rtol=1e-5, atol=1e-5)


def test_content_loss_is_zero_for_identical_features_and_the_squared_distance_otherwise():
    content_features, other = random_features((6, 5, 3), 1), random_features((6, 5, 3), 2)

    same = float(content_loss(tf.constant(content_features), tf.constant(content_features)))
    different = float(content_loss(tf.constant(content_features), tf.constant(other)))

    assert same == 0.0
    assert different > 0
    assert different == pytest.approx(np.sum((other.astype(np.float64) - content_features) ** 2), rel=1e-5)


def test_style_loss_is_zero_at_the_target_gram_and_matches_the_closed_form():
    generated = random_features((4, 6, 3), 3)
    style_gram = numpy_gram(random_features((4, 6, 3), 4)).astype(np.float32)
    image_size = 32 * 48

    at_target = float(style_loss(tf.constant(numpy_gram(generated), tf.float32), tf.constant(generated), 100))
    loss = float(style_loss(tf.constant(style_gram), tf.constant(generated), image_size))

    assert at_target == pytest.approx(0.0, abs=1e-9)
    expected = np.sum((style_gram - numpy_gram(generated)) ** 2) / (4 * 9 * image_size**2)
    assert loss > 0
    assert loss == pytest.approx(expected, rel=1e-5)


def test_total_variation_loss_matches_numpy_and_is_zero_for_a_constant_image():
    noisy = np.random.default_rng(5).uniform(0, 255, size=(9, 13, 3)).astype(np.float32)

    assert float(total_variation_loss(tf.fill((9, 13, 3), 87.0))) == 0.0
    assert float(total_variation_loss(tf.constant(noisy))) == pytest.approx(
        numpy_total_variation(noisy), rel=1e-5
    )


def test_total_variation_of_a_ramp_has_its_closed_form():
    height, width, slope = 7, 11, 3.0
    ramp = np.broadcast_to(slope * np.arange(width, dtype=np.float32)[None, :, None], (height, width, 3))

    loss = float(total_variation_loss(tf.constant(ramp)))

    # Every (height-1) x (width-1) x 3 term is (0 + slope^2)^1.25.
    assert loss == pytest.approx(3 * (height - 1) * (width - 1) * slope**2.5, rel=1e-5)
    assert float(total_variation_loss(tf.constant(ramp.transpose(1, 0, 2)))) == pytest.approx(
        3 * (width - 1) * (height - 1) * slope**2.5, rel=1e-5
    )


# --- Style targets --------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [1.0, 3.5])
def test_style_target_of_one_image_is_its_gram(weight):
    features = random_features((6, 8, 5), 6)

    target = style_target([tf.constant(features)], [weight], generated_positions=6 * 8)

    np.testing.assert_allclose(np.asarray(target), numpy_gram(features), rtol=1e-5, atol=1e-5)


def test_style_target_blends_by_normalised_weight():
    first, second = random_features((6, 8, 5), 7), random_features((6, 8, 5), 8)

    target = style_target([tf.constant(first), tf.constant(second)], [1.0, 3.0], generated_positions=48)

    expected = (numpy_gram(first) + 3.0 * numpy_gram(second)) / 4.0
    np.testing.assert_allclose(np.asarray(target), expected, rtol=1e-5, atol=1e-5)


def test_style_target_rescales_a_style_map_to_the_generated_positions():
    features = random_features((5, 6, 4), 9)
    tiled = np.concatenate([features, features], axis=1)  # (5, 12, 4): twice the positions

    from_tiled = style_target([tf.constant(tiled)], [1.0], generated_positions=5 * 6)
    from_original = style_target([tf.constant(features)], [1.0], generated_positions=5 * 6)
    doubled = style_target([tf.constant(features)], [1.0], generated_positions=2 * 5 * 6)

    np.testing.assert_allclose(np.asarray(from_tiled), np.asarray(from_original), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(doubled), 2 * numpy_gram(features), rtol=1e-5, atol=1e-5)


def test_blended_target_has_the_gradient_of_the_weighted_style_losses():
    generated = tf.Variable(random_features((4, 6, 3), 10))
    positions = 4 * 6
    styles = [tf.constant(random_features(shape, seed)) for shape, seed in [((4, 6, 3), 11), ((5, 7, 3), 12)]]
    blend, image_size = [1.0, 3.0], 64 * 96

    with tf.GradientTape() as tape:
        blended_loss = style_loss(style_target(styles, blend, positions), generated, image_size)
    blended_gradient = tape.gradient(blended_loss, generated).numpy()
    with tf.GradientTape() as tape:
        weighted_loss = sum(
            (weight / sum(blend))
            * style_loss(style_target([features], [1.0], positions), generated, image_size)
            for features, weight in zip(styles, blend)
        )
    weighted_gradient = tape.gradient(weighted_loss, generated).numpy()

    assert np.abs(weighted_gradient).max() > 0
    np.testing.assert_allclose(
        blended_gradient, weighted_gradient, rtol=1e-4, atol=1e-5 * np.abs(weighted_gradient).max()
    )


# --- The compiled step ----------------------------------------------------------------------


def test_the_step_on_the_content_image_has_no_content_loss(hed_backbone, content, style):
    loss_and_grads = step_for(hed_backbone, content, style, point())
    shifted = np.clip(content + np.random.default_rng(0).normal(0, 20, content.shape), 0, 255)

    losses, _ = loss_and_grads(tf.constant(content))
    shifted_losses, _ = loss_and_grads(tf.constant(shifted, tf.float32))

    assert float(losses["content_loss"]) <= 1e-6 * float(shifted_losses["content_loss"])
    assert float(shifted_losses["content_loss"]) > 0
    assert float(losses["style_loss"]) > 0 and float(losses["total_variation_loss"]) > 0


def test_the_step_loss_is_the_weighted_sum_of_unweighted_terms(hed_backbone, content, style):
    image = tf.constant(np.random.default_rng(1).uniform(0, 255, content.shape), tf.float32)
    weighted = point(content_weight=2e-3, style_weight=3e-4, total_variation_weight=5e-6)
    other = point(content_weight=1.0, style_weight=1.0, total_variation_weight=1.0)

    losses, gradients = step_for(hed_backbone, content, style, weighted)(image)
    other_losses, _ = step_for(hed_backbone, content, style, other)(image)

    terms = {name: float(value) for name, value in losses.items()}
    expected = (
        2e-3 * terms["content_loss"] + 3e-4 * terms["style_loss"] + 5e-6 * terms["total_variation_loss"]
    )
    assert terms["loss"] == pytest.approx(expected, rel=1e-5)
    for name in ("content_loss", "style_loss", "total_variation_loss"):
        assert terms[name] > 0
        assert float(other_losses[name]) == pytest.approx(terms[name], rel=1e-5)  # unweighted
    assert terms["total_variation_loss"] == pytest.approx(numpy_total_variation(image.numpy()), rel=1e-4)
    assert gradients.shape == image.shape
    assert np.isfinite(gradients.numpy()).all() and np.abs(gradients.numpy()).max() > 0


def test_the_style_term_is_the_mean_over_style_layers(hed_backbone, content, style):
    image = tf.constant(np.random.default_rng(2).uniform(0, 255, content.shape), tf.float32)
    layers = ("block1_conv1", "block3_conv1")

    both, _ = step_for(hed_backbone, content, style, point(layers=layers))(image)
    alone = [
        float(step_for(hed_backbone, content, style, point(layers=(layer,)))(image)[0]["style_loss"])
        for layer in layers
    ]

    assert float(both["style_loss"]) == pytest.approx(np.mean(alone), rel=1e-5)


def test_the_step_gradient_is_the_total_variation_gradient_when_only_it_is_weighted(
    hed_backbone, content, style
):
    image = tf.constant(np.random.default_rng(3).uniform(0, 255, content.shape), tf.float32)
    only_variation = point(content_weight=0.0, style_weight=0.0, total_variation_weight=1.0)

    losses, gradients = step_for(hed_backbone, content, style, only_variation)(image)
    with tf.GradientTape() as tape:
        tape.watch(image)
        variation = total_variation_loss(image)
    expected = tape.gradient(variation, image).numpy()

    assert float(losses["loss"]) == pytest.approx(float(variation), rel=1e-6)
    np.testing.assert_allclose(gradients.numpy(), expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


# --- Optimisers on a real photo -------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "lbfgs"])
def test_loss_falls_with_each_optimizer_on_a_photo(hed_backbone, content, style, optimizer):
    iterations = 8

    final, progress = run_stylize(content, style, hed_backbone, point(optimizer), iterations)

    losses = [record["loss"] for record in progress.records]
    assert len(losses) == iterations  # L-BFGS's line-search trials count against the budget
    assert [record["step"] for record in progress.records] == list(range(1, iterations + 1))
    assert all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert min(losses) < 0.9 * losses[0]
    assert losses[-1] < losses[0]
    # Starting from the content, the result trades content for style.
    first, last = progress.records[0], progress.records[-1]
    assert first["content_loss"] < 1e-3 < last["content_loss"]
    assert last["style_loss"] < 0.9 * first["style_loss"]
    assert final.shape == content.shape
    assert final.min() >= 0 and final.max() <= 255
    assert np.abs(final - content).mean() > 1.0


@pytest.mark.parametrize("iterations", [1, 2, 6])
def test_lbfgs_spends_exactly_its_budget_and_returns_the_best_image(hed_backbone, content, style, iterations):
    loss_and_grads = step_for(hed_backbone, content, style, point("lbfgs"))
    progress = LossHistory(0, np.asarray)
    progress.records.append({"step": 1, "scale": 0, "loss": 0.0})  # an earlier scale's record

    best = lbfgs(loss_and_grads, tf.constant(content), iterations, 5, progress)

    assert len(progress.records) == 1 + iterations
    losses = [record["loss"] for record in progress.records[1:]]
    best_losses, _ = loss_and_grads(tf.convert_to_tensor(best, tf.float32))
    assert float(best_losses["loss"]) == pytest.approx(min(losses), rel=1e-5)
    assert best.shape == content.shape


def half_square_step(pixels):
    """A stand-in for loss_and_grads: loss sum(x^2) / 2, gradient x."""
    pixels = tf.convert_to_tensor(pixels)
    return {"loss": tf.reduce_sum(tf.square(pixels)) / 2}, pixels


def test_lbfgs_restarts_when_scipy_stops_early_and_ends_once_restarts_stop_improving():
    # A quadratic that SciPy solves, and declares converged, in a few evaluations.
    initial = tf.constant(np.random.default_rng(3).uniform(-5, 5, (4, 5, 3)), tf.float32)
    progress = LossHistory(0, np.asarray)

    best = lbfgs(half_square_step, initial, 200, 5, progress)

    assert np.abs(np.asarray(best)).max() < 1e-3
    assert 3 <= len(progress.records) < 200  # no endless restarts once nothing improves
    assert float(half_square_step(best)[0]["loss"]) == pytest.approx(min(r["loss"] for r in progress.records))


def test_sgd_takes_the_books_exponentially_decaying_steps():
    initial = tf.constant(np.random.default_rng(7).uniform(-5, 5, (4, 5, 3)), tf.float32)
    sgd = SgdParams(learning_rate=0.1, decay_steps=1, decay_rate=0.5)
    progress = LossHistory(0, np.asarray)

    result = descend(half_square_step, initial, 3, keras_optimizer("sgd", sgd, ADAM), progress)

    # x <- x - rate * x, the rate 0.1 * 0.5^step.
    expected = initial.numpy() * (1 - 0.1) * (1 - 0.05) * (1 - 0.025)
    np.testing.assert_allclose(np.asarray(result), expected, rtol=1e-5)
    assert [record["step"] for record in progress.records] == [1, 2, 3]
    assert progress.records[1]["loss"] == pytest.approx(np.sum((0.9 * initial.numpy()) ** 2) / 2, rel=1e-5)


def test_adam_first_step_moves_every_pixel_by_the_learning_rate():
    initial = tf.constant(np.random.default_rng(8).uniform(1, 5, (4, 5, 3)), tf.float32) * [1.0, -1.0, 1.0]

    result = descend(
        half_square_step,
        initial,
        1,
        keras_optimizer("adam", SGD, AdamParams(learning_rate=0.5)),
        LossHistory(0, np.asarray),
    )

    np.testing.assert_allclose(
        np.asarray(result), initial.numpy() - 0.5 * np.sign(initial.numpy()), rtol=1e-5
    )


def test_the_step_is_traced_once_per_input_kind_not_per_evaluation(hed_backbone, content, style):
    loss_and_grads = step_for(hed_backbone, content, style, point("lbfgs"))

    lbfgs(loss_and_grads, tf.constant(content), 4, 5, LossHistory(0, np.asarray))
    traces_with_constants = loss_and_grads.experimental_get_tracing_count()
    for _ in range(2):
        descend(
            loss_and_grads,
            tf.constant(content),
            2,
            keras_optimizer("adam", SGD, ADAM),
            LossHistory(0, np.asarray),
        )

    assert traces_with_constants == 1
    assert loss_and_grads.experimental_get_tracing_count() <= 2  # plus one for a variable


# --- Colour preservation --------------------------------------------------------------------


def test_with_colors_of_takes_the_luma_of_one_and_the_chroma_of_the_other():
    rng = np.random.default_rng(4)
    generated, colours = rng.uniform(0, 255, (6, 7, 3)), rng.uniform(0, 255, (6, 7, 3))

    mixed = yiq(with_colors_of(tf.constant(generated, tf.float32), tf.constant(colours, tf.float32)))

    # TF's YIQ matrices are each other's inverse to about 1e-4.
    np.testing.assert_allclose(mixed[..., 0], yiq(generated)[..., 0], atol=0.05)
    np.testing.assert_allclose(mixed[..., 1:], yiq(colours)[..., 1:], atol=0.05)


def test_luminance_image_is_grey_with_its_input_luma(content):
    grey = luminance_image(tf.constant(content)).numpy()

    assert grey.shape == content.shape
    np.testing.assert_array_equal(grey[..., 0], grey[..., 1])
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    np.testing.assert_allclose(grey[..., 0], yiq(content)[..., 0], atol=1e-3)
    np.testing.assert_allclose(yiq(grey)[..., 1:], 0.0, atol=0.02)  # no chroma left (TF's Q row sums to 4e-5)


def test_luminance_image_like_the_content_has_its_luma_mean_and_spread(content, style):
    matched = luminance_image(tf.constant(style), like=tf.constant(content)).numpy()

    luma, content_luma, style_luma = yiq(matched)[..., 0], yiq(content)[..., 0], yiq(style)[..., 0]
    assert matched.shape == style.shape
    np.testing.assert_allclose(matched[..., 0], matched[..., 2])
    assert luma.mean() == pytest.approx(content_luma.mean(), abs=0.05)
    assert luma.std() == pytest.approx(content_luma.std(), rel=1e-3)
    assert abs(style_luma.mean() - content_luma.mean()) > 5  # there was something to match
    assert np.corrcoef(luma.ravel(), style_luma.ravel())[0, 1] > 0.9999  # the style's own tones


def test_preserve_color_keeps_the_content_chroma_which_otherwise_moves_toward_the_style(
    hed_backbone, content, style
):
    kept, _ = run_stylize(content, style, hed_backbone, point("adam"), 20, preserve_color=True)
    moved, _ = run_stylize(content, style, hed_backbone, point("adam"), 20, preserve_color=False)

    content_chroma, style_mean_i = yiq(content)[..., 1:], yiq(style)[..., 1].mean()
    kept_error = np.abs(yiq(kept)[..., 1:] - content_chroma)
    moved_error = np.abs(yiq(moved)[..., 1:] - content_chroma)
    # Where no channel was clipped to [0, 255], the chroma is the content's up to round-off.
    unclipped = ((kept > 0.5) & (kept < 254.5)).all(axis=-1)
    assert unclipped.mean() > 0.5
    assert kept_error[unclipped].max() < 0.05
    assert kept_error.mean() < 2.0
    assert np.abs(yiq(kept)[..., 0] - yiq(content)[..., 0]).mean() > 5.0  # the luma was stylised
    assert moved_error.mean() > 5 * kept_error.mean()
    # The starry night is bluer (lower I) than the photo: its colours pull the result over.
    content_mean_i = content_chroma[..., 0].mean()
    assert abs(yiq(moved)[..., 1].mean() - style_mean_i) < abs(content_mean_i - style_mean_i) - 5


def test_luminance_is_the_y_of_yiq(content):
    np.testing.assert_allclose(
        luminance(tf.constant(content)).numpy()[..., 0],
        0.299 * content[..., 0] + 0.587 * content[..., 1] + 0.114 * content[..., 2],
        atol=1e-2,
    )


# --- Coarse to fine -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "height, num_scales, scale_ratio, expected",
    [
        (400, 1, 2.0, [400]),
        (400, 3, 2.0, [100, 200, 400]),
        (48, 2, 1.5, [32, 48]),
        (100, 3, 1.3, [59, 77, 100]),
    ],
)
def test_scale_heights_run_coarse_to_fine(height, num_scales, scale_ratio, expected):
    assert scale_heights(height, num_scales, scale_ratio) == expected


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_stylize_solves_each_scale_in_turn_and_ends_at_the_finest(hed_backbone, content, style, optimizer):
    heights, iterations = [32, 40], 3

    final, progress = run_stylize(
        content, style, hed_backbone, point(optimizer), iterations, heights=heights, snapshot_every=2
    )

    assert [record["scale"] for record in progress.records] == [0] * iterations + [1] * iterations
    assert [record["step"] for record in progress.records] == list(range(1, 2 * iterations + 1))
    assert all(math.isfinite(record["loss"]) for record in progress.records)
    assert final.shape == (40, 60, 3)  # 72 * 40 / 48 wide
    # Snapshots at steps 2 (scale 0, 32 pixels high), 4 and 6 (scale 1, 40 pixels high).
    assert [(step, snapshot.shape) for step, snapshot in progress.snapshots] == [
        (2, (32, 48, 3)),
        (4, (40, 60, 3)),
        (6, (40, 60, 3)),
    ]
    assert all(snapshot.dtype == np.uint8 for _, snapshot in progress.snapshots)


@pytest.mark.parametrize(
    "shape, num_scales, expected_size",
    [((48, 72), 2, "36x24"), ((72, 40), 2, "20x36"), ((96, 64), 3, "16x24")],
)
def test_check_sizes_names_the_coarsest_size_and_the_minimum(shape, num_scales, expected_size):
    heights = scale_heights(shape[0], num_scales, 2.0)

    with pytest.raises(images.ImageError) as error:
        check_sizes(shape, heights, "hed_vgg16")

    message = str(error.value)
    assert f"{expected_size} pixels" in message
    assert f"{MIN_INPUT_SIZE['hed_vgg16']} pixels" in message and "hed_vgg16" in message


def test_check_sizes_accepts_the_minimum():
    check_sizes((64, 96), scale_heights(64, 2, 2.0), "vgg16")  # coarsest 32 x 48
    check_sizes((32, 32), [32], "hed_vgg16")


# --- The comparison grid --------------------------------------------------------------------


def grid_params(repo_params: dict, **overrides) -> StyleTransferParams:
    section = copy.deepcopy(repo_params["style_transfer"])
    section.update(overrides)
    return StyleTransferParams.model_validate(section)


def test_grid_points_are_the_product_of_the_lists_without_all_zero_points(repo_params):
    lists = {
        "content_weight": [0.0, 1e-4],
        "style_weight": [0.0, 1e-6],
        "total_variation_weight": [0.0, 1e-6],
        "style_layers": [["block1_conv1"], ["block1_conv1", "block2_conv1"]],
        "optimizer": ["sgd", "lbfgs"],
    }

    points = grid_points(grid_params(repo_params, **lists))

    assert len(points) == (2 * 2 * 2 - 1) * 2 * 2
    assert len(set(points)) == len(points)
    expected = {
        GridPoint(content, style, variation, tuple(layers), optimizer)
        for content, style, variation, layers, optimizer in itertools.product(*lists.values())
    }
    skipped = {p for p in expected if p.content_weight == p.style_weight == p.total_variation_weight == 0}
    assert len(skipped) == 4
    assert set(points) == expected - skipped


def test_varying_fields_and_labels_show_only_what_varies(repo_params):
    points = grid_points(
        grid_params(
            repo_params,
            content_weight=[1e-4, 2.5e-8],
            style_weight=[1e-6],
            style_layers=[["block1_conv1"], ["block1_conv1", "block2_conv1"]],
            optimizer=["adam"],
        )
    )

    varying = varying_fields(points)

    assert varying == ["content_weight", "style_layers"]
    labels = [label(p, varying) for p in points]
    assert labels == [
        "content_weight=0.0001, style_layers=block1_conv1",
        "content_weight=0.0001, style_layers=block1_conv1+block2_conv1",
        "content_weight=2.5e-08, style_layers=block1_conv1",
        "content_weight=2.5e-08, style_layers=block1_conv1+block2_conv1",
    ]


def test_a_single_point_is_labelled_with_its_weights_and_optimizer(repo_params):
    (only,) = grid_points(
        grid_params(repo_params, content_weight=[1e-4], style_weight=[2e-6], total_variation_weight=[0.0])
    )

    assert varying_fields([only]) == []
    only_label = label(only, varying_fields([only]) or SINGLE_POINT_LABEL)
    for text in ("content_weight=0.0001", "style_weight=2e-06", "total_variation_weight=0", "optimizer="):
        assert text in only_label


# --- Params ---------------------------------------------------------------------------------


@pytest.fixture
def section(repo_params) -> dict:
    """A copy of the repo's style_transfer section to break."""
    return copy.deepcopy(repo_params["style_transfer"])


def parse_error(section: dict) -> str:
    with pytest.raises(ParamsError) as error:
        parse_section({"style_transfer": section}, "style_transfer", StyleTransferParams)
    return str(error.value)


def test_repo_style_transfer_params_parse(section):
    params = parse_section({"style_transfer": section}, "style_transfer", StyleTransferParams)

    assert grid_points(params)
    assert params.height >= MIN_INPUT_SIZE[params.backbone]


def test_all_loss_weights_zero_is_nothing_to_optimise(section):
    section.update(content_weight=[0.0], style_weight=[0.0, 0.0], total_variation_weight=[0.0])

    message = parse_error(section)

    assert "nothing to optimise" in message
    for key in ("content_weight", "style_weight", "total_variation_weight"):
        assert key in message


def test_all_style_image_weights_zero_is_rejected(section):
    section["style_images"] = [
        {"image": "bundled:flower", "sha256": "", "weight": 0.0},
        {"image": "bundled:china", "sha256": "", "weight": 0.0},
    ]

    message = parse_error(section)

    assert "style_images" in message and "weight" in message


@pytest.mark.parametrize("height", [0, -48])
def test_non_positive_height_is_named(section, height):
    section["height"] = height

    message = parse_error(section)

    assert "style_transfer.height" in message and repr(height) in message


def test_a_height_too_large_for_memory_is_named_with_the_limit(section):
    section["height"] = 100_000

    message = parse_error(section)

    assert "style_transfer.height" in message and "100000" in message
    assert f"at most {MAX_HEIGHT} pixels" in message


def test_the_images_step_refuses_a_huge_height_in_one_line_and_writes_nothing(tmp_path, repo_params, capsys):
    params = copy.deepcopy(repo_params)
    params["style_transfer"]["height"] = 100_000
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    exit_code = run_steps({"images": images_step}, "", ["images", "--root", str(tmp_path)])

    (line,) = capsys.readouterr().err.splitlines()
    assert exit_code == 2 and line.startswith("error: ") and "style_transfer.height" in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]

def test_an_empty_style_layers_entry_is_rejected(section):
    section["style_layers"] = [["block1_conv1"], []]

    assert "style_layers" in parse_error(section)


def test_an_unknown_optimizer_is_named(section):
    section["optimizer"] = ["adam", "rmsprop"]

    message = parse_error(section)

    assert "style_transfer.optimizer" in message and "rmsprop" in message


@pytest.mark.parametrize(
    "key, value, location",
    [
        ("content_weight", [-1e-4], "style_transfer.content_weight.0"),
        ("style_weight", [1e-6, -1e-6], "style_transfer.style_weight.1"),
        ("total_variation_weight", [-1.0], "style_transfer.total_variation_weight.0"),
        (
            "style_images",
            [{"image": "bundled:flower", "weight": -1.0}],
            "style_transfer.style_images.0.weight",
        ),
    ],
)
def test_a_negative_weight_is_named(section, key, value, location):
    section[key] = value

    assert location in parse_error(section)


# --- The DVC steps end to end ---------------------------------------------------------------


def save_png(pixels: np.ndarray, path: Path, mode: str) -> Path:
    Image.fromarray(pixels.astype(np.uint8), mode).save(path, format="PNG")
    return path


def step_params(repo_params: dict, **overrides) -> StyleTransferParams:
    section = copy.deepcopy(repo_params["style_transfer"])
    section.update(
        content_image="bundled:china",
        style_images=[{"image": "bundled:flower", "sha256": "", "weight": 1.0}],
        height=40,
        backbone="vgg16",
        content_layer="block4_conv2",
        style_layers=[["block1_conv1", "block2_conv1"]],
        content_weight=[1e-4],
        style_weight=[1e-6],
        total_variation_weight=[1e-6],
        optimizer=["adam", "lbfgs"],
        iterations=4,
        num_scales=1,
        snapshot_every=2,
        preserve_color=False,
    )
    section.update(overrides)
    return StyleTransferParams.model_validate(section)


def fetch(paths: StyleTransferPaths, params: StyleTransferParams) -> None:
    """fetch_images with the fields of a params section, as the images step calls it."""
    fetch_images(paths, params.content_image, params.content_sha256, params.style_images, params.height)


def stylize_params(paths: StyleTransferPaths, params: StyleTransferParams) -> list[dict]:
    """The stylize step's work on a params section, with random weights."""
    return stylize_with(paths, params, RUNTIME, weights="random")


def test_fetch_images_stores_any_mode_as_rgb_at_the_shared_height(tmp_path, repo_params):
    rng = np.random.default_rng(6)
    grey = save_png(rng.integers(0, 256, (60, 90)), tmp_path / "grey.png", "L")
    rgba = save_png(rng.integers(0, 256, (80, 100, 4)), tmp_path / "rgba.png", "RGBA")
    paths = storage.under(tmp_path, StyleTransferPaths())
    paths.inputs.mkdir(parents=True)
    (paths.inputs / "style_01.png").write_bytes(b"a style from an earlier run")
    params = step_params(
        repo_params, content_image=str(grey), style_images=[{"image": str(rgba), "weight": 1.0}], height=48
    )

    fetch(paths, params)

    for path, size in [(paths.content, (72, 48)), (paths.style(0), (60, 48))]:  # (width, height)
        with Image.open(path) as stored:
            assert stored.format == "PNG" and stored.mode == "RGB" and stored.size == size
    content_pixels = images.read_image(paths.content)
    np.testing.assert_array_equal(content_pixels[..., 0], content_pixels[..., 2])  # still grey
    assert sorted(p.name for p in paths.inputs.iterdir()) == ["content.png", "style_00.png"]


def test_an_unreadable_image_fails_before_anything_is_written(tmp_path, repo_params):
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image\n")
    paths = storage.under(tmp_path, StyleTransferPaths())
    params = step_params(repo_params, style_images=[{"image": str(broken), "weight": 1.0}])

    with pytest.raises(images.ImageError, match="broken.jpg"):
        fetch(paths, params)

    assert not paths.inputs.exists()


def test_an_image_too_wide_at_the_shared_height_fails_before_anything_is_written(tmp_path, repo_params):
    panorama = save_png(np.random.default_rng(10).integers(0, 256, (10, 30, 3)), tmp_path / "wide.png", "RGB")
    paths = storage.under(tmp_path, StyleTransferPaths())
    params = step_params(repo_params, content_image=str(panorama), height=MAX_HEIGHT)

    expected = rf"wide.png would be 6144x2048 pixels at style_transfer.height 2048, over the {MAX_PIXELS} pixels"
    with pytest.raises(images.ImageError, match=expected):
        fetch(paths, params)

    assert not paths.inputs.exists()

@pytest.fixture
def step_paths(tmp_path, repo_params) -> StyleTransferPaths:
    paths = storage.under(tmp_path, StyleTransferPaths())
    fetch(paths, step_params(repo_params))
    return paths


def read_csv(path: Path) -> list[dict[str, float]]:
    with path.open() as file:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(file)]


def test_stylize_grid_writes_images_losses_snapshots_and_metrics(step_paths, repo_params):
    params = step_params(repo_params)
    with Image.open(step_paths.content) as stored:
        content_size = stored.size
    assert content_size == (60, 40)

    results = stylize_params(step_paths, params)

    summary = json.loads((step_paths.results / "results.json").read_text())
    assert summary["settings"] == {
        "backbone": "vgg16",
        "content_layer": "block4_conv2",
        "heights": [40],
        "iterations": 4,
        "preserve_color": False,
    }
    assert json.loads(json.dumps(results)) == summary["points"]  # tuples come back as lists
    assert [entry["name"] for entry in results] == ["point_00", "point_01"]
    assert [entry["label"] for entry in results] == ["optimizer=adam", "optimizer=lbfgs"]
    with Image.open(step_paths.results / "grid.png") as grid:
        assert grid.format == "PNG" and grid.mode == "RGB"
    metrics = json.loads(step_paths.metrics.read_text())
    assert list(metrics) == ["point_00", "point_01"]
    for entry in results:
        folder = step_paths.results / entry["name"]
        with Image.open(folder / "final.png") as final:
            final.verify()
        with Image.open(folder / "final.png") as final:
            assert final.format == "PNG" and final.mode == "RGB" and final.size == content_size
        assert sorted(p.name for p in (folder / "snapshots").iterdir()) == [
            "step_00002.png",
            "step_00004.png",
        ]
        rows = read_csv(folder / "losses.csv")
        assert [row["step"] for row in rows] == [1, 2, 3, 4]
        assert set(rows[0]) == {"step", "scale", "loss", "content_loss", "style_loss", "total_variation_loss"}
        assert all(math.isfinite(row["loss"]) for row in rows)
        assert entry["steps"] == 4
        final_loss = metrics[entry["name"]]["final_loss"]  # of the image saved, after the last step
        best_loss = entry["metrics"]["best_loss"]
        assert best_loss == pytest.approx(min([row["loss"] for row in rows] + [final_loss]))
        if entry["point"]["optimizer"] == "lbfgs":  # returns the best image it evaluated
            assert final_loss == pytest.approx(min(row["loss"] for row in rows), rel=1e-5)
        assert metrics[entry["name"]]["best_loss"] == pytest.approx(entry["metrics"]["best_loss"])
    assert [p.name for p in step_paths.results.parent.iterdir() if p.name.startswith(".")] == []


def test_an_unknown_style_layer_fails_listing_valid_layers_and_keeps_the_previous_results(
    step_paths, repo_params
):
    previous = {
        step_paths.results / "grid.png": b"previous grid",
        step_paths.results / "results.json": b'{"points": []}\n',
        step_paths.results / "point_00" / "final.png": b"previous final",
        step_paths.metrics: b'{"point_00": {}}\n',
    }
    for path, content_bytes in previous.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content_bytes)
    params = step_params(repo_params, style_layers=[["block1_conv1"], ["block2_conv1", "block9_conv9"]])

    with pytest.raises(BackboneError, match="'block9_conv9'") as error:
        stylize_params(step_paths, params)

    assert "block5_conv3" in str(error.value)  # the valid layers are listed
    assert {path: path.read_bytes() for path in previous} == previous
    assert sorted(str(p.relative_to(step_paths.results)) for p in step_paths.results.rglob("*")) == [
        "grid.png",
        "point_00",
        "point_00/final.png",
        "results.json",
    ]
    assert not (step_paths.results.parent / ".results.partial").exists()


def test_a_style_image_too_narrow_for_the_backbone_is_named_before_anything_runs(tmp_path, repo_params):
    """Style images keep their aspect ratio, so a tall, narrow painting is narrower than the
    content: at height 32 this one is 11 pixels wide, halved by each pooling to 5, 2, 1 and then
    0 pixels before block5_conv1. check_sizes only measures the content image. Either refuse up front with an ImageError
    that points at the style image, before anything is written, or stylise with finite losses;
    not a TensorFlow error from inside a pooling layer."""
    narrow = save_png(np.random.default_rng(9).integers(0, 256, (96, 33, 3)), tmp_path / "scroll.png", "RGB")
    paths = storage.under(tmp_path, StyleTransferPaths())
    params = step_params(
        repo_params,
        style_images=[{"image": str(narrow), "weight": 1.0}],
        height=32,
        style_layers=[["block1_conv1", "block5_conv1"]],
        optimizer=["adam"],
        iterations=1,
    )
    fetch(paths, params)
    with Image.open(paths.style(0)) as stored:
        assert stored.size == (11, 32)

    with pytest.raises(
        images.ImageError, match=r"style image 0 .* would be 11x32 pixels at the coarsest scale"
    ):
        stylize_params(paths, params)
    assert not paths.results.exists() and not paths.metrics.exists()
