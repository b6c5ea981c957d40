"""The team stack's services (scripts/team.sh, the session's stack of conftest.py): PostgreSQL, the
MLflow server with proxied artifacts, the Prefect server with the `gendl` work pool and its workers,
secrets, and stop and start again with everything kept: runs, artifacts, the deployments with their
schedules, the registry's aliases."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.team.conftest import NUM_WORKERS, TEXT_DEPLOYMENT, Stack, TriggeredRun
from tests.team.helpers import VENV_BIN, team

pytestmark = pytest.mark.slow

SERVICES = ["postgres", "mlflow", "prefect"] + [f"worker-{index}" for index in range(1, NUM_WORKERS + 1)]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def api(url: str, body: object | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        return json.loads(response.read())


def status_lines(stack: Stack) -> tuple[int, dict[str, str]]:
    result = team("status", "--dir", str(stack.directory), timeout=60)
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    return result.returncode, lines


def online_workers(stack: Stack) -> list[str]:
    workers = api(f"{stack.prefect_api}/work_pools/gendl/workers/filter", body={})
    return sorted(worker["name"] for worker in workers if worker["status"] == "ONLINE")


def worker_pids(stack: Stack) -> list[int]:
    return [
        int((stack.directory / "run" / f"worker-{index}.pid").read_text())
        for index in range(1, NUM_WORKERS + 1)
    ]


def test_status_says_all_running_and_env_points_at_the_stack(stack: Stack) -> None:
    code, lines = status_lines(stack)
    assert code == 0, lines
    for service in SERVICES:
        assert " running " in lines[service], lines
    assert " ready " in lines["dvc-remote"]

    exports = team("env", "--dir", str(stack.directory)).stdout.splitlines()
    assert exports == [
        f"export MLFLOW_TRACKING_URI={stack.mlflow_uri}",
        f"export PREFECT_API_URL={stack.prefect_api}",
        f"export GENDL_DVC_REMOTE={stack.directory / 'dvc-remote'}",
        f"export GENDL_TEAM_DIR={stack.directory}",
    ]
    assert (stack.directory / "dvc-remote").is_dir()
    assert f"GENDL_TEAM_MLFLOW_PORT={stack.mlflow_port}" in (stack.directory / "team.env").read_text()


def test_prefect_server_has_the_gendl_process_pool_with_workers_online(stack: Stack) -> None:
    assert api(f"{stack.prefect_api}/health") is True
    pool = api(f"{stack.prefect_api}/work_pools/gendl")
    assert pool["type"] == "process"
    assert len(online_workers(stack)) == NUM_WORKERS


def test_a_flow_run_that_stops_sending_heartbeats_is_marked_crashed(stack: Stack) -> None:
    """The automation that turns a dead worker's flow run from Running into Crashed (so a sweep
    retries its point), and the heartbeat it relies on."""
    [automation] = [a for a in api(f"{stack.prefect_api}/automations/filter", body={}) if a["name"].startswith("gendl:")]
    trigger = automation["trigger"]
    assert automation["enabled"] and trigger["posture"] == "Proactive" and trigger["within"] == 90
    assert trigger["after"] == ["prefect.flow-run.heartbeat"] and "prefect.flow-run.Completed" in trigger["expect"]
    assert trigger["for_each"] == ["prefect.resource.id"]
    assert [(action["type"], action["state"]) for action in automation["actions"]] == [
        ("change-flow-run-state", "CRASHED")
    ]
    environ = Path(f"/proc/{worker_pids(stack)[0]}/environ").read_bytes().split(b"\0")
    assert b"PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30" in environ


def test_workers_run_the_venv_inside_the_team_folder(stack: Stack) -> None:
    for index, pid in enumerate(worker_pids(stack), start=1):
        assert Path(f"/proc/{pid}/cwd").resolve() == (stack.directory / "workers" / str(index)).resolve()
        environ = dict(
            entry.split("=", 1)
            for entry in Path(f"/proc/{pid}/environ").read_text().split("\0")
            if "=" in entry
        )
        assert Path(environ["PATH"].split(os.pathsep)[0]).resolve() == VENV_BIN.resolve()
        assert environ["PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES"] == "false"
        assert environ["PREFECT_WORKER_QUERY_SECONDS"] == "5"
        assert environ["GENDL_WORKER_NAME"] == f"gendl-{socket.gethostname()}-{index}"  # its pool name
        assert environ["GENDL_RESUME_DIR"] == str(stack.directory / "resume")
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert command[command.index(b"--limit") + 1] == b"1"  # one flow run at a time
        assert environ["MLFLOW_TRACKING_URI"] == stack.mlflow_uri
        assert environ["PREFECT_API_URL"] == stack.prefect_api
        assert environ["GENDL_DVC_REMOTE"] == str(stack.directory / "dvc-remote")
        assert "PGPASSFILE" not in environ


def test_mlflow_server_logs_a_run_and_proxies_its_artifact(stack: Stack, tmp_path: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=stack.mlflow_uri)
    experiment_id = client.create_experiment("team-services-test")
    assert client.get_experiment(experiment_id).artifact_location.startswith("mlflow-artifacts:")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_param(run_id, "learning_rate", "0.01")
    client.log_metric(run_id, "loss", 0.25, step=3)
    note = tmp_path / "note.txt"
    note.write_text("logged through the tracking server\n")
    client.log_artifact(run_id, str(note))
    client.set_terminated(run_id)

    stored = list((stack.directory / "mlflow-artifacts").rglob("note.txt"))
    assert len(stored) == 1 and run_id in stored[0].parts, stored
    (tmp_path / "download").mkdir()  # read back through the server, not from the folder
    downloaded = Path(client.download_artifacts(run_id, "note.txt", str(tmp_path / "download")))
    assert downloaded.read_text() == note.read_text()
    stack.logged.update(run_id=run_id, note=note.read_text())


def test_the_database_password_stays_secret(stack: Stack) -> None:
    password_file = stack.directory / "secrets" / "db_password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    password = password_file.read_text().strip()
    assert len(password) >= 32

    for entry in Path("/proc").iterdir():  # on no command line `ps` shows
        if entry.name.isdigit():
            try:
                assert password not in (entry / "cmdline").read_bytes().decode(errors="replace")
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
    roots = [(REPO_ROOT, {".venv", ".git"}), (stack.directory, {"secrets", "postgres"})]
    for root, skipped in roots:  # in no file of the repo, nor of the stack's folder but secrets/
        for folder, subfolders, files in os.walk(root):
            if Path(folder) == root:
                subfolders[:] = [name for name in subfolders if name not in skipped]
            for name in files:
                path = Path(folder) / name
                if path.is_file() and path.stat().st_size < 5_000_000:
                    assert password.encode() not in path.read_bytes(), path


def test_start_again_only_reports_status(stack: Stack) -> None:
    result = team("start", "--dir", str(stack.directory), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stdout
    assert result.stdout.count(" running ") == len(SERVICES)


def test_a_taken_port_is_named_in_one_line(stack: Stack) -> None:
    other = Path(tempfile.mkdtemp(prefix="gendl-team-other-"))
    try:
        result = team("start", "--dir", str(other), "--pg-port", str(stack.mlflow_port), timeout=60)
    finally:
        shutil.rmtree(other, ignore_errors=True)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"port {stack.mlflow_port} on 127.0.0.1 is already in use" in result.stderr
    assert "--pg-port" in result.stderr


def deployments_by_name(stack: Stack) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api}):
        with get_client(sync_client=True) as client:
            return {deployment.name: deployment for deployment in client.read_deployments()}


def test_stop_then_start_keeps_runs_artifacts_deployments_and_aliases(
    stack: Stack, first: TriggeredRun, tmp_path: Path
) -> None:
    import mlflow

    assert stack.logged, "needs the run logged by test_mlflow_server_logs_a_run_and_proxies_its_artifact"
    client = mlflow.MlflowClient(tracking_uri=stack.mlflow_uri)
    model = first.mlflow_run.data.tags["champion.registered_model"]
    champion = client.get_model_version_by_alias(model, "champion").version
    artifacts = [artifact.path for artifact in client.list_artifacts(first.mlflow_run.info.run_id)]
    deployments = deployments_by_name(stack)
    assert TEXT_DEPLOYMENT.split("/")[1] in deployments and artifacts
    stopped = team("stop", "--dir", str(stack.directory), timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    code, lines = status_lines(stack)
    assert code != 0
    for service in SERVICES:
        assert " stopped " in lines[service], lines
    for port in (stack.pg_port, stack.mlflow_port, stack.prefect_port):
        assert not listening(port), port

    # As after an MLflow version bump: the next start migrates the schema first.
    (stack.directory / "mlflow-schema").write_text("0.0.1\n")
    began = time.monotonic()
    restarted = team("start", "--dir", str(stack.directory))
    restart_seconds = time.monotonic() - began
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "mlflow db upgrade" in restarted.stdout
    assert status_lines(stack)[0] == 0
    assert len(online_workers(stack)) == NUM_WORKERS

    run = client.get_run(stack.logged["run_id"])
    assert run.data.params == {"learning_rate": "0.01"}
    assert run.data.metrics == {"loss": 0.25}
    (tmp_path / "again").mkdir()
    downloaded = client.download_artifacts(stack.logged["run_id"], "note.txt", str(tmp_path / "again"))
    assert Path(downloaded).read_text() == stack.logged["note"]
    # What the deployment's flow run left: its runs with their artifacts, the registry's aliases,
    # the deployments with their schedules.
    parent = client.get_run(first.mlflow_run.info.run_id)
    assert parent.data.metrics == first.mlflow_run.data.metrics
    assert [artifact.path for artifact in client.list_artifacts(parent.info.run_id)] == artifacts
    assert client.get_model_version_by_alias(model, "champion").version == champion
    again = deployments_by_name(stack)
    assert set(again) == set(deployments)
    for name, deployment in deployments.items():
        kept = [(schedule.schedule, schedule.active) for schedule in again[name].schedules]
        assert kept == [(schedule.schedule, schedule.active) for schedule in deployment.schedules], name
    print(f"team stack: first start {stack.start_seconds:.1f} s, restart {restart_seconds:.1f} s")
