"""Neural style transfer flow: images -> one stylised image per grid point, as dvc.yaml defines
them, tracked in MLflow as one parent run (comparison grid) with one child run per grid point.

    python -m flows.style_transfer --profile quick   # minutes on a CPU
    python -m flows.style_transfer                   # params.yaml as it is: the book's scale (docs/style_transfer.md)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.cli import REPO_ROOT, exit_without_teardown, run_cli
from flows.registry import TECHNIQUES
from flows.technique_run import SweepPoint, image_per_point_flow
from tasks.style_transfer import log

log_stylizations = task(log.log_stylizations, name="log-stylizations")


@flow(name="style-transfer")
def style_transfer_flow(
    profile: str | None = None, root: Path = REPO_ROOT, sweep: SweepPoint | None = None
) -> dict[str, Any]:
    """Run the style transfer stages through DVC and log every grid point's image to MLflow."""
    return image_per_point_flow(
        TECHNIQUES["style_transfer"], profile, root, sweep, log_stylizations, log.summary
    )


if __name__ == "__main__":
    exit_without_teardown(run_cli(style_transfer_flow, ["style_transfer"]))
