"""Fuzz the public API on two real gloo ranks: bad input on one rank never hangs the other.

Each example gives every rank its own random calls (random names, values, dtypes, shapes,
reductions, weights; valid and not) and flush points. On every rank, each call must be accepted
or rejected as the oracle of ``test_fuzz.py`` says, at the call; each flush must then write
the row that ``reference.py`` computes from the samples that every rank had accepted, to the
return value and to ``metrics.jsonl``. The pool's timeout turns a hang into a failure.
"""

from __future__ import annotations

import math
import tempfile

import pytest
import test_fuzz as tf
from dist_harness import RankPool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_row

import distlog

pytestmark = pytest.mark.slow  # every test here starts several processes

EXAMPLES = 150
WORLD = 2


@pytest.fixture(scope="module")
def pool():
    p = RankPool(WORLD)
    yield p
    p.close()


@st.composite
def rank_op(draw):
    """A call with the key's usual reduction (ranks agree on it) or an invalid one."""
    key = draw(tf.keys)
    reduce = (
        tf.usual_reduce(key)
        if draw(st.integers(0, 9)) < 8
        else draw(st.sampled_from(["avg", None]))
    )
    weight = draw(tf.weights) if reduce == "mean" else None
    return ("scalar", key, draw(tf.values), reduce, weight, False)


# per flush, per rank: a list of calls
scenario = st.lists(
    st.lists(st.lists(rank_op(), max_size=6), min_size=WORLD, max_size=WORLD),
    min_size=1,
    max_size=4,
)


def play_rank(rank: int, flushes, run_dir: str):
    logger = distlog.Logger(run_dir=run_dir, async_write=False, timeout=20, handle_signals=False)
    model = tf.Model()
    accepted, rows = [], []
    try:
        for step, per_rank in enumerate(flushes):
            for op in per_rank[rank]:
                tf.apply(logger, model, op)  # asserts accept/reject agrees with the oracle
            accepted.append(list(model.samples))
            model.samples = []
            rows.append(logger.flush(step, block=True))
    finally:
        logger.finish(exit_code=0)
    written = distlog.read_metrics(run_dir) if rank == 0 else None
    return accepted, rows, written


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(flushes=scenario)
def test_random_calls_on_two_ranks_give_the_reference_row_or_a_local_error(pool, flushes):
    with tempfile.TemporaryDirectory() as tmp:
        results = pool.run(play_rank, flushes, tmp, timeout=60)
    accepted = [r[0] for r in results]
    rows, written = results[0][1], results[0][2]
    assert all(row is None for row in results[1][1])  # only the writer gets rows
    nonempty = []
    for step in range(len(flushes)):
        samples = [accepted[rank][step] for rank in range(WORLD)]
        want = reference_row(samples)
        scale = max(
            [1.0] + [abs(s[1] * s[3]) for rank in samples for s in rank if math.isfinite(s[1])]
        )
        tf.assert_row(rows[step], want, scale)
        if want:
            nonempty.append((step, want, scale))
    assert [r["step"] for r in written] == [step for step, _, _ in nonempty]
    for row, (_, want, scale) in zip(written, nonempty, strict=True):
        tf.assert_row({k: v for k, v in row.items() if k not in ("step", "time")}, want, scale)
