"""Variational autoencoder: the KL term, the sampler and the reconstruction loss against closed
forms and NumPy, training on a Fashion-MNIST subset (losses fall, beta weights the KL, compiled,
mixed precision and a mirrored strategy on CPU, the NaN guard), the latent grid and its axes,
concept vectors, image folders and other bad input, params validation, the command line and the
sample step end to end."""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import socket
import urllib.error
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from PIL import Image

from tasks import grid, image_data, storage
from tasks.image_data import (
    CLASS_NAMES,
    DatasetError,
    Split,
    conform,
    load_keras_dataset,
    load_split,
    prepare_image_data,
    read_folder,
    save_split,
    split_folder,
)
from tasks.images import AXIS_LABEL_MARGIN, mosaic, save_image, to_uint8
from tasks.params import (
    BlowupParams,
    EpochChoiceParams,
    ParamsError,
    RuntimeParams,
    dump_yaml,
    load_params,
    parse_section,
)
from tasks.steps import run_steps
from tasks.storage import read_history
from tasks.vae import data as vae_data
from tasks.vae import model as vae_model
from tasks.vae import steps as vae_steps
from tasks.vae.latent import (
    DATA_QUANTILE,
    LatentAxes,
    axes_steps,
    axis_range_labels,
    class_examples,
    concept_vector,
    decode,
    encode,
    grid_latents,
    grid_steps,
    interpolate,
    labelled_latent_grid,
    latent_axes,
    latent_grid,
    nearest_mean_share,
)
from tasks.vae.model import (
    LOSS_TERMS,
    GridPoint,
    Sampler,
    build_decoder,
    kl_divergence,
    reconstruction_loss,
    train_point,
)
from tasks.vae.params import ConceptParams, VaeDataParams, VaeParams, VaePaths, VaeSampleParams
from tasks.vae.steps import VaeError, sample_point, sample_points, train_grid

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNTIME = RuntimeParams(
    seed=0, dtype_policy="float32", jit_compile=False, memory_growth=True, distribute="auto"
)
# The book's choice: the last epoch's model (the metrics below are the last epoch's).
KEEP_LAST = EpochChoiceParams(keep="last", patience=0)
BLOWUP = BlowupParams(factor=1.5, steps=50)
SNEAKER, ANKLE_BOOT = 7, 9  # Fashion-MNIST labels
TILE = 28  # Fashion-MNIST images are 28 x 28
# Small sample settings: a 6 x 6 latent grid, 7 reconstructions, Sneaker -> Ankle boot at 3 strengths.
SAMPLE = VaeSampleParams(
    grid_size=6,
    grid_axes="latent",
    grid_span="data",
    grid_scale=1.5,
    num_reconstructions=7,
    interpolation_steps=4,
    concepts=[ConceptParams(source="Sneaker", target="Ankle boot")],
    concept_strengths=[0.0, 1.0, 2.0],
    concept_images=5,
)


# --- Helpers and shared fixtures ------------------------------------------------------------------


def recording_vae(made: list, eager_flags: list, poison_from_step: int | None = None) -> type[vae_model.VAE]:
    """A VAE subclass that remembers its instances and whether its loss was computed eagerly; with
    `poison_from_step`, every loss (and so every gradient and weight) turns NaN from that step on."""

    class RecordingVAE(vae_model.VAE):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

        def losses_of(self, images, training):
            eager_flags.append(tf.executing_eagerly())
            losses = super().losses_of(images, training)
            if poison_from_step is None:
                return losses
            poison = ops.where(self.optimizer.iterations >= poison_from_step, np.nan, 1.0)
            return tuple(loss * poison for loss in losses)

    return RecordingVAE


def all_finite(weights: list[np.ndarray]) -> bool:
    return all(np.isfinite(weight).all() for weight in weights)


def subset(split: Split, count: int, classes: tuple[int, ...] = ()) -> Split:
    """The first `count` images (of `classes`, if given), conformed to (n, 28, 28, 1)."""
    chosen = np.flatnonzero(np.isin(split.labels, classes) if classes else np.ones(len(split.labels), bool))
    chosen = chosen[:count]
    return Split(conform(split.images[chosen], TILE, 1), split.labels[chosen])


def write_data(paths: VaePaths, train: Split, test: Split, class_names: list[str]) -> None:
    """What the data step leaves for the train and sample steps."""
    save_split(train, paths.data / "train.npz")
    save_split(test, paths.data / "test.npz")
    storage.write_json(
        paths.data / "classes.json",
        {
            "dataset": "fashion_mnist",
            "classes": class_names,
            "image_shape": list(train.images.shape[1:]),
            "num_train": len(train.images),
            "num_test": len(test.images),
        },
    )


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG that Pillow can fully decode."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


@pytest.fixture(scope="module")
def fashion() -> tuple[Split, Split]:
    """Fashion-MNIST from the Keras cache copy (there is no network in tests)."""
    return load_keras_dataset("fashion_mnist", "vae")


@pytest.fixture(scope="module")
def repo_params() -> dict:
    return load_params(REPO_ROOT)


@pytest.fixture
def restore_float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


# --- The KL term, the sampler and the reconstruction loss ----------------------------------------------


def numpy_kl(z_mean: np.ndarray, z_log_var: np.ndarray) -> np.ndarray:
    """0.5 * sum(sigma^2 + mu^2 - 1 - ln sigma^2): KL(N(mu, sigma^2) || N(0, 1)) summed over dims."""
    sigma_squared = np.exp(np.asarray(z_log_var, np.float64))
    mu = np.asarray(z_mean, np.float64)
    return 0.5 * np.sum(sigma_squared + mu**2 - 1.0 - np.log(sigma_squared), axis=-1)


@pytest.mark.parametrize(
    "z_mean, z_log_var",
    [
        ([[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]),
        ([[1.0, -2.0, 0.5]], [[0.0, 0.0, 0.0]]),
        ([[0.0, 0.0]], [[math.log(4.0), -1.5]]),
        ([[0.3, -1.2], [2.0, 0.1]], [[math.log(4.0), -1.5], [0.7, -3.0]]),
    ],
)
def test_kl_divergence_equals_the_closed_form(z_mean, z_log_var):
    z_mean, z_log_var = np.asarray(z_mean, np.float32), np.asarray(z_log_var, np.float32)

    kl = ops.convert_to_numpy(kl_divergence(z_mean, z_log_var))

    assert kl.shape == (len(z_mean),)  # one value per example
    np.testing.assert_allclose(kl, numpy_kl(z_mean, z_log_var), rtol=1e-5, atol=1e-6)


def test_kl_divergence_is_zero_for_the_prior_itself():
    kl = ops.convert_to_numpy(kl_divergence(np.zeros((3, 5), np.float32), np.zeros((3, 5), np.float32)))

    np.testing.assert_array_equal(kl, np.zeros(3))


def test_kl_divergence_is_summed_not_averaged_over_latent_dimensions():
    rng = np.random.default_rng(0)
    z_mean = rng.normal(size=(4, 3)).astype(np.float32)
    z_log_var = rng.normal(size=(4, 3)).astype(np.float32)

    kl = ops.convert_to_numpy(kl_divergence(z_mean, z_log_var))
    doubled = ops.convert_to_numpy(
        kl_divergence(np.concatenate([z_mean, z_mean], 1), np.concatenate([z_log_var, z_log_var], 1))
    )
    with_prior_dims = ops.convert_to_numpy(
        kl_divergence(np.pad(z_mean, ((0, 0), (0, 5))), np.pad(z_log_var, ((0, 0), (0, 5))))
    )

    assert (kl > 0).all()
    np.testing.assert_allclose(doubled, 2.0 * kl, rtol=1e-6)
    np.testing.assert_allclose(with_prior_dims, kl, rtol=1e-6)  # dimensions at the prior add nothing


def draw(sampler: Sampler, z_mean: np.ndarray, z_log_var: np.ndarray) -> np.ndarray:
    return ops.convert_to_numpy(sampler(tf.constant(z_mean), tf.constant(z_log_var)))


def test_sampler_draws_have_the_encoders_mean_and_variance():
    num_draws = 20000
    mean = np.array([0.5, -2.0, 3.0], np.float32)
    log_var = np.array([0.0, math.log(4.0), -2.0], np.float32)
    z_mean, z_log_var = np.tile(mean, (num_draws, 1)), np.tile(log_var, (num_draws, 1))

    z = draw(Sampler(seed=3), z_mean, z_log_var)

    assert z.shape == (num_draws, 3) and z.dtype == np.float32
    variance = np.exp(log_var.astype(np.float64))
    # Standard errors: of the mean sigma / sqrt(n), of the sample variance sigma^2 sqrt(2 / (n - 1)).
    mean_error = np.sqrt(variance / num_draws)
    variance_error = variance * math.sqrt(2.0 / (num_draws - 1))
    assert np.all(np.abs(z.mean(axis=0) - mean) < 4 * mean_error), (z.mean(axis=0), mean)
    assert np.all(np.abs(z.var(axis=0, ddof=1) - variance) < 4 * variance_error), (z.var(axis=0), variance)


def test_sampler_is_reproducible_with_a_seed_and_draws_afresh_on_every_call():
    z_mean, z_log_var = np.zeros((100, 2), np.float32), np.zeros((100, 2), np.float32)

    sampler = Sampler(seed=5)
    first, second = draw(sampler, z_mean, z_log_var), draw(sampler, z_mean, z_log_var)
    again = draw(Sampler(seed=5), z_mean, z_log_var)
    other_seed = draw(Sampler(seed=6), z_mean, z_log_var)

    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, second)
    assert not np.allclose(first, other_seed)


def test_sampler_with_zero_variance_returns_the_mean():
    z_mean = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)

    z = draw(Sampler(seed=1), z_mean, np.full_like(z_mean, -200.0))  # exp(-100): no noise left

    np.testing.assert_allclose(z, z_mean, atol=1e-20)


def test_reconstruction_loss_is_the_binary_cross_entropy_summed_over_pixels_and_channels():
    rng = np.random.default_rng(0)
    originals = rng.uniform(0.0, 1.0, size=(4, 6, 5, 3)).astype(np.float32)
    reconstructions = rng.uniform(0.02, 0.98, size=(4, 6, 5, 3)).astype(np.float32)

    loss = ops.convert_to_numpy(reconstruction_loss(originals, reconstructions))

    x, p = originals.astype(np.float64), reconstructions.astype(np.float64)
    expected = -np.sum(x * np.log(p) + (1.0 - x) * np.log(1.0 - p), axis=(1, 2, 3))
    assert loss.shape == (4,)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_reconstruction_loss_for_one_channel_is_the_keras_examples():
    rng = np.random.default_rng(1)
    originals = (rng.uniform(size=(3, TILE, TILE, 1)) > 0.5).astype(np.float32)
    reconstructions = rng.uniform(0.01, 0.99, size=(3, TILE, TILE, 1)).astype(np.float32)

    loss = ops.convert_to_numpy(reconstruction_loss(originals, reconstructions))

    # keras-io's VAE: ops.sum(keras.losses.binary_crossentropy(data, reconstruction), axis=(1, 2))
    example = ops.sum(keras.losses.binary_crossentropy(originals, reconstructions), axis=(1, 2))
    np.testing.assert_allclose(loss, ops.convert_to_numpy(example), rtol=1e-5)


# --- Training on a Fashion-MNIST subset -----------------------------------------------------------


@pytest.fixture(scope="module")
def beta_grid(tmp_path_factory, fashion):
    """A grid of two VAEs (beta 1 and beta 0) trained for 3 epochs on 2,048 train / 512 test images."""
    train, test = fashion
    paths = storage.under(tmp_path_factory.mktemp("beta_grid"), VaePaths())
    write_data(paths, subset(train, 2048), subset(test, 512), CLASS_NAMES["fashion_mnist"])
    made, eager_flags = [], []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vae_model, "VAE", recording_vae(made, eager_flags))
        results = train_grid(
            paths,
            latent_dims=[2],
            betas=[1.0, 0.0],
            epochs=3,
            batch_size=128,
            learning_rate=3e-3,
            runtime=RUNTIME,
            choice=KEEP_LAST,
            blowup=BLOWUP,
        )
    return {"paths": paths, "results": results, "models": made, "eager_flags": eager_flags}


def test_training_losses_fall_and_total_is_reconstruction_plus_beta_kl(beta_grid):
    paths, results = beta_grid["paths"], beta_grid["results"]

    assert [(result["name"], result["point"]) for result in results] == [
        ("point_00", {"latent_dim": 2, "beta": 1.0}),
        ("point_01", {"latent_dim": 2, "beta": 0.0}),
    ]
    assert [result["label"] for result in results] == ["beta=1", "beta=0"]
    for result in results:
        beta, metrics = result["point"]["beta"], result["metrics"]
        history = read_history(paths.training / f"{result['name']}.csv")
        assert [row["epoch"] for row in history] == [1, 2, 3]
        assert history[1]["val_total_loss"] < history[0]["val_total_loss"]
        assert history[2]["val_total_loss"] < history[0]["val_total_loss"]
        assert history[1]["total_loss"] < history[0]["total_loss"]
        for row in history:
            for prefix in ("", "val_"):
                assert row[f"{prefix}total_loss"] == pytest.approx(
                    row[f"{prefix}reconstruction_loss"] + beta * row[f"{prefix}kl_loss"], rel=1e-5
                )
        assert (metrics["epochs_completed"], metrics["diverged_at_epoch"]) == (3, 0)
        test_losses = [row["val_total_loss"] for row in history]
        assert metrics["kept_epoch"] == 3, "keep: last"
        assert metrics["best_epoch"] == 1 + test_losses.index(min(test_losses))
        assert metrics["final_val_total_loss"] == test_losses[-1] == metrics["kept_val_total_loss"]
        for term in LOSS_TERMS:
            assert metrics[f"train_{term}"] == history[-1][term]
            assert metrics[f"test_{term}"] == history[-1][f"val_{term}"]
        assert metrics["seconds"] > 0 and metrics["seconds_per_epoch"] > 0
    written = json.loads((paths.training / "points.json").read_text())
    assert written == json.loads(json.dumps(results))
    assert json.loads(paths.train_metrics.read_text()) == {
        result["name"]: result["metrics"] for result in written
    }


def test_trained_encoder_and_decoder_load_back_and_decode_to_images(beta_grid):
    folder = beta_grid["paths"].models / "point_00"
    test = load_split(beta_grid["paths"].data / "test.npz")

    encoder = keras.models.load_model(folder / "encoder.keras")
    decoder = keras.models.load_model(folder / "decoder.keras")

    z_mean, z_log_var = encoder.predict(test.images[:16].astype(np.float32) / 255.0, verbose=0)
    assert z_mean.shape == z_log_var.shape == (16, 2)
    decoded = decode(decoder, np.random.default_rng(0).normal(size=(5, 2)))
    assert decoded.shape == (5, TILE, TILE, 1) and decoded.dtype == np.float32
    assert decoded.min() >= 0.0 and decoded.max() <= 1.0
    # The saved models are the trained ones: they reconstruct test images better than an untrained decoder.
    trained = decode(decoder, z_mean)
    untrained = decode(build_decoder((TILE, TILE, 1), 2), z_mean)
    originals = test.images[:16].astype(np.float32) / 255.0
    assert np.mean((trained - originals) ** 2) < np.mean((untrained - originals) ** 2)


def test_training_is_compiled_not_eager(beta_grid):
    assert len(beta_grid["models"]) == 2
    assert all(model.run_eagerly is False for model in beta_grid["models"])
    assert beta_grid["eager_flags"], "losses_of was never called"
    assert not any(beta_grid["eager_flags"]), "a train or test step ran eagerly"


def test_beta_weights_the_kl_term(beta_grid):
    with_kl, without_kl = (result["metrics"] for result in beta_grid["results"])

    # With beta = 0 nothing holds the posterior to the prior, so it drifts away from it.
    assert without_kl["train_kl_loss"] > 2 * with_kl["train_kl_loss"]
    assert without_kl["test_kl_loss"] > 2 * with_kl["test_kl_loss"]
    assert without_kl["train_total_loss"] == without_kl["train_reconstruction_loss"]


def test_mixed_precision_and_a_mirrored_strategy_train_on_cpu(tmp_path, fashion, restore_float32_policy):
    train, test = fashion
    made, eager_flags = [], []
    runtime = RuntimeParams(
        seed=0, dtype_policy="mixed_float16", jit_compile=False, memory_growth=True, distribute="mirrored"
    )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vae_model, "VAE", recording_vae(made, eager_flags))
        metrics = train_point(
            GridPoint(2, 1.0),
            subset(train, 256),
            subset(test, 64),
            1,
            64,
            1e-3,
            tmp_path / "models",
            tmp_path / "history.csv",
            runtime,
            KEEP_LAST,
            BLOWUP,
        )

    (model,) = made
    assert isinstance(model.distribute_strategy, tf.distribute.MirroredStrategy)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.encoder.layers[1].compute_dtype == "float16"
    assert (metrics["epochs_completed"], metrics["diverged_at_epoch"]) == (1, 0)
    assert all(
        math.isfinite(metrics[f"{split}_{term}"]) for split in ("train", "test") for term in LOSS_TERMS
    )
    decoder = keras.models.load_model(tmp_path / "models" / "decoder.keras")
    decoded = decode(decoder, np.zeros((2, 2)))
    assert decoded.dtype == np.float32 and np.isfinite(decoded).all()


# --- The NaN guard --------------------------------------------------------------------------------

NAN_STEPS_PER_EPOCH = 8  # 256 images in batches of 32


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory, fashion):
    """Four epochs asked for; every loss is NaN from the third step of epoch 2 on."""
    train, test = fashion
    root = tmp_path_factory.mktemp("diverged")
    made, eager_flags, saves = [], [], []
    divergence_step = NAN_STEPS_PER_EPOCH + 2
    save_model = vae_model.save_model_atomically

    def save_and_remember(model, path):
        saves.append((path.name, [weight.copy() for weight in model.get_weights()]))
        save_model(model, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vae_model, "VAE", recording_vae(made, eager_flags, poison_from_step=divergence_step))
        patch.setattr(vae_model, "save_model_atomically", save_and_remember)
        metrics = train_point(
            GridPoint(2, 1.0),
            subset(train, 32 * NAN_STEPS_PER_EPOCH),
            subset(test, 64),
            4,
            32,
            1e-3,
            root / "models",
            root / "history.csv",
            RUNTIME,
            KEEP_LAST,
            BLOWUP,
        )
    return {
        "root": root,
        "metrics": metrics,
        "history": read_history(root / "history.csv"),
        "saves": saves,
        "model": made[0],
        "divergence_step": divergence_step,
    }


def test_nan_loss_stops_training_and_keeps_the_last_good_epoch(diverged_run):
    metrics, history, saves = diverged_run["metrics"], diverged_run["history"], diverged_run["saves"]

    assert len(history) == 2, "training did not stop after the epoch that diverged"
    assert all(math.isfinite(value) for value in history[0].values())
    assert math.isnan(history[1]["total_loss"])
    assert (metrics["diverged_at_epoch"], metrics["epochs_completed"]) == (2, 1)
    for term in LOSS_TERMS:  # the metrics are those of the kept epoch
        assert metrics[f"train_{term}"] == history[0][term]
        assert metrics[f"test_{term}"] == history[0][f"val_{term}"]
    assert [name for name, _ in saves] == ["encoder.keras", "decoder.keras"], "saved after epoch 1 only"
    folder = diverged_run["root"] / "models"
    for name, saved_weights in saves:
        on_disk = keras.models.load_model(folder / name).get_weights()
        assert all_finite(on_disk)
        for weight, saved in zip(on_disk, saved_weights, strict=True):
            np.testing.assert_array_equal(weight, saved)
    assert not all_finite(diverged_run["model"].decoder.get_weights()), "the weights in memory diverged"


def test_nan_loss_stops_the_epoch_at_the_batch_it_appears_in(diverged_run):
    steps_run = int(diverged_run["model"].optimizer.iterations)

    assert steps_run < 2 * NAN_STEPS_PER_EPOCH, f"epoch 2 ran all its {NAN_STEPS_PER_EPOCH} steps"


def test_a_grid_whose_only_point_diverges_in_epoch_1_keeps_no_model_and_samples_nothing(
    tmp_path, fashion, caplog
):
    train, test = fashion
    paths = storage.under(tmp_path, VaePaths())
    write_data(paths, subset(train, 64), subset(test, 32), CLASS_NAMES["fashion_mnist"])

    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.WARNING, logger="tasks.vae"):
        patch.setattr(vae_model, "VAE", recording_vae([], [], poison_from_step=1))
        (result,) = train_grid(
            paths,
            latent_dims=[2],
            betas=[1.0],
            epochs=3,
            batch_size=32,
            learning_rate=1e-3,
            runtime=RUNTIME,
            choice=KEEP_LAST,
            blowup=BLOWUP,
        )
        samples = sample_points(paths, SAMPLE, seed=0)

    metrics = result["metrics"]
    assert (metrics["diverged_at_epoch"], metrics["epochs_completed"]) == (1, 0)
    assert all(math.isnan(metrics[f"{split}_{term}"]) for split in ("train", "test") for term in LOSS_TERMS)
    assert len(read_history(paths.training / "point_00.csv")) == 1
    assert paths.models.is_dir() and not list(paths.models.rglob("*.keras"))  # DVC's output, empty
    messages = [record.getMessage() for record in caplog.records]
    assert any("epoch 1" in message and "no epoch finished" in message for message in messages), messages
    assert any("learning_rate" in message for message in messages)
    assert samples == [] and json.loads((paths.samples / "samples.json").read_text()) == []
    assert not (paths.samples / "comparison.png").exists()
    assert any("nothing to sample" in message for message in messages)


# --- The latent space -----------------------------------------------------------------------------


def fixed_steps(grid_size: int, scale: float, num_axes: int = 2) -> list[np.ndarray]:
    return [np.linspace(-scale, scale, grid_size)] * num_axes


def off_centre_means(count: int = 2000) -> np.ndarray:
    """(count, 2) latent means in two clusters away from the origin: around (0, -3) and (2, 0.5)."""
    rng = np.random.default_rng(0)
    centres = np.where(rng.random(count)[:, None] < 0.5, [0.0, -3.0], [2.0, 0.5])
    return centres + rng.normal(scale=0.3, size=(count, 2))


def test_latent_grid_is_grid_size_tiles_on_each_side():
    keras.utils.set_random_seed(0)
    decoder = build_decoder((TILE, TILE, 1), 2)
    axes = latent_axes(np.zeros((4, 2)))
    steps = fixed_steps(30, 1.0)

    grid = latent_grid(decoder, axes, steps)

    assert grid.shape == (30 * TILE, 30 * TILE, 3)
    assert grid.min() >= 0.0 and grid.max() <= 255.0
    # Tile (row, column) is the decoded latent point number row * 30 + column, grey in three channels.
    latents = grid_latents(axes, steps)
    for row, column in ((0, 0), (0, 29), (29, 0), (13, 17)):
        tile = grid[row * TILE : (row + 1) * TILE, column * TILE : (column + 1) * TILE]
        expected = decode(decoder, latents[[row * 30 + column]])[0] * 255.0
        np.testing.assert_allclose(tile, np.repeat(expected, 3, axis=-1), atol=1e-3)


def test_latent_grid_of_rgb_images_and_of_a_one_dimensional_latent_space():
    keras.utils.set_random_seed(0)

    rgb = latent_grid(build_decoder((8, 12, 3), 2), latent_axes(np.zeros((4, 2))), fixed_steps(5, 2.0))
    line = latent_grid(
        build_decoder((TILE, TILE, 1), 1), latent_axes(np.zeros((4, 1))), fixed_steps(7, 1.0, num_axes=1)
    )

    assert rgb.shape == (5 * 8, 5 * 12, 3)
    assert line.shape == (TILE, 7 * TILE, 3)  # one latent axis: one row


@pytest.mark.parametrize("grid_size, scale", [(30, 1.0), (5, 2.5), (2, 1.0)])
def test_fixed_grid_latents_for_two_latent_dims_are_the_books_grid(grid_size, scale):
    z_means = np.random.default_rng(0).normal(size=(50, 2))
    axes = latent_axes(z_means)

    latents = grid_latents(axes, axes_steps(axes, z_means, "fixed", grid_size, scale))

    # The book: grid_x = linspace(-scale, scale, n), grid_y = linspace(-scale, scale, n)[::-1],
    # rows of the figure over grid_y, columns over grid_x.
    grid_x = np.linspace(-scale, scale, grid_size)
    grid_y = np.linspace(-scale, scale, grid_size)[::-1]
    book = np.array([[x, y] for y in grid_y for x in grid_x])
    np.testing.assert_allclose(latents, book)
    np.testing.assert_allclose(latents[0], [-scale, scale])  # top left
    np.testing.assert_allclose(latents[-1], [scale, -scale])  # bottom right
    np.testing.assert_allclose(latents[grid_size - 1], [scale, scale])  # top right


def test_grid_latents_put_the_largest_second_coordinate_on_the_top_row_with_uneven_steps():
    axes = latent_axes(np.zeros((4, 2)))
    x_steps, y_steps = np.array([-1.0, 0.0, 5.0]), np.array([-4.0, -3.0])

    latents = grid_latents(axes, [x_steps, y_steps]).reshape(2, 3, 2)  # (rows, columns, latent)

    np.testing.assert_array_equal(latents[0, :, 1], [-3.0, -3.0, -3.0])  # top row: the largest y
    np.testing.assert_array_equal(latents[1, :, 1], [-4.0, -4.0, -4.0])
    np.testing.assert_array_equal(latents[0, :, 0], x_steps)  # columns: x from left to right
    np.testing.assert_array_equal(latents[1, :, 0], x_steps)


def test_data_grid_reaches_off_centre_clusters_that_the_books_fixed_grid_misses():
    z_means = off_centre_means()
    axes = latent_axes(z_means)

    data = grid_latents(axes, axes_steps(axes, z_means, "data", 10, 1.0))
    fixed = grid_latents(axes, axes_steps(axes, z_means, "fixed", 10, 1.0))

    def nearest_grid_point(grid: np.ndarray, point: list[float]) -> float:
        return float(np.min(np.linalg.norm(grid - point, axis=1)))

    for cluster in ([0.0, -3.0], [2.0, 0.5]):
        assert nearest_grid_point(data, cluster) < 0.5
    assert nearest_grid_point(fixed, [0.0, -3.0]) > 1.5  # [-1, 1]^2 stays 2 away from the first
    # The data grid spans the means' 1%-99% quantiles along each axis, corner to corner.
    low, high = np.quantile(z_means, [DATA_QUANTILE, 1 - DATA_QUANTILE], axis=0)
    np.testing.assert_allclose(data[0], [low[0], high[1]])  # top left
    np.testing.assert_allclose(data[-1], [high[0], low[1]])  # bottom right
    assert low[1] < -3.0 and high[0] > 2.0


def test_data_steps_are_evenly_spaced_quantiles_so_crowded_regions_get_more_steps():
    coordinates = np.concatenate([np.linspace(0.0, 1.0, 900), np.linspace(1.0, 10.0, 100)])

    steps = grid_steps("data", coordinates, 11, scale=123.0)  # the scale does not matter for data

    assert np.all(np.diff(steps) > 0)
    np.testing.assert_allclose(steps, np.quantile(coordinates, np.linspace(0.01, 0.99, 11)))
    assert np.sum(steps <= 1.0) >= 9  # 90% of the means lie in [0, 1]: so do 90% of the steps


@pytest.mark.parametrize("grid_size, scale", [(30, 1.0), (7, 2.0), (2, 0.5)])
def test_normal_steps_are_the_scaled_normal_quantiles_and_symmetric(grid_size, scale):
    far_away = np.full(50, 100.0)  # the test means do not move the normal grid

    steps = grid_steps("normal", far_away, grid_size, scale)

    # The standard normal's quantile function by bisection on its CDF (erf), not by inv_cdf.
    def quantile(probability: float) -> float:
        low, high = -10.0, 10.0
        for _ in range(100):
            middle = (low + high) / 2
            below = 0.5 * (1 + math.erf(middle / math.sqrt(2))) < probability
            low, high = (middle, high) if below else (low, middle)
        return low

    expected = [scale * quantile(p) for p in np.linspace(0.05, 0.95, grid_size)]
    np.testing.assert_allclose(steps, expected, atol=1e-9)
    np.testing.assert_allclose(steps, -steps[::-1], atol=1e-12)  # symmetric around the plane's center
    assert steps[-1] == pytest.approx(scale * 1.6448536, rel=1e-6)  # the 95% quantile


def test_normal_grid_is_around_the_principal_planes_center():
    z_means = off_centre_means()
    axes = latent_axes(z_means, principal=True)

    latents = grid_latents(axes, axes_steps(axes, z_means, "normal", 5, 1.0))

    np.testing.assert_allclose(latents[2 * 5 + 2], z_means.mean(axis=0), atol=1e-12)  # the middle tile


def test_grid_steps_reject_an_unknown_span():
    with pytest.raises(ValueError, match="grid span must be data, normal or fixed, got 'wide'"):
        grid_steps("wide", np.zeros(3), 3, 1.0)


def test_data_steps_of_a_one_dimensional_latent_space_give_one_row():
    z_means = np.random.default_rng(0).normal(loc=-2.0, size=(200, 1))
    axes = latent_axes(z_means)

    steps = axes_steps(axes, z_means, "data", 7, 1.0)
    latents = grid_latents(axes, steps)

    assert len(steps) == 1 and latents.shape == (7, 1)
    np.testing.assert_allclose(latents[:, 0], np.quantile(z_means[:, 0], np.linspace(0.01, 0.99, 7)))


def test_axis_range_labels_name_each_axis_and_its_first_and_last_step():
    steps = [np.array([-2.914, 0.0, 1.871]), np.array([-3.7, 0.9])]

    labels = axis_range_labels(("z[0]", "z[1]"), steps)

    assert labels == ["z[0]: -2.91 ... 1.87", "z[1]: -3.70 ... 0.90"]


def test_labelled_latent_grid_adds_a_margin_under_and_left_of_the_mosaic(tmp_path):
    keras.utils.set_random_seed(0)
    decoder = build_decoder((TILE, TILE, 1), 2)
    axes = latent_axes(np.zeros((4, 2)))
    steps = fixed_steps(4, 1.0)
    grid = latent_grid(decoder, axes, steps)

    labelled = labelled_latent_grid(grid, axes.names, steps)
    path = save_image(labelled, tmp_path / "latent_grid.png")

    assert labelled.shape == (4 * TILE + AXIS_LABEL_MARGIN, AXIS_LABEL_MARGIN + 4 * TILE, 3)
    assert png_size(path) == (AXIS_LABEL_MARGIN + 4 * TILE, 4 * TILE + AXIS_LABEL_MARGIN)
    # The mosaic sits at the top right, unchanged; the margins are white but for their text.
    np.testing.assert_array_equal(labelled[: 4 * TILE, AXIS_LABEL_MARGIN:], to_uint8(grid))
    under, left = labelled[4 * TILE :, AXIS_LABEL_MARGIN:], labelled[: 4 * TILE, :AXIS_LABEL_MARGIN]
    assert under.min() < 128 and left.min() < 128  # some dark text in each
    assert np.mean(under == 255) > 0.5 and np.mean(left == 255) > 0.5
    # The left label reads upwards: its text starts at the bottom of the margin.
    dark_rows = np.flatnonzero((left < 128).any(axis=(1, 2)))
    assert dark_rows.max() > 3 * TILE


def test_labelled_latent_grid_of_one_axis_has_only_the_margin_under_it():
    grid = np.full((TILE, 5 * TILE, 3), 200.0)

    labelled = labelled_latent_grid(grid, ("z[0]",), fixed_steps(5, 1.0, num_axes=1))

    assert labelled.shape == (TILE + AXIS_LABEL_MARGIN, 5 * TILE, 3)
    np.testing.assert_array_equal(labelled[:TILE], 200)


def test_principal_axes_follow_the_largest_variance_directions_scaled_by_their_std():
    rng = np.random.default_rng(0)
    stds = np.array([0.5, 3.0, 1.0, 0.2, 1.8])
    rotation, _ = np.linalg.qr(rng.normal(size=(5, 5)))  # rows: orthonormal directions
    center = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    z_means = center + (rng.normal(size=(20000, 5)) * stds) @ rotation

    axes = latent_axes(z_means)

    assert axes.axes.shape == (2, 5)
    np.testing.assert_allclose(axes.center, z_means.mean(axis=0))
    for axis, expected_direction, expected_std in ((0, rotation[1], 3.0), (1, rotation[4], 1.8)):
        spread = np.linalg.norm(axes.axes[axis])
        direction = axes.axes[axis] / spread
        assert abs(direction @ expected_direction) > 0.999
        # The spread is exactly the sample std along the direction, and close to the true std.
        along = (z_means - axes.center) @ direction
        assert spread == pytest.approx(np.std(along, ddof=1), rel=1e-9)
        assert spread == pytest.approx(expected_std, rel=0.03)
    assert abs(axes.axes[0] @ axes.axes[1]) < 1e-9  # orthogonal
    assert "principal direction 1" in axes.names[0] and "principal direction 2" in axes.names[1]


def test_latent_axes_of_a_two_dimensional_space_are_principal_only_when_asked():
    z_means = np.random.default_rng(1).normal(size=(500, 2)) * [0.2, 2.0] + [5.0, 5.0]

    plane = latent_axes(z_means)
    principal = latent_axes(z_means, principal=True)

    np.testing.assert_array_equal(plane.center, [0.0, 0.0])
    np.testing.assert_array_equal(plane.axes, np.eye(2))
    np.testing.assert_allclose(principal.center, z_means.mean(axis=0))
    assert abs(principal.axes[0][1]) / np.linalg.norm(principal.axes[0]) > 0.99  # along z[1]


@pytest.mark.parametrize("latent_dim, principal", [(2, False), (2, True), (6, False), (1, False)])
def test_latent_axes_coordinates_invert_grid_latents(latent_dim, principal):
    rng = np.random.default_rng(latent_dim)
    z_means = rng.normal(size=(300, latent_dim)) * rng.uniform(0.1, 3.0, size=latent_dim)
    axes = latent_axes(z_means, principal=principal)
    grid_size, scale = 4, 1.5

    coordinates = axes.coordinates(grid_latents(axes, fixed_steps(grid_size, scale, len(axes.axes))))

    steps = np.linspace(-scale, scale, grid_size)
    if len(axes.axes) == 1:
        expected = steps[:, None]
    else:
        expected = np.array([[x, y] for y in steps[::-1] for x in steps])
    np.testing.assert_allclose(coordinates, expected, atol=1e-9)


def test_latent_axes_coordinates_are_in_units_of_each_axis():
    axes = LatentAxes(np.array([1.0, 2.0, 3.0]), np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.5]]), ("a", "b"))
    z = np.array([axes.center + 3.0 * axes.axes[0] - 1.0 * axes.axes[1], axes.center])

    np.testing.assert_allclose(axes.coordinates(z), [[3.0, -1.0], [0.0, 0.0]], atol=1e-12)


def test_mosaic_tiles_images_row_major_on_white():
    pixels = np.stack([np.full((2, 3, 1), value) for value in (0.0, 0.25, 0.5, 0.75, 1.0)])

    canvas = mosaic(pixels, columns=3)

    assert canvas.shape == (2 * 2, 3 * 3, 3)
    for index, value in enumerate((0.0, 0.25, 0.5, 0.75, 1.0)):
        row, column = divmod(index, 3)
        np.testing.assert_array_equal(
            canvas[row * 2 : row * 2 + 2, column * 3 : column * 3 + 3], value * 255.0
        )
    np.testing.assert_array_equal(canvas[2:, 6:], 255.0)  # the missing sixth tile is white


def test_class_examples_cycle_through_the_classes():
    labels = np.array([2, 0, 2, 1, 0, 2])

    # First example of each class in label order, then the second of each, and so on.
    np.testing.assert_array_equal(class_examples(labels, 5), [1, 3, 0, 4, 2])
    np.testing.assert_array_equal(class_examples(labels, 100), [1, 3, 0, 4, 2, 5])


def test_interpolate_spaces_points_evenly_from_start_to_end():
    start, end = np.array([1.0, -2.0, 0.0]), np.array([3.0, 2.0, -1.0])

    points = interpolate(start, end, 5)

    assert points.shape == (5, 3)
    np.testing.assert_allclose(points[0], start)
    np.testing.assert_allclose(points[-1], end)
    np.testing.assert_allclose(np.diff(points, axis=0), np.tile((end - start) / 4, (4, 1)))


# --- Concept vectors --------------------------------------------------------------------------------


def test_concept_vector_is_the_difference_of_the_group_means():
    rng = np.random.default_rng(0)
    z_means = rng.normal(size=(40, 3))
    labels = rng.integers(0, 4, size=40)

    vector = concept_vector(z_means, labels, source=1, target=3)

    source = [z for z, label in zip(z_means, labels) if label == 1]
    target = [z for z, label in zip(z_means, labels) if label == 3]
    np.testing.assert_allclose(
        vector, np.sum(target, axis=0) / len(target) - np.sum(source, axis=0) / len(source)
    )
    assert np.allclose(z_means[labels == 1].mean(axis=0) + vector, z_means[labels == 3].mean(axis=0))


def test_nearest_mean_share_counts_images_closer_to_the_target_mean():
    source_mean, target_mean = np.zeros((4, 4, 1)), np.ones((4, 4, 1))
    pixels = np.stack([np.full((4, 4, 1), value) for value in (0.1, 0.4, 0.45, 0.6, 0.9)])

    assert nearest_mean_share(pixels, source_mean, target_mean) == pytest.approx(2 / 5)
    assert nearest_mean_share(pixels, target_mean, source_mean) == pytest.approx(3 / 5)


def test_nearest_mean_share_matches_a_loop_over_random_images():
    rng = np.random.default_rng(3)
    pixels = rng.uniform(size=(50, 5, 5, 3))
    source_mean, target_mean = rng.uniform(size=(5, 5, 3)), rng.uniform(size=(5, 5, 3))

    share = nearest_mean_share(pixels, source_mean, target_mean)

    closer = [np.sum((image - target_mean) ** 2) < np.sum((image - source_mean) ** 2) for image in pixels]
    assert share == pytest.approx(np.mean(closer))


@pytest.fixture(scope="module")
def sneakers_and_boots(tmp_path_factory, fashion):
    """A 2-d VAE trained for 3 epochs on 3,000 sneakers and ankle boots (400 test images)."""
    train, test = fashion
    train, test = subset(train, 3000, (SNEAKER, ANKLE_BOOT)), subset(test, 400, (SNEAKER, ANKLE_BOOT))
    folder = tmp_path_factory.mktemp("sneakers_and_boots")
    metrics = train_point(
        GridPoint(2, 1.0), train, test, 3, 128, 3e-3, folder / "models", folder / "history.csv", RUNTIME,
        EpochChoiceParams(keep="best", patience=0), BLOWUP,
    )  # fmt: skip
    assert metrics["epochs_completed"] == 3
    encoder = keras.models.load_model(folder / "models" / "encoder.keras")
    decoder = keras.models.load_model(folder / "models" / "decoder.keras")
    return train, test, encoder, decoder


def test_concept_vector_moves_decoded_sneakers_towards_ankle_boots(sneakers_and_boots):
    train, test, encoder, decoder = sneakers_and_boots
    train_means, test_means = encode(encoder, train.images), encode(encoder, test.images)
    vector = concept_vector(train_means, train.labels, SNEAKER, ANKLE_BOOT)
    sneakers = np.flatnonzero(test.labels == SNEAKER)[:50]
    sneaker_mean = train.images[train.labels == SNEAKER].mean(axis=0) / 255.0
    boot_mean = train.images[train.labels == ANKLE_BOOT].mean(axis=0) / 255.0

    shares = [
        nearest_mean_share(decode(decoder, test_means[sneakers] + strength * vector), sneaker_mean, boot_mean)
        for strength in (0.0, 0.5, 1.0)
    ]

    assert shares[0] < 0.5 < shares[2], shares
    assert shares[0] < shares[1] < shares[2], shares


# --- Data and bad input --------------------------------------------------------------------------------


def test_conform_resizes_and_turns_grey_into_rgb():
    # Each 2 x 2 block holds 0, 100, 200, 100: averaging halves the size and leaves 100 everywhere.
    block = np.array([[0, 100], [200, 100]], np.uint8)
    pixels = np.stack([np.tile(block, (TILE, TILE)), np.full((2 * TILE, 2 * TILE), 37, np.uint8)])

    conformed = conform(pixels, TILE, 3)

    assert conformed.shape == (2, TILE, TILE, 3) and conformed.dtype == np.uint8
    np.testing.assert_allclose(conformed[0], 100, atol=1)
    np.testing.assert_array_equal(conformed[1], 37)
    np.testing.assert_array_equal(conformed[..., 0], conformed[..., 2])


def test_conform_turns_rgb_into_grey_by_luminance():
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 90]], np.uint8)
    pixels = np.broadcast_to(colours[:, None, None, :], (4, 12, 12, 3))

    grey = conform(pixels, 8, 1)

    luminance = colours.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])  # ITU-R 601
    assert grey.shape == (4, 8, 8, 1) and grey.dtype == np.uint8
    np.testing.assert_allclose(grey[:, 0, 0, 0], luminance, atol=1.0)
    assert (grey == grey[:, :1, :1]).all()  # uniform images stay uniform


def test_conform_in_batches_gives_the_same_images_in_the_same_order():
    pixels = np.random.default_rng(0).integers(0, 256, size=(7, 10, 10), dtype=np.uint8)

    np.testing.assert_array_equal(conform(pixels, 8, 1, batch_size=3), conform(pixels, 8, 1))


def test_conform_leaves_conforming_images_alone():
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8), dtype=np.uint8)

    np.testing.assert_array_equal(conform(pixels, 8, 1), pixels[..., None])


@pytest.mark.parametrize("shape", [(2, 8, 8, 2), (2, 8, 8, 4), (8, 8), (1, 2, 8, 8, 1)])
def test_conform_rejects_images_of_other_shapes(shape):
    with pytest.raises(DatasetError, match=r"expected images of shape") as error:
        conform(np.zeros(shape, np.uint8), 8, 1)

    assert str(shape) in str(error.value)


def save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def grey(value: int, size: tuple[int, int]) -> Image.Image:
    return Image.new("L", size, value)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Two classes of images in assorted sizes, modes and formats, plus files that must be skipped."""
    folder = tmp_path / "images"
    save(Image.new("RGBA", (40, 30), (0, 0, 0, 0)), folder / "boots" / "a_transparent.png")
    save(grey(120, (28, 28)), folder / "boots" / "b_grey.jpg")
    palette = Image.new("P", (10, 50), 0)
    palette.putpalette([90, 90, 90] * 256)
    save(palette, folder / "boots" / "c_palette.png")
    save(Image.fromarray(np.full((32, 32), 200 * 257, np.uint16)), folder / "cats" / "a_16bit.png")
    # 100 x 20 in bands 0 | 128 | 255 of 20, 60, 20 columns: the centre square is all 128 (squashing
    # the image into a square would keep the dark and light bands).
    bands = np.repeat(np.array([0, 128, 255], np.uint8), [20, 60, 20])[None, :].repeat(20, axis=0)
    save(Image.fromarray(bands), folder / "cats" / "b_bands.png")
    save(Image.new("RGB", (64, 48), (200, 30, 30)), folder / "cats" / "c_red.jpg")
    (folder / "cats" / "d_broken.png").write_bytes(b"not an image at all")
    (folder / "unreadable").mkdir()
    (folder / "unreadable" / "truncated.png").write_bytes((folder / "cats" / "b_bands.png").read_bytes()[:60])
    save(grey(10, (8, 8)), folder / ".hidden" / "ignored.png")
    return folder


def test_read_folder_reads_every_mode_and_size_and_labels_by_subfolder(image_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="tasks.image_data"):
        pixels, labels, class_names = read_folder(image_folder, 16, 1)

    assert pixels.shape == (6, 16, 16, 1) and pixels.dtype == np.uint8
    assert class_names == ["boots", "cats"]  # an unreadable-only folder is no class; hidden ones are ignored
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1])
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(pixels[0], 255)  # transparent on white
    np.testing.assert_allclose(pixels[1], 120, atol=2)  # JPEG
    np.testing.assert_array_equal(pixels[2], 90)  # palette
    np.testing.assert_array_equal(pixels[3], 200)  # 16-bit scaled to 8 bits, not clipped
    np.testing.assert_array_equal(pixels[4], 128)  # centre-cropped, not squashed
    red_luma = (200 * 299 + 30 * 587 + 30 * 114) / 1000
    np.testing.assert_allclose(pixels[5], red_luma, atol=3)
    (record,) = [record for record in caplog.records if "unreadable" in record.getMessage()]
    assert record.levelno == logging.WARNING
    assert "skipped 2" in record.getMessage()
    assert "d_broken.png" in record.getMessage() and "truncated.png" in record.getMessage()


def test_read_folder_in_rgb(image_folder):
    pixels, labels, class_names = read_folder(image_folder, 12, 3)

    assert pixels.shape == (6, 12, 12, 3)
    np.testing.assert_allclose(pixels[5], np.broadcast_to([200, 30, 30], (12, 12, 3)), atol=6)
    np.testing.assert_array_equal(pixels[3], 200)  # grey images in three equal channels


def test_read_folder_makes_loose_images_one_class_named_after_the_folder(tmp_path):
    folder = tmp_path / "shoes"
    save(grey(50, (9, 9)), folder / "one.png")
    save(grey(60, (9, 9)), folder / "two.png")
    save(grey(70, (9, 9)), folder / "sandals" / "three.png")

    pixels, labels, class_names = read_folder(folder, 8, 1)

    assert class_names == ["shoes", "sandals"]
    np.testing.assert_array_equal(labels, [0, 0, 1])
    np.testing.assert_array_equal(pixels[:, 0, 0, 0], [50, 60, 70])


def test_read_folder_without_readable_images_says_so(tmp_path):
    folder = tmp_path / "nothing"
    (folder / "class").mkdir(parents=True)
    (folder / "class" / "notes.txt").write_text("hello")
    (folder / "readme.md").write_text("hello")

    with pytest.raises(DatasetError, match=r"has no readable images \(2 files looked at\)") as error:
        read_folder(folder, 8, 1)

    assert str(folder) in str(error.value)


def test_read_folder_of_an_empty_folder_says_so(tmp_path):
    with pytest.raises(DatasetError, match=r"no readable images \(0 files looked at\)"):
        read_folder(tmp_path, 8, 1)


def test_read_folder_that_does_not_exist_says_so(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_folder(tmp_path / "missing", 8, 1)


def numbered_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Image i is filled with the value i; its label is i % 3."""
    pixels = np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None, None], (count, 4, 4, 1)).copy()
    return pixels, (np.arange(count) % 3).astype(np.int32)


def test_split_folder_keeps_train_and_test_disjoint_and_is_seeded():
    pixels, labels = numbered_images(10)

    train, test = split_folder(pixels, labels, 0.3, seed=0)

    train_ids, test_ids = train.images[:, 0, 0, 0], test.images[:, 0, 0, 0]
    assert len(test_ids) == 3 and len(train_ids) == 7
    assert not set(train_ids) & set(test_ids)
    assert sorted([*train_ids, *test_ids]) == list(range(10))
    np.testing.assert_array_equal(train.labels, train_ids % 3)  # labels travel with their images
    np.testing.assert_array_equal(test.labels, test_ids % 3)
    again_train, again_test = split_folder(pixels, labels, 0.3, seed=0)
    np.testing.assert_array_equal(again_test.images, test.images)
    np.testing.assert_array_equal(again_train.images, train.images)
    other = {tuple(split_folder(pixels, labels, 0.3, seed=seed)[1].images[:, 0, 0, 0]) for seed in range(5)}
    assert len(other) > 1


@pytest.mark.parametrize("count, test_split", [(2, 0.2), (3, 0.9), (1, 0.5)])
def test_split_folder_rejects_too_few_images(count, test_split):
    pixels, labels = numbered_images(count)

    with pytest.raises(DatasetError, match="cannot be split") as error:
        split_folder(pixels, labels, test_split, seed=0)

    assert f"{count} images" in str(error.value) and f"test_split={test_split}" in str(error.value)


def test_load_split_of_a_missing_file_names_the_step_to_run(tmp_path):
    with pytest.raises(DatasetError, match="run the data step first"):
        load_split(tmp_path / "train.npz")


def prepare_data(paths: VaePaths, params: VaeDataParams, seed: int) -> dict:
    """What the data step does with the `vae.data` section."""
    return prepare_image_data(
        params, paths.data, "vae", params.max_train_images, params.max_test_images, seed=seed
    )


def folder_params(folder: Path, **changes) -> VaeDataParams:
    values = {
        "dataset": "folder",
        "folder": str(folder),
        "image_size": 12,
        "channels": 3,
        "test_split": 0.25,
        "max_train_images": 0,
        "max_test_images": 0,
        **changes,
    }
    return VaeDataParams(**values)


def test_prepare_data_from_a_folder_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    for name in ("circles", "squares"):
        for index in range(6):
            size = tuple(int(side) for side in rng.integers(10, 40, size=2))
            save(
                Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)),
                folder / name / f"{index}.png",
            )
    paths = storage.under(tmp_path / "repo", VaePaths())

    summary = prepare_data(paths, folder_params(folder), seed=0)

    assert summary == {
        "dataset": "folder",
        "classes": ["circles", "squares"],
        "image_shape": [12, 12, 3],
        "num_train": 9,
        "num_test": 3,
    }
    assert json.loads((paths.data / "classes.json").read_text()) == summary
    train, test = load_split(paths.data / "train.npz"), load_split(paths.data / "test.npz")
    assert train.images.shape == (9, 12, 12, 3) and test.images.shape == (3, 12, 12, 3)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
    assert sorted([*train.labels, *test.labels]) == [0] * 6 + [1] * 6
    flat = [image.tobytes() for image in (*train.images, *test.images)]
    assert len(set(flat)) == 12  # every image once, none in both splits
    assert not list(paths.data.glob(".*"))  # no partial files left behind

    capped = prepare_data(paths, folder_params(folder, max_train_images=4, max_test_images=2), seed=0)

    assert (capped["num_train"], capped["num_test"]) == (4, 2)
    assert load_split(paths.data / "train.npz").images.shape == (4, 12, 12, 3)


@pytest.mark.parametrize(
    ("name", "missing"),
    [("mnist", "mnist.npz"), ("fashion_mnist", "fashion-mnist/train-images-idx3-ubyte.gz")],
)
def test_a_keras_dataset_that_cannot_be_downloaded_fails_naming_the_url_and_the_offline_option(
    tmp_path, monkeypatch, name, missing
):
    def offline(*args, **kwargs):  # what keras.utils.get_file raises without a network
        try:
            raise urllib.error.URLError(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
        except urllib.error.URLError as error:
            raise Exception(f"URL fetch failure on ...: None -- {error.reason}")  # noqa: B904

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(storage.DownloadError) as error:
        load_keras_dataset(name, "vae")

    message = str(error.value)
    assert image_data.KERAS_DATASETS_URL + Path(missing).name in message
    assert str(tmp_path / "datasets" / missing) in message
    assert "KERAS_HOME" in message and "fashion_mnist" in message
    assert not error.value.retryable


def test_fashion_mnist_is_what_keras_datasets_loads(fashion):
    (train_images, train_labels), (test_images, test_labels) = keras.datasets.fashion_mnist.load_data()

    for split, images, labels in (
        (fashion[0], train_images, train_labels),
        (fashion[1], test_images, test_labels),
    ):
        assert split.images.dtype == images.dtype and split.labels.dtype == np.int32
        np.testing.assert_array_equal(split.images, images)
        np.testing.assert_array_equal(split.labels, labels)


def test_mnist_is_read_from_the_keras_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 5, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 3, dtype=np.uint8),
    }
    cached = tmp_path / "datasets" / "mnist.npz"
    cached.parent.mkdir()
    np.savez(cached, **arrays)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(image_data, "MNIST_SHA256", storage.sha256_of(cached))  # a stand-in for the real file

    train, test = load_keras_dataset("mnist", "vae")

    np.testing.assert_array_equal(train.images, arrays["x_train"])
    np.testing.assert_array_equal(test.labels, arrays["y_test"].astype(np.int32))
    assert train.labels.dtype == np.int32


def test_decode_idx_reads_shape_and_values_and_rejects_damaged_data():
    header = bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")

    np.testing.assert_array_equal(image_data.decode_idx(header + bytes(range(6))), [[0, 1, 2], [3, 4, 5]])
    labels = image_data.decode_idx(bytes([0, 0, 0x08, 1]) + (4).to_bytes(4, "big") + bytes([9, 0, 3, 1]))
    np.testing.assert_array_equal(labels, [9, 0, 3, 1])
    with pytest.raises(DatasetError, match="holds 5 values"):
        image_data.decode_idx(header + bytes(5))
    with pytest.raises(DatasetError, match="not an IDX array of unsigned bytes"):
        image_data.decode_idx(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + bytes(4))  # 0x0D: float32
    with pytest.raises(DatasetError, match="header cut short"):
        image_data.decode_idx(header[:9])


def test_a_damaged_idx_file_fails_in_one_line(tmp_path):
    damaged = tmp_path / "train-labels-idx1-ubyte.gz"
    damaged.write_bytes(b"not gzip")

    with pytest.raises(DatasetError, match="is not a gzipped IDX file .*delete it to download it again"):
        image_data.read_idx_file(damaged)


def test_prepare_data_from_fashion_mnist_conforms_and_caps_the_splits(tmp_path, fashion):
    paths = storage.under(tmp_path, VaePaths())
    params = VaeDataParams(
        dataset="fashion_mnist",
        folder="",
        image_size=32,
        channels=3,
        test_split=0.2,
        max_train_images=100,
        max_test_images=50,
    )

    summary = prepare_data(paths, params, seed=0)

    assert summary["classes"] == CLASS_NAMES["fashion_mnist"]
    assert (summary["num_train"], summary["num_test"], summary["image_shape"]) == (100, 50, [32, 32, 3])
    train, test = load_split(paths.data / "train.npz"), load_split(paths.data / "test.npz")
    np.testing.assert_array_equal(train.labels, fashion[0].labels[:100])
    np.testing.assert_array_equal(test.labels, fashion[1].labels[:50])
    np.testing.assert_array_equal(train.images, conform(fashion[0].images[:100], 32, 3))


def test_the_sample_step_rejects_a_concept_class_the_folder_does_not_have(tmp_path):
    paths = storage.under(tmp_path, VaePaths())
    storage.write_json(paths.data / "classes.json", {"classes": ["boots", "cats"]})
    params = VaeSampleParams(
        grid_size=2,
        grid_axes="latent",
        grid_span="fixed",
        grid_scale=1.0,
        num_reconstructions=1,
        interpolation_steps=2,
        concepts=[ConceptParams(source="boots", target="dogs")],
        concept_strengths=[1.0],
        concept_images=1,
    )

    with pytest.raises(VaeError, match="vae.sample.concepts: class 'dogs' is not a class of") as error:
        sample_points(paths, params, seed=0)

    assert "boots, cats" in str(error.value)


# --- Params -------------------------------------------------------------------------------------------


def parse_with(repo_params: dict, change) -> VaeParams:
    params = copy.deepcopy(repo_params)
    change(params["vae"])
    return parse_section(params, "vae", VaeParams)


def test_the_repo_params_parse(repo_params):
    params = parse_section(repo_params, "vae", VaeParams)

    assert params.data.image_size % 4 == 0
    if params.data.dataset in CLASS_NAMES:
        names = CLASS_NAMES[params.data.dataset]
        assert all({concept.source, concept.target} <= set(names) for concept in params.sample.concepts)


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda vae_params: vae_params["model"].update(latent_dim=[0]), "vae.model.latent_dim"),
        (lambda vae_params: vae_params["model"].update(latent_dim=[]), "vae.model.latent_dim"),
        (lambda vae_params: vae_params["train"].update(beta=[1.0, -0.5]), "vae.train.beta"),
        (lambda vae_params: vae_params["data"].update(image_size=30), "vae.data.image_size"),
        (lambda vae_params: vae_params["data"].update(dataset="folder", folder=""), "vae.data"),
        (
            lambda vae_params: vae_params["sample"].update(concepts=[{"source": "4", "target": 4}]),
            "vae.sample.concepts.0",
        ),
        (lambda vae_params: vae_params["sample"].update(grid_span="wide"), "vae.sample.grid_span"),
    ],
    ids=[
        "latent_dim_0",
        "latent_dim_empty",
        "negative_beta",
        "image_size_30",
        "empty_folder",
        "same_classes",
        "unknown_grid_span",
    ],
)
def test_bad_params_are_rejected_naming_the_key(repo_params, change, key):
    with pytest.raises(ParamsError) as error:
        parse_with(repo_params, change)

    assert f"{key}:" in str(error.value) or f"{key}." in str(error.value), str(error.value)


def test_image_size_error_suggests_the_nearest_multiples_of_4(repo_params):
    with pytest.raises(ParamsError, match=r"multiple of 4.*e\.g\. 28 or 32, got 30"):
        parse_with(repo_params, lambda vae_params: vae_params["data"].update(image_size=30))


def test_empty_folder_error_says_what_to_give(repo_params):
    with pytest.raises(ParamsError, match="folder is empty"):
        parse_with(repo_params, lambda vae_params: vae_params["data"].update(dataset="folder", folder=""))


def fashion_concept(source, target):
    def change(vae_params):
        vae_params["data"]["dataset"] = "fashion_mnist"
        vae_params["sample"]["concepts"] = [{"source": source, "target": target}]

    return change


def test_a_concept_class_the_keras_dataset_does_not_have_is_rejected_naming_the_key(repo_params):
    with pytest.raises(ParamsError) as error:  # well-typed, but not a class of the dataset
        parse_with(repo_params, fashion_concept("Sneakers", "Ankle boot"))

    message = str(error.value)
    assert message.startswith(
        "params.yaml: vae.sample.concepts: class 'Sneakers' is not a class of fashion_mnist"
    )
    assert "Sneaker, Bag" in message  # the valid classes are listed


def test_int_class_names_are_read_as_strings(repo_params):
    def change(vae_params):
        vae_params["data"]["dataset"] = "mnist"
        vae_params["sample"]["concepts"] = [{"source": 4, "target": 9}]

    params = parse_with(repo_params, change)

    assert params.sample.concepts == [ConceptParams(source="4", target="9")]
    assert params.sample.concepts[0].source == "4"


def test_grid_points_are_the_product_of_latent_dims_and_betas():
    points = grid.expand(GridPoint, latent_dim=[2, 8], beta=[1.0, 4.0])

    assert points == [GridPoint(2, 1.0), GridPoint(2, 4.0), GridPoint(8, 1.0), GridPoint(8, 4.0)]
    assert grid.varying_fields(points) == ["latent_dim", "beta"]
    assert grid.varying_fields(grid.expand(GridPoint, latent_dim=[2], beta=[1.0, 4.0])) == ["beta"]
    assert grid.label(points[1], ["beta"]) == "beta=4"
    assert grid.label(points[1], []) == "latent_dim=2, beta=4"


# --- The command line --------------------------------------------------------------------------------

STEPS = {"data": vae_data.data, "train": vae_steps.train, "sample": vae_steps.sample}


def main(argv: list[str]) -> int:
    """`python -m tasks.vae.data data` / `python -m tasks.vae.steps train|sample`, in process."""
    return run_steps(STEPS, __doc__, argv)


def write_params(root: Path, repo_params: dict, change) -> None:
    params = copy.deepcopy(repo_params)
    change(params["vae"])
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(dump_yaml(params), encoding="utf-8")


def test_cli_data_step_on_an_empty_folder_prints_one_error_line(tmp_path, repo_params, capsys):
    root, empty = tmp_path / "repo", tmp_path / "empty"
    empty.mkdir()
    write_params(
        root, repo_params, lambda vae_params: vae_params["data"].update(dataset="folder", folder=str(empty))
    )

    code = main(["data", "--root", str(root)])

    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "no readable images" in lines[0] and str(empty) in lines[0]
    assert "Traceback" not in lines[0]
    assert not (root / "data" / "vae").exists()


def test_cli_reports_bad_params_as_one_error_line(tmp_path, repo_params, capsys):
    write_params(tmp_path, repo_params, lambda vae_params: vae_params["model"].update(latent_dim=[0]))

    code = main(["train", "--root", str(tmp_path)])

    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "vae.model.latent_dim" in line


def test_cli_train_step_before_the_data_step_names_the_step_to_run(tmp_path, repo_params, capsys):
    write_params(tmp_path, repo_params, lambda vae_params: None)

    code = main(["train", "--root", str(tmp_path)])

    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "run the data step first" in line


def test_cli_sample_step_before_the_train_step_prints_one_error_line(tmp_path, repo_params, capsys):
    write_params(tmp_path, repo_params, lambda vae_params: None)

    code = main(["sample", "--root", str(tmp_path)])

    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ")


# --- The sample step ----------------------------------------------------------------------------------


@pytest.fixture
def trained_copy(tmp_path, beta_grid) -> VaePaths:
    """A copy of the trained beta grid whose second point has no decoder (as if it had diverged)."""
    source = beta_grid["paths"]
    paths = storage.under(tmp_path, VaePaths())
    for folder in (source.data, source.models, source.training):
        shutil.copytree(folder, tmp_path / folder.relative_to(source.data.parents[1]))
    (paths.models / "point_01" / "decoder.keras").unlink()
    return paths


def tile(image: np.ndarray, row: int, column: int) -> np.ndarray:
    return image[row * TILE : (row + 1) * TILE, column * TILE : (column + 1) * TILE]


def test_sample_points_writes_every_image_and_skips_a_point_without_a_model(trained_copy, caplog):
    paths = trained_copy

    with caplog.at_level(logging.WARNING, logger="tasks.vae"):
        results = sample_points(paths, SAMPLE, seed=0)

    assert [result["name"] for result in results] == ["point_00"]
    (warning,) = [record for record in caplog.records if "nothing to sample" in record.getMessage()]
    assert warning.levelno == logging.WARNING and "beta=0" in warning.getMessage()
    point = paths.samples / "point_00"
    # The 6 x 6 grid with its axes' ranges in a margin under it and one at its left.
    assert png_size(point / "latent_grid.png") == (AXIS_LABEL_MARGIN + 6 * TILE, 6 * TILE + AXIS_LABEL_MARGIN)
    assert png_size(point / "latent_scatter.png")[0] > 100
    assert png_size(point / "reconstructions.png") == (7 * TILE, 2 * TILE)
    assert png_size(point / "interpolation.png") == ((4 + 2) * TILE, TILE)
    assert png_size(point / "concept_00.png") == ((1 + 3) * TILE, 5 * TILE)  # a column per strength
    assert png_size(paths.samples / "comparison.png")[0] > 0
    assert not (paths.samples / "point_01").exists()
    assert not list(paths.samples.parent.glob(".*partial*"))
    assert json.loads((paths.samples / "samples.json").read_text()) == json.loads(json.dumps(results))
    assert json.loads(paths.sample_metrics.read_text()) == {"point_00": results[0]["metrics"]}
    metrics = results[0]["metrics"]
    grid_range = {f"grid/axis_{axis}_{end}" for axis in (0, 1) for end in ("low", "high")}
    assert set(metrics) == grid_range | {
        "concept_00/target_share/strength_0",
        "concept_00/target_share/strength_1",
        "concept_00/target_share/strength_2",
        "concept_00/vector_norm",
    }
    # SAMPLE's grid_span data: the grid spans the test means' 1%-99% quantiles along z[0] and z[1].
    encoder = keras.models.load_model(paths.models / "point_00" / "encoder.keras")
    test_means = encode(encoder, load_split(paths.data / "test.npz").images)
    for axis in (0, 1):
        low, high = np.quantile(test_means[:, axis], [DATA_QUANTILE, 1 - DATA_QUANTILE])
        assert metrics[f"grid/axis_{axis}_low"] == pytest.approx(low, abs=1e-4)
        assert metrics[f"grid/axis_{axis}_high"] == pytest.approx(high, abs=1e-4)
    assert all(0.0 <= metrics[f"concept_00/target_share/strength_{s}"] <= 1.0 for s in (0, 1, 2))
    assert metrics["concept_00/vector_norm"] > 0


def test_sample_points_images_show_the_test_images_they_claim_to(trained_copy):
    paths = trained_copy
    sample_points(paths, SAMPLE, seed=0)
    test = load_split(paths.data / "test.npz")
    point = paths.samples / "point_00"

    reconstructions = np.asarray(Image.open(point / "reconstructions.png"))
    interpolation = np.asarray(Image.open(point / "interpolation.png"))
    concept = np.asarray(Image.open(point / "concept_00.png"))

    # Top row: the originals, one per class in turn; bottom row: their reconstructions.
    for column, index in enumerate(class_examples(test.labels, 7)):
        np.testing.assert_array_equal(tile(reconstructions, 0, column), np.repeat(test.images[index], 3, -1))
    first, second = class_examples(test.labels, 2)
    np.testing.assert_array_equal(tile(interpolation, 0, 0), np.repeat(test.images[first], 3, -1))
    np.testing.assert_array_equal(tile(interpolation, 0, 5), np.repeat(test.images[second], 3, -1))
    # Each row of the concept image starts with a source test image (a sneaker).
    sneakers = np.flatnonzero(test.labels == SNEAKER)[:5]
    for row, index in enumerate(sneakers):
        np.testing.assert_array_equal(tile(concept, row, 0), np.repeat(test.images[index], 3, -1))


def test_sample_point_with_a_single_test_image(tmp_path, beta_grid):
    paths = beta_grid["paths"]
    train, test = load_split(paths.data / "train.npz"), load_split(paths.data / "test.npz")
    encoder = keras.models.load_model(paths.models / "point_00" / "encoder.keras")
    decoder = keras.models.load_model(paths.models / "point_00" / "decoder.keras")
    params = SAMPLE.model_copy(update={"concepts": []})

    sample_point(
        encoder,
        decoder,
        train,
        Split(test.images[:1], test.labels[:1]),
        CLASS_NAMES["fashion_mnist"],
        params,
        "x",
        tmp_path,
    )

    assert (tmp_path / "interpolation.png").is_file()


def test_a_folder_outside_inputs_works_with_a_warning_that_dvc_does_not_see_it(tmp_path, caplog):
    rng = np.random.default_rng(0)
    folder = tmp_path / "elsewhere"
    for name in ("circles", "squares"):
        for index in range(4):
            save(
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)),
                folder / name / f"{index}.png",
            )
    paths = storage.under(tmp_path / "repo", VaePaths())

    with caplog.at_level(logging.WARNING, logger="tasks.image_data"):
        summary = prepare_data(paths, folder_params(folder), seed=0)

    assert summary["num_train"] + summary["num_test"] == 8
    (warning,) = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert str(folder) in warning and "inputs/vae" in warning and "dvc add" in warning


def test_a_folder_tracked_by_dvc_but_not_pulled_names_the_pull_command(tmp_path):
    root = tmp_path / "repo"
    (root / "inputs/vae").mkdir(parents=True)
    (root / "inputs/vae/faces.dvc").write_text("outs:\n- path: faces\n")
    paths = storage.under(root, VaePaths())
    with pytest.raises(
        DatasetError, match=r"tracked by DVC but not here: run `dvc pull .*inputs/vae/faces.dvc`"
    ):
        prepare_image_data(folder_params(Path("inputs/vae/faces")), paths.data, "vae", root=root)
