"""Keras training helpers the techniques that train a model share: a progress log that works in
any log sink, the guard that stops a loss gone NaN or blown up, the choice of the epoch whose model
is kept (best or last) with early stopping, and saving a model so a reader never sees half a file."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import keras

from tasks import storage
from tasks.kept_epoch import kept_model_line
from tasks.params import BlowupParams, EpochChoiceParams

log = logging.getLogger(__name__)


def all_finite(logs: Mapping[str, float] | None) -> bool:
    return all(math.isfinite(float(value)) for value in (logs or {}).values())


class BlowupDetector:
    """Watches the per-step training loss: `update` is True once the loss, smoothed over ~10 steps,
    has stayed above `factor` x its lowest smoothed value so far for `steps` steps in a row. Keras
    logs the epoch's running mean at each step; the step's own loss is recovered from it."""

    SMOOTHING = 0.1  # weight of the newest step in the moving average

    def __init__(self, factor: float, steps: int, loss_key: str = "loss"):
        self.factor, self.steps, self.loss_key = factor, steps, loss_key
        self.lowest, self.smoothed, self.steps_above = math.inf, math.nan, 0
        self._epoch_mean = 0.0

    @property
    def rising(self) -> bool:
        return self.steps_above > 0

    def update(self, batch: int, logs: Mapping[str, float]) -> bool:
        mean = float(logs[self.loss_key])
        loss = mean if batch == 0 else (batch + 1) * mean - batch * self._epoch_mean
        self._epoch_mean = mean
        if math.isnan(self.smoothed):
            self.smoothed = loss
        self.smoothed += self.SMOOTHING * (loss - self.smoothed)
        self.lowest = min(self.lowest, self.smoothed)
        self.steps_above = self.steps_above + 1 if self.smoothed > self.factor * self.lowest else 0
        return self.steps_above >= self.steps


class NanGuard(keras.callbacks.Callback):
    """Stops training at the first batch whose logged values are not finite or, given a `blowup`
    detector, once the loss has blown up; after every epoch that ended healthy (finite, and the
    loss not on the rise) calls `save_epoch(epoch)` (1-based) when given. `last_good_epoch`,
    `diverged_at_epoch` and `blown_up_at_epoch` (1-based, 0 = none) say what happened."""

    def __init__(
        self,
        save_epoch: Callable[[int], None] | None = None,
        initial_epoch: int = 0,
        blowup: BlowupDetector | None = None,
    ):
        super().__init__()
        self.save_epoch, self.blowup = save_epoch, blowup
        self.last_good_epoch = initial_epoch
        self.diverged_at_epoch = self.blown_up_at_epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if not all_finite(logs):
            self.diverged_at_epoch = self.epoch
            self.model.stop_training = True
        elif self.blowup and not self.blown_up_at_epoch and self.blowup.update(batch, logs):
            self.blown_up_at_epoch = self.epoch
            self.model.stop_training = True
            log.warning(
                "loss blew up in epoch %d: %s %.4g has stayed above %g x its lowest (%.4g) for %d steps; "
                "training stopped",
                self.epoch,
                self.blowup.loss_key,
                self.blowup.smoothed,
                self.blowup.factor,
                self.blowup.lowest,
                self.blowup.steps,
            )

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged_at_epoch or not all_finite(logs):
            self.diverged_at_epoch = self.diverged_at_epoch or epoch + 1
            self.model.stop_training = True
            return
        if self.blown_up_at_epoch or (self.blowup and self.blowup.rising):
            return
        if self.save_epoch:
            self.save_epoch(epoch + 1)
        self.last_good_epoch = epoch + 1


class KeptEpoch(keras.callbacks.Callback):
    """Saves the model to keep (`save(epoch)`) after each epoch the guard found healthy: every such
    epoch with keep "last", one that lowers `monitor` with keep "best". Place it after the guard.
    `kept`, `best` and `final` are (epoch, value) pairs, (0, nan) before any."""

    def __init__(self, save: Callable[[int], None], keep: str, monitor: str, guard: NanGuard):
        super().__init__()
        self.save, self.keep, self.monitor, self.guard = save, keep, monitor, guard
        self.kept = self.best = self.final = (0, math.nan)
        self.epochs_run = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_run = epoch + 1
        if self.guard.last_good_epoch != epoch + 1:
            return
        value = float(logs[self.monitor])
        self.final = (epoch + 1, value)
        if not value >= self.best[1]:  # also when best is still nan
            self.best = self.final
        if self.keep == "last" or self.best == self.final:
            self.save(epoch + 1)
            self.kept = self.final

    def summary(self) -> dict[str, float]:
        """The kept, best and final epochs and values of the monitored metric, for the metrics file."""
        name = self.monitor
        return {
            "kept_epoch": self.kept[0],
            f"kept_{name}": self.kept[1],
            "best_epoch": self.best[0],
            f"best_{name}": self.best[1],
            "final_epoch": self.final[0],
            f"final_{name}": self.final[1],
        }


class EpochChoice(NamedTuple):
    """The callbacks that guard training and choose the kept epoch (`callbacks`, in their order)."""

    guard: NanGuard
    kept: KeptEpoch
    callbacks: list[keras.callbacks.Callback]

    def outcome(self) -> dict[str, float]:
        """How training ended and which epoch is kept, for the metrics file."""
        early = [c for c in self.callbacks if isinstance(c, keras.callbacks.EarlyStopping)]
        return {
            **self.kept.summary(),
            "epochs_completed": self.guard.last_good_epoch,
            "diverged": int(bool(self.guard.diverged_at_epoch)),
            "diverged_at_epoch": self.guard.diverged_at_epoch,
            "blown_up_at_epoch": self.guard.blown_up_at_epoch,
            "stopped_early_at_epoch": early[0].stopped_epoch + 1 if early and early[0].stopped_epoch else 0,
        }


def epoch_choice(
    save: Callable[[int], None],
    choice: EpochChoiceParams,
    blowup: BlowupParams | None,
    monitor: str,
    loss_key: str = "loss",
) -> EpochChoice:
    """The NaN and blow-up guard (on `loss_key`), the kept epoch (`choice.keep` by `monitor`, saved
    with `save(epoch)`) and, with `choice.patience`, Keras's EarlyStopping on `monitor`."""
    detector = BlowupDetector(blowup.factor, blowup.steps, loss_key) if blowup else None
    guard = NanGuard(blowup=detector)
    kept = KeptEpoch(save, choice.keep, monitor, guard)
    callbacks: list[keras.callbacks.Callback] = [guard, kept]
    if choice.patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=choice.patience, mode="min"))
    return EpochChoice(guard, kept, callbacks)


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


def restore_kept_epoch(
    model: keras.Model, choice: EpochChoice, checkpoint: Path, error: type[Exception], fix: str
) -> None:
    """After `fit`: log which epoch is kept and why, and load its weights from `checkpoint` (where
    `choice.kept` saved them) when training went on past it. When no epoch ended healthy, raise
    `error` naming `fix`."""
    guard, kept = choice.guard, choice.kept
    failure = (
        f"loss became NaN in epoch {guard.diverged_at_epoch}"
        if guard.diverged_at_epoch
        else f"loss blew up in epoch {guard.blown_up_at_epoch}"
        if guard.blown_up_at_epoch
        else ""
    )
    if not kept.kept[0]:
        raise error(f"{failure or 'no epoch ended healthy'}, before any epoch was kept: {fix}")
    log.log(
        logging.WARNING if failure else logging.INFO, "%s", kept_model_line(choice.outcome(), kept.monitor)
    )
    if kept.kept[0] != kept.epochs_run:
        model.load_weights(checkpoint)


def save_model_atomically(model: keras.Model, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = storage.partial_path(path, ".keras")
    model.save(temporary)
    os.replace(temporary, path)
