"""Verified, atomic downloads through the Keras cache, and the MLflow helpers on a temporary
SQLite store."""

from __future__ import annotations

import errno
import hashlib
import math
import socket
import time
import urllib.error
import uuid
from pathlib import Path

import mlflow
import pytest

from tasks import storage, tracking
from tasks.params import load_params

REPO_ROOT = Path(__file__).resolve().parents[2]
CLOSED_PORT_URL = "http://127.0.0.1:9"  # the discard port: nothing listens, connecting fails at once


def sha256_hex(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "source" / "nietzsche corpus.txt"  # a space: percent-encoded in its file:// URL
    path.parent.mkdir()
    path.write_bytes(b"the will to power\nwhat is good?\n" * 50)
    return path


def uncached_name() -> str:
    return f"not-cached-{uuid.uuid4().hex[:8]}.txt"


# --- storage.fetch -----------------------------------------------------------------------------


def test_fetch_copies_a_file_url_to_the_destination(tmp_path, source):
    destination = tmp_path / "repo" / "data" / "corpus.txt"
    checksum = sha256_hex(source.read_bytes())

    result = storage.fetch(source.as_uri(), destination, checksum)

    assert result == destination
    assert destination.read_bytes() == source.read_bytes()
    assert storage.sha256_of(destination) == checksum
    assert sorted(path.name for path in destination.parent.iterdir()) == ["corpus.txt"]


def test_fetch_copies_a_plain_local_path(tmp_path, source):
    destination = tmp_path / "corpus.txt"

    storage.fetch(str(source), destination)

    assert destination.read_bytes() == source.read_bytes()


def test_fetch_with_a_wrong_checksum_writes_nothing(tmp_path, source):
    destination = tmp_path / "repo" / "corpus.txt"
    wrong = sha256_hex(b"something else")

    with pytest.raises(storage.DownloadError, match=f"expected {wrong}") as error:
        storage.fetch(source.as_uri(), destination, wrong)

    assert sha256_hex(source.read_bytes()) in str(error.value)
    assert not error.value.retryable
    assert not destination.exists()
    assert not destination.parent.exists() or not any(destination.parent.iterdir())


def test_fetch_of_a_missing_local_file_fails(tmp_path):
    url = (tmp_path / "missing.txt").as_uri()

    with pytest.raises(storage.DownloadError, match="no such file") as error:
        storage.fetch(url, tmp_path / "corpus.txt")
    assert url in str(error.value)


def test_fetch_from_an_unreachable_url_fails_fast_naming_the_keras_cache(tmp_path, keras_home):
    name = uncached_name()
    url = f"{CLOSED_PORT_URL}/{name}"
    started = time.perf_counter()

    with pytest.raises(storage.DownloadError) as error:
        storage.fetch(url, tmp_path / "corpus.txt")

    assert time.perf_counter() - started < 10
    message = str(error.value)
    assert url in message and "KERAS_HOME" in message
    assert str(keras_home / "datasets" / name) in message
    assert error.value.retryable
    assert not (tmp_path / "corpus.txt").exists()
    assert not (keras_home / "datasets" / name).exists(), "a partial download was left in the cache"


def test_a_download_from_the_origin_lands_verified_in_the_keras_cache_and_is_used_offline_after(
    tmp_path, monkeypatch, local_origin
):
    keras_home = tmp_path / "keras-home"
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    content = b"the will to power\n" * 100
    url = local_origin("data/corpus.txt", content)

    storage.fetch(url, tmp_path / "first.txt", sha256_hex(content))
    local_origin("data/corpus.txt", b"the origin is gone", status=404)
    storage.fetch(url, tmp_path / "second.txt", sha256_hex(content))

    assert (keras_home / "datasets" / "corpus.txt").read_bytes() == content
    assert (tmp_path / "first.txt").read_bytes() == (tmp_path / "second.txt").read_bytes() == content


@pytest.mark.parametrize(
    ("status", "retryable"), [(404, False), (403, False), (429, True), (503, True), (500, True)]
)
def test_an_http_error_is_retried_only_when_the_server_may_answer_later(
    tmp_path, monkeypatch, local_origin, status, retryable
):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    url = local_origin(f"data/{uncached_name()}", b"an error page", status=status)

    with pytest.raises(storage.DownloadError) as error:
        storage.fetch(url, tmp_path / "corpus.txt")

    assert url in str(error.value) and str(status) in str(error.value)
    assert error.value.retryable is retryable
    assert not (tmp_path / "corpus.txt").exists()
    assert not list((tmp_path / "keras-home" / "datasets").glob("*")), "a partial download was kept"


def test_without_a_network_a_download_fails_at_once_and_is_not_retried(tmp_path, monkeypatch):
    """A host name that cannot resolve is what a machine without a network sees (`.invalid` never
    resolves, RFC 6761): trying again cannot help, so the flow does not retry the stage."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    url = f"https://gendl-test.invalid/{uncached_name()}"
    started = time.perf_counter()

    with pytest.raises(storage.DownloadError) as error:
        storage.fetch(url, tmp_path / "corpus.txt")

    assert time.perf_counter() - started < 10
    assert url in str(error.value) and "KERAS_HOME" in str(error.value)
    assert not error.value.retryable


def url_error(reason: BaseException) -> Exception:
    """What keras.utils.get_file raises: a bare Exception raised while handling the URLError."""
    try:
        raise urllib.error.URLError(reason)
    except urllib.error.URLError as error:
        try:
            raise Exception(f"URL fetch failure on x: None -- {error.reason}")
        except Exception as raised:
            return raised


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (url_error(socket.gaierror(socket.EAI_NONAME, "Name or service not known")), False),
        (url_error(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")), True),
        (url_error(OSError(errno.ENETUNREACH, "Network is unreachable")), False),
        (url_error(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")), True),
        (url_error(TimeoutError("timed out")), True),
        (Exception("no cause at all"), True),
    ],
    ids=["no-such-host", "dns-busy", "network-unreachable", "refused", "timeout", "unknown"],
)
def test_offline_failures_are_not_transient_and_the_others_are(error, transient):
    assert storage.is_transient(error) is transient


def test_failed_fetch_leaves_an_existing_destination_intact(tmp_path, source):
    destination = tmp_path / "corpus.txt"
    destination.write_text("the previous corpus")

    with pytest.raises(storage.DownloadError):
        storage.fetch(f"{CLOSED_PORT_URL}/{uncached_name()}", destination)
    with pytest.raises(storage.DownloadError):
        storage.fetch(source.as_uri(), destination, sha256_hex(b"something else"))

    assert destination.read_text() == "the previous corpus"
    assert [path.name for path in tmp_path.iterdir() if path.is_file()] == ["corpus.txt"]


def test_fetch_offline_uses_the_verified_keras_cache(tmp_path, nietzsche_path):
    checksum = load_params(REPO_ROOT)["text"]["data"]["sha256"]
    assert storage.sha256_of(nietzsche_path) == checksum, "the Keras cache does not hold the book's corpus"
    destination = tmp_path / "corpus.txt"

    storage.fetch(f"{CLOSED_PORT_URL}/nietzsche.txt", destination, checksum)

    assert destination.read_bytes() == nietzsche_path.read_bytes()


def test_offline_checksum_mismatch_keeps_the_cached_copy(tmp_path, keras_home):
    """A wrong sha256 in params.yaml must not delete the only copy of the data from the cache."""
    name = uncached_name()
    cached = keras_home / "datasets" / name
    cached.write_text("a corpus copied into the cache by hand")
    wrong = sha256_hex(b"something else")

    with pytest.raises(storage.DownloadError):
        storage.fetch(f"{CLOSED_PORT_URL}/{name}", tmp_path / "corpus.txt", wrong)

    assert cached.is_file(), "the cached copy was deleted"
    cached.unlink(missing_ok=True)


# --- Tracking URI ---------------------------------------------------------------------------


@pytest.fixture
def no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path}"


def test_default_tracking_uri_is_an_absolute_sqlite_store_under_the_root(
    tmp_path, monkeypatch, no_tracking_env
):
    monkeypatch.chdir(tmp_path)

    uri = tracking.resolve_tracking_uri("", Path("repo"))

    assert uri == sqlite_uri(tmp_path.resolve() / "repo" / "mlflow" / "mlflow.db")


def test_relative_sqlite_path_is_made_absolute_against_the_root(tmp_path, no_tracking_env):
    assert tracking.resolve_tracking_uri("sqlite:///store/runs.db", tmp_path) == sqlite_uri(
        tmp_path.resolve() / "store" / "runs.db"
    )


def test_absolute_sqlite_path_is_kept(tmp_path, no_tracking_env):
    uri = sqlite_uri(tmp_path.resolve() / "elsewhere" / "runs.db")

    assert tracking.resolve_tracking_uri(uri, tmp_path / "repo") == uri


@pytest.mark.parametrize("configured", ["mlruns", "/tmp/mlruns", "file:///tmp/mlruns", "file:mlruns"])
def test_file_stores_are_rejected(tmp_path, no_tracking_env, configured):
    with pytest.raises(ValueError, match="sqlite") as error:
        tracking.resolve_tracking_uri(configured, tmp_path)
    assert configured in str(error.value)


def test_environment_tracking_uri_wins(tmp_path, monkeypatch, no_tracking_env):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")

    assert tracking.resolve_tracking_uri("sqlite:///store/runs.db", tmp_path) == "http://127.0.0.1:5000"


def test_relative_sqlite_path_from_the_environment_is_made_absolute(tmp_path, monkeypatch, no_tracking_env):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")

    assert tracking.resolve_tracking_uri("", tmp_path) == sqlite_uri(tmp_path.resolve() / "env.db")


@pytest.mark.parametrize("configured", ["http://127.0.0.1:5000", "https://mlflow.example.org/api"])
def test_server_uris_pass_through(tmp_path, no_tracking_env, configured):
    assert tracking.resolve_tracking_uri(configured, tmp_path) == configured


def test_experiment_name(monkeypatch, no_tracking_env):
    assert tracking.experiment_name("gendl", "text") == "gendl-text"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mine")
    assert tracking.experiment_name("gendl", "text") == "mine"


def test_flatten():
    params = {"text": {"train": {"epochs": 3, "temperatures": [0.2, 0.5]}, "sample": {}}, "seed": 1}

    assert tracking.flatten(params) == {
        "text.train.epochs": "3",
        "text.train.temperatures": "[0.2, 0.5]",
        "seed": "1",
    }


# --- A temporary SQLite store ------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """The folder of a fresh SQLite store; MLflow's global URI and env are reset afterwards."""
    folder = tmp_path_factory.mktemp("tracking") / "store"
    with pytest.MonkeyPatch.context() as patch:
        # mlflow.set_tracking_uri also sets this variable: setting it here restores it after.
        patch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(folder / "mlflow.db"))
        yield folder
        mlflow.set_tracking_uri(None)  # forget the URI setup_experiment set globally


@pytest.fixture
def run_id(store) -> str:
    experiment_id = tracking.setup_experiment(sqlite_uri(store / "mlflow.db"), f"test-{uuid.uuid4().hex[:8]}")
    return mlflow.MlflowClient().create_run(experiment_id).info.run_id


def test_setup_experiment_puts_artifacts_beside_the_database(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not where artifacts should go
    name = f"test-{uuid.uuid4().hex[:8]}"

    experiment_id = tracking.setup_experiment(sqlite_uri(store / "mlflow.db"), name)

    assert tracking.setup_experiment(sqlite_uri(store / "mlflow.db"), name) == experiment_id
    experiment = mlflow.get_experiment(experiment_id)
    assert experiment.name == name
    assert experiment.artifact_location == (store / "artifacts").as_uri()
    client = mlflow.MlflowClient()
    run_id = client.create_run(experiment_id).info.run_id
    client.log_text(run_id, "a sample", "sample.txt")
    assert list((store / "artifacts").rglob("sample.txt"))
    assert not any(tmp_path.iterdir()), "something was written in the current directory"


def test_log_metric_rows_logs_one_step_per_row_and_skips_non_finite_values(run_id):
    rows = [{"epoch": 1, "loss": 2.0, "val_loss": 2.5}, {"epoch": 2, "loss": 1.5, "val_loss": math.nan}]

    tracking.log_metric_rows(run_id, rows, step_key="epoch")

    client = mlflow.MlflowClient()
    history = sorted((metric.step, metric.value) for metric in client.get_metric_history(run_id, "loss"))
    assert history == [(1, 2.0), (2, 1.5)]
    assert [(metric.step, metric.value) for metric in client.get_metric_history(run_id, "val_loss")] == [
        (1, 2.5)
    ]
    assert "epoch" not in client.get_run(run_id).data.metrics


def test_log_metrics_at_a_step(run_id):
    tracking.log_metrics(run_id, {"best_val_loss": 1.25, "diverged_loss": math.inf}, step=3)

    client = mlflow.MlflowClient()
    assert [(metric.step, metric.value) for metric in client.get_metric_history(run_id, "best_val_loss")] == [
        (3, 1.25)
    ]
    assert "diverged_loss" not in client.get_run(run_id).data.metrics


def test_log_params_beyond_one_batch(run_id):
    params = {"group": {f"param_{index:03d}": index for index in range(250)}, "seed_text": "x" * 7000}

    tracking.log_params(run_id, params)

    logged = mlflow.MlflowClient().get_run(run_id).data.params
    assert len(logged) == 251
    assert logged["group.param_000"] == "0" and logged["group.param_249"] == "249"
    assert logged["seed_text"] == "x" * 6000


def test_set_tags_beyond_one_batch(run_id):
    tracking.set_tags(run_id, {f"tag_{index:03d}": index for index in range(150)})

    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    assert all(tags[f"tag_{index:03d}"] == str(index) for index in range(150))


def saved_model(path: Path, seed: int) -> Path:
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.save(path)
    return path


def test_logging_the_same_model_file_twice_uploads_it_once(store, tmp_path):
    experiment_id = tracking.setup_experiment(sqlite_uri(store / "mlflow.db"), f"test-{uuid.uuid4().hex[:8]}")
    client = mlflow.MlflowClient()
    first, second, third = (client.create_run(experiment_id).info.run_id for _ in range(3))
    path = saved_model(tmp_path / "model.keras", seed=1)

    uri = tracking.log_keras_model(first, path)
    again = tracking.log_keras_model(second, path)  # e.g. a flow run whose training DVC skipped

    assert again == uri
    assert client.get_run(first).data.tags["model_uri"] == uri
    tags = client.get_run(second).data.tags
    assert tags["model_uri"] == uri and tags["model_reused_from_run"] == first
    assert len(mlflow.search_logged_models([experiment_id], output_format="list")) == 1
    loaded = mlflow.keras.load_model(uri)
    assert loaded.output_shape == (None, 2)

    retrained = saved_model(tmp_path / "model.keras", seed=2)  # a stage that ran: new weights
    assert tracking.log_keras_model(third, retrained) != uri
    assert "model_reused_from_run" not in client.get_run(third).data.tags
    assert len(mlflow.search_logged_models([experiment_id], output_format="list")) == 2


def test_md5_is_the_hash_dvc_records(tmp_path):
    import hashlib

    path = tmp_path / "file.bin"
    path.write_bytes(b"gendl" * 1000)
    assert tracking.md5_of(path) == hashlib.md5(b"gendl" * 1000).hexdigest()


# --- CSV records and paths -----------------------------------------------------------------------


def test_rows_round_trip_with_columns_in_order_of_appearance(tmp_path):
    rows = [{"epoch": 1, "loss": 2.5}, {"epoch": 2, "loss": 2.0, "frechet_distance": 12.0}]
    path = tmp_path / "nested" / "epochs.csv"

    storage.write_rows(path, rows)

    assert path.read_text().splitlines()[0] == "epoch,loss,frechet_distance"
    assert storage.read_rows(path) == [
        {"epoch": 1.0, "loss": 2.5},
        {"epoch": 2.0, "loss": 2.0, "frechet_distance": 12.0},
    ]
    assert [p.name for p in path.parent.iterdir()] == ["epochs.csv"], "a temporary file was left behind"
    assert storage.read_rows(tmp_path / "missing.csv") == []


def test_under_puts_every_path_of_a_paths_dataclass_under_the_root(tmp_path):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Paths:
        data: Path = Path("data/x")
        model: Path = Path("models/x/model.keras")

    rooted = storage.under(tmp_path, Paths())
    assert rooted == Paths(tmp_path / "data/x", tmp_path / "models/x/model.keras")
