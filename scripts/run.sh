#!/usr/bin/env bash
# Set up (if needed) and run the main job: every technique's flow with the quick CPU profile,
# MLflow on a local SQLite store and Prefect in ephemeral mode. Extra args go to the flow,
# e.g. `scripts/run.sh --profile ""` for the book-scale params.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec .venv/bin/python -m flows.all --profile quick "$@"
