"""Word-level Transformer flow: download -> prepare -> train -> sample, as dvc.yaml defines them,
tracked in MLflow as one parent run with one child run per sampler (temperature, top-k, top-p); a
model that trained is registered and may become the champion (tasks/champion.py).

    python -m flows.transformer --profile quick   # minutes on a CPU
    python -m flows.transformer                   # params.yaml as it is: the book's scale (docs/transformer.md)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.cli import REPO_ROOT, exit_without_teardown, run_cli
from flows.registry import TECHNIQUES
from flows.technique_run import SweepPoint, text_generator_flow
from tasks.text.transformer import log

log_training = task(log.log_training, name="log-training")
log_samples = task(log.log_samples, name="log-samples")


@flow(name="transformer-text-generation")
def transformer_flow(
    profile: str | None = None, root: Path = REPO_ROOT, sweep: SweepPoint | None = None
) -> dict[str, Any]:
    """Run the word-level Transformer's stages through DVC and log their outputs to MLflow."""
    return text_generator_flow(
        TECHNIQUES["transformer"],
        profile,
        root,
        sweep,
        log_training,
        log.log_serving_model,
        log_samples,
        log.summary,
    )


if __name__ == "__main__":
    exit_without_teardown(run_cli(transformer_flow, ["transformer"]))
