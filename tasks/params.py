"""Reading params.yaml (plus an optional profile overlay) into validated, typed sections.

Each technique declares its own pydantic models next to the code that uses them; this module
reads YAML, merges profiles and turns validation failures into one readable error that names the
offending key. It also declares what every technique's params share: the `runtime` section and
the backbone names. It imports no TensorFlow, so validating params is quick in any process.
"""

from __future__ import annotations

import copy
import difflib
import fcntl
import io
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import pydantic
from ruamel.yaml import YAML, YAMLError

from tasks.steps import StepError

log = logging.getLogger(__name__)

PARAMS_FILE = "params.yaml"
PROFILES_DIR = "profiles"
CHECKOUT_LOCK = Path(".gendl/checkout.lock")  # held by the flow run that works in this checkout
PARAMS_BACKUP = Path(".gendl/params.yaml.original")  # params.yaml as it was while a profile is applied

# The convnets a `backbone` key may name; tasks/backbones.py loads them.
BACKBONES = ("inception_v3", "vgg16", "vgg19", "hed_vgg16")

# A softmax temperature of the text generators' sampling.
Temperature = Annotated[float, pydantic.Field(gt=0.0, allow_inf_nan=False)]

Section = TypeVar("Section", bound=pydantic.BaseModel)


class ParamsError(StepError, ValueError):
    """A params file or profile is missing, malformed, or holds an unknown or ill-typed key."""


class Params(pydantic.BaseModel):
    """Base for params sections: frozen, strictly typed, unknown keys rejected."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, strict=True)


class RuntimeParams(Params):
    """The `runtime` section every technique's steps read (tasks/runtime.py sets the devices up)."""

    seed: int = pydantic.Field(ge=0)
    dtype_policy: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]
    jit_compile: bool
    memory_growth: bool
    distribute: Literal["auto", "mirrored", "default"]


class BlowupParams(Params):
    """A loss that blows up without turning NaN (the first edition's char-LSTM: 1.30 to 4.73 in a few
    epochs): the training loss (smoothed over ~10 steps) above `factor` x its lowest so far for
    `steps` steps in a row stops training."""

    factor: float = pydantic.Field(gt=1.0, allow_inf_nan=False)
    steps: int = pydantic.Field(ge=1)


class EpochChoiceParams(Params):
    """Which epoch's model a trained technique keeps (saves, samples from, registers), and early
    stopping on the same validation metric; every trained technique's `train` section has these."""

    keep: Literal["best", "last"]  # best: the epoch with the best validation metric; last: the book's
    patience: int = pydantic.Field(ge=0)  # stop after this many epochs without a better metric; 0 = off


def parse_yaml(text: str) -> Any:
    """YAML 1.2, as DVC reads params (PyYAML's 1.1 would turn `off` into False, `1e-6` into a string)."""
    return YAML(typ="safe", pure=True).load(text)


def dump_yaml(data: Any) -> str:
    stream = io.StringIO()
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.dump(data, stream)
    return stream.getvalue()


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    if not path.is_file():
        raise ParamsError(f"{path}: file not found")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def profile_path(root: Path, profile: str) -> Path:
    return root / PROFILES_DIR / f"{profile}.yaml"


def available_profiles(root: Path) -> list[str]:
    return sorted(path.stem for path in (root / PROFILES_DIR).glob("*.yaml"))


def overlay(base: Mapping[str, Any], patch: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Deep-merge `patch` into a copy of `base`; every patched key must already exist in `base`."""
    merged = copy.deepcopy(dict(base))
    for key, value in patch.items():
        dotted = f"{where}.{key}" if where else key
        if key not in merged:
            raise ParamsError(f"sets unknown key {dotted}{did_you_mean(key, merged)}")
        if isinstance(value, Mapping) and isinstance(merged[key], Mapping):
            merged[key] = overlay(merged[key], value, dotted)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def nested(assignments: Mapping[str, Any]) -> dict[str, Any]:
    """{"vae.train.beta": [0.5]} -> {"vae": {"train": {"beta": [0.5]}}}: dotted keys as `dvc exp run -S`
    takes them, as an overlay."""
    tree: dict[str, Any] = {}
    for dotted, value in assignments.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def load_params(
    root: Path, profile: str | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """params.yaml, with `profiles/<profile>.yaml` merged over it when a profile is given, then the
    dotted-key `overrides` ({"vae.train.beta": [0.5]}, a sweep's grid point)."""
    params = _with_profile(root, profile)
    if not overrides:
        return params
    try:
        return overlay(params, nested(overrides))
    except ParamsError as error:
        raise ParamsError(f"overrides: {error}") from None


def _with_profile(root: Path, profile: str | None) -> dict[str, Any]:
    params = read_yaml(root / PARAMS_FILE)
    if not profile:
        return params
    path = profile_path(root, profile)
    if not path.is_file():
        raise ParamsError(
            f"unknown profile {profile!r}: {path} not found "
            f"(available: {', '.join(available_profiles(root)) or 'none'})"
        )
    try:
        return overlay(params, read_yaml(path))
    except ParamsError as error:
        raise ParamsError(f"{path}: {error}") from None


def parse_section(params: Mapping[str, Any], name: str, model: type[Section]) -> Section:
    """Validate `params[name]` into `model`, raising ParamsError that names the bad key."""
    if name not in params:
        raise ParamsError(f"{PARAMS_FILE}: missing section {name!r}")
    try:
        return model.model_validate(params[name])
    except pydantic.ValidationError as error:
        raise ParamsError(_describe(error, name, model)) from None


class CheckoutBusy(ParamsError):
    """Another flow run holds this checkout (its DVC workspace and params.yaml)."""


_held_checkouts: set[Path] = set()  # checkouts this process holds (the lock is re-entrant)
_applied_profiles: set[Path] = set()  # the backups of the profiles this process has applied


@contextmanager
def checkout_lock(root: Path) -> Iterator[None]:
    """Hold this checkout for one flow run; a second one fails at once with one line.

    An OS lock (flock): a killed run releases it with its process, so nothing stale is left.
    DVC allows one `dvc repro` per workspace anyway, and a profile lives in params.yaml. The
    command line takes it before Prefect starts; the flow (and the main job's subflows) take it
    again in the same process, which is allowed.
    """
    path = (root / CHECKOUT_LOCK).resolve()
    if path in _held_checkouts:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise CheckoutBusy(
                f"{root} is in use by another gendl flow run ({holder}): wait for it to finish, "
                "or run this one in another clone"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        _held_checkouts.add(path)
        try:
            yield
        finally:
            _held_checkouts.discard(path)
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def applied_profile(
    root: Path, profile: str | None, overrides: Mapping[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """Hold the checkout and put the profile-merged params (and `overrides`) into params.yaml for
    the duration.

    DVC stages read params.yaml, so the overlay has to be on disk for dvc.lock to record what
    ran (as `dvc exp run -S` does). The original bytes are kept in .gendl/ first and put back
    afterwards, even on failure or Ctrl-C; a run that was killed before it could put them back
    is repaired by the next one, which holds the lock and finds the kept copy.
    """
    params_path, backup = root / PARAMS_FILE, root / PARAMS_BACKUP
    with checkout_lock(root):
        if backup.resolve() in _applied_profiles:  # applied by this process already: as it is
            yield read_yaml(params_path)
            return
        if backup.is_file():
            log.warning(
                "%s: restoring the params of a run that was killed while a profile was applied", params_path
            )
            _write_atomically(params_path, backup.read_bytes())
            backup.unlink()
        params = load_params(root, profile, overrides)
        if not profile and not overrides:
            yield params
            return
        original = params_path.read_bytes()
        _write_atomically(backup, original)
        _write_atomically(params_path, dump_yaml(params).encode())
        _applied_profiles.add(backup.resolve())
        try:
            yield params
        finally:
            _applied_profiles.discard(backup.resolve())
            _write_atomically(params_path, original)
            backup.unlink()


def _write_atomically(path: Path, content: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def _describe(error: pydantic.ValidationError, section: str, model: type[pydantic.BaseModel]) -> str:
    lines = []
    for problem in error.errors():
        location = ".".join(str(part) for part in (section, *problem["loc"]))
        if problem["type"] == "extra_forbidden":
            parent = _model_at(model, problem["loc"][:-1])
            key = str(problem["loc"][-1])
            valid = list(parent.model_fields) if parent else []
            lines.append(
                f"unknown key {location}{did_you_mean(key, valid)}"
                + (f" (valid keys: {', '.join(valid)})" if valid else "")
            )
        elif problem["type"] == "missing":
            lines.append(f"missing key {location}")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(f"{location}: {message}, got {problem['input']!r}")
    return f"{PARAMS_FILE}: " + "; ".join(lines)


def _model_at(model: type[pydantic.BaseModel], loc: tuple) -> type[pydantic.BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)):
            return None
        model = annotation
    return model


def did_you_mean(key: str, candidates) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def apply_profile(root: Path, profile: str) -> Path:
    """Write `root`/params.yaml with profiles/<profile>.yaml merged over it, for DVC commands at that
    profile (the flows apply a profile only while they run). Comments are not kept: `git checkout
    params.yaml` puts the book's values back. Returns the file written."""
    with checkout_lock(root):
        params = load_params(root, profile)
        _write_atomically(root / PARAMS_FILE, dump_yaml(params).encode())
    return root / PARAMS_FILE


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tasks.params", description="Apply a params profile to params.yaml, for DVC."
    )
    parser.add_argument("command", choices=["apply"])
    parser.add_argument("profile", help="a profile in profiles/, e.g. quick")
    parser.add_argument("--root", type=Path, default=Path("."), help="the checkout (default: here)")
    args = parser.parse_args()
    try:
        written = apply_profile(args.root, args.profile)
    except ParamsError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"{written}: profiles/{args.profile}.yaml applied; `git checkout {PARAMS_FILE}` restores it")
