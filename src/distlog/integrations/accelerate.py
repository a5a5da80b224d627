"""Accelerate: a tracker that writes through distlog, and a logger that reduces across ranks.

``Accelerator(log_with=DistlogTracker(run_dir="runs/x"))`` makes ``init_trackers`` (the config)
and ``accelerator.log(...)`` write to distlog's run directory and sinks. Accelerate calls
trackers on the main process only, so ``accelerator.log`` carries the main process's values;
for values of every rank, use ``tracker.logger`` (a [Logger][distlog.Logger] on every process)
in place of ``accelerator.reduce`` / ``gather`` per key: one fused exchange per log step.

Two ways of running, chosen by whether ``tracker.logger`` is used:

- ``accelerator.log`` only: the main process writes each call as a row at its step, as
  Accelerate's own trackers do (no communication).
- ``tracker.logger`` on every process (touch it right after creating the ``Accelerator``):
  ``accelerator.log`` values join the row of the next ``tracker.logger.flush(step)``, which
  every process calls at each log step, and ``tracker.logger.finish()`` ends the run on every
  process (``accelerator.end_training()`` only reaches the main process).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist

from distlog.errors import DistlogError
from distlog.integrations.common import SinksArg, make_logger
from distlog.integrations.versions import require
from distlog.logger import Logger
from distlog.world import World

require("accelerate", "accelerate", "accelerate", "0.30", "2")

from accelerate.tracking import GeneralTracker  # noqa: E402

__all__ = ["DistlogTracker"]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class DistlogTracker(GeneralTracker):
    """An Accelerate tracker backed by a distlog [Logger][distlog.Logger].

    Args:
        run_dir: the run directory (``metrics.jsonl``, ``config.json``, ``run.json``).
        sinks: more backends (wandb, TensorBoard, ...), or a function that makes them on
            global rank 0 only, given the Logger
            (``lambda logger: [WandbSink(project="x", id=logger.run_id)]``).
        system_metrics: also log every rank's step time, memory and CPU use (see
            [SystemMetrics][distlog.system.SystemMetrics]); with ``tracker.logger``.
        logger_kwargs: passed on to [Logger][distlog.Logger] (``timeout``, ``console``, ...).
    """

    name = "distlog"
    requires_logging_directory = False
    main_process_only = False  # the object lives on every process; tracker.logger works there

    def __init__(
        self,
        run_dir: str | Path = "runs/accelerate",
        sinks: SinksArg = None,
        *,
        system_metrics: bool = False,
        **logger_kwargs: Any,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self._sinks = sinks if sinks is None or callable(sinks) else list(sinks)
        self._system_metrics = system_metrics
        self._logger_kwargs = logger_kwargs
        self._logger: Logger | None = None
        self._writer_only = False
        self._pending: tuple[int | None, int] | None = None  # (accelerator.log step, logger.step)

    @property
    def tracker(self) -> Logger:
        return self.logger

    @property
    def logger(self) -> Logger:
        """This process's cross-rank Logger; building it is collective, so touch it on every
        process (after the ``Accelerator`` exists, before the first ``accelerator.log``)."""
        if self._logger is None:
            self._logger = make_logger(
                self.run_dir,
                self._sinks,
                system_metrics=self._system_metrics,
                **self._logger_kwargs,
            )
        elif self._writer_only:
            raise DistlogError(
                "DistlogTracker: accelerator.log (or init_trackers) already made the main "
                "process write on its own; touch tracker.logger on every process right after "
                "creating the Accelerator, before init_trackers, to reduce across ranks"
            )
        return self._logger

    def _main_logger(self) -> Logger:
        """The logger for calls Accelerate makes on the main process only."""
        if self._logger is None and _world_size() > 1:
            # Nobody built the cross-rank logger: write the main process's values on its own,
            # as a world of one (no collective, the other processes never get here).
            self._writer_only = True
            self._logger = make_logger(
                self.run_dir,
                self._sinks,
                world=World(world_size=_world_size()),
                **self._logger_kwargs,
            )
        return self._logger if self._logger is not None else self.logger

    def store_init_configuration(self, values: Mapping[str, Any]) -> None:
        self._main_logger().log_config(dict(values))

    def log(self, values: Mapping[str, Any], step: int | None = None, **kwargs: Any) -> None:
        logger = self._main_logger()
        numbers = {k: v for k, v in values.items() if not isinstance(v, str)}
        if self._writer_only or logger.world.group_size <= 1:
            logger.log_precomputed(numbers)
            logger.flush(step=step)  # a world of one: nothing to wait for
            return
        if (
            self._pending is not None
            and self._pending[1] == logger.step
            and self._pending[0] != step
        ):
            warnings.warn(
                f"distlog: accelerator.log at step {step} after step {self._pending[0]} with no "
                "tracker.logger.flush() in between: both go into the next row. Call "
                "tracker.logger.flush(step) on every process at each log step.",
                stacklevel=2,
            )
        logger.log_precomputed(numbers)  # rank 0's values, written with the next flush
        self._pending = (step, logger.step)

    def finish(self) -> None:
        logger = self._logger
        if logger is None or logger.closed:
            return
        if self._writer_only or logger.world.group_size <= 1:
            logger.finish()
            return
        warnings.warn(
            "distlog: accelerator.end_training() reaches the main process only; call "
            "tracker.logger.finish() on every process before it. The run is closed at exit.",
            stacklevel=2,
        )
