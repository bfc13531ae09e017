"""Control handlers by domain, `handler(ctx, request) -> Result` (or a coroutine for those that
wait on event scripts or other nodes), `ctx` being the services' public face
(`server.context.ControlContext`). `registry()` is the table the daemon is handed."""

from __future__ import annotations

from ..server.dispatch import Handler
from . import (
    connections, databases, ips, messaging, node, persistent, recovery, statistics, traverse, vacuum,
)

DOMAINS = (node, messaging, ips, connections, databases, persistent, traverse, statistics, recovery, vacuum)


def registry() -> dict[int, Handler]:
    table: dict[int, Handler] = {}
    for domain in DOMAINS:
        clash = table.keys() & domain.HANDLERS.keys()
        if clash:
            raise ValueError(f"controls {sorted(clash)} are handled in two domains")
        table.update(domain.HANDLERS)
    return table
