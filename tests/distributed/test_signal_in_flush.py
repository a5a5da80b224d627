"""SIGTERM while rank 0 waits inside the flush collective keeps that row (issue 13, mode 4).

Rank 1 enters the flush late, so rank 0 sits in the collective when SIGTERM arrives; Python runs
the handler once the collective returns, i.e. after the exchange completed and rank 1's flush
returned. The row must be written before the handler finishes the logger and the process dies.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from dist_harness import run_ranks

import distlog

pytestmark = pytest.mark.slow


def late_peer(rank: int, run_dir: str, async_flush: bool):
    logger = distlog.Logger(run_dir=run_dir, async_write=True, async_flush=async_flush)
    logger.log_scalar("x", float(rank))
    logger.flush(0)
    logger.log_scalar("x", 10.0 + rank)
    if rank == 0:
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
        logger.flush(1)  # SIGTERM arrives while this waits for rank 1
        time.sleep(30)  # with async_flush the handler runs here, the exchange in flight
        return "survived"
    time.sleep(3.0)
    logger.flush(1)  # completes the exchange; returns: the row must not be lost
    return "flushed"


@pytest.mark.parametrize("async_flush", [False, True], ids=["blocking", "async"])
def test_sigterm_inside_the_flush_collective_keeps_the_row(tmp_path, async_flush):
    res = run_ranks(late_peer, 2, str(tmp_path), async_flush, expect_errors=True, timeout=120)
    assert res[0] == ("died", -signal.SIGTERM), res[0]
    assert res[1] == "flushed", res[1]
    rows = distlog.read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[1]["x"] == 10.5
    assert distlog.read_run_info(tmp_path)["exit_code"] == 128 + signal.SIGTERM


def signalled_while_in_flight(rank: int, run_dir: str):
    logger = distlog.Logger(run_dir=run_dir, async_write=True)
    logger.log_scalar("x", float(rank))
    logger.flush(0)
    logger.log_scalar("x", 10.0 + rank)
    if rank == 0:
        buffer = logger.aggregator.buffer
        prepare = buffer.prepare_window

        def signal_first() -> None:  # runs after the gather started, before it is waited for
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs at the next bytecode
            prepare()

        buffer.prepare_window = signal_first
        logger.flush(1)
        time.sleep(30)
        return "survived"
    time.sleep(3.0)
    logger.flush(1)
    return "flushed"


def test_sigterm_while_the_gather_is_in_flight_keeps_the_row(tmp_path):
    """A blocking flush does its housekeeping between starting the gather and waiting for it;
    a signal handler that runs there waits for the gather and writes its row."""
    res = run_ranks(signalled_while_in_flight, 2, str(tmp_path), expect_errors=True, timeout=120)
    assert res[0] == ("died", -signal.SIGTERM), res[0]
    assert res[1] == "flushed", res[1]
    rows = distlog.read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[1]["x"] == 10.5


def interrupted_while_in_flight(rank: int, run_dir: str):
    logger = distlog.Logger(run_dir=run_dir, async_write=True, handle_signals=False)
    logger.log_scalar("x", float(rank))
    logger.flush(0)
    logger.log_scalar("x", 10.0 + rank)
    if rank == 0:

        def interrupt() -> None:  # Ctrl-C with no handler of distlog's, the gather in flight
            raise KeyboardInterrupt

        logger.aggregator.buffer.prepare_window = interrupt
        try:
            logger.flush(1)
        except KeyboardInterrupt:
            logger.close_locally(130)  # what the exit hooks do: the gather is still running
            return "interrupted"
        return "not interrupted"
    time.sleep(3.0)
    logger.flush(1)
    return "flushed"  # no finish(): its last flush would wait for rank 0, which has left


def test_an_interrupt_while_the_gather_is_in_flight_keeps_the_row(tmp_path):
    """The interrupt leaves the flush before it waited for its gather: closing the logger
    waits for the gather (rank 1 arrives 3 s later) and writes the row it brings."""
    res = run_ranks(interrupted_while_in_flight, 2, str(tmp_path), timeout=120)
    assert res == ["interrupted", "flushed"]
    rows = distlog.read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[1]["x"] == 10.5
    assert distlog.read_run_info(tmp_path)["exit_code"] == 130


def preempted_with_own_handler(rank: int, run_dir: str):
    import warnings

    stop = []
    if rank == 0:  # a training script's own preemption handler: it sets a flag and returns
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    logger = distlog.Logger(run_dir=run_dir, async_write=False)
    logger.log_scalar("x", float(rank))
    logger.flush(0)
    logger.log_scalar("x", 10.0 + rank)
    if rank == 0:
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            logger.flush(1)  # SIGTERM arrives while this waits for rank 1; the flush goes on
            logger.finish()  # already closed by the signal: nothing more to do
        return stop, logger.closed, [str(w.message) for w in caught]
    time.sleep(3.0)
    logger.flush(1)
    logger.finish(exit_code=143)  # preempted too: no last collective
    return "flushed"


def test_a_flush_resumed_after_a_returning_signal_handler_writes_its_row_once(tmp_path):
    """distlog's handler writes the row of the flush it interrupted, closes the logger and calls
    the script's own handler, which returns: the flush then resumes, and must hand that row to
    nobody again. Before, with the writer inline, it wrote it to the closed sinks (a warning
    "JsonlSink ... is closed"; a sink that reopens would have written it twice)."""
    res = run_ranks(preempted_with_own_handler, 2, str(tmp_path), timeout=120)
    stop, closed, warned = res[0]
    assert stop == [signal.SIGTERM] and closed, res[0]
    assert not [w for w in warned if "closed" in w], warned
    assert res[1] == "flushed", res[1]
    assert [(r["step"], r["x"]) for r in distlog.read_metrics(tmp_path)] == [(0, 0.5), (1, 10.5)]
    assert distlog.read_run_info(tmp_path)["exit_code"] == 128 + signal.SIGTERM
