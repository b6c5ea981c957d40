"""Mixed bfloat16 (what `runtime.dtype_policy: auto` picks on a CPU with AVX512_BF16 or AMX): for each
technique, one step under the policy computes in bfloat16, gives finite float32 losses close to the
float32 ones of the same weights, and keeps float32 what must stay float32 (probabilities and the
sampler's distributions, losses, Gram matrices, the image being optimised, the KL term, the GAN's
verdicts and images, the features of the Frechet distance).

Tolerances: bfloat16 keeps 8 significant bits (unit roundoff 2**-8, about 4e-3). Activations and
weights are rounded at each layer's input while products accumulate in float32, and a loss sums
or averages many elements whose unbiased rounding errors largely cancel: 1e-2 relative is a fair
bound for a loss of the shallow text, VAE and GAN networks. VGG16's features go through up to 13
bfloat16 convolutions, each adding its rounding, so the image techniques get 3e-2.
"""

from __future__ import annotations

import contextlib
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tasks.backbones import load_backbone
from tasks.deepdream.model import dream, dream_loss
from tasks.deepdream.model import make_loss_and_grads as dream_loss_and_grads
from tasks.gan.model import GAN, build_discriminator, build_generator, fixed_latents, generate
from tasks.gan.score import (
    build_classifier,
    feature_statistics,
    features_of,
    frechet_distance,
    score_features,
)
from tasks.runtime import configure_runtime
from tasks.style_transfer import model as style_model
from tasks.style_transfer.optimizers import LossHistory, optimize
from tasks.style_transfer.params import AdamParams, GridPoint, LbfgsParams, SgdParams
from tasks.text.char_lstm.model import build_char_lstm
from tasks.text.char_lstm.model import compile_model as compile_char_lstm
from tasks.text.char_lstm.model import make_generator as make_char_generator
from tasks.text.transformer.model import build_transformer_lm
from tasks.text.transformer.model import compile_model as compile_transformer
from tasks.text.transformer.model import make_generator as make_word_generator
from tasks.vae.model import VAE, build_decoder, build_encoder, kl_divergence, reconstruction_loss

SEED = 0
SHALLOW_RTOL = 1e-2  # a loss of the text, VAE and GAN networks (see the module docstring)
DEEP_RTOL = 3e-2  # a loss of VGG16 features, DeepDream's and style transfer's
SGD = SgdParams(learning_rate=100.0, decay_steps=100, decay_rate=0.96)  # unused by Adam, required
LBFGS = LbfgsParams(history=10)


@pytest.fixture(autouse=True)
def mixed_bfloat16():
    """Every test runs under mixed_bfloat16, set as the pipeline sets it; float32 comes back after
    it, pass or fail (the policy is global to the pytest process)."""
    try:
        configure_runtime(SEED, "mixed_bfloat16")
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


@contextlib.contextmanager
def global_policy(name: str):
    """Layers built inside compute under `name`; the policy before comes back after."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def float32_copy(build, model: keras.Model) -> keras.Model:
    """`build()` under float32 with `model`'s weights: the float32 twin of a mixed-precision model."""
    with global_policy("float32"):
        twin = build()
    twin.set_weights(model.get_weights())
    assert twin.layers[-1].compute_dtype == "float32"
    return twin


def dtype_of(value) -> str:
    return keras.backend.standardize_dtype(value.dtype)


def assert_float32_and_finite(value, name: str) -> None:
    assert dtype_of(value) == "float32", f"{name} is {dtype_of(value)}"
    assert np.isfinite(np.asarray(value)).all(), f"{name} is not finite"


def relative_difference(value: float, reference: float) -> float:
    return abs(value - reference) / abs(reference)


def assert_computes_in_bfloat16(layer: keras.layers.Layer, activation=None) -> None:
    """The layer computes in bfloat16 on float32 variables (and, given, its output is bfloat16)."""
    assert layer.compute_dtype == "bfloat16", layer.name
    assert layer.variable_dtype == "float32", layer.name
    if activation is not None:
        assert dtype_of(activation) == "bfloat16", layer.name


# --- Character-level LSTM -----------------------------------------------------------------------------


def test_char_lstm_trains_and_samples_in_bfloat16_with_float32_probabilities():
    vocab_size, maxlen, batch = 12, 10, 8
    rng = np.random.default_rng(0)
    x = rng.integers(0, vocab_size, size=(batch, maxlen)).astype(np.int32)
    y = rng.integers(0, vocab_size, size=batch).astype(np.int32)

    def build():
        return build_char_lstm(vocab_size, units=16)

    model = build()
    twin = float32_copy(build, model)
    compile_char_lstm(model, learning_rate=0.01, clipnorm=1.0, jit_compile=False)
    lstm = model.get_layer("lstm_0")
    assert_computes_in_bfloat16(lstm, keras.Model(model.input, lstm.output)(x))

    probs = model(x)
    loss = model.compute_loss(x=x, y=y, y_pred=probs)
    losses = [float(model.train_on_batch(x, y)) for _ in range(3)]

    assert_float32_and_finite(probs, "next-character probabilities")
    np.testing.assert_allclose(np.sum(probs, axis=-1), 1.0, atol=1e-3)
    assert_float32_and_finite(loss, "loss")
    assert all(math.isfinite(value) for value in losses)
    # The first step's loss is this one (graph and eager kernels may round differently; the update
    # that follows moves the loss by far more than 1e-3).
    assert losses[0] == pytest.approx(float(loss), rel=1e-3)
    reference = float(keras.losses.sparse_categorical_crossentropy(y, twin(x)).numpy().mean())
    assert relative_difference(losses[0], reference) < SHALLOW_RTOL

    generate = make_char_generator(model)
    ids, distributions, entropies = generate(
        tf.constant(x[:2]), tf.constant([0.5, 1.0]), tf.constant(4), tf.constant([0, 0])
    )
    assert ids.shape == (2, 4) and ((ids.numpy() >= 0) & (ids.numpy() < vocab_size)).all()
    assert_float32_and_finite(distributions, "sampled distributions")
    np.testing.assert_allclose(np.sum(distributions, axis=-1), 1.0, atol=1e-3)
    # The state carried one character at a time predicts what the model does on the whole window.
    np.testing.assert_allclose(distributions[:, 0], model(x[:2]), atol=1e-2)
    assert_float32_and_finite(entropies, "entropies")
    assert ((entropies.numpy() >= 0) & (entropies.numpy() <= math.log2(vocab_size) + 1e-4)).all()


# --- Word-level Transformer ------------------------------------------------------------------------------


def test_transformer_trains_and_samples_in_bfloat16_with_float32_probabilities():
    vocab_size, sequence_length = 40, 10
    rng = np.random.default_rng(1)
    sequences = rng.integers(1, vocab_size, size=(4, sequence_length)).astype(np.int32)
    x, y = sequences[:, :-1], sequences[:, 1:]

    def build():
        return build_transformer_lm(vocab_size, sequence_length, embed_dim=8, dense_dim=16, num_heads=2)

    model = build()
    twin = float32_copy(build, model)
    compile_transformer(model, learning_rate=1e-3, jit_compile=False)
    decoder = model.get_layer("transformer_decoder")
    assert_computes_in_bfloat16(decoder, keras.Model(model.input, decoder.output)(x))
    assert_computes_in_bfloat16(decoder.attention_1)

    probs = model(x)
    loss = model.compute_loss(x=x, y=y, y_pred=probs)
    losses = [float(model.train_on_batch(x, y)) for _ in range(2)]

    assert_float32_and_finite(probs, "next-word probabilities")
    np.testing.assert_allclose(np.sum(probs, axis=-1), 1.0, atol=1e-3)
    assert_float32_and_finite(loss, "loss")
    assert all(math.isfinite(value) for value in losses)
    assert losses[0] == pytest.approx(float(loss), rel=1e-3)
    reference = float(keras.losses.sparse_categorical_crossentropy(y, twin(x)).numpy().mean())
    assert relative_difference(losses[0], reference) < SHALLOW_RTOL

    generate = make_word_generator(model, return_distributions=True)
    prompts = np.array([[5, 6, 7, 0], [8, 9, 0, 0]], np.int32)
    lengths = np.array([3, 2], np.int32)
    ids, entropies, distributions = generate(
        tf.constant(prompts),
        tf.constant(lengths),
        tf.constant([0.7, 1.0]),
        tf.constant([0, 5]),
        tf.constant([1.0, 0.9]),
        tf.constant(3),
        tf.constant([0, 0]),
    )
    assert ids.shape == (2, 3) and (ids.numpy() != 0).all()  # never padding
    assert_float32_and_finite(distributions, "sampled distributions")
    np.testing.assert_allclose(np.sum(distributions, axis=-1), 1.0, atol=1e-3)
    assert_float32_and_finite(entropies, "entropies")
    assert ((entropies.numpy() >= 0) & (entropies.numpy() <= math.log2(vocab_size) + 1e-4)).all()
    # The bfloat16 key/value cache predicts what the whole model does on the prefix.
    for row, length in enumerate(lengths):
        prefix = np.concatenate([prompts[row, :length], ids.numpy()[row, :1]])[None]
        np.testing.assert_allclose(distributions[row, 1], model(prefix)[0, -1], atol=1e-2)


# --- DeepDream and style transfer: VGG16 with random weights (nothing downloaded) ---------------------------


@pytest.fixture(scope="module")
def vgg16() -> tuple:
    """A random-weight VGG16 built under mixed_bfloat16 and its float32 twin (same weights)."""
    with global_policy("mixed_bfloat16"):
        keras.utils.set_random_seed(SEED)
        backbone = load_backbone("vgg16", weights="random")
    twin = load_backbone("vgg16", weights="random")
    twin.model.set_weights(backbone.model.get_weights())
    return backbone, twin


def test_deepdream_step_in_bfloat16_keeps_the_loss_and_the_image_float32(vgg16):
    backbone, twin = vgg16
    setting = {"block3_conv3": 1.0, "block4_conv3": 1.5}
    image = tf.constant(np.random.default_rng(2).uniform(-1, 1, size=(48, 48, 3)), tf.float32)
    extractor = backbone.feature_extractor(list(setting))
    features = extractor(image[None])
    for name in setting:
        assert_computes_in_bfloat16(backbone.model.get_layer(name), features[name])

    loss, gradients = dream_loss_and_grads(extractor, setting)(image[None])
    dreamed, records = dream(
        image,
        dream_loss_and_grads(extractor, setting),
        num_octave=1,
        octave_scale=1.4,
        iterations=2,
        step=0.5,
        max_loss=0.0,
        tile_size=0,
    )

    assert_float32_and_finite(loss, "dream loss")
    assert float(loss) > 0
    assert_float32_and_finite(gradients, "gradient of the image")
    assert float(tf.reduce_max(tf.abs(gradients))) > 0
    assert [record["step"] for record in records] == [0, 1]
    assert all(math.isfinite(record["loss"]) for record in records)
    assert records[0]["loss"] == pytest.approx(float(loss), rel=1e-6)
    assert_float32_and_finite(dreamed, "dreamed image")
    assert dreamed.shape == image.shape
    assert float(tf.reduce_max(tf.abs(dreamed - image))) > 1e-2
    reference = float(dream_loss(twin.feature_extractor(list(setting))(image[None]), setting))
    assert relative_difference(float(loss), reference) < DEEP_RTOL


def test_style_transfer_step_in_bfloat16_keeps_grams_losses_and_the_image_float32(vgg16, monkeypatch):
    backbone, twin = vgg16
    content_layer = "block5_conv2"
    point = GridPoint(1e-3, 1e-4, 1e-6, ("block1_conv1", "block3_conv1", "block5_conv1"), "adam")
    rng = np.random.default_rng(3)
    content = tf.constant(rng.uniform(0, 255, size=(48, 48, 3)), tf.float32)
    style = tf.constant(rng.uniform(0, 255, size=(48, 64, 3)), tf.float32)
    # An image far from the content, so that no term is a difference of nearly equal values.
    generated = tf.constant(rng.uniform(0, 255, size=(48, 48, 3)), tf.float32)
    layers = [content_layer, *point.style_layers]
    extractor = backbone.feature_extractor(layers)
    features = extractor(generated[None] / 127.5 - 1.0)
    for name in layers:
        assert_computes_in_bfloat16(backbone.model.get_layer(name), features[name])
    grams = []
    gram_matrix = style_model.gram_matrix

    def recording_gram_matrix(features):
        gram = gram_matrix(features)
        grams.append((dtype_of(features), dtype_of(gram)))
        return gram

    monkeypatch.setattr(style_model, "gram_matrix", recording_gram_matrix)

    def loss_and_grads_with(extractor):
        return style_model.make_loss_and_grads(extractor, content, [style], [1.0], point, content_layer)

    loss_and_grads = loss_and_grads_with(extractor)
    losses, gradients = loss_and_grads(generated)
    history = LossHistory(0, lambda pixels: np.asarray(pixels))
    optimised = optimize(
        "adam", loss_and_grads, generated, 2, history, SGD, AdamParams(learning_rate=10.0), LBFGS
    )

    # The style targets (one per style layer) and, in each trace of the step, the generated
    # image's Grams: all float32 in and out.
    assert len(grams) >= 2 * len(point.style_layers)
    assert set(grams) == {("float32", "float32")}
    assert set(losses) == set(style_model.LOSS_TERMS)
    for name, value in losses.items():
        assert_float32_and_finite(value, name)
        assert float(value) > 0, name
    assert_float32_and_finite(gradients, "gradient of the image")
    assert [record["step"] for record in history.records] == [1, 2]
    assert all(math.isfinite(record["loss"]) for record in history.records)
    assert_float32_and_finite(optimised, "generated image")
    assert float(tf.reduce_max(tf.abs(optimised - generated))) > 1.0
    reference, _ = loss_and_grads_with(twin.feature_extractor(layers))(generated)
    for name in style_model.LOSS_TERMS:
        assert relative_difference(float(losses[name]), float(reference[name])) < DEEP_RTOL, name


# --- Variational autoencoder -------------------------------------------------------------------------------


def test_vae_step_in_bfloat16_keeps_the_gaussian_the_reconstruction_and_the_kl_float32():
    image_shape, latent_dim = (16, 16, 1), 2
    images = tf.constant(np.random.default_rng(4).uniform(size=(16, *image_shape)), tf.float32)

    def build_vae():
        return VAE(build_encoder(image_shape, latent_dim), build_decoder(image_shape, latent_dim), 1.0, SEED)

    vae = build_vae()
    with global_policy("float32"):
        twin = build_vae()
    twin.encoder.set_weights(vae.encoder.get_weights())
    twin.decoder.set_weights(vae.decoder.get_weights())
    vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    convolution = vae.encoder.layers[1]
    assert_computes_in_bfloat16(convolution, keras.Model(vae.encoder.input, convolution.output)(images))
    assert_computes_in_bfloat16(vae.decoder.layers[-2])

    z_mean, z_log_var = vae.encoder(images)
    reconstructions = vae.decoder(z_mean)
    kl = kl_divergence(z_mean, z_log_var)
    terms = vae.losses_of(images, training=False)
    logs = [vae.train_step(images) for _ in range(2)]

    assert_float32_and_finite(z_mean, "z_mean")
    assert_float32_and_finite(z_log_var, "z_log_var")
    assert_float32_and_finite(reconstructions, "reconstruction")
    assert ((reconstructions.numpy() >= 0) & (reconstructions.numpy() <= 1)).all()
    assert_float32_and_finite(kl, "KL term")
    assert (kl.numpy() >= -1e-6).all()  # >= 0, up to float32 rounding of 1 + log var - var
    for name, value in zip(("total", "reconstruction", "kl"), terms, strict=True):
        assert_float32_and_finite(value, f"{name} loss")
    assert all(math.isfinite(float(value)) for step in logs for value in step.values())
    assert int(vae.optimizer.iterations) == 2

    # The same weights in float32, on the mean (the sampler's bfloat16 draw is not float32's).
    def elbo_at_mean(model):
        mean, log_var = model.encoder(images)
        return float(
            tf.reduce_mean(reconstruction_loss(images, model.decoder(mean)))
            + tf.reduce_mean(kl_divergence(mean, log_var))
        )

    assert relative_difference(elbo_at_mean(vae), elbo_at_mean(twin)) < SHALLOW_RTOL


# --- GAN -----------------------------------------------------------------------------------------


def test_gan_step_in_bfloat16_keeps_verdicts_images_losses_and_the_frechet_distance_float(
    monkeypatch, tmp_path
):
    image_shape, latent_dim, width, batch = (16, 16, 1), 8, 0.125, 16
    real = tf.constant(np.random.default_rng(5).uniform(size=(batch, *image_shape)), tf.float32)

    def build_gan():
        model = GAN(
            build_discriminator(image_shape, 0.0, width),  # no dropout: both twins see the same net
            build_generator(image_shape, latent_dim, width),
            latent_dim,
            0.05,
            0.0,
            seed=7,
        )
        model.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3))
        return model

    gan = build_gan()
    with global_policy("float32"):
        twin = build_gan()
    twin.discriminator.set_weights(gan.discriminator.get_weights())
    twin.generator.set_weights(gan.generator.get_weights())
    assert_computes_in_bfloat16(gan.generator.layers[1])
    convolution = gan.discriminator.layers[1]
    assert_computes_in_bfloat16(convolution, keras.Model(gan.discriminator.input, convolution.output)(real))

    latents = fixed_latents(32, latent_dim, SEED)
    generated = generate(gan.generator, latents)
    verdicts = gan.discriminator(generated)
    d_losses = []
    binary_crossentropy = keras.losses.binary_crossentropy

    def recording_binary_crossentropy(labels, predictions):  # the train step's two losses
        loss = binary_crossentropy(labels, predictions)
        d_losses.append((dtype_of(predictions), dtype_of(loss)))
        return loss

    monkeypatch.setattr(keras.losses, "binary_crossentropy", recording_binary_crossentropy)
    logs = gan.train_step(real)
    monkeypatch.undo()
    more = gan.train_step(real)

    assert generated.dtype == np.float32 and np.isfinite(generated).all()
    assert ((generated >= 0) & (generated <= 1)).all()
    assert_float32_and_finite(verdicts, "discriminator probabilities")
    assert ((verdicts.numpy() >= 0) & (verdicts.numpy() <= 1)).all()
    assert d_losses == [("float32", "float32"), ("float32", "float32")]  # d_loss, then g_loss
    for name in ("d_loss", "g_loss"):
        assert_float32_and_finite(logs[name], name)
        assert math.isfinite(float(more[name])), name
    # The same weights and draws in float32: the discriminator's loss before either update.
    reference = twin.train_step(real)
    assert relative_difference(float(logs["d_loss"]), float(reference["d_loss"])) < SHALLOW_RTOL

    # The Frechet distance of bfloat16-generated images, in the features of the scoring classifier
    # as the train step loads it (trained and saved in float32, it stays float32) and in features
    # computed in bfloat16 (a classifier built under the policy): float64 features, a finite float.
    with global_policy("float32"):
        keras.utils.set_random_seed(SEED)
        build_classifier(image_shape, 10).save(tmp_path / "classifier.keras")
    loaded = score_features(tmp_path / "classifier.keras", "classifier")
    assert loaded.get_layer("features").compute_dtype == "float32"
    keras.utils.set_random_seed(SEED)
    classifier = build_classifier(image_shape, 10)
    assert_computes_in_bfloat16(classifier.get_layer("features"))
    in_bfloat16 = keras.Model(classifier.input, classifier.get_layer("features").output)
    real_images = np.random.default_rng(6).uniform(size=(32, *image_shape)).astype(np.float32)
    for extractor in (loaded, in_bfloat16):
        generated_features = features_of(extractor, generate(gan.generator, latents))
        real_features = features_of(extractor, real_images)
        assert generated_features.dtype == real_features.dtype == np.float64
        assert np.isfinite(generated_features).all() and np.isfinite(real_features).all()
        statistics = feature_statistics(generated_features), feature_statistics(real_features)
        distance = frechet_distance(*statistics[0], *statistics[1])
        assert isinstance(distance, float) and math.isfinite(distance) and distance >= 0


def test_a_transformer_saved_under_bfloat16_loads_in_a_float32_process(tmp_path):
    """The flow logs the model in its own process, whose policy is float32: the custom layers'
    sublayers must keep the policy they were saved with."""
    model = build_transformer_lm(40, 8, 16, 32, 2)
    ids = np.array([[3, 4, 5, 0]], np.int32)
    expected = model(ids).numpy()
    model.save(tmp_path / "model.keras")
    keras.mixed_precision.set_global_policy("float32")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.get_layer("transformer_decoder").attention_1.compute_dtype == "bfloat16"
    assert loaded.get_layer("positional_embedding").token_embeddings.compute_dtype == "bfloat16"
    np.testing.assert_array_equal(loaded(ids).numpy(), expected)


def test_the_offline_backbone_loads_under_bfloat16_with_the_same_weights():
    """hed_vgg16 (the offline DeepDream and style transfer backbone) is built from HED's weights,
    whose own graph cannot be built under a mixed policy."""
    backbone = load_backbone("hed_vgg16")
    features = backbone.feature_extractor(["block4_conv3"])(tf.random.uniform((1, 48, 48, 3), -1.0, 1.0))
    assert backbone.model.get_layer("block4_conv3").compute_dtype == "bfloat16"
    assert features["block4_conv3"].dtype == tf.bfloat16
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"  # restored after HED
    keras.mixed_precision.set_global_policy("float32")
    reference = load_backbone("hed_vgg16").model.get_weights()
    for weight, expected in zip(backbone.model.get_weights(), reference, strict=True):
        np.testing.assert_array_equal(weight, expected)
