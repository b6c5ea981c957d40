"""Orchestration overhead of the main job: its wall time split into the steps' own work and
everything around it (step start-up and imports, DVC, Prefect and MLflow, the rest).

    export KERAS_HOME=/path/to/keras-home            # a filled Keras cache (README.md, "Offline")
    python -m benchmarks.orchestration               # the main job, `python -m flows.all --profile quick`
    python -m benchmarks.orchestration --quick       # a check of the script: flows.text --profile quick
    python -m benchmarks.orchestration --from-log run.log   # analyse a saved main job log, run nothing

1. Copies this checkout (its git files, no dvc.lock, so every stage runs) into a temporary git repo,
   or uses `--repo DIR`, and runs the job there as a user would, with a fresh Prefect home (its
   ephemeral server starts on an empty database), MLflow in the copy's SQLite store and
   PREFECT_API_URL / MLFLOW_TRACKING_URI removed. Its output goes to
   benchmarks/results/orchestration[_quick].log, between two lines with the job's start and end.
2. Splits the wall time from the log. Flows and tasks run one after the other, so the Prefect
   events (a task run's "Finished in state", a flow run's lines, the server's start) cut the wall
   time into consecutive intervals, each belonging to the task or flow whose event ends it:
   - a DVC stage's interval is split with the line the step logs when it is done (tasks/steps.py:
     its own seconds and the seconds from its process's start to the step function, i.e. the
     interpreter and its imports); what is left is DVC's (its start, stage checks, hashing the
     outputs, dvc.lock; also the step process's exit and Prefect's task start and end, which the
     log cannot tell apart). Logs from before that line existed: imports = from DVC's "> python ..."
     line to the step's first log line, own work = from that to the step's last line (an estimate);
   - the logging tasks (log-training, log-samples, log-serving-model, champion, ...) and the
     flows' own code (profile, MLflow parent run and params, tags, summary; a flow's start, which
     imports its module) are Prefect/MLflow, as is the Prefect server's start;
   - other: the main process's start (interpreter, imports, params check) before Prefect's first
     line, and its end (results printed, server stopped, exit) - known only for logs this script
     wrote (the job's start and end lines).
   Overhead is everything but the steps' own work; the goal is <= 10% of the main job.
3. Prints a markdown table per technique and the total, and writes
   benchmarks/results/orchestration[_quick].json.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO_ROOT, environment, markdown_table, write_results

RESULTS = REPO_ROOT / "benchmarks" / "results"
GOAL = 0.10  # the overhead's share of the main job's wall time, at most
MARKER = "gendl-orchestration |"
GIT = ["git", "-c", "user.name=gendl-benchmark", "-c", "user.email=benchmark@gendl.invalid"]
CATEGORIES = ("own", "imports", "dvc", "prefect_mlflow", "other")
HEADERS = {
    "own": "own work",
    "imports": "step start-up, imports",
    "dvc": "DVC",
    "prefect_mlflow": "Prefect/MLflow",
    "other": "other",
}
# The rows of the main process's own time.
MAIN = "main job"
START = "start: interpreter, imports, params check (before Prefect's first line)"
END = "end: results printed, server stopped, exit"

_PREFECT_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) \| (\w+)\s*\| (.*)$")
_MARKER_LINE = re.compile(rf"^{re.escape(MARKER)} job (started|ended) (\S+)")
_RUN = re.compile(r"^(Flow|Task) run '(.+?)' - (.*)$", re.S)
_BEGIN_FLOW = re.compile(r"^Beginning (sub)?flow run '.+?' for flow '(.+?)'")
_FINISHED = re.compile(r"^Finished in state (\w+)")
_RELAYED = re.compile(r"^(\w+) \| (.*)$", re.S)  # tasks/pipeline.py: "<stage> | <a line of dvc repro>"
_RAN = re.compile(r"^\w+: ran\b")  # tasks/pipeline.py's outcome line of a stage whose command ran
_STEP_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")  # tasks/steps.py's logging format
_STEP_DONE = re.compile(r"step (\S+) done: ([\d.]+) s in the step, ([\d.]+|\?) s before it")


# --- Reading a log ------------------------------------------------------------------------------


@dataclass
class Event:
    seconds: float  # since the first timestamped line of the log
    kind: str  # "flow", "task", "server", "marker" or "other"
    name: str = ""  # the flow or task run's name; "started"/"ended" for a marker
    message: str = ""


def read_events(lines: Iterable[str]) -> list[Event]:
    """The log's timestamped lines as events (Prefect's HH:MM:SS.mmm, local time; a job that passes
    midnight is followed into the next day). Lines without a timestamp (continuations, pip, TF) are
    skipped."""
    events: list[Event] = []
    day_offset, previous, origin = 0.0, None, None
    for raw in lines:
        line = raw.rstrip("\n")
        marker = _MARKER_LINE.match(line)
        if marker:
            moment = datetime.datetime.fromisoformat(marker[2])
            clock = moment.hour * 3600 + moment.minute * 60 + moment.second + moment.microsecond / 1e6
            kind, name, message = "marker", marker[1], line
        else:
            match = _PREFECT_LINE.match(line)
            if not match:
                continue
            hours, minutes, secs, millis, _level, message = match.groups()
            clock = int(hours) * 3600 + int(minutes) * 60 + int(secs) + int(millis) / 1000
            run = _RUN.match(message)
            if run:
                kind, name, message = run[1].lower(), run[2], run[3]
            elif message.startswith("prefect - Starting temporary server"):
                kind, name = "server", "start"
            elif message.startswith("prefect - Stopping temporary server"):
                kind, name = "server", "stop"
            else:
                kind, name = "other", ""
        if previous is not None and clock + day_offset < previous - 12 * 3600:
            day_offset += 24 * 3600
        previous = clock + day_offset
        origin = previous if origin is None else origin
        events.append(Event(previous - origin, kind, name, message))
    return events


# --- Splitting the wall time --------------------------------------------------------------------


@dataclass
class Row:
    group: str  # a technique's flow name, or "main job"
    item: str  # a stage, a task, or a part of a flow
    own: float = 0.0
    imports: float = 0.0
    dvc: float = 0.0
    prefect_mlflow: float = 0.0
    other: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(getattr(self, category) for category in CATEGORIES)


def task_key(run_name: str) -> str:
    """A task run's name without the 3 hex digits Prefect appends: dvc:text_train-c9c -> dvc:text_train."""
    return re.sub(r"-[0-9a-f]{3}$", "", run_name)


def split_stage(row: Row, window: float, task_events: Sequence[Event]) -> None:
    """Split one run of a DVC stage's task (`window` seconds) into own work, start-up and imports,
    and DVC, from the lines it relayed (`task_events`)."""
    relayed = [(event, _RELAYED.match(event.message)) for event in task_events]
    relayed = [(event, match[2]) for event, match in relayed if match]
    command = next((event for event, text in relayed if text.startswith("> ")), None)
    outcome = next((event for event in task_events if _RAN.match(event.message)), None)
    step_lines = [
        (event, text) for event, text in relayed if command is None or event.seconds >= command.seconds
    ]
    logged = [event for event, text in step_lines if _STEP_LOG.match(text)]
    if command is None and outcome is None and not logged:  # skipped by DVC or restored: all DVC's
        row.dvc += window
        row.notes.append("not run (up to date or restored)")
        return
    done = next((match for _, text in reversed(step_lines) if (match := _STEP_DONE.search(text))), None)
    if done:
        own, imports = float(done[2]), 0.0 if done[3] == "?" else float(done[3])
        if done[3] == "?":
            row.notes.append("process start unknown: its start-up counted as DVC")
    elif logged and command:
        imports, own = logged[0].seconds - command.seconds, logged[-1].seconds - logged[0].seconds
        row.notes.append("no 'step done' line: estimated from the step's first and last log lines")
    elif logged:
        imports, own = 0.0, logged[-1].seconds - logged[0].seconds
        row.notes.append(
            "no 'step done' line nor DVC's command line: own work from the step's log lines, "
            "its start-up counted as DVC"
        )
    elif command is None:
        imports, own = 0.0, 0.0
        row.notes.append("ran, but the log holds no line of its process: all of it counted as DVC")
    else:
        end = (outcome or task_events[-1]).seconds
        imports, own = 0.0, end - command.seconds
        row.notes.append(
            "no 'step done' line and no log line of the step: its whole process counted as own work"
        )
    row.own += own
    row.imports += imports
    row.dvc += window - own - imports


def split(events: Sequence[Event]) -> tuple[list[Row], dict[str, Any]]:
    """The job's wall time as rows (group, item, seconds per category) that add up to it, and facts
    about the log (whether its start and end are known)."""
    if not any(event.kind in ("flow", "task") for event in events):
        raise ValueError("the log has no Prefect flow or task run lines: is it a log of the main job?")
    rows: dict[tuple[str, str], Row] = {}
    markers = {event.name for event in events if event.kind == "marker"}
    # With subflows (the main job) each technique is a subflow; alone (--quick) the top flow is one.
    has_subflows = any(event.message.startswith("Beginning subflow run") for event in events)
    flows: dict[str, str] = {}  # open flow runs: run name -> the group its lines count for
    pending: dict[str, list[Event]] = {}  # the lines of task runs not finished yet
    server_started = False
    last = events[0].seconds
    for event in events:
        group, item, category = MAIN, None, "prefect_mlflow"
        begin = _BEGIN_FLOW.match(event.message) if event.kind == "flow" else None
        if event.kind == "marker":
            item, category = (END, "other") if event.name == "ended" else (None, "other")
        elif event.kind == "server" and event.name == "start":
            server_started = True
            item, category = (START, "other") if "started" in markers else (None, "other")
        elif event.kind == "server":
            item, category = END, "other"
        elif begin:
            is_technique = bool(begin[1]) or not has_subflows
            flows[event.name] = begin[2] if is_technique else MAIN
            if begin[1]:
                group, item = begin[2], "flow start: its module imported, flow run created"
            elif server_started:
                item = "Prefect server start, main flow run created"
            else:
                item, category = (START, "other") if "started" in markers else (None, "other")
        elif event.kind == "flow":
            group = flows.get(event.name, MAIN)
            item = (
                "main flow code" if group == MAIN else "flow code: profile, MLflow run, params, tags, summary"
            )
            if _FINISHED.match(event.message):
                flows.pop(event.name, None)
        elif event.kind == "task":
            if not _FINISHED.match(event.message):
                pending.setdefault(event.name, []).append(event)
                continue
            group = next(reversed(flows.values()), MAIN)
            item = task_key(event.name)
            task_events = [*pending.pop(event.name, []), event]
            if item.startswith("dvc:"):
                split_stage(
                    rows.setdefault((group, item), Row(group, item)), event.seconds - last, task_events
                )
                last = event.seconds
                continue
            category = "dvc" if item.startswith(("dvc-push", "dvc-pull")) else "prefect_mlflow"
        else:
            continue  # another logger's line inside a task or flow: not an end of anything
        if item is not None:
            row = rows.setdefault((group, item), Row(group, item))
            setattr(row, category, getattr(row, category) + event.seconds - last)
        last = event.seconds
    facts = {
        "start_known": "started" in markers,
        "end_known": "ended" in markers,
        "wall_seconds": last - events[0].seconds,
        "unfinished_tasks": sorted(pending),
    }
    return list(rows.values()), facts


# --- Summaries and tables -----------------------------------------------------------------------


def summarize(rows: Sequence[Row], facts: dict[str, Any]) -> dict[str, Any]:
    wall = facts["wall_seconds"]
    groups: dict[str, dict[str, float]] = {}
    for row in rows:
        sums = groups.setdefault(row.group, dict.fromkeys(CATEGORIES, 0.0))
        for category in CATEGORIES:
            sums[category] += getattr(row, category)
    totals = {category: sum(sums[category] for sums in groups.values()) for category in CATEGORIES}
    overhead = wall - totals["own"]
    return {
        "wall_seconds": wall,
        "accounted_seconds": sum(totals.values()),
        "totals": totals,
        "groups": groups,
        "overhead_seconds": overhead,
        "overhead_share": overhead / wall if wall else 0.0,
        "goal_share": GOAL,
        "goal_met": overhead <= GOAL * wall,
        "rows": [{**asdict(row), "total": row.total} for row in rows],
        **facts,
    }


def _cells(values: dict[str, float], wall: float) -> list[str]:
    total = sum(values[category] for category in CATEGORIES)
    return [f"{values[category]:.1f}" for category in CATEGORIES] + [
        f"{total:.1f}",
        f"{100 * total / wall:.1f}%",
    ]


def tables(summary: dict[str, Any]) -> str:
    """A markdown table per technique (its stages and tasks) and one for the whole job."""
    wall = summary["wall_seconds"]
    headers = ["", *(f"{HEADERS[category]} s" for category in CATEGORIES), "total s", "% of job"]
    parts = []
    for group in summary["groups"]:
        rows = [row for row in summary["rows"] if row["group"] == group]
        lines = [[row["item"], *_cells(row, wall)] for row in rows]
        lines.append([f"**{group}**", *_cells(summary["groups"][group], wall)])
        notes = sorted({f"{row['item']}: {note}" for row in rows for note in row["notes"]})
        parts.append(f"### {group}\n\n" + markdown_table(headers, lines) + "".join(f"\n- {n}" for n in notes))
    totals = summary["totals"]
    lines = [[group, *_cells(values, wall)] for group, values in summary["groups"].items()]
    lines.append(["**total**", *_cells(totals, wall)])
    lines.append(["**% of job**", *(f"{100 * totals[c] / wall:.1f}%" for c in CATEGORIES), "", ""])
    parts.append("### Total\n\n" + markdown_table(headers, lines))
    verdict = "met" if summary["goal_met"] else "not met"
    parts.append(
        f"Wall time {wall:.1f} s, of which the steps' own work {totals['own']:.1f} s; overhead "
        f"{summary['overhead_seconds']:.1f} s = {100 * summary['overhead_share']:.1f}% of the job "
        f"(goal <= {100 * GOAL:.0f}%: {verdict})."
    )
    if not summary["start_known"]:
        parts.append(
            "The log does not say when the job's process started: the wall time runs from its first "
            "timestamped line (Prefect's server start), so the interpreter's start, the imports and the "
            "params check before it are left out, as is the end after its last timestamped line."
        )
    return "\n\n".join(parts)


# --- Running the main job -----------------------------------------------------------------------


def copy_checkout(destination: Path) -> Path:
    """A git repo holding this checkout's files (tracked and untracked, not ignored) but dvc.lock."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        if name == "dvc.lock" or not (REPO_ROOT / name).is_file():
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    subprocess.run([*GIT, "init", "-q"], cwd=destination, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=destination, check=True)
    subprocess.run([*GIT, "commit", "-qm", "orchestration benchmark copy"], cwd=destination, check=True)
    return destination


def job_environment(prefect_home: Path) -> dict[str, str]:
    keras_home = os.environ.get("KERAS_HOME")
    if not keras_home or not Path(keras_home).is_dir():
        raise SystemExit(
            "error: KERAS_HOME must name a filled Keras cache (the job runs offline), e.g. "
            'export KERAS_HOME="$(mktemp -d)" && cp -r ../shared/keras-home/. "$KERAS_HOME"'
            + (f" (KERAS_HOME={keras_home} is not a directory)" if keras_home else "")
        )
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(PREFECT_HOME=str(prefect_home), PYTHONUNBUFFERED="1")
    return env


def run_job(root: Path, command: list[str], env: dict[str, str], log_path: Path) -> int:
    """Run `command` in `root`, its output into `log_path` between a start and an end line."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        log.write(
            f"{MARKER} job started {datetime.datetime.now().isoformat()} | {' '.join(command)} in {root}\n"
        )
        log.flush()
        code = subprocess.run(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        log.write(f"{MARKER} job ended {datetime.datetime.now().isoformat()} | rc={code}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.orchestration", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="run the text flow only (python -m flows.text --profile quick)"
    )
    parser.add_argument(
        "--from-log", type=Path, metavar="FILE", help="analyse a saved log of the job; run nothing"
    )
    parser.add_argument(
        "--repo", type=Path, metavar="DIR", help="run in this clone instead of a temporary copy"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    parser.add_argument(
        "--prefect-home",
        type=Path,
        metavar="DIR",
        help="PREFECT_HOME of the job (default: a new one, so the server starts on an empty database)",
    )
    args = parser.parse_args(argv)
    suffix = "_quick" if args.quick else ""
    module = "flows.text" if args.quick else "flows.all"
    command = [sys.executable, "-m", module, "--profile", "quick"]
    results: dict[str, Any] = {"environment": environment(), "load_average_before": os.getloadavg()}
    if args.from_log:
        log_path = args.from_log
        results.update(source="from log", command=f"python -m benchmarks.orchestration --from-log {log_path}")
    else:
        work = Path(tempfile.mkdtemp(prefix="gendl-orchestration-"))
        try:
            env = job_environment(args.prefect_home.resolve() if args.prefect_home else work / "prefect-home")
            root = args.repo.resolve() if args.repo else copy_checkout(work / "repo")
            log_path = RESULTS / f"orchestration{suffix}.log"
            print(f"running {' '.join(command[1:])} in {root}; its log: {log_path}", flush=True)
            code = run_job(root, command, env, log_path)
        finally:
            if args.keep:
                print(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
        results.update(
            source="ran",
            command=f"python -m benchmarks.orchestration{' --quick' if args.quick else ''}",
            job=f"python -m {module} --profile quick",
            returncode=code,
            load_average_after=os.getloadavg(),
        )
        if code != 0:
            print(f"error: the job exited with {code}; see {log_path}", file=sys.stderr)
    results["log"] = str(log_path)
    events = read_events(log_path.read_text(errors="replace").splitlines())
    try:
        rows, facts = split(events)
    except ValueError as error:
        print(f"error: {log_path}: {error}", file=sys.stderr)
        return 2
    results.update(summarize(rows, facts))
    report = tables(results)
    print(report)
    path = write_results(RESULTS / f"orchestration{suffix}.json", {**results, "report": report})
    print(f"\nwrote {path}")
    return 0 if results.get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
