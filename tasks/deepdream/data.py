"""DeepDream's input step: `python -m tasks.deepdream.data image` (from the repo root, as dvc.yaml
runs it) reads the image from any source and stores it as an RGB PNG of at most `max_size`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from tasks import images, storage
from tasks.deepdream.params import DeepDreamPaths, load
from tasks.steps import run_steps

log = logging.getLogger(__name__)


def fetch_image(paths: DeepDreamPaths, source: str, sha256: str, max_size: int) -> np.ndarray:
    """Resolve, validate and normalise the input image into an RGB PNG of at most `max_size`."""
    log.info("reading %s", source)
    image = images.read_image(images.resolve_source(source, sha256), max_size)
    images.save_image(image, paths.image)
    log.info("image: %s (%dx%d)", paths.image, image.shape[1], image.shape[0])
    return image


def image(root: Path) -> None:
    """The `image` step."""
    params, _ = load(root)
    fetch_image(storage.under(root, DeepDreamPaths()), params.image, params.image_sha256, params.max_size)


if __name__ == "__main__":
    sys.exit(run_steps({"image": image}, __doc__))
