"""torchrun --max-restarts: the restarted job continues the same wandb run from the restored
step; the crash is recorded; the steps it replays (checkpoint older than the last row) are not
written again, to wandb or the local run log, with a warning: no step duplicated or going back
(issue 5)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dist_harness import subprocess_env
from wandb_helpers import run_torchrun, wandb_env

import distlog
from distlog import runlog

pytest.importorskip("wandb")
from distlog.wandb_offline import find_run_dirs, read_run  # noqa: E402

pytestmark = pytest.mark.slow


def test_torchrun_restart_continues_the_same_wandb_run(tmp_path):
    script = Path(__file__).with_name("restart_job.py")
    args = ["--root", str(tmp_path), "--max-steps", "10", "--crash-at", "7", "--ckpt-every", "4"]
    proc = run_torchrun(script, args, subprocess_env(**wandb_env(tmp_path)), max_restarts=1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "simulated crash at step 7" in proc.stderr

    dirs = find_run_dirs(tmp_path / "wandb_dir")
    first, second = (read_run(d) for d in dirs)  # one folder per start, in start order
    assert first.run_id == second.run_id  # the same run, continued
    assert first.exit_code == 1 and second.exit_code == 0
    assert sorted(first.values("train/loss")) == [2, 4, 6]  # flushed before the crash
    # restored from the checkpoint at step 4, it replays 5..6: step 6 is not written again
    assert sorted(second.values("train/loss")) == [8, 10]
    assert "step 6 is at or below step 6" in proc.stderr
    info = runlog.read_run_info(tmp_path / "local")
    assert info is not None and info["starts"][1]["resumed_after_step"] == 6
    # the wandb run is the local run's id, from run.json alone
    assert first.run_id == info["id"] and "wandb_id" not in info
    assert not (tmp_path / "local" / "wandb-run.json").exists()
    # the local run log appends across the restart, each step once
    assert [r["step"] for r in distlog.read_metrics(tmp_path / "local")] == [2, 4, 6, 8, 10]
