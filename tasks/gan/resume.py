"""Resuming an interrupted GAN run after its last finished epoch, with public Keras API only.

After each finished epoch, a checkpoint of everything the next epoch depends on goes to a new file
named by the epoch: the variables of the generator, the discriminator (with its dropout's seed) and
the moving-average generator, both optimizers' variables, and the state of the GAN's seed generator
(latent vectors, label noise). Then a manifest naming that file is replaced atomically, then older
files are deleted: whenever the process dies, the manifest names one complete epoch.

One process writes a folder at a time: a run that starts in it claims it, and a run still writing
there (an attempt whose worker died but whose step process lives on until Prefect ends it) stops at
its next epoch's end instead of writing over the newer run's records.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path

import keras
import numpy as np
from keras import ops

from tasks import storage
from tasks.gan.model import GAN
from tasks.gan.params import GanError

MANIFEST = "checkpoint.json"
OWNER = "owner.json"


def state_variables(gan: GAN) -> dict[str, list[keras.Variable]]:
    """The variables a checkpoint holds, by group (Keras's `variables` include seed states)."""
    groups = {
        "generator": gan.generator.variables,
        "discriminator": gan.discriminator.variables,
        "d_optimizer": gan.d_optimizer.variables,
        "g_optimizer": gan.g_optimizer.variables,
        "seed_generator": [gan.seed_generator.state],
    }
    if gan.ema_generator is not None:
        groups["ema_generator"] = gan.ema_generator.variables
    return groups


def array_names(gan: GAN) -> list[tuple[str, keras.Variable]]:
    return [
        (f"{group}.{index:03d}", variable)
        for group, variables in state_variables(gan).items()
        for index, variable in enumerate(variables)
    ]


def save_checkpoint(folder: Path, gan: GAN, epoch: int) -> None:
    """The state after `epoch` (1-based) in folder/epoch_NNNN.npz, then the manifest naming it."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"epoch_{epoch:04d}.npz"
    partial = storage.partial_path(folder / name)
    with partial.open("wb") as file:
        np.savez(file, **{key: ops.convert_to_numpy(variable) for key, variable in array_names(gan)})
    os.replace(partial, folder / name)
    storage.write_json(folder / MANIFEST, {"epoch": epoch, "file": name})
    for older in folder.glob("epoch_*.npz"):
        if older.name != name:
            older.unlink()


def restore_checkpoint(folder: Path, gan: GAN) -> int:
    """Load the manifest's checkpoint into `gan` (built, optimizers built) and return its epoch;
    0 when there is none."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return 0
    checkpoint = json.loads(manifest.read_text(encoding="utf-8"))
    with np.load(folder / checkpoint["file"]) as arrays:
        expected = array_names(gan)
        if sorted(arrays.files) != sorted(key for key, _ in expected):
            raise GanError(
                f"{folder / checkpoint['file']} does not fit this GAN: delete {folder} to start over"
            )
        for key, variable in expected:
            variable.assign(arrays[key])
    return int(checkpoint["epoch"])


def claim_folder(folder: Path) -> str:
    """Make this process the one that writes `folder`; returns the token `FolderOwner` checks."""
    token = uuid.uuid4().hex
    storage.write_json(folder / OWNER, {"token": token, "host": socket.gethostname(), "pid": os.getpid()})
    return token


class FolderOwner(keras.callbacks.Callback):
    """Stops training at an epoch's end, before anything is written, once a newer run claimed the
    folder. Goes first among the callbacks."""

    def __init__(self, folder: Path, token: str):
        super().__init__()
        self.folder, self.token = folder, token

    def on_epoch_end(self, epoch, logs=None):
        owner = json.loads((self.folder / OWNER).read_text(encoding="utf-8"))
        if owner["token"] != self.token:
            raise GanError(
                f"a newer run of this point (pid {owner['pid']} on {owner['host']}) took over {self.folder}: "
                f"this run stops without writing its epoch {epoch + 1}"
            )
