#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests and multi-process gloo tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export WANDB_SILENT=true WANDB_MODE=offline
exec .venv/bin/python -m pytest -q "$@"
