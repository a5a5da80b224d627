"""Hugging Face ``Trainer``: its logs through distlog's sinks, and cross-rank values of your own.

``Trainer(..., callbacks=[DistlogCallback(run_dir="runs/x")])`` is the whole change. The
Trainer calls ``on_log`` on every process at each ``logging_steps`` (and after each evaluation);
the callback hands what it logged to global rank 0's row (the Trainer already averaged
``loss`` over the processes) and flushes, on every rank, at ``state.global_step``. Values that
``compute_loss`` or a subclass logs on each rank through ``callback.logger`` are reduced across
ranks in that same flush: one fused exchange per logging step, however many keys.

The run ends at ``on_train_end``. A later ``trainer.evaluate()`` runs ``compute_loss`` before
any hook the callback gets, so until the next run opens (at the Trainer's next hook every rank
runs) ``callback.logger`` is a ``BetweenRuns``: it reads as the finished run and holds the
values logged through it for the next run.
"""

from __future__ import annotations

import numbers
import threading
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from distlog.buffer import Buffer
from distlog.errors import LoggerClosedError, LogTypeError
from distlog.integrations.common import OwnLoggerPerProcess, SinksArg, make_logger
from distlog.integrations.versions import require
from distlog.keys import check_key
from distlog.logger import Logger
from distlog.metrics import is_metric
from distlog.runlog import RESERVED_KEYS
from distlog.values import as_float, plain_tensor

require("transformers", "transformers", "transformers", "4.40", "6")

from transformers import TrainerCallback  # noqa: E402

__all__ = ["BetweenRuns", "DistlogCallback"]


def _detached(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


class BetweenRuns:
    """``callback.logger`` from ``on_train_end`` until the Trainer's next hook every rank runs.

    ``trainer.evaluate()`` after ``train()`` runs ``compute_loss`` before any hook opens the next
    run (at its ``on_log``), and opening a run is collective, so it cannot happen at the first log
    call. Meanwhile this stands in for the Logger:

    - Reads (``run_dir``, ``run_id``, ``closed``, ``step``, ``world``, ...) are the finished
      run's: nothing is built.
    - ``log_scalar``, ``log_dict`` and ``log_precomputed`` are checked as the Logger checks them
      and held as given (tensors detached: no host sync, no collective). The hook that opens
      the next run (``on_log``, before its flush) replays them into the new Logger in order, so
      its row holds them reduced across ranks as if they had been logged there. Once the new
      run is open, calls made here go straight to it.
    - Any other call that logs or flushes (``flush``, media, ``log_metrics``, a torchmetrics
      value in ``log_dict``, ``log_config``, ``add_sink``) raises
      [LoggerClosedError][distlog.errors.LoggerClosedError] saying so. ``finish()`` is the
      finished run's (a no-op) unless values are held, which it would drop: then it raises.

    Values held when no later hook comes (the script ends; ``predict()`` has no ``on_log``) wait
    for the next one, or are not written.
    """

    def __init__(self, finished: Logger) -> None:
        self._finished = finished
        self._calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._next: Logger | None = None
        self._lock = threading.Lock()
        self._check = Buffer(RESERVED_KEYS)  # validates like the Logger's buffer; never filled

    def log_scalar(
        self,
        key: str,
        value: Any,
        reduce: str = "mean",
        *,
        weight: Any = None,
        spread: bool = False,
    ) -> None:
        """Held for the next run (see [Logger.log_scalar][distlog.logger.Logger.log_scalar])."""
        self._check.prepare(key, value, reduce, weight, spread)
        value, weight = _detached(value), _detached(weight)
        self._hold("log_scalar", (key, value, reduce), {"weight": weight, "spread": spread})

    def log_dict(
        self,
        values: Mapping[str, Any],
        reduce: str = "mean",
        *,
        weight: Any = None,
        spread: bool = False,
    ) -> None:
        """Held for the next run (see [Logger.log_dict][distlog.logger.Logger.log_dict]);
        a torchmetrics value (computing it is collective) raises instead."""
        if not isinstance(values, Mapping):
            raise LogTypeError(
                f"log_dict expects a mapping of key -> value, got {type(values).__name__}"
            )
        metrics = [k for k, v in values.items() if is_metric(v)]
        if metrics:
            what = (
                f"log_dict() with the torchmetrics value {metrics[0]!r} (computing is collective)"
            )
            raise self._closed_error(what)
        for key, value in values.items():
            self._check.prepare(key, value, reduce, weight, spread)
        held = {key: _detached(value) for key, value in values.items()}
        self._hold("log_dict", (held, reduce), {"weight": _detached(weight), "spread": spread})

    def log_precomputed(self, values: Mapping[str, Any]) -> None:
        """Held for the next run (see
        [Logger.log_precomputed][distlog.logger.Logger.log_precomputed])."""
        if not isinstance(values, Mapping):
            raise LogTypeError(
                f"log_precomputed expects a mapping of key -> value, got {type(values).__name__}"
            )
        for key, value in values.items():
            check_key(key)
            if isinstance(value, torch.Tensor):
                plain_tensor(key, value)
            else:
                as_float(key, value)
        self._hold("log_precomputed", ({k: _detached(v) for k, v in values.items()},), {})

    def finish(self, exit_code: int = 0, *, step: int | None = None) -> None:
        """The finished run's ``finish`` (a no-op), unless values are held for the next run."""
        with self._lock:
            if self._calls:
                raise self._closed_error("finish() with values held for the next run")
        self._finished.finish(exit_code, step=step)

    @property
    def held(self) -> int:
        """How many log calls wait for the next run."""
        return len(self._calls)

    def open_next(self, logger: Logger) -> None:
        """Replay the held calls into ``logger``, the next run, in order; later calls go there."""
        with self._lock:
            calls, self._calls, self._next = self._calls, [], logger
        for name, args, kwargs in calls:
            getattr(logger, name)(*args, **kwargs)

    def _hold(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        with self._lock:
            logger = self._next
            if logger is None:
                self._calls.append((name, args, kwargs))
                return
        getattr(logger, name)(*args, **kwargs)

    def _closed_error(self, call: str) -> LoggerClosedError:
        if self._next is not None:
            return LoggerClosedError(
                f"callback.logger.{call}: the run in {self._finished.run_dir} is finished and the "
                f"next run is open in {self._next.run_dir}: read callback.logger again"
            )
        return LoggerClosedError(
            f"callback.logger.{call}: the run in {self._finished.run_dir} finished at "
            "on_train_end, and the next run opens at the Trainer's next hook every rank runs "
            "(the on_log of trainer.evaluate(), or train()); until then only log_scalar, "
            "log_dict and log_precomputed are held for it"
        )

    def __getattr__(self, name: str) -> Any:
        """Reads go to the finished run; a call that would log or flush raises."""
        if name.startswith("_"):
            raise AttributeError(name)
        method = isinstance(getattr(Logger, name, None), types.FunctionType)
        if method and (name.startswith("log_") or name in ("flush", "add_sink")):
            raise self._closed_error(f"{name}()")
        return getattr(self._finished, name)

    def __repr__(self) -> str:
        return f"<BetweenRuns after {self._finished.run_dir}, {self.held} calls held>"


class DistlogCallback(OwnLoggerPerProcess, TrainerCallback):
    """Write everything the ``Trainer`` logs through distlog, and reduce your own per-rank values.

    Args:
        run_dir: the run directory (``metrics.jsonl``, ``config.json``, ``run.json``).
        sinks: more backends (wandb, TensorBoard, ...), or a function that makes them on
            global rank 0 only, given the Logger
            (``lambda logger: [WandbSink(project="x", id=logger.run_id)]``).
        system_metrics: also log every rank's step time, memory and CPU use (see
            [SystemMetrics][distlog.system.SystemMetrics]).
        log_config: record the ``TrainingArguments`` in ``config.json`` at the start of training.
        logger_kwargs: passed on to [Logger][distlog.Logger] (``timeout``, ``console``, ...).

    ``callback.logger`` is this rank's [Logger][distlog.Logger] (after ``train()``, a
    ``BetweenRuns`` until the next run opens); build the Trainer (or touch ``callback.logger``)
    on every rank, as a torchrun script does. An uncaught exception closes the run with a
    non-zero exit code (distlog's own interpreter-exit handling).
    """

    def __init__(
        self,
        run_dir: str | Path | None = None,
        sinks: SinksArg = None,
        *,
        system_metrics: bool = False,
        log_config: bool = True,
        **logger_kwargs: Any,
    ) -> None:
        self.run_dir = run_dir
        self._sinks = sinks if sinks is None or callable(sinks) else list(sinks)
        self._system_metrics = system_metrics
        self._log_config = log_config
        self._logger_kwargs = logger_kwargs
        self._logger: Logger | None = None
        self._between: BetweenRuns | None = None  # from on_train_end until the next run opens
        self._forward_hooks: Any = None  # system/forward_s's hooks on the model while it trains

    @property
    def logger(self) -> Logger | BetweenRuns:
        """This rank's distlog Logger, built on first use (after the process group exists).

        After ``train()`` it is the finished run, as a ``BetweenRuns`` until the next run
        opens: its ``run_dir``, ``run_id``, ``closed`` and ``step`` are the finished Logger's,
        and reading it never builds one, which is collective and would wait for every rank
        (``if trainer.is_world_process_zero(): callback.logger.run_dir`` did). The next hook
        every rank runs (the ``on_log`` of a ``trainer.evaluate()``, another ``train()``) starts
        a new run. ``log_scalar``, ``log_dict`` and ``log_precomputed`` made in between (a
        ``compute_loss`` during that ``evaluate()``) are held and go into the new run's first
        row, reduced across ranks; other calls that log or flush raise
        [LoggerClosedError][distlog.errors.LoggerClosedError].
        """
        if self._between is not None:
            return self._between
        if self._logger is None:
            self._open()
        assert self._logger is not None
        return self._logger

    def _open(self) -> Logger:
        """The Logger, a new one if the last was finished: from hooks every rank runs. The
        calls held since the last run finished go into the new one, in order."""
        if self._logger is None or self._logger.closed:
            self._logger = make_logger(
                self.run_dir,
                self._sinks,
                system_metrics=self._system_metrics,
                **self._logger_kwargs,
            )
            between, self._between = self._between, None
            if between is not None:
                between.open_next(self._logger)
        return self._logger

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_between": None, "_forward_hooks": None}

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._open()  # every rank builds its logger while they run in step

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        logger = self._open()
        if logger.system is not None:
            logger.system.start(int(state.global_step))  # a restored job's step included
            model = kwargs.get("model")
            if isinstance(model, torch.nn.Module) and self._forward_hooks is None:
                # system/forward_s: the slow rank, which DDP's even step times hide
                self._forward_hooks = logger.system.time_forward(model)
        if self._log_config and hasattr(args, "to_dict"):
            logger.log_config(args.to_dict())

    def on_log(
        self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        logger = self._open()
        if logs:
            numbers_only = {
                k: v
                for k, v in logs.items()
                if isinstance(v, numbers.Real) and not isinstance(v, bool)
            }
            logger.log_precomputed(numbers_only)  # kept on rank 0: the Trainer's own values
        logger.flush(step=int(state.global_step))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._forward_hooks is not None:
            self._forward_hooks.remove()
            self._forward_hooks = None
        logger = self._logger
        if logger is None:
            return
        if not logger.closed:
            logger.finish(step=max(int(state.global_step), logger.step))
        if self._between is None:  # until the next hook every rank runs opens the next run
            self._between = BetweenRuns(logger)
