"""A sink that hangs (a tracker's dead service, a stuck network disk) holds up only itself.

Before each sink had a lane of its own, one hung sink stopped them all: ``metrics.jsonl`` got no
more rows, training blocked once the queue filled, and ``finish()`` never returned.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from dist_harness import default_signals, subprocess_env

import distlog


class StuckSink:
    """A user's sink whose backend stops answering after ``good`` rows, until ``release``."""

    def __init__(self, good: int = 0) -> None:
        self.good = good
        self.release = threading.Event()
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.closed_with: int | None = None

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        if len(self.rows) >= self.good:
            self.release.wait()
        self.rows.append((step, dict(values)))

    def log_media(self, step: int, key: str, item: Any) -> None:
        pass

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass

    def close(self, exit_code: int = 0) -> None:
        self.closed_with = exit_code


class SlowSink(StuckSink):
    """Answers every call, slowly."""

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        time.sleep(0.02)
        self.rows.append((step, dict(values)))


def _train(logger: distlog.Logger, steps: int) -> None:
    for step in range(steps):
        logger.log_scalar("loss", float(step))
        logger.flush(step)


def _in_thread(fn: Any, seconds: float) -> bool:
    """Run ``fn`` on a thread; True if it returned within ``seconds`` (a hang is a failure,
    not a stuck test)."""
    done = threading.Event()

    def run() -> None:
        fn()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(seconds)


def _run_job(template: str, **fields: Any) -> subprocess.CompletedProcess[str]:
    """Run a job script (``template`` filled with ``fields``) in a fresh process that can
    import this module's sinks; a real process, so real signals end it."""
    tests = Path(__file__).parent
    paths = [subprocess_env()["PYTHONPATH"], str(tests), str(tests / "distributed")]
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(template).format(**fields)],
        env=subprocess_env(PYTHONPATH=os.pathsep.join(paths)),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=default_signals,  # a test of Ctrl-C must not inherit an ignored SIGINT
    )


def test_a_hung_sink_neither_stops_the_others_nor_blocks_training(tmp_path: Path) -> None:
    stuck = StuckSink(good=3)
    logger = distlog.Logger(run_dir=tmp_path, sinks=[stuck], queue_size=4, sink_timeout=1.0)
    assert len(logger.sinks) == 2  # the run directory's JSONL sink beside it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _in_thread(lambda: _train(logger, 40), 60), "training blocked on the hung sink"
        assert _in_thread(logger.finish, 60), "finish() waited for ever on the hung sink"
    try:
        rows = distlog.read_metrics(tmp_path)
        assert [r["loss"] for r in rows] == [float(s) for s in range(40)]  # every row
        info = distlog.read_run_info(tmp_path)
        assert info is not None and info["exit_code"] == 0 and info["last_step"] == 39
        said = [str(w.message) for w in caught]
        hung = [m for m in said if "StuckSink.log_scalars" in m and "has not returned" in m]
        assert hung, said  # named: which sink, which call
        assert any("giving up on it" in m and "skipped while it hung" in m for m in hung), said
        assert [s for s, _ in stuck.rows] == [0, 1, 2]
        assert stuck.closed_with is None  # never reached: the sink is still stuck
    finally:
        stuck.release.set()


def test_a_sink_that_comes_back_gets_the_rows_queued_after_it_hung(tmp_path: Path) -> None:
    stuck = StuckSink(good=1)
    logger = distlog.Logger(run_dir=tmp_path, sinks=[stuck], queue_size=4, sink_timeout=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _in_thread(lambda: _train(logger, 20), 60)
        stuck.release.set()  # the service answers again
        deadline = time.monotonic() + 30
        while len(stuck.rows) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        for step in range(20, 25):
            logger.log_scalar("loss", float(step))
            logger.flush(step)
        assert _in_thread(logger.finish, 60)
    written = [s for s, _ in stuck.rows]
    assert written[0] == 0 and written == sorted(written) and written[-5:] == [20, 21, 22, 23, 24]
    assert len(written) < 25  # rows that came while it hung and its lane was full are skipped
    assert stuck.closed_with == 0
    assert [r["loss"] for r in distlog.read_metrics(tmp_path)] == [float(s) for s in range(25)]
    assert any("StuckSink.log_scalars" in str(w.message) for w in caught)


def test_a_slow_sink_holds_training_back_and_loses_nothing(tmp_path: Path) -> None:
    slow = SlowSink()
    logger = distlog.Logger(run_dir=tmp_path, sinks=[slow], queue_size=2, sink_timeout=30.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all: nothing is skipped
        _train(logger, 30)
        logger.finish()
    assert [s for s, _ in slow.rows] == list(range(30))
    assert [r["loss"] for r in distlog.read_metrics(tmp_path)] == [float(s) for s in range(30)]
    assert slow.closed_with == 0


def test_wait_returns_and_names_a_hung_sink(tmp_path: Path) -> None:
    stuck = StuckSink(good=0)
    logger = distlog.Logger(run_dir=tmp_path, sinks=[stuck], sink_timeout=0.5)
    try:
        logger.log_scalar("loss", 1.0)
        logger.flush(0)
        with pytest.warns(UserWarning, match=r"StuckSink\.log_scalars for \d+ s has not returned"):
            assert _in_thread(logger.wait, 30), "wait() waited for ever on the hung sink"
        assert [r["loss"] for r in distlog.read_metrics(tmp_path)] == [1.0]
    finally:
        stuck.release.set()
        logger.finish()


def test_sink_timeout_is_checked(tmp_path: Path) -> None:
    for bad in (0, -1.0, "60", float("nan"), True):
        with pytest.raises(distlog.LogValueError, match="sink_timeout"):
            distlog.Logger(run_dir=tmp_path / "x", sink_timeout=bad)  # type: ignore[arg-type]


# A real SIGTERM, in a real process: the handler writes every row to metrics.jsonl and records
# the exit code in run.json although a sink hangs (before, rows were lost and exit_code null).
JOB = """
import os, signal, threading
import distlog
from test_sink_lanes import StuckSink

logger = distlog.Logger(run_dir={run_dir!r}, sinks=[StuckSink(good=2)], sink_timeout=1.0)
for step in range(10):
    logger.log_scalar("loss", float(step))
    logger.flush(step)
print("trained", flush=True)
os.kill(os.getpid(), signal.SIGTERM)
threading.Event().wait(60)
"""


@pytest.mark.slow
def test_sigterm_with_a_hung_sink_still_writes_every_row_and_the_exit_code(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    proc = _run_job(JOB, run_dir=str(run_dir))
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    assert "trained" in proc.stdout
    assert [r["loss"] for r in distlog.read_metrics(run_dir)] == [float(s) for s in range(10)]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["exit_code"] == 128 + signal.SIGTERM and info["last_step"] == 9, info
    assert "StuckSink" in proc.stderr and "giving up on it" in proc.stderr, proc.stderr


# The hung sink does not count as hung yet (the default sink_timeout, 300 s) and its lane is full:
# training waits, but the JSONL sink has every row whose flush returned, and a SIGTERM then
# writes the exit code at once. Before, the writer itself waited for room behind the hung sink,
# and the rows queued behind it never reached metrics.jsonl.
JOB_NOT_YET_HUNG = """
import os, signal, threading
import distlog
from test_sink_lanes import StuckSink

logger = distlog.Logger(
    run_dir={run_dir!r}, sinks=[StuckSink(good=1)], queue_size=2, async_flush={async_flush}
)
threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
for step in range(1000):
    logger.log_scalar("loss", float(step))
    logger.flush(step)
    print("flushed", step, flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("async_flush", [False, True])
def test_rows_behind_a_sink_not_yet_counted_hung_still_reach_the_run_log(
    tmp_path: Path, async_flush: bool
) -> None:
    """With async_flush the exchange thread, handing a row over, waited for room behind the
    hung sink too: the signal handler spent its 20 s on that, then 20 s more on the sinks (past
    SLURM's 30 s), and a row whose flush had returned was lost."""
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    proc = _run_job(JOB_NOT_YET_HUNG, run_dir=str(run_dir), async_flush=async_flush)
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    assert time.monotonic() - t0 < 29  # the handler's 20 s in all, within SLURM's KillWait
    flushed = [int(line.split()[1]) for line in proc.stdout.splitlines()]
    assert 2 < len(flushed) < 1000  # training was held back by the full lane
    rows = distlog.read_metrics(run_dir)
    assert [r["loss"] for r in rows][: len(flushed)] == [float(s) for s in flushed]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["exit_code"] == 128 + signal.SIGTERM, info
    assert "StuckSink did not finish in time" in proc.stderr, proc.stderr
    assert "JsonlSink" not in proc.stderr, proc.stderr  # it finished: nothing to say about it


class HangingClose(StuckSink):
    """A tracker whose finish (an upload) takes for ever."""

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        self.rows.append((step, dict(values)))

    def close(self, exit_code: int = 0) -> None:
        self.release.wait()


JOB_SIGNAL_IN_FINISH = """
import os, signal, threading
import distlog
from test_sink_lanes import HangingClose

logger = distlog.Logger(run_dir={run_dir!r}, sinks=[HangingClose()])
for step in range(5):
    logger.log_scalar("loss", float(step))
    logger.flush(step)
threading.Timer(2.0, os.kill, (os.getpid(), signal.{signal})).start()
print("finishing", flush=True)
logger.finish()  # waits for the upload: up to sink_timeout (300 s)
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_while_finish_waits_for_a_sink_records_the_exit_code(
    tmp_path: Path, name: str
) -> None:
    """finish() had taken its signal handlers off before waiting for the sinks: SIGTERM killed
    the process and Ctrl-C escaped the wait, with run.json's exit code never written."""
    run_dir = tmp_path / "run"
    proc = _run_job(JOB_SIGNAL_IN_FINISH, run_dir=str(run_dir), signal=name)
    signum = getattr(signal, name)
    assert proc.returncode in (-signum, 1), proc.stderr  # SIGINT: KeyboardInterrupt, or the signal
    assert [r["loss"] for r in distlog.read_metrics(run_dir)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["exit_code"] == 128 + signum and info["last_step"] == 4, info


class SlowThenHung(StuckSink):
    """Answers slowly (its lane fills), then stops answering."""

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        time.sleep(0.05)
        super().log_scalars(step, values)


def _two_ranks_with_a_hung_sink_on_rank_0(rank: int, run_dir: str) -> str | None:
    sinks = [SlowThenHung(good=10)] if rank == 0 else []
    logger = distlog.Logger(
        run_dir=run_dir, sinks=sinks, timeout=6.0, sink_timeout=8.0, queue_size=4
    )
    try:
        for step in range(60):
            logger.log_scalar("loss", float(step + rank))
            logger.flush(step)
        logger.finish()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        for sink in sinks:
            sink.release.set()
    return None


@pytest.mark.slow
def test_a_hung_sink_on_rank_0_never_times_the_other_ranks_out(tmp_path: Path) -> None:
    """Rank 0 waited for room behind the hung sink until sink_timeout (8 s) while rank 1 waited
    for it in the next flush's collective for its timeout (6 s): RankDivergenceError. Rank 0
    now waits at most half the collective's timeout."""
    from dist_harness import run_ranks

    errors = run_ranks(_two_ranks_with_a_hung_sink_on_rank_0, 2, str(tmp_path), timeout=180)
    assert errors == [None, None]
    assert [r["loss"] for r in distlog.read_metrics(tmp_path)] == [s + 0.5 for s in range(60)]


def test_the_run_log_decides_last_step_not_a_sink_ahead_of_it(tmp_path: Path) -> None:
    """run.json's last_step was the largest step any sink wrote: with the run log on a stuck
    disk and another sink ahead of it, a resumed run skipped rows the run log never had."""
    from distlog.sinks.jsonl import JsonlSink

    release = threading.Event()

    class StuckDiskJsonl(JsonlSink):
        def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
            if step >= 5:
                release.wait()  # the disk stops answering
            super().log_scalars(step, values)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the hung run log, named
        logger = distlog.Logger(
            run_dir=tmp_path, sinks=[StuckDiskJsonl(tmp_path), SlowSink()], sink_timeout=0.5
        )
        _train(logger, 10)
        logger.finish()
        info = distlog.read_run_info(tmp_path)
        assert info is not None and info["last_step"] == 4  # what metrics.jsonl holds
        release.set()
        time.sleep(0.5)  # the disk comes back; the stuck call writes its row 5 and returns
        resumed = distlog.Logger(run_dir=tmp_path, resume=True)
        for step in range(5, 12):
            resumed.log_scalar("loss", float(step))
            resumed.flush(step)
        resumed.finish()
    steps = [r["step"] for r in distlog.read_metrics(tmp_path)]
    assert sorted(set(steps)) == list(range(12))  # nothing skipped for good


class BadMessage(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


class RaisesOddly(StuckSink):
    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        raise BadMessage


def test_a_sink_error_whose_message_fails_does_not_end_its_lane(tmp_path: Path) -> None:
    """Formatting the warning raised again, outside the lane's guard: the lane's thread ended
    and training waited for it for ever once its queue was full."""
    logger = distlog.Logger(run_dir=tmp_path, sinks=[RaisesOddly()], queue_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _in_thread(lambda: _train(logger, 30), 60), "training hung on the dead lane"
        assert _in_thread(logger.finish, 60)
    assert len(distlog.read_metrics(tmp_path)) == 30
    assert any("RaisesOddly.log_scalars failed: BadMessage" in str(w.message) for w in caught)


def test_wait_after_finish_says_nothing(tmp_path: Path) -> None:
    logger = distlog.Logger(run_dir=tmp_path)
    _train(logger, 2)
    logger.finish()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logger.wait()  # it warned that the run log's thread had ended
