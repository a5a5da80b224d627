"""A key this rank logs for the first time while a flush's exchange runs, and which that
exchange brings from another rank under another spec, is a key conflict like any other.

It happens with ``async_flush=True`` on the training thread itself (the exchange of the flush
that just returned is still running), or from a second thread during a blocking flush. The
key is not known on this rank yet when the call is checked, and this rank's key blob for that
exchange does not have it. Before, the slot kept its own spec while the group's layout had the
other: every sample this rank logged for the key was accepted and dropped, for the rest of the
run, with no error anywhere (12 of 12 runs); and a spread key whose column another rank had
just made a key of its own overwrote that key's value (4 of 4 runs).
"""

from __future__ import annotations

import threading
import time

import pytest
from dist_harness import run_ranks

import distlog

pytestmark = pytest.mark.slow


def log_during_flush_zero(logger: distlog.Logger, rank: int, log, async_flush: bool) -> None:
    """Rank 1 is 1 s late to flush 0; rank 0 calls ``log`` while that exchange runs."""
    if rank == 1:
        time.sleep(1.0)
        logger.flush(0)
    elif async_flush:
        logger.flush(0)  # returns at once: the exchange waits for rank 1 in the background
        log()
    else:
        thread = threading.Thread(target=lambda: (time.sleep(0.3), log()))
        thread.start()
        logger.flush(0)
        thread.join()


def reduction_conflict(rank: int, run_dir: str, async_flush: bool) -> list[str]:
    logger = distlog.Logger(run_dir=run_dir, async_write=False, async_flush=async_flush)
    if rank == 1:
        logger.log_scalar("x", 1.0, reduce="mean")
    errors: list[str] = []
    try:
        log_during_flush_zero(
            logger, rank, lambda: logger.log_scalar("x", 5.0, reduce="sum"), async_flush
        )
    except distlog.KeyConflictError as exc:
        errors.append(f"flush 0: {exc}")
    for step in (1, 2):
        try:
            if rank == 0:
                logger.log_scalar("x", 5.0, reduce="sum")
            else:
                logger.log_scalar("x", 2.0 * step, reduce="mean")
        except distlog.LogValueError as exc:
            errors.append(f"log {step}: {exc}")
        try:
            logger.flush(step)
        except distlog.KeyConflictError as exc:
            errors.append(f"flush {step}: {exc}")
    logger.finish()
    return errors


@pytest.mark.parametrize("async_flush", [True, False], ids=["async", "blocking-thread"])
def test_a_key_first_logged_during_the_exchange_that_brings_it_is_a_conflict(tmp_path, async_flush):
    errors0, errors1 = run_ranks(reduction_conflict, 2, str(tmp_path), async_flush, timeout=120)
    assert errors1 == []  # rank 1 saw nothing wrong: its spec is the group's
    conflicts = [e for e in errors0 if "KeyConflictError" in e or "conflicting keys" in e]
    assert len(conflicts) == 1, errors0
    # blocking: raised by flush 0 itself; async: by the next flush, once it is on its way
    assert conflicts[0].startswith("flush 1:" if async_flush else "flush 0:"), errors0
    assert "at log step 0" in conflicts[0] and "x: reduce='mean'" in conflicts[0]
    assert "logged while this flush's exchange ran" in conflicts[0]
    refused = [e for e in errors0 if e.startswith("log ")]
    assert refused and all("key 'x' was logged with reduce='mean'" in e for e in refused)
    rows = distlog.read_metrics(tmp_path)
    # Every rank made every flush; x is rank 1's mean (rank 0's sums were refused, not mixed).
    assert [(r["step"], r["x"]) for r in rows] == [(0, 1.0), (1, 2.0), (2, 4.0)]


def spread_over_a_new_key(rank: int, run_dir: str) -> list[str]:
    logger = distlog.Logger(run_dir=run_dir, async_write=False, async_flush=True)
    if rank == 1:
        logger.log_scalar("x/rank_min", 100.0, reduce="sum")
    errors: list[str] = []
    log_during_flush_zero(logger, rank, lambda: logger.log_scalar("x", 7.0, spread=True), True)
    for step in (1, 2, 3):
        if rank == 1:
            logger.log_scalar("x/rank_min", 100.0, reduce="sum")
        try:
            logger.flush(step)
        except distlog.KeyConflictError as exc:
            errors.append(f"flush {step}: {exc}")
    try:
        logger.log_scalar("x", 7.0, spread=True)
    except distlog.LogValueError as exc:
        errors.append(f"later: {exc}")
    logger.finish()
    return errors


def test_a_spread_key_whose_column_another_rank_just_made_a_key_is_refused(tmp_path):
    errors0, errors1 = run_ranks(spread_over_a_new_key, 2, str(tmp_path), timeout=120)
    # Found by flush 0's key exchange on rank 0 alone, raised once flush 1 is on its way.
    conflicts = [e for e in errors0 if e.startswith("flush")]
    assert len(conflicts) == 1 and conflicts[0].startswith("flush 1: "), errors0
    assert "x (logged on rank 0 while this flush's exchange ran)" in conflicts[0]
    assert "spread key whose column 'x/rank_min' is a key of its own" in conflicts[0]
    assert not [e for e in errors1 if e.startswith("flush")]  # rank 1 saw nothing wrong
    for errors in (errors0, errors1):  # and now x with spread=True is refused at the call
        assert any("would write 'x/rank_min'" in e for e in errors if e.startswith("later"))
    rows = distlog.read_metrics(tmp_path)
    assert [r["x/rank_min"] for r in rows] == [100.0] * 4  # never x's spread column
    assert all("x" not in r for r in rows)


def column_during_the_exchange(rank: int, run_dir: str) -> list[str]:
    """Rank 0 brings ``x`` with spread=True to flush 0; rank 1 first logs a plain
    ``x/rank_min`` while that exchange runs (its flush returned at once)."""
    logger = distlog.Logger(run_dir=run_dir, async_write=False, async_flush=True)
    outcomes: list[str] = []
    if rank == 0:
        logger.log_scalar("x", 1.0, spread=True)
        time.sleep(1.0)
        logger.flush(0)
    else:
        logger.flush(0)
        logger.log_scalar("x/rank_min", 100.0)  # accepted: x is not known here yet
    for step in (1, 2):
        logger.log_scalar("ok", float(rank))
        try:
            logger.flush(step)
            outcomes.append(f"flush {step}: ok")
        except distlog.KeyConflictError as exc:
            outcomes.append(f"flush {step}: {exc}")
    if rank == 1:
        try:
            logger.log_scalar("x/rank_min", 100.0)
        except distlog.LogValueError as exc:
            outcomes.append(f"later: {exc}")
    logger.finish()
    return outcomes


def test_a_spread_column_first_logged_during_the_exchange_of_its_owner_is_a_conflict(tmp_path):
    out0, out1 = run_ranks(column_during_the_exchange, 2, str(tmp_path), timeout=120)
    assert out0 == ["flush 1: ok", "flush 2: ok"]  # rank 0 saw nothing wrong
    assert out1[0].startswith("flush 1: ") and "x/rank_min (logged on rank 1" in out1[0], out1
    assert "is a spread column of 'x'" in out1[0]
    assert out1[1] == "flush 2: ok" and "spread column of key 'x'" in out1[2], out1
    rows = distlog.read_metrics(tmp_path)
    assert rows[0]["x/rank_min"] == 1.0  # x's own spread, never rank 1's 100
    assert all(r.get("x/rank_min") != 100.0 for r in rows)
