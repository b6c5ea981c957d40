"""What every technique's flow does around its own logging: apply the params profile, open the
MLflow parent run, run the technique's DVC stages as Prefect tasks, tag the run with what ran."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from prefect import get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact

from tasks import tracking
from tasks.params import applied_profile, parse_section
from tasks.pipeline import Stage, load_stages, run_stage


@dataclass
class TechniqueRun:
    root: Path
    params: dict[str, Any]  # params.yaml with the profile applied: what the stages read
    stages: list[Stage]  # this technique's stages from dvc.yaml, in dependency order
    run_id: str  # the MLflow parent run
    experiment_id: str
    tracking_uri: str
    stages_run: list[str] = field(default_factory=list)

    def run_stage(self, stage: Stage) -> bool:
        """Run one DVC stage as a Prefect task with its retry policy; True if it ran."""
        task = run_stage.with_options(name=f"dvc:{stage.name}", retries=stage.retries, retry_delay_seconds=3)
        ran = task(stage.name, self.root)
        if ran:
            self.stages_run.append(stage.name)
        return ran

    def publish(self, summary: str, artifact_key: str, **results: Any) -> dict[str, Any]:
        """Log the flow's markdown summary, keep it as a Prefect artifact, return the flow's result."""
        get_run_logger().info(summary)
        create_markdown_artifact(summary, key=artifact_key, description=summary.splitlines()[0].lstrip("# "))
        return {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "stages_run": self.stages_run,
            "tracking_uri": self.tracking_uri,
            **results,
        }


@contextmanager
def technique_run(
    technique: str, profile: str | None, root: Path, validate: Callable[[dict[str, Any]], None]
) -> Iterator[TechniqueRun]:
    """The MLflow parent run of one flow run; it ends FAILED if the body raises."""
    logger = get_run_logger()
    with applied_profile(root, profile) as params:
        validate(params)
        settings = parse_section(params, "tracking", tracking.TrackingParams)
        tracking_uri = tracking.resolve_tracking_uri(settings.uri, root)
        experiment_id = tracking.setup_experiment(
            tracking_uri, tracking.experiment_name(settings.experiment_prefix, technique)
        )
        stages = load_stages(root, prefix=f"{technique}_")
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name=f"{technique} {runtime.flow_run.name or ''}".strip(),
            tags={
                "technique": technique,
                "profile": profile or "default",
                "prefect.flow_run_id": str(runtime.flow_run.id or ""),
                **tracking.git_tags(root),
            },
        ) as parent:
            run = TechniqueRun(root, params, stages, parent.info.run_id, experiment_id, tracking_uri)
            logger.info("MLflow run %s in experiment %s (%s)", run.run_id, experiment_id, tracking_uri)
            tracking.log_params(run.run_id, {technique: params[technique], "runtime": params["runtime"]})
            yield run
            tracking.set_tags(
                run.run_id,
                {
                    "dvc.stages_run": ",".join(run.stages_run) or "none (all up to date)",
                    **tracking.dvc_lock_tags(root, [stage.name for stage in stages]),
                },
            )
