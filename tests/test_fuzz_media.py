"""Fuzz the media calls with hypothesis: random arrays, dtypes, shapes, ranges, captions, bins
and tables give a media record that reads back, or a clear DistlogError naming the ``desc``.

The conversion rules themselves are tested in ``test_media.py``; here the point is the contract
at the front door: no other exception, no corrupted ``metrics.jsonl``, every file the record
names exists inside the run directory and decodes.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import distlog

PIL = pytest.importorskip("PIL.Image")

DTYPES = ["uint8", "float32", "float64", "float16", "int64", "bool", "complex64", "int8"]
DTYPES += ["uint16", "uint32", "uint64"]  # torch has no min/max for these: the rule must not care
DIMS = st.sampled_from([0, 1, 2, 3, 4, 5])
FILL = st.sampled_from([0.0, 0.5, 1.0, -1.0, 255.0, 300.0, -7.0, math.nan, math.inf])


@st.composite
def arrays(draw, min_rank: int = 1, max_rank: int = 5):
    shape = tuple(draw(st.lists(DIMS, min_size=min_rank, max_size=max_rank)))
    dtype = draw(st.sampled_from(DTYPES))
    fill = draw(FILL)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    with np.errstate(all="ignore"):
        base = rng.uniform(0, 1, size=shape) * (fill if math.isfinite(fill) else 1.0)
        if not math.isfinite(fill) and base.size:
            base.flat[0] = fill
        arr = base.astype(dtype)
    return torch.from_numpy(np.array(arr)) if draw(st.booleans()) and dtype != "bool" else arr


@st.composite
def images(draw):
    """Mostly the layouts people log ((H, W), (H, W, C), (C, H, W), (B, C, H, W)), some noise."""
    if draw(st.integers(0, 9)) < 3:
        return draw(arrays(2, 4))
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    c, b = draw(st.sampled_from([1, 3, 4])), draw(st.integers(1, 3))
    shape = draw(st.sampled_from([(h, w), (h, w, c), (c, h, w), (b, c, h, w)]))
    dtype = draw(st.sampled_from(["uint8", "float32", "float64", "float16"]))
    high = 255.0 if dtype == "uint8" else draw(st.sampled_from([1.0, 1.0, 2.0]))
    low = draw(st.sampled_from([0.0, 0.0, -1.0])) if dtype != "uint8" else 0.0
    arr = np.random.default_rng(draw(st.integers(0, 999))).uniform(low, high, shape).astype(dtype)
    return torch.from_numpy(arr) if draw(st.booleans()) else arr


captions = st.one_of(st.none(), st.text(max_size=5), st.lists(st.text(max_size=3), max_size=3))
# numpy scalars: some become Python numbers, the rest (JSON cannot hold them) a clear error
numpy_cells = st.sampled_from(
    [
        np.float32(0.5),
        np.int16(-3),
        np.bool_(True),
        np.str_("s"),
        np.datetime64("2020-01-01"),
        np.timedelta64(3, "s"),
        np.bytes_(b"x"),
        np.complex64(1j),
    ]
)
cells = st.one_of(
    st.integers(), st.floats(), st.text(max_size=4), st.none(), st.booleans(), numpy_cells
)

image_call = st.tuples(
    st.just("images"), st.one_of(images(), images(), st.lists(images(), max_size=3)), captions
)
histogram_call = st.tuples(st.just("histogram"), arrays(0, 3), st.integers(-2, 700))
table_call = st.tuples(
    st.just("table"),
    st.lists(st.text(min_size=1, max_size=4), max_size=3),
    st.lists(st.lists(cells, max_size=3), max_size=3),
)
calls = st.lists(st.one_of(image_call, histogram_call, table_call), min_size=1, max_size=4)


def call(logger: distlog.Logger, desc: str, spec: tuple) -> None:
    kind = spec[0]
    if kind == "images":
        logger.log_images(spec[1], caption=spec[2], desc=desc)
    elif kind == "histogram":
        logger.log_histogram(spec[1], desc=desc, bins=spec[2])
    else:
        logger.log_table(spec[1], spec[2], desc=desc)


def check_record(run_dir: Path, record: dict) -> None:
    for path in _paths(record):
        file = (run_dir / path).resolve()
        assert file.is_relative_to(run_dir.resolve()) and file.is_file(), path
        if file.suffix == ".png":
            with PIL.open(file) as img:
                img.load()
        elif file.suffix == ".json":
            json.loads(file.read_text())


def _paths(node) -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in ([v] if k == "path" else _paths(v))]
    if isinstance(node, list):
        return [p for v in node for p in _paths(v)]
    return []


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(specs=calls)
def test_random_media_give_a_readable_record_or_a_clear_error(specs):
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_dir = Path(tmp) / "run"
        logger = distlog.Logger(run_dir=run_dir, async_write=False, handle_signals=False)
        accepted = []
        for i, spec in enumerate(specs):
            desc = f"m{i}/{spec[0]}"
            try:
                call(logger, desc, spec)
            except distlog.DistlogError as exc:
                assert repr(desc) in str(exc), (spec, str(exc))  # the error names the call
                continue
            accepted.append(desc)
        logger.log_scalar("x", 1.0)
        logger.flush(0)
        logger.finish()
        rows = list(distlog.runlog.iter_rows(run_dir))  # the file parses, line by line
        media = {k: v for row in rows for k, v in row.get("media", {}).items()}
        assert sorted(media) == sorted(accepted), (sorted(media), accepted)
        for record in media.values():
            check_record(run_dir, record)
        assert [r["x"] for r in rows if "x" in r] == [1.0]
