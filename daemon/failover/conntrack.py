"""Discover established client connections on our public IPs (sock_diag, no registration).

CTDB only tickles connections that smbd (or ``ctdb addtickle``) registered; a plain TCP
service on a public IP is never reset on failover. The daemon can poll this instead and
share the result like registered tickles. One call is a filtered kernel dump (the kernel
matches the local addresses), so polling every second is cheap even with thousands of
unrelated sockets on the node.
"""

from __future__ import annotations

from collections.abc import Iterable

from .packets import Endpoint
from .sockdiag import ESTABLISHED_ONLY, SockDiag

Connection = tuple[Endpoint, Endpoint]


def established_connections(local_ips: Iterable[str], diag: SockDiag | None = None) -> list[Connection]:
    """``[(server (ip, port), client (ip, port)), ...]`` for every ESTABLISHED TCP connection
    whose local address is one of ``local_ips``; IPv4-mapped IPv6 sockets appear as IPv4.

    Pass a long-lived ``diag`` when polling; without one a socket is opened for the call.
    """
    ips = list(local_ips)
    if not ips:
        return []
    owner = diag or SockDiag()
    try:
        return [(info.local, info.remote) for info in owner.tcp_sockets(ips, states=ESTABLISHED_ONLY)]
    finally:
        if diag is None:
            owner.close()
