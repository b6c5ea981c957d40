"""The README's map of the code names every module under tasks/, and only modules that exist."""

from __future__ import annotations

import re

from tests.conftest import REPO_ROOT


def mapped_files() -> set[str]:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("```\ntasks/\n") + len("```\ntasks/\n") :]
    block = block[: block.index("```")]
    files, folders = set(), ["tasks"]
    for line in block.splitlines():
        depth = (len(line) - len(line.lstrip())) // 2
        entry = line.split()[0]
        folders = folders[:depth]  # depth 1 = directly in tasks/
        if entry.endswith("/"):
            folders.append(entry.rstrip("/"))
            files |= {"/".join([*folders, name]) for name in re.findall(r"(\w+\.py)", line)}
        else:
            files.add("/".join([*folders, entry]))
    return files


def test_the_readme_map_matches_the_tree():
    tree = {
        str(path.relative_to(REPO_ROOT))
        for path in (REPO_ROOT / "tasks").rglob("*.py")
        if path.name != "__init__.py"
    }
    assert mapped_files() == tree, (
        f"missing from the README's map: {sorted(tree - mapped_files())}; "
        f"in the map but not in tasks/: {sorted(mapped_files() - tree)}"
    )
