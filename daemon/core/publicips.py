"""This node's public addresses ("vnns" in CTDB) and the interfaces that carry them.

For each configured public IP: its prefix length, the interfaces it may use, the node this node
believes hosts it (updated by TAKEOVER_IP and by the "redundant" RELEASE_IP a takeover run sends
to every other node, which is how `ctdb ip` on any node shows where each IP is), and the
interface it is on when this node holds it. Per interface: link state and how many held IPs use
it (CTDB's `references`; the least-used interface with link up is chosen for a takeover).

Pure bookkeeping, no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..protocol.constants import UNKNOWN_PNN


def canonical_ip(ip: str) -> str:
    """Normalise an address (IPv4-mapped IPv6 becomes IPv4, as ctdbd canonicalises)."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


@dataclass
class Vnn:
    ip: str
    prefixlen: int
    ifaces: list[str]
    pnn: int = UNKNOWN_PNN          # who this node believes hosts it
    iface: str | None = None        # where it sits while this node holds it
    update_in_flight: bool = False  # a take or release of this IP is running
    delete_pending: bool = False    # `ctdb delip` while held: goes at its next release

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.ip).version


@dataclass
class Interface:
    name: str
    link_up: bool = True
    references: int = 0


@dataclass
class PublicIPs:
    my_pnn: int
    vnns: dict[str, Vnn] = field(default_factory=dict)
    ifaces: dict[str, Interface] = field(default_factory=dict)

    @classmethod
    def from_config(cls, my_pnn: int, entries: Iterable[tuple[str, int, Iterable[str]]]) -> PublicIPs:
        table = cls(my_pnn)
        table.reload(entries)
        return table

    # -- configuration ---------------------------------------------------------------------------
    def reload(self, entries: Iterable[tuple[str, int, Iterable[str]]]) -> tuple[list[str], list[str]]:
        """Replace the configured list. Returns (added, removed) IPs; a removed IP that this
        node still holds stays until it has been released (the caller releases it)."""
        wanted: dict[str, tuple[int, list[str]]] = {}
        for ip, prefixlen, ifaces in entries:
            wanted[canonical_ip(ip)] = (prefixlen, list(ifaces))
        added = [ip for ip in wanted if ip not in self.vnns]
        removed = [ip for ip in self.vnns if ip not in wanted]
        for ip in removed:
            vnn = self.vnns[ip]
            if vnn.iface is None:
                del self.vnns[ip]
        for ip, (prefixlen, ifaces) in wanted.items():
            vnn = self.vnns.get(ip)
            if vnn is None:
                self.vnns[ip] = Vnn(ip, prefixlen, ifaces)
            else:
                vnn.prefixlen, vnn.ifaces = prefixlen, ifaces
            for name in ifaces:
                self.ifaces.setdefault(name, Interface(name))
        self._drop_orphaned_ifaces()
        return added, removed

    def add(self, ip: str, prefixlen: int, ifaces: Iterable[str]) -> bool:
        """`ctdb addip`: a new IP, owner unknown until a takeover run places it. False if
        the IP is already configured."""
        ip = canonical_ip(ip)
        if ip in self.vnns:
            return False
        self.vnns[ip] = Vnn(ip, prefixlen, list(ifaces))
        for name in ifaces:
            self.ifaces.setdefault(name, Interface(name))
        return True

    def delete(self, ip: str) -> str:
        """`ctdb delip`, as ctdbd: an IP this node hosts is only marked (it is released, then
        forgotten, at the next takeover run: "pending"); any other goes now ("deleted").
        "unknown" if the IP is not configured."""
        vnn = self.find(ip)
        if vnn is None:
            return "unknown"
        if vnn.pnn == self.my_pnn:
            vnn.delete_pending = True
            return "pending"
        self.forget(vnn.ip)
        return "deleted"

    def forget(self, ip: str) -> None:
        """Drop an IP that is no longer configured (after it was released)."""
        vnn = self.vnns.pop(canonical_ip(ip), None)
        if vnn is not None and vnn.iface is not None:
            self._unref(vnn.iface)
        self._drop_orphaned_ifaces()

    def _drop_orphaned_ifaces(self) -> None:
        used = {name for vnn in self.vnns.values() for name in vnn.ifaces}
        for name in list(self.ifaces):
            if name not in used and self.ifaces[name].references == 0:
                del self.ifaces[name]

    # -- queries ---------------------------------------------------------------------------------
    def find(self, ip: str) -> Vnn | None:
        try:
            return self.vnns.get(canonical_ip(ip))
        except ValueError:
            return None

    def __iter__(self):
        return iter(self.vnns.values())

    def __len__(self) -> int:
        return len(self.vnns)

    def held(self) -> list[Vnn]:
        return [v for v in self.vnns.values() if v.iface is not None]

    def best_iface(self, vnn: Vnn) -> str | None:
        """The least-referenced interface of `vnn` with link up (first one wins ties)."""
        best: Interface | None = None
        for name in vnn.ifaces:
            iface = self.ifaces.get(name)
            if iface is None or not iface.link_up:
                continue
            if best is None or iface.references < best.references:
                best = iface
        return best.name if best else None

    def available(self, vnn: Vnn, node_can_host: bool) -> bool:
        """CTDB's ctdb_vnn_available: the node may host IPs and some interface has link."""
        if not node_can_host or vnn.delete_pending:
            return False
        if vnn.iface is not None and self.ifaces[vnn.iface].link_up:
            return True
        return any(self.ifaces[name].link_up for name in vnn.ifaces if name in self.ifaces)

    def interface_list(self) -> list[Interface]:
        return list(self.ifaces.values())

    # -- changes ---------------------------------------------------------------------------------
    def assign(self, vnn: Vnn, iface: str) -> None:
        """This node now holds `vnn` on `iface`."""
        if vnn.iface is not None:
            self._unref(vnn.iface)
        vnn.iface = iface
        self.ifaces.setdefault(iface, Interface(iface)).references += 1
        vnn.pnn = self.my_pnn

    def unassign(self, vnn: Vnn, new_owner: int | None = None) -> None:
        """This node no longer holds `vnn`; `new_owner` is where it went (if known)."""
        if vnn.iface is not None:
            self._unref(vnn.iface)
        vnn.iface = None
        if new_owner is not None:
            vnn.pnn = new_owner
        elif vnn.pnn == self.my_pnn:
            vnn.pnn = UNKNOWN_PNN

    def _unref(self, name: str) -> None:
        iface = self.ifaces.get(name)
        if iface is not None and iface.references > 0:
            iface.references -= 1

    def set_link(self, name: str, up: bool) -> bool:
        """Record an interface's link state; True if it changed. KeyError if unknown."""
        iface = self.ifaces[name]
        if iface.link_up == up:
            return False
        iface.link_up = up
        return True


def given_away(held: Iterable[str], leader_view: Iterable[tuple[str, int]], my_pnn: int) -> list[tuple[str, int]]:
    """The IPs this node holds that the leader's table gives to another node, with that node.

    A leader that lost touch with this node (a partition, packet loss, a loop that stalled past
    the dead timeout) moved this node's IPs to others without being able to tell it: this node
    still has them configured and answers ARP for them, as the new owner does. When it finds the
    leader again it asks for the leader's table and lets go of those (ctdb-recoverd's
    "We are still serving a public IP that we should not be serving"). An IP the leader leaves
    unassigned, or gives to this node, or does not know, stays."""
    view = {canonical_ip(ip): pnn for ip, pnn in leader_view}
    out = []
    for ip in held:
        owner = view.get(canonical_ip(ip))
        if owner is not None and owner not in (my_pnn, UNKNOWN_PNN):
            out.append((ip, owner))
    return out
