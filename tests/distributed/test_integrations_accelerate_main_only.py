"""DistlogTracker with accelerator.log only (no tracker.logger), on a real 2-rank gloo group:
the main process writes each call as a row at its step, and no rank communicates for it."""

from __future__ import annotations

from pathlib import Path

import pytest
from dist_harness import run_ranks

import distlog

pytest.importorskip("accelerate")


def _main_only(rank: int, run_root: str) -> dict:
    from accelerate import Accelerator

    from distlog.integrations.accelerate import DistlogTracker

    tracker = DistlogTracker(run_dir=Path(run_root) / "run")
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers("main-only", config={"seed": 3})
    for step in (1, 2, 3):
        accelerator.log({"loss": 10.0 * step + rank, "note": "text is skipped"}, step=step)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # calls tracker.finish() on the main process
    return {"is_main": accelerator.is_main_process, "process_index": accelerator.process_index}


@pytest.mark.slow
def test_accelerator_log_alone_writes_the_main_process_rows_at_their_steps(tmp_path):
    results = run_ranks(_main_only, 2, str(tmp_path), timeout=120)
    assert [r["process_index"] for r in results] == [0, 1]
    rows = distlog.read_metrics(tmp_path / "run")
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 10.0), (2, 20.0), (3, 30.0)]
    assert all("note" not in r for r in rows)
    info = distlog.read_run_info(tmp_path / "run")
    assert info["exit_code"] == 0 and info["world_size"] == 2
    assert (tmp_path / "run" / "config.json").read_text().count('"seed": 3') == 1
