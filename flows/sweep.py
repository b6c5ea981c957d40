"""Sweeps: a technique's comparison grid fanned out over the team's work pool, one grid point per
flow run, so whichever worker is free takes the next point, each in its own workspace.

    python -m flows.sweep vae                                     # the grid params.yaml declares
    python -m flows.sweep vae --axis vae.train.beta=0.5,1,4 --axis vae.model.latent_dim=2,16

1. The stages every point shares (data, classifier: `shared_stages` in flows/registry.py) run once,
   as a flow run of the `sweep-point/point` deployment; they push their outputs and run-cache to
   the team's DVC remote, so each point restores them instead of computing them again.
2. Each point is a flow run of the same deployment given its `SweepPoint`, whose overrides set
   each axis to the point's value (`vae.train.beta: [0.5]`): the technique's own flow, its own DVC
   stages with the run-cache of the remote, so a point computed before for the same code, data and
   params trains nothing. Its MLflow run is a child of the sweep's, tagged with the sweep, point, worker and
   workspace.
3. A point whose flow run CRASHED (its worker died) is submitted again, up to `point_retries` times;
   another worker takes it when one is free, and a GAN resumes from its last finished epoch kept
   under $GENDL_RESUME_DIR. A point that FAILED (bad params, a NaN loss) fails alone.
4. When all points have ended, the sweep's run gets the comparison: every point's metric and
   outcome as a table, the best point by the technique's metric, the points' comparison images side
   by side. The sweep fails, after that, if a point failed; its run says which and why.

The sweep itself only orchestrates (it runs no stage and needs no DVC workspace): run it from a checkout with
PREFECT_API_URL and MLFLOW_TRACKING_URI pointing at the team stack (`eval "$(scripts/team.sh env)"`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from PIL import Image
from prefect import flow, get_client, get_run_logger
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment

from flows.cli import REPO_ROOT
from flows.registry import TECHNIQUES, Technique, validate
from flows.technique_run import SweepPoint
from tasks import grid, images, tracking
from tasks.params import ParamsError, applied_profile, load_params, parse_yaml
from tasks.pipeline import pull_inputs, push_outputs, run_stage, team_remote

POINT_DEPLOYMENT = "sweep-point/point"  # prefect.yaml
SHARED = "shared stages"  # the `point` of the flow run that runs the shared stages
POLL_SECONDS = 2.0
READ_PAGE = 200  # flow runs per request: Prefect's default API limit


@dataclass(frozen=True)
class Point:
    label: str  # "latent_dim=2, beta=0.5"
    overrides: dict[str, Any]  # {"vae.model.latent_dim": [2], "vae.train.beta": [0.5]}


@dataclass
class Attempt:
    point: Point
    flow_run: FlowRun
    state: Any = None  # the final state, once ended
    crashes: list[str] = field(default_factory=list)  # flow runs of this point that crashed

    @property
    def attempts(self) -> int:
        return len(self.crashes) + 1


class SweepFailed(RuntimeError):
    """Points of the sweep failed (after the comparison was logged)."""


def value_at(params: Mapping[str, Any], dotted: str) -> Any:
    node: Any = params
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            raise ParamsError(f"sweep axis {dotted}: no such key in params.yaml")
        node = node[key]
    return node


def grid_points(
    technique: Technique, params: Mapping[str, Any], axes: Mapping[str, Sequence[Any]] | None
) -> list[Point]:
    """Every combination of the axes' values (default: the technique's grid lists in `params`).

    An axis that is a list in params.yaml (a grid the stage itself expands) is set to a one-value
    list, so each point's stage trains one point; any other key is set to the value.
    """
    axes = dict(axes) if axes else {key: value_at(params, key) for key in technique.grid_axes}
    if not axes:
        raise ParamsError(
            f"{technique.name} has no grid of its own: give the sweep its axes (--axis key=v1,v2)"
        )
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ParamsError(f"sweep axis {key}: give a non-empty list of values, got {values!r}")
    is_list = {key: isinstance(value_at(params, key), list) for key in axes}
    points = []
    for values in itertools.product(*axes.values()):
        assignment = dict(zip(axes, values))
        label = ", ".join(
            f"{key.rsplit('.', 1)[-1]}={grid.format_value(value)}" for key, value in assignment.items()
        )
        overrides = {key: [value] if is_list[key] else value for key, value in assignment.items()}
        points.append(Point(label, overrides))
    return points


def submit(deployment: str, parameters: dict[str, Any]) -> FlowRun:
    """A flow run of `deployment`, started as soon as a worker is free; a subflow of the sweep's."""
    return run_deployment(deployment, parameters=parameters, timeout=0, as_subflow=True)


def wait_for_all(attempts: list[Attempt], deployment: str, parameters_of, retries: int) -> None:
    """Poll until every point's flow run has ended; resubmit a crashed one up to `retries` times."""
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        while pending := [attempt for attempt in attempts if attempt.state is None]:
            # One request per 200 pending points (the API's page), not one each: a request each
            # grows with the square of the sweep's size on the Prefect server (benchmarks/README.md).
            ids = [attempt.flow_run.id for attempt in pending]
            current = {
                flow_run.id: flow_run
                for start in range(0, len(ids), READ_PAGE)
                for flow_run in client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids[start : start + READ_PAGE])),
                    limit=READ_PAGE,
                )
            }
            for attempt in pending:
                flow_run = current.get(attempt.flow_run.id)
                if flow_run is None or not flow_run.state.is_final():
                    continue
                if flow_run.state.type == StateType.CRASHED and attempt.attempts <= retries:
                    logger.warning(
                        "point %s: flow run %s crashed (%s); submitting it again",
                        attempt.point.label,
                        flow_run.name,
                        flow_run.state.message,
                    )
                    attempt.crashes.append(str(flow_run.id))
                    attempt.flow_run = submit(deployment, parameters_of(attempt.point))
                    continue
                attempt.state = flow_run.state
            time.sleep(POLL_SECONDS)


def point_runs(client: mlflow.MlflowClient, experiment_id: str, sweep_id: str) -> dict[str, Any]:
    """The finished MLflow run of each point of the sweep, by point label."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`sweep.id` = '{sweep_id}' and attributes.status = 'FINISHED'"
    )
    return {
        run.data.tags["sweep.point"]: run for run in runs if "sweep.point" in run.data.tags
    }  # not the sweep's


def end_crashed_runs(client: mlflow.MlflowClient, experiment_id: str, flow_run_ids: Sequence[str]) -> None:
    """The MLflow runs of crashed flow runs were left RUNNING by their dead process: end them KILLED,
    so each point has one finished run, its retry's."""
    for flow_run_id in flow_run_ids:
        for run in client.search_runs(
            [experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'"
        ):
            if run.info.status == "RUNNING":
                client.set_tag(
                    run.info.run_id, "failure", "its flow run crashed (worker lost); the point was retried"
                )
                client.set_terminated(run.info.run_id, status="KILLED")


def point_metric(client: mlflow.MlflowClient, run, metric: str, lower_is_better: bool) -> float | None:
    """The best finite value of `metric` (or `<prefix>.<metric>`) on the point's run and its child
    runs; None when there is none."""
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run.info.run_id}'"
    )
    values = [
        value
        for candidate in (run, *children)
        for key, value in candidate.data.metrics.items()
        if (key == metric or key.endswith(f".{metric}")) and math.isfinite(value)
    ]
    if not values:
        return None
    return min(values) if lower_is_better else max(values)


def compare(
    technique: Technique, sweep_run_id: str, sweep_id: str, attempts: list[Attempt]
) -> dict[str, Any]:
    """Log the comparison of the points on the sweep's run; returns it."""
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(sweep_run_id).info.experiment_id
    end_crashed_runs(client, experiment_id, [crashed for attempt in attempts for crashed in attempt.crashes])
    runs = point_runs(client, experiment_id, sweep_id)
    rule = technique.champion
    rows = []
    for attempt in attempts:
        run = runs.get(attempt.point.label)
        state = attempt.state
        rows.append(
            {
                "point": attempt.point.label,
                "outcome": state.type.value.lower(),
                "message": "" if state.is_completed() else (state.message or state.name),
                "attempts": attempt.attempts,
                "run_id": run.info.run_id if run else "",
                "worker": run.data.tags.get("sweep.worker", "") if run else "",
                "workspace": run.data.tags.get("sweep.workspace", "") if run else "",
                "metric": point_metric(client, run, rule.metric, rule.lower_is_better)
                if run and rule
                else None,
            }
        )
    mlflow.log_table(
        {key: [row[key] for row in rows] for key in rows[0]}, "sweep_points.json", run_id=sweep_run_id
    )
    scored = [row for row in rows if row["metric"] is not None]
    tags = {
        "sweep.completed_points": sum(row["outcome"] == "completed" for row in rows),
        "sweep.failed_points": "; ".join(
            f"{row['point']}: {row['message']}" for row in rows if row["outcome"] != "completed"
        ),
    }
    if scored and rule:
        best = (min if rule.lower_is_better else max)(scored, key=lambda row: row["metric"])
        tags.update(
            {
                "sweep.best_point": best["point"],
                "sweep.best_run_id": best["run_id"],
                "sweep.metric": rule.metric,
            }
        )
        tracking.log_metrics(sweep_run_id, {f"best_{rule.metric}": best["metric"]})
    tracking.set_tags(sweep_run_id, tags)
    if technique.comparison_image:
        log_comparison_image(client, sweep_run_id, technique.comparison_image, runs, rows)
    return {"points": rows, **tags}


def log_comparison_image(
    client, sweep_run_id: str, artifact: str, runs: Mapping[str, Any], rows: list[dict]
) -> None:
    """Each point's comparison image, labelled with the point, side by side on the sweep's run."""
    labelled = []
    with tempfile.TemporaryDirectory() as folder:
        for row in rows:
            run = runs.get(row["point"])
            if run is None:
                continue
            path = client.download_artifacts(run.info.run_id, artifact, folder + "/" + run.info.run_id)
            labelled.append((row["point"], np.asarray(Image.open(path).convert("RGB"))))
        if labelled:
            path = Path(folder) / "sweep_comparison.png"
            Image.fromarray(images.labelled_grid(labelled)).save(path)
            client.log_artifact(sweep_run_id, str(path))


@flow(name="sweep-point")
def sweep_point(
    technique: str,
    point: SweepPoint,
    profile: str | None = None,
    root: Path = REPO_ROOT,
    shared_only: bool = False,
) -> dict[str, Any]:
    """One point of a sweep on a worker: the technique's flow with the point's overrides (its
    MLflow run a child of the sweep's), or with `shared_only` just the stages all points share,
    pushed to the team remote."""
    spec = TECHNIQUES[technique]
    root = Path(root).resolve()
    if not shared_only:
        return spec.load_flow()(profile=profile, root=root, sweep=point)
    with applied_profile(root, profile, point.overrides):
        remote = team_remote(root)
        if remote:
            pull_inputs(root, technique)
        ran = [name for name in spec.shared_stages if run_stage(name, root, pull=remote is not None)]
        if remote and spec.shared_stages:
            push_outputs(root, list(spec.shared_stages))
    return {"stages_run": ran}


@flow(name="sweep")
def sweep(
    technique: str,
    axes: dict[str, list] | None = None,
    profile: str | None = None,
    point_retries: int = 1,
    deployment: str = POINT_DEPLOYMENT,
    root: Path = REPO_ROOT,
) -> dict[str, Any]:
    """Run `technique`'s grid (or `axes`: {"vae.train.beta": [0.5, 1]}) as one flow run of
    `deployment` per point on the work pool, and compare the points on one MLflow parent run.

    Args:
        technique: a technique of flows/registry.py.
        axes: dotted params keys -> the values to sweep; None = the technique's grid in params.yaml.
        profile: params overlay (profiles/<name>.yaml) for every point.
        point_retries: how many times a point whose flow run crashed is submitted again.
        deployment: the deployment that runs a point (prefect.yaml's `sweep-point/point`).
        root: the checkout whose params.yaml gives the default grid and the tracking settings.
    """
    logger = get_run_logger()
    if technique not in TECHNIQUES:
        raise ParamsError(f"unknown technique {technique!r} (one of {', '.join(TECHNIQUES)})")
    spec, root = TECHNIQUES[technique], Path(root).resolve()
    params = load_params(root, profile)
    settings = validate(params, [technique])["tracking"]
    points = grid_points(spec, params, axes)
    sweep_id = uuid.uuid4().hex[:12]
    tracking_uri = tracking.resolve_tracking_uri(settings.uri, root)
    experiment_id = tracking.setup_experiment(
        tracking_uri, tracking.experiment_name(settings.experiment_prefix, technique)
    )
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"sweep {technique} {sweep_id}",
        tags={
            "technique": technique,
            "sweep.id": sweep_id,
            "sweep.points": str(len(points)),
            "profile": profile or "default",
        },
    ) as parent:
        tracking.log_params(
            parent.info.run_id, {"sweep_point": {f"{i:02d}": p.label for i, p in enumerate(points)}}
        )
        logger.info(
            "sweep %s of %s: %d points, MLflow run %s", sweep_id, technique, len(points), parent.info.run_id
        )

        def parameters_of(point: Point, shared_only: bool = False) -> dict[str, Any]:
            return {
                "technique": technique,
                "point": SweepPoint(
                    id=sweep_id, run_id=parent.info.run_id, point=point.label, overrides=point.overrides
                ).model_dump(),
                "profile": profile,
                "root": ".",
                "shared_only": shared_only,
            }

        shared = Attempt(
            Point(SHARED, {}), submit(deployment, parameters_of(Point(SHARED, {}), shared_only=True))
        )
        wait_for_all(
            [shared], deployment, lambda point: parameters_of(point, shared_only=True), point_retries
        )
        if not shared.state.is_completed():
            raise SweepFailed(f"the shared stages {spec.shared_stages} failed: {shared.state.message}")
        attempts = [Attempt(point, submit(deployment, parameters_of(point))) for point in points]
        wait_for_all(attempts, deployment, parameters_of, point_retries)
        comparison = compare(spec, parent.info.run_id, sweep_id, attempts)
        logger.info(
            "sweep %s: %s", sweep_id, json.dumps({k: v for k, v in comparison.items() if k != "points"})
        )
        if comparison["sweep.failed_points"]:
            raise SweepFailed(f"{technique} sweep {sweep_id}: {comparison['sweep.failed_points']}")
    return {"sweep_id": sweep_id, "run_id": parent.info.run_id, **comparison}


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """ "vae.train.beta=0.5,1,4" -> ("vae.train.beta", [0.5, 1, 4]): values read as YAML scalars."""
    key, separator, values = text.partition("=")
    if not separator or not key or not values:
        raise ParamsError(f"--axis {text!r}: write it as key=value1,value2 (e.g. vae.train.beta=0.5,1)")
    return key, [parse_yaml(value) for value in values.split(",")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("technique", choices=sorted(TECHNIQUES))
    parser.add_argument(
        "--axis", action="append", default=[], help="key=v1,v2 (repeat); default: params.yaml's grid"
    )
    parser.add_argument("--profile", default=None)
    parser.add_argument("--point-retries", type=int, default=1)
    parser.add_argument("--root", type=Path, default=REPO_ROOT)
    args = parser.parse_args(argv)
    try:
        axes = dict(parse_axis(text) for text in args.axis) or None
        result = sweep(args.technique, axes, args.profile, args.point_retries, root=args.root)
    except (ParamsError, SweepFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ParamsError) else 1
    print(json.dumps({key: value for key, value in result.items() if key != "points"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
