"""`mlflow models serve` in a test: started on a free 127.0.0.1 port in its own process group,
asked over HTTP, stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def model_server(model_uri: str, log_path: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`mlflow models serve` on a free 127.0.0.1 port, in its own process group, stopped on exit.

    The port is free when chosen but may be taken (e.g. as a client's local port) before the
    server binds it, once it has loaded the model: then it starts again on another port.
    """
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    # It starts `uvicorn` by name: the venv's bin must be on PATH, as when the venv is activated.
    env = dict(env or os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for _ in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [*command, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            if wait_until_up(server, url, log_path):
                yield url
                return
        finally:
            stop_group(server)
    pytest.fail(
        f"three ports in a row were taken before the server bound them:\n{log_path.read_text()[-2000:]}"
    )


def wait_until_up(server: subprocess.Popen, url: str, log_path: Path, timeout: float = 120) -> bool:
    """True once the server answers /ping; False if it exited because its port was taken."""
    deadline = time.monotonic() + timeout
    while server.poll() is None:
        assert time.monotonic() < deadline, f"server not up in {timeout} s:\n{log_path.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    log = log_path.read_text(errors="replace")
    assert "address already in use" in log.lower(), f"server exited:\n{log[-3000:]}"
    return False


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group (mlflow and the uvicorn it starts), then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def invoke(url: str, records: list[dict]) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps({"dataframe_records": records}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
