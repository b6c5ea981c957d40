"""The word-level Transformer's data steps: the aclImdb tarball through the Keras cache (made here,
never downloaded), a folder of .txt files, a text file cut into documents; the prepared ids and
vocabulary; and bad or missing input, which is one clear error and loses nothing."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import socket
import tarfile
import time
import urllib.error
from collections import Counter
from pathlib import Path

import keras
import numpy as np
import pytest

from tasks import storage
from tasks.params import load_params, parse_section
from tasks.storage import under
from tasks.text.corpus import TextError
from tasks.text.transformer.data import CORPUS_FILE, download_documents, prepare_documents, word_chunks
from tasks.text.transformer.params import TransformerDataParams, TransformerParams, TransformerPaths
from tests.conftest import REPO_ROOT

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"  # the book's, as in params.yaml
CLOSED_PORT_URL = "http://127.0.0.1:9"  # the discard port: nothing listens, connecting fails at once
TARBALL = "aclImdb_v1.tar.gz"
SEQUENCE_LENGTH = 6
SEED = 0


def data_params(**changes) -> TransformerDataParams:
    """params.yaml's transformer.data as the book has it (imdb from IMDB_URL, whatever profile is
    applied), tiny, with `changes`; validated."""
    overrides = {
        "dataset": "imdb",
        "url": IMDB_URL,
        "sha256": "",
        "folder": "",
        "max_documents": 0,
        "max_tokens": 200,
        "sequence_length": SEQUENCE_LENGTH,
        "validation_split": 0.1,
    } | changes
    params = load_params(
        REPO_ROOT, overrides={f"transformer.data.{key}": value for key, value in overrides.items()}
    )
    return parse_section(params, "transformer", TransformerParams).data


def review(split: str, label: str, number: int) -> str:
    """A review of nine words, with the `<br />` line breaks IMDB reviews hold."""
    return f"The {split} {label} review{number} was fine.<br /><br />Really, {label}{number} ok"


def standardized(text: str, num_words: int = SEQUENCE_LENGTH) -> str:
    """The review as the book's TextVectorization reads it: `<br />` gone, lower case, no punctuation,
    cut to `num_words` words."""
    words = text.replace("<br />", " ").lower().replace(".", "").replace(",", "").split()
    return " ".join(words[:num_words])


REVIEWS = {
    f"aclImdb/{split}/{label}/{number}_{7 if label == 'pos' else 0}.txt": review(split, label, number)
    for split, labels in (("train", ("pos", "neg", "unsup")), ("test", ("pos", "neg")))
    for label in labels
    for number in range(4)
}
NOT_TEXT = {
    "aclImdb/imdb.vocab": "the\nand\na\n",
    "aclImdb/README": "Large Movie Review Dataset v1.0",
    "aclImdb/train/labeledBow.feat": "9 0:9 1:1",
}


def write_tarball(path: Path, files: dict[str, str]) -> bytes:
    """An .tar.gz of `files` (name -> text) at `path`; returns its bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            content = text.encode("utf-8")
            member = tarfile.TarInfo(name)
            member.size = len(content)
            archive.addfile(member, io.BytesIO(content))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


@pytest.fixture
def keras_cache(tmp_path, monkeypatch) -> Path:
    """An empty Keras cache of this test's own (its datasets folder): what goes in stays here."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    datasets = tmp_path / "keras-home" / "datasets"
    datasets.mkdir(parents=True)
    return datasets


@pytest.fixture
def paths(tmp_path) -> TransformerPaths:
    return under(tmp_path / "repo", TransformerPaths())


def decoded_rows(paths: TransformerPaths, split: str) -> list[str]:
    tokens = json.loads((paths.prepared / "vocabulary.json").read_text(encoding="utf-8"))["tokens"]
    return [" ".join(tokens[i] for i in row if i != 0) for row in np.load(paths.prepared / f"{split}.npy")]


def prepared_files(paths: TransformerPaths) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(paths.prepared.iterdir())}


def write_documents(folder: Path, texts: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number, text in enumerate(texts):
        (folder / f"{number}.txt").write_text(text, encoding="utf-8")


# --- dataset: imdb --------------------------------------------------------------------------


def test_the_imdb_tarball_in_the_keras_cache_gives_its_txt_files_as_documents(keras_cache, paths):
    assert Path(IMDB_URL).name == TARBALL
    write_tarball(keras_cache / TARBALL, {**REVIEWS, **NOT_TEXT})

    count = download_documents(data_params(), paths.documents, paths.documents.parent)

    extracted = {
        str(path.relative_to(paths.documents)) for path in paths.documents.rglob("*") if path.is_file()
    }
    assert count == len(REVIEWS)
    assert extracted == set(REVIEWS)
    assert (paths.documents / "aclImdb/train/pos/2_7.txt").read_text() == review("train", "pos", 2)
    assert not paths.documents.with_name(".documents.partial").exists()


def test_online_the_tarball_is_downloaded_into_the_keras_cache_checked_and_extracted(
    keras_cache, paths, tmp_path, local_origin
):
    content = write_tarball(tmp_path / "origin" / TARBALL, {**REVIEWS, **NOT_TEXT})
    url = local_origin(f"~amaas/data/sentiment/{TARBALL}", content)  # the book's URL, served here
    params = data_params(url=url, sha256=hashlib.sha256(content).hexdigest())

    count = download_documents(params, paths.documents, paths.documents.parent)

    assert count == len(REVIEWS)
    assert (keras_cache / TARBALL).read_bytes() == content
    assert (paths.documents / "aclImdb/test/neg/3_0.txt").read_text() == review("test", "neg", 3)


def test_prepare_vectorizes_every_review_without_line_breaks_and_splits_them(keras_cache, paths):
    write_tarball(keras_cache / TARBALL, {**REVIEWS, **NOT_TEXT})
    data = data_params(validation_split=0.25)
    download_documents(data, paths.documents, paths.documents.parent)

    stats = prepare_documents(data, paths, SEED)

    train, validation = decoded_rows(paths, "train"), decoded_rows(paths, "validation")
    assert len(validation) == int(len(REVIEWS) * 0.25) and len(train) == len(REVIEWS) - len(validation)
    assert Counter(train + validation) == Counter(standardized(text) for text in REVIEWS.values())
    vocabulary = json.loads((paths.prepared / "vocabulary.json").read_text(encoding="utf-8"))
    assert vocabulary["sequence_length"] == SEQUENCE_LENGTH
    assert vocabulary["tokens"][:2] == ["", "[UNK]"]
    assert "br" not in vocabulary["tokens"]
    ids = np.load(paths.prepared / "train.npy")
    assert ids.dtype == np.uint16 and ids.shape == (len(train), SEQUENCE_LENGTH)
    assert ids.max() < len(vocabulary["tokens"])
    assert stats["num_train_documents"] == len(train)
    assert stats["num_validation_documents"] == len(validation)
    assert stats["vocab_size"] == len(vocabulary["tokens"])


def test_the_imdb_url_not_in_the_cache_fails_at_once_naming_it_and_the_offline_option(
    keras_cache, paths, monkeypatch
):
    def offline(*args, **kwargs):  # what keras.utils.get_file raises without a network
        try:
            raise urllib.error.URLError(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
        except urllib.error.URLError as error:
            raise Exception(f"URL fetch failure on {IMDB_URL}: None -- {error.reason}")  # noqa: B904

    monkeypatch.setattr(keras.utils, "get_file", offline)
    write_documents(paths.documents, ["an earlier download"])
    started = time.perf_counter()

    with pytest.raises(storage.DownloadError) as error:
        download_documents(data_params(), paths.documents, paths.documents.parent)

    assert time.perf_counter() - started < 3
    message = str(error.value)
    assert IMDB_URL in message
    assert storage.offline_hint(TARBALL) in message and str(keras_cache / TARBALL) in message
    assert not error.value.retryable  # no network: the flow does not try the stage again
    assert (paths.documents / "0.txt").read_text() == "an earlier download"
    assert not paths.documents.with_name(".documents.partial").exists()


def test_an_unreachable_url_fails_fast_and_keeps_the_earlier_documents(keras_cache, paths):
    url = f"{CLOSED_PORT_URL}/{TARBALL}"
    write_documents(paths.documents, ["an earlier download"])
    started = time.perf_counter()

    with pytest.raises(storage.DownloadError) as error:
        download_documents(data_params(url=url), paths.documents, paths.documents.parent)

    assert time.perf_counter() - started < 5
    assert url in str(error.value) and "KERAS_HOME" in str(error.value)
    assert [path.name for path in paths.documents.iterdir()] == ["0.txt"]
    assert not paths.documents.with_name(".documents.partial").exists()


def tarball_cut_short(path: Path) -> None:
    content = write_tarball(path, {**REVIEWS, **NOT_TEXT})
    path.write_bytes(content[: len(content) // 2])  # an interrupted download copied into the cache


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda path: path.write_bytes(b"<html>404 Not Found</html>" * 40), id="not-a-tarball"),
        pytest.param(lambda path: write_tarball(path, NOT_TEXT), id="no-txt-files"),
        pytest.param(
            lambda path: write_tarball(path, {"aclImdb/../../escaped.txt": "outside"}), id="member-outside"
        ),
        pytest.param(tarball_cut_short, id="cut-short"),  # gzip raises EOFError, not a TarError
    ],
)
def test_a_corrupt_tarball_is_a_text_error_and_keeps_the_earlier_documents(keras_cache, paths, corrupt):
    corrupt(keras_cache / TARBALL)
    write_documents(paths.documents, ["an earlier download"])

    with pytest.raises(TextError) as error:
        download_documents(data_params(), paths.documents, paths.documents.parent)

    assert str(keras_cache / TARBALL) in str(error.value)
    assert [path.name for path in paths.documents.iterdir()] == ["0.txt"]
    assert not paths.documents.with_name(".documents.partial").exists()
    assert not list(paths.documents.parent.parent.rglob("escaped.txt"))


# --- dataset: folder ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["aclImdb", "flat"])
@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_a_folder_of_txt_files_aclimdb_shaped_or_flat_is_read_whole(tmp_path, paths, shape, where):
    files = (
        REVIEWS if shape == "aclImdb" else {name.replace("/", "_"): text for name, text in REVIEWS.items()}
    )
    folder = paths.documents.parent.parent.parent / "reviews"  # the repo root's reviews/
    for name, text in {**files, **NOT_TEXT}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    data = data_params(dataset="folder", folder="reviews" if where == "relative" else str(folder))

    count = download_documents(data, paths.documents, folder.parent)

    assert count == len(REVIEWS)
    assert {str(path.relative_to(paths.documents)) for path in paths.documents.rglob("*.txt")} == set(files)
    if where == "relative" and shape == "flat":  # prepare reads a flat folder as well (one case: TF)
        prepare_documents(data, paths, SEED)
        rows = decoded_rows(paths, "train") + decoded_rows(paths, "validation")
        assert Counter(rows) == Counter(standardized(text) for text in REVIEWS.values())


def test_a_folder_without_txt_files_is_one_clear_error(tmp_path, paths):
    folder = tmp_path / "repo" / "reviews"
    for name, text in NOT_TEXT.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    write_documents(paths.documents, ["an earlier download"])

    with pytest.raises(TextError, match=r"no \.txt files") as error:
        download_documents(
            data_params(dataset="folder", folder="reviews"), paths.documents, tmp_path / "repo"
        )

    assert str(folder) in str(error.value)
    assert [path.name for path in paths.documents.iterdir()] == ["0.txt"]


def test_a_missing_folder_is_an_error_naming_the_key(tmp_path, paths):
    with pytest.raises(TextError, match="transformer.data.folder") as error:
        download_documents(
            data_params(dataset="folder", folder="missing"), paths.documents, tmp_path / "repo"
        )

    assert str(tmp_path / "repo" / "missing") in str(error.value)
    assert not paths.documents.exists()


# --- dataset: text_file ---------------------------------------------------------------------


def test_word_chunks_cut_a_text_into_documents_of_n_words():
    assert word_chunks("a b c\nd  e\tf g", 3) == ["a b c", "d e f", "g"]
    assert word_chunks("a b c d", 2) == ["a b", "c d"]
    assert word_chunks("  ", 2) == []


def test_a_text_file_is_prepared_as_documents_of_sequence_length_words(tmp_path, paths):
    words = [f"word{i % 23}" for i in range(200)]  # 200 words: 33 documents of 6 and one of 2
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(words).title(), encoding="utf-8")
    data = data_params(dataset="text_file", url=str(corpus), sha256="", validation_split=0.1)

    assert download_documents(data, paths.documents, tmp_path) == 1
    prepare_documents(data, paths, SEED)

    assert (paths.documents / CORPUS_FILE).read_bytes() == corpus.read_bytes()
    chunks = word_chunks(" ".join(words), SEQUENCE_LENGTH)
    train, validation = decoded_rows(paths, "train"), decoded_rows(paths, "validation")
    assert len(chunks) == 34 and len(validation) == int(34 * 0.1)
    assert Counter(train + validation) == Counter(chunks)


# --- Bad corpora: one error, the earlier outputs kept ---------------------------------------


@pytest.fixture
def earlier_prepared(paths) -> dict[str, bytes]:
    """A good run of the prepare step on a folder of documents; the bytes it wrote."""
    write_documents(paths.documents, [review("train", "pos", number) for number in range(10)])
    prepare_documents(data_params(dataset="folder", folder="documents", validation_split=0.2), paths, SEED)
    return prepared_files(paths)


def prepare_on(paths: TransformerPaths, texts: list[str], **changes) -> None:
    """The prepare step on `texts` as the documents (replacing the earlier ones), read as the folder
    dataset unless `changes` say otherwise (imdb reads the same documents folder)."""
    for path in paths.documents.iterdir():
        path.unlink()
    write_documents(paths.documents, texts)
    prepare_documents(data_params(**({"dataset": "folder", "folder": "documents"} | changes)), paths, SEED)


@pytest.mark.parametrize(
    ("texts", "error"),
    [
        pytest.param(["a", "b", "c", "d", "e", "f"], "empty or too small", id="one-word-each"),
        pytest.param(["", "", "", "", ""], "hold no words", id="empty-files"),
        pytest.param(["!!!", "...", "?", "--", ";"], "hold no words", id="punctuation-only"),
    ],
)
def test_a_corpus_without_two_word_documents_is_an_error_that_writes_nothing(
    paths, earlier_prepared, texts, error
):
    with pytest.raises(TextError, match=error):
        prepare_on(paths, texts, validation_split=0.2)

    assert prepared_files(paths) == earlier_prepared


@pytest.mark.parametrize("dataset", ["text_file", "folder", "imdb"])
def test_too_few_documents_for_the_validation_split_is_an_error_naming_it(paths, earlier_prepared, dataset):
    if dataset != "text_file":  # 0.2 * 3 documents: none to validate on
        with pytest.raises(TextError) as error:
            prepare_on(
                paths,
                [review("test", "neg", number) for number in range(3)],
                dataset=dataset,
                validation_split=0.2,
            )
    else:
        corpus = " ".join(f"word{number}" for number in range(12))  # 2 documents of 6 words
        (paths.documents / CORPUS_FILE).write_text(corpus, encoding="utf-8")
        data = data_params(dataset="text_file", url="unused.txt", sha256="", validation_split=0.2)
        with pytest.raises(TextError) as error:
            prepare_documents(data, paths, SEED)

    assert "validation_split=0.2" in str(error.value)
    assert prepared_files(paths) == earlier_prepared


def test_a_sequence_length_longer_than_every_document_is_an_error_naming_both(paths, earlier_prepared):
    texts = ["one two three", "four five six seven", "eight nine", "ten eleven twelve"] * 3

    with pytest.raises(TextError) as error:
        prepare_on(paths, texts, sequence_length=9, validation_split=0.2)

    message = str(error.value)
    assert "sequence_length=9" in message and "the longest has 4 words" in message
    assert "at most 4" in message
    assert prepared_files(paths) == earlier_prepared


def test_max_tokens_beyond_the_corpus_words_is_a_warning_and_a_smaller_vocabulary(paths, caplog):
    texts = [review("train", "pos", number) for number in range(10)]
    distinct_words = {word for text in texts for word in standardized(text, num_words=100).split()}

    with caplog.at_level(logging.WARNING, logger="tasks.text.transformer.data"):
        prepare_on_fresh(paths, texts, max_tokens=500, validation_split=0.0)

    tokens = json.loads((paths.prepared / "vocabulary.json").read_text(encoding="utf-8"))["tokens"]
    assert set(tokens[2:]) == distinct_words and len(tokens) == len(distinct_words) + 2
    (warning,) = [message for message in caplog.messages if "max_tokens" in message]
    assert f"{len(distinct_words)} distinct words" in warning and "max_tokens=500" in warning


def test_max_tokens_keeps_the_most_frequent_words(paths):
    texts = ["alpha alpha alpha beta beta gamma", "alpha beta gamma delta alpha beta"] * 2

    prepare_on_fresh(paths, texts, max_tokens=4, validation_split=0.0)

    tokens = json.loads((paths.prepared / "vocabulary.json").read_text(encoding="utf-8"))["tokens"]
    assert tokens == ["", "[UNK]", "alpha", "beta"]
    assert decoded_rows(paths, "train")[0].split().count("[UNK]") >= 1


def prepare_on_fresh(paths: TransformerPaths, texts: list[str], **changes) -> None:
    write_documents(paths.documents, texts)
    prepare_documents(data_params(dataset="folder", folder="documents", **changes), paths, SEED)
