"""A spread column never overwrites a real key (issue 13, failure mode 2)."""

from __future__ import annotations

import pytest
from dist_harness import run_ranks

import distlog

pytestmark = pytest.mark.slow


def column_on_another_rank(rank: int, run_dir: str):
    logger = distlog.Logger(run_dir=run_dir, async_write=False)
    if rank == 0:
        logger.log_scalar("x", 1.0, spread=True)
    else:
        logger.log_scalar("x/rank_max", 1000.0)
    logger.log_scalar("ok", float(rank))
    try:
        logger.flush(0)
        outcome = "no error"
    except distlog.KeyConflictError as exc:
        outcome = str(exc)
    later = "accepted"
    if rank == 1:  # now every rank knows x's spread: the column is refused at the call
        try:
            logger.log_scalar("x/rank_max", 5.0)
        except distlog.LogValueError as exc:
            later = str(exc)
    logger.finish()
    return outcome, later


def test_a_plain_key_named_like_another_ranks_spread_column_is_a_conflict(tmp_path):
    (out0, _), (out1, later1) = run_ranks(column_on_another_rank, 2, str(tmp_path), timeout=120)
    for outcome in (out0, out1):
        assert "x/rank_max is a spread column of 'x'" in outcome, outcome
    assert "spread column of key 'x'" in later1, later1
    row = distlog.read_metrics(tmp_path)[0]
    assert row["x/rank_max"] == 1.0  # x's own spread, not rank 1's 1000
    assert row["x/rank_argmax"] == 0.0 and row["ok"] == 0.5
