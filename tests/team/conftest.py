"""One team stack (scripts/team.sh) for all of tests/team: PostgreSQL, MLflow and Prefect servers,
two workers and a DVC remote on 127.0.0.1, free ports and a temporary folder; a bare git repository
of this project with tiny params deployed onto it, and the text deployment's flow runs.

Starting the stack takes about 20 s and each flow run up to a minute on 2 cores, so they are made
once per session and shared: the service tests run on the stack the deployments ran on, and the
stop-and-start test checks that what the flow runs left is still there afterwards."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.flows.conftest import GIT, make_repo_copy, params_of, write_params
from tests.team.helpers import clean_env, free_ports, team

NUM_WORKERS = 2
TEXT_DEPLOYMENT = "text-generation/text"
# Printed by the stage command itself (a line the test adds to the repo copy's text data step), so
# the flow run's log shows which file the stage subprocess really imported.
STAGE_MARKER = "gendl-test: stage code "
RUN_TIMEOUT = 600  # seconds a triggered flow run may take (about a minute on an idle 2-core machine)
# Profiles committed to the deployed repository: the same data and params but for the epochs, so a
# longer run validates better than the first (2 epochs: validation loss 1.69) and a shorter one
# worse (1 epoch: 2.28; 4 epochs: 0.87).
PROFILES = {"longer": {"text": {"train": {"epochs": 4}}}, "shorter": {"text": {"train": {"epochs": 1}}}}

POSTGRES_INSTALLED = any(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or bool(shutil.which("initdb"))


@dataclasses.dataclass
class Stack:
    directory: Path
    pg_port: int
    mlflow_port: int
    prefect_port: int
    env: dict[str, str]  # what `scripts/team.sh env` exports, on top of a clean environment
    start_seconds: float
    logged: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def mlflow_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def prefect_api(self) -> str:
        return self.env["PREFECT_API_URL"]

    @property
    def remote(self) -> Path:
        return Path(self.env["GENDL_DVC_REMOTE"])


@dataclasses.dataclass
class TriggeredRun:
    flow_run: object  # prefect.client.schemas.objects.FlowRun
    logs: list[str]
    mlflow_run: object  # the MLflow parent run (mlflow.entities.Run)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    if not POSTGRES_INSTALLED:
        pytest.skip(
            "PostgreSQL server binaries (initdb) are not installed: `apt-get install postgresql` "
            "(.ci/run does it on CI)"
        )
    # Under /tmp (not pytest's 0700 tmp root): as root the cluster runs as the postgres user.
    directory = Path(tempfile.mkdtemp(prefix="gendl-team-"))
    pg_port, mlflow_port, prefect_port = free_ports(3)
    try:
        began = time.monotonic()
        started = team(
            "start", "--dir", str(directory), "--workers", str(NUM_WORKERS), "--pg-port", str(pg_port),
            "--mlflow-port", str(mlflow_port), "--prefect-port", str(prefect_port),
        )  # fmt: skip
        assert started.returncode == 0, started.stdout + started.stderr
        start_seconds = time.monotonic() - began
        exported = team("env", "--dir", str(directory))
        assert exported.returncode == 0, exported.stderr
        env = clean_env()
        for line in exported.stdout.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value.strip("'\"")
        yield Stack(directory, pg_port, mlflow_port, prefect_port, env, start_seconds)
    finally:
        stopped = team("stop", "--dir", str(directory), timeout=120)
        shutil.rmtree(directory, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@pytest.fixture(scope="session")
def origin(tmp_path_factory) -> Path:
    """A bare git repository holding this project with tiny params, as a team's shared repository."""
    import yaml

    folder = tmp_path_factory.mktemp("git")
    source = make_repo_copy(folder / "source")
    data_step = source / "tasks" / "text" / "char_lstm" / "data.py"
    main = 'if __name__ == "__main__":'
    code = data_step.read_text()
    assert code.count(main) == 1
    data_step.write_text(code.replace(main, f'print("{STAGE_MARKER}" + __file__, flush=True)\n{main}'))
    # A window at every character: with the tiny corpus (one paragraph repeated) and windows every
    # other character, the validation windows start at the other parity and validation loss never
    # falls below the character frequencies', so no run would validate better than another.
    params = params_of(source)
    params["text"]["data"]["step"] = 1
    write_params(source, params)
    for name, overlay in PROFILES.items():
        (source / "profiles" / f"{name}.yaml").write_text(yaml.safe_dump(overlay))
    subprocess.run([*GIT, "add", "-A"], cwd=source, check=True)
    subprocess.run([*GIT, "commit", "-qm", "stage marker, a window at every character, longer and shorter profiles"], cwd=source, check=True)
    bare = folder / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(bare)], check=True)
    return bare


@pytest.fixture(scope="session")
def deployed(stack: Stack, origin: Path) -> Path:
    """Deploy from a developer's clone of `origin` (scripts/deploy.sh, as `scripts/team.sh deploy`
    runs it); returns that clone."""
    checkout = origin.parent / "developer"
    subprocess.run(["git", "clone", "-q", str(origin), str(checkout)], check=True)
    result = subprocess.run(
        ["bash", "scripts/deploy.sh"], cwd=checkout, env=stack.env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"of {origin} to {stack.prefect_api}" in result.stdout
    return checkout


def submit(stack: Stack, deployment: str, profile: str | None = None):
    """A flow run of `deployment` (with `profile`), scheduled to start now; does not wait for it.

    Through the sync client rather than `run_deployment`, which returns a coroutine when an event
    loop runs in this thread (Playwright's sync API keeps one while a browser page is open)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    parameters = {"profile": profile} if profile else {}
    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api}):
        with get_client(sync_client=True) as client:
            deployment_id = client.read_deployment_by_name(deployment).id
            return client.create_flow_run_from_deployment(deployment_id, parameters=parameters)


def wait_for(stack: Stack, flow_run_id) -> TriggeredRun:
    """Wait for the flow run to end; its log and the MLflow parent run it made."""
    import mlflow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api}):
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + RUN_TIMEOUT
            while not (flow_run := client.read_flow_run(flow_run_id)).state.is_final():
                assert time.monotonic() < deadline, f"flow run {flow_run.name} still {flow_run.state.name}"
                time.sleep(2)
            deadline = time.monotonic() + 60  # the engine sends its last log lines as it exits
            while not finished(records := flow_run_logs(client, flow_run.id)) and time.monotonic() < deadline:
                time.sleep(1)
        logs = [record.message for record in records]
    client = mlflow.MlflowClient(stack.mlflow_uri)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    parents = client.search_runs(experiments, filter_string=f"tags.`prefect.flow_run_id` = '{flow_run.id}'")
    assert flow_run.state.is_completed(), f"{flow_run.state}\n" + "\n".join(logs[-40:])
    assert len(parents) == 1, parents
    return TriggeredRun(flow_run, logs, parents[0])


def trigger(stack: Stack, deployment: str, profile: str | None = None) -> TriggeredRun:
    """Run `deployment` through the Prefect server (with `profile`) and wait for its flow run to end."""
    return wait_for(stack, submit(stack, deployment, profile).id)


def flow_run_logs(client, flow_run_id) -> list:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    records = []
    while batch := client.read_logs(log_filter=log_filter, limit=200, offset=len(records)):
        records.extend(batch)
    return records


def finished(records: list) -> bool:
    """Whether the flow run's own last line ("Finished in state ...", not a task run's) is in."""
    return any(record.task_run_id is None and record.message.startswith("Finished in state") for record in records)


# The text deployment's flow runs, in this order: the first (trains, becomes champion), an identical
# second (DVC restores every stage, nothing registered), a longer one (better: champion moves) and a
# shorter one (worse: champion stays).


@pytest.fixture(scope="session")
def first(stack: Stack, deployed: Path) -> TriggeredRun:
    return trigger(stack, TEXT_DEPLOYMENT)


@pytest.fixture(scope="session")
def second(stack: Stack, first: TriggeredRun) -> TriggeredRun:
    return trigger(stack, TEXT_DEPLOYMENT)


@pytest.fixture(scope="session")
def longer(stack: Stack, second: TriggeredRun) -> TriggeredRun:
    return trigger(stack, TEXT_DEPLOYMENT, profile="longer")


@pytest.fixture(scope="session")
def shorter(stack: Stack, longer: TriggeredRun) -> TriggeredRun:
    return trigger(stack, TEXT_DEPLOYMENT, profile="shorter")


@pytest.fixture(scope="module")
def page(stack: Stack) -> Iterator[object]:
    """A headless Chromium page (tests/team/browser.py) for the stack's MLflow UI, one per module:
    Playwright's sync API keeps an event loop in this thread while it is open."""
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e '.[test]'")
    from tests.team.browser import browser_page, chromium_path

    if chromium_path() is None:
        pytest.skip("no Chromium: `apt-get install chromium` (.ci/run does it on CI) or set GENDL_CHROMIUM")
    with browser_page() as page:
        yield page


@pytest.fixture(scope="session")
def mlflow_client(stack: Stack):
    import mlflow

    return mlflow.MlflowClient(stack.mlflow_uri)


def dvc(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, env=env or clean_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, f"dvc {' '.join(args)}: {result.stdout}{result.stderr}"
    return result
