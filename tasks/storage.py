"""Files the steps share: downloads through the Keras cache (verified, written atomically into the
repo for DVC), atomic JSON and CSV records (training histories too), and the steps' paths under a
repo root."""

from __future__ import annotations

import csv
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tasks.steps import StepError

DOWNLOAD_TIMEOUT_SECONDS = 60
INPUTS = Path("inputs")  # inputs/<section>/: the folders of your own data DVC tracks (dvc.yaml deps)

Paths = TypeVar("Paths")


class DownloadError(StepError, RuntimeError):
    """A file could not be fetched or failed its checksum; `retryable` if trying again may help."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


def under(root: Path, paths: Paths) -> Paths:
    """A technique's paths dataclass (relative to the repo root, as dvc.yaml names them) under `root`."""
    return dataclasses.replace(
        paths, **{item.name: root / getattr(paths, item.name) for item in dataclasses.fields(paths)}
    )


def file_hash(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file, read a MiB at a time."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    return file_hash(path, "sha256")


def fetch(url: str, destination: Path, sha256: str = "") -> Path:
    """Fetch `url` (or copy a local path / file:// URL) into `destination`.

    Remote files go through the Keras cache (`$KERAS_HOME/datasets`): a cached copy is used
    when present (and verified when `sha256` is given), so offline machines work with a filled
    cache. The destination is replaced atomically: an interrupted
    fetch never leaves a half-written file behind.
    """
    source = source_file(url, sha256)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=destination.parent, delete=False) as temporary:
        with open(source, "rb") as file:
            shutil.copyfileobj(file, temporary)
    os.replace(temporary.name, destination)
    return destination


def source_file(url: str, sha256: str = "") -> Path:
    """The file `url` names: a local path or file:// URL as is, anything else its Keras-cache copy
    (downloaded if missing); verified when `sha256` is given."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("", "file"):  # a local file is read where it is, not cached
        source = Path(urllib.request.url2pathname(parts.path))
        if not source.is_file():
            raise DownloadError(f"{url}: no such file")
    else:
        source = cached_download(url, sha256)
    if sha256 and (actual := sha256_of(source)) != sha256:
        raise DownloadError(f"{source} has sha256 {actual}, expected {sha256}")
    return source


def cached_download(url: str, sha256: str = "", subdir: str = "") -> Path:
    """The Keras-cache copy of `url` (`$KERAS_HOME/datasets/[<subdir>/]<file name>`), downloaded
    with keras.utils.get_file if missing; a cached copy is used without importing Keras."""
    filename = Path(urllib.parse.urlsplit(url).path).name
    if not filename:
        raise DownloadError(f"cannot tell a file name from the URL {url!r}")
    relative = str(Path(subdir, filename))
    cached = keras_cache() / relative
    if cached.is_file():
        # get_file would re-download a mismatching copy and delete it when that fails (offline):
        # say so instead, and keep what may be the only copy.
        if sha256 and (actual := sha256_of(cached)) != sha256:
            raise DownloadError(
                f"{cached} has sha256 {actual}, expected {sha256}: fix the expected hash in "
                "params.yaml, or delete the file to download it again"
            )
        return cached
    import keras  # only to download: a step whose file is cached never loads TensorFlow

    cached.parent.mkdir(parents=True, exist_ok=True)  # get_file would use /tmp/.keras instead
    try:
        with network_timeout():
            return Path(
                keras.utils.get_file(
                    filename,
                    origin=url,
                    file_hash=sha256 or None,
                    cache_dir=str(keras_cache().parent),  # $KERAS_HOME now, not at Keras's import
                    cache_subdir=str(Path("datasets", subdir)),
                )
            )
    # get_file re-raises URL and HTTP failures as bare `Exception`, so nothing narrower catches them.
    except Exception as error:
        raise DownloadError(
            f"could not download {url}: {error}. Offline? {offline_hint(relative)}",
            retryable=is_transient(error),
        ) from None


def is_transient(error: BaseException) -> bool:
    """Whether trying a failed download again may help. Not without a network (the host name does
    not resolve, the network is unreachable: the step fails at once) nor after an HTTP 4xx other
    than 408 and 429; yes for the rest (a timeout, a refused or reset connection, an HTTP 5xx).
    Keras's get_file re-raises the URLError as a bare Exception, so the cause is looked for along
    the exception chain."""
    while error is not None:
        if isinstance(error, urllib.error.HTTPError):
            return not (400 <= error.code < 500) or error.code in (408, 429)
        if isinstance(error, urllib.error.URLError):
            error = error.reason if isinstance(error.reason, BaseException) else None
            continue
        if isinstance(error, socket.gaierror):
            return error.errno == socket.EAI_AGAIN
        if isinstance(error, OSError) and error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return False
        error = error.__cause__ or error.__context__
    return True


def keras_cache() -> Path:
    """Where Keras keeps downloaded datasets: `$KERAS_HOME/datasets` (default ~/.keras/datasets)."""
    return Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "datasets"


def offline_hint(filename: str) -> str:
    """How to work offline without `filename` (relative to the Keras cache's datasets folder)."""
    return (
        f"Put {filename} in the Keras cache ({keras_cache() / filename}): set KERAS_HOME to a filled "
        'Keras cache, for example export KERAS_HOME="$(mktemp -d)" && cp -r /path/to/keras-home/. "$KERAS_HOME" '
        '&& chmod -R u+w "$KERAS_HOME" (docs/data.md lists what each technique needs there)'
    )


@contextmanager
def network_timeout(seconds: float = DOWNLOAD_TIMEOUT_SECONDS) -> Iterator[None]:
    """Keras downloads use urlretrieve, which has no timeout of its own: never hang offline."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def check_input_folder(folder: Path, inputs: Path, error: type[Exception], kind: str) -> None:
    """A folder under `inputs` (inputs/<section>/, a dependency of the data stage in dvc.yaml) is one
    DVC sees: changing its files re-runs the stage, and once `dvc add`-ed and pushed, a teammate's
    clone and a worker's workspace pull it. Elsewhere it still works, unseen by DVC: say so. A
    DVC-tracked folder that is not here yet raises `error`."""
    tracked = folder.with_name(folder.name + ".dvc")
    if not folder.is_dir() and tracked.is_file():
        raise error(f"{kind} {folder} is tracked by DVC but not here: run `dvc pull {tracked}`")
    if not folder.resolve().is_relative_to(inputs.resolve()):
        logging.getLogger(__name__).warning(
            "%s %s is outside %s/: DVC does not see changes to its files and teammates' clones do not "
            "get it; move it there and `dvc add` it (inputs/README.md)",
            kind,
            folder,
            inputs,
        )


def partial_path(path: Path, suffix: str = "") -> Path:
    """The hidden sibling to write `path`'s new content into before `os.replace`: named by this
    process, so two processes writing the same file (a GAN run that outlived its worker and the
    retry resuming in the same folder) never write into each other's half-written file."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial{suffix}")


def write_json(path: Path, content: Any) -> None:
    """Write `content` as JSON, atomically (DVC and the flow never read half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_path(path)
    temporary.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def read_rows(path: Path) -> list[dict[str, float]]:
    """The numeric rows of a CSV file written by `write_rows` (or keras.callbacks.CSVLogger);
    empty cells are left out; a missing file has no rows."""
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return [
            {key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(file)
        ]


def read_history(path: Path) -> list[dict[str, float]]:
    """keras.callbacks.CSVLogger rows with a 1-based epoch (MLflow's step)."""
    return [{**row, "epoch": int(row["epoch"]) + 1} for row in read_rows(path)]


def write_rows(path: Path, rows: Sequence[dict[str, float]]) -> None:
    """Write `rows` as CSV atomically; the columns are every key in order of first appearance."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(key for row in rows for key in row))
    temporary = partial_path(path)
    with temporary.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)
