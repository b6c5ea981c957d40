"""Corpus, vocabulary, train/validation split, sequence windows, the prepare step and the
text metrics."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tasks.storage import under
from tasks.text.char_lstm.data import prepare_corpus
from tasks.text.char_lstm.params import TextPaths
from tasks.text.corpus import TextError, Vocabulary, build_vocabulary, read_corpus, split_corpus
from tasks.text.metrics import corpus_word_share, distinct_n, repetition_rate, text_metrics, words
from tasks.text.sequences import num_sequences, sequence_dataset

BOOK_CORPUS_LENGTH = 600_893  # "Corpus length: 600893" in the book's listing


# --- read_corpus ----------------------------------------------------------------------------


def test_read_corpus_decodes_the_real_corpus_despite_bytes_that_are_not_utf8(nietzsche_path):
    raw = nietzsche_path.read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")

    corpus = read_corpus(nietzsche_path)

    assert corpus == corpus.lower()
    assert "\ufffd" in corpus
    assert abs(len(corpus) - BOOK_CORPUS_LENGTH) < 100


def test_read_corpus_says_how_many_bytes_of_the_real_corpus_it_replaced(nietzsche_path, caplog):
    with caplog.at_level(logging.WARNING, logger="tasks.text.corpus"):
        corpus = read_corpus(nietzsche_path)

    assert corpus.count("\ufffd") == 8  # 8 truncated sequences ("sch\xe3\xa4tzung"), 2 bytes each
    (warning,) = caplog.messages
    assert "replaced 16 bytes" in warning and "in 8 places" in warning
    assert "394533, 403344, 441699, 464315, 466927" in warning


def test_read_corpus_replaces_a_few_stray_bytes_and_says_how_many_and_where(tmp_path, caplog):
    head = "the will to power. " * 200  # 3,800 bytes: up to 3 stray bytes are "a few"
    path = tmp_path / "corpus.txt"
    path.write_bytes(head.encode() + b"caf\xe9 and \xff " + "naïve".encode())

    with caplog.at_level(logging.WARNING, logger="tasks.text.corpus"):
        corpus = read_corpus(path)

    assert corpus == head + "caf\ufffd and \ufffd naïve"
    (warning,) = caplog.messages
    assert str(path) in warning
    assert "replaced 2 bytes" in warning and f"offsets {len(head) + 3}, {len(head) + 9}" in warning


def test_read_corpus_decodes_a_latin1_file(tmp_path, caplog):
    original = "Déjà vu: the café's naïve garçon read Nietzsche's Götzen-Dämmerung. " * 20
    path = tmp_path / "corpus.txt"
    path.write_bytes(original.encode("latin-1"))

    with caplog.at_level(logging.WARNING, logger="tasks.text.corpus"):
        corpus = read_corpus(path)

    assert corpus == original.lower()
    assert "\ufffd" not in corpus
    (warning,) = caplog.messages
    assert "is not UTF-8" in warning and "latin-1" in warning


def test_read_corpus_reads_windows_quotes_as_cp1252_where_latin1_has_control_characters(
    tmp_path, caplog
):
    # Bytes 0x80-0x9f are C1 control characters in Latin-1 and punctuation in cp1252.
    raw = "“Café” – naïve…".encode("cp1252") * 10
    path = tmp_path / "corpus.txt"
    path.write_bytes(raw)

    with caplog.at_level(logging.WARNING, logger="tasks.text.corpus"):
        corpus = read_corpus(path)

    assert corpus == "“café” – naïve…" * 10
    assert "\x93" in raw.decode("latin-1")  # what Latin-1 would have made of the opening quote
    assert "cp1252" in caplog.messages[0]


def test_read_corpus_falls_back_to_latin1_for_bytes_cp1252_leaves_undefined(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(("café " * 50).encode("latin-1") + b"\x81")  # 0x81: undefined in cp1252

    assert read_corpus(path) == "café " * 50 + "\x81"


@pytest.mark.parametrize("content", ["", "  \n\t\n"], ids=["empty", "whitespace"])
def test_read_corpus_rejects_an_empty_file(tmp_path, content):
    path = tmp_path / "corpus.txt"
    path.write_text(content)

    with pytest.raises(TextError, match="empty") as error:
        read_corpus(path)
    assert str(path) in str(error.value)


def test_read_corpus_rejects_a_missing_file(tmp_path):
    path = tmp_path / "missing.txt"

    with pytest.raises(TextError, match="not found") as error:
        read_corpus(path)
    assert str(path) in str(error.value)


# --- Vocabulary -----------------------------------------------------------------------------


def test_vocabulary_round_trip():
    sample = "what is good? all that heightens the feeling of power."
    vocabulary = build_vocabulary(sample)

    ids = vocabulary.encode(sample)

    assert vocabulary.chars == sorted(set(sample))
    assert ids.dtype == np.uint8
    assert len(ids) == len(sample)
    assert vocabulary.decode(ids) == sample
    assert [vocabulary.chars[i] for i in ids] == list(sample)


def test_vocabulary_uses_wider_ids_beyond_256_characters():
    sample = "".join(chr(code) for code in range(0x100, 0x100 + 300))
    vocabulary = build_vocabulary(sample)

    ids = vocabulary.encode(sample)

    assert ids.dtype == np.int32
    assert vocabulary.decode(ids) == sample


def test_vocabulary_rejects_unknown_characters_and_lists_them():
    vocabulary = build_vocabulary("abc ")

    with pytest.raises(TextError, match="outside the corpus vocabulary") as error:
        vocabulary.encode("a cab! zq")
    assert "'!qz'" in str(error.value)


# --- split_corpus ---------------------------------------------------------------------------


def test_split_corpus_holds_out_the_last_share():
    ids = np.arange(1000) % 251

    train_ids, validation_ids = split_corpus(ids, maxlen=20, validation_split=0.1)

    assert len(validation_ids) == 100
    np.testing.assert_array_equal(train_ids, ids[:900])
    np.testing.assert_array_equal(np.concatenate([train_ids, validation_ids]), ids)


def test_split_corpus_without_validation_keeps_everything_for_training():
    ids = np.arange(50)

    train_ids, validation_ids = split_corpus(ids, maxlen=20, validation_split=0.0)

    np.testing.assert_array_equal(train_ids, ids)
    assert len(validation_ids) == 0


def test_split_corpus_rejects_a_corpus_shorter_than_one_sequence():
    with pytest.raises(TextError, match=r"corpus has 10 characters.*maxlen=10.*need at least"):
        split_corpus(np.zeros(10, np.uint8), maxlen=10, validation_split=0.1)


def test_split_corpus_rejects_a_validation_part_shorter_than_one_sequence():
    # 100 characters: 90 to train on, but only 10 to validate on with maxlen=10 (11 needed).
    with pytest.raises(TextError, match=r"corpus has 100 characters.*need at least"):
        split_corpus(np.zeros(100, np.uint8), maxlen=10, validation_split=0.1)


def stated_minimum(maxlen: int, validation_split: float) -> int:
    with pytest.raises(TextError) as error:
        split_corpus(np.zeros(1, np.uint8), maxlen, validation_split)
    return int(re.search(r"need at least (\d+)", str(error.value)).group(1))


def splits(length: int, maxlen: int, validation_split: float) -> bool:
    try:
        split_corpus(np.zeros(length, np.uint8), maxlen, validation_split)
    except TextError:
        return False
    return True


@pytest.mark.parametrize("validation_split", [0.0, 0.1, 0.35, 0.5, 0.75])
def test_split_corpus_error_states_the_exact_minimum_length(validation_split):
    """The "need at least N" in the message is enough, and N - 1 is not."""
    wrong = []
    for maxlen in range(1, 130):
        minimum = stated_minimum(maxlen, validation_split)
        if not splits(minimum, maxlen, validation_split):
            wrong.append(f"maxlen={maxlen}: {minimum} stated but too short")
        elif splits(minimum - 1, maxlen, validation_split):
            wrong.append(f"maxlen={maxlen}: {minimum} stated but {minimum - 1} is enough")
    assert not wrong, f"validation_split={validation_split}: {len(wrong)} wrong, e.g. {wrong[:3]}"


# --- Sequence windows -----------------------------------------------------------------------


def book_windows(ids: np.ndarray, maxlen: int, step: int) -> list[tuple[list[int], int]]:
    """The book's construction of (sentence, next character) pairs."""
    return [(ids[i : i + maxlen].tolist(), int(ids[i + maxlen])) for i in range(0, len(ids) - maxlen, step)]


def dataset_windows(dataset) -> list[tuple[list[int], int]]:
    windows = []
    for x, y in dataset:
        assert x.dtype == "int32" and y.dtype == "int32"
        windows += zip(x.numpy().tolist(), y.numpy().tolist())
    return windows


@pytest.mark.parametrize("num_chars", [20, 21, 23])
def test_sequence_dataset_equals_the_book_windows(num_chars):
    ids = (np.arange(num_chars) * 7 % 31).astype(np.uint8)
    maxlen, step = 5, 3

    windows = dataset_windows(sequence_dataset(ids, maxlen, step, batch_size=4, shuffle=False))

    assert windows == book_windows(ids, maxlen, step)
    assert len(windows) == num_sequences(num_chars, maxlen, step)


def test_shuffled_sequence_dataset_has_the_same_windows():
    ids = (np.arange(40) * 7 % 31).astype(np.uint8)
    maxlen, step = 5, 3

    windows = dataset_windows(sequence_dataset(ids, maxlen, step, batch_size=4, shuffle=True, seed=1))

    expected = book_windows(ids, maxlen, step)
    assert windows != expected, "not shuffled"
    assert Counter(map(str, windows)) == Counter(map(str, expected))


# --- The prepare step -----------------------------------------------------------------------


def prepared_paths(tmp_path: Path, corpus: str) -> TextPaths:
    paths = under(tmp_path / "repo", TextPaths())
    paths.corpus.parent.mkdir(parents=True)
    paths.corpus.write_text(corpus, encoding="utf-8")
    return paths


def decoded(paths: TextPaths) -> tuple[str, str]:
    chars = json.loads((paths.prepared / "vocabulary.json").read_text(encoding="utf-8"))["chars"]
    vocabulary = Vocabulary(chars)
    return (
        vocabulary.decode(np.load(paths.prepared / "train_ids.npy")),
        vocabulary.decode(np.load(paths.prepared / "validation_ids.npy")),
    )


def test_prepare_writes_the_lower_cased_corpus_encoded_and_split(tmp_path, tiny_corpus):
    corpus = tiny_corpus.read_text(encoding="utf-8").title()  # mixed case, to see it lower-cased
    paths = prepared_paths(tmp_path, corpus)

    stats = prepare_corpus(paths, maxlen=10, validation_split=0.1)

    train_text, validation_text = decoded(paths)
    assert train_text + validation_text == corpus.lower()
    assert len(validation_text) == int(len(corpus) * 0.1)
    assert stats == {
        "num_chars": len(corpus),
        "vocab_size": len(set(corpus.lower())),
        "num_train_chars": len(train_text),
    }


def test_prepare_truncates_to_max_chars(tmp_path, tiny_corpus):
    corpus = tiny_corpus.read_text(encoding="utf-8")
    paths = prepared_paths(tmp_path, corpus)

    stats = prepare_corpus(paths, maxlen=10, validation_split=0.1, max_chars=500)

    train_text, validation_text = decoded(paths)
    assert train_text + validation_text == corpus[:500].lower()
    assert stats["num_chars"] == 500


# --- Text metrics ---------------------------------------------------------------------------


def test_words_are_lower_case_letter_runs_with_apostrophes():
    assert words("The dog's bone, 42 CATS! well-known") == [
        "the",
        "dog's",
        "bone",
        "cats",
        "well",
        "known",
    ]


def test_distinct_n_on_an_alternating_text():
    tokens = "a b a b a b".split()

    assert distinct_n(tokens, 1) == 2 / 6
    assert distinct_n(tokens, 2) == 2 / 5  # ab ba ab ba ab
    assert distinct_n("a b c d".split(), 2) == 1.0
    assert distinct_n(["a"], 2) == 0.0


def test_repetition_rate_counts_ngrams_seen_before():
    # Trigrams: (a b a) (b a b) (a b a) (b a b): the last two repeat earlier ones.
    assert repetition_rate("a b a b a b".split(), 3) == 2 / 4
    assert repetition_rate("a b c d e".split(), 3) == 0.0
    assert repetition_rate("a a".split(), 3) == 0.0


def test_corpus_word_share():
    assert corpus_word_share(["the", "wil", "to", "the"], {"the", "will", "to"}) == 3 / 4
    assert corpus_word_share([], {"the"}) == 0.0


def test_text_metrics_of_a_generated_text():
    metrics = text_metrics("power is power is power", {"power", "is"})

    assert metrics == {
        "corpus_word_share": 1.0,
        "distinct_1": 2 / 5,
        "distinct_2": 2 / 4,
        "repetition_rate": 1 / 3,  # (power is power) (is power is) (power is power)
    }
