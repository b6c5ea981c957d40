"""Sweep load: many tiny points through `flows.sweep.sweep` on a team stack of its own, counted and
timed.

    python -m benchmarks.sweep_load                                      # 4 workers, 100 points, 4 sweeps
    python -m benchmarks.sweep_load --concurrent-points 25               # the 4 at once of 25 points each
    python -m benchmarks.sweep_load --workers 2 --points 6 --sweeps 2    # sanity run, a few minutes

1. Starts a team stack (scripts/team.sh: PostgreSQL, MLflow, Prefect, W process workers) in a
   temporary folder on free ports, and stops it at the end, also on failure.
2. Deploys a stand-in for a sweep's point to the `gendl` pool: a flow with `sweep_point`'s
   parameters that does what a point's flow does around its training (params read and checked,
   a child MLflow run of the sweep's with `sweep_tags`, its params, the champion metric and a
   `comparison.png`) and sleeps `--work-seconds` instead of training. Its pull steps are
   prefect.yaml's (a git clone of this checkout, the DVC remote set up), then it runs from this
   checkout, where this file is (`--workspace checkout`: no clone, no DVC).
3. Runs the real sweep flow (`flows/sweep.py`), each in its own process as a user would: one sweep
   of --points points alone, then --sweeps sweeps at once (of --concurrent-points points each). After each phase it checks the MLflow
   server: every point of every sweep has exactly one FINISHED child run with its metric and
   comparison image, and each sweep's run has its comparison; anything lost fails the benchmark.
4. Reports throughput and where each point's time outside its "training" goes (the flow runs'
   logs and states, the stand-in's own timings, the CPU seconds each service used), prints
   markdown tables and writes benchmarks/results/sweep_load.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from PIL import Image
from prefect import flow, get_client, get_run_logger, runtime
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, LogFilter, LogFilterFlowRunId
from prefect.runner.storage import LocalStorage
from prefect.settings import PREFECT_API_URL, temporary_settings

from benchmarks.harness import REPO_ROOT, environment, markdown_table, write_results
from flows.registry import TECHNIQUES, validate
from flows.sweep import POLL_SECONDS, sweep
from flows.technique_run import SweepPoint, sweep_tags
from tasks import tracking
from tasks.params import load_params, parse_yaml

TECHNIQUE = "vae"
AXIS = "vae.train.beta"
POOL = "gendl"  # scripts/team.py's work pool, as prefect.yaml names it
FLOW_NAME = "sweep-load-point"
DEPLOYMENT_NAME = "stand-in"
ENTRYPOINT = "benchmarks/sweep_load.py:stand_in_point"
WORK_SECONDS_VARIABLE = "GENDL_SWEEP_LOAD_WORK_SECONDS"  # the deployment's job variable
TIMINGS = "sweep-load timings "  # the stand-in's log line with its own timings, as JSON
TEAM_SH = REPO_ROOT / "scripts" / "team.sh"
RESULTS_PATH = REPO_ROOT / "benchmarks" / "results" / "sweep_load.json"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The flow run log lines that mark a point's way through a worker (Prefect 3.8's wording).
CLAIMED = re.compile(r"^Worker '(?P<worker>[^']+)' submitting flow run")
PULL_STARTED = re.compile(r"^Running \d+ deployment pull step")
PULLED = re.compile(r"^All deployment steps completed successfully")
STEP_STARTED = re.compile(r"^Executing deployment step: (?P<step>\w+)")
STEP_DONE = re.compile(r"^Deployment step '(?P<step>\w+)' completed successfully")
FINISHED = re.compile(r"^Finished in state")  # the engine's last line; the process exits after it


# ---------------------------------------------------------------- the stand-in point


def stand_in_metric(overrides: Mapping[str, Any]) -> float:
    """A finite metric that tells the points apart: 100 + the sum of the point's numbers."""
    values = [
        value
        for setting in overrides.values()
        for value in (setting if isinstance(setting, list) else [setting])
    ]
    return 100.0 + sum(float(value) for value in values if isinstance(value, int | float))


@flow(name=FLOW_NAME)
def stand_in_point(
    technique: str,
    point: SweepPoint,
    profile: str | None = None,
    root: Path = REPO_ROOT,
    shared_only: bool = False,
) -> dict[str, Any]:
    """A sweep's point without its training (`flows.sweep.sweep_point`'s parameters): the point's
    params read and checked, its MLflow run (a child of the sweep's, tagged as a real point's) with
    its params, then `$GENDL_SWEEP_LOAD_WORK_SECONDS` of sleep for the training, then the
    technique's champion metric and comparison image. With `shared_only` it returns at once."""
    if shared_only:
        return {"stages_run": []}
    began = time.perf_counter()
    spec = TECHNIQUES[technique]
    spec.load_flow()  # a real point imports its technique's flow
    root = Path(root).resolve()
    params = load_params(root, profile, point.overrides)
    settings = validate(params, [technique])["tracking"]
    work_seconds = float(os.environ.get(WORK_SECONDS_VARIABLE, "1"))
    checked = time.perf_counter()
    tracking_uri = tracking.resolve_tracking_uri(settings.uri, root)
    experiment_id = tracking.setup_experiment(
        tracking_uri, tracking.experiment_name(settings.experiment_prefix, technique)
    )
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"{technique} {point.point}",
        tags={
            "technique": technique,
            "profile": profile or "default",
            "prefect.flow_run_id": str(runtime.flow_run.id or ""),
            **sweep_tags(point, root),
        },
    ) as run:
        tracking.log_params(run.info.run_id, {technique: params[technique], "runtime": params["runtime"]})
        opened = time.perf_counter()
        time.sleep(work_seconds)  # the training
        trained = time.perf_counter()
        tracking.log_metrics(run.info.run_id, {spec.champion.metric: stand_in_metric(point.overrides)})
        with tempfile.TemporaryDirectory() as folder:
            image = Path(folder) / spec.comparison_image
            Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(image)
            mlflow.MlflowClient().log_artifact(run.info.run_id, str(image))
    ended = time.perf_counter()
    timings = {
        "params_seconds": checked - began,
        "mlflow_seconds": (opened - checked) + (ended - trained),
        "work_seconds": trained - opened,
        "body_seconds": ended - began,
    }
    get_run_logger().info(TIMINGS + json.dumps(timings))
    return {"run_id": run.info.run_id, **timings}


class CloneThenCheckout(LocalStorage):
    """This checkout as the stand-in's source, after the pull steps of a real point (prefect.yaml's:
    a clone of this checkout's default branch, the DVC remote set up in it): each flow run pays for
    them, then runs the stand-in from the checkout (the clone need not hold this file yet)."""

    def to_pull_step(self) -> list[dict[str, Any]]:
        steps = parse_yaml((REPO_ROOT / "prefect.yaml").read_text())["pull"]
        for step in steps:
            clone = step.get("prefect.deployments.steps.git_clone")
            if clone is not None:  # what scripts/deploy.sh fills in: the repository, no commit pinned
                clone["repository"] = str(REPO_ROOT)
                clone.pop("commit_sha", None)
        return [*steps, super().to_pull_step()]


def deploy_stand_in(stack: Stack, work_seconds: float, workspace: str) -> str:
    """The stand-in as a deployment of the stack's work pool; its name for `run_deployment`."""
    source = CloneThenCheckout(str(REPO_ROOT)) if workspace == "clone" else LocalStorage(str(REPO_ROOT))
    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api}):
        stand_in_point.from_source(source, ENTRYPOINT).deploy(
            DEPLOYMENT_NAME,
            work_pool_name=POOL,
            job_variables={"env": {WORK_SECONDS_VARIABLE: str(work_seconds)}},
            print_next_steps=False,
        )
    return f"{FLOW_NAME}/{DEPLOYMENT_NAME}"


# ---------------------------------------------------------------- the team stack


@dataclasses.dataclass
class Stack:
    directory: Path
    env: dict[str, str]  # a clean environment with what `scripts/team.sh env` exports
    start_seconds: float

    @property
    def prefect_api(self) -> str:
        return self.env["PREFECT_API_URL"]

    @property
    def mlflow_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]


def clean_env() -> dict[str, str]:
    """This environment without MLflow, Prefect or team settings, the venv first on PATH."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MLFLOW_", "PREFECT_", "GENDL_"))
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def team(*args: str, timeout: float = 600) -> str:
    """`scripts/team.sh *args` in a clean environment; its output. Fails with the output's end."""
    result = subprocess.run(
        ["bash", str(TEAM_SH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        cwd=REPO_ROOT,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise RuntimeError(f"scripts/team.sh {args[0]} exited with {result.returncode}:\n{tail}")
    return result.stdout


@contextmanager
def team_stack(num_workers: int, keep: bool) -> Iterator[Stack]:
    """A team stack with `num_workers` workers in a new folder under /tmp on free ports; stopped
    (and its folder deleted unless `keep`) when the block ends, however it ends."""
    # Under /tmp: as root, the cluster runs as the postgres user, who must reach the folder.
    directory = Path(tempfile.mkdtemp(prefix="gendl-sweep-load-"))
    pg_port, mlflow_port, prefect_port = free_ports(3)
    try:
        began = time.monotonic()
        team(
            "start", "--dir", str(directory), "--workers", str(num_workers), "--pg-port", str(pg_port),
            "--mlflow-port", str(mlflow_port), "--prefect-port", str(prefect_port),
        )  # fmt: skip
        start_seconds = time.monotonic() - began
        env = clean_env()
        for line in team("env", "--dir", str(directory)).splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value.strip("'\"")
        env["PREFECT_HOME"] = str(directory / "clients")  # the sweeps' own, not ~/.prefect
        yield Stack(directory, env, start_seconds)
    finally:
        team("stop", "--dir", str(directory), timeout=180)
        if keep:
            print(f"the stack's folder (logs, databases) is kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------- CPU accounting


def _process_cpu(pid: int) -> tuple[int, int, float] | None:
    """(parent, process group, CPU seconds of the process and its waited-for children), None if
    it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return int(fields[1]), int(fields[2]), (utime + stime + cutime + cstime) / CLOCK_TICKS


def service_cpu_seconds(directory: Path) -> dict[str, float]:
    """CPU seconds used so far by each service of the stack, with the children its processes have
    waited for (a worker's finished flow runs, PostgreSQL's ended backends): for the services
    team.sh keeps a pid file of, every live process of the service's process group; for
    PostgreSQL (postmaster.pid), the postmaster and its children (each backend is a session of
    its own)."""
    groups, postmasters = {}, {}
    for pid_file in (directory / "run").glob("*.pid"):
        try:
            state = _process_cpu(int(pid_file.read_text().split()[0]))
        except (FileNotFoundError, IndexError, ValueError):
            continue
        if state is not None:
            groups[state[1]] = pid_file.stem
    try:
        postmasters[int((directory / "postgres" / "postmaster.pid").read_text().split()[0])] = "postgres"
    except (FileNotFoundError, IndexError, ValueError):
        pass
    seconds: dict[str, float] = defaultdict(float)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or (state := _process_cpu(int(entry.name))) is None:
            continue
        parent, group, cpu = state
        service = groups.get(group) or postmasters.get(int(entry.name)) or postmasters.get(parent)
        if service:
            seconds[service] += cpu
    return dict(seconds)


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine have spent busy since boot (/proc/stat), whoever's."""
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


# ---------------------------------------------------------------- startup costs


def startup_seconds(stack: Stack, repeats: int = 3) -> dict[str, dict[str, float]]:
    """Wall and CPU seconds of the process starts every point pays, one at a time on the idle
    stack (the fastest of `repeats`): the engine's imports, the entrypoint's, a DVC command."""
    commands = {
        "python: import prefect.engine": [sys.executable, "-c", "import prefect.engine"],
        "python: import the entrypoint (flows.sweep, MLflow)": [
            sys.executable,
            "-c",
            "import benchmarks.sweep_load",
        ],
        "dvc remote list (a DVC command)": [str(Path(sys.executable).parent / "dvc"), "remote", "list"],
    }
    measured = {}
    for name, command in commands.items():
        runs = []
        for _ in range(repeats):
            before, began = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            subprocess.run(command, cwd=REPO_ROOT, env=stack.env, check=True, capture_output=True)
            wall, after = time.perf_counter() - began, resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            runs.append({"wall_seconds": wall, "cpu_seconds": cpu})
        measured[name] = min(runs, key=lambda run: run["wall_seconds"])
    return measured


def flow_run_read_cost(stack: Stack, flow_run_ids: Sequence[Any], num_reads: int = 300) -> dict[str, float]:
    """What one `read_flow_run` costs (the sweep's poll reads each pending point every 2 s): wall
    seconds in the client and CPU seconds of the Prefect server (and its database), per read."""
    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api}):
        with get_client(sync_client=True) as client:
            client.read_flow_run(flow_run_ids[0])  # a connection open, as a sweep's poll has
            before, began = service_cpu_seconds(stack.directory), time.perf_counter()
            for index in range(num_reads):
                client.read_flow_run(flow_run_ids[index % len(flow_run_ids)])
            wall = time.perf_counter() - began
            after = service_cpu_seconds(stack.directory)
    return {
        "wall_seconds": wall / num_reads,
        "prefect_cpu_seconds": (after["prefect"] - before["prefect"]) / num_reads,
        "postgres_cpu_seconds": (after["postgres"] - before["postgres"]) / num_reads,
    }


# ---------------------------------------------------------------- sweeps


def run_sweep(technique: str, axes: dict[str, list], deployment: str, root: str) -> dict[str, Any]:
    """One sweep (flows/sweep.py) against the stack this process's environment names; run in a
    child process by `run_sweep_in_child`."""
    began = time.time()
    state = sweep(technique, axes, deployment=deployment, root=Path(root), return_state=True)
    ended = time.time()
    outcome = state.result(raise_on_failure=False)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "state": state.type.value,
        "message": state.message or "",
        "started": began,
        "ended": ended,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        **(outcome if isinstance(outcome, dict) else {"error": repr(outcome)}),
    }


def run_sweep_in_child(stack: Stack, name: str, axes: dict[str, list], deployment: str) -> dict[str, Any]:
    """`run_sweep` in a new interpreter with the stack's environment (its output in DIR/logs)."""
    result_path = stack.directory / "clients" / f"sweep-{name}.json"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"technique": TECHNIQUE, "axes": axes, "deployment": deployment, "root": str(REPO_ROOT)}
    command = [sys.executable, "-m", "benchmarks.harness", "benchmarks.sweep_load", "run_sweep"]
    command += [json.dumps(kwargs), str(result_path)]
    log = stack.directory / "logs" / f"sweep-{name}.log"
    with open(log, "w") as out:
        code = subprocess.run(
            command, cwd=REPO_ROOT, env=stack.env, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"sweep {name} exited with {code}:\n{tail}")
    return json.loads(result_path.read_text())


def run_phase(
    stack: Stack, name: str, num_sweeps: int, axes: dict[str, list], deployment: str
) -> dict[str, Any]:
    """`num_sweeps` sweeps of `axes` at once, each in its own process; their results and the CPU
    seconds each service and the whole machine used meanwhile."""
    services_before, machine_before = service_cpu_seconds(stack.directory), machine_busy_seconds()
    began = time.time()
    with ThreadPoolExecutor(num_sweeps) as pool:
        sweeps = list(
            pool.map(
                lambda index: run_sweep_in_child(stack, f"{name}-{index}", axes, deployment),
                range(num_sweeps),
            )
        )
    wall_seconds = time.time() - began
    services_after = service_cpu_seconds(stack.directory)
    cpu = {service: services_after[service] - services_before.get(service, 0.0) for service in services_after}
    cpu["sweep processes"] = sum(result["cpu_seconds"] for result in sweeps)
    cpu["machine (everything)"] = machine_busy_seconds() - machine_before
    return {
        "name": name,
        "started": began,
        "wall_seconds": wall_seconds,
        "sweeps": sweeps,
        "cpu_seconds": cpu,
    }


# ---------------------------------------------------------------- nothing lost


def check_phase(client: mlflow.MlflowClient, phase: dict[str, Any], labels: dict[str, float]) -> list[str]:
    """What the MLflow server lacks after a phase: each sweep's run with its comparison, and for
    every point of every sweep exactly one FINISHED child run with its metric and image."""
    metric = TECHNIQUES[TECHNIQUE].champion.metric
    image = TECHNIQUES[TECHNIQUE].comparison_image
    problems = []
    for result in phase["sweeps"]:
        if result["state"] != "COMPLETED":
            problems.append(f"a sweep ended {result['state']}: {result['message']} {result.get('error', '')}")
    run_ids = [result["run_id"] for result in phase["sweeps"] if result.get("run_id")]
    if not run_ids:
        return [*problems, "no sweep returned its MLflow run"]
    experiment_id = client.get_run(run_ids[0]).info.experiment_id
    parents = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.start_time >= {int(phase['started'] * 1000)} "
        "and tags.`sweep.points` != ''",
        max_results=1000,
    )
    if len(parents) != len(phase["sweeps"]):
        problems.append(f"{len(parents)} sweep runs in MLflow for {len(phase['sweeps'])} sweeps")
    for parent in parents:
        sweep_id, tags = parent.data.tags["sweep.id"], parent.data.tags
        where = f"sweep {sweep_id}"
        if tags.get("sweep.completed_points") != str(len(labels)) or tags.get("sweep.failed_points"):
            problems.append(
                f"{where}: completed_points={tags.get('sweep.completed_points')}, "
                f"failed_points={tags.get('sweep.failed_points')!r}"
            )
        artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
        for name in ("sweep_points.json", "sweep_comparison.png"):
            if name not in artifacts:
                problems.append(f"{where}: no {name} on its run")
        children = [
            run
            for run in client.search_runs(
                [experiment_id], filter_string=f"tags.`sweep.id` = '{sweep_id}'", max_results=10000
            )
            if "sweep.point" in run.data.tags
        ]
        by_label = defaultdict(list)
        for run in children:
            by_label[run.data.tags["sweep.point"]].append(run)
        if missing := sorted(set(labels) - set(by_label)):
            problems.append(f"{where}: {len(missing)} points have no run: {missing[:5]}")
        if unknown := sorted(set(by_label) - set(labels)):
            problems.append(f"{where}: runs of points it does not have: {unknown[:5]}")
        for label, runs in by_label.items():
            finished = [run for run in runs if run.info.status == "FINISHED"]
            if len(runs) != 1 or len(finished) != 1:
                problems.append(f"{where}, {label}: {len(runs)} runs ({len(finished)} FINISHED), expected 1")
            for run in finished:
                if run.data.tags.get("mlflow.parentRunId") != parent.info.run_id:
                    problems.append(f"{where}, {label}: its run is not a child of the sweep's")
                value = run.data.metrics.get(metric)
                if value is None or not math.isclose(value, labels.get(label, math.nan)):
                    problems.append(f"{where}, {label}: {metric} = {value}, expected {labels.get(label)}")
                if image not in {item.path for item in client.list_artifacts(run.info.run_id)}:
                    problems.append(f"{where}, {label}: no {image}")
    return problems


# ---------------------------------------------------------------- where the time goes


def _stamp(value) -> float | None:
    return value.timestamp() if value is not None else None


def point_timelines(stack: Stack, deployment: str) -> list[dict[str, Any]]:
    """Every flow run of the stand-in: its sweep, states, worker, and the moments its logs mark
    (epoch seconds), with the stand-in's own timings."""
    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api}):
        with get_client(sync_client=True) as client:
            deployment_id = client.read_deployment_by_name(deployment).id
            flow_runs = []
            deployment_filter = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            while batch := client.read_flow_runs(
                deployment_filter=deployment_filter, limit=200, offset=len(flow_runs)
            ):
                flow_runs.extend(batch)
            records = defaultdict(list)
            for start in range(0, len(flow_runs), 50):
                log_filter = LogFilter(
                    flow_run_id=LogFilterFlowRunId(any_=[run.id for run in flow_runs[start : start + 50]])
                )
                offset = 0
                while batch := client.read_logs(log_filter=log_filter, limit=200, offset=offset):
                    offset += len(batch)
                    for record in batch:
                        records[record.flow_run_id].append(record)
    timelines = []
    for flow_run in flow_runs:
        point = flow_run.parameters.get("point") or {}
        timeline = {
            "flow_run": flow_run.name,
            "flow_run_id": str(flow_run.id),
            "sweep_id": point.get("id"),
            "point": point.get("point"),
            "shared_only": bool(flow_run.parameters.get("shared_only")),
            "state": flow_run.state.type.value if flow_run.state else None,
            "expected_start": _stamp(flow_run.expected_start_time),
            "running": _stamp(flow_run.start_time),
            "completed": _stamp(flow_run.end_time),
        }
        steps_started = {}
        for record in sorted(records[flow_run.id], key=lambda record: record.timestamp):
            message, moment = record.message, record.timestamp.timestamp()
            if match := CLAIMED.match(message):
                timeline.update(claimed=moment, worker=match.group("worker"))
            elif PULL_STARTED.match(message):
                timeline["pull_started"] = moment
            elif PULLED.match(message):
                timeline["pulled"] = moment
            elif match := STEP_STARTED.match(message):
                steps_started[match.group("step")] = moment
            elif match := STEP_DONE.match(message):
                timeline[f"step {match.group('step')}"] = moment - steps_started.get(
                    match.group("step"), moment
                )
            elif FINISHED.match(message):
                timeline["finished"] = moment
            elif message.startswith(TIMINGS):
                timeline.update(json.loads(message.removeprefix(TIMINGS)))
        timelines.append(timeline)
    return timelines


def point_breakdown(timeline: dict[str, Any]) -> dict[str, float] | None:
    """Seconds of each part of one point's way through a worker, None when a mark is missing."""
    marks = ("expected_start", "claimed", "pull_started", "pulled", "running", "completed", "finished")
    if any(timeline.get(mark) is None for mark in (*marks, "body_seconds")):
        return None
    work = timeline["work_seconds"]
    occupancy = timeline["finished"] - timeline["claimed"]
    steps = {
        f"    {key.removeprefix('step ')}": seconds
        for key, seconds in timeline.items()
        if key.startswith("step ")
    }
    return {
        "queue wait (scheduled -> a worker claims it)": timeline["claimed"] - timeline["expected_start"],
        "worker busy (claimed -> the engine's last log line)": occupancy,
        "**overhead** (busy - work)": occupancy - work,
        "  process start, Prefect imports (claimed -> pull steps start)": timeline["pull_started"]
        - timeline["claimed"],
        "  pull steps": timeline["pulled"] - timeline["pull_started"],
        **steps,
        "  flow import, engine start (pull steps done -> Running)": timeline["running"] - timeline["pulled"],
        "  params read and checked, technique flow imported": timeline["params_seconds"],
        "  MLflow: experiment, run, params, metric, image, end": timeline["mlflow_seconds"],
        "  engine around the flow body (Running -> Completed - body)": timeline["completed"]
        - timeline["running"]
        - timeline["body_seconds"],
        "  engine end (Completed -> its last log line)": timeline["finished"] - timeline["completed"],
        "Prefect's run time - work (Running -> Completed - work)": timeline["completed"]
        - timeline["running"]
        - work,
    }


def pickup_gaps(timelines: Sequence[dict[str, Any]]) -> list[float]:
    """Seconds from a flow run's last log line to its worker's claim of the next one, counted only
    when that next run was already waiting: the process's exit and the worker's polling."""
    by_worker = defaultdict(list)
    for timeline in timelines:
        if timeline.get("claimed") is not None and timeline.get("finished") is not None:
            by_worker[timeline["worker"]].append(timeline)
    gaps = []
    for runs in by_worker.values():
        runs.sort(key=lambda timeline: timeline["claimed"])
        for previous, following in zip(runs, runs[1:]):
            if following["expected_start"] < previous["finished"]:
                gaps.append(following["claimed"] - previous["finished"])
    return gaps


def distribution(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return {"count": len(values), "median": statistics.median(ordered), "p90": p90, "max": ordered[-1]}


def simulated_poll_reads(runs: Sequence[dict[str, Any]], read_seconds: float) -> int:
    """How many flow runs a sweep's polls read (flows/sweep.py's `wait_for_all`), replayed on its
    flow runs' times: each poll reads every run submitted and not yet ended, one request of
    `read_seconds` each, then sleeps POLL_SECONDS."""
    ended = [run for run in runs if run.get("completed")]
    if not ended:
        return 0
    moment, last = min(run["expected_start"] for run in ended), max(run["completed"] for run in ended)
    reads = 0
    while moment <= last:
        pending = sum(run["expected_start"] <= moment < run["completed"] for run in ended)
        reads += pending
        moment += pending * read_seconds + POLL_SECONDS
    return reads


def summarize_phase(
    phase: dict[str, Any], timelines: Sequence[dict[str, Any]], num_workers: int, read_cost: dict[str, float]
) -> dict[str, Any]:
    sweep_ids = {result.get("sweep_id") for result in phase["sweeps"]}
    mine = [timeline for timeline in timelines if timeline["sweep_id"] in sweep_ids]
    points = [timeline for timeline in mine if not timeline["shared_only"]]
    breakdowns = [breakdown for timeline in points if (breakdown := point_breakdown(timeline))]
    parts = {
        key: distribution([breakdown[key] for breakdown in breakdowns]) for key in (breakdowns or [{}])[0]
    }
    first_claim = min((timeline["claimed"] for timeline in points if timeline.get("claimed")), default=None)
    last_exit = max((timeline["finished"] for timeline in points if timeline.get("finished")), default=None)
    num_points = len(points)
    minutes = phase["wall_seconds"] / 60
    sweep_extra = [
        {
            "submitting the points": max(p["expected_start"] for p in runs)
            - min(p["expected_start"] for p in runs),
            "sweep start -> first point scheduled": min(p["expected_start"] for p in runs)
            - result["started"],
            "last point finished -> sweep returned (comparison)": result["ended"]
            - max(p.get("finished") or 0 for p in runs),
        }
        for result in phase["sweeps"]
        if (runs := [p for p in points if p["sweep_id"] == result.get("sweep_id")])
    ]
    occupancy = parts.get("worker busy (claimed -> the engine's last log line)", {}).get("median")
    gaps = distribution(pickup_gaps(mine))
    cpu = phase["cpu_seconds"]
    return {
        "num_sweeps": len(phase["sweeps"]),
        "num_points": num_points,
        "num_flow_runs": len(mine),
        "flow_run_states": dict(sorted(_count(timeline["state"] for timeline in mine).items())),
        "wall_seconds": phase["wall_seconds"],
        "points_per_minute": num_points / minutes if minutes else math.nan,
        "points_per_minute_while_points_ran": num_points / ((last_exit - first_claim) / 60)
        if first_claim and last_exit and last_exit > first_claim
        else math.nan,
        "bound_from_occupancy_and_pickup": num_workers * 60 / (occupancy + gaps.get("median", 0.0))
        if occupancy
        else math.nan,
        "parts": parts,
        "pickup_gap": gaps,
        "per_sweep": {
            key: distribution([extra[key] for extra in sweep_extra]) for key in (sweep_extra or [{}])[0]
        },
        "sweep_poll_reads": sum(
            simulated_poll_reads(
                [timeline for timeline in mine if timeline["sweep_id"] == result.get("sweep_id")],
                read_cost["wall_seconds"],
            )
            for result in phase["sweeps"]
        ),
        "cpu_seconds": cpu,
        "cpu_seconds_per_point": {service: seconds / num_points for service, seconds in cpu.items()}
        if num_points
        else {},
    }


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for value in values:
        counts[str(value)] += 1
    return counts


# ---------------------------------------------------------------- report


def report(results: dict[str, Any]) -> str:
    config = results["config"]
    phases = results["phases"]
    names = list(phases)
    lines = [
        f"{config['workers']} workers, {config['points']} points in the sweep alone, "
        f"{config['concurrent_points']} in each of the {config['sweeps']} at once, "
        f"{config['work_seconds']} s of work per point, workspace: {config['workspace']}; "
        f"stack started in {results['stack_start_seconds']:.0f} s",
        "",
    ]

    def row(label: str, cell) -> list[str]:
        return [label, *(cell(phases[name], name) for name in names)]

    read_cost = results["flow_run_read_cost"]
    rows = [
        row("sweeps at once", lambda phase, _: str(phase["num_sweeps"])),
        row(
            "points (flow runs incl. shared stages)",
            lambda phase, _: f"{phase['num_points']} ({phase['num_flow_runs']})",
        ),
        row(
            "flow run states",
            lambda phase, _: ", ".join(
                f"{state} {count}" for state, count in phase["flow_run_states"].items()
            ),
        ),
        row("wall time", lambda phase, _: f"{phase['wall_seconds']:.0f} s"),
        row(
            "**throughput**, points/min (whole phase)",
            lambda phase, _: f"**{phase['points_per_minute']:.1f}**",
        ),
        row(
            "throughput while points ran (first claim -> last point done)",
            lambda phase, _: f"{phase['points_per_minute_while_points_ran']:.1f}",
        ),
        row(
            "workers x 60 / (busy + pickup gap), medians",
            lambda phase, _: f"{phase['bound_from_occupancy_and_pickup']:.1f}",
        ),
        row(
            "sweeps' status polls: reads of one flow run (replayed)",
            lambda phase, _: f"{phase['sweep_poll_reads']:,}",
        ),
        row(
            "  their Prefect server CPU s (% of its CPU s in the phase)",
            lambda phase, _: _poll_cpu(phase, read_cost),
        ),
        row("lost or duplicated points", lambda _, name: str(len(results["problems"][name]))),
    ]
    lines += [markdown_table(["phase", *names], rows), ""]
    parts = list(phases[names[0]]["parts"])
    rows = [[part, *(_median_p90(phases[name]["parts"].get(part, {})) for name in names)] for part in parts]
    rows.append(
        [
            "pickup gap: last log line -> the worker's next claim (exit, polling)",
            *(_median_p90(phases[n]["pickup_gap"]) for n in names),
        ]
    )
    for key in phases[names[0]]["per_sweep"]:
        rows.append(
            [f"per sweep: {key}", *(_median_p90(phases[name]["per_sweep"].get(key, {})) for name in names)]
        )
    lines += [markdown_table(["seconds per point: median / p90", *names], rows), ""]
    services = sorted({service for name in names for service in phases[name]["cpu_seconds_per_point"]})
    rows = [
        [service, *(f"{phases[name]['cpu_seconds_per_point'].get(service, 0.0):.2f}" for name in names)]
        for service in services
    ]
    lines += [markdown_table(["CPU seconds per point", *names], rows), ""]
    rows = [
        [name, f"{run['wall_seconds']:.2f}", f"{run['cpu_seconds']:.2f}"]
        for name, run in results["startup_seconds"].items()
    ]
    lines += [markdown_table(["a process start, alone (fastest of 3)", "wall s", "CPU s"], rows)]
    return "\n".join(lines)


def _poll_cpu(phase: dict[str, Any], read_cost: dict[str, float]) -> str:
    seconds = phase["sweep_poll_reads"] * read_cost["prefect_cpu_seconds"]
    return f"{seconds:.0f} ({100 * seconds / phase['cpu_seconds']['prefect']:.0f}%)"


def _median_p90(stats: dict[str, float]) -> str:
    if not stats.get("count"):
        return ""
    return f"{stats['median']:.2f} / {stats['p90']:.2f}"


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """`results` with each phase summarized from its raw flow runs."""
    raw, read_cost = results["raw"], results["flow_run_read_cost"]
    results["phases"] = {
        name: summarize_phase(phase, raw["timelines"], results["config"]["workers"], read_cost)
        for name, phase in raw["phases"].items()
    }
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sweep_load", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workers", type=int, default=4, help="Prefect workers in the stack (default 4)")
    parser.add_argument("--points", type=int, default=100, help="points per sweep (default 100)")
    parser.add_argument(
        "--sweeps", type=int, default=4, help="sweeps at once in the second phase (default 4)"
    )
    parser.add_argument(
        "--concurrent-points",
        type=int,
        default=None,
        help="points per sweep when --sweeps run at once (default: --points)",
    )
    parser.add_argument(
        "--work-seconds", type=float, default=1.0, help="each point's stand-in training (default 1)"
    )
    parser.add_argument(
        "--workspace",
        choices=("clone", "checkout"),
        default="clone",
        help="clone: prefect.yaml's pull steps (git clone, DVC remote) before each point; checkout: none",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the stack's folder (logs) after stopping it"
    )
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="JSON",
        help="run nothing: summarize the raw flow runs a previous run saved there again, and report",
    )
    args = parser.parse_args(argv)
    if args.from_results:
        results = summarize(json.loads(args.from_results.read_text()))
        write_results(args.from_results, results)
        print(report(results))
        return 1 if any(results["problems"].values()) else 0
    if args.concurrent_points is None:
        args.concurrent_points = args.points
    for name in ("workers", "points", "sweeps", "concurrent_points"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.work_seconds < 0:
        parser.error(f"--work-seconds must be >= 0, got {args.work_seconds}")

    began = time.monotonic()
    with team_stack(args.workers, args.keep) as stack:
        deployment = deploy_stand_in(stack, args.work_seconds, args.workspace)
        startup = startup_seconds(stack)
        client = mlflow.MlflowClient(stack.mlflow_uri)
        phases, problems = {}, {}
        for name, num_sweeps, num_points in (
            ("1 sweep alone", 1, args.points),
            (f"{args.sweeps} sweeps at once", args.sweeps, args.concurrent_points),
        ):
            print(f"{name}: {num_sweeps} x {num_points} points ...", flush=True)
            betas = [round(0.1 * (index + 1), 1) for index in range(num_points)]  # beta=0.1, 0.2, ...
            labels = {f"beta={beta:g}": stand_in_metric({AXIS: [beta]}) for beta in betas}
            phases[name] = run_phase(stack, name.split()[0], num_sweeps, {AXIS: betas}, deployment)
            problems[name] = check_phase(client, phases[name], labels)
            print(f"  {phases[name]['wall_seconds']:.0f} s, {len(problems[name])} problems", flush=True)
        timelines = point_timelines(stack, deployment)
        read_cost = flow_run_read_cost(stack, [timeline["flow_run_id"] for timeline in timelines])
        start_seconds = stack.start_seconds
    results = {
        "config": vars(args),
        "environment": {**environment(), "load_average": os.getloadavg()},
        "stack_start_seconds": start_seconds,
        "startup_seconds": startup,
        "flow_run_read_cost": read_cost,
        "problems": problems,
        "raw": {"phases": phases, "timelines": timelines},
        "benchmark_seconds": time.monotonic() - began,
    }
    path = write_results(RESULTS_PATH, summarize(results))
    print(report(results))
    for name, found in problems.items():
        for problem in found[:20]:
            print(f"LOST ({name}): {problem}")
    print(f"\nMeasured in {results['benchmark_seconds']:.0f} s; results in {path.relative_to(REPO_ROOT)}")
    return 1 if any(problems.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
