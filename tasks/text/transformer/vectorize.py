"""Words as the Transformer sees them: the book's `TextVectorization` (standard standardization:
lower case, punctuation stripped, split on whitespace), its vocabulary kept as a file, and prompts
turned into id rows."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import tensorflow as tf
from keras import layers

from tasks import storage
from tasks.text.corpus import TextError

log = logging.getLogger(__name__)

PADDING, UNKNOWN = 0, 1  # ids TextVectorization gives "" and "[UNK]"


def make_vectorizer(
    max_tokens: int | None = None, sequence_length: int | None = None, vocabulary: Sequence[str] | None = None
) -> layers.TextVectorization:
    """The book's vectorizer; with `vocabulary` (as `get_vocabulary()` returns it) a fitted one."""
    return layers.TextVectorization(
        max_tokens=max_tokens,
        output_mode="int",
        output_sequence_length=sequence_length,
        vocabulary=list(vocabulary) if vocabulary is not None else None,
    )


def save_vocabulary(path: Path, vocabulary: Sequence[str], sequence_length: int) -> None:
    storage.write_json(
        path, {"sequence_length": sequence_length, "tokens": [str(token) for token in vocabulary]}
    )


@dataclass(frozen=True)
class WordVocabulary:
    """A prepared corpus's words, token i being id i ("" and "[UNK]" first, as `get_vocabulary()`
    lists them), and the number of positions the model was built for."""

    tokens: tuple[str, ...]
    sequence_length: int

    @cached_property
    def vectorizer(self) -> layers.TextVectorization:
        return make_vectorizer(vocabulary=self.tokens)

    def encode_prompts(self, prompts: Sequence[str], allow_unknown: bool) -> tuple[np.ndarray, np.ndarray]:
        """(ids, lengths): one right-padded row of word ids per prompt, and its number of words.

        A prompt with no word at all is an error; one whose words are all outside the vocabulary
        is too, unless `allow_unknown` (then the model generates after [UNK] tokens only).
        """
        ids = self.vectorizer(tf.constant(list(prompts))).numpy().astype(np.int32)
        lengths = (ids != PADDING).sum(axis=1).astype(np.int32)
        for prompt, row, length in zip(prompts, ids, lengths, strict=True):
            if length == 0:
                raise TextError(f"prompt {prompt!r} has no words (punctuation is stripped, as in training)")
            num_unknown = int((row == UNKNOWN).sum())
            if num_unknown == length and not allow_unknown:
                raise TextError(
                    f"prompt {prompt!r}: none of its words is in the vocabulary of {len(self.tokens)} words: "
                    "use words of the corpus, or set transformer.sample.unknown_prompt: generate to "
                    "generate after [UNK] tokens"
                )
            if num_unknown:
                log.warning(
                    "prompt %r: %d of its %d words not in the vocabulary, read as [UNK]",
                    prompt,
                    num_unknown,
                    length,
                )
        return ids, lengths

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.tokens[int(id_)] for id_ in ids)


def read_vocabulary(path: Path) -> WordVocabulary:
    content = json.loads(path.read_text(encoding="utf-8"))
    return WordVocabulary(tuple(content["tokens"]), content["sequence_length"])
