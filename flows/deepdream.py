"""DeepDream flow: image -> dream per layer setting, as dvc.yaml defines them, tracked in MLflow
as one parent run (comparison grid) with one child run per layer setting.

    python -m flows.deepdream --profile quick   # minutes on a CPU
    python -m flows.deepdream                   # params.yaml as it is: the book's scale (docs/deepdream.md)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.cli import REPO_ROOT, exit_without_teardown, run_cli
from flows.registry import TECHNIQUES
from flows.technique_run import SweepPoint, image_per_point_flow
from tasks.deepdream import log

log_dreams = task(log.log_dreams, name="log-dreams")


@flow(name="deepdream")
def deepdream_flow(
    profile: str | None = None, root: Path = REPO_ROOT, sweep: SweepPoint | None = None
) -> dict[str, Any]:
    """Run the DeepDream stages through DVC and log every layer setting's dream to MLflow."""
    return image_per_point_flow(TECHNIQUES["deepdream"], profile, root, sweep, log_dreams, log.summary)


if __name__ == "__main__":
    exit_without_teardown(run_cli(deepdream_flow, ["deepdream"]))
