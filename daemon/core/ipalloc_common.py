"""Shared state and steps of CTDB's three public-IP allocation algorithms.

The allocators work on one :class:`AllocState`: the merged public IPs in CTDB's order
(descending 128-bit key), the current owner of each and the nodes that may host it.
IPs are referred to by their index in that order; ``-1`` means "not hosted".

Behaviour follows CTDB 4.17 (``ctdb/server/ipalloc_common.c``); log texts keep CTDB's
wording because operators and CTDB's own test vectors compare them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

UNASSIGNED = -1

# Where CTDB's "__location__" prefix points (a Samba waf build compiles from bin/default).
_SERVER_SOURCE = "../../ctdb/server/"


class LogLevel(IntEnum):
    """Samba/CTDB debug levels (``lib/util/debug.h``): a line is shown when its level is
    at most the configured one."""

    ERR = 0
    WARNING = 1
    NOTICE = 3
    INFO = 5
    DEBUG = 10


LogFunction = Callable[[LogLevel, str], None]


def location(source_file: str, line: int) -> str:
    """CTDB's ``__location__`` string for a line of ``ctdb/server/<source_file>``."""
    return f"{_SERVER_SOURCE}{source_file}:{line}"


def ip_key(addr: IPAddress) -> int:
    """CTDB's 128-bit sort/distance key: IPv6 as is, IPv4 in the low 32 bits."""
    return int(addr)


def format_addr(addr: IPAddress) -> str:
    """The address as CTDB prints it (glibc ``inet_ntop``).

    Python and glibc agree on IPv6 zero compression; they differ only for IPv4-mapped
    (``::ffff:a.b.c.d``) and IPv4-compatible (``::a.b.c.d``) addresses, which glibc prints
    with a dotted tail.
    """
    if addr.version == 4:
        return str(addr)
    value = int(addr)
    top80, word5, low32 = value >> 48, (value >> 32) & 0xFFFF, value & 0xFFFFFFFF
    # glibc: first 5 words zero and word 5 == 0xffff, or first 6 words zero and word 6 != 0
    if top80 == 0 and (word5 == 0xFFFF or (word5 == 0 and low32 >> 16 != 0)):
        prefix = "::ffff:" if word5 == 0xFFFF else "::"
        return prefix + str(ipaddress.IPv4Address(low32))
    return str(addr)


def c_int32(value: int) -> int:
    """How C's ``%d`` prints an unsigned 32-bit quantity (CTDB logs uint32 with %d)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


@dataclass
class Logger:
    """Passes lines at or below ``level`` to ``emit``; ``wants`` lets callers skip
    formatting lines nobody will see (LCP2 at DEBUG writes one line per IP/node pair)."""

    emit: LogFunction | None
    level: int = LogLevel.DEBUG

    def wants(self, level: LogLevel) -> bool:
        return self.emit is not None and level <= self.level

    def __call__(self, level: LogLevel, text: str) -> None:
        if self.emit is not None and level <= self.level:
            self.emit(level, text)


@dataclass
class AllocState:
    """The merged IP list as the algorithms see it, mutated in place while allocating."""

    addrs: list[IPAddress]  # descending key order (CTDB's list order)
    pnn: list[int]  # current owner per IP, UNASSIGNED if none
    available_on: list[frozenset[int]]  # nodes that could host each IP now
    num_nodes: int
    no_ip_takeover: bool
    no_ip_failback: bool
    log: Logger
    _labels: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._labels = [format_addr(a) for a in self.addrs]

    def label(self, index: int) -> str:
        return self._labels[index]

    def takeover_nodes(self, index: int) -> list[int]:
        """Nodes, ascending, that may gain this IP (none at all under NoIPTakeover)."""
        if self.no_ip_takeover:
            return []
        return sorted(self.available_on[index])

    def counts(self) -> list[int]:
        """Number of IPs currently assigned to each node."""
        counts = [0] * self.num_nodes
        for owner in self.pnn:
            if owner != UNASSIGNED:
                counts[owner] += 1
        return counts

    def unassign_unsuitable(self) -> None:
        """Drop every assignment to a node where the IP is not available."""
        for index, owner in enumerate(self.pnn):
            if owner != UNASSIGNED and owner not in self.available_on[index]:
                self.log(LogLevel.DEBUG, f"Unassign IP: {self.label(index)} from {owner}")
                self.pnn[index] = UNASSIGNED

    def find_takeover_node(self, index: int, counts: list[int]) -> bool:
        """Give the IP to the eligible node hosting fewest IPs (lowest PNN on ties).

        ``counts`` is kept up to date. Returns False, leaving the IP where it is, when no
        node may take it.
        """
        best = UNASSIGNED
        for node in self.takeover_nodes(index):
            if best == UNASSIGNED or counts[node] < counts[best]:
                best = node
        if best == UNASSIGNED:
            self.log(
                LogLevel.WARNING,
                f"{location('ipalloc_common.c', 110)} Could not find node to take over "
                f"public address '{self.label(index)}'",
            )
            return False
        previous = self.pnn[index]
        if previous != UNASSIGNED:
            counts[previous] -= 1
        counts[best] += 1
        self.pnn[index] = best
        return True

    def basic_allocate_unassigned(self) -> None:
        """Walk the list once, giving each unassigned IP to the least-loaded node."""
        counts = self.counts()
        for index, owner in enumerate(self.pnn):
            if owner == UNASSIGNED and not self.find_takeover_node(index, counts):
                self.log(LogLevel.WARNING, f"Failed to find node to cover ip {self.label(index)}")
