"""False deaths in a soak: a node declared dead when no fault touched it or the node declaring it.

A false death is the start of a false failover (its IPs move, a recovery runs), so the fast
profile's "no false failovers in the soak" is judged here. The facts come from the daemons' own
logs -- CTDB's "A:port: node B:port is dead: N connected" line, which ctdbd and pyctdbd both write
once per death whatever the cause (missed keepalives, a closed connection, another node's
report) -- imported into the history at the end of the run as ``state``/``log`` events
(``event: detect``, ``node`` the one that logged it, ``dead_node``), followed by one
``capture``/``daemonlog``/``read`` event saying the import happened (without it the check is not
made: a history of an older run says nothing about deaths).

A death is *explained* when an episode of the schedule was under way, from its first event to
``death_grace_s`` after it was undone, and it involved the node declared dead or the node
declaring it: the target of a power cycle, crash, freeze, loss or flap, or -- for a partition --
two nodes on different sides of it. Anything else is a violation of ``false_deaths``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

from ctdblab import events
from ctdblab.cluster.daemonlog import read_log
from ctdblab.history import History

DEATH = re.compile(r"^(?P<me>[\d.]+):\d+: node (?P<addr>[\d.]+):\d+ is dead")
PROBE = "daemonlog"


def node_logs(cluster_dir: Path) -> list[Path]:
    """Every node's daemon log under a lab cluster's work directory."""
    return sorted(Path(cluster_dir).glob("nodes/*/log/ctdb/log.ctdb"))


def import_deaths(history: History, logs: Iterable[Path], addresses: list[str],
                  since: float = 0.0) -> int:
    """Record every death the logs hold (from ``since`` on) in the history; returns how many.
    ``addresses``: the nodes' private addresses in PNN order (the nodes file)."""
    pnn = {addr: i for i, addr in enumerate(addresses)}
    found = read = 0
    for path in logs:
        read += 1
        for line in read_log(path, since=since):
            m = DEATH.search(line.message)
            if m is None:
                continue
            found += 1
            history.record(events.log_line(pnn.get(m.group("me"), -1), "detect",
                                           line.message[:300], line.program, t=line.t,
                                           dead_node=pnn.get(m.group("addr"), -1)))
    history.record(events.capture(PROBE, "soak", "read", logs=read, deaths=found))
    return found


def nodes_file_addresses(cluster_dir: Path) -> list[str]:
    """The private addresses of a lab cluster's nodes file, in PNN order (a deleted node's
    commented line keeps its PNN)."""
    for path in sorted(Path(cluster_dir).glob("nodes/*/etc-ctdb/upper/nodes")):
        out = []
        for raw in path.read_text().splitlines():
            text = raw.strip().lstrip("#").strip()
            if text:
                out.append(text.split()[0].split(":")[0])
        return out
    raise FileNotFoundError(f"no nodes file under {cluster_dir}/nodes")


def _involved(ep: Any, a: int, b: int) -> bool:
    if ep.kind.startswith("partition"):
        groups = ep.groups or []
        side = {n: k for k, group in enumerate(groups) for n in group}
        return a in side and b in side and side[a] != side[b]
    return ep.target in (a, b)


def false_deaths(numbered: Iterable[tuple[int, dict]], episodes: list[Any], grace: float,
                 t_end: float) -> tuple[bool, list[dict]]:
    """(whether the history has the daemons' deaths at all, the false ones as violations).
    Deaths after ``t_end`` (the run's end: the lab stopping the daemons) do not count."""
    deaths, imported = [], False
    for line, e in numbered:
        if e["kind"] == "capture" and e.get("probe") == PROBE and e.get("what") == "read":
            imported = True
        elif e["kind"] == "state" and e.get("what") == "log" and e.get("event") == "detect" \
                and "dead_node" in e:
            deaths.append((line, e))
    found = []
    for line, e in deaths:
        t, me, dead = e["t"], e.get("node"), e["dead_node"]
        if t > t_end or any(ep.begin is not None and ep.begin <= t <= (ep.undone or float("inf")) + grace
               and _involved(ep, me, dead) for ep in episodes):
            continue
        found.append({"check": "false_deaths", "lines": [line], "node": dead, "t_first": t,
                      "message": f"node {me} declared node {dead} dead with no fault on either "
                                 f"under way (or undone within {grace:g} s): "
                                 f"{e.get('message', '')}"})
    return imported, found
