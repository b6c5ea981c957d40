"""dvc.yaml lists exactly the project code each stage runs: the module its command runs and every
project module that imports, transitively. A stage that misses one keeps outputs made by old code;
one that lists too much re-runs (hours of training) for a change it never runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

PROJECT_PACKAGES = ("tasks", "flows")


def dvc_stages(root: Path = REPO_ROOT) -> dict[str, dict]:
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"]


def module_file(root: Path, module: str) -> Path | None:
    """The file of a project module (a package's __init__.py), or None if it is not the project's."""
    if module.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = root / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, module: str) -> set[str]:
    """Every module an `import` or `from ... import` anywhere in the file names (functions too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            names.add(source)
            names |= {f"{source}.{alias.name}" for alias in node.names}  # `from tasks import storage`
    return names


def code_dependencies(root: Path, module: str) -> set[str]:
    """Repo-relative files of `module` and of every project module it imports, transitively.

    Packages' __init__.py files are left out: they are kept empty (a test says so), so they change
    nothing a stage computes."""
    seen: dict[str, Path] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        path = module_file(root, name)
        if path is None or name in seen:
            continue
        seen[name] = path
        parts = name.split(".")
        pending += [".".join(parts[:depth]) for depth in range(1, len(parts))]  # parent packages
        pending += sorted(imported_modules(path, name))
    return {str(path.relative_to(root)) for path in seen.values() if path.name != "__init__.py"}


def stage_module(command: str) -> str:
    """The step module a stage runs. The launcher before it (tasks/run.py, which hands the step to
    the flow's step server or runs it in its own process) computes nothing, so it is not listed."""
    match = re.fullmatch(r"python -m tasks\.run ([\w.]+) \w+", command)
    assert match, f"stage command {command!r} is not `python -m tasks.run <module> <step>`"
    return match.group(1)


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_stage_lists_exactly_the_code_it_imports(name):
    stage = dvc_stages()[name]
    listed = {dep for dep in stage.get("deps", []) if dep.endswith(".py")}
    imported = code_dependencies(REPO_ROOT, stage_module(stage["cmd"]))
    assert listed == imported, (
        f"{name}: missing from deps {sorted(imported - listed)}, listed but not imported {sorted(listed - imported)}"
    )


def test_package_init_files_are_empty():
    for package in PROJECT_PACKAGES:
        for init in (REPO_ROOT / package).rglob("__init__.py"):
            assert not init.read_text().strip(), f"{init} must stay empty: stages do not list it"


def test_mlflow_logging_is_imported_by_no_stage():
    # Changing what goes to MLflow must re-run nothing.
    for name, stage in dvc_stages().items():
        deps = code_dependencies(REPO_ROOT, stage_module(stage["cmd"]))
        assert "tasks/tracking.py" not in deps and not any(dep.endswith("/log.py") for dep in deps), name


def test_the_drift_check_sees_a_new_import(tmp_path):
    # A stage's module that starts importing another project module must be caught.
    for relative in ("tasks/steps.py", "tasks/storage.py"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text((REPO_ROOT / relative).read_text())
    (tmp_path / "tasks" / "__init__.py").write_text("")
    (tmp_path / "tasks" / "extra.py").write_text("X = 1\n")
    before = code_dependencies(tmp_path, "tasks.storage")
    assert before == {"tasks/storage.py", "tasks/steps.py"}
    storage = tmp_path / "tasks" / "storage.py"
    storage.write_text(storage.read_text() + "\n\ndef late():\n    from tasks.extra import X\n    return X\n")
    assert code_dependencies(tmp_path, "tasks.storage") == before | {"tasks/extra.py"}
