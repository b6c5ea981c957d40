"""A warm start for the steps DVC runs: one process imports Keras and TensorFlow once, then forks a
copy of itself per step, so a model step starts in milliseconds instead of seconds. The flows' own
`dvc` commands start the same way, with DVC imported.

A flow starts the server (`step_server`, a context manager) and puts its folder in the environment
as GENDL_STEP_SERVER; DVC passes it on to the stage's command, `python -m tasks.run <module>
<step>`, which hands the step to the server (`run_on_server`): its arguments, working
directory, environment and standard streams. The server forks a supervisor per step and the
supervisor forks the step, which runs the module as `python -m` would, in the stage's own folder and
environment, with the stage's stdin, stdout and stderr; the supervisor sends the exit code back, or
stops the step if the command that asked for it is gone. The command then exits with that code: DVC
sees the same process output and exit code as without the server.

Without a server, or when it cannot run a step the same way (another interpreter, or environment
variables that TensorFlow, Keras or Python read at import time differ), the command runs the step in
its own process. The server imports no project code: each step imports the stage's own `tasks`
package from its working directory, as a new process would.

    python -m tasks.step_server FOLDER    # what step_server() starts
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import json
import os
import re
import runpy
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STEP_SERVER = "GENDL_STEP_SERVER"  # the server's folder; "off" for none
SOCKET = "steps.sock"
# DVC too: the flows run each stage's `dvc repro` through the server (tasks/pipeline.py, dvc_command).
PRELOADED = ("numpy", "keras", "tensorflow", "dvc.cli.parser", "dvc.repo", "dvc.repo.reproduce", "dvc.scm")
# What TensorFlow, Keras, their native libraries and Python read when they are imported: a step
# runs on the server only if these are the same as when the server imported them.
IMPORT_TIME_VARIABLES = re.compile(r"^(KERAS_|TF_|XLA_|CUDA|NVIDIA_|OMP_|KMP_|MKL_|ONEDNN_|DNNL_|PYTHON|LD_)")
HEADER = struct.Struct("!Q")  # the request's length, sent with the three standard streams
STOP_GRACE_SECONDS = 5


def import_environment(env: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if IMPORT_TIME_VARIABLES.match(key)}


def refusal(
    request: Mapping[str, Any], imported: Mapping[str, str], set_by_imports: Mapping[str, str]
) -> str | None:
    """Why the server cannot run `request` as a new process would, or None if it can. A variable
    the imports set to the value the step already has (TensorFlow's KMP_*, inherited from a flow
    process that imported it) makes no difference."""
    if request["executable"] != sys.executable:
        return f"the server runs {sys.executable}, the step asks for {request['executable']}"
    wanted = {
        key: value
        for key, value in import_environment(request["env"]).items()
        if set_by_imports.get(key) != value
    }
    differing = sorted(set(wanted.items()) ^ set(imported.items()))
    if differing:
        return f"{', '.join(dict(differing))} differ from the server's, which imported TensorFlow with them"
    return None


PROJECT_PACKAGES = ("tasks", "flows")


def missing_package(error: ImportError, module: str) -> str | None:
    """The package that running `module` found not installed for this interpreter (`dvc` or
    `python` from another environment than the project's), from `error` or the import error that
    caused it (runpy wraps some); None when it is the project's own code or an installed package
    that failed some other way: a bug, whose traceback must show."""
    names = []
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ImportError) and cause.name:
            names.append(cause.name)
        cause = cause.__cause__
    names.append(module)  # runpy reports the module it was asked to run as a bare ImportError
    for name in names:
        package = name.partition(".")[0]
        if package and package not in PROJECT_PACKAGES and importlib.util.find_spec(package) is None:
            return package
    return None


def report_missing_package(package: str) -> int:
    """One line on stderr, as a step reports bad input (tasks.steps), and the exit code."""
    from tasks.steps import ERROR  # only here: the launcher stays light

    print(
        f"{ERROR}{package} is not installed for {sys.executable} (the stage's python); activate the "
        "project's environment first: source .venv/bin/activate (scripts/setup.sh creates it)",
        file=sys.stderr,
        flush=True,
    )
    return 1


# --- The step's side ------------------------------------------------------------------------------


def run_on_server(module: str, args: Sequence[str], env: Mapping[str, str] = os.environ) -> int | None:
    """Run `python -m module *args` on the flow's step server and return its exit code; None when
    there is no server or it cannot run this step (the caller then runs it itself)."""
    folder = env.get(STEP_SERVER)
    if not folder or folder == "off" or not (Path(folder) / SOCKET).exists():
        return None
    request = {
        "module": module,
        "args": list(args),
        "cwd": os.getcwd(),
        "env": dict(env),  # with STEP_SERVER: a `dvc repro` run here runs its stage's step here too
        "executable": sys.executable,
    }
    payload = json.dumps(request).encode()
    try:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(str(Path(folder) / SOCKET))
    except OSError:  # the server has stopped
        return None
    with connection:
        socket.send_fds(connection, [HEADER.pack(len(payload))], [0, 1, 2])
        connection.sendall(payload)
        replies = connection.makefile("r")
        reply = json.loads(replies.readline() or '{"refused": "the server stopped"}')
        if "refused" in reply:
            print(f"step server: {reply['refused']}; running the step in its own process", file=sys.stderr)
            return None
        step = reply["started"]
        reply = json.loads(replies.readline() or "{}")
    if "exit" not in reply:  # its supervisor died: the step must not go on unwatched, nor run twice
        try:
            os.killpg(step, signal.SIGKILL)
        except ProcessLookupError:
            pass
        print("step server: the step's supervisor went away; the step was stopped", file=sys.stderr)
        return 1
    return reply["exit"] if reply["exit"] >= 0 else 128 - reply["exit"]  # killed by a signal: as a shell says


# --- The server's side ------------------------------------------------------------------------------


def receive_request(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    header, fds, _, _ = socket.recv_fds(connection, HEADER.size, 3)
    (length,) = HEADER.unpack(header)
    payload = b""
    while len(payload) < length:
        chunk = connection.recv(length - len(payload))
        if not chunk:
            raise ConnectionError("the step's command went away while sending its request")
        payload += chunk
    return json.loads(payload), fds


def run_step(request: Mapping[str, Any], fds: list[int], set_by_imports: Mapping[str, str]) -> None:
    """In the forked step: become `python -m module *args` in the stage's folder, environment (with
    what the server's imports set in theirs, as a new process's imports would) and streams, run it,
    and exit with its code without the interpreter's teardown."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the server's handler exits 0
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update({**request["env"], **set_by_imports})
    sys.path[0] = request["cwd"]  # what `python -m` puts first
    for name in [name for name in sys.modules if name == "tasks" or name.startswith("tasks.")]:
        del sys.modules[name]  # the stage's own code, from its folder
    sys.argv = [request["module"], *request["args"]]
    code = 0
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        if isinstance(exit.code, int) or exit.code is None:
            code = exit.code or 0
        else:
            print(exit.code, file=sys.stderr)
            code = 1
    except ImportError as error:
        if package := missing_package(error, request["module"]):
            code = report_missing_package(package)
        else:
            traceback.print_exc()
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def supervise(
    connection: socket.socket, imported: Mapping[str, str], set_by_imports: Mapping[str, str]
) -> None:
    """In the forked supervisor: fork the step, then report its exit code, or stop it if the command
    that asked for it is gone (DVC or the flow was stopped)."""
    request, fds = receive_request(connection)
    reply = connection.makefile("w")
    if reason := refusal(request, imported, set_by_imports):
        reply.write(json.dumps({"refused": reason}) + "\n")
        reply.flush()
        return
    step = os.fork()
    if step == 0:
        reply.close()  # the step keeps no end of the connection: the command sees EOF if its supervisor dies
        connection.close()
        os.setsid()  # its own process group: stopped as a whole
        run_step(request, fds, set_by_imports)
    for fd in fds:
        os.close(fd)
    reply.write(json.dumps({"started": step}) + "\n")
    reply.flush()
    step_exited = os.pidfd_open(step)  # readable when the step exits: no polling delay
    while True:
        readable, _, _ = select.select([connection, step_exited], [], [])
        if step_exited in readable:
            _, status = os.waitpid(step, 0)
            reply.write(json.dumps({"exit": os.waitstatus_to_exitcode(status)}) + "\n")
            reply.flush()
            return
        if not connection.recv(1):
            stop_group(step)
            return


def stop_group(leader: int) -> None:
    try:
        os.killpg(leader, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline and os.waitpid(leader, os.WNOHANG) == (0, 0):
            time.sleep(0.1)
        os.killpg(leader, signal.SIGKILL)
    except (ProcessLookupError, ChildProcessError):
        pass


def serve(folder: Path) -> None:
    """Import the heavy modules, then fork a supervisor per connection until the process that started
    the server is gone or it is told to stop (SIGTERM)."""
    before = dict(os.environ)
    for name in PRELOADED:
        importlib.import_module(name)
    # The imports' millions of objects out of the collector's sight: each collection in a step would
    # walk them all (0.1-0.3 s per `dvc repro`) and copy their pages from the server.
    gc.freeze()
    imported = import_environment(before)  # the imports set some themselves (KMP_*)
    set_by_imports = {key: value for key, value in os.environ.items() if key not in before}
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ready = folder / SOCKET
    partial = folder / f".{SOCKET}.partial"
    listener.bind(str(partial))
    listener.listen(16)
    os.replace(partial, ready)  # the socket appears only once the imports are done
    listener.settimeout(1.0)
    starter = os.getppid()
    while os.getppid() == starter:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        if os.fork() == 0:
            listener.close()
            connection.settimeout(None)
            try:
                supervise(connection, imported, set_by_imports)
            finally:
                os._exit(0)
        connection.close()


@contextmanager
def step_server() -> Iterator[str | None]:
    """A step server for the stages run inside the block: started with the environment they get
    (GENDL_STEP_SERVER set in os.environ), or the one already set there, or none when that is "off".
    Yields its folder."""
    from tasks.pipeline import subprocess_env  # the stages' environment; Prefect and DVC are loaded by then

    if os.environ.get(STEP_SERVER):
        yield None if os.environ[STEP_SERVER] == "off" else os.environ[STEP_SERVER]
        return
    with tempfile.TemporaryDirectory(prefix="gendl-steps-") as folder:
        with open(Path(folder) / "server.log", "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "tasks.step_server", folder],
                cwd=Path(__file__).resolve().parent.parent,
                env=subprocess_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        os.environ[STEP_SERVER] = folder
        try:
            yield folder
        finally:
            del os.environ[STEP_SERVER]
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    serve(Path(sys.argv[1]))
