"""The lab's address plan: only 198.18.0.0/15, one /20 pair per cluster slot.

A *slot* (0..15) is given to each cluster that runs at the same time on this machine (CLI runs,
pytest-xdist workers), so two clusters never share names or subnets:

    private (cluster) network   198.18.(16·slot).0/20     node PNN p: 198.18.(16·slot).(p+1)
    public (client) network     198.19.(16·slot).0/20     node PNN p: 198.19.(16·slot).(p+1)
                                                           client c:   198.19.(16·slot+4).(c+1)
                                                           public IP k: 198.19.(16·slot+8).(k+1)

Public IPs are in the same /20 as the nodes' own public-interface address, so they are added as
secondaries and never hit the promote_secondaries trap (deleting the primary of a subnet).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

SLOTS = 16
PREFIXLEN = 20
MAX_NODES = 250
MAX_CLIENTS = 250


@dataclass(frozen=True)
class AddressPlan:
    slot: int

    def __post_init__(self) -> None:
        if not 0 <= self.slot < SLOTS:
            raise ValueError(f"slot must be 0..{SLOTS - 1}, not {self.slot}")

    @property
    def private_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"198.18.{16 * self.slot}.0/{PREFIXLEN}")

    @property
    def public_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"198.19.{16 * self.slot}.0/{PREFIXLEN}")

    def private_ip(self, pnn: int) -> str:
        _check(pnn, MAX_NODES, "node")
        return f"198.18.{16 * self.slot}.{pnn + 1}"

    def node_public_ip(self, pnn: int) -> str:
        _check(pnn, MAX_NODES, "node")
        return f"198.19.{16 * self.slot}.{pnn + 1}"

    def client_ip(self, index: int) -> str:
        _check(index, MAX_CLIENTS, "client")
        return f"198.19.{16 * self.slot + 4}.{index + 1}"

    def public_ip(self, index: int) -> str:
        _check(index, MAX_NODES, "public IP")
        return f"198.19.{16 * self.slot + 8}.{index + 1}"


def _check(index: int, limit: int, what: str) -> None:
    if not 0 <= index < limit:
        raise ValueError(f"{what} index must be 0..{limit - 1}, not {index}")
