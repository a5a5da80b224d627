"""A row that fails on the writer thread must not stop the thread (or finish() blocks forever)."""

from __future__ import annotations

import threading
import time
import warnings

import distlog
from distlog.writer import WRITE_INTERVAL_S, WriterThread


def test_a_failing_row_leaves_the_writer_running(tmp_path):
    finished = threading.Event()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as under `python -W error` or pytest's filterwarnings
        logger = distlog.Logger(run_dir=tmp_path)
        logger.log_scalar("a", float("nan"))
        logger.flush(block=False)  # decoded on the writer thread: the NaN warning raises there
        logger.log_scalar("b", 1.0)
        logger.flush(block=False)

        def finish() -> None:
            logger.finish()
            finished.set()

        t = threading.Thread(target=finish, daemon=True)
        t.start()
        t.join(30)
    assert finished.is_set(), "finish() blocked: the writer thread died on the failed row"
    rows = distlog.read_metrics(tmp_path)
    assert [r["b"] for r in rows if "b" in r] == [1.0]  # the next row was still written
    assert logger._writer is not None and len(logger._writer.errors) == 1


# ----------------------------------------------------------------------------- batching
# Queuing a job does not wake the writer; it wakes every interval (or at once for a drain, a
# stop, a queue growing full) and runs everything queued, in order.


def _wait_until(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_queued_rows_reach_the_sinks_within_the_interval_without_a_drain(tmp_path):
    logger = distlog.Logger(run_dir=tmp_path)
    for step in range(5):
        logger.log_scalar("x", float(step))
        logger.flush(step)  # no wait(): the writer wakes on its own
    written = lambda: len(distlog.read_metrics(tmp_path)) == 5  # noqa: E731
    assert _wait_until(written, 5 + 20 * WRITE_INTERVAL_S), "the writer never woke for the rows"
    assert [r["x"] for r in distlog.read_metrics(tmp_path)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    logger.finish()


def test_jobs_run_in_order_and_drain_and_stop_do_not_wait_for_the_interval():
    writer = WriterThread(maxsize=1000, interval=60.0)  # would sleep a minute between batches
    ran: list[int] = []
    for i in range(20):
        writer.submit(lambda i=i: ran.append(i))
    time.sleep(0.2)
    assert ran == [], "queuing woke the writer although the queue is far from full"
    started = time.monotonic()
    assert writer.drain(timeout=30)
    assert ran == list(range(20)) and time.monotonic() - started < 10
    writer.submit(lambda: ran.append(20))
    started = time.monotonic()
    writer.stop(timeout=30)
    assert ran[-1] == 20 and not writer.alive and time.monotonic() - started < 10


def test_a_queue_growing_full_wakes_the_writer_and_nothing_is_dropped():
    writer = WriterThread(maxsize=8, interval=60.0)
    ran: list[int] = []
    for i in range(100):  # more than the queue holds: submit waits for room, never drops
        writer.submit(lambda i=i: ran.append(i))
    assert _wait_until(lambda: len(ran) >= 96, 30), f"the writer slept with a full queue: {ran}"
    assert writer.drain(timeout=30) and ran == list(range(100))
    writer.stop()
