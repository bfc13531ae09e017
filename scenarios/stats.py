"""Summary statistics for results.json: p50 / p90 / max / n over the runs that have a value."""

from __future__ import annotations

import math
from typing import Iterable


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation percentile (q in 0..100) of an already sorted, non-empty list."""
    if not sorted_values:
        raise ValueError("percentile of an empty list")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """``{"p50", "p90", "max", "n", "missing"}``; nulls (metric did not happen) are counted apart."""
    values = list(values)
    present = sorted(v for v in values if v is not None)
    missing = len(values) - len(present)
    if not present:
        return {"p50": None, "p90": None, "max": None, "n": 0, "missing": missing}
    return {"p50": round(percentile(present, 50), 4), "p90": round(percentile(present, 90), 4),
            "max": round(present[-1], 4), "n": len(present), "missing": missing}
