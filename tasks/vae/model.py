"""Variational autoencoder (Kingma & Welling 2013; Chollet, Deep Learning with Python, 2nd ed. 12.4):
a conv encoder maps an image to a Gaussian over a small latent space, a sampling layer draws from
it, a decoder maps the draw back to pixels; trained on reconstruction + KL divergence.

Departures from the book, on purpose:
- the KL term is summed over the latent dimensions (the book's second edition averages it,
  which under-weights it) and weighted by `beta`; the reconstruction term is summed over every
  pixel and channel, so losses are "per image" in the Keras example's units;
- training is compiled (the book uses `run_eagerly=True`), and the test split is held out and
  scored by a `test_step` instead of being mixed into the training data;
- lists of `beta` and `latent_dim` expand into a grid of runs compared in MLflow (`GridPoint`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from keras import layers, ops

from tasks.image_batches import image_dataset
from tasks.image_data import Split
from tasks.kept_epoch import kept_model_line
from tasks.params import BlowupParams, EpochChoiceParams, RuntimeParams
from tasks.runtime import configure_runtime
from tasks.storage import read_history
from tasks.training import ProgressLog, epoch_choice, save_model_atomically

LOSS_TERMS = ("total_loss", "reconstruction_loss", "kl_loss")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridPoint:
    """One VAE of the comparison grid; the fields are the grid's axes."""

    latent_dim: int
    beta: float


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
    logits = layers.Conv2D(channels, 3, padding="same", name="reconstruction_logits")(x)
    # The conv in the policy's compute dtype (bfloat16 runs it ~1.2x faster than float32 here), the
    # sigmoid and everything after it in float32, so the loss sees float32 pixels.
    decoder_outputs = layers.Activation("sigmoid", dtype="float32", name="reconstruction")(logits)
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
    choice: EpochChoiceParams,
    blowup: BlowupParams,
) -> dict[str, Any]:
    """Train one VAE of the grid; its models go to `model_folder`, its losses per epoch to a CSV.

    The encoder and decoder kept in `model_folder` are those of the epoch `choice.keep` names (the
    lowest test loss, or the last); a NaN/inf or blown-up loss stops training, and only an epoch
    that ended healthy can be kept. The metrics are the kept epoch's.
    """
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

    def save_epoch(epoch: int) -> None:
        save_model_atomically(vae.encoder, model_folder / "encoder.keras")
        save_model_atomically(vae.decoder, model_folder / "decoder.keras")

    chosen = epoch_choice(save_epoch, choice, blowup, monitor="val_total_loss", loss_key="total_loss")
    history_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    vae.fit(
        image_dataset(train.images, global_batch, shuffle=True, seed=runtime.seed),
        validation_data=image_dataset(test.images, global_batch, shuffle=False),
        epochs=epochs,
        callbacks=[
            *chosen.callbacks,
            keras.callbacks.CSVLogger(str(history_path)),
            ProgressLog(
                epochs, math.ceil(len(train.images) / global_batch), global_batch, loss_key="total_loss"
            ),
        ],
        shuffle=False,  # the dataset reshuffles itself every epoch
        verbose=0,
    )
    seconds = time.perf_counter() - started
    rows = read_history(history_path)
    outcome = chosen.outcome()
    log.info("%s", kept_model_line(outcome, chosen.kept.monitor))
    kept = rows[outcome["kept_epoch"] - 1] if outcome["kept_epoch"] else {}
    return {
        **outcome,
        "seconds": seconds,
        "seconds_per_epoch": seconds / max(1, len(rows)),
        **{f"train_{term}": kept.get(term, math.nan) for term in LOSS_TERMS},
        **{f"test_{term}": kept.get(f"val_{term}", math.nan) for term in LOSS_TERMS},
    }
