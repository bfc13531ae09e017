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

The daemons' "Event loop stalled: timer ran N ms late" lines are imported too (``event: stall``;
pyctdbd adds how much CPU its loop used and how long it waited for one meanwhile): a false death
that falls in a stall of the node declared dead, or of the node declaring it, says so in its
message -- a daemon that did not run for longer than the dead timeout was dead to its peers,
and whether it was busy in its own work, waiting for a CPU (other real-time daemons on the same
cores) or blocked in the kernel tells what to fix.
It stays a violation: the check reports, the reader judges.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

from ctdblab import events
from ctdblab.cluster.daemonlog import read_log
from ctdblab.history import History

DEATH = re.compile(r"^(?P<me>[\d.]+):\d+: node (?P<addr>[\d.]+):\d+ is dead")
STALL = re.compile(r"^Event loop stalled: timer ran (?P<late>\d+) ms late"
                   r"(?: \(this daemon used (?P<cpu>\d+) ms of CPU"
                   r"(?: and waited (?P<wait>\d+) ms for one)? in the last (?P<span>\d+) ms\))?")
PROBE = "daemonlog"
#: A stall "covers" a death from this long before it began to this long after it was logged
#: (the peer's timer and the log line are a few ms apart; a packet in flight adds a little).
STALL_SLACK_S = 0.5


def node_logs(cluster_dir: Path) -> list[Path]:
    """Every node's daemon log under a lab cluster's work directory, in PNN order (node
    directories end in n1, n2, ... n10: numeric order, not the string order)."""
    def number(path: Path) -> tuple[int, str]:
        m = re.search(r"n(\d+)$", path.parts[-4])
        return (int(m.group(1)) if m else 0, str(path))
    return sorted(Path(cluster_dir).glob("nodes/*/log/ctdb/log.ctdb"), key=number)


def import_deaths(history: History, logs: Iterable[Path], addresses: list[str],
                  since: float = 0.0, *, stalls_only: bool = False) -> int:
    """Record every death and every loop stall the logs hold (from ``since`` on) in the
    history; returns the number of deaths. ``addresses``: the nodes' private addresses in PNN
    order (the nodes file); ``logs``: the nodes' logs in PNN order (a stall line names no
    address). ``stalls_only``: for a history whose deaths were imported before stalls were."""
    pnn = {addr: i for i, addr in enumerate(addresses)}
    found = read = stalls = 0
    for node, path in enumerate(logs):
        read += 1
        for line in read_log(path, since=since):
            death = DEATH.search(line.message)
            if death is not None:
                if not stalls_only:
                    found += 1
                    history.record(events.log_line(pnn.get(death.group("me"), -1), "detect",
                                                   line.message[:300], line.program, t=line.t,
                                                   dead_node=pnn.get(death.group("addr"), -1)))
                continue
            stall = STALL.search(line.message)
            if stall is None:
                continue
            stalls += 1
            detail = {name + "_ms": int(stall.group(name))
                      for name in ("cpu", "span", "wait") if stall.group(name) is not None}
            history.record(events.log_line(node, "stall", line.message[:300], line.program,
                                           t=line.t, late_ms=int(stall.group("late")), **detail))
    if stalls_only:
        history.record(events.capture(PROBE, "soak", "stalls", logs=read, stalls=stalls))
    else:
        history.record(events.capture(PROBE, "soak", "read", logs=read, deaths=found, stalls=stalls))
    return found


def _stall_note(stall: dict) -> str:
    text = f"node {stall['node']}'s daemon had stalled {stall['late_ms']} ms"
    if "cpu_ms" not in stall:
        return text
    half = stall["late_ms"] / 2
    if stall["cpu_ms"] >= half:
        cause = "busy in its own work"
    elif "wait_ms" not in stall:
        cause = "not running"
    elif stall["wait_ms"] >= half:
        cause = "waiting for a CPU"
    else:
        cause = "blocked in the kernel"
    waited = f" and waiting {stall['wait_ms']} ms for one" if "wait_ms" in stall else ""
    return text + f", using {stall['cpu_ms']} ms of CPU{waited} in {stall['span_ms']} ms ({cause})"


def _covering_stalls(stalls: list[dict], t: float, nodes: tuple[int, int]) -> list[dict]:
    return [s for s in stalls if s["node"] in nodes
            and s["t"] - s["late_ms"] / 1000 - STALL_SLACK_S <= t <= s["t"] + STALL_SLACK_S]


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
    deaths, stalls, imported = [], [], False
    for line, e in numbered:
        if e["kind"] == "capture" and e.get("probe") == PROBE and e.get("what") == "read":
            imported = True
        elif e["kind"] == "state" and e.get("what") == "log" and e.get("event") == "detect" \
                and "dead_node" in e:
            deaths.append((line, e))
        elif e["kind"] == "state" and e.get("what") == "log" and e.get("event") == "stall":
            stalls.append({**e, "line": line})
    found = []
    for line, e in deaths:
        t, me, dead = e["t"], e.get("node"), e["dead_node"]
        if t > t_end or any(ep.begin is not None and ep.begin <= t <= (ep.undone or float("inf")) + grace
               and _involved(ep, me, dead) for ep in episodes):
            continue
        covering = _covering_stalls(stalls, t, (dead, me))
        note = "".join(f"; {_stall_note(s)}" for s in covering)
        found.append({"check": "false_deaths", "lines": [line] + [s["line"] for s in covering],
                      "node": dead, "t_first": t,
                      "message": f"node {me} declared node {dead} dead with no fault on either "
                                 f"under way (or undone within {grace:g} s): "
                                 f"{e.get('message', '')}{note}"})
    return imported, found
