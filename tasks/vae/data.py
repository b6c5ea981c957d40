"""The VAE's data step, as dvc.yaml runs it from the repo root:

    python -m tasks.vae.data data   # MNIST, Fashion-MNIST or a folder -> data/vae/{train,test}.npz

It does not import the model: editing the VAE re-runs no data preparation.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tasks import storage
from tasks.image_data import prepare_image_data
from tasks.steps import run_steps
from tasks.vae.params import VaePaths, load


def data(root: Path) -> dict[str, Any]:
    """The `data` step: vae.data's images, capped, conformed and split, in data/vae."""
    params, runtime = load(root)
    return prepare_image_data(
        params.data,
        storage.under(root, VaePaths()).data,
        "vae",
        params.data.max_train_images,
        params.data.max_test_images,
        runtime.seed,
        root,
    )


if __name__ == "__main__":
    sys.exit(run_steps({"data": data}, __doc__))
