"""Smoke test of scripts/bench.py --quick: it runs to the end and writes a report that parses.

No timing is asserted: the figures depend on the machine. What must hold is that the benchmark
still runs against the current code, every section produced figures instead of an error, and
the markdown, the JSON and the PNG it regenerates are well-formed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_benchmark_writes_a_parsable_report(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    res = json.loads((tmp_path / "benchmarks.json").read_text())
    assert res["quick"] is True
    for section in ("hot_path", "memory"):
        assert "error" not in res[section], res[section]["error"]
    for section in ("flush", "count_collectives", "step_overhead", "breakdown"):
        for world, per_rank in res[section].items():  # a list by rank, or {"error": ...}
            assert isinstance(per_rank, list), (section, world, str(per_rank)[:3000])
    # Every world ran its sweep, and distlog's rows matched the reference on rank 0.
    for world, per_rank in res["flush"].items():
        assert isinstance(per_rank, list), (world, per_rank)
        assert len(per_rank) == int(world)
        for n, row in per_rank[0].items():
            if n != "idle_layout":
                assert row["correct"] is True, (world, n)
                assert row["distlog_flush_s"] > 0 and row["perkey_s"] > 0
    # The profiler saw the per-key pattern issue one all_reduce per key: the count is real.
    scen = res["count_collectives"]["2"][0]
    perkey = next(v for k, v in scen.items() if k.startswith("one all_reduce"))
    assert perkey["trace"] == {"c10d::allreduce_": 32}
    steady = next(v for k, v in scen.items() if k.startswith("steady flush") and "mean keys" in k)
    assert sum(steady["trace"].values()) == steady["counter"]

    md = (tmp_path / "benchmarks.md").read_text()
    for heading in (
        "## Machine",
        "## Targets (issues 6 and 11)",
        "## At the floor",
        "## Flush latency",
        "## Collectives",
    ):
        assert heading in md
    assert "| launches (r0) |" in md
    # The floor job ran on every rank, and the loader thread's samples all reached a row.
    for world, per_rank in res["floor"].items():
        assert isinstance(per_rank, list) and len(per_rank) == int(world), (world, per_rank)
        for n, row in per_rank[0].items():
            assert row["distlog"] > 0 and row["all_gather"] > 0 and row["all_reduce"] > 0, n
            assert row["all_to_all"] > 0 and row["packed"] > 0, n
            # Each key count ran in two launches, merged into their median.
            assert len(row["launches"]) == 2, (world, n, row)
            assert min(p["all_gather"] for p in row["launches"]) <= row["paired"]["all_gather"]
            assert row["paired"]["all_gather"] <= max(p["all_gather"] for p in row["launches"])
    # The async every-step variants ran in two launches of their own; the median one is kept.
    assert len(res["async_step_launches"]) == 2
    assert isinstance(res["async_step"]["2"], list) and len(res["async_step"]["2"]) == 2
    # The flush-every-10-steps target ran on its own, each rank pinned to a core of its own.
    sparse = res["sparse_step"]["2"]
    assert isinstance(sparse, list) and len(sparse) == 2, str(sparse)[:3000]
    assert set(sparse[0]["per_round_s"]) == {
        "bare step",
        "distlog async_flush, tensors, flush every 10 steps",
    }
    if hasattr(os, "sched_getaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        assert [r["core"] for r in sparse] == [cores[0], cores[1 % len(cores)]]
    assert "paired rounds of the bare step and this alone" in md
    for label, got in res["threads"]["2"][0].items():
        assert got["written"] == got["logged"], (label, got)
    assert "![flush latency against keys](benchmarks.png)" in md
    png = (tmp_path / "benchmarks.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(tmp_path / "benchmarks.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200
