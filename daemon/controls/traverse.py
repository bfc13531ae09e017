"""Traverse controls: TRAVERSE_START / TRAVERSE_START_EXT from a local client (smbd's
ctdbd_traverse, `ctdb catdb`), TRAVERSE_ALL(_EXT), TRAVERSE_DATA and TRAVERSE_KILL between nodes
(all NOREPLY). `ctx.traverses` is the `TraverseService`."""

from __future__ import annotations

from ..protocol import Control, RecData, TraverseAll, TraverseAllExt, TraverseStart, TraverseStartExt
from ..server.context import ControlContext
from ..server.dispatch import Request, Result
from .registry import Handlers, value_of

HANDLERS = Handlers()
handles = HANDLERS.handles


@handles(Control.TRAVERSE_START, Control.TRAVERSE_START_EXT)
def traverse_start(ctx: ControlContext, req: Request) -> Result:
    request: TraverseStart | TraverseStartExt = value_of(req)
    if req.client is None:
        return Result(-1, errmsg="No client found")          # ctdbd: only its own clients
    # The answer's `after` starts the traverse once the reply is out: no record overtakes it.
    return ctx.traverses.start(req.client_id, request)


@handles(Control.TRAVERSE_ALL, Control.TRAVERSE_ALL_EXT)
def traverse_all(ctx: ControlContext, req: Request) -> Result:
    request: TraverseAll | TraverseAllExt = value_of(req)
    ctx.traverses.traverse_all(request)
    return Result(0)


@handles(Control.TRAVERSE_DATA)
def traverse_data(ctx: ControlContext, req: Request) -> Result:
    record: RecData = value_of(req)
    ctx.traverses.data(req.src, record)
    return Result(0)


@handles(Control.TRAVERSE_KILL)
def traverse_kill(ctx: ControlContext, req: Request) -> Result:
    request: TraverseStart = value_of(req)
    ctx.traverses.kill(request)
    return Result(0)
