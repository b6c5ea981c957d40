"""Temperature sampling: the book's reweighting, entropy, and the stateful sampler against
the model run on the whole prefix."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tasks.text.char_lstm.model import build_char_lstm, generate_text, make_generator
from tasks.text.corpus import TextError, Vocabulary, build_vocabulary
from tasks.text.sampling import entropy_bits, reweight_distribution, reweighted_log_probs

TEXT = "the will to power is the will to life. what is good? all that heightens power."


def book_reweight_distribution(original_distribution: np.ndarray, temperature: float) -> np.ndarray:
    """The book's listing, in float64 NumPy (log 0 = -inf gives probability 0)."""
    with np.errstate(divide="ignore"):
        distribution = np.log(original_distribution) / temperature
    distribution = np.exp(distribution)
    return distribution / np.sum(distribution, axis=-1, keepdims=True)


def entropy_bits_reference(probs: np.ndarray) -> np.ndarray:
    """-sum p log2 p over the non-zero p."""
    nonzero = np.where(probs > 0, probs, 1.0)
    return -np.sum(np.where(probs > 0, probs * np.log2(nonzero), 0.0), axis=-1)


def as_numpy(tensor) -> np.ndarray:
    return keras.ops.convert_to_numpy(tensor)


# --- reweight_distribution ------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.2, 0.5, 1.0, 1.2, 3.0])
def test_reweight_distribution_matches_the_book(temperature):
    probs = np.random.default_rng(0).dirichlet(np.ones(12), size=5)  # (5, 12), no zeros

    reweighted = as_numpy(reweight_distribution(probs, temperature))

    np.testing.assert_allclose(
        reweighted, book_reweight_distribution(probs, temperature), rtol=2e-5, atol=1e-7
    )
    np.testing.assert_allclose(reweighted.sum(axis=-1), 1.0, rtol=1e-6)


def test_reweight_distribution_at_temperature_one_is_the_identity():
    probs = np.random.default_rng(1).dirichlet(np.ones(8), size=3)

    np.testing.assert_allclose(as_numpy(reweight_distribution(probs, 1.0)), probs, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("temperature", [1e-6, 0.2, 1.0, 3.0, 1e6])
def test_reweight_distribution_keeps_zero_probabilities_at_zero(temperature):
    probs = np.array([0.5, 0.0, 0.3, 0.0, 0.2])

    reweighted = as_numpy(reweight_distribution(probs, temperature))

    assert not np.isnan(reweighted).any()
    assert reweighted[1] == 0.0 and reweighted[3] == 0.0
    assert reweighted.sum() == pytest.approx(1.0, rel=1e-6)


def test_reweight_distribution_near_zero_temperature_is_one_hot_at_the_argmax():
    probs = np.random.default_rng(2).dirichlet(np.ones(10), size=4)
    one_hot = np.eye(10)[np.argmax(probs, axis=-1)]

    np.testing.assert_allclose(as_numpy(reweight_distribution(probs, 1e-6)), one_hot, atol=1e-6)


def test_reweight_distribution_at_huge_temperature_is_uniform_over_possible_characters():
    probs = np.array([0.7, 0.0, 0.2, 0.1, 0.0])
    possible = probs > 0

    reweighted = as_numpy(reweight_distribution(probs, 1e6))

    np.testing.assert_allclose(reweighted[possible], 1 / possible.sum(), atol=1e-5)
    assert (reweighted[~possible] == 0.0).all()


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan, math.inf])
def test_reweight_distribution_rejects_bad_temperatures(temperature):
    assert issubclass(TextError, ValueError)
    with pytest.raises(TextError, match="temperature") as error:
        reweight_distribution(np.array([0.5, 0.5]), temperature)
    assert str(temperature) in str(error.value)


# --- entropy_bits ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_outcomes", [1, 2, 5, 64])
def test_entropy_of_uniform_distribution_is_log2_of_outcomes(num_outcomes):
    log_probs = np.full(num_outcomes, -np.log(num_outcomes))

    assert float(as_numpy(entropy_bits(log_probs))) == pytest.approx(math.log2(num_outcomes), abs=1e-6)


def test_entropy_of_one_hot_distribution_is_zero():
    log_probs = np.array([-np.inf, 0.0, -np.inf])

    assert float(as_numpy(entropy_bits(log_probs))) == 0.0


def test_entropy_with_zero_probabilities_matches_numpy():
    probs = np.array([[0.5, 0.0, 0.25, 0.25], [0.0, 0.0, 1.0, 0.0], [0.1, 0.2, 0.3, 0.4]])

    entropies = as_numpy(entropy_bits(reweighted_log_probs(probs, 1.0)))

    assert not np.isnan(entropies).any()
    np.testing.assert_allclose(entropies, entropy_bits_reference(probs), atol=1e-5)


# --- The stateful sampler -------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocabulary() -> Vocabulary:
    return build_vocabulary(TEXT)


def random_model(vocab_size: int, num_layers: int = 1, embedding_dim: int = 0, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_char_lstm(vocab_size, units=16, num_layers=num_layers, embedding_dim=embedding_dim)


@pytest.fixture(scope="module")
def peaked_model(vocabulary) -> keras.Model:
    """Random weights scaled up: next-character distributions peaked, as after training."""
    model = random_model(vocabulary.size, seed=0)
    for weight in model.trainable_weights:
        weight.assign(weight * 5.0)
    return model


def run(generate, seed_ids: np.ndarray, temperatures: list[float], num_chars: int, rng_seed: int = 0):
    """(ids (batch, num_chars), distributions (batch, num_chars, vocab), entropies (batch, num_chars))."""
    outputs = generate(
        tf.constant(seed_ids, tf.int32),
        tf.constant(temperatures, tf.float32),
        tf.constant(num_chars, tf.int32),
        tf.constant([rng_seed, 0], tf.int32),
    )
    return tuple(output.numpy() for output in outputs)


@pytest.mark.parametrize(
    ("num_layers", "embedding_dim"), [(2, 0), (1, 8)], ids=["two-layers-one-hot", "one-layer-embedding"]
)
def test_sampler_distributions_equal_the_model_on_the_whole_prefix(vocabulary, num_layers, embedding_dim):
    model = random_model(vocabulary.size, num_layers, embedding_dim)
    temperatures = [0.5, 1.0, 1.5]
    seed_ids = np.random.default_rng(3).integers(0, vocabulary.size, size=(len(temperatures), 7))
    num_chars = 12

    ids, distributions, _ = run(make_generator(model), seed_ids, temperatures, num_chars)

    assert ids.shape == (len(temperatures), num_chars)
    assert distributions.shape == (len(temperatures), num_chars, vocabulary.size)
    np.testing.assert_allclose(distributions[:, 0], model.predict(seed_ids, verbose=0), atol=1e-5)
    for step in range(num_chars):
        prefix = np.concatenate([seed_ids, ids[:, :step]], axis=1)
        np.testing.assert_allclose(
            distributions[:, step], model(prefix, training=False).numpy(), atol=1e-5, err_msg=f"step {step}"
        )


def fixed_distribution_model(probs: np.ndarray) -> keras.Model:
    """A model that predicts `probs` whatever the input: zero kernel, bias log(probs)."""
    model = random_model(len(probs))
    head = model.get_layer("next_char")
    kernel, _ = head.get_weights()
    with np.errstate(divide="ignore"):
        head.set_weights([np.zeros_like(kernel), np.log(probs).astype("float32")])
    return model


def test_each_row_samples_from_the_distribution_reweighted_at_its_own_temperature():
    probs = np.array([0.5, 0.25, 0.15, 0.1, 0.0])
    temperatures = [0.5, 1.0, 2.0]
    num_chars = 3000
    seed_ids = np.zeros((len(temperatures), 1), np.int32)

    ids, _, entropies = run(
        make_generator(fixed_distribution_model(probs)), seed_ids, temperatures, num_chars
    )

    for row, temperature in enumerate(temperatures):
        expected = book_reweight_distribution(probs, temperature)
        frequencies = np.bincount(ids[row], minlength=len(probs)) / num_chars
        assert frequencies[probs == 0].sum() == 0, "sampled a character of probability 0"
        # 3000 draws: standard error of each frequency is below 0.01.
        np.testing.assert_allclose(frequencies, expected, atol=0.03, err_msg=f"temperature {temperature}")
        np.testing.assert_allclose(entropies[row], entropy_bits_reference(expected), atol=1e-4)


def test_mean_entropy_increases_with_temperature(vocabulary, peaked_model):
    generate = make_generator(peaked_model)
    temperatures = [0.2, 0.5, 1.0, 1.2]

    generated = generate_text(generate, vocabulary, "what is good? ", temperatures, 60, rng_seed=7)

    assert [sample.temperature for sample in generated] == temperatures
    entropies = [sample.entropy_bits for sample in generated]
    assert all(np.isfinite(entropies))
    assert all(low < high for low, high in zip(entropies, entropies[1:])), entropies


def greedy_path(model: keras.Model, seed_ids: np.ndarray, num_chars: int) -> tuple[np.ndarray, float]:
    """Argmax decoding on the whole prefix; also the smallest log-probability gap to the runner-up."""
    prefix, smallest_gap = seed_ids, math.inf
    for _ in range(num_chars):
        log_probs = np.log(model(prefix, training=False).numpy()[0])
        runner_up, best = np.sort(log_probs)[-2:]
        smallest_gap = min(smallest_gap, best - runner_up)
        prefix = np.concatenate([prefix, [[np.argmax(log_probs)]]], axis=1)
    return prefix[0, seed_ids.shape[1] :], smallest_gap


def test_near_zero_temperature_decodes_greedily(vocabulary, peaked_model):
    seed_text, num_chars = "the will to ", 12
    expected, smallest_gap = greedy_path(
        peaked_model, vocabulary.encode(seed_text)[None].astype(np.int32), num_chars
    )
    # At T=0.01 a runner-up this far behind has probability below exp(-gap / 0.01) = exp(-10).
    assert smallest_gap > 0.1, "the test model is too flat to have a unique greedy path"

    greedy, free = generate_text(
        make_generator(peaked_model), vocabulary, seed_text, [0.01, 1.0], num_chars, rng_seed=1
    )

    assert greedy.text == vocabulary.decode(expected)
    assert free.text != greedy.text, "at T=1 the same path: the test cannot tell T=0.01 apart"


@pytest.fixture(scope="module")
def generate(vocabulary):
    return make_generator(random_model(vocabulary.size, seed=6))


def test_same_rng_seed_gives_the_same_text(vocabulary, generate):
    first = generate_text(generate, vocabulary, "what is ", [1.0, 0.5], 40, rng_seed=11)
    second = generate_text(generate, vocabulary, "what is ", [1.0, 0.5], 40, rng_seed=11)

    assert [sample.text for sample in first] == [sample.text for sample in second]
    assert all(len(sample.text) == 40 for sample in first)


def test_different_rng_seeds_give_different_text(vocabulary, generate):
    (first,) = generate_text(generate, vocabulary, "what is ", [1.0], 40, rng_seed=11)
    (second,) = generate_text(generate, vocabulary, "what is ", [1.0], 40, rng_seed=12)

    assert first.text != second.text


def test_generate_text_rejects_seed_characters_outside_the_vocabulary(vocabulary, generate):
    with pytest.raises(TextError, match="outside the corpus vocabulary") as error:
        generate_text(generate, vocabulary, "the #will@", [1.0], 5)
    assert "#@" in str(error.value)


def test_generate_text_rejects_an_empty_seed(vocabulary, generate):
    with pytest.raises(TextError, match="empty"):
        generate_text(generate, vocabulary, "", [1.0], 5)


def test_generate_text_rejects_bad_temperatures(vocabulary, generate):
    with pytest.raises(TextError, match="-0.5"):
        generate_text(generate, vocabulary, "the ", [1.0, -0.5], 5)
