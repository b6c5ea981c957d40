"""A text corpus as the text generators see it: read and decoded, encoded as integer ids over its
vocabulary, split into train and validation parts, and stored for training (tasks/text/sequences.py
cuts it into training pairs).
"""

from __future__ import annotations

import codecs
import itertools
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks import storage
from tasks.steps import StepError

log = logging.getLogger(__name__)

MAX_INVALID_UTF8_SHARE = 0.001  # more bytes than this that are not UTF-8: the file is in another encoding
NUM_OFFSETS_REPORTED = 5
WINDOWS_PUNCTUATION = re.compile(rb"[\x80-\x9f]")  # control characters in Latin-1, punctuation in cp1252


class TextError(StepError, ValueError):
    """Bad input for text generation: corpus, seed text or temperatures."""


# --- Reading ----------------------------------------------------------------------------------


def read_corpus(path: Path) -> str:
    """The corpus lower-cased, decoded as `decode_corpus` says."""
    if not path.is_file():
        raise TextError(f"corpus {path} not found: run the download step first")
    text = decode_corpus(path.read_bytes(), str(path)).lower()
    if not text.strip():
        raise TextError(f"corpus {path} is empty")
    return text


def decode_corpus(raw: bytes, name: str) -> str:
    """UTF-8 if the bytes are; with a few stray bytes, UTF-8 with those replaced by U+FFFD (and a
    warning saying how many and where); with many, the file is in a single-byte encoding, Latin-1
    (and a warning saying so).

    Bytes 0x80-0x9f are where Latin-1 and cp1252 differ: Latin-1 maps them to control characters
    no text uses, cp1252 to the curly quotes, dashes and euro sign of Windows text. A file with
    such bytes is decoded as cp1252 (unless it holds one of the five bytes cp1252 leaves undefined).
    """
    max_invalid_bytes = int(len(raw) * MAX_INVALID_UTF8_SHARE)
    spans = invalid_utf8_spans(raw, max_invalid_bytes + 1)
    num_invalid_bytes = sum(end - start for start, end in spans)
    if not spans:
        return raw.decode("utf-8")
    if num_invalid_bytes <= max_invalid_bytes:
        offsets = ", ".join(str(start) for start, _ in spans[:NUM_OFFSETS_REPORTED])
        log.warning(
            "corpus %s: replaced %d bytes that are not UTF-8 by U+FFFD, in %d places (first at byte "
            "offsets %s)",
            name,
            num_invalid_bytes,
            len(spans),
            offsets,
        )
        return raw.decode("utf-8", errors="replace")
    encoding = "cp1252" if WINDOWS_PUNCTUATION.search(raw) else "latin-1"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:  # one of the five bytes cp1252 leaves undefined
        text, encoding = raw.decode("latin-1"), "latin-1"
    log.warning(
        "corpus %s is not UTF-8 (more than %d of its %d bytes are not): decoded it as %s",
        name,
        max_invalid_bytes,
        len(raw),
        encoding,
    )
    return text


def invalid_utf8_spans(raw: bytes, max_invalid_bytes: int) -> list[tuple[int, int]]:
    """(start, end) byte offsets of the invalid UTF-8 sequences in `raw`, as `errors="replace"`
    replaces them; the search stops once they hold `max_invalid_bytes` bytes."""
    spans: list[tuple[int, int]] = []
    view, position, num_invalid_bytes = memoryview(raw), 0, 0
    while num_invalid_bytes < max_invalid_bytes:
        try:
            codecs.utf_8_decode(view[position:], "strict", True)
            break
        except UnicodeDecodeError as error:
            spans.append((position + error.start, position + error.end))
            num_invalid_bytes += error.end - error.start
            position += error.end
    return spans


# --- Vocabulary -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocabulary:
    chars: list[str]

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        index = {char: position for position, char in enumerate(self.chars)}
        unknown = sorted(set(text) - index.keys())
        if unknown:
            raise TextError(
                f"text has characters outside the corpus vocabulary: {''.join(unknown)!r} "
                f"(vocabulary: {''.join(self.chars)!r})"
            )
        dtype = np.uint8 if self.size <= 256 else np.int32
        return np.fromiter((index[char] for char in text), dtype=dtype, count=len(text))

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def build_vocabulary(text: str) -> Vocabulary:
    return Vocabulary(sorted(set(text)))


# --- Train / validation split -----------------------------------------------------------------


def split_corpus(ids: np.ndarray, maxlen: int, validation_split: float) -> tuple[np.ndarray, np.ndarray]:
    """Train on the first part, validate on the last: overlapping windows never straddle both."""
    if not _split_fits(len(ids), maxlen, validation_split):
        minimum = next(n for n in itertools.count(maxlen + 1) if _split_fits(n, maxlen, validation_split))
        raise TextError(
            f"corpus has {len(ids)} characters, too short for maxlen={maxlen} with "
            f"validation_split={validation_split}: need at least {minimum}"
        )
    num_validation = int(len(ids) * validation_split)
    return ids[: len(ids) - num_validation], ids[len(ids) - num_validation :]


def _split_fits(num_chars: int, maxlen: int, validation_split: float) -> bool:
    """Both parts hold at least one sequence and its target (maxlen + 1 characters)."""
    num_validation = int(num_chars * validation_split)
    needed = maxlen + 1
    return num_chars - num_validation >= needed and (validation_split == 0 or num_validation >= needed)


# --- The prepared corpus on disk --------------------------------------------------------------


def save_prepared(
    prepared: Path, vocabulary: Vocabulary, train_ids: np.ndarray, validation_ids: np.ndarray
) -> None:
    """The encoded corpus as `load_prepared` reads it: two .npy id arrays and the vocabulary."""
    prepared.mkdir(parents=True, exist_ok=True)
    np.save(prepared / "train_ids.npy", train_ids)
    np.save(prepared / "validation_ids.npy", validation_ids)
    storage.write_json(prepared / "vocabulary.json", {"chars": vocabulary.chars})


def read_vocabulary(prepared: Path) -> Vocabulary:
    return Vocabulary(json.loads((prepared / "vocabulary.json").read_text(encoding="utf-8"))["chars"])


def load_prepared(prepared: Path) -> tuple[Vocabulary, np.ndarray, np.ndarray]:
    return (
        read_vocabulary(prepared),
        np.load(prepared / "train_ids.npy"),
        np.load(prepared / "validation_ids.npy"),
    )


def corpus_seed(ids: np.ndarray, vocabulary: Vocabulary, maxlen: int, seed: int) -> str:
    """A random `maxlen`-long window of the corpus, to generate after."""
    start = np.random.default_rng(seed).integers(0, len(ids) - maxlen)
    return vocabulary.decode(ids[start : start + maxlen])
