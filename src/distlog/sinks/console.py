"""A compact line per flush on the writer's terminal (or any text stream)."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from distlog import runlog

if TYPE_CHECKING:
    from distlog.media.items import MediaItem


def format_value(value: float, digits: int = 4) -> str:
    """How distlog shows a number (console, progress bar, ``distlog show``): whole numbers as
    integers, others with ``digits`` significant digits, exponent form when very large or small.
    """
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.{digits}g}"


def _spread_text(parts: Mapping[str, float] | None) -> str:
    """`` [7.4..11.5 r0]``: the ranks' min..max and which rank had the max."""
    if not parts or "rank_min" not in parts or "rank_max" not in parts:
        return ""
    text = f"{format_value(parts['rank_min'])}..{format_value(parts['rank_max'])}"
    argmax = parts.get("rank_argmax")
    if argmax is not None and math.isfinite(argmax):
        text += f" r{int(argmax)}"
    return f" [{text}]"


class ConsoleSink:
    """Prints ``step 120 | train/loss 0.4312 | time/step_ms 11.5 [7.4..11.5 r0]`` once per
    flush: a key logged with ``spread=True`` shows its cross-rank min..max and the rank of the
    max in brackets instead of four more columns. At most ``max_keys`` keys are shown."""

    def __init__(self, stream: IO[str] | None = None, *, max_keys: int = 12) -> None:
        self.stream = stream
        self.max_keys = max_keys

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        spread: dict[str, dict[str, float]] = {}
        main: list[tuple[str, float]] = []
        for key, value in sorted(values.items()):
            parts = runlog.split_spread(key, values)
            if parts is not None:
                spread.setdefault(parts[0], {})[parts[1]] = value
            else:
                main.append((key, value))
        shown = [
            f"{k} {format_value(v)}{_spread_text(spread.get(k))}" for k, v in main[: self.max_keys]
        ]
        if len(main) > self.max_keys:
            shown.append(f"(+{len(main) - self.max_keys} more)")
        print(" | ".join([f"step {step}", *shown]), file=self.stream or sys.stdout, flush=True)

    def log_media(self, step: int, key: str, item: MediaItem) -> None:
        print(f"step {step} | {key}: {type(item).__name__}", file=self.stream or sys.stdout)

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: Path, name: str, type: str) -> None:  # noqa: A002
        """Artifacts are not shown here (a no-op)."""

    def close(self, exit_code: int = 0) -> None:
        pass
