"""The one percentile of the lab, and the summary that ``results.json`` carries per metric.

Percentiles interpolate linearly between the closest ranks (numpy's default, Excel's
PERCENTILE.INC): with n=3 sorted values a ≤ b ≤ c, p50 = b and p90 = b + 0.8·(c − b).  The
scenarios' summaries, the reports' tables and the benchmarks all use this function, so a p90 means
the same thing everywhere.
"""

from __future__ import annotations

import math
from typing import Iterable


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values`` (in any order; at least one)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in 0..100, not {q}")
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Iterable[float]) -> float:
    return percentile(values, 50)


def summarize(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """``{"p50", "p90", "max", "n", "missing"}``; nulls (metric did not happen) are counted apart."""
    values = list(values)
    present = [v for v in values if v is not None]
    missing = len(values) - len(present)
    if not present:
        return {"p50": None, "p90": None, "max": None, "n": 0, "missing": missing}
    return {"p50": round(percentile(present, 50), 4), "p90": round(percentile(present, 90), 4),
            "max": round(max(present), 4), "n": len(present), "missing": missing}
