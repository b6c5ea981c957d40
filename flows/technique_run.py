"""What every technique's flow does around its own logging: hold the checkout and apply the params
profile, open the MLflow parent run, run the technique's DVC stages as Prefect tasks, tag the run
with what ran, share the outputs through the team's DVC remote when the workspace has one, and end
the run FAILED if a grid point failed.

Every technique's flow takes the same three parameters:
- `profile`: a params overlay in profiles/ (e.g. "quick"); None = params.yaml as is;
- `root`: the checkout holding params.yaml and dvc.yaml (a deployment's: its workspace, ".");
- `sweep`: set when the flow run is one point of a sweep (flows/sweep.py): a `SweepPoint`.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pydantic
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from prefect import get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact

from flows.registry import Technique, validate
from tasks import champion, grid, storage, tracking
from tasks.grid import TrainingFailed
from tasks.params import applied_profile
from tasks.pipeline import pull_inputs, push_outputs, run_stage, stage_retries, team_remote
from tasks.step_server import step_server

promote = task(champion.promote, name="champion", retries=2, retry_delay_seconds=5)


class SweepPoint(pydantic.BaseModel):
    """One point of a sweep (flows/sweep.py), as its flow run is given it."""

    id: str = pydantic.Field(description="the sweep's id")
    run_id: str = pydantic.Field(description="the sweep's MLflow run, the parent of this point's")
    point: str = pydantic.Field(description='the point\'s label, e.g. "latent_dim=2, beta=0.5"')
    overrides: dict[str, Any] = pydantic.Field(
        default_factory=dict, description='dotted params set over the profile, e.g. {"vae.train.beta": [0.5]}'
    )


@dataclass
class TechniqueRun:
    technique: Technique
    root: Path
    paths: Any  # the technique's paths dataclass under `root`
    params: dict[str, Any]  # params.yaml with the profile applied: what the stages read
    stages: tuple[str, ...]  # this technique's stages, in the order they run
    run_id: str  # the MLflow parent run
    experiment_id: str
    tracking_uri: str
    remote: str | None = None  # the team's DVC remote (URL) the stages pull from and the flow pushes to
    stages_run: list[str] = field(default_factory=list)  # stages whose command ran (not skipped or restored)
    stages_done: list[str] = field(default_factory=list)

    def run_stages(self, through: str) -> None:
        """Run the technique's stages not run yet, in order, up to and including `through`; each
        is a Prefect task with its retry policy. The flow logs a stage's outputs after this."""
        if through not in self.stages[len(self.stages_done) :]:
            raise ValueError(f"{through!r} is not one of the stages still to run: {self.stages}")
        if f"{self.technique.name}_train" in self.stages:  # its model is logged after training
            tracking.import_keras_in_background()
        for name in self.stages[len(self.stages_done) : self.stages.index(through) + 1]:
            task = run_stage.with_options(
                name=f"dvc:{name}", retries=stage_retries(self.root, name), retry_delay_seconds=3
            )
            if task(name, self.root, pull=self.remote is not None):
                self.stages_run.append(name)
            self.stages_done.append(name)

    def promote(
        self, log_candidate: Callable[..., champion.Candidate | None], *args: Any
    ) -> champion.Decision:
        """After the training stage and its logging: when it ran, log the trained model as a pyfunc
        generator (`log_candidate(*args)`, a Prefect task) and register it; decide on the champion
        (tasks/champion.py)."""
        trained = f"{self.technique.name}_train" in self.stages_run
        candidate = task(log_candidate, name="log-serving-model")(*args) if trained else None
        return promote(
            self.technique.name,
            self.technique.champion,
            self.run_id,
            self.params,
            self.root,
            trained,
            candidate,
        )

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


def image_per_point_flow(
    technique: Technique,
    profile: str | None,
    root: Path,
    sweep: SweepPoint | None,
    log_points: Callable[[str, str, Any], list[str]],
    summary: Callable[[Any, str, str], str],
) -> dict[str, Any]:
    """The whole flow of a technique whose stages optimise one image per grid point (DeepDream,
    style transfer): the stages, then `log_points` (a Prefect task: one child run per point), then
    the `summary` of the paths' results published."""
    with technique_run(technique, profile, root, sweep) as run:
        run.run_stages(through=technique.stages[-1])
        child_run_ids = log_points(run.run_id, run.experiment_id, run.paths)
    return run.publish(
        summary(run.paths, run.run_id, run.tracking_uri),
        f"{technique.name.replace('_', '-')}-summary",
        child_run_ids=child_run_ids,
        metrics=json.loads(run.paths.metrics.read_text()),
    )


def text_generator_flow(
    technique: Technique,
    profile: str | None,
    root: Path,
    sweep: SweepPoint | None,
    log_training: Callable[[str, Any], dict[str, Any]],
    log_serving_model: Callable[[str, Any], champion.Candidate],
    log_samples: Callable[[str, str, Any], list[str]],
    summary: Callable[[Any, dict[str, Any], str, str], str],
) -> dict[str, Any]:
    """The whole flow of a text generator (char-LSTM, Transformer): the stages through training,
    `log_training` (a Prefect task), the trained model registered (`log_serving_model`), sampling,
    `log_samples` (a Prefect task: one child run per sampler), then the `summary` published."""
    with technique_run(technique, profile, root, sweep) as run:
        run.run_stages(through=f"{technique.name}_train")
        train_metrics = log_training(run.run_id, run.paths)
        decision = run.promote(log_serving_model, run.run_id, run.paths)
        run.run_stages(through=f"{technique.name}_sample")
        child_run_ids = log_samples(run.run_id, run.experiment_id, run.paths)
    return run.publish(
        f"{summary(run.paths, train_metrics, run.run_id, run.tracking_uri)}\n{decision.summary()}",
        f"{technique.name}-summary",
        child_run_ids=child_run_ids,
        train_metrics=train_metrics,
        champion=decision.tags(),
    )


def raise_if_failed(points: Sequence[dict[str, Any]]) -> None:
    """After everything is logged: a grid point that failed fails the parent run and the flow run."""
    failures = grid.failures(points)
    if failures:
        raise TrainingFailed("; ".join(failures))


def refuse_workspace_store(tracking_uri: str, root: Path) -> None:
    """Under a worker the workspace is a temporary clone: a SQLite store inside it would be deleted
    with it, so a deployment's flow run needs a tracking server."""
    if runtime.deployment.id is None or not tracking_uri.startswith("sqlite:///"):
        return
    database = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
    if database.is_relative_to(root.resolve()):
        raise ValueError(
            f"MLflow tracking URI {tracking_uri} is inside this flow run's workspace, which is deleted when "
            "the run ends: give the worker MLFLOW_TRACKING_URI of the team's tracking server "
            "(the lines `scripts/team.sh env` prints; scripts/team.sh start sets them for its workers)"
        )


def share_outputs(run: TechniqueRun, failed: bool) -> None:
    """Push what the stages made to the team remote. After a failure, the stages that finished are
    still pushed (the next attempt restores them instead of running them) and a failed push only
    warns, so the error the flow reports stays the stage's."""
    if not run.stages_done:
        return
    if not failed:
        push_outputs(run.root, list(run.stages_done))
        tracking.set_tags(run.run_id, {"dvc.remote": run.remote})
        return
    state = push_outputs(run.root, list(run.stages_done), return_state=True)
    if state.is_failed():
        logger = get_run_logger()
        logger.warning("the finished stages' outputs were not pushed to the team remote: %s", state.message)


def sweep_tags(sweep: SweepPoint | None, root: Path) -> dict[str, str]:
    """A sweep's point is a child of the sweep's MLflow run, tagged with the sweep, its point, the
    worker and the workspace it ran in."""
    if sweep is None:
        return {}
    return {
        MLFLOW_PARENT_RUN_ID: sweep.run_id,
        "sweep.id": sweep.id,
        "sweep.point": sweep.point,
        "sweep.worker": os.environ.get("GENDL_WORKER_NAME") or socket.gethostname(),
        "sweep.workspace": str(root),
    }


@contextmanager
def technique_run(
    technique: Technique, profile: str | None, root: Path, sweep: SweepPoint | None = None
) -> Iterator[TechniqueRun]:
    """The MLflow parent run of one flow run; it ends FAILED if the body raises. A sweep's point
    sets its overrides on top of the profile."""
    logger = get_run_logger()
    root = Path(root).resolve()
    with step_server(), applied_profile(root, profile, sweep.overrides if sweep else None) as params:
        settings = validate(params, [technique.name])["tracking"]
        tracking_uri = tracking.resolve_tracking_uri(settings.uri, root)
        refuse_workspace_store(tracking_uri, root)
        remote = team_remote(root)
        experiment_id = tracking.setup_experiment(
            tracking_uri, tracking.experiment_name(settings.experiment_prefix, technique.name)
        )
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name=f"{technique.name} {sweep.point if sweep else runtime.flow_run.name or ''}".strip(),
            tags={
                "technique": technique.name,
                "profile": profile or "default",
                "prefect.flow_run_id": str(runtime.flow_run.id or ""),
                **tracking.git_tags(root),
                **sweep_tags(sweep, root),
            },
        ) as parent:
            paths = storage.under(root, technique.paths())
            run = TechniqueRun(
                technique,
                root,
                paths,
                params,
                technique.stages,
                parent.info.run_id,
                experiment_id,
                tracking_uri,
                remote,
            )
            # Under a worker both are the flow run's clone (an editable install must not win).
            logger.info("workspace %s, flow code %s", root, Path(__file__).resolve().parent.parent)
            logger.info("MLflow run %s in experiment %s (%s)", run.run_id, experiment_id, tracking_uri)
            if remote:
                logger.info("DVC remote %s: stages restore what it holds, outputs are pushed after", remote)
                pull_inputs(root, technique.name)
            tracking.log_params(
                run.run_id, {technique.name: params[technique.name], "runtime": params["runtime"]}
            )
            try:
                yield run
            except Exception:  # re-raised: only shares what finished before the failure
                if remote:
                    share_outputs(run, failed=True)
                raise
            assert run.stages_done == list(technique.stages), "the flow left stages out"
            tracking.set_tags(
                run.run_id,
                {
                    "dvc.stages_run": ",".join(run.stages_run) or "none (all up to date)",
                    **tracking.dvc_lock_tags(root, technique.stages),
                },
            )
            if remote:
                share_outputs(run, failed=False)
