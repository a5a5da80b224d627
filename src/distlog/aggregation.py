"""The heart of distlog: per-rank scalar buffers and the fused cross-rank exchange.

Every rank folds Python numbers (and host tensors) into per-key accumulators at the call, and
appends device tensors untouched (no ``.item()``, no host sync). A *layout* (the sorted specs of
every key any rank has logged, with their slots) is agreed by all ranks; at a flush each rank
writes its partial results into two flat float64 payloads laid out by it: a SUM payload for
every mean, weighted mean, sum, "last" and per-rank spread slot, and a MAX payload for every max
and min (negated), used only when such keys exist. Keys a rank did not log contribute nothing, so
keys only some ranks log are reduced over exactly those ranks and never paired with another key.

Two protocols move the payloads; both run on a dedicated gloo group with its own timeout, so a
missing rank becomes a :class:`~distlog.errors.RankDivergenceError`, not a hang.

* **Fused** (host payloads: gloo, the default on CPU). The SUM payload is all-reduced together
  with a few control slots (flush number, step and layout version as 8-bit chunks and their
  squares, a "new keys" flag). Every rank reads the sums at no cost and checks that all ranks
  flush the same step with the same layout. Steady state: **1 collective** (2 with min/max).
  A flush on which some rank has keys the layout lacks costs one key exchange (JSON bytes,
  never pickle) and the payload is sent again: 3 collectives (4 with min/max).
* **Control + payload** (device payloads: NCCL). Reading control slots from a GPU payload would
  make every rank wait for the device, so a tiny control ``all_gather`` runs on the host group
  first, then the payloads are reduced to rank 0 on the device; other ranks never wait.
  Steady state: 2 collectives (3 with min/max); +1 on a flush that brings new keys.

This module knows no sink: :meth:`Aggregator.flush` returns plain dicts.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from distlog.errors import (
    KeyConflictError,
    LogTypeError,
    LogValueError,
    RankDivergenceError,
)
from distlog.world import World

__all__ = ["REDUCTIONS", "Aggregator", "KeySpec", "Layout", "PendingRow", "spread_keys"]

REDUCTIONS = ("mean", "sum", "min", "max", "last")
_SUM_SLOTS = {"mean": 3, "sum": 2, "last": 2, "min": 0, "max": 0}
_MAX_SLOTS = {"mean": 0, "sum": 0, "last": 0, "min": 3, "max": 3}
_NO_STEP = -(2**62)
SPREAD_SUFFIXES = ("rank_min", "rank_max", "rank_std", "rank_argmax")


def spread_keys(key: str) -> list[str]:
    """The extra keys written for a key logged with ``spread=True``."""
    return [f"{key}/{suffix}" for suffix in SPREAD_SUFFIXES]


@dataclass(frozen=True, order=True)
class KeySpec:
    """What the ranks agree on for one key: its name, reduction and whether to report spread."""

    key: str
    reduce: str
    spread: bool = False


class Layout:
    """Slot offsets of every agreed key in the SUM and MAX payloads. Identical on every rank."""

    def __init__(self, specs: list[KeySpec], group_size: int) -> None:
        self.specs = sorted(specs)
        self.by_key = {s.key: s for s in self.specs}
        self.sum_off: dict[str, int] = {}
        self.max_off: dict[str, int] = {}
        self.spread_off: dict[str, int] = {}
        s = m = 0
        max_init: list[float] = []
        for spec in self.specs:
            if _SUM_SLOTS[spec.reduce]:
                self.sum_off[spec.key] = s
                s += _SUM_SLOTS[spec.reduce]
            if _MAX_SLOTS[spec.reduce]:
                self.max_off[spec.key] = m
                m += 3
                max_init += [-math.inf, 0.0, 0.0]  # value, present, has_nan
        for spec in self.specs:
            if spec.spread:
                self.spread_off[spec.key] = s
                s += 2 * group_size  # one value and one presence slot per rank
        self.sum_size = s
        self.max_size = m
        self.max_init = torch.tensor(max_init, dtype=torch.float64)
        # For vectorised decoding: per reduction, positions in ``specs`` and payload offsets.
        self.keys = [spec.key for spec in self.specs]
        self.positions: dict[str, np.ndarray] = {}
        self.offsets: dict[str, np.ndarray] = {}
        for red in REDUCTIONS:
            pos = [i for i, spec in enumerate(self.specs) if spec.reduce == red]
            offs = self.max_off if red in ("min", "max") else self.sum_off
            self.positions[red] = np.array(pos, dtype=np.int64)
            self.offsets[red] = np.array([offs[self.keys[i]] for i in pos], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.specs)


class _Acc:
    """One key's local partial result since the last flush (Python numbers only)."""

    __slots__ = ("spec", "n", "a", "b", "nan", "last")

    def __init__(self, spec: KeySpec) -> None:
        self.spec = spec
        self.n = 0  # calls, Python and tensor alike: presence is known without a device sync
        self.a = math.inf if spec.reduce == "min" else (-math.inf if spec.reduce == "max" else 0.0)
        self.b = 0.0
        self.nan = False
        self.last: float | torch.Tensor = 0.0


@dataclass
class PendingRow:
    """The writer's share of a flush: reduced payloads that may still be in flight on a device.

    :meth:`resolve` copies them to the host and decodes the row; the logger calls it on its
    writer thread, so not even rank 0's training thread waits for the device.
    """

    step: int
    layout: Layout
    sum_payload: torch.Tensor
    max_payload: torch.Tensor | None
    group_ranks: tuple[int, ...]
    ready: torch.cuda.Event | None = None

    def resolve(self) -> dict[str, float]:
        if self.ready is not None:
            self.ready.synchronize()
        sums = self.sum_payload.numpy()
        maxs = self.max_payload.numpy() if self.max_payload is not None else np.zeros(0)
        return decode_row(self.layout, sums, maxs, self.group_ranks)


def decode_row(
    layout: Layout, sums: np.ndarray, maxs: np.ndarray, group_ranks: tuple[int, ...]
) -> dict[str, float]:
    """Final values from reduced payloads. Keys that no rank logged this flush are left out.

    Vectorised per reduction with numpy, so decoding costs about the same for 1 or 1000 keys.
    """
    n = len(layout)
    values = np.full(n, np.nan)
    present = np.zeros(n, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for red in REDUCTIONS:
            pos, o = layout.positions[red], layout.offsets[red]
            if not len(pos):
                continue
            if red == "mean":
                present[pos] = sums[o + 2] > 0
                den = sums[o + 1]
                values[pos] = np.where(den != 0, sums[o] / np.where(den != 0, den, 1.0), np.nan)
            elif red == "sum":
                present[pos] = sums[o + 1] > 0
                values[pos] = sums[o]
            elif red == "last":  # each rank's latest value, averaged over the ranks that logged it
                present[pos] = sums[o + 1] > 0
                values[pos] = sums[o] / np.maximum(sums[o + 1], 1.0)
            else:
                present[pos] = maxs[o + 1] > 0
                best = maxs[o] if red == "max" else -maxs[o]
                values[pos] = np.where(maxs[o + 2] > 0, np.nan, best)
    row = {
        k: v for k, v, ok in zip(layout.keys, values.tolist(), present.tolist(), strict=True) if ok
    }
    size = len(group_ranks)
    for key, start in layout.spread_off.items():
        if key in row:
            per_rank = [
                (group_ranks[r], float(sums[start + r]))
                for r in range(size)
                if sums[start + size + r] > 0
            ]
            row.update(_spread(key, per_rank))
    return row


def _spread(key: str, per_rank: list[tuple[int, float]]) -> dict[str, float]:
    if not per_rank:
        return {}
    values = [v for _, v in per_rank]
    finite = [(r, v) for r, v in per_rank if not math.isnan(v)]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    out = {f"{key}/rank_std": std}
    if finite:
        hi_rank, hi = max(finite, key=lambda rv: rv[1])
        out[f"{key}/rank_max"] = hi
        out[f"{key}/rank_min"] = min(v for _, v in finite)
        out[f"{key}/rank_argmax"] = float(hi_rank)
    else:
        out.update({f"{key}/rank_max": math.nan, f"{key}/rank_min": math.nan})
        out[f"{key}/rank_argmax"] = math.nan
    return dict(sorted(out.items()))


def _as_float(key: str, value: Any, what: str = "value") -> float:
    """A host number as float, or a clear error naming the key."""
    if isinstance(value, bool | np.bool_):
        return 1.0 if value else 0.0
    if isinstance(value, numbers.Real) or isinstance(value, np.integer | np.floating):
        return float(value)
    if isinstance(value, complex | np.complexfloating):
        raise LogTypeError(f"{what} for key {key!r} is complex ({value!r}); log a real number")
    raise LogTypeError(
        f"{what} for key {key!r} has type {type(value).__name__}; expected a number, a numpy "
        "scalar or a one-element tensor"
    )


class Aggregator:
    """Buffers scalars on one rank and reduces them with every rank of ``world.group``.

    Every rank of the group must construct it (it creates a gloo group for the control plane)
    and call :meth:`flush` the same number of times, with the same steps.
    """

    #: Fold CPU tensors into the host accumulators at the call (``.item()`` of a CPU tensor is
    #: not a device sync). Tests set it to False on an instance to run the device path on CPU.
    fold_host_tensors: bool = True

    #: ``"auto"``: the fused protocol for host payloads (gloo), control + payload for device
    #: payloads (NCCL). Tests set ``"control"`` on an instance to run the device protocol on CPU.
    protocol: str = "auto"

    def __init__(self, world: World, *, timeout: float = 300.0) -> None:
        self.world = world
        self.timeout = timeout
        self.layout = Layout([], world.group_size)
        self.layout_version = 0
        self.flush_count = 0
        self.collectives_last_flush = 0
        self._known: dict[str, KeySpec] = {}  # every spec this rank may log: layout + local
        self._accs: dict[str, _Acc] = {}  # keys logged since the last flush
        self._by_reduce: dict[str, list[_Acc]] = {red: [] for red in REDUCTIONS}
        self._spread_accs: list[_Acc] = []
        self._t_vals: list[torch.Tensor] = []
        self._t_accs: list[_Acc] = []
        self._t_weights: list[float | torch.Tensor] = []
        self._last_tensors: dict[str, torch.Tensor] = {}
        self._pending_conflict: KeyConflictError | None = None
        self._ctrl = self._make_control_group()

    # ----------------------------------------------------------------------------- set-up
    def _make_control_group(self) -> Any:
        w = self.world
        if w.group_size <= 1 or not w.writer_in_group:
            return None
        tmo = timedelta(seconds=self.timeout)
        if w.group is None:
            return dist.new_group(backend="gloo", timeout=tmo)
        return dist.new_group(
            ranks=list(w.group_ranks), backend="gloo", timeout=tmo, use_local_synchronization=True
        )

    @property
    def control_group(self) -> Any:
        """The logger's gloo group (own timeout), or None where nothing is communicated."""
        return self._ctrl

    @property
    def communicates(self) -> bool:
        """False where a flush moves nothing: a world of one, or a group without the writer."""
        return self._ctrl is not None

    @property
    def pending_keys(self) -> list[str]:
        """Keys logged on this rank since the last flush."""
        return list(self._accs)

    # ----------------------------------------------------------------------------- hot path
    def spec_for(self, key: Any, reduce: str, spread: bool) -> KeySpec:
        """The spec for ``key``, registering it on first use; errors name the key."""
        spec = self._known.get(key)
        if spec is not None and spec.reduce == reduce and spec.spread == spread:
            return spec
        if not isinstance(key, str):
            raise LogTypeError(f"metric keys must be strings, got {type(key).__name__} {key!r}")
        if not key or key != key.strip() or any(ord(c) < 32 for c in key):
            raise LogValueError(
                f"invalid key {key!r}: keys must be non-empty, without surrounding "
                "whitespace or control characters"
            )
        if reduce not in REDUCTIONS:
            raise LogValueError(
                f"unknown reduction {reduce!r} for key {key!r}; choose one of {', '.join(REDUCTIONS)}"
            )
        if not isinstance(spread, bool):
            raise LogTypeError(f"spread for key {key!r} must be a bool, got {spread!r}")
        if spec is not None:
            raise LogValueError(
                f"key {key!r} was logged with reduce={spec.reduce!r}, spread={spec.spread} "
                f"and now with reduce={reduce!r}, spread={spread}; a key keeps one reduction "
                "for the whole run (use another key name)"
            )
        return KeySpec(key, reduce, spread)  # registered by commit(), once a sample is buffered

    def add(
        self,
        key: str,
        value: Any,
        reduce: str = "mean",
        weight: Any = None,
        spread: bool = False,
    ) -> None:
        """Buffer one sample. Never synchronises with a device; validates before touching state."""
        self.commit(self.prepare(key, value, reduce, weight, spread))

    def prepare(
        self, key: Any, value: Any, reduce: str = "mean", weight: Any = None, spread: bool = False
    ) -> tuple[KeySpec, float, torch.Tensor | None, float, torch.Tensor | None]:
        """Validate one sample without buffering it (so a dict can be logged all or nothing)."""
        spec = self.spec_for(key, reduce, spread)
        if weight is not None and reduce != "mean":
            raise LogValueError(f"weight= is only meaningful with reduce='mean' (key {key!r})")
        v = 0.0
        tensor: torch.Tensor | None = None
        if type(value) is float or type(value) is int:
            v = float(value)
        elif isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise LogValueError(
                    f"value for key {key!r} is a tensor of shape {tuple(value.shape)}; log a "
                    "scalar (one element), e.g. reduce it with .mean() first"
                )
            if value.is_complex():
                raise LogTypeError(f"value for key {key!r} is a complex tensor; log a real number")
            if self.fold_host_tensors and value.is_cpu and type(value) is torch.Tensor:
                # A host tensor is read without any device sync: fold it like a Python number
                # (~0.5 us). Buffering it would cost ~3 us here and a stack, a cast and a free
                # per sample at the flush (7 ms for 1024 keys, scripts/bench.py).
                v = float(value.item())
            else:
                # Buffered as is on its device: no .item(), so no host-device sync. detach()
                # and reshape() cost ~1-2 us each, so only when they change something.
                tensor = value.detach() if value.requires_grad else value
                if tensor.dim():
                    tensor = tensor.reshape(())
                if tensor.untyped_storage().nbytes() > tensor.element_size():
                    tensor = tensor.clone()  # don't keep a large tensor alive until the flush
        else:
            v = _as_float(key, value)
        w = 1.0
        w_tensor: torch.Tensor | None = None
        if weight is not None:
            if isinstance(weight, torch.Tensor):
                if weight.numel() != 1:
                    raise LogValueError(
                        f"weight for key {key!r} must be a scalar, got shape {tuple(weight.shape)}"
                    )
                if weight.device.type != "cpu":
                    w_tensor = weight.detach().reshape(())  # trusted: checking it would sync
                else:
                    weight = weight.item()
            if w_tensor is None:
                w = _as_float(key, weight, "weight")
                if not (w >= 0 and math.isfinite(w)):
                    raise LogValueError(f"weight for key {key!r} must be finite and >= 0, got {w}")
        return spec, v, tensor, w, w_tensor

    def commit(
        self, sample: tuple[KeySpec, float, torch.Tensor | None, float, torch.Tensor | None]
    ) -> None:
        """Buffer a sample returned by :meth:`prepare`."""
        spec, v, tensor, w, w_tensor = sample
        key, reduce = spec.key, spec.reduce
        acc = self._accs.get(key)
        if acc is None:
            acc = self._accs[key] = _Acc(spec)
            self._by_reduce[reduce].append(acc)
            if spec.spread:
                self._spread_accs.append(acc)
            self._known.setdefault(key, spec)
        acc.n += 1
        if reduce == "last":
            if tensor is not None:
                self._last_tensors[key] = tensor
            else:
                self._last_tensors.pop(key, None)
                acc.last = v
            return
        if tensor is not None or w_tensor is not None:
            if tensor is None:
                assert w_tensor is not None
                tensor = _to_device(torch.tensor(v, dtype=torch.float64), w_tensor.device)
            self._t_vals.append(tensor)
            self._t_accs.append(acc)
            self._t_weights.append(w_tensor if w_tensor is not None else w)
            return
        if reduce == "mean":
            if w != 0.0:
                acc.a += v * w
                acc.b += w
        elif reduce == "sum":
            acc.a += v
        elif v != v:  # NaN: min/max report NaN if any sample was NaN, like torch.amax
            acc.nan = True
        elif reduce == "max":
            if v > acc.a:
                acc.a = v
        elif v < acc.a:
            acc.a = v

    def clear(self) -> None:
        """Drop everything buffered since the last flush."""
        self._accs.clear()
        for accs in self._by_reduce.values():
            accs.clear()
        self._spread_accs.clear()
        self._t_vals.clear()
        self._t_accs.clear()
        self._t_weights.clear()
        self._last_tensors.clear()

    # ----------------------------------------------------------------------------- flush
    def flush(self, step: int) -> PendingRow | None:
        """Reduce everything buffered since the last flush over the group.

        Collective: every rank of the group must call it with the same ``step``. Returns the
        writer's :class:`PendingRow` on global rank 0 and None elsewhere. On an error that all
        ranks see alike (divergence, key conflicts) the buffers are kept for the next try,
        except the conflicting keys.
        """
        self.collectives_last_flush = 0
        w = self.world
        if not self.communicates:
            if not w.is_global_zero:
                self.clear()
                self.flush_count += 1
                return None
            self._adopt_local_keys()
        elif self.fused:
            return self._flush_fused(step)
        else:
            self._agree_on_keys(step)
        try:
            sum_p, max_p = self._local_payloads()
        finally:
            self.clear()
        self.flush_count += 1
        ready: torch.cuda.Event | None = None
        if self.communicates:
            # The writer, global rank 0, is a member of every group that communicates.
            group = self._payload_group()
            self._collective(
                step, lambda: dist.reduce(sum_p, dst=0, op=dist.ReduceOp.SUM, group=group)
            )
            if max_p is not None:
                maxes = max_p
                self._collective(
                    step, lambda: dist.reduce(maxes, dst=0, op=dist.ReduceOp.MAX, group=group)
                )
        if not w.is_global_zero:
            return None
        if sum_p.device.type == "cuda":
            sum_p = sum_p.to("cpu", non_blocking=True)
            max_p = max_p.to("cpu", non_blocking=True) if max_p is not None else None
            ready = torch.cuda.Event()
            ready.record()
        return PendingRow(step, self.layout, sum_p, max_p, w.group_ranks, ready)

    @property
    def fused(self) -> bool:
        """True when flushes use the fused protocol (host payloads: every rank reads results)."""
        if self.protocol == "auto":
            return self.world.comm_device.type == "cpu"
        return self.protocol == "fused"

    def _flush_fused(self, step: int) -> PendingRow | None:
        """One all_reduce carries the control check and every mean/sum/last key.

        The payload is all-reduced (not reduced), so every rank reads the control slots for
        free: their sums prove that all ranks flush the same step with the same layout. A rank
        with keys the layout lacks sends an empty payload and sets a flag; every rank then sees
        the flag, the key specs are exchanged once and the payload is sent again with the new
        layout (3 collectives, 4 with min/max keys, on such a flush; 1 or 2 otherwise).
        """
        new = self._new_specs()
        blob = _encode_specs(new)
        if new:
            # This round is redone with the new layout: send nothing but the control slots.
            sum_p = torch.zeros(self.layout.sum_size, dtype=torch.float64)
            max_p = None
        else:
            sum_p, max_p = self._local_payloads()
        header = _control_slots(self.flush_count, step, self.layout_version, bool(new), len(blob))
        buf = torch.cat([header, sum_p])
        self._collective(step, lambda: dist.all_reduce(buf, group=self._ctrl))
        head = buf[: len(header)].tolist()
        if not _control_agrees(header.tolist(), head, self.world.group_size):
            self._raise_divergence(step)  # every rank sees the mismatch and raises alike
        n_new, total_len = int(head[1]), int(head[2])
        if n_new == 0:
            sums = buf[len(header) :]
            if self.layout.max_size:
                maxes = max_p if max_p is not None else self.layout.max_init.clone()
                self._collective(
                    step, lambda: dist.all_reduce(maxes, op=dist.ReduceOp.MAX, group=self._ctrl)
                )
                max_p = maxes
        else:
            padded = torch.full((total_len,), ord(" "), dtype=torch.uint8)
            if blob:
                padded[: len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
            blobs = [torch.empty_like(padded) for _ in range(self.world.group_size)]
            self._collective(step, lambda: dist.all_gather(blobs, padded, group=self._ctrl))
            self._merge_specs([bytes(b.tolist()) for b in blobs])
            sums, max_p = self._local_payloads()
            self._collective(step, lambda: dist.all_reduce(sums, group=self._ctrl))
            if max_p is not None:
                maxes = max_p
                self._collective(
                    step, lambda: dist.all_reduce(maxes, op=dist.ReduceOp.MAX, group=self._ctrl)
                )
        self.clear()
        self.flush_count += 1
        if not self.world.is_global_zero:
            return None
        return PendingRow(step, self.layout, sums, max_p, self.world.group_ranks, None)

    def _new_specs(self) -> list[KeySpec]:
        return sorted(a.spec for k, a in self._accs.items() if k not in self.layout.by_key)

    def _raise_divergence(self, step: int) -> None:
        """Explain a control mismatch: one all_gather of (flush #, step, layout version)."""
        mine = torch.tensor([self.flush_count, step, self.layout_version], dtype=torch.int64)
        table = [torch.empty_like(mine) for _ in range(self.world.group_size)]
        self._collective(step, lambda: dist.all_gather(table, mine, group=self._ctrl))
        self._check_rows(step, [t.tolist() for t in table])
        raise RankDivergenceError(f"ranks disagree on the flush at log step {step}")

    def _check_rows(self, step: int, rows: list[list[int]]) -> None:
        """Raise if the ranks' (flush #, step, layout version) rows differ."""
        ranks = self.world.group_ranks
        if len({r[0] for r in rows}) > 1 or len({r[1] for r in rows}) > 1:
            detail = ", ".join(
                f"rank {ranks[i]}: flush #{r[0]} at step {r[1]}" for i, r in enumerate(rows)
            )
            raise RankDivergenceError(
                f"ranks flushed out of step at log step {step}: {detail}. Every rank must call "
                "flush() at the same steps."
            )
        if len({r[2] for r in rows}) > 1:
            raise RankDivergenceError(
                f"ranks disagree on the key layout at log step {step} (versions "
                f"{[r[2] for r in rows]}): a rank restarted without the others?"
            )

    def _payload_group(self) -> Any:
        # CPU payloads ride on the control group (its timeout guards them too); device payloads
        # need the user's group, whose backend (NCCL) can reduce them without a host copy.
        return self._ctrl if self.world.comm_device.type == "cpu" else self.world.group

    def _adopt_local_keys(self) -> None:
        new = [a.spec for k, a in self._accs.items() if k not in self.layout.by_key]
        if new:
            self.layout = Layout([*self.layout.specs, *new], self.world.group_size)
            self.layout_version += 1

    def _agree_on_keys(self, step: int) -> None:
        """Control exchange (+ key exchange when needed): same layout on every rank, or raise."""
        blob = _encode_specs(self._new_specs())
        mine = torch.tensor(
            [self.flush_count, step, self.layout_version, len(blob)], dtype=torch.int64
        )
        size = self.world.group_size
        table = [torch.empty_like(mine) for _ in range(size)]
        self._collective(step, lambda: dist.all_gather(table, mine, group=self._ctrl))
        rows = [t.tolist() for t in table]
        self._check_rows(step, rows)
        longest = max(r[3] for r in rows)
        if longest == 0:
            return
        padded = torch.full((longest,), ord(" "), dtype=torch.uint8)
        if blob:
            padded[: len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        blobs = [torch.empty_like(padded) for _ in range(size)]
        self._collective(step, lambda: dist.all_gather(blobs, padded, group=self._ctrl))
        self._merge_specs([bytes(b.tolist()) for b in blobs])

    def _merge_specs(self, blobs: list[bytes]) -> None:
        """Merge every rank's new key specs (JSON, padded with spaces) into the next layout.

        Every rank merges the same blobs in rank order, so every rank gets the same layout.
        A key that ranks logged with different specs keeps the first one (the layout's, else
        the lowest rank's); the other ranks' samples of it are dropped and a KeyConflictError
        is raised at the end of the flush.
        """
        ranks = self.world.group_ranks
        merged: dict[str, KeySpec] = dict(self.layout.by_key)
        origin: dict[str, int] = {}
        conflicts: dict[str, set[str]] = {}
        for i, raw in enumerate(blobs):
            text = raw.decode().strip()
            if not text:
                continue
            for key, red, spr in json.loads(text):
                spec = KeySpec(key, red, bool(spr))
                have = merged.get(key)
                if have is None:
                    merged[key] = spec
                    origin[key] = ranks[i]
                elif have != spec:
                    first = origin.get(key, "an earlier flush")
                    conflicts.setdefault(key, {f"reduce={have.reduce!r} (rank {first})"}).add(
                        f"reduce={red!r} spread={bool(spr)} (rank {ranks[i]})"
                    )
        for key in conflicts:
            spec = merged[key]
            acc = self._accs.get(key)
            if acc is not None and acc.spec != spec:
                self._drop_key(key)
                self._known[key] = spec
        self.layout = Layout(list(merged.values()), self.world.group_size)
        self.layout_version += 1
        self._known.update(merged)
        if conflicts:
            self._pending_conflict = KeyConflictError(
                "ranks logged the same key with different reductions: "
                + "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in sorted(conflicts.items()))
                + ". The first spec was kept and the other samples of that key were dropped."
            )

    def _drop_key(self, key: str) -> None:
        acc = self._accs.pop(key, None)
        if acc is not None:
            self._by_reduce[acc.spec.reduce].remove(acc)
            if acc in self._spread_accs:
                self._spread_accs.remove(acc)
        self._last_tensors.pop(key, None)
        keep = [i for i, a in enumerate(self._t_accs) if a.spec.key != key]
        self._t_vals = [self._t_vals[i] for i in keep]
        self._t_accs = [self._t_accs[i] for i in keep]
        self._t_weights = [self._t_weights[i] for i in keep]

    def _collective(self, step: int, call: Callable[[], Any]) -> None:
        self.collectives_last_flush += 1
        start = time.monotonic()
        try:
            call()
        except RuntimeError as exc:  # gloo reports timeouts and dead peers as RuntimeError
            waited = time.monotonic() - start
            missing = self._missing_ranks()
            who = f"; ranks that never reached it: {missing}" if missing else ""
            raise RankDivergenceError(
                f"the flush at log step {step} failed after {waited:.1f}s on rank "
                f"{self.world.rank} (timeout {self.timeout:.0f}s): a rank crashed, skipped "
                f"the flush or flushes on another schedule{who}. Cause: {exc}"
            ) from exc

    def _missing_ranks(self) -> list[int]:
        """Best effort: ranks that did not mark their arrival in the job's store."""
        try:
            store = dist.distributed_c10d._get_default_store()
        except Exception:
            return []
        prefix = f"distlog/{self.world.group_ranks}/{self.flush_count}/"
        try:
            store.set(prefix + str(self.world.rank), "1")
            time.sleep(min(2.0, self.timeout / 4))
            return [r for r in self.world.group_ranks if not store.check([prefix + str(r)])]
        except Exception:
            return []

    def raise_pending_conflict(self) -> None:
        err = self._pending_conflict
        if err is not None:
            self._pending_conflict = None
            raise err

    def _local_payloads(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's partial results laid out by the agreed layout."""
        lay = self.layout
        sum_host = torch.zeros(lay.sum_size, dtype=torch.float64)
        max_host = lay.max_init.clone() if lay.max_size else None
        by_reduce = self._by_reduce
        # One vectorised write per reduction and slot (list comprehensions, tensor indices:
        # indexing with Python lists costs microseconds per element).
        for red, accs in by_reduce.items():
            if not accs:
                continue
            if red in ("min", "max"):
                assert max_host is not None
                o = _i64([lay.max_off[a.spec.key] for a in accs])
                sign = -1.0 if red == "min" else 1.0
                max_host[o] = _f64([sign * a.a for a in accs])
                max_host[o + 1] = 1.0
                max_host[o + 2] = _f64([float(a.nan) for a in accs])
                continue
            o = _i64([lay.sum_off[a.spec.key] for a in accs])
            if red == "mean":
                sum_host[o] = _f64([a.a for a in accs])
                sum_host[o + 1] = _f64([a.b for a in accs])
                sum_host[o + 2] = _f64([float(a.n) for a in accs])
            elif red == "sum":
                sum_host[o] = _f64([a.a for a in accs])
                sum_host[o + 1] = _f64([float(a.n) for a in accs])
            else:  # last; tensor "last" values are written on the device below
                sum_host[o] = _f64([a.last for a in accs])  # type: ignore[misc]
                sum_host[o + 1] = 1.0

        dev = self.world.comm_device
        if dev.type == "cpu":
            sum_p, max_p = sum_host, max_host
        else:
            sum_p = _to_device(sum_host, dev)
            max_p = _to_device(max_host, dev) if max_host is not None else None
        self._add_tensor_samples(sum_p, max_p)
        self._add_spread(sum_p, max_p)
        return sum_p, max_p

    def _add_tensor_samples(self, sum_p: torch.Tensor, max_p: torch.Tensor | None) -> None:
        lay, dev = self.layout, sum_p.device
        if self._last_tensors:
            idx = [lay.sum_off[k] for k in self._last_tensors]
            vals = torch.stack([t.to(dev, torch.float64) for t in self._last_tensors.values()])
            sum_p.index_put_((_index(idx, dev),), vals)
        if not self._t_vals:
            return
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, t in enumerate(self._t_vals):
            groups.setdefault((t.device, t.dtype), []).append(i)
        for members in groups.values():
            vals = torch.stack([self._t_vals[i] for i in members]).to(dev, torch.float64)
            accs = [self._t_accs[i] for i in members]
            reds = [a.spec.reduce for a in accs]
            if any(r == "mean" for r in reds):
                sel = [j for j, r in enumerate(reds) if r == "mean"]
                v = vals[_index(sel, dev)] if len(sel) < len(reds) else vals
                w = _weights([self._t_weights[members[j]] for j in sel], dev)
                offs = [lay.sum_off[accs[j].spec.key] for j in sel]
                sum_p.index_add_(0, _index(offs, dev), torch.where(w == 0, 0.0, v * w))
                sum_p.index_add_(0, _index([o + 1 for o in offs], dev), w)
            if any(r == "sum" for r in reds):
                sel = [j for j, r in enumerate(reds) if r == "sum"]
                v = vals[_index(sel, dev)] if len(sel) < len(reds) else vals
                offs = [lay.sum_off[accs[j].spec.key] for j in sel]
                sum_p.index_add_(0, _index(offs, dev), v)
            if max_p is not None and any(r in ("min", "max") for r in reds):
                sel = [j for j, r in enumerate(reds) if r in ("min", "max")]
                v = vals[_index(sel, dev)] if len(sel) < len(reds) else vals
                sign = _to_device(_f64([-1.0 if reds[j] == "min" else 1.0 for j in sel]), dev)
                v = v * sign
                nan = torch.isnan(v)
                slots = _index([lay.max_off[accs[j].spec.key] for j in sel], dev)
                max_p.scatter_reduce_(0, slots, torch.where(nan, -math.inf, v), "amax")
                max_p.scatter_reduce_(0, slots + 2, nan.to(torch.float64), "amax")

    def _add_spread(self, sum_p: torch.Tensor, max_p: torch.Tensor | None) -> None:
        """Each rank's own reduced value of every spread key, in its per-rank slot."""
        lay, dev, me, size = self.layout, sum_p.device, self.world.group_rank, self.world.group_size
        if not self._spread_accs:
            return
        specs = [a.spec for a in self._spread_accs]
        locals_: list[torch.Tensor] = []
        for spec in specs:
            if spec.reduce in ("min", "max"):
                o = lay.max_off[spec.key]
                assert max_p is not None
                v = torch.where(max_p[o + 2] > 0, math.nan, max_p[o])
                locals_.append(-v if spec.reduce == "min" else v)
            else:
                o = lay.sum_off[spec.key]
                locals_.append(sum_p[o] / sum_p[o + 1] if spec.reduce == "mean" else sum_p[o])
        offs = [lay.spread_off[s.key] + me for s in specs]
        sum_p.index_put_((_index(offs, dev),), torch.stack(locals_))
        sum_p.index_fill_(0, _index([o + size for o in offs], dev), 1.0)


def _encode_specs(specs: list[KeySpec]) -> bytes:
    """Key specs as JSON bytes for the key exchange (JSON, never pickle: safe to decode)."""
    return json.dumps([[s.key, s.reduce, s.spread] for s in specs]).encode() if specs else b""


_CHUNKS = 6  # 8-bit chunks of each control number: 48 bits


def _control_slots(seq: int, step: int, version: int, has_new: bool, blob_len: int) -> torch.Tensor:
    """The fused protocol's control slots: [1, has_new, blob_len, then per 8-bit chunk c of
    seq, step and layout version: c and c*c]. Summed over W ranks, every rank can check that
    all ranks sent the same numbers: sum(c) == W*c and sum(c*c) == W*c*c for every chunk holds
    only if all are equal (sum((c_i - c)^2) = 0), and stays exact in float64 for any W < 10^5.
    """
    slots = [1.0, float(has_new), float(blob_len)]
    for number in (seq, step, version):
        for i in range(_CHUNKS):
            c = float((number >> (8 * i)) & 0xFF)
            slots += [c, c * c]
    return torch.tensor(slots, dtype=torch.float64)


def _control_agrees(mine: list[float], summed: list[float], size: int) -> bool:
    if summed[0] != size:
        return False
    return all(summed[i] == size * mine[i] for i in range(3, len(mine)))


def _to_device(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """Copy a host tensor to ``dev`` without making the host wait (pinned, non-blocking)."""
    if dev.type == "cpu":
        return t
    return t.pin_memory().to(dev, non_blocking=True)


def _f64(values: list[float]) -> torch.Tensor:
    """A float64 CPU tensor from a list, through numpy (torch.tensor(list) is ~10x slower)."""
    return torch.from_numpy(np.array(values, dtype=np.float64))


def _i64(values: list[int]) -> torch.Tensor:
    return torch.from_numpy(np.array(values, dtype=np.int64))


def _index(idx: list[int], dev: torch.device) -> torch.Tensor:
    t = _i64(idx)
    return _to_device(t, dev)


def _weights(ws: list[float | torch.Tensor], dev: torch.device) -> torch.Tensor:
    if all(isinstance(w, float) for w in ws):
        t = torch.tensor(ws, dtype=torch.float64)
        return _to_device(t, dev)
    return torch.stack(
        [
            w.to(dev, torch.float64)
            if isinstance(w, torch.Tensor)
            else _to_device(torch.tensor(w, dtype=torch.float64), dev)
            for w in ws
        ]
    )
