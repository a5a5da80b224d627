"""An Accelerate training loop on 2 CPU ranks with distlog's tracker.

    accelerate launch --multi_gpu --num_processes 2 examples/accelerate_loop.py --run-dir runs/acc
    torchrun --nproc_per_node=2 examples/accelerate_loop.py --run-dir runs/acc   # the same

``accelerator.log`` writes the main process's values through distlog; ``tracker.logger`` takes
the place of ``accelerator.reduce(loss)`` / ``accelerator.gather(...)`` per key: every rank
logs, one fused exchange per log step. With ``--raw`` each rank writes what it logged to
``raw_rank<r>.json`` beside the run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distlog.integrations.accelerate import DistlogTracker


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", default="runs/accelerate")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--log-every", type=int, default=4)
    parser.add_argument("--raw", action="store_true")
    parser.add_argument(
        "--also-main-only",
        action="store_true",
        help="a second tracker, used through accelerator.log only, in <run-dir>-main-only",
    )
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)

    tracker = DistlogTracker(run_dir=run_dir)
    trackers = [tracker]
    if args.also_main_only:  # nobody touches its .logger: the main process writes on its own
        trackers.append(DistlogTracker(run_dir=run_dir.parent / (run_dir.name + "-main-only")))
    accelerator = Accelerator(cpu=True, log_with=trackers)
    logger = tracker.logger  # on every process: the cross-rank logger
    accelerator.init_trackers("distlog-example", config={"lr": 0.05, "steps": args.steps})

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * 4 * args.steps, 8, generator=g)
    y = x.sum(dim=1, keepdim=True)
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    rank = accelerator.process_index
    raw, collectives = [], []
    for i, (xb, yb) in enumerate(loader):
        loss = nn.functional.mse_loss(model(xb), yb)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        step = i + 1
        # In place of accelerator.reduce(loss, "mean") and accelerator.gather(...) per key:
        values = [
            ("train/loss", float(loss.detach()), "mean"),
            ("train/samples", float(len(xb)), "sum"),
            ("train/worst_rank_value", float(rank * 10 + step), "max"),
        ]
        if rank == 1:
            values.append(("train/only_rank1", float(step), "mean"))
        for key, value, reduce in values:
            logger.log_scalar(key, value, reduce)
            raw.append(
                {"after": logger.step, "key": key, "value": value, "reduce": reduce, "weight": None}
            )
        if step % args.log_every == 0:
            # The main process's own values, as with any Accelerate tracker...
            accelerator.log({"main/loss": float(loss.detach()), "main/rank": rank}, step=step)
            logger.flush(step=step)  # ...written in the same row as every rank's values
            collectives.append(logger.collectives_last_flush)
    logger.finish(step=step)  # the tail row is the last step's (default: the last flush's + 1)
    accelerator.end_training()
    if args.raw:
        out = {"raw": raw, "collectives": collectives}
        (run_dir.parent / f"raw_rank{rank}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main()
