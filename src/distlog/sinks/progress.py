"""A progress bar on the writer's terminal showing the latest aggregated values.

The bar advances to the step of each flush and shows the values of that flush, so what it
shows is the global (all-rank) value, not rank 0's own. It uses rich when installed (the
``progress`` extra) and tqdm otherwise.

It switches itself off, showing nothing, when:

- the output is not a terminal (a log file, a pipe, a batch job's stdout);
- the environment says ``DISTLOG_PROGRESS=0`` (also ``false``, ``off``, ``no``): this wins
  over everything, so a bar in someone else's script can always be silenced;
- ``enabled=False`` is passed;
- the process is not global rank 0 (``RANK`` is set and not 0). Only the writer calls sinks
  anyway; the bar starts at the first row, so building a sink on every rank draws nothing.

``enabled=True`` draws the bar even when the output is not a terminal.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from distlog.sinks.console import format_value

if TYPE_CHECKING:
    from distlog.media.items import MediaItem

__all__ = ["ProgressSink", "progress_disabled_by_env"]

_OFF = {"0", "false", "off", "no"}


def progress_disabled_by_env() -> bool:
    """True when ``DISTLOG_PROGRESS`` turns progress bars off."""
    return os.environ.get("DISTLOG_PROGRESS", "").strip().lower() in _OFF


def _is_writer_process() -> bool:
    raw = os.environ.get("RANK", "0").strip() or "0"
    return not raw.isdigit() or int(raw) == 0


def _rich_available() -> bool:
    try:
        import rich.progress  # noqa: F401
    except ImportError:
        return False
    return True


class ProgressSink:
    """Draws ``train ━━━━━━━╸━━ 120/1000 0:00:31 < 0:03:47 train/loss 0.4312 · lr 0.0003``.

    Args:
        total: the step the bar runs to (None: no end, the bar only counts).
        keys: which keys to show, as exact names or shell patterns (``"train/*"``), in this
            order; default: the first ``max_keys`` keys of each row, sorted.
        description: the text before the bar.
        enabled: None decides automatically (see the module docstring); True forces the bar
            on even off a terminal; False turns it off. ``DISTLOG_PROGRESS=0`` always wins.
        backend: ``"rich"``, ``"tqdm"`` or ``"auto"`` (rich when installed).
        console: a ``rich.console.Console`` to draw on (rich only), e.g. for tests.
        stream: the text stream to draw on (default ``sys.stdout``).
        max_keys: how many values fit after the bar.
    """

    def __init__(
        self,
        total: int | None = None,
        keys: Sequence[str] | None = None,
        *,
        description: str = "train",
        enabled: bool | None = None,
        backend: Literal["auto", "rich", "tqdm"] = "auto",
        console: Any = None,
        stream: IO[str] | None = None,
        max_keys: int = 6,
    ) -> None:
        if backend == "auto":
            backend = "rich" if _rich_available() else "tqdm"
        if backend not in ("rich", "tqdm"):
            raise ValueError(
                f"ProgressSink backend must be 'auto', 'rich' or 'tqdm', not {backend!r}"
            )
        self.total = total
        self.keys = list(keys) if keys is not None else None
        self.description = description
        self.backend = backend
        self.max_keys = max_keys
        self._console = console
        self._stream = stream
        self._bar: Any = None
        self._task: Any = None
        self._closed = False
        self.enabled = self._decide(enabled)

    def _decide(self, enabled: bool | None) -> bool:
        if progress_disabled_by_env() or enabled is False:
            return False
        if enabled is True:
            return True
        if not _is_writer_process():
            return False
        if self.backend == "rich":
            from rich.console import Console

            console = self._console or Console(file=self._stream or sys.stdout)
            return bool(console.is_terminal)
        stream = self._stream or sys.stdout
        return bool(getattr(stream, "isatty", lambda: False)())

    def shown_values(self, values: Mapping[str, float]) -> list[tuple[str, float]]:
        """The (key, value) pairs the bar shows for a row, in display order."""
        if self.keys is None:
            return sorted(values.items())[: self.max_keys]
        shown: list[tuple[str, float]] = []
        for pattern in self.keys:
            for key in sorted(values):
                if (key == pattern or fnmatch.fnmatchcase(key, pattern)) and key not in dict(shown):
                    shown.append((key, values[key]))
        return shown[: self.max_keys]

    def format_values(self, values: Mapping[str, float]) -> str:
        return " · ".join(f"{k} {format_value(float(v))}" for k, v in self.shown_values(values))

    def _start(self, step: int) -> None:
        if self.backend == "rich":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            own_console = self._console is None and self._stream is None
            console = self._console or Console(file=self._stream or sys.stdout)
            if self._console is None and not console.is_terminal:  # forced on
                console = Console(file=self._stream or sys.stdout, force_terminal=True)
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("<"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[values]}"),
                console=console,
                # prints of the training loop go above the bar, not through it
                redirect_stdout=own_console,
                redirect_stderr=own_console,
            )
            self._bar.start()
            self._task = self._bar.add_task(
                self.description, total=self.total, completed=step, values=""
            )
        else:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                initial=step,
                desc=self.description,
                file=self._stream or sys.stdout,
                dynamic_ncols=True,
                disable=False,
            )

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled or self._closed:
            return
        if self._bar is None:
            self._start(step)
        text = self.format_values(values)
        if self.backend == "rich":
            self._bar.update(self._task, completed=step, values=text)
        else:
            self._bar.n = step
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.refresh()

    def log_media(self, step: int, key: str, item: MediaItem) -> None:
        pass

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: Path, name: str, type: str) -> None:  # noqa: A002
        """Artifacts are not shown here (a no-op)."""

    def close(self, exit_code: int = 0) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is None:
            return
        if self.backend == "rich":
            self._bar.stop()
        else:
            self._bar.close()
        self._bar = None
