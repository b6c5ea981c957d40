"""Test-wide setup: offline, quiet TensorFlow, and a writable copy of the Keras cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _source_keras_cache() -> Path | None:
    for candidate in (os.environ.get("KERAS_HOME"), REPO_ROOT.parent / "shared" / "keras-home"):
        if candidate and (Path(candidate) / "datasets").is_dir():
            return Path(candidate)
    return None


# Keras reads KERAS_HOME when it is first imported, so this must happen before any test module
# imports keras. Tests get a writable copy: the shared cache may be read-only.
_SOURCE_CACHE = _source_keras_cache()
_KERAS_HOME = Path(tempfile.mkdtemp(prefix="gendl-keras-home-"))
if _SOURCE_CACHE:
    shutil.copytree(_SOURCE_CACHE, _KERAS_HOME, dirs_exist_ok=True)
    for path in _KERAS_HOME.rglob("*"):
        path.chmod(path.stat().st_mode | 0o200)
os.environ["KERAS_HOME"] = str(_KERAS_HOME)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(autouse=True)
def float32_policy_for_each_test():
    """Every test starts under Keras's float32 policy: `runtime.dtype_policy: auto` is mixed_bfloat16
    on a CPU with bfloat16 instructions, and a test that configures it must not change the models
    the tests after it build. Keras is imported only if a test has already loaded it."""
    yield
    import sys

    if "keras" in sys.modules:
        import keras  # waits for an import still under way in a flow's background thread

        keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def keras_home() -> Path:
    """The writable Keras cache copy tests run against (may be empty without a source cache)."""
    return _KERAS_HOME


@pytest.fixture(scope="session")
def nietzsche_path() -> Path:
    """The real corpus from the Keras cache copy; skips when no cache was available."""
    path = _KERAS_HOME / "datasets" / "nietzsche.txt"
    if not path.is_file():
        pytest.skip("no Keras cache with datasets/nietzsche.txt (set KERAS_HOME)")
    return path


TINY_TEXT = (
    "the will to power is the will to life. what is good? all that heightens the feeling of "
    "power. what is bad? all that proceeds from weakness. what is happiness? the feeling that "
    "power increases, that a resistance is overcome.\n"
)


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    """A small corpus file (about 3,000 characters, 30-odd distinct characters)."""
    path = tmp_path / "tiny_corpus.txt"
    path.write_text(TINY_TEXT * 14, encoding="utf-8")
    return path


# scripts/test.sh runs the suite on two pytest-xdist workers, a group of tests at a time, the
# groups in this order: all of tests/unit, all of tests/team (one team stack), then each tests/flows
# module (its module fixtures run once). tests/unit comes first in its worker: its tests build seeded
# models in the pytest process, and the threads of an in-process Prefect server or client (tests/flows,
# tests/team) draw from Python's global `random`, which Keras's initializers use.
GROUPS_IN_ORDER = ("unit", "team", "flows")


def test_group(nodeid: str) -> str:
    """ "tests/unit/test_vae.py::test_x" -> "unit"; a tests/flows test's group is its module."""
    folder = nodeid.split("/")[1]
    return nodeid.split("::")[0] if folder == "flows" else folder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: GROUPS_IN_ORDER.index(item.nodeid.split("/")[1]))


def pytest_xdist_make_scheduler(config, log):
    """xdist's scope scheduling with test_group as the scope, in collection order (xdist's
    `--dist loadgroup` marks do not reach pytest 9's node ids)."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return test_group(nodeid)

    config.option.loadscopereorder = False
    return GroupScheduling(config, log)


@pytest.fixture
def local_origin():
    """A web server on 127.0.0.1 standing in for a download's origin: `serve(path, body, status=200)`
    publishes a file and returns its URL."""
    import http.server
    import threading

    files: dict[str, tuple[int, bytes]] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status, body = files.get(self.path, (404, b"not found"))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def serve(path: str, body: bytes, status: int = 200) -> str:
        files[f"/{path}"] = (status, body)
        return f"http://127.0.0.1:{server.server_address[1]}/{path}"

    yield serve
    server.shutdown()
    server.server_close()
