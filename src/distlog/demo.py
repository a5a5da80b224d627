"""The demo job: a small model on synthetic data, trained with DDP, logged through distlog.

Run it under torchrun (``scripts/demo.sh`` does)::

    torchrun --standalone --nproc_per_node=2 -m distlog.demo

Every rank logs its loss, accuracy, throughput and step time; each log step reduces all of them
across ranks in a few fused collectives, and rank 0 alone writes ``runs/demo/metrics.jsonl``
(plus an offline wandb run when wandb is installed and ``--wandb`` is given).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import distlog


def synthetic_classification(n: int = 4096, dim: int = 32, classes: int = 4, seed: int = 0):
    """Points whose class is decided by a fixed random linear map: learnable, not trivial."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, classes, generator=g)
    y = (x @ w + 0.5 * torch.randn(n, classes, generator=g)).argmax(dim=1)
    return TensorDataset(x, y)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--run-dir",
        default=None,
        help="where rank 0 writes the run log (default runs/demo/<date-time>)",
    )
    p.add_argument("--steps", type=int, default=200, help="optimizer steps")
    p.add_argument("--log-every", type=int, default=10, help="flush every N steps")
    p.add_argument("--batch-size", type=int, default=64, help="per-rank batch size")
    p.add_argument("--wandb", action="store_true", help="also write an (offline) wandb run")
    p.add_argument("--quiet", action="store_true", help="no console line per flush")
    return p.parse_args(argv)


def add_wandb(logger: distlog.Logger) -> None:
    """Rank 0: a wandb run whose id is the run's own (``run.json``), online when this machine
    has a wandb login, else offline; if wandb is missing or its init fails, one line and the
    demo goes on with the local run log."""
    try:
        from distlog.sinks.wandb import WandbInitError, WandbSink, has_login

        mode = None  # WANDB_MODE decides when it is set
        if not os.environ.get("WANDB_MODE") and not has_login():
            mode = "offline"
            print(
                "distlog demo: no wandb login on this machine: writing an offline wandb run "
                "(`wandb login`, then `wandb sync`, uploads it)",
                flush=True,
            )
        sink = WandbSink(
            project="distlog-demo",
            id=logger.run_id,
            dir=logger.run_dir,
            mode=mode,
            init_timeout=30.0,
            settings={"console": "off", "x_disable_stats": True},
        )
    except (ImportError, WandbInitError) as exc:
        print(f"distlog demo: no wandb run ({exc}); the local run log has everything", flush=True)
        return
    logger.add_sink(sink)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    world = distlog.init_distributed()
    if args.run_dir is None:
        args.run_dir = str(Path("runs", "demo", time.strftime("%Y%m%d-%H%M%S")))
    torch.manual_seed(1234 + world.rank)
    device = world.device if world.device.type == "cuda" else torch.device("cpu")

    logger = distlog.Logger(run_dir=args.run_dir, console=not args.quiet)
    if args.wandb and world.is_global_zero:
        add_wandb(logger)
    logger.log_config(
        {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "world_size": world.world_size,
            "backend": world.backend,
        }
    )

    data = synthetic_classification()
    sampler: DistributedSampler | None = (
        DistributedSampler(data, shuffle=True, seed=0) if world.is_distributed else None
    )
    loader = DataLoader(
        data, batch_size=args.batch_size, sampler=sampler, shuffle=sampler is None, drop_last=True
    )
    model: nn.Module = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).to(device)
    if world.is_distributed:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)

    step, epoch = 0, 0
    while step < args.steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for x, y in loader:
            t0 = time.perf_counter()
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            # Tensors go in as they are: no .item(), no host sync on the hot path.
            logger.log_scalar("train/loss", loss)
            logger.log_scalar("train/acc", (logits.argmax(1) == y).float().mean(), weight=len(y))
            logger.log_scalar("train/samples", len(y), reduce="sum")
            logger.log_scalar("train/lr", sched.get_last_lr()[0], reduce="last")
            logger.log_scalar(
                "time/step_ms", 1e3 * (time.perf_counter() - t0), reduce="max", spread=True
            )
            step += 1
            if step >= args.steps:
                # Media across ranks: one histogram of every rank's last logits together, built
                # from shared edges and summed counts (the logits themselves never move).
                logger.log_histogram(logits.detach(), desc="train/logits", ranks="all")
            if step % args.log_every == 0:
                logger.flush(step)
            if step >= args.steps:
                break
        epoch += 1
    logger.finish()
    if world.is_global_zero:
        assert logger.run_dir is not None
        path = logger.run_dir.resolve()
        rows = distlog.read_metrics(path)
        last = rows[-1] if rows else {}
        print(
            f"\ndistlog demo: {world.world_size} rank(s), {len(rows)} log steps written by rank 0"
        )
        if last:
            print(f"final train/loss {last['train/loss']:.4f}, train/acc {last['train/acc']:.3f}")
        print(f"results: {path / 'metrics.jsonl'}")
        cli = shutil.which("distlog") or str(Path(sys.executable).parent / "distlog")
        print(
            f"summary: {os.path.relpath(cli) if os.path.isabs(cli) and Path(cli).exists() else cli} "
            f"show {os.path.relpath(path)}"
        )
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
