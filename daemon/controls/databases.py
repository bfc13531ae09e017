"""Database controls. Clustered databases are the next milestone: until then the database map
is empty and attaching is refused with a text that says so (smbd then runs non-clustered)."""

from __future__ import annotations

from ..protocol import Control, DbMap
from ..server.context import ControlContext
from ..server.dispatch import Request, Result
from .registry import Handlers, reply_with

HANDLERS = Handlers()
handles = HANDLERS.handles


@handles(Control.GET_DBMAP)
def get_dbmap(ctx: ControlContext, req: Request) -> Result:
    return reply_with(req, DbMap([]))


@handles(Control.DB_ATTACH, Control.DB_ATTACH_PERSISTENT, Control.DB_ATTACH_REPLICATED)
def db_attach(ctx: ControlContext, req: Request) -> Result:
    return Result(-1, errmsg="clustered databases are not supported by pyctdbd yet")


@handles(Control.STATISTICS, Control.GET_STAT_HISTORY, Control.GET_DB_STATISTICS)
def statistics(ctx: ControlContext, req: Request) -> Result:
    return Result(-1, errmsg="statistics are not supported by pyctdbd yet")
