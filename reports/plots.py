"""The report's figures, each written as PNG (130 dpi) and SVG.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, never through
pyplot: no display, no global backend switch, nothing left open between calls.  Every function
takes the loaded datasets and an output directory and returns the files it wrote (none when the
datasets hold nothing it could draw).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Iterable

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from .load import Dataset
from .stats import (CLASSIC_TALK_GBE_MB_S, DURATION_METRICS, metric_names, metric_stats, metric_title,
                    not_applicable, role_title, roles_of, runs_with_role, scaling_rows, shortest_watch)

PNG_DPI = 130
TIMELINE = "failover_timeline"
LATENCY_CDF = "latency_cdf"
FAILOVER_SUMMARY = "failover_summary"
THROUGHPUT = "throughput_vs_nodes"

_STYLE = {
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.labelsize": 10.5,
    "legend.fontsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.6,
    "svg.hashsalt": "ctdblab",  # stable element ids, so re-drawn SVGs diff cleanly
    "svg.fonttype": "none",  # text stays text in the SVG
}

# Milestones keep one colour and marker in every figure.
_METRIC_STYLE = {
    "detect_s": ("#7b3fa0", "o"),
    "takeover_s": ("#1f77b4", "s"),
    "ping_s": ("#2ca02c", "^"),
    "reset_s": ("#17becf", "v"),
    "smb_resumed_s": ("#d62728", "D"),
    "survivor_stall_s": ("#ff7f0e", "|"),
    "rejoin_s": ("#8c564b", "P"),
    "failback_s": ("#e377c2", "X"),
}
_EXTRA_METRIC_STYLES = [("#7f7f7f", "*"), ("#bcbd22", "h"), ("#393b79", "p"), ("#637939", "8")]
_DAEMON_COLORS = {"pyctdbd": "#1f77b4", "ctdb": "#e6550d", "keepalived": "#2ca02c"}
_OTHER_COLORS = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
                 "#6baed6", "#fd8d3c", "#74c476"]
_ROLE_LINESTYLES = {"survivor": "-", "victim": "--"}


def metric_style(metric: str, metrics: list[str]) -> tuple[str, str]:
    if metric in _METRIC_STYLE:
        return _METRIC_STYLE[metric]
    extras = [m for m in metrics if m not in _METRIC_STYLE]
    return _EXTRA_METRIC_STYLES[extras.index(metric) % len(_EXTRA_METRIC_STYLES)]


def series_colors(datasets: Iterable[Dataset]) -> dict[str, str]:
    """A colour per dataset label: pyctdbd blue and ctdb orange first, the rest from a palette."""
    colors: dict[str, str] = {}
    spare = iter(_OTHER_COLORS * 3)
    for dataset in datasets:
        if dataset.label in colors:
            continue
        wanted = _DAEMON_COLORS.get(dataset.daemon)
        colors[dataset.label] = wanted if wanted and wanted not in colors.values() else next(spare)
    return colors


def daemon_colors(datasets: Iterable[Dataset]) -> dict[str, str]:
    """A colour per dataset label, the same for every dataset of one daemon (a benchmark keeps
    each victim role of a daemon in its own dataset)."""
    by_daemon: dict[str, str] = {}
    spare = iter(c for c in _OTHER_COLORS * 3 if c not in _DAEMON_COLORS.values())
    colors: dict[str, str] = {}
    for dataset in datasets:
        if dataset.daemon not in by_daemon:
            by_daemon[dataset.daemon] = _DAEMON_COLORS.get(dataset.daemon) or next(spare)
        colors[dataset.label] = by_daemon[dataset.daemon]
    return colors


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    FigureCanvasAgg(fig)
    png, svg = out_dir / f"{stem}.png", out_dir / f"{stem}.svg"
    with matplotlib.rc_context(_STYLE):
        fig.savefig(png, format="png", dpi=PNG_DPI)
        # Keep the constrained layout of the PNG for the SVG instead of solving it again (slow).
        fig.set_layout_engine("none")
        fig.savefig(svg, format="svg", metadata={"Date": None})
    return [png, svg]


def _link_cap(params: dict) -> str:
    bw = params.get("bw_mbit")
    return "links uncapped" if bw is None else f"{bw:g} Mbit/s per node"


def _params_line(datasets: list[Dataset], width: int = 110) -> str:
    """`label, label: N=3, tunables …; label: …` — datasets with the same parameters share one
    entry — wrapped to `width` characters so a long comparison is not clipped."""
    groups: dict[str, list[str]] = {}
    for dataset in datasets:
        params = [f"N={dataset.params['nodes']}" if "nodes" in dataset.params else "",
                  f"tunables {dataset.params['tunables']}" if "tunables" in dataset.params else "",
                  _link_cap(dataset.params) if "bw_mbit" in dataset.params else ""]
        groups.setdefault(", ".join(p for p in params if p), []).append(dataset.label)
    parts = [f"{', '.join(labels)}: {params}" if params else ", ".join(labels)
             for params, labels in groups.items()]
    return textwrap.fill("; ".join(parts), width, break_on_hyphens=False)


# -- failover timeline ---------------------------------------------------------------------------
def plot_failover_timeline(datasets: list[Dataset], out_dir: Path) -> list[Path]:
    """One row per run: its milestones in seconds after the cut, rows grouped by daemon and role."""
    failover = [d for d in datasets if d.is_failover]
    if not failover:
        return []
    metrics = metric_names(failover)
    instants = [m for m in metrics if m not in DURATION_METRICS]
    rows: list[tuple[str, Dataset | None, object]] = []
    for dataset in failover:
        for role in roles_of([dataset]):
            rows.append((f"{dataset.label} — {role_title(role)}", None, None))
            rows.extend(("", dataset, run) for run in runs_with_role(dataset, role))

    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(11.5, 2.4 + 0.36 * len(rows)), layout="constrained")
        ax = fig.add_subplot()
        x_end = _timeline_extent(rows, metrics)
        text_pad = _TEXT_PAD_FRACTION * x_end
        fault_names: set[str] = set()
        points: dict[str, list[tuple[float, float]]] = {}
        fault_points: list[tuple[float, float]] = []
        any_stall = False
        tick_labels: list[str] = []
        header_positions: list[float] = []
        for index, (header, dataset, run) in enumerate(rows):
            y = len(rows) - 1 - index
            if dataset is None:
                tick_labels.append(header)
                header_positions.append(y)
                continue
            tick_labels.append(f"run {run.run} · victim node {run.victim if run.victim is not None else '?'}")
            values = {m: run.metrics[m] for m in instants if run.metrics.get(m) is not None}
            ax.plot([0, max(values.values(), default=0.0)], [y, y], color="0.7", linewidth=1, zorder=1)
            _draw_phases(ax, y, values)
            stall = run.metrics.get("survivor_stall_s")
            if stall is not None:
                any_stall = True
                ax.barh(y - 0.3, stall, left=0, height=0.13, color=_METRIC_STYLE["survivor_stall_s"][0],
                        alpha=0.75, zorder=1, linewidth=0)
            for metric, value in values.items():
                points.setdefault(metric, []).append((value, y))
            for name, offset in _other_faults(dataset, run):
                fault_names.add(name)
                fault_points.append((offset, y))
            resumed = _client_resumed(values)
            if resumed is not None:
                metric, value = resumed
                ax.annotate(f"{metric_title(metric)} {value:.2f} s", (value, y), textcoords="offset points",
                            xytext=(0, 7), ha="left", va="bottom", fontsize=7.5, color="0.2")
            missing = _missing_text(run, metrics)
            if missing:
                ax.text(_row_end(dataset, run) + text_pad, y, missing, va="center", ha="left", fontsize=8.5,
                        color="#a00000", style="italic")
        # One scatter per milestone, not per point: a few collections draw much faster than hundreds.
        for metric, xy in points.items():
            color, marker = metric_style(metric, metrics)
            ax.scatter(*zip(*xy), s=48, marker=marker, color=color, edgecolors="white", linewidths=0.6,
                       zorder=4)
        if fault_points:
            ax.scatter(*zip(*fault_points), s=90, marker="|", color="0.25", zorder=3)
        for y in header_positions:
            if y < len(rows) - 1:
                ax.axhline(y + 0.5, color="0.55", linewidth=0.8, linestyle="-")
        ax.axvline(0, color="black", linewidth=1.2, zorder=2)
        ax.set_yticks(range(len(rows) - 1, -1, -1), tick_labels)
        for tick, (header, dataset, _) in zip(ax.get_yticklabels(), rows):
            if dataset is None:
                tick.set_fontweight("bold")
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_xlim(-0.02 * x_end, x_end)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("seconds after the victim was cut (t = 0: power off)")
        fig.suptitle("Failover timeline: when each milestone happened, per run")
        ax.set_title(_params_line(failover), fontsize=9, color="0.3")
        handles = [Line2D([], [], linestyle="none", marker=metric_style(m, metrics)[1],
                          color=metric_style(m, metrics)[0], markersize=7, label=metric_title(m))
                   for m in instants]
        if any_stall:
            handles.append(Patch(color=_METRIC_STYLE["survivor_stall_s"][0], alpha=0.75,
                                 label="survivor stall: worst op via a survivor's IP (duration)"))
        handles.extend(Line2D([], [], linestyle="none", marker="|", markersize=10, color="0.25",
                              label=f"fault: {name}") for name in sorted(fault_names))
        handles.append(Line2D([], [], color="#999999", linewidth=6, alpha=0.5,
                              label="band: phase ending at the milestone of its colour"))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
        return save_figure(fig, out_dir, TIMELINE)


_TEXT_AXES_FRACTION_PER_CHAR = 0.0088  # 8.5 pt italic on an ~9 inch wide axes
_TEXT_PAD_FRACTION = 0.012


def _missing_text(run, metrics: list[str]) -> str:
    missing = [metric_title(m) for m in metrics if m in run.metrics and run.metrics[m] is None
               and m not in run.not_applicable]
    na = [metric_title(m) for m in metrics if m in run.not_applicable]
    parts = (["did not happen: " + ", ".join(missing)] if missing else []) + \
        (["n/a: " + ", ".join(na)] if na else [])
    return "; ".join(parts)


def _row_end(dataset: Dataset, run) -> float:
    return max([0.0, *(v for v in run.metrics.values() if v is not None),
                *(offset for _, offset in _other_faults(dataset, run))])


def _timeline_extent(rows: list[tuple[str, Dataset | None, object]], metrics: list[str]) -> float:
    """Right edge of the timeline: the latest thing drawn, and room for each 'did not happen' text."""
    extent = 0.0
    for _, dataset, run in rows:
        if dataset is None:
            continue
        end = _row_end(dataset, run)
        extent = max(extent, end * 1.06)
        text = _missing_text(run, metrics)
        if text:  # end + pad·x + len·c·x <= x
            room = max(0.3, 1 - _TEXT_PAD_FRACTION - len(text) * _TEXT_AXES_FRACTION_PER_CHAR)
            extent = max(extent, end / room)  # a very long text may run past the axes; never a crash
    return extent or 1.0


def _client_resumed(values: dict[str, float]) -> tuple[str, float] | None:
    """The instant clients were served again: SMB resumed, else the latest of ping/reset/takeover."""
    if "smb_resumed_s" in values:
        return "smb_resumed_s", values["smb_resumed_s"]
    present = [(values[m], m) for m in ("ping_s", "reset_s", "takeover_s") if m in values]
    if not present:
        return None
    value, metric = max(present)
    return metric, value


def _draw_phases(ax, y: float, values: dict[str, float]) -> None:
    """Thick translucent segments for the failover chain, each in the colour of where it ends."""
    start = 0.0
    for metric in ("detect_s", "takeover_s", "smb_resumed_s"):
        end = values.get(metric)
        if end is None or end < start:
            continue
        ax.plot([start, end], [y, y], color=_METRIC_STYLE[metric][0], linewidth=7, alpha=0.28,
                solid_capstyle="butt", zorder=2)
        start = end


def _other_faults(dataset: Dataset, run) -> list[tuple[str, float]]:
    """Faults of this run other than the cut itself (e.g. power_on), in seconds after the cut."""
    if run.t_cut is None:
        return []
    found = []
    for fault in dataset.faults:
        if fault.run != run.run or fault.phase not in (None, "begin"):
            continue
        offset = fault.t - run.t_cut
        if offset > 0.05:  # the power_off that *is* the cut sits at ~0
            found.append((fault.fault, offset))
    return found


# -- latency CDF ---------------------------------------------------------------------------------
def plot_latency_cdf(datasets: list[Dataset], out_dir: Path) -> list[Path]:
    """CDF (and tail) of client operation latencies, by daemon and by survivor/victim IP."""
    series = []
    for dataset in datasets:
        roles = sorted({op.role for op in dataset.ops}, key=lambda r: (r not in _ROLE_LINESTYLES, r))
        for role in roles:
            ops = [op for op in dataset.ops if op.role == role]
            series.append((dataset, role, sorted(op.latency_s for op in ops), sum(not op.ok for op in ops)))
    if not series:
        return []
    colors = series_colors(d for d, *_ in series)
    every = [v for *_, values, _ in series for v in values]
    positive = [v for v in every if v > 0]
    log_x = bool(positive) and max(positive) / min(positive) >= 100
    floor = min(positive) if positive else 1e-3

    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(12.5, 5.4), layout="constrained")
        ax_cdf, ax_tail = fig.subplots(1, 2)
        for dataset, role, values, fails in series:
            n = len(values)
            xs = [max(v, floor) for v in values] if log_x else values
            label = f"{dataset.label} · {role} IP (n={n}, {fails} failed)"
            style = dict(color=colors[dataset.label], linestyle=_ROLE_LINESTYLES.get(role, ":"),
                         linewidth=1.8, where="post")
            ranks = _plotted_ranks(n)
            ax_cdf.step([xs[0], *(xs[i] for i in ranks)], [0.0, *((i + 1) / n for i in ranks)], label=label,
                        **style)
            ax_tail.step([xs[i] for i in ranks], [(n - i) / n for i in ranks], label=label, **style)
        for ax in (ax_cdf, ax_tail):
            if log_x:
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_xlabel("operation latency (s)" + (", log scale" if log_x else ""))
        ax_cdf.set_ylabel("fraction of operations ≤ latency")
        ax_cdf.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax_cdf.set_ylim(0, 1.02)
        ax_cdf.set_title("Latency CDF (ok and failed ops)")
        ax_tail.set_yscale("log")
        ax_tail.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v * 100:g} %"))
        ax_tail.set_ylabel("fraction of operations ≥ latency (log)")
        ax_tail.set_title("Tail: the slow operations around a failover")
        ax_cdf.legend(loc="lower right")
        fig.suptitle("Client operation latency by daemon and target IP (survivor vs victim)")
        return save_figure(fig, out_dir, LATENCY_CDF)


_CDF_BODY_POINTS = 1500
_CDF_TAIL_POINTS = 500


def _plotted_ranks(n: int) -> list[int]:
    """Ranks to draw: all of them for small samples; else an even sample of the body plus every one
    of the slowest operations (the tail is what a failover changes), keeping the SVG small."""
    if n <= _CDF_BODY_POINTS + _CDF_TAIL_POINTS:
        return list(range(n))
    body = {round(k * (n - 1) / (_CDF_BODY_POINTS - 1)) for k in range(_CDF_BODY_POINTS)}
    return sorted(body | set(range(n - _CDF_TAIL_POINTS, n)))


# -- failover summary bars -----------------------------------------------------------------------
def plot_failover_summary(datasets: list[Dataset], out_dir: Path, metrics: Iterable[str] | None = None,
                          stem: str = FAILOVER_SUMMARY, by_daemon: bool = False) -> list[Path]:
    """p50 bars with p90 and max whiskers, per metric and daemon side by side; one panel per victim
    role.  ``metrics`` narrows it (a benchmark's comparison, without the long rejoin bars);
    ``by_daemon`` colours and labels the bars by daemon (one dataset per daemon and role)."""
    failover = [d for d in datasets if d.is_failover]
    if not failover:
        return []
    metrics = [m for m in metric_names(failover) if metrics is None or m in metrics]
    roles = roles_of(failover)
    colors = daemon_colors(failover) if by_daemon else series_colors(failover)
    # A panel shows only the datasets with runs of its role (a benchmark puts leader-victim and
    # non-leader-victim runs in separate datasets: empty slots would halve every bar).
    per_role = {role: [d for d in failover if runs_with_role(d, role)] or failover for role in roles}
    most = max(len(present) for present in per_role.values())

    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(max(9.0, 1.2 + 1.25 * len(metrics) * max(1, most / 2)),
                              1.2 + 3.7 * len(roles)), layout="constrained")
        axes = fig.subplots(len(roles), 1, squeeze=False)[:, 0]
        for ax, role in zip(axes, roles):
            top = 0.0
            present = per_role[role]
            width = 0.8 / len(present)
            for index, dataset in enumerate(present):
                runs = runs_with_role(dataset, role)
                offset = (index - (len(present) - 1) / 2) * width
                for position, metric in enumerate(metrics):
                    x = position + offset
                    stats = metric_stats(runs, metric)
                    if stats.n == 0:
                        why = missing_bar_text(runs, metric)
                        ax.text(x, 0, why, rotation=90, ha="center", va="bottom", fontsize=7.5,
                                color="#a00000", style="italic")
                        continue
                    ax.bar(x, stats.p50, width=width * 0.92, color=colors[dataset.label], alpha=0.85)
                    ax.vlines(x, stats.p50, stats.p90, color="black", linewidth=1.4)
                    ax.vlines(x, stats.p90, stats.max, color="black", linewidth=0.9, linestyle=":")
                    ax.scatter([x], [stats.p90], marker="_", s=110, color="black", linewidths=1.4, zorder=3)
                    ax.scatter([x], [stats.max], marker="v", s=22, color="black", zorder=3)
                    ax.annotate(f"{stats.p50:.2f}", (x, stats.max), textcoords="offset points",
                                xytext=(0, 4), ha="center", fontsize=7.5)
                    if stats.missing:
                        ax.annotate(f"{stats.n} of {stats.n + stats.missing} runs", (x, stats.max),
                                    textcoords="offset points", xytext=(0, 14), ha="center",
                                    fontsize=7.5, color="#a00000", style="italic")
                    top = max(top, stats.max)
            ax.set_xticks(range(len(metrics)), [metric_title(m) for m in metrics])
            ax.set_xlim(-0.6, len(metrics) - 0.4)
            ax.set_ylim(0, (top or 1.0) * 1.22)
            ax.set_ylabel("seconds after the cut")
            absent = dict.fromkeys(d.daemon if by_daemon else d.label for d in failover
                                   if d not in present)
            absent = [n for n in absent if not by_daemon or n not in {d.daemon for d in present}]
            ax.set_title(role_title(role).capitalize()
                         + (f" (no runs: {', '.join(absent)})" if absent else ""))
            ax.grid(axis="x", visible=False)
        legend: dict[str, str] = {}     # legend entry -> colour, one per daemon with by_daemon
        for d in failover:
            legend.setdefault(d.daemon if by_daemon else d.label, colors[d.label])
        handles = [Patch(color=color, alpha=0.85, label=f"{name}: p50 (bar, value above)")
                   for name, color in legend.items()]
        handles += [Line2D([], [], color="black", marker="_", markersize=10, linewidth=1.4, label="p90"),
                    Line2D([], [], color="black", marker="v", linestyle=":", markersize=5, label="max")]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
        fig.suptitle("Failover metrics: p50 with p90 and max whiskers (survivor stall is a duration)")
        return save_figure(fig, out_dir, stem)


def missing_bar_text(runs: list, metric: str) -> str:
    """What stands where a bar would: no runs, n/a (the daemon cannot have it), or never."""
    if not runs:
        return "no runs"
    if not_applicable(runs, metric):
        return "n/a"
    watched = shortest_watch(runs)
    return "did not happen" if watched is None else f"never within {watched:.0f} s"


# -- throughput vs N -----------------------------------------------------------------------------
def plot_throughput(datasets: list[Dataset], out_dir: Path) -> list[Path]:
    """Aggregate MB/s against node count per client tool, with ideal-linear and reference lines."""
    scaling = [d for d in datasets if d.is_scaling and d.points]
    if not scaling:
        return []
    several = len(scaling) > 1
    series_count = sum(len({p.client for p in d.points}) for d in scaling)
    palette = iter(["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"] * 4)
    reference_nodes = list(range(1, len(CLASSIC_TALK_GBE_MB_S) + 1))
    reference_efficiency = [v / (n * CLASSIC_TALK_GBE_MB_S[0])
                            for n, v in zip(reference_nodes, CLASSIC_TALK_GBE_MB_S)]
    reference_label = "reference: 2008 CTDB talk, GbE (other hardware, not measured here)"

    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(13, 5.6), layout="constrained")
        ax_mb, ax_eff = fig.subplots(1, 2)
        highest = 0.0
        efficiencies: list[float] = []
        max_nodes = max(p.nodes for d in scaling for p in d.points)
        for dataset in scaling:
            rows = scaling_rows(dataset.points)
            for client in dict.fromkeys(r.client for r in rows):
                mine = [r for r in rows if r.client == client]
                color = next(palette)
                name = f"{dataset.label} · {client}" if several else client
                nodes = [r.nodes for r in mine]
                medians = [r.median for r in mine]
                ax_mb.errorbar(nodes, medians, yerr=[[r.median - r.low for r in mine],
                                                     [r.high - r.median for r in mine]],
                               color=color, marker="o", linewidth=2, capsize=3,
                               label=f"{name}: measured (median, min–max)")
                highest = max(highest, *(r.high for r in mine))
                with_ideal = [r for r in mine if r.ideal is not None]
                if with_ideal:
                    base = with_ideal[0].ideal / with_ideal[0].nodes
                    ax_mb.plot([r.nodes for r in with_ideal], [r.ideal for r in with_ideal], color=color,
                               linestyle="--", linewidth=1.2, alpha=0.8,
                               label=f"{name}: ideal linear, N × {base:.1f} MB/s")
                    highest = max(highest, *(r.ideal for r in with_ideal))
                    ax_eff.plot([r.nodes for r in with_ideal], [r.efficiency for r in with_ideal],
                                color=color, marker="o", linewidth=2, label=name)
                    efficiencies += [r.efficiency for r in with_ideal]
                    if series_count == 1:  # several series' labels collide; the report has the table
                        for r in with_ideal:
                            ax_eff.annotate(f"{r.efficiency:.1%}", (r.nodes, r.efficiency),
                                            textcoords="offset points", xytext=(0, 8), ha="center",
                                            fontsize=8, color=color)
            bw = dataset.params.get("bw_mbit")
            if isinstance(bw, (int, float)) and bw > 0:
                line_nodes = list(range(1, max_nodes + 1))
                highest = max(highest, max_nodes * bw / 8)
                ax_mb.plot(line_nodes, [n * bw / 8 for n in line_nodes], color="0.55", linestyle=":",
                           linewidth=1.2, label=f"line rate, N × {bw:g} Mbit/s" + (
                               f" ({dataset.label})" if several else ""))
        first_base = next((r.ideal / r.nodes for d in scaling for r in scaling_rows(d.points)
                           if r.ideal is not None), None)
        _reference_series(ax_mb, reference_nodes, highest, first_base, reference_label)
        ax_eff.plot(reference_nodes, reference_efficiency, color="0.35", marker="s", markerfacecolor="none",
                    linestyle="-.", linewidth=1.2, label=reference_label)
        ax_eff.axhline(1.0, color="0.55", linestyle="--", linewidth=1, label="ideal linear (100 %)")

        for ax in (ax_mb, ax_eff):
            ax.set_xlabel("nodes serving (N)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_mb.set_ylabel("aggregate read throughput (MB/s, 10⁶ B/s)")
        ax_mb.set_title("Aggregate SMB read throughput vs nodes")
        handles, labels = ax_mb.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: (
            [": measured", ": ideal", "line rate", "reference"].index(
                next(k for k in (": measured", ": ideal", "line rate", "reference") if k in labels[i])), i))
        ax_mb.legend([handles[i] for i in order], [labels[i] for i in order], loc="best", fontsize=8)
        ax_eff.set_ylabel("efficiency: measured ÷ (N × one-node figure)")
        ax_eff.yaxis.set_major_formatter(PercentFormatter(1.0))
        low = min([*reference_efficiency, *efficiencies])
        ax_eff.set_ylim(max(0.0, low - 0.1), max([1.12, *(e + 0.06 for e in efficiencies)]))
        ax_eff.set_title("Scaling efficiency")
        if not efficiencies:
            ax_eff.text(0.5, 0.5, "no one-node measurement:\nefficiency needs the N = 1 figure",
                        transform=ax_eff.transAxes, ha="center", va="center", color="#a00000", style="italic",
                        bbox=dict(facecolor="white", edgecolor="none", alpha=0.9))
        ax_eff.legend(loc="lower left", fontsize=8)
        fig.suptitle("Throughput scaling — " + _params_line(scaling))
        return save_figure(fig, out_dir, THROUGHPUT)


def _reference_series(ax, nodes: list[int], measured_top: float, base: float | None, label: str) -> None:
    """The 2008 talk's figures, for shape: on the same axis when the scales are alike, else on a
    right-hand axis scaled so that its one-node figure sits on ours (then the gap to our ideal line
    is the talk's loss of efficiency)."""
    style = dict(color="0.35", marker="s", markerfacecolor="none", linestyle="-.", linewidth=1.2)
    reference = CLASSIC_TALK_GBE_MB_S
    if not base or 1 / 3 <= max(reference) / measured_top <= 3:
        ax.plot(nodes, reference, label=label, **style)
        ax.set_ylim(0, max(measured_top, *reference) * 1.08)
        return
    top = max(measured_top, max(reference) * base / reference[0]) * 1.08
    ax.set_ylim(0, top)
    right = ax.twinx()
    right.plot(nodes, reference, **style)
    right.set_ylim(0, top * reference[0] / base)
    right.set_ylabel("2008 talk reference (MB/s on GbE), right axis", color="0.35")
    right.tick_params(axis="y", colors="0.35")
    right.grid(False)
    # The legend lives on the left axis; give it an entry for the right-axis series.
    ax.plot([], [], label=label + ",\nright axis, scaled so its 1-node figure meets ours", **style)
