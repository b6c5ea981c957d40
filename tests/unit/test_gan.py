"""GAN: the adversarial train step (both networks learn, each step only its own network, label
noise, the moving-average generator) on tiny models, the fixed-latent grid, the Frechet distance
against closed forms, the scoring classifier, the architecture for several image sizes, the
instability guard (NaN and collapse), resuming an interrupted run, mixed precision on CPU, params
and bad input, the command line and the train step end to end on a Fashion-MNIST subset."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import logging
import math
import shutil
import types
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops
from PIL import Image

from tasks import grid, images, storage
from tasks.gan import model as gan_model
from tasks.gan import steps as gan_steps
from tasks.gan.data import data as data_step
from tasks.gan.model import (
    GAN,
    CollapseGuard,
    build_discriminator,
    build_generator,
    fixed_latents,
    generate,
    noisy_labels,
    num_upsamplings,
)
from tasks.gan.params import GanDataParams, GanError, GanParams, GanPaths, InstabilityParams
from tasks.gan.resume import MANIFEST, claim_folder
from tasks.gan.score import (
    ConfidenceScore,
    build_classifier,
    confidence_score,
    confident_share,
    effective_classes,
    feature_statistics,
    features_of,
    frechet_distance,
    score_features,
    train_classifier,
)
from tasks.gan.score import classifier as classifier_step
from tasks.gan.steps import (
    CHECKPOINT,
    GridPoint,
    TrainingSettings,
    failure_message,
    save_generators,
    train_grid,
    train_point,
    work_folder,
)
from tasks.gan.steps import train as train_step
from tasks.image_batches import image_dataset, rotation_dataset
from tasks.image_data import (
    DatasetError,
    Split,
    conform,
    load_keras_dataset,
    load_split,
    prepare_image_data,
    save_split,
)
from tasks.params import ParamsError, RuntimeParams, dump_yaml, load_params, parse_section
from tasks.steps import run_steps
from tasks.training import NanGuard, ProgressLog

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNTIME = RuntimeParams(
    seed=0, dtype_policy="float32", jit_compile=False, memory_growth=True, distribute="auto"
)
TILE = 28  # Fashion-MNIST images are 28 x 28
SHAPE = (TILE, TILE, 1)
LATENT_DIM = 8
WIDTH = 0.125  # an eighth of the book's filters: 8/16/16 in the discriminator
BATCH = 32
STEPS_PER_EPOCH = 4  # 128 training images in batches of 32
POINT = GridPoint(learning_rate=1e-3, label_noise=0.05, dropout=0.2)


# --- Helpers and shared fixtures ------------------------------------------------------------------


def tiny_settings(
    epochs: int = 2, ema_decay: float = 0.0, num_images: int = 32, keep: str = "last", patience: int = 0
) -> TrainingSettings:
    """keep "last" (the book's) unless a test says otherwise: the point's metrics are the last epoch's."""
    return TrainingSettings(
        latent_dim=LATENT_DIM,
        width=WIDTH,
        discriminator_width=WIDTH,
        epochs=epochs,
        batch_size=BATCH,
        adam_beta_1=0.9,
        ema_decay=ema_decay,
        grid_images=16,
        instability=InstabilityParams(d_loss_below=0.05, patience=3, action="warn"),
        num_images=num_images,
        keep=keep,
        patience=patience,
    )


def tiny_grid(
    epochs: int = 2,
    ema_decay: float = 0.0,
    learning_rate: tuple[float, ...] = (1e-3,),
    num_images: int = 32,
) -> dict:
    """What train_grid takes besides the paths, the runtime and the root."""
    return {
        "settings": tiny_settings(epochs, ema_decay, num_images),
        "learning_rates": list(learning_rate),
        "label_noises": [0.05],
        "dropouts": [0.2],
        "features": "classifier",
        "confidence": 0.9,
    }


def gan_paths(root: Path) -> GanPaths:
    return storage.under(root, GanPaths())


def tiny_gan(
    label_noise: float = 0.05,
    ema_decay: float = 0.0,
    d_rate: float = 1e-3,
    g_rate: float = 1e-3,
    seed: int = 7,
    dropout: float = 0.2,
) -> GAN:
    keras.utils.set_random_seed(0)
    model = GAN(
        build_discriminator(SHAPE, dropout, WIDTH),
        build_generator(SHAPE, LATENT_DIM, WIDTH),
        LATENT_DIM,
        label_noise,
        ema_decay,
        seed,
    )
    model.compile(d_optimizer=keras.optimizers.Adam(d_rate), g_optimizer=keras.optimizers.Adam(g_rate))
    return model


def values(variables) -> list[np.ndarray]:
    return [ops.convert_to_numpy(variable).copy() for variable in variables]


def changed(before: list[np.ndarray], after: list[np.ndarray]) -> list[bool]:
    return [not np.array_equal(old, new) for old, new in zip(before, after, strict=True)]


def all_finite(weights: list[np.ndarray]) -> bool:
    return all(np.isfinite(weight).all() for weight in weights)


def read_csv(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as file:
        return [
            {key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(file)
        ]


def png_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


class Interrupted(RuntimeError):
    """Stands in for a kill or Ctrl-C in the middle of training."""


def recording_gan(made: list, poison_from_step: int | None = None, same_start: bool = False) -> type[GAN]:
    """A GAN subclass that remembers its instances; with `poison_from_step`, the real images turn
    NaN from that step on (and with them both losses, gradients and weights).

    With `same_start`, every instance starts from the first one's initial networks (dropout seeds
    included). The seed alone does not promise that within pytest: Keras's initializers draw their
    seeds from Python's global `random`, which threads of other tests' libraries draw from too."""
    initial = {}

    class RecordingGAN(GAN):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            networks = {name: getattr(self, name) for name in ("discriminator", "generator", "ema_generator")}
            if same_start and initial:
                for name, network in networks.items():
                    for variable, value in zip(network.variables, initial[name], strict=True):
                        variable.assign(value)
            elif same_start:
                initial.update({name: values(network.variables) for name, network in networks.items()})
            made.append(self)

        def train_step(self, real_images):
            if poison_from_step is not None:
                poison = ops.where(self.d_optimizer.iterations >= poison_from_step, np.nan, 1.0)
                real_images = real_images * ops.cast(poison, real_images.dtype)
            return super().train_step(real_images)

    return RecordingGAN


class Messages(logging.Handler):
    """Collects the messages of a logger (caplog is function-scoped; the runs here are shared)."""

    def __init__(self, name: str = "tasks.gan"):
        super().__init__(logging.INFO)
        self.logger, self.messages = logging.getLogger(name), []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)


def subset(split: Split, count: int) -> Split:
    return Split(conform(split.images[:count], TILE, 1), split.labels[:count])


def save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def prepare_data(paths: GanPaths, params: GanDataParams, seed: int) -> dict:
    """What the data step (tasks.gan.data) does with these params."""
    return prepare_image_data(params, paths.data, "gan", max_train_images=params.max_images, seed=seed)


def folder_params(folder: Path, **changes) -> GanDataParams:
    settings = {
        "dataset": "folder",
        "folder": str(folder),
        "image_size": 16,
        "channels": 3,
        "test_split": 0.25,
        "max_images": 0,
        **changes,
    }
    return GanDataParams(**settings)


@pytest.fixture(scope="module")
def tiny_data() -> tuple[Split, Split]:
    """128 train and 64 test images of Fashion-MNIST from the Keras cache copy (no network in tests)."""
    train, test = load_keras_dataset("fashion_mnist", "gan")
    return subset(train, BATCH * STEPS_PER_EPOCH), subset(test, 64)


@pytest.fixture(scope="module")
def extractor() -> keras.Model:
    """The features of an untrained scoring classifier: enough to compute a Frechet distance."""
    keras.utils.set_random_seed(0)
    classifier = build_classifier(SHAPE, 10)
    return keras.Model(classifier.input, classifier.get_layer("features").output)


@pytest.fixture(scope="module")
def repo_params() -> dict:
    return load_params(REPO_ROOT)


@pytest.fixture
def restore_float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="module")
def real_batch(tiny_data) -> np.ndarray:
    return tiny_data[0].images[:BATCH].astype(np.float32) / 255.0


# --- The adversarial train step ---------------------------------------------------------------------


def test_one_train_step_changes_every_weight_of_both_networks(real_batch):
    model = tiny_gan()
    discriminator_before = values(model.discriminator.trainable_variables)
    generator_before = values(model.generator.trainable_variables)

    logs = model.train_step(real_batch)

    assert all(changed(discriminator_before, values(model.discriminator.trainable_variables)))
    assert all(changed(generator_before, values(model.generator.trainable_variables)))
    assert math.isfinite(float(logs["d_loss"])) and math.isfinite(float(logs["g_loss"]))
    assert int(model.d_optimizer.iterations) == int(model.g_optimizer.iterations) == 1


def test_the_discriminator_step_does_not_touch_the_generator(real_batch):
    model = tiny_gan(g_rate=0.0)
    discriminator_before = values(model.discriminator.trainable_variables)
    generator_before = values(model.generator.trainable_variables)

    model.train_step(real_batch)

    assert all(changed(discriminator_before, values(model.discriminator.trainable_variables)))
    assert not any(changed(generator_before, values(model.generator.trainable_variables)))


def test_the_generator_step_does_not_touch_the_discriminator(real_batch):
    model = tiny_gan(d_rate=0.0)
    discriminator_before = values(model.discriminator.trainable_variables)
    generator_before = values(model.generator.trainable_variables)

    model.train_step(real_batch)

    assert not any(changed(discriminator_before, values(model.discriminator.trainable_variables)))
    assert all(changed(generator_before, values(model.generator.trainable_variables)))


def test_the_moving_average_generator_follows_the_generator_in_closed_form(real_batch):
    decay = 0.9
    model = tiny_gan(ema_decay=decay)
    generator_before = values(model.generator.weights)
    for average, weight in zip(values(model.ema_generator.weights), generator_before, strict=True):
        np.testing.assert_array_equal(average, weight)  # starts as a copy

    model.train_step(real_batch)
    generator_after = values(model.generator.weights)
    average_after = values(model.ema_generator.weights)
    model.train_step(real_batch)

    for average, old, new in zip(average_after, generator_before, generator_after, strict=True):
        np.testing.assert_allclose(average, decay * old + (1.0 - decay) * new, rtol=1e-5, atol=1e-7)
        assert not np.array_equal(average, new)  # moved part of the way only
    for average, previous, new in zip(
        values(model.ema_generator.weights), average_after, values(model.generator.weights), strict=True
    ):
        np.testing.assert_allclose(average, decay * previous + (1.0 - decay) * new, rtol=1e-5, atol=1e-7)


def test_the_moving_average_generator_is_not_trained_and_absent_without_a_decay():
    model = tiny_gan(ema_decay=0.99)

    assert model.ema_generator.trainable_weights == []
    assert model.ema_generator is not model.generator
    ema_ids = {id(variable) for variable in model.ema_generator.weights}
    assert ema_ids.isdisjoint(id(variable) for variable in model.generator.weights)
    assert ema_ids.isdisjoint(id(variable) for variable in model.trainable_variables)
    assert tiny_gan(ema_decay=0.0).ema_generator is None


# --- Label noise --------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_noisy_labels_add_noise_times_a_uniform_draw(label):
    count, noise = 20000, 0.3
    labels = np.full((count, 1), label, np.float32)

    noisy = ops.convert_to_numpy(noisy_labels(labels, noise, seed=3))

    assert noisy.shape == (count, 1)
    assert noisy.min() >= label and noisy.max() <= label + noise
    # U(0, 1) has mean 1/2 and standard deviation 1/sqrt(12).
    standard_error = noise / math.sqrt(12 * count)
    assert abs(noisy.mean() - (label + noise / 2)) < 4 * standard_error
    assert noisy.std() == pytest.approx(noise / math.sqrt(12), rel=0.05)


def test_noisy_labels_without_noise_are_the_labels():
    labels = np.concatenate([np.ones((5, 1)), np.zeros((5, 1))]).astype(np.float32)

    np.testing.assert_array_equal(ops.convert_to_numpy(noisy_labels(labels, 0.0, seed=1)), labels)


def binary_cross_entropy(labels: np.ndarray, predictions: np.ndarray) -> float:
    p = np.clip(predictions.astype(np.float64), 1e-7, 1 - 1e-7)
    y = labels.astype(np.float64)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


@pytest.mark.parametrize("label_noise", [0.0, 0.5])
def test_the_discriminator_loss_is_on_labels_with_the_gans_noise(real_batch, label_noise):
    seed = 11
    model = tiny_gan(label_noise=label_noise, seed=seed, dropout=0.0)  # no dropout: deterministic
    # The step's draws, in its order: latent vectors, then the uniform label noise.
    draws = keras.random.SeedGenerator(seed)
    latents = keras.random.normal((BATCH, LATENT_DIM), seed=draws)
    uniform = ops.convert_to_numpy(keras.random.uniform((2 * BATCH, 1), seed=draws))
    predictions = ops.convert_to_numpy(
        model.discriminator(ops.concatenate([model.generator(latents), real_batch], axis=0))
    )
    clean = np.concatenate([np.ones((BATCH, 1)), np.zeros((BATCH, 1))])  # generated 1, real 0

    d_loss = float(model.train_step(real_batch)["d_loss"])

    assert d_loss == pytest.approx(binary_cross_entropy(clean + label_noise * uniform, predictions), rel=1e-4)
    if label_noise:
        assert abs(d_loss - binary_cross_entropy(clean, predictions)) > 1e-3


def test_the_generator_loss_asks_the_updated_discriminator_to_call_generated_images_real(real_batch):
    seed = 11
    model = tiny_gan(seed=seed, dropout=0.0)
    generator_before = keras.models.clone_model(model.generator)
    generator_before.set_weights(model.generator.get_weights())
    draws = keras.random.SeedGenerator(seed)
    keras.random.normal((BATCH, LATENT_DIM), seed=draws)  # the discriminator step's latents
    keras.random.uniform((2 * BATCH, 1), seed=draws)  # its label noise
    latents = keras.random.normal((BATCH, LATENT_DIM), seed=draws)

    g_loss = float(model.train_step(real_batch)["g_loss"])

    # The discriminator after its step judges the images of the generator before its step.
    predictions = ops.convert_to_numpy(model.discriminator(generator_before(latents)))
    assert g_loss == pytest.approx(binary_cross_entropy(np.zeros((BATCH, 1)), predictions), rel=1e-4)


def test_a_few_steps_move_each_loss_the_right_way(real_batch):
    latents = fixed_latents(64, LATENT_DIM, seed=0)
    fooling = tiny_gan(d_rate=0.0, g_rate=1e-2)  # only the generator learns
    judging = tiny_gan(d_rate=1e-2, g_rate=0.0)  # only the discriminator learns

    def verdict(model):  # mean "generated" probability the discriminator gives generated images
        return float(ops.mean(model.discriminator(model.generator(latents))))

    before = verdict(fooling)
    g_losses = [float(fooling.train_step(real_batch)["g_loss"]) for _ in range(5)]
    d_losses = [float(judging.train_step(real_batch)["d_loss"]) for _ in range(5)]

    assert verdict(fooling) < before - 0.01  # generated images look more real to the frozen discriminator
    assert g_losses[-1] < g_losses[0]  # the running mean falls only if the later steps are lower
    assert d_losses[-1] < d_losses[0]
    real = float(ops.mean(judging.discriminator(real_batch)))
    assert verdict(judging) > real  # generated said "generated" (1) more than real images are


def test_the_train_step_passes_its_label_noise_to_noisy_labels(real_batch, monkeypatch):
    calls = []

    def spy(labels, noise, seed):
        calls.append((ops.convert_to_numpy(labels), noise))
        return noisy_labels(labels, noise, seed)

    monkeypatch.setattr(gan_model, "noisy_labels", spy)
    tiny_gan(label_noise=0.25).train_step(real_batch)

    ((labels, noise),) = calls
    assert noise == 0.25
    np.testing.assert_array_equal(labels, np.concatenate([np.ones((BATCH, 1)), np.zeros((BATCH, 1))]))


# --- The fixed-latent grid ------------------------------------------------------------------------------


def test_fixed_latents_are_the_same_for_a_seed_and_differ_between_seeds():
    latents = fixed_latents(16, LATENT_DIM, seed=5)

    assert latents.shape == (16, LATENT_DIM) and latents.dtype == np.float32
    np.testing.assert_array_equal(latents, fixed_latents(16, LATENT_DIM, seed=5))
    assert not np.allclose(latents, fixed_latents(16, LATENT_DIM, seed=6))
    np.testing.assert_array_equal(fixed_latents(4, LATENT_DIM, seed=5), latents[:4])  # a prefix


def test_the_grid_is_identical_for_identical_weights_and_differs_for_others():
    keras.utils.set_random_seed(0)
    generator = build_generator(SHAPE, LATENT_DIM, WIDTH)
    same = build_generator(SHAPE, LATENT_DIM, WIDTH)
    same.set_weights(generator.get_weights())
    other = build_generator(SHAPE, LATENT_DIM, WIDTH)
    latents = fixed_latents(16, LATENT_DIM, seed=0)

    grid = images.mosaic(generate(generator, latents))

    assert grid.shape == (4 * TILE, 4 * TILE, 3)
    assert grid.min() >= 0.0 and grid.max() <= 255.0
    assert grid.tobytes() == images.mosaic(generate(same, latents)).tobytes()
    again = images.mosaic(generate(generator, fixed_latents(16, LATENT_DIM, seed=0)))
    assert grid.tobytes() == again.tobytes()
    assert not np.allclose(grid, images.mosaic(generate(other, latents)))


def test_generate_in_batches_gives_the_images_of_one_batch():
    keras.utils.set_random_seed(0)
    generator = build_generator(SHAPE, LATENT_DIM, WIDTH)
    latents = fixed_latents(7, LATENT_DIM, seed=1)

    pixels = generate(generator, latents, batch_size=3)

    assert pixels.shape == (7, TILE, TILE, 1) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, generate(generator, latents), atol=1e-6)
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


def test_the_grid_is_a_near_square_mosaic_row_major_with_the_rest_white():
    pixels = np.stack([np.full((2, 3, 1), value, np.float32) for value in (0.0, 0.25, 0.5, 0.75, 1.0)])

    grid = images.mosaic(pixels)

    assert grid.shape == (2 * 2, 3 * 3, 3)  # 5 images: 3 columns, 2 rows
    for index, value in enumerate((0.0, 0.25, 0.5, 0.75, 1.0)):
        row, column = divmod(index, 3)
        np.testing.assert_array_equal(grid[row * 2 : row * 2 + 2, column * 3 : column * 3 + 3], value * 255)
    np.testing.assert_array_equal(grid[2:, 6:], 255.0)
    rgb = np.random.default_rng(0).uniform(size=(4, 5, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(images.mosaic(rgb)[:5, 5:10], rgb[1] * 255, rtol=1e-6)


# --- The quality score -------------------------------------------------------------------------------------


def test_frechet_distance_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))  # correlated features
    statistics = feature_statistics(features)

    distance = frechet_distance(*statistics, *statistics)

    assert distance == pytest.approx(0.0, abs=1e-6 * np.trace(statistics[1]))


def test_frechet_distance_grows_with_added_noise():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2000, 8))
    noise = rng.normal(size=features.shape)
    reference = feature_statistics(features)

    distances = [
        frechet_distance(*reference, *feature_statistics(features + level * noise))
        for level in (0.0, 0.1, 0.3, 1.0, 3.0)
    ]

    assert distances[0] == pytest.approx(0.0, abs=1e-8)
    assert all(later > earlier for earlier, later in zip(distances, distances[1:])), distances


def diagonal_closed_form(mean_a, variances_a, mean_b, variances_b) -> float:
    return float(
        np.sum((mean_a - mean_b) ** 2)
        + np.sum(variances_a + variances_b - 2 * np.sqrt(variances_a * variances_b))
    )


@pytest.mark.parametrize(
    "mean_a, variances_a, mean_b, variances_b",
    [
        ([0.0], [1.0], [0.0], [1.0]),
        ([1.0], [4.0], [-2.0], [1.0]),  # 1-D: (1 + 2)^2 + (4 + 1 - 2 * 2) = 10
        ([0.5, -1.0, 2.0], [1.0, 0.25, 9.0], [0.0, 1.0, 2.0], [4.0, 0.25, 1.0]),
        ([0.0, 0.0], [2.0, 3.0], [1.0, 1.0], [2.0, 3.0]),
    ],
)
def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form(mean_a, variances_a, mean_b, variances_b):
    mean_a, mean_b = np.asarray(mean_a), np.asarray(mean_b)
    variances_a, variances_b = np.asarray(variances_a), np.asarray(variances_b)

    distance = frechet_distance(mean_a, np.diag(variances_a), mean_b, np.diag(variances_b))

    assert distance == pytest.approx(diagonal_closed_form(mean_a, variances_a, mean_b, variances_b), rel=1e-9)


def test_frechet_distance_of_the_1d_example_is_ten():
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[1.0]])) == (
        pytest.approx(10.0)
    )


def test_frechet_distance_is_symmetric():
    rng = np.random.default_rng(2)
    first = feature_statistics(rng.normal(size=(300, 6)) * [1, 2, 3, 1, 1, 5] + 1.0)
    second = feature_statistics(rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)))

    forward, backward = frechet_distance(*first, *second), frechet_distance(*second, *first)

    assert forward > 0
    assert forward == pytest.approx(backward, rel=1e-8)


def test_frechet_distance_of_constant_features_is_finite():
    rng = np.random.default_rng(3)
    collapsed = np.tile(rng.normal(size=(1, 10)), (50, 1))  # a collapsed generator: one image
    varied = rng.normal(size=(50, 10))
    partly_constant = varied.copy()
    partly_constant[:, :4] = 0.5

    versus_varied = frechet_distance(*feature_statistics(collapsed), *feature_statistics(varied))
    both_collapsed = frechet_distance(*feature_statistics(collapsed), *feature_statistics(collapsed + 1.0))
    partly = frechet_distance(*feature_statistics(partly_constant), *feature_statistics(varied))

    assert math.isfinite(versus_varied) and versus_varied > 0
    # Nothing varies: only the means differ, by 1 in each of 10 features.
    assert both_collapsed == pytest.approx(10.0, rel=1e-4)
    assert math.isfinite(partly) and partly > 0
    assert versus_varied >= np.sum((collapsed[0] - varied.mean(axis=0)) ** 2)  # at least the mean term


def test_feature_statistics_are_the_mean_and_the_sample_covariance():
    features = np.random.default_rng(4).normal(size=(40, 3))

    mean, cov = feature_statistics(features)

    np.testing.assert_allclose(mean, features.mean(axis=0))
    centred = features - features.mean(axis=0)
    np.testing.assert_allclose(cov, centred.T @ centred / 39)


def test_features_of_scales_uint8_images_and_batches(extractor):
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, TILE, TILE, 1), dtype=np.uint8)

    features = features_of(extractor, pixels, batch_size=2)

    assert features.shape == (5, 128) and features.dtype == np.float64
    np.testing.assert_allclose(features, features_of(extractor, pixels.astype(np.float32) / 255.0), atol=1e-5)


def test_score_features_of_the_classifier_are_its_features_layer(tmp_path):
    keras.utils.set_random_seed(0)
    classifier = build_classifier(SHAPE, 10)
    classifier.save(tmp_path / "classifier.keras")
    pixels = np.random.default_rng(0).uniform(size=(3, TILE, TILE, 1)).astype(np.float32)

    features = score_features(tmp_path / "classifier.keras", "classifier")

    expected = keras.Model(classifier.input, classifier.get_layer("features").output)(pixels)
    np.testing.assert_allclose(features_of(features, pixels), ops.convert_to_numpy(expected), atol=1e-5)


def test_score_features_of_inception_are_2048_pooled_features_of_grey_or_rgb_images(tmp_path):
    extract = score_features(tmp_path / "unused.keras", "inception_v3", weights="random")
    rng = np.random.default_rng(0)

    grey = features_of(extract, rng.integers(0, 256, size=(2, TILE, TILE, 1), dtype=np.uint8))
    rgb = features_of(extract, rng.uniform(size=(1, 32, 32, 3)).astype(np.float32))

    assert grey.shape == (2, 2048) and rgb.shape == (1, 2048)
    assert np.isfinite(grey).all() and (grey >= 0).all()  # averages of ReLU activations


def test_score_features_of_inception_without_imagenet_weights_says_what_to_do(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.applications, "InceptionV3", offline)
    with pytest.raises(GanError, match="set gan.score.features to classifier"):
        score_features(tmp_path / "classifier.keras", "inception_v3")


# --- The confident share -------------------------------------------------------------------------------------------


def test_confident_share_counts_the_images_whose_top_class_reaches_the_threshold():
    probabilities = np.array(
        [
            [0.95, 0.05, 0.0],  # confident
            [0.0, 0.9, 0.1],  # exactly at the threshold: confident
            [0.5, 0.3, 0.2],  # unsure
            [1 / 3, 1 / 3, 1 / 3],  # unsure
        ]
    )

    assert confident_share(probabilities, 0.9) == pytest.approx(0.5)
    assert confident_share(probabilities, 0.96) == 0.0
    assert confident_share(probabilities, 0.5) == pytest.approx(0.75)
    assert confident_share(probabilities, 1 / 3) == 1.0


def test_confident_share_of_no_images_is_an_error():
    with pytest.raises(ValueError, match="at least one image"):
        confident_share(np.zeros((0, 10)), 0.9)


def sure_of_bright_images(batch):
    """A classifier certain of class 1 for images brighter than mid-grey, unsure of the others."""
    bright = ops.cast(ops.mean(batch, axis=(1, 2, 3)) > 0.5, "float32")[:, None]
    return bright * ops.convert_to_tensor([[0.0, 1.0, 0.0]]) + (1.0 - bright) * ops.full((1, 3), 1 / 3)


def test_a_confidence_score_judges_generated_images_against_the_real_share():
    pixels = np.concatenate([np.full((3, TILE, TILE, 1), 0.9), np.full((5, TILE, TILE, 1), 0.1)])
    score = ConfidenceScore(sure_of_bright_images, threshold=0.9, real_share=0.75, real_classes=3.0)

    assert score.share(pixels.astype(np.float32)) == pytest.approx(3 / 8)
    assert score.share((pixels * 255).astype(np.uint8)) == pytest.approx(3 / 8)  # uint8 scaled
    assert ConfidenceScore(sure_of_bright_images, 0.3, 0.75, 3.0).share(pixels) == 1.0  # 1/3 >= 0.3
    # 3 images in class 1, 5 (all classes equally likely: argmax the first) in class 0.
    assert score.judge(pixels)["effective_classes"] == pytest.approx(
        np.exp(-(3 / 8 * np.log(3 / 8) + 5 / 8 * np.log(5 / 8)))
    )


def test_effective_classes_counts_how_many_classes_the_images_spread_over():
    one_hot = np.eye(4)
    assert effective_classes(one_hot[[2] * 10]) == pytest.approx(1.0)  # one kind of thing
    assert effective_classes(one_hot[[0, 1, 2, 3] * 5]) == pytest.approx(4.0)  # as many of each
    assert effective_classes(one_hot[[0, 1] * 5]) == pytest.approx(2.0)
    assert 2.0 < effective_classes(one_hot[[0, 0, 0, 1, 2, 3]]) < 4.0
    with pytest.raises(ValueError, match="at least one image"):
        effective_classes(np.zeros((0, 4)))


def test_confidence_score_measures_the_real_share_with_the_float32_classifier(
    tmp_path, tiny_data, restore_float32_policy
):
    keras.utils.set_random_seed(0)
    classifier = build_classifier(SHAPE, 10)
    classifier.save(tmp_path / "classifier.keras")
    real = tiny_data[1].images[:16]
    keras.mixed_precision.set_global_policy("mixed_bfloat16")  # as the train step runs

    score = confidence_score(tmp_path / "classifier.keras", 0.1, real)

    assert all(layer.compute_dtype == "float32" for layer in score.classify.layers)
    probabilities = ops.convert_to_numpy(classifier(real.astype(np.float32) / 255.0))
    assert score.real_share == confident_share(probabilities, 0.1)
    assert score.real_classes == effective_classes(probabilities)
    assert score.threshold == 0.1


def test_the_rotation_dataset_turns_each_image_four_ways_and_labels_the_rotation():
    pixels = np.arange(2 * 3 * 3 * 2, dtype=np.uint8).reshape(2, 3, 3, 2)  # no symmetries

    batches = list(rotation_dataset(pixels, batch_size=3, shuffle=False).as_numpy_iterator())

    assert [len(labels) for _, labels in batches] == [3, 3, 2]
    rotated = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2, 3, 3])
    assert rotated.dtype == np.float32 and labels.dtype == np.int32
    for k in range(4):
        for index in range(2):
            expected = np.rot90(pixels[index], k, axes=(0, 1)).astype(np.float32) / 255.0
            np.testing.assert_allclose(rotated[2 * k + index], expected, rtol=1e-6)
    assert len({image.tobytes() for image in rotated}) == 8
    shuffled = list(rotation_dataset(pixels, batch_size=8, shuffle=True, seed=1).as_numpy_iterator())
    ((images, labels),) = shuffled
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    for image, k in zip(images, labels):  # still each image with its own rotation's label
        assert any(np.allclose(image, np.rot90(pixels[i], k, axes=(0, 1)) / 255.0) for i in range(2))


def write_splits(paths: GanPaths, train: Split, test: Split) -> None:
    save_split(train, paths.data / "train.npz")
    save_split(test, paths.data / "test.npz")


@pytest.fixture(scope="module")
def classified(tmp_path_factory, tiny_data) -> tuple[GanPaths, dict]:
    """The data and the scoring classifier steps' outputs, for 128 / 64 Fashion-MNIST images."""
    root = tmp_path_factory.mktemp("classified")
    paths = gan_paths(root)
    write_splits(paths, *tiny_data)
    return paths, train_classifier(paths, epochs=1, runtime=RUNTIME)


def test_train_classifier_on_labels_writes_the_model_and_its_metrics(classified):
    paths, metrics = classified

    assert metrics["task"] == "labels"
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert json.loads((paths.classifier / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    classifier = keras.models.load_model(paths.classifier / "classifier.keras")
    assert classifier.output_shape == (None, 10)
    assert classifier.get_layer("features").output.shape == (None, 128)
    assert not list(paths.classifier.glob(".*"))  # no partial files


def test_train_classifier_on_a_one_class_folder_learns_rotations(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "faces"  # loose images: one class, as the book's CelebA folder
    for index in range(12):
        save(Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)), folder / f"{index}.png")
    paths = gan_paths(tmp_path / "repo")
    assert prepare_data(paths, folder_params(folder), seed=0)["classes"] == ["faces"]

    metrics = train_classifier(paths, epochs=1, runtime=RUNTIME)

    assert metrics["task"] == "rotations"
    assert json.loads((paths.classifier / "metrics.json").read_text())["task"] == "rotations"
    classifier = keras.models.load_model(paths.classifier / "classifier.keras")
    assert classifier.output_shape == (None, 4)  # one class per rotation
    assert classifier.input_shape == (None, 16, 16, 3)


# --- Architecture ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image_size, upsamplings",
    [(8, 2), (12, 2), (16, 2), (24, 2), (28, 2), (32, 3), (48, 3), (64, 3), (128, 3)],
)
def test_num_upsamplings_keeps_the_first_square_at_least_4_wide(image_size, upsamplings):
    assert num_upsamplings(image_size) == upsamplings
    assert (image_size // 2**upsamplings) * 2**upsamplings == image_size


@pytest.mark.parametrize("image_shape", [(28, 28, 1), (32, 32, 3), (64, 64, 3), (12, 12, 3)])
def test_generator_and_discriminator_fit_the_image_shape(image_shape):
    keras.utils.set_random_seed(0)
    generator = build_generator(image_shape, LATENT_DIM, WIDTH)
    discriminator = build_discriminator(image_shape, 0.2, WIDTH)

    generated = ops.convert_to_numpy(generator(np.random.default_rng(0).normal(size=(3, LATENT_DIM))))
    verdicts = ops.convert_to_numpy(discriminator(generated))

    assert generated.shape == (3, *image_shape)
    assert generated.min() >= 0.0 and generated.max() <= 1.0
    assert verdicts.shape == (3, 1) and (verdicts >= 0.0).all() and (verdicts <= 1.0).all()
    upsamplings = num_upsamplings(image_shape[0])
    transposed = [layer for layer in generator.layers if isinstance(layer, keras.layers.Conv2DTranspose)]
    strided = [layer for layer in discriminator.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(transposed) == len(strided) == upsamplings
    for layer in transposed + strided:
        assert layer.strides == (2, 2) and layer.kernel_size == (4, 4)
        assert all(size % stride == 0 for size, stride in zip(layer.kernel_size, layer.strides))


def test_width_scales_the_filter_counts():
    def counts(width):
        generator = build_generator((64, 64, 3), LATENT_DIM, width)
        discriminator = build_discriminator((64, 64, 3), 0.2, width)
        return (
            [layer.filters for layer in generator.layers if isinstance(layer, keras.layers.Conv2DTranspose)],
            [layer.filters for layer in discriminator.layers if isinstance(layer, keras.layers.Conv2D)],
            generator.get_layer(index=1).units,
        )

    assert counts(1.0) == ([128, 256, 512], [64, 128, 128], 8 * 8 * 128)  # the book's
    assert counts(0.5) == ([64, 128, 256], [32, 64, 64], 8 * 8 * 64)
    assert counts(0.125) == ([16, 32, 64], [8, 16, 16], 8 * 8 * 16)
    assert counts(0.01) == ([8, 8, 8], [8, 8, 8], 8 * 8 * 8)  # never below 8 filters


# --- The instability guard -------------------------------------------------------------------------------------


def stub_model(ema: bool = False) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        generator="generator", ema_generator="ema generator" if ema else None, stop_training=False
    )


@pytest.fixture
def saves(monkeypatch) -> list:
    made = []
    monkeypatch.setattr(
        gan_steps, "save_model_atomically", lambda model, path: made.append((model, path.name))
    )
    return made


class Guard:
    """The guards train_point watches a point with: NaN (it saves the generators after every finite
    epoch) and collapse, on one model, in train_point's order."""

    def __init__(self, folder: Path, model, d_loss_below: float, patience: int, action: str):
        rows = []  # every epoch scored alike: with keep "last" each healthy epoch's generators are saved

        def save_epoch(epoch: int) -> None:
            rows.append({"epoch": epoch, "frechet_distance": 1.0, "ema_frechet_distance": 1.0})
            save_generators(model, folder, rows, "last")

        self.nan = NanGuard(save_epoch)
        self.collapse = CollapseGuard(d_loss_below, patience, action)
        self.model = model
        for callback in (self.nan, self.collapse):
            callback.set_model(model)

    def on_epoch_begin(self, epoch):
        self.nan.on_epoch_begin(epoch)
        self.collapse.on_epoch_begin(epoch)

    def on_train_batch_end(self, batch, logs):
        self.nan.on_train_batch_end(batch, logs)
        self.collapse.on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs):
        self.nan.on_epoch_end(epoch, logs)
        self.collapse.on_epoch_end(epoch, logs)


def run_guard(guard: Guard, losses: list[tuple[float, float]]) -> list[bool]:
    """Feeds epochs of (d_loss, g_loss); returns stop_training after each."""
    stops = []
    for epoch, (d_loss, g_loss) in enumerate(losses):
        guard.on_epoch_begin(epoch)
        guard.on_epoch_end(epoch, {"d_loss": d_loss, "g_loss": g_loss})
        stops.append(guard.model.stop_training)
    return stops


COLLAPSING = [(0.5, 1.0), (0.04, 1.5), (0.03, 2.0), (0.02, 2.5)]


def test_a_collapse_with_action_stop_stops_training(tmp_path, saves):
    model = stub_model()
    guard = Guard(tmp_path, model, d_loss_below=0.05, patience=2, action="stop")

    stops = run_guard(guard, COLLAPSING[:3])

    assert stops == [False, False, True]
    assert guard.collapse.collapsed_at_epoch == 3 and guard.nan.diverged_at_epoch == 0
    assert guard.nan.last_good_epoch == 3
    assert saves == [("generator", "generator.keras")] * 3  # every finite epoch is kept


def test_a_collapse_with_action_warn_only_warns(tmp_path, saves, caplog):
    model = stub_model(ema=True)
    guard = Guard(tmp_path, model, d_loss_below=0.05, patience=2, action="warn")

    with caplog.at_level(logging.WARNING, logger="tasks.gan"):
        stops = run_guard(guard, COLLAPSING)

    assert stops == [False] * 4
    assert guard.collapse.collapsed_at_epoch == 3  # the first epoch it happened, not the last
    (warning,) = [record for record in caplog.records if "collapsing" in record.getMessage()]
    assert "epoch 3" in warning.getMessage() and "stopping" not in warning.getMessage()
    assert sorted({name for _, name in saves}) == ["ema_generator.keras", "generator.keras"]
    assert len(saves) == 8


@pytest.mark.parametrize(
    "losses",
    [
        [(0.04, 2.0), (0.03, 1.5), (0.02, 1.0), (0.01, 0.5)],  # discriminator wins, generator improves
        [(0.5, 1.0), (0.5, 2.0), (0.5, 3.0), (0.5, 4.0)],  # generator loss rises, discriminator not winning
        [(0.5, 1.0), (0.04, 2.0), (0.5, 3.0), (0.04, 4.0), (0.04, 3.0), (0.04, 5.0)],  # streaks of 1
    ],
    ids=["generator_improving", "discriminator_not_winning", "interrupted_streaks"],
)
def test_no_collapse_without_patience_epochs_of_both_signs(tmp_path, saves, losses):
    model = stub_model()
    guard = Guard(tmp_path, model, d_loss_below=0.05, patience=2, action="stop")

    stops = run_guard(guard, losses)

    assert not any(stops) and guard.collapse.collapsed_at_epoch == 0
    assert guard.nan.last_good_epoch == len(losses)


def test_a_nan_loss_stops_at_once_and_keeps_the_last_good_epoch(tmp_path, saves):
    model = stub_model()
    guard = Guard(tmp_path, model, d_loss_below=0.05, patience=2, action="warn")
    run_guard(guard, [(0.6, 0.9)])

    guard.on_epoch_begin(1)
    guard.on_train_batch_end(3, {"d_loss": 0.5, "g_loss": 1.0})
    assert not guard.model.stop_training
    guard.on_train_batch_end(4, {"d_loss": math.nan, "g_loss": 1.0})
    assert guard.model.stop_training
    guard.on_epoch_end(1, {"d_loss": math.nan, "g_loss": math.inf})

    assert (guard.nan.diverged_at_epoch, guard.nan.last_good_epoch) == (2, 1)
    assert len(saves) == 1  # the NaN epoch's generator is not saved


def test_a_nan_in_the_epoch_logs_alone_stops_training(tmp_path, saves):
    model = stub_model(ema=True)
    guard = Guard(tmp_path, model, d_loss_below=0.05, patience=2, action="warn")

    guard.on_epoch_begin(0)
    guard.on_epoch_end(0, {"d_loss": 0.5, "g_loss": math.nan})

    assert guard.model.stop_training and guard.nan.diverged_at_epoch == 1
    assert (guard.nan.last_good_epoch, saves) == (0, [])


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory, tiny_data, extractor):
    """Three epochs asked for; the real images turn NaN at the third step of epoch 2."""
    folder = tmp_path_factory.mktemp("diverged") / "work"
    made, saves = [], []
    save_model = gan_steps.save_model_atomically

    def save_and_remember(model, path):
        saves.append((path.name, [weight.copy() for weight in model.get_weights()]))
        save_model(model, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gan_steps, "GAN", recording_gan(made, poison_from_step=STEPS_PER_EPOCH + 2))
        patch.setattr(gan_steps, "save_model_atomically", save_and_remember)
        metrics = train_point(
            POINT, *tiny_data, tiny_settings(epochs=3, ema_decay=0.5), extractor, folder, RUNTIME
        )
    return {"folder": folder, "metrics": metrics, "saves": saves, "model": made[0]}


def test_nan_stops_training_and_keeps_the_last_good_generator(diverged_run):
    folder, metrics, saves = diverged_run["folder"], diverged_run["metrics"], diverged_run["saves"]

    assert (metrics["diverged_at_epoch"], metrics["epochs_completed"]) == (2, 1)
    assert metrics["collapsed_at_epoch"] == 0
    assert int(diverged_run["model"].d_optimizer.iterations) < 2 * STEPS_PER_EPOCH  # stopped mid-epoch
    assert [name for name, _ in saves] == ["generator.keras", "ema_generator.keras"]  # after epoch 1 only
    for name, saved in saves:
        on_disk = keras.models.load_model(folder / name).get_weights()
        assert all_finite(on_disk)
        for weight, expected in zip(on_disk, saved, strict=True):
            np.testing.assert_array_equal(weight, expected)
    assert not all_finite(diverged_run["model"].generator.get_weights()), "the weights in memory diverged"
    epochs = read_csv(folder / "epochs.csv")
    assert [row["epoch"] for row in epochs] == [1, 2]
    assert math.isnan(epochs[1]["d_loss"]) and "frechet_distance" not in epochs[1]
    # The point's metrics are those of the kept epoch.
    assert metrics["d_loss"] == epochs[0]["d_loss"]
    assert metrics["frechet_distance"] == epochs[0]["frechet_distance"]
    assert math.isfinite(metrics["ema_frechet_distance"])


def test_failure_messages_say_what_happened_and_what_was_kept():
    diverged = {
        "label": "learning_rate=0.01",
        "metrics": {"diverged_at_epoch": 2, "collapsed_at_epoch": 0, "epochs_completed": 1},
    }
    at_once = {
        "label": "x",
        "metrics": {"diverged_at_epoch": 1, "collapsed_at_epoch": 0, "epochs_completed": 0},
    }
    collapsed = {
        "label": "y",
        "metrics": {"diverged_at_epoch": 0, "collapsed_at_epoch": 4, "epochs_completed": 4},
    }

    message = failure_message(diverged, "warn")
    assert message.startswith("learning_rate=0.01: ") and "NaN in epoch 2" in message
    assert "kept the generator of epoch 1" in message and "gan.train.learning_rate" in message
    assert "no epoch finished" in failure_message(at_once, "warn")
    assert "collapsing from epoch 4" in failure_message(collapsed, "warn")
    assert "stopped" not in failure_message(collapsed, "warn")
    assert "stopped, kept the generator of epoch 4" in failure_message(collapsed, "stop")


@pytest.mark.parametrize(
    "diverged, collapsed, action, fails",
    [(0, 0, "stop", False), (2, 0, "warn", True), (0, 3, "warn", False), (0, 3, "stop", True)],
    ids=["fine", "nan", "collapse_warn", "collapse_stop"],
)
def test_the_train_step_decides_once_whether_a_point_failed(diverged, collapsed, action, fails):
    metrics = {"diverged_at_epoch": diverged, "collapsed_at_epoch": collapsed, "epochs_completed": 3}

    record = gan_steps.point_record(1, POINT, ["learning_rate"], metrics, action)

    assert (record["name"], record["label"]) == ("point_01", "learning_rate=0.001")
    assert record["metrics"] == metrics
    assert record["instability"] == (failure_message(record, action) if diverged or collapsed else "")
    assert record["failure"] == (record["instability"] if fails else "")
    assert grid.failures([record]) == ([record["failure"]] if fails else [])


# --- Resuming an interrupted run -----------------------------------------------------------------------------


def interrupting_progress(epoch: int, batch: int, seen: list) -> type[ProgressLog]:
    """ProgressLog that records each epoch's begin and end with the generator's weights then, and
    raises Interrupted after `batch` (1-based) of `epoch` (1-based): every epoch before it has
    fully ended (whatever the order of the other callbacks)."""

    class InterruptingProgress(ProgressLog):
        def on_epoch_begin(self, index, logs=None):
            seen.append((index + 1, [w.copy() for w in self.model.generator.get_weights()]))
            super().on_epoch_begin(index, logs)

        def on_epoch_end(self, index, logs=None):
            super().on_epoch_end(index, logs)
            seen.append((f"end {index + 1}", [w.copy() for w in self.model.generator.get_weights()]))

        def on_train_batch_end(self, index, logs=None):
            super().on_train_batch_end(index, logs)
            if self.epoch + 1 == epoch and index + 1 == batch:
                raise Interrupted(f"killed in epoch {epoch}")

    return InterruptingProgress


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, tiny_data, extractor):
    """Three epochs asked for; killed after step 2 of epoch 3; run again in the same folder."""
    root = tmp_path_factory.mktemp("resume")
    folder = root / "work"
    settings = tiny_settings(epochs=3)
    made, first, second = [], [], []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gan_steps, "GAN", recording_gan(made))
        patch.setattr(gan_steps, "ProgressLog", interrupting_progress(3, 2, first))
        with pytest.raises(Interrupted):
            train_point(POINT, *tiny_data, settings, extractor, folder, RUNTIME)
        shutil.copytree(folder, root / "interrupted")  # as the kill left it
        patch.setattr(gan_steps, "ProgressLog", interrupting_progress(0, 0, second))
        with Messages() as messages:
            metrics = train_point(POINT, *tiny_data, settings, extractor, folder, RUNTIME)
    return {
        "root": root,
        "folder": folder,
        "metrics": metrics,
        "first": first,
        "second": second,
        "models": made,
        "messages": messages.messages,
    }


def test_a_resumed_run_continues_after_the_last_finished_epoch(resumed_run):
    first, second = resumed_run["first"], resumed_run["second"]

    assert [event for event, _ in first] == [1, "end 1", 2, "end 2", 3]
    assert [event for event, _ in second] == [3, "end 3"], "the resumed run did not run epoch 3 only"
    # It starts from the weights of the end of epoch 2, not fresh ones nor those of the lost steps.
    for restored, saved in zip(second[0][1], first[3][1], strict=True):
        np.testing.assert_array_equal(restored, saved)
    assert any("resuming after epoch 2" in message for message in resumed_run["messages"])
    resumed = resumed_run["models"][1]
    # The optimizers' state came back too: 8 steps restored + the 4 of epoch 3.
    assert int(resumed.d_optimizer.iterations) == int(resumed.g_optimizer.iterations) == 3 * STEPS_PER_EPOCH


def test_a_resumed_run_records_every_epoch_and_step_once(resumed_run):
    folder, metrics = resumed_run["folder"], resumed_run["metrics"]

    epochs = read_csv(folder / "epochs.csv")
    steps = read_csv(folder / "steps.csv")

    assert [row["epoch"] for row in epochs] == [1, 2, 3]
    assert [row["step"] for row in steps] == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    assert [row["epoch"] for row in steps] == [e for e in (1, 2, 3) for _ in range(STEPS_PER_EPOCH)]
    assert all(math.isfinite(row["frechet_distance"]) for row in epochs)
    assert sorted(path.name for path in (folder / "grids").iterdir()) == [
        "epoch_001.png",
        "epoch_002.png",
        "epoch_003.png",
    ]
    assert (metrics["epochs_completed"], metrics["diverged_at_epoch"]) == (3, 0)
    assert metrics["d_loss"] == epochs[2]["d_loss"] and metrics["g_loss"] == epochs[2]["g_loss"]
    assert metrics["frechet_distance"] == epochs[2]["frechet_distance"]
    assert not (folder / "ema_generator.keras").exists()  # ema_decay 0: none


def test_an_interrupted_run_loses_at_most_the_epoch_it_was_in(resumed_run):
    folder = resumed_run["root"] / "interrupted"

    assert [row["epoch"] for row in read_csv(folder / "epochs.csv")] == [1, 2]
    assert [row["step"] for row in read_csv(folder / "steps.csv")] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    generator = keras.models.load_model(folder / "generator.keras")
    for kept, end_of_epoch_2 in zip(generator.get_weights(), resumed_run["first"][3][1], strict=True):
        np.testing.assert_array_equal(kept, end_of_epoch_2)


def test_a_run_killed_while_scoring_an_epoch_resumes_with_every_epoch_recorded(
    tmp_path, tiny_data, extractor
):
    folder, settings = tmp_path / "work", tiny_settings(epochs=3)
    calls = []

    def killed_while_scoring_epoch_2(*statistics):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted("killed while scoring epoch 2")
        return frechet_distance(*statistics)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gan_steps, "frechet_distance", killed_while_scoring_epoch_2)
        with pytest.raises(Interrupted):
            train_point(POINT, *tiny_data, settings, extractor, folder, RUNTIME)
    metrics = train_point(POINT, *tiny_data, settings, extractor, folder, RUNTIME)

    assert metrics["epochs_completed"] == 3
    assert [row["epoch"] for row in read_csv(folder / "epochs.csv")] == [1, 2, 3]
    steps = read_csv(folder / "steps.csv")
    assert [row["step"] for row in steps] == list(range(1, len(steps) + 1))


def test_a_run_killed_while_its_checkpoint_is_written_resumes_from_the_last_complete_one(
    tmp_path, tiny_data, extractor
):
    folder, settings = tmp_path / "work", tiny_settings(epochs=3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gan_steps, "ProgressLog", interrupting_progress(3, 1, []))
        with pytest.raises(Interrupted):
            train_point(POINT, *tiny_data, settings, extractor, folder, RUNTIME)
    checkpoint = folder / CHECKPOINT
    assert json.loads((checkpoint / MANIFEST).read_text()) == {"epoch": 2, "file": "epoch_0002.npz"}
    assert sorted(path.name for path in checkpoint.iterdir()) == [MANIFEST, "epoch_0002.npz"]
    # A kill while epoch 3's checkpoint was being written leaves half a file beside the complete one.
    complete = (checkpoint / "epoch_0002.npz").read_bytes()
    (checkpoint / ".epoch_0003.npz.partial").write_bytes(complete[: len(complete) // 2])

    with Messages() as messages:
        metrics = train_point(POINT, *tiny_data, settings, extractor, folder, RUNTIME)

    assert any("resuming after epoch 2" in message for message in messages.messages)
    assert metrics["epochs_completed"] == 3
    assert [row["epoch"] for row in read_csv(folder / "epochs.csv")] == [1, 2, 3]


def test_a_run_whose_folder_a_newer_run_claims_stops_without_writing_and_the_newer_resumes(
    tmp_path, tiny_data, extractor
):
    """A worker dies, its step process lives on; the retry claims the shared folder during that
    process's epoch 2: the old process stops at the epoch's end, its epoch 2 unwritten."""
    folder, settings = tmp_path / "work", tiny_settings(epochs=3)

    class ClaimedInEpoch2(ProgressLog):
        def on_train_batch_end(self, index, logs=None):
            super().on_train_batch_end(index, logs)
            if self.epoch == 1 and index == 0:
                claim_folder(folder)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gan_steps, "ProgressLog", ClaimedInEpoch2)
        with pytest.raises(GanError, match="took over .*stops without writing its epoch 2"):
            train_point(POINT, *tiny_data, settings, extractor, folder, RUNTIME)
    assert [row["epoch"] for row in read_csv(folder / "epochs.csv")] == [1]
    assert json.loads((folder / CHECKPOINT / MANIFEST).read_text())["epoch"] == 1
    assert sorted(path.name for path in (folder / "grids").iterdir()) == ["epoch_001.png"]

    with Messages() as messages:
        metrics = train_point(POINT, *tiny_data, settings, extractor, folder, RUNTIME)

    assert any("resuming after epoch 1" in message for message in messages.messages)
    assert metrics["epochs_completed"] == 3
    assert [row["epoch"] for row in read_csv(folder / "epochs.csv")] == [1, 2, 3]
    assert not list(folder.rglob(".*partial*")), "a half-written file was left behind"


def test_a_resumed_run_that_diverges_keeps_the_epochs_it_had(resumed_run, tiny_data, extractor, tmp_path):
    folder = tmp_path / "work"
    shutil.copytree(resumed_run["root"] / "interrupted", folder)  # killed in epoch 3
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gan_steps, "GAN", recording_gan([], poison_from_step=2 * STEPS_PER_EPOCH + 1))
        metrics = train_point(POINT, *tiny_data, tiny_settings(epochs=3), extractor, folder, RUNTIME)

    assert metrics["diverged_at_epoch"] == 3
    assert metrics["epochs_completed"] == 2
    epochs = read_csv(folder / "epochs.csv")
    assert metrics["frechet_distance"] == epochs[1]["frechet_distance"]


def test_a_resumed_run_continues_exactly_as_one_that_was_not_interrupted(tmp_path, tiny_data, extractor):
    """Two epochs straight vs one epoch, then a new run resuming for the second: the same state of all
    three networks and both optimizers, so everything the next epoch depends on came back (weights,
    Adam's moments and step counts, the seeds of the latents, the label noise and the dropout).

    The images are fed in order here. In training they are shuffled, and tf.data draws a new order for
    each iterator Keras creates; a resumed fit() starts a new dataset, so its epochs see the images in
    another (equally random) order than the uninterrupted run would have: the state is what carries over.
    """
    made = []
    settings = tiny_settings(epochs=2, ema_decay=0.9)

    def in_order(pixels, batch_size, shuffle, seed=None):
        return image_dataset(pixels, batch_size, shuffle=False)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gan_steps, "image_dataset", in_order)
        patch.setattr(gan_steps, "GAN", recording_gan(made, same_start=True))
        straight = train_point(POINT, *tiny_data, settings, extractor, tmp_path / "straight", RUNTIME)
        one_epoch = dataclasses.replace(settings, epochs=1)
        train_point(POINT, *tiny_data, one_epoch, extractor, tmp_path / "resumed", RUNTIME)
        with Messages() as messages:
            resumed = train_point(POINT, *tiny_data, settings, extractor, tmp_path / "resumed", RUNTIME)

    assert any("resuming after epoch 1" in message for message in messages.messages)
    uninterrupted, first_epoch, continued = made
    # It trained on from there.
    assert all(changed(values(first_epoch.generator.weights), values(continued.generator.weights)))
    for network in ("generator", "ema_generator", "discriminator"):
        for expected, actual in zip(
            values(getattr(uninterrupted, network).variables),
            values(getattr(continued, network).variables),
            strict=True,
        ):
            np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-7, err_msg=network)
    for optimizer in ("d_optimizer", "g_optimizer"):
        for expected, actual in zip(
            values(getattr(uninterrupted, optimizer).variables),
            values(getattr(continued, optimizer).variables),
            strict=True,
        ):
            np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-7, err_msg=optimizer)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(continued.seed_generator.state),
        ops.convert_to_numpy(uninterrupted.seed_generator.state),
    )
    for key in ("d_loss", "g_loss", "frechet_distance", "ema_frechet_distance"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-6), key


# --- Mixed precision ------------------------------------------------------------------------------------------


def test_mixed_precision_trains_on_cpu_with_loss_scaling(
    tmp_path, tiny_data, extractor, restore_float32_policy
):
    made = []
    runtime = RUNTIME.model_copy(update={"dtype_policy": "mixed_float16"})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gan_steps, "GAN", recording_gan(made))
        settings = dataclasses.replace(tiny_settings(epochs=1, ema_decay=0.9), discriminator_width=0.25)
        metrics = train_point(POINT, *tiny_data, settings, extractor, tmp_path, runtime)

    (model,) = made
    convolutions = [layer for layer in model.discriminator.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions[0].filters == 16  # 64 x discriminator_width, apart from the generator's width
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    assert isinstance(model.d_optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.g_optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.generator.layers[1].compute_dtype == "float16"
    assert (metrics["epochs_completed"], metrics["diverged_at_epoch"]) == (1, 0)
    for key in ("d_loss", "g_loss", "frechet_distance", "ema_frechet_distance"):
        assert math.isfinite(metrics[key]), key
    generator = keras.models.load_model(tmp_path / "generator.keras")
    pixels = generate(generator, fixed_latents(3, LATENT_DIM, 0))
    assert pixels.dtype == np.float32 and np.isfinite(pixels).all()


# --- Params and bad input ---------------------------------------------------------------------------------------


def parse_with(repo_params: dict, change) -> GanParams:
    params = copy.deepcopy(repo_params)
    change(params["gan"])
    return parse_section(params, "gan", GanParams)


def test_the_repo_params_parse(repo_params):
    params = parse_section(repo_params, "gan", GanParams)

    assert params.data.image_size % 4 == 0
    assert grid.expand(
        GridPoint,
        learning_rate=params.train.learning_rate,
        label_noise=params.train.label_noise,
        dropout=params.model.dropout,
    )


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda gan_params: gan_params["data"].update(image_size=30), "gan.data.image_size"),
        (lambda gan_params: gan_params["model"].update(latent_dim=0), "gan.model.latent_dim"),
        (lambda gan_params: gan_params["model"].update(latent_dim=[0]), "gan.model.latent_dim"),
        (lambda gan_params: gan_params["data"].update(dataset="folder", folder=""), "gan.data.folder"),
        (lambda gan_params: gan_params["train"].update(label_noise=[0.05, -0.1]), "gan.train.label_noise.1"),
        (lambda gan_params: gan_params["train"].update(learning_rate=[0.0]), "gan.train.learning_rate.0"),
        (lambda gan_params: gan_params["train"].update(learning_rate=[]), "gan.train.learning_rate"),
        (
            lambda gan_params: gan_params["train"]["instability"].update(action="panic"),
            "gan.train.instability.action",
        ),
        (lambda gan_params: gan_params["train"].update(ema_decay=1.0), "gan.train.ema_decay"),
        (lambda gan_params: gan_params["model"].update(dropout=[1.0]), "gan.model.dropout.0"),
        (lambda gan_params: gan_params["model"].update(width=0.0), "gan.model.width"),
        (lambda gan_params: gan_params["score"].update(num_images=1), "gan.score.num_images"),
        (lambda gan_params: gan_params["score"].update(confidence=0.0), "gan.score.confidence"),
        (lambda gan_params: gan_params["score"].update(confidence=1.5), "gan.score.confidence"),
        (lambda gan_params: gan_params["train"].update(adam_beta_1=1.0), "gan.train.adam_beta_1"),
    ],
    ids=[
        "image_size_30",
        "latent_dim_0",
        "latent_dim_list",
        "empty_folder",
        "negative_label_noise",
        "learning_rate_0",
        "no_learning_rate",
        "unknown_action",
        "ema_decay_1",
        "dropout_1",
        "width_0",
        "one_score_image",
        "confidence_0",
        "confidence_above_1",
        "adam_beta_1_1",
    ],
)
def test_bad_params_are_rejected_naming_the_key(repo_params, change, key):
    with pytest.raises(ParamsError) as error:
        parse_with(repo_params, change)

    assert f"{key}:" in str(error.value), str(error.value)


def test_image_size_error_suggests_the_nearest_multiples_of_4(repo_params):
    with pytest.raises(ParamsError, match=r"multiple of 4.*e\.g\. 28 or 32.*got 30"):
        parse_with(repo_params, lambda gan_params: gan_params["data"].update(image_size=30))


def test_an_unknown_key_is_rejected_with_a_suggestion(repo_params):
    with pytest.raises(ParamsError, match=r"unknown key gan\.train\.label_noize.*did you mean 'label_noise'"):
        parse_with(repo_params, lambda gan_params: gan_params["train"].update(label_noize=[0.1]))


def test_grid_points_are_the_product_of_rates_noises_and_dropouts():
    points = grid.expand(GridPoint, learning_rate=[1e-4, 1e-3], label_noise=[0.0, 0.1], dropout=[0.2])

    assert points == [
        GridPoint(1e-4, 0.0, 0.2),
        GridPoint(1e-4, 0.1, 0.2),
        GridPoint(1e-3, 0.0, 0.2),
        GridPoint(1e-3, 0.1, 0.2),
    ]
    assert grid.varying_fields(points) == ["learning_rate", "label_noise"]
    assert grid.label(points[3], ["learning_rate", "label_noise"]) == "learning_rate=0.001, label_noise=0.1"
    assert grid.label(points[0], []) == "learning_rate=0.0001, label_noise=0, dropout=0.2"


def test_prepare_data_conforms_a_folder_of_mixed_sizes_and_modes(tmp_path):
    folder = tmp_path / "faces"  # loose images: one class, as the book's CelebA folder
    save(Image.new("L", (20, 30), 100), folder / "grey.png")
    save(Image.new("RGB", (40, 40), (200, 30, 30)), folder / "red.jpg")
    save(Image.new("RGBA", (50, 20), (0, 0, 255, 255)), folder / "blue.png")
    palette = Image.new("P", (17, 17), 0)
    palette.putpalette([90, 90, 90] * 256)
    save(palette, folder / "palette.png")
    (folder / "notes.txt").write_text("not an image")
    paths = gan_paths(tmp_path / "repo")

    summary = prepare_data(paths, folder_params(folder), seed=0)

    assert summary == {
        "dataset": "folder",
        "classes": ["faces"],
        "image_shape": [16, 16, 3],
        "num_train": 3,
        "num_test": 1,
    }
    train, test = load_split(paths.data / "train.npz"), load_split(paths.data / "test.npz")
    assert train.images.shape == (3, 16, 16, 3) and test.images.shape == (1, 16, 16, 3)
    assert train.images.dtype == np.uint8
    colours = {tuple(image[8, 8]) for image in (*train.images, *test.images)}
    assert len(colours) == 4
    assert json.loads((paths.data / "classes.json").read_text()) == summary

    grey = prepare_data(paths, folder_params(folder, channels=1, image_size=8, max_images=2), seed=0)
    assert (grey["image_shape"], grey["num_train"], grey["num_test"]) == ([8, 8, 1], 2, 1)
    assert load_split(paths.data / "train.npz").images.shape == (2, 8, 8, 1)


def test_prepare_data_from_fashion_mnist_caps_the_training_images(tmp_path, tiny_data):
    paths = gan_paths(tmp_path)
    params = GanDataParams(
        dataset="fashion_mnist", folder="", image_size=28, channels=1, test_split=0.1, max_images=100
    )

    summary = prepare_data(paths, params, seed=0)

    assert (summary["num_train"], summary["num_test"], summary["image_shape"]) == (100, 10000, [28, 28, 1])
    assert summary["classes"][9] == "Ankle boot"
    np.testing.assert_array_equal(load_split(paths.data / "train.npz").images[:64], tiny_data[0].images[:64])


def test_prepare_data_from_a_folder_without_readable_images_fails(tmp_path):
    folder = tmp_path / "nothing"
    (folder / "class").mkdir(parents=True)
    (folder / "class" / "broken.png").write_bytes(b"not an image at all")
    paths = gan_paths(tmp_path / "repo")

    with pytest.raises(DatasetError, match="no readable images") as error:
        prepare_data(paths, folder_params(folder), seed=0)

    assert str(folder) in str(error.value)
    assert not paths.data.exists()


def test_train_grid_before_the_classifier_step_names_the_step(tmp_path):
    with pytest.raises(GanError, match="run the classifier step first"):
        train_grid(gan_paths(tmp_path), **tiny_grid(), runtime=RUNTIME, root=tmp_path)


def test_train_grid_with_fewer_than_two_test_images_says_so(classified, tmp_path, tiny_data):
    source, _ = classified
    paths = gan_paths(tmp_path)
    shutil.copytree(source.classifier, paths.classifier)
    write_splits(paths, tiny_data[0], Split(tiny_data[1].images[:1], tiny_data[1].labels[:1]))

    with pytest.raises(GanError, match="at least 2 held-out real images"):
        train_grid(paths, **tiny_grid(), runtime=RUNTIME, root=tmp_path)


# --- The command line -------------------------------------------------------------------------------------------


def write_params(root: Path, repo_params: dict, change) -> None:
    params = copy.deepcopy(repo_params)
    change(params["gan"])
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(dump_yaml(params), encoding="utf-8")


def one_error_line(capsys) -> str:
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in line
    return line


def test_cli_train_before_the_classifier_step_prints_one_error_line(tmp_path, repo_params, capsys):
    write_params(tmp_path, repo_params, lambda gan_params: None)

    assert run_steps({"train": train_step}, None, ["train", "--root", str(tmp_path)]) == 2
    assert "run the classifier step first" in one_error_line(capsys)


def test_cli_reports_bad_params_as_one_error_line(tmp_path, repo_params, capsys):
    write_params(tmp_path, repo_params, lambda gan_params: gan_params["model"].update(latent_dim=0))

    assert run_steps({"data": data_step}, None, ["data", "--root", str(tmp_path)]) == 2
    assert "gan.model.latent_dim" in one_error_line(capsys)


def test_cli_data_step_on_an_empty_folder_prints_one_error_line(tmp_path, repo_params, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    write_params(
        tmp_path / "repo",
        repo_params,
        lambda gan_params: gan_params["data"].update(dataset="folder", folder=str(empty)),
    )

    assert run_steps({"data": data_step}, None, ["data", "--root", str(tmp_path / "repo")]) == 2
    line = one_error_line(capsys)
    assert "no readable images" in line and str(empty) in line


def test_cli_classifier_step_before_the_data_step_prints_one_error_line(tmp_path, repo_params, capsys):
    write_params(tmp_path, repo_params, lambda gan_params: None)

    assert run_steps({"classifier": classifier_step}, None, ["classifier", "--root", str(tmp_path)]) == 2
    assert "run the data step first" in one_error_line(capsys)


# --- The train step end to end ---------------------------------------------------------------------------------


def test_work_folder_depends_on_the_point_every_setting_and_the_data(tmp_path):
    data_path = tmp_path / "train.npz"
    data_path.write_bytes(b"images")
    settings = {"latent_dim": 8, "epochs": 2, "score": {"num_images": 32}, "seed": 0}
    folder = work_folder(tmp_path, POINT, settings, data_path)

    assert folder == work_folder(tmp_path, POINT, dict(settings), data_path)
    assert folder.parent == tmp_path / ".gendl" / "gan"
    others = {
        work_folder(tmp_path, GridPoint(2e-3, 0.05, 0.2), settings, data_path),
        work_folder(tmp_path, GridPoint(1e-3, 0.1, 0.2), settings, data_path),
        work_folder(tmp_path, GridPoint(1e-3, 0.05, 0.3), settings, data_path),
        work_folder(tmp_path, POINT, {**settings, "epochs": 3}, data_path),
        work_folder(tmp_path, POINT, {**settings, "seed": 1}, data_path),
        work_folder(tmp_path, POINT, {**settings, "score": {"num_images": 64}}, data_path),
    }
    data_path.write_bytes(b"other images")
    others.add(work_folder(tmp_path, POINT, settings, data_path))
    assert len(others) == 7 and folder not in others


@pytest.mark.parametrize(
    "change",
    [
        {"latent_dim": 16},
        {"epochs": 3},
        {"ema_decay": 0.5},
        {"num_images": 16},
        {"width": 0.25},
    ],
    ids=["latent_dim", "epochs", "ema_decay", "num_images", "width"],
)
def test_train_grid_works_in_another_folder_when_a_setting_changes(classified, tmp_path, change):
    source, _ = classified
    paths = gan_paths(tmp_path)
    for folder in (source.data, source.classifier):
        shutil.copytree(folder, tmp_path / folder.relative_to(source.data.parents[1]))
    base = tiny_grid()
    changed_params = {**base, "settings": dataclasses.replace(base["settings"], **change)}
    folders = []

    def first_folder(*args):
        folders.append(work_folder(*args))
        raise Interrupted("stop before training")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gan_steps, "work_folder", first_folder)
        for params in (base, changed_params):
            with pytest.raises(Interrupted):
                train_grid(paths, **params, runtime=RUNTIME, root=tmp_path)

    assert folders[0] != folders[1]


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory, classified):
    """Two learning rates, two epochs each, with a moving-average generator."""
    source, _ = classified
    root = tmp_path_factory.mktemp("grid")
    paths = gan_paths(root)
    for folder in (source.data, source.classifier):
        shutil.copytree(folder, root / folder.relative_to(source.data.parents[1]))
    params = tiny_grid(epochs=2, ema_decay=0.9, learning_rate=(1e-3, 2e-3))
    folders, judges = [], []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            gan_steps, "work_folder", lambda *args: folders.append(work_folder(*args)) or folders[-1]
        )
        patch.setattr(
            gan_steps, "confidence_score", lambda *args: judges.append(confidence_score(*args)) or judges[-1]
        )
        results = train_grid(paths, **params, runtime=RUNTIME, root=root)
    return {
        "root": root,
        "paths": paths,
        "params": params,
        "results": results,
        "work_folders": folders,
        "judges": judges,
    }


def test_train_grid_writes_models_records_and_metrics_per_point(grid_run):
    paths, results = grid_run["paths"], grid_run["results"]

    assert [(result["name"], result["label"]) for result in results] == [
        ("point_00", "learning_rate=0.001"),
        ("point_01", "learning_rate=0.002"),
    ]
    assert json.loads((paths.training / "points.json").read_text()) == json.loads(json.dumps(results))
    train_metrics = json.loads(paths.train_metrics.read_text())
    assert set(train_metrics) == {"point_00", "point_01"}
    for name, metrics in train_metrics.items():
        assert (metrics["epochs_completed"], metrics["diverged_at_epoch"]) == (2, 0)
        assert metrics["collapsed_at_epoch"] == 0
        assert math.isfinite(metrics["frechet_distance"]) and metrics["frechet_distance"] >= 0
        assert math.isfinite(metrics["ema_frechet_distance"])
        assert sorted(path.name for path in (paths.models / name).iterdir()) == [
            "ema_generator.keras",
            "generator.keras",
        ]
        point = paths.training / name
        assert sorted(path.name for path in point.iterdir()) == ["epochs.csv", "grids", "steps.csv"]
        assert sorted(path.name for path in (point / "grids").iterdir()) == [
            "ema_epoch_001.png",
            "ema_epoch_002.png",
            "epoch_001.png",
            "epoch_002.png",
        ]
        assert png_pixels(point / "grids" / "epoch_002.png").shape == (4 * TILE, 4 * TILE, 3)
        epochs = read_csv(point / "epochs.csv")
        assert [row["epoch"] for row in epochs] == [1, 2]
        assert metrics["frechet_distance"] == epochs[-1]["frechet_distance"]
        assert len(read_csv(point / "steps.csv")) == 2 * STEPS_PER_EPOCH
        for (
            row
        ) in epochs:  # the classifier's verdict every epoch, raw and moving average, beside the real share
            assert 0.0 <= row["confident_share"] <= 1.0 and 0.0 <= row["ema_confident_share"] <= 1.0
            assert 1.0 <= row["effective_classes"] <= 10.0 and 1.0 <= row["ema_effective_classes"] <= 10.0
            assert row["real_confident_share"] == grid_run["judges"][0].real_share
            assert row["real_effective_classes"] == grid_run["judges"][0].real_classes
        assert metrics["confident_share"] == epochs[-1]["confident_share"]
    # The comparison: each point's kept grid and its moving average's (keep: last), labelled with the epoch.
    finals = [
        (
            f"{result['label']}{suffix}, epoch 2",
            images.read_image(paths.training / result["name"] / "grids" / grid),
        )
        for result in results
        for grid, suffix in (("epoch_002.png", ""), ("ema_epoch_002.png", " (EMA)"))
    ]
    np.testing.assert_array_equal(png_pixels(paths.training / "comparison.png"), images.labelled_grid(finals))


def test_train_grid_measures_the_real_confident_share_once_on_the_held_out_images(grid_run):
    (judge,) = grid_run["judges"]  # one for both points
    paths, num_images = grid_run["paths"], grid_run["params"]["settings"].num_images
    real = load_split(paths.data / "test.npz").images[:num_images]
    probabilities = features_of(keras.models.load_model(paths.classifier / "classifier.keras"), real)

    assert judge.threshold == 0.9
    assert judge.real_share == confident_share(probabilities, 0.9)
    assert judge.real_classes == effective_classes(probabilities)


def test_train_grid_removes_its_work_folders(grid_run):
    work = grid_run["root"] / ".gendl" / "gan"

    assert len(grid_run["work_folders"]) == 2
    assert all(folder.parent == work for folder in grid_run["work_folders"])
    assert not work.exists() or not list(work.iterdir())


def test_each_grid_point_works_in_its_own_folder(grid_run):
    first, second = grid_run["work_folders"]

    assert first != second


def interrupting_point(learning_rate: float, epoch: int) -> type[ProgressLog]:
    """ProgressLog that raises Interrupted after the first step of `epoch` (1-based) of the point with
    `learning_rate`: the epochs before it have fully ended."""

    class InterruptingProgress(ProgressLog):
        def on_train_batch_end(self, index, logs=None):
            super().on_train_batch_end(index, logs)
            rate = float(ops.convert_to_numpy(self.model.d_optimizer.learning_rate))
            if self.epoch + 1 == epoch and rate == pytest.approx(learning_rate):
                raise Interrupted(f"killed in epoch {epoch} of learning_rate={learning_rate}")

    return InterruptingProgress


def test_an_interrupted_grid_resumes_only_the_point_that_was_interrupted(grid_run, tmp_path, caplog):
    source, root = grid_run["paths"], tmp_path
    paths = gan_paths(root)
    for folder in (source.data, source.classifier):
        shutil.copytree(folder, root / folder.relative_to(source.data.parents[1]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gan_steps, "ProgressLog", interrupting_point(2e-3, epoch=2))  # point_01, in epoch 2
        with pytest.raises(Interrupted):
            train_grid(paths, **grid_run["params"], runtime=RUNTIME, root=root)

    with caplog.at_level(logging.INFO, logger="tasks.gan"):
        results = train_grid(paths, **grid_run["params"], runtime=RUNTIME, root=root)

    messages = [record.getMessage() for record in caplog.records]
    second = next(index for index, message in enumerate(messages) if message.startswith("point 2/2"))
    assert not any("resuming" in message for message in messages[:second]), "point_00 resumed"
    assert any("resuming after epoch 1" in message for message in messages[second:])
    uninterrupted = grid_run["results"][0]["metrics"]
    assert results[0]["metrics"]["d_loss"] == pytest.approx(uninterrupted["d_loss"], rel=1e-3)


def test_the_saved_generator_draws_the_last_grid(grid_run):
    paths = grid_run["paths"]
    generator = keras.models.load_model(paths.models / "point_01" / "generator.keras")
    ema_generator = keras.models.load_model(paths.models / "point_01" / "ema_generator.keras")
    latents = fixed_latents(16, LATENT_DIM, RUNTIME.seed)

    drawn = images.mosaic(generate(generator, latents))
    drawn_ema = images.mosaic(generate(ema_generator, latents))

    grids = paths.training / "point_01" / "grids"
    np.testing.assert_array_equal(png_pixels(grids / "epoch_002.png"), images.to_uint8(drawn))
    np.testing.assert_array_equal(png_pixels(grids / "ema_epoch_002.png"), images.to_uint8(drawn_ema))
    assert not np.array_equal(drawn, drawn_ema)


def test_a_second_train_grid_replaces_the_outputs_of_the_first(grid_run, tmp_path):
    source, root = grid_run["paths"], tmp_path
    paths = gan_paths(root)
    for folder in (source.data, source.classifier, source.models, source.training):
        shutil.copytree(folder, root / folder.relative_to(source.data.parents[1]))
    storage.write_json(paths.training / "stale.json", {})
    params = grid_run["params"]
    one_point = {**params, "learning_rates": [1e-3]}

    (result,) = train_grid(paths, **one_point, runtime=RUNTIME, root=root)

    assert result["name"] == "point_00"
    assert result["label"] == "learning_rate=0.001, label_noise=0.05, dropout=0.2"  # nothing varies
    assert not (paths.training / "stale.json").exists()
    assert not (paths.models / "point_01").exists() and not (paths.training / "point_01").exists()
    # The same point, seed and data as the first grid's point_00: the same run.
    first = json.loads(source.train_metrics.read_text())["point_00"]
    assert result["metrics"]["frechet_distance"] == pytest.approx(first["frechet_distance"], rel=1e-3)
    assert result["metrics"]["d_loss"] == pytest.approx(first["d_loss"], rel=1e-3)


# --- The kept epoch and early stopping -----------------------------------------------------------

ROWS = [
    {
        "epoch": 1,
        "frechet_distance": 30.0,
        "ema_frechet_distance": 40.0,
        "confident_share": 0.1,
        "d_loss": 0.7,
    },
    {
        "epoch": 2,
        "frechet_distance": 20.0,
        "ema_frechet_distance": 35.0,
        "confident_share": 0.3,
        "d_loss": 0.6,
    },
    {
        "epoch": 3,
        "frechet_distance": 25.0,
        "ema_frechet_distance": 30.0,
        "confident_share": 0.2,
        "d_loss": 0.5,
    },
]


def test_each_generator_keeps_its_own_best_epoch_or_the_last():
    assert [gan_steps.kept_epoch(ROWS[:n], "best") for n in (1, 2, 3)] == [1, 2, 2]
    assert [gan_steps.kept_epoch(ROWS[:n], "best", "ema_") for n in (1, 2, 3)] == [1, 2, 3]
    assert gan_steps.kept_epoch(ROWS, "last") == 3
    assert gan_steps.kept_epoch([{"epoch": 1, "d_loss": math.nan}], "best") == 0  # nothing scored

    metrics = gan_steps.kept_scores(ROWS, last_good_epoch=3, keep="best")

    assert (metrics["kept_epoch"], metrics["frechet_distance"], metrics["confident_share"]) == (2, 20.0, 0.3)
    assert (metrics["ema_kept_epoch"], metrics["ema_frechet_distance"]) == (3, 30.0)
    assert (metrics["best_frechet_distance"], metrics["final_frechet_distance"]) == (20.0, 25.0)
    assert metrics["d_loss"] == 0.5, "the losses are the last good epoch's"
    last = gan_steps.kept_scores(ROWS, last_good_epoch=2, keep="last")  # epoch 3 diverged
    assert (last["kept_epoch"], last["frechet_distance"], last["final_frechet_distance"]) == (2, 20.0, 20.0)


def test_the_kept_generator_is_the_one_of_its_best_epoch(tmp_path, tiny_data, extractor):
    settings = tiny_settings(epochs=3, ema_decay=0.9, keep="best")

    metrics = train_point(POINT, *tiny_data, settings, extractor, tmp_path, RUNTIME)

    epochs = read_csv(tmp_path / "epochs.csv")
    for prefix in ("", "ema_"):
        scores = [row[f"{prefix}frechet_distance"] for row in epochs]
        kept = metrics[f"{prefix}kept_epoch"]
        assert kept == 1 + scores.index(min(scores)) and metrics[f"{prefix}frechet_distance"] == min(scores)
        assert metrics[f"final_{prefix}frechet_distance"] == scores[-1]
        # The saved generator draws, from the fixed latents, the grid recorded at its kept epoch.
        generator = keras.models.load_model(tmp_path / f"{prefix}generator.keras")
        latents = fixed_latents(settings.grid_images, LATENT_DIM, RUNTIME.seed)
        drawn = images.to_uint8(images.mosaic(generate(generator, latents))).astype(int)
        for epoch in range(1, 4):
            recorded = images.read_image(tmp_path / "grids" / f"{prefix}epoch_{epoch:03d}.png")
            same = np.abs(drawn - recorded[..., : drawn.shape[-1]].astype(int)).max() <= 1
            assert same == (epoch == kept), f"{prefix}generator vs epoch {epoch}'s grid"


def test_early_stopping_on_the_frechet_distance(tmp_path, tiny_data, extractor):
    settings = tiny_settings(epochs=4, ema_decay=0.9, patience=1)

    metrics = train_point(POINT, *tiny_data, settings, extractor, tmp_path, RUNTIME)

    scores = [row["ema_frechet_distance"] for row in read_csv(tmp_path / "epochs.csv")]
    worse = [epoch for epoch in range(2, len(scores) + 1) if scores[epoch - 1] >= min(scores[: epoch - 1])]
    if worse:  # patience 1: training ends with the first epoch that is no better than the best before it
        assert metrics["stopped_early_at_epoch"] == worse[0] == len(scores)
    else:
        assert metrics["stopped_early_at_epoch"] == 0 and len(scores) == 4
