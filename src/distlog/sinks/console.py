"""A compact line per flush on the writer's terminal (or any text stream)."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

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


class ConsoleSink:
    """Prints ``step 120 | train/loss 0.4312 | data/tokens 65536`` once per flush."""

    def __init__(self, stream: IO[str] | None = None, *, max_keys: int = 12) -> None:
        self.stream = stream
        self.max_keys = max_keys

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        items = sorted(values.items())
        shown = [f"{k} {format_value(v)}" for k, v in items[: self.max_keys]]
        if len(items) > self.max_keys:
            shown.append(f"(+{len(items) - self.max_keys} more)")
        print(" | ".join([f"step {step}", *shown]), file=self.stream or sys.stdout, flush=True)

    def log_media(self, step: int, key: str, item: MediaItem) -> None:
        print(f"step {step} | {key}: {type(item).__name__}", file=self.stream or sys.stdout)

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass

    def close(self, exit_code: int = 0) -> None:
        pass
