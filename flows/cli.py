"""Command line shared by the flows: parse args, validate params before Prefect starts,
run the flow, and end with where the results are and how to look at them."""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

from flows.registry import validate
from tasks import tracking
from tasks.params import ParamsError, available_profiles, checkout_lock, load_params
from tasks.step_server import step_server

REPO_ROOT = Path(__file__).resolve().parent.parent
# `flow.serve` from a terminal ran one checkout's flow and paused its schedule when the terminal closed.
SCHEDULE_MOVED = (
    "--schedule is replaced by the deployments in prefect.yaml (weekly cron schedules, each run in its own "
    "clone on a worker): scripts/team.sh start, then scripts/team.sh deploy; edit a schedule in prefect.yaml"
)


def run_cli(flow_function: Callable[..., Any], techniques: list[str] | None = None) -> int:
    """Run `flow_function` from the command line; bad params for `techniques` (default: all) fail
    first, with one line."""
    parser = argparse.ArgumentParser(description=flow_function.__doc__.splitlines()[0])
    parser.add_argument(
        "--profile", help=f"params overlay from profiles/ ({', '.join(available_profiles(REPO_ROOT))})"
    )
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repo root (default: this checkout)")
    # Replaced by the deployments in prefect.yaml; kept only to say so instead of "unrecognized argument".
    parser.add_argument("--schedule", metavar="CRON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.schedule:
        print(f"error: {SCHEDULE_MOVED}", file=sys.stderr)
        return 2
    root = args.root.resolve()
    try:  # bad params fail here, in a second, not after Prefect's server has started
        params = load_params(root, args.profile)
        settings = validate(params, techniques)["tracking"]
        tracking_uri = tracking.resolve_tracking_uri(settings.uri, root)
    except (ParamsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here
    try:
        # The step server imports TensorFlow while Prefect's server starts, for every stage after.
        with checkout_lock(root), step_server(), temporary_settings(updates=patient_ephemeral_server()):
            flow_function(profile=args.profile, root=root)
    except ParamsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # the flow's log already holds the details; end with one line
        print(f"\nerror: {error}", file=sys.stderr)
        return 1
    print(next_steps(root, tracking_uri, techniques))
    return 0


def exit_without_teardown(code: int) -> NoReturn:
    """End the process with `code` after what its exit must still do (Prefect's queued logs sent, its
    ephemeral server stopped, MLflow's exit hooks) but without the interpreter's teardown, which
    takes seconds with TensorFlow loaded (the flows load it to log models)."""
    sys.stdout.flush()
    sys.stderr.flush()
    threading._shutdown()  # what Python's exit does first: joins threads, runs Prefect's queue drains
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def patient_ephemeral_server() -> dict:
    """Prefect's 20 s for its ephemeral server to start are too few on a busy 2-core machine; an
    explicit PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS wins."""
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ:
        return {}
    return {PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 120}


def next_steps(root: Path, tracking_uri: str, techniques: list[str] | None = None) -> str:
    """Where the results of `techniques` (default: all) are and the commands that show them."""
    bin_dir = Path(sys.executable).parent
    prefect_api = os.environ.get("PREFECT_API_URL")
    prefect_line = (
        f"  Prefect UI:  {prefect_api.removesuffix('/api')}"
        if prefect_api
        else f"  Prefect UI:  {bin_dir / 'prefect'} server start   # then open http://127.0.0.1:4200"
    )
    mlflow_line = (
        f"  MLflow UI:   {bin_dir / 'mlflow'} ui --backend-store-uri {tracking_uri}   # then open http://127.0.0.1:5000"
        if tracking_uri.startswith("sqlite:")
        else f"  MLflow UI:   {tracking_uri}"
    )
    # DVC's stage commands run `python`: it must be this environment's.
    dvc_commands = [f"source {bin_dir / 'activate'}"] if (bin_dir / "activate").is_file() else []
    if Path.cwd().resolve() != root:
        dvc_commands.append(f"cd {root}")
    dvc_commands += ["dvc metrics show", "dvc plots show"]
    if techniques is None or "text" in techniques:
        # --single-item: a profile (the main job's quick one) leaves dvc.lock holding its params and
        # params.yaml the book's; without it DVC would retrain the text model at book scale first.
        dvc_commands.append("dvc exp run --single-item text_sample -S 'text.sample.temperatures=[0.3,0.8]'")
    return "\n".join(
        [
            "",
            "Done. Results:",
            f"  outputs:     {root / 'outputs'}   models: {root / 'models'}",
            f"  MLflow:      {tracking_uri}",
            mlflow_line,
            prefect_line,
            f"  DVC:         {'; '.join(dvc_commands)}",
        ]
    )
