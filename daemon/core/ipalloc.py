"""Public-IP allocation: which node hosts each public address after a takeover run.

This reproduces CTDB 4.17's ``ipalloc()`` (``ctdb/server/ipalloc*.c``) exactly, including
its tie-breaks and log lines, so that CTDB's own test vectors (``ctdb/tests/UNIT/takeover``)
pass unchanged. Three algorithms, chosen by the ``IPAllocAlgorithm`` tunable:

* 0 deterministic (``ipalloc_basic``), 1 non-deterministic (``ipalloc_basic``),
* 2 LCP2 (``ipalloc_lcp2``, the default; any unknown value means LCP2 too).

Inputs are built from what the nodes report with :func:`build_public_ips` (CTDB's merge
rule) and :func:`eligible_nodes` (which nodes may host IPs, as CTDB's test harness
decides it from node flags and runstates). Nothing here does I/O.

Logging: pass ``log(level, text)``; ``level`` is a :class:`LogLevel` (Samba's numbers:
ERR 0, WARNING 1, NOTICE 3, INFO 5, DEBUG 10) and ``text`` is CTDB's message without a
trailing newline. Only lines with ``level <= log_level`` are produced (LCP2 at DEBUG
emits one line per candidate IP/node pair, so keep ``log_level`` below DEBUG in the
daemon unless you want that).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .ipalloc_basic import allocate_deterministic, allocate_nondeterministic
from .ipalloc_common import (
    UNASSIGNED,
    AllocState,
    IPAddress,
    Logger,
    LogFunction,
    LogLevel,
    format_addr,
    ip_key,
)
from .ipalloc_lcp2 import allocate_lcp2

__all__ = [
    "IPALLOC_DETERMINISTIC",
    "IPALLOC_NONDETERMINISTIC",
    "IPALLOC_LCP2",
    "ALGORITHM_BY_NAME",
    "UNASSIGNED",
    "IPAddress",
    "LogFunction",
    "LogLevel",
    "PublicIP",
    "build_public_ips",
    "can_host_ips",
    "eligible_nodes",
    "format_addr",
    "ipalloc",
]

IPALLOC_DETERMINISTIC = 0
IPALLOC_NONDETERMINISTIC = 1
IPALLOC_LCP2 = 2
ALGORITHM_BY_NAME = {"det": 0, "nondet": 1, "lcp2": 2}

# Node flags (ctdb/protocol/protocol.h) and the runstate in which a node hosts IPs.
NODE_FLAGS_DISCONNECTED = 0x01
NODE_FLAGS_UNHEALTHY = 0x02
NODE_FLAGS_PERMANENTLY_DISABLED = 0x04
NODE_FLAGS_BANNED = 0x08
NODE_FLAGS_DELETED = 0x10
NODE_FLAGS_STOPPED = 0x20
NODE_FLAGS_DISABLED = NODE_FLAGS_UNHEALTHY | NODE_FLAGS_PERMANENTLY_DISABLED
NODE_FLAGS_INACTIVE = NODE_FLAGS_DELETED | NODE_FLAGS_DISCONNECTED | NODE_FLAGS_BANNED | NODE_FLAGS_STOPPED
RUNSTATE_RUNNING = 5

AddressLike = IPAddress | str


@dataclass(frozen=True)
class PublicIP:
    """One public address as the allocator sees it.

    ``pnn`` is the current owner (-1 if unassigned); ``known_on`` the nodes whose
    public_addresses list it; ``available_on`` the nodes that could host it now. Strings
    and other iterables are accepted and normalised.
    """

    addr: IPAddress
    pnn: int = UNASSIGNED
    known_on: frozenset[int] = frozenset()
    available_on: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if isinstance(self.addr, str):
            object.__setattr__(self, "addr", ipaddress.ip_address(self.addr))
        object.__setattr__(self, "known_on", frozenset(self.known_on))
        object.__setattr__(self, "available_on", frozenset(self.available_on))


def eligible_nodes(flags: Sequence[int], runstates: Sequence[int] | None = None) -> frozenset[int]:
    """Nodes that may host public IPs: neither inactive (disconnected, banned, stopped,
    deleted) nor disabled (unhealthy, administratively disabled), and in runstate
    RUNNING when runstates are given. This is how ctdb_takeover_tests derives "available"
    from node flags and ``CTDB_TEST_RUNSTATE``.
    """
    if runstates is not None and len(runstates) != len(flags):
        raise ValueError(f"{len(runstates)} runstates given for {len(flags)} nodes")
    return frozenset(
        pnn
        for pnn, node_flags in enumerate(flags)
        if node_flags & (NODE_FLAGS_INACTIVE | NODE_FLAGS_DISABLED) == 0
        and (runstates is None or runstates[pnn] == RUNSTATE_RUNNING)
    )


def build_public_ips(
    known: Mapping[int, Iterable[tuple[AddressLike, int]]],
    available: Mapping[int, Iterable[AddressLike]],
) -> list[PublicIP]:
    """Merge the nodes' GET_PUBLIC_IPS replies into the allocator's input.

    ``known[p]`` is node p's full list of ``(address, owner p believes hosts it)``;
    ``available[p]`` the addresses node p could host now (the ONLY_AVAILABLE reply).
    Nodes missing from a mapping reported nothing.

    CTDB's rule: a claim "x is on node q" is trusted only when node q itself makes it;
    nodes are read in PNN order and a later trusted claim overrides an earlier one.
    An address available on a node is also known there. Addresses that appear only in
    ``available`` lists are ignored, as in CTDB. The result is in CTDB's list order.
    """
    owner: dict[IPAddress, int] = {}
    known_on: dict[IPAddress, set[int]] = {}
    for node in sorted(known):
        for raw_addr, claim in known[node]:
            addr = _address(raw_addr)
            known_on.setdefault(addr, set()).add(node)
            if claim == node:
                owner[addr] = node
            else:
                owner.setdefault(addr, UNASSIGNED)
    available_on: dict[IPAddress, set[int]] = {addr: set() for addr in known_on}
    for node, addrs in available.items():
        for raw_addr in addrs:
            addr = _address(raw_addr)
            if addr in available_on:
                available_on[addr].add(node)
                known_on[addr].add(node)
    return [
        PublicIP(addr, owner[addr], frozenset(known_on[addr]), frozenset(available_on[addr]))
        for addr in sorted(known_on, key=_list_order)
    ]


def can_host_ips(known: Mapping[int, Sequence[tuple[AddressLike, int]]],
                 available: Mapping[int, Sequence[AddressLike]]) -> bool:
    """CTDB's ipalloc_can_host_ips: False only when no node knows any IP, or when no
    IP is hosted (by its own node's account) and no node has any IP available. The
    takeover run then logs "No nodes available to host public IPs yet" and skips ipalloc.
    """
    have_ips = False
    for node, entries in known.items():
        if entries:
            have_ips = True
            if any(claim == node for _, claim in entries):
                return True
    return have_ips and any(len(addrs) > 0 for addrs in available.values())


def ipalloc(
    ips: Iterable[PublicIP],
    num_nodes: int,
    *,
    algorithm: int,
    no_ip_failback: bool = False,
    no_ip_takeover: bool = False,
    force_rebalance_nodes: Iterable[int] = (),
    log: LogFunction | None = None,
    log_level: int = LogLevel.DEBUG,
) -> dict[IPAddress, int]:
    """Decide the owner of every public IP; -1 means no node can host it.

    ``algorithm``: 0 deterministic, 1 non-deterministic, anything else LCP2.
    ``force_rebalance_nodes`` (LCP2 only) lets IPs fail back onto nodes that already
    host some. The returned dict iterates in CTDB's list order (descending address,
    IPv4 below IPv6). Raises ValueError on duplicate addresses or node numbers outside
    ``0..num_nodes-1``.
    """
    ordered = sorted(ips, key=lambda ip: _list_order(ip.addr))
    _check(ordered, num_nodes)
    if not ordered:
        return {}  # CTDB: an empty merged list ends ipalloc() before any algorithm runs

    state = AllocState(
        addrs=[ip.addr for ip in ordered],
        pnn=[ip.pnn for ip in ordered],
        available_on=[ip.available_on for ip in ordered],
        num_nodes=num_nodes,
        no_ip_takeover=no_ip_takeover,
        no_ip_failback=no_ip_failback,
        log=Logger(log, log_level),
    )
    if algorithm == IPALLOC_DETERMINISTIC:
        allocate_deterministic(state)
    elif algorithm == IPALLOC_NONDETERMINISTIC:
        allocate_nondeterministic(state)
    else:
        allocate_lcp2(state, force_rebalance_nodes)
    return dict(zip(state.addrs, state.pnn))


def _address(value: AddressLike) -> IPAddress:
    return ipaddress.ip_address(value) if isinstance(value, str) else value


def _list_order(addr: IPAddress) -> tuple[int, int]:
    """Sort key giving CTDB's order: descending 128-bit key (IPv4 as ::a.b.c.d). CTDB
    would merge an IPv4 address with the IPv6 ``::a.b.c.d`` of equal key; we keep them
    apart and put the IPv6 one first."""
    return (-ip_key(addr), -addr.version)


def _check(ips: list[PublicIP], num_nodes: int) -> None:
    if num_nodes < 0 or (ips and num_nodes == 0):
        raise ValueError(f"cannot allocate {len(ips)} public IPs to {num_nodes} nodes")
    seen: set[IPAddress] = set()
    for ip in ips:
        if ip.addr in seen:
            raise ValueError(f"public IP {format_addr(ip.addr)} listed twice")
        seen.add(ip.addr)
        if ip.pnn != UNASSIGNED and not 0 <= ip.pnn < num_nodes:
            raise ValueError(f"public IP {format_addr(ip.addr)} is on unknown node {ip.pnn}")
        for what, nodes in (("known", ip.known_on), ("available", ip.available_on)):
            bad = sorted(n for n in nodes if not 0 <= n < num_nodes)
            if bad:
                raise ValueError(f"public IP {format_addr(ip.addr)} {what} on unknown node(s) {bad}")
