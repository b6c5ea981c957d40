"""The team stack on one machine: PostgreSQL, the MLflow and Prefect servers on it, Prefect
workers on the `gendl` process work pool, and the DVC remote folder.

`scripts/team.sh start|stop|status|env [--dir DIR] ...` runs this with the project's venv (the
README's "Team stack" is the user guide). Standard library only, so `status` and `stop` stay
quick. Everything lives in one folder, DIR:

    team.env            host, ports and number of workers of the first start, reused later
    secrets/            db_password (0600, generated once) and the pgpass file the servers read
    postgres/           the PostgreSQL cluster (owned by the postgres user when run as root)
    mlflow-artifacts/   MLflow's proxied artifact store
    mlflow-schema       the MLflow version that last migrated the MLflow database
    dvc-remote/         the DVC remote
    prefect/            PREFECT_HOME of the Prefect server and of the workers
    workers/<i>/        worker i's working directory
    logs/               one log per service
    run/                pid files, the start/stop lock, PostgreSQL's socket folder (run/pg)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import hmac
import http.client
import importlib.metadata
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

POOL = "gendl"
DB_ROLE = "gendl"
DB_SUPERUSER = "postgres"
DATABASES = ("mlflow", "prefect")
# PostgreSQL listens on loopback only: its clients are the MLflow and Prefect servers.
DB_HOST = "127.0.0.1"
VENV_BIN = Path(sys.prefix) / "bin"
# Seconds each service gets to answer (about 5 s each on an idle 2-core machine; generous, since
# training may be using the cores).
TIMEOUTS = {"postgres": 60, "mlflow": 180, "prefect": 240, "workers": 180}
STOP_TIMEOUT = 20
# What the servers may get from the environment of start and flow runs must not see.
SERVER_ONLY_VARIABLES = (
    "PGPASSFILE", "PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_SERVER_DATABASE_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
)  # fmt: skip
SERVICE_MARKERS = {
    "mlflow": "mlflow server",
    "prefect": "prefect server start",
    "worker": "prefect worker start",
}


class TeamError(Exception):
    """A failure the user can act on; printed as one line."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What `start` was told; saved in DIR/team.env and reused by later commands."""

    host: str = "127.0.0.1"
    pg_port: int = 5433
    mlflow_port: int = 5000
    prefect_port: int = 4200
    workers: int = 1

    def __post_init__(self) -> None:
        ports = (self.pg_port, self.mlflow_port, self.prefect_port)
        for name, port in zip(("--pg-port", "--mlflow-port", "--prefect-port"), ports):
            if not 1 <= port <= 65535:
                raise TeamError(f"{name} must be a TCP port (1..65535), got {port}")
        if len(set(ports)) != 3:
            raise TeamError(f"PostgreSQL, MLflow and Prefect need three different ports, got {ports}")
        if self.workers < 0:
            raise TeamError(f"--workers must be >= 0, got {self.workers}")
        if not self.host or any(character.isspace() for character in self.host):
            raise TeamError(f"--host must be a host name or address, got {self.host!r}")

    @property
    def connect_host(self) -> str:
        """The address local clients use (a wildcard bind is reached through loopback)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    def url(self, port: int) -> str:
        host = self.connect_host
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def mlflow_url(self) -> str:
        return self.url(self.mlflow_port)

    @property
    def prefect_api_url(self) -> str:
        return self.url(self.prefect_port) + "/api"


SETTINGS_KEYS = {
    "host": "GENDL_TEAM_HOST",
    "pg_port": "GENDL_TEAM_PG_PORT",
    "mlflow_port": "GENDL_TEAM_MLFLOW_PORT",
    "prefect_port": "GENDL_TEAM_PREFECT_PORT",
    "workers": "GENDL_TEAM_WORKERS",
}


@dataclasses.dataclass(frozen=True)
class Layout:
    """The paths inside DIR."""

    root: Path

    settings_file = property(lambda self: self.root / "team.env")
    secrets_dir = property(lambda self: self.root / "secrets")
    password_file = property(lambda self: self.root / "secrets" / "db_password")
    pgpass_file = property(lambda self: self.root / "secrets" / "pgpass")
    pg_data = property(lambda self: self.root / "postgres")
    artifacts = property(lambda self: self.root / "mlflow-artifacts")
    mlflow_schema = property(lambda self: self.root / "mlflow-schema")
    dvc_remote = property(lambda self: self.root / "dvc-remote")
    resume = property(lambda self: self.root / "resume")  # training state a retried flow run resumes from
    prefect_home = property(lambda self: self.root / "prefect")
    logs = property(lambda self: self.root / "logs")
    run = property(lambda self: self.root / "run")
    pg_socket_dir = property(lambda self: self.root / "run" / "pg")

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def pid_file(self, service: str) -> Path:
        return self.run / f"{service}.pid"

    def worker_dir(self, index: int) -> Path:
        return self.root / "workers" / str(index)


# ---------------------------------------------------------------- settings and secrets


def read_settings(layout: Layout) -> Settings | None:
    """The settings saved by an earlier start, or None before the first one."""
    if not layout.settings_file.is_file():
        return None
    values = {}
    for line in layout.settings_file.read_text().splitlines():
        key, _, value = line.partition("=")
        if value and not key.startswith("#"):
            values[key.strip()] = value.strip()
    fields: dict[str, str | int] = {}
    for name, key in SETTINGS_KEYS.items():
        if key in values:
            try:
                fields[name] = values[key] if name == "host" else int(values[key])
            except ValueError:
                raise TeamError(
                    f"{layout.settings_file}: {key} must be a number, got {values[key]!r}"
                ) from None
    return Settings(**fields)


def write_settings(layout: Layout, settings: Settings) -> None:
    lines = ["# gendl team stack (scripts/team.sh): the settings start reuses. No secrets here."]
    lines += [f"{key}={getattr(settings, name)}" for name, key in SETTINGS_KEYS.items()]
    layout.settings_file.write_text("\n".join(lines) + "\n")


def _write_private(path: Path, text: str, exclusive: bool = False) -> None:
    """Write a file only its owner can read (created 0600, never readable in between)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    with os.fdopen(os.open(path, flags, 0o600), "w") as handle:
        handle.write(text)
    path.chmod(0o600)


def _secret(layout: Layout, name: str) -> str:
    """DIR/secrets/<name> (0600), generated the first time it is asked for."""
    layout.secrets_dir.mkdir(mode=0o700, exist_ok=True)
    layout.secrets_dir.chmod(0o700)
    path = layout.secrets_dir / name
    if not path.is_file():
        _write_private(path, secrets.token_urlsafe(32) + "\n", exclusive=True)
    path.chmod(0o600)
    return path.read_text().strip()


def ensure_password(layout: Layout) -> str:
    """The database role's password, generated once into DIR/secrets/db_password (0600), and the
    pgpass file through which the servers get it (so it is never on a command line)."""
    password = _secret(layout, layout.password_file.name)
    if not password or ":" in password or "\\" in password:
        raise TeamError(f"{layout.password_file} must hold one password without ':' or '\\'")
    _write_private(layout.pgpass_file, f"*:*:*:{DB_ROLE}:{password}\n")
    return password


def scram_sha256_verifier(password: str, iterations: int = 4096) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802, as libpq computes it).

    Sending this instead of the password keeps the password out of the server and its log (a
    failed statement is logged with its text).
    """
    salt = os.urandom(16)
    salted_password = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted_password, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted_password, b"Server Key", "sha256").digest()

    def encode(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{encode(salt)}${encode(stored_key)}:{encode(server_key)}"


# ---------------------------------------------------------------- processes


def _process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of a process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], int(fields[2])


def _alive(pid: int, marker: str) -> bool:
    """True if pid runs (not a zombie) with marker in its command line (so not a reused pid)."""
    state = _process_state(pid)
    if state is None or state[0] in ("Z", "X"):
        return False
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return marker in command_line.decode(errors="replace")


def _live_processes() -> list[tuple[int, int]]:
    """(pid, process group) of every process that is not a zombie."""
    processes = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            state = _process_state(int(entry.name))
            if state is not None and state[0] not in ("Z", "X"):
                processes.append((int(entry.name), state[1]))
    return processes


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _spawn(command: list[str], env: dict[str, str], cwd: Path, log: Path, pid_file: Path) -> subprocess.Popen:
    """Start a service in a session of its own, so that stop ends it with all its children."""
    with open(log, "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n".encode())
        out.flush()
        process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file.write_text(f"{process.pid}\n")
    return process


def _stop_groups(leaders: list[int], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM services' process groups all at once, then SIGKILL what is left after timeout seconds."""
    for signal_number, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        deadline = time.monotonic() + wait
        living = {group for _, group in _live_processes()} & set(leaders)
        for leader in living:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leader, signal_number)
        while living and time.monotonic() < deadline:
            time.sleep(0.2)
            living &= {group for _, group in _live_processes()}
        if not living:
            return


def _last_error(log: Path) -> str:
    """The log's last line that reads like an error, to end a one-line message with."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return ""
    for line in reversed(lines[-60:]):
        if re.search(r"error|exception|fatal|refused|denied|in use", line, re.IGNORECASE):
            return f" (last error: {line[:300]})"
    return ""


def _port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _check_port_free(host: str, port: int, option: str) -> None:
    """Fail with one line naming the port (and its program, when `ss` can tell) if it is taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            return
        except OSError:
            pass
    holder = ""
    if shutil.which("ss"):
        listing = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
        match = re.search(r'users:\(\("([^"]+)",pid=(\d+)', listing)
        if match:
            holder = f" by {match.group(1)} (pid {match.group(2)})"
    raise TeamError(
        f"port {port} on {host} is already in use{holder}: stop that program or pass {option} PORT"
    )


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(
    url: str, body: object | None = None, timeout: float = 5.0, auth: str | None = None
) -> tuple[int, object]:
    """(status, JSON or text) of a GET, or of a POST of body; status 0 when nothing answers.
    Local services: no proxy. auth: "user:password" for HTTP basic authentication."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return 0, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def _wait_until_ready(
    name: str, ready: Callable[[], bool], process: subprocess.Popen, what: str, log: Path, timeout: float
) -> float:
    """Seconds until ready() held. Fails with one line if the process exits first, or stops it
    and fails if it does not answer within timeout seconds."""
    started = time.monotonic()
    while not ready():
        code = process.poll()
        if code is not None:
            raise TeamError(
                f"{name} exited (code {code}) before answering {what}; see {log}{_last_error(log)}"
            )
        if time.monotonic() - started > timeout:
            _stop_groups([process.pid])
            process.wait()
            raise TeamError(f"{name} did not answer {what} within {timeout:.0f} s (stopped it); see {log}")
        time.sleep(0.5)
    return time.monotonic() - started


def _service_env(layout: Layout) -> dict[str, str]:
    """The environment every service starts with: the venv first on PATH, no telemetry."""
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(VENV_BIN.parent),
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_HOME=str(layout.prefect_home),
    )
    return env


def _prefect_auth() -> str | None:
    """The Prefect server's basic-auth string, when the environment of start sets one."""
    return os.environ.get("PREFECT_SERVER_API_AUTH_STRING") or None


def client_env(layout: Layout, settings: Settings) -> dict[str, str]:
    """What `env` prints: where a client finds the team's services."""
    return {
        "MLFLOW_TRACKING_URI": settings.mlflow_url,
        "PREFECT_API_URL": settings.prefect_api_url,
        "GENDL_DVC_REMOTE": str(layout.dvc_remote),
        "GENDL_TEAM_DIR": str(layout.root),
    }


# ---------------------------------------------------------------- PostgreSQL


def postgres_bindir(layout: Layout) -> Path:
    """Debian's /usr/lib/postgresql/<version>/bin (the cluster's version once it exists), else
    the folder of an initdb on PATH."""
    candidates = sorted(
        (path for path in Path("/usr/lib/postgresql").glob("*/bin") if (path / "initdb").is_file()),
        key=lambda path: [int(number) for number in re.findall(r"\d+", path.parent.name)],
    )
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    if not candidates:
        raise TeamError(
            "PostgreSQL is not installed (no initdb): install it with `apt-get install postgresql` "
            "(Debian/Ubuntu, as root), then run start again"
        )
    version_file = layout.pg_data / "PG_VERSION"
    if not version_file.is_file():
        return candidates[-1]
    wanted = version_file.read_text().strip()
    for bindir in candidates:
        version = subprocess.run([bindir / "initdb", "--version"], capture_output=True, text=True).stdout
        if re.search(rf"\b{re.escape(wanted)}(\.|\b)", version):
            return bindir
    raise TeamError(
        f"the cluster in {layout.pg_data} is PostgreSQL {wanted}, which is not installed: "
        f"`apt-get install postgresql-{wanted}` (or upgrade the cluster with pg_upgrade)"
    )


def _as_cluster_owner(command: list[str | Path]) -> list[str]:
    """initdb, pg_ctl and postgres refuse root: as root, run them as the postgres user."""
    command = [str(part) for part in command]
    return ["runuser", "-u", DB_SUPERUSER, "--", *command] if os.geteuid() == 0 else command


def _run_as_owner(
    layout: Layout, *command: str | Path, stdin: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        _as_cluster_owner(list(command)), input=stdin, capture_output=True, text=True, cwd=layout.root
    )


def _prepare_cluster_dirs(layout: Layout) -> None:
    """Folders the cluster's owner writes; as root, hand them to the postgres user and check that
    it can reach them."""
    layout.pg_data.mkdir(mode=0o700, exist_ok=True)
    layout.pg_socket_dir.mkdir(mode=0o700, exist_ok=True)
    layout.log("postgres").touch(mode=0o600)
    if os.geteuid() != 0:
        return
    try:
        owner = pwd.getpwnam(DB_SUPERUSER)
    except KeyError:
        raise TeamError(
            "as root, PostgreSQL runs as the postgres user, which does not exist: "
            "`apt-get install postgresql` creates it"
        ) from None
    for path in (layout.pg_data, layout.pg_socket_dir, layout.log("postgres")):
        if path.stat().st_uid != owner.pw_uid:
            os.chown(path, owner.pw_uid, owner.pw_gid)
    for folder in (layout.root, layout.run, layout.logs):  # others may pass through, not list
        folder.chmod(folder.stat().st_mode | 0o001)
    if subprocess.run(
        ["runuser", "-u", DB_SUPERUSER, "--", "test", "-w", layout.pg_data], cwd="/"
    ).returncode:
        closed = [parent for parent in reversed(layout.root.parents) if not parent.stat().st_mode & 0o001]
        blocked = closed[0] if closed else layout.root
        raise TeamError(
            f"as root, PostgreSQL runs as the postgres user, which cannot reach {layout.pg_data} "
            f"({blocked} is closed to other users): choose a --dir (or GENDL_TEAM_DIR) such as "
            f"/srv/gendl-team, or `chmod o+x {blocked}`"
        )


def _postgres_pid(layout: Layout) -> int | None:
    pid = _read_pid(layout.pg_data / "postmaster.pid")
    return pid if pid is not None and _alive(pid, "postgres") else None


def _psql(bindir: Path, layout: Layout, settings: Settings, sql: str, database: str = "postgres") -> str:
    """Run SQL (given on stdin) as the superuser, through the cluster's socket."""
    connection = ["-h", layout.pg_socket_dir, "-p", str(settings.pg_port), "-U", DB_SUPERUSER, "-d", database]
    result = _run_as_owner(layout, bindir / "psql", "-XqAt", "-v", "ON_ERROR_STOP=1", *connection, stdin=sql)
    if result.returncode != 0:
        raise TeamError(f"psql on database {database} failed: {result.stderr.strip()[:400]}")
    return result.stdout.strip()


def start_postgres(layout: Layout, settings: Settings, password: str) -> str:
    """Start the cluster (initialising it the first time), then make sure that the role, its
    password, the databases and pg_trgm exist. Returns what was done."""
    bindir = postgres_bindir(layout)
    _prepare_cluster_dirs(layout)
    socket_path = layout.pg_socket_dir / f".s.PGSQL.{settings.pg_port}"
    if len(str(socket_path)) > 100:  # sun_path holds 107 bytes
        raise TeamError(
            f"{layout.root} is too long for PostgreSQL's socket path {socket_path}: choose a shorter --dir"
        )
    log = layout.log("postgres")
    started = time.monotonic()
    done = "already running"
    if _postgres_pid(layout) is None:
        _check_port_free(DB_HOST, settings.pg_port, "--pg-port")
        if not (layout.pg_data / "PG_VERSION").is_file():
            # The superuser connects only through the socket, which only the cluster's owner can
            # open (0700); the role connects over TCP with its password.
            initdb = [bindir / "initdb", "-D", layout.pg_data, "-E", "UTF8", "--no-locale"]
            init = _run_as_owner(
                layout, *initdb, "-U", DB_SUPERUSER, "--auth-local=trust", "--auth-host=scram-sha-256"
            )
            with open(log, "a") as out:
                out.write(init.stdout + init.stderr)
            if init.returncode != 0:
                raise TeamError(f"initdb failed; see {log}{_last_error(log)}")
        options = (
            f"-c listen_addresses={DB_HOST} -c port={settings.pg_port} -c unix_socket_permissions=0700 "
            f"-c unix_socket_directories={shlex.quote(str(layout.pg_socket_dir))}"
        )
        timeout = str(TIMEOUTS["postgres"])
        pg_ctl = [bindir / "pg_ctl", "-D", layout.pg_data, "-l", log, "-o", options]
        result = _run_as_owner(layout, *pg_ctl, "-w", "-t", timeout, "-s", "start")
        if result.returncode != 0 or _postgres_pid(layout) is None:
            raise TeamError(
                f"PostgreSQL did not come up on {DB_HOST}:{settings.pg_port} within {timeout} s; "
                f"see {log}{_last_error(log)}"
            )
        done = "started"
    setup = [
        f"SELECT 'CREATE ROLE {DB_ROLE}' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DB_ROLE}')\\gexec",
        f"ALTER ROLE {DB_ROLE} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
        f"PASSWORD '{scram_sha256_verifier(password)}';",
    ]
    setup += [
        f"SELECT 'CREATE DATABASE {name} OWNER {DB_ROLE}' "
        f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{name}')\\gexec"
        for name in DATABASES
    ]
    _psql(bindir, layout, settings, "\n".join(setup) + "\n")
    # Prefect's migrations create pg_trgm; the superuser does it first, so the role need not.
    _psql(bindir, layout, settings, "CREATE EXTENSION IF NOT EXISTS pg_trgm;\n", database="prefect")
    return f"{done} ({time.monotonic() - started:.1f} s)"


def stop_postgres(layout: Layout) -> bool:
    if _postgres_pid(layout) is None:
        return False
    pg_ctl = postgres_bindir(layout) / "pg_ctl"
    result = _run_as_owner(layout, pg_ctl, "-D", layout.pg_data, "-m", "fast", "-w", "-t", "60", "-s", "stop")
    if result.returncode != 0:
        raise TeamError(f"pg_ctl stop failed: {result.stderr.strip()[:300]}; see {layout.log('postgres')}")
    return True


def _database_url(settings: Settings, database: str, driver: str = "postgresql+psycopg") -> str:
    # No password here: the servers read it from PGPASSFILE.
    return f"{driver}://{DB_ROLE}@{DB_HOST}:{settings.pg_port}/{database}"


# ---------------------------------------------------------------- MLflow and Prefect servers


def _service_pid(layout: Layout, service: str) -> int | None:
    pid = _read_pid(layout.pid_file(service))
    marker = SERVICE_MARKERS["worker" if service.startswith("worker-") else service]
    return pid if pid is not None and _alive(pid, marker) else None


def _upgrade_mlflow_schema_if_behind(layout: Layout, settings: Settings, env: dict[str, str]) -> str:
    """`mlflow db upgrade` when MLflow's version changed since its database was last migrated
    (MLflow refuses to start on an older schema)."""
    version = importlib.metadata.version("mlflow")
    recorded = layout.mlflow_schema.read_text().strip() if layout.mlflow_schema.is_file() else None
    if recorded == version:
        return ""
    query = "SELECT to_regclass('alembic_version') IS NOT NULL;"
    if _psql(postgres_bindir(layout), layout, settings, query, "mlflow") != "t":
        return ""  # a new database: the server creates the current schema
    log = layout.log("mlflow")
    with open(log, "ab") as out:
        out.write(
            f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} mlflow db upgrade (from mlflow {recorded})\n".encode()
        )
        out.flush()
        command = [str(VENV_BIN / "mlflow"), "db", "upgrade", _database_url(settings, "mlflow")]
        result = subprocess.run(
            command, env=env, cwd=layout.root, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    if result.returncode != 0:
        raise TeamError(f"`mlflow db upgrade` failed; see {log}{_last_error(log)}")
    return f"; schema upgraded by `mlflow db upgrade` (last migrated by mlflow {recorded or 'unknown'})"


def start_mlflow(layout: Layout, settings: Settings) -> str:
    """The tracking server on PostgreSQL, serving DIR/mlflow-artifacts itself: clients upload and
    download artifacts through it. No --default-artifact-root, so new experiments get
    mlflow-artifacts:/ locations."""
    if _service_pid(layout, "mlflow") is not None:
        return "already running"
    _check_port_free(settings.host, settings.mlflow_port, "--mlflow-port")
    env = _service_env(layout)
    # No job-runner processes (MLflow's GenAI jobs): this machine has 2 cores.
    env.update(PGPASSFILE=str(layout.pgpass_file), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    # The key of its CSRF tokens (the basic-auth app needs one), kept across restarts.
    env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", _secret(layout, "mlflow_flask_secret_key"))
    upgraded = _upgrade_mlflow_schema_if_behind(layout, settings, env)
    command = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", _database_url(settings, "mlflow")]
    command += ["--artifacts-destination", str(layout.artifacts), "--serve-artifacts"]
    command += ["--host", settings.host, "--port", str(settings.mlflow_port), "--workers", "1"]
    if env.get("MLFLOW_AUTH_ADMIN_PASSWORD") or env.get("MLFLOW_AUTH_CONFIG_PATH"):
        # MLflow's basic-auth app; with its default config its users live in DIR/basic_auth.db.
        command += ["--app-name", "basic-auth"]
    log = layout.log("mlflow")
    process = _spawn(command, env, layout.root, log, layout.pid_file("mlflow"))
    health = f"{settings.mlflow_url}/health"
    seconds = _wait_until_ready(
        "MLflow", lambda: _http(health, timeout=2)[0] == 200, process, health, log, TIMEOUTS["mlflow"]
    )
    layout.mlflow_schema.write_text(importlib.metadata.version("mlflow") + "\n")
    return f"started ({seconds:.1f} s){upgraded}"


def start_prefect(layout: Layout, settings: Settings) -> str:
    """The Prefect server (API, UI and its background services) on PostgreSQL."""
    if _service_pid(layout, "prefect") is not None:
        return "already running"
    _check_port_free(settings.host, settings.prefect_port, "--prefect-port")
    env = _service_env(layout)
    env.update(
        PGPASSFILE=str(layout.pgpass_file),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=_database_url(settings, "prefect", "postgresql+asyncpg"),
        PREFECT_API_URL=settings.prefect_api_url,
    )
    command = [str(VENV_BIN / "prefect"), "server", "start", "--host", settings.host]
    command += ["--port", str(settings.prefect_port)]
    log = layout.log("prefect")
    process = _spawn(command, env, layout.root, log, layout.pid_file("prefect"))
    health = f"{settings.prefect_api_url}/health"
    seconds = _wait_until_ready(
        "the Prefect server",
        lambda: _http(health, timeout=2) == (200, True),
        process,
        health,
        log,
        TIMEOUTS["prefect"],
    )
    return f"started ({seconds:.1f} s)"


def ensure_work_pool(layout: Layout, settings: Settings) -> str:
    """The `gendl` process work pool, made by Prefect's CLI (the process worker's default job
    template) the first time."""
    if _http(f"{settings.prefect_api_url}/work_pools/{POOL}", auth=_prefect_auth())[0] == 200:
        return "exists"
    env = worker_env(layout, settings)
    command = [str(VENV_BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"]
    result = subprocess.run(
        command, env=env, cwd=layout.root, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines() or [f"exit code {result.returncode}"]
        raise TeamError(f"could not create the work pool {POOL}: {output[-1]}")
    return "created (type process)"


# A flow run whose worker or machine dies stays Running: nothing is left to report its end. Prefect's
# answer ("detect zombie flows"): flow runs send a heartbeat event every HEARTBEAT_SECONDS and this
# automation marks one Crashed when no heartbeat (nor a final state) follows within
# ZOMBIE_AFTER_SECONDS. A sweep (flows/sweep.py) then submits the point again.
HEARTBEAT_SECONDS = 30  # Prefect's minimum for PREFECT_FLOWS_HEARTBEAT_FREQUENCY
ZOMBIE_AFTER_SECONDS = 90
ZOMBIE_AUTOMATION = "gendl: crash flow runs that stopped sending heartbeats"


def zombie_automation() -> dict:
    """The automation as Prefect's API takes it (prefect.automations.Automation, as JSON)."""
    final = ["Completed", "Failed", "Cancelled", "Crashed"]
    return {
        "name": ZOMBIE_AUTOMATION,
        "description": f"No heartbeat for {ZOMBIE_AFTER_SECONDS} s: the flow run's process is gone (scripts/team.py)",
        "enabled": True,
        "trigger": {
            "type": "event",
            "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
            "after": ["prefect.flow-run.heartbeat"],
            "expect": ["prefect.flow-run.heartbeat", *(f"prefect.flow-run.{state}" for state in final)],
            "for_each": ["prefect.resource.id"],
            "posture": "Proactive",
            "threshold": 1,
            "within": ZOMBIE_AFTER_SECONDS,
        },
        "actions": [
            {
                "type": "change-flow-run-state",
                "state": "CRASHED",
                "message": f"no heartbeat for {ZOMBIE_AFTER_SECONDS} s: its worker or machine died",
            }
        ],
    }


def ensure_zombie_automation(settings: Settings) -> str:
    api, auth = settings.prefect_api_url, _prefect_auth()
    status, automations = _http(f"{api}/automations/filter", body={}, auth=auth)
    if status == 200 and any(automation.get("name") == ZOMBIE_AUTOMATION for automation in automations):
        return "exists"
    status, answer = _http(f"{api}/automations/", body=zombie_automation(), auth=auth)
    if status not in (200, 201):
        raise TeamError(
            f"could not create the Prefect automation {ZOMBIE_AUTOMATION!r}: HTTP {status} {answer}"
        )
    return "created"


# ---------------------------------------------------------------- workers


def _worker_name(index: int) -> str:
    return f"{POOL}-{socket.gethostname()}-{index}"


def _worker_indices(layout: Layout) -> list[int]:
    """The workers that have a pid file, running or not."""
    suffixes = (path.stem.removeprefix("worker-") for path in layout.run.glob("worker-*.pid"))
    return sorted(int(suffix) for suffix in suffixes if suffix.isdigit())


def worker_env(layout: Layout, settings: Settings) -> dict[str, str]:
    """What a worker, and so each flow run it starts, sees: the client settings `env` prints, the
    venv first on PATH, and no automatic `uv run` installs (Prefect >= 3.8.3)."""
    env = _service_env(layout)
    for name in SERVER_ONLY_VARIABLES:
        env.pop(name, None)
    env.update(client_env(layout, settings), PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES="false")
    env["GENDL_RESUME_DIR"] = str(layout.resume)  # shared by the workers: a retry elsewhere resumes
    # A triggered run or a sweep's next point waits for the next poll: Prefect's default is 10 s.
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "5")
    env.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_SECONDS))  # see ZOMBIE_AUTOMATION
    if _prefect_auth():
        env["PREFECT_API_AUTH_STRING"] = env.pop("PREFECT_SERVER_API_AUTH_STRING")
    return env


def online_workers(settings: Settings, since: float = 0.0) -> set[str]:
    """The pool's workers that are online with a heartbeat at or after `since` (epoch seconds:
    the record of a restarted worker stays online for a while from its last life)."""
    url = f"{settings.prefect_api_url}/work_pools/{POOL}/workers/filter"
    status, workers = _http(url, body={"limit": 200}, auth=_prefect_auth())
    if status != 200 or not isinstance(workers, list):
        return set()
    names = set()
    for worker in workers:
        heartbeat = worker.get("last_heartbeat_time")
        if worker.get("status") == "ONLINE" and heartbeat:
            if datetime.datetime.fromisoformat(heartbeat).timestamp() >= since:
                names.add(worker["name"])
    return names


def reconcile_workers(layout: Layout, settings: Settings) -> str:
    """Run exactly workers 1..N: start the missing ones (cwd DIR/workers/<i>), stop the extra."""
    stopped = []
    for index in _worker_indices(layout):
        if index > settings.workers:
            pid = _service_pid(layout, f"worker-{index}")
            if pid is not None:
                _stop_groups([pid])
                stopped.append(str(index))
            layout.pid_file(f"worker-{index}").unlink(missing_ok=True)
    env = worker_env(layout, settings)
    spawned_at = time.time() - 1.0
    started = {}
    for index in range(1, settings.workers + 1):
        if _service_pid(layout, f"worker-{index}") is not None:
            continue
        layout.worker_dir(index).mkdir(parents=True, exist_ok=True)
        command = [str(VENV_BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"]
        # One flow run at a time: the next scheduled run (a sweep's next point) goes to a free worker.
        command += ["--name", _worker_name(index), "--install-policy", "never", "--limit", "1"]
        log, pid_file = layout.log(f"worker-{index}"), layout.pid_file(f"worker-{index}")
        worker = {**env, "GENDL_WORKER_NAME": _worker_name(index)}
        started[index] = _spawn(command, worker, layout.worker_dir(index), log, pid_file)
    parts = []
    began = time.monotonic()
    for index, process in started.items():
        name = _worker_name(index)
        _wait_until_ready(
            f"worker {index}",
            lambda: name in online_workers(settings, spawned_at),
            process,
            f"as online in work pool {POOL}",
            layout.log(f"worker-{index}"),
            max(1.0, TIMEOUTS["workers"] - (time.monotonic() - began)),
        )
    if started:
        parts.append(f"started {len(started)} ({time.monotonic() - began:.1f} s)")
    if stopped:
        parts.append(f"stopped {', '.join(stopped)} (beyond --workers {settings.workers})")
    return "; ".join(parts) or "already running"


# ---------------------------------------------------------------- commands


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    """One start or stop at a time per DIR."""
    layout.run.mkdir(parents=True, exist_ok=True)
    with open(layout.run / "team.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TeamError(
                f"another `scripts/team.sh start` or `stop` is at work on {layout.root}"
            ) from None
        yield


def service_lines(layout: Layout, settings: Settings) -> tuple[list[str], bool]:
    """One line per service, and whether all of them run."""
    lines = []
    all_running = True

    def add(name: str, pid: int | None, answers: bool, where: str) -> None:
        nonlocal all_running
        if pid is not None and answers:
            state = f"running  pid {pid:<7}"
        elif pid is not None:
            state = f"starting pid {pid:<7} (not answering yet)"
        else:
            state = f"{'stopped':<20}"
        all_running = all_running and pid is not None and answers
        lines.append(f"{name:<11} {state} {where}")

    pid = _postgres_pid(layout)
    where = f"{DB_HOST}:{settings.pg_port} (databases {', '.join(DATABASES)}; data in {layout.pg_data})"
    add("postgres", pid, pid is not None and _port_answers(DB_HOST, settings.pg_port), where)
    pid = _service_pid(layout, "mlflow")
    answers = pid is not None and _port_answers(settings.connect_host, settings.mlflow_port)
    add("mlflow", pid, answers, f"{settings.mlflow_url} (artifacts in {layout.artifacts})")
    pid = _service_pid(layout, "prefect")
    answers = pid is not None and _port_answers(settings.connect_host, settings.prefect_port)
    add("prefect", pid, answers, f"{settings.prefect_api_url} (work pool {POOL})")
    for index in sorted(set(range(1, settings.workers + 1)) | set(_worker_indices(layout))):
        where = f"{_worker_name(index)} in pool {POOL}, cwd {layout.worker_dir(index)}"
        add(f"worker-{index}", _service_pid(layout, f"worker-{index}"), True, where)
    remote_ready = layout.dvc_remote.is_dir()
    all_running = all_running and remote_ready
    lines.append(f"{'dvc-remote':<11} {'ready' if remote_ready else 'missing':<20} {layout.dvc_remote}")
    return lines, all_running


def command_start(layout: Layout, requested: dict[str, str | int]) -> int:
    dataclasses.replace(read_settings(layout) or Settings(), **requested)  # bad options fail before any mkdir
    layout.root.mkdir(parents=True, exist_ok=True)
    with _locked(layout):
        saved = read_settings(layout)
        settings = dataclasses.replace(saved or Settings(), **requested)
        addresses = ("host", "pg_port", "mlflow_port", "prefect_port")
        if saved and any(getattr(saved, name) != getattr(settings, name) for name in addresses):
            running = [name for name in ("mlflow", "prefect") if _service_pid(layout, name) is not None]
            running += ["postgres"] if _postgres_pid(layout) is not None else []
            if running:
                raise TeamError(
                    f"{', '.join(running)} already run with the host and ports in {layout.settings_file}: "
                    "`scripts/team.sh stop` first to change them"
                )
        _, all_running = service_lines(layout, settings)
        write_settings(layout, settings)
        if all_running and len(_worker_indices(layout)) == settings.workers:
            print(f"the team stack in {layout.root} is already running")
            return command_status(layout)
        postgres_bindir(layout)  # fail before making anything when PostgreSQL is missing
        for folder in (
            layout.artifacts,
            layout.dvc_remote,
            layout.resume,
            layout.prefect_home,
            layout.logs,
            layout.run,
        ):
            folder.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        password = ensure_password(layout)
        print(f"postgres:   {start_postgres(layout, settings, password)}", flush=True)
        print(f"mlflow:     {start_mlflow(layout, settings)}", flush=True)
        print(f"prefect:    {start_prefect(layout, settings)}", flush=True)
        print(f"work pool:  {POOL} {ensure_work_pool(layout, settings)}", flush=True)
        print(f"automation: crash detection {ensure_zombie_automation(settings)}", flush=True)
        print(f"workers:    {reconcile_workers(layout, settings)}", flush=True)
        print(f"team stack up in {time.monotonic() - began:.1f} s; logs in {layout.logs}\n")
    code = command_status(layout)
    print(f'\nclients: eval "$(scripts/team.sh env --dir {shlex.quote(str(layout.root))})"')
    return code


def command_stop(layout: Layout) -> int:
    if not layout.root.is_dir():
        print(f"nothing to stop: {layout.root} does not exist")
        return 0
    with _locked(layout):
        stopped = []
        # The workers first (they talk to Prefect), then the servers, then their database; each
        # stage's services stop together.
        for services in ([f"worker-{index}" for index in _worker_indices(layout)], ["prefect", "mlflow"]):
            began = time.monotonic()
            pids = {
                service: pid for service in services if (pid := _service_pid(layout, service)) is not None
            }
            _stop_groups(list(pids.values()))
            for service in services:
                layout.pid_file(service).unlink(missing_ok=True)
            if pids:
                stopped.append(f"{', '.join(pids)} ({time.monotonic() - began:.1f} s)")
        began = time.monotonic()
        if stop_postgres(layout):
            stopped.append(f"postgres ({time.monotonic() - began:.1f} s)")
    print(f"stopped {', '.join(stopped)}; data kept in {layout.root}" if stopped else "nothing was running")
    return 0


def command_status(layout: Layout) -> int:
    settings = read_settings(layout)
    if settings is None:
        print(f"no team stack in {layout.root} (no team.env): `scripts/team.sh start` makes one")
        return 1
    lines, all_running = service_lines(layout, settings)
    print("\n".join(lines))
    return 0 if all_running else 1


def command_env(layout: Layout) -> int:
    settings = read_settings(layout)
    if settings is None:
        raise TeamError(f"no team stack in {layout.root} (no team.env): run `scripts/team.sh start` first")
    for name, value in client_env(layout, settings).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/team.sh",
        description="The gendl team stack on this machine: PostgreSQL, the MLflow and Prefect servers, "
        "Prefect workers and the DVC remote folder. `deploy` runs scripts/deploy.sh.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {
        "start": "start what is not running (the settings are remembered in DIR/team.env)",
        "stop": "stop the workers, Prefect, MLflow and PostgreSQL (data kept)",
        "status": "one line per service; exit 0 only if all run",
        "env": 'print export lines for clients: eval "$(scripts/team.sh env)"',
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--dir", type=Path, help="the stack's folder (default $GENDL_TEAM_DIR or ~/.gendl-team)"
        )
        if name == "start":
            sub.add_argument("--workers", type=int, help="number of Prefect workers (default 1)")
            sub.add_argument("--host", help="address the MLflow and Prefect servers bind (default 127.0.0.1)")
            sub.add_argument("--pg-port", type=int, help="PostgreSQL's port on 127.0.0.1 (default 5433)")
            sub.add_argument("--mlflow-port", type=int, help="the MLflow server's port (default 5000)")
            sub.add_argument("--prefect-port", type=int, help="the Prefect server's port (default 4200)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    root = args.dir or Path(os.environ.get("GENDL_TEAM_DIR") or Path.home() / ".gendl-team")
    layout = Layout(root.expanduser().absolute())
    try:
        if args.command == "start":
            names = ("host", "pg_port", "mlflow_port", "prefect_port", "workers")
            return command_start(
                layout, {name: getattr(args, name) for name in names if getattr(args, name) is not None}
            )
        if args.command == "stop":
            return command_stop(layout)
        if args.command == "status":
            return command_status(layout)
        return command_env(layout)
    except TeamError as error:
        print(f"team.sh: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
