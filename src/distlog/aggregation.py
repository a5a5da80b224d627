"""The heart of distlog: per-rank scalar buffers and the fused cross-rank exchange.

Every rank folds Python numbers (and host tensors) into per-key accumulators at the call (list
items indexed by a slot the key keeps for the whole run), and appends device tensors untouched
(no ``.item()``, no host sync). A *layout* (the sorted specs of every key any rank has logged,
with their payload offsets) is agreed by all ranks; at a flush each rank scatters its
accumulators, with a few vectorised numpy writes whatever the number of keys, into two flat
float64 payloads laid out by it: a SUM payload for
every mean, weighted mean, sum, "last" and per-rank spread slot, and a MAX payload for every max
and min (negated), used only when such keys exist. Keys a rank did not log contribute nothing, so
keys only some ranks log are reduced over exactly those ranks and never paired with another key.

Two protocols move the payloads; both run on a dedicated gloo group with its own timeout, so a
missing rank becomes a :class:`~distlog.errors.RankDivergenceError`, not a hang.

* **Fused** (host payloads: gloo, the default on CPU). Each rank's payloads travel with a few
  control numbers (flush number, step, layout version, a "new keys" flag), and every rank
  reads the result at no cost and checks that all ranks flush the same step with the same
  layout. While the traffic is small (rows x ranks up to 1 MiB a rank) the rows are
  all-gathered and each rank reduces the table itself: **1 collective**, min/max included.
  Beyond, the SUM payload is all-reduced with control slots (the numbers as 8-bit chunks and
  their squares), and min/max take a second all_reduce. A flush on which some rank has keys
  the layout lacks costs one key exchange (JSON bytes, never pickle) and the payload is sent
  again: 3 collectives (4 with all_reduce and min/max).
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
import unicodedata
from collections.abc import Callable, Collection
from dataclasses import dataclass
from itertools import compress
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from distlog import groups
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
    if present.all():
        row = dict(zip(layout.keys, values.tolist(), strict=True))
    else:
        kept = values[present].tolist()
        row = dict(zip(compress(layout.keys, present.tolist()), kept, strict=True))
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
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "biuf":
        value = value.reshape(()).item()  # a 0-d or one-element array, as numpy reductions give
    if isinstance(value, numbers.Real) or isinstance(value, np.integer | np.floating):
        try:
            return float(value)
        except OverflowError:
            raise LogValueError(
                f"{what} for key {key!r} is too large for a float64 ({_short(value)})"
            ) from None
    if isinstance(value, complex | np.complexfloating):
        raise LogTypeError(f"{what} for key {key!r} is complex ({value!r}); log a real number")
    raise LogTypeError(
        f"{what} for key {key!r} has type {type(value).__name__}; expected a number, a numpy "
        "scalar or a one-element tensor"
    )


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain_tensor(key: str, value: torch.Tensor, what: str = "value") -> torch.Tensor:
    """``value`` as a dense one-element real tensor, or a clear error naming the key.

    Everything that could fail at the flush is checked here, at the call: a failure inside a
    flush would leave the other ranks waiting in the payload exchange until the timeout.
    """
    if hasattr(value, "placements") and hasattr(value, "to_local"):  # a DTensor
        if not all(p.is_replicate() for p in value.placements):
            raise LogValueError(
                f"{what} for key {key!r} is a DTensor with placements {tuple(value.placements)}; "
                "log value.full_tensor() (a collective every rank must call) or a replicated "
                "value"
            )
        value = value.to_local()
    if value.is_nested or value.layout != torch.strided:
        raise LogTypeError(
            f"{what} for key {key!r} is a {'nested' if value.is_nested else str(value.layout)} "
            "tensor; log a dense one-element tensor"
        )
    if value.is_meta:
        raise LogValueError(f"{what} for key {key!r} is a meta tensor: it holds no value")
    if value.is_quantized:
        value = value.dequantize()
    if value.numel() != 1:
        raise LogValueError(
            f"{what} for key {key!r} is a tensor of shape {tuple(value.shape)}; log a "
            "scalar (one element), e.g. reduce it with .mean() first"
        )
    if value.is_complex():
        raise LogTypeError(f"{what} for key {key!r} is a complex tensor; log a real number")
    return value


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

    #: The fused protocol's collective. ``"all_gather"``: every rank receives every rank's
    #: payload and reduces the table itself; on gloo an all_gather takes half the message rounds
    #: of an all_reduce (about half its time between 2-8 ranks, scripts/bench.py), min/max ride
    #: in the same message and the control check is exact. Its traffic grows with the group, so
    #: ``"auto"`` uses it while a flush gathers at most :attr:`gather_limit_bytes` a rank, and
    #: ``"all_reduce"`` beyond. Tests set either on an instance.
    fused_collective: str = "auto"
    gather_limit_bytes: int = 1 << 20

    def __init__(
        self, world: World, *, timeout: float = 300.0, reserved: Collection[str] = ()
    ) -> None:
        self.world = world
        self.timeout = timeout
        self.reserved = frozenset(reserved)  # names the row format uses itself ("step", ...)
        self.layout = Layout([], world.group_size)
        self.layout_version = 0
        self.flush_count = 0
        self.collectives_last_flush = 0
        self._known: dict[str, KeySpec] = {}  # every spec this rank may log: layout + local
        # Slot-indexed accumulators: every key this rank has logged owns one local slot for
        # the whole run, so a call updates list items and a flush turns the lists into numpy
        # arrays and scatters them into the payload in a few vectorised writes (no per-key
        # Python work at the flush). Per slot: ``_a`` the weighted sum (mean), sum, latest
        # value (last) or extreme (min/max); ``_b`` the weight sum (mean) or a NaN flag
        # (min/max); ``_n`` the calls since the last flush, tensors included, so presence is
        # known without a device sync.
        self._index: dict[str, int] = {}
        self._specs: list[KeySpec] = []
        self._a0: list[float] = []  # each slot's value after a flush
        self._a: list[float] = []
        self._b: list[float] = []
        self._n: list[int] = []
        self._unplaced: list[int] = []  # slots whose key the layout lacks
        self._spread_slots: list[int] = []
        self._plan: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        self._t_vals: list[torch.Tensor] = []
        self._t_slots: list[int] = []
        self._t_weights: list[float | torch.Tensor] = []
        self._last_tensors: dict[str, torch.Tensor] = {}
        self._pending_conflict: KeyConflictError | None = None
        # Set when a collective failed (timeout, dead peer): the gloo group's state is unknown
        # after that, so later flushes fail at once instead of pairing with stale messages.
        self.failure: str | None = None
        self._ctrl = self._make_control_group()

    # ----------------------------------------------------------------------------- set-up
    def _make_control_group(self) -> Any:
        return groups.control_group(self.world, self.timeout)

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
        n = self._n
        return [key for key, i in self._index.items() if n[i]]

    # ----------------------------------------------------------------------------- hot path
    def spec_for(self, key: Any, reduce: str, spread: bool) -> KeySpec:
        """The spec for ``key``, registering it on first use; errors name the key."""
        spec = self._known.get(key)
        if spec is not None and spec.reduce == reduce and spec.spread == spread:
            return spec
        if not isinstance(key, str):
            raise LogTypeError(f"metric keys must be strings, got {type(key).__name__} {key!r}")
        if (
            not key
            or key != key.strip()
            or any(unicodedata.category(c) in ("Cc", "Cs") for c in key)
        ):
            raise LogValueError(
                f"invalid key {key!r}: keys must be non-empty, without surrounding "
                "whitespace, control characters or lone surrogates (they can't be written as "
                "UTF-8)"
            )
        if reduce not in REDUCTIONS:
            raise LogValueError(
                f"unknown reduction {reduce!r} for key {key!r}; choose one of {', '.join(REDUCTIONS)}"
            )
        if not isinstance(spread, bool):
            raise LogTypeError(f"spread for key {key!r} must be a bool, got {spread!r}")
        if key in self.reserved:
            raise LogValueError(
                f"key {key!r} is reserved: every row already has {', '.join(sorted(self.reserved))}"
                " columns; use another name"
            )
        self._check_spread_names(key, spread)
        if spec is not None:
            raise LogValueError(
                f"key {key!r} was logged with reduce={spec.reduce!r}, spread={spec.spread} "
                f"and now with reduce={reduce!r}, spread={spread}; a key keeps one reduction "
                "for the whole run (use another key name)"
            )
        return KeySpec(key, reduce, spread)  # registered by commit(), once a sample is buffered

    def _check_spread_names(self, key: str, spread: bool) -> None:
        """A key may not share its name with the spread columns of another key."""
        base, _, suffix = key.rpartition("/")
        owner = self._known.get(base) if suffix in SPREAD_SUFFIXES else None
        if owner is not None and owner.spread:
            raise LogValueError(
                f"key {key!r} is a spread column of key {base!r} (logged with spread=True); "
                "use another name"
            )
        if spread:
            taken = [k for k in spread_keys(key) if k in self._known]
            if taken:
                raise LogValueError(
                    f"key {key!r} with spread=True would write {taken[0]!r}, which is already "
                    "a key of its own; use another name"
                )

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
        if type(value) is float:
            v = value
        elif type(value) is int and -(2**1023) < value < 2**1023:
            v = float(value)
        elif isinstance(value, torch.Tensor):
            if self.fold_host_tensors and value.is_cpu and type(value) is torch.Tensor:
                # A host tensor is read without any device sync: fold it like a Python number
                # (~0.5 us). Buffering it would cost ~3 us here and a stack, a cast and a free
                # per sample at the flush (7 ms for 1024 keys, scripts/bench.py). What .item()
                # refuses (several elements, nested, ...) or float() refuses (complex) gets its
                # clear error from _plain_tensor.
                try:
                    v = float(value.item())
                except Exception:
                    _plain_tensor(key, value)
                    raise
            else:
                # Checked here, not at the flush: there a failure would leave the other ranks
                # waiting in the payload exchange.
                value = _plain_tensor(key, value)
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
                weight = _plain_tensor(key, weight, "weight")
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
        i = self._index.get(spec.key)
        if i is None:
            i = self._register(spec)
        self._n[i] += 1
        reduce = spec.reduce
        if tensor is None and w_tensor is None:
            if reduce == "mean":
                if w != 0.0:
                    self._a[i] += v * w
                    self._b[i] += w
            elif reduce == "sum":
                self._a[i] += v
            elif reduce == "last":
                self._a[i] = v
                if self._last_tensors:
                    self._last_tensors.pop(spec.key, None)
            elif v != v:  # NaN: min/max report NaN if any sample was NaN, like torch.amax
                self._b[i] = 1.0
            elif reduce == "max":
                if v > self._a[i]:
                    self._a[i] = v
            elif v < self._a[i]:
                self._a[i] = v
            return
        if reduce == "last":
            assert tensor is not None  # weights are only accepted with reduce="mean"
            self._last_tensors[spec.key] = tensor
            return
        if tensor is None:
            assert w_tensor is not None
            tensor = _to_device(torch.tensor(v, dtype=torch.float64), w_tensor.device)
        self._t_vals.append(tensor)
        self._t_slots.append(i)
        self._t_weights.append(w_tensor if w_tensor is not None else w)

    def _register(self, spec: KeySpec) -> int:
        """Give a key its local slot (once per run) and remember its spec."""
        i = len(self._specs)
        self._index[spec.key] = i
        self._specs.append(spec)
        a0 = _initial(spec.reduce)
        self._a0.append(a0)
        self._a.append(a0)
        self._b.append(0.0)
        self._n.append(0)
        if spec.key not in self.layout.by_key:
            self._unplaced.append(i)
        if spec.spread:
            self._spread_slots.append(i)
        self._known.setdefault(spec.key, spec)
        self._plan = None
        return i

    def _respec(self, key: str, spec: KeySpec) -> None:
        """Give a key's slot the layout's spec, dropping what was buffered under another one."""
        i = self._index[key]
        self._drop_key(key)
        self._specs[i] = spec
        self._a0[i] = self._a[i] = _initial(spec.reduce)
        if spec.spread and i not in self._spread_slots:
            self._spread_slots.append(i)
        elif not spec.spread and i in self._spread_slots:
            self._spread_slots.remove(i)
        self._plan = None

    def clear(self) -> None:
        """Drop everything buffered since the last flush."""
        size = len(self._specs)
        self._a = list(self._a0)
        self._b = [0.0] * size
        self._n = [0] * size
        self._t_vals.clear()
        self._t_slots.clear()
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
        if self.failure is not None:
            raise RankDivergenceError(
                f"no flush is possible after the logging group failed ({self.failure}); "
                "finish the logger with a non-zero exit code and restart the job"
            )
        if not self.communicates:
            if not w.is_global_zero:
                self.clear()
                self.flush_count += 1
                return None
            self._adopt_local_keys()
        elif self.fused:
            return self._flush_gathered(step) if self._gathers() else self._flush_fused(step)
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

    def _gathers(self) -> bool:
        """True when the fused flush all-gathers the payloads (the same answer on every rank:
        it depends on the layout, which all ranks share, and the group's size only)."""
        if self.fused_collective != "auto":
            return self.fused_collective == "all_gather"
        lay = self.layout
        width = _GATHER_HEAD + lay.sum_size + lay.max_size
        return self.world.group_size * width * 8 <= self.gather_limit_bytes

    def _flush_gathered(self, step: int) -> PendingRow | None:
        """One all_gather carries the control check and every key (min/max included).

        Each rank sends one float64 row: a header (flush #, step, layout version, new-keys
        flag, key blob length), its SUM payload and its MAX payload. Every rank receives the
        whole table, checks the headers exactly (a rank out of step is named at once, with no
        further collective) and reduces the columns itself, in rank order, so every rank gets
        the same sums. A flush that brings new keys exchanges the key specs and gathers again
        with the new layout (3 collectives on such a flush, 1 otherwise).
        """
        new = self._new_specs()
        blob = _encode_specs(new)
        table = self._gather_round(step, bool(new), len(blob))
        heads = table[:, :_GATHER_HEAD]
        if heads[:, 3].any():  # some rank brought keys the layout lacks
            self._exchange_specs(step, blob, int(heads[:, 4].max()))
            table = self._gather_round(step, False, 0)
        lay = self.layout
        body = table[:, _GATHER_HEAD:]
        sums = body[:, : lay.sum_size].sum(axis=0)
        maxes = body[:, lay.sum_size :].max(axis=0) if lay.max_size else None
        self.clear()
        self.flush_count += 1
        if not self.world.is_global_zero:
            return None
        return PendingRow(
            step,
            lay,
            torch.from_numpy(sums),
            torch.from_numpy(maxes) if maxes is not None else None,
            self.world.group_ranks,
            None,
        )

    def _gather_round(self, step: int, has_new: bool, blob_len: int) -> np.ndarray:
        """All-gather this rank's header + payloads; raise if the ranks' headers disagree."""
        lay = self.layout
        if has_new:  # this round is redone with the new layout: send neutral payloads
            sums = np.zeros(_GATHER_HEAD + lay.sum_size)
            maxes = lay.max_init.numpy()
        else:
            sum_t, max_t = self._local_payloads(prefix=_GATHER_HEAD)
            sums = sum_t.numpy()
            maxes = max_t.numpy() if max_t is not None else np.zeros(0)
        row = np.concatenate([sums, maxes])
        row[:_GATHER_HEAD] = (self.flush_count, step, self.layout_version, has_new, blob_len)
        mine = torch.from_numpy(row)
        out = torch.empty(self.world.group_size, len(row), dtype=torch.float64)
        rows = list(out.unbind(0))  # views: gloo writes each rank's row in place
        self._collective(step, lambda: dist.all_gather(rows, mine, group=self._ctrl))
        table = out.numpy()
        ids = table[:, :3]
        if (ids != ids[0]).any():  # every rank sees the same table and raises alike
            self._check_rows(step, ids.astype(np.int64).tolist())
            raise RankDivergenceError(f"ranks disagree on the flush at log step {step}")
        return table

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
        header = _control_slots(self.flush_count, step, self.layout_version, bool(new), len(blob))
        h = len(header)
        max_p: torch.Tensor | None
        if new:
            # This round is redone with the new layout: send nothing but the control slots.
            buf, max_p = torch.zeros(h + self.layout.sum_size, dtype=torch.float64), None
        else:
            buf, max_p = self._local_payloads(prefix=h)
        buf.numpy()[:h] = header
        self._collective(step, lambda: dist.all_reduce(buf, group=self._ctrl))
        head = buf.numpy()[:h].tolist()
        if not _control_agrees(header, head, self.world.group_size):
            self._raise_divergence(step)  # every rank sees the mismatch and raises alike
        n_new, total_len = int(head[1]), int(head[2])
        if n_new == 0:
            sums = buf[h:]
            if self.layout.max_size:
                maxes = max_p if max_p is not None else self.layout.max_init.clone()
                self._collective(
                    step, lambda: dist.all_reduce(maxes, op=dist.ReduceOp.MAX, group=self._ctrl)
                )
                max_p = maxes
        else:
            self._exchange_specs(step, blob, total_len)
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
        """Specs of keys logged since the last flush that the layout lacks (usually none)."""
        n = self._n
        return sorted(self._specs[i] for i in self._unplaced if n[i])

    def _set_layout(self, specs: list[KeySpec]) -> None:
        self.layout = Layout(specs, self.world.group_size)
        self.layout_version += 1
        by_key = self.layout.by_key
        self._unplaced = [i for i, spec in enumerate(self._specs) if spec.key not in by_key]
        self._plan = None

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
        new = self._new_specs()
        if new:
            self._set_layout([*self.layout.specs, *new])

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
        if longest:
            self._exchange_specs(step, blob, longest)

    def _exchange_specs(self, step: int, blob: bytes, length: int) -> None:
        """All-gather every rank's new key specs (JSON padded with spaces to ``length``, which
        every rank knows to be at least the longest blob) and merge them into the layout."""
        padded = torch.full((length,), ord(" "), dtype=torch.uint8)
        if blob:
            padded[: len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        blobs = [torch.empty_like(padded) for _ in range(self.world.group_size)]
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
            slot = self._index.get(key)
            if slot is not None and self._specs[slot] != merged[key]:
                self._respec(key, merged[key])
        self._known.update(merged)
        self._set_layout(list(merged.values()))
        if conflicts:
            self._pending_conflict = KeyConflictError(
                "ranks logged the same key with different reductions: "
                + "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in sorted(conflicts.items()))
                + ". The first spec was kept and the other samples of that key were dropped."
            )

    def _drop_key(self, key: str) -> None:
        """Forget what was buffered for ``key`` since the last flush."""
        i = self._index[key]
        self._a[i], self._b[i], self._n[i] = self._a0[i], 0.0, 0
        self._last_tensors.pop(key, None)
        keep = [j for j, slot in enumerate(self._t_slots) if slot != i]
        self._t_vals = [self._t_vals[j] for j in keep]
        self._t_slots = [self._t_slots[j] for j in keep]
        self._t_weights = [self._t_weights[j] for j in keep]

    def _collective(self, step: int, call: Callable[[], Any]) -> None:
        self.collectives_last_flush += 1
        start = time.monotonic()
        try:
            call()
        except RuntimeError as exc:  # gloo reports timeouts and dead peers as RuntimeError
            waited = time.monotonic() - start
            missing = self._missing_ranks()
            who = f"; ranks that never reached it: {missing}" if missing else ""
            self.failure = f"log step {step} on rank {self.world.rank}{who}"
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

    def _payload_plan(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per reduction: local slots and their payload offsets. Rebuilt when keys change."""
        if self._plan is None:
            lay, plan = self.layout, {}
            for red in REDUCTIONS:
                offs = lay.max_off if red in ("min", "max") else lay.sum_off
                pairs = [
                    (i, offs[spec.key])
                    for i, spec in enumerate(self._specs)
                    if spec.reduce == red and spec.key in offs
                ]
                if pairs:
                    src, dst = zip(*pairs, strict=True)
                    plan[red] = (np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64))
            self._plan = plan
        return self._plan

    def _host_payloads(self, prefix: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """This rank's host accumulators laid out by the agreed layout, as numpy arrays.

        A handful of vectorised writes per reduction whatever the number of keys; slots not
        logged since the last flush hold neutral values (0, or -inf in the MAX payload).
        ``prefix`` leading zero slots are left for the fused protocol's control slots.
        """
        lay = self.layout
        sums = np.zeros(prefix + lay.sum_size)
        maxes = lay.max_init.numpy().copy() if lay.max_size else None
        if not any(self._n):
            return sums, maxes
        body = sums[prefix:]
        a, b = np.array(self._a), np.array(self._b)
        n = np.array(self._n, dtype=np.float64)
        for red, (src, dst) in self._payload_plan().items():
            if red in ("min", "max"):
                assert maxes is not None
                maxes[dst] = -a[src] if red == "min" else a[src]
                maxes[dst + 1] = n[src] > 0
                maxes[dst + 2] = b[src]
            elif red == "mean":
                body[dst] = a[src]
                body[dst + 1] = b[src]
                body[dst + 2] = n[src]
            elif red == "sum":
                body[dst] = a[src]
                body[dst + 1] = n[src]
            else:  # last; tensor "last" values are written over these in _add_tensor_samples
                body[dst] = a[src]
                body[dst + 1] = n[src] > 0
        return sums, maxes

    def _local_payloads(self, prefix: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's partial results laid out by the agreed layout, on the payload device.

        With ``prefix``, the SUM payload starts with that many zero slots (host payloads only).
        """
        sums, maxes = self._host_payloads(prefix)
        sum_host = torch.from_numpy(sums)
        max_host = torch.from_numpy(maxes) if maxes is not None else None
        dev = self.world.comm_device
        if dev.type == "cpu":
            sum_p, max_p = sum_host, max_host
        else:
            sum_p = _to_device(sum_host, dev)
            max_p = _to_device(max_host, dev) if max_host is not None else None
        body = sum_p[prefix:] if prefix else sum_p
        self._add_tensor_samples(body, max_p)
        self._add_spread(body, max_p)
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
            specs = [self._specs[self._t_slots[i]] for i in members]
            reds = [spec.reduce for spec in specs]
            if any(r == "mean" for r in reds):
                sel = [j for j, r in enumerate(reds) if r == "mean"]
                v = vals[_index(sel, dev)] if len(sel) < len(reds) else vals
                w = _weights([self._t_weights[members[j]] for j in sel], dev)
                offs = [lay.sum_off[specs[j].key] for j in sel]
                sum_p.index_add_(0, _index(offs, dev), torch.where(w == 0, 0.0, v * w))
                sum_p.index_add_(0, _index([o + 1 for o in offs], dev), w)
            if any(r == "sum" for r in reds):
                sel = [j for j, r in enumerate(reds) if r == "sum"]
                v = vals[_index(sel, dev)] if len(sel) < len(reds) else vals
                offs = [lay.sum_off[specs[j].key] for j in sel]
                sum_p.index_add_(0, _index(offs, dev), v)
            if max_p is not None and any(r in ("min", "max") for r in reds):
                sel = [j for j, r in enumerate(reds) if r in ("min", "max")]
                v = vals[_index(sel, dev)] if len(sel) < len(reds) else vals
                sign = _to_device(_f64([-1.0 if reds[j] == "min" else 1.0 for j in sel]), dev)
                v = v * sign
                nan = torch.isnan(v)
                slots = _index([lay.max_off[specs[j].key] for j in sel], dev)
                max_p.scatter_reduce_(0, slots, torch.where(nan, -math.inf, v), "amax")
                max_p.scatter_reduce_(0, slots + 2, nan.to(torch.float64), "amax")

    def _add_spread(self, sum_p: torch.Tensor, max_p: torch.Tensor | None) -> None:
        """Each rank's own reduced value of every spread key, in its per-rank slot."""
        lay, dev, me, size = self.layout, sum_p.device, self.world.group_rank, self.world.group_size
        n = self._n
        specs = [self._specs[i] for i in self._spread_slots if n[i]]
        if not specs:
            return
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


_GATHER_HEAD = 5  # flush #, step, layout version, new-keys flag, key blob length
_CHUNKS = 6  # 8-bit chunks of each control number: 48 bits


def _control_slots(seq: int, step: int, version: int, has_new: bool, blob_len: int) -> list[float]:
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
    return slots


def _control_agrees(mine: list[float], summed: list[float], size: int) -> bool:
    if summed[0] != size:
        return False
    return all(summed[i] == size * mine[i] for i in range(3, len(mine)))


def _initial(reduce: str) -> float:
    """An accumulator's value before any sample: neutral for its reduction."""
    return math.inf if reduce == "min" else (-math.inf if reduce == "max" else 0.0)


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
