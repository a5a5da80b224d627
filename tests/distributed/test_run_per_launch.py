"""A run per launch across real gloo ranks: every rank's ``logger.run_dir`` names the directory
rank 0 writes (a new version when the given one is taken), and another tool's directory is
refused on every rank at construction, not left as a hang at the first flush. Under torchrun, a
restart of a new launch is a new run, never an append to an earlier launch's run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from dist_harness import run_ranks, subprocess_env

import distlog

pytestmark = pytest.mark.slow


def _launch(rank: int, run_dir: str, value: float) -> tuple[str, str | None]:
    logger = distlog.Logger(run_dir=run_dir, timeout=60)
    logger.log_scalar("x", value + rank)
    logger.flush(step=1)
    logger.finish()
    return str(logger.run_dir), logger.run_id


def _foreign(rank: int, run_dir: str) -> str:
    try:
        distlog.Logger(run_dir=run_dir, timeout=60)
    except distlog.RunDirError as exc:
        return str(exc)
    return "no error"


def test_two_launches_are_two_runs_and_every_rank_agrees(tmp_path):
    run_dir = tmp_path / "exp"
    first = run_ranks(_launch, 2, str(run_dir), 1.0)
    second = run_ranks(_launch, 2, str(run_dir), 10.0)
    assert {d for d, _ in first} == {str(run_dir)}
    assert {d for d, _ in second} == {str(tmp_path / "exp-2")}  # every rank, not only rank 0
    assert first[0][1] != second[0][1]
    assert distlog.read_metrics(run_dir)[0]["x"] == 1.5  # mean over both ranks
    rows = distlog.read_metrics(tmp_path / "exp-2")
    assert [r["step"] for r in rows] == [1] and rows[0]["x"] == 10.5


def test_another_tools_directory_is_refused_on_every_rank(tmp_path):
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "run.json").write_text('{"tool": "not distlog"}')
    errors = run_ranks(_foreign, 2, str(foreign), timeout=90)
    assert all("not a distlog run file" in e and str(foreign) in e for e in errors), errors
    assert not (Path(foreign) / "metrics.jsonl").exists()


def _resume_unwritable(rank: int, run_dir: str) -> tuple[str, float]:
    start = time.monotonic()
    try:
        logger = distlog.Logger(run_dir=run_dir, resume=True, timeout=60, handle_signals=False)
    except distlog.RunDirError as exc:
        return str(exc), time.monotonic() - start
    logger.log_scalar("x", 1.0)
    try:
        logger.flush(step=5)  # before: rank 1 got here and waited for rank 0 until the timeout
    except distlog.RankDivergenceError as exc:
        return f"no RunDirError; then {exc}", time.monotonic() - start
    return "no error", time.monotonic() - start


def test_a_run_directory_the_writer_cannot_open_is_an_error_on_every_rank(tmp_path):
    """Rank 0 claims the directory, then cannot open metrics.jsonl (here a link into a
    filesystem that is gone; a read-only file or a full disk alike): every rank raises at
    construction, naming it. Before, only rank 0 raised (an unwrapped FileNotFoundError) and
    rank 1 trained on, waiting for rank 0 at its first flush until the timeout."""
    run_dir = tmp_path / "exp"
    logger = distlog.Logger(run_dir=run_dir, async_write=False, handle_signals=False)
    logger.log_scalar("x", 1.0)
    logger.flush(step=1)
    logger.finish()
    metrics = run_dir / "metrics.jsonl"
    metrics.unlink()
    metrics.symlink_to(tmp_path / "unmounted" / "metrics.jsonl")
    results = run_ranks(_resume_unwritable, 2, str(run_dir), timeout=120)
    for message, took in results:
        assert "metrics.jsonl" in message and str(run_dir) in message, message
        assert not message.startswith("no "), message
        assert took < 50, took  # well inside the 60 s timeout: nobody waited for it
    info = distlog.read_run_info(run_dir)
    assert len(info["starts"]) == 1  # the failed launch recorded no start


LAUNCH_JOB = """
import os, sys
import torch.distributed as dist
import distlog
run_dir, steps, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo")
rank = dist.get_rank()
attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
if marker != "-" and rank == 1 and not os.path.exists(marker):
    open(marker, "w").close()
    os._exit(3)  # the first attempt dies before any logger exists
logger = distlog.Logger(run_dir=run_dir, timeout=30, handle_signals=False)
for step in range(steps):
    logger.log_scalar("x", float(step + 100 * attempt) + rank)
    logger.flush(step=step)
logger.finish()
dist.destroy_process_group()
"""


def _torchrun(tmp_path: Path, *args: str, restarts: int = 0) -> None:
    script = tmp_path / "launch_job.py"
    script.write_text(LAUNCH_JOB)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--monitor-interval=0.1",
        f"--max-restarts={restarts}",
        str(script),
        *args,
    ]
    env = {
        k: v for k, v in subprocess_env().items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))
    }
    # a fresh rendezvous store per attempt (pytorch#135712): see reliability.md
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_a_restart_of_a_new_launch_is_a_new_run_not_the_previous_launchs(tmp_path):
    """Launch B (torchrun --standalone, a fresh id) into the run_dir of finished launch A; B's
    first attempt dies before its logger, so B's restart has no run of its own yet: it must be
    a new run in exp-2, not steps appended to A's run."""
    run_dir = tmp_path / "exp"
    _torchrun(tmp_path, str(run_dir), "4", "-")
    _torchrun(tmp_path, str(run_dir), "3", str(tmp_path / "died"), restarts=1)
    assert (tmp_path / "died").exists()  # B's first attempt did fail
    assert [r["x"] for r in distlog.read_metrics(run_dir)] == [0.5, 1.5, 2.5, 3.5]
    first, second = distlog.read_run_info(run_dir), distlog.read_run_info(tmp_path / "exp-2")
    assert len(first["starts"]) == 1 and first["exit_code"] == 0
    assert [r["x"] for r in distlog.read_metrics(tmp_path / "exp-2")] == [100.5, 101.5, 102.5]
    assert [s["restart"] for s in second["starts"]] == [1] and second["id"] != first["id"]
    assert first["starts"][0]["launch"] != second["starts"][0]["launch"]
