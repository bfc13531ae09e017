"""Takeover-run planning: from the node map and the nodes' public-IP reports to the controls the
leader sends, as CTDB's `ctdb_takeover_helper` does it.

A run (all decided here, carried out by the shell):

1. ask every *connected* node for its public IPs (GET_PUBLIC_IPS: "known", each with the owner
   that node believes in) and every *active* node that knows any IP for the ones it could host
   now (GET_PUBLIC_IPS with ONLY_AVAILABLE);
2. merge the replies (a claim "x is on q" counts only when q makes it) and run `ipalloc`;
3. RELEASE_IP {new owner, ip} to every connected node that knows the IP but is not its new owner
   (most are "redundant releases" that only tell the node where the IP went);
4. TAKEOVER_IP to the new owner of every assigned IP, unchanged ones included;
5. IPREALLOCATED to every connected node.

`ctdb moveip` is planned by the CLI itself (RELEASE_IP to the others, TAKEOVER_IP to the
target); the daemon only answers those controls. No I/O here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..protocol.constants import UNKNOWN_PNN, NodeFlag
from .ipalloc import UNASSIGNED, IPAddress, build_public_ips, can_host_ips, format_addr, ipalloc


@dataclass(frozen=True)
class IPReport:
    """One node's answer to GET_PUBLIC_IPS: address -> the owner it believes in
    (UNKNOWN_PNN for none), plus (if asked) the addresses it could host now."""

    pnn: int
    known: Mapping[str, int]
    available: frozenset[str] | None = None


@dataclass(frozen=True)
class Release:
    pnn: int            # node that receives RELEASE_IP
    ip: str
    new_owner: int      # UNKNOWN_PNN when the IP ends up unhosted


@dataclass(frozen=True)
class Take:
    pnn: int
    ip: str


@dataclass
class TakeoverPlan:
    assignment: dict[str, int] = field(default_factory=dict)   # ip -> owner (UNKNOWN_PNN: none)
    previous: dict[str, int] = field(default_factory=dict)     # ip -> owner before the run
    releases: list[Release] = field(default_factory=list)
    takes: list[Take] = field(default_factory=list)
    ipreallocated: list[int] = field(default_factory=list)
    skipped_reason: str | None = None     # set when ipalloc was not run

    def moves(self) -> list[tuple[str, int, int]]:
        """(ip, old owner, new owner) for every IP whose owner changes."""
        return [(ip, self.previous.get(ip, UNKNOWN_PNN), new) for ip, new in self.assignment.items()
                if self.previous.get(ip, UNKNOWN_PNN) != new]


def connected_nodes(flags: Iterable[int]) -> list[int]:
    return [pnn for pnn, f in enumerate(flags) if not f & (NodeFlag.DISCONNECTED | NodeFlag.DELETED)]


def active_nodes(flags: Iterable[int]) -> list[int]:
    return [pnn for pnn, f in enumerate(flags) if not f & NodeFlag.INACTIVE]


def nodes_to_ask_available(flags: list[int], known: Mapping[int, IPReport]) -> list[int]:
    """Active nodes that know at least one IP (CTDB asks only those for available IPs)."""
    return [pnn for pnn in active_nodes(flags) if pnn in known and known[pnn].known]


def plan_takeover_run(
    flags: list[int],
    known: Mapping[int, IPReport],
    available: Mapping[int, Iterable[str]],
    *,
    algorithm: int,
    no_ip_failback: bool,
    no_ip_takeover: bool,
    force_rebalance_nodes: Iterable[int] = (),
    log: Callable[[int, str], None] | None = None,
) -> TakeoverPlan:
    """`flags[pnn]` is the leader's node map; `known`/`available` the replies of step 1."""
    connected = connected_nodes(flags)
    plan = TakeoverPlan(ipreallocated=list(connected))
    known_lists = {pnn: [(ip, _pnn_in(owner)) for ip, owner in report.known.items()]
                   for pnn, report in known.items()}
    avail_lists = {pnn: list(ips) for pnn, ips in available.items()}
    for pnn, report in sorted(known.items()):
        for ip, owner in report.known.items():
            if owner == pnn:
                plan.previous[_canon(ip)] = pnn
    if not can_host_ips(known_lists, avail_lists):
        plan.skipped_reason = "No nodes available to host public IPs yet"
        return plan
    ips = build_public_ips(known_lists, avail_lists)
    result = ipalloc(ips, len(flags), algorithm=algorithm, no_ip_failback=no_ip_failback,
                     no_ip_takeover=no_ip_takeover, force_rebalance_nodes=force_rebalance_nodes,
                     log=log)
    known_on = {ip.addr: ip.known_on for ip in ips}
    for addr, owner in result.items():
        ip = format_addr(addr)
        new_owner = UNKNOWN_PNN if owner == UNASSIGNED else owner
        plan.assignment[ip] = new_owner
        for pnn in connected:
            if pnn in known_on[addr] and pnn != new_owner:
                plan.releases.append(Release(pnn, ip, new_owner))
        if new_owner != UNKNOWN_PNN:
            plan.takes.append(Take(new_owner, ip))
    return plan


def _pnn_in(owner: int) -> int:
    return UNASSIGNED if owner == UNKNOWN_PNN else owner


def _canon(ip: str | IPAddress) -> str:
    return format_addr(ipaddress.ip_address(ip)) if isinstance(ip, str) else format_addr(ip)
