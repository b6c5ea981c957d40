"""The main job: every technique's flow, one after the other.

python -m flows.all --profile quick
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.cli import REPO_ROOT, exit_without_teardown, run_cli
from flows.registry import TECHNIQUES


@flow(name="gendl")
def all_techniques(profile: str | None = None, root: Path = REPO_ROOT) -> dict[str, Any]:
    """Run every technique's flow as a subflow; each gets its own MLflow parent run.

    Args:
        profile: name of a params overlay in profiles/ (e.g. "quick"); None = params.yaml as is.
        root: repo root holding params.yaml and dvc.yaml.
    """
    return {name: technique.load_flow()(profile=profile, root=root) for name, technique in TECHNIQUES.items()}


if __name__ == "__main__":
    exit_without_teardown(run_cli(all_techniques))
