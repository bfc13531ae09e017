"""Faults, each one a timestamped event in the run's history.

============  ============================================================================
power_off     sysrq-b: cut the node's switch ports, SIGKILL every process in it, delete its links.
              Nothing leaves the node after the cut — not even the FIN of an orphaned socket.
power_on      a fresh node with the same name, addresses and MAC; the daemon starts and rejoins.
crash         SIGKILL the daemon's main process only; the kernel still sends FIN/RST for it.
freeze/thaw   SIGSTOP/SIGCONT every process of the daemon (not smbd).
partition     drop private-network traffic between groups of nodes (nftables inside the nodes;
heal          never in the root namespace, whose rules bridged frames would pass through).
flap          take a node's switch port down, wait, bring it up again.
loss          drop a random share of a node's packets on one network (nftables inside the node).
kill_smbd     SIGKILL smbd on a node (its monitor event must make the node UNHEALTHY).
============  ============================================================================
"""

from __future__ import annotations

import os
import signal
import time
from typing import Iterable

from ctdblab.cluster.lab import LabCluster
from ctdblab.cluster.node import LabHost
from ctdblab.errors import UserError
from ctdblab.history import History

PARTITION_TABLE = "ctdblab_partition"
LOSS_TABLE = "ctdblab_loss"


def _record(history: History | None, fault: str, pnn, phase: str, **fields) -> None:
    if history is not None:
        history.record("fault", fault=fault, node=pnn, phase=phase, **fields)


def power_off(cluster: LabCluster, pnn: int, history: History | None = None) -> dict[str, float]:
    _record(history, "power_off", pnn, "begin")
    result = cluster.power_off(pnn)
    _record(history, "power_off", pnn, "end", t_cut=result["t_cut"], t_killed=result["t_killed"],
            killed=result["killed"])
    return result


def power_on(cluster: LabCluster, pnn: int, history: History | None = None) -> float:
    _record(history, "power_on", pnn, "begin")
    t_on = cluster.power_on(pnn)
    _record(history, "power_on", pnn, "end", t_on=t_on)
    return t_on


# -- daemon process faults --------------------------------------------------------------------------
DAEMON_PROGRAMS = {"ctdb": ("ctdbd", "ctdb-recoverd", "ctdb-eventd"), "pyctdbd": ("pyctdbd",)}


def daemon_processes(cluster: LabCluster, pnn: int) -> dict[int, str]:
    """PID -> program name of the daemon's processes on a node (main daemon first)."""
    node = cluster.node(pnn)
    programs = DAEMON_PROGRAMS[cluster.launcher.name]
    found: dict[int, str] = {}
    for pid in node.processes():
        name = _program_name(pid)
        if name in programs:
            found[pid] = name
    return dict(sorted(found.items(), key=lambda kv: (programs.index(kv[1]), kv[0])))


def _program_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return ""
    for arg in argv[:2]:            # "python .../pyctdbd" or "/usr/sbin/ctdbd"
        name = os.path.basename(arg.decode(errors="replace"))
        if name in ("ctdbd", "pyctdbd"):
            return name
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _main_pid(cluster: LabCluster, pnn: int) -> int:
    procs = daemon_processes(cluster, pnn)
    main = [pid for pid, name in procs.items() if name in ("ctdbd", "pyctdbd")]
    if not main:
        raise UserError(f"no {cluster.launcher.name} daemon running on node {pnn}")
    # ctdbd forks helpers that keep its name; the main daemon is the oldest (lowest start time).
    return min(main, key=_start_time)


def _start_time(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 1 << 62


def crash(cluster: LabCluster, pnn: int, history: History | None = None) -> int:
    pid = _main_pid(cluster, pnn)
    _record(history, "crash", pnn, "begin", pid=pid)
    os.kill(pid, signal.SIGKILL)
    _record(history, "crash", pnn, "end", pid=pid)
    return pid


def freeze(cluster: LabCluster, pnn: int, history: History | None = None) -> list[int]:
    pids = list(daemon_processes(cluster, pnn))
    if not pids:
        raise UserError(f"no {cluster.launcher.name} daemon running on node {pnn}")
    _record(history, "freeze", pnn, "begin", pids=pids)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    _record(history, "freeze", pnn, "end", pids=pids)
    return pids


def thaw(cluster: LabCluster, pnn: int, history: History | None = None,
         pids: Iterable[int] | None = None) -> list[int]:
    pids = list(pids if pids is not None else daemon_processes(cluster, pnn))
    _record(history, "thaw", pnn, "begin", pids=pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    _record(history, "thaw", pnn, "end", pids=pids)
    return pids


def kill_smbd(cluster: LabCluster, pnn: int, history: History | None = None) -> list[int]:
    node = cluster.node(pnn)
    pids = [pid for pid in node.processes() if _program_name(pid) == "smbd"]
    if not pids:
        raise UserError(f"no smbd running on node {pnn}")
    _record(history, "kill_smbd", pnn, "begin", pids=pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _record(history, "kill_smbd", pnn, "end", pids=pids)
    return pids


# -- network faults ------------------------------------------------------------------------------------
def _nft(node: LabHost, script: str) -> None:
    result = node.run(["nft", "-f", "-"], input=script, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"nft on {node.name} failed: {result.stderr.strip()}")


def partition(cluster: LabCluster, groups: list[list[int]], history: History | None = None) -> None:
    """Split the private network: nodes only reach nodes of their own group."""
    all_pnns = {n.index for n in cluster.nodes}
    listed = [p for g in groups for p in g]
    if sorted(listed) != sorted(set(listed)) or not set(listed) <= all_pnns or len(groups) < 2:
        raise UserError(f"partition groups must be 2+ disjoint lists of PNNs from "
                        f"{sorted(all_pnns)}, not {groups}")
    groups = [list(g) for g in groups] + ([sorted(all_pnns - set(listed))]
                                          if set(listed) != all_pnns else [])
    _record(history, "partition", None, "begin", groups=groups)
    for group in groups:
        others = sorted(all_pnns - set(group))
        addrs = ", ".join(cluster.plan.private_ip(p) for p in others)
        for pnn in group:
            node = cluster.node(pnn)
            if not node.powered or not others:
                continue
            iface = f"{node.name}-eth0"
            _nft(node, f"""table inet {PARTITION_TABLE} {{
  chain input {{ type filter hook input priority -10; iifname "{iface}" ip saddr {{ {addrs} }} drop; }}
  chain output {{ type filter hook output priority -10; oifname "{iface}" ip daddr {{ {addrs} }} drop; }}
}}
""")
    _record(history, "partition", None, "end", groups=groups)


def heal(cluster: LabCluster, history: History | None = None) -> None:
    _record(history, "heal", None, "begin")
    for node in cluster.nodes:
        if node.powered:
            node.run(["nft", "delete", "table", "inet", PARTITION_TABLE], timeout=10)
    _record(history, "heal", None, "end")


def loss(cluster: LabCluster, pnn: int, percent: float, network: str = "private",
         history: History | None = None) -> None:
    """Drop ``percent`` % of the node's packets on one network, both directions, at random."""
    if not 0 < percent <= 100:
        raise UserError(f"loss percent must be in (0, 100], not {percent}")
    node = cluster.node(pnn)
    iface = f"{node.name}-{'eth0' if network == 'private' else 'eth1'}"
    threshold = int(round(percent * 100))          # numgen over 0..9999 for 0.01 % resolution
    _record(history, "loss", pnn, "begin", percent=percent, network=network)
    _nft(node, f"""table inet {LOSS_TABLE} {{
  chain input {{ type filter hook input priority -20; iifname "{iface}" numgen random mod 10000 < {threshold} drop; }}
  chain output {{ type filter hook output priority -20; oifname "{iface}" numgen random mod 10000 < {threshold} drop; }}
}}
""")
    _record(history, "loss", pnn, "end", percent=percent, network=network)


def clear_loss(cluster: LabCluster, pnn: int, history: History | None = None) -> None:
    node = cluster.node(pnn)
    node.run(["nft", "delete", "table", "inet", LOSS_TABLE], timeout=10)
    _record(history, "loss", pnn, "cleared")


def flap(cluster: LabCluster, pnn: int, down_s: float, network: str = "private",
         history: History | None = None) -> None:
    """Switch-side port down for ``down_s`` seconds, then up (the node keeps running)."""
    from pyroute2 import IPRoute

    node = cluster.node(pnn)
    port = cluster.backend.port_name(node, network)
    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname=port)
        _record(history, "flap", pnn, "begin", network=network, down_s=down_s)
        ipr.link("set", index=index, state="down")
        time.sleep(down_s)
        ipr.link("set", index=index, state="up")
    _record(history, "flap", pnn, "end", network=network)
