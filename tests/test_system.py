"""System metrics: sane per-rank values, their spread across real gloo ranks, no extra collective."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_harness import run_ranks

import distlog
from distlog.system import SystemMetrics, mfu

BASE = ["step_time_s", "rss_mib", "cpu_pct", "data_wait_s", "samples_per_s", "tokens_per_s"]
SPREAD = ["rank_min", "rank_max", "rank_std", "rank_argmax"]


def test_mfu_is_achieved_over_peak_and_rejects_bad_input():
    assert mfu(6e12, 0.5, 24e12) == pytest.approx(0.5)
    with pytest.raises(distlog.LogValueError, match="step_time_s"):
        mfu(1e12, 0.0, 1e12)
    with pytest.raises(distlog.LogTypeError, match="peak_flops"):
        mfu(1e12, 1.0, "fast")  # type: ignore[arg-type]


def test_one_process_logs_every_key_with_spread(tmp_path):
    logger = distlog.Logger(run_dir=tmp_path, system_metrics=True, async_write=False)
    assert isinstance(logger.system, SystemMetrics)
    rows = []
    for step in range(2):
        for _ in logger.system.timed([1, 2]):
            logger.system.count(samples=8, tokens=128)
        with logger.system.data_wait():
            time.sleep(0.02)
        rows.append(logger.flush(step=step, block=True))
    logger.finish()
    row = rows[-1]
    for key in BASE:
        assert f"system/{key}" in row, key
        for col in SPREAD:
            assert f"system/{key}/{col}" in row
    assert row["system/data_wait_s"] >= 0.02
    assert row["system/step_time_s"] >= row["system/data_wait_s"]
    assert 50 < row["system/rss_mib"] < 1e6
    assert row["system/tokens_per_s"] == pytest.approx(16 * row["system/samples_per_s"])
    written = distlog.read_metrics(tmp_path)
    # finish() has nothing else to write, so it samples nothing: no row of system metrics
    # alone (a resumed run would take its step as written and skip the real one).
    assert [r["step"] for r in written] == [0, 1]
    assert "system/cuda_allocated_mib" not in row  # CPU run: no CUDA keys


def test_bad_counts_raise_naming_the_argument(tmp_path):
    logger = distlog.Logger(run_dir=tmp_path, system_metrics=True, async_write=False)
    with pytest.raises(distlog.LogTypeError, match="tokens"):
        logger.system.count(tokens="12")  # type: ignore[arg-type]
    with pytest.raises(distlog.LogValueError, match="samples"):
        logger.system.count(samples=-1)
    logger.finish()
    assert distlog.Logger(run_dir=tmp_path / "off").system is None


def _job(rank: int, run_root: str) -> tuple[dict, dict]:
    """The same loop without and then with system metrics, on one gloo group."""
    return _loop(rank, run_root, False), _loop(rank, run_root, True)


def _loop(rank: int, run_root: str, system: bool) -> dict:
    logger = distlog.Logger(
        run_dir=Path(run_root) / ("on" if system else "off"),
        system_metrics=system,
        async_write=False,
    )
    hog = None
    if rank == 1:
        hog = np.ones(300 * 1024 * 1024 // 8)  # 300 MiB, every page touched
    rows, counts, last = [], [], []
    for step in range(4):
        logger.log_scalar("train/loss", float(rank + step))
        if system:
            logger.system.count(samples=4 * (rank + 1), tokens=100 * (rank + 1))
            with logger.system.data_wait():
                time.sleep(0.01 * (rank + 1))
        rows.append(logger.flush(step=step, block=True))
        counts.append(logger.collectives_last_flush)
        if system:
            last.append(dict(logger.system.last))
    logger.finish()
    del hog
    return {"rows": rows, "counts": counts, "last": last}


@pytest.mark.slow
def test_two_ranks_name_the_memory_hog_and_add_no_collective(tmp_path):
    off, on = zip(*run_ranks(_job, 2, str(tmp_path), timeout=120), strict=True)
    # Steady flushes cost the same with and without system metrics: the values ride the one
    # fused exchange. (The first agrees on the new keys; with system metrics the second too:
    # step_time_s and data_wait_s are first logged there, once a start step is known.)
    assert [r["counts"][2:] for r in on] == [r["counts"][2:] for r in off]
    assert all(c == 1 for r in on for c in r["counts"][2:])
    row = on[0]["rows"][-1]
    per_rank = [on[r]["last"][-1] for r in range(2)]
    for key in BASE:
        assert f"system/{key}" in row, key
        for col in SPREAD:
            assert f"system/{key}/{col}" in row, (key, col)
        vals = [p[key] for p in per_rank]
        assert row[f"system/{key}/rank_min"] == pytest.approx(min(vals))
        assert row[f"system/{key}/rank_max"] == pytest.approx(max(vals))
        assert row[f"system/{key}/rank_argmax"] == float(int(np.argmax(vals)))
        assert row[f"system/{key}/rank_std"] == pytest.approx(float(np.std(vals)))
    assert row["system/rss_mib/rank_argmax"] == 1.0
    assert per_rank[1]["rss_mib"] - per_rank[0]["rss_mib"] > 250
    # Throughput of the job is the sum of the ranks' rates; everything else the mean.
    assert row["system/samples_per_s"] == pytest.approx(sum(p["samples_per_s"] for p in per_rank))
    assert row["system/rss_mib"] == pytest.approx(np.mean([p["rss_mib"] for p in per_rank]))
    assert row["system/data_wait_s/rank_argmax"] == 1.0  # rank 1 sleeps twice as long
    assert all(math.isfinite(v) for v in row.values())
    written = distlog.read_metrics(tmp_path / "on")
    assert written[-1]["system/rss_mib/rank_argmax"] == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_memory_keys_come_from_the_allocator_without_a_sync(tmp_path):
    world = distlog.World(device=torch.device("cuda", 0))
    logger = distlog.Logger(run_dir=tmp_path, world=world, system_metrics=True, async_write=False)
    buf = torch.empty(64 * 1024 * 1024, dtype=torch.uint8, device="cuda")  # 64 MiB
    row = logger.flush(step=0, block=True)  # a CUDA world of one returns no row unless asked
    logger.finish()
    assert row is not None
    assert row["system/cuda_allocated_mib"] >= 64
    assert row["system/cuda_max_allocated_mib"] >= row["system/cuda_allocated_mib"]
    assert row["system/cuda_reserved_mib"] >= row["system/cuda_allocated_mib"]
    assert "system/cuda_max_allocated_mib/rank_argmax" in row
    del buf


def _straggler(rank: int, run_dir: str) -> None:
    logger = distlog.Logger(run_dir=run_dir, system_metrics=True, async_write=False)
    for step in range(6):
        time.sleep(0.02 + 0.05 * rank)  # rank 1 is the straggler
        logger.flush(step=step)
    logger.finish()


@pytest.mark.slow
def test_the_step_time_names_the_straggler(tmp_path):
    """A step time leaves out the previous flush, where the fast rank waits for the slow one.
    Counted, it gave both ranks the slow one's time: rank_argmax named rank 1 in 45-48% of
    flushes."""
    run_ranks(_straggler, 2, str(tmp_path), timeout=120)
    rows = distlog.read_metrics(tmp_path)
    assert len(rows) == 6
    assert [r["system/step_time_s/rank_argmax"] for r in rows[1:]] == [1.0] * 5
    for r in rows[1:]:
        assert r["system/step_time_s/rank_min"] < 0.06 < r["system/step_time_s/rank_max"]


def test_the_first_row_has_a_step_time_only_from_a_known_start(tmp_path):
    """The first flush's step count was taken from the previous step -1: a loop counting
    finished steps (flush at 2 after 2 steps) got 3, a job restored at step 6 that flushed at
    8 got 9 (0.05 s written for a 0.2 s step), and the time included the setup."""
    logger = distlog.Logger(run_dir=tmp_path / "a", system_metrics=True, async_write=False)
    time.sleep(0.02)
    first = logger.flush(step=2, block=True)
    time.sleep(0.02)
    second = logger.flush(step=4, block=True)
    logger.finish()
    assert first is not None and "system/step_time_s" not in first
    assert "system/rss_mib" in first
    assert second is not None and 0.01 <= second["system/step_time_s"] < 0.02
    # with start(), the first row counts from the step and time it was given
    logger = distlog.Logger(run_dir=tmp_path / "b", system_metrics=True, async_write=False)
    time.sleep(0.05)  # setup: not counted
    logger.system.start(6)
    time.sleep(0.04)
    row = logger.flush(step=8, block=True)
    logger.finish()
    assert row is not None and 0.02 <= row["system/step_time_s"] < 0.045
    with pytest.raises(distlog.LogValueError, match="start"):
        logger.system.start(-1)


def test_a_resumed_run_counts_from_the_step_start_was_given(tmp_path):
    """Resumed at step 1000, the first flush divided the time since the logger was built by
    1001 steps (0.2 ms against a 20 ms step)."""
    first = distlog.Logger(run_dir=tmp_path, async_write=False)
    first.log_scalar("x", 1.0)
    first.flush(step=1000)
    first.finish()
    logger = distlog.Logger(run_dir=tmp_path, system_metrics=True, async_write=False, resume=True)
    assert logger.resumed_after == 1000
    logger.system.start(1000)
    time.sleep(0.02)
    row = logger.flush(step=1001, block=True)
    logger.finish()
    assert row is not None and row["system/step_time_s"] >= 0.02


def test_a_bad_step_takes_nothing_from_the_next_step_time(tmp_path):
    logger = distlog.Logger(run_dir=tmp_path, system_metrics=True, async_write=False)
    logger.flush(step=0)
    time.sleep(0.02)
    with pytest.raises(distlog.LogValueError, match="step"):
        logger.flush(step=-5)
    row = logger.flush(step=1, block=True)
    logger.finish()
    assert row is not None and row["system/step_time_s"] >= 0.02


# ----------------------------------------------------------------------------- forward_s
class _SlowOnRank(torch.nn.Module):
    """A layer whose forward takes ``delay`` seconds longer on one rank: a slow GPU."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 1)
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        return self.linear(x)


def _ddp_job(rank: int, run_dir: str) -> list[dict]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    model = DDP(_SlowOnRank(0.05 if rank == 1 else 0.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    logger = distlog.Logger(run_dir=run_dir, system_metrics=True, async_write=False)
    assert logger.system is not None
    hooks = logger.system.time_forward(model)
    logger.system.start(0)
    x = torch.randn(4, 8)
    for step in range(1, 7):
        loss = model(x).square().mean()
        loss.backward()  # DDP's all-reduce: rank 0 waits here for rank 1
        opt.step()
        opt.zero_grad()
        logger.log_scalar("loss", loss.detach())
        if step % 2 == 0:
            logger.flush(step)
    model.eval()
    with torch.no_grad():
        model(x)  # eval forwards are not counted
    logger.log_scalar("loss", 0.0)
    logger.flush(7)
    hooks.remove()
    logger.finish()
    return [logger.system.last]


@pytest.mark.slow
def test_forward_time_names_the_slow_rank_that_ddp_step_times_hide(tmp_path):
    """Under DDP every rank's step time is the slowest rank's (the gradient all-reduce waits
    for it), so step_time_s/rank_argmax names a rank at random; forward_s names rank 1."""
    lasts = run_ranks(_ddp_job, 2, str(tmp_path), timeout=180)
    rows = [r for r in distlog.read_metrics(tmp_path) if "system/forward_s" in r]
    assert [r["step"] for r in rows] == [2, 4, 6]  # step 7 ran only eval forwards
    for row in rows:
        assert row["system/forward_s/rank_argmax"] == 1.0
        assert row["system/forward_s/rank_max"] >= 0.05 > row["system/forward_s/rank_min"]
        # the step times are within a few ms of each other: DDP evened them out
        spread = row["system/step_time_s/rank_max"] - row["system/step_time_s/rank_min"]
        assert spread < 0.5 * (row["system/forward_s/rank_max"] - row["system/forward_s/rank_min"])
    assert all("forward_s" not in last for [last] in lasts)  # nothing completed after step 6


def test_forward_timer_counts_training_forwards_and_stops_when_removed(tmp_path):
    logger = distlog.Logger(run_dir=tmp_path, system_metrics=True, async_write=False)
    assert logger.system is not None
    model = _SlowOnRank(0.01)
    hooks = logger.system.time_forward(model)
    for _ in range(3):
        model(torch.zeros(1, 8))
    model.eval()
    model(torch.zeros(1, 8))  # not counted, and not timed as 0 either
    row = logger.flush(0, block=True)
    assert row is not None and 0.01 <= row["system/forward_s"] < 1.0
    model.train()
    hooks.remove()
    model(torch.zeros(1, 8))
    row = logger.flush(1, block=True)
    assert row is not None and "system/forward_s" not in row
    with pytest.raises(distlog.LogTypeError, match="time_forward"):
        logger.system.time_forward("model")  # type: ignore[arg-type]
    logger.finish()


class _Recursive(torch.nn.Module):
    """Calls itself ``depth`` times, each call 10 ms: one forward of 40 ms."""

    def forward(self, x: torch.Tensor, depth: int = 4) -> torch.Tensor:
        time.sleep(0.01)
        return self(x, depth - 1) if depth > 1 else x


class _HasModuleAttribute(torch.nn.Module):
    """A user's model with an attribute named ``module`` (not a data-parallel wrapper)."""

    def __init__(self) -> None:
        super().__init__()
        self.module = torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.03)  # the real work is here, outside self.module
        return self.module(x)


def test_forward_spans_nest_and_only_the_outermost_counts():
    from distlog.system import ForwardTimer

    timer = ForwardTimer(None)
    model = _Recursive()
    hooks = timer.hook(model)
    model(torch.zeros(1))
    mean = timer.take()
    assert mean is not None and 0.04 <= mean < 0.5  # one span: the whole call, not the last
    hooks.remove()
    user = _HasModuleAttribute()
    hooks = timer.hook(user)  # the model itself, not its .module
    user(torch.zeros(1))
    mean = timer.take()
    assert mean is not None and mean >= 0.03
    hooks.remove()


def test_forward_spans_of_two_threads_are_two_spans():
    """nn.DataParallel runs a replica's forward per thread: each is a forward of its own."""
    import threading

    from distlog.system import ForwardTimer

    timer = ForwardTimer(None)
    model = _SlowOnRank(0.05)
    hooks = timer.hook(torch.nn.DataParallel(model))  # unwrapped: the module inside
    threads = [threading.Thread(target=model, args=(torch.zeros(1, 8),)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mean = timer.take()
    assert mean is not None and 0.05 <= mean < 0.5
    hooks.remove()


def test_a_forward_that_raises_leaves_no_span_open():
    from distlog.system import ForwardTimer

    class Fails(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("bad batch")

    timer = ForwardTimer(None)
    bad, good = Fails(), _SlowOnRank(0.02)
    hooks = [timer.hook(bad), timer.hook(good)]
    with pytest.raises(ValueError):
        bad(torch.zeros(1))
    timer.take()
    good(torch.zeros(1, 8))  # not nested inside the failed one
    mean = timer.take()
    assert mean is not None and mean >= 0.02
    for h in hooks:
        h.remove()
