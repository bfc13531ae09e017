"""Faults on the network; the nodes keep running.

partition   drop private-network traffic between groups of nodes (nftables inside the nodes;
heal        never in the root namespace, whose rules bridged frames would pass through).
flap        take a node's link down at the switch, wait, bring it up again.
loss        drop a random share of a node's packets on one network (nftables inside the node).

Links and interface names come from the backend (``set_link``, ``iface``); nothing here knows
how the lab builds them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ctdblab.cluster.lab import LabCluster
from ctdblab.cluster.node import LabHost
from ctdblab.errors import UserError

from .nemesis import Fault, Outcome

PARTITION_TABLE = "ctdblab_partition"
LOSS_TABLE = "ctdblab_loss"


def _nft(node: LabHost, script: str) -> None:
    result = node.run(["nft", "-f", "-"], input=script, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"nft on {node.name} failed: {result.stderr.strip()}")


def drop_private_traffic(cluster: LabCluster, pnn: int, peers: list[int]) -> None:
    """Node `pnn` drops its private-network traffic with `peers` (the partition table, added
    to what the table already holds; a powered-off node is left alone)."""
    node = cluster.node(pnn)
    if not peers or not node.powered:
        return
    addrs = ", ".join(cluster.plan.private_ip(p) for p in peers)
    iface = cluster.backend.iface(node, "private")
    _nft(node, f"""table inet {PARTITION_TABLE} {{
  chain input {{ type filter hook input priority -10; iifname "{iface}" ip saddr {{ {addrs} }} drop; }}
  chain output {{ type filter hook output priority -10; oifname "{iface}" ip daddr {{ {addrs} }} drop; }}
}}
""")


def allow_private_traffic(node: LabHost) -> None:
    """Remove the node's partition table: its private network carries everything again."""
    node.run(["nft", "delete", "table", "inet", PARTITION_TABLE], timeout=10)


@dataclass
class Partition(Fault):
    """Split the private network: nodes only reach nodes of their own group.  Nodes left out
    of ``groups`` form one more group."""

    groups: list[list[int]]
    node: None = field(default=None, init=False)
    name: ClassVar[str] = "partition"

    def params(self) -> dict[str, Any]:
        return {"groups": self.groups}

    def apply(self, cluster: LabCluster) -> Outcome:
        groups = self.complete_groups(cluster)
        for group in groups:
            others = sorted({n.index for n in cluster.nodes} - set(group))
            for pnn in group:
                drop_private_traffic(cluster, pnn, others)
        return Outcome(fields={"groups": groups})

    def complete_groups(self, cluster: LabCluster) -> list[list[int]]:
        all_pnns = {n.index for n in cluster.nodes}
        listed = [p for g in self.groups for p in g]
        if len(listed) != len(set(listed)) or not set(listed) <= all_pnns or len(self.groups) < 2:
            raise UserError(f"partition groups must be 2+ disjoint lists of PNNs from "
                            f"{sorted(all_pnns)}, not {self.groups}")
        rest = sorted(all_pnns - set(listed))
        return [list(g) for g in self.groups] + ([rest] if rest else [])


@dataclass
class Heal(Fault):
    node: None = field(default=None, init=False)
    name: ClassVar[str] = "heal"

    def apply(self, cluster: LabCluster) -> Outcome:
        for node in cluster.nodes:
            if node.powered:
                allow_private_traffic(node)
        return Outcome()


@dataclass
class Flap(Fault):
    """The node's link on ``network`` down at the switch for ``down_s`` seconds, then up."""

    node: int
    down_s: float
    network: str = "private"
    name: ClassVar[str] = "flap"

    def params(self) -> dict[str, Any]:
        return {"network": self.network, "down_s": self.down_s}

    def apply(self, cluster: LabCluster) -> Outcome:
        node = cluster.node(self.node)
        t_down = cluster.backend.set_link(node, self.network, up=False)
        try:
            time.sleep(self.down_s)
        finally:
            t_up = cluster.backend.set_link(node, self.network, up=True)
        return Outcome(steps=[("down", t_down), ("up", t_up)])


@dataclass
class Loss(Fault):
    """Drop ``percent`` % of the node's packets on one network, both directions, at random."""

    node: int
    percent: float
    network: str = "private"
    name: ClassVar[str] = "loss"

    def params(self) -> dict[str, Any]:
        return {"percent": self.percent, "network": self.network}

    def apply(self, cluster: LabCluster) -> Outcome:
        if not 0 < self.percent <= 100:
            raise UserError(f"loss percent must be in (0, 100], not {self.percent}")
        node = cluster.node(self.node)
        iface = cluster.backend.iface(node, self.network)
        threshold = int(round(self.percent * 100))     # numgen over 0..9999: 0.01 % resolution
        # nft refuses "< 10000" (out of numgen's range): 100 % is an unconditional drop.
        chance = f"numgen random mod 10000 < {threshold} " if threshold < 10000 else ""
        _nft(node, f"""table inet {LOSS_TABLE} {{
  chain input {{ type filter hook input priority -20; iifname "{iface}" {chance}drop; }}
  chain output {{ type filter hook output priority -20; oifname "{iface}" {chance}drop; }}
}}
""")
        return Outcome()


@dataclass
class ClearLoss(Fault):
    node: int
    name: ClassVar[str] = "clear_loss"

    def apply(self, cluster: LabCluster) -> Outcome:
        cluster.node(self.node).run(["nft", "delete", "table", "inet", LOSS_TABLE], timeout=10)
        return Outcome()
