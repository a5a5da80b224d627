"""Samples logged from other threads are never lost, with blocking and asynchronous flushes.

Each rank runs a data-loader thread that logs ``data/batches`` (sum) about once a millisecond
while the main thread logs its own key and flushes every 1-10 ms. A flush swaps the buffer before
its exchange, so a sample logged during the exchange lands in the next row: the sum over all
written rows must equal the number of samples every rank logged, exactly.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest
from dist_harness import run_ranks

import distlog

pytestmark = pytest.mark.slow


def loader_and_flusher(rank: int, run_dir: str, async_flush: bool, flushes: int) -> dict:
    logger = distlog.Logger(run_dir=run_dir, async_write=False, async_flush=async_flush)
    stop = threading.Event()
    logged = {"loader": 0, "second": 0}

    def loader(name: str, key: str) -> None:
        while not stop.is_set():
            logger.log_scalar(key, 1.0, reduce="sum")
            logged[name] += 1
            time.sleep(0.001)

    threads = [
        threading.Thread(target=loader, args=("loader", "data/batches")),
        threading.Thread(target=loader, args=("second", "data/other")),
    ]
    for t in threads:
        t.start()
    rng = random.Random(1234)  # the same flush schedule on every rank
    main_logged = 0
    for step in range(flushes):
        logger.log_scalar("train/loss", float(rank))
        main_logged += 1
        logger.flush(step)
        time.sleep(rng.uniform(0.001, 0.010))
    step = flushes
    stop.set()
    for t in threads:
        t.join()
    logger.finish(step=step)  # the last samples, logged after the last flush
    return {"logged": logged, "main": main_logged, "steps": step + 1}


def totals(run_dir: Path, key: str) -> float:
    return sum(row.get(key, 0.0) for row in distlog.read_metrics(run_dir))


@pytest.mark.parametrize("async_flush", [False, True], ids=["blocking", "async"])
@pytest.mark.parametrize("ranks", [2, 3])
def test_every_sample_from_a_loader_thread_reaches_a_row(tmp_path, ranks, async_flush):
    results = run_ranks(loader_and_flusher, ranks, str(tmp_path), async_flush, 80, timeout=240)
    steps = {r["steps"] for r in results}
    assert len(steps) == 1, f"ranks flushed a different number of times: {steps}"
    want_batches = sum(r["logged"]["loader"] for r in results)
    want_other = sum(r["logged"]["second"] for r in results)
    assert want_batches > 100  # the loader really ran during the flushes
    assert totals(tmp_path, "data/batches") == want_batches
    assert totals(tmp_path, "data/other") == want_other
    rows = distlog.read_metrics(tmp_path)
    assert len({row["step"] for row in rows}) == len(rows), "a step was written twice"


def collective_from_two_threads(rank: int, first, second, thread_name: str) -> dict:
    """Rank 0 runs ``second`` on another thread while its main thread is inside ``first``,
    which waits for rank 1 (3 s late): the second call must fail at once with LogUsageError,
    not pair its collective with rank 1's next one."""
    outcome: dict = {}
    if rank == 0:

        def run_second() -> None:
            time.sleep(0.5)  # the main thread is inside first() by now
            started = time.monotonic()
            try:
                second()
                outcome["second"] = "returned"
            except distlog.LogUsageError as exc:
                outcome["second"] = str(exc)
            outcome["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=run_second, name=thread_name)
        thread.start()
        first()
        thread.join()
    else:
        time.sleep(3.0)
        first()
    return outcome


def flush_from_two_threads(rank: int, run_dir: str) -> dict:
    """A second thread's flush while the main thread's flush waits for rank 1."""
    logger = distlog.Logger(run_dir=run_dir, async_write=False, timeout=60)
    logger.log_scalar("x", float(rank + 1))
    outcome = collective_from_two_threads(
        rank, lambda: logger.flush(0), lambda: logger.flush(99), "callback-thread"
    )
    logger.log_scalar("x", 10.0 * (rank + 1))
    logger.flush(1)  # the group is still in step
    logger.finish()
    return outcome


def test_a_flush_from_a_second_thread_while_one_runs_fails_at_once(tmp_path):
    results = run_ranks(flush_from_two_threads, 2, str(tmp_path), timeout=120)
    message, seconds = results[0]["second"], results[0]["seconds"]
    assert "'callback-thread'" in message and "'MainThread'" in message, message
    assert "one thread at a time" in message
    assert seconds < 2.0, "the second flush waited instead of failing"
    assert [(r["step"], r["x"]) for r in distlog.read_metrics(tmp_path)] == [(0, 1.5), (1, 15.0)]


def finish_from_two_threads(rank: int, run_dir: str, exit_code: int) -> dict:
    """A second thread's finish() (a watchdog's, say) while the main thread's flush waits."""
    logger = distlog.Logger(run_dir=run_dir, async_write=False, timeout=60)
    logger.log_scalar("x", float(rank + 1))
    outcome = collective_from_two_threads(
        rank,
        lambda: logger.flush(0),
        lambda: logger.finish(exit_code=exit_code),
        "watchdog",
    )
    outcome["closed"] = logger.closed
    logger.log_scalar("x", 10.0 * (rank + 1))
    logger.flush(1)  # the group is still in step and the logger still open
    logger.finish()
    return outcome


@pytest.mark.parametrize("exit_code", [0, 1])
def test_a_finish_from_a_second_thread_while_one_flushes_fails_and_changes_nothing(
    tmp_path, exit_code
):
    """Before, the logger was closed anyway (run.json recorded exit code 1, the next log call
    raised LoggerClosedError, rank 1 a RankDivergenceError) and the row of the flush in flight
    was written twice: once salvaged by the close, once by the flush."""
    results = run_ranks(finish_from_two_threads, 2, str(tmp_path), exit_code, timeout=120)
    message, seconds = results[0]["second"], results[0]["seconds"]
    assert message.startswith("finish() on thread 'watchdog'") and "'MainThread'" in message
    assert seconds < 2.0, "the second call waited instead of failing"
    assert results[0]["closed"] is False
    assert [(r["step"], r["x"]) for r in distlog.read_metrics(tmp_path)] == [(0, 1.5), (1, 15.0)]
    assert json.loads((tmp_path / "run.json").read_text())["exit_code"] == 0


def gather_media_from_two_threads(rank: int, run_dir: str) -> dict:
    """The same for a gathering media call (ranks="all")."""
    import numpy as np

    logger = distlog.Logger(run_dir=run_dir, async_write=False, timeout=60)
    image = np.full((4, 4, 3), 50 * (rank + 1), dtype=np.uint8)
    outcome = collective_from_two_threads(
        rank,
        lambda: logger.log_images([image], desc="samples", ranks="all"),
        lambda: logger.log_images([image], desc="other", ranks="all"),
        "media-thread",
    )
    logger.log_images([image], desc="after", ranks="all")  # the group is still in step
    logger.log_scalar("x", 1.0)
    logger.flush(0)
    logger.finish()
    return outcome


def test_a_gathering_media_call_from_a_second_thread_fails_at_once(tmp_path):
    results = run_ranks(gather_media_from_two_threads, 2, str(tmp_path), timeout=120)
    message, seconds = results[0]["second"], results[0]["seconds"]
    assert "'other'" in message and "'media-thread'" in message, message
    assert seconds < 2.0, "the second call waited instead of failing"
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    media = {
        k: v for line in lines if "media" in line for k, v in json.loads(line)["media"].items()
    }
    assert set(media) == {"samples", "after"}  # the refused call left no trace
    for record in media.values():
        assert [item["caption"] for item in record["items"]] == ["rank 0", "rank 1"]
