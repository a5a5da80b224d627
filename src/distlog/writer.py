"""Global rank 0's side of a flush: decode the row, apply the non-finite policy, hand it to the
sinks (each on its lane, see `distlog.sinkset`).

Everything here runs on one background thread (the *writer*), so a slow backend never delays the
collective the other ranks wait in, and rank 0's training thread never decodes a row.

Nothing here takes a lock the training thread could hold when a signal handler interrupts it:
jobs go into a ``deque`` (``append`` takes no lock), wake-ups through a ``SimpleQueue`` (whose
``put`` is reentrant) and waiting polls a flag, so the SIGTERM handler can always queue the last
writes and wait for them, wherever the main thread was.
"""

from __future__ import annotations

import collections
import math
import queue
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from distlog.errors import LogValueError
from distlog.exchange import PendingRow
from distlog.sinks.base import Sink
from distlog.sinkset import SinkSet

__all__ = ["NONFINITE_POLICIES", "NonFinitePolicy", "WriteJob", "WriterThread"]

NONFINITE_POLICIES = ("warn", "ignore", "drop")


class NonFinitePolicy:
    """What the writer does with NaN and infinities: write them with one warning per key
    (``"warn"``), silently (``"ignore"``), or leave them out (``"drop"``)."""

    def __init__(self, policy: str) -> None:
        if policy not in NONFINITE_POLICIES:
            raise LogValueError(
                f"nonfinite={policy!r}; choose one of {', '.join(NONFINITE_POLICIES)}"
            )
        self.policy = policy
        self._warned: set[str] = set()

    def apply(self, row: dict[str, float]) -> dict[str, float]:
        if self.policy == "ignore" or all(map(math.isfinite, row.values())):
            return row
        for key in [k for k, v in row.items() if not math.isfinite(v)]:
            if self.policy == "drop":
                del row[key]
            elif key not in self._warned:
                self._warned.add(key)
                warnings.warn(
                    f"distlog: key {key!r} has a non-finite value ({row[key]}); it is written "
                    "as is (further warnings for this key are suppressed)",
                    stacklevel=2,
                )
        return row


class WriteJob:
    """One flush's writes, run on the writer thread at most once.

    The row comes from the exchange's [PendingRow][distlog.exchange.PendingRow] (set at once for
    a blocking flush, by the exchange thread for an asynchronous one) plus the values that were
    already global (``extra``); media queued before the flush go with it, at its step. A signal
    that arrives after the values reached the writer but before the job ran queues it again;
    the second run does nothing.
    """

    def __init__(
        self,
        step: int,
        sinks: SinkSet,
        policy: NonFinitePolicy,
        extra: dict[str, float],
        media: list[tuple[str, Any]],
        pending: PendingRow | None = None,
    ) -> None:
        self.step = step
        self.sinks = sinks
        self.policy = policy
        self.extra = extra
        self.media = media
        self.pending = pending
        self._row: dict[str, float] | None = None
        self._ran = False

    def row(self) -> dict[str, float]:
        """The final row, decoded by whichever thread asks first. No lock: a signal handler
        may drain the writer while the training thread is in here; decoding twice is harmless."""
        if self._row is None:
            row = self.pending.resolve() if self.pending is not None else {}
            row.update(self.extra)
            self._row = self.policy.apply(row)
        return self._row

    def __call__(self) -> None:
        if self._ran:
            return
        self._ran = True
        step, row = self.step, self.row()
        if row:
            self.sinks.each("log_scalars", lambda s: s.log_scalars(step, row), step=step)
        for key, item in self.media:  # a media-only row is a written step too

            def write(sink: Sink, key: str = key, item: Any = item) -> None:
                sink.log_media(step, key, item)

            self.sinks.each("log_media", write, step=step)


WRITE_INTERVAL_S = 0.05
"""How long a row may wait on the writer thread's queue before the thread wakes for it."""


class WriterThread:
    """Runs sink calls in order on one background thread, a batch at a time.

    Queuing a job does not wake the thread: it wakes every [WRITE_INTERVAL_S][distlog.writer.WRITE_INTERVAL_S]
    (at once for a drain, a stop or a queue growing full) and runs everything queued. A row
    reaches the sinks at most that much later, and a job that logs every step costs the
    training thread one ``deque.append`` instead of a thread wake-up, while the writer runs
    several rows back to back on a warm cache instead of one row per wake-up.
    """

    def __init__(
        self,
        maxsize: int,
        interval: float = WRITE_INTERVAL_S,
        after_batch: Callable[[], None] | None = None,
    ) -> None:
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        # Wake-ups only (a token per request); put() is reentrant, so a signal handler may wake
        # the thread wherever the main thread was.
        self._wake: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._maxsize = maxsize
        self._wake_at = max(1, maxsize // 2)
        self._interval = interval
        self._after_batch = after_batch  # e.g. wake the sinks' lanes for what the batch queued
        self.errors: list[BaseException] = []
        # A plain flag, not Thread.is_alive(): a flush asks on every row, and is_alive() takes
        # the thread's state lock (5-7 us right after a collective's wait, on this host).
        self.alive = True
        self._thread = threading.Thread(target=self._run, name="distlog-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self.alive = False

    def _serve(self) -> None:
        jobs, wake, interval = self._jobs, self._wake, self._interval
        while True:
            try:
                wake.get(timeout=interval)
            except queue.Empty:
                pass
            ran = False
            while jobs:
                job = jobs.popleft()
                if job is _STOP:
                    return
                self._run_one(job)
                ran = True
            if ran and self._after_batch is not None:
                self._run_one(self._after_batch)

    def _run_one(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:
            # A failed job (a decode error, a warning turned into an error by -W error) must
            # not end the thread: every later wait() and finish() would block forever.
            self.errors.append(exc)
            try:
                warnings.warn(
                    f"distlog: writing a row failed: {type(exc).__name__}: {exc}", stacklevel=1
                )
            except Exception:
                print(f"distlog: writing a row failed: {exc!r}", file=sys.stderr)

    def submit(self, job: Callable[[], None], *, wait_for_room: bool = True) -> None:
        """Queue a job. Waits while ``maxsize`` jobs are queued (sinks slower than training)."""
        jobs = self._jobs
        if wait_for_room and len(jobs) >= self._maxsize:
            self._wake.put(True)
            while len(jobs) >= self._maxsize and self.alive:
                time.sleep(0.001)
        jobs.append(job)
        if len(jobs) >= self._wake_at:
            self._wake.put(True)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every job queued so far has run; False if ``timeout`` ran out first."""
        marker = _Marker()
        self._jobs.append(marker)
        self._wake.put(True)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while not marker.done:
            if not self.alive:
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return True

    def stop(self, timeout: float | None = 60.0) -> None:
        self._jobs.append(_STOP)
        self._wake.put(True)
        self._thread.join(timeout=timeout)


class _Marker:
    """A no-op job that records that the writer thread reached it (a lock-free drain)."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def __call__(self) -> None:
        self.done = True


def _stop() -> None:
    """The job that ends the writer thread (never run)."""


_STOP = _stop
