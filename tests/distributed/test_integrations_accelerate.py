"""An Accelerate loop under ``accelerate launch`` (2 CPU ranks, gloo) with DistlogTracker:
``accelerator.log`` values from the main process and every rank's values through
``tracker.logger`` land in the same rows, equal to a reference from every rank's raw values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dist_harness import subprocess_env
from integration_helpers import expected_rows, load_raw
from reference import assert_rows_close

import distlog

pytest.importorskip("accelerate")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "accelerate_loop.py"


@pytest.mark.slow
def test_accelerate_launch_rows_equal_the_reference_with_one_collective_per_step(tmp_path):
    run_dir = tmp_path / "run"
    # accelerate's multi-process launcher (torch.distributed.run underneath); the script asks
    # for Accelerator(cpu=True), so the group is gloo on the host.
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(EXAMPLE), "--run-dir", str(run_dir), "--raw", "--steps", "12", "--log-every", "4", "--also-main-only",
    ]  # fmt: skip
    env = subprocess_env(HF_HUB_OFFLINE="1", ACCELERATE_CONFIG_FILE=str(tmp_path / "none.yaml"))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = distlog.read_metrics(run_dir)
    assert [r["step"] for r in rows] == [4, 8, 12]
    raws = load_raw(tmp_path)
    want = expected_rows(raws, [4, 8, 12])
    for row, ref in zip(rows, want, strict=True):
        assert_rows_close({k: v for k, v in row.items() if k.startswith("train/")}, ref)
        assert row["main/rank"] == 0.0  # accelerator.log: the main process's values
    assert rows[0]["train/only_rank1"] == 2.5  # steps 1..4 of rank 1 only
    assert rows[0]["train/worst_rank_value"] == 14.0  # rank 1's step 4
    for raw in raws:
        assert raw["collectives"][1:] == [1, 1], raw["collectives"]
    assert json.loads((run_dir / "config.json").read_text()) == {"lr": 0.05, "steps": 12}
    assert distlog.read_run_info(run_dir)["exit_code"] == 0
    # A tracker used through accelerator.log only: the main process's rows at their steps,
    # written without any collective (a world of one on the main process).
    main_only = tmp_path / "run-main-only"
    got = [(r["step"], r["main/rank"], r["main/loss"]) for r in distlog.read_metrics(main_only)]
    assert got == [(r["step"], 0.0, r["main/loss"]) for r in rows]
    assert all(not k.startswith("train/") for r in distlog.read_metrics(main_only) for k in r)
    assert json.loads((main_only / "config.json").read_text()) == {"lr": 0.05, "steps": 12}
    info = distlog.read_run_info(main_only)
    assert info["exit_code"] == 0 and info["world_size"] == 2
