"""A deep convolutional GAN (Goodfellow et al. 2014; DCGAN, Radford et al. 2015; Chollet, Deep
Learning with Python, 2nd ed. 12.5): a generator maps latent vectors to images, a discriminator
tells them from real ones, trained against each other.

Reads top to bottom: the two networks (adapted to the image size and channels) -> the book's label
noise -> the adversarial train step (with an optional moving average of the generator) -> sampling
from fixed latent vectors -> the collapse detector that watches training.
"""

from __future__ import annotations

import logging
import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from tasks.training import all_finite

log = logging.getLogger(__name__)


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
    logits = layers.Conv2D(channels, kernel_size=5, padding="same")(x)
    # The conv in the policy's compute dtype (in float32 it took a third of a bfloat16 step for 6%
    # of its FLOPs, per the GAN benchmark), the sigmoid in float32: the images leave in float32.
    outputs = layers.Activation("sigmoid", dtype="float32")(logits)
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


def adam(learning_rate: float, beta_1: float = 0.9) -> keras.optimizers.Optimizer:
    """Adam, with dynamic loss scaling under mixed_float16 (Keras wraps only `compile`'s optimizer).
    `beta_1` 0.9 is Keras's (and the book's) default; DCGAN's 0.5 forgets old gradients sooner, which
    steadies the two networks' game."""
    optimizer = keras.optimizers.Adam(learning_rate, beta_1=beta_1)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


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


class CollapseGuard(keras.callbacks.Callback):
    """A discriminator loss below `d_loss_below` while the generator loss rises, `patience` epochs
    in a row, is a collapse: warned about, or training stops (`action: stop`). `collapsed_at_epoch`
    (1-based, 0 = none) is the first epoch it was seen. Epochs whose losses are not finite are left
    to the NaN guard."""

    def __init__(self, d_loss_below: float, patience: int, action: str):
        super().__init__()
        self.d_loss_below, self.patience, self.action = d_loss_below, patience, action
        self.collapsed_at_epoch = self.suspicious_epochs = 0
        self.previous_g_loss = math.inf

    def on_epoch_end(self, epoch, logs=None):
        if not all_finite(logs):
            return
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
