"""What a takeover or release does to the host, behind one small interface.

`HostEffects` uses the failover package (netlink addresses, persistent AF_PACKET and raw sockets,
sock_diag); every call is synchronous and takes microseconds to a millisecond, so it runs on the
event loop. `RecordingEffects` changes nothing on the host and only remembers what it would have
done: for daemons run without root or without their own network namespace (tests, a laptop).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

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
    def connection_counter(self) -> tuple[int, ...] | None: return None
    def close(self) -> None: ...


class HostEffects(Effects):
    def __init__(self) -> None:
        from .failover import AddressManager, ArpAnnouncer, SockDiag, TickleSender
        self.addresses = AddressManager()
        self.arp = ArpAnnouncer()
        self.tickles = TickleSender()
        self.diag = SockDiag()

    def prepare(self, ifaces: Iterable[str]) -> None:
        """Open the per-interface sockets and fix promote_secondaries before any takeover, so
        nothing slow is left for the failover path. Errors are the caller's to log."""
        self.tickles.prepare()
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
        return self.tickles.tickle_all(pairs)

    def kill_connections(self, ip: str) -> int:
        from .failover import kill_connections
        return kill_connections(ip, diag=self.diag)

    def established(self, ips: Iterable[str]) -> list[ConnPair]:
        from .failover import established_connections
        return established_connections(ips, self.diag)

    def connection_counter(self) -> tuple[int, ...] | None:
        """This network namespace's TCP open/close counters (/proc/net/snmp: ActiveOpens,
        PassiveOpens, EstabResets, CurrEstab). Reading them costs tens of microseconds; a full
        socket dump walks the kernel's whole TCP hash table (milliseconds on a big host), so
        the daemon dumps only when these moved."""
        try:
            with open("/proc/net/snmp", "rb") as f:
                lines = f.read().split(b"\n")
        except OSError:
            return None
        rows = [line.split() for line in lines if line.startswith(b"Tcp:")]
        if len(rows) < 2:
            return None
        values = dict(zip(rows[0][1:], rows[1][1:]))
        try:
            return tuple(int(values[k]) for k in (b"ActiveOpens", b"PassiveOpens", b"EstabResets",
                                                   b"CurrEstab"))
        except (KeyError, ValueError):
            return None

    def link_up(self, iface: str) -> bool | None:
        from .failover import InterfaceNotFound
        try:
            return self.addresses.link_up(iface)
        except InterfaceNotFound:
            return None

    def close(self) -> None:
        for part in (self.arp, self.tickles, self.diag, self.addresses):
            try:
                part.close()
            except Exception:
                pass


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
