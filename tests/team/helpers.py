"""What the team-stack tests share: scripts/team.sh run as a user would, in a clean environment,
and free ports on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

TEAM_SH = REPO_ROOT / "scripts" / "team.sh"
VENV_BIN = Path(sys.executable).parent


def clean_env() -> dict[str, str]:
    """This environment without MLflow, Prefect or team settings (the stack and its clients must
    not be pointed anywhere else), the venv first on PATH."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("MLFLOW_", "PREFECT_", "GENDL_"))}
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    return env


def team(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(TEAM_SH), *args], capture_output=True, text=True, timeout=timeout, env=clean_env(), cwd=REPO_ROOT
    )


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports
