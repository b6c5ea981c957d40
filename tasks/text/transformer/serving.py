"""The word-level Transformer as an MLflow pyfunc model: a prompt, a sampler and a length in,
generated words out. The registered versions of the transformer model are this class with the
trained Keras model and its vocabulary as artifacts; `mlflow models serve` answers

    {"dataframe_records": [{"prompt": "this movie", "temperature": 0.7, "length": 30}]}

with {"predictions": [{"text": "<30 generated words>"}]}. No DVC stage imports this module.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import pydantic
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, DataType, Schema

from tasks.steps import StepError
from tasks.text.transformer.model import generate_texts, make_generator
from tasks.text.transformer.params import Sampler
from tasks.text.transformer.vectorize import read_vocabulary

SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec(DataType.string, "prompt"),
            ColSpec(DataType.double, "temperature"),
            ColSpec(DataType.long, "length"),  # words to generate after the prompt
            ColSpec(DataType.long, "top_k", required=False),  # none = every word
            ColSpec(DataType.double, "top_p", required=False),  # none = 1
            ColSpec(DataType.long, "seed", required=False),  # same seed, same text; none = random
            ColSpec(DataType.boolean, "draw_unknown", required=False),  # may [UNK] be drawn; none = yes
        ]
    ),
    outputs=Schema([ColSpec(DataType.string, "text")]),
)


def input_example() -> pd.DataFrame:
    return pd.DataFrame({"prompt": ["this movie"], "temperature": [0.7], "length": [10], "seed": [0]})


class TransformerGenerator(PythonModel):
    """Artifacts: `model` (the trained Keras model), `vocabulary` (the prepared vocabulary.json).
    One generated text per request row."""

    def load_context(self, context) -> None:
        self.vocabulary = read_vocabulary(Path(context.artifacts["vocabulary"]))
        model = keras.models.load_model(context.artifacts["model"])
        self.generators = {
            draw_unknown: make_generator(model, draw_unknown) for draw_unknown in (True, False)
        }

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        texts = []
        for number, row in enumerate(model_input.to_dict("records"), start=1):
            prompt, sampler, length, seed, draw_unknown = check_request(row, number)
            try:
                [generated] = generate_texts(
                    self.generators[draw_unknown], self.vocabulary, [prompt], [sampler], length, seed
                )
            except StepError as error:  # a prompt with no known word, or too long for the model
                raise MlflowException.invalid_parameter_value(f"row {number}: {error}") from None
            texts.append(generated.text)
        return pd.DataFrame({"text": texts})


def check_request(row: dict[str, Any], number: int) -> tuple[str, Sampler, int, int, bool]:
    """(prompt, sampler, length, seed, draw_unknown) of request row `number`, or an error (HTTP 400)
    naming what to fix."""

    def given(key: str) -> Any:
        value = row.get(key)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

    prompt, length = given("prompt"), given("length")
    if not isinstance(prompt, str) or not prompt.strip():
        raise MlflowException.invalid_parameter_value(f"row {number}: prompt must be a non-empty string")
    if not (isinstance(length, (int, np.integer)) and length >= 1):
        raise MlflowException.invalid_parameter_value(
            f"row {number}: length must be an integer >= 1, got {length!r}"
        )
    top_k = given("top_k")
    try:
        sampler = Sampler.model_validate(
            {
                "temperature": float(given("temperature")) if given("temperature") is not None else None,
                "top_k": int(top_k) if top_k is not None else None,
                "top_p": given("top_p"),
            }
        )
    except (pydantic.ValidationError, TypeError, ValueError) as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in getattr(error, "errors", lambda: [])()
        )
        raise MlflowException.invalid_parameter_value(f"row {number}: {problems or error}") from None
    seed = given("seed")
    seed = int(np.random.default_rng().integers(2**31 - 1)) if seed is None else int(seed) % (2**31 - 1)
    draw_unknown = given("draw_unknown")
    if draw_unknown is not None and not isinstance(draw_unknown, (bool, np.bool_)):
        raise MlflowException.invalid_parameter_value(
            f"row {number}: draw_unknown must be true or false, got {draw_unknown!r}"
        )
    return prompt, sampler, int(length), seed, draw_unknown is None or bool(draw_unknown)
