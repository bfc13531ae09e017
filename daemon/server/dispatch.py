"""Control dispatch: a control to answer (`Request`), its answer (`Result`), and the dispatcher
that finds the handler in the registry it was handed, runs it (a handler may be a coroutine:
those that wait on event scripts or other nodes) and turns every failure into an error reply.

Handlers are `handler(ctx, request) -> Result | Awaitable[Result]`; `daemon/controls/` holds
them by domain and builds the registry. Status conventions follow ctdbd 4.17: "simple"
controls answer in the status, the others with status 0 and a payload, or -1 and an error text.
An opcode without a handler is answered -1 with a text saying so, and logged once per opcode.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..log import log
from ..protocol import Control, ProtocolError

if TYPE_CHECKING:
    from ..net.local import Client


@dataclass
class Request:
    """One control to answer: where it came from and its raw payload."""

    opcode: int
    flags: int
    srvid: int
    client_id: int
    data: bytes
    src: int                       # origin node (this node for local clients)
    client: Client | None = None
    generation: int = 0            # the sender's generation in the packet header (0: unknown)


@dataclass
class Result:
    status: int = 0
    data: bytes = b""
    errmsg: str | None = None
    after: Callable[[], None] | None = None     # run once the reply has been sent


Handler = Callable[[Any, Request], "Result | Awaitable[Result]"]
Registry = Mapping[int, Handler]
Spawn = Callable[[Awaitable[None], str], object]


def control_name(opcode: int) -> str:
    try:
        return f"{Control(opcode).name} ({opcode})"
    except ValueError:
        return str(opcode)


def origin(req: Request) -> str:
    if req.client is not None:
        return f"client {req.client.client_id} (pid {req.client.pid})"
    return f"node {req.src}"


class ControlDispatcher:
    def __init__(self, registry: Registry, spawn: Spawn) -> None:
        self.registry = registry
        self.context: Any = None          # handed to every handler; set once services exist
        self._spawn = spawn
        self._unsupported_seen: set[int] = set()

    def dispatch(self, req: Request, reply: Callable[[Result], None]) -> None:
        handler = self.registry.get(req.opcode)
        if handler is None:
            if req.opcode not in self._unsupported_seen:      # once per opcode: no log flood
                self._unsupported_seen.add(req.opcode)
                log.warning("Unsupported control %s from %s; answered with an error",
                            control_name(req.opcode), origin(req))
            reply(Result(-1, errmsg=f"control {control_name(req.opcode)} is not supported by pyctdbd"))
            return
        try:
            outcome = handler(self.context, req)
        except Exception as exc:
            reply(_failure(req, exc))
            return
        if not inspect.isawaitable(outcome):
            reply(outcome)
            return

        async def finish() -> None:
            try:
                res = await outcome
            except Exception as exc:
                res = _failure(req, exc)
            reply(res)

        self._spawn(finish(), f"control-{req.opcode}")


def _failure(req: Request, exc: Exception) -> Result:
    if isinstance(exc, ProtocolError):
        log.warning("Malformed control %s from %s: %s", control_name(req.opcode), origin(req), exc)
        return Result(-1, errmsg=f"malformed request: {exc}")
    log.error("Control %s from %s failed", control_name(req.opcode), origin(req), exc_info=exc)
    return Result(-1, errmsg=f"internal error: {exc}")
