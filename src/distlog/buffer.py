"""Per-rank accumulators: what ``log_scalar`` touches, and the swap a flush takes.

Every key gets a *slot* the first time this rank logs it and keeps it for the run. A call folds a
Python number into the slot's items of three plain lists (value, weight or NaN flag, count) under
one lock; a device tensor is appended untouched (no ``.item()``, no host sync). A flush
[swaps][distlog.buffer.Buffer.swap] the lists for a clean set in O(1) under the same lock and
reduces the [Snapshot][distlog.buffer.Snapshot] it took: whatever any thread logs meanwhile
lands in the fresh lists and is in the next row, so no sample is ever lost or counted twice.

``log_*`` may be called from any thread; ``flush`` and ``finish`` from one thread at a time.
Laying a snapshot out as the numbers a rank sends is `distlog.payload`'s job.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Collection, Mapping
from typing import Any

import torch

from distlog.errors import FINISHED, LoggerClosedError, LogTypeError, LogValueError
from distlog.keys import check_key
from distlog.layout import (
    REDUCTIONS,
    SPREAD_SUFFIXES,
    KeySpec,
)
from distlog.layout import spread_keys as _spread_keys
from distlog.values import as_float, plain_tensor

__all__ = ["Buffer", "Sample", "Snapshot", "spread_owner"]

# (spec, float value, tensor value or None, float weight, tensor weight or None)
Sample = tuple[KeySpec, float, "torch.Tensor | None", float, "torch.Tensor | None"]


_TENSOR = torch.Tensor  # the hot path's type check, without an attribute lookup


def initial(reduce: str) -> float:
    """An accumulator's value before any sample: neutral for its reduction."""
    return math.inf if reduce == "min" else (-math.inf if reduce == "max" else 0.0)


class Snapshot:
    """What one rank logged between two flushes, taken by [swap][distlog.buffer.Buffer.swap].

    Nobody logs into it any more: only the flush that took it reads it. (A plain class with
    slots, not a dataclass: one is made per flush, on the training thread.)
    """

    __slots__ = ("a", "b", "n", "size", "specs", "t_vals", "t_slots", "t_weights", "lasts",
                 "weighted")  # fmt: skip

    def __init__(
        self,
        a: list[float],
        b: list[float],
        n: list[int],
        size: int,
        specs: list[KeySpec],
        t_vals: list[torch.Tensor] | None = None,
        t_slots: list[int] | None = None,
        t_weights: list[float | torch.Tensor] | None = None,
        lasts: dict[int, torch.Tensor] | None = None,
        weighted: dict[int, int] | None = None,
    ) -> None:
        self.a, self.b, self.n = a, b, n  # ``size`` items each: taken whole by the swap
        self.size = size  # slots at the swap; later slots are not in this snapshot
        self.specs = specs  # the buffer's slot specs (shared; read the first ``size``)
        self.t_vals = [] if t_vals is None else t_vals
        self.t_slots = [] if t_slots is None else t_slots
        self.t_weights = [] if t_weights is None else t_weights
        self.lasts = {} if lasts is None else lasts
        self.weighted = {} if weighted is None else weighted  # slot -> weighted mean samples

    @property
    def empty(self) -> bool:
        return not any(self.n)


class Buffer:
    """Slot accumulators of one rank, double-buffered so a flush never waits for the loggers.

    Args:
        reserved: names the row format uses itself (``step``, ``time``, ...).
        fold_host_tensors: fold CPU tensors into the float accumulators at the call (reading a
            CPU tensor is no device sync); False buffers them like device tensors.
    """

    def __init__(self, reserved: Collection[str] = (), *, fold_host_tensors: bool = True) -> None:
        self.reserved = frozenset(reserved)
        self.fold_host_tensors = fold_host_tensors
        self.lock = threading.Lock()
        self.known: dict[str, KeySpec] = {}  # every spec this rank may log: layout + local
        self._slot: dict[str, int] = {}
        self._fast = self._slot  # the hot path's view of the slots: emptied when closed
        self.closed = False
        self.closed_because = FINISHED
        self._red: list[str] = []
        self._spr: list[bool] = []
        self.specs: list[KeySpec] = []
        self._a0: list[float] = []
        # The active window, per slot: ``_a`` the weighted sum (mean), sum, latest value (last)
        # or extreme (min/max); ``_b`` the weight sum of weighted samples (mean) or a NaN
        # flag (min/max); ``_wc`` the weighted samples per slot (sparse), so an unweighted call
        # touches two items (weight sum = _n - _wc + _b); ``_n``
        # the calls, tensors included, so presence is known without a device sync.
        self._a: list[float] = []
        self._b: list[float] = []
        self._n: list[int] = []  # ints: small ones are cached, so += 1 allocates nothing
        self._tv: list[torch.Tensor] = []
        self._ts: list[int] = []
        self._tw: list[float | torch.Tensor] = []
        self._lasts: dict[int, torch.Tensor] = {}
        self._wc: dict[int, int] = {}
        self.respecs = 0  # counts slot spec changes (payload plans depend on the specs)
        self._prepared: tuple[int, list[float], list[float], list[int]] | None = None

    # ------------------------------------------------------------------ hot path
    def add(
        self,
        key: Any,
        value: Any,
        reduce: str = "mean",
        weight: Any = None,
        spread: bool = False,
    ) -> None:
        """Buffer one sample. Never synchronises with a device; validates before touching state."""
        kind = type(value)
        if kind is _TENSOR and weight is None and self.fold_host_tensors and value.is_cpu:
            # A 0-d CPU tensor (a detached loss): read without any device sync and folded like a
            # number. Whatever .item() refuses takes the full path below, which names the key.
            try:
                number = value.item()
            except Exception:
                number = None
            if type(number) is float or type(number) is int:
                value, kind = number, type(number)
        if (kind is float or kind is int) and weight is None:
            try:
                i = self._fast.get(key)
                if kind is int:
                    value = float(value)
            except (TypeError, OverflowError):  # unhashable key, huge int: prepare() names it
                i = None
            if i is not None:
                lock = self.lock
                lock.acquire()  # no `with`: nothing below can raise, and this is the hot path
                # Checked under the lock: a flush's key exchange may change a slot's spec, and
                # finish() may have closed the buffer since the slot was looked up (a sample
                # added after finish's last look at the buffer would be lost without a word).
                if self._red[i] == reduce and self._spr[i] is spread and not self.closed:
                    if reduce == "mean" or reduce == "sum":  # an unweighted mean: weight 1
                        self._a[i] += value
                        self._n[i] += 1
                    else:
                        self._fold(i, value, reduce)
                    lock.release()
                    return
                lock.release()
        sample = self.prepare(key, value, reduce, weight, spread)
        with self.lock:
            self._commit(sample)

    def add_floats(self, values: Mapping[Any, Any], reduce: str = "mean") -> bool:
        """Buffer a dict of floats of known plain keys at once; False (nothing buffered) if an
        entry is anything else, for [add_many][distlog.buffer.Buffer.add_many] to handle."""
        with self.lock:  # the slots' specs are read under it: a key exchange may change them
            fast = None if self.closed else self._fast_slots(values, reduce)
            if fast is None:
                return False
            a, n = self._a, self._n
            if reduce == "mean" or reduce == "sum":
                for i, v in fast:
                    a[i] += v
                    n[i] += 1
            else:
                for i, v in fast:
                    self._fold(i, v, reduce)
        return True

    def add_many(
        self,
        values: Mapping[Any, Any],
        reduce: str = "mean",
        weight: Any = None,
        spread: bool = False,
    ) -> None:
        """Buffer several samples with one reduction: all or nothing (a bad entry logs none)."""
        if weight is None and spread is False and self.add_floats(values, reduce):
            return
        samples = [self.prepare(k, v, reduce, weight, spread) for k, v in values.items()]
        if spread:
            names = set(values)
            for key in values:
                taken = [k for k in _spread_keys(key) if k in names]
                if taken:
                    raise LogValueError(
                        f"key {key!r} with spread=True would write {taken[0]!r}, which this "
                        "call also logs as a key of its own; use another name"
                    )
        with self.lock:
            for sample in samples:  # all or nothing: check every sample before buffering one
                self._check_slot(sample[0])
            for sample in samples:
                self._commit(sample)

    def _fast_slots(self, values: Mapping[Any, Any], reduce: str) -> list[tuple[int, float]] | None:
        """(slot, float) for every entry if all are floats of known plain keys, else None."""
        slot, red, spr = self._fast, self._red, self._spr
        out = []
        try:
            for key, v in values.items():
                i = slot.get(key)
                if i is None or type(v) is not float or red[i] != reduce or spr[i]:
                    return None
                out.append((i, v))
        except TypeError:
            return None
        return out

    def _fold(self, i: int, value: float, reduce: str) -> None:
        """Fold one float into slot ``i`` for "last", "min" or "max". Call with the lock held."""
        if reduce == "last":
            self._a[i] = value
            if self._lasts:
                self._lasts.pop(i, None)
        elif value != value:
            self._b[i] = 1.0
        elif reduce == "max":
            if value > self._a[i]:
                self._a[i] = value
        elif value < self._a[i]:
            self._a[i] = value
        self._n[i] += 1

    def prepare(
        self, key: Any, value: Any, reduce: str = "mean", weight: Any = None, spread: bool = False
    ) -> Sample:
        """Validate one sample without buffering it; errors name the key."""
        if self.closed:
            raise LoggerClosedError(f"key {key!r}: {self.closed_because}")
        spec = self.spec_for(key, reduce, spread)
        if weight is not None and reduce != "mean":
            raise LogValueError(f"weight= is only meaningful with reduce='mean' (key {key!r})")
        v = 0.0
        tensor: torch.Tensor | None = None
        if type(value) is float:
            v = value
        elif type(value) is int:
            try:
                v = float(value)
            except OverflowError:
                v = as_float(key, value)  # raises the clear error
        elif isinstance(value, torch.Tensor):
            # The same rule as add()'s fast path, which folds these without weights.
            if self.fold_host_tensors and value.is_cpu and type(value) is torch.Tensor:
                # A host tensor is read without any device sync: fold it like a Python number.
                # What .item() refuses (several elements, nested, ...) or float() refuses
                # (complex) gets its clear error from plain_tensor.
                try:
                    v = float(value.item())
                except Exception:
                    plain_tensor(key, value)
                    raise
            else:
                value = plain_tensor(key, value)
                # Buffered on its device: no .item(), so no host-device sync. detach() and
                # reshape() cost ~1-2 us each, so only when they change something. Cloned (a
                # device copy, no sync): the value is the one at the call, though the caller
                # changes its tensor in place later (``running += loss`` ... ``running.zero_()``
                # wrote 0.0 before), and a large tensor is not kept alive until the flush.
                tensor = value.detach() if value.requires_grad else value
                if tensor.dim():
                    tensor = tensor.reshape(())
                tensor = tensor.clone()
        else:
            v = as_float(key, value)
        w = 1.0
        w_tensor: torch.Tensor | None = None
        if weight is not None:
            if isinstance(weight, torch.Tensor):
                weight = plain_tensor(key, weight, "weight")
                if weight.device.type != "cpu":
                    # Trusted (checking it would sync); cloned like a value.
                    w_tensor = weight.detach().reshape(()).clone()
                else:
                    weight = weight.item()
            if w_tensor is None:
                w = as_float(key, weight, "weight")
                if not (w >= 0 and math.isfinite(w)):
                    raise LogValueError(f"weight for key {key!r} must be finite and >= 0, got {w}")
        return spec, v, tensor, w, w_tensor

    def spec_for(self, key: Any, reduce: str, spread: bool) -> KeySpec:
        """The spec for ``key`` (registered at its first commit); errors name the key."""
        try:
            spec = self.known.get(key)
        except TypeError:  # unhashable
            spec = None
        if spec is not None and spec.reduce == reduce and spec.spread is spread:
            return spec
        check_key(key, reserved=self.reserved)
        if reduce not in REDUCTIONS:
            raise LogValueError(
                f"unknown reduction {reduce!r} for key {key!r}; choose one of {', '.join(REDUCTIONS)}"
            )
        if not isinstance(spread, bool):
            raise LogTypeError(f"spread for key {key!r} must be a bool, got {spread!r}")
        self._check_spread_names(key, spread)
        if spec is not None:
            raise reduction_changed(spec, KeySpec(key, reduce, spread))
        return KeySpec(key, reduce, spread)

    def _check_spread_names(self, key: str, spread: bool) -> None:
        """A key may not share its name with the spread columns of another key."""
        owner = spread_owner(key, self.known)
        if owner is not None:
            raise LogValueError(
                f"key {key!r} is a spread column of key {owner!r} (logged with spread=True); "
                "use another name"
            )
        if spread:
            taken = [k for k in _spread_keys(key) if k in self.known]
            if taken:
                raise LogValueError(
                    f"key {key!r} with spread=True would write {taken[0]!r}, which is already "
                    "a key of its own; use another name"
                )

    def _check_slot(self, spec: KeySpec) -> int | None:
        """The slot of ``spec``'s key (None: it has none yet); raises if the slot has another
        spec. Call with the lock held.

        [prepare][distlog.buffer.Buffer.prepare] checked it without the lock: another thread
        may have registered the same new key with another reduction since (measured before
        this check: two threads logging 20,000 new keys, one as means, one as sums, both
        had about a quarter of them accepted, their samples folded into one slot).
        """
        i = self._slot.get(spec.key)
        have = self.specs[i] if i is not None else self.known.get(spec.key)
        if have is not None and have is not spec and have != spec:
            raise reduction_changed(have, spec)  # the group agreed on it since, maybe
        if i is None:  # a new key: another thread may have taken a spread name it clashes with
            self._check_spread_names(spec.key, spec.spread)
        return i

    def _commit(self, sample: Sample) -> None:
        """Buffer a prepared sample. Call with the lock held; raises (buffering nothing) if
        another thread gave its key another spec since it was prepared."""
        spec, v, tensor, w, w_tensor = sample
        if self.closed:  # closed since the sample was prepared (see add)
            raise LoggerClosedError(f"key {spec.key!r}: {self.closed_because}")
        i = self._check_slot(spec)
        if i is None:
            i = self._register(spec)
        reduce = spec.reduce
        if tensor is None and w_tensor is None:
            if reduce == "mean":
                if w != 0.0:
                    self._a[i] += v * w
                self._b[i] += w
                self._wc[i] = self._wc.get(i, 0) + 1
                self._n[i] += 1
            elif reduce == "sum":
                self._a[i] += v
                self._n[i] += 1
            else:
                self._fold(i, v, reduce)
            return
        self._n[i] += 1
        if reduce == "last":
            assert tensor is not None  # weights are only accepted with reduce="mean"
            self._lasts[i] = tensor
            return
        if tensor is None:
            assert w_tensor is not None
            tensor = torch.tensor(v, dtype=torch.float64, device=w_tensor.device)
        if reduce == "mean":  # its weight travels with the tensor, not in the count
            self._wc[i] = self._wc.get(i, 0) + 1
        self._tv.append(tensor)
        self._ts.append(i)
        self._tw.append(w_tensor if w_tensor is not None else w)

    def _register(self, spec: KeySpec) -> int:
        """Give a key its slot (once per run). Call with the lock held."""
        i = len(self.specs)
        self._slot[spec.key] = i
        self.specs.append(spec)
        self._red.append(spec.reduce)
        self._spr.append(spec.spread)
        a0 = initial(spec.reduce)
        self._a0.append(a0)
        self._a.append(a0)
        self._b.append(0.0)
        self._n.append(0)
        self.known.setdefault(spec.key, spec)
        return i

    def disown(self, because: str) -> None:
        """In a forked child: [close][distlog.buffer.Buffer.close] with a fresh lock. A parent
        thread that was logging at the fork left the child's copy of the lock held for good
        (a child's ``log_dict`` then hung forever instead of raising)."""
        self.lock = threading.Lock()
        self.close(because)

    def close(self, because: str | None = None) -> None:
        """Refuse every later sample with a LoggerClosedError (the hot path included), whose
        message says ``because`` (default: the logger is finished)."""
        if because is not None:
            self.closed_because = because
        self.closed = True
        self._fast = {}

    # ------------------------------------------------------------------ flush side
    @property
    def tensor_samples(self) -> int:
        """Tensors buffered as they are since the last swap ("last" tensors not counted)."""
        return len(self._tv)

    @property
    def pending_keys(self) -> list[str]:
        """Keys logged on this rank since the last swap (under the lock: another thread may be
        registering a key, which is in the slot map a moment before it has its count)."""
        with self.lock:
            n = self._n
            return [key for key, i in self._slot.items() if n[i]]

    def swap(self) -> Snapshot:
        """Take everything logged since the last swap and start a clean window.

        The clean lists were built by [prepare_window][distlog.buffer.Buffer.prepare_window]
        (else they are built now), before the lock is taken; under it, the swap itself is a
        handful of reference assignments, so a thread logging meanwhile waits O(1).
        """
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared[0] == self.respecs:
            fresh_a, fresh_b, fresh_n = prepared[1:]
        else:
            fresh_a, fresh_b, fresh_n = self._clean_window()
        size = len(fresh_a)
        with self.lock:
            if len(self.specs) > size:  # a key was registered since: give it its slot too
                extra = self._a0[size:]
                fresh_a += extra
                fresh_b += [0.0] * len(extra)
                fresh_n += [0] * len(extra)
            snap = Snapshot(
                self._a, self._b, self._n, len(self.specs), self.specs,
                self._tv, self._ts, self._tw, self._lasts, self._wc,
            )  # fmt: skip
            self._a, self._b, self._n = fresh_a, fresh_b, fresh_n
            self._tv, self._ts, self._tw, self._lasts, self._wc = [], [], [], {}, {}
        return snap

    def prepare_window(self) -> None:
        """Build the next swap's clean lists now: a flush calls this while its collective is in
        flight, so the next swap does no O(keys) work. A key registered in between gets its
        slot at the swap; a spec change since (``respecs``) makes the swap build them anew."""
        self._prepared = (self.respecs, *self._clean_window())

    def _clean_window(self) -> tuple[list[float], list[float], list[int]]:
        fresh_a = list(self._a0)  # one C call: a key registered meanwhile is in or out whole
        size = len(fresh_a)
        return fresh_a, [0.0] * size, [0] * size

    def restore(self, snap: Snapshot) -> None:
        """Put a snapshot's samples back into the active window (a flush that could not run).

        Used when an error that every rank sees alike stops a flush before any number left
        this rank, so nothing already logged is lost.
        """
        with self.lock:
            # A "last" slot logged again since keeps its newer sample, float or tensor.
            newer = {i for i in snap.lasts if self._n[i]}
            for i in range(snap.size):
                if not snap.n[i]:
                    continue
                red = self._red[i]
                a = snap.a[i]
                if red in ("mean", "sum"):
                    self._a[i] += a
                    self._b[i] += snap.b[i]
                elif red == "last":
                    if not self._n[i]:
                        self._a[i] = a
                elif red == "max":
                    self._a[i] = max(self._a[i], a)
                    self._b[i] = max(self._b[i], snap.b[i])
                else:
                    self._a[i] = min(self._a[i], a)
                    self._b[i] = max(self._b[i], snap.b[i])
                self._n[i] += snap.n[i]
            self._tv[:0] = snap.t_vals
            self._ts[:0] = snap.t_slots
            self._tw[:0] = snap.t_weights
            for i, t in snap.lasts.items():
                if i not in newer:
                    self._lasts[i] = t
            for i, c in snap.weighted.items():
                self._wc[i] = self._wc.get(i, 0) + c

    def respec(self, key: str, spec: KeySpec, snap: Snapshot | None) -> None:
        """Give a key's slot the agreed spec, dropping what was buffered under its old one."""
        with self.lock:
            i = self._slot[key]
            active = Snapshot(
                self._a, self._b, self._n, 0, self.specs,
                self._tv, self._ts, self._tw, self._lasts, self._wc,
            )  # fmt: skip
            for window in (snap, active):
                if window is None or i >= len(window.a):
                    continue
                window.a[i], window.b[i], window.n[i] = initial(spec.reduce), 0.0, 0
                window.lasts.pop(i, None)
                window.weighted.pop(i, None)
                keep = [j for j, s in enumerate(window.t_slots) if s != i]
                window.t_vals[:] = [window.t_vals[j] for j in keep]
                window.t_weights[:] = [window.t_weights[j] for j in keep]
                window.t_slots[:] = [window.t_slots[j] for j in keep]
            self.specs[i] = spec
            self._red[i], self._spr[i] = spec.reduce, spec.spread
            self._a0[i] = initial(spec.reduce)
            self.known[key] = spec
            self.respecs += 1

    def adopt(
        self, agreed: Mapping[str, KeySpec], keys: Collection[str], snap: Snapshot | None
    ) -> tuple[list[tuple[KeySpec, KeySpec]], list[tuple[str, str]]]:
        """Make the group's specs this rank's after a key exchange: ``agreed`` becomes known;
        each of ``keys`` that has a slot here under another spec is respecced, and each slot
        registered since ``snap`` was taken whose name clashes with an agreed spread key (a
        column of it, or a spread key one of whose columns is agreed) is refused; their
        samples are dropped. Returns the respecced slots' (local, agreed) specs and why each
        refused slot was.

        Such slots disagree although this rank's blob did not: a thread (or the training
        thread of an asynchronous flush) can log a key for the first time while the exchange
        that brings the other key from another rank runs, when that one is not known here yet.
        """
        since = snap.size if snap is not None else len(self.specs)
        with self.lock:
            self.known.update(agreed)
            changed = [
                (self.specs[i], agreed[key])
                for key in keys
                if (i := self._slot.get(key)) is not None and self.specs[i] != agreed[key]
            ]
            clashes: list[tuple[str, str]] = []  # (key, why)
            for i in range(since, len(self.specs)):
                spec = self.specs[i]
                if spec.key in agreed or self._slot.get(spec.key) != i:
                    continue
                owner = spread_owner(spec.key, agreed)
                taken = [k for k in _spread_keys(spec.key) if k in agreed] if spec.spread else []
                if owner is not None:
                    why = f"a spread column of {owner!r}, which a rank logged with spread=True"
                    clashes.append((spec.key, why))
                elif taken:
                    why = f"a spread key whose column {taken[0]!r} is a key of its own"
                    clashes.append((spec.key, why))
        for local, spec in changed:
            self.respec(local.key, spec, snap)
        for key, _ in clashes:
            self.refuse(key, snap)
        return changed, clashes

    def refuse(self, key: str, snap: Snapshot | None) -> None:
        """Drop a key the group refused (a spread column of another key): its samples go,
        and later calls with it get a clear error at the call."""
        spec = self.known.get(key)
        if spec is None:
            return
        self.respec(key, spec, snap)  # drops what was buffered
        with self.lock:
            i = self._slot.pop(key, None)
            if i is not None:
                self._red[i] = ""  # a call that looked the slot up before the pop misses it
            self.known.pop(key, None)


def reduction_changed(have: KeySpec, want: KeySpec) -> LogValueError:
    """The error for a key logged with another reduction (or spread) than its first one."""
    return LogValueError(
        f"key {want.key!r} was logged with reduce={have.reduce!r}, spread={have.spread} "
        f"and now with reduce={want.reduce!r}, spread={want.spread}; a key keeps one reduction "
        "for the whole run (use another key name)"
    )


def spread_owner(key: str, known: Mapping[str, KeySpec]) -> str | None:
    """The key whose spread columns include ``key``, if it was logged with spread=True."""
    base, _, suffix = key.rpartition("/")
    if suffix in SPREAD_SUFFIXES:
        owner = known.get(base)
        if owner is not None and owner.spread:
            return base
    return None
