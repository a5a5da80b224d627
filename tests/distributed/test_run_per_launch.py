"""A run per launch across real gloo ranks: every rank's ``logger.run_dir`` names the directory
rank 0 writes (a new version when the given one is taken), and another tool's directory is
refused on every rank at construction, not left as a hang at the first flush."""

from __future__ import annotations

from pathlib import Path

import pytest
from dist_harness import run_ranks

import distlog

pytestmark = pytest.mark.slow


def _launch(rank: int, run_dir: str, value: float) -> tuple[str, str | None]:
    logger = distlog.Logger(run_dir=run_dir, timeout=60)
    logger.log_scalar("x", value + rank)
    logger.flush(step=1)
    logger.finish()
    return str(logger.run_dir), logger.run_id


def _foreign(rank: int, run_dir: str) -> str:
    try:
        distlog.Logger(run_dir=run_dir, timeout=60)
    except distlog.RunDirError as exc:
        return str(exc)
    return "no error"


def test_two_launches_are_two_runs_and_every_rank_agrees(tmp_path):
    run_dir = tmp_path / "exp"
    first = run_ranks(_launch, 2, str(run_dir), 1.0)
    second = run_ranks(_launch, 2, str(run_dir), 10.0)
    assert {d for d, _ in first} == {str(run_dir)}
    assert {d for d, _ in second} == {str(tmp_path / "exp-2")}  # every rank, not only rank 0
    assert first[0][1] != second[0][1]
    assert distlog.read_metrics(run_dir)[0]["x"] == 1.5  # mean over both ranks
    rows = distlog.read_metrics(tmp_path / "exp-2")
    assert [r["step"] for r in rows] == [1] and rows[0]["x"] == 10.5


def test_another_tools_directory_is_refused_on_every_rank(tmp_path):
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "run.json").write_text('{"tool": "not distlog"}')
    errors = run_ranks(_foreign, 2, str(foreign), timeout=90)
    assert all("not a distlog run file" in e and str(foreign) in e for e in errors), errors
    assert not (Path(foreign) / "metrics.jsonl").exists()
