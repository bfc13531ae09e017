"""Hard reset and power-on of a node.

power_off   sysrq-b: cut the node's switch ports, SIGKILL every process in it, delete its links.
            Nothing leaves the node after the cut — not even the FIN of an orphaned socket.
            Steps: ``cut`` (the ports are down), ``killed`` (every process is dead).
power_on    a fresh node with the same name, addresses and MAC; the daemon starts and rejoins.
            Step: ``up`` (the node is on the network; its daemon is started after it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ctdblab.cluster.lab import LabCluster

from .nemesis import Fault, Outcome


@dataclass
class PowerOff(Fault):
    node: int
    name: ClassVar[str] = "power_off"

    def apply(self, cluster: LabCluster) -> Outcome:
        result = cluster.power_off(self.node)
        return Outcome(value=result,
                       steps=[("cut", result["t_cut"]), ("killed", result["t_killed"])],
                       fields={"killed": result["killed"]})


@dataclass
class PowerOn(Fault):
    node: int
    name: ClassVar[str] = "power_on"

    def apply(self, cluster: LabCluster) -> Outcome:
        t_up = cluster.power_on(self.node)
        return Outcome(value=t_up, steps=[("up", t_up)])
