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


def truncated_log_probs(log_probs, top_k, top_p):
    """`log_probs` (batch, vocab) restricted per row to its `top_k` likeliest tokens (0 = all) and to
    the nucleus, the fewest likeliest tokens whose probability reaches `top_p` (1 = all), then
    renormalised. The likeliest token is always kept; tokens tied with the last one kept stay too.

    Only the rows that ask for a filter pay for one: top-k alone takes each row's k-th largest
    (`top_k`), the nucleus sorts its own rows."""
    top_k, top_p = ops.convert_to_tensor(top_k, "int32"), ops.convert_to_tensor(top_p, "float32")
    threshold = ops.full(ops.shape(log_probs)[:1], -np.inf)
    only_k = ops.nonzero((top_k > 0) & (top_p >= 1.0))[0]
    threshold = ops.scatter_update(
        threshold, only_k[:, None], kth_largest(ops.take(log_probs, only_k, axis=0), ops.take(top_k, only_k))
    )
    nucleus = ops.nonzero(top_p < 1.0)[0]
    threshold = ops.scatter_update(
        threshold,
        nucleus[:, None],
        nucleus_threshold(
            ops.take(log_probs, nucleus, axis=0), ops.take(top_k, nucleus), ops.take(top_p, nucleus)
        ),
    )
    kept = ops.where(log_probs >= threshold[:, None], log_probs, -np.inf)
    return kept - ops.logsumexp(kept, axis=-1, keepdims=True)


def kth_largest(log_probs, k):
    """Each row's `k`-th largest value (k >= 1; all of a row's values for k beyond them)."""
    k = ops.minimum(k, ops.shape(log_probs)[-1])
    largest = ops.top_k(log_probs, ops.max(k, initial=1))[0]
    return ops.take_along_axis(largest, ops.expand_dims(k - 1, -1), axis=-1)[:, 0]


def nucleus_threshold(log_probs, top_k, top_p):
    """Each row's smallest kept value: the nucleus of mass `top_p`, at most `top_k` tokens (0 = no
    cap), at least one."""
    descending = ops.flip(ops.sort(log_probs, axis=-1), axis=-1)
    probs = ops.exp(descending)
    mass_before = ops.cumsum(probs, axis=-1) - probs
    num_kept = ops.sum(ops.cast(mass_before < ops.expand_dims(top_p, -1), "int32"), axis=-1)
    num_kept = ops.maximum(ops.where(top_k > 0, ops.minimum(num_kept, top_k), num_kept), 1)
    return ops.take_along_axis(descending, ops.expand_dims(num_kept - 1, -1), axis=-1)[:, 0]
