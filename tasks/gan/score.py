"""How good the GAN's images are: the Frechet distance (the FID formula) between the features of
generated and of held-out real images, in the penultimate layer of a small classifier trained on the
same data (its labels, or the rotations of its images when it has one class), or of InceptionV3; and
the share of images that classifier puts in one class with high confidence, generated against real
(a garment it cannot tell apart is no garment).

`python -m tasks.gan.score classifier` (from the repo root, as dvc.yaml runs it) trains that
classifier; it does not import the GAN's model, so changing the GAN does not re-train it.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import scipy.linalg
import tensorflow as tf
from keras import layers

from tasks import storage
from tasks.backbones import BackboneError, load_backbone
from tasks.gan.params import GanError, GanPaths, load
from tasks.image_batches import rotation_dataset
from tasks.image_data import load_split
from tasks.params import RuntimeParams
from tasks.runtime import configure_runtime
from tasks.steps import run_steps
from tasks.training import save_model_atomically

log = logging.getLogger(__name__)

BATCH_SIZE = 128  # the scoring classifier's


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


def confident_share(probabilities: np.ndarray, threshold: float) -> float:
    """The share of images whose most likely class has probability >= `threshold`.

    Args:
        probabilities: (n, num_classes) softmax outputs of the classifier.
        threshold: the confidence an image's top class needs, in (0, 1].
    """
    if len(probabilities) == 0:
        raise ValueError("confident_share needs at least one image, got none")
    return float(np.mean(probabilities.max(axis=1) >= threshold))


def effective_classes(probabilities: np.ndarray) -> float:
    """How many classes the images' top classes spread over: exp of the entropy of the top classes'
    histogram, from 1 (every image in one class) to the number of classes (as many in each). A
    generator that draws one kind of thing, however confidently classified, scores near 1.

    Args:
        probabilities: (n, num_classes) softmax outputs of the classifier.
    """
    if len(probabilities) == 0:
        raise ValueError("effective_classes needs at least one image, got none")
    counts = np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1])
    shares = counts[counts > 0] / len(probabilities)
    return float(np.exp(-np.sum(shares * np.log(shares))))


def load_classifier(path: Path) -> keras.Model:
    """The classifier step's model in float32, as it was trained, whatever the global dtype policy
    (the train step's may be mixed precision: rounded probabilities would blur the confidence)."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        return keras.models.load_model(path)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def score_features(
    classifier_path: Path, features: str, weights: str = "pretrained"
) -> Callable[[tf.Tensor], tf.Tensor]:
    """Images in [0, 1] -> the features the score compares: the pipeline's classifier's "features"
    layer, or InceptionV3's pooled last block (the FID's own space; needs ImageNet weights)."""
    if features == "classifier":
        classifier = load_classifier(classifier_path)
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


@dataclass(frozen=True)
class ConfidenceScore:
    """The pipeline's classifier as a judge: the share of images it puts in one class with
    probability >= `threshold`, and over how many classes the images spread (`effective_classes`);
    `real_share` and `real_classes` are the same for held-out real images (measured once, the
    reference a generator is read against)."""

    classify: Callable[[tf.Tensor], tf.Tensor]  # images in [0, 1] -> (n, num_classes) probabilities
    threshold: float
    real_share: float
    real_classes: float

    def judge(self, pixels: np.ndarray) -> dict[str, float]:
        """`confident_share` and `effective_classes` of images, uint8 or float in [0, 1]."""
        probabilities = features_of(self.classify, pixels)
        return {
            "confident_share": confident_share(probabilities, self.threshold),
            "effective_classes": effective_classes(probabilities),
        }

    def share(self, pixels: np.ndarray) -> float:
        return self.judge(pixels)["confident_share"]


def confidence_score(classifier_path: Path, threshold: float, real_pixels: np.ndarray) -> ConfidenceScore:
    """The classifier step's model (float32, as it was trained) as a ConfidenceScore, its reference
    share measured on `real_pixels`."""
    classify = load_classifier(classifier_path)
    probabilities = features_of(classify, real_pixels)
    return ConfidenceScore(
        classify, threshold, confident_share(probabilities, threshold), effective_classes(probabilities)
    )


def train_classifier(paths: GanPaths, epochs: int, runtime: RuntimeParams) -> dict[str, float]:
    """The scoring classifier: the dataset's labels, or rotations of its images when it has one class."""
    configure_runtime(runtime.seed, "float32", runtime.memory_growth, "default")
    train, test = load_split(paths.data / "train.npz"), load_split(paths.data / "test.npz")
    labelled = len(np.unique(train.labels)) > 1
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1 if labelled else 4
    classifier = build_classifier(train.images.shape[1:], num_classes)
    classifier.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if labelled:
        history = classifier.fit(
            train.images.astype(np.float32) / 255.0,
            train.labels,
            batch_size=BATCH_SIZE,
            epochs=epochs,
            shuffle=True,
            validation_data=(test.images.astype(np.float32) / 255.0, test.labels),
            verbose=0,
        )
    else:  # one class (the book's CelebA folder): which of 4 rotations was applied
        history = classifier.fit(
            rotation_dataset(train.images, BATCH_SIZE, shuffle=True, seed=runtime.seed),
            epochs=epochs,
            validation_data=rotation_dataset(test.images, BATCH_SIZE, shuffle=False),
            verbose=0,
        )
    task = "labels" if labelled else "rotations"
    save_model_atomically(classifier, paths.classifier / "classifier.keras")
    metrics = {
        "task": task,
        "accuracy": history.history["accuracy"][-1],
        "test_accuracy": history.history["val_accuracy"][-1],
    }
    storage.write_json(paths.classifier / "metrics.json", metrics)
    log.info("scoring classifier (%s): test accuracy %.3f", task, metrics["test_accuracy"])
    return metrics


def classifier(root: Path) -> None:
    """The `classifier` step."""
    params, runtime = load(root)
    train_classifier(storage.under(root, GanPaths()), params.score.classifier_epochs, runtime)


if __name__ == "__main__":
    sys.exit(run_steps({"classifier": classifier}, __doc__))
