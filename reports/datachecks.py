"""report.md's "Data checks" section: the data checker's verdicts (results.json ``runs[i].data``,
written by ``run failover --check-data``), totals per dataset and victim role, then every
problem the checker named."""

from __future__ import annotations

from typing import Any

from .load import Dataset

MEANING = ("Acked: WRITE+FLUSH answered (blocks) or `ctdb pstore` exited 0 (commits). Lost: acked "
           "but absent or different in the final read-back (blocks) or in any node's own copy, the "
           "rejoined victim's included (commits). Indeterminate: never acked; present or not is "
           "correct. Unverified: acked but its file or a node's copy could not be read (fails the "
           "run). Contention: a survivor's client asks for a deny-write open and the byte-range lock "
           "a dead node's client held; `conflicts` were refused attempts after the cut, `wait` is "
           "cut to the grant.")


def data_check_section(datasets: list[Dataset]) -> list[str]:
    checked = [d for d in datasets if d.data_checks]
    if not checked:
        return []
    header = ["dataset", "victim", "runs", "runs ok", "blocks acked", "lost", "indeterminate",
              "unverified", "commits acked", "lost", "indeterminate", "unverified",
              "contention ok", "conflicts", "max wait (s)"]
    rows = []
    problems = []
    for dataset in checked:
        for role in sorted({c.get("victim_role") or "unknown" for c in dataset.data_checks}):
            group = [c for c in dataset.data_checks if (c.get("victim_role") or "unknown") == role]
            rows.append([dataset.label, role, *(str(v) for v in _totals(group))])
            problems += [f"- {dataset.label} run {c['run']}: {p}" for c in group
                         for p in c.get("problems", ())]
    lines = ["## Data checks", "", MEANING, "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", *(problems or ["No problem: every acknowledged write and commit was found."]), ""]
    return lines


def _totals(group: list[dict[str, Any]]) -> list[Any]:
    def total(part: str, key: str) -> int:
        return sum(int(c.get(part, {}).get(key) or 0) for c in group)

    waits = [c["contention"]["wait_s"] for c in group
             if isinstance(c.get("contention", {}).get("wait_s"), (int, float))]
    return [len(group), sum(c.get("verdict") == "ok" for c in group),
            total("blocks", "acked"), total("blocks", "lost"), total("blocks", "indeterminate"),
            total("blocks", "unverified"), total("commits", "acked"), total("commits", "lost"),
            total("commits", "indeterminate"), total("commits", "unverified"),
            sum(c.get("contention", {}).get("verdict") == "ok" for c in group),
            total("contention", "conflicts"), f"{max(waits):.3f}" if waits else "–"]
