"""Numbers the plots and the summary share: metric names, percentiles, scaling efficiency.

Percentiles (and medians) are the lab's one ``ctdblab.stats.percentile``: linear interpolation
between the closest ranks, as in results.json's summaries.  Statistics are always computed from
the per-run values, so every figure in the report can be re-derived from ``results.json`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ctdblab.stats import median, percentile

from .load import Dataset, FailoverRun, ScalingPoint

# The failover metrics in the order a failover unfolds; anything else ending in "_s" follows.
METRIC_ORDER = ("detect_s", "takeover_s", "ping_s", "reset_s", "smb_resumed_s", "survivor_stall_s",
                "rejoin_s", "failback_s")
METRIC_TITLES = {
    "detect_s": "detect",
    "takeover_s": "takeover",
    "ping_s": "ping answers",
    "reset_s": "client reset",
    "smb_resumed_s": "SMB resumed",
    "survivor_stall_s": "survivor stall",
    "rejoin_s": "rejoin",
    "failback_s": "failback",
}
METRIC_MEANINGS = {
    "detect_s": "survivors declare the victim dead",
    "takeover_s": "the victim's public IP is up on its new owner",
    "ping_s": "first ping reply from the moved IP",
    "reset_s": "a client blocked in recv() on the moved IP gets its RST (tickle ACK)",
    "smb_resumed_s": "a fresh SMB connect + read through the moved IP succeeds",
    "survivor_stall_s": "worst operation latency through a surviving node's IP (a duration)",
    "rejoin_s": "the victim is back in the cluster",
    "failback_s": "an IP has moved back to the victim",
}
# Metrics that are durations rather than instants after the cut.
DURATION_METRICS = ("survivor_stall_s",)

ROLE_ORDER = ("nonleader", "leader")
ROLE_TITLES = {"nonleader": "non-leader victim", "leader": "leader victim", "unknown": "victim role unknown"}
CLASSIC_TALK_GBE_MB_S = (109.0, 201.0, 278.0, 308.0)  # 2008 CTDB talk, 1-4 nodes on GbE


def metric_title(metric: str) -> str:
    return METRIC_TITLES.get(metric, metric.removesuffix("_s").replace("_", " "))


def role_title(role: str) -> str:
    return ROLE_TITLES.get(role, f"{role} victim")


@dataclass(frozen=True)
class MetricStats:
    p50: float | None
    p90: float | None
    max: float | None
    n: int  # runs where the metric happened
    missing: int  # runs where it did not (null)


def metric_stats(runs: Iterable[FailoverRun], metric: str) -> MetricStats:
    values: list[float] = []
    missing = 0
    for run in runs:
        value = run.metrics.get(metric)
        if value is None:
            missing += 1
        else:
            values.append(value)
    if not values:
        return MetricStats(None, None, None, 0, missing)
    return MetricStats(percentile(values, 50), percentile(values, 90), max(values), len(values), missing)


def not_applicable(runs: Iterable[FailoverRun], metric: str) -> str | None:
    """Why ``metric`` cannot exist in these runs (every one of them says n/a), else None."""
    runs = list(runs)
    reasons = [run.not_applicable.get(metric) for run in runs]
    if not runs or any(r is None for r in reasons):
        return None
    return reasons[0]


def shortest_watch(runs: Iterable[FailoverRun]) -> float | None:
    """The shortest time any of these runs watched after the cut (None: not recorded)."""
    watched = [run.watched_s for run in runs if run.watched_s is not None]
    return min(watched) if watched else None


def metric_names(datasets: Iterable[Dataset]) -> list[str]:
    """Every metric that appears in any run, known ones in failover order first."""
    seen: set[str] = set()
    for dataset in datasets:
        for run in dataset.runs:
            seen.update(run.metrics)
    known = [m for m in METRIC_ORDER if m in seen]
    return known + sorted(seen - set(known))


def roles_of(datasets: Iterable[Dataset]) -> list[str]:
    roles = {run.victim_role for d in datasets for run in d.runs}
    return [r for r in ROLE_ORDER if r in roles] + sorted(roles - set(ROLE_ORDER))


def runs_with_role(dataset: Dataset, role: str | None) -> list[FailoverRun]:
    """The dataset's runs with this victim role (all runs for None), in run order."""
    return sorted((r for r in dataset.runs if role is None or r.victim_role == role), key=lambda r: r.run)


REFERENCE_DAEMONS = ("ctdb", "keepalived")  # what pyctdbd is compared with, in this order


def comparison_pairs(datasets: list[Dataset], other: str = "ctdb") -> list[tuple[Dataset, Dataset]]:
    """(pyctdbd, ``other``) failover datasets to compare: the only pair, or pairs with equal N
    and tunables (tunables only between the two CTDB daemons: keepalived reads none of them)."""
    ours = [d for d in datasets if d.is_failover and d.daemon == "pyctdbd"]
    theirs = [d for d in datasets if d.is_failover and d.daemon == other]
    if len(ours) == 1 and len(theirs) == 1:
        return [(ours[0], theirs[0])]
    return [(a, b) for a in ours for b in theirs
            if a.params.get("nodes") == b.params.get("nodes")
            and (other == "keepalived" or a.params.get("tunables") == b.params.get("tunables"))]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


# -- scaling -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScalingRow:
    client: str
    nodes: int
    median: float
    low: float
    high: float
    n: int
    ideal: float | None  # nodes × the one-node median; None without a one-node point
    efficiency: float | None  # median / ideal


def scaling_rows(points: Iterable[ScalingPoint]) -> list[ScalingRow]:
    """Per client tool and node count: the median of the repeats and its efficiency vs linear."""
    by_key: dict[tuple[str, int], list[float]] = {}
    for point in points:
        by_key.setdefault((point.client, point.nodes), []).append(point.mb_s)
    rows: list[ScalingRow] = []
    for client in sorted({c for c, _ in by_key}):
        one_node = by_key.get((client, 1))
        base = median(one_node) if one_node else None
        for nodes in sorted(n for c, n in by_key if c == client):
            values = by_key[(client, nodes)]
            middle = median(values)
            ideal = None if base is None else nodes * base
            rows.append(ScalingRow(client=client, nodes=nodes, median=middle, low=min(values),
                                   high=max(values), n=len(values), ideal=ideal,
                                   efficiency=ratio(middle, ideal)))
    return rows
