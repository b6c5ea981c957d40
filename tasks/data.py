"""Downloads through the Keras cache, verified and written atomically into the repo for DVC, and
the atomic JSON writer the steps share for their results and metrics."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras

DOWNLOAD_TIMEOUT_SECONDS = 60


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its checksum; `retryable` if trying again may help."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, destination: Path, sha256: str = "") -> Path:
    """Fetch `url` (or copy a local path / file:// URL) into `destination`.

    Remote files go through the Keras cache (`$KERAS_HOME/datasets`): a cached copy is used
    when present (and verified when `sha256` is given), so offline machines work with a filled
    cache. The destination is replaced atomically: an interrupted
    fetch never leaves a half-written file behind.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("", "file"):  # a local file is copied as is, not cached
        source = Path(urllib.request.url2pathname(parts.path))
        if not source.is_file():
            raise DownloadError(f"{url}: no such file")
    else:
        source = cached_download(url, sha256)
    if sha256 and (actual := sha256_of(source)) != sha256:
        raise DownloadError(f"{source} has sha256 {actual}, expected {sha256}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=destination.parent, delete=False) as temporary:
        with open(source, "rb") as file:
            shutil.copyfileobj(file, temporary)
    os.replace(temporary.name, destination)
    return destination


def cached_download(url: str, sha256: str = "") -> Path:
    """The Keras-cache copy of `url` (`$KERAS_HOME/datasets/<file name>`), downloaded if missing."""
    filename = Path(urllib.parse.urlsplit(url).path).name
    if not filename:
        raise DownloadError(f"cannot tell a file name from the URL {url!r}")
    cached = keras_cache() / filename
    # get_file would re-download a mismatching copy and delete it when that fails (offline):
    # say so instead, and keep what may be the only copy.
    if sha256 and cached.is_file() and (actual := sha256_of(cached)) != sha256:
        raise DownloadError(
            f"{cached} has sha256 {actual}, expected {sha256}: fix the expected hash in "
            "params.yaml, or delete the file to download it again"
        )
    try:
        with network_timeout():
            return Path(keras.utils.get_file(filename, origin=url, file_hash=sha256 or None))
    # get_file re-raises URL and HTTP failures as bare `Exception`, so nothing narrower catches them.
    except Exception as error:
        raise DownloadError(
            f"could not download {url}: {error}. Offline? {offline_hint(filename)}", retryable=True
        ) from None


def keras_cache() -> Path:
    """Where Keras keeps downloaded datasets: `$KERAS_HOME/datasets` (default ~/.keras/datasets)."""
    return Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "datasets"


def offline_hint(filename: str) -> str:
    return (
        f"Put {filename} in the Keras cache ({keras_cache() / filename}): set KERAS_HOME to a filled "
        'Keras cache, for example export KERAS_HOME="$(mktemp -d)" && cp -r ../shared/keras-home/. "$KERAS_HOME"'
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


def write_json(path: Path, content: Any) -> None:
    """Write `content` as JSON, atomically (DVC and the flow never read half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)
