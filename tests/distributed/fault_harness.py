"""Start fault_job.py as real multi-rank jobs, kill them, and check what they left on disk.

Two ways to start a job: ``start_plain`` (one process per rank with torchrun's environment, so a
test decides alone which rank dies and how) and ``start_torchrun`` (a real torchrun agent that
tears the other workers down with SIGTERM, as in production). ``check_run_dir`` is the oracle:
every step rank 0 saw its flush return for is in ``metrics.jsonl`` with every key at the value
computed from every rank's inputs, steps strictly increase, and the file parses.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import fault_job
from dist_harness import default_signals, free_port, subprocess_env
from wandb_helpers import wandb_env

import distlog
from distlog import runlog

JOB = str(Path(fault_job.__file__).resolve())


@dataclass
class Job:
    run_dir: Path
    world: int
    log_every: int
    procs: list[subprocess.Popen[bytes]]
    agent: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)
    wandb_dir: str | None = None

    def all(self) -> list[subprocess.Popen[bytes]]:
        return [self.agent] if self.agent is not None else self.procs

    def pid_of_rank(self, rank: int, timeout: float = 60.0) -> int:
        path = self.run_dir / "pids" / f"rank{rank}"
        deadline = time.monotonic() + timeout
        while not path.exists() or not path.read_text().strip():
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {rank} never wrote its pid\n{self.output()}")
            time.sleep(0.05)
        return int(path.read_text())

    def progress(self) -> list[int]:
        path = self.run_dir / fault_job.PROGRESS_FILE
        if not path.exists():
            return []
        return [int(x) for x in path.read_text().split()]

    def wait_progress(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.progress()) < count:
            if any(p.poll() is not None for p in self.all()):
                raise AssertionError(f"the job ended before {count} flushes\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} flushes in {timeout}s\n{self.output()}")
            time.sleep(0.02)

    def wait(self, timeout: float) -> list[int]:
        """Exit codes of every process; a process still alive after ``timeout`` is a hang."""
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.all():
            try:
                codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                self.kill_all()
                raise AssertionError(
                    f"a process of the job still ran {timeout}s after the fault\n{self.output()}"
                ) from None
        return codes

    def kill_all(self) -> None:
        for p in self.procs + ([self.agent] if self.agent else []):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL) if self.agent is p else p.kill()
                except ProcessLookupError:
                    pass
            p.wait()
        if self.agent is not None:  # torchrun's workers, should any outlive the agent
            for pid_file in (self.run_dir / "pids").glob("rank*"):
                try:
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass

    def output(self) -> str:
        text = []
        for log in self.logs:
            if log.exists():
                text.append(f"--- {log.name}\n{log.read_text()[-3000:]}")
        return "\n".join(text)


def job_args(run_dir: Path, log_every: int, timeout: float, extra: list[str]) -> list[str]:
    return [
        "--run-dir",
        str(run_dir),
        "--log-every",
        str(log_every),
        "--timeout",
        str(timeout),
        *extra,
    ]


def with_wandb(run_dir: Path, extra: list[str] | None, env: dict[str, str] | None, wandb: bool):
    """Job arguments and environment for an offline wandb run next to ``run_dir``."""
    extra, env = list(extra or []), dict(env or {})
    if not wandb:
        return extra, env, None
    env.update(wandb_env(run_dir.parent / f"{run_dir.name}-wandb"))
    return [*extra, "--wandb-dir", env["WANDB_DIR"]], env, env["WANDB_DIR"]


def start_plain(
    run_dir: Path,
    world: int = 2,
    *,
    log_every: int = 1,
    timeout: float = 5.0,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    wandb: bool = False,
) -> Job:
    """One process per rank, with the environment torchrun would give it (no agent)."""
    extra, env, wandb_dir = with_wandb(run_dir, extra, env, wandb)
    port = free_port()
    run_dir.mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    for rank in range(world):
        rank_env = subprocess_env(
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world),
            GROUP_RANK="0",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            **(env or {}),
        )
        log = run_dir.parent / f"{run_dir.name}.rank{rank}.log"
        logs.append(log)
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, JOB, *job_args(run_dir, log_every, timeout, extra or [])],
                    env=rank_env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    preexec_fn=default_signals,  # the tests signal it: no inherited SIG_IGN
                )
            )
    return Job(run_dir, world, log_every, procs, logs=logs, wandb_dir=wandb_dir)


def start_torchrun(
    run_dir: Path,
    nproc: int = 2,
    *,
    log_every: int = 1,
    timeout: float = 5.0,
    extra: list[str] | None = None,
    torchrun_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    wandb: bool = False,
) -> Job:
    """A real torchrun agent in its own session (so a test can signal the whole group)."""
    extra, env, wandb_dir = with_wandb(run_dir, extra, env, wandb)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir.parent / f"{run_dir.name}.torchrun.log"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "--monitor-interval=0.1",
        *(torchrun_args or []),
        JOB,
        *job_args(run_dir, log_every, timeout, extra or []),
    ]
    with log.open("wb") as out:
        agent = subprocess.Popen(
            cmd,
            env=subprocess_env(**(env or {})),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=default_signals,  # the tests signal it: no inherited SIG_IGN
        )
    return Job(run_dir, nproc, log_every, [], agent=agent, logs=[log], wandb_dir=wandb_dir)


def _reject_constant(name: str) -> float:
    raise ValueError(f"bare {name} is not JSON")


@dataclass
class RunCheck:
    rows: list[dict]
    progress: list[int]
    info: dict | None
    torn_tail: bool


def check_run_dir(job: Job, *, allow_torn_tail: bool = False) -> RunCheck:
    """The oracle: nothing flushed is lost, every row is complete and right, the file parses."""
    run_dir = job.run_dir
    raw = (run_dir / runlog.METRICS_FILE).read_bytes()
    torn = bool(raw) and not raw.endswith(b"\n")
    assert allow_torn_tail or not torn, f"metrics.jsonl ends with a partial line: {raw[-200:]!r}"
    lines = raw.split(b"\n")
    for number, line in enumerate(lines[:-1], start=1):  # every complete line is strict JSON
        try:
            json.loads(line, parse_constant=_reject_constant)
        except ValueError as exc:
            raise AssertionError(
                f"metrics.jsonl line {number} is not strict JSON: {line!r}"
            ) from exc
    rows = distlog.read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), f"steps duplicated or going backwards: {steps}"
    for row in rows:
        want = fault_job.expected_row(row["step"], job.log_every, job.world)
        got = {k: v for k, v in row.items() if k not in ("step", "time")}
        assert sorted(got) == sorted(want), f"step {row['step']}: keys {sorted(got)}"
        for key, value in want.items():
            assert math.isclose(got[key], value, rel_tol=1e-6, abs_tol=1e-9), (
                f"step {row['step']} {key}: got {got[key]}, want {value}"
            )
    progress = job.progress()
    lost = sorted(set(progress) - set(steps))
    assert not lost, f"flushed steps missing from metrics.jsonl: {lost}"
    return RunCheck(rows, progress, runlog.read_run_info(run_dir), torn)


def check_wandb(job: Job, result: RunCheck) -> list:
    """The offline wandb run(s) of the job hold exactly the run log's rows, and its exit code.

    A restarted job continues the same wandb id in one folder per start (offline); together
    they must hold every step once. Each folder's exit record is that start's exit code.
    """
    from distlog import wandb_offline

    assert job.wandb_dir is not None and result.info is not None
    runs = wandb_offline.read_runs(job.wandb_dir, result.info["id"])
    assert runs, f"no offline wandb run with id {result.info['id']} under {job.wandb_dir}"
    by_step: dict[int, dict] = {}
    for run in runs:
        for step, values in run.rows_by_step().items():
            assert step not in by_step, f"step {step} written to wandb twice"
            by_step[step] = values
    for row in result.rows:
        want = {k: v for k, v in row.items() if k not in ("step", "time")}
        assert by_step.get(row["step"]) == want, (row["step"], by_step.get(row["step"]), want)
    assert sorted(by_step) == [r["step"] for r in result.rows]
    starts = result.info["starts"]
    assert [run.exit_code for run in runs] == [s.get("exit_code") for s in starts], (
        [run.exit_code for run in runs],
        starts,
    )
    return runs
