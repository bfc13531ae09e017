"""TCP connection-tracking controls: TCP_CLIENT from local clients (smbd), TCP_ADD/TCP_REMOVE
between nodes and from the tool (`ctdb addtickle/deltickle`), TCP_CLIENT_DISCONNECTED/PASSED,
and the tickle lists (GET/SET_TCP_TICKLE_LIST answer 1 for an address that is not a public
IP, as ctdbd does)."""

from __future__ import annotations

from ipaddress import ip_address

from ..core.tickles import Connection
from ..log import log
from ..protocol import Control, SockAddr, TickleList
from ..server.context import ControlContext
from ..server.dispatch import Request, Result
from ..server.wire import address_of, conn_from_wire, wire_conn
from .registry import Handlers, reply_with, value_of

HANDLERS = Handlers()
handles = HANDLERS.handles


def _conn(req: Request) -> Connection | None:
    return conn_from_wire(value_of(req))


@handles(Control.TCP_CLIENT)
def tcp_client(ctx: ControlContext, req: Request) -> Result:
    if not len(ctx.ips):
        return Result(0)
    conn = _conn(req)
    if conn is None:
        return Result(0)
    vnn = ctx.ips.find(conn.dst_ip)
    pid = req.client.pid if req.client is not None else 0
    if vnn is None:
        if ip_address(conn.dst_ip).is_loopback:
            return Result(0)
        log.error("Could not register TCP connection from %s to %s (not a public address) "
                  "(port %u) (client_id %u pid %u).", conn.src_ip, conn.dst_ip, conn.dst_port,
                  req.client_id, pid)
        return Result(0)
    if vnn.pnn != ctx.pnn:
        log.error("Attempt to register tcp client for IP %s we don't hold - failing "
                  "(client_id %u pid %u)", conn.dst_ip, req.client_id, pid)
        return Result(-1, errmsg="IP not held by this node")
    ctx.connections.add_local(conn, req.client_id)
    return Result(0)


@handles(Control.TCP_ADD, Control.TCP_ADD_DELAYED_UPDATE)
def tcp_add(ctx: ControlContext, req: Request) -> Result:
    if not len(ctx.ips):
        return Result(0)
    conn = _conn(req)
    if conn is None or not ctx.connections.knows_ip(conn.dst_ip):
        log.info("got TCP_ADD control for an address which is not a public address '%s'",
                 conn.dst_ip if conn else "?")
        return Result(-1, errmsg="not a public address")
    ctx.connections.add_remote(conn, from_tool=req.client is not None)
    return Result(0)


@handles(Control.TCP_REMOVE)
def tcp_remove(ctx: ControlContext, req: Request) -> Result:
    if not len(ctx.ips):
        return Result(0)
    conn = _conn(req)
    if conn is None or not ctx.connections.knows_ip(conn.dst_ip):
        log.error("unable to find public address %s", conn.dst_ip if conn else "?")
        return Result(0)
    ctx.connections.remove(conn, from_tool=req.client is not None)
    return Result(0)


@handles(Control.TCP_CLIENT_DISCONNECTED)
def tcp_client_disconnected(ctx: ControlContext, req: Request) -> Result:
    conn = _conn(req)
    if conn is not None and ctx.connections.knows_ip(conn.dst_ip):
        ctx.connections.client_disconnected(conn, req.client_id)
    return Result(0)


@handles(Control.TCP_CLIENT_PASSED)
def tcp_client_passed(ctx: ControlContext, req: Request) -> Result:
    conn = _conn(req)
    if conn is not None and ctx.connections.knows_ip(conn.dst_ip):
        ctx.connections.client_passed(conn, req.client_id)
    return Result(0)


@handles(Control.GET_TCP_TICKLE_LIST)
def get_tcp_tickle_list(ctx: ControlContext, req: Request) -> Result:
    addr: SockAddr = value_of(req)
    ip = address_of(addr)
    if ip is None or ctx.ips.find(ip) is None:
        log.error("Could not get tcp tickle list, '%s' is not a public address", addr)
        return Result(1)
    return reply_with(req, TickleList(addr, [wire_conn(c) for c in ctx.connections.connections(ip, addr.port)]))


@handles(Control.SET_TCP_TICKLE_LIST)
def set_tcp_tickle_list(ctx: ControlContext, req: Request) -> Result:
    tickles: TickleList = value_of(req)
    ip = address_of(tickles.addr)
    vnn = ctx.ips.find(ip) if ip else None
    if vnn is None:
        return Result(1)
    if vnn.pnn == ctx.pnn:
        return Result(0)           # we host it: ours is the authoritative list
    ctx.connections.replace_list(vnn.ip, [c for c in map(conn_from_wire, tickles.connections) if c is not None])
    return Result(0)
