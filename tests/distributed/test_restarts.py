"""Elastic restarts under ``torchrun --max-restarts``: logging resumes in the same run.

A worker fails; torchrun stops the others (SIGTERM) and restarts all of them; they load the last
checkpoint, which is older than the last logged step, and replay a few steps. The run directory
must read as one run: ``metrics.jsonl`` appended, every step exactly once and in order, values
right, ``run.json`` one id with one start per attempt and the final exit code; the offline wandb
run continues under the same id (a folder per start), every step once. A SLURM requeue continues
its own job's run, found by ``SLURM_JOB_ID`` when torchrun's id changed.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from dist_harness import subprocess_env
from fault_harness import check_run_dir, check_wandb, start_torchrun

import distlog

pytestmark = pytest.mark.slow  # every test here starts several processes

STEPS = 24
FAIL_AT = 13  # rank 1 fails at the start of this step, on the first attempt only
CKPT_EVERY = 5  # checkpoints at steps 4, 9, ...: the restart replays steps 10..12


def test_a_restarted_job_resumes_the_run_without_duplicating_steps(tmp_path):
    run_dir = tmp_path / "run"
    job = start_torchrun(
        run_dir,
        extra=[
            "--steps",
            str(STEPS),
            "--ckpt",
            str(tmp_path / "ckpt.json"),
            "--ckpt-every",
            str(CKPT_EVERY),
            "--fail-at",
            str(FAIL_AT),
            "--fail-rank",
            "1",
            "--fail-how",
            "raise",
        ],
        torchrun_args=["--max-restarts=2"],
        # torch's shared rendezvous store keeps the previous attempt's gloo/NCCL addresses, so a
        # restarted group fails to connect (pytorch/pytorch#135712, #167288); the documented
        # opt-out gives each attempt a fresh store. Unrelated to distlog: see reliability.md.
        env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"},
        wandb=True,
    )
    try:
        codes = job.wait(240)
    finally:
        job.kill_all()
    assert codes == [0], job.output()
    result = check_run_dir(job)
    assert [r["step"] for r in result.rows] == list(range(STEPS))
    # rank 0 recorded each replayed step twice in progress.txt: the replays were not written
    assert result.progress.count(FAIL_AT - 1) == 2 and result.progress.count(9) == 1
    info = result.info
    assert info is not None and info["exit_code"] == 0 and info["last_step"] == STEPS - 1
    starts = info["starts"]
    assert [s["restart"] for s in starts] == [0, 1]
    assert starts[1]["resumed_after_step"] == FAIL_AT - 1
    # the first attempt's writer was stopped by torchrun (SIGTERM) or saw rank 1 die
    assert starts[0]["exit_code"] in (143, 1) and starts[1]["exit_code"] == 0
    assert "resuming run " + info["id"] in job.output()
    assert "are already written and will not be written again" in job.output()
    # wandb: the same run id continued in a second offline folder, every step once
    runs = check_wandb(job, result)
    assert len(runs) == 2 and {run.run_id for run in runs} == {info["id"]}


REQUEUED_JOB = """
import os, sys, warnings
import distlog
warnings.simplefilter("ignore")
run_dir, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
logger = distlog.Logger(run_dir=run_dir, async_write=False, handle_signals=False)
for step in range(first, last):
    logger.log_scalar("job", float(os.environ["SLURM_JOB_ID"]))
    logger.flush(step=step)
logger.finish()
print(logger.run_dir)
"""


def test_a_slurm_requeue_continues_its_own_job_run_whatever_torchrun_id(tmp_path):
    """SLURM jobs 100 and 200 share a run_dir (200 gets run-2); job 100 is requeued and its
    ``torchrun --standalone`` makes a fresh TORCHELASTIC_RUN_ID: the requeue must continue
    job 100's run (matched by SLURM_JOB_ID), not job 200's, which started last."""
    script = tmp_path / "job.py"
    script.write_text(REQUEUED_JOB)
    run_dir = tmp_path / "run"

    def job(first: int, last: int, **launcher: str) -> str:
        env = {
            k: v
            for k, v in subprocess_env().items()
            if not k.startswith(("SLURM_", "TORCHELASTIC_"))
        }
        env.update(launcher)
        done = subprocess.run(
            [sys.executable, str(script), str(run_dir), str(first), str(last)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip()

    assert job(0, 5, SLURM_JOB_ID="100", TORCHELASTIC_RUN_ID="uuid-a1") == str(run_dir)
    second = job(0, 8, SLURM_JOB_ID="200", TORCHELASTIC_RUN_ID="uuid-b1")
    assert second == str(tmp_path / "run-2")
    requeued = job(
        3,  # restored from a checkpoint at step 3: steps 3 and 4 are not written again
        10,
        SLURM_JOB_ID="100",
        SLURM_RESTART_COUNT="1",
        TORCHELASTIC_RESTART_COUNT="0",
        TORCHELASTIC_RUN_ID="uuid-a2",
    )
    assert requeued == str(run_dir)
    rows = distlog.read_metrics(run_dir)
    assert [(r["step"], r["job"]) for r in rows] == [(s, 100.0) for s in range(10)]
    assert {r["job"] for r in distlog.read_metrics(tmp_path / "run-2")} == {200.0}
    starts = distlog.read_run_info(run_dir)["starts"]
    assert [s["launches"]["SLURM_JOB_ID"] for s in starts] == ["100", "100"]
    assert [s["resumed_after_step"] for s in starts] == [None, 4]
