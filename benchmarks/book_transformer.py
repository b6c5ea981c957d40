"""The book's word-level Transformer text generation loop, as listed, to benchmark gendl against.

Chollet, *Deep Learning with Python*, 2nd edition, section 12.1, "A text-generation callback with
variable-temperature sampling" (the same code as the companion notebook
`chapter12_part01_text-generation.ipynb`): `sample_next` and the body of
`TextGenerator.on_epoch_end`, which the book runs after every training epoch with the prompt
"This movie", 50 words and the temperatures 0.2, 0.5, 0.7, 1.0 and 1.5. The callback is a function
here so the benchmark can time it; every change is marked `book:`.

The model is gendl's `build_transformer_lm`, the book's architecture (PositionalEmbedding,
TransformerDecoder called as decoder(x, x), Dense softmax), so both sides run the very same
weights. The two decoders mask differently only where the loop never reads: the book masks its
first attention causally and its second for padding too, gendl masks both for both, which changes
nothing at a real word's position (its causal window holds only real words).

`book_generate(..., fixed=False)` is the loop as printed, with its two bugs:
- `sample_next(predictions[0, i, :])` never passes the temperature: every "temperature" samples
  at 1.0;
- it reads the prediction at position i, not at the last word of the sentence
  (`len(prompt words) - 1 + i`): with the two-word prompt, the prediction of the word that is
  already there.
`fixed=True` repairs both and changes nothing else: it still re-vectorizes the whole sentence
(padded to 100 ids) and runs the whole model eagerly for every word. It also never draws the
padding id 0 (the book may: it appends "" and the sentence does not grow), because gendl never
does and the benchmark compares their distributions.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

PROMPT = "This movie"
GENERATE_LENGTH = 50
TEMPERATURES = (0.2, 0.5, 0.7, 1.0, 1.5)
SEQUENCE_LENGTH = 100
VOCAB_SIZE = 15000
EMBED_DIM = 256
LATENT_DIM = 2048  # the decoder's dense projection
NUM_HEADS = 2


# --- Reweighting a probability distribution to a different temperature ------------------------


def reweight_distribution(original_distribution, temperature=0.5):
    distribution = np.log(original_distribution) / temperature
    distribution = np.exp(distribution)
    return distribution / np.sum(distribution)


# --- Preparing a TextVectorization layer ---------------------------------------------------------


def make_text_vectorization(
    vocabulary: Sequence[str], vocab_size: int = VOCAB_SIZE, sequence_length: int = SEQUENCE_LENGTH
) -> layers.TextVectorization:
    text_vectorization = layers.TextVectorization(
        max_tokens=vocab_size,
        output_mode="int",
        output_sequence_length=sequence_length,
        # book: text_vectorization.adapt(dataset) on the IMDB reviews; the benchmark hands the
        # tokens gendl's WordVocabulary holds, so both map words to the same ids.
        vocabulary=list(vocabulary),
    )
    return text_vectorization


# --- The text-generation callback ----------------------------------------------------------------


def sample_next(predictions, temperature=1.0):
    predictions = np.asarray(predictions).astype("float64")
    predictions = np.log(predictions) / temperature
    exp_preds = np.exp(predictions)
    predictions = exp_preds / np.sum(exp_preds)
    probas = np.random.multinomial(1, predictions, 1)
    return np.argmax(probas)


def next_word_predictions(
    model: keras.Model, text_vectorization: layers.TextVectorization, sentence: str, i: int, fixed: bool
):
    """The loop body's first lines: the prediction the next word is drawn from, (vocab,)."""
    tokenized_sentence = text_vectorization([sentence])
    predictions = model(tokenized_sentence)  # book: self.model(tokenized_sentence)
    if not fixed:
        return predictions[0, i, :]
    # fixed: the prediction after the sentence's last word (ids are right-padded with 0)
    num_words = int(np.count_nonzero(tokenized_sentence[0]))
    return predictions[0, num_words - 1, :]


def book_generate(
    model: keras.Model,
    text_vectorization: layers.TextVectorization,
    tokens_index: dict[int, str],
    prompt: str = PROMPT,
    generate_length: int = GENERATE_LENGTH,
    temperatures: Sequence[float] = TEMPERATURES,
    fixed: bool = False,
    record: list[tuple[float, float, np.ndarray]] | None = None,
) -> dict[float, str]:
    """`TextGenerator.on_epoch_end`'s body: the sentence generated at each temperature.

    `tokens_index` is the book's `dict(enumerate(text_vectorization.get_vocabulary()))`. With
    `record`, appends (temperature, temperature applied, prediction drawn from) for every word.
    """
    generated = {}
    for temperature in temperatures:
        # book: print("== Generating with temperature", temperature)
        sentence = prompt
        for i in range(generate_length):
            next_word = next_word_predictions(model, text_vectorization, sentence, i, fixed)
            if fixed:
                next_word = np.array(next_word)
                next_word[0] = 0.0  # fixed: never the padding "" (log(0) = -inf: drawn with probability 0)
                with np.errstate(divide="ignore"):
                    next_token = sample_next(next_word, temperature)  # fixed: the temperature passed
                applied = temperature
            else:
                next_token = sample_next(next_word)
                applied = 1.0
            if record is not None:
                record.append((temperature, applied, np.asarray(next_word)))
            sampled_token = tokens_index[next_token]
            sentence += " " + sampled_token
        generated[temperature] = sentence  # book: print(sentence)
    return generated
