"""Which model to use: each trained technique has a registered model in MLflow's registry
(`<prefix>-<technique>`, e.g. `gendl-text`) whose versions are pyfunc generators. A flow run that
trained registers a new version with alias `challenger`; alias `champion` moves to it only when it
beats the champion on the technique's metric, on the same data, by `tracking.promotion_margin`.

The decision and its numbers are tagged on the flow's parent run and on the new version
(`champion.*`). One decision at a time per registered model: a Prefect global concurrency limit of
one slot (`promotion-<registered model>`) held while deciding, so two flow runs that finish together
decide one after the other, on one machine or several sharing a Prefect server.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import math
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import LoggedModel
from mlflow.exceptions import MlflowException
from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from tasks import tracking
from tasks.params import parse_section

log = logging.getLogger(__name__)

CHALLENGER, CHAMPION = "challenger", "champion"
PROMOTED, KEPT, NOT_REGISTERED = "promoted", "kept", "not registered"
SERVING_MODEL = "serving"  # name of the logged pyfunc model on its run
CODE_DIR = Path(__file__).resolve().parent  # this package, shipped with each pyfunc model
SERVING_REQUIREMENTS = ("cloudpickle", "keras", "numpy", "pandas", "pillow", "pydantic", "tensorflow")
LOCK_TIMEOUT_SECONDS = 900  # wait this long for another run's decision before failing
LOCK_LEASE_SECONDS = 60  # a run that dies holding the lock frees it after this (Prefect's minimum)


@dataclass(frozen=True)
class ChampionRule:
    """How a technique's registered versions are compared."""

    metric: str  # tagged on each version as gendl.metric_value
    lower_is_better: bool = True
    data_stages: tuple[str, ...] = ()  # stages whose outputs (md5 in dvc.lock) two versions must share
    data_params: tuple[str, ...] = ()  # params ("gan.score.num_images") two versions must share


@dataclass(frozen=True)
class Candidate:
    """A trained model logged as a pyfunc generator, which may become a registered version."""

    model_id: str  # the logged model ("models:/<model_id>")
    run_id: str  # the run it was logged on: the parent run, or the best grid point's child run
    md5: str  # of the files it serves: the same weights are never registered twice
    metric: float  # the technique's metric; NaN = registered, but never champion
    label: str = ""  # which grid point and generator it is


@dataclass(frozen=True)
class Decision:
    """What a flow run's promotion did, and why; tagged as `champion.<field>`."""

    registered_model: str
    outcome: str  # PROMOTED, KEPT or NOT_REGISTERED
    reason: str
    metric: str
    margin: float
    version: str = ""  # registered by this run; "" = none
    champion_version: str = ""  # after the decision; "" = none yet
    previous_champion_version: str = ""
    candidate_value: float = math.nan
    champion_value: float = math.nan  # of the previous champion
    comparable: bool | None = None  # None = nothing compared

    def tags(self) -> dict[str, str]:
        """`champion.<field>` tags; fields without a value are left out."""
        tags = {}
        for key, value in asdict(self).items():
            if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
                continue
            tags[f"champion.{key}"] = str(value).lower() if isinstance(value, bool) else str(value)
        return tags

    def summary(self) -> str:
        return f"- champion of `{self.registered_model}`: {self.outcome}: {self.reason}"


def registered_model_name(prefix: str, technique: str) -> str:
    """`<prefix>-<technique>` (gendl-text); with MLFLOW_EXPERIMENT_NAME set (as tests do, to keep
    their runs apart) `<that name>-<technique>`, so the models stay apart too."""
    return f"{os.environ.get('MLFLOW_EXPERIMENT_NAME') or prefix}-{technique}"


def artifacts_md5(artifacts: Mapping[str, Path]) -> str:
    """One md5 for the files a pyfunc model serves, from each file's md5 (DVC's hash of it)."""
    listing = "\n".join(f"{name} {tracking.md5_of(path)}" for name, path in sorted(artifacts.items()))
    return hashlib.md5(listing.encode()).hexdigest()


def log_pyfunc_model(
    run_id: str, python_model: Any, artifacts: Mapping[str, Path], **kwargs: Any
) -> tuple[LoggedModel, str]:
    """Log `python_model` with `artifacts` (name -> file) on run `run_id` as logged model "serving",
    with this package's code (so it loads without gendl installed) and the requirements it imports.

    Idempotent, as tracking.log_keras_model: when the run's experiment already holds a "serving"
    model of these files (tag `gendl.md5`), that one is returned and nothing is uploaded. Returns
    the logged model and the md5.
    """
    md5 = artifacts_md5(artifacts)
    logged_model = tracking.log_model_once(
        run_id,
        SERVING_MODEL,
        md5,
        flavor=mlflow.pyfunc,
        python_model=python_model,
        artifacts={name: str(path) for name, path in artifacts.items()},
        code_paths=[str(CODE_DIR)],
        pip_requirements=[f"{name}=={importlib.metadata.version(name)}" for name in SERVING_REQUIREMENTS],
        **kwargs,
    )
    return logged_model, md5


def comparable_tags(root: Path, params: Mapping[str, Any], rule: ChampionRule) -> dict[str, str]:
    """What two versions must share to be compared: `data.<path>.md5` of the rule's data stages'
    outputs (from dvc.lock, as on the parent run) and `params.<key>` of its params."""
    tags = tracking.dvc_lock_tags(root, rule.data_stages)
    for key in rule.data_params:
        value: Any = params
        for part in key.split("."):
            value = value[part]
        tags[f"params.{key}"] = str(value)
    return tags


def promotion_lock(registered_model: str) -> AbstractContextManager[None]:
    """Hold the one slot of Prefect global concurrency limit `promotion-<registered model>`.

    The limit is created here (limit 1) if missing: Prefect's `concurrency` does not create limits,
    and without `strict` it would not wait for a missing one at all.
    """
    name = f"promotion-{registered_model}"
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # another run created it just now
                pass
            limit = client.read_global_concurrency_limit_by_name(name)
    if limit.limit != 1 or not limit.active:
        raise ValueError(
            f"Prefect concurrency limit {name!r} has limit {limit.limit} and active={limit.active}: "
            f"promotion needs exactly one active slot: prefect gcl update {name} --limit 1 --enable"
        )
    return concurrency(
        name, occupy=1, timeout_seconds=LOCK_TIMEOUT_SECONDS, lease_duration=LOCK_LEASE_SECONDS, strict=True
    )


def promote(
    technique: str,
    rule: ChampionRule,
    parent_run_id: str,
    params: Mapping[str, Any],
    root: Path,
    trained: bool,
    candidate: Candidate | None,
) -> Decision:
    """Register `candidate` (when the flow run trained) and decide whether it becomes the champion;
    tag the decision on the parent run and the new version.

    Args:
        technique: the technique's name; its registered model is `<prefix>-<technique>`.
        rule: how its versions are compared.
        parent_run_id: the flow's MLflow parent run, which gets the `champion.*` tags.
        params: params.yaml as the stages read it (tracking section, the rule's params).
        root: the workspace whose dvc.lock holds the data hashes.
        trained: whether the training stage ran in this flow run (DVC did not skip it).
        candidate: the trained model logged as a pyfunc generator; None if no model is usable.

    Returns:
        The decision.
    """
    settings = parse_section(params, "tracking", tracking.TrackingParams)
    name = registered_model_name(settings.experiment_prefix, technique)
    with promotion_lock(name):
        decision = decide(
            name,
            technique,
            rule,
            settings.promotion_margin,
            parent_run_id,
            trained,
            candidate,
            comparable_tags(root, params, rule),
        )
    tracking.set_tags(parent_run_id, decision.tags())
    log.info("%s", decision.summary())
    return decision


def decide(
    name: str,
    technique: str,
    rule: ChampionRule,
    margin: float,
    parent_run_id: str,
    trained: bool,
    candidate: Candidate | None,
    comparable: dict[str, str],
) -> Decision:
    """The registry part of `promote`, under its lock."""
    client = mlflow.MlflowClient()
    ensure_registered_model(client, name, technique, rule)
    champion = str(client.get_registered_model(name).aliases.get(CHAMPION, ""))
    unchanged = {
        "registered_model": name,
        "outcome": NOT_REGISTERED,
        "metric": rule.metric,
        "margin": margin,
        "champion_version": champion,
        "previous_champion_version": champion,
    }
    if not trained:
        return Decision(
            reason="nothing was trained (DVC found the training stage up to date): no new version",
            **unchanged,
        )
    if candidate is None:
        return Decision(
            reason=f"training ran, but no model finished with a finite {rule.metric}: no new version",
            **unchanged,
        )
    same = client.search_model_versions(f"name = '{name}' AND tags.`gendl.md5` = '{candidate.md5}'")
    if same and "champion.outcome" in same[0].tags:
        reason = (
            f"the trained files are those of version {same[0].version} (DVC restored them from its cache): "
            "no new version"
        )
        return Decision(reason=reason, candidate_value=candidate.metric, **unchanged)
    # A version of these files without a decision was registered by this run before a retry.
    version = (
        str(same[0].version) if same else register(client, name, rule, parent_run_id, candidate, comparable)
    )
    client.set_registered_model_alias(name, CHALLENGER, version)
    outcome, reason, champion_value, is_comparable = judge(
        client, name, rule, margin, version, candidate.metric, champion, comparable
    )
    if outcome == PROMOTED:
        client.set_registered_model_alias(name, CHAMPION, version)
    decision = Decision(
        registered_model=name,
        outcome=outcome,
        reason=reason,
        metric=rule.metric,
        margin=margin,
        version=version,
        champion_version=version if outcome == PROMOTED else champion,
        previous_champion_version=champion,
        candidate_value=candidate.metric,
        champion_value=champion_value,
        comparable=is_comparable,
    )
    # champion.outcome last: a version that has it is decided (see `same` above).
    for key, value in sorted(decision.tags().items(), key=lambda item: item[0] == "champion.outcome"):
        client.set_model_version_tag(name, version, key, value)
    return decision


def register(
    client: mlflow.MlflowClient,
    name: str,
    rule: ChampionRule,
    parent_run_id: str,
    candidate: Candidate,
    comparable: dict[str, str],
) -> str:
    """A new version of `name` from the candidate's logged model; returns its number."""
    label = f" ({candidate.label})" if candidate.label else ""
    version = client.create_model_version(
        name,
        source=f"models:/{candidate.model_id}",
        run_id=candidate.run_id,
        model_id=candidate.model_id,
        description=f"{rule.metric} {candidate.metric:.6g}{label}",
        tags={
            "gendl.md5": candidate.md5,
            "gendl.metric": rule.metric,
            "gendl.metric_value": repr(candidate.metric),
            "gendl.parent_run_id": parent_run_id,
            **comparable,
        },
    )
    return str(version.version)


def judge(
    client: mlflow.MlflowClient,
    name: str,
    rule: ChampionRule,
    margin: float,
    version: str,
    value: float,
    champion: str,
    comparable: dict[str, str],
) -> tuple[str, str, float, bool | None]:
    """(outcome, reason, the champion's metric, comparable) for new version `version` of `value`."""
    if not math.isfinite(value):
        return KEPT, f"version {version} has no finite {rule.metric}: never champion", math.nan, None
    if not champion:
        reason = f"no champion yet: version {version} ({rule.metric} {value:.6g}) is the first"
        return PROMOTED, reason, math.nan, None
    tags = client.get_model_version(name, champion).tags
    champion_value = float(tags.get("gendl.metric_value", "nan"))
    if tags.get("gendl.metric") != rule.metric or not math.isfinite(champion_value):
        reason = f"champion version {champion} has no {rule.metric} to compare with: champion kept"
        return KEPT, reason, champion_value, False
    theirs = {key: value for key, value in tags.items() if key.startswith(("data.", "params."))}
    if theirs != comparable:
        differing = sorted(
            key for key in theirs.keys() | comparable.keys() if theirs.get(key) != comparable.get(key)
        )
        reason = (
            f"version {version} was trained or scored on other data than champion version {champion} "
            f"({', '.join(differing)} differ): not compared, champion kept"
        )
        return KEPT, reason, champion_value, False
    improvement = champion_value - value if rule.lower_is_better else value - champion_value
    needed = margin * abs(champion_value)
    relation = "below" if rule.lower_is_better else "above"
    numbers = f"{rule.metric} {value:.6g} vs champion version {champion}'s {champion_value:.6g}"
    if improvement > needed:
        return PROMOTED, f"{numbers}: better by more than {margin:.2%}", champion_value, True
    threshold = champion_value - needed if rule.lower_is_better else champion_value + needed
    reason = f"{numbers}: not {relation} {threshold:.6g} (a {margin:.2%} margin): champion kept"
    return KEPT, reason, champion_value, True


def ensure_registered_model(
    client: mlflow.MlflowClient, name: str, technique: str, rule: ChampionRule
) -> None:
    """Create registered model `name` on first use, describing its aliases for the UI."""
    try:
        client.get_registered_model(name)
        return
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    direction = "lower" if rule.lower_is_better else "higher"
    client.create_registered_model(
        name,
        tags={
            "gendl.technique": technique,
            "gendl.metric": rule.metric,
            "gendl.lower_is_better": str(rule.lower_is_better).lower(),
        },
        description=(
            f"gendl {technique}: pyfunc generators. Alias `{CHALLENGER}` = the latest trained version; "
            f"`{CHAMPION}` = the best by {rule.metric} ({direction} is better) among versions trained on the "
            "same data, moved only by a margin (tags champion.* on each version say why)."
        ),
    )
