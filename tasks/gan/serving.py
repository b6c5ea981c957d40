"""Which of the GAN's generators is served (through tasks/image_serving.py, as the VAE's decoder):
`num_images` and a `seed`, or `latent` points, in; base64 PNG images out.

Of a grid point's two generators, the one served is the one with the lower Frechet distance at its
last good epoch: the moving average of the weights (`ema_generator`, when `gan.train.ema_decay` > 0)
usually, the raw generator when it scores better. No DVC stage imports this module.
"""

from __future__ import annotations

import math
from typing import Any

GENERATORS = {"generator": "frechet_distance", "ema_generator": "ema_frechet_distance"}  # file stem -> score


def best_generator(metrics: dict[str, Any]) -> tuple[str, float]:
    """(file stem, Frechet distance) of a grid point's better generator; ("generator", NaN) if
    neither has a finite score."""
    scores = {stem: float(metrics.get(key, math.nan)) for stem, key in GENERATORS.items()}
    finite = {stem: score for stem, score in scores.items() if math.isfinite(score)}
    if not finite:
        return "generator", math.nan
    stem = min(finite, key=finite.__getitem__)
    return stem, finite[stem]
