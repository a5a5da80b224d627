"""How one rank's [Snapshot][distlog.buffer.Snapshot] meets every other rank's: the protocols.

Every protocol moves the same two payloads (see [distlog.layout][]) with a
[Header][distlog.layout.Header] and ends the same way (a [PendingRow][distlog.exchange.PendingRow]
for the writer); they differ in the collectives they use. [choose_protocol][distlog.exchange.choose_protocol]
picks one per flush from facts every rank shares (the layout and the group), so all ranks agree:

| protocol | when (``"auto"``) | steady flush | a flush that brings new keys |
|---|---|---|---|
| ``gather`` | host payloads, ranks x row <= ``gather_limit_bytes``, ranks <= ``gather_max_ranks`` | 1 ``all_to_all`` (min/max too) | 3 |
| ``all_reduce`` | host payloads past that limit | 1 ``all_reduce`` (+1 with min/max or spread) | 3 (+1) |
| ``device`` | payloads on a GPU (NCCL) | host header ``all_to_all`` + ``reduce`` to rank 0 (+1) | +1 |

The gather sends each rank's row to the writer (group rank 0) and only its header to the other
ranks, in one round: the writer receives ranks x row bytes, so it is used only while that is small;
the all-reduce moves O(keys) bytes a rank in O(log ranks) rounds at any scale
(docs/aggregation.md has the cost model). All run on the logger's own gloo group (its own
timeout: a missing rank becomes a [RankDivergenceError][distlog.errors.RankDivergenceError],
never a hang), except device payloads, which NCCL reduces on the user's group.

This module knows no sink.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from distlog.buffer import Buffer, Snapshot, spread_owner
from distlog.errors import KeyConflictError, LogValueError, RankDivergenceError
from distlog.layout import (
    Header,
    HeaderReader,
    KeySpec,
    Layout,
    check_headers,
    decode_row,
    decode_specs,
    decode_table,
    encode_specs,
    read_headers,
    reduce_table,
    spread_keys,
)
from distlog.payload import PayloadPlan, host_payloads, tensor_payloads
from distlog.world import World

__all__ = ["PROTOCOLS", "Exchange", "ExchangeOptions", "PendingRow", "choose_protocol"]

PROTOCOLS = ("auto", "gather", "all_reduce", "device")


@dataclass(frozen=True)
class ExchangeOptions:
    """Internal knobs of the exchange, validated; the defaults are right for almost everyone.

    Args:
        protocol: ``"auto"`` (the rule is in docs/aggregation.md, "What it costs"), or force ``"gather"``,
            ``"all_reduce"`` (host payloads) or ``"device"`` (the NCCL protocol; on CPU it
            runs on host tensors, which is how the tests exercise it without a GPU).
        gather_limit_bytes: ``"auto"`` uses the gather protocol while the rows rank 0
            receives (ranks x row bytes) stay within it...
        gather_max_ranks: ...and the group has at most this many ranks: each rank's part of the
            gather is one message to every other rank, all posted at once, which beats the
            all-reduce's 2 log2(ranks) rounds of latency until the messages pile up.
        fold_host_tensors: fold CPU tensors into the float accumulators at the call; False
            buffers them as a device tensor would be (tests of the device path on CPU).
    """

    protocol: str = "auto"
    gather_limit_bytes: int = 1 << 20
    gather_max_ranks: int = 256
    fold_host_tensors: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise LogValueError(
                f"exchange protocol {self.protocol!r} is unknown; choose one of "
                f"{', '.join(PROTOCOLS)}"
            )
        for name in ("gather_limit_bytes", "gather_max_ranks"):
            limit = getattr(self, name)
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise LogValueError(f"{name} must be an int >= 0, got {limit!r}")
        if not isinstance(self.fold_host_tensors, bool):
            raise LogValueError(f"fold_host_tensors must be a bool, got {self.fold_host_tensors!r}")


def choose_protocol(options: ExchangeOptions, world: World, layout: Layout) -> str:
    """The protocol of one flush: the same answer on every rank (shared facts only)."""
    if options.protocol != "auto":
        return options.protocol
    if world.comm_device.type != "cpu":
        return "device"
    row = Header.WIDTH + layout.sum_size + layout.max_size
    size = world.group_size
    small = size <= options.gather_max_ranks and size * row * 8 <= options.gather_limit_bytes
    return "gather" if small else "all_reduce"


@dataclass
class PendingRow:
    """The writer's share of a flush: reduced payloads (maybe still in flight on a device), or
    in a world of one the snapshot itself, laid out and decoded off the training thread.

    [resolve][distlog.exchange.PendingRow.resolve] runs on the logger's writer thread.
    """

    step: int
    layout: Layout
    group_ranks: tuple[int, ...]
    sums: np.ndarray | torch.Tensor | None = None
    maxes: np.ndarray | torch.Tensor | None = None
    ready: Any = None  # a torch.cuda.Event when the payloads come from a GPU
    local: tuple[Snapshot, PayloadPlan, torch.device] | None = None
    gathered: GatherBuffers | None = None  # the gather protocol's buffers, lent until reduced

    def resolve(self) -> dict[str, float]:
        if self.gathered is not None:
            row = decode_table(self.layout, self.gathered.table_np, self.group_ranks)
            self.gathered.lent = False  # the exchange may gather into it again
            return row
        if self.local is not None:
            snap, plan, device = self.local
            p = tensor_payloads(snap, plan, device, 0, 1)
            sums, maxes = (
                p.sums.cpu().numpy(),
                (p.maxes.cpu().numpy() if p.maxes is not None else np.zeros(0)),
            )
            return decode_row(self.layout, sums, maxes, self.group_ranks)
        if self.ready is not None:
            self.ready.synchronize()
        sums = _numpy(self.sums)
        maxes = _numpy(self.maxes) if self.maxes is not None else np.zeros(0)
        return decode_row(self.layout, sums, maxes, self.group_ranks)


def _numpy(x: np.ndarray | torch.Tensor | None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.numpy()
    assert x is not None
    return x


class GatherBuffers:
    """The gather protocol's send row and receive table for one layout (no allocation, no
    list building at a steady flush).

    One ``all_to_all`` moves what each rank needs and no more: every rank sends its whole row
    (header and payloads) to the writer (group rank 0) and only its header to every other rank.
    The writer's table holds every rank's row; another rank's holds every rank's header, all it
    needs to check that the ranks agree. Each rank's send buffer is its row followed by a copy
    of its header per other rank. On global rank 0 the table is lent to the writer until it has
    reduced it (``lent``), instead of being copied for it."""

    def __init__(self, layout: Layout, size: int, root: bool) -> None:
        self.lent = False
        self.version = layout.version
        self.root = root  # this rank is the writer's: its table holds every rank's row
        width = Header.WIDTH + layout.sum_size + layout.max_size
        h = Header.WIDTH
        self.send = torch.zeros(width + h * (size - 1), dtype=torch.float64)
        send = self.send.numpy()
        self.row = send[:width]  # this rank's header and payloads
        self.header_copies = send[width:].reshape(size - 1, h)  # for ranks 1..size-1
        self.send_splits = [width] + [h] * (size - 1)
        self.table = torch.empty(size, width if root else h, dtype=torch.float64)
        self.table_np = self.table.numpy()
        self.recv = self.table.view(-1)
        self.recv_splits = [width if root else h] * size
        self.flush_ids = self.table_np[:, 0]  # NaN-filled before each collective
        self.counts: int | None = None  # what every count slot of ``row`` holds, if one number
        self.headers = HeaderReader(self.table_np)


def all_to_all(
    group: Any, recv: torch.Tensor, send: torch.Tensor, recv_splits: list[int],
    send_splits: list[int],
) -> Any:  # fmt: skip
    """Start ``dist.all_to_all_single`` and return its work, through the process group's own
    method when it has one: the same collective without ~30 us of Python argument checks that
    a flush does not need.

    Why an all_to_all: gloo posts all its sends and receives at once (one round of latency),
    where its all_gather is a ring of ranks - 1 rounds, each waiting for the one before. With 4
    and 8 ranks on a 2-core host the gather protocol's flush took 2-2.5x less time, on 2 ranks
    10-20% less; the device protocol's header round gains alike. Each rank also receives only
    what it needs."""
    if hasattr(group, "alltoall_base"):
        return group.alltoall_base(recv, send, recv_splits, send_splits)
    return dist.all_to_all_single(recv, send, recv_splits, send_splits, group=group, async_op=True)


class Disagreement(RankDivergenceError):
    """The ranks' headers disagree (seen alike by every rank; the group is still sound)."""


class Exchange:
    """The state every protocol shares: the agreed layout, the flush count, the group's health.

    Every rank of the group must construct it and call [run][distlog.exchange.Exchange.run]
    the same number of times, with the same steps.
    """

    def __init__(
        self,
        world: World,
        buffer: Buffer,
        group: Any,
        *,
        timeout: float,
        options: ExchangeOptions,
    ) -> None:
        self.world = world
        # Read once: World derives them from the group's ranks (O(ranks) each time).
        self.group_rank, self.group_size = world.group_rank, world.group_size
        self.buffer = buffer
        self.group = group  # the logger's gloo group, or None where nothing is communicated
        self.timeout = timeout
        self.options = options
        self.layout = Layout([], 0)
        # A rank whose collective has not completed after this long marks its arrival.
        self._mark_after = timedelta(seconds=min(1.0, timeout / 8))
        self.flush_count = 0
        self.final = False  # set before finish()'s flush: see Header.final
        self.collectives = 0  # issued by the last flush on this rank
        self.last_protocol = ""
        # Set when a collective failed (timeout, dead peer): the gloo group's state is unknown
        # after that, so later flushes fail at once instead of pairing with stale messages.
        self.failure: str | None = None
        self.conflict: KeyConflictError | None = None
        self._unplaced: list[int] = []  # slots whose key the layout lacks
        self._checked = 0  # slots below this were sorted into placed / unplaced
        self._plan: PayloadPlan | None = None
        self._plan_key: tuple[int, int, int] = (-1, -1, -1)
        # The last gather's header, table and layout until the logger took its row: what a
        # signal handler salvages (see salvage()).
        self._salvageable: tuple[Header, torch.Tensor, Layout] | None = None
        self._gbufs: list[GatherBuffers] = []  # this layout's; more than one only on rank 0
        self._protocol: tuple[int, str] = (-1, "")
        self._meanwhile: Callable[[], None] | None = None
        self._unwaited: Any = None  # the started collective the flush has not waited for yet

    @property
    def communicates(self) -> bool:
        """False where a flush moves nothing: a world of one, or a group without the writer."""
        return self.group is not None

    # ------------------------------------------------------------------ one flush
    def run(
        self, snap: Snapshot, step: int, meanwhile: Callable[[], None] | None = None
    ) -> PendingRow | None:
        """Reduce ``snap`` over the group (collective). Returns the writer's share on global
        rank 0, None elsewhere. Raises [RankDivergenceError][distlog.errors.RankDivergenceError]
        when the ranks are out of step; key conflicts are kept in ``conflict`` for the caller
        to raise once the row is on its way.

        ``meanwhile`` (housekeeping that must not raise) runs once, while the first collective
        is in flight: time this rank would otherwise spend waiting for the others.
        """
        self.collectives = 0
        self._meanwhile = meanwhile
        try:
            self.check_usable()
            if not self.communicates:
                return self._run_locally(snap, step)
            protocol = self.protocol()
            self.last_protocol = protocol
            run = _PROTOCOLS[protocol]
            pending = run(self, snap, step)
            self.flush_count += 1
            return pending
        finally:
            self._spare_time()

    def _spare_time(self) -> None:
        idle, self._meanwhile = self._meanwhile, None
        if idle is not None:
            idle()

    def check_usable(self) -> None:
        """Raise at once if an earlier collective failed (the group's state is unknown)."""
        if self.failure is not None:
            raise RankDivergenceError(
                f"no flush is possible after the logging group failed ({self.failure}); "
                "finish the logger with a non-zero exit code and restart the job"
            )

    def _run_locally(self, snap: Snapshot, step: int) -> PendingRow | None:
        """Nothing to communicate: rank 0 decodes the snapshot on its writer thread."""
        self.flush_count += 1
        if not self.world.is_global_zero:
            return None
        new = self.new_specs(snap)
        if new:
            self.set_layout(self.layout.merged(new))
        plan = self.plan(snap)
        return PendingRow(
            step, self.layout, self.world.group_ranks, local=(snap, plan, self.world.comm_device)
        )

    def salvage(self, timeout: float | None = None) -> PendingRow | None:
        """The row of a gather interrupted by a signal after its collective started.

        A signal handler runs between two bytecodes of the interrupted flush: right after the
        all_to_all returned, or while it is in flight and the flush does its ``meanwhile``
        work. The collective is then waited for (at most ``timeout``, default the group's);
        once it completed, its table is whole and every header in it matches: the row is
        decoded from it, so a row whose flush returned on the other ranks is not lost.
        """
        salvageable, self._salvageable = self._salvageable, None
        if salvageable is None:
            return None
        work, self._unwaited = self._unwaited, None
        if work is not None and not _completes(work, self.timeout if timeout is None else timeout):
            return None
        header, out, lay = salvageable
        table = out.numpy()
        want = np.array(header.gathered()[:3])
        if not (table[:, :3] == want).all() or table[:, 3].any():
            return None
        return self.epilogue(header.step, *reduce_table(table, lay))

    def settle(self) -> None:
        self._salvageable = None

    # ------------------------------------------------------------------ shared pieces
    def new_specs(self, snap: Snapshot) -> list[KeySpec]:
        """Specs of keys logged in ``snap`` that the layout lacks (usually none)."""
        if not self._unplaced and self._checked >= snap.size:
            return []  # the steady state: every key this rank has is placed
        by_key, specs = self.layout.by_key, snap.specs
        if self._checked < snap.size:
            self._unplaced += [
                i for i in range(self._checked, snap.size) if specs[i].key not in by_key
            ]
            self._checked = snap.size
        n = snap.n
        return [specs[i] for i in self._unplaced if i < snap.size and n[i]]  # first logged first

    def set_layout(self, layout: Layout) -> None:
        self.layout = layout
        by_key, specs = layout.by_key, self.buffer.specs
        self._unplaced = [i for i in self._unplaced if specs[i].key not in by_key]

    def plan(self, snap: Snapshot) -> PayloadPlan:
        key = (self.layout.version, snap.size, self.buffer.respecs)
        if self._plan is None or self._plan_key != key:
            self._plan = PayloadPlan(self.layout, snap.specs, snap.size)
            self._plan_key = key
        return self._plan

    def host_rows(
        self,
        snap: Snapshot,
        prefix: int,
        out: np.ndarray | None = None,
        head: list[float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """This rank's payloads as numpy arrays (host protocols), after ``prefix`` slots for a
        header (written from ``head`` if given); views of ``out`` if given."""
        plan = self.plan(snap)
        if snap.t_vals or snap.lasts:
            p = tensor_payloads(
                snap, plan, torch.device("cpu"), self.group_rank, self.group_size, prefix
            )
            sums = p.sums.numpy()
            maxes = p.maxes.numpy() if p.maxes is not None else np.zeros(0)
            if head is not None:
                sums[:prefix] = head
            if out is None:
                return sums, maxes
            out[: len(sums)], out[len(sums) :] = sums, maxes
            return out[: len(sums)], out[len(sums) :]
        return host_payloads(snap, plan, self.group_rank, self.group_size, prefix, out, head)

    GATHER_BUFFERS = 3  # kept per layout: the writer rarely holds more than one table

    def gather_buffers(self) -> GatherBuffers:
        """This layout's send row and receive table, kept from flush to flush: one the writer
        does not hold (a new one, not kept, when it holds them all)."""
        lay, pool = self.layout, self._gbufs
        if pool and pool[0].version != lay.version:
            pool.clear()
        for buf in pool:
            if not buf.lent:
                return buf
        buf = GatherBuffers(lay, self.world.group_size, self.group_rank == 0)
        if len(pool) < self.GATHER_BUFFERS:
            pool.append(buf)
        return buf

    def protocol(self) -> str:
        """[choose_protocol][distlog.exchange.choose_protocol], once per layout."""
        version = self.layout.version
        if self._protocol[0] != version:
            self._protocol = (version, choose_protocol(self.options, self.world, self.layout))
        return self._protocol[1]

    def header(self, step: int, new: list[KeySpec], blob: bytes) -> Header:
        return Header(self.flush_count, step, self.layout.version, bool(new), len(blob), self.final)

    def collective(self, step: int, call: Callable[[], Any]) -> None:
        """Run one collective; a timeout or a dead peer becomes a named RankDivergenceError.

        ``call`` may start the collective and return its work (``async_op=True``): the flush's
        ``meanwhile`` work then runs before it is waited for."""
        self.collectives += 1
        start = time.monotonic()
        try:
            work = call()
            if work is not None:
                # Until it is waited for, a signal handler (or an interrupt raised meanwhile)
                # must wait for it before reading its table: see salvage().
                self._unwaited = work
                self._spare_time()
                self._wait(work)
                self._unwaited = None
        except RuntimeError as exc:  # gloo reports timeouts and dead peers as RuntimeError
            self._unwaited = self._salvageable = None  # a failed gather's table is never read
            waited = time.monotonic() - start
            missing = self._missing_ranks()
            who = f"; ranks that never reached it: {missing}" if missing else ""
            self.failure = f"log step {step} on rank {self.world.rank}{who}"
            raise RankDivergenceError(
                f"the flush at log step {step} failed after {waited:.1f}s on rank "
                f"{self.world.rank} (timeout {self.timeout:.0f}s): a rank crashed, skipped "
                f"the flush or flushes on another schedule{who}. Cause: {exc}"
            ) from exc

    def _wait(self, work: Any) -> None:
        """Wait for a started gloo collective. A rank still waiting after a moment marks its
        arrival in the job's store, then waits on: a rank that times out later names only the
        ranks that never came, however late the others arrived (they marked it long before).
        Nothing is marked while collectives complete within that moment."""
        try:
            work.wait(self._mark_after)
            return
        except RuntimeError:
            if work.is_completed():  # it failed, or it completed right after the moment ran out
                work.wait()  # returns, or raises what failed it
                return
        self._mark_arrival()
        work.wait()

    def _arrivals(self) -> tuple[Any, str] | None:
        """The job's store and this flush's arrival prefix, if there is a store."""
        try:
            store = dist.distributed_c10d._get_default_store()  # no public accessor exists
        except Exception:
            return None
        return store, f"distlog/{self.world.group_ranks}/{self.flush_count}/"

    def _mark_arrival(self) -> tuple[Any, str] | None:
        """Mark this rank's arrival at this flush in the job's store (best effort: the store
        only serves to name missing ranks); the store and the prefix, or None."""
        found = self._arrivals()
        if found is not None:
            store, prefix = found
            try:
                store.set(prefix + str(self.world.rank), "1")
            except Exception:
                return None
        return found

    def _missing_ranks(self) -> list[int]:
        """Best effort: ranks that did not mark their arrival in the job's store. A rank that
        reached the flush marked it after waiting a moment (``_wait``); the ones that are
        still coming get the same moment, twice, to mark it."""
        found = self._mark_arrival()
        if found is None:
            return []
        store, prefix = found
        try:
            time.sleep(min(2.0, self.timeout / 4))
            return [r for r in self.world.group_ranks if not store.check([prefix + str(r)])]
        except Exception:
            return []

    def check(self, step: int, heads: np.ndarray) -> None:
        """The divergence rule on a gathered header table; a mismatch is a Disagreement."""
        try:
            check_headers(step, heads, self.world.group_ranks)
        except RankDivergenceError as exc:
            raise Disagreement(str(exc)) from None

    def gather_headers(self, step: int, header: Header) -> np.ndarray:
        """Give every rank every rank's header (host; an all_to_all of this rank's header to
        each, one round, see [all_to_all][distlog.exchange.all_to_all]) and check them: the
        device protocol's control round, and the explanation of a mismatch the all-reduce
        protocol saw."""
        size = self.world.group_size
        copies = torch.tensor(header.gathered() * size, dtype=torch.float64)  # one a rank
        out = torch.empty(size, Header.WIDTH, dtype=torch.float64)
        splits = [Header.WIDTH] * size
        self.collective(step, lambda: all_to_all(self.group, out.view(-1), copies, splits, splits))
        table = out.numpy()
        self.check(step, table)
        return table

    def exchange_specs(self, step: int, blob: bytes, length: int, snap: Snapshot) -> None:
        """All-gather every rank's new key specs (JSON padded with spaces to ``length``, which
        every rank knows to be at least the longest blob) and merge them into the layout."""
        padded = torch.full((length,), ord(" "), dtype=torch.uint8)
        if blob:
            padded[: len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        blobs = [torch.empty_like(padded) for _ in range(self.world.group_size)]
        self.collective(step, lambda: dist.all_gather(blobs, padded, group=self.group))
        self.merge([bytes(b.tolist()) for b in blobs], snap, step)

    def merge(self, blobs: list[bytes], snap: Snapshot, step: int) -> None:
        """Merge every rank's new key specs into the next layout, identically on every rank.

        A key that ranks logged with different specs keeps the first one (the layout's, else
        the lowest rank's); a key that is a spread column of another key logged with
        ``spread=True`` is refused. The other samples of such keys are dropped and a
        [KeyConflictError][distlog.errors.KeyConflictError] is raised at the end of the flush.
        """
        ranks = self.world.group_ranks
        old = self.layout.by_key
        merged: dict[str, KeySpec] = dict(old)
        origin: dict[str, int] = {}
        conflicts: dict[str, set[str]] = {}
        for i, raw in enumerate(blobs):
            for spec in decode_specs(raw):
                have = merged.get(spec.key)
                if have is None:
                    merged[spec.key] = spec
                    origin[spec.key] = ranks[i]
                elif have != spec:
                    first = origin.get(spec.key, "an earlier flush")
                    conflicts.setdefault(
                        spec.key, {f"reduce={have.reduce!r} spread={have.spread} (rank {first})"}
                    ).add(f"reduce={spec.reduce!r} spread={spec.spread} (rank {ranks[i]})")
        # First come, first kept: a new key that is a spread column of a spread key is
        # refused, and so is a new spread key one of whose columns is a key already.
        refused = {
            key: f"{key} is a spread column of {owner!r}, which a rank logged with spread=True"
            for key in merged
            if key not in old and (owner := spread_owner(key, merged)) is not None
        }
        for key, spec in merged.items():
            if key not in old and spec.spread and key not in refused:
                taken = [k for k in spread_keys(key) if k in old]
                if taken:
                    refused[key] = (
                        f"{key} was logged with spread=True, but its spread column "
                        f"{taken[0]!r} is already a key"
                    )
        for key in refused:
            del merged[key]
            if key in self.buffer.known:
                self.buffer.refuse(key, snap)
        # Every new key's slot here takes the agreed spec, a slot that differs included
        # (logged here for the first time while this exchange ran: nobody else saw it).
        adopted, clashes = self.buffer.adopt(
            merged, [k for k in merged if k not in old or k in conflicts], snap
        )
        for key, why in clashes:
            refused[key] = (
                f"{key} (logged on rank {self.world.rank} while this flush's exchange ran) is {why}"
            )
        for local, spec in adopted:
            if spec.key not in conflicts:
                conflicts[spec.key] = {
                    f"reduce={spec.reduce!r} spread={spec.spread} (rank {origin[spec.key]})",
                    f"reduce={local.reduce!r} spread={local.spread} (rank {self.world.rank}, "
                    "logged while this flush's exchange ran)",
                }
        self.set_layout(Layout(list(merged.values()), self.layout.version + 1))
        self._unplaced = [i for i in self._unplaced if self.buffer.specs[i].key not in refused]
        problems = [f"{k}: {', '.join(sorted(v))}" for k, v in sorted(conflicts.items())]
        problems += [why for _, why in sorted(refused.items())]
        if problems:
            self.conflict = KeyConflictError(
                f"at log step {step}, ranks logged conflicting keys: "
                + "; ".join(problems)
                + ". The first spec was kept and the other samples of those keys were dropped."
            )

    def epilogue(
        self, step: int, sums: np.ndarray | torch.Tensor | None,
        maxes: np.ndarray | torch.Tensor | None, ready: Any = None,
        gathered: GatherBuffers | None = None,
    ) -> PendingRow | None:  # fmt: skip
        """Every protocol's end: the writer's share on global rank 0, nothing elsewhere. The
        gather protocol lends its buffers, whose table the writer reduces (copying 4096 keys
        of 2 ranks costs ~30 us on a cold cache)."""
        if not self.world.is_global_zero:
            return None
        if gathered is not None:
            gathered.lent = True
        return PendingRow(
            step, self.layout, self.world.group_ranks, sums, maxes, ready, gathered=gathered
        )

    def take_conflict(self) -> KeyConflictError | None:
        """The key conflict the last exchange found, if any, and forget it."""
        err, self.conflict = self.conflict, None
        return err

    def raise_conflict(self) -> None:
        err = self.take_conflict()
        if err is not None:
            raise err


def _completes(work: Any, timeout: float) -> bool:
    """Poll a started collective until it completed (no lock: this may run in a signal
    handler); False if ``timeout`` ran out first or it failed."""
    deadline = time.monotonic() + timeout
    while not work.is_completed():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
    try:
        work.wait()  # completed: returns at once, or raises what failed it
    except RuntimeError:
        return False
    return True


# ---------------------------------------------------------------------- the protocols
def _gather_round(
    ex: Exchange, snap: Snapshot, step: int, header: Header
) -> tuple[GatherBuffers, int]:
    """Send this rank's header + payloads to the writer and its header to every other rank;
    raise if the ranks' headers disagree. Returns the buffers holding the table and the longest
    new-key blob any rank announced (0: none)."""
    lay = ex.layout
    buf = ex.gather_buffers()
    row = buf.row
    if header.new_keys:  # this round is redone with the new layout: send neutral payloads
        row[Header.WIDTH : Header.WIDTH + lay.sum_size] = 0.0
        row[Header.WIDTH + lay.sum_size :] = lay.max_init
        row[: Header.WIDTH] = header.gathered()
        buf.counts = None
    elif (fused := ex.plan(snap).fused_for(snap, Header.WIDTH)) is not None:
        # The common case, in one or two C calls (and a fill when the counts changed).
        buf.counts = fused.build(snap, header.gathered(), row, buf.counts)
    else:
        ex.host_rows(snap, prefix=Header.WIDTH, out=row, head=header.gathered())
        buf.counts = None
    buf.header_copies[:] = row[: Header.WIDTH]
    buf.flush_ids.fill(np.nan)  # a table the collective did not fill can never pass as whole
    # Kept until the logger has taken the row (settle()): a signal handler that runs once the
    # collective started salvages the row from the writer's table.
    ex._salvageable = (header, buf.table, lay) if buf.root and not header.new_keys else None
    ex.collective(
        step, lambda: all_to_all(ex.group, buf.recv, buf.send, buf.recv_splits, buf.send_splits)
    )
    agree, blob_len = buf.headers.read()
    if not agree:
        ex.check(step, buf.table_np[:, : Header.WIDTH])
    return buf, blob_len


def gather_protocol(ex: Exchange, snap: Snapshot, step: int) -> PendingRow | None:
    """One all_to_all carries the header and every key, min/max included.

    The writer (group rank 0) receives every rank's row, every other rank every rank's header;
    each checks the headers exactly (a rank out of step is named at once, with no further
    collective), and rank 0's writer reduces the columns of the table.
    """
    new = ex.new_specs(snap)
    blob = encode_specs(new)
    buffers, blob_len = _gather_round(ex, snap, step, ex.header(step, new, blob))
    if blob_len:  # some rank brought keys the layout lacks
        ex.exchange_specs(step, blob, blob_len, snap)
        buffers, _ = _gather_round(ex, snap, step, ex.header(step, [], b""))
    return ex.epilogue(step, None, None, gathered=buffers)


def all_reduce_protocol(ex: Exchange, snap: Snapshot, step: int) -> PendingRow | None:
    """One all_reduce carries the header (summed encoding) and every mean/sum/last key; a
    second one (MAX) carries min/max keys and the extreme half of spread blocks."""
    size = ex.world.group_size
    new = ex.new_specs(snap)
    blob = encode_specs(new)
    header = ex.header(step, new, blob)
    h = Header.SUMMED_WIDTH
    lay = ex.layout
    if new:  # redone with the new layout: send the header alone
        sums, maxes = np.zeros(h + lay.sum_size), lay.max_init.copy()
    else:
        sums, maxes = ex.host_rows(snap, prefix=h)
    sums[:h] = header.summed()
    buf = torch.from_numpy(sums)
    ex.collective(step, lambda: dist.all_reduce(buf, group=ex.group, async_op=True))
    if not header.agrees_with_sum(sums[:h], size):
        ex.gather_headers(step, header)  # names who is out of step; raises
        raise Disagreement(f"ranks disagree on the flush at log step {step}")
    if sums[1] > 0:  # some rank brought keys: every rank pads blobs to the summed length
        ex.exchange_specs(step, blob, int(sums[2]), snap)
        sums, maxes = ex.host_rows(snap, prefix=0)
        buf = torch.from_numpy(sums)
        ex.collective(step, lambda: dist.all_reduce(buf, group=ex.group))
        body = sums
    else:
        body = sums[h:]
    if not ex.layout.max_size:
        return ex.epilogue(step, body, None)
    mbuf = torch.from_numpy(np.ascontiguousarray(maxes))
    ex.collective(step, lambda: dist.all_reduce(mbuf, op=dist.ReduceOp.MAX, group=ex.group))
    return ex.epilogue(step, body, mbuf.numpy())


def device_protocol(ex: Exchange, snap: Snapshot, step: int) -> PendingRow | None:
    """For payloads on a GPU: reading a header from a device payload would make every rank
    wait for the device, so the headers go first on the host (one small all_to_all), then the
    payloads are reduced to rank 0 where they live; the other ranks never wait."""
    w = ex.world
    new = ex.new_specs(snap)
    blob = encode_specs(new)
    _, blob_len = read_headers(ex.gather_headers(step, ex.header(step, new, blob)))
    if blob_len:
        ex.exchange_specs(step, blob, blob_len, snap)
    p = tensor_payloads(snap, ex.plan(snap), w.comm_device, ex.group_rank, ex.group_size)
    # The writer, global rank 0, is a member of every group that communicates. Host payloads
    # (the device protocol run on CPU) ride on the logger's group, whose timeout guards them.
    group = ex.group if w.comm_device.type == "cpu" else w.group
    ex.collective(step, lambda: dist.reduce(p.sums, dst=0, op=dist.ReduceOp.SUM, group=group))
    if p.maxes is not None:
        maxes = p.maxes
        ex.collective(step, lambda: dist.reduce(maxes, dst=0, op=dist.ReduceOp.MAX, group=group))
    if not w.is_global_zero:
        return None
    sums, mx, ready = p.sums, p.maxes, None
    if sums.device.type == "cuda":
        sums = sums.to("cpu", non_blocking=True)
        mx = mx.to("cpu", non_blocking=True) if mx is not None else None
        ready = torch.cuda.Event()
        ready.record()
    return ex.epilogue(step, sums, mx, ready)


_PROTOCOLS: dict[str, Callable[[Exchange, Snapshot, int], PendingRow | None]] = {
    "gather": gather_protocol,
    "all_reduce": all_reduce_protocol,
    "device": device_protocol,
}
