"""The book's neural style transfer, as listed, to benchmark gendl against.

Chollet, *Deep Learning with Python*, 2nd edition, section 12.3, listings 12.17-12.24 (the same
code as the companion notebook `chapter12_part03_neural-style-transfer.ipynb` and the keras-io
example "neural_style_transfer"). The notebook runs its cells top to bottom; here the cells
that do work are functions so the benchmark can time them, but each body is the book's code.
The one substitution is the convnet: offline there are no ImageNet weights for VGG19, so the
model is the VGG16 of gendl's "hed_vgg16" backbone, which has the same layer names for the
layers the book uses and the same (Caffe) preprocessing. Every change is marked `book:`.
"""

# ruff: noqa: C404 -- the book's code as printed

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tasks.backbones import load_backbone

# --- Listing 12.17: getting the style and content images ----------------------------------------
# book: base_image_path = keras.utils.get_file("sf.jpg", origin=".../sf.jpg") and
# style_reference_image_path = keras.utils.get_file("starry_night.jpg", origin=".../starry_night.jpg").
# The benchmark passes both paths: the content photo already at the shared height (as gendl's
# `images` step stores it), and the starry night from the Keras cache.

img_height = 400
img_width = 0


def set_image_size(base_image_path: str, height: int = 400) -> None:
    global img_height, img_width
    original_width, original_height = keras.utils.load_img(
        base_image_path
    ).size  # book: keras.preprocessing.image
    img_height = height  # book: img_height = 400
    img_width = round(original_width * img_height / original_height)


# --- Listing 12.18: auxiliary functions ----------------------------------------------------------


def preprocess_image(image_path):
    # book: keras.preprocessing.image.load_img / img_to_array; Keras 3 has them in keras.utils.
    # With target_size, load_img stretches any image to (img_height, img_width), nearest-neighbour.
    img = keras.utils.load_img(image_path, target_size=(img_height, img_width))
    img = keras.utils.img_to_array(img)
    img = np.expand_dims(img, axis=0)
    img = keras.applications.vgg19.preprocess_input(img)  # the same Caffe scaling as VGG16's
    return img


def deprocess_image(img):
    img = img.reshape((img_height, img_width, 3))
    img[:, :, 0] += 103.939
    img[:, :, 1] += 116.779
    img[:, :, 2] += 123.68
    img = img[:, :, ::-1]
    img = np.clip(img, 0, 255).astype("uint8")
    return img


# --- Listing 12.19: the pretrained network and a feature extractor ----------------------------------
# The notebook defines these at the top level and `compute_loss` reads them as globals; `set_up`
# assigns them. One set-up per process: `compute_loss_and_grads`'s trace keeps the feature
# extractor and the loss weights it was traced with.

feature_extractor: keras.Model | None = None


def load_model() -> keras.Model:
    # book: model = keras.applications.vgg19.VGG19(weights="imagenet", include_top=False)
    return load_backbone("hed_vgg16").model  # keras.applications.VGG16, no top, HED's weights


def set_up(
    model: keras.Model,
    weights: tuple[float, float, float] | None = None,
) -> None:
    """The feature extractor of listing 12.19; `weights` (content, style, total variation)
    replaces listing 12.23's when given."""
    global feature_extractor, content_weight, style_weight, total_variation_weight
    outputs_dict = dict([(layer.name, layer.output) for layer in model.layers])
    feature_extractor = keras.Model(inputs=model.inputs, outputs=outputs_dict)
    if weights is not None:
        # book: the weights are fixed below, tuned for ImageNet VGG19; HED's VGG16 activations
        # are on another scale, so the benchmark chooses weights that make every term matter.
        content_weight, style_weight, total_variation_weight = weights


# --- Listing 12.20: content loss --------------------------------------------------------------------


def content_loss(base_img, combination_img):
    return tf.reduce_sum(tf.square(combination_img - base_img))


# --- Listing 12.21: style loss ----------------------------------------------------------------------


def gram_matrix(x):
    x = tf.transpose(x, (2, 0, 1))
    features = tf.reshape(x, (tf.shape(x)[0], -1))
    gram = tf.matmul(features, tf.transpose(features))
    return gram


def style_loss(style_img, combination_img):
    S = gram_matrix(style_img)
    C = gram_matrix(combination_img)
    channels = 3
    size = img_height * img_width
    return tf.reduce_sum(tf.square(S - C)) / (4.0 * (channels**2) * (size**2))


# --- Listing 12.22: total variation loss -------------------------------------------------------------


def total_variation_loss(x):
    a = tf.square(x[:, : img_height - 1, : img_width - 1, :] - x[:, 1:, : img_width - 1, :])
    b = tf.square(x[:, : img_height - 1, : img_width - 1, :] - x[:, : img_height - 1, 1:, :])
    return tf.reduce_sum(tf.pow(a + b, 1.25))


# --- Listing 12.23: the loss to minimise -------------------------------------------------------------

style_layer_names = [
    "block1_conv1",
    "block2_conv1",
    "block3_conv1",
    "block4_conv1",
    "block5_conv1",
]
content_layer_name = "block5_conv2"
total_variation_weight = 1e-6
style_weight = 1e-6
content_weight = 2.5e-8


def compute_loss(combination_image, base_image, style_reference_image):
    input_tensor = tf.concat([base_image, style_reference_image, combination_image], axis=0)
    features = feature_extractor(input_tensor)
    loss = tf.zeros(shape=())
    layer_features = features[content_layer_name]
    base_image_features = layer_features[0, :, :, :]
    combination_features = layer_features[2, :, :, :]
    loss = loss + content_weight * content_loss(base_image_features, combination_features)
    for layer_name in style_layer_names:
        layer_features = features[layer_name]
        style_reference_features = layer_features[1, :, :, :]
        combination_features = layer_features[2, :, :, :]
        style_loss_value = style_loss(style_reference_features, combination_features)
        loss += (style_weight / len(style_layer_names)) * style_loss_value

    loss += total_variation_weight * total_variation_loss(combination_image)
    return loss


# --- Listing 12.24: the gradient descent process ------------------------------------------------------


@tf.function
def compute_loss_and_grads(combination_image, base_image, style_reference_image):
    with tf.GradientTape() as tape:
        loss = compute_loss(combination_image, base_image, style_reference_image)
    grads = tape.gradient(loss, combination_image)
    return loss, grads


def make_optimizer() -> keras.optimizers.Optimizer:
    optimizer = keras.optimizers.SGD(
        keras.optimizers.schedules.ExponentialDecay(
            initial_learning_rate=100.0, decay_steps=100, decay_rate=0.96
        )
    )
    return optimizer


def prepare_images(base_image_path, style_reference_image_path):
    """The three images of listing 12.24: base, style reference and the variable to optimise."""
    base_image = preprocess_image(base_image_path)
    style_reference_image = preprocess_image(style_reference_image_path)
    combination_image = tf.Variable(preprocess_image(base_image_path))
    return base_image, style_reference_image, combination_image


def run(
    optimizer,
    base_image,
    style_reference_image,
    combination_image,
    iterations: int = 4000,
    report: Callable[[str], None] = print,
    save_img: Callable[[str, np.ndarray], None] = keras.utils.save_img,
):
    """The loop of listing 12.24; returns the last loss (the book leaves it in a global)."""
    for i in range(1, iterations + 1):
        loss, grads = compute_loss_and_grads(combination_image, base_image, style_reference_image)
        optimizer.apply_gradients([(grads, combination_image)])
        if i % 100 == 0:
            report(f"Iteration {i}: loss={loss:.2f}")  # book: print(...)
            img = deprocess_image(combination_image.numpy())
            fname = f"combination_image_at_iteration_{i}.png"
            save_img(fname, img)  # book: keras.preprocessing.image.save_img(fname, img)
    return loss
