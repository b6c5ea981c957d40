"""The `text` section of params.yaml (the char-LSTM's data, model, training and sampling) and
where its steps read and write."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydantic

from tasks.params import (
    BlowupParams,
    EpochChoiceParams,
    Params,
    RuntimeParams,
    Temperature,
    load_params,
    parse_section,
)

SECTION = "text"


class TextDataParams(Params):
    url: str = pydantic.Field(min_length=1)
    sha256: str
    max_chars: int = pydantic.Field(ge=0)  # 0 = whole corpus
    maxlen: int = pydantic.Field(ge=1)
    step: int = pydantic.Field(ge=1)
    validation_split: float = pydantic.Field(ge=0.0, lt=1.0)


class TextModelParams(Params):
    units: int = pydantic.Field(ge=1)
    num_layers: int = pydantic.Field(ge=1)
    embedding_dim: int = pydantic.Field(ge=0)  # 0 = one-hot, as in the book


class TextTrainParams(EpochChoiceParams):  # keep, patience: on the validation loss
    epochs: int = pydantic.Field(ge=1)
    batch_size: int = pydantic.Field(ge=1)
    learning_rate: float = pydantic.Field(gt=0.0, allow_inf_nan=False)
    clipnorm: float = pydantic.Field(ge=0.0, allow_inf_nan=False)  # 0 = no clipping
    epoch_sample_chars: int = pydantic.Field(ge=0)
    epoch_sample_temperatures: list[Temperature]
    blowup: BlowupParams


class TextSampleParams(Params):
    temperatures: list[Temperature] = pydantic.Field(min_length=1)
    num_chars: int = pydantic.Field(ge=1)
    seed_text: str  # "" = a random maxlen-character window of the corpus

    @pydantic.field_validator("temperatures")
    @classmethod
    def _distinct(cls, temperatures: list[float]) -> list[float]:
        if len(set(temperatures)) != len(temperatures):
            raise ValueError("temperatures must be distinct")
        return temperatures


class TextParams(Params):
    data: TextDataParams
    model: TextModelParams
    train: TextTrainParams
    sample: TextSampleParams


@dataclass(frozen=True)
class TextPaths:
    """Where each step reads and writes, relative to the repo root; dvc.yaml declares the same."""

    corpus: Path = Path("data/text/corpus.txt")
    prepared: Path = Path("data/text/prepared")
    model: Path = Path("models/text/model.keras")
    history: Path = Path("outputs/text/history.csv")
    train_metrics: Path = Path("outputs/text/train_metrics.json")
    epoch_samples: Path = Path("outputs/text/epoch_samples.json")
    samples: Path = Path("outputs/text/samples")
    sample_metrics: Path = Path("outputs/text/sample_metrics.json")


def load(root: Path) -> tuple[TextParams, RuntimeParams]:
    """The `text` and `runtime` sections of `root`/params.yaml, validated."""
    params = load_params(root)
    return parse_section(params, SECTION, TextParams), parse_section(params, "runtime", RuntimeParams)
