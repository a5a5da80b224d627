"""What the integrations share: building the Logger with sinks that may only exist on rank 0."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeAlias

from distlog.logger import Logger
from distlog.sinks.base import Sink

__all__ = ["OwnLoggerPerProcess", "SinksArg", "make_logger"]

SinksArg: TypeAlias = Iterable[Sink] | Callable[[Logger], Iterable[Sink]] | None
"""Sinks, or a function of the Logger that makes them. A function is called on global rank 0
only, after the Logger exists (so a wandb run can take ``logger.run_id``, kept across restarts):
a ``WandbSink`` calls ``wandb.init`` when built, which other ranks must not."""


def make_logger(run_dir: str | Path | None, sinks: SinksArg, **kwargs: Any) -> Logger:
    """A [Logger][distlog.Logger] for ``run_dir`` with ``sinks`` (a list, or a factory)."""
    if sinks is None or not callable(sinks):
        return Logger(run_dir=run_dir, sinks=sinks, **kwargs)
    logger = Logger(run_dir=run_dir, **kwargs)
    if logger.world.is_global_zero:
        for sink in sinks(logger):
            logger.add_sink(sink)
    return logger


class OwnLoggerPerProcess:
    """For an integration object that builds its Logger lazily (in ``self._logger``): pickled
    into a spawned process (Lightning's ``strategy="ddp_spawn"``, a spawned worker), the copy
    leaves the Logger behind and builds its own there on first use. A Logger belongs to the
    process that made it and refuses to be pickled."""

    _logger: Logger | None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_logger": None}
