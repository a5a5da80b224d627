"""The README's main job: the demo under a real torchrun with 2 gloo ranks."""

from __future__ import annotations

import subprocess
import sys

import pytest
from dist_harness import subprocess_env

import distlog

pytestmark = pytest.mark.slow  # every test here starts several processes


def test_demo_under_torchrun_writes_one_aggregated_run_log(tmp_path):
    run_dir = tmp_path / "demo"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "distlog.demo",
        "--steps",
        "20",
        "--log-every",
        "5",
        "--batch-size",
        "16",
        "--run-dir",
        str(run_dir),
    ]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"results: {run_dir.resolve() / 'metrics.jsonl'}" in proc.stdout
    assert proc.stdout.count("step 5 |") == 1  # only rank 0 prints
    rows = distlog.read_metrics(run_dir)
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    for row in rows:
        assert row["train/samples"] == 2 * 16 * 5  # summed over both ranks and 5 steps
        assert 0.0 <= row["train/acc"] <= 1.0
        assert row["time/step_ms/rank_argmax"] in (0.0, 1.0)
        assert row["time/step_ms/rank_min"] <= row["time/step_ms/rank_max"] == row["time/step_ms"]
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]  # it learns
    assert not list(tmp_path.glob("**/wandb"))
    # the logits histogram of both ranks together: 2 ranks x 16 samples x 4 classes
    media = [r["media"] for r in distlog.runlog.iter_rows(run_dir) if "media" in r]
    hist = media[-1]["train/logits"]
    assert hist["type"] == "histogram" and sum(hist["counts"]) == 2 * 16 * 4
    assert len(hist["edges"]) == len(hist["counts"]) + 1


def test_demo_with_wandb_and_no_login_falls_back_to_an_offline_run(tmp_path):
    """A machine without a wandb login: one clear line, an offline run whose id is run.json's,
    no traceback and no wait for a login that cannot come."""
    import time

    from wandb_helpers import wandb_env

    from distlog.wandb_offline import find_run_dirs, read_run

    run_dir = tmp_path / "demo"
    env = subprocess_env(**wandb_env(tmp_path / "w"), HOME=str(tmp_path / "home"))
    for name in ("WANDB_MODE", "WANDB_API_KEY", "NETRC"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "distlog.demo", "--steps", "10", "--log-every", "5", "--batch-size", "16"]
    cmd += ["--run-dir", str(run_dir), "--wandb", "--quiet"]
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("no wandb login on this machine: writing an offline wandb run") == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert took < 120  # no 40 s login wait (generous for a busy machine)
    info = distlog.read_run_info(run_dir)
    [wandb_run] = [read_run(d) for d in find_run_dirs(run_dir)]
    assert wandb_run.run_id == info["id"] and wandb_run.exit_code == 0
    assert sorted(wandb_run.rows_by_step()) == [5, 10]
