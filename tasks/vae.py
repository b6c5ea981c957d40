"""Variational autoencoder (Kingma & Welling 2013; Chollet, Deep Learning with Python, 2nd ed. 12.4):
a conv encoder maps an image to a Gaussian over a small latent space, a sampling layer draws from
it, a decoder maps the draw back to pixels; trained on reconstruction + KL divergence.

Reads top to bottom: params -> the comparison grid -> data (Keras datasets or a folder) -> model
and losses -> training (the NaN guard) -> the latent space (grids, scatter, interpolation,
concept vectors) -> the pipeline steps DVC runs -> MLflow logging.

Departures from the book, on purpose:
- the KL term is summed over the latent dimensions (the book's second edition averages it,
  which under-weights it) and weighted by `beta`; the reconstruction term is summed over every
  pixel and channel, so losses are "per image" in the Keras example's units;
- training is compiled (the book uses `run_eagerly=True`), and the test split is held out and
  scored by a `test_step` instead of being mixed into the training data;
- lists of `beta` and `latent_dim` expand into a grid of runs compared in MLflow.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import keras
import numpy as np
import pydantic
import tensorflow as tf
from keras import layers, ops

from tasks import data, images, steps, tracking
from tasks.datasets import (
    CLASS_NAMES,
    DatasetError,
    ImageDataParams,
    Split,
    conform,
    image_dataset,
    load_keras_dataset,
    load_split,
    read_folder,
    save_split,
    split_folder,
)
from tasks.params import Params, ParamsError, load_params, parse_section
from tasks.runtime import RuntimeParams, configure_runtime
from tasks.training import Progress, read_history, save_model_atomically

log = logging.getLogger(__name__)

TECHNIQUE = "vae"
LOSS_TERMS = ("total_loss", "reconstruction_loss", "kl_loss")


class VaeError(ValueError):
    """Bad input for the VAE: an image folder, class names, or data that does not fit the model."""


class TrainingDiverged(RuntimeError):
    """A grid point's loss became NaN; its last good epoch's models were kept."""


# --- Params -------------------------------------------------------------------------------


# YAML reads `source: 4` as a number; class names are strings ("4" is an MNIST digit's name).
ClassName = Annotated[
    str, pydantic.BeforeValidator(lambda value: str(value) if isinstance(value, int) else value)
]


class VaeDataParams(ImageDataParams):
    max_train_images: int = pydantic.Field(ge=0)  # 0 = all
    max_test_images: int = pydantic.Field(ge=0)


class VaeModelParams(Params):
    latent_dim: list[pydantic.PositiveInt] = pydantic.Field(min_length=1)  # one grid axis


class VaeTrainParams(Params):
    beta: list[pydantic.NonNegativeFloat] = pydantic.Field(min_length=1)  # KL weight; one grid axis
    epochs: int = pydantic.Field(ge=1)
    batch_size: int = pydantic.Field(ge=1)
    learning_rate: float = pydantic.Field(gt=0.0, allow_inf_nan=False)


class ConceptParams(Params):
    source: ClassName = pydantic.Field(min_length=1)
    target: ClassName = pydantic.Field(min_length=1)

    @pydantic.model_validator(mode="after")
    def _distinct(self) -> ConceptParams:
        if self.source == self.target:
            raise ValueError(f"source and target are both {self.source!r}: a concept needs two groups")
        return self


class VaeSampleParams(Params):
    grid_size: int = pydantic.Field(ge=2)  # the book's 30 x 30
    grid_axes: Literal["latent", "principal"]  # latent: the book's plane (latent_dim <= 2)
    grid_scale: float = pydantic.Field(gt=0.0, allow_inf_nan=False)  # half-width of the grid
    num_reconstructions: int = pydantic.Field(ge=1)
    interpolation_steps: int = pydantic.Field(ge=2)
    concepts: list[ConceptParams]
    concept_strengths: list[float] = pydantic.Field(min_length=1)
    concept_images: int = pydantic.Field(ge=1)


class VaeParams(Params):
    data: VaeDataParams
    model: VaeModelParams
    train: VaeTrainParams
    sample: VaeSampleParams


def check_concepts(concepts: Sequence[ConceptParams], class_names: Sequence[str], where: str) -> None:
    for concept in concepts:
        for name in (concept.source, concept.target):
            if name not in class_names:
                raise VaeError(
                    f"vae.sample.concepts: class {name!r} is not a class of {where} "
                    f"(classes: {', '.join(class_names)})"
                )


def check_known_concepts(params: VaeParams) -> None:
    """The concept classes of a Keras dataset, before anything runs (a folder's classes are only
    known once it is read: the sample step checks those)."""
    if params.data.dataset in CLASS_NAMES:
        check_concepts(params.sample.concepts, CLASS_NAMES[params.data.dataset], params.data.dataset)


@dataclass(frozen=True)
class VaePaths:
    """Where each step reads and writes, relative to the repo root; dvc.yaml declares the same."""

    data: Path = Path("data/vae")  # train.npz, test.npz (uint8 images, labels), classes.json
    models: Path = Path("models/vae")  # point_NN/encoder.keras, point_NN/decoder.keras
    training: Path = Path("outputs/vae/training")  # points.json, point_NN.csv (losses per epoch)
    train_metrics: Path = Path("outputs/vae/train_metrics.json")
    samples: Path = Path("outputs/vae/samples")  # point_NN/*.png, comparison.png, samples.json
    sample_metrics: Path = Path("outputs/vae/sample_metrics.json")

    def under(self, root: Path) -> VaePaths:
        return VaePaths(**{item.name: root / getattr(self, item.name) for item in fields(self)})


# --- The comparison grid --------------------------------------------------------------------


@dataclass(frozen=True)
class GridPoint:
    latent_dim: int
    beta: float

    def label(self, varying: Sequence[str]) -> str:
        """What tells this point apart from the others (every field if there is only one)."""
        return ", ".join(f"{name}={getattr(self, name):g}" for name in varying or ("latent_dim", "beta"))


def grid_points(latent_dims: Sequence[int], betas: Sequence[float]) -> list[GridPoint]:
    return [GridPoint(dim, beta) for dim, beta in itertools.product(latent_dims, betas)]


def varying_fields(points: Sequence[GridPoint]) -> list[str]:
    return [item.name for item in fields(GridPoint) if len({getattr(p, item.name) for p in points}) > 1]


# --- Data -----------------------------------------------------------------------------------


# --- Model and losses -------------------------------------------------------------------------


def build_encoder(image_shape: tuple[int, int, int], latent_dim: int) -> keras.Model:
    """The book's encoder: two strided convs, Dense(16), then the Gaussian's mean and log-variance."""
    encoder_inputs = keras.Input(shape=image_shape, name="images")
    x = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(encoder_inputs)
    x = layers.Conv2D(64, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(16, activation="relu")(x)
    z_mean = layers.Dense(latent_dim, dtype="float32", name="z_mean")(x)
    z_log_var = layers.Dense(latent_dim, dtype="float32", name="z_log_var")(x)
    return keras.Model(encoder_inputs, [z_mean, z_log_var], name="encoder")


def build_decoder(image_shape: tuple[int, int, int], latent_dim: int) -> keras.Model:
    """The book's decoder: Dense to a quarter-size feature map, two transposed convs, sigmoid conv."""
    height, width, channels = image_shape
    latent_inputs = keras.Input(shape=(latent_dim,), name="z")
    x = layers.Dense((height // 4) * (width // 4) * 64, activation="relu")(latent_inputs)
    x = layers.Reshape((height // 4, width // 4, 64))(x)
    x = layers.Conv2DTranspose(64, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Conv2DTranspose(32, 3, activation="relu", strides=2, padding="same")(x)
    decoder_outputs = layers.Conv2D(
        channels, 3, activation="sigmoid", padding="same", dtype="float32", name="reconstruction"
    )(x)
    return keras.Model(latent_inputs, decoder_outputs, name="decoder")


class Sampler(layers.Layer):
    """z = z_mean + exp(z_log_var / 2) * epsilon, epsilon ~ N(0, I): the reparameterisation trick."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, z_mean, z_log_var):
        epsilon = keras.random.normal(ops.shape(z_mean), dtype=z_mean.dtype, seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon


def kl_divergence(z_mean, z_log_var):
    """KL(N(z_mean, exp(z_log_var)) || N(0, I)) per example, summed over the latent dimensions."""
    return -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)


def reconstruction_loss(originals, reconstructions):
    """Binary cross-entropy per example, summed over every pixel and channel (the Keras example's
    units: for one channel this is its sum over the 28 x 28 pixels)."""
    cross_entropy = ops.binary_crossentropy(originals, reconstructions)  # (batch, h, w, c)
    return ops.sum(cross_entropy, axis=tuple(range(1, len(cross_entropy.shape))))


class VAE(keras.Model):
    """Encoder + sampler + decoder, trained by fit() on -ELBO = reconstruction + beta * KL."""

    def __init__(
        self, encoder: keras.Model, decoder: keras.Model, beta: float = 1.0, seed: int | None = None, **kwargs
    ):
        super().__init__(**kwargs)
        self.encoder, self.decoder, self.beta = encoder, decoder, beta
        self.sampler = Sampler(seed)
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
        self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_loss_tracker = keras.metrics.Mean(name="kl_loss")

    @property
    def metrics(self):
        return [self.total_loss_tracker, self.reconstruction_loss_tracker, self.kl_loss_tracker]

    def call(self, images, training=False):
        z_mean, z_log_var = self.encoder(images, training=training)
        return self.decoder(self.sampler(z_mean, z_log_var), training=training)

    def losses_of(self, images, training: bool):
        """Mean per-image total, reconstruction and KL loss of one batch."""
        z_mean, z_log_var = self.encoder(images, training=training)
        reconstructions = self.decoder(self.sampler(z_mean, z_log_var), training=training)
        reconstruction = ops.mean(reconstruction_loss(images, reconstructions))
        kl = ops.mean(kl_divergence(z_mean, z_log_var))
        return reconstruction + self.beta * kl, reconstruction, kl

    def train_step(self, images):
        with tf.GradientTape() as tape:
            total, reconstruction, kl = self.losses_of(images, training=True)
            # Each replica sees 1/n of the global batch; mixed precision scales the loss up.
            scaled = self.optimizer.scale_loss(total / tf.distribute.get_strategy().num_replicas_in_sync)
        gradients = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply(gradients, self.trainable_weights)
        return self._track(total, reconstruction, kl)

    def test_step(self, images):
        return self._track(*self.losses_of(images, training=False))

    def _track(self, total, reconstruction, kl) -> dict[str, Any]:
        self.total_loss_tracker.update_state(total)
        self.reconstruction_loss_tracker.update_state(reconstruction)
        self.kl_loss_tracker.update_state(kl)
        return {metric.name: metric.result() for metric in self.metrics}


# --- Training -------------------------------------------------------------------------------


class Checkpoints(keras.callbacks.Callback):
    """Saves encoder and decoder after every epoch whose losses are finite; a NaN/inf loss stops
    training at that batch (keras.callbacks.TerminateOnNaN only watches a "loss" key) and is
    recorded, so the last good epoch's models stay on disk."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder
        self.last_good_epoch = 0  # 1-based; 0 = none yet
        self.diverged_at_epoch = 0

    def on_train_batch_end(self, batch, logs=None):
        if not math.isfinite(float((logs or {}).get("total_loss", 0.0))):
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if not all(math.isfinite(float(value)) for value in (logs or {}).values()):
            self.diverged_at_epoch = epoch + 1
            self.model.stop_training = True
            return
        save_model_atomically(self.model.encoder, self.folder / "encoder.keras")
        save_model_atomically(self.model.decoder, self.folder / "decoder.keras")
        self.last_good_epoch = epoch + 1


def train_point(
    point: GridPoint,
    train: Split,
    test: Split,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    model_folder: Path,
    history_path: Path,
    runtime: RuntimeParams,
) -> dict[str, Any]:
    """Train one VAE of the grid; its models go to `model_folder`, its losses per epoch to a CSV."""
    keras.backend.clear_session()  # each point starts from the same seed and an empty graph
    strategy = configure_runtime(
        runtime.seed, runtime.dtype_policy, runtime.memory_growth, runtime.distribute
    )
    image_shape = train.images.shape[1:]
    global_batch = batch_size * strategy.num_replicas_in_sync
    with strategy.scope():
        vae = VAE(
            build_encoder(image_shape, point.latent_dim),
            build_decoder(image_shape, point.latent_dim),
            point.beta,
            runtime.seed,
        )
        vae.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=runtime.jit_compile)
    checkpoints = Checkpoints(model_folder)
    history_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    vae.fit(
        image_dataset(train.images, global_batch, shuffle=True, seed=runtime.seed),
        validation_data=image_dataset(test.images, global_batch, shuffle=False),
        epochs=epochs,
        callbacks=[
            checkpoints,
            keras.callbacks.CSVLogger(str(history_path)),
            Progress(
                epochs, math.ceil(len(train.images) / global_batch), global_batch, loss_key="total_loss"
            ),
        ],
        shuffle=False,  # the dataset reshuffles itself every epoch
        verbose=0,
    )
    seconds = time.perf_counter() - started
    rows = read_history(history_path)
    epochs_run = len(rows)
    good = rows[checkpoints.last_good_epoch - 1] if checkpoints.last_good_epoch else {}
    return {
        "epochs_completed": checkpoints.last_good_epoch,
        "diverged_at_epoch": checkpoints.diverged_at_epoch,
        "seconds": seconds,
        "seconds_per_epoch": seconds / max(1, epochs_run),
        **{f"train_{term}": good.get(term, math.nan) for term in LOSS_TERMS},
        **{f"test_{term}": good.get(f"val_{term}", math.nan) for term in LOSS_TERMS},
    }


# --- The latent space ----------------------------------------------------------------------------


def encode(encoder: keras.Model, pixels: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """(n, latent_dim) latent means of uint8 images, converted to floats one batch at a time."""
    batches = image_dataset(pixels, batch_size, shuffle=False)
    return np.concatenate([encoder(batch, training=False)[0].numpy() for batch in batches]).astype(np.float64)


def decode(decoder: keras.Model, z: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """(n, h, w, c) float images in [0, 1] for (n, latent_dim) latent points."""
    z = np.asarray(z, np.float32)
    return np.concatenate(
        [
            decoder(z[start : start + batch_size], training=False).numpy()
            for start in range(0, len(z), batch_size)
        ]
    )


@dataclass(frozen=True)
class LatentAxes:
    """The plane the latent grid and scatter show: center + t1 * axes[0] + t2 * axes[1]."""

    center: np.ndarray  # (latent_dim,)
    axes: np.ndarray  # (num_axes, latent_dim); rows scaled so t = +-1 is one spread along them
    names: tuple[str, ...]  # what each axis is, for plot labels

    def coordinates(self, z: np.ndarray) -> np.ndarray:
        """(n, num_axes) coordinates of latent points in this plane (grid units)."""
        return (z - self.center) @ np.linalg.pinv(self.axes)


def latent_axes(z_means: np.ndarray, principal: bool = False) -> LatentAxes:
    """The latent plane itself when latent_dim <= 2 (the book's grid around the origin); otherwise,
    or if `principal`, the two leading principal directions of `z_means` around their mean, each
    scaled by the standard deviation along it."""
    latent_dim = z_means.shape[1]
    if latent_dim <= 2 and not principal:
        return LatentAxes(
            np.zeros(latent_dim), np.eye(latent_dim), tuple(f"z[{i}]" for i in range(latent_dim))
        )
    center = z_means.mean(axis=0)
    _, singular_values, directions = np.linalg.svd(z_means - center, full_matrices=False)
    spreads = singular_values[:2] / math.sqrt(max(1, len(z_means) - 1))
    explained = singular_values[:2] ** 2 / max(np.sum(singular_values**2), 1e-300)
    return LatentAxes(
        center,
        directions[:2] * spreads[:, None],
        tuple(
            f"principal direction {i + 1} of the test means ({share:.0%} of variance), in std"
            for i, share in enumerate(explained)
        ),
    )


def grid_latents(axes: LatentAxes, grid_size: int, scale: float) -> np.ndarray:
    """(rows * columns, latent_dim) points, row-major, top row first: the book's grid_x / grid_y[::-1]."""
    steps = np.linspace(-scale, scale, grid_size)
    if len(axes.axes) == 1:
        return axes.center + steps[:, None] * axes.axes[0]
    return np.asarray([axes.center + x * axes.axes[0] + y * axes.axes[1] for y in steps[::-1] for x in steps])


def mosaic(pixels: np.ndarray, columns: int) -> np.ndarray:
    """(n, h, w, c) images in [0, 1] tiled row-major into one (rows * h, columns * w, 3) [0, 255] image."""
    count, height, width, channels = pixels.shape
    rows = -(-count // columns)
    canvas = np.ones((rows * height, columns * width, channels), np.float32)
    for index, image in enumerate(pixels):
        row, column = divmod(index, columns)
        canvas[row * height : (row + 1) * height, column * width : (column + 1) * width] = image
    canvas = np.repeat(canvas, 3, axis=-1) if channels == 1 else canvas
    return canvas * 255.0


def latent_grid(decoder: keras.Model, axes: LatentAxes, grid_size: int, scale: float) -> np.ndarray:
    """The book's figure: images decoded from a grid_size x grid_size grid over the latent plane."""
    latents = grid_latents(axes, grid_size, scale)
    return mosaic(decode(decoder, latents), columns=grid_size)


def class_examples(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of `count` examples, cycling through the classes (the first of each, then the second...)."""
    by_class = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    order = [
        indices[rank]
        for rank in range(max(map(len, by_class)))
        for indices in by_class
        if rank < len(indices)
    ]
    return np.asarray(order[:count], np.int64)


def interpolate(start: np.ndarray, end: np.ndarray, num_steps: int) -> np.ndarray:
    """(num_steps, latent_dim) points evenly spaced on the segment from `start` to `end`."""
    weights = np.linspace(0.0, 1.0, num_steps)[:, None]
    return (1.0 - weights) * start + weights * end


def concept_vector(z_means: np.ndarray, labels: np.ndarray, source: int, target: int) -> np.ndarray:
    """The mean latent difference from the `source` group to the `target` group (the book's smile
    vector: mean of smiling faces minus mean of the others)."""
    return z_means[labels == target].mean(axis=0) - z_means[labels == source].mean(axis=0)


def nearest_mean_share(pixels: np.ndarray, source_mean: np.ndarray, target_mean: np.ndarray) -> float:
    """Share of images closer (in pixels) to the target group's mean image than to the source's."""
    flat = pixels.reshape(len(pixels), -1)
    to_target = np.linalg.norm(flat - target_mean.reshape(1, -1), axis=1)
    to_source = np.linalg.norm(flat - source_mean.reshape(1, -1), axis=1)
    return float(np.mean(to_target < to_source))


def scatter_plot(
    coordinates: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    axes: LatentAxes,
    title: str,
    path: Path,
) -> Path:
    """Latent means in the plane of `axes`, one colour per class (1-D latents: against the class)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 7), dpi=100)
    colors = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    one_dimensional = coordinates.shape[1] == 1
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(labels))
    y = labels + jitter if one_dimensional else coordinates[:, 1]
    for label, name in enumerate(class_names):
        chosen = labels == label
        axis.scatter(
            coordinates[chosen, 0], y[chosen], s=3, alpha=0.6, color=colors(label % colors.N), label=name
        )
    axis.set_title(title, fontsize=10)
    axis.set_xlabel(axes.names[0], fontsize=9)
    axis.set_ylabel("class" if one_dimensional else axes.names[1], fontsize=9)
    axis.legend(markerscale=4, fontsize=8, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.partial.png")
    figure.savefig(temporary, format="png")
    plt.close(figure)
    temporary.replace(path)
    return path


# --- Pipeline steps (the commands in dvc.yaml) ------------------------------------------------


def prepare_data(paths: VaePaths, params: VaeDataParams, seed: int, root: Path = Path(".")) -> dict[str, Any]:
    """Load the dataset, conform it to the model's image size and channels, keep train and test
    apart, and store both as uint8 arrays with the class names. A relative folder is under `root`."""
    if params.dataset == "folder":
        pixels, labels, class_names = read_folder(root / params.folder, params.image_size, params.channels)
        train, test = split_folder(pixels, labels, params.test_split, seed)
    else:
        train, test = load_keras_dataset(params.dataset, TECHNIQUE)
        class_names = CLASS_NAMES[params.dataset]
    train = Split(
        conform(train.images[: params.max_train_images or None], params.image_size, params.channels),
        train.labels[: params.max_train_images or None],
    )
    test = Split(
        conform(test.images[: params.max_test_images or None], params.image_size, params.channels),
        test.labels[: params.max_test_images or None],
    )
    save_split(train, paths.data / "train.npz")
    save_split(test, paths.data / "test.npz")
    summary = {
        "dataset": params.dataset,
        "classes": class_names,
        "image_shape": list(train.images.shape[1:]),
        "num_train": len(train.images),
        "num_test": len(test.images),
    }
    data.write_json(paths.data / "classes.json", summary)
    log.info("data: %s", {key: value for key, value in summary.items() if key != "classes"})
    return summary


def train_grid(
    paths: VaePaths, model: VaeModelParams, train: VaeTrainParams, runtime: RuntimeParams
) -> list[dict[str, Any]]:
    """Train one VAE per grid point (latent_dim x beta); writes models, losses and metrics."""
    train_split, test_split = load_split(paths.data / "train.npz"), load_split(paths.data / "test.npz")
    points = grid_points(model.latent_dim, train.beta)
    varying = varying_fields(points)
    for folder in (paths.models, paths.training):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)  # DVC needs every declared output, even if no point kept a model
    log.info(
        "training %d VAE(s) on %d images (%d test), %d epochs",
        len(points),
        len(train_split.images),
        len(test_split.images),
        train.epochs,
    )
    results = []
    for index, point in enumerate(points):
        name, label = f"point_{index:02d}", point.label(varying)
        log.info("point %d/%d: %s", index + 1, len(points), label)
        metrics = train_point(
            point,
            train_split,
            test_split,
            train.epochs,
            train.batch_size,
            train.learning_rate,
            paths.models / name,
            paths.training / f"{name}.csv",
            runtime,
        )
        result = {"name": name, "label": label, "point": asdict(point), "metrics": metrics}
        if metrics["diverged_at_epoch"]:
            log.warning(diverged_message(result))
        results.append(result)
    data.write_json(paths.training / "points.json", results)
    data.write_json(paths.train_metrics, {result["name"]: result["metrics"] for result in results})
    return results


def read_class_names(paths: VaePaths) -> list[str]:
    if not (paths.data / "classes.json").is_file():
        raise VaeError(f"{paths.data / 'classes.json'} not found: run the data step first")
    return json.loads((paths.data / "classes.json").read_text(encoding="utf-8"))["classes"]


def sample_grid(paths: VaePaths, params: VaeSampleParams, seed: int) -> list[dict[str, Any]]:
    """For every trained point: the latent grid, scatter, reconstructions, interpolation and concept
    vectors as images, plus a labelled comparison of the latent grids."""
    class_names = read_class_names(paths)
    check_concepts(params.concepts, class_names, f"the data in {paths.data}")
    if not (paths.training / "points.json").is_file():
        raise VaeError(f"{paths.training / 'points.json'} not found: run the train step first")
    train_split, test_split = load_split(paths.data / "train.npz"), load_split(paths.data / "test.npz")
    points = json.loads((paths.training / "points.json").read_text())
    staging = paths.samples.with_name(f".{paths.samples.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    results, tiles = [], []
    for point in points:
        folder = paths.models / point["name"]
        if not (folder / "decoder.keras").is_file():
            log.warning(
                "%s: no trained model (training diverged in its first epoch); nothing to sample",
                point["label"],
            )
            continue
        keras.utils.set_random_seed(seed)
        encoder = keras.models.load_model(folder / "encoder.keras")
        decoder = keras.models.load_model(folder / "decoder.keras")
        outputs = staging / point["name"]
        metrics = sample_point(
            encoder, decoder, train_split, test_split, class_names, params, point["label"], outputs
        )
        grid = images.read_image(outputs / "latent_grid.png")
        tiles.append((point["label"], grid))
        results.append({"name": point["name"], "label": point["label"], "metrics": metrics})
    if tiles:
        images.save_image(images.labelled_grid(tiles, tile_height=420, columns=3), staging / "comparison.png")
    data.write_json(staging / "samples.json", results)
    if paths.samples.exists():
        shutil.rmtree(paths.samples)
    staging.replace(paths.samples)
    data.write_json(paths.sample_metrics, {result["name"]: result["metrics"] for result in results})
    return results


def sample_point(
    encoder: keras.Model,
    decoder: keras.Model,
    train: Split,
    test: Split,
    class_names: Sequence[str],
    params: VaeSampleParams,
    label: str,
    outputs: Path,
) -> dict[str, float]:
    """The images one trained VAE is judged by; returns the concept-vector metrics."""
    test_means = encode(encoder, test.images)
    axes = latent_axes(test_means, principal=params.grid_axes == "principal")
    images.save_image(
        latent_grid(decoder, axes, params.grid_size, params.grid_scale), outputs / "latent_grid.png"
    )
    title = f"{label}: latent means of the test set"
    scatter_plot(
        axes.coordinates(test_means), test.labels, class_names, axes, title, outputs / "latent_scatter.png"
    )

    chosen = class_examples(test.labels, params.num_reconstructions)
    originals = test.images[chosen].astype(np.float32) / 255.0
    images.save_image(
        mosaic(np.concatenate([originals, decode(decoder, test_means[chosen])]), columns=len(chosen)),
        outputs / "reconstructions.png",
    )
    pair = class_examples(test.labels, 2)  # two classes if there are two; a single test image, twice
    first, second = pair[0], pair[-1]
    between = decode(decoder, interpolate(test_means[first], test_means[second], params.interpolation_steps))
    strip = np.concatenate([test.images[[first]] / 255.0, between, test.images[[second]] / 255.0])
    images.save_image(mosaic(strip, columns=len(strip)), outputs / "interpolation.png")

    metrics: dict[str, float] = {}
    if params.concepts:
        train_means = encode(encoder, train.images)
    for index, concept in enumerate(params.concepts):
        source, target = class_names.index(concept.source), class_names.index(concept.target)
        if not (np.any(train.labels == source) and np.any(train.labels == target)):
            log.warning(
                "concept %s -> %s: a group has no training images; skipped", concept.source, concept.target
            )
            continue
        vector = concept_vector(train_means, train.labels, source, target)
        examples = np.flatnonzero(test.labels == source)[: params.concept_images]
        if not len(examples):
            log.warning(
                "concept %s -> %s: no test images of %s; skipped",
                concept.source,
                concept.target,
                concept.source,
            )
            continue
        source_mean = train.images[train.labels == source].mean(axis=0) / 255.0
        target_mean = train.images[train.labels == target].mean(axis=0) / 255.0
        rows = [test.images[examples] / 255.0]
        for strength in params.concept_strengths:
            shifted = decode(decoder, test_means[examples] + strength * vector)
            rows.append(shifted)
            metrics[f"concept_{index:02d}/target_share/strength_{strength:g}"] = nearest_mean_share(
                shifted, source_mean, target_mean
            )
        # rows: originals, then one row per strength; shown as one column per strength.
        columns = np.stack(rows, axis=1).reshape(-1, *test.images.shape[1:])
        images.save_image(mosaic(columns, columns=len(rows)), outputs / f"concept_{index:02d}.png")
        metrics[f"concept_{index:02d}/vector_norm"] = float(np.linalg.norm(vector))
    return metrics


# --- MLflow logging of the steps' outputs (called by the flow) -------------------------------------


def log_training(parent_run_id: str, experiment_id: str, paths: VaePaths) -> dict[str, str]:
    """One child run per grid point: its settings, train and test losses per epoch, the encoder and
    decoder as Keras models; FAILED if its loss became NaN. Returns {point name: child run id}."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    client = mlflow.MlflowClient()
    summary = json.loads((paths.data / "classes.json").read_text(encoding="utf-8"))
    image_shape = tuple(summary["image_shape"])
    child_ids, test_losses = {}, []
    for result in json.loads((paths.training / "points.json").read_text()):
        point, metrics = result["point"], result["metrics"]
        with mlflow.start_run(
            run_name=result["label"], experiment_id=experiment_id, parent_run_id=parent_run_id, nested=True
        ) as child:
            run_id = child.info.run_id
            mlflow.log_params(
                {**point, "dataset": summary["dataset"], "image_shape": "x".join(map(str, image_shape))}
            )
            rows = [
                {
                    "epoch": row["epoch"],
                    **{_metric_name(key): value for key, value in row.items() if key != "epoch"},
                }
                for row in read_history(paths.training / f"{result['name']}.csv")
            ]
            tracking.log_metric_rows(run_id, rows, step_key="epoch")
            tracking.log_metrics(run_id, metrics)
            folder = paths.models / result["name"]
            if (folder / "decoder.keras").is_file():
                latent = TensorSpec(np.dtype("float32"), (-1, point["latent_dim"]), "z")
                pixels = TensorSpec(np.dtype("float32"), (-1, *image_shape), "images")
                encoder_uri = tracking.log_keras_model(
                    run_id,
                    keras.models.load_model(folder / "encoder.keras"),
                    name="encoder",
                    signature=ModelSignature(
                        Schema([pixels]),
                        Schema(
                            [latent, TensorSpec(np.dtype("float32"), (-1, point["latent_dim"]), "z_log_var")]
                        ),
                    ),
                )
                decoder_uri = tracking.log_keras_model(
                    run_id,
                    keras.models.load_model(folder / "decoder.keras"),
                    name="decoder",
                    signature=ModelSignature(Schema([latent]), Schema([pixels])),
                )
                tracking.set_tags(run_id, {"encoder_uri": encoder_uri, "decoder_uri": decoder_uri})
            child_ids[result["name"]] = run_id
            test_losses.append(metrics["test_total_loss"])
        if metrics["diverged_at_epoch"]:
            tracking.set_tags(run_id, {"failure": diverged_message(result)})
            client.set_terminated(run_id, status="FAILED")
    tracking.log_metrics(
        parent_run_id, {"best_test_total_loss": min(filter(math.isfinite, test_losses), default=math.nan)}
    )
    return child_ids


def _metric_name(history_key: str) -> str:
    """CSVLogger's keys as MLflow groups them: total_loss -> train/total_loss, val_* -> test/*."""
    return (
        f"test/{history_key.removeprefix('val_')}"
        if history_key.startswith("val_")
        else f"train/{history_key}"
    )


def diverged_message(result: dict[str, Any]) -> str:
    metrics = result["metrics"]
    kept = (
        f"kept the models of epoch {metrics['epochs_completed']}"
        if metrics["epochs_completed"]
        else "no epoch finished, so no model was kept"
    )
    return (
        f"{result['label']}: loss became NaN in epoch {metrics['diverged_at_epoch']}; {kept} "
        "(lower vae.train.learning_rate)"
    )


def log_samples(parent_run_id: str, child_run_ids: dict[str, str], paths: VaePaths) -> list[dict[str, Any]]:
    """Each point's images and concept metrics into its child run; the comparison onto the parent.

    A concept's target share is one metric stepped by strength in percent ("concept_00/target_share"
    at steps 0, 50, 100, ...), so MLflow charts it against the strength.
    """
    import mlflow

    client = mlflow.MlflowClient()
    results = json.loads((paths.samples / "samples.json").read_text())
    for result in results:
        run_id = child_run_ids[result["name"]]
        client.log_artifacts(run_id, str(paths.samples / result["name"]), "samples")
        for key, value in result["metrics"].items():
            name, _, strength = key.partition("/strength_")
            tracking.log_metrics(run_id, {name: value}, step=round(100 * float(strength)) if strength else 0)
    if (paths.samples / "comparison.png").is_file():
        client.log_artifact(parent_run_id, str(paths.samples / "comparison.png"))
    return results


# --- Command line: `python -m tasks.vae <step>` from the repo root, as dvc.yaml runs it -------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.vae", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["data", "train", "sample"])
    parser.add_argument("--root", type=Path, default=Path("."), help="repo root holding params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    try:
        params = load_params(args.root)
        vae = parse_section(params, TECHNIQUE, VaeParams)
        check_known_concepts(vae)
        runtime = parse_section(params, "runtime", RuntimeParams)
        paths = VaePaths().under(args.root)
        if args.step == "data":
            prepare_data(paths, vae.data, runtime.seed, args.root)
        elif args.step == "train":
            train_grid(paths, vae.model, vae.train, runtime)
        else:
            sample_grid(paths, vae.sample, runtime.seed)
    except (ParamsError, VaeError, DatasetError, images.ImageError, data.DownloadError) as error:
        return steps.report_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
