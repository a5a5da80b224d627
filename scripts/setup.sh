#!/usr/bin/env bash
# Create .venv (once) and install distlog with every extra needed for the demo and the tests.
# Idempotent: a second run only checks that the install is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Use the CPU build of torch that lies on disk when it is there; a bare `torch` requirement
# would otherwise pull a multi-GB CUDA build.
FIND_LINKS=()
[ -d /opt/wheels ] && FIND_LINKS=(--find-links /opt/wheels)
stamp=.venv/.distlog-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "${FIND_LINKS[@]}" \
    "torch==${DISTLOG_TORCH_VERSION:-2.13.0}" -e ".[dev]"
  touch "$stamp"
fi
