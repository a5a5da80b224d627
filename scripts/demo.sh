#!/usr/bin/env bash
# Set up (if needed) and run the demo: a small DDP model on 2 gloo ranks under torchrun,
# logging through distlog into runs/demo/<date-time> (add --wandb for an offline wandb run too).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/torchrun --standalone --nproc_per_node="${NPROC:-2}" -m distlog.demo "$@"
