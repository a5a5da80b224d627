"""torchmetrics support: compute a ``Metric`` or ``MetricCollection`` once and flatten it to floats.

``metric.compute()`` already gathers its states across ranks, so its result is global: the
logger writes it as is ([Logger.log_precomputed][distlog.logger.Logger.log_precomputed]), never reducing it again.
`metric_values` must be called on every rank of the metric's process group, like
``compute()`` itself. A metric whose group leaves out global rank 0 (the writer) reaches it
through the next flush instead: its group's lowest rank logs the values as ordinary scalars
(`log_computed`).

Before computing, ranks swap one small description of their metrics (JSON, in two tiny
``all_gather`` calls), which lets distlog turn the situations that make plain
``compute()`` hang or abort the job into a clear outcome on every rank:

- **No rank updated a metric** since its last ``reset()``: it is skipped on every rank with a
  warning naming it; nothing is logged for it (its ``compute()`` would divide by zero or fail).
- **Only some ranks updated it**: the ranks that saw no data take part with empty states of the
  right dtype and shape. Plain torchmetrics gathers a 1-D float placeholder from such ranks,
  which no longer matches the other ranks' concatenated states (seen: gloo aborts the process
  with "Received data size doesn't match expected size").
- **A rank holds a cached result** (it already called ``compute()`` since its last update): the
  cache is dropped so that every rank joins the same gather, instead of one rank returning
  early while the others wait for it.
- **Ranks hold different numbers of tensors in a list state** that torchmetrics gathers
  element by element (``dist_reduce_fx=None``: every ``Retrieval*`` metric, VIF, detection
  IoU, user metrics), so ranks would issue different numbers of collectives: distlog gathers
  those lists itself, in two collectives a list, and ``compute()`` sees every rank's tensors,
  rank 0's first, as one process would after all the updates. A list that cannot be gathered
  so (tensors of mixed dtypes or dimensions, items that are not tensors, another reduction)
  raises the same ``LogValueError`` on every rank, before any gather.

Wrappers (``MinMaxMetric``, ``BootStrapper``, ``MultitaskWrapper``...) do not count their own
updates and keep their states in the metrics they wrap: a metric counts as updated when it or a
metric inside it was, and the states of every metric inside it get the treatment above.

Ranks that disagree about what they are computing (different collection members, classes or
states, tensor states of different dtypes or shapes, which gloo aborts on, concatenated states
of different dtypes or trailing shapes) get the same
[LogValueError][distlog.errors.LogValueError] on every rank, naming the metric and the state,
before any gather. A ``compute()`` that fails is re-raised as a
``LogValueError`` naming the metric; the gathered states are the same on every rank, so every
rank fails alike and none is left waiting.

Flattening: a scalar result is one key; a dict result (a collection, or a metric like
``MeanAveragePrecision``) gives one key per entry; a tensor with several elements (say
per-class accuracy with ``average=None``) gives one key per element, ``key/0``, ``key/1``, ...
and ``key/i/j`` for a matrix. Tensors with more than ``max_elements`` elements are refused.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from distlog.errors import LogTypeError, LogValueError
from distlog.groups import all_gather_json, group_device
from distlog.keys import check_key

__all__ = ["is_metric", "log_computed", "metric_values", "metric_values_under"]

_NOT_UPDATED = "was called before the ``update`` method"


def _torchmetrics() -> Any:
    try:
        import torchmetrics
    except ImportError as exc:  # pragma: no cover - only without the extra
        raise ImportError(
            "logging torchmetrics objects needs torchmetrics: pip install 'distlog[metrics]'"
        ) from exc
    return torchmetrics


def is_metric(value: Any) -> bool:
    """True for a torchmetrics ``Metric`` or ``MetricCollection``; never imports torchmetrics."""
    tm = sys.modules.get("torchmetrics")
    return tm is not None and isinstance(value, (tm.Metric, tm.MetricCollection))


def _members(obj: Any, prefix: str, name: str) -> list[tuple[str, str, Any]]:
    """(member key, display name, base metric) for each metric to compute.

    A collection's member keys are torchmetrics' own; display names are the logged keys.
    """
    tm = _torchmetrics()
    if isinstance(obj, tm.MetricCollection):
        return [
            (str(k), prefix + obj._set_name(str(k)), m)
            for k, m in obj.items(keep_base=True, copy_state=False)
        ]
    return [(name, prefix + name, obj)]


def _cat_reduction(metric: Any, attr: str) -> bool:
    from torchmetrics.utilities.data import dim_zero_cat

    return metric._reductions.get(attr) is dim_zero_cat


def _own_list_sync(metric: Any) -> bool:
    """True when ``metric`` gathers its states with torchmetrics' own ``Metric._sync_dist``,
    which gathers a list state element by element (``MeanAveragePrecision`` has its own)."""
    from torchmetrics import Metric

    return getattr(type(metric), "_sync_dist", None) is Metric._sync_dist


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _wrapper_class() -> tuple[type, ...]:
    """torchmetrics' wrapper base class: its subclasses do not count their own updates."""
    try:
        from torchmetrics.wrappers.abstract import WrapperMetric
    except ImportError:  # pragma: no cover - torchmetrics before 1.1: wrappers count updates
        return ()
    return (WrapperMetric,)


def _inside(metric: Any) -> list[tuple[str, Any]]:
    """(submodule path, metric) for ``metric`` and every ``Metric`` inside it (the metrics a
    wrapper such as ``MinMaxMetric`` or ``BootStrapper`` wraps), ``metric`` itself first."""
    from torchmetrics import Metric

    return [(path, m) for path, m in metric.named_modules() if isinstance(m, Metric)]


def _owner(metric: Any, key: str) -> tuple[Any, str]:
    """The metric that holds state ``key`` ("attr", or "path.attr" in a wrapped metric)."""
    path, _, attr = key.rpartition(".")
    return metric.get_submodule(path), attr


def _states(metric: Any) -> Iterator[tuple[str, Any, str]]:
    """(key, owner, attr) for every state of ``metric`` and of the metrics inside it. A state
    belongs to the metric whose attribute holds it (``ClasswiseWrapper`` only forwards)."""
    for path, owner in _inside(metric):
        for attr in owner._defaults:
            if attr in vars(owner):
                yield (f"{path}.{attr}" if path else attr), owner, attr


def _updates(metric: Any) -> int:
    """Updates since the last reset() of ``metric`` and the metrics inside it. Wrappers do not
    count their own (``ClasswiseWrapper`` says 1 even before any); ``Running`` counts in
    ``_num_vals_seen`` and resets the metric it wraps after each update."""
    wrapper = _wrapper_class()
    return sum(
        int(getattr(m, "_num_vals_seen", 0))
        if isinstance(m, wrapper)
        else int(getattr(m, "_update_count", 0))
        for _, m in _inside(metric)
    )


def _describe(metric: Any) -> dict[str, Any]:
    """What other ranks need to know about this rank's copy of ``metric``.

    States are keyed by name, or by submodule path and name for the metrics a wrapper holds.
    ``states``: each ``dim_zero_cat`` list state's (dtype, trailing shape), None when empty.
    ``tensors``: each tensor state's (dtype, shape): torchmetrics gathers them with a collective
    that aborts the job when they differ across ranks.
    ``lists``: every other list state (``dist_reduce_fx=None`` in every ``Retrieval*`` metric,
    LPIPS, VIF, detection IoU...), which torchmetrics gathers element by element, so with one
    collective per element: [its tensors, its other items, dtypes, dims, bytes, reduction].
    ``sync``: False when the metrics that hold data compute locally (``sync_on_compute=False``).
    """
    states: dict[str, tuple[str, tuple[int, ...]] | None] = {}
    tensors: dict[str, tuple[str, list[int]]] = {}
    lists: dict[str, list[Any]] = {}
    for key, owner, attr in _states(metric):
        value = getattr(owner, attr)
        element_wise = _own_list_sync(owner)
        if isinstance(value, torch.Tensor):
            if element_wise:
                tensors[key] = (_dtype_name(value), list(value.shape))
        elif not isinstance(value, list):
            continue
        elif _cat_reduction(owner, attr):
            first = next((t for t in value if isinstance(t, torch.Tensor)), None)
            if first is None:
                states[key] = None
            else:
                trailing = tuple(first.shape[1:]) if first.dim() > 0 else ()
                states[key] = (_dtype_name(first), trailing)
        elif element_wise:
            items = [t for t in value if isinstance(t, torch.Tensor)]
            reduction = owner._reductions.get(attr)
            lists[key] = [
                len(items),
                len(value) - len(items),
                sorted({_dtype_name(t) for t in items}),
                sorted({t.dim() for t in items}),
                sum(t.numel() * t.element_size() for t in items),
                None if reduction is None else getattr(reduction, "__name__", repr(reduction)),
            ]
    wrapper = _wrapper_class()
    holders = [m for _, m in _inside(metric) if not isinstance(m, wrapper)] or [metric]
    return {
        "type": type(metric).__name__,
        "updates": _updates(metric),
        "sync": any(bool(getattr(m, "_to_sync", True)) for m in holders),
        "states": states,
        "tensors": tensors,
        "lists": lists,
    }


Member = tuple[str, str, Any]  # (member key, logged name, base metric)


def _group_of(members: list[Member], label: str) -> Any:
    groups = {id(m.process_group): m.process_group for _, _, m in members}
    if len(groups) > 1:
        raise LogValueError(
            f"{label}: its metrics use different process groups; log them in separate calls"
        )
    return next(iter(groups.values())) if groups else None


def _gather_descriptions(members: list[Member], group: Any) -> list[dict[str, Any]] | None:
    """Every rank's descriptions, or None when there is nobody to agree with."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    size = dist.get_world_size(group)
    if size == 1:
        return None
    mine = {key: _describe(metric) for key, _, metric in members}
    return all_gather_json(mine, group)


class _Regather(NamedTuple):
    """A list state that ranks hold different numbers of tensors of: gathered by distlog."""

    dtype: str
    ndim: int
    lengths: list[int]
    """Tensors on each rank of the metric's group, in group rank order."""
    nbytes: list[int]


Fills = dict[str, tuple[str, tuple[int, ...]]]


class _Plan(NamedTuple):
    to_compute: list[str]
    """Members to compute, the same on every rank (except for ``sync_on_compute=False``)."""
    fills: dict[str, Fills]
    """Per member: the empty ``dim_zero_cat`` states this rank fills in, (dtype, trailing)."""
    regathers: dict[str, dict[str, _Regather]]
    """Per member: the uneven list states that distlog gathers itself, in one go."""
    skipped: list[str]
    """Members no rank updated since the last reset()."""
    local_skipped: dict[str, list[int]]
    """``sync_on_compute=False`` members this rank did not update: the ranks that did."""


def _list_layouts(who: str, per_rank: list[dict[str, Any]]) -> dict[str, _Regather]:
    """The list states of one metric that ranks hold different numbers of tensors of.

    torchmetrics gathers such a state one element at a time: ranks holding different numbers
    of elements issue different numbers of collectives (gloo aborts the job, or ranks wait).
    distlog gathers them itself, in two collectives a state; what it cannot gather correctly
    raises here, on every rank alike, before anything is gathered.
    """
    out: dict[str, _Regather] = {}
    for attr in per_rank[0]["lists"]:
        info = [d["lists"][attr] for d in per_rank]
        lengths = [int(i[0]) for i in info]
        if len(set(lengths)) == 1:
            continue  # torchmetrics issues the same collectives on every rank
        counts = ", ".join(str(n) for n in lengths)
        where = f"{who} has list state {attr!r}"
        if any(i[1] for i in info):
            raise LogValueError(
                f"{where} holding items that are not tensors, and ranks hold different numbers "
                f"of tensors in it ({counts}): it cannot be gathered; update the metric the "
                "same number of times on every rank"
            )
        if info[0][5] is not None:
            raise LogValueError(
                f"{where} with dist_reduce_fx={info[0][5]!r}, and ranks hold different numbers "
                f"of tensors in it ({counts}): torchmetrics cannot gather it; use "
                "dist_reduce_fx='cat' or None, or update the metric the same number of times on "
                "every rank"
            )
        dtypes = sorted({dt for i in info for dt in i[2]})
        ndims = sorted({int(n) for i in info for n in i[3]})
        if len(dtypes) > 1 or len(ndims) > 1:
            raise LogValueError(
                f"{where} whose tensors differ in dtype or number of dimensions (dtypes "
                f"{dtypes}, dims {ndims}), and ranks hold different numbers of them ({counts}): "
                "it cannot be gathered; update the metric the same number of times on every rank"
            )
        out[attr] = _Regather(dtypes[0], ndims[0], lengths, [int(i[4]) for i in info])
    return out


def _check_layouts(who: str, per_rank: list[dict[str, Any]]) -> Fills:
    """The same states on every rank, of one dtype and shape; the layout of each empty
    ``dim_zero_cat`` list state that some rank holds data in (for the ranks to fill in)."""
    kinds = ("states", "tensors", "lists")
    held = [{kind: sorted(d[kind]) for kind in kinds} for d in per_rank]
    for rank, states in enumerate(held):
        if states != held[0]:
            raise LogValueError(
                f"{who} holds different states on different ranks (rank 0: {held[0]}, rank "
                f"{rank}: {states}); every rank must log the same metric objects"
            )
    layouts_by_state = {
        attr: {r: d[kind][attr] for r, d in enumerate(per_rank) if d[kind][attr]}
        for kind in ("states", "tensors")
        for attr in per_rank[0][kind]
    }
    fills: Fills = {}
    for attr, seen in layouts_by_state.items():  # JSON made the (dtype, shape) pairs lists
        layouts = {(dt, tuple(shape)) for dt, shape in seen.values()}
        if len(layouts) > 1:
            detail = ", ".join(f"rank {r}: {dt} {list(shape)}" for r, (dt, shape) in seen.items())
            raise LogValueError(
                f"{who} has state {attr!r} of different dtypes or shapes across ranks "
                f"({detail}); it cannot be gathered"
            )
        if layouts and attr in per_rank[0]["states"]:
            fills[attr] = layouts.pop()
    return fills


def _plan(label: str, members: list[Member], gathered: list[dict[str, Any]] | None) -> _Plan:
    """Which members to compute, and which states to fill in or gather on this rank.

    Every rank reaches the same decision from the same gathered data, so an error raised here
    is raised on every rank alike, before any gather of metric states.
    """
    if gathered is None:
        to_compute = [key for key, _, m in members if _updates(m) > 0]
        skipped = [shown for key, shown, _ in members if key not in to_compute]
        return _Plan(to_compute, {}, {}, skipped, {})
    reference = list(gathered[0])
    for rank, descriptions in enumerate(gathered):
        if list(descriptions) != reference:
            raise LogValueError(
                f"{label}: ranks hold different metrics (rank 0: {reference}, rank {rank}: "
                f"{list(descriptions)}); every rank must log the same metric objects"
            )
    names = {key: shown for key, shown, _ in members}
    local = {key: metric for key, _, metric in members}
    plan = _Plan([], {}, {}, [], {})
    for key in reference:
        per_rank = [descriptions[key] for descriptions in gathered]
        who = f"metric {names[key]!r}"
        who = who if label == who else f"{label}: {who}"
        types = [d["type"] for d in per_rank]
        if len(set(types)) > 1:
            raise LogValueError(
                f"{who} is a different class on different ranks ({types}); every rank must "
                "log the same metric objects"
            )
        if not all(d["sync"] for d in per_rank):
            # computed locally (sync_on_compute=False), no gather: each rank decides alone
            if _updates(local[key]) > 0:
                plan.to_compute.append(key)
            elif any(d["updates"] for d in per_rank):
                ranks = [r for r, d in enumerate(per_rank) if d["updates"]]
                plan.local_skipped[names[key]] = ranks
            else:
                plan.skipped.append(names[key])
            continue
        if sum(d["updates"] for d in per_rank) == 0:
            plan.skipped.append(names[key])
            continue
        plan.to_compute.append(key)
        fills = _check_layouts(who, per_rank)
        if fills:
            plan.fills[key] = fills
        regathers = _list_layouts(who, per_rank)
        if regathers:
            plan.regathers[key] = regathers
    return plan


def _flatten(
    key: str, value: Any, metric_name: str, max_elements: int
) -> Iterator[tuple[str, float]]:
    if isinstance(value, Mapping):
        for sub, item in value.items():
            yield from _flatten(f"{key}/{sub}", item, metric_name, max_elements)
        return
    if isinstance(value, bool | int | float):
        yield key, float(value)
        return
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.is_complex():
            tensor = tensor.abs()
        if tensor.numel() == 1:
            yield key, float(tensor.reshape(()).item())
            return
        if tensor.numel() > max_elements:
            raise LogValueError(
                f"metric {metric_name!r} returned a tensor of shape {list(tensor.shape)} for "
                f"{key!r}: more than max_elements={max_elements} values; log it as media "
                "(a histogram or table) instead"
            )
        flat = tensor.to("cpu", torch.float64).reshape(-1).tolist()
        for position, item in enumerate(flat):
            index = []
            for size in reversed(tensor.shape):
                index.append(position % size)
                position //= size
            yield key + "".join(f"/{i}" for i in reversed(index)), float(item)
        return
    raise LogTypeError(
        f"metric {metric_name!r} returned {type(value).__name__} for {key!r}; only numbers, "
        "tensors and dicts of them can be logged as scalars (log curves as media)"
    )


def _regather(metric: Any, attr: str, spec: _Regather, group: Any) -> list[torch.Tensor]:
    """Every rank's tensors of the list state ``attr``, rank after rank, on every rank.

    Two ``all_gather`` calls (the bytes, then the shapes), whatever the number of tensors;
    the sizes come from the descriptions the ranks already swapped. Raw bytes travel: nothing
    a rank receives is unpickled.
    """
    dtype = getattr(torch, spec.dtype)
    mine = [t for t in getattr(metric, attr) if isinstance(t, torch.Tensor)]
    device = group_device(group)
    size = len(spec.lengths)
    data = [torch.empty(0, dtype=torch.uint8, device=device)] * size
    if max(spec.nbytes) > 0:
        parts = [t.detach().contiguous().reshape(-1).view(torch.uint8).to(device) for t in mine]
        buffer = torch.zeros(max(spec.nbytes), dtype=torch.uint8, device=device)
        if parts:
            flat = torch.cat(parts)
            buffer[: flat.numel()] = flat
        data = [torch.empty_like(buffer) for _ in range(size)]
        dist.all_gather(data, buffer, group=group)
    shapes: list[list[list[int]]] = [[[]] * n for n in spec.lengths]
    if spec.ndim > 0:
        local = torch.zeros((max(spec.lengths), spec.ndim), dtype=torch.int64)
        if mine:
            local[: len(mine)] = torch.tensor([list(t.shape) for t in mine], dtype=torch.int64)
        local = local.to(device)
        gathered = [torch.empty_like(local) for _ in range(size)]
        dist.all_gather(gathered, local, group=group)
        shapes = [g[:n].tolist() for g, n in zip(gathered, spec.lengths, strict=True)]
    itemsize = torch.empty((), dtype=dtype).element_size()
    out: list[torch.Tensor] = []
    for rank_data, rank_shapes in zip(data, shapes, strict=True):
        offset = 0
        for shape in rank_shapes:
            count = itemsize * int(torch.Size(shape).numel())
            raw = rank_data[offset : offset + count].clone().to(metric.device)
            out.append(raw.view(dtype).reshape(shape))
            offset += count
    return out


def _sync_with(known: dict[int, list[torch.Tensor]], fallback: Any) -> Any:
    """A ``dist_sync_fn`` that hands back the tensors distlog gathered for a placeholder."""
    if fallback is None:
        from torchmetrics.utilities.distributed import gather_all_tensors

        fallback = gather_all_tensors

    def gather(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> list[torch.Tensor]:
        found = known.get(id(tensor))
        return list(found) if found is not None else fallback(tensor, *args, **kwargs)

    return gather


def _compute(
    shown: str,
    metric: Any,
    fills: Fills,
    regathers: dict[str, _Regather] | None = None,
    group: Any = None,
) -> Any:
    """``metric.compute()`` with this rank's empty states filled in, uneven list states
    gathered by distlog, and no cached result, in ``metric`` and the metrics inside it."""
    restore: list[tuple[Any, str, Any]] = []
    for key, (dtype, trailing) in fills.items():
        owner, attr = _owner(metric, key)
        current = getattr(owner, attr)
        if isinstance(current, list) and not current:
            empty = torch.empty((0, *trailing), dtype=getattr(torch, dtype), device=owner.device)
            setattr(owner, attr, [empty])
            restore.append((owner, attr, current))
    # A state that ranks hold different numbers of tensors of becomes one placeholder on every
    # rank (so torchmetrics makes one call for it on each), for which the sync function below
    # hands back every rank's tensors, gathered here in one go. compute() sees the tensors of
    # rank 0, then rank 1, ...: what one process would hold after all ranks' updates.
    gathered: dict[int, list[torch.Tensor]] = {}
    placeholders: list[torch.Tensor] = []  # alive until the end, so that no id is reused
    for key, spec in (regathers or {}).items():
        owner, attr = _owner(metric, key)
        everything = _regather(owner, attr, spec, group)
        placeholder = torch.empty(0, device=owner.device)
        placeholders.append(placeholder)
        gathered[id(placeholder)] = everything
        restore.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, [placeholder])
    inside = [m for _, m in _inside(metric)]
    sync_fns = [m.dist_sync_fn for m in inside]
    for m in inside:
        if gathered:  # set on every metric: a wrapper's state may be synced by the one it wraps
            m.dist_sync_fn = _sync_with(gathered, m.dist_sync_fn)
        m._computed = None  # every rank must join the gather; none may answer from a cache
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=f".*{_NOT_UPDATED}")
            return metric.compute()
    except Exception as exc:
        raise LogValueError(
            f"compute() of metric {shown!r} ({type(metric).__name__}) failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        for m, sync_fn in zip(inside, sync_fns, strict=True):
            m.dist_sync_fn = sync_fn
        for owner, attr, original in reversed(restore):
            setattr(owner, attr, original)


def _group_ranks(group: Any) -> list[int] | None:
    """The global ranks of a metric's process group; None when it is the whole world (or
    there is no process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if group is None or group is dist.group.WORLD:
        return None
    return sorted(dist.get_process_group_ranks(group))


def _delivering_rank(group: Any, among: list[int] | None = None) -> int | None:
    """The global rank that hands a metric's values to the writer: global rank 0 when it is in
    the metric's group, else the group's lowest rank (of those in ``among``, when given)."""
    ranks = _group_ranks(group)
    if ranks is None or 0 in ranks:
        return 0
    candidates = [r for r in ranks if among is None or r in among]
    return candidates[0] if candidates else None


def _metric_group(metric: Any) -> Any:
    """The process group ``metric`` (a ``Metric`` or ``MetricCollection``) gathers over; None
    for the whole world."""
    members = _members(metric, "", type(metric).__name__)
    return _group_of(members, f"metric {type(metric).__name__!r}")


def log_computed(logger: Any, metric: Any, values: Mapping[str, float]) -> None:
    """Hand ``values`` (from `metric_values` of ``metric``) to ``logger`` for its next row.

    Every rank of the metric's group calls it with the same values. When the writer (global
    rank 0) is in the metric's group, they go to ``log_precomputed`` (kept on rank 0, never
    reduced again). When it is not (a pipeline's last stage, say, with a group of ranks 1 and
    2), rank 0 never sees them: the group's lowest rank logs them as ordinary scalars with
    ``reduce="last"``, and as that rank alone logs them, the next flush writes them exactly.
    """
    if not values:
        return
    among = list(logger.world.group_ranks) if logger.world.writer_in_group else []
    rank = _delivering_rank(_metric_group(metric), among)
    if rank == 0:
        logger.log_precomputed(values)
    elif rank is not None and logger.world.rank == rank:
        logger.log_dict({k: float(v) for k, v in values.items()}, reduce="last")


def metric_values(
    metric: Any, prefix: str = "", *, name: str | None = None, max_elements: int = 1024
) -> dict[str, float]:
    """Compute a torchmetrics ``Metric`` or ``MetricCollection`` and flatten it to floats.

    Call it on every rank of the metric's process group (like ``compute()``): the states are
    gathered once and every rank gets the same global values. Keys are ``prefix + name`` for a
    single metric (``name`` defaults to its class name) and ``prefix`` + torchmetrics' own names
    for a collection (those of ``MetricCollection.compute()``). See the module docstring for
    metrics that some or no ranks updated.

    Raises:
        LogTypeError: ``metric`` is not a torchmetrics object, or returned something that is not
            a number, tensor or dict (a curve's tuple of tensors, say).
        LogValueError: ``compute()`` failed (the message names the metric), ranks disagree about
            the metric, or a result has more than ``max_elements`` elements.
    """
    if not isinstance(prefix, str) or not (name is None or isinstance(name, str)):
        raise LogTypeError(f"prefix and name must be strings, got prefix={prefix!r}, name={name!r}")
    tm = _torchmetrics()
    if not isinstance(metric, (tm.Metric, tm.MetricCollection)):
        raise LogTypeError(
            f"expected a torchmetrics Metric or MetricCollection for {prefix + (name or '')!r}, "
            f"got {type(metric).__name__}"
        )
    is_collection = isinstance(metric, tm.MetricCollection)
    base_name = name if name is not None else type(metric).__name__
    if not is_collection:
        check_key(prefix + base_name)  # before any collective; collections are checked below
    label = f"MetricCollection {prefix!r}" if is_collection else f"metric {prefix + base_name!r}"
    members = _members(metric, prefix, base_name)
    group = _group_of(members, label)
    gathered = _gather_descriptions(members, group)
    plan = _plan(label, members, gathered)

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if rank == _delivering_rank(group):  # the rank whose values are written
        if plan.skipped:
            warnings.warn(
                f"{label}: no rank updated {plan.skipped} since the last reset(); nothing "
                "logged for it",
                UserWarning,
                stacklevel=2,
            )
        members_ranks = _group_ranks(group)
        for shown, indices in plan.local_skipped.items():
            ranks = [members_ranks[i] for i in indices] if members_ranks else indices
            warnings.warn(
                f"{label}: {shown!r} has sync_on_compute=False, so each rank computes its own "
                f"value and only this rank's (rank {rank}) is written, but this rank did not "
                f"update it since the last reset() (ranks {ranks} did); nothing "
                "logged for it",
                UserWarning,
                stacklevel=2,
            )
    by_key = {key: (shown, m) for key, shown, m in members}
    results = {
        key: _compute(
            by_key[key][0],
            by_key[key][1],
            plan.fills.get(key, {}),
            plan.regathers.get(key),
            group,
        )
        for key in plan.to_compute
    }
    if not is_collection:
        shown = prefix + base_name
        return dict(_flatten(shown, results[base_name], shown, max_elements)) if results else {}
    out = _flatten_collection(metric, prefix, by_key, results, max_elements)
    for key in out:  # the same names on every rank: every rank raises alike
        check_key(key)
    return out


def _flatten_collection(
    collection: Any,
    prefix: str,
    by_key: dict[str, tuple[str, Any]],
    results: dict[str, Any],
    max_elements: int,
) -> dict[str, float]:
    """``MetricCollection.compute()``'s naming (dict results merged in), then ``prefix``."""
    dict_keys = [k for r in results.values() if isinstance(r, Mapping) for k in r]
    duplicates = len(dict_keys) != len(set(dict_keys))
    out: dict[str, float] = {}
    for key, value in results.items():
        shown, member = by_key[key]
        if not isinstance(value, Mapping):
            out.update(_flatten(shown, value, shown, max_elements))
            continue
        for sub, item in value.items():
            name = str(sub)
            if duplicates:
                stripped = key.replace(getattr(member, "prefix", None) or "", "")
                stripped = stripped.replace(getattr(member, "postfix", None) or "", "")
                name = f"{stripped}_{name}"
            if getattr(member, "_from_collection", None) and member.prefix is not None:
                name = f"{member.prefix}{name}"
            if getattr(member, "_from_collection", None) and member.postfix is not None:
                name = f"{name}{member.postfix}"
            full = prefix + collection._set_name(name)
            out.update(_flatten(full, item, shown, max_elements))
    return out


def metric_values_under(key: str, metric: Any) -> dict[str, float]:
    """`metric_values` for ``log_dict({key: metric})``: a metric's value is written as
    ``key`` itself, a collection's values as ``key/<name>``."""
    check_key(key)
    tm = _torchmetrics()
    if isinstance(metric, tm.MetricCollection):
        return metric_values(metric, f"{key}/")
    return metric_values(metric, name=key)
