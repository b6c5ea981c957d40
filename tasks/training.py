"""Keras training helpers the techniques that train a model share: a progress log that works in
any log sink, the NaN guard that keeps the last good epoch, and saving a model so a reader never
sees half a file."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import keras

from tasks import storage

log = logging.getLogger(__name__)


def all_finite(logs: Mapping[str, float] | None) -> bool:
    return all(math.isfinite(float(value)) for value in (logs or {}).values())


class NanGuard(keras.callbacks.Callback):
    """Stops training at the first batch whose logged values are not finite, and after every epoch
    whose values all are calls `save_epoch(epoch)` (1-based), so the last good epoch's model stays
    on disk. `last_good_epoch` and `diverged_at_epoch` (1-based, 0 = none) say what happened."""

    def __init__(self, save_epoch: Callable[[int], None], initial_epoch: int = 0):
        super().__init__()
        self.save_epoch = save_epoch
        self.last_good_epoch = initial_epoch
        self.diverged_at_epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if not all_finite(logs):
            self.diverged_at_epoch = self.epoch
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged_at_epoch or not all_finite(logs):
            self.diverged_at_epoch = self.diverged_at_epoch or epoch + 1
            self.model.stop_training = True
            return
        self.save_epoch(epoch + 1)
        self.last_good_epoch = epoch + 1


class ProgressLog(keras.callbacks.Callback):
    """Logs steps and loss every `every_seconds`, and a line per epoch (works in any log sink)."""

    def __init__(
        self,
        epochs: int,
        steps_per_epoch: int,
        batch_size: int,
        every_seconds: float = 15.0,
        loss_key: str = "loss",
    ):
        super().__init__()
        self.epochs, self.steps_per_epoch, self.batch_size = epochs, steps_per_epoch, batch_size
        self.every_seconds, self.loss_key = every_seconds, loss_key

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.epoch_start = epoch, time.perf_counter()
        self.last_report = self.epoch_start

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if now - self.last_report >= self.every_seconds:
            self.last_report = now
            log.info(
                "epoch %d/%d step %d/%d %s %.4f",
                self.epoch + 1,
                self.epochs,
                batch + 1,
                self.steps_per_epoch,
                self.loss_key,
                float((logs or {}).get(self.loss_key, math.nan)),
            )

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.epoch_start
        summary = " ".join(f"{key} {value:.4f}" for key, value in (logs or {}).items())
        log.info(
            "epoch %d/%d done in %.1f s (%.0f examples/s): %s",
            epoch + 1,
            self.epochs,
            seconds,
            self.steps_per_epoch * self.batch_size / seconds,
            summary,
        )


def restore_last_good_epoch(
    model: keras.Model, guard: NanGuard, checkpoint: Path, error: type[Exception], fix: str
) -> None:
    """After `fit`: if the loss turned NaN, load the last good epoch's weights from `checkpoint`
    (where the guard's `save_epoch` saved them). With no good epoch at all, raise `error` naming `fix`."""
    if not guard.diverged_at_epoch:
        return
    if not guard.last_good_epoch:
        raise error(f"loss became NaN in epoch {guard.diverged_at_epoch}, before any epoch finished: {fix}")
    log.warning(
        "loss became NaN in epoch %d: stopped, keeping the model of epoch %d",
        guard.diverged_at_epoch,
        guard.last_good_epoch,
    )
    model.load_weights(checkpoint)


def save_model_atomically(model: keras.Model, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = storage.partial_path(path, ".keras")
    model.save(temporary)
    os.replace(temporary, path)
