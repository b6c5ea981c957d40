"""The book's DeepDream, as listed, to benchmark gendl against.

Chollet, *Deep Learning with Python*, 2nd edition, section 12.2, listings 12.9-12.16 (the same
code as the companion notebook `chapter12_part02_deep-dream.ipynb`). The notebook runs its
cells top to bottom; here the cells that do work are functions so the benchmark can time them,
but each body is the book's code. The one substitution is the convnet: offline there are no
ImageNet weights for InceptionV3, so the model is the VGG16 of gendl's "hed_vgg16" backbone,
with VGG16's preprocessing, layers and step in its input scale instead of InceptionV3's. Every
change is marked `book:`.
"""

# ruff: noqa: C404, SIM118 -- the book's code as printed

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tasks.backbones import load_backbone

# book: the layers were {"mixed4": 1.0, "mixed5": 1.5, "mixed6": 2.0, "mixed7": 2.5} of
# InceptionV3; VGG16's deep convolutions play their part.
LAYER_SETTINGS = {"block4_conv3": 1.0, "block5_conv1": 1.5}
IMAGENET_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype="float32")  # vgg16.preprocess_input's
# InceptionV3's input spans [-1, 1]; VGG16's (Caffe) input spans 255 pixel levels for the same
# 2 units, so a step of the same strength is 127.5 times larger (the L2-normalised gradient
# points the same way in both scales).
UNIT_TO_CAFFE = 127.5


# --- Listing 12.9: fetching the test image ------------------------------------------------------
# book: keras.utils.get_file("coast.jpg", origin="https://img-datasets.s3.amazonaws.com/coast.jpg").
# Offline, the benchmark hands both implementations the same photo as pixels.


# --- Listing 12.10: instantiating a pretrained model ----------------------------------------------


def load_model() -> keras.Model:
    # book: model = inception_v3.InceptionV3(weights="imagenet", include_top=False)
    return load_backbone("hed_vgg16").model  # keras.applications.VGG16, no top, HED's weights


# --- Listing 12.11: configuring the contribution of each layer to the DeepDream loss -------------
# The notebook defines these at the top level and `compute_loss` reads them as globals; `set_up`
# assigns them. One model per process: `gradient_ascent_step`'s traces keep the feature
# extractor they were traced with.

layer_settings: dict[str, float] = {}
feature_extractor: keras.Model | None = None


def set_up(model: keras.Model, settings: dict[str, float] = LAYER_SETTINGS) -> None:
    global layer_settings, feature_extractor
    layer_settings = dict(settings)
    outputs_dict = dict(
        [(layer.name, layer.output) for layer in [model.get_layer(name) for name in layer_settings.keys()]]
    )
    feature_extractor = keras.Model(inputs=model.inputs, outputs=outputs_dict)


# --- Listing 12.12: the DeepDream loss --------------------------------------------------------------


def compute_loss(input_image):
    features = feature_extractor(input_image)
    loss = tf.zeros(shape=())
    for name in features.keys():
        coeff = layer_settings[name]
        activation = features[name]
        loss += coeff * tf.reduce_mean(tf.square(activation[:, 2:-2, 2:-2, :]))
    return loss


# --- Listing 12.13: the DeepDream gradient ascent process ----------------------------------------
# No input_signature: every new image shape (one per octave) traces the function again.


@tf.function
def gradient_ascent_step(image, learning_rate):
    with tf.GradientTape() as tape:
        tape.watch(image)
        loss = compute_loss(image)
    grads = tape.gradient(loss, image)
    grads = tf.math.l2_normalize(grads)
    image += learning_rate * grads
    return loss, image


def gradient_ascent_loop(
    image, iterations, learning_rate, max_loss=None, report: Callable[[str], None] = print
):
    for i in range(iterations):
        loss, image = gradient_ascent_step(image, learning_rate)
        if max_loss is not None and loss > max_loss:
            break
        report(f"... Loss value at step {i}: {loss:.2f}")  # book: print(...)
    return image


# --- Listing 12.14: DeepDream hyperparameters --------------------------------------------------------

step = 20.0 * UNIT_TO_CAFFE  # book: step = 20., in InceptionV3's [-1, 1] input scale
num_octave = 3
octave_scale = 1.4
iterations = 30
max_loss = 15.0  # book: for InceptionV3's mixed4-7; VGG16's activations have another scale


# --- Listing 12.15: image processing utilities --------------------------------------------------


def preprocess_image(pixels: np.ndarray) -> np.ndarray:
    """(height, width, 3) RGB pixels -> (1, height, width, 3) VGG16 input (BGR minus the mean)."""
    # book: img = keras.utils.img_to_array(keras.utils.load_img(image_path)), a new float32 array
    img = np.array(pixels, dtype="float32")
    img = np.expand_dims(img, axis=0)
    img = keras.applications.vgg16.preprocess_input(img)  # book: inception_v3.preprocess_input
    return img


def deprocess_image(img: np.ndarray) -> np.ndarray:
    img = img.reshape((img.shape[1], img.shape[2], 3))
    # book: img /= 2.0; img += 0.5; img *= 255., which undo inception_v3.preprocess_input
    img += IMAGENET_MEAN_BGR
    img = img[..., ::-1]
    img = np.clip(img, 0, 255).astype("uint8")
    return img


# --- Listing 12.16: running gradient ascent over multiple successive "octaves" ---------------------


def run_octaves(
    original_img: np.ndarray,
    step: float = step,
    num_octave: int = num_octave,
    octave_scale: float = octave_scale,
    iterations: int = iterations,
    max_loss: float | None = max_loss,
    report: Callable[[str], None] = print,
) -> tf.Tensor:
    """The octave loop on a preprocessed (1, height, width, 3) image; returns the dream, same shape."""
    # book: original_img = preprocess_image(base_image_path); the caller preprocesses.
    original_shape = original_img.shape[1:3]

    successive_shapes = [original_shape]
    for i in range(1, num_octave):
        shape = tuple([int(dim / (octave_scale**i)) for dim in original_shape])
        successive_shapes.append(shape)
    successive_shapes = successive_shapes[::-1]

    shrunk_original_img = tf.image.resize(original_img, successive_shapes[0])

    img = tf.identity(original_img)
    for i, shape in enumerate(successive_shapes):
        report(f"Processing octave {i} with shape {shape}")  # book: print(...)
        img = tf.image.resize(img, shape)
        img = gradient_ascent_loop(
            img, iterations=iterations, learning_rate=step, max_loss=max_loss, report=report
        )
        upscaled_shrunk_original_img = tf.image.resize(shrunk_original_img, shape)
        same_size_original = tf.image.resize(original_img, shape)
        lost_detail = same_size_original - upscaled_shrunk_original_img
        img += lost_detail
        shrunk_original_img = tf.image.resize(original_img, shape)

    # book: keras.utils.save_img("dream.png", deprocess_image(img.numpy())); the caller saves.
    return img
