"""Reset this node's own TCP connections on a public IP it is releasing.

CTDB's ``releaseip`` kills them (``ctdb_killtcp``: tickle, capture the reply, spoof an
RST) so that established connections cannot survive a release followed by a take of the
same IP (ACK storms). Here the kernel does it directly with ``SOCK_DESTROY`` (what
``ss -K`` uses): the local socket is aborted and the client receives an RST at once.

Call it *before* deleting the address: once the address is gone the kernel can no longer
route the RST from it, and the client is then left to time out (the local socket is still
aborted).
"""

from __future__ import annotations

from collections.abc import Iterable

from .addresses import AddressManager
from .sockdiag import CONNECTED_STATES, SockDiag


def kill_connections(
    local_ip: str,
    ports: Iterable[int] | None = None,
    diag: SockDiag | None = None,
    states: int = CONNECTED_STATES,
) -> int:
    """Abort every TCP connection whose local address is ``local_ip`` (and, if given, whose
    local port is in ``ports``); returns how many were destroyed.

    Listening sockets and TIME_WAIT entries are left alone (``states``). Raises
    FailoverError when the kernel cannot destroy sockets (no CONFIG_INET_DIAG_DESTROY,
    no CAP_NET_ADMIN).
    """
    port_set = None if ports is None else {int(p) for p in ports}
    owner = diag or SockDiag()
    try:
        victims = [
            info for info in owner.tcp_sockets([local_ip], states=states)
            if port_set is None or info.local[1] in port_set
        ]
        return owner.destroy(victims) if victims else 0
    finally:
        if diag is None:
            owner.close()


def release_ip(
    addresses: AddressManager,
    iface: str,
    ip: str,
    prefixlen: int | None = None,
    diag: SockDiag | None = None,
) -> tuple[int, bool]:
    """Release a public IP in the right order: reset its connections, then delete it.

    Returns (connections reset, address deleted). A connection opened in the microseconds
    between the two steps is not reset (CTDB closes that gap with a firewall rule).
    """
    killed = kill_connections(ip, diag=diag)
    return killed, addresses.delete(iface, ip, prefixlen)
