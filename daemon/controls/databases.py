"""Database controls without record traffic: attach and detach, the database map, a database's
path, name and open flags, health, read-only/sticky flags and sequence numbers.

As ctdbd 4.17: an attach answers a u32 db_id; GETDBPATH and GET_DBNAME a string; DB_OPEN_FLAGS an
i32 (the file's libtdb flags, what smbd opens it with); DB_GET_HEALTH the unhealthy reason or
nothing; an unknown db_id is -1.
"""

from __future__ import annotations

from collections.abc import Awaitable

from ..protocol import Control, ControlFlag, DbFlag, DbId, DbMap
from ..server.context import ControlContext
from ..server.dispatch import Request, Result
from .registry import Handlers, reply_with, value_of

HANDLERS = Handlers()
handles = HANDLERS.handles


@handles(Control.DB_ATTACH, Control.DB_ATTACH_PERSISTENT, Control.DB_ATTACH_REPLICATED)
def db_attach(ctx: ControlContext, req: Request) -> Result | Awaitable[Result]:
    client_id = req.client_id if req.client is not None else None
    answer = ctx.databases.attach(value_of(req), req.opcode, client_id,
                                  bool(req.flags & ControlFlag.ATTACH_RECOVERY))
    # Answered in this turn when the attach was not deferred: the node's next packets (record
    # calls for the database) are handled after it, as they arrived.
    return answer.result() if answer.done() else answer


@handles(Control.DB_DETACH)
async def db_detach(ctx: ControlContext, req: Request) -> Result:
    client_id = req.client_id if req.client is not None else None
    return await ctx.databases.detach(value_of(req), client_id)


@handles(Control.GET_DBMAP)
def get_dbmap(ctx: ControlContext, req: Request) -> Result:
    # Newest first, as ctdbd: an attach puts the database at the head of ctdb->db_list
    # (DLIST_ADD in ctdb_local_attach) and GET_DBMAP walks that list; `ctdb getdbmap` prints it
    # in that order. The registry keeps attach order, oldest first.
    return reply_with(req, DbMap([DbId(info.db_id, int(ctx.databases.flags_of(info)))
                                  for info in reversed(ctx.databases.databases())]))


@handles(Control.GETDBPATH)
def getdbpath(ctx: ControlContext, req: Request) -> Result:
    db = ctx.databases.database(value_of(req))
    return Result(-1, errmsg="unknown database") if db is None else reply_with(req, db.path)


@handles(Control.GET_DBNAME)
def get_dbname(ctx: ControlContext, req: Request) -> Result:
    info = ctx.databases.info(value_of(req))
    return Result(-1, errmsg="unknown database") if info is None else reply_with(req, info.name)


@handles(Control.DB_OPEN_FLAGS)
def db_open_flags(ctx: ControlContext, req: Request) -> Result:
    db = ctx.databases.database(value_of(req))
    return Result(-1, errmsg="unknown database") if db is None else reply_with(req, db.open_flags)


@handles(Control.DB_GET_HEALTH)
def db_get_health(ctx: ControlContext, req: Request) -> Result:
    status, reason = ctx.databases.health(value_of(req))
    if status:
        return Result(status, errmsg="unknown database")
    return reply_with(req, reason)


@handles(Control.DB_SET_HEALTHY)
async def db_set_healthy(ctx: ControlContext, req: Request) -> Result:
    return await ctx.databases.set_healthy(value_of(req))


@handles(Control.SET_DB_READONLY, Control.SET_DB_STICKY)
async def set_db_flag(ctx: ControlContext, req: Request) -> Result:
    flag = DbFlag.READONLY if req.opcode == Control.SET_DB_READONLY else DbFlag.STICKY
    return await ctx.databases.set_flag(value_of(req), flag)


@handles(Control.ENABLE_SEQNUM)
async def enable_seqnum(ctx: ControlContext, req: Request) -> Result:
    return await ctx.databases.enable_seqnum(value_of(req))


@handles(Control.UPDATE_SEQNUM)
async def update_seqnum(ctx: ControlContext, req: Request) -> Result:
    return await ctx.databases.update_seqnum(value_of(req), req.src)

