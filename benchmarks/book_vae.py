"""The book's variational autoencoder, as listed, to benchmark gendl against.

Chollet, *Deep Learning with Python*, 2nd edition, section 12.4, listings 12.24-12.28 (the same
code as the companion notebook `chapter12_part04_variational-autoencoders.ipynb` and the keras-io
example "Variational AutoEncoder"). The notebook runs its cells top to bottom; here the cells
that do work are functions so the benchmark can time them, but each body is the book's code.
Offline there is no MNIST, so the data is Fashion-MNIST (the same 28x28x1 uint8 images). Every
change is marked `book:`.

Kept as printed, though gendl departs from it: the KL term is *averaged* over the latent
dimensions (`tf.reduce_mean(kl_loss)` over a (batch, latent_dim) tensor), which weights it
1 / latent_dim of the ELBO's; gendl sums it, so for latent_dim 2 the book's KL is half gendl's.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

latent_dim = 2  # dimensionality of the latent space: a 2D plane

# The notebook defines these at the top level, and the VAE's train_step reads `decoder` as a
# global; `build_encoder` and `build_decoder` assign them.
encoder: keras.Model | None = None
decoder: keras.Model | None = None


# --- Listing 12.24: VAE encoder network ----------------------------------------------------------


def build_encoder() -> keras.Model:
    global encoder  # book: a top-level cell; the function assigns the same global
    encoder_inputs = keras.Input(shape=(28, 28, 1))
    x = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(encoder_inputs)
    x = layers.Conv2D(64, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(16, activation="relu")(x)
    z_mean = layers.Dense(latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(x)
    encoder = keras.Model(encoder_inputs, [z_mean, z_log_var], name="encoder")
    return encoder


# --- Listing 12.25: latent-space-sampling layer --------------------------------------------------


class Sampler(layers.Layer):
    def call(self, z_mean, z_log_var):
        batch_size = tf.shape(z_mean)[0]
        z_size = tf.shape(z_mean)[1]
        epsilon = tf.random.normal(shape=(batch_size, z_size))
        return z_mean + tf.exp(0.5 * z_log_var) * epsilon


# --- Listing 12.26: VAE decoder network, mapping latent space points to images --------------------


def build_decoder() -> keras.Model:
    global decoder  # book: a top-level cell; train_step reads this global
    latent_inputs = keras.Input(shape=(latent_dim,))
    x = layers.Dense(7 * 7 * 64, activation="relu")(latent_inputs)
    x = layers.Reshape((7, 7, 64))(x)
    x = layers.Conv2DTranspose(64, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Conv2DTranspose(32, 3, activation="relu", strides=2, padding="same")(x)
    decoder_outputs = layers.Conv2D(1, 3, activation="sigmoid", padding="same")(x)
    decoder = keras.Model(latent_inputs, decoder_outputs, name="decoder")
    return decoder


# --- Listing 12.27: VAE model with custom train_step() ---------------------------------------------


class VAE(keras.Model):
    def __init__(self, encoder, decoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.sampler = Sampler()
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
        self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_loss_tracker = keras.metrics.Mean(name="kl_loss")

    @property
    def metrics(self):
        return [self.total_loss_tracker, self.reconstruction_loss_tracker, self.kl_loss_tracker]

    def train_step(self, data):
        with tf.GradientTape() as tape:
            z_mean, z_log_var = self.encoder(data)
            z = self.sampler(z_mean, z_log_var)
            reconstruction = decoder(z)  # the module global (the notebook's), the same model as self.decoder
            reconstruction_loss = tf.reduce_mean(
                tf.reduce_sum(keras.losses.binary_crossentropy(data, reconstruction), axis=(1, 2))
            )
            kl_loss = -0.5 * (1 + z_log_var - tf.square(z_mean) - tf.exp(z_log_var))
            total_loss = reconstruction_loss + tf.reduce_mean(kl_loss)  # averaged over latent dims
        grads = tape.gradient(total_loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        self.total_loss_tracker.update_state(total_loss)
        self.reconstruction_loss_tracker.update_state(reconstruction_loss)
        self.kl_loss_tracker.update_state(kl_loss)
        return {
            "total_loss": self.total_loss_tracker.result(),
            "reconstruction_loss": self.reconstruction_loss_tracker.result(),
            "kl_loss": self.kl_loss_tracker.result(),
        }


# --- Listing 12.28: training the VAE -----------------------------------------------------------------


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The book's `mnist_digits`, with the uint8 arrays it was made from (the notebook keeps them)."""
    # book: keras.datasets.mnist.load_data(); offline only Fashion-MNIST is in the Keras cache.
    (x_train, _), (x_test, _) = keras.datasets.fashion_mnist.load_data()
    mnist_digits = np.concatenate([x_train, x_test], axis=0)
    mnist_digits = np.expand_dims(mnist_digits, -1).astype("float32") / 255
    return mnist_digits, x_train, x_test


def compile_vae(encoder, decoder, run_eagerly: bool = True) -> VAE:
    vae = VAE(encoder, decoder)
    # book: run_eagerly=True always; the benchmark also runs the same code compiled.
    vae.compile(optimizer=keras.optimizers.Adam(), run_eagerly=run_eagerly)
    return vae


def train(vae, mnist_digits, epochs: int = 30, batch_size: int = 128, **fit_kwargs):
    # book: vae.fit(mnist_digits, epochs=30, batch_size=128); the benchmark passes its callbacks
    # and verbose=0 through fit_kwargs.
    return vae.fit(mnist_digits, epochs=epochs, batch_size=batch_size, **fit_kwargs)
