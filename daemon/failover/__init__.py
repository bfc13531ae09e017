"""pyctdbd's effects on the host when it takes over or releases a public IP.

Takeover, in this order and as fast as possible: ``AddressManager.add`` →
``ArpAnnouncer.announce`` (GARP request + reply, or IPv6 unsolicited NA) →
``TcpSegmentSender.tickle`` for each known client connection; the caller repeats announce +
tickle in bursts. Release: ``kill_connections`` (while the address is still there) →
``AddressManager.delete``, or ``release_ip`` which does both in that order. ``established_connections`` finds client connections on our
public IPs that no service registered.

Everything here is synchronous and built on persistent sockets (netlink, AF_PACKET, raw
IP), so each call costs microseconds to well under a millisecond and can run on the
daemon's event loop. Needs CAP_NET_ADMIN and CAP_NET_RAW.
"""

from __future__ import annotations

from .addresses import AddressEntry, AddressManager
from .arp import ArpAnnouncer
from .conntrack import Connection, established_connections
from .errors import FailoverError, InterfaceNotFound
from .killtcp import kill_connections, release_ip
from .packets import PacketError
from .sockdiag import SockDiag, TcpSocketInfo
from .tcp_segments import TcpSegmentSender

__all__ = [
    "AddressEntry",
    "AddressManager",
    "ArpAnnouncer",
    "Connection",
    "FailoverError",
    "InterfaceNotFound",
    "PacketError",
    "SockDiag",
    "TcpSocketInfo",
    "TcpSegmentSender",
    "established_connections",
    "kill_connections",
    "release_ip",
]
