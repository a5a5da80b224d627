"""distlog's own gloo groups on real process groups (distlog.groups).

Failure mode 1: a logger over a group whose members hold different numbers of process groups
(pipeline stage pairs) used to stall for the whole timeout and die with a raw DistStoreError.
Failure mode 3: a gathering media call on one rank while another flushes used to pair the two
protocols' collectives (gloo aborted the writer with SIGABRT, run.json kept exit_code null).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dist_harness import run_ranks

pytestmark = pytest.mark.slow


def _stage_pairs(rank: int, run_dir: str) -> Any:
    import torch.distributed as dist

    import distlog

    pair01 = dist.new_group([0, 1])  # every rank takes part in both ...
    dist.new_group([1, 2])  # ... so rank 1 now holds one group more than rank 0
    out = None
    if rank in (0, 1):
        values = {0: [1.0, 2.0], 1: [10.0, 20.0]}[rank]
        with distlog.Logger(run_dir=run_dir, group=pair01, timeout=60, handle_signals=False) as log:
            for step, v in enumerate(values):
                log.log_scalar("x", v, "sum")
                log.log_scalar("m", v)
                row = log.flush(step, block=True)
            out = (row, log.world.group_ranks)
        # a second logger over the same pair builds its groups again, by the same rule
        with distlog.Logger(sinks=[], group=pair01, timeout=60, handle_signals=False) as log:
            log.log_scalar("y", float(rank), "max")
            out = (*out, log.flush(0, block=True))
        if rank == 0:  # a member that never builds its logger: a named error, not a raw one
            try:
                distlog.Logger(sinks=[], group=pair01, timeout=3, handle_signals=False)
                out = (*out, "built")
            except distlog.RankDivergenceError as exc:
                out = (*out, str(exc))
    dist.barrier()
    return out


def test_a_logger_over_a_stage_pair_works(tmp_path: Path) -> None:
    start = time.monotonic()
    results = run_ranks(_stage_pairs, 4, str(tmp_path), timeout=150)
    assert time.monotonic() - start < 60  # it used to wait for the whole 60 s timeout, then fail
    (row0, ranks0, y0, alone), (row1, ranks1, y1) = results[0], results[1]
    assert "control group over global ranks [0, 1] did not complete within 3s" in alone
    assert ranks0 == ranks1 == (0, 1)
    # reference from every rank's raw inputs: step 1 sums 2.0 + 20.0, means (2 + 20) / 2
    assert row0 == {"x": 22.0, "m": 11.0} and row1 is None
    assert y0 == {"y": 1.0} and y1 is None
    import distlog

    rows = distlog.read_metrics(tmp_path)
    assert [(r["step"], r["x"]) for r in rows] == [(0, 11.0), (1, 22.0)]
    assert results[2] is None and results[3] is None


def _media_while_flushing(rank: int, run_dir: str) -> Any:
    import distlog
    from distlog import RankDivergenceError

    log = distlog.Logger(run_dir=run_dir, timeout=5, handle_signals=False)
    try:
        with log:
            log.log_scalar("x", float(rank + 1), "sum")
            log.flush(0)  # a row every rank agrees on, written before the mistake
            log.log_scalar("x", 1.0, "sum")
            if rank == 0:  # a gathering media call that rank 1 does not make ...
                log.log_images(np.zeros((1, 4, 4, 3), np.uint8), desc="img", ranks="all")
            else:  # ... while rank 1 flushes
                log.flush(1)
    except RankDivergenceError as exc:
        return ("RankDivergenceError", str(exc))
    return ("no error", None)


def test_media_and_scalar_collectives_never_pair(tmp_path: Path) -> None:
    results = run_ranks(_media_while_flushing, 2, str(tmp_path), timeout=150)
    (kind0, msg0), (kind1, msg1) = results
    assert kind0 == kind1 == "RankDivergenceError", results
    assert "'img'" in msg0 and "[0, 1]" in msg0  # names the media key and the ranks
    assert "log step 1" in msg1  # names the flush's step
    import distlog

    info = distlog.read_run_info(tmp_path)
    assert info is not None and info["exit_code"] == 1  # the writer closed its sinks
    assert [(r["step"], r["x"]) for r in distlog.read_metrics(tmp_path)] == [(0, 3.0)]


def _non_member(rank: int) -> str:
    import torch.distributed as dist

    import distlog
    from distlog import DistlogError

    # failure mode 6: a rank outside the group it passes
    only0 = dist.new_group([0])
    try:
        distlog.Logger(sinks=[], group=only0, handle_signals=False).finish()
        return "ok"
    except DistlogError as exc:
        return str(exc)


def _late_process_group(rank: int) -> str:
    import os

    import torch.distributed as dist

    import distlog
    from distlog import DistlogError

    # failure mode 5: a logger made as a world of one, and then the process group appears
    world_size = os.environ.pop("WORLD_SIZE")
    log = distlog.Logger(sinks=[], handle_signals=False)
    dist.init_process_group("gloo", rank=rank, world_size=int(world_size))
    log.log_scalar("x", 1.0)
    try:
        log.flush(0)
        out = "flushed"
    except DistlogError as exc:
        out = str(exc)
    log.finish(1)
    return out


def test_clear_errors_for_a_non_member_and_a_late_process_group() -> None:
    non_member = run_ranks(_non_member, 2, timeout=120)
    assert non_member[0] == "ok"  # rank 0 is the group: a world of one
    assert "rank 1 is not a member of the group" in non_member[1]
    # no group at the start (as in a script that makes its logger before init_process_group)
    late = run_ranks(_late_process_group, 2, timeout=120, init=False)
    for r in late:
        assert "created before torch.distributed was initialized" in r
        assert "now has 2 ranks" in r
