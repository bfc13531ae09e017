"""Statistics controls: STATISTICS (`ctdb statistics`), STATISTICS_RESET (`ctdb
statisticsreset`), GET_STAT_HISTORY (`ctdb stats`), GET_DB_STATISTICS (`ctdb dbstatistics`) and
RECD_RECLOCK_LATENCY (the recovery daemon's cluster-lock latency, kept in reclock.recd).

As ctdbd 4.17: the payloads are ``struct ctdb_statistics`` (488 B), ``ctdb_statistics_list``
(always MAX_STAT_HISTORY entries) and ``ctdb_db_statistics`` (464 B + keys), encoded by
``protocol/statistics.py``; an unknown db_id is -1. The figures come from ``ctx.statistics``
(``server/statistics.py``).
"""

from __future__ import annotations

from ..protocol import Control
from ..protocol.statistics import StatisticsList
from ..server.context import ControlContext
from ..server.dispatch import Request, Result
from .registry import Handlers, value_of

HANDLERS = Handlers()
handles = HANDLERS.handles


@handles(Control.STATISTICS)
def statistics(ctx: ControlContext, req: Request) -> Result:
    return Result(0, ctx.statistics.statistics().pack())


@handles(Control.STATISTICS_RESET)
def statistics_reset(ctx: ControlContext, req: Request) -> Result:
    ctx.statistics.reset()
    return Result(0)


@handles(Control.GET_STAT_HISTORY)
def get_stat_history(ctx: ControlContext, req: Request) -> Result:
    return Result(0, StatisticsList(ctx.statistics.history()).pack())


@handles(Control.GET_DB_STATISTICS)
def get_db_statistics(ctx: ControlContext, req: Request) -> Result:
    db_id = value_of(req)
    stats = ctx.statistics.db_statistics(db_id)
    if stats is None:
        return Result(-1, errmsg=f"Unknown db_id 0x{db_id:08x} in get_db_statistics")
    return Result(0, stats.pack())


@handles(Control.RECD_RECLOCK_LATENCY)
def recd_reclock_latency(ctx: ControlContext, req: Request) -> Result:
    ctx.statistics.recd_reclock_latency(value_of(req))
    return Result(0)
