"""Device setup shared by every technique: seeds, GPU memory growth, mixed precision, XLA and
the tf.distribute strategy. GPU when present, CPU otherwise, from the same code path."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import tensorflow as tf

log = logging.getLogger(__name__)

BFLOAT16_FLAGS = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo names of the instructions oneDNN uses


def configure_runtime(
    seed: int,
    dtype_policy: str = "float32",
    memory_growth: bool = True,
    distribute: str = "auto",
) -> tf.distribute.Strategy:
    """Seed everything and prepare the devices; returns the strategy to build models under.

    `dtype_policy="auto"` chooses by hardware (`choose_dtype_policy`); naming a Keras policy forces
    it, which is how tests exercise mixed precision on a CPU. `distribute="auto"` mirrors over all
    GPUs when there are several; "mirrored" always mirrors (over the CPU when there is no GPU).
    """
    keras.utils.set_random_seed(seed)
    gpus = tf.config.list_physical_devices("GPU")
    if memory_growth:
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # devices already initialised in this process: keep as is
                log.debug("memory growth not set on %s: already initialised", gpu.name)
    keras.mixed_precision.set_global_policy(choose_dtype_policy(dtype_policy, len(gpus), cpu_has_bfloat16()))
    strategy = choose_strategy(len(gpus), distribute)
    log.info(
        "runtime: %d GPU(s), policy %s, strategy %s",
        len(gpus),
        keras.mixed_precision.global_policy().name,
        type(strategy).__name__,
    )
    return strategy


def choose_dtype_policy(requested: str, num_gpus: int, cpu_bfloat16: bool) -> str:
    """The Keras dtype policy for `requested`: a named policy as is; "auto" is mixed_float16 on a
    GPU, mixed_bfloat16 on a CPU with bfloat16 matrix instructions (about 2x float32's matmul
    throughput there; float16 has no such instructions on CPUs and runs slower), float32 otherwise.
    Under a mixed policy the layers that must stay float32 say so (each model's outputs, losses)."""
    if requested != "auto":
        return requested
    if num_gpus:
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_bfloat16 else "float32"


def cpu_has_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU reports bfloat16 matrix instructions (AVX512_BF16 or AMX-BF16) among the
    flags Linux lists; False where it cannot tell (another OS)."""
    try:
        lines = cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    flags = {flag for line in lines if line.startswith("flags") for flag in line.partition(":")[2].split()}
    return bool(flags & BFLOAT16_FLAGS)


def choose_strategy(num_gpus: int, distribute: str = "auto") -> tf.distribute.Strategy:
    if distribute == "mirrored" or (distribute == "auto" and num_gpus > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()
