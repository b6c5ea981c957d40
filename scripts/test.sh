#!/usr/bin/env bash
# Set up (if needed) and run the test suite (offline; a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
