"""Faults on a node's processes; the node itself stays up.

crash         SIGKILL the daemon's main process only; the kernel still sends FIN/RST for it.
restart       start the daemon again on a node whose daemon is gone (after a crash).
freeze/thaw   SIGSTOP/SIGCONT every process of the daemon (not smbd).
kill_smbd     SIGKILL smbd on a node (its monitor event must make the node UNHEALTHY).

Processes are found and signalled through the node (``find_programs``, ``signal_processes``):
locally by network namespace on a Mininet node, over SSH on a remote host.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from typing import ClassVar

from ctdblab.cluster.lab import LabCluster
from ctdblab.cluster.procs import program_name  # noqa: F401 - part of chaos's interface
from ctdblab.errors import UserError

from .nemesis import Fault, Outcome

RESTART_WAIT = 10.0       # s for a SIGKILLed daemon's processes to be gone

DAEMON_PROGRAMS = {"ctdb": ("ctdbd", "ctdb-recoverd", "ctdb-eventd"), "pyctdbd": ("pyctdbd",),
                   "keepalived": ("keepalived",)}


def daemon_processes(cluster: LabCluster, pnn: int) -> dict[int, str]:
    """PID -> program name of the daemon's processes on a node (main daemon first)."""
    programs = DAEMON_PROGRAMS[cluster.launcher.name]
    found = {pid: name for pid, name, _ in cluster.node(pnn).find_programs(programs)}
    return dict(sorted(found.items(), key=lambda kv: (programs.index(kv[1]), kv[0])))


def _main_pid(cluster: LabCluster, pnn: int) -> int:
    programs = DAEMON_PROGRAMS[cluster.launcher.name]
    main = [(start, pid) for pid, name, start in cluster.node(pnn).find_programs(programs)
            if name in ("ctdbd", "pyctdbd")]
    if not main:
        raise UserError(f"no {cluster.launcher.name} daemon running on node {pnn}")
    # ctdbd forks helpers that keep its name; the main daemon is the oldest (lowest start time).
    return min(main)[1]


def _signal_all(cluster: LabCluster, pnn: int, pids: list[int], sig: int) -> None:
    cluster.node(pnn).signal_processes(pids, sig)


@dataclass
class Crash(Fault):
    node: int
    name: ClassVar[str] = "crash"

    def apply(self, cluster: LabCluster) -> Outcome:
        pid = _main_pid(cluster, self.node)
        _signal_all(cluster, self.node, [pid], signal.SIGKILL)
        return Outcome(value=pid, fields={"pid": pid})


@dataclass
class Restart(Fault):
    """Start the daemon on a node where it crashed; any leftover daemon process (ctdbd's
    helpers outlive their parent for a moment) is killed first, as an init system would."""

    node: int
    name: ClassVar[str] = "restart"

    def apply(self, cluster: LabCluster) -> Outcome:
        leftovers = list(daemon_processes(cluster, self.node))
        _signal_all(cluster, self.node, leftovers, signal.SIGKILL)
        # Start only once they are gone: real ctdbd restarted while its old event daemon is
        # still exiting fails with "Failed to initialize event daemon".
        deadline = time.monotonic() + RESTART_WAIT
        while daemon_processes(cluster, self.node):
            if time.monotonic() > deadline:
                raise UserError(f"the old {cluster.launcher.name} processes on node {self.node} "
                                f"did not exit within {RESTART_WAIT:g} s of SIGKILL")
            time.sleep(0.02)
        cluster.launcher.start(cluster.node(self.node))
        return Outcome(fields={"killed_leftovers": leftovers})


@dataclass
class Freeze(Fault):
    node: int
    name: ClassVar[str] = "freeze"

    def apply(self, cluster: LabCluster) -> Outcome:
        pids = list(daemon_processes(cluster, self.node))
        if not pids:
            raise UserError(f"no {cluster.launcher.name} daemon running on node {self.node}")
        _signal_all(cluster, self.node, pids, signal.SIGSTOP)
        return Outcome(value=pids, fields={"pids": pids})


@dataclass
class Thaw(Fault):
    """SIGCONT ``pids`` (those Freeze returned), or every daemon process on the node."""

    node: int
    pids: list[int] | None = field(default=None)
    name: ClassVar[str] = "thaw"

    def apply(self, cluster: LabCluster) -> Outcome:
        pids = list(self.pids if self.pids is not None else daemon_processes(cluster, self.node))
        _signal_all(cluster, self.node, pids, signal.SIGCONT)
        return Outcome(value=pids, fields={"pids": pids})


@dataclass
class KillSmbd(Fault):
    node: int
    name: ClassVar[str] = "kill_smbd"

    def apply(self, cluster: LabCluster) -> Outcome:
        pids = [pid for pid, _, _ in cluster.node(self.node).find_programs(["smbd"])]
        if not pids:
            raise UserError(f"no smbd running on node {self.node}")
        _signal_all(cluster, self.node, pids, signal.SIGKILL)
        return Outcome(value=pids, fields={"pids": pids})
