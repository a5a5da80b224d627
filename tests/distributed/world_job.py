"""A job that reports what each rank's World and environment say, and logs rank-dependent values.

Run by the multi-node and subgroup tests under real torchrun agents. Each rank writes
``<out>/rank<r>.json``; rank 0 alone writes the run log under ``<out>/node<GROUP_RANK>/run``
(a node-local path, so a second writer on another node would show up as a second run log).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch.distributed as dist

import distlog

ENV_KEYS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "NODE_RANK",
    "ROLE_RANK",
)
STEPS = (0, 1, 2)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    world = distlog.init_distributed()
    out = Path(args.out)
    run_dir = out / f"node{os.environ['GROUP_RANK']}" / "run"
    logger = distlog.Logger(run_dir=run_dir, timeout=20)
    rows = []
    for step in STEPS:
        r = world.rank
        logger.log_scalar("rank/mean", r)
        logger.log_scalar("rank/sum", r + step, reduce="sum")
        logger.log_scalar("rank/max", r, reduce="max")
        logger.log_scalar("rank/min", r, reduce="min")
        logger.log_scalar("node/mean", world.node_rank)
        logger.log_scalar("spread", 10.0 * r, spread=True)
        rows.append(logger.flush(step, block=True))
    report = {
        "world": {
            "rank": world.rank,
            "world_size": world.world_size,
            "local_rank": world.local_rank,
            "local_world_size": world.local_world_size,
            "node_rank": world.node_rank,
            "num_nodes": world.num_nodes,
            "is_global_zero": world.is_global_zero,
            "is_local_zero": world.is_local_zero,
        },
        "env": {k: os.environ.get(k) for k in ENV_KEYS},
        "sinks": len(logger.sinks),
        "rows": rows,
        "run_id": logger.run_id,
    }
    logger.finish()
    (out / f"rank{world.rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
