"""Every command README.md, docs/*.md and inputs/README.md tell a user to type runs, in the order
written, in a copy of the repo as a user has it after `source .venv/bin/activate`, with tiny params.

The convention the docs follow: a command lives in a fenced block tagged ```sh, one command per line
(a trailing `# comment` allowed, a line ending in `\\` continues on the next). A command that needs
the network, a GPU, hours at book scale, or that starts a long-running server ends with a comment
holding `needs: network`, `needs: gpu`, `needs: hours` or `needs: server`, and is not run here.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.params import dump_yaml, read_yaml
from tasks.step_server import STEP_SERVER
from tests.conftest import REPO_ROOT
from tests.flows.conftest import GIT, make_repo_copy

NEEDS = ("network", "gpu", "hours", "server")
FENCE = re.compile(r"^\s*```\s*([\w+-]*)\s*$")
# Tags of blocks of commands that this test would not run: a command a user types is tagged sh.
SHELL_TAGS = ("bash", "shell", "console", "zsh", "shell-session")
MARKER = re.compile(r"\bneeds:\s*([\w-]+(?:\s*,\s*[\w-]+)*)")
# The README's first two commands, ./scripts/run.sh and ./scripts/test.sh, are what CI runs, and no
# invocation of them is run here: the main job is every technique's flow (minutes even with tiny
# params), and the suite would run this test again, or, for one module, test this copy's tiny params
# against the book's values. The test paths given to scripts/test.sh are checked to exist.
RUN_BY_CI = re.compile(r"^(\w+=\S*\s+)*(bash\s+)?(\./)?scripts/(run|test)\.sh\b")
FILE_TIMEOUT_SECONDS = 900
PARALLEL_FILES = 2  # this machine's cores


@dataclass(frozen=True)
class Command:
    line: int  # where it starts in its file, 1-based
    text: str  # as written, continuation lines included
    needs: tuple[str, ...]  # from its `# needs: ...` comment; () = runs here


def shell_comment(line: str) -> str:
    """The comment ending a shell line: from an unquoted `#` that starts a word; "" if none."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
            elif char == "\\" and quote == '"':
                continue
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[index + 1 :].strip()
    return ""


def collect_commands(markdown: str) -> list[Command]:
    """The commands of the ```sh blocks of `markdown`, in order. Full-line comments and blank lines
    are not commands; a `needs:` marker names only NEEDS (ValueError otherwise, with its line)."""
    commands, in_block, language = [], False, ""
    pending: list[str] = []  # the physical lines of a command continued with `\`
    start = 0
    for number, line in enumerate(markdown.splitlines(), start=1):
        fence = FENCE.match(line)
        if fence and not in_block:
            in_block, language = True, fence.group(1)
            continue
        if fence and in_block and not fence.group(1):
            if pending:
                raise ValueError(f"line {start}: the command continues past the end of its block")
            in_block = False
            continue
        if not in_block or language != "sh":
            continue
        text = line.strip()
        if not pending and (not text or text.startswith("#")):
            continue
        if not pending:
            start = number
        pending.append(line.rstrip())
        if text.endswith("\\"):
            continue
        needs: list[str] = []
        for physical in pending:
            if marker := MARKER.search(shell_comment(physical)):
                needs += [need.strip() for need in marker.group(1).split(",")]
        unknown = [need for need in needs if need not in NEEDS]
        if unknown:
            raise ValueError(
                f"line {start}: unknown `needs: {', '.join(unknown)}` (a skipped command needs one of: "
                f"{', '.join(NEEDS)})"
            )
        commands.append(Command(start, "\n".join(pending).strip(), tuple(needs)))
        pending = []
    return commands


def shell_blocks_not_tagged_sh(markdown: str) -> list[int]:
    """The lines opening a fenced block of commands tagged bash (or the like) instead of sh: the test
    would not run them."""
    lines, in_block = [], False
    for number, line in enumerate(markdown.splitlines(), start=1):
        fence = FENCE.match(line)
        if not fence:
            continue
        if in_block:
            in_block = bool(fence.group(1))  # a bare fence closes the block
        else:
            in_block = True
            if fence.group(1) in SHELL_TAGS:
                lines.append(number)
    return lines


def runs_here(command: Command) -> bool:
    return not command.needs and not RUN_BY_CI.match(command.text)


# --- Running a file's commands ---------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    command: Command
    exit_code: int | None  # None: the file's commands timed out while it ran
    seconds: float
    output: str  # stdout and stderr, interleaved as a terminal shows them


def run_in_order(commands: list[Command], cwd: Path, env: dict[str, str], timeout: float) -> list[Outcome]:
    """Run `commands` one after another in ONE bash (`set -e`: state such as `source` and `cd` carries
    over, the first failure stops it), each command's output apart. The outcomes of the commands that
    ran, the last one the failure if any."""
    token = f"gendl-docs-{uuid.uuid4().hex}"
    script = ["set -e"]
    for index, command in enumerate(commands):
        script += [f"printf '\\n{token} start {index} %s\\n' \"$EPOCHREALTIME\"", command.text]
    script.append(f"printf '\\n{token} done -1 %s\\n' \"$EPOCHREALTIME\"")
    log = cwd.parent / f"{token}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            ["bash", "-c", "\n".join(script)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stopped as a group on a timeout: a flow's servers too
        )
        try:
            exit_code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            exit_code = None
    text = log.read_text(errors="replace")
    log.unlink()
    outcomes, index, started, lines = [], None, 0.0, []
    for line in text.splitlines():
        if line.startswith(f"{token} "):
            _, kind, number, stamp = line.split()
            if index is not None:
                outcomes.append(Outcome(commands[index], 0, float(stamp) - started, "\n".join(lines).strip()))
            index, started, lines = (int(number) if kind == "start" else None), float(stamp), []
        else:
            lines.append(line)
    if index is not None:  # the command that failed, or that was running when time ran out
        ended = time.time()
        outcomes.append(Outcome(commands[index], exit_code, ended - started, "\n".join(lines).strip()))
    return outcomes


def failure_report(source: str, outcomes: list[Outcome], output_lines: int = 60) -> str | None:
    """What failed, where it is written and what it printed; None when every command succeeded."""
    if not outcomes or outcomes[-1].exit_code == 0:
        return None
    failed = outcomes[-1]
    status = "timed out" if failed.exit_code is None else f"exited with {failed.exit_code}"
    printed = failed.output.splitlines()
    shown = printed[-output_lines:]
    return "\n".join(
        [
            f"{source}:{failed.command.line}: `{failed.command.text}` {status} after {failed.seconds:.0f} s",
            *([f"[{len(printed) - len(shown)} lines before these]"] if len(printed) > len(shown) else []),
            *shown,
            "",
            "ran before it: "
            + (
                "; ".join(f"line {done.command.line} ({done.seconds:.0f} s)" for done in outcomes[:-1])
                or "none"
            ),
        ]
    )


# --- The repo copy a user's commands run in --------------------------------------------------------


def shaped_like(shape: dict, values: dict) -> dict:
    """`values` cut down to the keys of `shape` (a profile's keys, from the full params)."""
    return {
        key: shaped_like(sub, values[key]) if isinstance(sub, dict) else values[key]
        for key, sub in shape.items()
    }


def docs_repo_copy(destination: Path) -> Path:
    """A copy of the checkout as a user has it (committed, .venv in place) whose params.yaml and
    quick profile are tiny: the book-scale commands and the quick ones alike run in seconds."""
    root = make_repo_copy(destination)  # params.yaml: tests/flows/conftest.py's tiny params
    quick = REPO_ROOT / "profiles" / "quick.yaml"
    tiny_quick = shaped_like(read_yaml(quick), read_yaml(root / "params.yaml"))
    (root / "profiles" / "quick.yaml").write_text(dump_yaml(tiny_quick))
    (root / ".venv").symlink_to(Path(sys.prefix))
    with open(root / ".git" / "info" / "exclude", "a") as exclude:
        exclude.write(".venv\n")  # as the checkout's .gitignore keeps the real folder out
    subprocess.run([*GIT, "commit", "-qam", "tiny quick profile"], cwd=root, check=True)
    return root


def user_environment(root: Path, keras_home: Path, prefect_api_url: str) -> dict[str, str]:
    """What `source .venv/bin/activate` gives, with the Keras cache copy, this session's Prefect
    server and a Prefect home of the copy's own. MLflow is the copy's default store (mlflow/mlflow.db
    in the copy, as tracking.uri "" says): a user sets no MLFLOW_* variable."""
    venv = Path(sys.prefix)
    temporary = root.parent / "tmp"
    temporary.mkdir(exist_ok=True)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MLFLOW_", "PREFECT_", "GENDL_", "DVC_"))
        and key not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    # The package's step server (tests/flows/conftest.py) runs the stages' steps as their own
    # processes would, without importing TensorFlow for each; it refuses what it could not run alike.
    if STEP_SERVER in os.environ:
        env[STEP_SERVER] = os.environ[STEP_SERVER]
    return {
        **env,
        "PATH": os.pathsep.join([str(venv / "bin"), env["PATH"]]),
        "VIRTUAL_ENV": str(venv),
        "KERAS_HOME": str(keras_home),
        "PREFECT_HOME": str(root.parent / "prefect-home"),
        "PREFECT_API_URL": prefect_api_url,  # the session's test server: no ephemeral server per flow
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "TMPDIR": str(temporary),  # `mktemp -d` in the docs: removed with the test's folder
    }


# --- The tests ---------------------------------------------------------------------------------------


def documentation_files() -> list[Path]:
    return [
        REPO_ROOT / "README.md",
        *sorted((REPO_ROOT / "docs").glob("*.md")),
        REPO_ROOT / "inputs" / "README.md",
    ]


SAMPLE = """\
# Title

```sh
./scripts/run.sh            # the main job
source .venv/bin/activate
python -m flows.text --profile quick   # 3 epochs
dvc exp run text_sample \\
  -S 'text.sample.temperatures=[0.3,0.8]'   # needs: hours
echo '# not a comment' "a # b"   # needs: server, gpu
# a full-line comment, and a blank line:

mlflow ui  #needs:server
```

```python
print("not a command")
```

```bash
pip install something
```

  ```sh
  dvc metrics show
  GENDL_TEST_WORKERS=0 ./scripts/test.sh tests/unit/test_params.py   # one module: CI's too
  ```
"""


def test_commands_are_collected_from_sh_blocks_with_their_line_and_needs():
    commands = collect_commands(SAMPLE)

    assert [(command.line, command.needs) for command in commands] == [
        (4, ()),
        (5, ()),
        (6, ()),
        (7, ("hours",)),
        (9, ("server", "gpu")),
        (12, ("server",)),
        (24, ()),
        (25, ()),
    ]
    assert (
        commands[3].text
        == "dvc exp run text_sample \\\n  -S 'text.sample.temperatures=[0.3,0.8]'   # needs: hours"
    )
    assert commands[4].text.startswith("echo '# not a comment' \"a # b\"")
    ran = [runs_here(command) for command in commands]
    assert ran == [False, True, True, False, False, False, True, False]  # run.sh, test.sh: CI's
    assert shell_blocks_not_tagged_sh(SAMPLE) == [19]


def test_a_comment_is_found_only_outside_quotes_and_at_a_word_start():
    assert shell_comment("echo a#b 'c # d' \"e # f\"  # g: h") == "g: h"
    assert shell_comment("echo 'it''s' # x") == "x"
    assert shell_comment("echo no comment") == ""


@pytest.mark.parametrize(
    ("markdown", "message"),
    [
        ("```sh\nfoo  # needs: coffee\n```\n", "line 2: unknown `needs: coffee`"),
        ("```sh\nfoo \\\n```\n", "line 2: the command continues past the end of its block"),
    ],
    ids=["unknown need", "unfinished command"],
)
def test_a_bad_marker_or_an_unfinished_command_is_an_error_naming_its_line(markdown, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        collect_commands(markdown)


def test_a_failing_command_is_reported_with_its_file_line_and_output(tmp_path):
    commands = collect_commands(
        '```sh\ncd sub\nexport WORD=hello\necho "$WORD from $(basename $PWD)"\n'
        "echo to stderr >&2; exit 3   # fails\necho never\n```\n"
    )
    (tmp_path / "repo" / "sub").mkdir(parents=True)

    outcomes = run_in_order(commands, tmp_path / "repo", dict(os.environ), timeout=30)

    assert [outcome.exit_code for outcome in outcomes] == [0, 0, 0, 3]
    assert outcomes[2].output == "hello from sub"  # state carries over from command to command
    report = failure_report("docs/x.md", outcomes)
    assert report.startswith("docs/x.md:5: `echo to stderr >&2; exit 3   # fails` exited with 3 after ")
    assert "\nto stderr\n" in report and "never" not in report
    assert failure_report("docs/x.md", outcomes[:3]) is None


def test_a_command_that_hangs_is_stopped_and_named(tmp_path):
    (tmp_path / "repo").mkdir()
    outcomes = run_in_order(
        collect_commands("```sh\ntrue\nsleep 30\n```\n"), tmp_path / "repo", dict(os.environ), 2
    )

    assert "README.md:3: `sleep 30` timed out" in failure_report("README.md", outcomes)


@pytest.mark.parametrize("path", documentation_files(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_command_is_tagged_sh_and_skipped_only_for_a_known_reason(path):
    markdown = path.read_text(encoding="utf-8")
    source = path.relative_to(REPO_ROOT)
    collect_commands(markdown)  # raises on an unknown `needs:`
    assert not shell_blocks_not_tagged_sh(markdown), (
        f"{source}: lines {shell_blocks_not_tagged_sh(markdown)} open blocks of commands not tagged sh: "
        "tag them ```sh so this test runs them"
    )
    for command in collect_commands(markdown):
        # pip and the like fetch from the index; run here, an editable install would also point the
        # shared .venv at this test's throwaway copy.
        if runs_here(command) and re.search(r"\b(pip|uv|curl|wget)\b", command.text):
            pytest.fail(
                f"{source}:{command.line}: `{command.text}` needs the network: end it with `# needs: network`"
            )
        if "scripts/test.sh" in command.text:
            for argument in shlex.split(command.text, comments=True):
                test_path = argument.partition("::")[0]
                if test_path.startswith("tests/") and not (REPO_ROOT / test_path).exists():
                    pytest.fail(f"{source}:{command.line}: `{command.text}`: no {test_path} in the repo")


def commands_that_run_here(path: Path) -> list[Command]:
    return [command for command in collect_commands(path.read_text(encoding="utf-8")) if runs_here(command)]


def venv_is_set_up() -> bool:
    """scripts/setup.sh's stamp matches pyproject.toml and constraints.txt: run in a copy, it installs
    nothing (an editable install from the copy would point the shared .venv at it)."""
    wanted = hashlib.sha256(
        (REPO_ROOT / "pyproject.toml").read_bytes() + (REPO_ROOT / "constraints.txt").read_bytes()
    )
    stamp = Path(sys.prefix) / ".gendl-installed"
    return stamp.is_file() and stamp.read_text().strip() == wanted.hexdigest()


def run_file(
    path: Path, folder: Path, keras_home: Path, prefect_api_url: str
) -> tuple[list[Command], list[Outcome]]:
    commands = commands_that_run_here(path)
    if any("scripts/setup.sh" in command.text for command in commands) and not venv_is_set_up():
        pytest.fail(
            f"{path.name} runs scripts/setup.sh: run it in {REPO_ROOT} first, so that here it installs nothing"
        )
    root = docs_repo_copy(folder / "repo")
    (folder / "shared").mkdir()
    (folder / "shared" / "keras-home").symlink_to(keras_home)  # ../shared/keras-home, as beside the checkout
    env = user_environment(root, keras_home, prefect_api_url)
    return commands, run_in_order(commands, root, env, FILE_TIMEOUT_SECONDS)


@pytest.fixture(scope="module")
def docs_runs(request, tmp_path_factory, keras_home) -> dict[Path, Future]:
    """The selected files' commands, started together, PARALLEL_FILES files at a time: most of a
    tiny flow's half minute is waiting (imports, Prefect's polling), not computing."""
    import prefect.settings

    api_url = prefect.settings.PREFECT_API_URL.value()  # this package's test server (tests/flows/conftest.py)
    selected = [
        item.callspec.params["path"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_every_command_in_the_docs_runs"
    ]
    pool = ThreadPoolExecutor(max_workers=PARALLEL_FILES)
    runs = {
        path: pool.submit(run_file, path, tmp_path_factory.mktemp(path.stem), keras_home, api_url)
        for path in selected
        if commands_that_run_here(path)
    }
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("path", documentation_files(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_command_in_the_docs_runs(path, docs_runs):
    source = path.relative_to(REPO_ROOT)
    if path not in docs_runs:
        pytest.skip(f"{source} has no command that runs without network, GPU, hours or a server")

    commands, outcomes = docs_runs[path].result()

    print("\n".join(f"{source}:{outcome.command.line}: {outcome.seconds:5.1f} s" for outcome in outcomes))
    report = failure_report(str(source), outcomes)
    assert report is None, report
    assert len(outcomes) == len(commands), f"{source}: {len(outcomes)} of its {len(commands)} commands ran"


def test_a_flow_ends_with_dvc_commands_that_rerun_only_sampling(tmp_path):
    """After the main job (the quick profile applied while it ran) dvc.lock holds the quick params and
    params.yaml the book's: a plain `dvc exp run text_sample` would retrain at book scale first."""
    from flows.cli import next_steps

    def dvc_line(techniques):
        return next_steps(tmp_path, "sqlite:///mlflow.db", techniques).splitlines()[-1]

    hint = "dvc exp run --single-item text_sample -S 'text.sample.temperatures=[0.3,0.8]'"
    assert dvc_line(None).endswith(f"dvc metrics show; dvc plots show; {hint}")
    assert dvc_line(["text"]).endswith(hint)
    assert f"source {Path(sys.executable).parent / 'activate'}; cd {tmp_path}; " in dvc_line(["text"])
    assert "exp run" not in dvc_line(["vae"])  # no text model to sample from
