"""The main job: every technique's flow, one after the other.

python -m flows.all --profile quick
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows import deepdream, gan, style_transfer, text, vae
from flows.cli import REPO_ROOT, run_cli


def validate(params: dict[str, Any]) -> None:
    text.validate(params)
    deepdream.validate(params)
    style_transfer.validate(params)
    vae.validate(params)
    gan.validate(params)


@flow(name="gendl")
def all_techniques(profile: str | None = None, root: Path = REPO_ROOT) -> dict[str, Any]:
    """Run every technique's flow as a subflow; each gets its own MLflow parent run.

    Args:
        profile: name of a params overlay in profiles/ (e.g. "quick"); None = params.yaml as is.
        root: repo root holding params.yaml and dvc.yaml.
    """
    return {
        "text": text.text_generation(profile=profile, root=root),
        "deepdream": deepdream.deepdream_flow(profile=profile, root=root),
        "style_transfer": style_transfer.style_transfer_flow(profile=profile, root=root),
        "vae": vae.vae_flow(profile=profile, root=root),
        "gan": gan.gan_flow(profile=profile, root=root),
    }


if __name__ == "__main__":
    raise SystemExit(run_cli(all_techniques, validate))
