"""The Hugging Face Trainer under torchrun (2 CPU ranks, gloo) with DistlogCallback: the
Trainer's logs land at their step, per-rank values equal a reference from every rank's raw
values, one collective per steady logging step."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from dist_harness import subprocess_env
from integration_helpers import expected_rows, load_raw, user_keys
from reference import assert_rows_close
from wandb_helpers import wandb_env

import distlog
from distlog.wandb_offline import find_run_dirs, read_run

pytest.importorskip("transformers")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf_trainer.py"


@pytest.mark.slow
def test_hf_trainer_under_torchrun_writes_trainer_logs_and_reduced_rank_values(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(EXAMPLE), "--run-dir", str(run_dir), "--raw", "--max-steps", "6", "--wandb",
        "--system-metrics", "--slow-rank", "1",
    ]  # fmt: skip
    env = subprocess_env(**wandb_env(tmp_path))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = distlog.read_metrics(run_dir)
    raws = load_raw(tmp_path)
    history = raws[0]["log_history"]
    # One row per Trainer log (train logs at 2, 4, 6; evaluations at 3 and 6; the summary).
    assert [r["step"] for r in rows] == [h["step"] for h in history] == [2, 3, 4, 6, 6, 6]
    for row, logged in zip(rows, history, strict=True):
        for key, value in logged.items():
            if key != "step" and isinstance(value, int | float):
                assert math.isclose(row[key], value, rel_tol=1e-9), (key, row[key], value)
    # The per-rank values of compute_loss, reduced over both ranks, as the reference says.
    want = expected_rows(raws, [r["step"] for r in rows])
    for row, ref in zip(rows, want, strict=True):
        mine = {k: v for k, v in row.items() if k.startswith("train/")}
        assert_rows_close(mine, ref)
    assert rows[0]["train/only_rank1"] == 0.0 and rows[0]["train/rank_id_max"] == 101.0
    # system metrics: rank 1's forward is 30 ms slower, which DDP's even step times hide
    for row in (r for r in rows if "system/forward_s" in r):
        assert row["system/forward_s/rank_argmax"] == 1.0
        assert row["system/forward_s/rank_max"] >= 0.03 > row["system/forward_s/rank_min"]
    assert all("system/forward_s" in rows[i] for i in (0, 2))  # the train logs at 2 and 4
    # The Trainer's own loss is averaged over the processes too: it matches distlog's mean.
    assert math.isclose(rows[0]["loss"], rows[0]["train/rank_loss"], rel_tol=1e-6)
    for raw in raws:
        train_flushes = [n for _, is_train, n in raw["collectives"] if is_train]
        assert len(train_flushes) == 3 and train_flushes[1:] == [1, 1], raw["collectives"]
    assert distlog.read_run_info(run_dir)["exit_code"] == 0
    assert '"logging_steps": 2' in (run_dir / "config.json").read_text()
    # The same rows in one offline wandb run made by rank 0, read back from its .wandb file.
    [wandb_dir] = find_run_dirs(tmp_path / "wandb")
    run = read_run(wandb_dir)
    assert run.exit_code == 0 and run.run_id == distlog.read_run_info(run_dir)["id"]
    local: dict[int, dict[str, float]] = {}
    for row in rows:
        local.setdefault(row["step"], {}).update(user_keys(row))
    got = run.rows_by_step()
    assert sorted(got) == sorted(local)
    for step, row in local.items():
        assert_rows_close(got[step], row)
