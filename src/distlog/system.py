"""System metrics from every rank, carried in the flush's own fused exchange.

[Logger][distlog.Logger] with ``system_metrics=True`` builds a
[SystemMetrics][distlog.system.SystemMetrics] sampler. At the start of each flush the sampler
reads this process's clocks and counters and logs them through the public
[log_scalar][distlog.Logger.log_scalar] with ``spread=True``: they ride the same collective as
the user's keys (no extra collective), and ``rank_argmax`` names the straggler or the memory
hog. Nothing here synchronises with a device: the CUDA allocator counters are host-side, and
NVML is read only where ``pynvml`` is importable.

Keys (all under ``system/``; each also gets ``/rank_min``, ``/rank_max``, ``/rank_std`` and
``/rank_argmax``):

| key | per rank | across ranks |
|---|---|---|
| ``step_time_s`` | wall time from the end of the previous flush (or ``start()``) / steps advanced | mean |
| ``rss_mib`` | resident memory of the process | mean |
| ``cpu_pct`` | CPU time of the process / wall time, in % (100 = one core busy) | mean |
| ``data_wait_s`` | time per step spent waiting for data (when the loop reports it) | mean |
| ``samples_per_s``, ``tokens_per_s`` | counts reported with ``count()`` / wall time | sum |
| ``cuda_allocated_mib``, ``cuda_reserved_mib``, ``cuda_max_allocated_mib`` | CUDA allocator | mean |
| ``gpu_util_pct`` | NVML utilisation of the rank's GPU | mean |
| ``mfu`` | model FLOPs utilisation, after ``set_flops()`` | mean |
| ``forward_s`` | mean time of one training forward, after ``time_forward(model)`` (the Lightning and Hugging Face callbacks set it up) | mean |

Under DDP the gradient all-reduce makes every rank wait for the slowest, so every rank's
``step_time_s`` is about the same and its ``rank_argmax`` names a rank at random. A forward has
no such collective: ``forward_s/rank_argmax`` names the slow rank there. It is measured on the
rank's own device (CUDA events read once they completed, never waited for) or its host clock.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import operator
import os
import resource
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TypeVar

import torch

from distlog.errors import LogTypeError, LogValueError

__all__ = ["PREFIX", "ForwardTimer", "SystemMetrics", "mfu"]

PREFIX = "system/"
_MIB = 1024.0 * 1024.0
T = TypeVar("T")


class _LogsScalars(Protocol):
    """What the sampler needs from its logger: the public buffering call and the last step."""

    @property
    def step(self) -> int: ...

    def log_scalar(
        self,
        key: str,
        value: Any,
        reduce: str = "mean",
        *,
        weight: Any = None,
        spread: bool = False,
    ) -> None: ...


def mfu(flops_per_step: float, step_time_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the hardware's peak, in [0, 1].

    Args:
        flops_per_step: FLOPs one rank computes per optimizer step (forward + backward; for a
            dense transformer about ``6 * n_params * tokens_per_step``).
        step_time_s: seconds per step (e.g. ``system/step_time_s``).
        peak_flops: the device's peak FLOP/s for the dtype in use (e.g. ``989e12`` for an
            H100 SXM in bf16 dense).
    """
    for name, value in (
        ("flops_per_step", flops_per_step),
        ("step_time_s", step_time_s),
        ("peak_flops", peak_flops),
    ):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise LogTypeError(f"mfu: {name} must be a number, got {type(value).__name__}")
        if not value > 0:
            raise LogValueError(f"mfu: {name} must be > 0, got {value!r}")
    return float(flops_per_step) / (float(step_time_s) * float(peak_flops))


def _rss_bytes() -> float:
    """Current resident set size; /proc on Linux, psutil elsewhere, else the peak RSS."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return float(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return float(psutil.Process().memory_info().rss)
    except Exception:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return float(peak if sys.platform == "darwin" else peak * 1024)


class ForwardTimer:
    """Times training forwards on this rank: spans marked by [begin][distlog.system.ForwardTimer.begin]
    and [end][distlog.system.ForwardTimer.end] (or a module's forward hooks), on the device's
    current CUDA stream with events, or with the host clock on a CPU. A CUDA span is read at a
    later flush, once its events have completed: reading never waits for the device.

    Spans nest (a module that calls itself, a model and one of its parts both hooked): only the
    outermost counts. Each thread has its own (``nn.DataParallel`` runs a replica per thread).
    """

    def __init__(self, device: torch.device | None) -> None:
        self._device = device
        self._open = threading.local()  # .stack: this thread's open spans' starts
        self._lock = threading.Lock()  # spans end on several threads
        self._pending: collections.deque[tuple[Any, Any]] = collections.deque()
        self._total = 0.0
        self._count = 0

    def _cuda(self) -> bool:
        dev = self._device
        return dev is not None and dev.type == "cuda" and torch.cuda.is_initialized()

    def _stack(self) -> list[Any]:
        stack: list[Any] | None = getattr(self._open, "stack", None)
        if stack is None:
            stack = self._open.stack = []
        return stack

    def _now(self) -> Any:
        if not self._cuda():
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self._device))
        return event

    def begin(self) -> None:
        """A forward starts (inside another one begun on this thread, it is part of that one)."""
        self._stack().append(self._now())

    def end(self) -> None:
        """The forward begun last on this thread has ended; without one, nothing happens."""
        stack = self._stack()
        if not stack:
            return
        start = stack.pop()
        if stack:
            return  # nested: the outer span counts
        stop = self._now()
        with self._lock:
            if isinstance(start, float):
                self._total += stop - start
                self._count += 1
            else:
                self._pending.append((start, stop))

    def abandon(self) -> None:
        """Drop this thread's open spans (a batch whose forward was begun and never ended: a
        ``training_step`` that skipped the batch)."""
        self._stack().clear()

    def take(self) -> float | None:
        """The mean time of the spans completed since the last call, or None if none did."""
        with self._lock:
            pending = self._pending
            while pending and pending[0][1].query():  # completed: reading it does not wait
                start, end = pending.popleft()
                self._total += start.elapsed_time(end) / 1000.0
                self._count += 1
            if self._count == 0:
                return None
            mean = self._total / self._count
            self._total, self._count = 0.0, 0
            return mean

    def reset(self) -> None:
        self.abandon()
        with self._lock:
            self._pending.clear()
            self._total, self._count = 0.0, 0

    def hook(self, module: torch.nn.Module) -> _Hooks:
        """Time every training-mode forward of ``module``; of a DDP, DataParallel or FSDP
        wrapper, of the module inside it (DDP's own synchronisation before the forward, a
        buffer broadcast that waits for the slowest rank, is left out)."""
        if not isinstance(module, torch.nn.Module):
            raise LogTypeError(f"time_forward takes a torch.nn.Module, got {type(module).__name__}")
        inner = _unwrapped(module)

        def before(mod: torch.nn.Module, args: Any) -> None:
            if mod.training:
                self.begin()

        def after(mod: torch.nn.Module, args: Any, out: Any) -> None:
            if mod.training:
                self.end()  # also when the forward raised (always_call): no span left open

        return _Hooks(
            [
                inner.register_forward_pre_hook(before),
                inner.register_forward_hook(after, always_call=True),
            ]
        )


def _unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """The module a data-parallel wrapper runs (only those: a user's model may well have an
    attribute named ``module`` of its own)."""
    wrappers: tuple[type, ...] = (
        torch.nn.parallel.DistributedDataParallel,
        torch.nn.DataParallel,
    )
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrappers = (*wrappers, FullyShardedDataParallel)
    except ImportError:
        pass
    while isinstance(module, wrappers):
        inner = module.module
        assert isinstance(inner, torch.nn.Module)
        module = inner
    return module


class _Hooks:
    """The forward hooks of [time_forward][distlog.system.SystemMetrics.time_forward];
    ``remove()`` takes them off the module."""

    def __init__(self, handles: list[Any]) -> None:
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class SystemMetrics:
    """Per-rank system metrics, logged through the logger at the start of each flush.

    Built by ``Logger(system_metrics=True)`` and reached as ``logger.system``. The loop may
    report what it processed and how long it waited for data::

        for batch in logger.system.timed(loader):      # or: with logger.system.data_wait(): ...
            loss = step(batch)
            logger.system.count(samples=len(batch), tokens=batch.numel())

    Every rank must have the sampler on (the keys are the same on every rank); what a rank
    never reports (counts, data wait, CUDA) is simply not logged by it.
    """

    def __init__(self, logger: _LogsScalars, device: torch.device | str | None = None) -> None:
        self._logger = logger
        self._device = torch.device(device) if device is not None else None
        self._t_last = time.perf_counter()
        self._t_flushed = self._t_last  # when the previous flush returned
        self._cpu_last = time.process_time()
        self._samples = 0.0
        self._tokens = 0.0
        self._wait = 0.0
        self._counting_samples = False
        self._counting_tokens = False
        self._timing_data = False
        self._start_step: int | None = None  # set by start(): the next sample counts from it
        self._flops_per_step: float | None = None
        self._peak_flops: float | None = None
        self._nvml = importlib.util.find_spec("pynvml") is not None
        self.forward = ForwardTimer(self._device)
        """Times training forwards (``system/forward_s``): see [time_forward][distlog.system.SystemMetrics.time_forward]."""
        self.last: dict[str, float] = {}
        """This rank's values at the last flush (before the cross-rank reduction)."""

    # ------------------------------------------------------------------ what the loop reports
    def count(self, samples: int | float = 0, tokens: int | float = 0) -> None:
        """Add processed samples and tokens; rates per second are logged at each flush.

        Plain Python numbers only (``len(batch)``, ``mask.numel()``): a device tensor here
        would need a host sync.
        """
        for name, value in (("samples", samples), ("tokens", tokens)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise LogTypeError(
                    f"system.count({name}=...) takes a Python number, got {type(value).__name__}"
                )
            if value < 0:
                raise LogValueError(f"system.count({name}=...) must be >= 0, got {value!r}")
        if samples:
            self._counting_samples = True
            self._samples += samples
        if tokens:
            self._counting_tokens = True
            self._tokens += tokens

    def add_data_wait(self, seconds: float) -> None:
        """Add time spent waiting for the next batch (if the loop measures it itself)."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise LogValueError(
                f"system.add_data_wait(seconds) takes a number >= 0, got {seconds!r}"
            )
        self._timing_data = True
        self._wait += float(seconds)

    @contextlib.contextmanager
    def data_wait(self) -> Iterator[None]:
        """Time the block as waiting for data: ``with logger.system.data_wait(): b = next(it)``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add_data_wait(time.perf_counter() - t0)

    def timed(self, iterable: Iterable[T]) -> Iterator[T]:
        """Iterate ``iterable``, counting the time each ``next()`` takes as data wait."""
        it = iter(iterable)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self.add_data_wait(time.perf_counter() - t0)
            yield item

    def set_flops(self, flops_per_step: float, peak_flops: float) -> None:
        """Log ``system/mfu`` at each flush from the measured step time (see [mfu][distlog.system.mfu])."""
        mfu(flops_per_step, 1.0, peak_flops)  # validates both
        self._flops_per_step = float(flops_per_step)
        self._peak_flops = float(peak_flops)

    def time_forward(self, module: torch.nn.Module) -> _Hooks:
        """Log ``system/forward_s``: the mean time of one training forward of ``module`` on
        this rank, so that ``system/forward_s/rank_argmax`` names the slow rank where the
        training's collectives make every rank's step time the same (DDP).

        Hooks the module (inside a DDP wrapper, the wrapped module); forwards in eval mode are
        not counted. Returns a handle whose ``remove()`` takes the hooks off. Under FSDP a
        forward holds the parameter all-gathers, which even it out too. Frameworks with hooks
        of their own call ``logger.system.forward.begin()`` / ``.end()`` instead (the
        Lightning callback does, around ``training_step``).
        """
        return self.forward.hook(module)

    def start(self, step: int) -> None:
        """Mark the start of the loop at ``step``: the next flush's ``step_time_s`` (and
        ``data_wait_s``, ``mfu``, the rates) count from here and from this step.

        Without it the first flush has no known starting point (a loop may count from 0 or 1,
        a restored job from its checkpoint's step, and the time since the Logger was built
        holds the setup): its row carries no ``step_time_s``, ``data_wait_s`` or ``mfu``, and
        the later rows do. The Lightning and Hugging Face callbacks call it when training
        starts, with the Trainer's global step.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise LogValueError(f"system.start(step) takes an int >= 0, got {step!r}")
        now = time.perf_counter()
        self._t_last = self._t_flushed = now
        self._cpu_last = time.process_time()
        self._samples = self._tokens = self._wait = 0.0
        self._start_step = step
        self.forward.reset()

    # ------------------------------------------------------------------ at each flush
    def sample(self, step: Any = None) -> dict[str, float]:
        """Read this rank's values and log them under ``system/``; called by the flush.

        ``step`` is the step the flush was given (None: the previous one + 1). Returns the
        values logged (also kept in ``last``).
        """
        now = time.perf_counter()
        cpu = time.process_time()
        wall = max(now - self._t_last, 1e-9)
        # The loop's own time: the previous flush's wait for the other ranks left out, or every
        # rank would show the slowest one's time and rank_argmax would name a rank at random.
        busy = max(now - self._t_flushed, 1e-9)
        last = self._logger.step
        target = last + 1 if step is None else step
        # Counted from start()'s step, else from the previous flush's; before the first flush
        # and without start() the steps run are unknown (-1 is no step), so none are counted.
        prev = self._start_step if self._start_step is not None else last
        try:
            advanced = operator.index(target) - prev if prev >= 0 else 0
        except TypeError:  # a bad step: the flush itself raises on it
            advanced = 0
        values: dict[str, float] = {}
        if advanced > 0:
            values["step_time_s"] = busy / advanced
            if self._timing_data:
                values["data_wait_s"] = self._wait / advanced
        values["rss_mib"] = _rss_bytes() / _MIB
        values["cpu_pct"] = 100.0 * (cpu - self._cpu_last) / wall
        rates: dict[str, float] = {}
        if self._counting_samples:
            rates["samples_per_s"] = self._samples / wall
        if self._counting_tokens:
            rates["tokens_per_s"] = self._tokens / wall
        values.update(self._cuda())
        forward = self.forward.take()
        if forward is not None:
            values["forward_s"] = forward
        if self._flops_per_step is not None and self._peak_flops is not None and advanced > 0:
            values["mfu"] = self._flops_per_step / (values["step_time_s"] * self._peak_flops)
        self._t_last, self._cpu_last = now, cpu
        self._samples = self._tokens = self._wait = 0.0
        self._start_step = None
        log = self._logger.log_scalar
        for key, value in values.items():
            log(PREFIX + key, value, spread=True)
        for key, value in rates.items():  # the job's throughput is the sum over the ranks
            log(PREFIX + key, value, "sum", spread=True)
        values.update(rates)
        self.last = values
        return values

    def flushed(self) -> None:
        """The flush that sampled has returned: the next step time starts now."""
        self._t_flushed = time.perf_counter()

    def _cuda(self) -> dict[str, float]:
        """The CUDA caching allocator's counters (host-side, no sync) and NVML utilisation."""
        dev = self._device
        if dev is None or dev.type != "cuda" or not torch.cuda.is_initialized():
            return {}
        out = {
            "cuda_allocated_mib": torch.cuda.memory_allocated(dev) / _MIB,
            "cuda_reserved_mib": torch.cuda.memory_reserved(dev) / _MIB,
            "cuda_max_allocated_mib": torch.cuda.max_memory_allocated(dev) / _MIB,
        }
        if self._nvml:
            try:  # torch maps the device through CUDA_VISIBLE_DEVICES for NVML
                out["gpu_util_pct"] = float(torch.cuda.utilization(dev))
            except Exception:
                self._nvml = False  # no driver access: stop asking
        return out
