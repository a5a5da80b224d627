"""Frameworks benchmark: distlog's Lightning callback against ``sync_dist``, and system metrics.

    python scripts/bench_frameworks.py [--steps 60] [--rounds 3] [--json out.json]

Starts 2 gloo ranks under torchrun and measures, side by side in one run (variants interleaved
round by round, the median of the rounds reported):

1. A LightningModule that logs 32 keys a step: bare (no logging), ``self.log(...,
   sync_dist=True)``, plain ``self.log`` with ``DistlogCallback`` (flush every 10 steps). The
   figure is the mean step time over the steps after a warm-up (flush steps included), and
   each variant's added time over the bare step.
2. A plain loop with a ~10 ms step that logs 8 keys a step and flushes every 10 steps, with
   ``Logger(system_metrics=True)`` and without: the added wall time per step and the time
   inside ``flush`` per step (both include waiting for the other rank, so on a busy machine
   they are mostly noise), and the sampler's own cost: flushes back to back with and without,
   best round, as a share of 10 steps of 10 ms.

The lead hooks this into ``scripts/bench.py``; it needs the ``lightning`` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

KEYS = 32
LOG_EVERY = 10


def _lightning_round(kind: str, steps: int, root: Path) -> tuple[float, float]:
    """(mean step time, mean time inside the logging calls and the flush) of one fit."""
    import lightning.pytorch as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from distlog.integrations.lightning import DistlogCallback

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.hooks: list[float] = []  # time in the callbacks between BeforeFlush and here

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            now = time.perf_counter()
            self.times.append(now)
            self.hooks.append(now - pl_module.flush_t0)

    class BeforeFlush(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            pl_module.flush_t0 = time.perf_counter()

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1))
            self.in_logging: list[float] = []
            self.flush_t0 = 0.0

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            if kind != "bare":
                t0 = time.perf_counter()
                detached = loss.detach()
                for k in range(KEYS):
                    self.log(f"m/k{k}", detached + k, sync_dist=(kind == "sync_dist"))
                self.in_logging.append(time.perf_counter() - t0)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64 * (steps + 1), 64, generator=g)
    data = DataLoader(TensorDataset(x, x[:, :1]), batch_size=64)
    timer = Timer()
    callbacks: list = [BeforeFlush()]
    if kind == "distlog":
        callbacks.append(DistlogCallback(run_dir=root / f"pl-{kind}-{time.time_ns()}"))
    callbacks.append(timer)  # after the distlog callback: its flush is inside the step
    module = Module()
    trainer = pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_steps=steps,
        log_every_n_steps=LOG_EVERY,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    t = timer.times[10:]  # warm-up steps left out
    calls = module.in_logging[10:]
    logging = (sum(calls) / len(calls) if calls else 0.0) + statistics.mean(timer.hooks[10:])
    return (t[-1] - t[0]) / (len(t) - 1), logging


def _busy(seconds: float) -> None:
    """About ``seconds`` of real host work (a training step stand-in)."""
    import torch

    a = torch.randn(128, 128)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = torch.tanh(a @ a * 1e-2)


def _system_round(system: bool, steps: int, root: Path) -> tuple[float, float]:
    """(mean step time, mean time inside flush per step) of a ~10 ms step loop."""
    import distlog

    logger = distlog.Logger(
        run_dir=root / f"sys-{system}-{time.time_ns()}", system_metrics=system, async_write=True
    )
    in_flush = 0.0
    t0 = 0.0
    for step in range(steps + 10):
        if step == 10:
            t0, in_flush = time.perf_counter(), 0.0
        _busy(0.010)
        for k in range(8):
            logger.log_scalar(f"train/k{k}", float(step + k))
        if system:
            logger.system.count(samples=32, tokens=4096)  # type: ignore[union-attr]
        if step % LOG_EVERY == LOG_EVERY - 1:
            f0 = time.perf_counter()
            logger.flush(step=step)
            in_flush += time.perf_counter() - f0
    wall = (time.perf_counter() - t0) / steps
    logger.finish()
    return wall, in_flush / steps


def _flush_cost(system: bool, flushes: int, root: Path) -> float:
    """Seconds per flush of 8 keys, flushes back to back (no step, so little rank skew)."""
    import distlog

    logger = distlog.Logger(run_dir=root / f"cost-{system}-{time.time_ns()}", system_metrics=system)
    for _ in range(5):  # the first flushes agree on the keys
        logger.flush()
    t0 = time.perf_counter()
    for _ in range(flushes):
        for k in range(8):
            logger.log_scalar(f"train/k{k}", 1.0)
        if system:
            logger.system.count(samples=32, tokens=4096)  # type: ignore[union-attr]
        logger.flush()
    cost = (time.perf_counter() - t0) / flushes
    logger.finish()
    return cost


def worker(args: argparse.Namespace) -> None:
    warnings.filterwarnings("ignore")
    import torch.distributed as dist

    root = Path(args.root)
    kinds = ["bare", "sync_dist", "distlog"]
    pl_times: dict[str, list[float]] = {k: [] for k in kinds}
    pl_inside: dict[str, list[float]] = {k: [] for k in kinds}
    sys_times: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for kind in kinds:
            wall, inside = _lightning_round(kind, args.steps, root)
            pl_times[kind].append(wall)
            pl_inside[kind].append(inside)
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    costs: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for name in ("off", "on"):
            sys_times[name].append(_system_round(name == "on", args.sys_steps, root))
            costs[name].append(_flush_cost(name == "on", 200, root))
    if dist.get_rank() != 0:
        return
    med = {k: statistics.median(v) for k, v in pl_times.items()}
    bare = med["bare"]
    sys_med = {k: statistics.median(w for w, _ in v) for k, v in sys_times.items()}
    flush_med = {k: statistics.median(f for _, f in v) for k, v in sys_times.items()}
    result = {
        "world_size": dist.get_world_size(),
        "keys": KEYS,
        "log_every": LOG_EVERY,
        "lightning_step_ms": {k: 1e3 * v for k, v in med.items()},
        "lightning_added_ms": {k: 1e3 * (v - bare) for k, v in med.items() if k != "bare"},
        # Time inside the 32 self.log calls and the batch-end callbacks (distlog's flush), per
        # step, minus the bare step's: robust to the noise of a busy machine.
        "lightning_inside_logging_ms": {
            k: 1e3 * (statistics.median(pl_inside[k]) - statistics.median(pl_inside["bare"]))
            for k in kinds
            if k != "bare"
        },
        "added_ratio_sync_dist_over_distlog": (
            (med["sync_dist"] - bare) / (med["distlog"] - bare) if med["distlog"] > bare else None
        ),
        "system_step_ms": {k: 1e3 * v for k, v in sys_med.items()},
        "system_added_pct": 100.0 * (sys_med["on"] - sys_med["off"]) / sys_med["off"],
        "system_flush_ms_per_step": {k: 1e3 * v for k, v in flush_med.items()},
        "system_added_in_flush_pct": 100.0 * (flush_med["on"] - flush_med["off"]) / sys_med["off"],
        # The sampler's own cost: flushes back to back, best round, on minus off; as a share
        # of LOG_EVERY steps of 10 ms (what a flush every 10 steps of a 10 ms step adds).
        "system_cost_us_per_flush": 1e6 * (min(costs["on"]) - min(costs["off"])),
        "system_cost_pct_of_10ms_steps": 100.0
        * (min(costs["on"]) - min(costs["off"]))
        / (LOG_EVERY * 0.010),
        "rounds": {"lightning": pl_times, "system": sys_times, "flush_cost": costs},
    }
    Path(args.json).write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100, help="Lightning steps per fit")
    parser.add_argument("--sys-steps", type=int, default=200, help="steps of the ~10 ms loop")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        src = str(Path(__file__).resolve().parents[1] / "src")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            __file__, "--worker", "--root", tmp, "--json", str(out),
            "--steps", str(args.steps), "--sys-steps", str(args.sys_steps),
            "--rounds", str(args.rounds),
        ]  # fmt: skip
        subprocess.run(cmd, env=env, check=True)
        result = json.loads(out.read_text())
    step = result["lightning_step_ms"]
    added = result["lightning_added_ms"]
    print(f"Lightning, 2 gloo ranks, {KEYS} keys a step, flush every {LOG_EVERY} steps:")
    print(f"  bare step                     {step['bare']:8.2f} ms")
    for kind in ("sync_dist", "distlog"):
        print(f"  {kind:<12} step {step[kind]:8.2f} ms   added {added[kind]:8.2f} ms")
    inside = result["lightning_inside_logging_ms"]
    print(
        f"  inside the logging calls and the flush, per step: sync_dist {inside['sync_dist']:.2f}"
        f" ms, distlog {inside['distlog']:.2f} ms: "
        f"{inside['sync_dist'] / max(inside['distlog'], 1e-9):.1f}x less with distlog"
    )
    if added["distlog"] > 0:
        print(
            f"  sync_dist adds {result['added_ratio_sync_dist_over_distlog']:.1f}x distlog's time"
        )
    else:
        print("  distlog's added time is below this run's noise")
    sys_step = result["system_step_ms"]
    print("System metrics, ~10 ms step, flush every 10 steps:")
    print(f"  off {sys_step['off']:.3f} ms/step, on {sys_step['on']:.3f} ms/step: "
          f"{result['system_added_pct']:+.2f}% wall; inside flush "
          f"{result['system_added_in_flush_pct']:+.3f}%")  # fmt: skip
    print(f"  the sampler's own cost: {result['system_cost_us_per_flush']:.0f} us a flush = "
          f"{result['system_cost_pct_of_10ms_steps']:.2f}% of 10 steps of 10 ms")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
