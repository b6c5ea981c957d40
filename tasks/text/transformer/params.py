"""The `transformer` section of params.yaml (the word-level Transformer's data, model, training and
sampling) and where its steps read and write."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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

SECTION = "transformer"


class TransformerDataParams(Params):
    # imdb: the aclImdb tarball at `url`, through the Keras cache; folder: the .txt files under `folder`
    # (aclImdb-shaped or flat), one document each; text_file: the text file at `url` (e.g. the
    # Nietzsche corpus, offline in the Keras cache) cut into documents of sequence_length words.
    dataset: Literal["imdb", "folder", "text_file"]
    url: str
    sha256: str
    folder: str
    max_documents: int = pydantic.Field(ge=0)  # 0 = all
    max_tokens: int = pydantic.Field(ge=3)  # vocabulary size, with the padding and [UNK] tokens
    sequence_length: int = pydantic.Field(ge=2)  # tokens per vectorized document: inputs are one shorter
    validation_split: float = pydantic.Field(ge=0.0, lt=1.0)

    @pydantic.model_validator(mode="after")
    def _source_given(self) -> TransformerDataParams:
        if self.dataset == "folder" and not self.folder:
            raise ValueError("dataset: folder needs `folder`, the directory of .txt files")
        if self.dataset != "folder" and not self.url:
            raise ValueError(f"dataset: {self.dataset} needs `url`")
        return self


class TransformerModelParams(Params):
    embed_dim: int = pydantic.Field(ge=1)
    dense_dim: int = pydantic.Field(ge=1)
    num_heads: int = pydantic.Field(ge=1)


class TransformerTrainParams(EpochChoiceParams):  # keep, patience: on the validation loss
    epochs: int = pydantic.Field(ge=1)
    batch_size: int = pydantic.Field(ge=1)
    learning_rate: float = pydantic.Field(gt=0.0, allow_inf_nan=False)
    epoch_sample_prompt: str = pydantic.Field(min_length=1)
    epoch_sample_words: int = pydantic.Field(ge=0)  # 0 = no samples during training
    epoch_sample_temperatures: list[Temperature]
    blowup: BlowupParams


class Sampler(Params):
    """Temperature sampling, optionally restricted to the `top_k` likeliest words or to the nucleus of
    probability `top_p`; one MLflow child run each."""

    temperature: Temperature
    top_k: int | None = pydantic.Field(default=None, ge=1)  # None = every word
    top_p: float | None = pydantic.Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)  # None = 1

    @property
    def label(self) -> str:
        parts = [f"temperature={self.temperature:g}"]
        if self.top_k:
            parts.append(f"top_k={self.top_k}")
        if self.top_p is not None:
            parts.append(f"top_p={self.top_p:g}")
        return ", ".join(parts)


class TransformerSampleParams(Params):
    prompts: list[str] = pydantic.Field(min_length=1)
    num_words: int = pydantic.Field(ge=1)
    temperatures: list[Temperature]  # pure temperature sampling, one child run each
    samplers: list[Sampler]  # top-k / top-p samplers besides them
    unknown_prompt: Literal["fail", "generate"]  # a prompt of only out-of-vocabulary words
    draw_unknown: bool  # whether [UNK] may be drawn (the book: yes, like any word)

    @pydantic.model_validator(mode="after")
    def _some_distinct_samplers(self) -> TransformerSampleParams:
        labels = [sampler.label for sampler in self.all_samplers]
        if not labels:
            raise ValueError("give at least one of temperatures and samplers")
        if len(set(labels)) != len(labels):
            raise ValueError(f"samplers must be distinct, got {labels}")
        if any(not prompt.strip() for prompt in self.prompts):
            raise ValueError("prompts must not be empty")
        return self

    @property
    def all_samplers(self) -> list[Sampler]:
        return [Sampler(temperature=t) for t in self.temperatures] + list(self.samplers)


class TransformerParams(Params):
    data: TransformerDataParams
    model: TransformerModelParams
    train: TransformerTrainParams
    sample: TransformerSampleParams


@dataclass(frozen=True)
class TransformerPaths:
    """Where each step reads and writes, relative to the repo root; dvc.yaml declares the same."""

    documents: Path = Path("data/transformer/documents")
    prepared: Path = Path("data/transformer/prepared")
    model: Path = Path("models/transformer/model.keras")
    history: Path = Path("outputs/transformer/history.csv")
    train_metrics: Path = Path("outputs/transformer/train_metrics.json")
    epoch_samples: Path = Path("outputs/transformer/epoch_samples.json")
    samples: Path = Path("outputs/transformer/samples")
    sample_metrics: Path = Path("outputs/transformer/sample_metrics.json")


def load(root: Path) -> tuple[TransformerParams, RuntimeParams]:
    """The `transformer` and `runtime` sections of `root`/params.yaml, validated."""
    params = load_params(root)
    return parse_section(params, SECTION, TransformerParams), parse_section(params, "runtime", RuntimeParams)
