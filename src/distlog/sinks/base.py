"""The one protocol every backend implements.

Only the writer (global rank 0) ever calls a sink, and it does so from a single thread at a time
(the sink's own thread when ``async_write`` is on, see `distlog.sinkset`), so sinks need no
locking of their own.
Values reach a sink already aggregated over steps and ranks; media arrive already converted to
uint8 arrays (see `distlog.media`), so a sink only encodes and writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from distlog.media.items import MediaItem


@runtime_checkable
class Sink(Protocol):
    """A destination for aggregated metrics: a local file, a tracker, a terminal."""

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Write one row: the aggregated value of every key flushed at ``step``."""

    def log_media(self, step: int, key: str, item: MediaItem) -> None:
        """Write one media item (images, videos, histogram, table) under ``key`` at ``step``."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Record the run's configuration (already a plain, JSON-like nested mapping)."""

    def log_artifact(self, path: Path, name: str, type: str) -> None:  # noqa: A002
        """Optional: keep a file or directory (a checkpoint, a dataset sample) under ``name``.

        ``path`` exists (the logger checked); ``type`` is a free label (``"model"``...). A
        sink without this method is skipped, and this default does nothing.
        """

    def close(self, exit_code: int = 0) -> None:
        """Flush and release everything; ``exit_code`` is non-zero when the run failed."""
