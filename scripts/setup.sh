#!/usr/bin/env bash
# Create .venv (once) and install gendl with its pinned dependencies (again only when
# pyproject.toml or constraints.txt change). Sourced by run.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
stamp=".venv/.gendl-installed"
wanted="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "installing gendl and its dependencies into .venv (TensorFlow is large: a minute or two)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test,offline,team]"
  echo "$wanted" > "$stamp"
fi
