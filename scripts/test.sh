#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests and multi-process gloo tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export WANDB_SILENT=true WANDB_MODE=offline
# Two workers, each test file on one of them (a module's process pool stays in its worker):
# most tests wait on process start-up and collectives rather than compute, so on a 2-core host
# the suite takes about 6 minutes instead of 11. DISTLOG_TEST_WORKERS=0 runs it in one process.
WORKERS=${DISTLOG_TEST_WORKERS:-2}
if [ "$WORKERS" = "0" ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
exec .venv/bin/python -m pytest -q -n "$WORKERS" --dist loadfile "$@"
