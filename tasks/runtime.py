"""Device setup shared by every technique: seeds, GPU memory growth, mixed precision, XLA and
the tf.distribute strategy. GPU when present, CPU otherwise, from the same code path."""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

log = logging.getLogger(__name__)


def configure_runtime(
    seed: int,
    dtype_policy: str = "float32",
    memory_growth: bool = True,
    distribute: str = "auto",
) -> tf.distribute.Strategy:
    """Seed everything and prepare the devices; returns the strategy to build models under.

    `dtype_policy="auto"` is mixed_float16 when a GPU is present and float32 otherwise (on a
    CPU float16 is slower, not faster); naming a Keras policy forces it, which is how tests
    exercise mixed precision on a CPU. `distribute="auto"` mirrors over all GPUs when there
    are several; "mirrored" always mirrors (over the CPU when there is no GPU).
    """
    keras.utils.set_random_seed(seed)
    gpus = tf.config.list_physical_devices("GPU")
    if memory_growth:
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # devices already initialised in this process: keep as is
                log.debug("memory growth not set on %s: already initialised", gpu.name)
    if dtype_policy == "auto":
        dtype_policy = "mixed_float16" if gpus else "float32"
    keras.mixed_precision.set_global_policy(dtype_policy)
    strategy = choose_strategy(len(gpus), distribute)
    log.info(
        "runtime: %d GPU(s), policy %s, strategy %s",
        len(gpus),
        keras.mixed_precision.global_policy().name,
        type(strategy).__name__,
    )
    return strategy


def choose_strategy(num_gpus: int, distribute: str = "auto") -> tf.distribute.Strategy:
    if distribute == "mirrored" or (distribute == "auto" and num_gpus > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()
