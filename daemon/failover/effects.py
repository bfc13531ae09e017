"""What a takeover or release does to the host, behind one small interface (the port the
daemon's public-IP and connection services use).

`HostEffects` uses this package (netlink addresses, persistent AF_PACKET and raw sockets,
sock_diag); every call is synchronous and takes microseconds to a millisecond, so it runs on the
event loop. `RecordingEffects` changes nothing on the host and only remembers what it would have
done: for daemons run without root or without their own network namespace (tests, a laptop).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from .addresses import AddressManager
from .arp import ArpAnnouncer
from .conntrack import established_connections
from .errors import InterfaceNotFound
from .killtcp import kill_connections
from .sockdiag import SockDiag
from .tcp_segments import TcpSegmentSender

Endpoint = tuple[str, int]
ConnPair = tuple[Endpoint, Endpoint]      # (server = public ip:port, client ip:port)


class Effects:
    """Interface; see the two implementations below."""

    def prepare(self, ifaces: Iterable[str]) -> None: ...
    def have_ip(self, ip: str) -> bool: raise NotImplementedError
    def add_ip(self, iface: str, ip: str, prefixlen: int) -> bool: raise NotImplementedError
    def delete_ip(self, iface: str, ip: str, prefixlen: int) -> bool: raise NotImplementedError
    def announce(self, iface: str, ip: str) -> int: raise NotImplementedError
    def tickle(self, pairs: list[ConnPair]) -> int: raise NotImplementedError
    def kill_connections(self, ip: str) -> int: raise NotImplementedError
    def established(self, ips: Iterable[str]) -> list[ConnPair]: raise NotImplementedError
    def link_up(self, iface: str) -> bool | None: raise NotImplementedError
    def connection_counter(self) -> tuple[bytes, ...] | None: return None
    def close(self) -> None: ...


class HostEffects(Effects):
    def __init__(self) -> None:
        self.addresses = AddressManager()
        self.arp = ArpAnnouncer()
        self.segments = TcpSegmentSender()
        self.diag = SockDiag()
        self._snmp_fd: int | None = None

    def prepare(self, ifaces: Iterable[str]) -> None:
        """Open the per-interface sockets and fix promote_secondaries before any takeover, so
        nothing slow is left for the failover path. Errors are the caller's to log."""
        self.segments.prepare()
        for iface in ifaces:
            self.addresses.ensure_promote_secondaries(iface)
            self.arp.prepare(iface)

    def have_ip(self, ip: str) -> bool:
        return self.addresses.where(ip) is not None

    def add_ip(self, iface: str, ip: str, prefixlen: int) -> bool:
        return self.addresses.add(iface, ip, prefixlen)

    def delete_ip(self, iface: str, ip: str, prefixlen: int) -> bool:
        where = self.addresses.where(ip)
        if where is None:
            return False
        return self.addresses.delete(where, ip)

    def announce(self, iface: str, ip: str) -> int:
        return self.arp.announce(iface, ip)

    def tickle(self, pairs: list[ConnPair]) -> int:
        return self.segments.tickle_all(pairs)

    def kill_connections(self, ip: str) -> int:
        return kill_connections(ip, diag=self.diag)

    def established(self, ips: Iterable[str]) -> list[ConnPair]:
        return established_connections(ips, self.diag)

    def connection_counter(self) -> tuple[bytes, ...] | None:
        """This network namespace's TCP open/close counters (/proc/net/snmp: ActiveOpens,
        PassiveOpens, AttemptFails, EstabResets, CurrEstab), compared as raw fields. A pread of
        the open file costs about 25 us; a full socket dump walks the kernel's whole TCP hash
        table (milliseconds on a big host), so the daemon dumps only when these moved."""
        try:
            if self._snmp_fd is None:
                self._snmp_fd = os.open("/proc/net/snmp", os.O_RDONLY | os.O_CLOEXEC)
            data = os.pread(self._snmp_fd, 16384, 0)
        except OSError:
            return None
        # Two "Tcp:" lines: the names, then the values.
        first = data.find(b"\nTcp:")
        second = data.find(b"\nTcp:", first + 1) if first >= 0 else -1
        if second < 0:
            return None
        end = data.find(b"\n", second + 1)
        fields = data[second + 5:end if end >= 0 else None].split()
        # RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets
        # CurrEstab InSegs ...; segment counters move with every heartbeat, so they are left out.
        return tuple(fields[4:9]) if len(fields) >= 9 else None

    def link_up(self, iface: str) -> bool | None:
        try:
            return self.addresses.link_up(iface)
        except InterfaceNotFound:
            return None

    def close(self) -> None:
        for part in (self.arp, self.segments, self.diag, self.addresses):
            try:
                part.close()
            except Exception:
                pass
        if self._snmp_fd is not None:
            os.close(self._snmp_fd)
            self._snmp_fd = None


@dataclass
class RecordingEffects(Effects):
    """Pretends: addresses live in a set, announcements and tickles are counted."""

    held: dict[str, str] = field(default_factory=dict)        # ip -> iface
    announcements: list[tuple[str, str]] = field(default_factory=list)
    tickled: list[ConnPair] = field(default_factory=list)
    connections: dict[str, list[ConnPair]] = field(default_factory=dict)   # injected by tests

    def have_ip(self, ip: str) -> bool:
        return ip in self.held

    def add_ip(self, iface: str, ip: str, prefixlen: int) -> bool:
        if ip in self.held:
            return False
        self.held[ip] = iface
        return True

    def delete_ip(self, iface: str, ip: str, prefixlen: int) -> bool:
        return self.held.pop(ip, None) is not None

    def announce(self, iface: str, ip: str) -> int:
        self.announcements.append((iface, ip))
        del self.announcements[:-1000]
        return 2

    def tickle(self, pairs: list[ConnPair]) -> int:
        self.tickled.extend(pairs)
        del self.tickled[:-1000]
        return len(pairs)

    def kill_connections(self, ip: str) -> int:
        return len(self.connections.pop(ip, []))

    def established(self, ips: Iterable[str]) -> list[ConnPair]:
        out: list[ConnPair] = []
        for ip in ips:
            out += self.connections.get(ip, [])
        return out

    def link_up(self, iface: str) -> bool | None:
        return True
