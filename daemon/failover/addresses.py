"""Public addresses on local interfaces, over one persistent rtnetlink socket.

``AddressManager`` adds, deletes and finds addresses and reads link state in the network
namespace where it was created. Every call is one netlink round trip (tens of
microseconds), so the daemon can call it straight from its event loop.

Behaviour worth knowing:
- ``add`` is idempotent (an address already on that interface is not an error) and gives
  IPv4 addresses a broadcast address like CTDB's ``ip addr add ... brd +``. IPv6 addresses
  are added with ``nodad`` by default: duplicate address detection would otherwise keep the
  address "tentative" (unusable) for about a second, which is what CTDB's script waits out.
- ``delete`` is idempotent too. Without ``promote_secondaries`` the kernel deletes every
  other address of the same subnet along with the first (primary) one; call
  ``ensure_promote_secondaries`` on every public interface at start-up.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import FailoverError, InterfaceNotFound
from .netlink import (
    NETLINK_ROUTE,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NetlinkError,
    NetlinkSocket,
    attr,
    parse_attrs,
)
from .packets import parse_ip

RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4
IFA_FLAGS = 8

IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40

IFF_UP = 0x1
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000

_IFADDRMSG = struct.Struct("=BBBBI")
_IFINFOMSG = struct.Struct("=BxHiII")

PROC_SYS_IPV4_CONF = Path("/proc/sys/net/ipv4/conf")


@dataclass(frozen=True)
class AddressEntry:
    """One address as the kernel reports it."""

    iface: str
    ip: str
    prefixlen: int
    flags: int

    @property
    def secondary(self) -> bool:
        return bool(self.flags & IFA_F_SECONDARY)

    @property
    def tentative(self) -> bool:
        return bool(self.flags & IFA_F_TENTATIVE)


def _check_iface_name(iface: str) -> None:
    # Linux names: 1..15 bytes, no '/', no whitespace, not '.' or '..'. The check also keeps
    # names that could escape /proc/sys/net/ipv4/conf/ away from the sysctl writes.
    if (
        not isinstance(iface, str)
        or not 0 < len(iface.encode()) <= 15
        or iface in (".", "..")
        or any(c in iface for c in "/\0:") or any(c.isspace() for c in iface)
    ):
        raise InterfaceNotFound(str(iface), "not a valid interface name")


class AddressManager:
    """Address and link operations in the current network namespace."""

    def __init__(self) -> None:
        self._nl = NetlinkSocket(NETLINK_ROUTE)

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> AddressManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- interfaces -----------------------------------------------------------------

    def _link(self, iface: str) -> tuple[int, int, dict[int, bytes]]:
        """(index, flags, attributes) of ``iface``, looked up by name through netlink.

        Netlink rather than if_nametoindex(): the socket stays in the namespace where the
        manager was created, whatever namespace the calling thread is in later.
        """
        _check_iface_name(iface)
        payload = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, iface.encode() + b"\0")
        try:
            body = self._nl.get(RTM_GETLINK, payload, f"read link {iface}")
        except NetlinkError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                raise InterfaceNotFound(iface) from exc
            raise
        _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(body)
        return index, flags, parse_attrs(body, _IFINFOMSG.size, len(body))

    def index(self, iface: str) -> int:
        """The interface index of ``iface``; InterfaceNotFound if there is none."""
        return self._link(iface)[0]

    def _dump_links(self) -> list[tuple[int, str, int]]:
        """(index, name, flags) of every interface."""
        links = []
        for body in self._nl.dump(RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0), "list links"):
            _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(body)
            name = parse_attrs(body, _IFINFOMSG.size, len(body)).get(IFLA_IFNAME, b"").rstrip(b"\0")
            links.append((index, name.decode(errors="replace"), flags))
        return links

    def link_up(self, iface: str) -> bool:
        """True if ``iface`` is administratively up and has carrier (IFF_UP and IFF_LOWER_UP)."""
        _index, flags, _attrs = self._link(iface)
        return bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)

    def mac(self, iface: str) -> bytes:
        """The hardware address of ``iface`` (empty for interfaces without one)."""
        _index, _flags, attrs = self._link(iface)
        return attrs.get(IFLA_ADDRESS, b"")

    def interfaces(self) -> dict[str, bool]:
        """Every interface of this namespace and whether it is up (as ``link_up``)."""
        return {name: bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP) for _i, name, flags in self._dump_links()}

    # --- addresses ------------------------------------------------------------------

    @staticmethod
    def _prefixlen(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, prefixlen: int) -> int:
        if not isinstance(prefixlen, int) or not 0 <= prefixlen <= ip.max_prefixlen:
            raise FailoverError(f"bad prefix length {prefixlen!r} for {ip}")
        return prefixlen

    def add(self, iface: str, ip: str, prefixlen: int, *, nodad: bool = True) -> bool:
        """Put ``ip/prefixlen`` on ``iface``. False if it was already there (nothing done)."""
        addr = parse_ip(ip)
        plen = self._prefixlen(addr, prefixlen)
        index = self.index(iface)
        family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        flags = IFA_F_NODAD if (addr.version == 6 and nodad) else 0
        attrs = attr(IFA_LOCAL, addr.packed) + attr(IFA_ADDRESS, addr.packed)
        if addr.version == 4 and plen <= 30:
            network = ipaddress.IPv4Network(f"{addr}/{plen}", strict=False)
            attrs += attr(IFA_BROADCAST, network.broadcast_address.packed)
        payload = _IFADDRMSG.pack(family, plen, flags, 0, index) + attrs
        try:
            (code,) = self._nl.request_many([(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, payload)],
                                            f"add {addr}/{plen} on {iface}", tolerate=(errno.EEXIST,))
        except NetlinkError as exc:
            if exc.errno == errno.ENODEV:
                raise InterfaceNotFound(iface) from exc
            raise
        return code == 0

    def delete(self, iface: str, ip: str, prefixlen: int | None = None) -> bool:
        """Remove ``ip`` from ``iface``. False if it was not there (nothing done).

        With ``prefixlen`` the prefix must match too (as ``ip addr del ip/len``); for IPv4
        ``None`` removes the address whatever its prefix.
        """
        addr = parse_ip(ip)
        index = self.index(iface)
        family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        if prefixlen is None:
            if addr.version == 6:
                entry = self._find(addr, iface)
                if entry is None:
                    return False
                prefixlen = entry.prefixlen
            attrs = attr(IFA_LOCAL, addr.packed)
            plen = prefixlen if prefixlen is not None else 0
        else:
            plen = self._prefixlen(addr, prefixlen)
            attrs = attr(IFA_LOCAL, addr.packed) + attr(IFA_ADDRESS, addr.packed)
        payload = _IFADDRMSG.pack(family, plen, 0, 0, index) + attrs
        try:
            (code,) = self._nl.request_many([(RTM_DELADDR, 0, payload)], f"delete {addr} from {iface}",
                                            tolerate=(errno.EADDRNOTAVAIL, errno.ENOENT))
        except NetlinkError as exc:
            if exc.errno == errno.ENODEV:
                raise InterfaceNotFound(iface) from exc
            raise
        return code == 0

    def addresses(self, family: int = socket.AF_UNSPEC) -> list[AddressEntry]:
        """Every address in this namespace (optionally of one family)."""
        entries = []
        names: dict[int, str] | None = None
        for body in self._nl.dump(RTM_GETADDR, _IFADDRMSG.pack(family, 0, 0, 0, 0), "list addresses"):
            fam, plen, flags8, _scope, index = _IFADDRMSG.unpack_from(body)
            if family not in (socket.AF_UNSPEC, fam) or fam not in (socket.AF_INET, socket.AF_INET6):
                continue
            attrs = parse_attrs(body, _IFADDRMSG.size, len(body))
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw is None or len(raw) not in (4, 16):
                continue
            flags = struct.unpack("=I", attrs[IFA_FLAGS])[0] if len(attrs.get(IFA_FLAGS, b"")) == 4 else flags8
            if names is None:
                names = {index: name for index, name, _flags in self._dump_links()}
            entries.append(AddressEntry(names.get(index, f"#{index}"), str(ipaddress.ip_address(raw)), plen, flags))
        return entries

    def _find(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address, iface: str | None = None) -> AddressEntry | None:
        family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        text = str(addr)
        for entry in self.addresses(family):
            if entry.ip == text and (iface is None or entry.iface == iface):
                return entry
        return None

    def where(self, ip: str) -> str | None:
        """The interface that holds ``ip``, or None."""
        entry = self._find(parse_ip(ip))
        return entry.iface if entry else None

    # --- sysctls --------------------------------------------------------------------

    def ensure_promote_secondaries(self, iface: str) -> None:
        """Set net.ipv4.conf.{all,default,<iface>}.promote_secondaries = 1.

        With the default 0, deleting the primary (first) address of a subnet silently
        deletes every secondary address of that subnet: releasing one public IP would drop
        the others. With 1 the next secondary is promoted instead.

        /proc/sys/net belongs to the calling thread's network namespace (unlike the netlink
        socket, which stays where the manager was made), so call this from that namespace.
        """
        self.index(iface)  # InterfaceNotFound before touching any sysctl
        for conf in ("all", "default", iface):
            path = PROC_SYS_IPV4_CONF / conf / "promote_secondaries"
            try:
                if path.read_text().strip() != "1":
                    path.write_text("1\n")
            except FileNotFoundError as exc:
                if conf == iface:
                    raise InterfaceNotFound(iface, f"{path} is missing") from exc
                raise FailoverError(f"cannot set {path}: {exc}") from exc
            except OSError as exc:
                raise FailoverError(f"cannot set {path}: {exc}") from exc
