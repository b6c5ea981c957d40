"""The comparison grid: params lists expand into grid points (every combination, in order), each
trained or optimised on its own and compared in MLflow as one child run per point.

A technique declares its point as a small frozen dataclass whose fields are its grid axes; the
results of a grid are records {"name", "label", "point", "metrics", "failure"} in points.json,
where `failure` ("" when none) is decided once, by the step that produced the point.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

from tasks import storage

Point = TypeVar("Point")


class TrainingFailed(RuntimeError):
    """Training of one or more grid points failed (a NaN loss, a collapse); raised by the flow
    with their `failures` once everything that was kept has been logged."""


def expand(point_type: type[Point], **axes: Sequence[Any]) -> list[Point]:
    """Every combination of the axes' values, the first axis (in field order) varying slowest."""
    names = [item.name for item in fields(point_type)]
    return [point_type(**dict(zip(names, values))) for values in itertools.product(*(axes[n] for n in names))]


def varying_fields(points: Sequence[Any]) -> list[str]:
    """The fields whose value differs between points."""
    if not points:
        return []
    return [item.name for item in fields(points[0]) if len({getattr(p, item.name) for p in points}) > 1]


def label(point: Any, varying: Sequence[str]) -> str:
    """What tells this point apart from the others ("beta=0.5, latent_dim=2"; every field if none vary)."""
    names = varying or [item.name for item in fields(point)]
    return ", ".join(f"{name}={format_value(getattr(point, name))}" for name in names)


def format_value(value: Any) -> str:
    """0.0001 -> "0.0001", ("block1_conv1", "block2_conv1") -> "block1_conv1+block2_conv1"."""
    if isinstance(value, tuple):
        return "+".join(format_value(item) for item in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def point_name(index: int) -> str:
    return f"point_{index:02d}"


def record(index: int, point: Any, varying: Sequence[str], metrics: dict[str, Any], failure: str = "") -> dict:
    """One grid point's entry in points.json."""
    return {
        "name": point_name(index),
        "label": label(point, varying),
        "point": asdict(point),
        "metrics": metrics,
        "failure": failure,
    }


def write_points(path: Path, records: Sequence[dict[str, Any]]) -> None:
    storage.write_json(path, list(records))


def read_points(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text(encoding="utf-8"))


def failures(records: Sequence[dict[str, Any]]) -> list[str]:
    """The failure messages of the points that failed."""
    return [entry["failure"] for entry in records if entry.get("failure")]
