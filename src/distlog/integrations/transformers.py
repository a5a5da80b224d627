"""Hugging Face ``Trainer``: its logs through distlog's sinks, and cross-rank values of your own.

``Trainer(..., callbacks=[DistlogCallback(run_dir="runs/x")])`` is the whole change. The
Trainer calls ``on_log`` on every process at each ``logging_steps`` (and after each evaluation);
the callback hands what it logged to global rank 0's row (the Trainer already averaged
``loss`` over the processes) and flushes, on every rank, at ``state.global_step``. Values that
``compute_loss`` or a subclass logs on each rank through ``callback.logger`` are reduced across
ranks in that same flush: one fused exchange per logging step, however many keys.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distlog.integrations.common import OwnLoggerPerProcess, SinksArg, make_logger
from distlog.integrations.versions import require
from distlog.logger import Logger

require("transformers", "transformers", "transformers", "4.40", "6")

from transformers import TrainerCallback  # noqa: E402

__all__ = ["DistlogCallback"]


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

    ``callback.logger`` is this rank's [Logger][distlog.Logger]; build the Trainer (or touch
    ``callback.logger``) on every rank, as a torchrun script does. An uncaught exception closes
    the run with a non-zero exit code (distlog's own interpreter-exit handling).
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

    @property
    def logger(self) -> Logger:
        """This rank's distlog Logger, built on first use (after the process group exists).

        After ``train()`` it is the finished Logger (its ``run_dir`` and ``run_id`` stay
        readable): reading it never builds one, which is collective and would wait for every
        rank (``if trainer.is_world_process_zero(): callback.logger.run_dir`` did). The next
        hook every rank runs (a ``trainer.evaluate()``, another ``train()``) starts a new run.
        """
        if self._logger is None:
            self._open()
        assert self._logger is not None
        return self._logger

    def _open(self) -> Logger:
        """The Logger, a new one if the last was finished: from hooks every rank runs."""
        if self._logger is None or self._logger.closed:
            self._logger = make_logger(
                self.run_dir,
                self._sinks,
                system_metrics=self._system_metrics,
                **self._logger_kwargs,
            )
        return self._logger

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._open()  # every rank builds its logger while they run in step

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        logger = self._open()
        if logger.system is not None:
            logger.system.start(int(state.global_step))  # a restored job's step included
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
        if self._logger is not None and not self._logger.closed:
            self._logger.finish(step=max(int(state.global_step), self._logger.step))
