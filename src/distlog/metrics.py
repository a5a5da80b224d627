"""torchmetrics support: compute a ``Metric`` or ``MetricCollection`` once and flatten it to floats.

``metric.compute()`` already gathers its states across ranks, so its result is global: the
logger writes it as is ([Logger.log_precomputed][distlog.logger.Logger.log_precomputed]), never reducing it again.
`metric_values` must be called on every rank of the metric's process group, like
``compute()`` itself.

Before computing, ranks swap one small description of their metrics (JSON, in two tiny
``all_gather`` calls), which lets distlog turn three situations that make plain
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

Ranks that disagree about what they are computing (different collection members, states of
different dtypes or trailing shapes) get the same [LogValueError][distlog.errors.LogValueError] on every
rank, naming the metric, before any gather. A ``compute()`` that fails is re-raised as a
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
from typing import Any

import torch
import torch.distributed as dist

from distlog.errors import LogTypeError, LogValueError
from distlog.groups import all_gather_json
from distlog.keys import check_key

__all__ = ["is_metric", "metric_values", "metric_values_under"]

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


def _describe(metric: Any) -> dict[str, Any]:
    """What other ranks need to know about this rank's copy of ``metric``."""
    states: dict[str, tuple[str, tuple[int, ...]] | None] = {}
    for attr in metric._defaults:
        value = getattr(metric, attr)
        if isinstance(value, list) and _cat_reduction(metric, attr):
            first = next((t for t in value if isinstance(t, torch.Tensor)), None)
            if first is None:
                states[attr] = None
            else:
                trailing = tuple(first.shape[1:]) if first.dim() > 0 else ()
                states[attr] = (str(first.dtype).removeprefix("torch."), trailing)
    return {
        "type": type(metric).__name__,
        "updates": int(getattr(metric, "_update_count", 0)),
        "sync": bool(getattr(metric, "_to_sync", True)),
        "states": states,
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
    gathered = all_gather_json(mine, group)
    for descriptions in gathered:  # JSON turned the (dtype, shape) tuples into lists
        for description in descriptions.values():
            description["states"] = {
                attr: (layout[0], tuple(layout[1])) if layout else None
                for attr, layout in description["states"].items()
            }
    return gathered


def _updates(metric: Any) -> int:
    return int(getattr(metric, "_update_count", 0))


def _plan(
    label: str, members: list[Member], gathered: list[dict[str, Any]] | None
) -> tuple[list[str], dict[str, dict[str, tuple[str, tuple[int, ...]]]]]:
    """Which members to compute, and which empty states to fill in on this rank.

    Every rank reaches the same decision from the same gathered data, so an error raised here
    is raised on every rank alike, before any gather of metric states.
    """
    if gathered is None:
        return [key for key, _, m in members if _updates(m) > 0], {}
    reference = list(gathered[0])
    for rank, descriptions in enumerate(gathered):
        if list(descriptions) != reference:
            raise LogValueError(
                f"{label}: ranks hold different metrics (rank 0: {reference}, rank {rank}: "
                f"{list(descriptions)}); every rank must log the same metric objects"
            )
    names = {key: shown for key, shown, _ in members}
    local = {key: metric for key, _, metric in members}
    to_compute: list[str] = []
    fills: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
    for key in reference:
        per_rank = [descriptions[key] for descriptions in gathered]
        if not all(d["sync"] for d in per_rank):
            # computed locally (sync_on_compute=False), no gather: each rank decides alone
            if _updates(local[key]) > 0:
                to_compute.append(key)
            continue
        if sum(d["updates"] for d in per_rank) == 0:
            continue
        to_compute.append(key)
        for attr in per_rank[0]["states"]:
            seen = {r: d["states"][attr] for r, d in enumerate(per_rank) if d["states"][attr]}
            layouts = set(seen.values())
            if len(layouts) > 1:
                detail = ", ".join(
                    f"rank {r}: {dt} {list(shape)}" for r, (dt, shape) in seen.items()
                )
                raise LogValueError(
                    f"{label}: metric {names[key]!r} has state {attr!r} of different dtypes or "
                    f"shapes across ranks ({detail})"
                )
            if layouts:
                fills.setdefault(key, {})[attr] = layouts.pop()
    return to_compute, fills


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


def _compute(shown: str, metric: Any, fills: dict[str, tuple[str, tuple[int, ...]]]) -> Any:
    """``metric.compute()`` with this rank's empty states filled in and no cached result."""
    restore: dict[str, Any] = {}
    for attr, (dtype, trailing) in fills.items():
        current = getattr(metric, attr)
        if isinstance(current, list) and not current:
            empty = torch.empty((0, *trailing), dtype=getattr(torch, dtype), device=metric.device)
            setattr(metric, attr, [empty])
            restore[attr] = current
    if hasattr(metric, "_computed"):
        metric._computed = None  # every rank must join the gather; none may answer from a cache
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
        for attr, original in restore.items():
            setattr(metric, attr, original)


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
    gathered = _gather_descriptions(members, _group_of(members, label))
    to_compute, fills = _plan(label, members, gathered)

    skipped = [shown for key, shown, _ in members if key not in to_compute]
    if skipped and (not dist.is_initialized() or dist.get_rank() == 0):
        warnings.warn(
            f"{label}: no rank updated {skipped} since the last reset(); nothing logged for it",
            UserWarning,
            stacklevel=2,
        )
    by_key = {key: (shown, m) for key, shown, m in members}
    results = {
        key: _compute(by_key[key][0], by_key[key][1], fills.get(key, {})) for key in to_compute
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
