"""Reports: plots (PNG and SVG) and ``report.md`` from ``results.json`` and ``history.jsonl`` only.

``make_report(dir)`` is what ``ctdblab report DIR`` and the end of every ``ctdblab run`` call.
``dir`` is a run directory, or a parent of several (e.g. ``out/`` holding ``out/pyctdbd/`` and
``out/ctdb/``), in which case one combined report compares them.  Bad or missing input raises
``ctdblab.errors.UserError`` with one line naming the file.
"""

from __future__ import annotations

from pathlib import Path

from .load import Dataset, load_datasets

__all__ = ["make_report", "load_datasets", "Dataset"]


def make_report(directory: str | Path) -> list[Path]:
    """Draw every plot the data allows and write ``report.md`` into ``directory``; return the files."""
    # Imported here so that loading results does not need matplotlib.
    from .plots import plot_failover_summary, plot_failover_timeline, plot_latency_cdf, plot_throughput
    from .soak import plot_soak_timeline
    from .summary import write_report
    from .upgrade import plot_upgrade_timeline

    out_dir = Path(directory)
    datasets = load_datasets(out_dir)
    written: list[Path] = []
    for plot in (plot_failover_timeline, plot_failover_summary, plot_latency_cdf, plot_throughput,
                 plot_soak_timeline, plot_upgrade_timeline):
        written += plot(datasets, out_dir)
    written.append(write_report(datasets, out_dir, written))
    return written
