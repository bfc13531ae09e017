"""Controls about the node and the cluster: identity and liveness, the node map and vnnmap,
recovery mode, admin transitions (disable/enable/stop/continue, bans, roles), tunables and
debug levels, shutdown.

Status conventions follow ctdbd 4.17: GET_PNN, GET_PID, PING and GET_RECMODE answer in the
status; SET_TUNABLE answers 1 for an obsolete tunable.
"""

from __future__ import annotations

import errno
import os
import time

from ..config import ConfigError, TunableValueError, UnknownTunableError, load_nodes_file
from ..log import log, notice
from ..protocol import (
    CAP_LMASTER, CAP_RECMASTER, BanState, Control, NodeAndFlags, NodeFlag,
    NodeMap, RecMode, SockAddr, Timeval, TunableList, Uptime, VarList, VnnMap,
)
from ..server.context import ControlContext
from ..server.dispatch import Request, Result
from ..server.memory import memory_report
from .registry import Handlers, reply_with, value_of

HANDLERS = Handlers()
handles = HANDLERS.handles


# -- identity and liveness -----------------------------------------------------------------------
@handles(Control.GET_PNN)
def get_pnn(ctx: ControlContext, req: Request) -> Result:
    return Result(ctx.pnn)


@handles(Control.PYCTDB_LEADER)
def pyctdb_leader(ctx: ControlContext, req: Request) -> Result:
    """The leader this node follows: a node that lost its own link to the leader asks its
    peers (core/node.py, LeaderElsewhere and leader_followed)."""
    return reply_with(req, ctx.node.leader_followed())


@handles(Control.GET_PID)
def get_pid(ctx: ControlContext, req: Request) -> Result:
    return Result(os.getpid())


@handles(Control.PING)
def ping(ctx: ControlContext, req: Request) -> Result:
    # ctdbd counts its clients, ctdb-recoverd among them; pyctdbd's recovery daemon is
    # built in, so it is counted here to report the same number for the same clients.
    return Result(len(ctx.clients) + 1)


@handles(Control.GET_RUNSTATE)
def get_runstate(ctx: ControlContext, req: Request) -> Result:
    return reply_with(req, int(ctx.node.runstate))


@handles(Control.GET_CAPABILITIES)
def get_capabilities(ctx: ControlContext, req: Request) -> Result:
    return reply_with(req, ctx.node.capabilities)


@handles(Control.UPTIME)
def uptime(ctx: ControlContext, req: Request) -> Result:
    return reply_with(req, Uptime(Timeval.from_seconds(time.time()), Timeval.from_seconds(ctx.daemon.start_wall),
                                  Timeval.from_seconds(ctx.recovery.last_started),
                                  Timeval.from_seconds(ctx.recovery.last_finished)))


@handles(Control.SHUTDOWN)
def shutdown(ctx: ControlContext, req: Request) -> Result:
    notice("Received SHUTDOWN command.")
    return Result(0, after=lambda: ctx.daemon.request_shutdown("SHUTDOWN control"))


@handles(Control.RECD_PING)
def recd_ping(ctx: ControlContext, req: Request) -> Result:
    return Result(0)


@handles(Control.GET_DEBUG)
def get_debug(ctx: ControlContext, req: Request) -> Result:
    return reply_with(req, ctx.daemon.debug_level)


@handles(Control.SET_DEBUG)
def set_debug(ctx: ControlContext, req: Request) -> Result:
    ctx.daemon.set_debug_level(value_of(req))
    return Result(0)


@handles(Control.DUMP_MEMORY)
def dump_memory(ctx: ControlContext, req: Request) -> Result:
    # ctdbd sends the report without its trailing NUL; the tool prints it as it is.
    return Result(0, memory_report().encode())


@handles(Control.GET_RECLOCK_FILE)
def get_reclock_file(ctx: ControlContext, req: Request) -> Result:
    lock = ctx.config.cluster_lock
    return reply_with(req, lock.setting if lock is not None else None)


# -- node map, vnnmap, recovery ------------------------------------------------------------------
def _nodemap(entries) -> NodeMap:
    return NodeMap([NodeAndFlags(pnn, flags, SockAddr(address, 0)) for pnn, flags, address in entries])


@handles(Control.GET_NODEMAP)
def get_nodemap(ctx: ControlContext, req: Request) -> Result:
    return reply_with(req, _nodemap(ctx.node.nodemap.wire_entries()))


@handles(Control.GET_NODES_FILE)
def get_nodes_file(ctx: ControlContext, req: Request) -> Result:
    source = ctx.config.nodes_source
    if source.startswith("!"):
        entries = [(n.pnn, int(NodeFlag.DELETED) if n.deleted or n.address is None else 0,
                    str(n.address) if n.address is not None and not n.deleted else "0.0.0.0")
                   for n in ctx.config.nodes]
    else:
        try:
            nodes = load_nodes_file(source)
        except ConfigError as exc:
            log.error("GET_NODES_FILE: %s", exc)
            return Result(-1, errmsg=str(exc))
        entries = [(n.pnn, int(NodeFlag.DELETED) if n.deleted else 0,
                    str(n.address) if n.address is not None else "0.0.0.0") for n in nodes]
    return reply_with(req, _nodemap(entries))


@handles(Control.GETVNNMAP)
def getvnnmap(ctx: ControlContext, req: Request) -> Result:
    return reply_with(req, ctx.recovery.vnnmap)


@handles(Control.SETVNNMAP)
def setvnnmap(ctx: ControlContext, req: Request) -> Result:
    vnnmap: VnnMap = value_of(req)
    error = ctx.recovery.set_vnnmap(vnnmap)
    return Result(-1, errmsg=error) if error else Result(0)


@handles(Control.GET_RECMODE)
def get_recmode(ctx: ControlContext, req: Request) -> Result:
    return Result(int(ctx.recovery.recmode))


@handles(Control.SET_RECMODE)
def set_recmode(ctx: ControlContext, req: Request) -> Result:
    mode = value_of(req)
    error = ctx.recovery.set_recmode(mode)
    if error:
        return Result(-1, errmsg=error)
    if mode == RecMode.ACTIVE and req.client is not None:
        ctx.leader.recovery_wanted()         # `ctdb recover`
    return Result(0)


@handles(Control.START_RECOVERY)
def start_recovery(ctx: ControlContext, req: Request) -> Result:
    ctx.recovery.recovery_started()
    return Result(0)


@handles(Control.END_RECOVERY)
def end_recovery(ctx: ControlContext, req: Request) -> Result:
    ctx.recovery.recovery_finished()
    return Result(0)


@handles(Control.MODIFY_FLAGS)
def modify_flags(ctx: ControlContext, req: Request) -> Result:
    change = value_of(req)
    log.info("MODIFY_FLAGS for node %u from node %u ignored: every node pushes its own flags",
             change.pnn, req.src)
    return Result(0)


@handles(Control.STARTUP)
def startup(ctx: ControlContext, req: Request) -> Result:
    if req.src != ctx.pnn:
        ctx.connections.push_all(req.src)
    return Result(0)


# -- admin transitions ---------------------------------------------------------------------------
_ADMIN = {Control.DISABLE_NODE: "disable", Control.ENABLE_NODE: "enable", Control.STOP_NODE: "stop",
          Control.CONTINUE_NODE: "continue"}


@handles(*_ADMIN)
def admin_transition(ctx: ControlContext, req: Request) -> Result:
    ctx.node.admin(_ADMIN[Control(req.opcode)])
    return Result(0)


@handles(Control.SET_BAN_STATE)
def set_ban_state(ctx: ControlContext, req: Request) -> Result:
    ban: BanState = value_of(req)
    if ban.pnn != ctx.pnn:
        log.error("SET_BAN_STATE for node %u ignored: this is node %u", ban.pnn, ctx.pnn)
        return Result(-1, errmsg=f"ban state is for node {ban.pnn}, this is node {ctx.pnn}")
    if ban.time and not ctx.tunables.get("EnableBans"):
        log.warning("Bans are disabled (EnableBans=0): ban of %u seconds refused", ban.time)
        return Result(-1, errmsg="bans are disabled")
    ctx.node.ban(ban.time)
    return Result(0)


@handles(Control.GET_BAN_STATE)
def get_ban_state(ctx: ControlContext, req: Request) -> Result:
    return reply_with(req, BanState(ctx.pnn, ctx.node.nodemap.ban.seconds))


@handles(Control.SET_LMASTERROLE, Control.SET_RECMASTERROLE)
def set_role(ctx: ControlContext, req: Request) -> Result:
    bit = CAP_LMASTER if req.opcode == Control.SET_LMASTERROLE else CAP_RECMASTER
    ctx.node.set_role(bit, value_of(req) != 0)
    return Result(0)


# -- tunables ------------------------------------------------------------------------------------
@handles(Control.GET_ALL_TUNABLES)
def get_all_tunables(ctx: ControlContext, req: Request) -> Result:
    return reply_with(req, TunableList(ctx.tunables.wire_values()))


@handles(Control.LIST_TUNABLES)
def list_tunables(ctx: ControlContext, req: Request) -> Result:
    return reply_with(req, VarList(ctx.tunables.names()))


@handles(Control.GET_TUNABLE)
def get_tunable(ctx: ControlContext, req: Request) -> Result:
    name = value_of(req) or ""
    try:
        return reply_with(req, ctx.tunables.get(name))
    except UnknownTunableError:
        return Result(-errno.EINVAL, errmsg=f"no such tunable {name}")


@handles(Control.SET_TUNABLE)
def set_tunable(ctx: ControlContext, req: Request) -> Result:
    tunable = value_of(req)
    name = tunable.name or ""
    try:
        ctx.tunables.set(name, tunable.value)
        obsolete = ctx.tunables.is_obsolete(name)
    except UnknownTunableError:
        return Result(-1, errmsg=f"no such tunable {name}")
    except TunableValueError as exc:
        return Result(-1, errmsg=str(exc))
    notice("Tunable %s set to %u", ctx.tunables.canonical_name(name), tunable.value)
    ctx.daemon.apply_tunables()
    return Result(1 if obsolete else 0)
