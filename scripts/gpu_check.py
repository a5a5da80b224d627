#!/usr/bin/env python
"""GPU check for distlog (issues 6 and 11): one short script for a 1-GPU box (< 4 minutes).

    OUT=/some/dir python scripts/gpu_check.py        # on the GPU machine, from the repo root
    python scripts/gpu_check.py --cpu-dry-run         # anywhere: the same code paths on CPU

Sections (each in its own try/except; results go to $OUT/gpu.json after every section):

1. ``sync_debug``: world of one, no process group. ``log_scalar`` of CUDA tensors of several
   dtypes (and a CUDA weight) under ``torch.cuda.set_sync_debug_mode("error")`` must raise
   nothing. The flush is tried too and reported as it is: without a process group the payload
   lives on the host, so a flush may copy to the host on the training thread.
2. ``nccl_world_of_one``: an NCCL group of one (NCCL refuses two ranks on one GPU). The training
   thread's ``log_scalar`` and ``flush`` run under sync-debug "error"; the writer thread resolves
   the row afterwards (held back until the mode is off). Values are checked against a reference,
   and flush latency vs keys is timed (training-thread time and time until the row is written).
   The same check with ``async_flush=True``: neither ``flush()`` nor the exchange thread syncs.
3. ``gloo_shared_gpu``: up to 8 gloo ranks sharing the one GPU, logging CUDA tensors (f32, bf16,
   f16, f64, int64; mean, weighted mean with CUDA weights, sum, min, max, last, a key only even
   ranks log), rows checked against a reference built from every rank's raw inputs; then flush
   latency vs one all_reduce + .item() per key, 128 keys.
4. ``per_call``: the cost of ``log_scalar`` for CUDA tensors (micro-benchmark), and a Lightning
   loop on the same card logging 32 keys a step with ``self.log`` vs through distlog.

It never imports wandb (the GPU box has none); it checks that at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, "src")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

perf = time.perf_counter
T_START = perf()
BUDGET_S = 210.0  # stop starting new sections after this (the box gives us ~4 minutes)
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64]


def say(msg: str) -> None:
    print(f"[gpu_check {perf() - T_START:6.1f}s] {msg}", flush=True)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def tmpdir() -> str:
    return tempfile.mkdtemp(prefix="distlog-gpu-")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SyncDebug:
    """``torch.cuda.set_sync_debug_mode("error")`` inside the block (a no-op on the dry run)."""

    def __init__(self, device: str) -> None:
        self.on = device == "cuda"

    def __enter__(self) -> SyncDebug:
        if self.on:
            torch.cuda.set_sync_debug_mode("error")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.on:
            torch.cuda.set_sync_debug_mode(0)


def attempt(fn: Any) -> str:
    """'ok', or 'raised: <message>' (a sync under "error" mode raises RuntimeError)."""
    try:
        fn()
        return "ok"
    except Exception as exc:
        return f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"


class HoldWriter:
    """Keep the logger's writer thread busy so it cannot resolve rows while sync-debug is on.

    The mode is process-wide; the writer thread's host copy is allowed to sync, the training
    thread is not. Uses the logger's private ``_submit`` (best effort: if it is gone, no hold).
    """

    def __init__(self, logger: Any) -> None:
        self.release = threading.Event()
        self.held = False
        submit = getattr(logger, "_submit", None)
        if submit is not None and getattr(logger, "_writer", None) is not None:
            started = threading.Event()

            def block() -> None:
                started.set()
                self.release.wait(60)

            submit(block)
            self.held = started.wait(10)

    def __enter__(self) -> HoldWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()


def value_of(v: float, dtype: torch.dtype) -> float:
    """The number a tensor of ``dtype`` made from ``v`` represents (what the reference uses)."""
    return float(torch.tensor(v).to(dtype).item())


# ================================================================== 1. sync debug, no group
def section_sync_debug(device: str) -> dict[str, Any]:
    import distlog

    logger = distlog.Logger(run_dir=tmpdir())
    vals = {
        str(dt): torch.full((), 2.5 if dt.is_floating_point else 3, dtype=dt, device=device)
        for dt in DTYPES
    }
    w = torch.full((), 4.0, device=device)
    logger.log_scalar("warm", vals[str(torch.float32)])
    logger.flush()
    logger.wait()
    out: dict[str, Any] = {"world": repr(logger.world)}

    def log_all() -> None:
        for name, v in vals.items():
            logger.log_scalar(f"mean/{name}", v)
            logger.log_scalar(f"max/{name}", v, reduce="max")
            logger.log_scalar(f"last/{name}", v, reduce="last")
        logger.log_scalar("weighted", vals[str(torch.float32)], weight=w)
        logger.log_scalar("spread", vals[str(torch.float32)], spread=True)

    log_all()  # new keys first, outside the mode
    logger.flush()
    logger.wait()
    with HoldWriter(logger) as hold, SyncDebug(device):
        out["log_scalar x17 (5 dtypes x mean/max/last, CUDA weight, spread)"] = attempt(log_all)
        out["flush (world of one, no process group)"] = attempt(logger.flush)
    out["writer held during the check"] = hold.held
    logger.wait()
    logger.finish()

    # system/forward_s: CUDA events on the current stream, read only once completed
    from distlog.system import ForwardTimer

    timer = ForwardTimer(torch.device(device))
    taken: list[float | None] = []
    x = torch.randn(2048, 2048, device=device)

    def timed_forwards() -> None:
        for _ in range(3):
            timer.begin()
            x @ x
            timer.end()
        taken.append(timer.take())  # what has completed so far, not waiting for the rest

    with SyncDebug(device):
        out["forward timer: begin/end x3 and take (no sync)"] = attempt(timed_forwards)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    taken.append(timer.take())
    out["forward timer: mean forward in the mode, then once completed (s)"] = taken
    assert any(t is not None and t > 0 for t in taken), taken
    return out


# ================================================================== 2. NCCL world of one
def section_nccl(device: str) -> dict[str, Any]:
    import distlog

    backend = "nccl" if device == "cuda" else "gloo"
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
    )
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(backend, rank=0, world_size=1)
    out: dict[str, Any] = {"backend": backend}
    try:
        run_dir = tmpdir()
        logger = distlog.Logger(run_dir=run_dir)
        out["world"] = repr(logger.world)
        out["comm_device"] = str(logger.world.comm_device)
        names = [f"k/{i:02d}" for i in range(10)]
        raw: dict[str, list[float]] = {k: [] for k in names}

        def samples(step: int) -> list[tuple[str, torch.Tensor]]:
            """Built before the check: making a CUDA tensor from a number is itself a sync."""
            out_ = []
            for i, k in enumerate(names):
                dt = DTYPES[i % len(DTYPES)]
                for s in range(2):
                    v = float((i + step + s) % 7) + (0.5 if dt.is_floating_point else 0.0)
                    raw[k].append(value_of(v, dt))
                    out_.append((k, torch.tensor(v, device=device).to(dt)))
            return out_

        def log_samples(items: list[tuple[str, torch.Tensor]]) -> None:
            for k, t in items:
                logger.log_scalar(k, t)

        log_samples(samples(0))  # first flush introduces the keys
        logger.flush(step=0)
        logger.wait()
        for k in names:
            raw[k].clear()
        items = samples(1)
        if device == "cuda":
            torch.cuda.synchronize()
        with HoldWriter(logger) as hold, SyncDebug(device):
            out["log_scalar under sync-debug error"] = attempt(lambda: log_samples(items))
            out["flush under sync-debug error (training thread)"] = attempt(
                lambda: logger.flush(step=1)
            )
        out["writer held during the check"] = hold.held
        logger.wait()
        rows = [
            json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
        ]
        row = next((r for r in rows if r.get("step") == 1 and "k/00" in r), None)
        want = {k: sum(v) / len(v) for k, v in raw.items()}
        out["values match the reference"] = row is not None and all(
            abs(row[k] - want[k]) <= 1e-6 * max(1.0, abs(want[k])) for k in names
        )
        if row is None:
            out["rows written"] = rows[-3:]

        # The same with async_flush=True: flush() swaps and hands the exchange to a thread;
        # neither the call nor the exchange thread may sync (the writer, held, may).
        arun = tmpdir()
        alogger = distlog.Logger(run_dir=arun, async_flush=True)

        def log_async(items_: Any) -> None:
            for k, t in items_:
                alogger.log_scalar(k, t)

        log_async(samples(0))
        alogger.flush(step=0)
        alogger.wait()
        for k in names:
            raw[k].clear()
        items = samples(1)
        if device == "cuda":
            torch.cuda.synchronize()
        with HoldWriter(alogger) as hold, SyncDebug(device):
            out["async: log_scalar under sync-debug error"] = attempt(lambda: log_async(items))
            out["async: flush and its exchange under sync-debug error"] = attempt(
                lambda: (alogger.flush(step=1), alogger.aggregator.wait_async())
            )
        alogger.wait()
        alogger.finish()
        arows = [
            json.loads(line) for line in (Path(arun) / "metrics.jsonl").read_text().splitlines()
        ]
        arow = next((r for r in arows if r.get("step") == 1 and "k/00" in r), None)
        want = {k: sum(v) / len(v) for k, v in raw.items()}
        out["async: values match the reference"] = arow is not None and all(
            abs(arow[k] - want[k]) <= 1e-6 * max(1.0, abs(want[k])) for k in names
        )

        # Flush latency vs keys: the training thread's time, and until the row is written.
        lat: dict[str, Any] = {}
        for n in (1, 32, 128, 1024):
            keys = [f"lat/{n}/{i:04d}" for i in range(n)]
            vs = [torch.tensor(float(i), device=device) for i in range(n)]
            t_flush, t_written = [], []
            for it in range(23):
                for k, v in zip(keys, vs, strict=True):
                    logger.log_scalar(k, v)
                t0 = perf()
                logger.flush()
                t1 = perf()
                logger.wait()
                t2 = perf()
                if it >= 3:
                    t_flush.append(t1 - t0)
                    t_written.append(t2 - t0)
            lat[str(n)] = {"flush_us": med(t_flush) * 1e6, "until_written_us": med(t_written) * 1e6}
        out["latency"] = lat
        logger.finish()
    finally:
        dist.destroy_process_group()
    return out


# ================================================================== 3. gloo ranks on one GPU
SCEN_KEYS = 12
SCEN_FLUSHES = 3


def scenario_sample(
    rank: int, flush: int, j: int, s: int
) -> tuple[str, str, float, torch.dtype, float | None]:
    """(key, reduce, value, dtype, weight) of sample s of key j; deterministic, exact in bf16."""
    reds = ["mean", "sum", "min", "max", "last", "mean"]
    red = reds[j % len(reds)]
    dt = DTYPES[j % len(DTYPES)]
    v = float((rank * 3 + j + flush * 5 + s) % 17)
    if dt.is_floating_point:
        v = v * 0.5 - 2.0
    weight = float(1 + rank) if j % len(reds) == 5 else None
    return f"{red}/{j:02d}", red, v, dt, weight


def gloo_rank(rank: int, world: int, port: int, device: str, results: Any) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    try:
        import distlog

        dist.init_process_group("gloo", rank=rank, world_size=world)
        if device == "cuda":
            torch.cuda.set_device(0)
        logger = distlog.Logger(run_dir=tmpdir())
        rows = []
        sync_ok = "ok"
        for f in range(SCEN_FLUSHES):
            items = []  # built first: making a CUDA tensor from a number is itself a sync
            for j in range(SCEN_KEYS):
                for s in range(2):
                    key, red, v, dt, w = scenario_sample(rank, f, j, s)
                    wt = None if w is None else torch.tensor(w, device=device)
                    items.append((key, torch.tensor(v, device=device).to(dt), red, wt))
            if rank % 2 == 0:
                items.append(("even_only", torch.tensor(float(rank), device=device), "mean", None))
            if device == "cuda":
                torch.cuda.synchronize()

            def log_items(items: list = items) -> None:
                for key, t, red, wt in items:
                    logger.log_scalar(key, t, red, weight=wt)

            if f == 2:  # keys known: the hot path must not sync
                with SyncDebug(device):
                    sync_ok = attempt(log_items)
            else:
                log_items()
            rows.append(logger.flush(step=f, block=True))
        # latency, 128 keys: distlog vs one all_reduce + .item() per key (CUDA tensors on gloo)
        n = 128
        keys = [f"lat/{i:03d}" for i in range(n)]
        vs = [torch.tensor(float(i + rank), device=device) for i in range(n)]
        t_d, t_p = [], []
        for it in range(13):
            for k, vt in zip(keys, vs, strict=True):
                logger.log_scalar(k, vt)
            dist.barrier()
            t0 = perf()
            logger.flush()
            t_d.append(perf() - t0)
            if it < 5:
                dist.barrier()
                t0 = perf()
                for vt in vs:
                    x = vt.clone()
                    dist.all_reduce(x)
                    x.item()
                t_p.append(perf() - t0)
        logger.finish()
        results.put(
            (
                rank,
                "ok",
                {
                    "rows": rows,
                    "log_scalar under sync-debug error": sync_ok,
                    "distlog_flush_us": med(t_d[3:]) * 1e6,
                    "perkey_us": med(t_p[1:]) * 1e6,
                },
            )
        )
    except Exception:
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def scenario_reference(world: int) -> list[dict[str, float]]:
    rows = []
    for f in range(SCEN_FLUSHES):
        row: dict[str, float] = {}
        for j in range(SCEN_KEYS):
            samples = []  # (rank, s, value, weight)
            red = ""
            key = ""
            for r in range(world):
                for s in range(2):
                    key, red, v, dt, w = scenario_sample(r, f, j, s)
                    samples.append((r, s, value_of(v, dt), 1.0 if w is None else w))
            vals = [x[2] for x in samples]
            if red == "mean":
                row[key] = sum(v * w for _, _, v, w in samples) / sum(w for *_, w in samples)
            elif red == "sum":
                row[key] = sum(vals)
            elif red == "min":
                row[key] = min(vals)
            elif red == "max":
                row[key] = max(vals)
            else:
                lasts = [v for r, s, v, _ in samples if s == 1]
                row[key] = sum(lasts) / len(lasts)
        evens = [float(r) for r in range(world) if r % 2 == 0]
        row["even_only"] = sum(evens) / len(evens)
        rows.append(row)
    return rows


def section_gloo(device: str, world: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=gloo_rank, args=(r, world, port, device, results)) for r in range(world)
    ]
    for p in procs:
        p.start()
    got: dict[int, Any] = {}
    deadline = time.monotonic() + 120
    try:
        while len(got) < world and time.monotonic() < deadline:
            try:
                rank, status, value = results.get(timeout=1.0)
            except Exception:
                if all(not p.is_alive() for p in procs):
                    break
                continue
            got[rank] = (status, value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    out: dict[str, Any] = {"ranks": world, "device": device}
    errors = {r: v for r, (s, v) in got.items() if s != "ok"}
    if errors or len(got) < world:
        out["error"] = {
            str(r): v[-1500:] for r, v in errors.items()
        } or f"only {sorted(got)} reported"
        return out
    rows = got[0][1]["rows"]
    ref = scenario_reference(world)
    mismatches = []
    for f, (row, want) in enumerate(zip(rows, ref, strict=True)):
        for k, w in want.items():
            have = row.get(k) if row else None
            if have is None or abs(have - w) > 1e-6 * max(1.0, abs(w)):
                mismatches.append(f"flush {f} {k}: got {have}, want {w}")
    out["values match the reference"] = not mismatches
    out["mismatches"] = mismatches[:10]
    out["log_scalar under sync-debug error, per rank"] = [
        got[r][1]["log_scalar under sync-debug error"] for r in range(world)
    ]
    d = max(got[r][1]["distlog_flush_us"] for r in range(world))
    p = max(got[r][1]["perkey_us"] for r in range(world))
    out["128 keys: distlog flush us (slowest rank)"] = d
    out["128 keys: all_reduce + .item() per key us (slowest rank)"] = p
    out["128 keys: speed-up"] = p / d
    return out


# ================================================================== 4. per-call cost
def section_per_call(device: str, steps: int) -> dict[str, Any]:
    import distlog

    out: dict[str, Any] = {}
    logger = distlog.Logger(run_dir=tmpdir())
    names = [f"train/metric_{i:02d}" for i in range(32)]
    micro: dict[str, Any] = {}
    for dt in (torch.float32, torch.bfloat16):
        v = torch.tensor(1.5, device=device).to(dt)
        per = []
        for r in range(8):
            t0 = perf()
            for _ in range(50):
                for k in names:
                    logger.log_scalar(k, v)
            dt_s = perf() - t0
            logger.flush()
            if r:
                per.append(dt_s / (50 * len(names)))
        micro[f"{device} tensor {dt}"] = med(per) * 1e6
    per = []
    for r in range(8):
        t0 = perf()
        for _ in range(200):
            for k in names:
                logger.log_scalar(k, 1.5)
        dt_s = perf() - t0
        logger.flush()
        if r:
            per.append(dt_s / (200 * len(names)))
    micro["Python float"] = med(per) * 1e6
    logger.finish()
    out["log_scalar us per call"] = micro
    try:
        out["lightning"] = lightning_loop(device, steps)
    except ImportError as exc:
        out["lightning"] = f"skipped: {exc}"
    return out


def lightning_loop(device: str, steps: int) -> dict[str, Any]:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    import distlog

    names = [f"train/metric_{i:02d}" for i in range(32)]
    warm = 5

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_train_batch_end(self, *args: Any) -> None:
            self.stamps.append(perf())

    class Module(L.LightningModule):
        def __init__(self, mode: str) -> None:
            super().__init__()
            self.mode = mode
            self.net = torch.nn.Sequential(
                torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 1)
            )
            self.dl: Any = None

        def on_fit_start(self) -> None:
            if self.mode == "distlog":
                self.dl = distlog.Logger(run_dir=tmpdir())

        def training_step(self, batch: Any, idx: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            stats = [loss.detach() * (i + 1) for i in range(len(names))]  # on the device
            if self.mode.startswith("self.log"):
                sync = self.mode.endswith("(sync_dist=True)")
                for k, v in zip(names, stats, strict=True):
                    self.log(k, v, on_step=True, on_epoch=False, sync_dist=sync, batch_size=64)
            elif self.mode == "distlog":
                for k, v in zip(names, stats, strict=True):
                    self.dl.log_scalar(k, v)
            return loss

        def on_train_batch_end(self, *args: Any) -> None:
            if self.dl is not None:
                self.dl.flush(step=self.global_step)

        def on_fit_end(self) -> None:
            if self.dl is not None:
                self.dl.finish()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    n = 64 * (steps + warm)
    data = TensorDataset(torch.randn(n, 256), torch.randn(n, 1))
    out: dict[str, Any] = {"lightning": L.__version__}
    from lightning.pytorch.loggers import CSVLogger

    modes = ("no logging", "self.log", "self.log(sync_dist=True)", "distlog")
    best: dict[str, list[float]] = {m: [] for m in modes}
    # A throw-away fit first (kernels, allocator, imports), then two rounds of every mode.
    for rnd, mode in [(-1, "no logging")] + [(r, m) for r in range(2) for m in modes]:
        clock = Clock()
        trainer = L.Trainer(
            accelerator="gpu" if device == "cuda" else "cpu",
            devices=1,
            max_steps=steps + warm,
            logger=CSVLogger(tmpdir()),
            log_every_n_steps=1,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[clock],
        )
        trainer.fit(Module(mode), DataLoader(data, batch_size=64))
        diffs = [
            b - a for a, b in zip(clock.stamps[warm:-1], clock.stamps[warm + 1 :], strict=True)
        ]
        if rnd >= 0:
            best[mode].append(med(diffs) * 1e3)
            say(f"  lightning round {rnd} {mode}: {best[mode][-1]:.2f} ms/step")
    for mode in modes:
        out[mode] = {"step_ms": min(best[mode]), "rounds_ms": best[mode]}
    base = out["no logging"]["step_ms"]
    for mode in ("self.log", "self.log(sync_dist=True)", "distlog"):
        out[mode]["added_us_per_key"] = (out[mode]["step_ms"] - base) * 1e3 / len(names)
    return out


# ================================================================== main
def main() -> None:
    ap = argparse.ArgumentParser(description="distlog GPU check (issue 6, item 4)")
    ap.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="run every section on CPU (gloo instead of NCCL, 2 ranks) to test it",
    )
    ap.add_argument("--ranks", type=int, default=8, help="gloo ranks sharing the GPU (max 8)")
    args = ap.parse_args()
    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-dry-run to test the script", flush=True)
        sys.exit(2)
    device = "cpu" if dry else "cuda"
    out_dir = Path(os.environ.get("OUT") or "gpu_out")
    out_dir.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "dry_run": dry,
        "device": torch.cuda.get_device_name() if not dry else "cpu (dry run)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    say(f"device {res['device']}, torch {res['torch']}")

    def save() -> None:
        (out_dir / "gpu.json").write_text(json.dumps(res, indent=1, default=str) + "\n")

    def section(name: str, fn: Any) -> None:
        if perf() - T_START > BUDGET_S:
            res[name] = {"skipped": "out of time"}
            say(f"{name}: skipped, out of time")
            return
        t0 = perf()
        say(f"{name} ...")
        try:
            res[name] = fn()
        except Exception:
            res[name] = {"error": traceback.format_exc()[-3000:]}
        res[name + "_seconds"] = round(perf() - t0, 1)
        say(f"{name}: {json.dumps(res[name], default=str)[:600]}")
        save()

    section("sync_debug", lambda: section_sync_debug(device))
    section("per_call", lambda: section_per_call(device, steps=20 if dry else 40))
    section("nccl_world_of_one", lambda: section_nccl(device))
    ranks = max(2, min(args.ranks, 8))
    section("gloo_shared_gpu", lambda: section_gloo(device, 2 if dry else ranks))
    res["wandb imported"] = "wandb" in sys.modules
    res["seconds"] = round(perf() - T_START, 1)
    save()

    print("\n==== distlog GPU check summary ====", flush=True)
    sd = res.get("sync_debug", {})
    nc = res.get("nccl_world_of_one", {})
    gl = res.get("gloo_shared_gpu", {})
    pc = res.get("per_call", {})
    for label, value in [
        ("device", res["device"]),
        (
            "no group: log_scalar under sync-debug error",
            next((v for k, v in sd.items() if k.startswith("log_scalar")), sd.get("error")),
        ),
        (
            "no group: flush under sync-debug error",
            sd.get("flush (world of one, no process group)"),
        ),
        (
            "NCCL world of one: log_scalar",
            nc.get("log_scalar under sync-debug error", nc.get("error")),
        ),
        (
            "NCCL world of one: flush (training thread)",
            nc.get("flush under sync-debug error (training thread)"),
        ),
        ("NCCL world of one: values match", nc.get("values match the reference")),
        ("NCCL world of one: flush latency us", nc.get("latency")),
        (
            f"gloo x{gl.get('ranks')} on one GPU: values match",
            gl.get("values match the reference", gl.get("error")),
        ),
        (
            "gloo: log_scalar under sync-debug",
            gl.get("log_scalar under sync-debug error, per rank"),
        ),
        ("gloo 128 keys speed-up vs per-key all_reduce", gl.get("128 keys: speed-up")),
        ("log_scalar us per call", pc.get("log_scalar us per call", pc.get("error"))),
        ("Lightning loop", pc.get("lightning")),
        ("wandb imported", res["wandb imported"]),
        ("seconds", res["seconds"]),
    ]:
        print(f"{label}: {json.dumps(value, default=str)[:800]}", flush=True)
    print(f"wrote {out_dir / 'gpu.json'}", flush=True)


if __name__ == "__main__":
    main()
