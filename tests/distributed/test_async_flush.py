"""``Logger(async_flush=True)``: the same rows as a blocking flush, errors one flush later but
named by their log step, and nothing lost at ``finish``."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from dist_harness import run_ranks
from reference import assert_rows_close, reference_row

import distlog

pytestmark = pytest.mark.slow

KEYS = [("loss", "mean"), ("n", "sum"), ("lo", "min"), ("hi", "max"), ("lr", "last")]


def scenario(seed: int, ranks: int, flushes: int) -> list[list[list[tuple]]]:
    """Per flush, per rank: samples (key, value, reduce, weight); random key subsets."""
    rng = random.Random(seed)
    out = []
    for _ in range(flushes):
        per_rank = []
        for _rank in range(ranks):
            samples = []
            for key, red in rng.sample(KEYS, rng.randint(0, len(KEYS))):
                for _ in range(rng.randint(1, 3)):
                    w = float(rng.randint(0, 3)) if red == "mean" else 1.0
                    samples.append((key, rng.uniform(-5, 5), red, w))
            per_rank.append(samples)
        out.append(per_rank)
    return out


def play(rank: int, run_root: str, plan) -> None:
    for async_flush in (False, True):
        run_dir = Path(run_root) / ("async" if async_flush else "blocking")
        logger = distlog.Logger(run_dir=run_dir, async_write=False, async_flush=async_flush)
        for step, per_rank in enumerate(plan):
            for key, value, red, w in per_rank[rank]:
                logger.log_scalar(key, value, reduce=red, weight=w if red == "mean" else None)
            logger.log_scalar("spread/x", float(rank * 10 + step), spread=True)
            logger.flush(step)
        logger.finish()  # waits for the last exchange: its row is written


def test_async_rows_equal_blocking_rows_and_the_reference(tmp_path):
    plan = scenario(7, 3, 6)
    run_ranks(play, 3, str(tmp_path), plan, timeout=180)
    blocking = distlog.read_metrics(tmp_path / "blocking")
    async_rows = distlog.read_metrics(tmp_path / "async")
    strip = lambda row: {k: v for k, v in row.items() if k != "time"}  # noqa: E731
    assert [strip(r) for r in async_rows] == [strip(r) for r in blocking]
    assert [r["step"] for r in async_rows] == list(range(6))
    for row, per_rank in zip(async_rows, plan, strict=True):
        want = reference_row(per_rank)
        got = {k: v for k, v in row.items() if not k.startswith(("spread/", "step", "time"))}
        assert_rows_close(got, want)
        step = row["step"]
        assert row["spread/x/rank_argmax"] == 2.0  # rank 2 logs the largest value
        assert row["spread/x/rank_min"] == step and row["spread/x/rank_max"] == 20 + step


def conflict(rank: int, run_dir: str):
    logger = distlog.Logger(run_dir=run_dir, async_write=False, async_flush=True)
    logger.log_scalar("ok", 1.0)
    logger.log_scalar("k", 1.0, reduce="mean" if rank == 0 else "sum")
    logger.flush(0)  # returns at once; the conflict is found in the background
    logger.log_scalar("ok", 2.0)
    try:
        logger.flush(1)
    except distlog.KeyConflictError as exc:
        message = str(exc)
    else:
        message = "no error"
    logger.finish()
    return message


def test_a_key_conflict_is_raised_at_the_next_flush_naming_its_step(tmp_path):
    messages = run_ranks(conflict, 2, str(tmp_path), timeout=120)
    for message in messages:
        assert "at log step 0" in message and "k: reduce='mean'" in message, message
    rows = distlog.read_metrics(tmp_path)
    # flush 0's row was written with the first spec kept; flush 1 was taken before the error
    # was raised (as a blocking flush raises its conflict after its row), so every rank made
    # the same flushes
    assert [(r["step"], r["ok"]) for r in rows] == [(0, 1.0), (1, 2.0)]


def other_schedule(rank: int, run_dir: str):
    logger = distlog.Logger(
        run_dir=run_dir, async_write=False, async_flush=True, timeout=5.0, handle_signals=False
    )
    every = 2 if rank == 0 else 3
    for step in range(12):
        logger.log_scalar("x", float(step))
        if step % every == every - 1:
            try:
                logger.flush(step)
            except distlog.RankDivergenceError as exc:
                logger.finish(exit_code=1)
                return step, str(exc)
    try:
        logger.finish()
    except distlog.RankDivergenceError as exc:
        return "finish", str(exc)
    return None, "no error"


def test_divergence_surfaces_at_the_next_flush_with_its_step(tmp_path):
    results = run_ranks(other_schedule, 2, str(tmp_path), timeout=120)
    for where, message in results:
        assert where is not None, message
        assert "rank 0: flush #0 at step 1" in message, message
        assert "rank 1: flush #0 at step 2" in message, message
    run = distlog.read_run_info(tmp_path)
    assert run["exit_code"] == 1


def media_then_failed_flush(rank: int, run_root: str):
    """Rank 0 queues media (its own: no communication) and a precomputed value for a flush
    whose exchange fails (the ranks disagree on its step), then finishes as a crashed job."""
    out = {}
    for async_flush in (False, True):
        run_dir = Path(run_root) / ("async" if async_flush else "blocking")
        logger = distlog.Logger(
            run_dir=run_dir, async_write=False, async_flush=async_flush, timeout=10.0,
            handle_signals=False,
        )  # fmt: skip
        logger.log_scalar("loss", 1.0)
        logger.flush(0)
        logger.log_images(torch.full((1, 3, 4, 4), 0.5), desc="val/samples")
        logger.log_histogram(torch.arange(10.0), desc="weights")
        logger.log_precomputed({"epoch": 3.0})
        try:
            logger.flush(1 if rank == 0 else 2)
            logger.wait()  # the asynchronous exchange's error surfaces here
        except distlog.RankDivergenceError as exc:
            out[async_flush] = str(exc)
        logger.finish(exit_code=1)
    return out


def test_media_of_a_flush_whose_exchange_failed_are_written_at_its_step(tmp_path):
    """With async_flush the flush hands its media to the exchange thread; when the exchange
    fails they come back and finish() writes them, as after a failed blocking flush (they
    were dropped without a word), at the step of the flush they were logged for."""
    results = run_ranks(media_then_failed_flush, 2, str(tmp_path), timeout=180)
    for per_mode in results:
        assert set(per_mode) == {False, True}, per_mode
    for mode in ("blocking", "async"):
        rows = list(distlog.runlog.iter_rows(tmp_path / mode))  # media rows too
        assert [(r["step"], r.get("loss")) for r in rows if "loss" in r] == [(0, 1.0)], rows
        media = {k: r["step"] for r in rows for k in r.get("media", {})}
        assert media == {"val/samples": 1, "weights": 1}, (mode, rows)
        assert [r["epoch"] for r in rows if "epoch" in r] == [3.0], (mode, rows)
        assert (tmp_path / mode / "media" / "val" / "samples" / "step00000001_0.png").is_file()


def steps_apart_once(rank: int, run_dir: str, async_flush: bool) -> list:
    logger = distlog.Logger(
        run_dir=run_dir, timeout=10, async_flush=async_flush, handle_signals=False
    )
    seen: list = []
    for i in range(8):
        logger.log_scalar("x", 1.0, reduce="sum")
        step = (2 if rank == 1 else 1) if i == 1 else None  # one flush at mismatched steps
        try:
            logger.flush(step)
            seen.append(logger.step)
        except distlog.RankDivergenceError:
            seen.append("diverged")
    logger.finish()
    return seen


@pytest.mark.parametrize("async_flush", [False, True], ids=["blocking", "async"])
def test_one_flush_at_mismatched_steps_fails_once_and_the_default_steps_meet_again(
    tmp_path, async_flush
):
    """The failed flush's step was kept with async_flush: rank 0 at 1, rank 1 at 2, so every
    later flush() with no step diverged again, finish() failed, and 2 of 16 samples were written
    (found by a hostile-test pass). Now, as with a blocking flush, the step goes back."""
    seen = run_ranks(steps_apart_once, 2, str(tmp_path), async_flush, timeout=120)
    for s in seen:
        assert s.count("diverged") == 1, seen
    after = [s[s.index("diverged") + 1 :] for s in seen]
    assert after[0] == after[1] == list(range(1, len(after[0]) + 1)), seen  # in step again
    rows = distlog.read_metrics(tmp_path)
    assert sum(r["x"] for r in rows) == 16.0  # 8 samples a rank, none lost
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows})


def resumed_under_warnings_as_errors(rank: int, run_dir: str) -> list:
    import time
    import warnings

    warnings.filterwarnings("error", message="distlog: step")  # as -W error makes it
    logger = distlog.Logger(
        run_dir=run_dir, timeout=10, async_flush=True, resume=True, handle_signals=False
    )
    seen: list = []
    for step in (3, 6, 7):  # 3 was written by the first run: its row is skipped with a warning
        logger.log_scalar("x", float(step))
        start = time.monotonic()
        try:
            logger.flush(step)
            seen.append("returned")
        except UserWarning as exc:
            seen.append(f"warning: {exc}")
        assert time.monotonic() - start < 8
    logger.finish()
    return seen


def test_an_error_handing_on_an_async_row_is_raised_at_the_next_flush_not_a_hang(tmp_path):
    """The row hand-off ran on the exchange thread outside its error handling: an exception
    there (a resumed run's 'step is at or below' warning under -W error) ended the thread, and
    rank 0's next flush() waited for it forever, whatever the timeout (6 of 6 runs)."""
    first = distlog.Logger(run_dir=tmp_path, async_write=False, handle_signals=False)
    for step in range(6):  # the run a restarted job resumes: steps 0-5 written
        first.log_scalar("x", float(step))
        first.flush(step)
    first.finish()
    seen = run_ranks(resumed_under_warnings_as_errors, 2, str(tmp_path), timeout=120)
    assert seen[1] == ["returned"] * 3  # only the writer hands rows on
    assert seen[0][0] == "returned" and seen[0][2] == "returned", seen
    assert seen[0][1].startswith("warning: distlog: step 3 is at or below step 5"), seen
    assert [r["step"] for r in distlog.read_metrics(tmp_path)] == [0, 1, 2, 3, 4, 5, 6, 7]
