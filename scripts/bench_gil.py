"""What an asynchronous flush hides when the training step holds the GIL.

    python scripts/bench_gil.py [--steps 300] [--rounds 2] [--step python|torch]

Two gloo ranks; each step is ~3 ms of pure Python (``--step python``, a busy loop that holds the
GIL) or of 160x160 matmuls (``--step torch``, ops that release it), and 32 keys (0-d CPU
tensors) are logged and flushed every step. Variants, in the same run, round after round:

- ``bare``: the step alone;
- ``floor``: one hand-written asynchronous all_reduce of the same payload (a 5-slot header and
  3 slots a mean key) on a second gloo group, launched on the training thread after the step
  and waited for at the next;
- ``blocking``: ``Logger()``; ``async``: ``Logger(async_flush=True)``;
- ``async, switch 0.2 ms``: the same with ``sys.setswitchinterval(0.0002)`` in the rank.

Printed: the wall time each variant adds to a step over ``bare`` (slowest rank, median over
rounds). Figures are quoted in docs/aggregation.md ("Blocking and asynchronous flushes").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402  (its launcher: fresh gloo ranks, a timeout, dead ranks reported)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

VARIANTS = ("bare", "floor", "blocking", "async", "async, switch 0.2 ms")
N_KEYS = 32


def job_gil_step(rank: int, world: int, variant: str, steps: int, step_kind: str) -> float:
    """Seconds a step of ``variant`` takes on this rank."""
    import distlog

    if variant == "async, switch 0.2 ms":
        sys.setswitchinterval(0.0002)
    names = [f"train/metric_{i:02d}" for i in range(N_KEYS)]
    values = [torch.tensor(float(i + rank)) for i in range(N_KEYS)]
    second = dist.new_group(backend="gloo")  # as the logger's own group
    payload = torch.zeros(5 + 3 * N_KEYS, dtype=torch.float64)
    logger = distlog.Logger(
        run_dir=tempfile.mkdtemp(), async_flush=variant.startswith("async"), handle_signals=False
    )
    a = torch.randn(160, 160) * 0.05
    pending: list[Any] = []

    def step() -> None:
        if step_kind == "python":
            end = time.perf_counter() + 0.003
            while time.perf_counter() < end:
                pass
        else:
            y = a
            for _ in range(18):
                y = torch.tanh(a @ y)

    def after_step(s: int) -> None:
        if variant == "floor":
            if pending:
                pending.pop().wait()
            payload.fill_(float(s))
            pending.append(dist.all_reduce(payload, group=second, async_op=True))
        elif variant != "bare":
            for k, v in zip(names, values, strict=True):
                logger.log_scalar(k, v)
            logger.flush(s)

    for s in range(30):  # warm-up: the key exchange, the first allocations
        after_step(s)
    dist.barrier()
    t0 = time.perf_counter()
    for s in range(30, 30 + steps):
        step()
        after_step(s)
    while pending:
        pending.pop().wait()
    logger.finish()
    return (time.perf_counter() - t0) / steps


bench.JOBS["gil_step"] = job_gil_step  # also runs in each spawned rank, which imports this file


def run(variant: str, steps: int, step_kind: str) -> float:
    """The slowest rank's step time of ``variant``, in fresh processes."""
    kwargs = {"variant": variant, "steps": steps, "step_kind": step_kind}
    out = bench.run_world(2, [("gil", "gil_step", kwargs)], timeout=600)["gil"]
    if isinstance(out, dict):
        raise RuntimeError(f"{variant}: {out['error']}")
    return max(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--step", choices=("python", "torch"), default="python")
    args = ap.parse_args()
    added: dict[str, list[float]] = {v: [] for v in VARIANTS[1:]}
    for r in range(args.rounds):
        bare = run("bare", args.steps, args.step)
        for v in VARIANTS[1:]:
            added[v].append(run(v, args.steps, args.step) - bare)
        print(f"round {r + 1}/{args.rounds}: bare step {bare * 1e3:.2f} ms", flush=True)
    print(f"\n{args.step} step, 32 keys flushed every step, 2 gloo ranks: added a step")
    for v, xs in added.items():
        print(
            f"  {v:24s} {statistics.median(xs) * 1e3:+.2f} ms  (rounds: "
            + ", ".join(f"{x * 1e3:+.2f}" for x in xs)
            + ")"
        )


if __name__ == "__main__":
    main()
