"""The char-LSTM as an MLflow pyfunc model: what a user asks for (a prompt, a temperature, a length)
in, generated text out. The registered versions of the text model are this class with the trained
Keras model and the corpus vocabulary as artifacts; `mlflow models serve` answers

    {"dataframe_records": [{"prompt": "the will to power", "temperature": 0.5, "length": 200}]}

with {"predictions": [{"text": "<200 generated characters>"}]}. No DVC stage imports this module.
"""

from __future__ import annotations

import json
import math
from typing import Any

import keras
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, DataType, Schema

from tasks.text.char_lstm.model import generate_text, make_generator
from tasks.text.corpus import Vocabulary

MAX_LENGTH = 10_000  # characters generated per request row: bounds the time one request takes

SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec(DataType.string, "prompt"),  # lower-cased, as the corpus is
            ColSpec(DataType.double, "temperature"),
            ColSpec(DataType.long, "length"),  # characters to generate after the prompt
            ColSpec(DataType.long, "seed", required=False),  # same seed, same text; none = random
        ]
    ),
    outputs=Schema([ColSpec(DataType.string, "text")]),
)


def input_example(prompt: str) -> pd.DataFrame:
    """A request the model can answer: `prompt` must use the model's vocabulary."""
    return pd.DataFrame({"prompt": [prompt], "temperature": [0.5], "length": [40], "seed": [0]})


class CharLstmGenerator(PythonModel):
    """Artifacts: `model` (the trained Keras model), `vocabulary` (the prepared corpus's
    vocabulary.json). One generated text per request row, `length` characters after its prompt."""

    def load_context(self, context) -> None:
        with open(context.artifacts["vocabulary"], encoding="utf-8") as file:
            self.vocabulary = Vocabulary(json.load(file)["chars"])
        self.generator = make_generator(keras.models.load_model(context.artifacts["model"]))

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        texts = []
        for number, row in enumerate(model_input.to_dict("records"), start=1):
            prompt, temperature, length, seed = check_request(row, number, self.vocabulary)
            [generated] = generate_text(self.generator, self.vocabulary, prompt, [temperature], length, seed)
            texts.append(generated.text)
        return pd.DataFrame({"text": texts})


def check_request(row: dict[str, Any], number: int, vocabulary: Vocabulary) -> tuple[str, float, int, int]:
    """(prompt, temperature, length, seed) of request row `number`, or an error naming what to fix.

    MLflow answers an `MlflowException` with its message and HTTP 400, any other error with 500
    and a stack trace.
    """

    def invalid(message: str) -> MlflowException:
        return MlflowException.invalid_parameter_value(f"row {number}: {message}")

    prompt, temperature, length = row.get("prompt"), row.get("temperature"), row.get("length")
    if not isinstance(prompt, str) or not prompt:
        raise invalid(f"prompt must be a non-empty string, got {prompt!r}")
    prompt = prompt.lower()  # as the corpus was
    unknown = sorted(set(prompt) - set(vocabulary.chars))
    if unknown:
        raise invalid(
            f"prompt has characters outside the corpus vocabulary: {''.join(unknown)!r} "
            f"(vocabulary: {''.join(vocabulary.chars)!r})"
        )
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise invalid(f"temperature must be a finite number > 0, got {temperature!r}")
    if not (isinstance(length, (int, np.integer)) and 1 <= length <= MAX_LENGTH):
        raise invalid(f"length must be an integer from 1 to {MAX_LENGTH}, got {length!r}")
    seed = row.get("seed")
    if seed is None or (isinstance(seed, float) and math.isnan(seed)):
        seed = int(np.random.default_rng().integers(2**31 - 1))
    return prompt, float(temperature), int(length), int(seed) % (2**31 - 1)
