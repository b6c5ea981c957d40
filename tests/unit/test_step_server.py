"""The step server (tasks/step_server.py) runs a stage's step as `python -m` would in a new process:
the stage's own code, folder, arguments, environment, streams and exit code; it refuses what it
cannot run the same way, and a step whose command is stopped is stopped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks import step_server
from tasks.step_server import STEP_SERVER
from tasks.steps import read_error
from tests.conftest import REPO_ROOT

PROBE = """
import os, sys, time
print("argv", sys.argv[1:], "cwd", os.getcwd(), "parent", os.getppid(), "probe", os.environ.get("PROBE"))
print("stdin", sys.stdin.read().strip())
print("code", __file__)
print("to stderr", file=sys.stderr)
if sys.argv[1] == "sleep":
    open("started", "w").close()
    time.sleep(60)
if sys.argv[1] == "crash":
    os.kill(os.getpid(), 9)
sys.exit(int(sys.argv[2]))
"""


@pytest.fixture(scope="module")
def stage_folder(tmp_path_factory) -> Path:
    """A checkout with its own `tasks` package: the launcher, the server, a probe step, and steps
    that import a package nobody installed and a project module that does not exist."""
    folder = tmp_path_factory.mktemp("stage")
    (folder / "tasks").mkdir()
    for name in ("__init__.py", "run.py", "step_server.py", "steps.py"):
        shutil.copy(REPO_ROOT / "tasks" / name, folder / "tasks" / name)
    (folder / "tasks" / "probe.py").write_text(PROBE)
    (folder / "tasks" / "needs_a_package.py").write_text("import gendl_no_such_package\n")
    (folder / "tasks" / "project_bug.py").write_text("import tasks.no_such_module\n")
    return folder


@pytest.fixture(scope="module")
def server(stage_folder):
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(STEP_SERVER, raising=False)
        with step_server.step_server() as folder:
            deadline = time.monotonic() + 120
            while not (Path(folder) / step_server.SOCKET).exists():
                assert time.monotonic() < deadline, (Path(folder) / "server.log").read_text()
                time.sleep(0.1)
            server_pid = int(
                subprocess.check_output(["pgrep", "-f", f"tasks.step_server {folder}"]).split()[0]
            )
            yield {"folder": folder, "env": {**os.environ, "PROBE": "from the stage"}, "pid": server_pid}
        assert STEP_SERVER not in os.environ


def run(stage_folder: Path, env: dict, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tasks.run", "tasks.probe", *args],
        cwd=stage_folder, env=env, input=stdin, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_step_runs_on_the_server_as_its_own_process_would(server, stage_folder):
    started = time.perf_counter()
    result = run(stage_folder, server["env"], "go", "3", stdin="piped in")
    seconds = time.perf_counter() - started

    assert result.returncode == 3
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"argv ['go', '3'] cwd {stage_folder} parent ")
    assert lines[0].endswith("probe from the stage")
    supervisor = int(lines[0].split("parent ")[1].split()[0])
    assert os.getppid() != supervisor and _parent_of(supervisor) == server["pid"], "not forked by the server"
    assert lines[1] == "stdin piped in"
    assert lines[2] == f"code {stage_folder / 'tasks' / 'probe.py'}", "not the stage's own code"
    assert result.stderr.strip() == "to stderr"
    assert seconds < 5, f"{seconds:.1f} s: TensorFlow's import was not skipped"


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def test_without_a_server_the_step_runs_in_its_own_process(stage_folder):
    env = {key: value for key, value in os.environ.items() if key != STEP_SERVER}
    result = run(stage_folder, {**env, "PROBE": "cold"}, "go", "0", stdin="x")

    assert result.returncode == 0
    assert result.stdout.splitlines()[0].endswith(
        f"parent {os.getpid()} probe cold"
    )  # in the command's process
    assert result.stderr.strip() == "to stderr"


def test_a_step_whose_import_time_environment_differs_runs_in_its_own_process(server, stage_folder):
    result = run(stage_folder, {**server["env"], "TF_ENABLE_ONEDNN_OPTS": "0"}, "go", "5")

    assert result.returncode == 5
    assert "step server: TF_ENABLE_ONEDNN_OPTS differ" in result.stderr
    assert "probe from the stage" in result.stdout


def test_a_step_killed_by_a_signal_exits_as_a_shell_reports_it(server, stage_folder):
    assert run(stage_folder, server["env"], "crash", "0").returncode == 128 + signal.SIGKILL


def test_stopping_the_command_stops_its_step(server, stage_folder):
    (stage_folder / "started").unlink(missing_ok=True)
    command = subprocess.Popen(
        [sys.executable, "-m", "tasks.run", "tasks.probe", "sleep", "0"],
        cwd=stage_folder, env=server["env"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (stage_folder / "started").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    step = int(command.stdout.readline().split("parent ")[1].split()[0])  # its supervisor
    command.send_signal(signal.SIGTERM)
    command.wait(timeout=30)

    deadline = time.monotonic() + 30
    while _alive_children(step) or Path(f"/proc/{step}").exists():
        assert time.monotonic() < deadline, "the step outlived its command"
        time.sleep(0.1)


def _alive_children(pid: int) -> bool:
    return subprocess.run(["pgrep", "-P", str(pid)], capture_output=True).returncode == 0


def test_the_server_refuses_only_what_would_import_differently():
    imported = {"TF_CPP_MIN_LOG_LEVEL": "2"}
    set_by_imports = {"KMP_INIT_AT_FORK": "FALSE"}  # what importing TensorFlow sets itself

    def request(**env):
        return {"executable": sys.executable, "env": {"PATH": "/bin", "TF_CPP_MIN_LOG_LEVEL": "2", **env}}

    assert step_server.refusal(request(), imported, set_by_imports) is None
    assert step_server.refusal(request(MLFLOW_RUN_ID="x"), imported, set_by_imports) is None
    # Inherited from a process that imported TensorFlow: the same value the import would set.
    assert step_server.refusal(request(KMP_INIT_AT_FORK="FALSE"), imported, set_by_imports) is None
    assert "KMP_INIT_AT_FORK" in step_server.refusal(
        request(KMP_INIT_AT_FORK="TRUE"), imported, set_by_imports
    )
    assert "KERAS_HOME" in step_server.refusal(request(KERAS_HOME="/elsewhere"), imported, set_by_imports)
    assert "TF_CPP_MIN_LOG_LEVEL" in step_server.refusal(
        {**request(), "env": {"PATH": "/bin"}}, imported, set_by_imports
    )
    other = {**request(), "executable": "/usr/bin/python3"}
    assert "/usr/bin/python3" in step_server.refusal(other, imported, set_by_imports)


def test_a_step_whose_supervisor_dies_is_stopped_and_fails(server, stage_folder):
    (stage_folder / "started").unlink(missing_ok=True)
    command = subprocess.Popen(
        [sys.executable, "-m", "tasks.run", "tasks.probe", "sleep", "0"],
        cwd=stage_folder, env=server["env"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (stage_folder / "started").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    supervisor = int(command.stdout.readline().split("parent ")[1].split()[0])
    step = int(subprocess.check_output(["pgrep", "-P", str(supervisor)]).split()[0])
    os.kill(supervisor, signal.SIGKILL)

    assert command.wait(timeout=30) == 1
    assert "the step's supervisor went away; the step was stopped" in command.stderr.read()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{step}").exists() and "Z" not in Path(f"/proc/{step}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, "the step ran on without its supervisor"
        time.sleep(0.1)


def test_a_dvc_command_on_the_server_does_what_python_m_dvc_does(server, stage_folder, tmp_path):
    from tasks.pipeline import dvc_command

    repo = tmp_path / "repo"
    shutil.copytree(stage_folder / "tasks", repo / "tasks")  # with the probe step
    (repo / "dvc.yaml").write_text(
        "stages:\n"
        "  good: {cmd: python -m tasks.run tasks.probe go 0 > out.txt, outs: [out.txt]}\n"
        "  bad: {cmd: echo failing && exit 3, outs: [never.txt]}\n"
    )
    # As a flow runs DVC: `python` in its stage commands is the venv's (tasks.pipeline.subprocess_env).
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    env = {**server["env"], "PATH": path, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, env=env, check=True)

    def dvc(*args: str, on_server: bool) -> subprocess.CompletedProcess:
        command = dvc_command(*args) if on_server else [sys.executable, "-m", "dvc", *args]
        return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=120)

    good = dvc("repro", "--single-item", "good", on_server=True)
    assert good.returncode == 0, good.stderr
    assert "step server" not in good.stderr, "refused: DVC ran in its own process"
    assert "Running stage 'good'" in good.stdout
    assert "good" in (repo / "dvc.lock").read_text()
    step_says = (repo / "out.txt").read_text().splitlines()[0]  # the stage's step, run by DVC
    supervisor = int(step_says.split("parent ")[1].split()[0])
    assert _parent_of(supervisor) == server["pid"], "DVC's stage did not run its step on the server"
    again = dvc("repro", "--single-item", "good", on_server=True)
    assert "didn't change, skipping" in again.stdout

    bad = [dvc("repro", "--single-item", "bad", on_server=on_server) for on_server in (True, False)]
    assert bad[0].returncode == bad[1].returncode != 0
    assert "failing" in bad[0].stdout and "failed to reproduce 'bad'" in bad[0].stderr


# --- A stage run by another interpreter than the project's -------------------------------------------

NOT_INSTALLED = (
    "{package} is not installed for {python} (the stage's python); activate the project's environment "
    "first: source .venv/bin/activate (scripts/setup.sh creates it)"
)


def run_module(stage_folder: Path, module: str, env: dict, on_server: bool) -> subprocess.CompletedProcess:
    if not on_server:
        env = {key: value for key, value in env.items() if key != STEP_SERVER}
    return subprocess.run(
        [sys.executable, "-m", "tasks.run", module, "go"],
        cwd=stage_folder, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("on_server", [True, False], ids=["on the server", "in its own process"])
def test_a_step_needing_a_package_this_python_lacks_fails_with_one_line_naming_both(
    server, stage_folder, on_server
):
    result = run_module(stage_folder, "tasks.needs_a_package", server["env"], on_server)

    assert result.returncode == 1
    reason = NOT_INSTALLED.format(package="gendl_no_such_package", python=sys.executable)
    assert result.stderr.splitlines() == [f"error: {reason}"]
    assert read_error(result.stderr.splitlines()) == (reason, False)  # what the flow's StageFailed says


@pytest.mark.parametrize("on_server", [True, False], ids=["on the server", "in its own process"])
def test_a_missing_project_module_is_a_bug_and_keeps_its_traceback(server, stage_folder, on_server):
    result = run_module(stage_folder, "tasks.project_bug", server["env"], on_server)

    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "No module named 'tasks.no_such_module'" in result.stderr
    assert read_error(result.stderr.splitlines()) is None


def _python_without_numpy() -> str | None:
    for python in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3")):
        if python and Path(python).is_file() and Path(python).resolve() != Path(sys.executable).resolve():
            check = subprocess.run([python, "-c", "import numpy"], capture_output=True)
            if check.returncode != 0:
                return python
    return None


def test_a_real_stage_run_by_a_python_outside_the_venv_says_to_activate_it(tmp_path):
    """What `dvc repro` does when `python` on PATH is not the venv's: the stage's command, with the
    project's real step module, fails with one line instead of a ModuleNotFoundError traceback."""
    python = _python_without_numpy()
    if python is None:
        pytest.skip("no Python without numpy on this machine")
    shutil.copytree(REPO_ROOT / "tasks", tmp_path / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in (STEP_SERVER, "PYTHONPATH", "VIRTUAL_ENV")
    }
    result = subprocess.run(
        [python, "-m", "tasks.run", "tasks.text.char_lstm.steps", "train"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    reason, retryable = read_error([line])
    package = reason.split()[0]
    assert reason == NOT_INSTALLED.format(package=package, python=python) and not retryable
