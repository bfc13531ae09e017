"""Messaging controls: SRVID registration of local clients and the liveness checks other
processes make through the daemon (PROCESS_EXISTS, CHECK_PID_SRVID: 0 = the process exists,
else -1, in the status as ctdbd answers)."""

from __future__ import annotations

from ..protocol import Control, ReqMessage, Srvid, encode_packet, pack_message
from ..protocol import UNKNOWN_PNN
from ..server.context import ControlContext
from ..server.dispatch import Request, Result
from .registry import Handlers, value_of

HANDLERS = Handlers()
handles = HANDLERS.handles


@handles(Control.PROCESS_EXISTS)
def process_exists(ctx: ControlContext, req: Request) -> Result:
    pid = value_of(req)
    return Result(0 if ctx.clients.has_pid(pid) else -1)


@handles(Control.CHECK_PID_SRVID)
def check_pid_srvid(ctx: ControlContext, req: Request) -> Result:
    value = value_of(req)
    return Result(0 if ctx.clients.pid_has_srvid(value.pid, value.srvid) else -1)


@handles(Control.REGISTER_SRVID)
def register_srvid(ctx: ControlContext, req: Request) -> Result:
    client = req.client
    if client is None:
        return Result(0)
    ctx.clients.register_srvid(client, req.srvid)
    leader = ctx.node.leader
    if req.srvid == Srvid.LEADER and leader != UNKNOWN_PNN:
        # A new listener learns the leader at once, as from ctdb-recoverd's next broadcast.
        def tell_leader() -> None:
            client.send(encode_packet(ReqMessage(Srvid.LEADER, pack_message(Srvid.LEADER, leader)),
                                      destnode=ctx.pnn, srcnode=leader, reqid=0))

        return Result(0, after=tell_leader)
    return Result(0)


@handles(Control.DEREGISTER_SRVID)
def deregister_srvid(ctx: ControlContext, req: Request) -> Result:
    if req.client is None:
        return Result(0)
    return Result(0 if ctx.clients.deregister_srvid(req.client, req.srvid) else -1)
