"""How a generated text reads, measured on its words: share of real corpus words, distinct n-grams
and repetition (low temperatures loop)."""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def corpus_word_share(generated_words: Sequence[str], corpus_words: set[str]) -> float:
    """Share of generated words that are real words of the corpus."""
    if not generated_words:
        return 0.0
    return sum(word in corpus_words for word in generated_words) / len(generated_words)


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(tokens[i:] for i in range(n))))


def distinct_n(tokens: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams (1.0 = no n-gram repeats; low = repetitive text)."""
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(tokens: Sequence[str], n: int = 3) -> float:
    """Share of n-grams that already occurred earlier in the text (loops at low temperature)."""
    grams = ngrams(tokens, n)
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams) if grams else 0.0


def text_metrics(text: str, corpus_words: set[str]) -> dict[str, float]:
    tokens = words(text)
    return {
        "corpus_word_share": corpus_word_share(tokens, corpus_words),
        "distinct_1": distinct_n(tokens, 1),
        "distinct_2": distinct_n(tokens, 2),
        "repetition_rate": repetition_rate(tokens, 3),
    }
