"""The word-level Transformer's data steps: gather the documents, then vectorize them as the book
does (`text_dataset_from_directory`, `<br />` replaced, `TextVectorization`) and keep the vocabulary.

    python -m tasks.text.transformer.data {download,prepare} [--root DIR]

`download` loads no TensorFlow; `prepare` does (Keras's text utilities).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tasks import storage
from tasks.steps import run_steps
from tasks.text.corpus import TextError, read_corpus
from tasks.text.transformer.params import TransformerDataParams, TransformerPaths, load

log = logging.getLogger(__name__)

CORPUS_FILE = "corpus.txt"  # the text_file dataset's one file in the documents folder


# --- download: the documents as .txt files --------------------------------------------------


def download_documents(data: TransformerDataParams, documents: Path, root: Path) -> int:
    """Fill `documents` with the dataset's .txt files (replacing it whole); returns how many."""
    with replaced_folder(documents) as partial:
        if data.dataset == "imdb":
            tarball = storage.source_file(data.url, data.sha256)
            log.info("extracting the .txt files of %s", tarball)
            extract_text_files(tarball, partial)
        elif data.dataset == "folder":
            folder = root / data.folder
            storage.check_input_folder(
                folder, root / storage.INPUTS / "transformer", TextError, "text folder"
            )
            copy_text_files(folder, partial)
        else:
            storage.fetch(data.url, partial / CORPUS_FILE, data.sha256)
        count = sum(1 for _ in partial.rglob("*.txt"))
    log.info("documents: %d .txt files in %s", count, documents)
    return count


@contextmanager
def replaced_folder(folder: Path) -> Iterator[Path]:
    """A new folder to fill that replaces `folder` only once filled without error."""
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)


def extract_text_files(tarball: Path, destination: Path) -> None:
    """The .txt members of an (aclImdb-shaped) tarball, under their own paths."""
    try:
        with tarfile.open(tarball) as archive:
            members = [member for member in archive if member.isfile() and member.name.endswith(".txt")]
            if not members:
                raise TextError(f"{tarball} holds no .txt files")
            archive.extractall(destination, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:  # EOFError: a download cut short
        raise TextError(f"{tarball} is not a readable tar archive: {error}") from None


def copy_text_files(folder: Path, destination: Path) -> None:
    """The .txt files under `folder` (flat or in subfolders), under their own relative paths."""
    if not folder.is_dir():
        raise TextError(f"transformer.data.folder {folder} is not a directory")
    files = sorted(folder.rglob("*.txt"))
    if not files:
        raise TextError(f"no .txt files under {folder}: the folder dataset reads one document per .txt file")
    for file in files:
        target = destination / file.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)


# --- prepare: vectorized documents and their vocabulary -------------------------------------


def read_documents(data: TransformerDataParams, documents: Path, seed: int):
    """(train, validation) tf.data datasets of document strings, `<br />` replaced by a space as the
    book does; validation is None without a validation split."""
    import keras
    import tensorflow as tf

    split = data.validation_split or None
    if data.dataset == "text_file":
        chunks = word_chunks(read_corpus(documents / CORPUS_FILE), data.sequence_length)
        chunks = [chunks[i] for i in np.random.default_rng(seed).permutation(len(chunks))]
        if data.max_documents:
            chunks = chunks[: data.max_documents]
        num_validation = int(len(chunks) * data.validation_split)
        train = tf.data.Dataset.from_tensor_slices(chunks[num_validation:] or [""])
        validation = tf.data.Dataset.from_tensor_slices(chunks[:num_validation] or [""]) if split else None
    else:
        num_files = sum(1 for _ in documents.rglob("*.txt"))
        if split and not (1 <= int(num_files * split) < num_files):  # Keras's own split arithmetic
            raise TextError(
                f"{num_files} documents are too few for validation_split={data.validation_split}: "
                "both parts need one at least"
            )
        try:
            datasets = keras.utils.text_dataset_from_directory(
                documents,
                label_mode=None,
                batch_size=None,
                validation_split=split,
                subset="both" if split else None,
                seed=seed,
            )
        except ValueError as error:  # "No text files found in directory ..."
            raise TextError(f"{documents}: {error}") from None
        train, validation = datasets if split else (datasets, None)
        if data.max_documents:
            train = train.take(data.max_documents - int(data.max_documents * data.validation_split))
            validation = validation.take(int(data.max_documents * data.validation_split)) if split else None

    def without_breaks(text):
        return tf.strings.regex_replace(text, "<br />", " ")

    return train.map(without_breaks), validation.map(without_breaks) if validation is not None else None


def word_chunks(text: str, num_words: int) -> list[str]:
    """The text cut into consecutive documents of `num_words` whitespace-separated words."""
    words = text.split()
    return [" ".join(words[start : start + num_words]) for start in range(0, len(words), num_words)]


def vectorize(vectorizer, texts) -> np.ndarray:
    """(documents, sequence_length) word ids of the documents that have two words or more (one
    word predicts nothing), in the smallest integer type that holds the vocabulary."""
    rows = np.concatenate([batch.numpy() for batch in texts.batch(1024).map(vectorizer)])
    rows = rows[(rows != 0).sum(axis=1) >= 2]
    return rows.astype(np.uint16 if vectorizer.vocabulary_size() <= 1 << 16 else np.int32)


def prepare_documents(data: TransformerDataParams, paths: TransformerPaths, seed: int) -> dict[str, Any]:
    """Adapt the book's TextVectorization to the training documents; write both splits vectorized
    and the vocabulary. Nothing is written unless the data fits the params."""
    from tasks.text.transformer.vectorize import make_vectorizer, save_vocabulary

    train_texts, validation_texts = read_documents(data, paths.documents, seed)
    vectorizer = make_vectorizer(data.max_tokens, data.sequence_length)
    vectorizer.adapt(train_texts.batch(1024))
    if vectorizer.vocabulary_size() <= 2:  # only padding and [UNK]: no document holds a word
        raise TextError(f"the training documents in {paths.documents} hold no words: the corpus is empty")
    train = vectorize(vectorizer, train_texts)
    validation = vectorize(vectorizer, validation_texts) if validation_texts is not None else None
    check_corpus_fits(data, train, validation)
    vocabulary = vectorizer.get_vocabulary()
    if len(vocabulary) < data.max_tokens:
        log.warning(
            "the training documents have %d distinct words: the vocabulary holds %d tokens, fewer than "
            "transformer.data.max_tokens=%d",
            len(vocabulary) - 2,
            len(vocabulary),
            data.max_tokens,
        )
    paths.prepared.mkdir(parents=True, exist_ok=True)
    np.save(paths.prepared / "train.npy", train)
    np.save(paths.prepared / "validation.npy", validation if validation is not None else train[:0])
    save_vocabulary(paths.prepared / "vocabulary.json", vocabulary, data.sequence_length)
    stats = {
        "num_train_documents": len(train),
        "num_validation_documents": len(validation) if validation is not None else 0,
        "vocab_size": len(vocabulary),
        "mean_words": float((train != 0).sum(axis=1).mean()),
    }
    log.info("prepared: %s", stats)
    return stats


def check_corpus_fits(data: TransformerDataParams, train: np.ndarray, validation: np.ndarray | None) -> None:
    """One clear error when the documents cannot train the model the params describe."""
    if len(train) == 0:
        raise TextError(
            "no training document has two words or more: the corpus is empty or too small"
            + (f" for validation_split={data.validation_split}" if data.validation_split else "")
        )
    if validation is not None and len(validation) == 0:
        raise TextError(
            f"no validation document has two words or more: the corpus of {len(train)} documents is too "
            f"small for validation_split={data.validation_split}"
        )
    longest = int((train != 0).sum(axis=1).max())
    if longest < data.sequence_length:
        raise TextError(
            f"transformer.data.sequence_length={data.sequence_length} is longer than every training "
            f"document (the longest has {longest} words): set it to at most {longest}"
        )


def download(root: Path) -> None:
    params, _ = load(root)
    download_documents(params.data, storage.under(root, TransformerPaths()).documents, root)


def prepare(root: Path) -> None:
    params, runtime = load(root)
    prepare_documents(params.data, storage.under(root, TransformerPaths()), runtime.seed)


if __name__ == "__main__":
    sys.exit(run_steps({"download": download, "prepare": prepare}, __doc__))
