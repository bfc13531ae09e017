"""Small conversions between the wire types and the cores' types."""

from __future__ import annotations

from .core.tickles import Connection
from .protocol import UNKNOWN_PNN, PublicIp, SockAddr
from .protocol import Connection as WireConnection


def public_ip(pnn: int, ip: str) -> PublicIp:
    return PublicIp(pnn, SockAddr(ip, 0))


def wire_conn(conn: Connection) -> WireConnection:
    return WireConnection(SockAddr(conn.src_ip, conn.src_port), SockAddr(conn.dst_ip, conn.dst_port))


def conn_of(server: tuple[str, int], client: tuple[str, int]) -> Connection:
    return Connection.make(client[0], client[1], server[0], server[1])


def conn_from_wire(conn: WireConnection) -> Connection | None:
    c = conn.canonical()
    if c.src.ip is None or c.dst.ip is None:
        return None
    return Connection.make(str(c.src.ip), c.src.port, str(c.dst.ip), c.dst.port)


def pnn_text(pnn: int) -> str:
    return "nobody" if pnn == UNKNOWN_PNN else f"node {pnn}"
