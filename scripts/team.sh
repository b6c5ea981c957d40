#!/usr/bin/env bash
# The team stack on this machine: PostgreSQL, the MLflow and Prefect servers, Prefect workers
# on the `gendl` work pool, and the DVC remote folder (README, "Team stack").
#   scripts/team.sh start [--dir DIR] [--workers N] [--host H] [--pg-port P] [--mlflow-port P] [--prefect-port P]
#   scripts/team.sh stop|status|env [--dir DIR]
#   scripts/team.sh deploy [...]   (scripts/deploy.sh)
# DIR defaults to $GENDL_TEAM_DIR or ~/.gendl-team. scripts/team.py does the work.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Set up the venv if needed; its messages go to stderr so `eval "$(scripts/team.sh env)"` works.
(source "$repo/scripts/setup.sh") >&2
if [ "${1:-}" = deploy ]; then
  shift
  if [ ! -f "$repo/scripts/deploy.sh" ]; then
    echo "team.sh: error: scripts/deploy.sh is missing from this checkout" >&2
    exit 1
  fi
  exec bash "$repo/scripts/deploy.sh" "$@"
fi
exec "$repo/.venv/bin/python" "$repo/scripts/team.py" "$@"
