"""The word-level Transformer (Chollet, DLwP 2nd ed., 12.1): its size against the book's architecture,
causality and padding, the loss, the KV-cache sampler against the full model, temperatures, top-k and
nucleus filtering, bad prompts and params, the train and sample steps on a tiny corpus, and the model
served as an MLflow pyfunc."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from mlflow.exceptions import MlflowException

from tasks.params import (
    BlowupParams,
    EpochChoiceParams,
    ParamsError,
    RuntimeParams,
    available_profiles,
    load_params,
    parse_section,
)
from tasks.storage import read_history, under
from tasks.text.corpus import TextError
from tasks.text.sampling import truncated_log_probs
from tasks.text.transformer import serving
from tasks.text.transformer.data import download_documents, prepare_documents
from tasks.text.transformer.model import (
    build_transformer_lm,
    compile_model,
    generate_texts,
    make_generator,
)
from tasks.text.transformer.params import (
    Sampler,
    TransformerParams,
    TransformerPaths,
    TransformerSampleParams,
)
from tasks.text.transformer.steps import sample_texts, train_transformer
from tasks.text.transformer.vectorize import WordVocabulary, read_vocabulary, save_vocabulary
from tests.conftest import REPO_ROOT, TINY_TEXT

RUNTIME = RuntimeParams(
    seed=1, dtype_policy="float32", jit_compile=False, memory_growth=True, distribute="auto"
)
VOCAB_SIZE, SEQUENCE_LENGTH, EMBED_DIM, DENSE_DIM, NUM_HEADS = 40, 10, 8, 16, 2
# A made-up vocabulary as TextVectorization.get_vocabulary() returns it: padding, [UNK], then words.
WORDS = (
    "the a this movie film is was and of to it in good bad great awful plot story actor acting "
    "scene end love hate funny boring best worst really very not just music script director "
    "ending character time"
).split()
TOKENS = ["", "[UNK]", *WORDS]
assert len(TOKENS) == VOCAB_SIZE


def tiny_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_transformer_lm(VOCAB_SIZE, SEQUENCE_LENGTH, EMBED_DIM, DENSE_DIM, NUM_HEADS)


def with_head_bias(model: keras.Model, bias: np.ndarray) -> keras.Model:
    """`model` with the next-word layer's bias set, which skews every prediction the same way."""
    head = model.get_layer("next_word")
    kernel, _ = head.get_weights()
    head.set_weights([kernel, bias.astype(np.float32)])
    return model


@pytest.fixture(scope="module")
def model() -> keras.Model:
    """A random tiny model whose predictions are far from uniform (a spread-out head bias)."""
    bias = np.random.default_rng(0).normal(0.0, 1.5, VOCAB_SIZE)
    return with_head_bias(tiny_model(), bias)


@pytest.fixture(scope="module")
def generator_with_distributions(model):
    return make_generator(model, return_distributions=True)


def run_generator(generator, prompts, temperatures, top_k, top_p, num_words, seed=0) -> list[np.ndarray]:
    """The generator on id prompts of any lengths (right-padded here): [ids, entropies, ...]."""
    prompt_ids = np.zeros((len(prompts), max(map(len, prompts))), np.int32)
    for row, prompt in zip(prompt_ids, prompts):
        row[: len(prompt)] = prompt
    outputs = generator(
        tf.constant(prompt_ids),
        tf.constant([len(prompt) for prompt in prompts], tf.int32),
        tf.constant(temperatures, tf.float32),
        tf.constant(top_k, tf.int32),
        tf.constant(top_p, tf.float32),
        tf.constant(num_words, tf.int32),
        tf.constant([seed, 0], tf.int32),
    )
    return [output.numpy() for output in outputs]


# --- NumPy references -----------------------------------------------------------------------


def reweighted(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The book's reweight_distribution in float64: p ** (1 / T), renormalised."""
    weights = np.asarray(probs, np.float64) ** (1.0 / temperature)
    return weights / weights.sum(axis=-1, keepdims=True)


def kept_tokens(probs: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """Boolean mask of the top_k likeliest tokens (0 = all) within the smallest set of likeliest
    tokens whose mass reaches top_p (1 = all)."""
    order = np.argsort(-probs, kind="stable")
    num_kept = len(probs)
    if top_p < 1.0:
        num_kept = int(np.argmax(np.cumsum(probs[order]) >= top_p)) + 1
    if top_k > 0:
        num_kept = min(num_kept, top_k)
    kept = np.zeros(len(probs), bool)
    kept[order[:num_kept]] = True
    return kept


def entropy_bits_of(probs: np.ndarray) -> float:
    nonzero = probs[probs > 0]
    return float(-(nonzero * np.log2(nonzero)).sum())


def sampled_distribution(probs: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """What the sampler draws from given the model's prediction: padding dropped, reweighted, filtered."""
    probs = reweighted(np.concatenate([[0.0], probs[1:]]), temperature)
    probs = np.where(kept_tokens(probs, top_k, top_p), probs, 0.0)
    return probs / probs.sum()


# --- The model ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vocab_size", "sequence_length", "embed_dim", "dense_dim", "num_heads"),
    [(40, 10, 8, 16, 2), (57, 12, 12, 20, 3), (30, 8, 16, 8, 1)],
)
def test_parameter_count_is_the_books_architecture(
    vocab_size, sequence_length, embed_dim, dense_dim, num_heads
):
    V, L, D, F, N = vocab_size, sequence_length, embed_dim, dense_dim, num_heads
    attention = 3 * (D * N * D + N * D) + N * D * D + D  # query, key, value (key_dim=D per head), output
    expected = (
        V * D + L * D  # token and position embeddings
        + 2 * attention
        + D * F + F + F * D + D  # dense projection
        + 3 * 2 * D  # three layer norms
        + D * V + V  # next-word head
    )  # fmt: skip

    model = build_transformer_lm(V, L, D, F, N)

    assert model.count_params() == expected
    assert model.output_shape == (None, None, V)


def test_outputs_at_a_position_ignore_every_later_word(model):
    rng = np.random.default_rng(1)
    words = rng.integers(2, VOCAB_SIZE, size=(4, SEQUENCE_LENGTH)).astype(np.int32)
    position = 4
    changed = words.copy()
    changed[:, position + 1 :] = (words[:, position + 1 :] - 1) % (VOCAB_SIZE - 2) + 2  # every one differs

    before, after = model(words).numpy(), model(changed).numpy()

    np.testing.assert_allclose(after[:, : position + 1], before[:, : position + 1], atol=1e-6)
    assert np.abs(after[:, position + 1 :] - before[:, position + 1 :]).max() > 1e-3, "later words do matter"
    np.testing.assert_allclose(before.sum(axis=-1), 1.0, rtol=1e-5)


def test_padding_after_the_words_changes_no_prediction_at_a_word(model):
    words = np.random.default_rng(2).integers(2, VOCAB_SIZE, size=(3, SEQUENCE_LENGTH)).astype(np.int32)
    num_words = 6
    padded = words.copy()
    padded[:, num_words:] = 0

    np.testing.assert_allclose(
        model(padded).numpy()[:, :num_words], model(words[:, :num_words]).numpy(), atol=1e-6
    )


def test_loss_is_the_mean_cross_entropy_over_the_positions_whose_input_is_a_word():
    """Padded input positions are masked out of the loss; the word before the padding still counts."""
    model = tiny_model(seed=5)
    x = np.array([[5, 6, 7, 8, 0, 0, 0, 0, 0], [9, 10, 11, 12, 13, 14, 15, 16, 17]], np.int32)
    y = np.array([[6, 7, 8, 0, 3, 3, 3, 3, 3], [10, 11, 12, 13, 14, 15, 16, 17, 18]], np.int32)
    compile_model(model, learning_rate=1e-3, jit_compile=False)
    probs = model(x).numpy().astype(np.float64)
    cross_entropy = -np.log(np.take_along_axis(probs, y[..., None], axis=-1)[..., 0])
    is_word = x != 0
    other_targets_after_padding = np.where(is_word, y, 20)

    loss = model.evaluate(x, y, verbose=0)

    assert loss == pytest.approx(cross_entropy[is_word].mean(), rel=1e-5)
    assert model.evaluate(x, other_targets_after_padding, verbose=0) == pytest.approx(loss, rel=1e-6)


# --- The KV-cache sampler against the full model --------------------------------------------

PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]  # of different lengths, in one batch
SAMPLERS = [  # (temperature, top_k, top_p)
    (0.5, 0, 1.0),
    (1.0, 0, 1.0),
    (1.5, 0, 1.0),
    (1.0, 5, 1.0),
    (0.8, 0, 0.6),
    (1.2, 8, 0.7),
]
NUM_WORDS = SEQUENCE_LENGTH - max(map(len, PROMPTS))


@pytest.fixture(scope="module")
def generated(generator_with_distributions):
    """Every prompt with every sampler: the rows, and the drawn ids, entropies and distributions."""
    rows = [(prompt, sampler) for sampler in SAMPLERS for prompt in PROMPTS]
    ids, entropies, distributions = run_generator(
        generator_with_distributions,
        [prompt for prompt, _ in rows],
        *zip(*[sampler for _, sampler in rows]),
        num_words=NUM_WORDS,
        seed=3,
    )
    return rows, ids, entropies, distributions


def test_kv_cache_predictions_equal_the_model_at_the_last_word_of_the_whole_prefix(model, generated):
    """The book read the prediction at position i instead of at len(prompt) - 1 + i."""
    rows, ids, _, distributions = generated
    assert ids.shape == distributions.shape[:2] == (len(rows), NUM_WORDS)

    lengths = np.array([len(prompt) for prompt, _ in rows])
    for length in np.unique(lengths):  # rows with prompts of one length run as one batch
        same_length = np.flatnonzero(lengths == length)
        prompts = np.array([rows[row][0] for row in same_length], np.int32)
        for step in range(NUM_WORDS):
            prefixes = np.concatenate([prompts, ids[same_length, :step]], axis=1)
            expected = model(prefixes).numpy()[:, -1]
            np.testing.assert_allclose(
                distributions[same_length, step],
                expected,
                atol=1e-5,
                err_msg=f"prompts of {length}, step {step}",
            )


def test_each_word_is_drawn_from_the_reweighted_filtered_prediction_and_never_padding(generated):
    rows, ids, entropies, distributions = generated

    for row, (_, (temperature, top_k, top_p)) in enumerate(rows):
        for step in range(NUM_WORDS):
            drawn_from = sampled_distribution(distributions[row, step], temperature, top_k, top_p)
            assert drawn_from[ids[row, step]] > 0, f"row {row} step {step}: drew a word outside the filter"
            assert entropies[row, step] == pytest.approx(entropy_bits_of(drawn_from), rel=1e-4, abs=1e-5)
    assert (ids != 0).all()
    assert len(np.unique(ids)) > 10, "the rows drew varied words"


def test_draws_follow_the_temperature_reweighted_distribution(generator_with_distributions):
    num_rows, temperature = 3000, 0.5
    ids, _, distributions = run_generator(
        generator_with_distributions,
        [[5, 6]] * num_rows,
        [temperature] * num_rows,
        [0] * num_rows,
        [1.0] * num_rows,
        num_words=1,
        seed=7,
    )
    prediction = distributions[0, 0]
    expected = sampled_distribution(prediction, temperature, 0, 1.0)
    untempered = sampled_distribution(prediction, 1.0, 0, 1.0)
    frequencies = np.bincount(ids[:, 0], minlength=VOCAB_SIZE) / num_rows

    assert 0.5 * np.abs(expected - untempered).sum() > 0.15, "temperature 1 would be told apart"
    assert 0.5 * np.abs(frequencies - expected).sum() < 0.05  # total variation; sampling noise ~0.02


# --- Temperatures, seeds and texts ----------------------------------------------------------


@pytest.fixture(scope="module")
def vocabulary() -> WordVocabulary:
    return WordVocabulary(tuple(TOKENS), SEQUENCE_LENGTH)


@pytest.fixture(scope="module")
def generator(model):
    return make_generator(model)


def test_a_vocabulary_read_back_encodes_prompts_and_decodes_ids(tmp_path):
    save_vocabulary(tmp_path / "vocabulary.json", TOKENS, SEQUENCE_LENGTH)

    vocabulary = read_vocabulary(tmp_path / "vocabulary.json")

    assert vocabulary == WordVocabulary(tuple(TOKENS), SEQUENCE_LENGTH)
    assert vocabulary.vectorizer is vocabulary.vectorizer, "fitted once, then cached"
    ids, lengths = vocabulary.encode_prompts(["This movie!", "The plot, really..."], allow_unknown=False)
    assert lengths.tolist() == [2, 3]
    assert ids.tolist() == [
        [TOKENS.index("this"), TOKENS.index("movie"), 0],
        [TOKENS.index("the"), TOKENS.index("plot"), TOKENS.index("really")],
    ]
    assert vocabulary.decode(ids[1]) == "the plot really"
    assert vocabulary.decode([1, TOKENS.index("end")]) == "[UNK] end"


def test_lower_temperatures_draw_from_distributions_of_lower_entropy(generator, vocabulary):
    """The book's callback passed no temperature: every "temperature" sampled at 1.0."""
    temperatures = [0.2, 1.0, 1.5]

    texts = generate_texts(
        generator,
        vocabulary,
        ["this movie"],
        [Sampler(temperature=t) for t in temperatures],
        num_words=8,
    )

    assert [text.sampler.temperature for text in texts] == temperatures
    entropies = [text.entropy_bits for text in texts]
    assert entropies[0] < entropies[1] < entropies[2] <= math.log2(VOCAB_SIZE - 1)
    assert all(len(text.text.split()) == 8 for text in texts)


def test_same_seed_same_text_other_seed_other_text(generator, vocabulary):
    def text(seed: int) -> str:
        [generated] = generate_texts(
            generator, vocabulary, ["the plot"], [Sampler(temperature=1.0)], 8, rng_seed=seed
        )
        return generated.text

    assert text(5) == text(5)
    assert len({text(seed) for seed in range(4)}) == 4


def test_texts_come_sampler_major_with_their_prompt_and_sampler(generator, vocabulary):
    prompts, samplers = (
        ["this movie", "the story was"],
        [Sampler(temperature=0.7), Sampler(temperature=1.0, top_k=3)],
    )

    texts = generate_texts(generator, vocabulary, prompts, samplers, 5)

    assert [(text.prompt, text.sampler) for text in texts] == [(p, s) for s in samplers for p in prompts]
    for text in texts:
        words = text.text.split()
        assert len(words) == 5 and set(words) <= set(TOKENS[1:])


# --- top-k and nucleus filtering ------------------------------------------------------------


def random_log_probs(num_rows: int, vocab_size: int, seed: int) -> np.ndarray:
    return np.log(np.random.default_rng(seed).dirichlet(np.full(vocab_size, 0.5), size=num_rows)).astype(
        np.float32
    )


def renormalised(log_probs: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The kept tokens' log-probabilities, renormalised over them (float64)."""
    kept_log_probs = log_probs[kept].astype(np.float64)
    return kept_log_probs - np.log(np.exp(kept_log_probs).sum())


@pytest.mark.parametrize("top_k", [1, 2, 7, 29, 30, 45])
def test_top_k_keeps_exactly_the_k_likeliest_tokens(top_k):
    log_probs = random_log_probs(6, 30, seed=top_k)
    assert all(len(np.unique(row)) == 30 for row in log_probs), "no ties"

    kept = keras.ops.convert_to_numpy(
        truncated_log_probs(log_probs, np.full(6, top_k, np.int32), np.ones(6, np.float32))
    )

    for row, original in zip(kept, log_probs):
        likeliest = np.argsort(-original)[:top_k]
        assert set(np.flatnonzero(np.isfinite(row))) == set(likeliest)
        np.testing.assert_allclose(row[likeliest], renormalised(original, likeliest), atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_top_p_keeps_the_smallest_set_of_likeliest_tokens_whose_mass_reaches_p(seed):
    log_probs = random_log_probs(8, 30, seed)
    top_p = np.random.default_rng(100 + seed).uniform(0.05, 0.99, size=8).astype(np.float32)
    masses = np.cumsum(np.sort(np.exp(log_probs.astype(np.float64)), axis=-1)[:, ::-1], axis=-1)
    assert np.abs(masses - top_p[:, None]).min() > 1e-4, "no p on the edge of a set (float32 rounding)"

    kept = keras.ops.convert_to_numpy(truncated_log_probs(log_probs, np.zeros(8, np.int32), top_p))

    for row, original, p in zip(kept, log_probs, top_p):
        expected = kept_tokens(np.exp(original.astype(np.float64)), 0, p)
        np.testing.assert_array_equal(np.isfinite(row), expected)
        assert np.exp(original[expected].astype(np.float64)).sum() >= p
        np.testing.assert_allclose(row[expected], renormalised(original, expected), atol=1e-5)


def test_filters_apply_per_row_both_at_once_and_off():
    log_probs = random_log_probs(4, 30, seed=9)
    top_k = np.array([0, 4, 0, 6], np.int32)
    top_p = np.array([1.0, 1.0, 0.5, 0.9], np.float32)

    kept = keras.ops.convert_to_numpy(truncated_log_probs(log_probs, top_k, top_p))

    np.testing.assert_allclose(kept[0], log_probs[0], atol=1e-5)  # both off: unchanged
    for row, original, k, p in zip(kept, log_probs, top_k, top_p):
        np.testing.assert_array_equal(
            np.isfinite(row), kept_tokens(np.exp(original.astype(np.float64)), k, p)
        )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.ops.logsumexp(kept, axis=-1)), 0.0, atol=1e-5
    )  # normalised


# --- The padding id -------------------------------------------------------------------------


def test_padding_is_never_drawn_even_when_the_model_predicts_it_most():
    bias = np.zeros(VOCAB_SIZE)
    bias[0] = 20.0
    generator = make_generator(with_head_bias(tiny_model(seed=4), bias), return_distributions=True)
    num_rows = 48
    samplers = [(0.5, 0, 1.0), (1.0, 0, 1.0), (2.0, 0, 1.0), (1.0, 1, 1.0), (1.0, 0, 0.3), (1.0, 3, 0.9)]
    rows = [samplers[row % len(samplers)] for row in range(num_rows)]

    ids, entropies, distributions = run_generator(
        generator, [[5, 6, 7]] * num_rows, *zip(*rows), num_words=6, seed=1
    )

    assert distributions[..., 0].min() > 0.99, "the model puts nearly all its mass on padding"
    assert (ids != 0).all()
    assert np.isfinite(entropies).all()
    greedy = [row for row, (_, top_k, _) in enumerate(rows) if top_k == 1]
    np.testing.assert_array_equal(ids[greedy], distributions[greedy][..., 1:].argmax(axis=-1) + 1)


def test_without_draw_unknown_unk_is_never_drawn_and_the_other_words_keep_their_ratios():
    bias = np.zeros(VOCAB_SIZE)
    bias[1] = 6.0  # [UNK] the likeliest word by far, as in a small vocabulary
    model = with_head_bias(tiny_model(seed=4), bias)
    rows = [(0.2, 0, 1.0), (1.0, 0, 1.0), (1.5, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.6)] * 8
    drawn = {}
    for draw_unknown in (True, False):
        generator = make_generator(model, draw_unknown=draw_unknown, return_distributions=True)
        drawn[draw_unknown] = run_generator(
            generator, [[5, 6, 7]] * len(rows), *zip(*rows), num_words=8, seed=3
        )

    with_unknown, without_unknown = drawn[True][0], drawn[False][0]
    assert (with_unknown == 1).mean() > 0.3, "the book's way draws [UNK] often here"
    assert (without_unknown != 1).all() and (without_unknown != 0).all()
    # At T=1 without filters, the row draws from the model's words after [UNK]: its entropy is that of
    # the prediction with padding and [UNK] left out and the rest renormalised.
    distributions, entropies = drawn[False][2], drawn[False][1]
    words = distributions[1::5, :, 2:].astype(np.float64)
    words /= words.sum(axis=-1, keepdims=True)
    expected = -(words * np.log2(np.where(words > 0, words, 1))).sum(axis=-1)
    np.testing.assert_allclose(entropies[1::5], expected, rtol=1e-4, atol=1e-5)


def test_a_model_certain_of_padding_draws_uniformly_over_the_words():
    """Every word's probability underflows to 0 in float32: the sampler falls back to a uniform draw
    over the words (never padding) instead of sampling from a row of NaN."""
    bias = np.zeros(VOCAB_SIZE)
    bias[0] = 150.0  # exp(-150) underflows float32: every other probability is exactly 0
    generator = make_generator(with_head_bias(tiny_model(seed=4), bias), return_distributions=True)
    num_rows = 40
    samplers = [(0.5, 0, 1.0), (1.0, 0, 1.0), (2.0, 0, 1.0), (1.0, 3, 1.0)]
    rows = [samplers[row % len(samplers)] for row in range(num_rows)]

    ids, entropies, distributions = run_generator(
        generator, [[5, 6, 7]] * num_rows, *zip(*rows), num_words=3, seed=2
    )

    assert (distributions[..., 1:] == 0).all(), "no word has any float32 mass"
    assert ((ids > 0) & (ids < VOCAB_SIZE)).all()
    # uniform over the 39 words at any temperature; top-k keeps the words tied with its last one: all
    np.testing.assert_allclose(entropies, math.log2(VOCAB_SIZE - 1), rtol=1e-4)
    assert len(np.unique(ids)) > 20, "the rows drew varied words"


# --- Bad prompts and params -----------------------------------------------------------------


def test_a_prompt_of_unknown_words_is_an_error_naming_the_option_unless_allowed(generator, vocabulary):
    with pytest.raises(TextError, match="unknown_prompt") as error:
        generate_texts(generator, vocabulary, ["zzyzx qwerty"], [Sampler(temperature=1.0)], 4)
    assert "zzyzx qwerty" in str(error.value)

    [generated] = generate_texts(
        generator,
        vocabulary,
        ["zzyzx qwerty"],
        [Sampler(temperature=1.0)],
        4,
        allow_unknown=True,
    )
    assert len(generated.text.split()) == 4


def test_a_prompt_with_some_unknown_words_warns_and_generates(generator, vocabulary, caplog):
    with caplog.at_level(logging.WARNING, logger="tasks.text.transformer.vectorize"):
        [generated] = generate_texts(
            generator, vocabulary, ["this zzyzx movie"], [Sampler(temperature=1.0)], 4
        )

    assert len(generated.text.split()) == 4
    (warning,) = caplog.messages
    assert "1 of its 3 words" in warning


@pytest.mark.parametrize("prompt", ["!!! ...", "   ", "?"])
def test_a_prompt_without_words_is_an_error_naming_it(generator, vocabulary, prompt):
    with pytest.raises(TextError, match="no words") as error:
        generate_texts(generator, vocabulary, ["this movie", prompt], [Sampler(temperature=1.0)], 4)
    assert repr(prompt) in str(error.value)


def test_prompt_and_generated_words_must_fit_the_sequence_length(generator, vocabulary):
    prompt = "this movie was"  # 3 words: at most SEQUENCE_LENGTH - 3 generated

    [generated] = generate_texts(
        generator, vocabulary, [prompt], [Sampler(temperature=1.0)], SEQUENCE_LENGTH - 3
    )
    assert len(generated.text.split()) == SEQUENCE_LENGTH - 3

    with pytest.raises(TextError) as error:
        generate_texts(generator, vocabulary, [prompt], [Sampler(temperature=1.0)], SEQUENCE_LENGTH - 2)
    message = str(error.value)
    assert f"sequence length of {SEQUENCE_LENGTH} words" in message
    assert f"at most {SEQUENCE_LENGTH - 3}" in message


@pytest.fixture(scope="module")
def book_params() -> dict:
    return load_params(REPO_ROOT)


@pytest.mark.parametrize("profile", [None, *available_profiles(REPO_ROOT)])
def test_every_profile_holds_a_valid_transformer_section_whose_prompts_fit(profile):
    params = parse_section(load_params(REPO_ROOT, profile=profile), "transformer", TransformerParams)

    longest_prompt = max(len(prompt.split()) for prompt in params.sample.prompts)
    assert longest_prompt + params.sample.num_words <= params.data.sequence_length
    assert len(params.train.epoch_sample_prompt.split()) + params.train.epoch_sample_words <= (
        params.data.sequence_length
    )


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("sample.temperatures", [0.5, 0.0], "transformer.sample.temperatures.1"),
        ("sample.temperatures", [-1.0], "transformer.sample.temperatures.0"),
        ("train.epoch_sample_temperatures", [0.0], "transformer.train.epoch_sample_temperatures.0"),
        ("sample.samplers", [{"temperature": 0.0, "top_k": 5}], "transformer.sample.samplers.0.temperature"),
        ("sample.samplers", [{"temperature": 1.0, "top_p": 0.0}], "transformer.sample.samplers.0.top_p"),
        ("sample.samplers", [{"temperature": 1.0, "top_p": 1.5}], "transformer.sample.samplers.0.top_p"),
        ("sample.samplers", [{"temperature": 1.0, "top_k": 0}], "transformer.sample.samplers.0.top_k"),
        ("sample.samplers", [{"temperature": 1.0, "top_kk": 3}], "transformer.sample.samplers.0.top_kk"),
    ],
)
def test_bad_sampling_params_are_one_error_naming_the_key(book_params, key, value, named):
    params = load_params(REPO_ROOT, overrides={f"transformer.{key}": value})

    with pytest.raises(ParamsError) as error:
        parse_section(params, "transformer", TransformerParams)

    assert named in str(error.value)
    assert parse_section(book_params, "transformer", TransformerParams)  # the file itself is untouched


def test_duplicate_samplers_are_an_error(book_params):
    params = load_params(REPO_ROOT, overrides={"transformer.sample.samplers": [{"temperature": 1.0}]})

    with pytest.raises(ParamsError, match="distinct"):
        parse_section(params, "transformer", TransformerParams)  # temperatures already hold 1.0


# --- The train and sample steps -------------------------------------------------------------

EPOCHS, EPOCH_SAMPLE_TEMPERATURES, EPOCH_SAMPLE_WORDS = 3, [0.5, 1.0], 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[TransformerPaths, dict]:
    """A model trained a few epochs on the tiny corpus, cut into 10-word documents."""
    root = tmp_path_factory.mktemp("transformer")
    corpus = root / "corpus.txt"
    corpus.write_text(TINY_TEXT * 14, encoding="utf-8")
    overrides = {
        "transformer.data.dataset": "text_file",
        "transformer.data.url": str(corpus),
        "transformer.data.sha256": "",
        "transformer.data.max_documents": 0,
        "transformer.data.max_tokens": 60,
        "transformer.data.sequence_length": SEQUENCE_LENGTH,
        "transformer.data.validation_split": 0.1,
    }
    data = parse_section(load_params(REPO_ROOT, overrides=overrides), "transformer", TransformerParams).data
    paths = under(root, TransformerPaths())
    download_documents(data, paths.documents, root)
    prepare_documents(data, paths, seed=RUNTIME.seed)
    metrics = train_transformer(
        paths,
        embed_dim=16,
        dense_dim=32,
        num_heads=2,
        epochs=EPOCHS,
        batch_size=16,
        learning_rate=0.01,
        epoch_sample_prompt="the will to",
        epoch_sample_words=EPOCH_SAMPLE_WORDS,
        epoch_sample_temperatures=EPOCH_SAMPLE_TEMPERATURES,
        choice=EpochChoiceParams(keep="best", patience=0),
        blowup=BlowupParams(factor=1.5, steps=50),
        runtime=RUNTIME,
    )
    return paths, metrics


def test_train_lowers_the_loss_and_writes_model_history_metrics_and_samples(trained):
    paths, metrics = trained
    vocabulary = read_vocabulary(paths.prepared / "vocabulary.json")

    history = read_history(paths.history)
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    for row in history:
        assert row["perplexity"] == pytest.approx(math.exp(row["loss"]), rel=1e-6)
        assert row["val_perplexity"] == pytest.approx(math.exp(row["val_loss"]), rel=1e-6)
    assert metrics["best_val_loss"] == pytest.approx(min(row["val_loss"] for row in history), rel=1e-6)
    losses = [row["val_loss"] for row in history]
    assert metrics["kept_epoch"] == 1 + losses.index(min(losses)), "keep: best"
    assert metrics["kept_val_perplexity"] == pytest.approx(math.exp(min(losses)), rel=1e-6)
    assert metrics["final_val_loss"] == pytest.approx(losses[-1], rel=1e-6)
    assert metrics["best_val_perplexity"] == pytest.approx(math.exp(metrics["best_val_loss"]), rel=1e-9)
    assert metrics["epochs_completed"] == EPOCHS and metrics["diverged"] == 0
    assert json.loads(paths.train_metrics.read_text()) == metrics

    model = keras.models.load_model(paths.model)
    assert model.output_shape[-1] == len(vocabulary.tokens) and vocabulary.sequence_length == SEQUENCE_LENGTH
    assert all(np.isfinite(weight).all() for weight in model.get_weights())

    records = json.loads(paths.epoch_samples.read_text(encoding="utf-8"))
    assert [(record["epoch"], record["temperature"]) for record in records] == [
        (epoch, t) for epoch in range(1, EPOCHS + 1) for t in EPOCH_SAMPLE_TEMPERATURES
    ]
    for record in records:
        assert record["text"].startswith("the will to ")
        assert len(record["text"].split()) == 3 + EPOCH_SAMPLE_WORDS
        assert 0 <= record["entropy_bits"] <= math.log2(len(vocabulary.tokens))


def test_sample_writes_one_entry_per_sampler_with_its_texts_and_metrics(trained):
    paths, _ = trained
    sample = TransformerSampleParams(
        prompts=["the will to", "zzyzx"],  # a prompt of only unknown words: generated after [UNK]
        num_words=5,
        temperatures=[0.5, 1.0],
        samplers=[Sampler(temperature=1.0, top_k=3), Sampler(temperature=1.0, top_p=0.5)],
        unknown_prompt="generate",
        draw_unknown=True,
    )

    results = sample_texts(paths, sample, RUNTIME)

    labels = [sampler.label for sampler in sample.all_samplers]
    assert [result["label"] for result in results] == labels
    assert json.loads((paths.samples / "samples.json").read_text(encoding="utf-8")) == results
    metric_keys = {"entropy_bits", "corpus_word_share", "distinct_1", "distinct_2", "repetition_rate"}
    sample_metrics = json.loads(paths.sample_metrics.read_text())
    assert set(sample_metrics) == {"words_per_second", *labels}
    for result in results:
        assert set(result["metrics"]) == metric_keys
        assert sample_metrics[result["label"]] == result["metrics"]
        assert [text["prompt"] for text in result["texts"]] == sample.prompts
        assert all(len(text["text"].split()) == 5 for text in result["texts"])
        assert result["metrics"]["entropy_bits"] == pytest.approx(
            np.mean([text["entropy_bits"] for text in result["texts"]]), rel=1e-6
        )
        written = (paths.samples / f"{result['file']}.txt").read_text(encoding="utf-8")
        assert all(f"{text['prompt']} {text['text']}" in written for text in result["texts"])
    by_label = {result["label"]: result["metrics"]["entropy_bits"] for result in results}
    assert by_label["temperature=0.5"] < by_label["temperature=1"]
    assert by_label["temperature=1, top_k=3"] <= math.log2(3) + 1e-6


def test_sample_rejects_a_prompt_of_unknown_words_by_default_writing_nothing(trained, tmp_path):
    paths, _ = trained
    paths = dataclasses.replace(paths, samples=tmp_path / "samples", sample_metrics=tmp_path / "metrics.json")
    sample = TransformerSampleParams(
        prompts=["the will to", "zzyzx"],
        num_words=3,
        temperatures=[1.0],
        samplers=[],
        unknown_prompt="fail",
        draw_unknown=True,
    )

    with pytest.raises(TextError, match="unknown_prompt"):
        sample_texts(paths, sample, RUNTIME)
    assert list(tmp_path.iterdir()) == []


# --- Serving --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "named"),
    [
        ({"prompt": "", "temperature": 1.0, "length": 5}, "prompt"),
        ({"prompt": None, "temperature": 1.0, "length": 5}, "prompt"),
        ({"prompt": "the will", "temperature": 1.0, "length": 0}, "length"),
        ({"prompt": "the will", "temperature": 1.0, "length": "ten"}, "length"),
        ({"prompt": "the will", "temperature": 0.0, "length": 5}, "temperature"),
        ({"prompt": "the will", "temperature": float("nan"), "length": 5}, "temperature"),
        ({"prompt": "the will", "temperature": "hot", "length": 5}, "hot"),
        ({"prompt": "the will", "temperature": 1.0, "length": 5, "top_k": 0}, "top_k"),
        ({"prompt": "the will", "temperature": 1.0, "length": 5, "top_p": 1.5}, "top_p"),
        ({"prompt": "the will", "temperature": 1.0, "length": 5, "draw_unknown": "no"}, "draw_unknown"),
    ],
)
def test_check_request_rejects_a_bad_row_naming_it(row, named):
    with pytest.raises(MlflowException) as error:
        serving.check_request(row, 3)

    assert "row 3" in error.value.message and named in error.value.message
    assert error.value.get_http_status_code() == 400


def test_check_request_reads_a_good_row():
    prompt, sampler, length, seed, draw_unknown = serving.check_request(
        {
            "prompt": "the will",
            "temperature": 0.7,
            "length": np.int64(5),
            "top_k": 4.0,
            "top_p": None,
            "seed": 9,
            "draw_unknown": np.False_,
        },
        1,
    )

    assert (prompt, length, seed, draw_unknown) == ("the will", 5, 9, False)
    assert sampler == Sampler(temperature=0.7, top_k=4)
    assert serving.check_request({"prompt": "x", "temperature": 1.0, "length": 1}, 1)[4] is True  # the book's


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """The trained model saved and loaded back as the pyfunc the registry serves (MLflow hands
    load_context the artifacts' paths as strings)."""
    paths, _ = trained
    destination = tmp_path_factory.mktemp("served") / "model"
    mlflow.pyfunc.save_model(
        str(destination),
        python_model=serving.TransformerGenerator(),
        artifacts={"model": str(paths.model), "vocabulary": str(paths.prepared / "vocabulary.json")},
        signature=serving.SIGNATURE,
        pip_requirements=[],
    )
    return mlflow.pyfunc.load_model(str(destination))


def test_the_served_model_generates_length_words_per_row(served):
    request = pd.DataFrame(
        {
            "prompt": ["the will to", "what is", "the will to"],
            "temperature": [0.7, 1.0, 0.7],
            "length": [4, 6, 4],
            "seed": [0, 1, 0],
        }
    )

    texts = served.predict(request)["text"].tolist()

    assert [len(text.split()) for text in texts] == [4, 6, 4]
    assert texts[0] == texts[2]  # same prompt, sampler and seed
    assert served.unwrap_python_model().vocabulary.sequence_length == SEQUENCE_LENGTH


def test_the_served_model_takes_draw_unknown_per_row(served, monkeypatch):
    model = served.unwrap_python_model()
    used = []
    for draw_unknown, generator in model.generators.items():
        monkeypatch.setitem(
            model.generators,
            draw_unknown,
            lambda *args, g=generator, d=draw_unknown: used.append(d) or g(*args),
        )
    request = pd.DataFrame(
        {
            "prompt": ["the will to"] * 2,
            "temperature": [1.0] * 2,
            "length": [3] * 2,
            "draw_unknown": [False, True],
        }
    )

    texts = served.predict(request)["text"].tolist()

    assert used == [False, True]
    assert [len(text.split()) for text in texts] == [3, 3]


def test_the_served_model_answers_a_prompt_too_long_for_it_with_an_error_naming_the_row(served):
    request = pd.DataFrame(
        {"prompt": ["the will to", "what is"], "temperature": [0.7, 0.7], "length": [3, SEQUENCE_LENGTH]}
    )

    with pytest.raises(MlflowException, match=r"row 2: .*sequence length"):
        served.predict(request)
