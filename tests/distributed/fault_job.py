"""A small training-like job for fault tests: run it under torchrun or as plain rank processes.

Every rank logs values that are a known function of (rank, step); rank 0 appends each step whose
flush returned to ``<run_dir>/progress.txt``, so a test that kills the job can check that every
flushed step is in ``metrics.jsonl``, complete and correct (see :func:`expected_row`).

Faults it can inject itself (``--fail-at STEP --fail-rank R --fail-how HOW``, first start only,
i.e. ``TORCHELASTIC_RESTART_COUNT`` 0): ``raise`` (an exception), ``exit`` (``sys.exit(3)``),
``kill`` (SIGKILL itself), ``term`` (SIGTERM itself), ``hang`` (stop flushing: sleep).
``--ckpt`` makes it checkpoint after each flush and start from the checkpoint, for restarts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

import distlog

PROGRESS_FILE = "progress.txt"


def rank_values(rank: int, step: int) -> dict[str, tuple[object, str]]:
    """What ``rank`` logs at ``step``: key -> (value, reduction)."""
    return {
        "loss": (step + rank / 10, "mean"),
        "loss_t": (torch.tensor(step * 0.5 + rank, dtype=torch.float32), "mean"),
        "tokens": (100 * (rank + 1), "sum"),
        "rank_max": (rank, "max"),
        "step_min": (step + rank, "min"),
        "lr": (step / 1000, "last"),
    }


def expected_row(step: int, log_every: int, world: int) -> dict[str, float]:
    """The row a flush at ``step`` must write: each key reduced over ranks and covered steps."""
    steps = range(step - log_every + 1, step + 1)
    ranks = range(world)
    n = len(steps) * world
    return {
        "loss": sum(t + r / 10 for t in steps for r in ranks) / n,
        "loss_t": sum(t * 0.5 + r for t in steps for r in ranks) / n,
        "tokens": float(sum(100 * (r + 1) for _ in steps for r in ranks)),
        "rank_max": float(world - 1),
        "step_min": float(min(steps)),
        "lr": step / 1000,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", required=True)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--step-seconds", type=float, default=0.005)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--sync-write", action="store_true")
    p.add_argument("--with-block", action="store_true", help="use the logger as a context manager")
    p.add_argument("--ckpt", default=None)
    p.add_argument("--ckpt-every", type=int, default=1, help="checkpoint every N flushes")
    p.add_argument("--fail-at", type=int, default=-1)
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fail-how", default="raise")
    p.add_argument("--wandb-dir", default=None)
    return p.parse_args(argv)


def load_start(ckpt: str | None) -> int:
    if ckpt is None or not os.path.exists(ckpt):
        return 0
    with open(ckpt) as fh:
        return int(json.load(fh)["next_step"])


def save_ckpt(ckpt: str, next_step: int) -> None:
    tmp = ckpt + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"next_step": next_step}, fh)
    os.replace(tmp, ckpt)


def inject(how: str) -> None:
    if how == "raise":
        raise RuntimeError("injected failure")
    if how == "exit":
        sys.exit(3)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    if how == "hang":
        time.sleep(3600)
    raise ValueError(how)


def train(logger: distlog.Logger, args: argparse.Namespace, rank: int, progress: Path) -> None:
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    start = load_start(args.ckpt)
    for step in range(start, args.steps):
        time.sleep(args.step_seconds)
        if step == args.fail_at and rank == args.fail_rank and restart == 0:
            inject(args.fail_how)
        for key, (value, red) in rank_values(rank, step).items():
            logger.log_scalar(key, value, reduce=red)
        if step % args.log_every == args.log_every - 1:
            logger.flush(step)
            if rank == 0:
                with progress.open("a") as fh:
                    fh.write(f"{step}\n")
            flushes = (step + 1) // args.log_every
            if args.ckpt is not None and rank == 0 and flushes % args.ckpt_every == 0:
                save_ckpt(args.ckpt, step + 1)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    world = distlog.init_distributed()
    run_dir = Path(args.run_dir)
    (run_dir / "pids").mkdir(parents=True, exist_ok=True)
    (run_dir / "pids" / f"rank{world.rank}").write_text(str(os.getpid()))
    logger = distlog.Logger(run_dir=run_dir, async_write=not args.sync_write, timeout=args.timeout)
    if args.wandb_dir and world.is_global_zero:
        from distlog.sinks.wandb import WandbSink

        logger.add_sink(WandbSink(project="faults", id=logger.run_id, dir=args.wandb_dir))
    progress = run_dir / PROGRESS_FILE
    if args.with_block:
        with logger:
            train(logger, args, world.rank, progress)
    else:
        train(logger, args, world.rank, progress)
        logger.finish()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
