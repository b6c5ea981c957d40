"""Downloads through the Keras cache, verified and written atomically into the repo for DVC."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import urllib.parse
from pathlib import Path

import keras

DOWNLOAD_TIMEOUT_SECONDS = 60


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its checksum."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, destination: Path, sha256: str = "") -> Path:
    """Fetch `url` into `destination`, through the Keras cache (`$KERAS_HOME/datasets`).

    A cached copy is used when present (and verified when `sha256` is given), so offline
    machines work with a filled cache. The destination is replaced atomically: an interrupted
    fetch never leaves a half-written file behind.
    """
    filename = Path(urllib.parse.urlsplit(url).path).name
    if not filename:
        raise DownloadError(f"cannot tell a file name from the URL {url!r}")
    cached = _cached_copy(url, filename, sha256)
    if sha256 and (actual := sha256_of(cached)) != sha256:
        raise DownloadError(
            f"{cached} has sha256 {actual}, expected {sha256}: delete it and run again"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=destination.parent, delete=False) as temporary:
        with open(cached, "rb") as source:
            shutil.copyfileobj(source, temporary)
    os.replace(temporary.name, destination)
    return destination


def _cached_copy(url: str, filename: str, sha256: str) -> Path:
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)  # urlretrieve has no timeout of its own
    try:
        return Path(keras.utils.get_file(filename, origin=url, file_hash=sha256 or None))
    # get_file re-raises URL and HTTP failures as bare `Exception`, so nothing narrower catches them.
    except Exception as error:
        cache = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "datasets"
        raise DownloadError(
            f"could not download {url}: {error}. Offline? Put {filename} in the Keras cache "
            f"({cache}/{filename}): set KERAS_HOME to a filled Keras cache, for example "
            f'export KERAS_HOME="$(mktemp -d)" && cp -r ../shared/keras-home/. "$KERAS_HOME"'
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
