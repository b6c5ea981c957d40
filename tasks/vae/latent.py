"""The latent space of a trained VAE: encoding and decoding a batch at a time, the plane a latent
grid and scatter show (the latent plane itself, or the test means' principal directions), the
book's grid of decoded images over where the test means are (or the Keras blog's normal quantiles,
or the book's fixed square), interpolation, and concept vectors (the book's smile vector: the mean
latent difference between two groups of images)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tasks.image_batches import image_dataset
from tasks.images import mosaic, with_axis_labels
from tasks.vae.params import GridSpan

# The `data` grid leaves out the test means beyond the 1% and 99% quantiles of each axis: a few
# outliers would otherwise stretch it over mostly empty latent space.
DATA_QUANTILE = 0.01
NORMAL_PROBABILITIES = (0.05, 0.95)  # the Keras blog's grid: the prior's quantiles, tails cut off


def encode(encoder: keras.Model, pixels: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """(n, latent_dim) latent means of uint8 images, converted to floats one batch at a time."""
    batches = image_dataset(pixels, batch_size, shuffle=False)
    return np.concatenate([encoder(batch, training=False)[0].numpy() for batch in batches]).astype(np.float64)


def decode(decoder: keras.Model, z: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """(n, h, w, c) float images in [0, 1] for (n, latent_dim) latent points."""
    z = np.asarray(z, np.float32)
    return np.concatenate(
        [
            decoder(z[start : start + batch_size], training=False).numpy()
            for start in range(0, len(z), batch_size)
        ]
    )


@dataclass(frozen=True)
class LatentAxes:
    """The plane the latent grid and scatter show: center + t1 * axes[0] + t2 * axes[1]."""

    center: np.ndarray  # (latent_dim,)
    axes: np.ndarray  # (num_axes, latent_dim); rows scaled so t = +-1 is one spread along them
    names: tuple[str, ...]  # what each axis is, for plot labels

    def coordinates(self, z: np.ndarray) -> np.ndarray:
        """(n, num_axes) coordinates of latent points in this plane (grid units)."""
        return (z - self.center) @ np.linalg.pinv(self.axes)


def latent_axes(z_means: np.ndarray, principal: bool = False) -> LatentAxes:
    """The latent plane itself when latent_dim <= 2 (the book's grid around the origin); otherwise,
    or if `principal`, the two leading principal directions of `z_means` around their mean, each
    scaled by the standard deviation along it."""
    latent_dim = z_means.shape[1]
    if latent_dim <= 2 and not principal:
        return LatentAxes(
            np.zeros(latent_dim), np.eye(latent_dim), tuple(f"z[{i}]" for i in range(latent_dim))
        )
    center = z_means.mean(axis=0)
    _, singular_values, directions = np.linalg.svd(z_means - center, full_matrices=False)
    spreads = singular_values[:2] / math.sqrt(max(1, len(z_means) - 1))
    explained = singular_values[:2] ** 2 / max(np.sum(singular_values**2), 1e-300)
    return LatentAxes(
        center,
        directions[:2] * spreads[:, None],
        tuple(
            f"principal direction {i + 1} of the test means ({share:.0%} of variance), in std"
            for i, share in enumerate(explained)
        ),
    )


def grid_steps(span: GridSpan, coordinates: np.ndarray, grid_size: int, scale: float) -> np.ndarray:
    """(grid_size,) ascending coordinates of the grid along one axis of the plane.

    Args:
        span: `data`: evenly spaced quantiles of `coordinates` (the test means' coordinates along
            the axis), from DATA_QUANTILE to 1 - DATA_QUANTILE, so the grid covers the classes the
            scatter shows; `normal`: `scale` x the standard normal's quantiles at evenly spaced
            probabilities in NORMAL_PROBABILITIES (the Keras blog's grid); `fixed`: evenly spaced
            from -scale to scale (the book's).
        coordinates: (n,) the test means along the axis; read by `data` only.
        grid_size: number of steps.
        scale: the half-width (`fixed`) or the quantiles' multiplier (`normal`); unused by `data`.
    """
    if span == "data":
        return np.quantile(coordinates, np.linspace(DATA_QUANTILE, 1.0 - DATA_QUANTILE, grid_size))
    if span == "normal":
        normal = statistics.NormalDist()
        probabilities = np.linspace(*NORMAL_PROBABILITIES, grid_size)
        return scale * np.array([normal.inv_cdf(probability) for probability in probabilities])
    if span == "fixed":
        return np.linspace(-scale, scale, grid_size)
    raise ValueError(f"grid span must be data, normal or fixed, got {span!r}")


def axes_steps(
    axes: LatentAxes, z_means: np.ndarray, span: GridSpan, grid_size: int, scale: float
) -> list[np.ndarray]:
    """The grid's steps along each axis of the plane (see `grid_steps`), for the test means `z_means`."""
    return [grid_steps(span, along, grid_size, scale) for along in axes.coordinates(z_means).T]


def grid_latents(axes: LatentAxes, steps: Sequence[np.ndarray]) -> np.ndarray:
    """(rows * columns, latent_dim) points, row-major, top row first: columns over steps[0], rows
    over steps[1] from the largest down (the book's grid_x / grid_y[::-1]); one row for one axis."""
    assert len(steps) == len(axes.axes), "one array of steps per axis"
    if len(axes.axes) == 1:
        return axes.center + np.asarray(steps[0])[:, None] * axes.axes[0]
    x_steps, y_steps = steps
    return np.asarray(
        [axes.center + x * axes.axes[0] + y * axes.axes[1] for y in y_steps[::-1] for x in x_steps]
    )


def latent_grid(decoder: keras.Model, axes: LatentAxes, steps: Sequence[np.ndarray]) -> np.ndarray:
    """The book's figure: images decoded from the grid over the latent plane, unlabelled."""
    return mosaic(decode(decoder, grid_latents(axes, steps)), columns=len(steps[0]))


def axis_range_labels(names: Sequence[str], steps: Sequence[np.ndarray]) -> list[str]:
    """What each axis of the grid spans, e.g. "z[0]: -2.91 ... 1.87", one label per axis."""
    return [f"{name}: {axis_steps[0]:.2f} ... {axis_steps[-1]:.2f}" for name, axis_steps in zip(names, steps)]


def labelled_latent_grid(grid: np.ndarray, names: Sequence[str], steps: Sequence[np.ndarray]) -> np.ndarray:
    """The latent grid with the range of its first axis under it and of its second at its left."""
    return with_axis_labels(grid, *axis_range_labels(names, steps))


def class_examples(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of `count` examples, cycling through the classes (the first of each, then the second...)."""
    by_class = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    order = [
        indices[rank]
        for rank in range(max(map(len, by_class)))
        for indices in by_class
        if rank < len(indices)
    ]
    return np.asarray(order[:count], np.int64)


def interpolate(start: np.ndarray, end: np.ndarray, num_steps: int) -> np.ndarray:
    """(num_steps, latent_dim) points evenly spaced on the segment from `start` to `end`."""
    weights = np.linspace(0.0, 1.0, num_steps)[:, None]
    return (1.0 - weights) * start + weights * end


def concept_vector(z_means: np.ndarray, labels: np.ndarray, source: int, target: int) -> np.ndarray:
    """The mean latent difference from the `source` group to the `target` group (the book's smile
    vector: mean of smiling faces minus mean of the others)."""
    return z_means[labels == target].mean(axis=0) - z_means[labels == source].mean(axis=0)


def nearest_mean_share(pixels: np.ndarray, source_mean: np.ndarray, target_mean: np.ndarray) -> float:
    """Share of images closer (in pixels) to the target group's mean image than to the source's."""
    flat = pixels.reshape(len(pixels), -1)
    to_target = np.linalg.norm(flat - target_mean.reshape(1, -1), axis=1)
    to_source = np.linalg.norm(flat - source_mean.reshape(1, -1), axis=1)
    return float(np.mean(to_target < to_source))


def scatter_plot(
    coordinates: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    axes: LatentAxes,
    title: str,
    path: Path,
) -> Path:
    """Latent means in the plane of `axes`, one colour per class (1-D latents: against the class)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 7), dpi=100)
    colors = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    one_dimensional = coordinates.shape[1] == 1
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(labels))
    y = labels + jitter if one_dimensional else coordinates[:, 1]
    for label, name in enumerate(class_names):
        chosen = labels == label
        axis.scatter(
            coordinates[chosen, 0], y[chosen], s=3, alpha=0.6, color=colors(label % colors.N), label=name
        )
    axis.set_title(title, fontsize=10)
    axis.set_xlabel(axes.names[0], fontsize=9)
    axis.set_ylabel("class" if one_dimensional else axes.names[1], fontsize=9)
    axis.legend(markerscale=4, fontsize=8, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.partial.png")
    figure.savefig(temporary, format="png")
    plt.close(figure)
    temporary.replace(path)
    return path
