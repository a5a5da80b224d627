"""The fused exchange on real gloo groups, checked against a reference built from raw inputs."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_harness import RankPool, run_ranks, wait_for_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import assert_rows_close, reference_row

import distlog

pytestmark = pytest.mark.slow  # every test here starts several processes

# ---------------------------------------------------------------------------- helpers
KINDS = ["float", "int", "numpy", "f32", "f64", "bf16", "f16", "i64", "bool"]
_DTYPES = {
    "f32": torch.float32,
    "f64": torch.float64,
    "bf16": torch.bfloat16,
    "f16": torch.float16,
    "i64": torch.int64,
    "bool": torch.bool,
}


def make_value(value: float, kind: str):
    """The object a user would log, for a raw value and a kind."""
    if kind == "float":
        return float(value)
    if kind == "int":
        return int(value)
    if kind == "numpy":
        return np.float32(value)
    dtype = _DTYPES[kind]
    if dtype == torch.bool:
        return torch.tensor(bool(value))
    if dtype == torch.int64:
        return torch.tensor(int(value))
    return torch.tensor(value, dtype=dtype)


def represented(value: float, kind: str) -> float:
    """The float that the logged object stands for (what the reference must use)."""
    obj = make_value(value, kind)
    return float(obj.item()) if isinstance(obj, torch.Tensor) else float(obj)


def exchange_options(collective: str) -> distlog.ExchangeOptions:
    """The exchange protocol a test names by its collective."""
    protocol = {"auto": "auto", "all_gather": "gather", "all_reduce": "all_reduce"}[collective]
    return distlog.ExchangeOptions(protocol=protocol)


def play(rank: int, scenario, run_root: str, collective: str = "auto"):
    """Log every flush of a scenario on this rank; return rows (rank 0) and collective counts."""
    logger = distlog.Logger(
        run_dir=Path(run_root) / "run",
        async_write=False,
        nonfinite="ignore",
        exchange=exchange_options(collective),
    )
    rows, counts = [], []
    for step, per_rank in enumerate(scenario):
        for key, value, red, weight, kind in per_rank[rank]:
            logger.log_scalar(key, make_value(value, kind), reduce=red, weight=weight)
        rows.append(logger.flush(step, block=True))
        counts.append((logger.collectives_last_flush, logger.aggregator.layout_version))
    logger.finish()
    written = distlog.read_metrics(Path(run_root) / "run") if rank == 0 else None
    return rows, counts, written


# Each key has one reduction for the whole run; the reduction is part of its name.
KEYS = [
    ("loss", "mean"),
    ("acc", "mean"),
    ("tokens", "sum"),
    ("lat_min", "min"),
    ("lat_max", "max"),
    ("lr", "last"),
    ("a/b/c", "mean"),
    ("x.y", "sum"),
    ("g_max", "max"),
]

raw_values = st.one_of(
    st.integers(-1000, 1000).map(lambda x: x / 8),  # exact in float64 sums
    st.sampled_from([math.nan, math.inf, -math.inf]).filter(lambda _: True),
)


@st.composite
def scenarios(draw, world_size: int):
    flushes = []
    for _ in range(draw(st.integers(1, 3))):
        per_rank = []
        for _rank in range(world_size):
            samples = []
            for _ in range(draw(st.integers(0, 6))):
                key, red = draw(st.sampled_from(KEYS))
                kind = draw(st.sampled_from(KINDS))
                value = draw(
                    raw_values if kind in ("float", "f32", "f64") else st.integers(-40, 40)
                )
                if kind == "bool":
                    value = draw(st.integers(0, 1))
                weight = draw(st.integers(0, 4)) if red == "mean" and draw(st.booleans()) else None
                samples.append((key, float(value), red, weight, kind))
            per_rank.append(samples)
        flushes.append(per_rank)
    return flushes


def reference_for(per_rank):
    return reference_row(
        [
            [
                (k, represented(v, kind), red, 1.0 if w is None else float(w))
                for k, v, red, w, kind in s
            ]
            for s in per_rank
        ]
    )


# ---------------------------------------------------------------------------- property test
@pytest.fixture(scope="module")
def pool3():
    pool = RankPool(3)
    yield pool
    pool.close()


# Long-lived groups for the explicit cases whose loggers all finish (no timeout, no dead rank):
# starting processes once saves seconds a case. Cases that time out or leave a rank behind
# keep fresh processes (run_ranks).
@pytest.fixture(scope="module")
def pool2():
    pool = RankPool(2)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def pool4():
    pool = RankPool(4)
    yield pool
    pool.close()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(scenario=scenarios(3), collective=st.sampled_from(["all_gather", "all_reduce"]))
def test_random_key_subsets_match_reference(pool3, scenario, collective):
    with tempfile.TemporaryDirectory() as tmp:
        results = pool3.run(play, scenario, tmp, collective)
    rows, _, written = results[0]
    for r in results[1:]:
        assert all(row is None for row in r[0]), "only rank 0 gets rows"
    for step, per_rank in enumerate(scenario):
        want = reference_for(per_rank)
        assert_rows_close(rows[step], want)
    # what reached metrics.jsonl is exactly the non-empty rows
    on_disk = [row for row in rows if row]
    assert len(written) == len(on_disk)
    for line, row in zip(written, on_disk, strict=True):
        assert_rows_close({k: v for k, v in line.items() if k not in ("step", "time")}, row)
    # a constant number of collectives per flush, whatever the number of keys
    for rank_result in results:
        prev_version = 0
        for count, version in rank_result[1]:
            steady = 1 if collective == "all_gather" else 2  # + the MAX all_reduce
            limit = steady + (2 if version != prev_version else 0)
            assert 1 <= count <= limit, (count, version)
            prev_version = version


# ---------------------------------------------------------------------------- explicit cases
def every_reduction(rank: int, tmp: str, collective: str):
    logger = distlog.Logger(run_dir=tmp, async_write=False, exchange=exchange_options(collective))
    # rank r logs r+1 samples of each kind
    for i in range(rank + 1):
        v = 10.0 * rank + i
        logger.log_scalar("mean", v)
        logger.log_scalar("wmean", v, weight=i + 1)
        logger.log_scalar("sum", torch.tensor(v), reduce="sum")
        logger.log_scalar("min", v, reduce="min")
        logger.log_scalar("max", torch.tensor(v, dtype=torch.bfloat16), reduce="max")
        logger.log_scalar("last", v, reduce="last")
    row = logger.flush(7, block=True)
    count = logger.collectives_last_flush
    logger.log_scalar("mean", 1.0)
    row2 = logger.flush(block=True)
    count2 = logger.collectives_last_flush
    logger.finish()
    return row, count, row2, count2


@pytest.mark.parametrize("collective", ["all_gather", "all_reduce"])
def test_every_reduction_on_four_ranks(pool4, tmp_path, collective):
    res = pool4.run(every_reduction, str(tmp_path), collective, timeout=120)
    samples = [[10.0 * r + i for i in range(r + 1)] for r in range(4)]
    flat = [v for s in samples for v in s]
    weights = [[i + 1 for i in range(r + 1)] for r in range(4)]
    wnum = sum(
        v * w for s, ws in zip(samples, weights, strict=True) for v, w in zip(s, ws, strict=True)
    )
    wden = sum(w for ws in weights for w in ws)
    row, count, row2, count2 = res[0]
    assert row == pytest.approx(
        {
            "mean": sum(flat) / len(flat),
            "wmean": wnum / wden,
            "sum": sum(flat),
            "min": min(flat),
            "max": max(flat),
            "last": sum(s[-1] for s in samples) / 4,
        }
    )
    assert row2 == {"mean": 1.0}
    if collective == "all_gather":
        assert count == 3  # gather (finds new keys), key exchange, gather again
        assert count2 == 1  # steady state: one all_gather carries control, SUM and MAX
    else:
        assert count == 4  # fused SUM+control (finds new keys), key exchange, SUM, MAX
        assert count2 == 2  # steady state: fused SUM+control, MAX (min/max are in the layout)
    rows = distlog.read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [7, 8]


def spread_and_subsets(rank: int, tmp: str, collective: str):
    logger = distlog.Logger(run_dir=tmp, async_write=False, exchange=exchange_options(collective))
    logger.log_scalar("time/step", 1.0 + rank * 0.5, spread=True)
    logger.log_scalar("time/step", 2.0 + rank * 0.5, spread=True)
    if rank == 2:  # only the "last pipeline stage" has the loss
        logger.log_scalar("train/loss", 0.25)
    if rank in (0, 1):
        logger.log_scalar("class/7/acc", 0.5 + rank)
    row = logger.flush(0, block=True)
    logger.log_scalar("time/step", 1.0, spread=True)
    logger.flush(1)
    steady = logger.collectives_last_flush
    logger.finish()
    return row, steady


@pytest.mark.parametrize("collective", ["all_gather", "all_reduce"])
def test_spread_and_keys_only_some_ranks_log(pool3, tmp_path, collective):
    results = pool3.run(spread_and_subsets, str(tmp_path), collective, timeout=120)
    row = results[0][0]
    # one all_gather; the all-reduce protocol carries the spread's extremes in a MAX all_reduce
    assert all(steady == (1 if collective == "all_gather" else 2) for _, steady in results)
    per_rank = [1.5 + r * 0.5 for r in range(3)]
    mean = sum(per_rank) / 3
    assert row["time/step"] == pytest.approx(mean)
    assert row["time/step/rank_min"] == pytest.approx(1.5)
    assert row["time/step/rank_max"] == pytest.approx(2.5)
    assert row["time/step/rank_argmax"] == 2
    assert row["time/step/rank_std"] == pytest.approx(float(np.std(per_rank)))
    assert row["train/loss"] == 0.25  # reduced over the one rank that logged it
    assert row["class/7/acc"] == pytest.approx(1.0)  # mean of 0.5 and 1.5, rank 2 not counted


def large_spread_values(rank: int, tmp: str):
    logger = distlog.Logger(run_dir=tmp, async_write=False)
    logger.log_scalar("t", 1.7e9 + rank, spread=True)  # a timestamp: large against its spread
    row = logger.flush(0, block=True)
    logger.finish()
    return row


def test_the_rank_std_of_large_values_is_exact_on_the_gather(pool3, tmp_path):
    """Two passes over the ranks' own values; the one-pass E[v^2] - E[v]^2 gave 0.0 here."""
    row = pool3.run(large_spread_values, str(tmp_path), timeout=120)[0]
    assert row["t/rank_std"] == pytest.approx(float(np.std([1.7e9, 1.7e9 + 1, 1.7e9 + 2])))
    assert row["t"] == 1.7e9 + 1


def huge_spread_values(rank: int, tmp: str):
    import warnings

    warnings.simplefilter("error")  # numpy's overflow warning, as an error, failed the flush
    logger = distlog.Logger(run_dir=tmp, async_write=False)
    logger.log_scalar("big", [1e200, 1.0, -3e200][rank], spread=True)
    row = logger.flush(0, block=True)
    logger.finish()
    return row


def test_the_rank_std_of_values_whose_squares_overflow_is_right(pool3, tmp_path):
    """Past 1.3e154 a square is inf: numpy warned while building the payload (under -W error
    rank 0's flush raised before its collective, the others got RankDivergenceError and no row
    was written), and the two-pass std gave inf for values whose std is 2e200."""
    row = pool3.run(huge_spread_values, str(tmp_path), timeout=120)[0]
    values = [1e200, 1.0, -3e200]
    want = 1e200 * float(np.std([v / 1e200 for v in values]))
    assert row["big/rank_std"] == pytest.approx(want)
    assert row["big/rank_max"] == 1e200 and row["big/rank_argmax"] == 0


def bad_input_on_one_rank(rank: int, tmp: str):
    logger = distlog.Logger(run_dir=tmp, async_write=False)
    logger.log_scalar("ok", float(rank))
    errors = []
    if rank == 1:
        for bad in [
            lambda: logger.log_scalar("s", "a string"),
            lambda: logger.log_scalar("n", None),
            lambda: logger.log_scalar("t", torch.ones(3)),
            lambda: logger.log_scalar(3, 1.0),
            lambda: logger.log_scalar("r", 1.0, reduce="median"),
            lambda: logger.log_scalar("ok", 1.0, reduce="max"),
            lambda: logger.log_dict({"fine": 1.0, "bad": object()}),
        ]:
            try:
                bad()
            except distlog.DistlogError as exc:
                errors.append(str(exc))
    row = logger.flush(0, block=True)
    logger.finish()
    return row, errors


def test_bad_input_raises_on_that_rank_and_nobody_hangs(pool2, tmp_path):
    res = pool2.run(bad_input_on_one_rank, str(tmp_path), timeout=60)
    row, _ = res[0]
    _, errors = res[1]
    assert row == {"ok": 0.5}  # what was buffered before the errors is kept; "fine" was not logged
    assert len(errors) == 7
    for msg, key in zip(errors, ["'s'", "'n'", "'t'", "3", "'r'", "'ok'", "'bad'"], strict=True):
        assert key in msg, msg


def conflicting_reductions(rank: int, tmp: str):
    logger = distlog.Logger(run_dir=tmp, async_write=False)
    logger.log_scalar("shared", 1.0, reduce="mean" if rank == 0 else "max")
    logger.log_scalar("fine", 2.0)
    try:
        logger.flush(0)
        outcome = "no error"
    except distlog.KeyConflictError as exc:
        outcome = str(exc)
    logger.finish()
    return outcome


def test_conflicting_reductions_raise_on_every_rank_and_keep_the_row(pool2, tmp_path):
    outcomes = pool2.run(conflicting_reductions, str(tmp_path), timeout=120)
    for out in outcomes:
        assert "shared" in out and "'max'" in out, out
    rows = distlog.read_metrics(tmp_path)
    assert rows[0]["fine"] == 2.0 and rows[0]["shared"] == 1.0


def conflict_found_by_finish(rank: int, tmp: str, async_flush: bool):
    logger = distlog.Logger(run_dir=tmp, async_write=False, async_flush=async_flush)
    logger.log_scalar("shared", 1.0, reduce="mean" if rank == 0 else "max")
    logger.log_scalar("fine", 2.0)
    try:
        logger.finish()  # the tail's flush finds the conflict
        return "no error"
    except distlog.KeyConflictError as exc:
        return str(exc)


@pytest.mark.parametrize("async_flush", [False, True])
def test_a_conflict_found_by_finish_leaves_a_run_that_ended_well(pool2, tmp_path, async_flush):
    """The conflict is raised, but the rows were written: run.json says exit code 0 (it said
    1, as for a crash)."""
    outcomes = pool2.run(conflict_found_by_finish, str(tmp_path), async_flush, timeout=120)
    assert all("shared" in out for out in outcomes), outcomes
    assert distlog.read_metrics(tmp_path)[0]["fine"] == 2.0
    assert distlog.read_run_info(tmp_path)["exit_code"] == 0


def out_of_step(rank: int, tmp: str):
    logger = distlog.Logger(run_dir=tmp, async_write=False, timeout=5)
    logger.log_scalar("x", 1.0)
    try:
        logger.flush(10 + rank)
        return "no error"
    except distlog.RankDivergenceError as exc:
        return str(exc)


def skipped_flush(rank: int, tmp: str):
    logger = distlog.Logger(run_dir=tmp, async_write=False, timeout=3)
    logger.log_scalar("x", 1.0)
    gave_up = Path(tmp, "rank0-gave-up")
    if rank == 1:
        wait_for_file(gave_up, 8)  # never reaches the flush in time
        return "skipped"
    try:
        logger.flush(0)
        return "no error"
    except distlog.RankDivergenceError as exc:
        return str(exc)
    finally:
        gave_up.touch()


def test_ranks_flushing_different_steps_get_a_clear_error(tmp_path):
    outcomes = run_ranks(out_of_step, 2, str(tmp_path), timeout=60)
    for out in outcomes:
        assert "rank 0: flush #0 at step 10" in out and "rank 1: flush #0 at step 11" in out


def test_a_rank_that_never_flushes_is_reported_not_a_hang(tmp_path):
    import time

    start = time.monotonic()
    outcomes = run_ranks(skipped_flush, 2, str(tmp_path), timeout=60)
    assert "log step 0" in outcomes[0] and "[1]" in outcomes[0], outcomes[0]
    assert time.monotonic() - start < 45


def gather_or_reduce(rank: int, tmp: str, limit: int | None):
    options = distlog.ExchangeOptions(gather_limit_bytes=limit) if limit is not None else None
    logger = distlog.Logger(run_dir=tmp, async_write=False, exchange=options)
    counts, rows = [], []
    for step in range(3):
        logger.log_scalar("loss", float(rank + step))
        logger.log_scalar("lat", float(10 * rank + step), reduce="max")
        rows.append(logger.flush(step, block=True))
        counts.append(logger.collectives_last_flush)
    logger.finish()
    return counts, rows


@pytest.mark.parametrize(("limit", "steady"), [(None, 1), (0, 2)])
def test_auto_gathers_small_groups_and_all_reduces_past_the_limit(pool2, tmp_path, limit, steady):
    """Within gather_limit_bytes a flush is one all_to_all (min/max included); past it, the
    fused all_reduce and a MAX all_reduce. Both give the same rows."""
    results = pool2.run(gather_or_reduce, str(tmp_path), limit, timeout=120)
    for counts, _ in results:
        assert counts == [3 if steady == 1 else 4, steady, steady]
    rows = results[0][1]
    assert rows == [{"loss": step + 0.5, "lat": 10.0 + step} for step in range(3)]


class SlowSink:
    """A sink slower than training: the writer falls several rows behind the exchange."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_scalars(self, step, values):
        import time

        time.sleep(0.05)
        self.rows.append((step, dict(values)))

    def log_media(self, step, key, item):
        pass

    def log_config(self, config):
        pass

    def log_artifact(self, path, name, type):  # noqa: A002
        pass

    def close(self, exit_code=0):
        pass


def writer_behind(rank: int, tmp: str, keys: int, flushes: int):
    logger = distlog.Logger(run_dir=tmp, async_write=True)
    sink = SlowSink()
    logger.add_sink(sink)
    for step in range(flushes):
        for k in range(keys):
            logger.log_scalar(f"k/{k:03d}", float(1000 * step + 10 * k + rank))
        logger.flush(step)  # returns long before the writer has written the row before
    logger.finish()
    return sink.rows


def test_rows_stay_right_while_the_writer_lags_behind(pool2, tmp_path):
    """Rank 0 lends the gather's table to its writer instead of copying it: with the writer
    many rows behind, no table is gathered into before the writer has reduced it."""
    keys, flushes = 70, 12
    res = pool2.run(writer_behind, str(tmp_path), keys, flushes, timeout=120)
    want = [
        (step, {f"k/{k:03d}": 1000 * step + 10 * k + 0.5 for k in range(keys)})
        for step in range(flushes)
    ]
    assert res[0] == want
    assert [r["step"] for r in distlog.read_metrics(tmp_path)] == list(range(flushes))


def logged_out_of_order(rank: int, tmp: str, names: list[str], flushes: int):
    """Ranks 0 and 1 log ``names`` in that (unsorted) order; rank 2 in reverse, with a key of
    its own first."""
    logger = distlog.Logger(run_dir=tmp, async_write=False)
    order = names if rank < 2 else ["only/rank2", *names[::-1]]
    rows = []
    for step in range(flushes):
        for key in order:
            offset = names.index(key) % 7 if key in names else 0
            logger.log_scalar(key, float(100 * step + 10 * rank + offset))
        rows.append(logger.flush(step, block=True))
    layout = logger.aggregator.exchange.layout.keys
    logger.finish()
    return rows, layout


def test_the_layout_follows_the_order_keys_were_first_logged(pool3, tmp_path):
    """Every rank agrees on one layout: the keys in the order they were first logged, lowest
    rank first (rank 0's order, then keys only later ranks brought). Ranks that logged in that
    order pack their values without a permutation, the others with one; every value is right,
    and rows are written in that order."""
    rng = np.random.default_rng(0)
    names = [f"k/{i:03d}" for i in rng.permutation(100)]
    flushes = 3
    res = pool3.run(logged_out_of_order, str(tmp_path), names, flushes, timeout=120)
    want_layout = [*names, "only/rank2"]
    assert [layout for _, layout in res] == [want_layout] * 3
    rows = res[0][0]
    assert len(rows) == flushes
    for step, row in enumerate(rows):
        want = {key: 100 * step + names.index(key) % 7 + (0 + 10 + 20) / 3 for key in names} | {
            "only/rank2": 100 * step + 20.0
        }
        assert row == pytest.approx(want)
        assert list(row) == want_layout
    written = distlog.read_metrics(tmp_path)
    assert [list(r)[2:] for r in written] == [want_layout] * flushes  # after step and time


def gather_on_three(rank: int, tmp: str):
    """Steady gather flushes on 3 ranks, each profiled, then rank 2 flushes another step."""
    from torch.profiler import ProfilerActivity, profile

    logger = distlog.Logger(run_dir=tmp, async_write=False, timeout=30, handle_signals=False)
    ops, rows = [], []
    for step in range(3):
        logger.log_scalar("loss", float(rank + step))
        logger.log_scalar("lat", float(10 * rank + step), reduce="max")
        logger.log_scalar("tok", float(rank), reduce="sum", spread=True)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            rows.append(logger.flush(step, block=True))
        ops.append(sorted(e.key for e in prof.key_averages() if e.key.startswith("c10d::")))
    logger.log_scalar("loss", 1.0)
    try:
        logger.flush(4 if rank == 2 else 3)
        error = "no error"
    except distlog.RankDivergenceError as exc:
        error = str(exc)
    logger.finish(exit_code=1)
    return ops, rows, error


def test_a_steady_gather_flush_is_one_all_to_all_that_every_rank_checks(tmp_path):
    """The writer receives every rank's row and the others every rank's header, in one
    all_to_all: rows match the reference, and a rank out of step is named on all three."""
    results = run_ranks(gather_on_three, 3, str(tmp_path), timeout=120)
    for ops, _, error in results:
        assert ops[1:] == [["c10d::alltoall_base_"]] * 2, ops  # the first flush adds keys
        assert "ranks flushed out of step at log step" in error, error
        assert "rank 2: flush #3 at step 4" in error and "rank 0: flush #3 at step 3" in error
    rows = results[0][1]
    for step, row in enumerate(rows):
        values = [float(r + step) for r in range(3)]
        assert row["loss"] == pytest.approx(sum(values) / 3)
        assert row["lat"] == 20.0 + step
        assert row["tok"] == 3.0 and row["tok/rank_max"] == 2.0 and row["tok/rank_min"] == 0.0
    assert all(r[1] == [None, None, None] for r in results[1:])
