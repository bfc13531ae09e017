"""The one adapter between the cores' types and the wire's: election messages, TCP
connections, public IPs and socket addresses. The cores know nothing of the wire; the
protocol package nothing of the cores."""

from __future__ import annotations

from ..core.election import ElectionMessage
from ..core.tickles import Connection
from ..failover.effects import ConnPair
from ..protocol import Connection as WireConnection
from ..protocol import ElectionMessage as WireElectionMessage
from ..protocol import PublicIp, SockAddr, Timeval


def election_to_wire(m: ElectionMessage) -> WireElectionMessage:
    return WireElectionMessage(m.num_connected, Timeval.from_seconds(m.priority_time), m.pnn, m.node_flags)


def election_from_wire(m: WireElectionMessage) -> ElectionMessage:
    return ElectionMessage(m.num_connected, m.priority_time.to_seconds(), m.pnn, m.node_flags)


def wire_conn(conn: Connection) -> WireConnection:
    return WireConnection(SockAddr(conn.src_ip, conn.src_port), SockAddr(conn.dst_ip, conn.dst_port))


def conn_from_wire(conn: WireConnection) -> Connection | None:
    c = conn.canonical()
    if c.src.ip is None or c.dst.ip is None:
        return None
    return Connection.make(str(c.src.ip), c.src.port, str(c.dst.ip), c.dst.port)


def conn_of(pair: ConnPair) -> Connection:
    """A (server, client) endpoint pair from the host's socket table."""
    (server_ip, server_port), (client_ip, client_port) = pair
    return Connection.make(client_ip, client_port, server_ip, server_port)


def public_ip(pnn: int, ip: str) -> PublicIp:
    return PublicIp(pnn, SockAddr(ip, 0))


def address_of(value: SockAddr) -> str | None:
    """The canonical address text of a socket address (None for AF_UNSPEC)."""
    c = value.canonical()
    return str(c.ip) if c.ip is not None else None
