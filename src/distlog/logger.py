"""The front door: [Logger][distlog.logger.Logger] buffers what every rank logs and writes it from rank 0.

The training thread only validates and buffers. At [Logger.flush][distlog.logger.Logger.flush] the buffers of all ranks
are reduced together (see `distlog.aggregation`); on global rank 0 the row, queued media and
config go to the sinks on a writer thread, so a slow backend never delays the collective that
the other ranks wait in.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from distlog import groups, lifecycle, runlog
from distlog.aggregation import Aggregator, ExchangeOptions
from distlog.config import to_config_dict
from distlog.errors import (
    FINISHED,
    DistlogError,
    KeyConflictError,
    LoggerClosedError,
    LogTypeError,
    LogUsageError,
    LogValueError,
    RankDivergenceError,
    RunDirError,
)
from distlog.exchange import PendingRow
from distlog.keys import check_key
from distlog.layout import Header
from distlog.lifecycle import exit_code_of as _exit_code_of
from distlog.sinks.base import Sink
from distlog.sinks.console import ConsoleSink
from distlog.sinks.jsonl import JsonlSink
from distlog.sinkset import SINK_TIMEOUT_S, SinkSet
from distlog.system import SystemMetrics
from distlog.values import as_float, plain_tensor
from distlog.world import World
from distlog.writer import NonFinitePolicy, WriteJob, WriterThread

__all__ = ["Logger"]


class Logger:
    """Buffer scalars on every rank, reduce them across ranks at each flush, write from rank 0.

    Args:
        run_dir: local run directory; the writer keeps ``metrics.jsonl`` there. Defaults to
            ``runs/<date-time>`` when no ``sinks`` are given.
        sinks: backends to write to (on global rank 0 only). A JSONL sink for ``run_dir`` is
            added unless one is already in the list or ``run_dir`` is None and sinks are given.
        group: process group to aggregate over (default: the whole world).
        mesh: aggregate over one dimension of this ``DeviceMesh`` instead of ``group``, e.g.
            the data-parallel one, so tensor-parallel replicas are not counted twice.
        mesh_dim: that dimension of ``mesh``, by name or index.
        console: also print a compact line per flush on rank 0.
        async_write: decode rows on a writer thread and run each sink's calls on a thread
            of its own (default), so a sink that hangs holds up neither training nor the
            other sinks (see `sink_timeout`). Off, they run inline.
        async_flush: [flush][distlog.logger.Logger.flush] swaps the buffer and returns at once on
            every rank; the exchange runs on a background thread (at most one in flight: the
            next flush waits for it). Its errors are raised at the next flush or at
            [finish][distlog.logger.Logger.finish], naming their log step. Off (the default), the
            exchange runs inside ``flush`` and errors are raised there.
        exchange: internal knobs of the exchange
            ([ExchangeOptions][distlog.exchange.ExchangeOptions]); the defaults are right for
            almost everyone.
        timeout: seconds a flush waits for the other ranks before raising
            [RankDivergenceError][distlog.errors.RankDivergenceError] instead of hanging.
        nonfinite: what the writer does with NaN and infinities: ``"warn"`` (write them, with
            one warning per key), ``"ignore"`` (write them silently) or ``"drop"``.
        queue_size: rows that may wait for the writer, and for each sink, before a flush
            waits for room (sinks slower than training hold training back, losing nothing).
        sink_timeout: seconds one sink call may run before that sink counts as hung: its
            later calls are skipped while it hangs (counted, and named in one warning) instead
            of holding training back, and finishing stops waiting for it. None waits for ever.
            The default, 300 s, leaves a tracker's ``finish`` time to upload.
        handle_signals: on the writer, finish the logger when SIGTERM or SIGINT arrives (exit
            code ``128 + signum``), then let the signal do what it did before (see
            `distlog.lifecycle`). True (the default), False, or the signals to handle,
            e.g. ``(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)``. Needs the main thread.
            In an interactive session (a REPL, Jupyter) True means SIGTERM only: interrupting a
            cell must not end the run.
        resume: continue a run directory that a previous start of the same job wrote to:
            rows at or below the last step in ``metrics.jsonl`` are not written again (with
            one warning), so a job restarted from an older checkpoint duplicates no step.
            ``"auto"`` (the default) resumes when the launcher says this is a restart
            (``TORCHELASTIC_RESTART_COUNT`` or ``SLURM_RESTART_COUNT`` > 0); True always;
            False never (rows are appended as they come).
        system_metrics: also log this rank's step time, memory, CPU and CUDA use under
            ``system/`` at each flush, with their cross-rank spread, in the same exchange
            (see [SystemMetrics][distlog.system.SystemMetrics], reached as ``logger.system``).

    Every rank of the group must construct the logger and call [flush][distlog.logger.Logger.flush] at the same steps.
    On the writer, ``<run_dir>/run.json`` keeps the run's id across restarts (``run_id``).
    """

    def __init__(
        self,
        run_dir: str | Path | None = None,
        sinks: Iterable[Sink] | None = None,
        group: Any = None,
        *,
        mesh: Any = None,
        mesh_dim: int | str | None = None,
        world: World | None = None,
        console: bool = False,
        async_write: bool = True,
        async_flush: bool = False,
        exchange: ExchangeOptions | None = None,
        timeout: float = 300.0,
        nonfinite: str = "warn",
        queue_size: int = 1024,
        sink_timeout: float | None = SINK_TIMEOUT_S,
        handle_signals: bool | Iterable[int] = True,
        resume: bool | str = "auto",
        system_metrics: bool = False,
    ) -> None:
        if resume not in (True, False, "auto"):
            raise LogValueError(f"resume={resume!r}; choose True, False or 'auto'")
        policy = NonFinitePolicy(nonfinite)  # validates
        if not isinstance(async_flush, bool):
            raise LogTypeError(f"async_flush must be a bool, got {async_flush!r}")
        if exchange is not None and not isinstance(exchange, ExchangeOptions):
            raise LogTypeError(
                f"exchange must be a distlog.ExchangeOptions, got {type(exchange).__name__}"
            )
        if not (timeout > 0):
            raise LogValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if sink_timeout is not None and (
            isinstance(sink_timeout, bool)
            or not isinstance(sink_timeout, int | float)
            or not sink_timeout > 0
        ):
            raise LogValueError(f"sink_timeout must be > 0 seconds or None, got {sink_timeout!r}")
        self.world = (
            world if world is not None else World.current(group, mesh=mesh, mesh_dim=mesh_dim)
        )
        self._world_was_read = world is None
        self.nonfinite = nonfinite
        self._policy = policy
        self.async_flush = async_flush
        self._agg = Aggregator(
            self.world, timeout=timeout, reserved=runlog.RESERVED_KEYS, options=exchange
        )
        self._buffer = self._agg.buffer
        # The hot path is one call: log_scalar goes straight to the buffer, which refuses
        # samples once the logger is finished (the method below documents it; same behaviour).
        self.log_scalar = self._buffer.add  # type: ignore[method-assign]
        self._media_group = groups.control_group(self.world, timeout)  # never pairs with a flush
        self._closed = False
        self._ended = False  # run.json records the end once
        self._closed_because = FINISHED
        self._owner_pid = os.getpid()
        self._finishing = False
        # Held by the thread inside flush(): a second thread's flush would pair its collective
        # with the other ranks' next flush (gloo aborted the job), so it is refused at once.
        self._flushing = threading.Lock()
        self._flushing_thread = ""
        self._gathering = threading.Lock()  # the same, for gathering media calls
        # Guards the media and precomputed values queued for the next row, which any thread may
        # add to. Reentrant: a signal handler on the main thread writes what is queued.
        self._queued = threading.RLock()
        self._step = -1
        self._step_before_exchange = -1  # the step before the asynchronous exchange in flight
        self._attempted_step = -1  # the last flush's step, even if its exchange failed
        self._inflight: WriteJob | None = None  # a blocking flush's job, while it exchanges
        self._resume_after = -1
        self._warned_resume_skip = False
        self.run_id: str | None = None
        self._precomputed: dict[str, float] = {}
        self._media: list[tuple[str, Any]] = []
        self.sinks: list[Sink] = []
        self._sinks = SinkSet(self.sinks)
        self.run_dir: Path | None = None
        given = list(sinks) if sinks is not None else []
        self.run_dir, resume = self._claim_run_dir(run_dir, resume, default=sinks is None)
        self._writer: WriterThread | None = None
        opened = self._open_run_dir(given, resume) if self.world.is_global_zero else None
        self._agree_run_dir_opened(opened)
        if self.world.is_global_zero:
            if console:
                given.append(ConsoleSink())
            self.sinks[:] = given
            if async_write:
                self._writer = WriterThread(queue_size, after_batch=self._sinks.wake)
                self._sinks.use_lanes(queue_size, sink_timeout)
        # How long rank 0 waits for room behind a sink whose call does not return: never as
        # long as the others wait for it in the next collective (they would time out).
        self._room_limit = min(sink_timeout if sink_timeout is not None else timeout, timeout / 2)
        signals: Iterable[int] = ()
        if self.world.is_global_zero and handle_signals is not False:
            signals = lifecycle.default_signals() if handle_signals is True else handle_signals
        lifecycle.register(self, signals)
        self._system: SystemMetrics | None = (
            SystemMetrics(self, self.world.device) if system_metrics else None
        )

    @property
    def system(self) -> SystemMetrics | None:
        """The system-metrics sampler (``Logger(system_metrics=True)``), else None."""
        return self._system

    def _claim_run_dir(
        self, run_dir: str | Path | None, resume: bool | str, *, default: bool
    ) -> tuple[Path | None, bool]:
        """The run directory of this launch, the same on every rank, and whether it resumes.

        The writer applies [claim_run_dir][distlog.runlog.claim_run_dir] (a new run never lands
        in a directory holding another: it gets the next version) and sends its choice, or its
        error, to the group's other ranks, so all of them agree or all of them raise. It does
        so whatever the arguments of the other ranks, so they can never pair this exchange
        with another. ``default``: no ``run_dir`` means ``runs/<date-time>`` (else none).
        """
        # [path, resuming, error, the last step written when resuming]
        choice: list[Any] = [None, False, None, None]
        if self.world.is_global_zero:
            try:
                if run_dir is None:
                    path: Path | None = runlog.new_version_dir("runs") if default else None
                    resuming = False
                else:
                    path, resuming = runlog.claim_run_dir(
                        run_dir, resume=resume, restart=runlog.restart_count()
                    )
                written = runlog.last_step(path) if resuming and path is not None else None
                choice = [None if path is None else str(path), resuming, None, written]
            except DistlogError as exc:
                choice = [None, False, str(exc), None]
            except OSError as exc:  # unreadable, not creatable: every rank must hear of it
                choice = [None, False, f"run_dir {run_dir}: {exc}", None]
        group = self._agg.control_group
        if group is not None:
            # One collective: the writer's choice, and every rank's exchange options, which
            # must agree (ranks that chose different protocols would pair an all_gather with
            # an all_reduce, and only the timeout would end it, misnamed as a missing rank).
            options = dataclasses.asdict(self._agg.options)
            try:
                sent = groups.all_gather_json([choice, options], group)
            except RuntimeError as exc:  # a rank never got this far: gloo's timeout
                raise groups.not_all_constructed(
                    "exchanging the run directory and exchange options",
                    self.world.group_ranks, self.world.rank, self._agg.timeout, exc,
                ) from exc  # fmt: skip
            choice = sent[self.world.group_ranks.index(0)][0]
            if any(theirs != options for _, theirs in sent):
                raise LogValueError(
                    "every rank must create its Logger with the same exchange options; they "
                    "differ: "
                    + "; ".join(
                        f"rank {r}: ExchangeOptions({', '.join(f'{k}={v!r}' for k, v in o.items())})"
                        for r, (_, o) in zip(self.world.group_ranks, sent, strict=True)
                    )
                )
        elif not self.world.is_global_zero:  # no exchange with the writer: our own view
            choice = [None if run_dir is None else str(run_dir), False, None, None]
        if choice[2] is not None:
            raise RunDirError(choice[2])
        if choice[1] and choice[3] is not None:  # every rank knows where a resumed run was
            self._resume_after = int(choice[3])
        if choice[0] is None:
            return None, False
        path = Path(choice[0])
        if (
            self.world.is_global_zero
            and run_dir is not None
            and path != runlog.run_dir_path(run_dir)
        ):
            warnings.warn(
                f"distlog: {run_dir} holds a run from an earlier launch; this launch is a new "
                f"run in {path} (resume=True continues the old one)",
                stacklevel=3,
            )
        return path, bool(choice[1])

    def _open_run_dir(self, given: list[Sink], resume: bool) -> str | None:
        """On the writer: open ``metrics.jsonl`` (unless a JsonlSink was given) and record
        this start in ``run.json``. Returns what failed, for every rank to raise (see
        [_agree_run_dir_opened][distlog.logger.Logger._agree_run_dir_opened]), else None."""
        if self.run_dir is None:
            return None
        opened: list[Sink] = []
        try:
            if not any(isinstance(s, JsonlSink) for s in given):
                opened.append(JsonlSink(self.run_dir))
            # run.json's last_step is what the run log wrote (a resume skips up to it)
            self._sinks.run_log = next(
                (s for s in [*opened, *given] if isinstance(s, JsonlSink)), None
            )
            self._start_run(resume)
        except DistlogError as exc:
            error = str(exc)
        except OSError as exc:  # metrics.jsonl or run.json not writable, disk full, ...
            error = f"run_dir {self.run_dir}: {exc}"
        else:
            given[:0] = opened
            return None
        for sink in opened:
            sink.close()
        return error

    def _agree_run_dir_opened(self, error: str | None) -> None:
        """Every rank raises [RunDirError][distlog.RunDirError] if the writer could not open
        the run directory it claimed (its lock held elsewhere, ``metrics.jsonl`` not
        writable): the other ranks would otherwise train on and wait for it at their first
        flush until the timeout. One small collective, only where there is a run directory."""
        group = self._agg.control_group
        if self.run_dir is not None and group is not None:
            try:
                sent = groups.all_gather_json(error, group)
            except RuntimeError as exc:  # the writer died opening it: gloo's timeout
                raise groups.not_all_constructed(
                    "opening the run directory",
                    self.world.group_ranks, self.world.rank, self._agg.timeout, exc,
                ) from exc  # fmt: skip
            error = sent[self.world.group_ranks.index(0)]
        if error is not None:
            raise RunDirError(error)

    def _start_run(self, resume: bool | str) -> None:
        """Record this start in ``run.json``; on a resume, find the last step already written."""
        assert self.run_dir is not None
        restart = runlog.restart_count()
        if resume is True and self._resume_after >= 0:
            written: int | None = self._resume_after  # read when the run dir was claimed
        else:
            written = runlog.last_step(self.run_dir)  # reads the file's tail only
        self._sinks.last_written_step = written
        after = written if resume is True else None
        info = runlog.start_run(
            self.run_dir, world_size=self.world.world_size, restart=restart, resumed_after=after
        )
        self.run_id = info["id"]
        if after is not None:
            self._resume_after = after
            warnings.warn(
                f"distlog: resuming run {self.run_id} in {self.run_dir}: steps up to {after} "
                "are already written and will not be written again",
                stacklevel=4,
            )

    # ------------------------------------------------------------------------ properties
    @property
    def step(self) -> int:
        """The step of the last flush (-1 before the first)."""
        return self._step

    @property
    def resumed_after(self) -> int | None:
        """The last step the run had written when this logger resumed it (None: not resumed),
        on every rank."""
        return self._resume_after if self._resume_after >= 0 else None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def aggregator(self) -> Aggregator:
        """The heart this logger drives (buffer and exchange), for diagnostics and tests."""
        return self._agg

    @property
    def collectives_last_flush(self) -> int:
        """How many collectives the last flush issued on this rank (for tests and benchmarks)."""
        return self._agg.collectives_last_flush

    # ------------------------------------------------------------------------ logging
    def log_scalar(
        self,
        key: str,
        value: Any,
        reduce: str = "mean",
        *,
        weight: Any = None,
        spread: bool = False,
    ) -> None:
        """Buffer one value of ``key``. Cheap, and never waits for a device.

        Args:
            key: metric name, e.g. ``"train/loss"``.
            value: a Python number, numpy scalar, or one-element tensor of any dtype and device.
            reduce: how samples are combined over the steps since the last flush and over the
                ranks: ``mean`` (of all samples of all ranks), ``sum``, ``min``, ``max``, or
                ``last`` (each rank's latest value, averaged over the ranks that logged it).
            weight: sample weight for ``mean`` (e.g. the batch size): a weighted mean.
            spread: also write the spread of the per-rank values: ``key/rank_min``,
                ``key/rank_max``, ``key/rank_std`` and ``key/rank_argmax`` (the straggler).
        """
        self._buffer.add(key, value, reduce, weight, spread)

    def log_dict(
        self,
        values: Mapping[str, Any],
        reduce: str = "mean",
        *,
        weight: Any = None,
        spread: bool = False,
    ) -> None:
        """Buffer several values with one reduction. All or nothing: a bad entry logs none.

        torchmetrics ``Metric``/``MetricCollection`` values are computed instead (see
        [log_metrics][distlog.logger.Logger.log_metrics]; this makes the call collective) and written as they are under
        ``key`` (a collection's results under ``key/<name>``); ``reduce`` does not apply to them.
        """
        if type(values) is dict and weight is None and spread is False:
            if self._buffer.add_floats(values, reduce):  # the common case: known keys, floats
                return
        if self._closed:
            self._raise_closed()
        if not isinstance(values, Mapping):
            raise LogTypeError(
                f"log_dict expects a mapping of key -> value, got {type(values).__name__}"
            )
        from distlog.metrics import is_metric, log_computed, metric_values_under

        metrics = [k for k, v in values.items() if is_metric(v)]
        if not metrics:
            self._buffer.add_many(values, reduce, weight, spread)
            return
        plain = {k: v for k, v in values.items() if k not in metrics}
        for key in plain:  # validate before computing: all or nothing
            self._buffer.prepare(key, plain[key], reduce, weight, spread)
        computed = [(values[key], metric_values_under(key, values[key])) for key in metrics]
        self._buffer.add_many(plain, reduce, weight, spread)
        for metric, numbers in computed:
            log_computed(self, metric, numbers)

    def log_metrics(
        self, metric: Any, prefix: str = "", *, name: str | None = None
    ) -> dict[str, float]:
        """Compute a torchmetrics ``Metric`` or ``MetricCollection`` and log the result as is.

        Collective, like ``compute()``: every rank of the metric's process group calls it.
        ``compute()`` already gathers the states across ranks, so the values are global and are
        never reduced again. Keys are ``prefix + name`` (default: the class name) for a metric
        and ``prefix`` + torchmetrics' names for a collection. A metric no rank updated is
        skipped with a warning; see `distlog.metrics.metric_values`. Returns the values.
        A metric whose group lacks global rank 0 (a pipeline's last stage) reaches the writer
        as a scalar of the group's lowest rank, in the next flush's exchange.
        """
        if self._closed:
            self._raise_closed()
        from distlog.metrics import log_computed, metric_values

        values = metric_values(metric, prefix, name=name)
        log_computed(self, metric, values)
        return values

    def log_precomputed(self, values: Mapping[str, Any]) -> None:
        """Values that are already global (e.g. a torchmetrics ``compute()``).

        The writer adds them to the next row as they are; nothing is communicated. Every rank
        may call it; only rank 0's values are written.
        """
        if self._closed:
            self._raise_closed()
        if not isinstance(values, Mapping):
            raise LogTypeError(
                f"log_precomputed expects a mapping of key -> value, got {type(values).__name__}"
            )
        clean = {}
        for key, value in values.items():
            check_key(key)
            if isinstance(value, torch.Tensor):
                value = plain_tensor(key, value).item()  # compute() already synchronised it
            clean[key] = as_float(key, value)
        if self.world.is_global_zero:
            with self._queued:
                self._precomputed.update(clean)

    def log_media(self, key: str, item: Any) -> None:
        """Queue a converted media item (see `distlog.media`) for the next flush's step.

        The item is checked here (its type, uint8 HWC pixels, histogram shape, table cells): a
        LogTypeError / LogValueError naming ``key``, not an item lost on the writer thread.
        """
        from distlog.media.convert import check_item

        if self._closed:
            self._raise_closed()
        check_key(key, "media")
        check_item(item, key)
        if self.world.is_global_zero:
            with self._queued:
                self._media.append((key, item))

    # ------------------------------------------------------------------------ media (distlog.media)
    # ranks=0 (default): rank 0's media, no communication. Any other ranks= is a gathering call
    # that every rank of the group must make; it runs over the logger's own gloo media group (so
    # pixels stay on the host, and a media call never pairs with a flush's collectives) with the
    # logger's timeout. Encoding happens in the sinks.
    def _collect_media(
        self, collect: str, default_key: str, desc: str | None, *args: Any, **kwargs: Any
    ) -> None:
        """Run ``distlog.media.<collect>`` on this rank and queue the item it returns (rank 0).

        Caps passed as None (``max_bytes``, ``max_rows``) take the media module's defaults.
        """
        from distlog import media

        if self._closed:
            self._raise_closed()
        if kwargs.get("max_bytes", 0) is None:
            kwargs["max_bytes"] = media.DEFAULT_MAX_BYTES
        if kwargs.get("max_rows", 0) is None:
            kwargs["max_rows"] = media.DEFAULT_MAX_ROWS
        if desc is not None and not isinstance(desc, str):  # `desc or ...` raised numpy's error
            raise LogTypeError(
                f"media keys must be strings, got {type(desc).__name__} as the key (desc) of a "
                f"{default_key}: the values come first, then the key"
            )
        key = desc or default_key
        from distlog.media.gather import is_gathering
        from distlog.media.histograms import is_dtensor

        # any ranks= but 0, a wrong one included, is a gathering call: a bad ranks= is raised
        # after the header exchange, so the other ranks are not left waiting
        gathering = (args and is_dtensor(args[0])) or is_gathering(kwargs.get("ranks", 0))
        if gathering and not self._gathering.acquire(blocking=False):
            raise LogUsageError(
                f"media key {key!r}: a gathering media call (ranks other than 0, or a DTensor) "
                f"on thread {threading.current_thread().name!r} while another thread's runs: "
                "every rank makes gathering calls in the same order, so make them from one "
                "thread at a time"
            )
        try:
            item = getattr(media, collect)(
                self.world,
                *args,
                desc=key,
                group=self._media_group,
                timeout=self._agg.timeout,
                **kwargs,
            )
        finally:
            if gathering:
                self._gathering.release()
        if item is not None:
            self.log_media(key, item)

    def log_images(
        self,
        images: Any,
        caption: Any = None,
        desc: str | None = None,
        *,
        ranks: Any = 0,
        value_range: tuple[float, float] | None = None,
        captions: Any = None,
        max_bytes: int | None = None,
    ) -> None:
        """Log a (B, C, H, W) / (C, H, W) tensor, HWC arrays, or a list of images under ``desc``.

        Floats in [0, 1] or [-1, 1] are scaled to uint8 (or pass ``value_range=(lo, hi)``);
        see `distlog.media` for the rule and for ``ranks=``.
        """
        self._collect_media(
            "collect_images",
            "images",
            desc,
            images,
            caption,
            ranks=ranks,
            value_range=value_range,
            captions=captions,
            max_bytes=max_bytes,
        )

    def log_videos(
        self,
        videos: Any,
        caption: Any = None,
        desc: str | None = None,
        *,
        fps: float = 4,
        format: str = "gif",
        ranks: Any = 0,
        value_range: tuple[float, float] | None = None,
        captions: Any = None,
        max_bytes: int | None = None,
    ) -> None:
        """Log a (B, C, T, H, W) / (C, T, H, W) tensor of videos as GIF or MP4."""
        self._collect_media(
            "collect_videos",
            "videos",
            desc,
            videos,
            caption,
            fps=fps,
            format=format,
            ranks=ranks,
            value_range=value_range,
            captions=captions,
            max_bytes=max_bytes,
        )

    def log_plot(
        self,
        figure: Any,
        desc: str | None = None,
        *,
        ranks: Any = 0,
        caption: str | None = None,
        max_bytes: int | None = None,
    ) -> None:
        """Log a matplotlib figure as an image (rendered with Agg); the figure is closed."""
        self._collect_media(
            "collect_plot",
            "plot",
            desc,
            figure,
            caption=caption,
            ranks=ranks,
            max_bytes=max_bytes,
        )

    def log_histogram(
        self, values: Any, desc: str | None = None, *, bins: int = 64, ranks: Any = 0
    ) -> None:
        """Log the histogram of ``values``: rank 0's (default), the chosen ranks' together, or a
        sharded DTensor's (each element once). Communication grows with ``bins`` only."""
        self._collect_media("collect_histogram", "histogram", desc, values, bins=bins, ranks=ranks)

    def log_table(
        self,
        columns: Any,
        data: Any,
        desc: str | None = None,
        *,
        ranks: Any = 0,
        max_rows: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        """Log a table; cells are numbers, strings, None or images. Gathered rows come in rank
        order with a leading ``rank`` column."""
        self._collect_media(
            "collect_table",
            "table",
            desc,
            columns,
            data,
            ranks=ranks,
            max_rows=max_rows,
            max_bytes=max_bytes,
        )

    # ------------------------------------------------------------------------ end of media

    def log_config(self, config: Any, *, redact: bool = True) -> dict[str, Any]:
        """Record the run's configuration (a dataclass or nested mapping) in every sink.

        Values whose keys look like secrets are redacted unless ``redact=False``. Returns the
        plain dict that was written.
        """
        if self._closed:
            self._raise_closed()
        plain = to_config_dict(config, redact=redact)
        if self.world.is_global_zero:
            self._submit(lambda: self._sinks.each("log_config", lambda s: s.log_config(plain)))
        return plain

    def log_artifact(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        type: str = "artifact",  # noqa: A002 - the trackers' name for it
    ) -> None:
        """Keep a file or directory (a checkpoint, a sample of the data) with the run.

        On global rank 0: copied into ``<run_dir>/artifacts/<name>/``, uploaded as a wandb
        Artifact (offline too) and as MLflow artifacts under ``name`` (default: the file's
        name), by the writer thread in order with the rows. A no-op on every other rank, so all
        ranks may call it. A path that does not exist raises
        [LogValueError][distlog.errors.LogValueError] naming it, at the call. The file is read
        on the writer thread: call [wait][distlog.logger.Logger.wait] before changing or deleting it.
        """
        if self._closed:
            self._raise_closed()
        if not self.world.is_global_zero:
            return
        src = Path(path)
        if not src.exists():
            raise LogValueError(f"log_artifact: {src} does not exist (no such file or directory)")
        if self.run_dir is not None and src.is_dir():
            root, run = src.resolve(), self.run_dir.resolve()
            if run == root or root in run.parents:  # it would copy itself into itself
                raise LogValueError(
                    f"log_artifact: {src} holds this run's directory {self.run_dir}, so copying "
                    "it into the run would copy the copy again, without end; log the files or "
                    "subfolders you want kept, or put run_dir outside it"
                )
        label = src.name if name is None else name
        if not isinstance(label, str) or not label.strip():
            raise LogValueError(f"log_artifact(name={name!r}): give a non-empty string")
        if not isinstance(type, str) or not type.strip():
            raise LogValueError(f"log_artifact(type={type!r}): give a non-empty string")

        def write(sink: Sink) -> None:
            method = getattr(sink, "log_artifact", None)
            if callable(method):
                method(src, label, type)

        self._submit(lambda: self._sinks.each("log_artifact", write))

    def add_sink(self, sink: Sink) -> None:
        """Attach another sink (on the writer; elsewhere a no-op)."""
        if self.world.is_global_zero:
            self.sinks.append(sink)

    # ------------------------------------------------------------------------ flush
    def flush(self, step: int | None = None, *, block: bool = False) -> dict[str, float] | None:
        """Reduce everything logged since the last flush over all ranks and write it on rank 0.

        Collective: every rank of the group calls it, with the same ``step`` (default: the
        previous step + 1). What other threads log while the exchange runs goes to the next
        row. The row is decoded and written on rank 0's writer thread; ``block=True`` waits
        for it and returns it on rank 0 (None elsewhere). With ``async_flush=True`` the
        exchange itself runs in the background and this call returns at once.

        Call it (and ``finish``) from one thread at a time: a second thread's call while one
        runs raises [LogUsageError][distlog.errors.LogUsageError] at once, before any collective.
        """
        self._take_flushing("flush()")
        try:
            return self._flush(step, block)
        finally:
            self._flushing.release()

    def _take_flushing(self, call: str) -> None:
        """Take the lock held by the one thread inside flush() or finish(); if another thread
        holds it, raise at once, before any collective and changing nothing."""
        if not self._flushing.acquire(blocking=False):
            raise LogUsageError(
                f"{call} on thread {threading.current_thread().name!r} while thread "
                f"{self._flushing_thread!r} is inside flush() or finish() of the same logger: "
                "call flush and finish from one thread at a time (log_* may be called from "
                "any thread)"
            )
        self._flushing_thread = threading.current_thread().name

    def _flush(
        self, step: int | None, block: bool, *, tail: bool = False
    ) -> dict[str, float] | None:
        if self._world_was_read:  # an explicit world (a writer-only one) is the caller's
            self.world.check_still_current()
        if self._closed:
            self._raise_closed()
        given = step
        step = self._next_step(step)  # a bad step raises before anything is sampled or taken
        self._attempted_step = step  # media left queued by a failed flush belong to it
        system = self._system
        # finish()'s flush samples only when something else is left to write: a row of system
        # metrics alone would take a step that a resumed run then skips as written.
        if system is not None and not (tail and not self._agg.pending_keys):
            system.sample(given)  # buffered like any key: rides this flush's exchange
        try:
            return self._flush_steps(step, block, final=tail)
        finally:
            if system is not None:
                system.flushed()

    def _flush_steps(
        self, step: int, block: bool, *, final: bool = False
    ) -> dict[str, float] | None:
        if self.async_flush:
            return self._flush_async(step, block, final)
        pending = self._agg.flush(step, final=final)
        self._step = step
        row: dict[str, float] | None = None
        if pending is not None:
            job = self._write_job(step, pending)
            self._inflight = job  # from here on, a signal handler writes this row too
            self._agg.settle()
            if block:
                row = job.row()
            # A signal handler that ran during this flush and returned (the script's own
            # handler sets a flag) closed the logger and wrote this row already.
            if not self._closed:
                self._queue_row(job)
            self._inflight = None
        self._agg.raise_conflict()
        return row

    def _flush_async(self, step: int, block: bool, final: bool) -> dict[str, float] | None:
        # The previous exchange's divergence error, if any, is raised here; its key conflict
        # once this flush is on its way.
        self._wait_exchange(conflicts=False)
        job = self._write_job(step, None) if self.world.is_global_zero else None

        def deliver(pending: PendingRow | None) -> None:  # on the exchange thread
            if job is not None:
                job.pending = pending
                self._queue_row(job)

        def undeliverable() -> None:  # on the exchange thread: the exchange failed
            if job is not None:
                self._requeue(job)

        conflict = self._agg.flush_async(step, deliver, undeliverable, final=final)
        self._step_before_exchange, self._step = self._step, step
        if conflict is not None:  # the previous exchange's, raised once this flush is on its way
            raise conflict
        if not block:
            return None
        self._wait_exchange()
        return job.row() if job is not None else None

    def _wait_exchange(self, *, conflicts: bool = True) -> None:
        """Wait for the asynchronous exchange in flight and raise its error. One that diverged
        was never made (its samples are back in the buffer): the step goes back to the one
        before it, as after a blocking flush that raised, so the ranks' default steps
        (``flush()`` with no step) meet again instead of staying apart for the rest of the run."""
        try:
            self._agg.wait_async(conflicts=conflicts)
        except RankDivergenceError:
            self._step = self._step_before_exchange
            raise

    def _queue_row(self, job: WriteJob) -> None:
        if job.step > self._resume_after:
            self._submit(job)
        else:
            self._skip_resumed(job.step)

    def _skip_resumed(self, step: int) -> None:
        if not self._warned_resume_skip:
            self._warned_resume_skip = True
            warnings.warn(
                f"distlog: step {step} is at or below step {self._resume_after}, the last step "
                f"this resumed run had written to {self.run_dir}; such rows are not written "
                "again (further warnings suppressed)",
                stacklevel=3,
            )

    def _next_step(self, step: Any) -> int:
        """The flush's step (``None``: the previous one + 1), checked; warns if it went back."""
        if step is None:
            return self._step + 1
        step = self._valid_step(step)
        if step < self._step and self.world.is_global_zero:
            warnings.warn(
                f"distlog: step went backwards ({self._step} -> {step}); the row is written, "
                "but its step now repeats earlier ones (a tracker keyed on its own step, such "
                "as plain wandb.log(step=...), would drop it). Pass the restored global step "
                "when resuming.",
                stacklevel=4,
            )
        return step

    @staticmethod
    def _valid_step(step: Any) -> int:
        """``step`` as an int, or a clear error (the one rule for a step's type and range)."""
        if isinstance(step, bool) or not isinstance(step, int):
            try:
                import numpy as np

                if isinstance(step, np.integer):
                    step = int(step)
                else:
                    raise TypeError
            except TypeError:
                raise LogTypeError(
                    f"step must be an int, got {type(step).__name__} {step!r}"
                ) from None
        if step < 0:
            raise LogValueError(f"step must be >= 0, got {step}")
        if step >= Header.MAX_STEP:
            raise LogValueError(
                f"step must be below 2**48, got {step}: the flush header, which checks that "
                "every rank flushes the same step, carries it exactly only below that"
            )
        return int(step)

    def _requeue(self, job: WriteJob) -> None:
        """Put back the media and global values of a job whose exchange failed, ahead of
        anything queued since (a later call of the same key still wins), for the next flush
        or for finish() to write: as a failed blocking flush leaves them queued."""
        with self._queued:
            self._media = job.media + self._media
            self._precomputed = {**job.extra, **self._precomputed}

    def _write_job(self, step: int, pending: PendingRow | None) -> WriteJob:
        """A writer-thread job for one flush; media queued so far go with it, at its step."""
        with self._queued:  # a thread's call lands in this job or the next, never in neither
            media, self._media = self._media, []
            extra, self._precomputed = self._precomputed, {}
        return WriteJob(step, self._sinks, self._policy, extra, media, pending)

    def _submit(self, job: Callable[[], None], *, wait_for_room: bool = True) -> None:
        if self._writer is not None:
            if self._writer.alive:
                if wait_for_room:  # a slow sink holds training back; a hung one, not for long
                    self._sinks.wait_for_room(self._room_limit)
                self._writer.submit(job, wait_for_room=wait_for_room)
        else:
            job()

    def wait(self) -> None:
        """Block until the writer thread has written everything flushed so far (an
        asynchronous exchange in flight included; its error, if any, is raised here)."""
        if self._closed:
            return  # finish() wrote everything it could; the threads are gone
        self._wait_exchange()
        if self._writer is not None:
            self._writer.drain()
            self._sinks.drain()

    # ------------------------------------------------------------------------ finish
    def finish(self, exit_code: int = 0, *, step: int | None = None) -> None:
        """Flush what is buffered, write everything queued and close every sink. Idempotent.

        With ``exit_code == 0`` this is a collective (a last flush). With a non-zero exit code
        (a crash) no collective is attempted: rank 0 writes what already reached it and closes
        the sinks, so a failed job still leaves complete files.

        Like ``flush``, from one thread at a time: called while another thread is inside
        ``flush()`` it raises [LogUsageError][distlog.errors.LogUsageError] and changes nothing.
        """
        if self._closed or self._finishing:
            return
        if step is not None:
            self._valid_step(step)  # a bad step is an error at the call, not a crashed run
        self._take_flushing("finish()")
        try:
            if self._closed or self._finishing:  # another thread finished meanwhile
                return
            self._finishing = True
            flushed = self._finish_holding_lock(exit_code, step)
        finally:
            self._flushing.release()
        if flushed and self._agg.pending_keys:  # logged by another thread after the last swap
            self._warn_dropped_tail(
                "another thread logged while finish() ran, after its last flush had taken the "
                "buffer (stop logging threads before finish())"
            )

    def _finish_holding_lock(self, exit_code: int, step: int | None) -> bool:
        """finish()'s work, with the flushing lock held; True if the tail's flush ran."""
        code = exit_code
        flushed = False
        try:
            if exit_code == 0:
                flushed = self._last_flush(step)
                self._agg.wait_async()  # the last exchange, and its error if it had one
        except KeyConflictError:
            raise  # raised once the rows were written: the run itself ended well
        except BaseException as exc:
            code = code or _exit_code_of(exc)
            raise
        finally:
            self._finish_local(code)
        return flushed

    def _last_flush(self, step: int | None) -> bool:
        """The tail's flush, where one is possible; True if it ran."""
        agg = self._agg
        if not agg.communicates:
            if self.world.is_global_zero:
                self._flush(step, False, tail=True)  # nothing to wait for: write the tail
                return True
            return False
        if not (dist.is_available() and dist.is_initialized()) or agg.failure is not None:
            self._warn_dropped_tail(
                "the process group was destroyed before finish()"
                if agg.failure is None
                else f"an earlier flush failed ({agg.failure})"
            )
            return False
        self._flush(step, False, tail=True)  # finish() holds the flushing lock
        return True

    def _warn_dropped_tail(self, why: str) -> None:
        keys = sorted(self._agg.pending_keys)
        if keys:
            warnings.warn(
                f"distlog: {why}; values logged since the last flush on rank "
                f"{self.world.rank} were not written: {len(keys)} key"
                f"{'s' if len(keys) > 1 else ''} ({', '.join(keys[:20])}"
                f"{f', and {len(keys) - 20} more' if len(keys) > 20 else ''})",
                stacklevel=3,
            )

    def _finish_local(self, exit_code: int, *, timeout: float | None = None) -> None:
        """Write what reached this rank and close the sinks, without any collective.

        The path for crashes, signals and interpreter exit, when other ranks may be gone. On
        the writer: the row of a flush that was interrupted after its exchange, precomputed
        values and media still queued go to the sinks, then every sink is closed with
        ``exit_code`` and ``run.json`` records it, whatever happens on the way (a warning
        turned into an error, a second signal: see [close_locally][distlog.logger.Logger.close_locally]).
        Waits at most ``timeout`` in all.
        """
        if self._closed:
            return
        self._closed = True
        self._buffer.close()
        self._sinks.hurry()  # no thread waits for room in a slow sink's queue any more
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._write_what_is_left(exit_code, deadline)
        finally:
            if self.world.is_global_zero:
                self._end_run(exit_code)
            lifecycle.unregister(self)  # only now: a signal meanwhile still records its end

    def _write_what_is_left(self, exit_code: int, deadline: float | None) -> None:
        """[_finish_local][distlog.logger.Logger._finish_local]'s writes, within ``deadline``."""

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        self._wait_for_exchange(left())
        self._agg.close()
        if not self.world.is_global_zero:
            return
        inflight = self._inflight
        if inflight is None:
            salvaged = self._agg.salvage(left())  # a signal during or right after a gather
            if salvaged is not None:
                inflight = self._write_job(salvaged.step, salvaged)
        if inflight is not None and inflight.step > self._resume_after:
            self._submit(inflight, wait_for_room=False)
        if self._precomputed or self._media:
            # At the last flush's step (the media of a flush that failed were logged for it);
            # in a resumed run that has not flushed yet, the step after those already written
            # (an older one would be skipped, or, as the file's last row, make the next resume
            # repeat steps).
            step = max(self._attempted_step, self._resume_after + 1, 0)
            self._submit(self._write_job(step, None), wait_for_room=False)
        self._submit(
            lambda: self._sinks.each("close", lambda s: s.close(exit_code)), wait_for_room=False
        )
        if self._writer is not None:
            if not self._writer.drain(left()):
                why = "the writer thread stopped" if deadline is None else "not in time"
                _warn_safely(
                    f"distlog: the sinks did not finish writing ({why}); giving up on them"
                )
            else:  # each sink on its lane: one that hangs is named and left behind
                self._sinks.drain(left())
            self._sinks.stop()
            self._writer.stop(timeout=0.1 if deadline is not None else 60.0)

    def _wait_for_exchange(self, timeout: float | None) -> None:
        """Let an asynchronous exchange in flight finish, so a row whose flush returned is
        written. Polls (no lock a signal handler could find held); errors become warnings."""
        try:
            done = self._agg.wait_async(timeout if timeout is not None else self._agg.timeout,
                                        polling=True)  # fmt: skip
        except Exception as exc:
            _warn_safely(f"distlog: the last flush failed: {exc}")
            return
        if not done:
            _warn_safely(
                "distlog: the exchange in flight did not finish in time; its row is not written"
            )

    def _end_run(self, exit_code: int) -> None:
        """Record the run's end in ``run.json`` (once), when the sinks are closed or given up
        on, or when a signal cuts that wait short."""
        if self._ended or self.run_dir is None or self.run_id is None:
            return
        self._ended = True  # before writing: a signal now must not take the file's lock again
        last = self._sinks.last_written_step
        try:
            runlog.end_run(self.run_dir, exit_code=exit_code, last_step=last)
        except (OSError, RunDirError) as exc:  # RunDirError: its lock stayed held
            _warn_safely(f"distlog: could not update {runlog.RUN_FILE}: {exc}")

    def _raise_closed(self) -> None:
        raise LoggerClosedError(self._closed_because)

    def __reduce__(self) -> Any:
        """A logger cannot travel to another process: pickling it (a spawned ``DataLoader``
        worker receiving a dataset that holds it) raises a
        [LogTypeError][distlog.errors.LogTypeError] saying so, not a bare lock error."""
        raise LogTypeError(
            "a distlog.Logger cannot be pickled: it belongs to the process that created it "
            "(its buffer, threads and process group). Log in that process (return the value "
            "with the batch), or create a Logger in the other process"
        )

    def __copy__(self) -> Logger:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Logger:
        """A copy of a model that holds the logger (``AveragedModel``, an EMA or SWA callback,
        Lightning's ``self.distlog``) shares it: one logger per process, as for a file handle."""
        return self

    def disown(self) -> None:
        """This process is a fork of the one that created the logger (a ``DataLoader`` worker,
        a ``multiprocessing`` helper): the run is the parent's. Called by
        `distlog.lifecycle` in the child, on its copy of every open logger: every later call
        here raises [LoggerClosedError][distlog.errors.LoggerClosedError] saying so, and the
        child flushes, writes and closes nothing (no duplicated row, no run marked ended)."""
        self._closed_because = (
            f"this process (pid {os.getpid()}) is a fork of the process that created the "
            f"distlog.Logger (pid {self._owner_pid}), e.g. a DataLoader worker: what it logs "
            "would never reach the run. Log in the parent (return the value with the batch), "
            "or create a Logger in this process"
        )
        self._closed = True
        self._buffer.disown(self._closed_because)
        self._agg.forget_threads()  # the exchange and writer threads stayed in the parent
        self._writer = None
        self._inflight = None
        self._flushing = threading.Lock()  # a parent thread may have held it at the fork
        self._gathering = threading.Lock()
        self._queued = threading.RLock()

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finish(exit_code=0)
            return
        # Unwinding from an exception is no time for a collective: the other ranks may not be
        # unwinding with us. Close locally with the exit code the exception stands for.
        self._warn_dropped_tail(f"leaving the logger's block on {exc_type.__name__}")
        self._finish_local(_exit_code_of(exc))

    # ------------------------------------------------------------------------ lifecycle.Closable
    def close_locally(self, exit_code: int, *, timeout: float | None = None) -> None:
        """Write what reached this rank and close the sinks with ``exit_code``; no collective.

        What signal handlers, uncaught exceptions and ``with`` blocks left on an exception do
        (see `distlog.lifecycle`); waits at most ``timeout`` seconds for the sinks. Called
        while the logger is already finishing (a SIGTERM while ``finish()`` waits for a slow
        tracker), it records the end in ``run.json`` at once, with this exit code: the process
        is about to die.
        """
        if self._closed:
            if self.world.is_global_zero:
                self._end_run(exit_code)
            return
        self._finish_local(exit_code, timeout=timeout)

    def finish_at_exit(self, exit_code: int) -> None:
        """Interpreter exit with the logger still open: no collective, the other ranks may be
        anywhere. A world of one still writes what was logged since the last flush."""
        if self._closed:
            return
        if exit_code == 0 and not self._agg.communicates and self.world.is_global_zero:
            try:
                self.finish(0)
                return
            except LogUsageError:  # a daemon thread is inside flush(): close without it
                pass
        self._warn_dropped_tail("the logger was not finished before the interpreter exited")
        self._finish_local(exit_code)


def _warn_safely(message: str) -> None:
    """A warning that cannot stop a finish half way (``-W error`` turns it into an exception,
    and ``run.json`` would never record the end): printed instead, then."""
    try:
        warnings.warn(message, stacklevel=3)
    except Exception:
        print(message, file=sys.stderr)
