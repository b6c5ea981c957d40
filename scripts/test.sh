#!/usr/bin/env bash
# Set up (if needed) and run the test suite (offline; a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# Two pytest-xdist workers (this machine's cores; GENDL_TEST_WORKERS=0 runs in one process), a group
# of tests at a time (tests/conftest.py says which).
exec .venv/bin/python -m pytest -n "${GENDL_TEST_WORKERS:-2}" "$@"
