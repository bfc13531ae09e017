"""The soak's part of the report: a fault timeline plot and a section of ``report.md``.

Both read only what the run left: the checker's verdicts in ``results.json`` (``checks``:
episodes with their convergence, violations with the history lines that prove them) and the
history (the fault events, for the bars).  Nothing here re-checks anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .load import Dataset

SOAK_TIMELINE = "soak_timeline"
MAX_LISTED = 200        # violations listed one by one in report.md; the rest are counted

_KIND_COLORS = {"power_cycle": "#7f7f7f", "crash_restart": "#8c564b", "freeze_leader": "#1f77b4",
                "freeze_nonleader": "#6baed6", "partition_minority": "#2ca02c",
                "partition_leader": "#98df8a", "flap": "#ff7f0e", "loss": "#9467bd"}


def soak_datasets(datasets: list[Dataset]) -> list[Dataset]:
    return [d for d in datasets if d.scenario == "soak" and isinstance(d.raw.get("checks"), dict)]


def plot_soak_timeline(datasets: list[Dataset], out_dir: Path) -> list[Path]:
    """Per dataset one row per node: each fault a bar from its begin to its undo on the nodes it
    hit, a tick at convergence, violations in red at the time they were seen."""
    soaks = soak_datasets(datasets)
    if not soaks:
        return []
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from .plots import save_figure

    fig = Figure(figsize=(13, 1.2 + 2.0 * sum(_node_count(d) for d in soaks) / 3),
                 layout="constrained")
    axes = fig.subplots(len(soaks), 1, squeeze=False)[:, 0]
    for ax, dataset in zip(axes, soaks):
        checks = dataset.raw["checks"]
        episodes = checks.get("episodes", [])
        t0 = min((e["begin"] for e in episodes if e.get("begin") is not None), default=0.0)
        nodes = _node_count(dataset)
        for ep in episodes:
            if ep.get("begin") is None:
                continue
            end = ep.get("undone") or ep["begin"]
            rows = _rows_hit(ep, nodes)
            color = _KIND_COLORS.get(ep["kind"], "#bcbd22")
            for row in rows:
                ax.barh(row, max(end - ep["begin"], 0.3), left=ep["begin"] - t0, height=0.6,
                        color=color, edgecolor="black" if ep.get("failed") else color,
                        linewidth=1.2 if ep.get("failed") else 0)
            if ep.get("convergence_s") is not None:
                x = end - t0 + ep["convergence_s"]
                ax.plot([x, x], [min(rows) - 0.4, max(rows) + 0.4], color="black", linewidth=1.0)
        for v in checks.get("violations", []):
            x = v.get("t_first")
            if x is None:
                ep = _episode(episodes, v.get("episode"))
                x = (ep.get("undone") or ep.get("begin") or t0) if ep else t0
            node = v.get("node", v.get("target"))
            y = node if isinstance(node, int) else nodes
            ax.plot(x - t0, y, marker="x", color="red", markersize=8, markeredgewidth=2)
            if v.get("t_last") is not None and v["t_last"] > x:
                ax.plot([x - t0, v["t_last"] - t0], [y, y], color="red", linewidth=2.5)
        ax.set_yticks(list(range(nodes)) + [nodes])
        ax.set_yticklabels([f"node {p}" for p in range(nodes)] + ["cluster"])
        ax.set_ylim(-0.7, nodes + 0.7)
        ax.invert_yaxis()
        verdict = sum(not c["ok"] for c in checks.get("verdicts", {}).values())
        ax.set_title(f"{dataset.label}: {len(episodes)} faults, seed {dataset.params.get('seed')}, "
                     f"{len(checks.get('violations', []))} violations "
                     f"({verdict} checks failed)")
        ax.set_xlabel("seconds since the first fault")
    handles = [Patch(color=c, label=k) for k, c in _KIND_COLORS.items()]
    handles.append(Patch(color="black", label="| convergence"))
    handles.append(Patch(color="red", label="x violation"))
    fig.legend(handles=handles, loc="outside lower center", ncols=5)
    return save_figure(fig, out_dir, SOAK_TIMELINE)


def _node_count(dataset: Dataset) -> int:
    nodes = dataset.params.get("nodes")
    return nodes if isinstance(nodes, int) and nodes > 0 else 1


def _rows_hit(ep: dict[str, Any], nodes: int) -> list[int]:
    """The nodes a fault hit: a partition's small side, else its target; else the cluster row."""
    groups = ep.get("groups")
    if ep["kind"].startswith("partition") and groups:
        return sorted(groups[0])
    return [ep["target"]] if isinstance(ep.get("target"), int) else [nodes]


def _episode(episodes: list[dict], index: Any) -> dict | None:
    return next((e for e in episodes if e.get("index") == index), None)


def soak_section(datasets: list[Dataset]) -> list[str]:
    """report.md: verdicts, convergence per fault kind, every violation with its proof lines."""
    lines: list[str] = []
    for dataset in soak_datasets(datasets):
        checks = dataset.raw["checks"]
        name = dataset.label
        obs = checks.get("observations", {})
        lines += [f"## Soak: {name} (seed {dataset.params.get('seed')}, "
                  f"{dataset.params.get('faults')} faults, {dataset.params.get('nodes')} nodes)", "",
                  f"Checked over {obs.get('truth_samples', 0)} ground-truth samples and "
                  f"{obs.get('arp_rounds', 0)} ARP rounds from `history.jsonl`.", "",
                  "| check | verdict | violations |", "|---|---|---|"]
        for check, verdict in checks.get("verdicts", {}).items():
            lines.append(f"| {check} | {'ok' if verdict['ok'] else '**FAILED**'} | "
                         f"{verdict['violations']} |")
        for check, why in (checks.get("not_checked") or {}).items():
            lines.append(f"| {check} | not checked: {why} | – |")
        lines += ["", "| fault kind | faults | converged | p50 convergence (s) | max (s) | "
                  "failed to apply |", "|---|---|---|---|---|---|"]
        for kind, c in checks.get("convergence", {}).items():
            lines.append(f"| {kind} | {c['faults']} | {c['converged']} | {_s(c['p50_s'])} | "
                         f"{_s(c['max_s'])} | {c['failed_to_apply']} |")
        lines += ["", "### Fault timeline", "", "| # | kind | target | convergence (s) | "
                  "nodes OK (s) | failed |", "|---|---|---|---|---|---|"]
        for ep in checks.get("episodes", []):
            lines.append(f"| {ep['index']} | {ep['kind']} | {_target(ep)} | "
                         f"{_s(ep.get('convergence_s'))} | {_s(ep.get('nodes_ok_s'))} | "
                         f"{'; '.join(ep.get('failed') or []) or ''} |")
        violations = checks.get("violations", [])
        lines += ["", f"### Violations ({len(violations)})", ""]
        if not violations:
            lines.append("None.")
        for v in violations[:MAX_LISTED]:
            where = f"fault {v['episode']} ({v['fault']})" if "episode" in v else "run"
            lines.append(f"- **{v['check']}**, {where}: {v['message']} — history lines "
                         + ", ".join(str(n) for n in v.get("lines", [])))
        if len(violations) > MAX_LISTED:
            lines.append(f"- ... and {len(violations) - MAX_LISTED} more in results.json")
        cost = dataset.raw.get("sampler_cost")
        if isinstance(cost, dict):
            lines += ["", f"Sampler cost: {cost.get('cpu_pct_of_one_core')} % of one core "
                      f"({cost.get('rounds')} rounds in {cost.get('wall_s')} s)."]
        lines.append("")
    return lines


def _s(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}"


def _target(ep: dict[str, Any]) -> str:
    if ep["kind"].startswith("partition") and ep.get("groups"):
        return " / ".join(",".join(str(p) for p in g) for g in ep["groups"])
    return str(ep.get("target"))
