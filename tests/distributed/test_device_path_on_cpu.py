"""The buffered-tensor path (what CUDA tensors take) stays tested on CPU-only CI.

CPU tensors are folded into the host accumulators at the call (``Aggregator.fold_host_tensors``),
so the random scenarios of test_aggregation_dist.py no longer reach ``_add_tensor_samples`` on
CPU. Here the same scenarios run with the fold turned off, so every tensor kind is buffered as a
device tensor would be, and the flush uses the protocol of device payloads (a control
all_gather, then reduces to rank 0) instead of the fused all_reduce of host payloads. The rows
must still match the reference built from raw inputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from dist_harness import RankPool
from hypothesis import HealthCheck, given, settings
from reference import assert_rows_close
from test_aggregation_dist import make_value, reference_for, scenarios

import distlog

pytestmark = pytest.mark.slow  # every test here starts several processes


def play_buffered(rank: int, scenario, run_root: str, fold: bool):
    # Unfolded, CPU tensors are buffered as device tensors are, and the flush uses the protocol
    # of device payloads: a header all_gather, then reduce.
    options = distlog.ExchangeOptions(fold_host_tensors=fold, protocol="auto" if fold else "device")
    logger = distlog.Logger(
        run_dir=Path(run_root) / "run", async_write=False, nonfinite="ignore", exchange=options
    )
    rows, buffered = [], 0
    for step, per_rank in enumerate(scenario):
        for key, value, red, weight, kind in per_rank[rank]:
            logger.log_scalar(key, make_value(value, kind), reduce=red, weight=weight)
        buffered += logger.aggregator.buffer.tensor_samples  # "last" tensors are kept apart
        rows.append(logger.flush(step, block=True))
    logger.finish()
    return rows, buffered


@pytest.fixture(scope="module")
def pool2():
    pool = RankPool(2)
    yield pool
    pool.close()


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(scenario=scenarios(2))
def test_buffered_tensor_path_matches_reference(pool2, scenario):
    with tempfile.TemporaryDirectory() as tmp:
        results = pool2.run(play_buffered, scenario, tmp, False)
    rows = results[0][0]
    for step, per_rank in enumerate(scenario):
        assert_rows_close(rows[step], reference_for(per_rank))
    tensors_logged = sum(
        1
        for per_rank in scenario
        for samples in per_rank
        for _, _, red, _, kind in samples
        if kind not in ("float", "int", "numpy") and red != "last"
    )
    assert sum(r[1] for r in results) == tensors_logged  # every tensor sample took the device path


def test_cpu_tensors_are_folded_by_default(pool2):
    scenario = [
        [
            [("loss", 1.5, "mean", None, "f32"), ("n", 3.0, "sum", None, "i64")],
            [("loss", 2.5, "mean", 2, "bf16"), ("lr", 0.5, "last", None, "f64")],
        ]
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folded = pool2.run(play_buffered, scenario, tmp, True)
    with tempfile.TemporaryDirectory() as tmp:
        buffered = pool2.run(play_buffered, scenario, tmp, False)
    assert [r[1] for r in folded] == [0, 0]  # nothing buffered as a tensor
    assert [r[1] for r in buffered] == [2, 1]  # rank 1's "last" tensor is kept apart
    assert_rows_close(folded[0][0][0], reference_for(scenario[0]))
    assert_rows_close(buffered[0][0][0], folded[0][0][0])
    assert torch.tensor(1.0).is_cpu  # the premise: these are host tensors
