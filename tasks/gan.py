"""Generative adversarial network (Goodfellow et al. 2014; DCGAN, Radford et al. 2015; Chollet, Deep
Learning with Python, 2nd ed. 12.5): a generator maps latent vectors to images, a discriminator
tells them from real ones, trained against each other.

Reads top to bottom: params -> the comparison grid -> models -> the adversarial train step (label
noise, an optional moving average of the generator) -> the quality score (Frechet distance in the
features of a classifier the pipeline trains on the same data) -> training callbacks (fixed-latent
grids, instability guard, resume) -> the pipeline steps DVC runs -> MLflow logging.

Beyond the book: the architecture adapts to the image size and channels; every epoch a grid from
the same latent vectors and a Frechet distance make runs comparable; NaN or a collapsing
discriminator is detected; an interrupted run resumes from its last epoch; lists of learning
rates, label-noise levels and dropout rates expand into a grid of runs compared in MLflow.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import logging
import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
import pydantic
import scipy.linalg
import tensorflow as tf
from keras import layers, ops

from tasks import data, images, steps, tracking
from tasks.backbones import BackboneError, load_backbone
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
from tasks.training import Progress, save_model_atomically

log = logging.getLogger(__name__)

TECHNIQUE = "gan"
WORK_DIR = Path(".gendl/gan")  # per-point work in progress (resume backups), outside DVC's outputs


class GanError(ValueError):
    """Bad input for the GAN: data that does not fit the model, or a step run out of order."""


class TrainingFailed(RuntimeError):
    """A grid point's loss became NaN, or it collapsed with `on_instability: stop`."""


# --- Params -------------------------------------------------------------------------------


Rate = pydantic.confloat(ge=0.0, lt=1.0)


class GanDataParams(ImageDataParams):
    max_images: int = pydantic.Field(ge=0)  # use only the first N training images; 0 = all


class GanModelParams(Params):
    latent_dim: int = pydantic.Field(ge=1)
    width: float = pydantic.Field(gt=0.0, le=4.0)  # multiplies the book's filter counts (1 = the book's)
    dropout: list[Rate] = pydantic.Field(min_length=1)  # discriminator dropout; one grid axis


class InstabilityParams(Params):
    d_loss_below: float = pydantic.Field(ge=0.0, allow_inf_nan=False)  # discriminator "wins"...
    patience: int = pydantic.Field(ge=1)  # ...while the generator loss rises, this many epochs
    action: Literal["warn", "stop"]


class GanTrainParams(Params):
    epochs: int = pydantic.Field(ge=1)
    batch_size: int = pydantic.Field(ge=1)
    learning_rate: list[pydantic.PositiveFloat] = pydantic.Field(min_length=1)  # both Adams; grid axis
    label_noise: list[pydantic.NonNegativeFloat] = pydantic.Field(min_length=1)  # grid axis
    ema_decay: Rate  # moving average of the generator's weights; 0 = off
    grid_images: int = pydantic.Field(ge=1)  # images from fixed latent vectors, every epoch
    instability: InstabilityParams


class GanScoreParams(Params):
    features: Literal["classifier", "inception_v3"]  # whose features the Frechet distance compares
    classifier_epochs: int = pydantic.Field(ge=1)
    num_images: int = pydantic.Field(ge=2)  # generated and real images per Frechet distance


class GanParams(Params):
    data: GanDataParams
    model: GanModelParams
    train: GanTrainParams
    score: GanScoreParams


@dataclass(frozen=True)
class GanPaths:
    """Where each step reads and writes, relative to the repo root; dvc.yaml declares the same."""

    data: Path = Path("data/gan")  # train.npz, test.npz, classes.json
    classifier: Path = Path("models/gan_classifier")  # classifier.keras, metrics.json
    models: Path = Path("models/gan")  # point_NN/generator.keras (+ ema_generator.keras)
    training: Path = Path("outputs/gan/training")  # points.json, comparison.png, point_NN/...
    train_metrics: Path = Path("outputs/gan/train_metrics.json")

    def under(self, root: Path) -> GanPaths:
        return GanPaths(**{item.name: root / getattr(self, item.name) for item in fields(self)})


# --- The comparison grid --------------------------------------------------------------------


@dataclass(frozen=True)
class GridPoint:
    learning_rate: float
    label_noise: float
    dropout: float

    def label(self, varying: Sequence[str]) -> str:
        names = varying or [item.name for item in fields(self)]
        return ", ".join(f"{name}={getattr(self, name):g}" for name in names)


def grid_points(train: GanTrainParams, model: GanModelParams) -> list[GridPoint]:
    return [
        GridPoint(rate, noise, dropout)
        for rate, noise, dropout in itertools.product(train.learning_rate, train.label_noise, model.dropout)
    ]


def varying_fields(points: Sequence[GridPoint]) -> list[str]:
    return [item.name for item in fields(GridPoint) if len({getattr(p, item.name) for p in points}) > 1]


# --- Models ---------------------------------------------------------------------------------


def num_upsamplings(image_size: int) -> int:
    """Stride-2 stages between the generator's first square and the image: the book's 3 (8 -> 64)
    while the first square stays at least 4 pixels wide, at least 2 (28 -> 7)."""
    count = 2
    while count < 3 and image_size % 2 ** (count + 1) == 0 and image_size // 2 ** (count + 1) >= 4:
        count += 1
    return count


def filters(count: int, width: float) -> int:
    return max(8, round(count * width))


def build_discriminator(
    image_shape: tuple[int, int, int], dropout: float = 0.2, width: float = 1.0
) -> keras.Model:
    """The book's discriminator: strided 4x4 convs with LeakyReLU(0.2), dropout, a sigmoid."""
    inputs = keras.Input(shape=image_shape, name="images")
    x = inputs
    for count in (64, 128, 128)[: num_upsamplings(image_shape[0])]:
        x = layers.Conv2D(filters(count, width), kernel_size=4, strides=2, padding="same")(x)
        x = layers.LeakyReLU(negative_slope=0.2)(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="fake")(x)
    return keras.Model(inputs, outputs, name="discriminator")


def build_generator(image_shape: tuple[int, int, int], latent_dim: int, width: float = 1.0) -> keras.Model:
    """The book's generator: Dense to a small square, strided 4x4 transposed convs (kernel
    divisible by the stride, against checkerboard artefacts), LeakyReLU(0.2), a sigmoid conv."""
    size, _, channels = image_shape
    upsamplings = num_upsamplings(size)
    start = size // 2**upsamplings
    inputs = keras.Input(shape=(latent_dim,), name="z")
    x = layers.Dense(start * start * filters(128, width))(inputs)
    x = layers.Reshape((start, start, filters(128, width)))(x)
    for count in (128, 256, 512)[-upsamplings:]:
        x = layers.Conv2DTranspose(filters(count, width), kernel_size=4, strides=2, padding="same")(x)
        x = layers.LeakyReLU(negative_slope=0.2)(x)
    outputs = layers.Conv2D(channels, kernel_size=5, padding="same", activation="sigmoid", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="generator")


def noisy_labels(labels, noise: float, seed):
    """The book's trick: labels + noise * U(0, 1), so the discriminator is never told "certainly"."""
    return labels + noise * keras.random.uniform(ops.shape(labels), seed=seed)


class GAN(keras.Model):
    """Generator and discriminator trained by fit(): the discriminator on generated (label 1) and
    real (label 0) images with noisy labels, then the generator to make the discriminator say 0."""

    def __init__(
        self,
        discriminator: keras.Model,
        generator: keras.Model,
        latent_dim: int,
        label_noise: float = 0.05,
        ema_decay: float = 0.0,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.discriminator, self.generator = discriminator, generator
        self.latent_dim, self.label_noise, self.ema_decay = latent_dim, label_noise, ema_decay
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.ema_generator = None
        if ema_decay:
            self.ema_generator = keras.models.clone_model(generator)
            self.ema_generator.set_weights(generator.get_weights())
            self.ema_generator.trainable = False
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")

    def compile(self, d_optimizer, g_optimizer, **kwargs):
        super().compile(optimizer=None, **kwargs)  # the two below do the work
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer
        # Built now, so a resumed run can load their state before the first step.
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.g_optimizer.build(self.generator.trainable_variables)

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def call(self, z, training=False):
        return self.generator(z, training=training)

    def train_step(self, real_images):
        batch_size = ops.shape(real_images)[0]
        latents = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
        generated = self.generator(latents, training=True)
        combined = ops.concatenate([generated, ops.cast(real_images, generated.dtype)], axis=0)
        labels = ops.concatenate([ops.ones((batch_size, 1)), ops.zeros((batch_size, 1))], axis=0)
        labels = noisy_labels(labels, self.label_noise, self.seed_generator)
        with tf.GradientTape() as tape:
            d_loss = keras.losses.binary_crossentropy(labels, self.discriminator(combined, training=True))
            d_loss = ops.mean(d_loss)
            scaled = self.d_optimizer.scale_loss(d_loss)
        gradients = tape.gradient(scaled, self.discriminator.trainable_weights)
        self.d_optimizer.apply(gradients, self.discriminator.trainable_weights)

        latents = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            predictions = self.discriminator(self.generator(latents, training=True), training=True)
            g_loss = ops.mean(keras.losses.binary_crossentropy(ops.zeros((batch_size, 1)), predictions))
            scaled = self.g_optimizer.scale_loss(g_loss)
        gradients = tape.gradient(scaled, self.generator.trainable_weights)
        self.g_optimizer.apply(gradients, self.generator.trainable_weights)
        if self.ema_generator is not None:
            for average, weight in zip(self.ema_generator.weights, self.generator.weights):
                average.assign(self.ema_decay * average + (1.0 - self.ema_decay) * weight)
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}


def fixed_latents(count: int, latent_dim: int, seed: int) -> np.ndarray:
    """The same latent vectors for every epoch and every run with this seed: progress is comparable."""
    return np.random.default_rng(seed).standard_normal((count, latent_dim)).astype(np.float32)


def generate(generator: keras.Model, latents: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(n, h, w, c) images in [0, 1] for (n, latent_dim) latent vectors."""
    return np.concatenate(
        [
            generator(latents[start : start + batch_size], training=False).numpy()
            for start in range(0, len(latents), batch_size)
        ]
    )


def sample_grid(pixels: np.ndarray) -> np.ndarray:
    """(n, h, w, c) in [0, 1] -> one near-square (H, W, 3) [0, 255] image, row-major."""
    columns = math.ceil(math.sqrt(len(pixels)))
    rows = math.ceil(len(pixels) / columns)
    height, width, channels = pixels.shape[1:]
    canvas = np.ones((rows * height, columns * width, channels), np.float32)
    for index, image in enumerate(pixels):
        row, column = divmod(index, columns)
        canvas[row * height : (row + 1) * height, column * width : (column + 1) * width] = image
    return (np.repeat(canvas, 3, axis=-1) if channels == 1 else canvas) * 255.0


# --- The quality score ------------------------------------------------------------------------------


def build_classifier(image_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """A small convnet whose penultimate layer ("features") is the space the score is measured in."""
    inputs = keras.Input(shape=image_shape, name="images")
    x = layers.Conv2D(32, 3, activation="relu", padding="same")(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(64, 3, activation="relu", padding="same")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu", name="features")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="classifier")


def rotation_task(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unlabelled images (one class): predicting which of 4 rotations was applied teaches features
    (Gidaris et al. 2018). Square images only, which the data step guarantees."""
    rotated = np.concatenate([np.rot90(pixels, k, axes=(1, 2)) for k in range(4)])
    return rotated, np.repeat(np.arange(4, dtype=np.int32), len(pixels))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two Gaussians (the FID formula)."""
    with warnings.catch_warnings():  # a singular product (e.g. a collapsed generator) is handled below
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # singular product: nudge both (as the FID reference code does)
        offset = np.eye(len(cov_a)) * 1e-6
        root = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2.0 * np.real(root))
    return float(max(distance, 0.0))


def score_features(
    classifier_path: Path, features: str, weights: str = "pretrained"
) -> Callable[[tf.Tensor], tf.Tensor]:
    """Images in [0, 1] -> the features the score compares: the pipeline's classifier's "features"
    layer, or InceptionV3's pooled last block (the FID's own space; needs ImageNet weights)."""
    if features == "classifier":
        classifier = keras.models.load_model(classifier_path)
        return keras.Model(classifier.input, classifier.get_layer("features").output)
    try:
        extract = load_backbone("inception_v3", weights).feature_extractor(["mixed10"])
    except BackboneError as error:
        raise GanError(f"{error}; or set gan.score.features to classifier") from None

    def inception_features(batch: tf.Tensor) -> tf.Tensor:
        batch = tf.image.grayscale_to_rgb(batch) if batch.shape[-1] == 1 else batch
        batch = tf.image.resize(batch, (299, 299), method="bilinear")
        return tf.reduce_mean(extract(batch * 2.0 - 1.0)["mixed10"], axis=(1, 2))

    return inception_features


def features_of(
    extractor: Callable[[tf.Tensor], tf.Tensor], pixels: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Score features of images, uint8 or float in [0, 1]."""
    scale = 255.0 if pixels.dtype == np.uint8 else 1.0
    return np.concatenate(
        [
            np.asarray(extractor(tf.constant(pixels[start : start + batch_size].astype(np.float32) / scale)))
            for start in range(0, len(pixels), batch_size)
        ]
    ).astype(np.float64)


# --- Training callbacks -----------------------------------------------------------------------------


class EpochRecords(keras.callbacks.Callback):
    """Per step d_loss/g_loss and per epoch a grid from fixed latents, the Frechet distance (raw
    and moving-average generator) and the epoch's losses, written to the point's work folder as
    they come; on a resumed run the rows of epochs after the restored one are dropped first."""

    def __init__(
        self,
        folder: Path,
        latents: np.ndarray,
        extractor: keras.Model,
        real_statistics,
        num_images: int,
        seed: int,
    ):
        super().__init__()
        self.folder, self.latents, self.extractor = folder, latents, extractor
        self.real_statistics, self.num_images, self.seed = real_statistics, num_images, seed
        self.steps_path, self.epochs_path = folder / "steps.csv", folder / "epochs.csv"

    def on_train_begin(self, logs=None):
        done = getattr(self.model, "_initial_epoch", 0) or 0  # set by BackupAndRestore on resume
        self.epoch_rows = [row for row in read_rows(self.epochs_path) if row["epoch"] <= done]
        self.step_rows = [row for row in read_rows(self.steps_path) if row["epoch"] <= done]
        self.step = int(self.step_rows[-1]["step"]) if self.step_rows else 0
        if done:
            log.info("resuming after epoch %d from %s", done, self.folder)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        self.step_rows.append(
            {"step": self.step, "epoch": self.epoch, **{k: float(v) for k, v in (logs or {}).items()}}
        )

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{key: float(value) for key, value in (logs or {}).items()}}
        score_latents = fixed_latents(self.num_images, self.latents.shape[1], self.seed + 1)
        generators = {"": self.model.generator}
        if self.model.ema_generator is not None:
            generators["ema_"] = self.model.ema_generator
        finite = all(math.isfinite(value) for value in row.values())
        for prefix, generator in generators.items() if finite else ():  # a NaN epoch has nothing to show
            images.save_image(
                sample_grid(generate(generator, self.latents)),
                self.folder / "grids" / f"{prefix}epoch_{epoch + 1:03d}.png",
            )
            statistics = feature_statistics(features_of(self.extractor, generate(generator, score_latents)))
            row[f"{prefix}frechet_distance"] = frechet_distance(*statistics, *self.real_statistics)
        self.epoch_rows.append(row)
        write_rows(self.epochs_path, self.epoch_rows)
        write_rows(self.steps_path, self.step_rows)
        log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))


class Guard(keras.callbacks.Callback):
    """Saves the generator(s) after every finite epoch; a NaN loss stops at once; a discriminator
    loss below `d_loss_below` while the generator loss rises for `patience` epochs is a collapse:
    warned about, or training stops, as configured."""

    def __init__(self, folder: Path, d_loss_below: float, patience: int, action: str):
        super().__init__()
        self.folder, self.d_loss_below, self.patience, self.action = folder, d_loss_below, patience, action
        self.diverged_at_epoch = self.collapsed_at_epoch = self.last_good_epoch = 0
        self.suspicious_epochs = 0
        self.previous_g_loss = math.inf

    def on_train_begin(self, logs=None):
        self.last_good_epoch = getattr(self.model, "_initial_epoch", 0) or 0

    def on_train_batch_end(self, batch, logs=None):
        if not all(math.isfinite(float(value)) for value in (logs or {}).values()):
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not all(math.isfinite(float(value)) for value in logs.values()):
            self.diverged_at_epoch = epoch + 1
            self.model.stop_training = True
            return
        save_model_atomically(self.model.generator, self.folder / "generator.keras")
        if self.model.ema_generator is not None:
            save_model_atomically(self.model.ema_generator, self.folder / "ema_generator.keras")
        self.last_good_epoch = epoch + 1
        d_loss, g_loss = float(logs["d_loss"]), float(logs["g_loss"])
        rising = g_loss > self.previous_g_loss
        self.previous_g_loss = g_loss
        self.suspicious_epochs = self.suspicious_epochs + 1 if d_loss < self.d_loss_below and rising else 0
        if self.suspicious_epochs >= self.patience and not self.collapsed_at_epoch:
            self.collapsed_at_epoch = epoch + 1
            log.warning(
                "epoch %d: discriminator loss %.4f < %g while the generator loss rose for %d epoch(s): "
                "the GAN is collapsing%s",
                epoch + 1,
                d_loss,
                self.d_loss_below,
                self.suspicious_epochs,
                ", stopping" if self.action == "stop" else "",
            )
            if self.action == "stop":
                self.model.stop_training = True


class BackupAfterRecords(keras.callbacks.BackupAndRestore):
    """Keras's resume (restored as the first callback, fit starts after the restored epoch), saved
    only when the last callback calls `save`, after the epoch's records, and never for a NaN epoch.

    Crash-safe, which Keras's own save is not (a kill mid-write leaves half a weights file or an
    empty metadata file): each epoch's weights go to a new file, then backup.json naming it is
    replaced atomically, so whenever the process dies the backup is one complete epoch.
    """

    def on_epoch_end(self, epoch, logs=None):
        pass

    def save(self, epoch, logs=None):
        if all(math.isfinite(float(value)) for value in (logs or {}).values()):
            super().on_epoch_end(epoch, logs)  # sets the epoch, then calls _save_model

    def _save_model(self):
        folder = Path(self.backup_dir)
        folder.mkdir(parents=True, exist_ok=True)
        partial, weights = (
            folder / "partial.weights.h5",
            folder / f"epoch_{self._current_epoch:04d}.weights.h5",
        )
        self.model.save_weights(str(partial), overwrite=True)
        partial.replace(weights)
        data.write_json(folder / "backup.json", {"epoch": self._current_epoch, "weights": weights.name})
        for older in folder.glob("epoch_*.weights.h5"):
            if older != weights:
                older.unlink()

    def _load_model(self):
        state = Path(self.backup_dir) / "backup.json"
        if state.is_file():
            backup = json.loads(state.read_text())
            self.model.load_weights(Path(self.backup_dir) / backup["weights"])
            self.model._initial_epoch = backup["epoch"]  # where fit starts, as Keras's own restore sets it


def read_rows(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return [
            {key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(file)
        ]


def write_rows(path: Path, rows: Sequence[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(key for row in rows for key in row))
    temporary = path.with_name(f".{path.name}.partial")
    with temporary.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    temporary.replace(path)


# --- Pipeline steps (the commands in dvc.yaml) ------------------------------------------------


def prepare_data(paths: GanPaths, params: GanDataParams, seed: int, root: Path = Path(".")) -> dict[str, Any]:
    """The training images (and held-out real images for scoring), conformed to the model's size."""
    if params.dataset == "folder":
        pixels, labels, class_names = read_folder(root / params.folder, params.image_size, params.channels)
        train, test = split_folder(pixels, labels, params.test_split, seed)
    else:
        train, test = load_keras_dataset(params.dataset, TECHNIQUE)
        class_names = CLASS_NAMES[params.dataset]
    limit = params.max_images or None
    train = Split(conform(train.images[:limit], params.image_size, params.channels), train.labels[:limit])
    test = Split(conform(test.images, params.image_size, params.channels), test.labels)
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


def train_classifier(paths: GanPaths, epochs: int, runtime: RuntimeParams) -> dict[str, float]:
    """The scoring classifier: the dataset's labels, or rotations of its images when it has one class."""
    configure_runtime(runtime.seed, "float32", runtime.memory_growth, "default")
    train, test = load_split(paths.data / "train.npz"), load_split(paths.data / "test.npz")
    labelled = len(np.unique(train.labels)) > 1
    (train_x, train_y), (test_x, test_y) = (
        ((train.images, train.labels), (test.images, test.labels))
        if labelled
        else (rotation_task(train.images), rotation_task(test.images))
    )
    task = "labels" if labelled else "rotations"
    classifier = build_classifier(train.images.shape[1:], int(max(train_y.max(), test_y.max())) + 1)
    classifier.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = classifier.fit(
        train_x.astype(np.float32) / 255.0,
        train_y,
        batch_size=128,
        epochs=epochs,
        shuffle=True,
        validation_data=(test_x.astype(np.float32) / 255.0, test_y),
        verbose=0,
    )
    save_model_atomically(classifier, paths.classifier / "classifier.keras")
    metrics = {
        "task": task,
        "accuracy": history.history["accuracy"][-1],
        "test_accuracy": history.history["val_accuracy"][-1],
    }
    data.write_json(paths.classifier / "metrics.json", metrics)
    log.info("scoring classifier (%s): test accuracy %.3f", task, metrics["test_accuracy"])
    return metrics


def work_folder(root: Path, point: GridPoint, settings: dict[str, Any], data_path: Path) -> Path:
    """Where a point's run in progress lives: named by everything it depends on, so a resume only
    ever continues the same run."""
    digest = hashlib.sha256(json.dumps({**settings, **asdict(point)}, sort_keys=True).encode())
    digest.update(data.sha256_of(data_path).encode())
    return root / WORK_DIR / digest.hexdigest()[:16]


def adam(learning_rate: float) -> keras.optimizers.Optimizer:
    """Adam, with dynamic loss scaling under mixed_float16 (Keras wraps only `compile`'s optimizer)."""
    optimizer = keras.optimizers.Adam(learning_rate)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def train_point(
    point: GridPoint,
    train: Split,
    test: Split,
    params: GanParams,
    extractor: keras.Model,
    folder: Path,
    runtime: RuntimeParams,
) -> dict[str, Any]:
    """Train one GAN of the grid in `folder`, resuming from its last finished epoch if one is there."""
    keras.backend.clear_session()
    strategy = configure_runtime(
        runtime.seed, runtime.dtype_policy, runtime.memory_growth, runtime.distribute
    )
    image_shape = train.images.shape[1:]
    latent_dim, settings = params.model.latent_dim, params.train
    with strategy.scope():
        gan = GAN(
            build_discriminator(image_shape, point.dropout, params.model.width),
            build_generator(image_shape, latent_dim, params.model.width),
            latent_dim,
            point.label_noise,
            settings.ema_decay,
            runtime.seed,
        )
        gan.compile(
            d_optimizer=adam(point.learning_rate),
            g_optimizer=adam(point.learning_rate),
            jit_compile=runtime.jit_compile,
        )
        gan(np.zeros((1, latent_dim), np.float32))  # built, so BackupAndRestore can restore into it
    real = test.images[: params.score.num_images]
    guard = Guard(folder, **settings.instability.model_dump())
    records = EpochRecords(
        folder,
        fixed_latents(settings.grid_images, latent_dim, runtime.seed),
        extractor,
        feature_statistics(features_of(extractor, real)),
        params.score.num_images,
        runtime.seed,
    )
    global_batch = settings.batch_size * strategy.num_replicas_in_sync
    backup = BackupAfterRecords(str(folder / "backup"), delete_checkpoint=False)
    started = time.perf_counter()
    gan.fit(
        image_dataset(train.images, global_batch, shuffle=True, seed=runtime.seed),
        epochs=settings.epochs,
        callbacks=[
            backup,
            records,
            guard,
            Progress(
                settings.epochs, math.ceil(len(train.images) / global_batch), global_batch, loss_key="d_loss"
            ),
            keras.callbacks.LambdaCallback(on_epoch_end=backup.save),
        ],
        shuffle=False,
        verbose=0,
    )
    seconds = time.perf_counter() - started
    last = records.epoch_rows[guard.last_good_epoch - 1] if guard.last_good_epoch else {}
    return {
        "epochs_completed": guard.last_good_epoch,
        "diverged_at_epoch": guard.diverged_at_epoch,
        "collapsed_at_epoch": guard.collapsed_at_epoch,
        "seconds": seconds,
        "steps_per_second": len(records.step_rows) / seconds if seconds else 0.0,
        **{key: value for key, value in last.items() if key != "epoch"},
    }


def train_grid(
    paths: GanPaths, params: GanParams, runtime: RuntimeParams, root: Path = Path(".")
) -> list[dict[str, Any]]:
    """Train one GAN per grid point; a point interrupted earlier resumes where it stopped."""
    if not (paths.classifier / "classifier.keras").is_file():
        raise GanError(f"{paths.classifier / 'classifier.keras'} not found: run the classifier step first")
    train, test = load_split(paths.data / "train.npz"), load_split(paths.data / "test.npz")
    if len(test.images) < 2:
        raise GanError(
            f"the score needs at least 2 held-out real images, {paths.data / 'test.npz'} has {len(test.images)}"
        )
    extractor = score_features(paths.classifier / "classifier.keras", params.score.features)
    points = grid_points(params.train, params.model)
    varying = varying_fields(points)
    settings = {
        "latent_dim": params.model.latent_dim,
        "width": params.model.width,
        **params.train.model_dump(),
        "score": params.score.model_dump(),
        "seed": runtime.seed,
        "dtype_policy": runtime.dtype_policy,
    }
    for folder in (paths.models, paths.training):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    results, finals = [], []
    for index, point in enumerate(points):
        name, label = f"point_{index:02d}", point.label(varying)
        folder = work_folder(root, point, settings, paths.data / "train.npz")
        log.info("point %d/%d: %s (work in %s)", index + 1, len(points), label, folder)
        metrics = train_point(point, train, test, params, extractor, folder, runtime)
        result = {"name": name, "label": label, "point": asdict(point), "metrics": metrics}
        if metrics["diverged_at_epoch"] or metrics["collapsed_at_epoch"]:
            log.warning(failure_message(result, params.train.instability.action))
        (paths.models / name).mkdir()
        for model in folder.glob("*generator.keras"):
            shutil.copy2(model, paths.models / name / model.name)
        shutil.copytree(folder, paths.training / name, ignore=shutil.ignore_patterns("backup", "*.keras"))
        for prefix, suffix in (("", ""), ("ema_", " (EMA)")):  # the last good epoch's samples
            last_grid = folder / "grids" / f"{prefix}epoch_{metrics['epochs_completed']:03d}.png"
            if metrics["epochs_completed"] and last_grid.is_file():
                finals.append((label + suffix, images.read_image(last_grid)))
        shutil.rmtree(folder)  # finished: nothing left to resume
        results.append(result)
    if finals:
        images.save_image(
            images.labelled_grid(finals, tile_height=256, columns=4), paths.training / "comparison.png"
        )
    data.write_json(paths.training / "points.json", results)
    data.write_json(paths.train_metrics, {result["name"]: result["metrics"] for result in results})
    return results


def failure_message(result: dict[str, Any], action: str) -> str:
    metrics = result["metrics"]
    kept = (
        f"kept the generator of epoch {metrics['epochs_completed']}"
        if metrics["epochs_completed"]
        else "no epoch finished"
    )
    if metrics["diverged_at_epoch"]:
        return f"{result['label']}: loss became NaN in epoch {metrics['diverged_at_epoch']}; {kept} (lower gan.train.learning_rate)"
    return (
        f"{result['label']}: collapsing from epoch {metrics['collapsed_at_epoch']} (discriminator loss near zero "
        f"while the generator loss rose){'; stopped, ' + kept if action == 'stop' else ''}"
    )


# --- MLflow logging of the steps' outputs (called by the flow) -------------------------------------


def log_training(parent_run_id: str, experiment_id: str, paths: GanPaths, action: str) -> dict[str, str]:
    """One child run per grid point: its settings, d_loss/g_loss per step, the Frechet distance per
    epoch, the fixed-latent grid of every epoch as a stepped image, and the generator(s); FAILED if it
    diverged or collapsed with `action: stop`. The comparison of final samples goes on the parent."""
    import mlflow
    from PIL import Image

    client = mlflow.MlflowClient()
    summary = json.loads((paths.data / "classes.json").read_text(encoding="utf-8"))
    classifier = json.loads((paths.classifier / "metrics.json").read_text())
    tracking.log_metrics(parent_run_id, {f"classifier.{k}": v for k, v in classifier.items() if k != "task"})
    child_ids, scores = {}, []
    for result in json.loads((paths.training / "points.json").read_text()):
        folder, metrics = paths.training / result["name"], result["metrics"]
        with mlflow.start_run(
            run_name=result["label"], experiment_id=experiment_id, parent_run_id=parent_run_id, nested=True
        ) as child:
            run_id = child.info.run_id
            mlflow.log_params(
                {
                    **result["point"],
                    "dataset": summary["dataset"],
                    "image_shape": "x".join(map(str, summary["image_shape"])),
                }
            )
            tracking.log_metric_rows(
                run_id,
                [{k: v for k, v in row.items() if k != "epoch"} for row in read_rows(folder / "steps.csv")],
                step_key="step",
            )
            tracking.log_metric_rows(
                run_id,
                [
                    {("epoch_" + k if k in ("d_loss", "g_loss") else k): v for k, v in row.items()}
                    for row in read_rows(folder / "epochs.csv")
                ],
                step_key="epoch",
            )
            tracking.log_metrics(
                run_id, {f"final_{k}": v for k, v in metrics.items() if isinstance(v, float)}
            )
            for grid in sorted((folder / "grids").glob("*.png")):
                key, _, epoch = grid.stem.rpartition("epoch_")
                with Image.open(grid) as image:
                    client.log_image(run_id, image.copy(), key=f"{key}samples", step=int(epoch))
            for model in sorted((paths.models / result["name"]).glob("*.keras")):
                uri = tracking.log_keras_model(run_id, keras.models.load_model(model), name=model.stem)
                tracking.set_tags(run_id, {f"{model.stem}_uri": uri})
            child_ids[result["name"]] = run_id
            if math.isfinite(metrics.get("frechet_distance", math.nan)):
                scores.append(metrics["frechet_distance"])
        failed = metrics["diverged_at_epoch"] or (metrics["collapsed_at_epoch"] and action == "stop")
        if metrics["diverged_at_epoch"] or metrics["collapsed_at_epoch"]:
            tracking.set_tags(run_id, {"instability": failure_message(result, action)})
        if failed:
            client.set_terminated(run_id, status="FAILED")
    tracking.log_metrics(parent_run_id, {"best_frechet_distance": min(scores, default=math.nan)})
    if (paths.training / "comparison.png").is_file():
        client.log_artifact(parent_run_id, str(paths.training / "comparison.png"))
    return child_ids


# --- Command line: `python -m tasks.gan <step>` from the repo root, as dvc.yaml runs it -------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.gan", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["data", "classifier", "train"])
    parser.add_argument("--root", type=Path, default=Path("."), help="repo root holding params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    try:
        params = load_params(args.root)
        gan = parse_section(params, TECHNIQUE, GanParams)
        runtime = parse_section(params, "runtime", RuntimeParams)
        paths = GanPaths().under(args.root)
        if args.step == "data":
            prepare_data(paths, gan.data, runtime.seed, args.root)
        elif args.step == "classifier":
            train_classifier(paths, gan.score.classifier_epochs, runtime)
        else:
            train_grid(paths, gan, runtime, args.root)
    except (ParamsError, GanError, DatasetError, images.ImageError, data.DownloadError) as error:
        return steps.report_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
