"""``report.md``: parameters, metric tables, pyctdbd/ctdb ratios, scaling table, notes, plot links.

Every number is computed from ``results.json`` (per-run values, the checker's notes) and
``history.jsonl`` (the orchestrator's notes, op counts); see ``stats`` for the percentile
definition.  A metric that did not happen in a run is
written "did not happen", never 0, and the run's notes say why; one the daemon cannot have
(keepalived: no membership, no tickles) is written "n/a".
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Iterable

from ctdblab.stats import median

from .datachecks import data_check_section
from .load import Dataset
from .smb_resume import smb_resume_section
from .soak import soak_section
from .upgrade import upgrade_section
from .stats import (CLASSIC_TALK_GBE_MB_S, METRIC_MEANINGS, REFERENCE_DAEMONS, comparison_pairs, metric_names,
                    metric_stats, metric_title, not_applicable, ratio, role_title, roles_of, runs_with_role,
                    scaling_rows)

REPORT = "report.md"
DID_NOT_HAPPEN = "did not happen"
NOT_APPLICABLE = "n/a"   # the daemon cannot have this metric (keepalived: no membership, no tickles)
_PLOT_TITLES = {
    "failover_timeline": "Failover timeline (milestones per run)",
    "failover_summary": "Failover metrics: p50 with p90/max whiskers",
    "latency_cdf": "Client operation latency CDF",
    "throughput_vs_nodes": "Throughput vs node count",
    "soak_timeline": "Soak fault timeline (bars: faults per node; ticks: convergence; red: violations)",
    "upgrade_timeline": "Rolling upgrade timeline (phases per node; client gaps and errors per client)",
}


def seconds(value: float | None) -> str:
    return DID_NOT_HAPPEN if value is None else f"{value:.3f}"


def render_report(datasets: list[Dataset], out_dir: Path, plots: Iterable[Path] = ()) -> str:
    failover = [d for d in datasets if d.is_failover]
    scaling = [d for d in datasets if d.is_scaling]
    lines: list[str] = [f"# ctdblab report: {_title(datasets)}", ""]
    lines += _parameters(datasets, out_dir)
    if failover:
        lines += _failover_metrics(failover)
        lines += _ratios(failover)
        lines += _per_run(failover)
        lines += smb_resume_section(failover)
        lines += data_check_section(failover)
    if scaling:
        lines += _scaling(scaling)
    lines += soak_section(datasets)
    lines += upgrade_section(datasets)
    lines += _client_ops(datasets)
    lines += _notes(datasets)
    lines += _plots(list(plots), out_dir)
    return "\n".join(lines).rstrip() + "\n"


def write_report(datasets: list[Dataset], out_dir: Path, plots: Iterable[Path] = ()) -> Path:
    path = out_dir / REPORT
    path.write_text(render_report(datasets, out_dir, plots), encoding="utf-8")
    return path


def brief_lines(datasets: list[Dataset]) -> list[str]:
    """A few lines for a CI log: the headline p50 per dataset and role."""
    lines = []
    for dataset in datasets:
        if dataset.is_failover:
            for role in roles_of([dataset]):
                runs = runs_with_role(dataset, role)
                parts = []
                for metric in metric_names([dataset]):
                    stats = metric_stats(runs, metric)
                    value = (NOT_APPLICABLE if stats.n == 0 and not_applicable(runs, metric)
                             else DID_NOT_HAPPEN if stats.n == 0 else f"{stats.p50:.3f}s")
                    parts.append(f"{metric_title(metric)} {value}")
                head = f"{dataset.label} {dataset.scenario}, {role_title(role)} ({_count(len(runs), 'run')})"
                lines.append(f"{head}: " + ", ".join(parts))
        elif dataset.is_scaling:
            parts = [f"{r.client} N={r.nodes} {r.median:.1f} MB/s"
                     + (f" ({r.efficiency:.1%})" if r.efficiency is not None else "")
                     for r in scaling_rows(dataset.points)]
            lines.append(f"{dataset.label} scaling: " + ", ".join(parts))
    return lines


# -- sections ------------------------------------------------------------------------------------
def _title(datasets: list[Dataset]) -> str:
    scenarios = ", ".join(dict.fromkeys(d.scenario for d in datasets))
    labels = ", ".join(dict.fromkeys(d.label for d in datasets))
    return f"{scenarios} — {labels}"


def _name(dataset: Dataset, datasets: list[Dataset]) -> str:
    """The dataset's label, with its scenario when the report mixes scenarios."""
    if len({d.scenario for d in datasets}) > 1:
        return f"{dataset.label} {dataset.scenario}"
    return dataset.label


def _summary_mismatches(dataset: Dataset) -> list[str]:
    """Where results.json's own summary disagrees with its runs (n and max are unambiguous)."""
    found = []
    for metric, declared in dataset.declared_summary.items():
        if not isinstance(declared, dict):
            continue
        stats = metric_stats(dataset.runs, metric)
        if "n" in declared and declared["n"] != stats.n:
            found.append(f"`{metric}` n: summary {declared['n']}, runs {stats.n}")
        declared_max = declared.get("max")
        if isinstance(declared_max, (int, float)) and not isinstance(declared_max, bool) and (
                stats.max is None or abs(declared_max - stats.max) > 1e-4):  # summaries round to 4 places
            found.append(f"`{metric}` max: summary {declared_max}, runs {seconds(stats.max)}")
    return found


def _parameters(datasets: list[Dataset], out_dir: Path) -> list[str]:
    keys: list[str] = []
    for dataset in datasets:
        keys += [k for k in dataset.params if k not in ("scenario", "daemon") and k not in keys]
    header = ["dataset", "directory", "scenario", "daemon", *keys, "runs / points", "first cut (UTC)"]
    rows = []
    for dataset in datasets:
        cuts = [r.t_cut for r in dataset.runs if r.t_cut is not None]
        first_cut = (dt.datetime.fromtimestamp(min(cuts), dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
                     if cuts else "–")
        count = _count(len(dataset.points), "point") if dataset.is_scaling else _count(len(dataset.runs), "run")
        rows.append([_name(dataset, datasets), _relative(dataset.path, out_dir) or ".", dataset.scenario,
                     dataset.daemon,
                     *(_cell(dataset.params.get(k, "–")) for k in keys), count, first_cut])
    lines = ["## Parameters", "", *_table(header, rows), ""]
    warned = False
    for dataset in datasets:
        name = _name(dataset, datasets)
        lines += [f"- **{name}**: {w}" for w in dataset.warnings]
        mismatches = _summary_mismatches(dataset)
        if mismatches:
            lines.append(f"- **{name}**: results.json's summary disagrees with its runs (this report uses "
                         "the runs): " + "; ".join(mismatches))
        warned = warned or bool(dataset.warnings or mismatches)
    return lines + ([""] if warned else [])


def _failover_metrics(failover: list[Dataset]) -> list[str]:
    metrics = metric_names(failover)
    roles = roles_of(failover)
    lines = ["## Failover metrics", "",
             "Seconds after the victim was cut (survivor stall: the worst operation latency through a "
             "surviving node's IP). p50 = median; p90 by linear interpolation between closest ranks; "
             "n = runs where the metric happened; \"did not happen\" counts runs where it is null "
             "(see Notes); \"n/a\": the daemon cannot have this metric (its notes say why).", ""]
    meanings = [f"- **{metric_title(m)}** (`{m}`): {METRIC_MEANINGS[m]}" for m in metrics if m in METRIC_MEANINGS]
    lines += meanings + ([""] if meanings else [])
    header = ["metric", "dataset", "victim", "p50 (s)", "p90 (s)", "max (s)", "n", "did not happen (runs)"]
    rows = []
    for metric in metrics:
        for dataset in failover:
            dataset_roles = [r for r in roles if runs_with_role(dataset, r)]
            groups = [(role_title(r), runs_with_role(dataset, r)) for r in dataset_roles]
            if len(dataset_roles) > 1:
                groups.append(("all runs", runs_with_role(dataset, None)))
            for role_name, runs in groups:
                if not any(metric in run.metrics for run in runs):
                    continue
                stats = metric_stats(runs, metric)
                if stats.n == 0 and not_applicable(runs, metric):
                    rows.append([f"`{metric}`", dataset.label, role_name, NOT_APPLICABLE, NOT_APPLICABLE,
                                 NOT_APPLICABLE, "0", NOT_APPLICABLE])
                    continue
                rows.append([f"`{metric}`", dataset.label, role_name, seconds(stats.p50), seconds(stats.p90),
                             seconds(stats.max), str(stats.n), f"{stats.missing} of {stats.n + stats.missing}"])
    return lines + _table(header, rows) + [""]


def _ratios(failover: list[Dataset]) -> list[str]:
    return [line for other in REFERENCE_DAEMONS for line in _ratios_against(failover, other)]


def _ratios_against(failover: list[Dataset], other: str) -> list[str]:
    pairs = comparison_pairs(failover, other)
    if not pairs:
        if {d.daemon for d in failover} >= {"pyctdbd", other}:
            return [f"## pyctdbd / {other}", "",
                    f"Both daemons are present but no pyctdbd and {other} datasets share N and "
                    "tunables, so no ratio is given.", ""]
        return []
    lines = [f"## pyctdbd / {other}", "",
             f"Ratio of pyctdbd's figure to {other}'s for the same victim role (below 1: pyctdbd "
             "is faster).", ""]
    metrics = metric_names(failover)
    for ours, theirs in pairs:
        if len(pairs) > 1:
            lines += [f"### {ours.label} vs {theirs.label}", ""]
        header = ["metric", "victim", "pyctdbd p50 (s)", f"{other} p50 (s)", "ratio p50", "ratio p90",
                  "ratio max"]
        rows = []
        for metric in metrics:
            for role in roles_of([ours, theirs]):
                a_runs, b_runs = runs_with_role(ours, role), runs_with_role(theirs, role)
                a, b = metric_stats(a_runs, metric), metric_stats(b_runs, metric)
                if a.n + a.missing == 0 or b.n + b.missing == 0:
                    continue  # one side has no runs with this role
                cells = [_ratio_cell(x, y, (a_runs, b_runs), metric, other)
                         for x, y in ((a.p50, b.p50), (a.p90, b.p90), (a.max, b.max))]
                rows.append([f"`{metric}`", role_title(role), _stat_cell(a.p50, a_runs, metric),
                             _stat_cell(b.p50, b_runs, metric), *cells])
        lines += _table(header, rows) + [""]
    return lines


def _stat_cell(value: float | None, runs, metric: str) -> str:
    if value is None and not_applicable(runs, metric):
        return NOT_APPLICABLE
    return seconds(value)


def _ratio_cell(ours: float | None, theirs: float | None, runs=((), ()), metric: str = "",
                other: str = "ctdb") -> str:
    if ours is None or theirs is None:
        side, side_runs = ("pyctdbd", runs[0]) if ours is None else (other, runs[1])
        why = NOT_APPLICABLE if metric and not_applicable(side_runs, metric) else DID_NOT_HAPPEN
        return f"– ({side}: {why})"
    value = ratio(ours, theirs)
    return f"– ({other} took 0 s)" if value is None else f"{value:.3g}×"


def _per_run(failover: list[Dataset]) -> list[str]:
    metrics = metric_names(failover)
    header = ["dataset", "run", "victim", "role", *(f"{metric_title(m)} (s)" for m in metrics)]
    rows = []
    for dataset in failover:
        for run in runs_with_role(dataset, None):
            rows.append([dataset.label, str(run.run), "–" if run.victim is None else str(run.victim),
                         run.victim_role,
                         *("–" if m not in run.metrics else NOT_APPLICABLE if m in run.not_applicable
                           else seconds(run.metrics[m]) for m in metrics)])
    return ["## Per run", "", "\"–\": not measured in this run.", "", *_table(header, rows), ""]


def _scaling(scaling: list[Dataset]) -> list[str]:
    lines = ["## Throughput scaling", "",
             "Aggregate read throughput (MB/s = 10⁶ bytes/s), median over repeats; ideal = N × the "
             "one-node median of the same client; efficiency = median ÷ ideal.", ""]
    for dataset in scaling:
        rows = scaling_rows(dataset.points)
        bw = dataset.params.get("bw_mbit")
        has_bw = isinstance(bw, (int, float)) and bw > 0
        header = ["client", "nodes", "MB/s (median)", "min..max", "n", "ideal MB/s", "efficiency"]
        if has_bw:
            header.append(f"of line rate (N × {bw:g} Mbit/s)")
        table_rows = []
        for r in rows:
            row = [r.client, str(r.nodes), f"{r.median:.1f}", f"{r.low:.1f}..{r.high:.1f}", str(r.n),
                   "– (no 1-node point)" if r.ideal is None else f"{r.ideal:.1f}",
                   "–" if r.efficiency is None else f"{r.efficiency:.1%}"]
            if has_bw:
                row.append(f"{r.median / (r.nodes * bw / 8):.1%}")
            table_rows.append(row)
        if len(scaling) > 1:
            lines += [f"### {dataset.label}", ""]
        lines += _table(header, table_rows) + [""]
    reference = " / ".join(f"{v:g}" for v in CLASSIC_TALK_GBE_MB_S)
    efficiency = " / ".join(f"{v / (n * CLASSIC_TALK_GBE_MB_S[0]):.0%}"
                            for n, v in enumerate(CLASSIC_TALK_GBE_MB_S, 1))
    lines += [f"Reference for shape only (2008 CTDB talk, 1–4 nodes on GbE, other hardware): {reference} MB/s, "
              f"efficiency {efficiency}.", ""]
    return lines


def _client_ops(datasets: list[Dataset]) -> list[str]:
    rows = []
    for dataset in datasets:
        name = _name(dataset, datasets)
        for role in sorted({op.role for op in dataset.ops}):
            ops = [op for op in dataset.ops if op.role == role]
            latencies = [op.latency_s for op in ops]
            failed = [op for op in ops if not op.ok]
            errors = sorted({op.error for op in failed if op.error})
            rows.append([name, role, str(len(ops)), str(len(failed)),
                         f"{median(latencies):.3f}", f"{max(latencies):.3f}",
                         "; ".join(errors[:3]) + (" …" if len(errors) > 3 else "") or "–"])
    if not rows:
        return []
    header = ["dataset", "target IP role", "ops", "failed", "median latency (s)", "max latency (s)",
              "errors seen"]
    return ["## Client operations", "", *_table(header, rows), ""]


def _notes(datasets: list[Dataset]) -> list[str]:
    lines = ["## Notes", ""]
    wrote = False
    for dataset in datasets:
        name = _name(dataset, datasets)
        runs = {run.run: run for run in dataset.runs}
        for run in runs_with_role(dataset, None):
            missing = [m for m, v in run.metrics.items() if v is None and m not in run.not_applicable]
            # The history's notes (what the orchestrator saw), then the checker's verdicts.
            notes = [n.text for n in dataset.notes if n.run == run.run] + list(run.notes)
            if missing:
                lines.append(f"- **{name}, run {run.run}** ({run.victim_role} victim): "
                             + ", ".join(f"`{m}`" for m in missing) + f" {DID_NOT_HAPPEN}."
                             + (" Notes: " + " / ".join(notes) if notes else " No note in the history says why."))
                wrote = True
            elif notes:
                lines.append(f"- **{name}, run {run.run}**: " + " / ".join(notes))
                wrote = True
        other = [n for n in dataset.notes if n.run not in runs]
        for note in other:
            where = "" if note.run is None else f", run {note.run}"
            lines.append(f"- **{name}{where}**: {note.text}")
            wrote = True
    if not wrote:
        lines.append("No metric is null and the histories hold no notes.")
    return lines + [""]


def _plots(plots: list[Path], out_dir: Path) -> list[str]:
    pngs = [p for p in plots if p.suffix == ".png"]
    if not pngs:
        return ["## Plots", "", "No plots were drawn.", ""]
    lines = ["## Plots", ""]
    for png in pngs:
        title = _PLOT_TITLES.get(png.stem, png.stem)
        svg = png.with_suffix(".svg")
        link = _relative(png, out_dir)
        svg_link = f" ([SVG]({_relative(svg, out_dir)}))" if svg in plots else ""
        lines += [f"### {title}", "", f"![{title}]({link})", "", f"[PNG]({link}){svg_link}", ""]
    return lines


# -- markdown helpers ----------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return ["(nothing to tabulate)"]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_escape(c) for c in row) + " |" for row in rows]
    return out


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _cell(value: object) -> str:
    return "null" if value is None else str(value)


def _relative(path: Path, base: Path) -> str:
    rel = os.path.relpath(path, base)
    return "" if rel == "." else rel.replace(os.sep, "/")
