"""The deployments of prefect.yaml on the team stack (tests/team/conftest.py), end to end: deploy a
tiny copy of this repo from a bare git repository, trigger the text deployment, and check that its
flow run completes on a worker in its own clone, tracks into the MLflow server, shares its DVC
outputs through the remote so that a teammate's clone and a second trigger run no stage, and that
the champion alias moves only to a better model.

Only the text technique runs, with tiny params, to stay within a few minutes on 2 cores."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from flows.registry import TECHNIQUES
from tests.conftest import REPO_ROOT
from tests.flows.conftest import GIT
from tests.model_server import invoke, model_server
from tests.team.conftest import STAGE_MARKER, Stack, TriggeredRun, dvc
from tests.team.helpers import clean_env

TEXT_STAGES = list(TECHNIQUES["text"].stages)


def load_prefect_yaml() -> dict:
    return yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())


def file_entrypoint(flow: str) -> str:
    """"flows.text:text_generation" -> "flows/text.py:text_generation"."""
    module, _, function = flow.partition(":")
    return f"{module.replace('.', '/')}.py:{function}"


# ---------------------------------------------------------------------------------------------
# prefect.yaml and the flow's guards, without services


def test_prefect_yaml_has_one_deployment_per_technique_and_the_main_job():
    config = load_prefect_yaml()
    deployments = {deployment["name"]: deployment for deployment in config["deployments"]}
    assert set(deployments) == set(TECHNIQUES) | {"all", "point"}
    assert deployments["all"]["entrypoint"] == "flows/all.py:all_techniques"
    assert "schedules" not in deployments["all"]  # it would repeat the techniques' own schedules
    for name, technique in TECHNIQUES.items():
        deployment = deployments[name]
        # File paths, not modules: with the project installed editable a module path could import
        # the checkout the package was installed from instead of the flow run's clone.
        assert deployment["entrypoint"] == file_entrypoint(technique.flow)
        [schedule] = deployment["schedules"]
        assert schedule["cron"] and schedule["timezone"] == "UTC" and schedule["slug"] == "weekly"
    point = deployments.pop("point")  # a sweep's points run side by side: no limit, no schedule
    assert point["entrypoint"] == "flows/sweep.py:sweep_point" and point["work_pool"]["name"] == "gendl"
    assert "concurrency_limit" not in point and "schedules" not in point
    for deployment in deployments.values():
        assert deployment["work_pool"]["name"] == "gendl"
        assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
        assert deployment["parameters"] == {"profile": None, "root": "."}
    crons = [deployment["schedules"][0]["cron"] for deployment in deployments.values() if "schedules" in deployment]
    assert len(set(crons)) == len(crons), "techniques start at different times"

    clone, shell = config["pull"]
    assert clone["prefect.deployments.steps.git_clone"]["repository"] == "{{ $GENDL_GIT_REPOSITORY }}"
    assert clone["prefect.deployments.steps.git_clone"]["commit_sha"] == "{{ $GENDL_GIT_COMMIT }}"
    script = shell["prefect.deployments.steps.run_shell_script"]
    assert script["shell"] is True and script["expand_env_vars"] is True
    assert script["directory"] == "{{ clone.directory }}"
    assert 'dvc remote add --local --default --force team "$GENDL_DVC_REMOTE"' in script["script"]


def test_a_deployment_run_refuses_a_tracking_store_inside_its_workspace(tmp_path, monkeypatch):
    from flows.technique_run import refuse_workspace_store

    inside = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    refuse_workspace_store(inside, tmp_path)  # not under a worker: the embedded default stays
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", str(uuid.uuid4()))
    with pytest.raises(ValueError, match="inside this flow run's workspace") as refusal:
        refuse_workspace_store(inside, tmp_path)
    message = str(refusal.value)
    assert "\n" not in message and "MLFLOW_TRACKING_URI" in message and "scripts/team.sh env" in message
    refuse_workspace_store(f"sqlite:///{tmp_path.parent / 'elsewhere.db'}", tmp_path)
    refuse_workspace_store("http://127.0.0.1:5000", tmp_path)


def test_team_remote_is_found_and_must_be_the_default(tmp_path):
    from tasks.pipeline import team_remote

    subprocess.run([*GIT, "init", "-q"], cwd=tmp_path, check=True)
    dvc(tmp_path, "init", "-q")
    assert team_remote(tmp_path) is None  # no remote: the stages run as before, nothing is pushed
    dvc(tmp_path, "remote", "add", "--local", "other", str(tmp_path / "other remote"))
    dvc(tmp_path, "remote", "add", "--local", "team", str(tmp_path / "team remote"))
    with pytest.raises(ValueError, match="dvc remote default --local team"):
        team_remote(tmp_path)
    dvc(tmp_path, "remote", "default", "--local", "team")
    assert team_remote(tmp_path) == str(tmp_path / "team remote")


def test_the_schedule_option_points_to_the_deployments():
    result = subprocess.run(
        [sys.executable, "-m", "flows.text", "--schedule", "0 3 * * 1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: --schedule is replaced by the deployments in prefect.yaml")
    assert "scripts/team.sh deploy" in error and "Traceback" not in result.stderr


def workspace_of(run: TriggeredRun) -> Path:
    [line] = [line for line in run.logs if line.startswith("workspace ")]
    workspace, _, flow_code = line.removeprefix("workspace ").partition(", flow code ")
    assert flow_code == workspace, "the flow's own code must come from its workspace"
    return Path(workspace)


def stage_outcomes(run: TriggeredRun) -> dict[str, str]:
    """{"text_train": "ran, dvc.lock updated", ...} from the flow run's log."""
    outcomes = {}
    for line in run.logs:
        stage, separator, outcome = line.partition(": ")
        if separator and stage in TEXT_STAGES and " | " not in line:
            outcomes[stage] = outcome
    return outcomes


# ---------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_deploy_creates_every_deployment_at_the_commit_with_schedule_and_limit(stack: Stack, deployed: Path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=deployed, capture_output=True, text=True).stdout.strip()
    with temporary_settings(updates={PREFECT_API_URL: stack.env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            deployments = {deployment.name: deployment for deployment in client.read_deployments()}
    assert set(deployments) == set(TECHNIQUES) | {"all", "point"}
    text = deployments["text"]
    assert text.work_pool_name == "gendl" and text.parameters == {"profile": None, "root": "."}
    assert text.global_concurrency_limit.limit == 1
    assert text.concurrency_options.collision_strategy == "ENQUEUE"
    [schedule] = text.schedules
    assert schedule.active and schedule.schedule.cron == "0 1 * * 0"
    # `prefect deploy` resolved the deployment's repository and commit from deploy.sh's environment.
    clone_step = text.pull_steps[0]["prefect.deployments.steps.git_clone"]
    assert clone_step["commit_sha"] == commit
    assert Path(clone_step["repository"]) == deployed.parent / "origin.git"


@pytest.mark.slow
def test_flow_run_completes_on_a_worker_in_its_own_clone(stack: Stack, deployed: Path, first: TriggeredRun):
    workspace = workspace_of(first)
    assert workspace.name == "workspace"  # prefect.yaml's clone_directory_name, in the worker's temp dir
    assert not workspace.is_relative_to(REPO_ROOT) and not workspace.is_relative_to(deployed)
    # The worker deletes it once the flow run's process has exited (a moment after the final state).
    deadline = time.monotonic() + 60
    while workspace.exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert not workspace.exists(), "the worker deletes the flow run's workspace when it ends"
    # The stage subprocesses imported the clone's code too, not the editable install's checkout.
    imported = {line.rsplit(STAGE_MARKER, 1)[1] for line in first.logs if STAGE_MARKER in line}
    assert imported == {str(workspace / "tasks" / "text" / "char_lstm" / "data.py")}
    assert stage_outcomes(first) == {stage: "ran, dvc.lock updated" for stage in TEXT_STAGES}
    assert first.mlflow_run.data.tags["dvc.stages_run"] == ",".join(TEXT_STAGES)


@pytest.mark.slow
def test_mlflow_server_has_the_parent_and_child_runs_and_artifacts(mlflow_client, first: TriggeredRun, tmp_path):
    parent = first.mlflow_run
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["technique"] == "text" and parent.data.tags["profile"] == "default"
    assert parent.data.tags["git.commit"] and parent.data.tags["git.dirty"] == "false"
    assert parent.data.metrics["train.best_val_loss"] > 0
    assert mlflow_client.list_artifacts(parent.info.run_id), "the parent run has no artifacts"
    children = mlflow_client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    temperatures = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["text"]["sample"]["temperatures"]
    assert len(children) == len(temperatures)
    # Artifacts go through the server (proxied): the client needs no access to the artifact store.
    sample = Path(mlflow_client.download_artifacts(children[0].info.run_id, "sample.txt", str(tmp_path)))
    assert sample.read_text(encoding="utf-8").startswith(children[0].data.params["seed_text"])


@pytest.mark.slow
def test_a_teammates_clone_reproduces_from_the_remote_without_running_a_stage(
    stack: Stack, origin: Path, first: TriggeredRun, tmp_path
):
    assert first.mlflow_run.data.tags["dvc.remote"] == str(stack.remote)
    assert (stack.remote / "runs").is_dir(), "the flow pushed no run-cache"
    clone = tmp_path / "teammate"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    dvc(clone, "remote", "add", "--default", "--local", "team", str(stack.remote))
    reproduced = dvc(clone, "repro", "--pull", TEXT_STAGES[-1])
    assert "Running stage" not in reproduced.stdout, reproduced.stdout
    for stage in TEXT_STAGES:
        assert f"Stage '{stage}' is cached - skipping run" in reproduced.stdout
    status = dvc(clone, "status", "--with-deps", TEXT_STAGES[-1])
    assert status.stdout.strip() == "Data and pipelines are up to date."
    # The same outputs as the worker's run: dvc.lock's hashes are the ones tagged on its MLflow run,
    # and the metrics file holds the metrics it logged.
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    for stage in TEXT_STAGES:
        for out in lock[stage]["outs"]:
            assert first.mlflow_run.data.tags[f"data.{out['path']}.md5"] == out["md5"], out["path"]
    train_metrics = json.loads((clone / "outputs" / "text" / "train_metrics.json").read_text())
    assert train_metrics["best_val_loss"] == pytest.approx(first.mlflow_run.data.metrics["train.best_val_loss"])


@pytest.mark.slow
def test_a_second_trigger_runs_no_stage_and_uploads_no_model(
    mlflow_client, first: TriggeredRun, second: TriggeredRun
):
    assert workspace_of(second) != workspace_of(first), "every flow run gets a fresh clone"
    restored = "restored from the DVC run-cache (team remote), not run"
    assert stage_outcomes(second) == {stage: restored for stage in TEXT_STAGES}
    assert not any(STAGE_MARKER in line for line in second.logs), "a stage command ran"
    tags = second.mlflow_run.data.tags
    assert tags["dvc.stages_run"] == "none (all up to date)"
    assert tags["model_reused_from_run"] == first.mlflow_run.info.run_id
    assert tags["model_uri"] == first.mlflow_run.data.tags["model_uri"]
    experiment = first.mlflow_run.info.experiment_id
    models = mlflow_client.search_logged_models(experiment_ids=[experiment])
    assert len([model for model in models if model.name == "model"]) == 1
    assert second.mlflow_run.data.metrics["train.best_val_loss"] == pytest.approx(
        first.mlflow_run.data.metrics["train.best_val_loss"]
    )


@pytest.mark.slow
def test_champion_set_by_the_first_run_kept_by_an_identical_one_moved_by_a_better_kept_by_a_worse(
    mlflow_client, first, second, longer, shorter
):
    """The first trigger registers version 1 and makes it champion; the identical second (no stage
    ran) registers nothing; a longer run (4 epochs, same data) validates better by more than the
    margin and takes the alias; a shorter one (1 epoch) registers a challenger and leaves it."""
    runs = {"first": first, "second": second, "longer": longer, "shorter": shorter}
    tags = {run: triggered.mlflow_run.data.tags for run, triggered in runs.items()}
    name = tags["first"]["champion.registered_model"]
    assert {tag["champion.registered_model"] for tag in tags.values()} == {name}
    outcomes = [tags[run]["champion.outcome"] for run in runs]
    assert outcomes == ["promoted", "not registered", "promoted", "kept"], {
        run: tag.get("champion.reason") for run, tag in tags.items()
    }
    first_version, longer_version, shorter_version = (
        tags[run]["champion.version"] for run in ("first", "longer", "shorter")
    )
    assert tags["second"]["champion.champion_version"] == first_version
    assert tags["longer"]["champion.champion_version"] == longer_version
    assert tags["longer"]["champion.previous_champion_version"] == first_version  # the one it beat
    assert tags["shorter"]["champion.champion_version"] == longer_version
    loss = {run: triggered.mlflow_run.data.metrics["train.best_val_loss"] for run, triggered in runs.items()}
    assert loss["longer"] < loss["first"] * 0.99 and loss["shorter"] > loss["longer"] * 0.99, loss
    versions = {version.version: version for version in mlflow_client.search_model_versions(f"name = '{name}'")}
    assert set(versions) == {first_version, longer_version, shorter_version}
    assert versions[longer_version].run_id == longer.mlflow_run.info.run_id
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == longer_version
    assert mlflow_client.get_model_version_by_alias(name, "challenger").version == shorter_version


@pytest.mark.slow
def test_the_champion_answers_a_generation_request_from_the_team_server(stack: Stack, first, tmp_path):
    import mlflow

    name = first.mlflow_run.data.tags["champion.registered_model"]
    uri = f"models:/{name}@champion"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(stack.mlflow_uri)
    try:
        info = mlflow.models.get_model_info(uri)
    finally:
        mlflow.set_tracking_uri(previous)
    assert info.signature.inputs.input_names() == ["prompt", "temperature", "length", "seed"]
    assert info.signature.outputs.input_names() == ["text"]
    assert info.saved_input_example_info is not None
    env = dict(clean_env(), MLFLOW_TRACKING_URI=stack.mlflow_uri)
    with model_server(uri, tmp_path / "serve.log", env=env) as url:
        asked = [
            {"prompt": "the will to", "temperature": 0.5, "length": 30, "seed": 3},
            {"prompt": "power", "temperature": 1.0, "length": 5, "seed": 4},
        ]
        status, answer = invoke(url, asked)
        assert status == 200, answer
        texts = [prediction["text"] for prediction in answer["predictions"]]
        assert [len(text) for text in texts] == [30, 5]
        assert invoke(url, asked[:1])[1]["predictions"][0]["text"] == texts[0]  # same seed, same text
        status, error = invoke(url, [{"prompt": "The §µ", "temperature": 0.5, "length": 10, "seed": 0}])
        assert status == 400
        assert "prompt has characters outside the corpus vocabulary: '§µ'" in error["message"]
        assert "Traceback" not in json.dumps(error)
        status, error = invoke(url, [{"prompt": "the", "temperature": 0.0, "length": 10, "seed": 0}])
        assert status == 400 and "temperature must be a finite number > 0, got 0.0" in error["message"]

