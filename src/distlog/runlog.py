"""The local run directory format: how values are encoded in ``metrics.jsonl`` and read back.

JSON has no NaN or infinities, and Python's ``json`` would write them as bare ``NaN`` tokens that
strict readers reject. distlog writes them as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` instead, so every line is strict JSON; :func:`read_metrics` restores the floats.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
MEDIA_DIR = "media"

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def encode_value(value: float) -> float | str:
    """A float as it is stored in ``metrics.jsonl``: itself, or a string for NaN and infinities."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def decode_value(value: Any) -> Any:
    """Inverse of :func:`encode_value` for one stored value."""
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    return value


def encode_row(row: Mapping[str, Any]) -> str:
    """One strict-JSON line (no trailing newline) for a row of scalars."""
    clean = {k: (encode_value(v) if isinstance(v, float) else v) for k, v in row.items()}
    return json.dumps(clean, allow_nan=False, separators=(",", ":"))


def iter_rows(run_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Yield every row of ``<run_dir>/metrics.jsonl`` with non-finite values restored.

    A final line cut short by a crash is skipped; a malformed line elsewhere raises ValueError
    naming the line number.
    """
    path = Path(run_dir) / METRICS_FILE
    with path.open("r", encoding="utf-8") as fh:
        lines = fh.readlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not line.endswith("\n"):
                return  # a torn last line from a killed writer
            raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object")
        yield {k: decode_value(v) for k, v in row.items()}


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All scalar rows (rows with a ``"step"`` and no ``"media"``) of a run directory, in order."""
    return [row for row in iter_rows(run_dir) if "media" not in row]
