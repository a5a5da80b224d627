"""A rank that stops taking part in logging gives a clear error within the timeout, not a hang.

Four ways a rank diverges: it crashes, it hangs (stops flushing), it skips one flush, or it
flushes on another schedule. Each test measures, on the ranks that kept to the schedule, the
time from entering the flush to the error, and checks the message names the log step and,
where it can be known, the rank. ``TIMEOUT`` is the logger's timeout in these tests.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from dist_harness import run_ranks, wait_for_file

import distlog

pytestmark = pytest.mark.slow  # every test here starts several processes

TIMEOUT = 3.0
SLACK = 10.0  # the missing-rank lookup and a loaded 2-core machine; a hang takes forever


def _logger(tmp: str) -> distlog.Logger:
    return distlog.Logger(run_dir=tmp, async_write=False, timeout=TIMEOUT, handle_signals=False)


def _flush_and_time(logger: distlog.Logger, step: int) -> tuple[float, str]:
    start = time.monotonic()
    try:
        logger.flush(step)
    except distlog.RankDivergenceError as exc:
        return time.monotonic() - start, str(exc)
    return time.monotonic() - start, "no error"


def _stay_away_until_rank0_gave_up(tmp: str) -> None:
    """Rank 1 hangs (or computes) until rank 0 has seen its errors, at most as long as rank 0
    may take to see them."""
    wait_for_file(Path(tmp, "rank0-gave-up"), TIMEOUT + SLACK + 1)


def diverge(rank: int, tmp: str, how: str):
    logger = _logger(tmp)
    for step in range(3):
        logger.log_scalar("x", float(rank))
        logger.flush(step)
    logger.log_scalar("x", 1.0)
    if rank == 1:
        if how == "crash":
            os._exit(17)  # no cleanup at all, like a segfault or an OOM kill
        if how == "hang":
            _stay_away_until_rank0_gave_up(tmp)
            return "hung"
        if how == "skip":  # skips the flush at step 3, then computes for a while
            _stay_away_until_rank0_gave_up(tmp)
            return _flush_and_time(logger, 4)
    elapsed, message = _flush_and_time(logger, 3)
    # Later flushes fail at once with the same story instead of reusing a broken group.
    again = _flush_and_time(logger, 4)
    Path(tmp, "rank0-gave-up").touch()
    logger.finish(exit_code=1)
    rows = distlog.read_metrics(tmp) if rank == 0 else None
    return elapsed, message, again, rows


def _check_rank0(result, step_text: str):
    elapsed, message, again, rows = result
    assert step_text in message, message
    assert [r["step"] for r in rows] == [0, 1, 2]  # everything flushed before is on disk
    assert again[0] < 1.0 and "no flush is possible" in again[1], again
    return elapsed, message


def test_a_crashed_rank_is_named_at_once(tmp_path):
    res = run_ranks(diverge, 2, str(tmp_path), "crash", expect_errors=True, timeout=90)
    assert res[1] == ("died", 17)
    elapsed, message = _check_rank0(res[0], "log step 3")
    assert "ranks that never reached it: [1]" in message, message
    assert elapsed < TIMEOUT + SLACK, elapsed  # a dead peer is seen before the timeout
    print(f"crash: error after {elapsed:.2f}s")


def test_a_hung_rank_is_named_within_the_timeout(tmp_path):
    res = run_ranks(diverge, 2, str(tmp_path), "hang", timeout=90)
    elapsed, message = _check_rank0(res[0], "log step 3")
    assert "ranks that never reached it: [1]" in message, message
    assert TIMEOUT - 0.5 < elapsed < TIMEOUT + SLACK, elapsed
    print(f"hang: error after {elapsed:.2f}s (timeout {TIMEOUT}s)")


def test_a_skipped_flush_is_reported_on_both_sides(tmp_path):
    res = run_ranks(diverge, 2, str(tmp_path), "skip", timeout=90)
    elapsed, message = _check_rank0(res[0], "log step 3")
    assert "ranks that never reached it: [1]" in message, message
    assert elapsed < TIMEOUT + SLACK, elapsed
    late_elapsed, late_message = res[1]  # the skipper learns it at its next flush
    assert "log step 4" in late_message and late_elapsed < TIMEOUT + SLACK, res[1]
    print(f"skip: error after {elapsed:.2f}s on the waiting rank")


def other_schedule(rank: int, tmp: str):
    """Rank 0 flushes every 2 steps, rank 1 every 3: they meet at different steps."""
    logger = _logger(tmp)
    every = 2 if rank == 0 else 3
    results = []
    for step in range(12):
        logger.log_scalar("x", float(step))
        if step % every == every - 1:
            results.append(_flush_and_time(logger, step))
            if results[-1][1] != "no error":
                break
    logger.finish(exit_code=1)
    return results


def test_another_schedule_names_both_steps_at_the_first_flush(tmp_path):
    res = run_ranks(other_schedule, 2, str(tmp_path), timeout=90)
    for results in res:
        assert len(results) == 1, results  # the first flush already fails
        elapsed, message = results[0]
        assert "rank 0: flush #0 at step 1" in message and "rank 1: flush #0 at step 2" in message
        assert re.search(r"at log step [12]\b", message), message
    # rank 0 waited for rank 1 to reach its first flush (one step later), no longer
    assert res[0][0][0] < TIMEOUT, res[0]


def _other_options(rank: int, tmp: str) -> tuple[float, str]:
    # A per-rank gather limit (say, computed from local memory): rank 1 would all_reduce
    # where rank 0 all_gathers.
    options = distlog.ExchangeOptions(gather_limit_bytes=(1 << 20) if rank == 0 else 16)
    start = time.monotonic()
    try:
        logger = distlog.Logger(run_dir=tmp, timeout=TIMEOUT, exchange=options)
    except distlog.LogValueError as exc:
        return time.monotonic() - start, str(exc)
    logger.finish()
    return time.monotonic() - start, "no error"


def test_ranks_with_different_exchange_options_fail_at_construction(tmp_path):
    """Before, both ranks waited for the full timeout at the first flush and then blamed a
    missing rank ("a rank crashed, skipped the flush ..."), and the row was lost."""
    for seconds, message in run_ranks(_other_options, 2, str(tmp_path), timeout=120):
        assert "same exchange options" in message, message
        assert "rank 0: ExchangeOptions(" in message and "gather_limit_bytes=16" in message
        assert seconds < TIMEOUT, "the mismatch waited for the timeout"


def one_flush_more(rank: int, tmp: str, async_flush: bool):
    """Rank 1 makes one flush more than rank 0, at the step rank 0's finish() flushes."""
    logger = distlog.Logger(
        run_dir=tmp, async_write=False, timeout=TIMEOUT, handle_signals=False,
        async_flush=async_flush,
    )  # fmt: skip
    for step in range(3):
        logger.log_scalar("x", float(rank))
        logger.flush(step)
    got = []
    if rank == 1:
        logger.log_scalar("x", 7.0)
        try:
            logger.flush(3)
            logger.wait()
        except distlog.RankDivergenceError as exc:
            got.append(str(exc))
    logger.log_scalar("tail", float(rank) + 100)
    try:
        logger.finish()
    except distlog.RankDivergenceError as exc:
        got.append(str(exc))
    return got


@pytest.mark.parametrize("async_flush", [False, True])
def test_a_finish_never_pairs_with_another_ranks_extra_flush(tmp_path, async_flush):
    """finish()'s flush is marked in the header: rank 0's finish() at flush #3 no longer
    passes for rank 1's extra flush(3) (rank 0 ended with exit code 0 and wrote a row that
    mixed rank 1's step-3 values with its own tail)."""
    results = run_ranks(one_flush_more, 2, str(tmp_path), async_flush, timeout=120)
    for rank, got in enumerate(results):
        assert got, f"rank {rank} raised nothing"
        assert "rank 0: finish() as flush #3 at step 3" in got[0], got
        assert "rank 1: flush #3 at step 3" in got[0], got
    rows = distlog.read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2] and not any("tail" in r for r in rows), rows
    assert distlog.read_run_info(tmp_path)["exit_code"] != 0


def one_hung_one_late(rank: int, tmp: str):
    """3 ranks: rank 1 hangs, rank 2 reaches the flush late but well within the timeout."""
    logger = distlog.Logger(run_dir=tmp, async_write=False, timeout=6.0, handle_signals=False)
    logger.log_scalar("x", 1.0)
    logger.flush(0)
    if rank == 1:  # away until both others gave up on it
        wait_for_file(Path(tmp, "rank2-gave-up"), 60)
        return None
    if rank == 2:
        time.sleep(4.0)
    logger.log_scalar("x", 1.0)
    _, message = _flush_and_time(logger, 1)
    if rank == 2:
        Path(tmp, "rank2-gave-up").touch()
    else:  # rank 0's process holds the job's store, which rank 2 reads when it gives up
        wait_for_file(Path(tmp, "rank2-gave-up"), 60)
    logger.finish(exit_code=1)
    return message


def test_a_late_rank_that_reached_the_flush_is_not_named_missing(tmp_path):
    """Only the hung rank is named. A rank marked its arrival only once its own collective
    had failed, so a live rank that came more than a moment after the one that timed out was
    named missing with the hung one ([1, 2])."""
    messages = run_ranks(one_hung_one_late, 3, str(tmp_path), timeout=120)
    for rank in (0, 2):
        assert "ranks that never reached it: [1]" in messages[rank], (rank, messages[rank])


def late_construction(rank: int, tmp: str):
    if rank == 1:
        time.sleep(TIMEOUT + 2.0)  # arrives after rank 0 gave up
    try:
        distlog.Logger(run_dir=tmp, async_write=False, timeout=TIMEOUT, handle_signals=False)
    except distlog.RankDivergenceError as exc:
        return str(exc)
    return "no error"


def test_a_rank_that_constructs_its_logger_late_gives_a_named_error_on_both(tmp_path):
    """Over the whole world (group=None) the control group's store timeout reached the user
    as torch's DistStoreError on the punctual rank and gloo's RuntimeError on the late one."""
    messages = run_ranks(late_construction, 2, str(tmp_path), timeout=120)
    for rank, message in enumerate(messages):
        assert "building distlog's control group over global ranks [0, 1]" in message, message
        assert f"on rank {rank}" in message, message


def flushes_around_the_arrival_moment(rank: int, tmp: str):
    """Rank 1 comes to every flush about when rank 0's arrival moment (timeout / 8) runs out."""
    logger = distlog.Logger(run_dir=tmp, async_write=False, timeout=0.8, handle_signals=False)
    for step in range(60):  # rank 1 arrives from 5 ms before to 10 ms after it, by 0.5 ms
        logger.log_scalar("x", float(rank))
        if rank == 1:
            time.sleep(0.1 + (step % 30 - 10) * 0.0005)
        logger.flush(step)
    logger.finish()


def test_a_collective_completing_as_the_arrival_moment_runs_out_is_no_error(tmp_path):
    """The short wait after which a rank marks its arrival can run out just as the collective
    completes; that was raised as the flush's failure ('Operation timed out!')."""
    run_ranks(flushes_around_the_arrival_moment, 2, str(tmp_path), timeout=120)
    rows = distlog.read_metrics(tmp_path)
    assert [r["x"] for r in rows] == [0.5] * 60
