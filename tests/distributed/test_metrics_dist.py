"""torchmetrics over real gloo groups: list states that ranks updated a different number of
times, metrics over a group without the writer, and sync_on_compute=False metrics.

Failure modes (each test failed on the code before its fix):

- a list state with ``dist_reduce_fx=None`` (every ``Retrieval*`` metric, SSIM with
  ``reduction=None``, user metrics) that ranks updated a different number of times: torchmetrics
  gathers it element by element, so gloo aborted the job ("Received data size doesn't match") or
  ranks waited for each other;
- a metric whose process group leaves out global rank 0 (the writer) was computed on its ranks
  but never written, without a word;
- a ``sync_on_compute=False`` metric that rank 0 alone did not update was reported as updated by
  no rank;
- wrapper metrics (``MinMaxMetric``, ``BootStrapper``, ``Running``, ``MultioutputWrapper``,
  ``MultitaskWrapper``) were skipped as never updated, alone or in a collection;
- tensor states of different dtypes across ranks aborted the job in gloo.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from dist_harness import run_ranks

tm = pytest.importorskip("torchmetrics")

pytestmark = pytest.mark.slow

WORLD = 3


def retrieval_batch(rank: int, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One update of a retrieval metric: 6 documents over 3 queries of this rank's own."""
    g = torch.Generator().manual_seed(100 * rank + i)
    indexes = torch.randint(0, 3, (6,), generator=g) + 10 * i + 1000 * rank
    preds = torch.rand(6, generator=g)
    target = torch.randint(0, 2, (6,), generator=g).bool()
    target[0] = True  # every update has a relevant document
    return preds, target, indexes


def image_batch(rank: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7 + 100 * rank + i)
    target = torch.rand(1, 1, 16, 16, generator=g)
    preds = (target + 0.3 * torch.rand(1, 1, 16, 16, generator=g)).clamp(0, 1)
    return preds, target


def rows_batch(rank: int, i: int) -> torch.Tensor:
    """A 2-D tensor whose number of rows depends on the update: elements of varying shapes."""
    g = torch.Generator().manual_seed(50 + 100 * rank + i)
    return torch.rand(1 + (rank + i) % 3, 2, generator=g)


def _per_update_class() -> type:
    class PerUpdate(tm.Metric):
        """Keeps one tensor per update, and its compute() counts them: the list's structure
        (not only its concatenation) must survive the gather."""

        def __init__(self, dtype: torch.dtype = torch.float32, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.add_state("rows", default=[], dist_reduce_fx=None)
            self.cast = dtype

        def update(self, x: torch.Tensor) -> None:
            self.rows.append(x.to(self.cast))

        def compute(self) -> dict[str, torch.Tensor]:
            rows = self.rows
            return {
                "updates": torch.tensor(float(len(rows))),
                "rows": torch.tensor(float(sum(r.shape[0] for r in rows))),
                "total": torch.stack([r.double().sum() for r in rows]).sum(),
                "first": rows[0].double().sum(),  # rank 0's first update: rank-major order
            }

    return PerUpdate


def _summed_list_class() -> type:
    class SummedList(tm.Metric):
        def __init__(self) -> None:
            super().__init__()
            self.add_state("xs", default=[], dist_reduce_fx="sum")

        def update(self, x: torch.Tensor) -> None:
            self.xs.append(x)

        def compute(self) -> torch.Tensor:
            return torch.tensor(0.0)

    return SummedList


COUNTS = {"uneven": [2, 1, 1], "one_empty": [2, 0, 2], "equal": [2, 2, 2], "late": [0, 1, 3]}


def _uneven_lists(rank: int, run_dir: str) -> dict[str, Any]:
    from torchmetrics.image import StructuralSimilarityIndexMeasure
    from torchmetrics.retrieval import RetrievalMAP, RetrievalMRR

    import distlog
    from distlog.errors import LogValueError
    from distlog.metrics import metric_values

    out: dict[str, Any] = {}
    for case, counts in COUNTS.items():
        mrr = RetrievalMRR()
        for i in range(counts[rank]):
            mrr.update(*retrieval_batch(rank, i))
        out[f"mrr/{case}"] = metric_values(mrr, name="mrr")
        out[f"mrr/{case}/kept"] = [len(mrr.preds), len(mrr.target), len(mrr.indexes)]

    # a collection of retrieval metrics, and SSIM per image (its order is checked)
    collection = tm.MetricCollection({"map": RetrievalMAP(), "mrr": RetrievalMRR()})
    ssim = StructuralSimilarityIndexMeasure(reduction=None, data_range=1.0)
    per_update = _per_update_class()()
    for i in range(COUNTS["uneven"][rank]):
        collection.update(*retrieval_batch(rank, i))
        ssim.update(*image_batch(rank, i))
        per_update.update(rows_batch(rank, i))
    out["collection"] = metric_values(collection, prefix="val/")
    out["ssim"] = metric_values(ssim, name="ssim")
    out["per_update"] = metric_values(per_update, name="p")

    # a list that cannot be gathered when uneven: the same error on every rank, then in step
    mixed = _per_update_class()(dtype=torch.float64 if rank == 1 else torch.float32)
    for i in range(COUNTS["uneven"][rank]):
        mixed.update(rows_batch(rank, i))
    summed = _summed_list_class()()
    for _ in range(COUNTS["uneven"][rank]):
        summed.update(torch.ones(2))
    for label, metric in (("mixed", mixed), ("summed", summed)):
        try:
            metric_values(metric, prefix="val/", name=label)
            out[label] = None
        except LogValueError as exc:
            out[label] = str(exc)

    # through the Logger: written by rank 0 as computed
    logger = distlog.Logger(run_dir=run_dir, async_write=False, timeout=60)
    mrr = RetrievalMRR()
    for i in range(COUNTS["one_empty"][rank]):
        mrr.update(*retrieval_batch(rank, i))
    out["log_metrics"] = logger.log_metrics(mrr, prefix="val/", name="mrr")
    out["row"] = logger.flush(1, block=True)
    logger.finish()
    return out


def _reference(cls: type, counts: list[int], make: Any, **kwargs: Any) -> Any:
    """The metric computed in one process over every rank's updates, rank after rank."""
    metric = cls(**kwargs)
    for rank, n in enumerate(counts):
        for i in range(n):
            batch = make(rank, i)
            metric.update(*batch) if isinstance(batch, tuple) else metric.update(batch)
    return metric.compute()


def test_list_states_updated_unevenly_match_one_process(tmp_path):
    from torchmetrics.image import StructuralSimilarityIndexMeasure
    from torchmetrics.retrieval import RetrievalMAP, RetrievalMRR

    import distlog

    results = run_ranks(_uneven_lists, WORLD, str(tmp_path / "run"), timeout=180)

    for case, counts in COUNTS.items():
        want = float(_reference(RetrievalMRR, counts, retrieval_batch))
        # the data of every rank counts: without the last rank's the value differs
        partial = float(_reference(RetrievalMRR, [*counts[:-1], 0], retrieval_batch))
        assert want != pytest.approx(partial), case
        for rank, out in enumerate(results):
            assert out[f"mrr/{case}"] == {"mrr": pytest.approx(want)}, (case, rank)
            assert out[f"mrr/{case}/kept"] == [counts[rank]] * 3, (case, rank)

    uneven = COUNTS["uneven"]
    want_collection = {
        "val/map": float(_reference(RetrievalMAP, uneven, retrieval_batch)),
        "val/mrr": float(_reference(RetrievalMRR, uneven, retrieval_batch)),
    }
    ssim = _reference(
        StructuralSimilarityIndexMeasure, uneven, image_batch, reduction=None, data_range=1.0
    )
    want_ssim = {f"ssim/{i}": float(v) for i, v in enumerate(ssim)}
    assert len(want_ssim) == sum(uneven)
    per_update = _reference(_per_update_class(), uneven, rows_batch)
    want_per_update = {f"p/{k}": float(v) for k, v in per_update.items()}
    assert want_per_update["p/updates"] == sum(uneven)
    for rank, out in enumerate(results):
        assert out["collection"] == pytest.approx(want_collection), rank
        assert out["ssim"] == pytest.approx(want_ssim), rank
        assert out["per_update"] == pytest.approx(want_per_update), rank
        assert "'val/mixed'" in out["mixed"] and "'rows'" in out["mixed"], out["mixed"]
        assert "dtype" in out["mixed"] and "2, 1, 1" in out["mixed"]
        assert "'val/summed'" in out["summed"] and "dist_reduce_fx" in out["summed"]

    want = float(_reference(RetrievalMRR, COUNTS["one_empty"], retrieval_batch))
    assert all(out["log_metrics"] == {"val/mrr": pytest.approx(want)} for out in results)
    assert results[0]["row"] == {"val/mrr": pytest.approx(want)}
    (row,) = distlog.read_metrics(tmp_path / "run")
    assert row["val/mrr"] == pytest.approx(want)


def _failing_list_metric(rank: int) -> list[str]:
    from distlog.errors import LogValueError
    from distlog.metrics import metric_values

    class Failing(tm.Metric):
        def __init__(self) -> None:
            super().__init__()
            self.add_state("xs", default=[], dist_reduce_fx=None)

        def update(self, x: torch.Tensor) -> None:
            self.xs.append(x)

        def compute(self) -> torch.Tensor:
            raise ZeroDivisionError(f"{len(self.xs)} elements")

    errors = []
    failing = Failing()
    for _ in range([3, 0, 1][rank]):
        failing.update(torch.ones(2))
    try:
        metric_values(failing, name="val/failing")
    except LogValueError as exc:
        errors.append(str(exc))
    after = tm.SumMetric()
    after.update(torch.tensor(1.0))
    errors.append(str(metric_values(after, name="sum")))
    return errors


def test_failing_compute_of_an_uneven_list_fails_alike_everywhere():
    results = run_ranks(_failing_list_metric, WORLD, timeout=120)
    for failed, after in results:
        # every rank saw all 4 elements, and raised the same error naming the metric
        assert "'val/failing'" in failed and "ZeroDivisionError: 4 elements" in failed
        assert after == "{'sum': 3.0}"


def _subgroup(rank: int, run_dir: str) -> dict[str, Any]:
    import torch.distributed as dist

    import distlog

    stage = dist.new_group([1, 2])  # every rank creates it; only ranks 1 and 2 use it
    out: dict[str, Any] = {}
    logger = distlog.Logger(run_dir=run_dir, async_write=False, timeout=60)
    if rank in (1, 2):
        mean = tm.MeanMetric(process_group=stage)
        mean.update(torch.tensor([float(rank), 10.0 * rank]))
        out["mean"] = logger.log_metrics(mean, prefix="val/", name="mean")
        total = tm.SumMetric(process_group=stage)
        total.update(torch.tensor(float(rank)))
        logger.log_dict({"val/sum": total, "stage/x": float(rank)})
        local = tm.MaxMetric(process_group=stage, sync_on_compute=False)
        local.update(torch.tensor(100.0 * rank))
        out["local"] = logger.log_metrics(local, name="local_max")
    logger.log_scalar("all/x", float(rank))
    out["row"] = logger.flush(5, block=True)
    # a second round: the values logged since the last flush, nothing older
    if rank in (1, 2):
        mean = tm.MeanMetric(process_group=stage)
        mean.update(torch.tensor(float(rank)))
        logger.log_metrics(mean, prefix="val/", name="mean")
    out["row2"] = logger.flush(6, block=True)
    logger.finish()
    return out


def test_metric_over_a_group_without_the_writer_is_written(tmp_path):
    import distlog

    results = run_ranks(_subgroup, WORLD, str(tmp_path / "run"), timeout=120)
    mean = (1 + 10 + 2 + 20) / 4  # the reference: MeanMetric over ranks 1 and 2's values
    assert results[1]["mean"] == results[2]["mean"] == {"val/mean": pytest.approx(mean)}
    want = {
        "val/mean": mean,
        "val/sum": 3.0,
        "local_max": 100.0,  # sync_on_compute=False: the group's lowest rank's own value
        "stage/x": 1.5,
        "all/x": 1.0,
    }
    assert results[0]["row"] == pytest.approx(want)
    assert results[0]["row2"] == pytest.approx({"val/mean": 1.5})
    rows = distlog.read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [5, 6]
    assert {k: rows[0][k] for k in want} == pytest.approx(want)
    assert rows[1]["val/mean"] == pytest.approx(1.5) and "val/sum" not in rows[1]


def _local_not_on_rank0(rank: int) -> tuple[dict[str, float], list[str]]:
    from distlog.metrics import metric_values

    local = tm.MeanMetric(sync_on_compute=False)
    if rank != 0:
        local.update(torch.tensor(float(rank)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = metric_values(local, name="local")
    return values, [str(w.message) for w in caught]


def test_local_metric_not_updated_on_rank0_warns_truthfully():
    (v0, w0), (v1, w1) = run_ranks(_local_not_on_rank0, 2, timeout=120)
    assert v0 == {} and v1 == {"local": 1.0}
    assert w1 == []
    (message,) = w0
    assert "no rank updated" not in message
    assert "sync_on_compute=False" in message and "'local'" in message
    assert "rank 0" in message and "ranks [1] did" in message


# ---------------------------------------------------------------- wrapper metrics

# Wrappers do not count their own updates, and their states live in the metrics they wrap: the
# empty ranks must be filled in, and uneven lists gathered, in the wrapped metrics.

WRAPPER_COUNTS = {"rank0_empty": [0, 2], "uneven": [3, 1]}
WINDOW = 2


def binary_batch(rank: int, i: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Float scores and int64 targets: an empty rank's torchmetrics placeholder (float) would
    not match the target state, so the empty ranks must be filled in the wrapped metric."""
    g = torch.Generator().manual_seed(300 + 100 * rank + i)
    target = torch.randint(0, 2, (n,), generator=g)
    target[:2] = torch.tensor([0, 1])
    return torch.rand(n, generator=g), target


def _wrapper(name: str) -> Any:
    from torchmetrics.classification import (
        BinaryAccuracy,
        BinaryAUROC,
        BinaryAveragePrecision,
    )
    from torchmetrics.retrieval import RetrievalMRR
    from torchmetrics.wrappers import (
        BootStrapper,
        MinMaxMetric,
        MultioutputWrapper,
        MultitaskWrapper,
        Running,
    )

    return {
        "minmax": lambda: MinMaxMetric(BinaryAUROC()),
        "retrieval": lambda: MinMaxMetric(RetrievalMRR()),  # an uneven list in the wrapped one
        "multitask": lambda: MultitaskWrapper(
            {"auroc": BinaryAUROC(), "ap": BinaryAveragePrecision()}
        ),
        "multioutput": lambda: MultioutputWrapper(BinaryAUROC(), num_outputs=2),
        # Running keeps list states only by reference to lists its reset() clears (torchmetrics
        # computes nothing from them even in one process): a metric with tensor states
        "running": lambda: Running(BinaryAccuracy(), window=WINDOW),
        "bootstrap": lambda: BootStrapper(
            BinaryAUROC(), num_bootstraps=3, sampling_strategy="multinomial", raw=True
        ),
        "collection": lambda: tm.MetricCollection(
            {"mm": MinMaxMetric(BinaryAUROC()), "acc": BinaryAccuracy()}
        ),
    }[name]()


WRAPPERS = ["minmax", "retrieval", "multitask", "multioutput", "running", "bootstrap", "collection"]


def _update_wrapper(name: str, metric: Any, rank: int, i: int) -> None:
    preds, target = binary_batch(rank, i)
    if name == "retrieval":
        metric.update(*retrieval_batch(rank, i))
    elif name == "multitask":
        metric.update({"auroc": preds, "ap": preds}, {"auroc": target, "ap": target})
    elif name == "multioutput":
        other, other_target = binary_batch(rank, i + 50)
        metric.update(torch.stack([preds, other], 1), torch.stack([target, other_target], 1))
    else:
        metric.update(preds, target)


def _seed(case: str, rank: int) -> None:
    """BootStrapper samples with the global generator: the reference replays each rank."""
    torch.manual_seed(1000 * list(WRAPPER_COUNTS).index(case) + rank)


def _updated_wrapper(name: str, case: str, rank: int) -> Any:
    _seed(case, rank)
    metric = _wrapper(name)
    for i in range(WRAPPER_COUNTS[case][rank]):
        _update_wrapper(name, metric, rank, i)
    return metric


def _wrappers(rank: int) -> dict[str, Any]:
    from distlog.metrics import metric_values

    out: dict[str, Any] = {}
    for case in WRAPPER_COUNTS:
        for name in WRAPPERS:
            metric = _updated_wrapper(name, case, rank)
            out[f"{name}/{case}"] = metric_values(metric, prefix="val/", name=name)
    return out


def _wrapper_reference(name: str, case: str) -> dict[str, float]:
    """The wrapper computed in one process over every rank's data (Running: over each rank's
    last WINDOW updates, as torchmetrics' Running does over DDP)."""
    counts = WRAPPER_COUNTS[case]
    metric = _wrapper(name)
    if name == "bootstrap":  # each copy over every rank's resampled data
        for rank in range(len(counts)):
            replayed = _updated_wrapper(name, case, rank)
            for mine, theirs in zip(metric.metrics, replayed.metrics, strict=True):
                mine.merge_state(theirs)
    else:
        if name == "running":  # the metric it wraps, over every rank's window
            metric = metric.base_metric
        for rank, n in enumerate(counts):
            first = max(0, n - WINDOW) if name == "running" else 0
            for i in range(first, n):
                _update_wrapper(name, metric, rank, i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # merged states: "compute before update"
        value = metric.compute()
    if not isinstance(value, dict):
        value = {"": value}
    flat: dict[str, float] = {}
    for key, item in value.items():
        prefix = "val/" if name == "collection" else f"val/{name}" + (f"/{key}" if key else "")
        if item.numel() == 1:
            flat[prefix + (key if name == "collection" else "")] = float(item)
        else:
            flat.update({f"{prefix}/{j}": float(v) for j, v in enumerate(item)})
    return flat


def test_wrappers_updated_on_some_ranks_match_one_process():
    results = run_ranks(_wrappers, 2, timeout=180)
    for case in WRAPPER_COUNTS:
        for name in WRAPPERS:
            want = _wrapper_reference(name, case)
            assert want, (name, case)
            for rank, out in enumerate(results):
                assert out[f"{name}/{case}"] == pytest.approx(want), (name, case, rank)
    # the collection's wrapper member is written next to the plain one
    assert set(results[0]["collection/uneven"]) == {"val/raw", "val/max", "val/min", "val/acc"}


def _layout_errors(rank: int) -> dict[str, Any]:
    from torchmetrics.classification import BinaryAUROC, MulticlassConfusionMatrix
    from torchmetrics.wrappers import MinMaxMetric, MultitaskWrapper

    from distlog.errors import LogValueError
    from distlog.metrics import metric_values

    mean = tm.MeanMetric()
    wrapped = MinMaxMetric(tm.MeanMetric())
    if rank == 1:
        mean.set_dtype(torch.float64)
        wrapped._base_metric.set_dtype(torch.float64)  # the wrapper's set_dtype leaves it
    cm = MulticlassConfusionMatrix(num_classes=2 + rank)
    tasks = {"a": BinaryAUROC()} if rank == 0 else {"a": BinaryAUROC(), "b": BinaryAUROC()}
    multitask = MultitaskWrapper(tasks)
    mean.update(torch.tensor([1.0, 2.0]))
    wrapped.update(torch.tensor([1.0, 2.0]))
    cm.update(torch.tensor([0, 1]), torch.tensor([1, 1]))
    preds, target = binary_batch(rank, 0)
    multitask.update({k: preds for k in tasks}, {k: target for k in tasks})
    out: dict[str, Any] = {}
    for label, metric in (("mean", mean), ("wrapped", wrapped), ("cm", cm), ("tasks", multitask)):
        try:
            out[label] = metric_values(metric, prefix="val/", name=label)
        except LogValueError as exc:
            out[label] = str(exc)
    after = tm.SumMetric()
    after.update(torch.tensor(float(rank + 1)))
    out["after"] = metric_values(after, name="sum")
    return out


def test_states_that_differ_across_ranks_raise_alike_before_any_gather():
    results = run_ranks(_layout_errors, 2, timeout=120)
    for out in results:
        assert out["mean"].startswith("metric 'val/mean' has state 'mean_value' of different")
        assert "rank 0: float32 [], rank 1: float64 []" in out["mean"]
        assert "'val/wrapped'" in out["wrapped"] and "'_base_metric.mean_value'" in out["wrapped"]
        assert "'confmat'" in out["cm"] and "[2, 2]" in out["cm"] and "[3, 3]" in out["cm"]
        assert "'val/tasks' holds different states" in out["tasks"]
        assert out["after"] == {"sum": 3.0}
    assert results[0] == results[1]
