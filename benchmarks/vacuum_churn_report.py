"""The figures of benchmarks/vacuum_churn.py, from its results alone: the cluster-wide series
of records, tombstones and file bytes, each round's peak and drain times, the tables and the plot.

A daemon's result (one entry of results.json) holds every node's censuses (tdb_census.py) and
the wall-clock phases of each round: ``create`` and ``delete`` as [start, end] and ``settle_end``.
The cluster's state at a moment is the sum over the nodes of each node's latest census (a
database whose latest census failed keeps that node's previous count); a point exists only once
every node has been counted, and carries the time of its oldest census (``t_oldest``), so a
drain is only claimed from censuses all taken after the last delete.
"""

from __future__ import annotations

from dataclasses import dataclass

from .common import table
from .tdb_census import DbCount, parse_census

DRAIN_FRACTION = 0.01       # "drained": tombstones at most 1 % of the round's peak


@dataclass(frozen=True)
class Point:
    t: float                 # the newest census in the sum
    t_oldest: float          # the oldest census in the sum
    records: int
    tombstones: int
    bytes: int
    by_db: dict[str, DbCount]


def cluster_series(samples: list[dict], pnns: list[int], databases: list[str] | None = None) -> list[Point]:
    """Cluster-wide sums over time; only `databases` if given (None: every database seen)."""
    censuses = sorted((parse_census(s) for s in samples), key=lambda c: c.t)
    latest: dict[int, dict[str, DbCount]] = {}
    taken: dict[int, float] = {}
    points = []
    for census in censuses:
        if census.pnn not in pnns:
            continue
        counts = latest.setdefault(census.pnn, {})
        counts.update(census.dbs)
        taken[census.pnn] = census.t
        if len(taken) < len(pnns):
            continue
        by_db: dict[str, DbCount] = {}
        for node_counts in latest.values():
            for name, c in node_counts.items():
                if databases is not None and name not in databases:
                    continue
                old = by_db.get(name, DbCount(0, 0, 0))
                by_db[name] = DbCount(old.records + c.records, old.tombstones + c.tombstones,
                                      old.bytes + c.bytes)
        points.append(Point(census.t, min(taken.values()),
                            sum(c.records for c in by_db.values()),
                            sum(c.tombstones for c in by_db.values()),
                            sum(c.bytes for c in by_db.values()), by_db))
    return points


def first_drained(points: list[Point], after: float, limit: float) -> float | None:
    """Seconds from `after` to the first point counted wholly after it with tombstones <= limit."""
    for p in points:
        if p.t_oldest >= after and p.tombstones <= limit:
            return p.t - after
    return None


def round_summary(result: dict, rnd: dict, databases: list[str] | None = None) -> dict:
    """Peak, sizes and drain times of one round (cluster-wide sums over `databases`)."""
    points = cluster_series(result["samples"], result["pnns"], databases)
    start, last_delete, end = rnd["create"][0], rnd["delete"][1], rnd["settle_end"]
    window = [p for p in points if start <= p.t <= end]
    out = {"round": rnd["round"], "files": rnd["files"],
           "create_per_s": _rate(rnd["created"], rnd["create"]),
           "delete_per_s": _rate(rnd["deleted"], rnd["delete"]),
           "smb_errors": rnd["create_errors"] + rnd["delete_errors"], "recoveries": rnd.get("recoveries")}
    if not window:
        return out | {"peak_tombstones": None}
    peak = max(window, key=lambda p: (p.tombstones, p.t))
    final = window[-1]
    before = [p for p in points if p.t < start]
    initial = before[-1] if before else window[0]
    after = [p for p in points if last_delete <= p.t <= end]
    return out | {
        "peak_tombstones": peak.tombstones, "peak_records": max(p.records for p in window),
        "peak_t": peak.t - result["t0"], "bytes_at_peak": peak.bytes,
        "start_bytes": initial.bytes, "grew_bytes": final.bytes - initial.bytes,
        "end_records": final.records, "end_tombstones": final.tombstones, "end_bytes": final.bytes,
        "end_bytes_by_db": {name: c.bytes for name, c in sorted(final.by_db.items())},
        "max_bytes": max(p.bytes for p in window),
        "drain_1pct_s": first_drained(after, last_delete, DRAIN_FRACTION * peak.tombstones),
        "drain_0_s": first_drained(after, last_delete, 0),
    }


def _rate(count: int, phase: list[float]) -> float | None:
    took = phase[1] - phase[0]
    return count / took if took > 0 else None


def summaries(result: dict, databases: list[str] | None = None) -> list[dict]:
    return [round_summary(result, rnd, databases) for rnd in result.get("rounds", [])]


HEADERS = ["daemon", "round", "files", "put/s", "del/s", "SMB errs", "recov", "peak tomb", "peak recs",
           "MB @peak", "MB end", "grew MB", "tomb end", "drain 1% s", "drain 0 s"]


def summary_table(results: list[dict], databases: list[str] | None = None) -> str:
    rows = []
    for result in results:
        if "error" in result and not result.get("rounds"):
            rows.append([result["daemon"], "-", result.get("files"), *["-"] * (len(HEADERS) - 3)])
            continue
        for s in summaries(result, databases):
            rows.append([result["daemon"], s["round"], s["files"], _num(s["create_per_s"]),
                         _num(s["delete_per_s"]), s["smb_errors"], s["recoveries"], s.get("peak_tombstones"),
                         s.get("peak_records"), _mb(s.get("bytes_at_peak")), _mb(s.get("end_bytes")),
                         _mb(s.get("grew_bytes")), s.get("end_tombstones"), s.get("drain_1pct_s"), s.get("drain_0_s")])
    return table(HEADERS, rows)


def growth_table(results: list[dict]) -> str:
    """Per database: file bytes (cluster-wide) at the end of each round."""
    rows = []
    for result in results:
        ends = [s.get("end_bytes_by_db", {}) for s in summaries(result)]
        for name in sorted({n for e in ends for n in e}):
            sizes = [e.get(name) for e in ends]
            if not any(sizes):
                continue
            growth = (f"{sizes[-1] / sizes[0]:.3f}" if len(sizes) > 1 and sizes[0] and sizes[-1] is not None
                      else None)
            rows.append([result["daemon"], name, *[_mb(x) for x in sizes], growth])
    rounds = max((len(r.get("rounds", [])) for r in results), default=0)
    return table(["daemon", "database", *[f"MB end r{i + 1}" for i in range(rounds)], "last/first"], rows)


def _mb(n: int | None) -> str | None:
    return None if n is None else f"{n / 1e6:.2f}"


def _num(x: float | None) -> str | None:
    return None if x is None else f"{x:.0f}"


LABELS = {"ctdb": "real ctdbd 4.17", "pyctdbd": "pyctdbd"}


def plot(results: list[dict], out, databases: list[str] | None = None):
    """Records and tombstones (top) and file bytes (bottom) over time, one column per daemon,
    create phases shaded green and delete phases red. Returns the PNG path (None without
    matplotlib or data)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    shown = [r for r in results if r.get("samples")]
    if not shown:
        return None
    fig, axes = plt.subplots(2, len(shown), figsize=(6.4 * len(shown), 7.0), squeeze=False, sharex="col")
    for col, result in enumerate(shown):
        points = cluster_series(result["samples"], result["pnns"], databases)
        t0 = result["t0"]
        xs = [p.t - t0 for p in points]
        top, bottom = axes[0][col], axes[1][col]
        # Nearly every record is a tombstone under this churn: records drawn wide and pale below.
        top.plot(xs, [p.records for p in points], "-", linewidth=3.5, alpha=0.35, label="records")
        top.plot(xs, [p.tombstones for p in points], "-", linewidth=0.9, label="tombstones")
        # Growth since the first census: every file starts at several MB (hash table, mutexes).
        first = points[0] if points else None
        bottom.plot(xs, [(p.bytes - first.bytes) / 1e6 for p in points], "-", color="tab:purple",
                    label="all files")
        for name in databases or sorted({n for p in points for n in p.by_db}):
            base = first.by_db.get(name, DbCount(0, 0, 0)).bytes
            growth = [(p.by_db.get(name, DbCount(0, 0, 0)).bytes - base) / 1e6 for p in points]
            if max(growth, default=0) > 0:
                bottom.plot(xs, growth, "--", linewidth=0.9, label=name)
        for rnd in result["rounds"]:
            for ax in (top, bottom):
                ax.axvspan(rnd["create"][0] - t0, rnd["create"][1] - t0, color="tab:green", alpha=0.12)
                ax.axvspan(rnd["delete"][0] - t0, rnd["delete"][1] - t0, color="tab:red", alpha=0.12)
            top.annotate(f"r{rnd['round']}", (rnd["create"][0] - t0, 1.0), xycoords=("data", "axes fraction"),
                         va="top", fontsize=8)
        top.set_title(f"{LABELS.get(result['daemon'], result['daemon'])}: {result['files']} files/round, "
                      f"3 nodes")
        top.set_ylabel("records, cluster-wide")
        bottom.set_ylabel("TDB file growth since the first census (MB)")
        bottom.set_xlabel("s since the cluster was up (green: create, red: delete)")
        top.set_ylim(0, 1.3 * max((p.records for p in points), default=1) + 1)   # room for the legend
        top.legend(fontsize=7, loc="upper right", ncol=2)
        bottom.legend(fontsize=7, loc="lower right")
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
    fig.suptitle("Volatile databases under SMB file churn (sum over nodes)")
    fig.tight_layout()
    path = out / "vacuum_churn.png"
    fig.savefig(path, dpi=110)
    fig.savefig(out / "vacuum_churn.svg")
    plt.close(fig)
    return path
