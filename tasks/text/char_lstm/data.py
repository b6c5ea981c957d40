"""The char-LSTM's data steps: download the corpus, then encode it as integers and split it.

    python -m tasks.text.char_lstm.data {download,prepare} [--root DIR]
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tasks import storage
from tasks.steps import run_steps
from tasks.text.char_lstm.params import TextPaths, load
from tasks.text.corpus import build_vocabulary, read_corpus, save_prepared, split_corpus

log = logging.getLogger(__name__)


def download_corpus(paths: TextPaths, url: str, sha256: str) -> Path:
    """Fetch the corpus (through the Keras cache) into `paths.corpus`."""
    log.info("fetching %s", url)
    destination = storage.fetch(url, paths.corpus, sha256)
    log.info("corpus: %s (%d bytes)", destination, destination.stat().st_size)
    return destination


def prepare_corpus(
    paths: TextPaths, maxlen: int, validation_split: float, max_chars: int = 0
) -> dict[str, int]:
    """Encode the corpus as integers and split it; the sequences themselves are never stored."""
    text = read_corpus(paths.corpus)
    if max_chars:
        text = text[:max_chars]
    vocabulary = build_vocabulary(text)
    train_ids, validation_ids = split_corpus(vocabulary.encode(text), maxlen, validation_split)
    save_prepared(paths.prepared, vocabulary, train_ids, validation_ids)
    stats = {"num_chars": len(text), "vocab_size": vocabulary.size, "num_train_chars": len(train_ids)}
    log.info("prepared: %s", stats)
    return stats


def download(root: Path) -> None:
    text, _ = load(root)
    download_corpus(storage.under(root, TextPaths()), text.data.url, text.data.sha256)


def prepare(root: Path) -> None:
    text, _ = load(root)
    prepare_corpus(
        storage.under(root, TextPaths()), text.data.maxlen, text.data.validation_split, text.data.max_chars
    )


if __name__ == "__main__":
    sys.exit(run_steps({"download": download, "prepare": prepare}, __doc__))
