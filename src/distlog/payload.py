"""A snapshot laid out as payloads: the numbers one rank sends at a flush.

The [Layout][distlog.layout.Layout] says where each agreed key's slots lie; a
[PayloadPlan][distlog.payload.PayloadPlan], computed once per layout, says which of this rank's
slots go where, so a flush writes whole slices instead of looping over keys. Three ways to
lay a [Snapshot][distlog.buffer.Snapshot] out, from the cheapest:

- [FusedRow][distlog.payload.FusedRow]: a layout of means and sums logged without weights (the
  common case) becomes the whole send row, header included, in one or two C calls;
- [host_payloads][distlog.payload.host_payloads]: Python numbers of any reduction, a few numpy
  writes a reduction;
- [tensor_payloads][distlog.payload.tensor_payloads]: tensor samples (device tensors, ``last``
  values), reduced on their device with no host sync.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from distlog.buffer import Snapshot
from distlog.layout import (
    REDUCTIONS,
    SPREAD_MAXES,
    SPREAD_SUMS,
    KeySpec,
    Layout,
    Slots,
    pack_rank,
)

__all__ = ["FusedRow", "PayloadPlan", "Payloads", "host_payloads", "tensor_payloads"]


@dataclass
class Payloads:
    """One rank's partial results laid out by a [Layout][distlog.layout.Layout]."""

    sums: torch.Tensor
    maxes: torch.Tensor | None


class PayloadPlan:
    """Per reduction, the snapshot slots and payload offsets of a layout: a few vectorised
    writes build a payload whatever the number of keys. Rebuilt when the layout or the slot
    count changes."""

    def __init__(self, layout: Layout, specs: list[KeySpec], size: int) -> None:
        self.layout, self.size = layout, size
        # Per reduction: (snapshot slots, the keys' places in the layout's block).
        self.by_reduce: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for red in REDUCTIONS:
            place = layout.place[red]
            pairs = [
                (i, place[specs[i].key])
                for i in range(size)
                if specs[i].reduce == red and layout.by_key.get(specs[i].key) == specs[i]
            ]
            if pairs:
                src, places = zip(*pairs, strict=True)
                self.by_reduce[red] = (np.array(src, np.int64), np.array(places, np.int64))
        # Payload positions of each slot kind, so a flush indexes without arithmetic.
        self.at = {
            red: [
                layout.slots(red, k, places)
                for k in range(Slots.SUM_WIDTH[red] or Slots.MAX_WIDTH[red])
            ]
            for red, (_, places) in self.by_reduce.items()
        }
        spread = [
            i for i in range(size) if specs[i].spread and specs[i].key in layout.place[SPREAD_SUMS]
        ]
        self.spread_slots = np.array(spread, dtype=np.int64)
        self.spread_specs = [specs[i] for i in spread]
        self._fused: FusedRow | None = None

    def fused_for(self, snap: Snapshot, prefix: int) -> FusedRow | None:
        """The [FusedRow][distlog.payload.FusedRow] that lays ``snap`` out, or None where it
        does not apply: tensor samples, ``last`` values or weighted samples in the snapshot, or
        a layout that is not means and sums only."""
        if snap.t_vals or snap.lasts or snap.weighted:
            return None
        return self.fused(prefix)

    def fused(self, prefix: int) -> FusedRow | None:
        """The [FusedRow][distlog.payload.FusedRow] of this plan's layout after ``prefix`` header
        slots, when the layout holds means and sums only (no min/max, last or spread)."""
        if self._fused is None or self._fused.prefix != prefix:
            lay = self.layout
            plain = not lay.max_size and all(s.reduce in ("mean", "sum") for s in lay.specs)
            self._fused = FusedRow(self, prefix) if plain else None
        return self._fused


class FusedRow:
    """A whole row (header, then the SUM payload of a means-and-sums layout) built from an
    unweighted snapshot in two C calls: ``header, a, n`` are packed into a scratch array
    (``struct``, about 6 ns a float) and one ``np.take`` puts each slot where the layout wants
    it. Per-reduction numpy writes cost several microseconds each on a cold cache.

    When every slot was logged equally often (one sample a step, the common case) and this rank
    has a slot for every key of the layout, the counts are one number: only ``header, a`` are
    packed and taken, and every slot after the values (weights and counts: the layout puts them
    last) is one fill, skipped when the row already holds that number from the last flush.
    When this rank's slots are also in layout order (it logged its keys in the order the group
    agreed), header and values are packed straight into the row: no scratch, no take (4096
    keys: about 30 us less on a cold cache). Packing an int as a double costs about 35 ns on a
    cold cache, a float 15.
    """

    # A permuted row below this many slots is packed whole and taken (the extra fill would cost
    # more than it saves); an in-order row takes the uniform path at any size (no take at all:
    # 32 keys, on the exchange thread of a busy host, 23 us against 40-50).
    UNIFORM_FROM = 64

    def __init__(self, plan: PayloadPlan, prefix: int) -> None:
        size, S, lay = plan.size, Slots, plan.layout
        self.prefix = prefix
        self.packer = struct.Struct(f"{prefix + 2 * size}d")
        self.values = struct.Struct(f"{prefix + size}d")  # header and values only
        self.scratch = np.zeros(prefix + 2 * size + 1)  # the last slot stays 0.0
        a, n = prefix, prefix + size  # where the value and count lists start in the scratch
        index = np.full(prefix + lay.sum_size, prefix + 2 * size, dtype=np.int64)
        index[:prefix] = np.arange(prefix)
        for red, (src, _) in plan.by_reduce.items():
            at = plan.at[red]
            if red == "mean":
                index[prefix + at[S.MEAN_VALUE]] = a + src
                index[prefix + at[S.MEAN_WEIGHT]] = n + src  # unweighted: 1 a sample
                index[prefix + at[S.MEAN_COUNT]] = n + src
            else:
                index[prefix + at[S.SUM_VALUE]] = a + src
                index[prefix + at[S.SUM_COUNT]] = n + src
        self.index = index
        self.split = prefix + lay.values_end  # header and values | slots that count samples
        covered = sum(len(src) for src, _ in plan.by_reduce.values()) == len(lay)
        self.head_and_values = index[: self.split].copy() if covered else None
        # Slot i's value goes to value slot i: the values need no permutation.
        self.in_order = (
            covered
            and self.split == prefix + size
            and bool((index[: self.split] == np.arange(self.split)).all())
        )

    def build(
        self, snap: Snapshot, head: Sequence[float], out: np.ndarray, filled: int | None = None
    ) -> int | None:
        """Lay ``snap`` out in ``out`` after ``head``. Returns the sample count every count slot
        of ``out`` now holds when they are one number (else None); pass it back as ``filled``
        with the same ``out`` next time to skip refilling them."""
        n = snap.n
        uniform = (
            (self.in_order or len(n) >= self.UNIFORM_FROM) and bool(n) and n.count(n[0]) == len(n)
        )
        if uniform and self.head_and_values is not None:
            if self.in_order:
                self.values.pack_into(out, 0, *head, *snap.a)  # type: ignore[arg-type]
            else:
                self.values.pack_into(self.scratch, 0, *head, *snap.a)  # type: ignore[arg-type]
                self.scratch.take(self.head_and_values, out=out[: self.split])
            count = n[0]
            if filled is None or filled != count:
                out[self.split :] = count
            return count
        self.packer.pack_into(self.scratch, 0, *head, *snap.a, *n)  # type: ignore[arg-type]
        self.scratch.take(self.index, out=out)
        return None


def host_payloads(
    snap: Snapshot,
    plan: PayloadPlan,
    group_rank: int,
    group_size: int,
    prefix: int = 0,
    out: np.ndarray | None = None,
    head: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """This rank's float accumulators laid out by ``plan``'s layout, as numpy arrays.

    ``prefix`` leading slots of the SUM payload are left for a header (written from ``head``
    when given). Slots of keys not logged since the last flush hold neutral values (0, or -inf
    in the MAX payload). With ``out`` (``prefix`` + SUM + MAX slots, reused from flush to
    flush), both payloads are views of it: one row, nothing allocated.
    """
    lay = plan.layout
    split = prefix + lay.sum_size
    if out is None:
        out = np.empty(split + lay.max_size)
    sums, maxes = out[:split], out[split:]
    size = plan.size
    if head is not None:
        fused = plan.fused_for(snap, prefix)
        if fused is not None:  # the common case: means and sums, no weights
            fused.build(snap, head, out)
            return sums, maxes
        sums[:prefix] = head
    sums[prefix:] = 0.0
    maxes[:] = lay.max_init
    if snap.empty:
        return sums, maxes
    body = sums[prefix:]
    a, n = floats(snap.a, size), floats(snap.n, size)
    uses_b = snap.weighted or "min" in plan.by_reduce or "max" in plan.by_reduce
    b = floats(snap.b, size) if uses_b else n  # n: never read then
    S = Slots
    for red, (src, _) in plan.by_reduce.items():
        at = plan.at[red]
        if red == "mean":
            body[at[S.MEAN_VALUE]] = a[src]
            if snap.weighted:
                weights = n.copy()  # one per unweighted sample ...
                for i, c in snap.weighted.items():
                    weights[i] -= c  # ... the weighted ones bring their own
                body[at[S.MEAN_WEIGHT]] = weights[src] + b[src]
            else:
                body[at[S.MEAN_WEIGHT]] = n[src]
            body[at[S.MEAN_COUNT]] = n[src]
        elif red == "sum":
            body[at[S.SUM_VALUE]] = a[src]
            body[at[S.SUM_COUNT]] = n[src]
        elif red == "last":
            body[at[S.LAST_VALUE]] = a[src]
            body[at[S.LAST_RANKS]] = n[src] > 0
        else:
            maxes[at[S.EXT_VALUE]] = -a[src] if red == "min" else a[src]
            maxes[at[S.EXT_PRESENT]] = n[src] > 0
            maxes[at[S.EXT_NAN]] = b[src]
    if not (snap.t_vals or snap.lasts):
        add_spread_host(body, maxes, plan, n, group_rank, group_size)
    return sums, maxes


def floats(values: list[float] | list[int], size: int) -> np.ndarray:
    """A list of ``size`` numbers as a float64 array (``struct`` packs about twice as fast as
    ``np.fromiter``)."""
    return np.frombuffer(struct.pack(f"{size}d", *values), np.float64)


def local_value_host(body: np.ndarray, maxes: np.ndarray, lay: Layout, spec: KeySpec) -> float:
    """This rank's own reduced value of one key, from its payloads (for spread)."""
    S, red, key = Slots, spec.reduce, spec.key
    if red in ("min", "max"):
        if maxes[lay.slot(red, S.EXT_NAN, key)] > 0:
            return math.nan
        v = float(maxes[lay.slot(red, S.EXT_VALUE, key)])
        return -v if red == "min" else v
    if red == "mean":
        den = body[lay.slot(red, S.MEAN_WEIGHT, key)]
        return float(body[lay.slot(red, S.MEAN_VALUE, key)] / den) if den != 0 else math.nan
    return float(body[lay.slot(red, S.SUM_VALUE if red == "sum" else S.LAST_VALUE, key)])


def add_spread_host(
    body: np.ndarray,
    maxes: np.ndarray,
    plan: PayloadPlan,
    n: np.ndarray,
    group_rank: int,
    group_size: int,
) -> None:
    """Each logged spread key's own value into its spread block (numpy payloads)."""
    if not len(plan.spread_slots):
        return
    lay = plan.layout
    logged = n[plan.spread_slots] > 0
    specs = [s for s, keep in zip(plan.spread_specs, logged.tolist(), strict=True) if keep]
    if not specs:
        return
    v = np.array([local_value_host(body, maxes, lay, s) for s in specs])
    places = np.array([lay.place[SPREAD_SUMS][s.key] for s in specs], dtype=np.int64)
    S = Slots

    def sums(kind: int) -> np.ndarray:
        return lay.slots(SPREAD_SUMS, kind, places)

    def extremes(kind: int) -> np.ndarray:
        return lay.slots(SPREAD_MAXES, kind, places)

    number = ~np.isnan(v)
    body[sums(S.SPREAD_SUM)] = v
    with np.errstate(over="ignore", invalid="ignore"):  # past 1.3e154 the square is inf
        body[sums(S.SPREAD_SQUARES)] = v * v  # (numpy's warning, as an error, failed the flush)
    body[sums(S.SPREAD_RANKS)] = 1.0
    body[sums(S.SPREAD_NUMBERS)] = number
    maxes[extremes(S.SPREAD_MAX)] = np.where(number, v, -np.inf)
    maxes[extremes(S.SPREAD_NEG_MIN)] = np.where(number, -v, -np.inf)
    maxes[extremes(S.SPREAD_ARGMAX)] = pack_rank(v, group_rank, group_size)


def tensor_payloads(
    snap: Snapshot,
    plan: PayloadPlan,
    device: torch.device,
    group_rank: int,
    group_size: int,
    prefix: int = 0,
) -> Payloads:
    """This rank's partial results with its buffered tensors, on ``device`` (NCCL) or the host.

    Float accumulators are laid out on the host first, copied without making the host wait,
    then the tensor samples are added on their device: no ``.item()``, no host sync.
    """
    sums_np, maxes_np = host_payloads(snap, plan, group_rank, group_size, prefix)
    has_tensors = bool(snap.t_vals or snap.lasts)
    if not has_tensors:
        return Payloads(
            to_device(torch.from_numpy(sums_np), device),
            to_device(torch.from_numpy(maxes_np), device) if plan.layout.max_size else None,
        )
    sums = to_device(torch.from_numpy(sums_np), device)
    maxes = to_device(torch.from_numpy(maxes_np), device)
    body = sums[prefix:] if prefix else sums
    _add_tensor_samples(snap, plan, body, maxes)
    _add_spread_tensor(snap, plan, body, maxes, group_rank, group_size)
    return Payloads(sums, maxes if plan.layout.max_size else None)


def _add_tensor_samples(
    snap: Snapshot, plan: PayloadPlan, sum_p: torch.Tensor, max_p: torch.Tensor
) -> None:
    lay, dev, specs, S = plan.layout, sum_p.device, snap.specs, Slots
    lasts = {
        i: t for i, t in snap.lasts.items() if i < plan.size and specs[i].key in lay.place["last"]
    }
    if lasts:
        idx = [lay.slot("last", S.LAST_VALUE, specs[i].key) for i in lasts]
        vals = torch.stack([t.to(dev, torch.float64) for t in lasts.values()])
        sum_p.index_put_((_index(idx, dev),), vals)
    members_by: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for j, t in enumerate(snap.t_vals):
        slot = snap.t_slots[j]
        if slot < plan.size and lay.by_key.get(specs[slot].key) == specs[slot]:
            members_by.setdefault((t.device, t.dtype), []).append(j)
    for members in members_by.values():
        vals = torch.stack([snap.t_vals[j] for j in members]).to(dev, torch.float64)
        mspecs = [specs[snap.t_slots[j]] for j in members]
        reds = [s.reduce for s in mspecs]
        if "mean" in reds:
            sel = [k for k, r in enumerate(reds) if r == "mean"]
            v = vals[_index(sel, dev)] if len(sel) < len(reds) else vals
            w = _weights([snap.t_weights[members[k]] for k in sel], dev)
            keys = [mspecs[k].key for k in sel]
            value_at = _index([lay.slot("mean", S.MEAN_VALUE, key) for key in keys], dev)
            weight_at = _index([lay.slot("mean", S.MEAN_WEIGHT, key) for key in keys], dev)
            sum_p.index_add_(0, value_at, torch.where(w == 0, 0.0, v * w))
            sum_p.index_add_(0, weight_at, w)
        if "sum" in reds:
            sel = [k for k, r in enumerate(reds) if r == "sum"]
            v = vals[_index(sel, dev)] if len(sel) < len(reds) else vals
            at = [lay.slot("sum", S.SUM_VALUE, mspecs[k].key) for k in sel]
            sum_p.index_add_(0, _index(at, dev), v)
        if "min" in reds or "max" in reds:
            sel = [k for k, r in enumerate(reds) if r in ("min", "max")]
            v = vals[_index(sel, dev)] if len(sel) < len(reds) else vals
            sign = torch.tensor([-1.0 if reds[k] == "min" else 1.0 for k in sel],
                                dtype=torch.float64, device=dev)  # fmt: skip
            v = v * sign
            nan = torch.isnan(v)
            value_at = _index([lay.slot(reds[k], S.EXT_VALUE, mspecs[k].key) for k in sel], dev)
            nan_at = _index([lay.slot(reds[k], S.EXT_NAN, mspecs[k].key) for k in sel], dev)
            max_p.scatter_reduce_(0, value_at, torch.where(nan, -math.inf, v), "amax")
            max_p.scatter_reduce_(0, nan_at, nan.to(torch.float64), "amax")


def _add_spread_tensor(
    snap: Snapshot,
    plan: PayloadPlan,
    sum_p: torch.Tensor,
    max_p: torch.Tensor,
    group_rank: int,
    group_size: int,
) -> None:
    """Spread blocks when tensors were buffered: computed where the payload lives."""
    if not len(plan.spread_slots):
        return
    n = snap.n
    specs = [s for i, s in zip(plan.spread_slots.tolist(), plan.spread_specs, strict=True) if n[i]]
    if not specs:
        return
    lay, dev, S = plan.layout, sum_p.device, Slots
    vals: list[torch.Tensor] = []
    for spec in specs:
        red, key = spec.reduce, spec.key
        if red in ("min", "max"):
            has_nan = max_p[lay.slot(red, S.EXT_NAN, key)] > 0
            v = torch.where(has_nan, math.nan, max_p[lay.slot(red, S.EXT_VALUE, key)])
            vals.append(-v if red == "min" else v)
        elif red == "mean":
            den = sum_p[lay.slot(red, S.MEAN_WEIGHT, key)]
            vals.append(sum_p[lay.slot(red, S.MEAN_VALUE, key)] / den)
        else:
            vals.append(sum_p[lay.slot(red, S.SUM_VALUE if red == "sum" else S.LAST_VALUE, key)])
    v = torch.stack(vals)

    def sums(kind: int) -> torch.Tensor:
        return _index([lay.slot(SPREAD_SUMS, kind, s.key) for s in specs], dev)

    def extremes(kind: int) -> torch.Tensor:
        return _index([lay.slot(SPREAD_MAXES, kind, s.key) for s in specs], dev)

    number = ~torch.isnan(v)
    sum_p[sums(S.SPREAD_SUM)] = v
    sum_p[sums(S.SPREAD_SQUARES)] = v * v
    sum_p[sums(S.SPREAD_RANKS)] = 1.0
    sum_p[sums(S.SPREAD_NUMBERS)] = number.to(torch.float64)
    neg_inf = torch.full_like(v, -math.inf)
    max_p[extremes(S.SPREAD_MAX)] = torch.where(number, v, neg_inf)
    max_p[extremes(S.SPREAD_NEG_MIN)] = torch.where(number, -v, neg_inf)
    max_p[extremes(S.SPREAD_ARGMAX)] = pack_rank_tensor(v, group_rank, group_size)


def pack_rank_tensor(v: torch.Tensor, group_rank: int, group_size: int) -> torch.Tensor:
    """[pack_rank][distlog.layout.pack_rank] on a float64 tensor where it lives (no host sync)."""
    from distlog.layout import rank_bits

    bits = rank_bits(group_size)
    big = torch.finfo(torch.float64).max
    i = v.clamp(-big, big).view(torch.int64)
    flip = torch.tensor(0x7FFFFFFFFFFFFFFF, dtype=torch.int64, device=v.device)
    key = torch.where(i >= 0, i, i ^ flip)
    mask = (1 << bits) - 1
    key = (key & ~mask) | (group_size - 1 - group_rank)
    back = torch.where(key >= 0, key, key ^ flip).view(torch.float64)
    return torch.where(torch.isnan(v), -math.inf, back)


def to_device(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """Copy a host tensor to ``dev`` without making the host wait (pinned, non-blocking)."""
    if dev.type == "cpu":
        return t
    return t.pin_memory().to(dev, non_blocking=True)


def _index(idx: list[int], dev: torch.device) -> torch.Tensor:
    return to_device(torch.from_numpy(np.array(idx, dtype=np.int64)), dev)


def _weights(ws: list[float | torch.Tensor], dev: torch.device) -> torch.Tensor:
    if all(isinstance(w, float) for w in ws):
        return to_device(torch.tensor(ws, dtype=torch.float64), dev)
    return torch.stack(
        [
            w.to(dev, torch.float64)
            if isinstance(w, torch.Tensor)
            else to_device(torch.tensor(w, dtype=torch.float64), dev)
            for w in ws
        ]
    )
