"""Image datasets the techniques that learn a distribution of images share (the VAE, the GAN):
MNIST and Fashion-MNIST as keras.datasets loads them, or a folder of images with class subfolders,
conformed to one size and channel count and stored as uint8 (tasks/image_batches.py feeds them to
Keras). The data step of both techniques is `prepare_image_data`; it reads the Keras datasets from
the Keras cache itself and loads TensorFlow only when images must be resized or converted."""

from __future__ import annotations

import gzip
import json
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydantic
from PIL import Image, ImageOps

from tasks import images, storage
from tasks.params import Params
from tasks.steps import StepError

log = logging.getLogger(__name__)

KERAS_DATASETS_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
CLASS_NAMES = {  # the labels of the Keras datasets, in label order
    "mnist": [str(digit) for digit in range(10)],
    "fashion_mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
}
MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"  # keras.datasets.mnist's
FASHION_MNIST_FOLDER = "fashion-mnist"  # in the Keras cache's datasets/, as keras.datasets keeps them
FASHION_MNIST_FILES = (  # (images, labels) of the train and the test split, gzipped IDX files
    ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
)


class DatasetError(StepError, ValueError):
    """An image folder or stored split that cannot be used, or images of an unusable shape."""


class ImageDataParams(Params):
    """Which images, at which size: the data section both image-generating techniques share."""

    dataset: Literal["mnist", "fashion_mnist", "folder"]
    folder: str  # for dataset: folder; class subfolders give the labels
    image_size: int = pydantic.Field(ge=4)  # height = width; images of other sizes are resized
    channels: Literal[1, 3]  # images of other modes are converted
    test_split: float = pydantic.Field(gt=0.0, lt=1.0)  # folder only: Keras datasets have their own

    @pydantic.field_validator("image_size")
    @classmethod
    def _halvable_twice(cls, image_size: int) -> int:
        if image_size % 4:
            raise ValueError(
                "must be a multiple of 4 (the networks halve it at least twice and double it back), "
                f"e.g. {image_size - image_size % 4} or {image_size + 4 - image_size % 4}"
            )
        return image_size

    @pydantic.field_validator("folder")
    @classmethod
    def _folder_given(cls, folder: str, info: pydantic.ValidationInfo) -> str:
        if info.data.get("dataset") == "folder" and not folder:
            raise ValueError("dataset is 'folder' but folder is empty: give the folder of images")
        return folder


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (n, size, size, channels) uint8
    labels: np.ndarray  # (n,) int32, indices into the class names


def load_keras_dataset(name: str, section: str) -> tuple[Split, Split]:
    """MNIST or Fashion-MNIST, the arrays keras.datasets loads, read from the Keras cache
    ($KERAS_HOME/datasets) without importing Keras; downloaded into it when missing."""
    try:
        if name == "mnist":
            path = storage.cached_download(KERAS_DATASETS_URL + "mnist.npz", MNIST_SHA256)
            with np.load(path, allow_pickle=False) as arrays:
                splits = [(arrays[f"x_{split}"], arrays[f"y_{split}"]) for split in ("train", "test")]
        else:
            splits = [
                (fashion_mnist(images), fashion_mnist(labels)) for images, labels in FASHION_MNIST_FILES
            ]
    except storage.DownloadError as error:
        raise storage.DownloadError(
            f"could not load {name}: {error} "
            f"(it has Fashion-MNIST: set {section}.data.dataset to fashion_mnist)",
            retryable=error.retryable,
        ) from None
    train, test = (Split(images, labels.astype(np.int32)) for images, labels in splits)
    return train, test


def fashion_mnist(file: str) -> np.ndarray:
    """One of Fashion-MNIST's arrays, from its file in the Keras cache."""
    return read_idx_file(storage.cached_download(KERAS_DATASETS_URL + file, subdir=FASHION_MNIST_FOLDER))


def read_idx_file(path: Path) -> np.ndarray:
    """The array in a gzipped IDX file (as the MNIST datasets ship)."""
    try:
        return decode_idx(gzip.decompress(path.read_bytes()))
    except (OSError, EOFError, DatasetError) as error:  # gzip's errors are OSError and EOFError
        raise DatasetError(
            f"{path} is not a gzipped IDX file ({error}): delete it to download it again"
        ) from None


def decode_idx(raw: bytes) -> np.ndarray:
    """An IDX array of unsigned bytes: two zero bytes, the type code 0x08, the number of dimensions,
    each dimension as a big-endian uint32, then the values in row-major order."""
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DatasetError(
            f"not an IDX array of unsigned bytes (it starts with {raw[:4].hex() or 'nothing'})"
        )
    header_size = 4 + 4 * raw[3]
    if len(raw) < header_size:
        raise DatasetError(f"IDX header cut short: {len(raw)} of {header_size} bytes")
    shape = struct.unpack(f">{raw[3]}I", raw[4:header_size])
    if len(raw) - header_size != math.prod(shape):
        raise DatasetError(f"IDX array of shape {shape} holds {len(raw) - header_size} values")
    return np.frombuffer(raw, np.uint8, offset=header_size).reshape(shape)


def conform(pixels: np.ndarray, image_size: int, channels: int, batch_size: int = 4096) -> np.ndarray:
    """(n, h, w[, c]) uint8 -> (n, image_size, image_size, channels) uint8: resized, and grey <-> RGB
    converted as needed (RGB -> grey by luminance)."""
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    if pixels.ndim != 4 or pixels.shape[-1] not in (1, 3):
        raise DatasetError(f"expected images of shape (n, height, width[, 1 or 3]), got {pixels.shape}")
    if pixels.shape[1:] == (image_size, image_size, channels):
        return pixels
    import tensorflow as tf  # only to resize or convert: images that fit the model never load it

    conformed = []
    for start in range(0, len(pixels), batch_size):
        batch = tf.convert_to_tensor(pixels[start : start + batch_size], tf.float32)
        if batch.shape[-1] != channels:
            batch = tf.image.grayscale_to_rgb(batch) if channels == 3 else tf.image.rgb_to_grayscale(batch)
        if batch.shape[1:3] != (image_size, image_size):
            batch = tf.image.resize(batch, (image_size, image_size), method="area", antialias=True)
        conformed.append(images.to_uint8(batch.numpy()))
    return np.concatenate(conformed)


def read_folder(folder: Path, image_size: int, channels: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every readable image under `folder`, centre-cropped to a square, resized and converted.

    Subfolders are classes (as keras.utils.image_dataset_from_directory names them); images
    directly in `folder` form one class named after it. Unreadable files are skipped and counted.
    """
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} not found")
    class_folders = sorted(
        path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")
    )
    groups = [(path.name, sorted(p for p in path.rglob("*") if p.is_file())) for path in class_folders]
    loose = sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))
    if loose:
        groups.insert(0, (folder.name, loose))
    pixels, labels, class_names, skipped = [], [], [], []
    for name, files in groups:
        count = 0
        for path in files:
            try:
                rgb = images.read_image(path)
            except images.ImageError:
                skipped.append(path.name)
                continue
            square = ImageOps.fit(
                Image.fromarray(images.to_uint8(rgb)), (image_size, image_size), Image.LANCZOS
            )
            array = np.asarray(square.convert("L" if channels == 1 else "RGB"))
            pixels.append(array.reshape(image_size, image_size, channels))
            labels.append(len(class_names))
            count += 1
        if count:
            class_names.append(name)
    if skipped:
        log.warning(
            "skipped %d unreadable files in %s, e.g. %s", len(skipped), folder, ", ".join(skipped[:5])
        )
    if not pixels:
        looked_at = sum(len(files) for _, files in groups)
        raise DatasetError(f"image folder {folder} has no readable images ({looked_at} files looked at)")
    return np.stack(pixels), np.asarray(labels, np.int32), class_names


def split_folder(pixels: np.ndarray, labels: np.ndarray, test_split: float, seed: int) -> tuple[Split, Split]:
    """A seeded random split into train and test, both non-empty."""
    num_test = round(len(pixels) * test_split)
    if num_test < 1 or num_test >= len(pixels):
        raise DatasetError(
            f"{len(pixels)} images cannot be split with test_split={test_split}: "
            "both the train and the test split need at least one image"
        )
    order = np.random.default_rng(seed).permutation(len(pixels))
    test, train = order[:num_test], order[num_test:]
    return Split(pixels[train], labels[train]), Split(pixels[test], labels[test])


def save_split(split: Split, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.partial.npz")
    np.savez(temporary, images=split.images, labels=split.labels)
    temporary.replace(path)


def load_split(path: Path) -> Split:
    if not path.is_file():
        raise DatasetError(f"{path} not found: run the data step first")
    with np.load(path) as arrays:
        return Split(arrays["images"], arrays["labels"])


def prepare_image_data(
    params: ImageDataParams,
    destination: Path,
    section: str,
    max_train_images: int = 0,
    max_test_images: int = 0,
    seed: int = 0,
    root: Path = Path("."),
) -> dict[str, Any]:
    """The data step: load the dataset (a relative folder is under `root`), keep at most the first
    `max_*_images` of each split (0 = all), conform them to the model's size and channels, and store
    train.npz, test.npz and classes.json (dataset, class names, image shape, counts) in `destination`.
    `section` names the params section in messages."""
    if params.dataset == "folder":
        folder = root / params.folder
        storage.check_input_folder(folder, root / storage.INPUTS / section, DatasetError, "image folder")
        pixels, labels, class_names = read_folder(folder, params.image_size, params.channels)
        train, test = split_folder(pixels, labels, params.test_split, seed)
    else:
        train, test = load_keras_dataset(params.dataset, section)
        class_names = CLASS_NAMES[params.dataset]
    train, test = (
        Split(
            conform(split.images[: limit or None], params.image_size, params.channels),
            split.labels[: limit or None],
        )
        for split, limit in ((train, max_train_images), (test, max_test_images))
    )
    save_split(train, destination / "train.npz")
    save_split(test, destination / "test.npz")
    summary = {
        "dataset": params.dataset,
        "classes": class_names,
        "image_shape": list(train.images.shape[1:]),
        "num_train": len(train.images),
        "num_test": len(test.images),
    }
    storage.write_json(destination / "classes.json", summary)
    log.info("data: %s", {key: value for key, value in summary.items() if key != "classes"})
    return summary


def read_summary(destination: Path) -> dict[str, Any]:
    """classes.json of the data step: dataset, class names, image shape and counts."""
    path = destination / "classes.json"
    if not path.is_file():
        raise DatasetError(f"{path} not found: run the data step first")
    return json.loads(path.read_text(encoding="utf-8"))
