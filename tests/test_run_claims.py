"""Which run directory a launch claims, and what a restart continues (runlog's run-per-launch rule).

A restart continues only the run its own launch started (matched by the id of the launcher that
restarted it), never another launch's; two launches choosing a directory at the same instant get
two; ``run.json`` updates from two processes never lose one another's; ``last_step`` is the
largest step written; hand-edited or foreign ``run.json`` files give clean errors.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

import distlog
from distlog import runlog

LAUNCHER_VARS = (
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "SLURM_JOB_ID",
    "SLURM_RESTART_COUNT",
)


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the launcher variables it plays; none leak in from the host."""
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)


def launch(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """Play a launcher: set exactly these of its variables."""
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def write_run(run_dir: Path, steps: range, value: float = 0.0) -> distlog.Logger:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "new run in X-2", "resuming run ..."
        logger = distlog.Logger(run_dir=run_dir, async_write=False, handle_signals=False)
        for step in steps:
            logger.log_scalar("x", value + step)
            logger.flush(step=step)
        logger.finish()
    return logger


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(extra)
    return env


# ------------------------------------------------------------------ what a restart continues


def test_a_restart_of_a_new_launch_never_continues_another_launchs_run(tmp_path, monkeypatch):
    """Launch B's first attempt died before its logger: its restart matches no run and is a new
    run, not an append to launch A's finished run."""
    run = tmp_path / "X"
    launch(monkeypatch, TORCHELASTIC_RUN_ID="uuid-a")
    first = write_run(run, range(4))
    launch(monkeypatch, TORCHELASTIC_RUN_ID="uuid-b", TORCHELASTIC_RESTART_COUNT="1")
    second = write_run(run, range(3), value=100.0)
    assert second.run_dir == tmp_path / "X-2" and second.run_id != first.run_id
    assert [r["x"] for r in distlog.read_metrics(run)] == [0.0, 1.0, 2.0, 3.0]
    assert [r["x"] for r in distlog.read_metrics(tmp_path / "X-2")] == [100.0, 101.0, 102.0]
    assert len(distlog.read_run_info(run)["starts"]) == 1


def test_choose_version_restart_of_an_unknown_launch_is_a_new_version(tmp_path, monkeypatch):
    parent = tmp_path / "exp"
    launch(monkeypatch, TORCHELASTIC_RUN_ID="uuid-a")
    old = runlog.choose_version(parent, restart=0, resume_from=None)
    write_run(old, range(2))
    launch(monkeypatch, TORCHELASTIC_RUN_ID="uuid-b", TORCHELASTIC_RESTART_COUNT="1")
    new = runlog.choose_version(parent, restart=1, resume_from=None)
    assert new != old and not runlog.holds_run(new)
    # an explicit "latest" still means the run started last, whoever started it
    assert runlog.choose_version(parent, restart=1, resume_from="latest") == old


def test_a_restart_without_any_launcher_id_continues_the_latest_run(tmp_path, monkeypatch):
    """Documented fallback: with no id to match (torchrun without --standalone/--rdzv-id sets
    TORCHELASTIC_RUN_ID=none), the run started last is continued."""
    run = tmp_path / "X"
    write_run(run, range(2))
    write_run(run, range(2), value=10.0)  # X-2, started last
    launch(monkeypatch, TORCHELASTIC_RUN_ID="none", TORCHELASTIC_RESTART_COUNT="1")
    again = write_run(run, range(2, 4), value=10.0)
    assert again.run_dir == tmp_path / "X-2"
    assert [r["step"] for r in distlog.read_metrics(tmp_path / "X-2")] == [0, 1, 2, 3]


def test_every_launcher_id_is_recorded_and_a_requeue_matches_the_slurm_job(tmp_path, monkeypatch):
    run = tmp_path / "SX"
    launch(monkeypatch, SLURM_JOB_ID="100", TORCHELASTIC_RUN_ID="uuid-a1")
    write_run(run, range(3))
    launch(monkeypatch, SLURM_JOB_ID="200", TORCHELASTIC_RUN_ID="uuid-b1")
    write_run(run, range(3), value=200.0)
    start = distlog.read_run_info(run)["starts"][0]
    assert start["launches"] == {"TORCHELASTIC_RUN_ID": "uuid-a1", "SLURM_JOB_ID": "100"}
    assert start["launch"] == "uuid-a1"  # the one id older versions wrote, still there
    # job 100 requeued: torchrun --standalone made a fresh rendezvous id
    launch(
        monkeypatch,
        SLURM_JOB_ID="100",
        SLURM_RESTART_COUNT="1",
        TORCHELASTIC_RESTART_COUNT="0",
        TORCHELASTIC_RUN_ID="uuid-a2",
    )
    assert runlog.launch_id() == "100"
    requeued = write_run(run, range(2, 5))
    assert requeued.run_dir == run
    assert [r["step"] for r in distlog.read_metrics(run)] == [0, 1, 2, 3, 4]
    assert [r["x"] for r in distlog.read_metrics(tmp_path / "SX-2")] == [200.0, 201.0, 202.0]


def test_a_start_in_the_old_format_is_still_matched(tmp_path, monkeypatch):
    """run.json written before every id was recorded: one ``launch`` string per start."""
    run = tmp_path / "X"
    launch(monkeypatch, TORCHELASTIC_RUN_ID="uuid-a")
    write_run(run, range(2))
    info = json.loads((run / runlog.RUN_FILE).read_text())
    for start in info["starts"]:
        del start["launches"]
    (run / runlog.RUN_FILE).write_text(json.dumps(info))
    launch(monkeypatch, TORCHELASTIC_RUN_ID="uuid-a", TORCHELASTIC_RESTART_COUNT="1")
    assert runlog.claim_run_dir(run, resume="auto", restart=1) == (run, True)
    launch(monkeypatch, TORCHELASTIC_RUN_ID="uuid-z", TORCHELASTIC_RESTART_COUNT="1")
    assert runlog.claim_run_dir(run, resume="auto", restart=1) == (tmp_path / "X-2", False)


# ------------------------------------------------------------------ claims


RACER = textwrap.dedent(
    """
    import json, sys, time, warnings
    import distlog
    warnings.simplefilter("ignore")
    base, go, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    out = []
    for i in range(n):
        while time.time() < go + 0.2 * i:
            pass
        log = distlog.Logger(run_dir=f"{base}/r{i}", async_write=False, handle_signals=False)
        log.log_scalar("x", 1.0)
        log.flush(step=0)
        log.finish()
        out.append(str(log.run_dir))
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_two_launches_at_the_same_instant_get_two_directories(tmp_path):
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    n = 15
    go = time.time() + 6.0  # both interpreters are up (torch imported) by then
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "runs"), str(go), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    first, second = (json.loads(out) for out, _ in outs)
    shared = [a for a, b in zip(first, second, strict=True) if a == b]
    assert not shared, f"both launches wrote into {shared}"
    for i in range(n):  # each directory holds one run: one start, one row
        for run in (tmp_path / "runs").glob(f"r{i}*"):
            assert len(distlog.read_run_info(run)["starts"]) == 1
            assert len(distlog.read_metrics(run)) == 1
            assert not (run / runlog.CLAIM_FILE).exists()


UPDATER = textwrap.dedent(
    """
    import sys
    from distlog import runlog
    run, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for j in range(n):
        runlog.ensure_run_info(run, **{f"{tag}{j}": j})
        runlog.start_run(run, world_size=1)
        runlog.end_run(run, exit_code=0, last_step=j)
    """
)


@pytest.mark.slow
def test_run_json_updates_from_two_processes_are_never_lost(tmp_path):
    script = tmp_path / "updater.py"
    script.write_text(UPDATER)
    run = tmp_path / "run"
    runlog.ensure_run_info(run)
    n = 150
    procs = [
        subprocess.Popen([sys.executable, str(script), str(run), tag, str(n)], env=child_env())
        for tag in ("a", "b")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    info = distlog.read_run_info(run)
    assert info is not None
    assert {f"{t}{j}" for t in "ab" for j in range(n)} <= set(info)
    assert len(info["starts"]) == 2 * n
    assert not list(run.glob(".run.json.*"))  # no temporary file left behind


def test_a_claim_of_another_live_launch_is_respected(tmp_path):
    run = tmp_path / "X"
    run.mkdir()
    other = {"pid": os.getppid(), "host": socket.gethostname(), "token": "someone"}
    (run / runlog.CLAIM_FILE).write_text(json.dumps(other))
    assert runlog.claim_run_dir(run, resume="auto", restart=0) == (tmp_path / "X-2", False)
    elsewhere = {"pid": 1, "host": "another-node", "token": "someone"}
    (run / runlog.CLAIM_FILE).write_text(json.dumps(elsewhere))
    assert runlog.claim_run_dir(run, resume="auto", restart=0) == (tmp_path / "X-3", False)


def test_a_claim_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "X"
    run.mkdir()
    (run / runlog.CLAIM_FILE).write_text(
        json.dumps({"pid": dead.pid, "host": socket.gethostname(), "token": "gone"})
    )
    logger = write_run(run, range(2))
    assert logger.run_dir == run
    assert sorted(p.name for p in run.iterdir()) == [runlog.METRICS_FILE, runlog.RUN_FILE]


def test_a_claim_is_kept_by_its_own_process_until_the_start(tmp_path):
    """The mixins plan a directory (claiming it) before the logger claims it again."""
    path, resuming = runlog.claim_run_dir(tmp_path / "X", resume="auto", restart=0)
    assert (path, resuming) == (tmp_path / "X", False) and (path / runlog.CLAIM_FILE).exists()
    assert runlog.claim_run_dir(path, resume="auto", restart=0) == (path, False)
    version = runlog.new_version_dir(tmp_path / "exp")
    assert version.is_dir() and not runlog.holds_run(version)
    assert runlog.new_version_dir(tmp_path / "exp") != version  # the same second: another
    assert write_run(version, range(1)).run_dir == version


# ------------------------------------------------------------------ last step


def test_run_json_last_step_counts_a_media_only_last_row(tmp_path):
    logger = distlog.Logger(run_dir=tmp_path / "run", async_write=False, handle_signals=False)
    for step in range(5):
        logger.log_scalar("x", float(step))
        logger.flush(step=step)
    logger.log_images(torch.rand(1, 3, 8, 8), desc="samples")
    logger.flush(step=5)  # media only
    logger.finish()
    assert distlog.read_run_info(tmp_path / "run")["last_step"] == 5
    assert runlog.last_step(tmp_path / "run") == 5


def test_last_step_is_the_largest_step_not_the_last_rows(tmp_path):
    rows = [{"step": s, "x": 1.0} for s in range(10)]
    rows.append({"step": 3, "media": {"img": "media/img/3.png"}})  # queued media, old step
    (tmp_path / runlog.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert runlog.last_step(tmp_path) == 9
    with pytest.warns(UserWarning, match="steps up to 9 are already written"):
        logger = distlog.Logger(run_dir=tmp_path, resume=True, async_write=False)
    logger.log_scalar("x", 2.0)
    with pytest.warns(UserWarning, match="step 9 is at or below step 9"):
        logger.flush(step=9)  # already written: not again
    logger.log_scalar("x", 2.0)
    logger.flush(step=10)
    logger.finish()
    steps = [r["step"] for r in distlog.read_metrics(tmp_path)]
    assert steps == list(range(11))


# ------------------------------------------------------------------ bad run.json


def test_a_non_utf8_run_json_is_a_clean_error(tmp_path, capsys):
    from distlog.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / runlog.RUN_FILE).write_bytes(b'{"id": "ab\xff\xfe"}')
    assert distlog.read_run_info(run) is None
    with pytest.raises(distlog.RunDirError, match="not a distlog run file.*not UTF-8"):
        distlog.Logger(run_dir=run)
    (run / runlog.METRICS_FILE).write_text('{"step": 0, "time": 1.0, "x": 1.0}\n')
    assert main(["show", str(run)]) == 0
    assert main(["show", str(tmp_path)]) == 0
    capsys.readouterr()


def test_a_hand_edited_created_string_does_not_crash(tmp_path, monkeypatch, capsys):
    from distlog.cli import main

    run = tmp_path / "X"
    run.mkdir()
    (run / runlog.RUN_FILE).write_text(json.dumps({"id": "abcd1234", "created": "yesterday"}))
    (run / runlog.METRICS_FILE).write_text('{"step": 0, "time": 1.0, "x": 1.0}\n')
    assert runlog.find_runs(tmp_path) == [run]
    assert main(["show", str(tmp_path)]) == 0
    assert "abcd1234" in capsys.readouterr().out
    launch(monkeypatch, TORCHELASTIC_RESTART_COUNT="1")  # ordering runs by their start
    assert runlog.claim_run_dir(run, resume="auto", restart=1) == (run, True)
    assert runlog.choose_version(tmp_path, restart=1, resume_from="latest") == run


def test_a_run_directory_lock_held_elsewhere_is_a_named_error_not_an_endless_wait(
    tmp_path, monkeypatch
):
    """Another process holding the run directory's lock (stopped while updating run.json, or
    a hung network filesystem) made Logger(resume=True) wait for as long as it held it."""
    fcntl = pytest.importorskip("fcntl")
    run_dir = tmp_path / "exp"
    distlog.Logger(run_dir=run_dir, async_write=False).finish()
    holder = os.open(run_dir, os.O_RDONLY)  # its own open file: its flock conflicts with ours
    fcntl.flock(holder, fcntl.LOCK_EX)
    monkeypatch.setattr(runlog, "LOCK_WAIT_S", 0.5)
    try:
        start = time.monotonic()
        with pytest.raises(distlog.RunDirError, match="another process has held its lock"):
            distlog.Logger(run_dir=run_dir, resume=True, async_write=False)
        assert time.monotonic() - start < 10
    finally:
        os.close(holder)
    # once it is released, the run continues as before
    logger = distlog.Logger(run_dir=run_dir, resume=True, async_write=False)
    logger.finish()
    assert distlog.read_run_info(run_dir)["exit_code"] == 0


def test_a_run_json_written_while_it_is_checked_is_not_another_tools(tmp_path, monkeypatch):
    """Two launches at the same instant: one read no run.json, the other recorded its start
    before the first checked that the file exists, and the first refused the directory as
    another tool's ('is not a distlog run file'); found by the two-launch race test on a busy
    host. Here the other launch's start lands between the read and the check, every time."""
    run = tmp_path / "r"
    run.mkdir()
    read = runlog.read_run_info
    raced: list[bool] = []

    def read_then_the_other_launch_starts(path):
        got = read(path)
        if not raced:
            raced.append(True)
            runlog.start_run(path, world_size=1)
        return got

    monkeypatch.setattr(runlog, "read_run_info", read_then_the_other_launch_starts)
    assert runlog.holds_run(run) is True
    assert raced == [True]


def test_run_dir_dot_gets_its_next_version_beside_it_not_inside(tmp_path, monkeypatch):
    """``run_dir="."``: the second launch is ``../<name>-2`` (the documented rule), not a
    directory named ``-2`` inside the first run."""
    work = tmp_path / "exp"
    work.mkdir()
    monkeypatch.chdir(work)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "holds a run from an earlier launch"
        first = distlog.Logger(run_dir=".")
        first.log_scalar("a", 1.0)
        first.finish()
        second = distlog.Logger(run_dir=".")
        second.finish()
    assert first.run_dir == work
    assert second.run_dir == tmp_path / "exp-2"
    assert not (work / "-2").exists()
    assert [r["a"] for r in distlog.read_metrics(work)] == [1.0]


def test_a_run_dir_under_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fresh directory: no "earlier launch" warning
        logger = distlog.Logger(run_dir="~/runs/a")
    logger.finish()
    assert logger.run_dir == tmp_path / "home" / "runs" / "a"
    assert (tmp_path / "home" / "runs" / "a" / runlog.RUN_FILE).is_file()
    assert not (tmp_path / "~").exists()


def test_a_run_dir_of_an_unknown_user_is_a_run_dir_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(distlog.RunDirError, match=r"run_dir ~nosuchuser_distlog/x: cannot expand"):
        distlog.Logger(run_dir="~nosuchuser_distlog/x")
