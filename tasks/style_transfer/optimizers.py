"""The optimisers style transfer compares on the pixels of an image: the book's SGD with an
exponentially decaying rate, Adam, and L-BFGS (Gatys et al.'s choice). Each evaluation of the
compiled loss-and-gradient step counts as one iteration, so their budgets compare."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
import scipy.optimize
import tensorflow as tf
import threadpoolctl

from tasks.images import to_uint8
from tasks.style_transfer.params import AdamParams, LbfgsParams, SgdParams

log = logging.getLogger(__name__)


@dataclass
class LossHistory:
    """The losses at every evaluation and, every `snapshot_every` steps, the image as it stands;
    the optimisers call it once per evaluation."""

    snapshot_every: int
    present: Callable[[tf.Tensor], np.ndarray]  # optimised pixels -> the RGB image a user sees
    scale: int = 0
    records: list[dict[str, float]] = field(default_factory=list)  # {"step", "scale", "loss", ...}
    final: dict[str, float] = field(default_factory=dict)  # the losses of the image returned
    snapshots: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (step, uint8 image)

    def __call__(self, losses: dict[str, tf.Tensor], image: tf.Tensor) -> None:
        step = len(self.records) + 1
        self.records.append({"step": step, "scale": self.scale, **{k: float(v) for k, v in losses.items()}})
        if self.snapshot_every and step % self.snapshot_every == 0:
            self.snapshots.append((step, to_uint8(self.present(image))))
            log.info("step %d: loss %.4g", step, self.records[-1]["loss"])


def keras_optimizer(name: str, sgd: SgdParams, adam: AdamParams) -> keras.optimizers.Optimizer:
    if name == "sgd":  # the book's: 100, decayed x0.96 every 100 steps
        schedule = keras.optimizers.schedules.ExponentialDecay(
            sgd.learning_rate, sgd.decay_steps, sgd.decay_rate
        )
        return keras.optimizers.SGD(schedule)
    return keras.optimizers.Adam(adam.learning_rate)


def descend(
    loss_and_grads: Callable,
    initial: tf.Tensor,
    iterations: int,
    optimizer: keras.optimizers.Optimizer,
    history: LossHistory,
) -> tf.Tensor:
    """The book's loop: one optimiser update per evaluation."""
    pixels = tf.Variable(initial)
    for _ in range(iterations):
        losses, gradients = loss_and_grads(pixels)
        history(losses, pixels)
        optimizer.apply_gradients([(gradients, pixels)])
    return tf.convert_to_tensor(pixels)


class _BudgetSpent(Exception):
    """Raised inside SciPy's loop once `iterations` evaluations are done (its maxfun may overrun)."""


def lbfgs(
    loss_and_grads: Callable, initial: tf.Tensor, iterations: int, num_corrections: int, history: LossHistory
) -> tf.Tensor:
    """L-BFGS (Gatys et al.'s choice) through SciPy; returns the best image it evaluated.

    Line-search trials count as iterations, so its budget is comparable with SGD and Adam's.
    SciPy stops early once the float32 loss stalls; it then restarts from the best image
    (fresh curvature history) while budget is left and restarts still improve the loss.
    """
    shape = initial.shape
    best = {"loss": math.inf, "pixels": initial}
    start = len(history.records)

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        if len(history.records) - start == iterations:
            raise _BudgetSpent
        pixels = tf.constant(flat.reshape(shape), tf.float32)
        losses, gradients = loss_and_grads(pixels)
        loss = float(losses["loss"])
        if loss < best["loss"]:
            best.update(loss=loss, pixels=pixels)
        history(losses, best["pixels"])
        return loss, gradients.numpy().astype(np.float64).ravel()

    # SciPy's BLAS threads would spin between evaluations and take the cores from TensorFlow's
    # next step (1.5x slower per evaluation on 2 cores, benchmarks/README.md).
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        previous_best = None
        while previous_best is None or best["loss"] < previous_best:
            previous_best = best["loss"]
            remaining = iterations - (len(history.records) - start)
            try:
                result = scipy.optimize.minimize(
                    objective,
                    tf.reshape(best["pixels"], [-1]).numpy().astype(np.float64),
                    jac=True,
                    method="L-BFGS-B",
                    options={
                        "maxiter": remaining,
                        "maxfun": remaining,
                        "maxcor": num_corrections,
                        "ftol": 0.0,
                        "gtol": 0.0,
                    },
                )
            except _BudgetSpent:
                break
            log.info("L-BFGS stopped after %d evaluations: %s", len(history.records) - start, result.message)
    return best["pixels"]


def optimize(
    name: str,
    loss_and_grads: Callable,
    initial: tf.Tensor,
    iterations: int,
    history: LossHistory,
    sgd: SgdParams,
    adam: AdamParams,
    lbfgs_params: LbfgsParams,
) -> tf.Tensor:
    """Optimise `initial` with the optimiser called `name` for `iterations` evaluations."""
    if name == "lbfgs":
        return lbfgs(loss_and_grads, initial, iterations, lbfgs_params.history, history)
    return descend(loss_and_grads, initial, iterations, keras_optimizer(name, sgd, adam), history)
