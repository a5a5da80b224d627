"""Rebuild the rows an integration example should have written from every rank's raw values.

Each example writes ``raw_rank<r>.json``: ``{"raw": [{"after", "key", "value", "reduce",
"weight"}, ...], ...}`` where ``after`` is the logger's step when the value was logged, so the
value belongs to the first row whose step is greater.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reference import reference_row


def load_raw(folder: Path, world_size: int = 2) -> list[dict[str, Any]]:
    return [json.loads((folder / f"raw_rank{r}.json").read_text()) for r in range(world_size)]


def expected_rows(raws: list[dict[str, Any]], steps: list[int]) -> list[dict[str, float]]:
    """The reference row of each written row (in order), from every rank's samples.

    A sample logged when the logger's step was ``after`` lands in the first row whose step is
    greater (the examples never log between two flushes of the same step).
    """
    per_row: list[list[list[tuple[str, float, str, float]]]] = [[[] for _ in raws] for _ in steps]
    for rank, raw in enumerate(raws):
        for item in raw["raw"]:
            i = next(i for i, s in enumerate(steps) if s > item["after"])
            weight = 1.0 if item["weight"] is None else float(item["weight"])
            per_row[i][rank].append((item["key"], item["value"], item["reduce"], weight))
    return [reference_row(samples) for samples in per_row]


def user_keys(row: dict[str, Any]) -> dict[str, float]:
    """A written row without the run log's own columns."""
    return {k: v for k, v in row.items() if k not in ("step", "time")}
