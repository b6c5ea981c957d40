"""DeepDream flow: image -> dream per layer setting, as dvc.yaml defines them, tracked in MLflow
as one parent run (comparison grid) with one child run per layer setting.

    python -m flows.deepdream [--profile quick]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.cli import REPO_ROOT, run_cli
from flows.registry import TECHNIQUES
from flows.technique_run import technique_run
from tasks import storage
from tasks.deepdream import log
from tasks.deepdream.params import DeepDreamPaths

log_dreams = task(log.log_dreams, name="log-dreams")


@flow(name="deepdream")
def deepdream_flow(
    profile: str | None = None,
    root: Path = REPO_ROOT,
    overrides: dict[str, Any] | None = None,
    sweep: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the DeepDream stages through DVC and log every layer setting's dream to MLflow.

    Args:
        profile: name of a params overlay in profiles/ (e.g. "quick"); None = params.yaml as is.
        root: repo root holding params.yaml and dvc.yaml.
        overrides: dotted params set over the profile, e.g. {"vae.train.beta": [0.5]} (a sweep's point).
        sweep: {"id", "run_id", "point"} of the sweep this run is a point of (flows/sweep.py).

    Returns:
        The MLflow run ids and the per-setting results.
    """
    root = Path(root).resolve()
    paths = storage.under(root, DeepDreamPaths())
    with technique_run(TECHNIQUES["deepdream"], profile, root, overrides, sweep) as run:
        run.run_stages(through="deepdream_dream")
        child_run_ids = log_dreams(run.run_id, run.experiment_id, paths)
    metrics = json.loads(paths.metrics.read_text())
    settings = json.loads((paths.dreams / "results.json").read_text())["settings"]
    summary = "\n".join(
        [
            "## DeepDream",
            f"- MLflow run `{run.run_id}` ({run.tracking_uri}); comparison grid `{paths.dreams / 'grid.png'}`",
            *(
                f"- `{setting['name']}`: loss {values['first_loss']:.3g} -> {values['final_loss']:.3g} in "
                f"{values['steps']} steps, {values['mean_seconds_per_octave']:.1f} s per octave"
                for setting, values in zip(settings, metrics.values())
            ),
        ]
    )
    return run.publish(summary, "deepdream-summary", child_run_ids=child_run_ids, metrics=metrics)


if __name__ == "__main__":
    raise SystemExit(run_cli(deepdream_flow, ["deepdream"]))
