"""One tail scan of metrics.jsonl (runlog.lines_from_end) behind last_step, torn_tail and the
JSONL sink's repair; one rule for non-finite values and one for showing numbers."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import distlog
from distlog import runlog
from distlog.media import Histogram
from distlog.media.files import save_media
from distlog.sinks.console import format_value
from distlog.sinks.jsonl import JsonlSink


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b"", b"a", b"bc", b"\n", b"\n\n", b"{}"]), max_size=12),
    st.integers(1, 7),
)
def test_lines_from_end_matches_a_plain_split(parts: list[bytes], block: int) -> None:
    data = b"".join(parts)
    want, offset = [], 0
    for line in data.split(b"\n"):
        want.append((offset, line))
        offset += len(line) + 1
    got = list(runlog.lines_from_end(io.BytesIO(data), block=block))
    assert got == (list(reversed(want)) if data else [])


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / runlog.METRICS_FILE
    path.write_text(text)
    return path


def test_torn_tail_last_step_and_the_sink_agree(tmp_path: Path) -> None:
    rows = "".join(json.dumps({"step": s, "x": s}) + "\n" for s in range(3))
    path = _write(tmp_path, rows + '{"step": 3, "x"')
    assert runlog.torn_tail(tmp_path) == len(rows)
    assert runlog.last_step(tmp_path) == 2
    with pytest.warns(UserWarning, match="removed its 15 bytes"):
        JsonlSink(tmp_path).close()
    assert path.read_text() == rows and runlog.torn_tail(tmp_path) is None
    assert runlog.torn_tail(tmp_path / "missing") is None


def test_the_cli_reports_the_same_torn_tail(tmp_path: Path) -> None:
    from distlog.cli import load_run

    _write(tmp_path, json.dumps({"step": 0, "x": 1.0}) + "\n" + '{"step": 1')
    assert load_run(tmp_path).torn_tail
    _write(tmp_path, json.dumps({"step": 0, "x": 1.0}) + "\n")
    assert not load_run(tmp_path).torn_tail


def test_the_cli_reads_run_json_with_the_runlog_reader(tmp_path: Path) -> None:
    from distlog.cli import load_run

    log = distlog.Logger(run_dir=tmp_path, handle_signals=False)
    log.log_scalar("x", 1.0)
    log.finish()
    assert load_run(tmp_path).meta == distlog.read_run_info(tmp_path)
    (tmp_path / runlog.RUN_FILE).write_text("{torn")
    assert load_run(tmp_path).meta == {"run.json": "unreadable"}


def test_media_files_encode_non_finite_values_like_rows(tmp_path: Path) -> None:
    item = Histogram(counts=np.array([1, 2]), edges=np.array([-math.inf, 0.0, math.inf]))
    record = save_media(item, tmp_path, "h", 0)
    assert record["edges"] == [runlog.encode_value(-math.inf), 0.0, runlog.encode_value(math.inf)]


@pytest.mark.parametrize(
    ("value", "digits", "shown"),
    [(3.0, 4, "3"), (0.123456789, 4, "0.1235"), (0.123456789, 6, "0.123457"),
     (math.nan, 6, "nan"), (-math.inf, 4, "-inf"), (1e12, 6, "1e+12")],
)  # fmt: skip
def test_one_number_format(value: float, digits: int, shown: str) -> None:
    assert format_value(value, digits) == shown


def test_the_tensorboard_mixin_sits_beside_the_wandb_one() -> None:
    from distlog import mixins, tensorboard_mixin

    assert mixins.TensorBoardLoggerMixin is tensorboard_mixin.TensorBoardLoggerMixin
    assert distlog.TensorBoardLoggerMixin is tensorboard_mixin.TensorBoardLoggerMixin
