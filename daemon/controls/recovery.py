"""Database recovery controls, one node's side (`server/db_recovery.py`, decisions in
`core/db/recovery_node.py`): DB_FREEZE, DB_THAW, DB_TRANSACTION_START / _COMMIT / _CANCEL,
WIPE_DATABASE, DB_PULL, DB_PUSH_START, DB_PUSH_CONFIRM — what ctdbd 4.17's recovery helper (and
`ctdb wipedb` / `restoredb`) send, and what pyctdbd's own leader sends. Payloads as ctdbd: a u32
db_id, a `ctdb_transdb` {db_id, tid} or a `ctdb_pulldb_ext` {db_id, lmaster, srvid}; DB_PULL and
DB_PUSH_CONFIRM answer a u32 record count; the others only a status. GET_DB_SEQNUM is the
persistent-commit domain's (`controls/persistent.py`). Also pyctdbd's own
PYCTDB_RECOVERY_HANDOFFS, _DEFER, PYCTDB_GATHER_COPIES and PYCTDB_SWEEP_KEYS
(`server/partial_recovery.py`): the recovery after nodes were lost or joined, which freezes and
copies nothing, and the sweep that settles its keys afterwards.
"""

from __future__ import annotations

from ..protocol import Control
from ..server.context import ControlContext
from ..server.dispatch import Request, Result
from .registry import Handlers, value_of

HANDLERS = Handlers()
handles = HANDLERS.handles


@handles(Control.DB_FREEZE)
async def db_freeze(ctx: ControlContext, req: Request) -> Result:
    return await ctx.db_recovery.freeze(value_of(req))


@handles(Control.DB_THAW)
async def db_thaw(ctx: ControlContext, req: Request) -> Result:
    return await ctx.db_recovery.thaw(value_of(req))


@handles(Control.DB_TRANSACTION_START)
def db_transaction_start(ctx: ControlContext, req: Request) -> Result:
    return ctx.db_recovery.transaction_start(value_of(req))


@handles(Control.DB_TRANSACTION_CANCEL)
def db_transaction_cancel(ctx: ControlContext, req: Request) -> Result:
    return ctx.db_recovery.transaction_cancel(value_of(req))


@handles(Control.DB_TRANSACTION_COMMIT)
async def db_transaction_commit(ctx: ControlContext, req: Request) -> Result:
    return await ctx.db_recovery.transaction_commit(value_of(req))


@handles(Control.WIPE_DATABASE)
def wipe_database(ctx: ControlContext, req: Request) -> Result:
    return ctx.db_recovery.wipe(value_of(req))


@handles(Control.DB_PULL)
async def db_pull(ctx: ControlContext, req: Request) -> Result:
    return await ctx.db_recovery.pull(value_of(req), req.src)


@handles(Control.DB_PUSH_START)
def db_push_start(ctx: ControlContext, req: Request) -> Result:
    return ctx.db_recovery.push_start(value_of(req))


@handles(Control.DB_PUSH_CONFIRM)
async def db_push_confirm(ctx: ControlContext, req: Request) -> Result:
    return await ctx.db_recovery.push_confirm(value_of(req))


@handles(Control.PYCTDB_RECOVERY_HANDOFFS)
def pyctdb_recovery_handoffs(ctx: ControlContext, req: Request) -> Result:
    return ctx.partial_recovery.handoffs(value_of(req))


@handles(Control.PYCTDB_RECOVERY_DEFER)
def pyctdb_recovery_defer(ctx: ControlContext, req: Request) -> Result:
    return ctx.partial_recovery.defer(value_of(req))


@handles(Control.PYCTDB_GATHER_COPIES)
async def pyctdb_gather_copies(ctx: ControlContext, req: Request) -> Result:
    return await ctx.partial_recovery.gather(value_of(req))


@handles(Control.PYCTDB_SWEEP_KEYS)
async def pyctdb_sweep_keys(ctx: ControlContext, req: Request) -> Result:
    return await ctx.partial_recovery.sweep_keys(value_of(req))
