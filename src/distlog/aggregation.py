"""The heart of distlog, assembled: a [Buffer][distlog.buffer.Buffer] per rank and an
[Exchange][distlog.exchange.Exchange] between ranks, run inline or off the training thread.

Data flows one way: ``log_*`` -> buffer (any thread) -> ``flush``: an O(1) swap takes the
buffer's [Snapshot][distlog.buffer.Snapshot] -> the exchange reduces it with every rank's ->
global rank 0 gets a [PendingRow][distlog.exchange.PendingRow] for its writer thread.

* ``flush`` (blocking): the exchange runs on the calling thread; errors are raised there.
* ``flush_async``: the swap happens at the call, the exchange on a worker thread; at most one is
  in flight (the next flush waits for it), and its errors are raised at the next flush or at
  ``finish``, naming the log step they belong to.

This module knows no sink: rows are plain dicts, decoded on the writer thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

import torch

from distlog import groups
from distlog.buffer import Buffer, Snapshot
from distlog.errors import RankDivergenceError
from distlog.exchange import Exchange, ExchangeOptions, PendingRow
from distlog.layout import REDUCTIONS, KeySpec, Layout, spread_keys
from distlog.world import World

__all__ = [
    "REDUCTIONS",
    "Aggregator",
    "ExchangeOptions",
    "KeySpec",
    "Layout",
    "PendingRow",
    "spread_keys",
]


class ExchangeWorker:
    """Runs one exchange at a time on a background thread (``async_flush=True``).

    Waiting for it never takes a lock a signal handler could find held: the handler polls
    [busy][distlog.aggregation.ExchangeWorker.busy].
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.busy = False
        self.error: BaseException | None = None  # what escaped a job (jobs catch their own)
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="distlog-exchange", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job()
            except BaseException as exc:  # the thread serves on: a dead one hangs every wait
                self.error = exc
            finally:
                # Drop the job before waiting for the next: it holds the exchange and its gloo
                # group, which must not outlive destroy_process_group() in this thread.
                job = None
                self.busy = False
                self._idle.set()

    def submit(self, job: Callable[[], None]) -> None:
        self._idle.clear()
        self.busy = True
        self._queue.put(job)

    def wait(self, timeout: float | None = None, *, polling: bool = False) -> bool:
        """Wait until the exchange in flight is done; False if ``timeout`` ran out first."""
        if not self.busy:  # the usual case at a flush: done long ago, no lock to take
            return True
        if not polling:
            return self._idle.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.busy:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Let the thread end and wait for it (unless an exchange still runs there). A thread
        left waiting kept the last exchange's gloo group alive past the caller's
        ``destroy_process_group()``: at exit, C++ aborted the process ("terminate called
        without an active exception") in 9 of 10 two-rank runs of ``async_flush=True``."""
        self._queue.put(None)
        if not self.busy and self._thread is not threading.current_thread():
            self._thread.join(timeout)


class Aggregator:
    """Buffers scalars on one rank and reduces them with every rank of ``world.group``.

    Every rank of the group must construct it (it creates a gloo group for the exchange) and
    flush the same number of times, with the same steps.
    """

    def __init__(
        self,
        world: World,
        *,
        timeout: float = 300.0,
        reserved: Collection[str] = (),
        options: ExchangeOptions | None = None,
    ) -> None:
        self.world = world
        self.timeout = timeout
        self.options = options if options is not None else ExchangeOptions()
        self.buffer = Buffer(reserved, fold_host_tensors=self.options.fold_host_tensors)
        self.exchange = Exchange(
            world,
            self.buffer,
            groups.control_group(world, timeout),
            timeout=timeout,
            options=self.options,
        )
        self._worker: ExchangeWorker | None = None
        self._async_error: BaseException | None = None
        # Raised while handing a finished exchange's row on (a warning made an error by -W
        # error): not a failure of the exchange, so raised once the next flush is on its way.
        self._deliver_error: BaseException | None = None
        self._spent: Snapshot | None = None  # the last flush's snapshot, freed at the next

    # ------------------------------------------------------------------ facts
    @property
    def control_group(self) -> Any:
        """The logger's gloo group (own timeout), or None where nothing is communicated."""
        return self.exchange.group

    @property
    def communicates(self) -> bool:
        return self.exchange.communicates

    @property
    def failure(self) -> str | None:
        """Why the group can no longer be used, after a collective failed; else None."""
        return self.exchange.failure

    @property
    def collectives_last_flush(self) -> int:
        """Collectives the last flush issued on this rank (for tests and benchmarks)."""
        return self.exchange.collectives

    @property
    def layout_version(self) -> int:
        """How many times the agreed key layout changed (each change cost a key exchange)."""
        return self.exchange.layout.version

    @property
    def pending_keys(self) -> list[str]:
        """Keys logged on this rank that no flush has taken yet."""
        return self.buffer.pending_keys

    # ------------------------------------------------------------------ flushing
    def flush(self, step: int, *, final: bool = False) -> PendingRow | None:
        """Reduce everything buffered since the last flush over the group, on this thread.

        Collective. Returns the writer's share on global rank 0, None elsewhere. When the
        ranks disagree (seen alike by every rank) what was taken is put back for the next try.
        ``final`` marks finish()'s flush, the last: a rank that makes a plain flush() there
        instead (one flush more than the others) fails it on every rank.
        """
        self.wait_async()
        self.exchange.final = final  # no exchange is in flight now
        snap = self.buffer.swap()
        try:
            pending = self.exchange.run(snap, step, self._meanwhile)
        except RankDivergenceError:
            self.buffer.restore(snap)
            raise
        self._spent = snap
        return pending

    def _meanwhile(self) -> None:
        """Housekeeping while a flush's collective is in flight: free the previous flush's
        snapshot (freeing 4096 boxed floats costs ~70 us on a cold cache) and build the next
        window's clean lists."""
        self._spent = None
        self.buffer.prepare_window()

    def flush_async(
        self,
        step: int,
        deliver: Callable[[PendingRow | None], None],
        undeliverable: Callable[[], None],
        *,
        final: bool = False,
    ) -> BaseException | None:
        """Swap now, exchange on the worker thread; ``deliver`` gets the writer's share there,
        and if the exchange fails, ``undeliverable`` is called there instead (the caller takes
        back what it meant to write with the row: media, values already global).

        Waits for the exchange still in flight first and raises its divergence error, if it
        had one. Returns the key conflict it found (or the error that handing the previous
        row on raised), for the caller to raise once this flush is on its way, as a blocking flush raises its own after its row: a conflict that one rank
        alone saw (a key it first logged while the exchange ran) must not make that rank skip
        a flush the others make.
        """
        self.wait_async(conflicts=False)
        self.exchange.final = final  # no exchange is in flight now (see flush)
        late, self._deliver_error = self._deliver_error, None
        found = late if late is not None else self.exchange.take_conflict()
        self.exchange.check_usable()
        snap = self.buffer.swap()
        ready = _record_stream(snap, self.world)
        if self._worker is None:
            self._worker = ExchangeWorker()

        def job() -> None:
            try:
                if ready is not None:
                    torch.cuda.current_stream(self.world.device).wait_event(ready)
                pending = self.exchange.run(snap, step, self._meanwhile)
                self._spent = snap
                self.exchange.settle()  # the handler of a signal waits for this thread instead
            except BaseException as exc:
                if isinstance(exc, RankDivergenceError):
                    self.buffer.restore(snap)
                self._async_error = exc
                undeliverable()
                return
            try:
                deliver(pending)
            except BaseException as exc:  # this thread must live on: the next flush waits for it
                self._deliver_error = exc

        self._worker.submit(job)
        return found

    def wait_async(
        self, timeout: float | None = None, *, polling: bool = False, conflicts: bool = True
    ) -> bool:
        """Wait for the exchange in flight; raise its error here (its key conflict too, unless
        ``conflicts`` is False). False if ``timeout`` ran out first (nothing is raised then)."""
        worker = self._worker
        if worker is not None and not worker.wait(timeout, polling=polling):
            return False
        err, self._async_error = self._async_error, None
        if err is None and worker is not None:
            err, worker.error = worker.error, None
        if err is not None:
            raise err
        if worker is not None and conflicts:
            late, self._deliver_error = self._deliver_error, None
            if late is not None:
                raise late
            self.exchange.raise_conflict()  # found by the exchange that just finished
        return True

    def settle(self) -> None:
        """The caller has taken the row of the last flush: nothing is left to salvage."""
        self.exchange.settle()

    def raise_conflict(self) -> None:
        """Raise the key conflict the last flush found (after its row was queued)."""
        self.exchange.raise_conflict()

    def salvage(self, timeout: float | None = None) -> PendingRow | None:
        """See [Exchange.salvage][distlog.exchange.Exchange.salvage]."""
        return self.exchange.salvage(timeout)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()

    def forget_threads(self) -> None:
        """In a forked child: the exchange thread stayed in the parent, so never wait for it."""
        self._worker = None


def _record_stream(snap: Any, world: World) -> Any:
    """An event on the training thread's stream, for an exchange that reads its tensors from
    another thread (no host sync: the worker's stream waits on it)."""
    if not snap.t_vals and not snap.lasts:  # numbers only (host tensors were read at the call)
        return None
    if not any(t.is_cuda for t in [*snap.t_vals, *snap.lasts.values()]):
        return None
    event = torch.cuda.Event()
    event.record()
    return event
