"""Persistent-database transaction controls: TRANS3_COMMIT from a local client (smbd's commit),
UPDATE_RECORD between nodes (each node's share of a commit) and GET_DB_SEQNUM (smbd after a
failed commit, and recovery). `ctx.persistent` is the `PersistentCommitService`."""

from __future__ import annotations

from ..protocol import Control
from ..server.context import ControlContext
from ..server.dispatch import Request, Result
from ..server.persistent_commits import SeqnumRefused
from .registry import Handlers, reply_with, value_of

HANDLERS = Handlers()
handles = HANDLERS.handles


@handles(Control.TRANS3_COMMIT)
async def trans3_commit(ctx: ControlContext, req: Request) -> Result:
    if req.client is None:
        # ctdbd: "can not match persistent_store to a client. Returning error"
        return Result(-1, errmsg="TRANS3_COMMIT from a node, not from a local client")
    # The payload is the core's to parse: a bad one is refused there, before anything is sent.
    return await ctx.persistent.commit(req.client_id, req.data)


@handles(Control.UPDATE_RECORD)
async def update_record(ctx: ControlContext, req: Request) -> Result:
    return await ctx.persistent.update_record(req.data, req.generation)


@handles(Control.GET_DB_SEQNUM)
async def get_db_seqnum(ctx: ControlContext, req: Request) -> Result:
    db_id: int = value_of(req)
    try:
        seqnum = await ctx.persistent.db_seqnum(db_id)
    except SeqnumRefused as exc:
        return Result(-1, errmsg=str(exc))
    return reply_with(req, seqnum)
