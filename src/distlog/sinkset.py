"""The sinks of global rank 0, each on a lane of its own.

A sink is an outside system (a tracker's service, an HTTP server, a network disk) that can hang.
With every sink on one thread, one that hung held up the others: the run's own ``metrics.jsonl``
stopped, training blocked once the queue filled, and a SIGTERM left rows unwritten and
``run.json`` without its end. So every sink has a *lane*: a thread that makes its calls in order.
The writer never waits for a lane, so no sink waits behind another. A sink that is slow holds
back training (its lane fills and the next flush waits for room, as before); a sink whose call
has run longer than ``sink_timeout`` is *stalled*: its later calls are dropped, counted and named
in a warning, while the others go on, and ``finish()`` stops waiting for it. If the call
returns, the sink gets the calls queued after that again.

Like the writer thread, nothing here takes a lock a signal handler could find held: calls go
into a ``deque``, wake-ups through a ``SimpleQueue``, waiting polls flags.
"""

from __future__ import annotations

import collections
import queue
import sys
import threading
import time
import warnings
from collections.abc import Callable

from distlog.sinks.base import Sink

__all__ = ["SINK_TIMEOUT_S", "SinkLane", "SinkSet"]

SINK_TIMEOUT_S = 300.0
"""How long one sink call may run before distlog gives up waiting for that sink (the default of
``Logger(sink_timeout=...)``). Long enough for a tracker's ``finish`` to upload what it holds."""

SinkCall = Callable[[Sink], None]


class SinkLane:
    """One sink's calls, in order, on a thread of its own."""

    def __init__(self, sink: Sink, maxsize: int, on_written: Callable[[int, Sink], None]) -> None:
        self.sink = sink
        self.name = type(sink).__name__
        self._calls: collections.deque[tuple[str, SinkCall, int | None] | _Marker] = (
            collections.deque()
        )
        self._wake: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._maxsize = maxsize
        self._on_written = on_written
        # (what, monotonic start) of the call running now; read by other threads, no lock.
        self.busy: tuple[str, float] | None = None
        self.dropped = 0  # calls not made because the sink was stalled
        self._warned_stall = False
        self._thread = threading.Thread(
            target=self._serve, name=f"distlog-sink-{self.name}", daemon=True
        )
        self._thread.start()

    def stalled_for(self, limit: float | None) -> str | None:
        """The call that has run longer than ``limit`` seconds (as ``'log_scalars for 301 s'``),
        or None."""
        busy = self.busy
        if limit is None or busy is None:
            return None
        ran = time.monotonic() - busy[1]
        return f"{busy[0]} for {ran:.0f} s" if ran > limit else None

    def put(self, what: str, call: SinkCall, step: int | None, limit: float | None) -> None:
        """Queue a call, never waiting (the writer must not wait behind one sink: the others
        would wait with it). A full lane whose sink is hung drops the call and counts it."""
        calls = self._calls
        if len(calls) >= self._maxsize:
            stalled = self.stalled_for(limit)
            if stalled is not None:
                self._drop(f"{self.name}.{stalled} has not returned")
                return
            if not self._thread.is_alive():  # it should not end: nothing would make the call
                self._drop(f"{self.name}'s thread ended")
                return
        calls.append((what, call, step))  # woken by wake(), after the writer's whole batch

    def full(self, limit: float | None) -> bool:
        """Full and still answering: a slow sink, which training waits for."""
        return (
            len(self._calls) >= self._maxsize
            and self.stalled_for(limit) is None
            and self._thread.is_alive()
        )

    def wake(self) -> None:
        if self._calls and self._wake.empty():  # one token is enough: no pile-up while it hangs
            self._wake.put(True)

    def _drop(self, why: str) -> None:
        self.dropped += 1
        if not self._warned_stall:
            self._warned_stall = True
            _warn(
                f"distlog: {why}; it is skipped while it hangs (its rows are dropped and "
                "counted; the other sinks keep writing)"
            )

    def mark(self) -> _Marker:
        """Queue a marker that the lane flags when it reaches it: every call queued before it
        has then been made."""
        marker = _Marker()
        self._calls.append(marker)
        self._wake.put(True)
        return marker

    def wait(self, marker: _Marker, deadline: float | None, limit: float | None) -> str | None:
        """Wait until the lane reaches ``marker``. Returns None when it did, else why not (the
        sink is hung, or ``deadline`` passed)."""
        delay = 0.0005
        while not marker.done:
            stalled = self.stalled_for(limit)
            if stalled is not None:
                return f"{self.name}.{stalled} has not returned"
            if deadline is not None and time.monotonic() >= deadline:
                return f"{self.name} did not finish in time"
            if not self._thread.is_alive():
                return f"{self.name}'s thread ended"
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return None

    def stop(self) -> None:
        self._calls.append(_Marker(stop=True))
        self._wake.put(True)

    def queued(self) -> int:
        return sum(1 for c in list(self._calls) if not isinstance(c, _Marker))

    def _serve(self) -> None:
        calls = self._calls
        while True:
            try:
                self._wake.get(timeout=0.5)
            except queue.Empty:
                pass
            while calls:
                item = calls.popleft()
                if isinstance(item, _Marker):
                    item.done = True
                    if item.stop:
                        return
                    continue
                what, call, step = item
                self.busy = (what, time.monotonic())
                try:
                    call(self.sink)
                    if step is not None:
                        self._on_written(step, self.sink)
                except BaseException as exc:  # a broken backend must not end its lane
                    _warn(f"distlog: {self.name}.{what} failed: {_describe(exc)}")
                finally:
                    self.busy = None


class SinkSet:
    """Global rank 0's sinks. One broken backend must not take the others down: a failing call
    becomes a warning naming the sink, and with lanes (the logger's ``async_write``) one that
    hangs holds up only itself."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks  # the logger's list: add_sink appends to it
        self.run_log: Sink | None = None
        """The run directory's own log: ``last_written_step`` is the last step it wrote (what
        a resume skips up to), not another sink's, which may run ahead of it."""
        self.last_written_step: int | None = None
        self._hurry = False
        self.timeout: float | None = SINK_TIMEOUT_S
        self._lanes: dict[int, SinkLane] | None = None  # by id(sink); None: calls run inline
        self._lane_list: tuple[SinkLane, ...] = ()  # replaced whole: any thread may iterate it
        self._maxsize = 0
        self._step_lock = threading.RLock()  # a signal handler may write inline mid-call

    def use_lanes(self, maxsize: int, timeout: float | None) -> None:
        """Run each sink's calls on a lane of its own from now on (created at its first call)."""
        self._lanes, self._maxsize, self.timeout = {}, maxsize, timeout

    def each(self, what: str, call: SinkCall, *, step: int | None = None) -> None:
        """Make ``call`` on every sink: at once, or queued on each sink's lane. ``step``: the
        row's step, recorded as written once a sink has taken it."""
        for sink in list(self.sinks):
            if self._lanes is None:  # inline, on the caller's thread
                try:
                    call(sink)
                except Exception as exc:
                    warnings.warn(
                        f"distlog: {type(sink).__name__}.{what} failed: "
                        f"{type(exc).__name__}: {exc}",
                        stacklevel=2,
                    )
                else:
                    if step is not None:
                        self.wrote(step, sink)
            else:
                self._lane(sink).put(what, call, step, self.timeout)

    def _lane(self, sink: Sink) -> SinkLane:
        assert self._lanes is not None
        lane = self._lanes.get(id(sink))
        if lane is None:
            lane = self._lanes[id(sink)] = SinkLane(sink, self._maxsize, self.wrote)
            self._lane_list = (*self._lane_list, lane)
        return lane

    def wrote(self, step: int, sink: Sink | None = None) -> None:
        """Note a row (scalars or media) that ``sink`` wrote at ``step``: ``run.json``'s
        ``last_step`` is the largest the run log wrote, which a resume must not write again."""
        if self.run_log is not None and sink is not self.run_log:
            return
        with self._step_lock:
            if self.last_written_step is None or step > self.last_written_step:
                self.last_written_step = step

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every sink has made the calls queued so far; a stalled sink (or one still
        busy when ``timeout`` ends) is given up on with a warning naming it and what it did not
        write. True if every sink finished."""
        lanes = self._lane_list
        if not lanes:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        done = True
        markers = [lane.mark() for lane in lanes]  # all at once: each lane works while we wait
        for lane, marker in zip(lanes, markers, strict=True):
            why = lane.wait(marker, deadline, self.timeout)
            if why is not None:
                done = False
                _warn(
                    f"distlog: {why}; giving up on it: {_calls(lane.queued())} queued for it "
                    f"not made, {_calls(lane.dropped)} skipped while it hung. The other sinks "
                    "wrote everything"
                )
        return done

    def wait_for_room(self, limit: float | None = None) -> None:
        """Wait while a sink that still answers has a full lane: training is held back by a
        slow sink, losing nothing, but not by a hung one (a call running longer than ``limit``,
        or ``sink_timeout``, whichever is less), nor once the logger is finishing. Called
        before a row is queued; the writer itself never waits for a sink."""
        lanes = self._lane_list
        maxsize = self._maxsize
        for lane in lanes:  # the common case, on every flush: no lane is full
            if len(lane._calls) >= maxsize:
                break
        else:
            return
        limit = _least(limit, self.timeout)
        woken = False
        while not self._hurry and any(lane.full(limit) for lane in lanes):
            if not woken:
                self.wake()
                woken = True
            time.sleep(0.001)

    def hurry(self) -> None:
        """The logger is finishing: nobody waits for room any more (a thread that did, e.g.
        the exchange thread handing over a row, goes on at once)."""
        self._hurry = True

    def wake(self) -> None:
        """Start the lanes on what was queued (the writer calls this after each batch: a lane
        wakes once for several rows, not once a row)."""
        for lane in self._lane_list:
            lane.wake()

    def stop(self) -> None:
        """End every lane's thread once its queued calls are made (a stalled one is a daemon)."""
        for lane in self._lane_list:
            lane.stop()


class _Marker:
    """A queued no-op that records the lane reached it (a lock-free drain), or ends the lane."""

    __slots__ = ("done", "stop")

    def __init__(self, stop: bool = False) -> None:
        self.done = False
        self.stop = stop


def _least(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _describe(exc: BaseException) -> str:
    """``Type: message``, even for an exception whose ``str()`` raises."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return type(exc).__name__


def _calls(n: int) -> str:
    return f"{n} call{'s' if n != 1 else ''}"


def _warn(message: str) -> None:
    try:
        warnings.warn(message, stacklevel=2)
    except Exception:  # -W error on a background thread: still say it
        print(message, file=sys.stderr)
