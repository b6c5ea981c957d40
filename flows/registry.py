"""The one place that declares each technique: its params section, its DVC stages in the order they
run, and its flow. The command line, the main job and the tests find techniques here; a test checks
the stages against dvc.yaml and the quick profile against the params models."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasks import tracking
from tasks.champion import ChampionRule
from tasks.deepdream.params import DeepDreamParams, DeepDreamPaths
from tasks.gan.params import GanParams, GanPaths
from tasks.params import Params, ParamsError, RuntimeParams, did_you_mean, parse_section
from tasks.style_transfer.params import StyleTransferParams, StyleTransferPaths
from tasks.text.char_lstm.params import TextParams, TextPaths
from tasks.text.transformer.params import TransformerParams, TransformerPaths
from tasks.vae.params import VaeParams, VaePaths

SHARED_SECTIONS = {"runtime": RuntimeParams, "tracking": tracking.TrackingParams}


@dataclass(frozen=True)
class Technique:
    name: str  # its params section, the prefix of its stages, its MLflow experiment <prefix>-<name>
    stages: tuple[str, ...]  # its dvc.yaml stages, in the order they run
    params: type[Params]  # validates its params section
    paths: type  # the dataclass of its stages' files, relative to the repo root (storage.under)
    flow: str  # "module:function" of its Prefect flow
    # How its registered model's versions are compared (tasks/champion.py); None = nothing is
    # registered: DeepDream and style transfer optimise one image per run, there is no model to reuse.
    champion: ChampionRule | None = None
    # Sweeps (flows/sweep.py): the params lists whose product is its comparison grid, the stages
    # every point shares (run once per sweep), and the image its parent run logs to compare points.
    grid_axes: tuple[str, ...] = ()
    shared_stages: tuple[str, ...] = ()
    comparison_image: str | None = None

    def load_flow(self):
        module, _, function = self.flow.partition(":")
        return getattr(importlib.import_module(module), function)


TECHNIQUES = {
    technique.name: technique
    for technique in (
        Technique(
            "text",
            ("text_download", "text_prepare", "text_train", "text_sample"),
            TextParams,
            TextPaths,
            "flows.text:text_generation",
            # Validation loss depends on the context length and the windows scored, besides the data.
            ChampionRule(
                "kept_val_loss",
                data_stages=("text_download", "text_prepare"),
                data_params=("text.data.maxlen", "text.data.step"),
            ),
            shared_stages=("text_download", "text_prepare"),  # no grid of its own: a sweep names its axes
        ),
        Technique(
            "transformer",
            ("transformer_download", "transformer_prepare", "transformer_train", "transformer_sample"),
            TransformerParams,
            TransformerPaths,
            "flows.transformer:transformer_flow",
            # Validation loss depends on the documents and their vocabulary: the prepared data's hash.
            ChampionRule("kept_val_loss", data_stages=("transformer_download", "transformer_prepare")),
            shared_stages=("transformer_download", "transformer_prepare"),
        ),
        Technique(
            "deepdream",
            ("deepdream_image", "deepdream_dream"),
            DeepDreamParams,
            DeepDreamPaths,
            "flows.deepdream:deepdream_flow",
            grid_axes=("deepdream.layer_settings",),
            shared_stages=("deepdream_image",),
            comparison_image="grid.png",
        ),
        Technique(
            "style_transfer",
            ("style_transfer_images", "style_transfer_stylize"),
            StyleTransferParams,
            StyleTransferPaths,
            "flows.style_transfer:style_transfer_flow",
            grid_axes=(
                "style_transfer.content_weight",
                "style_transfer.style_weight",
                "style_transfer.optimizer",
            ),
            shared_stages=("style_transfer_images",),
            comparison_image="grid.png",
        ),
        Technique(
            "vae",
            ("vae_data", "vae_train", "vae_sample"),
            VaeParams,
            VaePaths,
            "flows.vae:vae_flow",
            # -ELBO on the test split (reconstruction + KL whatever the beta): comparable across betas.
            ChampionRule("test_negative_elbo", data_stages=("vae_data",)),
            grid_axes=("vae.model.latent_dim", "vae.train.beta"),
            shared_stages=("vae_data",),
            comparison_image="comparison.png",
        ),
        Technique(
            "gan",
            ("gan_data", "gan_classifier", "gan_train"),
            GanParams,
            GanPaths,
            "flows.gan:gan_flow",
            # The Frechet distance's scale depends on the features compared and the number of images.
            ChampionRule(
                "frechet_distance",
                data_stages=("gan_data", "gan_classifier"),
                data_params=("gan.score.features", "gan.score.num_images"),
            ),
            grid_axes=("gan.train.learning_rate", "gan.train.label_noise", "gan.model.dropout"),
            shared_stages=("gan_data", "gan_classifier"),
            comparison_image="comparison.png",
        ),
    )
}
KNOWN_SECTIONS = set(SHARED_SECTIONS) | set(TECHNIQUES)


def validate(params: Mapping[str, Any], techniques: list[str] | None = None) -> dict[str, Params]:
    """Parse the shared sections and those of `techniques` (default: all), naming the first bad key.

    Unknown top-level sections are rejected too: a typo would otherwise be ignored.
    """
    for name in params:
        if name not in KNOWN_SECTIONS:
            raise ParamsError(f"params.yaml: unknown section {name!r}{did_you_mean(name, KNOWN_SECTIONS)}")
    models = {**SHARED_SECTIONS, **{name: TECHNIQUES[name].params for name in techniques or TECHNIQUES}}
    return {name: parse_section(params, name, model) for name, model in models.items()}
