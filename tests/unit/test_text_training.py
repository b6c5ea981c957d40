"""Training and sampling steps on tiny data, the NaN guard, and the runtime (mixed precision,
XLA, strategies) exercised on CPU."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from tasks.kept_epoch import kept_model_line
from tasks.params import BlowupParams, EpochChoiceParams, RuntimeParams
from tasks.runtime import choose_strategy, configure_runtime
from tasks.storage import read_history, under
from tasks.text.char_lstm import steps
from tasks.text.char_lstm.data import prepare_corpus
from tasks.text.char_lstm.model import build_char_lstm, compile_model, make_generator
from tasks.text.char_lstm.params import TextPaths
from tasks.text.char_lstm.steps import sample_texts, train_char_lstm
from tasks.text.corpus import TextError
from tasks.text.sequences import num_sequences
from tasks.training import (
    BlowupDetector,
    KeptEpoch,
    NanGuard,
    epoch_choice,
    restore_kept_epoch,
    save_model_atomically,
)

RUNTIME = RuntimeParams(
    seed=1, dtype_policy="float32", jit_compile=False, memory_growth=True, distribute="auto"
)
MAXLEN, STEP, BATCH_SIZE = 10, 2, 32


def prepare_tiny(root: Path, corpus: Path, max_chars: int = 0) -> TextPaths:
    paths = under(root, TextPaths())
    paths.corpus.parent.mkdir(parents=True)
    shutil.copy(corpus, paths.corpus)
    prepare_corpus(paths, MAXLEN, validation_split=0.1, max_chars=max_chars)
    return paths


def train_tiny(
    paths: TextPaths,
    epochs: int,
    temperatures: list[float],
    epoch_sample_chars: int = 20,
    keep: str = "best",
    patience: int = 0,
    blowup: BlowupParams = BlowupParams(factor=1.5, steps=50),
    learning_rate: float = 0.01,
) -> dict:
    return train_char_lstm(
        paths,
        MAXLEN,
        STEP,
        units=16,
        num_layers=1,
        embedding_dim=0,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        learning_rate=learning_rate,
        clipnorm=0.0,
        epoch_sample_chars=epoch_sample_chars,
        epoch_sample_temperatures=temperatures,
        choice=EpochChoiceParams(keep=keep, patience=patience),
        blowup=blowup,
        runtime=RUNTIME,
    )


def one_batch(vocab_size: int, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Random (batch, MAXLEN) int32 sequences and (batch,) next characters."""
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, vocab_size, size=(batch_size, MAXLEN)).astype(np.int32),
        rng.integers(0, vocab_size, size=batch_size).astype(np.int32),
    )


def all_finite(weights: list[np.ndarray]) -> bool:
    return all(np.isfinite(weight).all() for weight in weights)


# --- The train step -------------------------------------------------------------------------


def test_train_smoke(tmp_path, tiny_corpus):
    paths = prepare_tiny(tmp_path, tiny_corpus)
    epochs, temperatures = 3, [0.5, 1.0]

    metrics = train_tiny(paths, epochs, temperatures)

    history = read_history(paths.history)
    assert [row["epoch"] for row in history] == list(range(1, epochs + 1))
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[0]["bits_per_char"] == pytest.approx(history[0]["loss"] / math.log(2), rel=1e-5)
    model = keras.models.load_model(paths.model)
    assert model.output_shape[-1] == len(
        json.loads((paths.prepared / "vocabulary.json").read_text())["chars"]
    )
    assert all_finite(model.get_weights())
    assert math.isfinite(metrics["best_val_loss"])
    assert metrics["best_val_loss"] == min(row["val_loss"] for row in history)
    assert (
        metrics["kept_epoch"]
        == metrics["best_epoch"]
        == 1 + int(np.argmin([row["val_loss"] for row in history]))
    )
    assert metrics["final_val_loss"] == history[-1]["val_loss"] and metrics["final_epoch"] == epochs
    assert metrics["diverged"] == 0 and metrics["epochs_completed"] == epochs
    assert json.loads(paths.train_metrics.read_text()) == metrics
    records = json.loads(paths.epoch_samples.read_text(encoding="utf-8"))
    assert [(record["epoch"], record["temperature"]) for record in records] == [
        (epoch, temperature) for epoch in range(1, epochs + 1) for temperature in temperatures
    ]
    assert all(len(record["text"]) == 20 for record in records)
    assert all(0 <= record["entropy_bits"] <= math.log2(model.output_shape[-1]) for record in records)


# --- NaN guard ------------------------------------------------------------------------------


def compile_to_diverge_at(divergence_step: int):
    """A `compile_model` whose loss, and so every gradient and weight, turns NaN at that step."""

    def compile_model(model, learning_rate, clipnorm, jit_compile):
        optimizer = keras.optimizers.RMSprop(learning_rate=learning_rate)

        def loss(y_true, y_pred):
            poison = ops.where(optimizer.iterations >= divergence_step, np.nan, 1.0)
            return keras.losses.sparse_categorical_crossentropy(y_true, y_pred) * poison

        model.compile(optimizer=optimizer, loss=loss, jit_compile=jit_compile)

    return compile_model


def steps_per_epoch(paths: TextPaths) -> int:
    num_train_chars = len(np.load(paths.prepared / "train_ids.npy"))
    return math.ceil(num_sequences(num_train_chars, MAXLEN, STEP) / BATCH_SIZE)


def test_nan_loss_stops_training_and_keeps_the_last_good_epoch(tmp_path, tiny_corpus, monkeypatch):
    paths = prepare_tiny(tmp_path, tiny_corpus)
    monkeypatch.setattr(
        steps, "compile_model", compile_to_diverge_at(steps_per_epoch(paths) + 3)
    )  # in epoch 2
    checkpoints, save_model = [], steps.save_model_atomically

    def save_and_remember(model, path):
        checkpoints.append([weight.copy() for weight in model.get_weights()])
        save_model(model, path)

    monkeypatch.setattr(steps, "save_model_atomically", save_and_remember)

    metrics = train_tiny(paths, epochs=4, temperatures=[1.0])

    history = read_history(paths.history)
    assert len(history) == 2, "training did not stop in the epoch that diverged"
    assert math.isfinite(history[0]["loss"]) and math.isnan(history[1]["loss"])
    assert metrics["diverged"] == 1 and metrics["epochs_completed"] == 1 and metrics["best_epoch"] == 1
    assert metrics["kept_epoch"] == 1 and metrics["diverged_at_epoch"] == 2
    assert metrics["best_val_loss"] == history[0]["val_loss"]
    assert len(checkpoints) == 1
    saved = keras.models.load_model(paths.model, compile=False).get_weights()
    assert all_finite(saved)
    for weight, checkpoint in zip(saved, checkpoints[0]):
        np.testing.assert_array_equal(weight, checkpoint)
    records = json.loads(paths.epoch_samples.read_text(encoding="utf-8"))
    assert [record["epoch"] for record in records] == [1]


def test_nan_guard_and_restore_keep_the_kept_weights_in_memory(tmp_path):
    vocab_size, batch_size, num_batches = 6, 4, 3
    keras.utils.set_random_seed(3)
    model = build_char_lstm(vocab_size, units=8)
    compile_to_diverge_at(num_batches + 1)(model, learning_rate=0.01, clipnorm=0.0, jit_compile=False)
    x, y = one_batch(vocab_size, batch_size * num_batches)
    checkpoint = tmp_path / "model.keras"
    chosen = epoch_choice(
        lambda epoch: save_model_atomically(model, checkpoint),
        EpochChoiceParams(keep="last", patience=0),
        None,
        "loss",
    )

    history = model.fit(
        x, y, batch_size=batch_size, epochs=3, callbacks=chosen.callbacks, shuffle=False, verbose=0
    )
    restore_kept_epoch(model, chosen, checkpoint, TextError, "lower the learning rate")

    assert math.isnan(history.history["loss"][1]), "the test loss did not diverge in epoch 2"
    assert (chosen.guard.last_good_epoch, chosen.guard.diverged_at_epoch, chosen.kept.kept[0]) == (1, 2, 1)
    restored = model.get_weights()
    assert all_finite(restored)
    for weight, saved in zip(
        restored, keras.models.load_model(tmp_path / "model.keras", compile=False).get_weights()
    ):
        np.testing.assert_array_equal(weight, saved)


def test_nan_loss_in_the_first_epoch_is_an_error_naming_the_fix(tmp_path, tiny_corpus, monkeypatch):
    paths = prepare_tiny(tmp_path, tiny_corpus)
    monkeypatch.setattr(steps, "compile_model", compile_to_diverge_at(2))

    with pytest.raises(TextError, match="epoch 1") as error:
        train_tiny(paths, epochs=2, temperatures=[1.0])

    assert "learning_rate" in str(error.value) and "clipnorm" in str(error.value)
    assert not paths.model.exists()


# --- The kept epoch, early stopping, the blow-up guard ---------------------------------------


def epoch_end(callback: keras.callbacks.Callback, epoch: int, **logs: float) -> None:
    callback.on_epoch_end(epoch, logs)


@pytest.mark.parametrize("keep, saved, kept", [("best", [1, 2], 2), ("last", [1, 2, 3, 4], 4)])
def test_the_kept_epoch_is_the_best_or_the_last_healthy_one(keep, saved, kept):
    guard, saves = NanGuard(), []
    keeper = KeptEpoch(saves.append, keep, "val_loss", guard)
    for epoch, val_loss in enumerate([3.0, 2.0, 2.5, 2.8]):
        guard.last_good_epoch = epoch + 1  # what the guard, placed before, says of a healthy epoch
        epoch_end(keeper, epoch, loss=1.0, val_loss=val_loss)
    epoch_end(keeper, 4, loss=math.nan, val_loss=math.nan)  # epoch 5 diverged: the guard did not pass it

    assert saves == saved and keeper.kept[0] == kept
    summary = keeper.summary()
    assert (summary["best_epoch"], summary["best_val_loss"]) == (2, 2.0)
    assert (summary["final_epoch"], summary["final_val_loss"]) == (4, 2.8)
    assert summary["kept_val_loss"] == [3.0, 2.0, 2.5, 2.8][kept - 1]
    assert kept_model_line(summary, "val_loss").startswith(f"kept the model of epoch {kept}")


def test_training_keeps_the_model_of_the_epoch_it_names(tmp_path, tiny_corpus, monkeypatch):
    paths = prepare_tiny(tmp_path, tiny_corpus)
    snapshots, save_model = {}, steps.save_model_atomically

    def save_and_remember(model, path):
        snapshots[len(read_history(paths.history)) + 1] = [weight.copy() for weight in model.get_weights()]
        save_model(model, path)

    monkeypatch.setattr(steps, "save_model_atomically", save_and_remember)
    for keep in ("best", "last"):
        snapshots.clear()
        metrics = train_tiny(paths, epochs=2, temperatures=[], epoch_sample_chars=0, keep=keep)

        losses = [row["val_loss"] for row in read_history(paths.history)]
        expected = 1 + int(np.argmin(losses)) if keep == "best" else 2
        assert metrics["kept_epoch"] == expected and metrics["kept_val_loss"] == losses[expected - 1]
        saved = keras.models.load_model(paths.model, compile=False).get_weights()
        for weight, snapshot in zip(saved, snapshots[expected]):
            np.testing.assert_array_equal(weight, snapshot)


def test_early_stopping_ends_training_after_patience_epochs_without_a_better_loss(tmp_path, tiny_corpus):
    paths = prepare_tiny(tmp_path, tiny_corpus)

    # A learning rate of 0 leaves the weights, so the validation loss never improves on epoch 1.
    metrics = train_tiny(
        paths, epochs=6, temperatures=[], epoch_sample_chars=0, patience=2, learning_rate=0.0
    )

    assert len(read_history(paths.history)) == 3, "not stopped 2 epochs after the best"
    assert metrics["stopped_early_at_epoch"] == 3 and metrics["kept_epoch"] == 1
    assert metrics["epochs_completed"] == 3 and metrics["blown_up_at_epoch"] == 0


def running_means(losses: list[float], steps_per_epoch: int) -> list[tuple[int, dict[str, float]]]:
    """(batch, logs) as Keras reports them: the epoch's running mean of the loss at each step."""
    reports = []
    for index, _ in enumerate(losses):
        batch = index % steps_per_epoch
        epoch_start = index - batch
        reports.append((batch, {"loss": float(np.mean(losses[epoch_start : index + 1]))}))
    return reports


def test_the_blowup_detector_fires_after_steps_above_factor_times_the_lowest_loss():
    losses = [2.0 - 0.01 * step for step in range(40)] + [5.0] * 40
    detector = BlowupDetector(factor=1.5, steps=10)

    fired = [detector.update(batch, logs) for batch, logs in running_means(losses, steps_per_epoch=25)]

    first = fired.index(True)
    assert 40 + 10 <= first < 40 + 20, "not 10 steps after the smoothed loss crossed 1.5 x its lowest"
    # The lowest smoothed loss lags the falling loss by the average's ~10 steps of 0.01 each.
    assert min(losses[:40]) < detector.lowest <= min(losses[:40]) + 10 * 0.01


def test_the_blowup_detector_ignores_a_short_spike_and_a_loss_that_falls():
    spike = [1.0] * 30 + [4.0] * 3 + [1.0] * 60
    falling = [3.0 * 0.97**step for step in range(200)]
    for losses in (spike, falling):
        detector = BlowupDetector(factor=1.5, steps=10)
        assert not any(detector.update(batch, logs) for batch, logs in running_means(losses, 25))


def compile_to_blow_up_at(blowup_step: int, factor: float = 20.0):
    """A `compile_model` whose loss is multiplied by `factor` from that step on: finite, never NaN."""

    def compile_model(model, learning_rate, clipnorm, jit_compile):
        optimizer = keras.optimizers.RMSprop(learning_rate=learning_rate)

        def loss(y_true, y_pred):
            scale = ops.where(optimizer.iterations >= blowup_step, factor, 1.0)
            return keras.losses.sparse_categorical_crossentropy(y_true, y_pred) * scale

        model.compile(optimizer=optimizer, loss=loss, jit_compile=jit_compile)

    return compile_model


def test_a_loss_that_blows_up_stops_training_and_keeps_the_last_healthy_epoch(
    tmp_path, tiny_corpus, monkeypatch, caplog
):
    paths = prepare_tiny(tmp_path, tiny_corpus)
    per_epoch = steps_per_epoch(paths)
    monkeypatch.setattr(steps, "compile_model", compile_to_blow_up_at(2 * per_epoch + 2))  # in epoch 3
    blowup = BlowupParams(factor=3.0, steps=min(5, per_epoch - 3))

    metrics = train_tiny(paths, epochs=6, temperatures=[], epoch_sample_chars=0, keep="last", blowup=blowup)

    history = read_history(paths.history)
    assert metrics["blown_up_at_epoch"] == 3 and len(history) == 3, "training went on after the blow-up"
    assert all(math.isfinite(row["loss"]) for row in history), "the guard should act before any NaN"
    assert metrics["kept_epoch"] == 2 and metrics["epochs_completed"] == 2
    assert "loss blew up in epoch 3" in caplog.text and "kept the model of epoch 2" in caplog.text


# --- The sample step ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_paths(tmp_path_factory, nietzsche_path) -> TextPaths:
    """Prepared from the first 4,000 characters of the real corpus and trained for 3 epochs."""
    paths = prepare_tiny(tmp_path_factory.mktemp("trained"), nietzsche_path, max_chars=4000)
    train_tiny(paths, epochs=3, temperatures=[], epoch_sample_chars=0)
    return paths


def test_sample_writes_one_text_per_temperature(trained_paths):
    temperatures, num_chars = [0.2, 0.5, 1.0, 1.2], 120

    results = sample_texts(
        trained_paths, temperatures, num_chars, seed_text="", maxlen=MAXLEN, runtime=RUNTIME
    )

    assert [result["temperature"] for result in results] == temperatures
    seed_text = results[0]["seed"]
    assert len(seed_text) == MAXLEN
    for result in results:
        assert result["seed"] == seed_text
        assert len(result["text"]) == num_chars
        written = (trained_paths.samples / f"temperature_{result['temperature']:g}.txt").read_text(
            encoding="utf-8"
        )
        assert written == seed_text + result["text"] + "\n"
    metrics = json.loads(trained_paths.sample_metrics.read_text())
    entropies = [metrics[f"temperature_{temperature:g}"]["entropy_bits"] for temperature in temperatures]
    assert all(low < high for low, high in zip(entropies, entropies[1:])), entropies
    assert metrics["chars_per_second"] > 0


def test_sample_lower_cases_the_seed_text(trained_paths):
    (result,) = sample_texts(trained_paths, [1.0], 5, seed_text="The ", maxlen=MAXLEN, runtime=RUNTIME)

    assert result["seed"] == "the "


def test_sample_rejects_seed_characters_outside_the_vocabulary_before_loading_the_model(
    tmp_path, tiny_corpus
):
    paths = prepare_tiny(tmp_path, tiny_corpus)  # no model: loading it would fail differently

    with pytest.raises(TextError, match="outside the corpus vocabulary") as error:
        sample_texts(paths, [1.0], 10, seed_text="the #will", maxlen=MAXLEN, runtime=RUNTIME)

    assert "'#'" in str(error.value)
    assert not paths.samples.exists()


# --- Runtime on CPU -------------------------------------------------------------------------


@pytest.fixture
def restore_float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def generate_chars(model: keras.Model, seed_ids: np.ndarray, num_chars: int, jit_compile: bool = False):
    generate = make_generator(model, jit_compile)
    ids, distributions, entropies = generate(
        tf.constant(seed_ids), tf.constant([0.5, 1.0]), tf.constant(num_chars), tf.constant([0, 0])
    )
    return ids.numpy(), distributions.numpy(), entropies.numpy()


def test_mixed_precision_model_trains_and_samples_on_cpu(restore_float32_policy):
    vocab_size = 12
    configure_runtime(1, dtype_policy="mixed_float16")
    assert keras.mixed_precision.global_policy().name == "mixed_float16"

    model = build_char_lstm(vocab_size, units=16)
    compile_model(model, learning_rate=0.01, clipnorm=1.0, jit_compile=False)
    x, y = one_batch(vocab_size)
    loss = model.train_on_batch(x, y)

    assert model.get_layer("lstm_0").compute_dtype == "float16"
    assert math.isfinite(float(loss))
    probs = model.predict(x, verbose=0)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)
    ids, distributions, entropies = generate_chars(model, x[:2], num_chars=4)
    assert ids.shape == (2, 4) and ((ids >= 0) & (ids < vocab_size)).all()
    assert distributions.dtype == np.float32 and np.isfinite(entropies).all()


def test_configure_runtime_seeds_everything():
    def draws():
        return (
            np.random.rand(),
            float(keras.random.uniform(())),
            build_char_lstm(5, units=8).get_weights(),
        )

    configure_runtime(7)
    first = draws()
    configure_runtime(7)
    second = draws()

    assert first[:2] == second[:2]
    for weight, again in zip(first[2], second[2]):
        np.testing.assert_array_equal(weight, again)


def test_xla_compiled_training_and_sampling_on_cpu():
    vocab_size = 12
    keras.utils.set_random_seed(2)
    model = build_char_lstm(vocab_size, units=8)
    compile_model(model, learning_rate=0.01, clipnorm=0.0, jit_compile=True)
    x, y = one_batch(vocab_size)

    assert math.isfinite(float(model.train_on_batch(x, y)))

    ids, distributions, _ = generate_chars(model, x[:2], num_chars=3, jit_compile=True)
    np.testing.assert_allclose(distributions[:, 0], model.predict(x[:2], verbose=0), atol=1e-5)
    for step in range(1, 3):
        prefix = np.concatenate([x[:2], ids[:, :step]], axis=1)
        np.testing.assert_allclose(distributions[:, step], model(prefix).numpy(), atol=1e-5)


def test_choose_strategy():
    assert isinstance(choose_strategy(2), tf.distribute.MirroredStrategy)
    assert isinstance(choose_strategy(0, "mirrored"), tf.distribute.MirroredStrategy)
    assert choose_strategy(2, "default") is tf.distribute.get_strategy()
    assert choose_strategy(1) is tf.distribute.get_strategy()
    assert choose_strategy(0) is tf.distribute.get_strategy()
    assert choose_strategy(0).num_replicas_in_sync == 1
