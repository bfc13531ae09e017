"""Vacuuming controls (server/vacuum.py does the work): smbd's SCHEDULE_FOR_DELETION, and
VACUUM_FETCH and TRY_DELETE_RECORDS from other nodes' vacuum runs; DB_VACUUM runs one now."""

from __future__ import annotations

from ..protocol import Control
from ..server.context import ControlContext
from ..server.dispatch import Request, Result
from .registry import Handlers, value_of

HANDLERS = Handlers()
handles = HANDLERS.handles


@handles(Control.SCHEDULE_FOR_DELETION)
def schedule_for_deletion(ctx: ControlContext, req: Request) -> Result:
    # smbd deleted a record (it left a header-only tombstone): queue it for the next run.
    key_data = value_of(req)
    ctx.vacuum.schedule(key_data.db_id, bytes(key_data.key), key_data.header)
    return Result(0)


@handles(Control.VACUUM_FETCH)
def vacuum_fetch(ctx: ControlContext, req: Request) -> Result:
    ctx.vacuum.vacuum_fetch(value_of(req))
    return Result(0)


@handles(Control.TRY_DELETE_RECORDS)
async def try_delete_records(ctx: ControlContext, req: Request) -> Result:
    return Result(0, (await ctx.vacuum.try_delete_records(value_of(req))).pack())


@handles(Control.DB_VACUUM)
async def db_vacuum(ctx: ControlContext, req: Request) -> Result:
    # One run over the database's queue; `full_vacuum_run` first traverses it for tombstones.
    request = value_of(req)
    await ctx.vacuum.run_now(request.db_id, full=request.full_vacuum_run)
    return Result(0)
