"""The test harness itself: a group that cannot form fails fast and loudly, never a hang."""

from __future__ import annotations

import time

import pytest
from dist_harness import run_ranks

pytestmark = pytest.mark.slow  # starts processes


def _double(rank: int) -> int:
    return 2 * rank


def test_ranks_run_with_and_without_a_group_made_for_them() -> None:
    assert run_ranks(_double, 2) == [0, 2]
    assert run_ranks(_double, 2, init=False) == [0, 2]


def test_a_group_that_cannot_form_is_tried_twice_then_fails_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match="did not form in 2 attempts"):
        run_ranks(_double, 2, backend="no-such-backend", timeout=120)
    assert time.monotonic() - started < 60  # not the 120 s timeout: the ranks said why
