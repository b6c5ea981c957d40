"""The book's DCGAN, as listed, to benchmark gendl against.

Chollet, *Deep Learning with Python*, 2nd edition, section 12.5, listings 12.30-12.38 (the same
code as the companion notebook `chapter12_part05_gans.ipynb` and the keras-io example "DCGAN to
generate face images"). The notebook runs its cells top to bottom; here the cells that do work
are functions so the benchmark can time them, but each body is the book's code. Listing 12.30
downloads CelebA (not possible offline: the benchmark writes a folder of 64x64 RGB images and
passes its path) and listing 12.33 only displays an image; neither is here. Every change is
marked `book:`.

Kept as printed, though it behaves differently under Keras 3 than under the tf.keras 2 the book
was written for: `train_step` calls the discriminator without `training=True`, and Keras 3's
`fit` no longer sets a global learning phase, so the discriminator's `Dropout(0.2)` is inactive
(tf.keras 2 applied it). gendl passes `training=True`. It costs next to nothing either way (one
dropout over a (64, 8192) tensor per step).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

latent_dim = 128  # the latent space is made of 128-dimensional vectors


# --- Listings 12.31 and 12.32: a dataset from a directory of images, rescaled ------------------


def load_dataset(folder: str) -> tf.data.Dataset:
    dataset = keras.utils.image_dataset_from_directory(
        folder,  # book: "celeba_gan", the folder listing 12.30 unzips CelebA into
        label_mode=None,
        image_size=(64, 64),
        batch_size=32,
        crop_to_aspect_ratio=True,  # book: smart_resize=True, the same centre crop under its Keras 3 name
    )
    dataset = dataset.map(lambda x: x / 255.0)
    return dataset


# --- Listing 12.34: the GAN discriminator network ----------------------------------------------


def build_discriminator() -> keras.Model:
    # book: `alpha=0.2` as printed; Keras 3 warns that it is deprecated for `negative_slope`.
    discriminator = keras.Sequential(
        [
            keras.Input(shape=(64, 64, 3)),
            layers.Conv2D(64, kernel_size=4, strides=2, padding="same"),
            layers.LeakyReLU(alpha=0.2),
            layers.Conv2D(128, kernel_size=4, strides=2, padding="same"),
            layers.LeakyReLU(alpha=0.2),
            layers.Conv2D(128, kernel_size=4, strides=2, padding="same"),
            layers.LeakyReLU(alpha=0.2),
            layers.Flatten(),
            layers.Dropout(0.2),
            layers.Dense(1, activation="sigmoid"),
        ],
        name="discriminator",
    )
    return discriminator


# --- Listing 12.35: the GAN generator network ---------------------------------------------------


def build_generator() -> keras.Model:
    generator = keras.Sequential(
        [
            keras.Input(shape=(latent_dim,)),
            layers.Dense(8 * 8 * 128),
            layers.Reshape((8, 8, 128)),
            layers.Conv2DTranspose(128, kernel_size=4, strides=2, padding="same"),
            layers.LeakyReLU(alpha=0.2),
            layers.Conv2DTranspose(256, kernel_size=4, strides=2, padding="same"),
            layers.LeakyReLU(alpha=0.2),
            layers.Conv2DTranspose(512, kernel_size=4, strides=2, padding="same"),
            layers.LeakyReLU(alpha=0.2),
            layers.Conv2D(3, kernel_size=5, padding="same", activation="sigmoid"),
        ],
        name="generator",
    )
    return generator


# --- Listing 12.36: the GAN model -----------------------------------------------------------------


class GAN(keras.Model):
    def __init__(self, discriminator, generator, latent_dim):
        super().__init__()
        self.discriminator = discriminator
        self.generator = generator
        self.latent_dim = latent_dim
        self.d_loss_metric = keras.metrics.Mean(name="d_loss")
        self.g_loss_metric = keras.metrics.Mean(name="g_loss")

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super(GAN, self).compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn

    @property
    def metrics(self):
        return [self.d_loss_metric, self.g_loss_metric]

    def train_step(self, real_images):
        batch_size = tf.shape(real_images)[0]
        random_latent_vectors = tf.random.normal(shape=(batch_size, self.latent_dim))
        generated_images = self.generator(random_latent_vectors)
        combined_images = tf.concat([generated_images, real_images], axis=0)
        labels = tf.concat([tf.ones((batch_size, 1)), tf.zeros((batch_size, 1))], axis=0)
        labels += 0.05 * tf.random.uniform(tf.shape(labels))

        with tf.GradientTape() as tape:
            predictions = self.discriminator(combined_images)
            d_loss = self.loss_fn(labels, predictions)
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights))

        random_latent_vectors = tf.random.normal(shape=(batch_size, self.latent_dim))

        misleading_labels = tf.zeros((batch_size, 1))

        with tf.GradientTape() as tape:
            predictions = self.discriminator(self.generator(random_latent_vectors))
            g_loss = self.loss_fn(misleading_labels, predictions)
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights))

        self.d_loss_metric.update_state(d_loss)
        self.g_loss_metric.update_state(g_loss)
        return {"d_loss": self.d_loss_metric.result(), "g_loss": self.g_loss_metric.result()}


# --- Listing 12.37: a callback that samples generated images during training ---------------------


class GANMonitor(keras.callbacks.Callback):
    def __init__(self, num_img=3, latent_dim=128):
        self.num_img = num_img
        self.latent_dim = latent_dim

    def on_epoch_end(self, epoch, logs=None):
        random_latent_vectors = tf.random.normal(shape=(self.num_img, self.latent_dim))
        generated_images = self.model.generator(random_latent_vectors)
        generated_images *= 255
        generated_images.numpy()
        for i in range(self.num_img):
            img = keras.utils.array_to_img(generated_images[i])
            img.save(f"generated_img_{epoch:03d}_{i}.png")  # in the working directory


# --- Listing 12.38: compiling and training the GAN -------------------------------------------------


def compile_gan(discriminator, generator) -> GAN:
    gan = GAN(discriminator=discriminator, generator=generator, latent_dim=latent_dim)
    gan.compile(
        d_optimizer=keras.optimizers.Adam(learning_rate=0.0001),
        g_optimizer=keras.optimizers.Adam(learning_rate=0.0001),
        loss_fn=keras.losses.BinaryCrossentropy(),
    )
    return gan


def train(gan, dataset, epochs: int = 100, callbacks=(), **fit_kwargs):
    # book: gan.fit(dataset, epochs=epochs, callbacks=[GANMonitor(...)]); the benchmark adds its
    # timer to the callbacks and passes verbose=0 through fit_kwargs.
    return gan.fit(
        dataset,
        epochs=epochs,
        callbacks=[GANMonitor(num_img=10, latent_dim=latent_dim), *callbacks],
        **fit_kwargs,
    )
