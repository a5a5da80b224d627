"""A logger that goes out of scope unfinished (made in a function that returned without
``finish()``) is finished at interpreter exit, not dropped with its rows.

distlog held open loggers weakly: when the function returned, the logger was collected at
once, and interpreter exit found nothing to finish. Every row it had queued for the writer
thread was lost (``metrics.jsonl`` empty after three flushes) and ``run.json`` never recorded
an end, in a script's ``main()`` and in the workers of ``torch.multiprocessing.spawn``, the
launcher of PyTorch's DDP tutorial.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dist_harness import free_port, subprocess_env

import distlog

pytestmark = pytest.mark.slow

ONE_PROCESS = r"""
import sys
import distlog

def main(run_dir):
    logger = distlog.Logger(run_dir=run_dir)
    for step in range(3):
        logger.log_scalar("loss", float(step))
        logger.flush(step)
    logger.log_scalar("loss", 9.0)  # a world of one writes its tail at exit too
    # no logger.finish()

main(sys.argv[1])
"""

SPAWNED = r"""
import os, sys
import torch.distributed as dist
import torch.multiprocessing as mp

def worker(rank, run_dir, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    import distlog
    logger = distlog.Logger(run_dir=run_dir)
    for step in range(3):
        logger.log_scalar("loss", float(step + rank))
        logger.flush(step)
    # no logger.finish(); the tutorial's cleanup() (a process that exits with a live gloo
    # group aborts in about a third of exits with torch 2.13, logger or not)
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2]), nprocs=2, join=True)
"""


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_logger_left_unfinished_in_main_writes_everything_at_exit(tmp_path: Path) -> None:
    done = _run(ONE_PROCESS, str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    assert [r["loss"] for r in distlog.read_metrics(tmp_path / "run")] == [0.0, 1.0, 2.0, 9.0]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["exit_code"] == 0 and info["last_step"] == 3


def test_spawned_workers_that_never_finish_keep_every_flushed_row(tmp_path: Path) -> None:
    script = tmp_path / "ddp_tutorial.py"  # spawn imports the workers' module: a real file
    script.write_text(SPAWNED)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), str(free_port())],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert [r["loss"] for r in distlog.read_metrics(tmp_path / "run")] == [0.5, 1.5, 2.5]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["exit_code"] == 0 and info["last_step"] == 2
