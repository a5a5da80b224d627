#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests and multi-process gloo tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export WANDB_SILENT=true WANDB_MODE=offline
# Two pytest workers where there are two cores or more, each test file on one of them: about
# 7 minutes instead of 11 on a 2-core host, since most tests wait on process start-up and
# collectives. Tests that launch ranks take their ports from their worker's own block (see
# tests/distributed/dist_harness.py), so the workers never race for one.
# DISTLOG_TEST_WORKERS=0 runs everything in one process; another number, that many workers.
CORES=$(nproc 2>/dev/null || echo 1)
WORKERS=${DISTLOG_TEST_WORKERS:-$([ "$CORES" -ge 2 ] && echo 2 || echo 0)}
if [ "$WORKERS" = "0" ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
exec .venv/bin/python -m pytest -q -n "$WORKERS" --dist loadfile "$@"
