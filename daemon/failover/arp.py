"""Gratuitous ARP / unsolicited Neighbour Advertisement from persistent AF_PACKET sockets.

One ``SOCK_RAW`` packet socket per interface, opened on first use (or by ``prepare``) and
kept: ``close()`` of
an AF_PACKET socket waits for an RCU grace period (8-36 ms measured in the lab), far longer
than the send itself. Protocol 0 means the socket receives nothing, so it never queues
traffic. The source MAC is the interface's own, read from the bound socket. Sockets are
created in the calling thread's network namespace, so a socket opened later from another
namespace would bind to a different interface of the same name: that raises instead.

If the interface disappears and comes back (a new ifindex, maybe a new MAC), the send fails
with ENXIO; the socket is then reopened once and the send retried. The stale socket is only
closed by ``close()``, so the slow close stays off the takeover path.
"""

from __future__ import annotations

import errno
import socket

from .errors import FailoverError, InterfaceNotFound
from .netns import NetnsGuard
from .packets import announcement_frames, parse_ip

ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
# The bound interface was deleted (a new one with the same name gets a new ifindex).
_STALE_ERRNOS = (errno.ENXIO, errno.ENODEV)


class _Link:
    __slots__ = ("sock", "mac", "hatype")

    def __init__(self, sock: socket.socket, mac: bytes, hatype: int) -> None:
        self.sock = sock
        self.mac = mac
        self.hatype = hatype


class ArpAnnouncer:
    """Sends one announcement round for a public IP on an interface."""

    def __init__(self) -> None:
        self._links: dict[str, _Link] = {}
        self._stale: list[socket.socket] = []
        self._netns = NetnsGuard("ArpAnnouncer")

    def _open(self, iface: str) -> _Link:
        self._netns.check()
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            sock.bind((iface, 0))
            sock.setblocking(False)  # a full device queue must not stall the event loop
            _name, _proto, _pkttype, hatype, mac = sock.getsockname()
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.ENODEV, errno.ENXIO, errno.EINVAL) or isinstance(exc, socket.gaierror):
                raise InterfaceNotFound(iface) from exc
            raise FailoverError(f"cannot open a packet socket on {iface}: {exc}") from exc
        except UnicodeError as exc:
            sock.close()
            raise InterfaceNotFound(repr(iface), "not a valid interface name") from exc
        link = _Link(sock, mac, hatype)
        self._links[iface] = link
        return link

    def _link(self, iface: str) -> _Link:
        return self._links.get(iface) or self._open(iface)

    def mac(self, iface: str) -> bytes:
        """The MAC the announcements on ``iface`` carry."""
        return self._link(iface).mac

    def prepare(self, iface: str) -> None:
        """Open the socket for ``iface`` now (e.g. at start-up) rather than on first announce."""
        self._link(iface)

    def announce(self, iface: str, ip: str) -> int:
        """Send GARP request + reply (IPv4) or an unsolicited NA (IPv6) for ``ip`` on ``iface``.

        Returns the number of frames sent (0 on loopback, which has no neighbours).
        """
        parse_ip(ip)  # a bad address raises PacketError before any socket work
        link = self._link(iface)
        if link.hatype == ARPHRD_LOOPBACK:
            return 0
        if link.hatype != ARPHRD_ETHER or len(link.mac) != 6:
            raise FailoverError(f"{iface} is not an Ethernet interface (hardware type {link.hatype})")
        try:
            return self._send(link, ip)
        except OSError as exc:
            if exc.errno not in _STALE_ERRNOS:
                raise FailoverError(f"announce {ip} on {iface}: {exc}") from exc
        # The interface was replaced under us: start again on a fresh socket, once.
        self._stale.append(self._links.pop(iface).sock)
        link = self._link(iface)
        try:
            return self._send(link, ip)
        except OSError as exc:
            raise FailoverError(f"announce {ip} on {iface}: {exc}") from exc

    @staticmethod
    def _send(link: _Link, ip: str) -> int:
        frames = announcement_frames(link.mac, ip)
        for frame in frames:
            link.sock.send(frame)
        return len(frames)

    def _drop(self, iface: str) -> None:
        link = self._links.pop(iface, None)
        if link is not None:
            link.sock.close()

    def close(self) -> None:
        """Close every socket (slow: one RCU grace period each). Call at shutdown."""
        for iface in list(self._links):
            self._drop(iface)
        for sock in self._stale:
            sock.close()
        self._stale.clear()

    def __enter__(self) -> ArpAnnouncer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
