"""A plain reference for distlog's reductions, computed from every rank's raw samples.

A *sample* is ``(key, value, reduce, weight)`` with ``value`` already the float that the logged
object represents (a bf16 tensor's value is its rounded value). ``reference_row`` knows nothing
about payloads or layouts: it is the definition of each reduction, written as directly as
possible, to compare distlog's fused exchange against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Sample = tuple[str, float, str, float]


def reference_row(per_rank: Sequence[Sequence[Sample]]) -> dict[str, float]:
    keys: dict[str, str] = {}
    for samples in per_rank:
        for key, _, red, _ in samples:
            keys.setdefault(key, red)
    row: dict[str, float] = {}
    for key, red in sorted(keys.items()):
        mine = [[s for s in samples if s[0] == key] for samples in per_rank]
        flat = [s for rank in mine for s in rank]
        values = [s[1] for s in flat]
        if red == "mean":
            num = sum(v * w for _, v, _, w in flat if w != 0)
            den = sum(w for *_, w in flat)
            row[key] = num / den if den != 0 else math.nan
        elif red == "sum":
            row[key] = math.fsum(values) if all(map(math.isfinite, values)) else sum(values)
        elif red in ("min", "max"):
            if any(math.isnan(v) for v in values):
                row[key] = math.nan
            else:
                row[key] = min(values) if red == "min" else max(values)
        elif red == "last":
            lasts = [rank[-1][1] for rank in mine if rank]
            row[key] = sum(lasts) / len(lasts)
        else:
            raise ValueError(red)
    return row


def assert_rows_close(got: dict[str, float], want: dict[str, float], rel: float = 1e-9) -> None:
    assert sorted(got) == sorted(want), f"keys differ: got {sorted(got)}, want {sorted(want)}"
    for key, w in want.items():
        g = got[key]
        if math.isnan(w):
            assert math.isnan(g), f"{key}: got {g}, want NaN"
        elif math.isinf(w):
            assert g == w, f"{key}: got {g}, want {w}"
        else:
            assert math.isclose(g, w, rel_tol=rel, abs_tol=1e-9 * max(1.0, abs(w))), (
                f"{key}: got {g!r}, want {w!r}"
            )
