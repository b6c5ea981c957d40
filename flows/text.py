"""Text generation flow (character LSTM): download -> prepare -> train -> sample, as dvc.yaml defines
them, tracked in MLflow as one parent run with one child run per sampling temperature; a model that
trained is registered and may become the champion (tasks/champion.py).

    python -m flows.text --profile quick   # minutes on a CPU
    python -m flows.text                   # params.yaml as it is: the book's scale (docs/text.md)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.cli import REPO_ROOT, exit_without_teardown, run_cli
from flows.registry import TECHNIQUES
from flows.technique_run import SweepPoint, text_generator_flow
from tasks.text.char_lstm import log

log_training = task(log.log_training, name="log-training")
log_samples = task(log.log_samples, name="log-samples")


@flow(name="text-generation")
def text_generation(
    profile: str | None = None, root: Path = REPO_ROOT, sweep: SweepPoint | None = None
) -> dict[str, Any]:
    """Run the text-generation stages through DVC and log their outputs to MLflow."""
    return text_generator_flow(
        TECHNIQUES["text"],
        profile,
        root,
        sweep,
        log_training,
        log.log_serving_model,
        log_samples,
        log.summary,
    )


if __name__ == "__main__":
    exit_without_teardown(run_cli(text_generation, ["text"]))
