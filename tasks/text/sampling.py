"""Temperature sampling, shared by the text generators: the book's `reweight_distribution` in log
space, and the entropy of the distribution a token is drawn from."""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from tasks.text.corpus import TextError


def check_temperature(temperature: float) -> float:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise TextError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def reweighted_log_probs(probs, temperature):
    """log of the book's `reweight_distribution`: p**(1/T) renormalised, in log space.

    Zero probabilities stay zero at any temperature (no log(0) NaNs); T -> 0 tends to argmax
    and huge T to uniform over the characters the model deems possible.
    """
    probs = ops.convert_to_tensor(probs, "float32")
    temperature = ops.cast(temperature, "float32")
    scaled = ops.where(probs > 0, ops.log(ops.maximum(probs, 1e-38)), -np.inf) / temperature
    return scaled - ops.logsumexp(scaled, axis=-1, keepdims=True)


def reweight_distribution(probs, temperature: float):
    """The book's reweighting: a new distribution with p_i ** (1 / temperature), normalised."""
    check_temperature(temperature)
    return ops.exp(reweighted_log_probs(probs, temperature))


def entropy_bits(log_probs):
    """Shannon entropy in bits along the last axis, with 0 * log 0 taken as 0."""
    terms = ops.where(log_probs > -np.inf, ops.exp(log_probs) * log_probs, 0.0)
    return -ops.sum(terms, axis=-1) / math.log(2.0)
