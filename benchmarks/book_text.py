"""The book's character-level LSTM text generator, as listed, to benchmark gendl against.

Chollet, *Deep Learning with Python*, 1st edition, section 8.1, listings 8.2-8.7 (the same model
and loop as the Keras example `lstm_text_generation.py`). The listings are cut into functions so
the benchmark can time the parts, but each body is the book's code. Only what Python 3, NumPy 2
and Keras 3 no longer accept is changed, each marked `book:`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

CORPUS_URL = "https://s3.amazonaws.com/text-datasets/nietzsche.txt"
MAXLEN = 60  # extract sequences of 60 characters
STEP = 3  # sample a new sequence every three characters
UNITS = 128  # LSTM units
LEARNING_RATE = 0.01  # RMSprop
BATCH_SIZE = 128
TEMPERATURES = (0.2, 0.5, 1.0, 1.2)


# --- Listing 8.2: downloading and parsing the initial text file --------------------------------


def corpus_path() -> str:
    """The corpus through the Keras cache ($KERAS_HOME); downloads only when it is not there."""
    return keras.utils.get_file("nietzsche.txt", origin=CORPUS_URL)


def read_text(path: str, max_chars: int = 0) -> str:
    """The corpus lower-cased; `max_chars` > 0 keeps only the start (for quick runs)."""
    # book: text = open(path).read().lower(). The corpus holds a few bytes that are not UTF-8,
    # which Python 3's open() rejects; replacing them, as gendl's read_corpus does, gives both
    # implementations the same text and vocabulary.
    text = open(path, encoding="utf-8", errors="replace").read().lower()
    return text[:max_chars] if max_chars else text


# --- Listing 8.3: vectorizing sequences of characters ------------------------------------------


def extract_sequences(text: str, maxlen: int = MAXLEN, step: int = STEP) -> tuple[list[str], list[str]]:
    """Overlapping `maxlen`-character sentences every `step` characters, and the next character."""
    sentences = []  # holds extracted sequences
    next_chars = []  # holds the targets (the follow-up characters)
    for i in range(0, len(text) - maxlen, step):
        sentences.append(text[i : i + maxlen])
        next_chars.append(text[i + maxlen])
    return sentences, next_chars


def char_vocabulary(text: str) -> tuple[list[str], dict[str, int]]:
    """The sorted unique characters and each one's index."""
    chars = sorted(list(set(text)))
    char_indices = dict((char, chars.index(char)) for char in chars)
    return chars, char_indices


def vectorize(
    sentences: Sequence[str],
    next_chars: Sequence[str],
    chars: Sequence[str],
    char_indices: dict[str, int],
    maxlen: int = MAXLEN,
) -> tuple[np.ndarray, np.ndarray]:
    """One-hot x (sequences, maxlen, chars) and y (sequences, chars), both bool."""
    # book: dtype=np.bool, an alias NumPy 1.24 removed; it meant the builtin bool.
    x = np.zeros((len(sentences), maxlen, len(chars)), dtype=bool)
    y = np.zeros((len(sentences), len(chars)), dtype=bool)
    for i, sentence in enumerate(sentences):
        for t, char in enumerate(sentence):
            x[i, t, char_indices[char]] = 1
        y[i, char_indices[next_chars[i]]] = 1
    return x, y


# --- Listings 8.4 and 8.5: the model and its compilation ---------------------------------------


def build_model(maxlen: int, num_chars: int) -> keras.Sequential:
    """LSTM(128) + Dense softmax, compiled with RMSprop(0.01) and categorical cross-entropy."""
    model = keras.models.Sequential()
    # Keras 3 still accepts input_shape on a Sequential's first layer (with a UserWarning).
    model.add(layers.LSTM(UNITS, input_shape=(maxlen, num_chars)))
    model.add(layers.Dense(num_chars, activation="softmax"))
    optimizer = keras.optimizers.RMSprop(learning_rate=LEARNING_RATE)  # book: lr=0.01, renamed in Keras 2.3
    model.compile(loss="categorical_crossentropy", optimizer=optimizer)
    return model


# --- Listing 8.6: function to sample the next character given the model's predictions ----------


def sample(preds: np.ndarray, temperature: float = 1.0) -> int:
    preds = np.asarray(preds).astype("float64")
    preds = np.log(preds) / temperature
    exp_preds = np.exp(preds)
    preds = exp_preds / np.sum(exp_preds)
    probas = np.random.multinomial(1, preds, 1)
    return int(np.argmax(probas))


# --- Listing 8.7: text-generation loop -----------------------------------------------------------
# The book runs this after each of 60 epochs of model.fit(x, y, batch_size=128, epochs=1), from
# a random 60-character window of the corpus, printing each character as it is generated.


def generate_at_temperature(
    model: keras.Model,
    generated_text: str,
    temperature: float,
    num_chars: int,
    chars: Sequence[str],
    char_indices: dict[str, int],
    maxlen: int = MAXLEN,
) -> str:
    """The inner loop: `num_chars` characters after the `maxlen`-character `generated_text`."""
    output = []
    for i in range(num_chars):
        # One-hot encodes the characters generated so far (float64, as the book's np.zeros).
        sampled = np.zeros((1, maxlen, len(chars)))
        for t, char in enumerate(generated_text):
            sampled[0, t, char_indices[char]] = 1.0
        preds = model.predict(sampled, verbose=0)[0]
        next_index = sample(preds, temperature)
        next_char = chars[next_index]
        generated_text += next_char
        generated_text = generated_text[1:]
        output.append(next_char)  # book: sys.stdout.write(next_char)
    return "".join(output)


def generate(
    model: keras.Model,
    seed_text: str,
    chars: Sequence[str],
    char_indices: dict[str, int],
    temperatures: Sequence[float] = TEMPERATURES,
    num_chars: int = 400,
) -> dict[float, str]:
    """The outer loop: `num_chars` characters at each temperature, from the same seed."""
    generated = {}
    for temperature in temperatures:  # tries a range of sampling temperatures
        generated[temperature] = generate_at_temperature(
            model, seed_text, temperature, num_chars, chars, char_indices
        )
    return generated
