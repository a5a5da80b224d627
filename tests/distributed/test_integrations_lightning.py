"""Lightning under its own DDP launcher (2 CPU ranks, gloo): plain self.log calls, reduced
across ranks by DistlogCallback, equal a reference built from every rank's raw values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from dist_harness import subprocess_env
from integration_helpers import expected_rows, load_raw, user_keys
from reference import assert_rows_close

import distlog

pytest.importorskip("lightning")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_ddp.py"


@pytest.mark.slow
def test_lightning_ddp_rows_equal_the_reference_with_one_collective_per_step(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, str(EXAMPLE), "--run-dir", str(run_dir), "--raw", "--log-every", "3",
        "--system-metrics", "--slow-rank", "1",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, env=subprocess_env(), capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = distlog.read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    # 5 optimizer steps an epoch, 2 epochs: flushes at every 3rd step and after each validation;
    # teardown's finish has nothing left to write, so it samples no system metrics either.
    assert steps == [3, 5, 6, 9, 10]
    raws = load_raw(tmp_path)
    want = expected_rows(raws, steps)
    for row, ref in zip(rows, want, strict=True):
        mine = {k: v for k, v in user_keys(row).items() if not k.startswith("system/")}
        assert_rows_close(mine, ref)
        # DistlogCallback(system_metrics=True): every rank's figures with their spread.
        assert row["system/rss_mib/rank_argmax"] in (0.0, 1.0)
    for row in rows:  # every row's step advanced
        assert 0 < row["system/step_time_s/rank_min"] <= row["system/step_time_s/rank_max"]
        # rank 1's training_step is 30 ms slower; DDP evens the step times, not this
        assert row["system/forward_s/rank_argmax"] == 1.0
        assert row["system/forward_s/rank_max"] >= 0.03 > row["system/forward_s/rank_min"]
    assert "train/only_rank1" in rows[0] and "val/loss" in rows[1] and "val/loss" not in rows[2]
    # The values differ by rank, so a rank-0-only logger would have written something else.
    assert rows[0]["train/rank_low"] == 0.0 and rows[0]["train/rank_scaled"] == 6.0
    # Every steady train flush is one collective on every rank (the first agrees on the keys).
    for raw in raws:
        assert raw["collectives"][1:] and set(raw["collectives"][1:]) == {1}, raw["collectives"]
    # Lightning still got the progress-bar key and the monitored key (EarlyStopping), nothing else.
    assert raws[0]["lightning"] == ["train/loss", "val/loss"]
    info = distlog.read_run_info(run_dir)
    assert info["exit_code"] == 0 and info["world_size"] == 2
    # DistlogLightningLogger: Lightning's own logger path into a distlog run directory.
    pl_dir = tmp_path / "run-pl"
    assert distlog.read_metrics(pl_dir) and (pl_dir / "config.json").exists()
    assert '"lr": 0.05' in (pl_dir / "config.json").read_text()
