"""The rolling upgrade's part of the report: a timeline plot and a section of ``report.md``.

Both read only what the run left: the checker's verdicts in ``results.json`` (``checks``: per
step its phases, versions, worst interruption and client errors) and the history (the phase
events and the clients' operations, for the plot).  Nothing here re-checks anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .load import Dataset

UPGRADE_TIMELINE = "upgrade_timeline"
SHOWN_GAP_S = 0.3          # client gaps drawn in the plot (shorter ones are the clients' own pace)
ERRORS_LISTED = 8          # per step, in report.md (results.json keeps up to 50)

_PHASE_COLORS = {"disable": "#ff7f0e", "stop": "#7f7f7f", "install": "#8c564b",
                 "start": "#1f77b4", "enable": "#2ca02c", "settle": "#c7e9c0"}


def upgrade_datasets(datasets: list[Dataset]) -> list[Dataset]:
    return [d for d in datasets if d.scenario == "upgrade" and isinstance(d.raw.get("checks"), dict)]


def _phase_spans(events: list[dict[str, Any]]) -> list[tuple[int, str, float, float, bool]]:
    """(node, phase, begin, end, failed) of every phase in the history."""
    open_: dict[tuple[int, str], float] = {}
    spans = []
    for e in events:
        if e.get("kind") != "upgrade" or e.get("phase") == "step":
            continue
        key = (e.get("node"), e.get("phase"))
        if e.get("edge") == "begin":
            open_[key] = e["t"]
        elif key in open_:
            spans.append((key[0], key[1], open_.pop(key), e["t"], e.get("edge") == "fail"))
    return spans


def _client_timeline(events: list[dict[str, Any]]):
    """Per client: its success times and its failures (t, recovered later?)."""
    oks: dict[str, list[float]] = {}
    fails: dict[str, list[float]] = {}
    for e in events:
        if e.get("kind") != "op" or e.get("role") != "client":
            continue
        process = str(e.get("process"))
        if e.get("type") == "ok":
            oks.setdefault(process, []).append(e["t"])
        elif e.get("type") == "fail" and not e.get("aborted"):
            fails.setdefault(process, []).append(e["t"])
    return oks, fails


def plot_upgrade_timeline(datasets: list[Dataset], out_dir: Path) -> list[Path]:
    """Per dataset: one row per node with its phases, one row per client with every gap between
    successes longer than SHOWN_GAP_S (red bar) and its errors (x: absorbed by a retry, red X:
    never recovered); each step labelled with its worst interruption and error count."""
    upgrades = upgrade_datasets(datasets)
    if not upgrades:
        return []
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from .plots import save_figure

    rows_per = [len(_client_timeline(d.events)[0]) + int(d.params.get("nodes") or 1) for d in upgrades]
    fig = Figure(figsize=(13, 1.5 + 0.35 * sum(rows_per) + 0.8 * len(upgrades)), layout="constrained")
    axes = fig.subplots(len(upgrades), 1, squeeze=False)[:, 0]
    for ax, dataset in zip(axes, upgrades):
        checks = dataset.raw["checks"]
        spans = _phase_spans(dataset.events)
        oks, fails = _client_timeline(dataset.events)
        t0 = checks.get("observation", {}).get("begin") or min((s[2] for s in spans), default=0.0)
        end = checks.get("observation", {}).get("end") or t0
        nodes = int(dataset.params.get("nodes") or 1)
        labels = [f"node {p}" for p in range(nodes)]
        for node, phase, b, e, failed in spans:
            ax.barh(node, max(e - b, 0.05), left=b - t0, height=0.6,
                    color=_PHASE_COLORS.get(phase, "#bcbd22"),
                    edgecolor="red" if failed else "none", linewidth=1.5 if failed else 0)
        for row, process in enumerate(sorted(oks), start=nodes):
            labels.append(process.replace("smb-", ""))
            times = sorted(oks[process])
            ax.plot([times[0] - t0, times[-1] - t0], [row, row], color="#dddddd", linewidth=1)
            for a, b in zip(times, times[1:] + ([end] if end > times[-1] else [])):
                if b - a >= SHOWN_GAP_S:
                    ax.barh(row, b - a, left=a - t0, height=0.5, color="#d62728")
            for t in fails.get(process, []):
                recovered = any(x > t for x in times)
                ax.plot(t - t0, row, marker="x", markersize=6, markeredgewidth=1.5,
                        color="black" if recovered else "red")
        for step in checks.get("steps", []):
            if step.get("begin") is None:
                continue
            worst = step.get("worst_interruption_s")
            text = (f"step {step['index']}: worst {'-' if worst is None else f'{worst:.2f}'} s, "
                    f"{step['errors']} err ({step['errors_unrecovered']} unrec.)")
            ax.text(step["begin"] - t0, -0.75, text, fontsize=7, va="bottom",
                    color="black" if step.get("target_met") else "red")
            ax.axvline(step["begin"] - t0, color="#999999", linewidth=0.6, linestyle=":")
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_ylim(len(labels) - 0.4, -1.1)
        builds = {b.get("label"): b.get("version") for b in dataset.raw.get("builds", [])}
        ax.set_title(f"{dataset.label}: rolling upgrade {builds.get('from')} -> {builds.get('to')}, "
                     f"{nodes} nodes, {'passed' if checks.get('passed') else 'targets missed'}")
        ax.set_xlabel("seconds since the clients' first success")
    handles = [Patch(color=c, label=k) for k, c in _PHASE_COLORS.items()]
    handles.append(Patch(color="#d62728", label=f"client gap >= {SHOWN_GAP_S:g} s"))
    handles.append(Patch(color="black", label="x error absorbed by retry"))
    handles.append(Patch(color="red", label="x error never recovered"))
    fig.legend(handles=handles, loc="outside lower center", ncols=5)
    return save_figure(fig, out_dir, UPGRADE_TIMELINE)


def upgrade_section(datasets: list[Dataset]) -> list[str]:
    """report.md: per step its versions, phases, worst interruption and client errors."""
    lines: list[str] = []
    for dataset in upgrade_datasets(datasets):
        checks = dataset.raw["checks"]
        targets = checks.get("targets", {})
        builds = {b.get("label"): b for b in dataset.raw.get("builds", [])}
        frm, to = builds.get("from", {}), builds.get("to", {})
        lines += [f"## Rolling upgrade: {dataset.label} ({dataset.params.get('nodes')} nodes)", "",
                  f"From {frm.get('version')} ({frm.get('revision')}) to {to.get('version')} "
                  f"({to.get('revision')}); clients: {len(checks.get('clients', {}))} SMB clients "
                  "(a writer and a reader per public IP) retrying throughout.  Targets per step: "
                  f"worst interruption <= {targets.get('max_interruption_s')} s, unrecovered client "
                  f"errors <= {targets.get('max_unrecovered_errors')}.  Verdict: "
                  + ("**passed**" if checks.get("passed") else "**targets missed**"), "",
                  "| step | node | version (pid) before -> after | disable s | stop s | start s | "
                  "enable s | step s | worst interruption s (client) | errors | absorbed | "
                  "unrecovered | target |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in checks.get("steps", []):
            if s.get("begin") is None:
                lines.append(f"| {s['index']} | {s['node']} | not run | | | | | | | | | | ✗ |")
                continue
            p = s.get("phases_s", {})
            worst = s.get("worst_interruption_s")
            lines.append(
                f"| {s['index']} | {s['node']} | {s.get('version_before')} ({s.get('pid_before')}) -> "
                f"{s.get('version_after')} ({s.get('pid_after')}) | {_s(p.get('disable'))} | "
                f"{_s(p.get('stop'))} | {_s(p.get('start'))} | {_s(p.get('enable'))} | "
                f"{_s(s.get('duration_s'))} | {_s(worst)} ({s.get('worst_client') or '-'}) | "
                f"{s['errors']} | {s['errors_absorbed']} | {s['errors_unrecovered']} | "
                f"{'✓' if s.get('target_met') else '✗'} |")
        outside = checks.get("outside_steps", {})
        lines += ["", f"Outside the steps: {outside.get('errors', 0)} client errors "
                  f"({outside.get('errors_unrecovered', 0)} unrecovered); the clients' worst gap "
                  f"before the first step (their undisturbed pace): "
                  f"{_s(outside.get('worst_interruption_before_s'))} s.  (The client-operation "
                  "table further down counts the readers only: block writes are data-workload "
                  "operations there.)", ""]
        for failure in checks.get("failures", []):
            lines.append(f"- target missed: {failure}")
        for s in checks.get("steps", []):
            listed = s.get("error_list") or []
            if not listed:
                continue
            lines += ["", f"Client errors in step {s['index']} (node {s['node']}), first "
                      f"{min(len(listed), ERRORS_LISTED)} of {s['errors']}:", ""]
            for e in listed[:ERRORS_LISTED]:
                lines.append(f"- t={e['t']:.3f} {e['client']} {e['op']}"
                             + (f" [{e['phase']}]" if e.get("phase") else "")
                             + f": {e['error']} "
                             + ("(absorbed by a retry)" if e["recovered"] else "(never recovered)"))
        lines.append("")
    return lines


def _s(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}"
