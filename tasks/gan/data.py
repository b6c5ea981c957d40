"""The GAN's data step: `python -m tasks.gan.data data` (from the repo root, as dvc.yaml runs it)
stores the training images (at most `gan.data.max_images`) and the held-out real images the score
compares with, conformed to the model's size and channels."""

from __future__ import annotations

import sys
from pathlib import Path

from tasks import storage
from tasks.gan.params import TECHNIQUE, GanPaths, load
from tasks.image_data import prepare_image_data
from tasks.steps import run_steps


def data(root: Path) -> None:
    """The `data` step."""
    params, runtime = load(root)
    prepare_image_data(
        params.data,
        storage.under(root, GanPaths()).data,
        TECHNIQUE,
        max_train_images=params.data.max_images,
        seed=runtime.seed,
        root=root,
    )


if __name__ == "__main__":
    sys.exit(run_steps({"data": data}, __doc__))
