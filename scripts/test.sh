#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests and multi-process gloo tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export WANDB_SILENT=true WANDB_MODE=offline
# One process by default. DISTLOG_TEST_WORKERS=2 runs two pytest workers, each test file on one
# of them: about 6 minutes instead of 10-11 on a 2-core host (most tests wait on process start-up
# and collectives), but tests that pick a free port for their own launches can then race for it
# (1 timeout in 2 runs on a loaded host), so CI runs in one process.
WORKERS=${DISTLOG_TEST_WORKERS:-0}
if [ "$WORKERS" = "0" ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
exec .venv/bin/python -m pytest -q -n "$WORKERS" --dist loadfile "$@"
