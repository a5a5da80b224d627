"""``TensorBoardLoggerMixin``: the seed's "Custom Logger Implementation" example, ready made.

The seed shows a ``LoggerMixin`` subclass whose rank 0 opens a ``SummaryWriter`` at
``runs/{experiment}``. This is that mixin over distlog: every rank logs as usual
(``self.log_scalar``, ``self.log_dict``, ``self.log_images``, ...), values are reduced across
ranks at each flush, and global rank 0 writes them to TensorBoard (inside the run directory,
next to the local run log) through a [TensorBoardSink][distlog.sinks.tensorboard.TensorBoardSink] on the logger's writer thread.
Other ranks open no writer and write no file.

    class MyTrainer(BaseTrainer, TensorBoardLoggerMixin):
        ...

Then ``tensorboard --logdir runs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distlog import runlog
from distlog.mixins import LoggerMixin
from distlog.sinks.tensorboard import TensorBoardSink, require_tensorboard

__all__ = ["TensorBoardLoggerMixin"]


class TensorBoardLoggerMixin(LoggerMixin):
    """[LoggerMixin][distlog.mixins.LoggerMixin] that also writes TensorBoard event files.

    Global rank 0 writes to [tensorboard_dir][distlog.tensorboard_mixin.TensorBoardLoggerMixin.tensorboard_dir] (``<run_dir>/tensorboard``: the seed's
    ``runs/{experiment}`` merged every launch into one TensorBoard run; override the property to
    choose another place). If TensorBoard is missing, every
    rank raises ImportError (naming ``distlog[tensorboard]``) at construction, before any
    collective, so no rank is left waiting. With ``logging_parameters.enabled=False`` nothing
    is opened.
    """

    def __init__(self, config: Any) -> None:
        params = getattr(config, "logging_parameters", None)
        if params is not None and getattr(params, "enabled", False):
            require_tensorboard()  # on every rank, before any collective
        self.tensorboard_sink: TensorBoardSink | None = None
        super().__init__(config)
        # A base without the make_sinks() hook: attach the sink once the logger exists.
        if (
            self.tensorboard_sink is None
            and self.world.is_global_zero
            and self.logging_parameters.enabled
            and self.logger is not None
        ):
            self.tensorboard_sink = TensorBoardSink(self.tensorboard_dir)
            self.logger.add_sink(self.tensorboard_sink)

    @property
    def tensorboard_dir(self) -> Path:
        """Where rank 0 writes event files: ``<run_dir>/tensorboard``.

        The seed writes to ``runs/{experiment}``; TensorBoard merges every event file of one
        folder into one run, so each launch wrote over the previous one's curves (steps 2..8,
        then 2..8 again). Inside the run directory, a run's events are its own (two runs never
        share a run directory), a resumed run continues them, and ``tensorboard --logdir
        runs`` shows every run by its path (``<project>/<experiment>/<date-time>``).
        """
        return self.run_dir / "tensorboard"

    @property
    def writer(self) -> Any:
        """The ``SummaryWriter`` on global rank 0 (None elsewhere), as in the seed's example.

        For what distlog does not log itself (graphs, embeddings, PR curves). Everything logged
        through the mixin's ``log_*`` methods is already written to TensorBoard. None too once
        the logger is finished (``finish()``, or the end of ``fit()``), on every rank alike, so
        the seed's guard ``if self.writer is None: return`` holds everywhere.
        """
        sink = self.tensorboard_sink
        if sink is None:
            return None
        logger = getattr(self, "_distlog_logger", None)
        if logger is not None and logger.closed:
            return None
        try:
            return sink.writer
        except RuntimeError:  # the sink was closed on its own
            return None

    def make_sinks(self) -> list[Any]:
        """The base class's sinks plus TensorBoard (called on global rank 0 only)."""
        base = getattr(super(), "make_sinks", None)
        sinks = list(base()) if base is not None else []
        # A resumed run: hide what the interrupted attempt wrote after its last row in the
        # local run log (TensorBoard's own rows may have gone further before it died).
        last = runlog.last_step(self.run_dir)
        purge = last + 1 if last is not None else None
        self.tensorboard_sink = TensorBoardSink(self.tensorboard_dir, purge_step=purge)
        return [*sinks, self.tensorboard_sink]
