"""torchmetrics support: values match torchmetrics on all the data, bad cases are clear, no hang."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

tm = pytest.importorskip("torchmetrics")
from dist_harness import run_ranks  # noqa: E402
from torchmetrics.classification import (  # noqa: E402
    BinaryAccuracy,
    BinaryAUROC,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
)

import distlog  # noqa: E402
from distlog.errors import LogTypeError, LogValueError  # noqa: E402
from distlog.metrics import is_metric, metric_values  # noqa: E402

NUM_CLASSES = 3


class PerClassStats(tm.Metric):
    """A user metric whose compute() returns a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor) -> None:
        self.total += values.sum()
        self.count += values.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        return {"total": self.total, "mean": self.total / self.count}


class Broken(tm.Metric):
    def __init__(self) -> None:
        super().__init__()
        self.add_state("n", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, x: torch.Tensor) -> None:
        self.n += x.numel()

    def compute(self) -> torch.Tensor:
        raise ZeroDivisionError("no positives to divide by")


def batch(seed: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    preds = torch.rand(n, NUM_CLASSES, generator=g).softmax(-1)
    target = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return preds, target


def reference(metric_cls, batches, **kwargs):
    """The metric computed in one process over the data of every rank."""
    metric = metric_cls(**kwargs)
    for b in batches:
        metric.update(*b)
    return metric.compute()


# ---------------------------------------------------------------- one process


def test_is_metric():
    assert is_metric(tm.MeanMetric()) and is_metric(tm.MetricCollection([tm.MeanMetric()]))
    assert not is_metric(torch.tensor(1.0)) and not is_metric(1.0)


def test_single_metric_scalar_named_by_prefix_and_name():
    metric = tm.MeanMetric()
    data = torch.arange(10.0)
    metric.update(data)
    assert metric_values(metric, prefix="val/") == {"val/MeanMetric": pytest.approx(data.mean())}
    assert metric_values(metric, name="loss") == {"loss": pytest.approx(data.mean())}


def test_vector_and_matrix_results_get_index_keys():
    preds, target = batch(0)
    per_class = MulticlassAccuracy(num_classes=NUM_CLASSES, average=None)
    per_class.update(preds, target)
    want = reference(MulticlassAccuracy, [(preds, target)], num_classes=NUM_CLASSES, average=None)
    got = metric_values(per_class, name="acc")
    assert got == {f"acc/{i}": pytest.approx(float(want[i])) for i in range(NUM_CLASSES)}

    confusion = MulticlassConfusionMatrix(num_classes=NUM_CLASSES)
    confusion.update(preds, target)
    matrix = reference(MulticlassConfusionMatrix, [(preds, target)], num_classes=NUM_CLASSES)
    got = metric_values(confusion, prefix="val/", name="cm")
    assert got == {
        f"val/cm/{i}/{j}": float(matrix[i, j])
        for i in range(NUM_CLASSES)
        for j in range(NUM_CLASSES)
    }


def test_collection_uses_torchmetrics_names_and_flattens_dicts():
    preds, target = batch(1)
    collection = tm.MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes=NUM_CLASSES),
            "auroc": MulticlassAUROC(num_classes=NUM_CLASSES),
        },
        prefix="val_",
    )
    collection.update(preds, target)
    got = metric_values(collection, prefix="eval/")
    want = {f"eval/{k}": float(v) for k, v in collection.compute().items()}
    assert got == pytest.approx(want) and set(got) == {"eval/val_acc", "eval/val_auroc"}

    stats = tm.MetricCollection([PerClassStats(), tm.SumMetric()])
    stats.update(torch.tensor([1.0, 2.0, 3.0]))
    got = metric_values(stats)
    assert got == pytest.approx({k: float(v) for k, v in stats.compute().items()})
    assert got == pytest.approx({"total": 6.0, "mean": 2.0, "SumMetric": 6.0})


def test_dict_result_of_single_metric():
    metric = PerClassStats()
    metric.update(torch.tensor([2.0, 4.0]))
    assert metric_values(metric, prefix="x/") == {
        "x/PerClassStats/total": 6.0,
        "x/PerClassStats/mean": 3.0,
    }


def test_compute_failure_names_the_metric():
    metric = Broken()
    metric.update(torch.ones(2))
    with pytest.raises(LogValueError, match=r"'val/bad'.*Broken.*ZeroDivisionError"):
        metric_values(metric, prefix="val/", name="bad")
    collection = tm.MetricCollection({"ok": tm.SumMetric(), "broken": Broken()})
    collection.update(torch.ones(2))
    with pytest.raises(LogValueError, match="'broken'"):
        metric_values(collection)


def test_bad_objects_and_results():
    with pytest.raises(LogTypeError, match="float"):
        metric_values(0.5, name="val/acc")
    roc = tm.classification.BinaryROC()
    roc.update(torch.rand(8), torch.randint(0, 2, (8,)))
    with pytest.raises(LogTypeError, match="'BinaryROC'.*tuple"):
        metric_values(roc)
    big = MulticlassConfusionMatrix(num_classes=40)
    big.update(torch.randint(0, 40, (50,)), torch.randint(0, 40, (50,)))
    with pytest.raises(LogValueError, match=r"'cm'.*\[40, 40\].*max_elements=1024"):
        metric_values(big, name="cm")


def test_not_updated_metric_is_skipped_with_a_warning():
    metric = MulticlassAUROC(num_classes=NUM_CLASSES)
    with pytest.warns(UserWarning, match="no rank updated.*MulticlassAUROC"):
        assert metric_values(metric) == {}
    collection = tm.MetricCollection({"seen": tm.SumMetric(), "unseen": tm.MeanMetric()})
    collection["seen"].update(torch.tensor(3.0))
    with pytest.warns(UserWarning, match="unseen"):
        assert metric_values(collection) == {"seen": 3.0}


def test_nan_result_passes_through():
    metric = tm.MeanMetric(nan_strategy="ignore")
    metric.update(torch.tensor([math.nan]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (value,) = metric_values(metric).values()
    assert math.isnan(value)


def test_wrapper_metrics_are_logged():
    """Wrappers do not count their own updates: they were skipped as never updated."""
    from copy import deepcopy

    from torchmetrics.wrappers import (
        BootStrapper,
        MinMaxMetric,
        MultioutputWrapper,
        MultitaskWrapper,
        Running,
    )

    preds, target = batch(6)
    binary = (preds[:, 0], (target == 0).long())
    metrics = {
        "minmax": MinMaxMetric(BinaryAUROC()),
        "boot": BootStrapper(BinaryAUROC(), num_bootstraps=3, sampling_strategy="multinomial"),
        "running": Running(tm.SumMetric(), window=2),
        "outputs": MultioutputWrapper(tm.MeanMetric(), num_outputs=2),
        "tasks": MultitaskWrapper({"auroc": BinaryAUROC(), "acc": BinaryAccuracy()}),
    }
    metrics["minmax"].update(*binary)
    metrics["boot"].update(*binary)
    for x in (1.0, 2.0, 4.0):
        metrics["running"].update(torch.tensor(x))
    metrics["outputs"].update(preds[:, :2])
    metrics["tasks"].update(
        dict.fromkeys(("auroc", "acc"), binary[0]), dict.fromkeys(("auroc", "acc"), binary[1])
    )
    for name, metric in metrics.items():
        value = deepcopy(metric).compute()
        value = value if isinstance(value, dict) else {"": value}
        want = {}
        for key, item in value.items():
            shown = f"val/{name}" + (f"/{key}" if key else "")
            if item.numel() == 1:
                want[shown] = float(item)
            else:
                want.update({f"{shown}/{i}": float(v) for i, v in enumerate(item)})
        assert metric_values(metric, prefix="val/", name=name) == pytest.approx(want), name
    assert metric_values(metrics["running"], name="r") == {"r": 6.0}  # the last two updates

    collection = tm.MetricCollection({"mm": MinMaxMetric(BinaryAUROC()), "acc": BinaryAccuracy()})
    collection.update(*binary)
    auroc = float(reference(BinaryAUROC, [binary]))
    assert metric_values(collection) == pytest.approx(
        {
            "raw": auroc,
            "max": auroc,
            "min": auroc,
            "acc": float(reference(BinaryAccuracy, [binary])),
        }
    )


def test_wrapper_not_updated_is_skipped():
    from torchmetrics.wrappers import ClasswiseWrapper, MinMaxMetric, Running

    minmax = MinMaxMetric(BinaryAUROC())
    minmax.update(torch.tensor([0.2, 0.8]), torch.tensor([0, 1]))
    minmax.reset()
    for metric in (
        minmax,
        Running(tm.SumMetric()),
        # says it was updated once before any update
        ClasswiseWrapper(MulticlassAccuracy(num_classes=NUM_CLASSES, average=None)),
    ):
        with pytest.warns(UserWarning, match="no rank updated"):
            assert metric_values(metric, name="w") == {}


# ---------------------------------------------------------------- real gloo groups


def _scenarios(rank: int, world_size: int, run_dir: str) -> dict[str, object]:
    out: dict[str, object] = {}
    mine = [batch(100 * rank + i) for i in range(2)]

    # every rank updates
    acc = MulticlassAccuracy(num_classes=NUM_CLASSES)
    auroc = MulticlassAUROC(num_classes=NUM_CLASSES)
    for b in mine:
        acc.update(*b)
        auroc.update(*b)
    out["all"] = metric_values(tm.MetricCollection({"acc": acc, "auroc": auroc}), prefix="val/")

    # only rank 1 updates metrics with concatenated states (plain torchmetrics aborts here)
    partial = tm.MetricCollection(
        {
            "auroc": MulticlassAUROC(num_classes=NUM_CLASSES),
            "bin": BinaryAUROC(),
            "cat": tm.CatMetric(),
        }
    )
    if rank == 1:
        for preds, target in mine:
            partial["auroc"].update(preds, target)
            partial["bin"].update(preds[:, 0], (target == 0).long())
            partial["cat"].update(preds[:, 0])
    out["partial"] = metric_values(partial, max_elements=10_000)
    out["partial_state_restored"] = [len(partial["auroc"].preds), len(partial["cat"].value)]

    # nobody updates
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["none"] = metric_values(MulticlassAUROC(num_classes=NUM_CLASSES), name="val/auroc")
    out["none_warned"] = any("no rank updated" in str(w.message) for w in caught)

    # every rank computed (so each caches the result), then only the last rank updated again:
    # the others hold a stale cache, yet no rank may skip the gather
    mean = tm.MeanMetric()
    mean.update(torch.full((3,), float(rank)))
    mean.compute()
    if rank == world_size - 1:
        mean.update(torch.full((3,), 10.0))
    out["cached"] = metric_values(mean, name="m")

    # ranks disagree about the collection: the same error everywhere, before any gather
    members = {"a": tm.SumMetric()}
    if rank == world_size - 1:
        members["b"] = tm.SumMetric()
    try:
        metric_values(tm.MetricCollection(members))
        out["mismatch"] = None
    except LogValueError as exc:
        out["mismatch"] = str(exc)

    # compute fails on every rank alike, naming the metric
    broken = Broken()
    broken.update(torch.ones(1))
    try:
        metric_values(broken, prefix="val/", name="bad")
        out["broken"] = None
    except LogValueError as exc:
        out["broken"] = str(exc)

    # still in step afterwards
    total = tm.SumMetric()
    total.update(torch.tensor(float(rank + 1)))
    out["after"] = metric_values(total, name="sum")

    # through the Logger: computed once, written by rank 0 as is (never summed again)
    logger = distlog.Logger(run_dir=run_dir, async_write=False)
    total = tm.SumMetric()
    total.update(torch.tensor(float(rank + 1)))
    out["log_metrics"] = logger.log_metrics(total, prefix="val/", name="sum")
    only_rank1 = BinaryAUROC()
    if rank == 1:
        preds, target = mine[0]
        only_rank1.update(preds[:, 0], (target == 0).long())
    logger.log_dict({"val/auroc": only_rank1, "train/x": float(rank)})
    out["row"] = logger.flush(7, block=True)
    logger.finish()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [3])
def test_distributed_scenarios(tmp_path, world_size):
    run_dir = tmp_path / "run"
    results = run_ranks(_scenarios, world_size, world_size, str(run_dir), timeout=120)
    batches = {r: [batch(100 * r + i) for i in range(2)] for r in range(world_size)}
    everything = [b for r in range(world_size) for b in batches[r]]

    want_all = {
        "val/acc": float(reference(MulticlassAccuracy, everything, num_classes=NUM_CLASSES)),
        "val/auroc": float(reference(MulticlassAUROC, everything, num_classes=NUM_CLASSES)),
    }
    rank1 = batches[1]
    want_partial = {
        "auroc": float(reference(MulticlassAUROC, rank1, num_classes=NUM_CLASSES)),
        "bin": float(reference(BinaryAUROC, [(p[:, 0], (t == 0).long()) for p, t in rank1])),
    }
    cat_values = torch.cat([p[:, 0] for p, _ in rank1])
    want_partial.update({f"cat/{i}": float(v) for i, v in enumerate(cat_values)})
    for rank, out in enumerate(results):
        assert out["all"] == pytest.approx(want_all), rank
        assert out["partial"] == pytest.approx(want_partial), rank
        assert out["partial_state_restored"] == ([0, 0] if rank != 1 else [2, 2])
        assert out["none"] == {}
        mean_all = (3 * sum(range(world_size)) + 30) / (3 * world_size + 3)
        assert out["cached"] == {"m": pytest.approx(mean_all)}
        assert "ranks hold different metrics" in out["mismatch"]
        assert "'val/bad'" in out["broken"] and "ZeroDivisionError" in out["broken"]
        assert out["after"] == {"sum": world_size * (world_size + 1) / 2}
    assert results[0]["none_warned"]

    total = world_size * (world_size + 1) / 2
    want_row = {
        "val/sum": total,
        "val/auroc": float(
            reference(BinaryAUROC, [(rank1[0][0][:, 0], (rank1[0][1] == 0).long())])
        ),
        "train/x": sum(range(world_size)) / world_size,
    }
    assert results[0]["row"] == pytest.approx(want_row)
    assert all(out["row"] is None for out in results[1:])
    assert all(out["log_metrics"] == {"val/sum": total} for out in results)
    (row,) = distlog.read_metrics(run_dir)
    assert row["step"] == 7 and {k: row[k] for k in want_row} == pytest.approx(want_row)


def test_logger_log_metrics_and_log_dict_in_one_process(tmp_path):
    preds, target = batch(5)
    collection = tm.MetricCollection(
        {"acc": MulticlassAccuracy(num_classes=NUM_CLASSES), "n": tm.SumMetric()}
    )
    collection["acc"].update(preds, target)
    collection["n"].update(torch.tensor(float(len(target))))
    mean = tm.MeanMetric()
    mean.update(torch.tensor([1.0, 2.0, 3.0]))
    logger = distlog.Logger(run_dir=tmp_path, async_write=False)
    assert logger.log_metrics(collection, prefix="val/") == pytest.approx(
        {"val/acc": float(collection["acc"].compute()), "val/n": 16.0}
    )
    logger.log_dict({"eval": collection, "eval/mean": mean, "train/loss": 0.5})
    row = logger.flush(3, block=True)
    logger.finish()
    acc = float(collection["acc"].compute())
    want = {
        "val/acc": acc,
        "val/n": 16.0,
        "eval/acc": acc,
        "eval/n": 16.0,
        "eval/mean": 2.0,
        "train/loss": 0.5,
    }
    assert row == pytest.approx(want)
    (written,) = distlog.read_metrics(tmp_path)
    assert {k: written[k] for k in want} == pytest.approx(want)


def test_log_dict_with_a_failing_metric_logs_nothing(tmp_path):
    broken = Broken()
    broken.update(torch.ones(1))
    logger = distlog.Logger(run_dir=tmp_path, async_write=False)
    with pytest.raises(LogValueError, match="'val/bad'"):
        logger.log_dict({"train/loss": 1.0, "val/bad": broken})
    logger.log_scalar("other", 2.0)
    assert logger.flush(1, block=True) == {"other": 2.0}
    logger.finish()
