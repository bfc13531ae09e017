"""This node's event scripts as the daemon uses them: run an event (a missing script directory
means "no scripts", logged once; a runner error is a failed event, logged), the start-up events
that must succeed, and the event daemon socket the stock `ctdb event` tool talks to."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Sequence
from pathlib import Path

from ..config import Tunables
from ..events import (
    SHIPPED_SCRIPTS_DIR, EventDaemonServer, EventResult, EventRunner, EventScriptError, StockReplacements,
)
from ..log import log


def debug_script_path(setting: str | None, etc_dir: str) -> str | None:
    """`[event] debug script`: the file of that name in the configuration directory. As CTDB's
    manual says, a directory prefix is ignored. (ctdbd 4.17 itself validates the basename but
    runs `<etc dir>/<value>`, so an absolute setting never runs there; pyctdbd runs what the
    manual and `ctdb-config validate` describe.)"""
    if not setting:
        return None
    return os.path.join(etc_dir, os.path.basename(setting))


class ScriptEvents:
    def __init__(self, event_dir: str, env: dict[str, str], debug_script: str | None,
                 tunables: Tunables, stock_dir: str | None = None) -> None:
        """``stock_dir``: Debian's stock scripts (<data dir>/events/legacy); those pyctdbd cannot
        run (events/stock.py) run as its own scripts instead."""
        self.event_dir = event_dir
        self.tunables = tunables
        replacements = None if stock_dir is None else StockReplacements(Path(stock_dir), SHIPPED_SCRIPTS_DIR)
        self.runner = EventRunner(event_dir, env=env, debug_script=debug_script, replacements=replacements)
        self.eventd: EventDaemonServer | None = None
        self._warned_no_scripts = False

    async def run(self, event: str, args: Sequence[str] = (), *,
                  timeout: float | None = None) -> EventResult:
        if timeout is None:
            timeout = self.tunables.get("EventScriptTimeout")
        now = time.time()
        if not os.path.isdir(self.event_dir):
            if not self._warned_no_scripts:
                self._warned_no_scripts = True
                log.warning("Event script directory %s does not exist: running no event scripts",
                            self.event_dir)
            return EventResult(event, tuple(args), 0, (), now, now)
        try:
            return await self.runner.run(event, list(args), timeout)
        except (EventScriptError, ValueError) as exc:
            log.error("Cannot run the %s event: %s", event, exc)
            return EventResult(event, tuple(args), -errno.EIO, (), now, time.time())

    async def run_fatal(self, event: str) -> bool:
        """An event the daemon cannot start without (init, setup)."""
        result = await self.run(event)
        if not result.ok:
            failed = result.failed_script
            log.error("%s event failed%s - exiting", event,
                      f" (script {failed.name}: {failed.output.strip()[:200]})" if failed else "")
            return False
        return True

    async def serve_eventd(self, socket_path: str) -> None:
        self.eventd = EventDaemonServer({"legacy": self.runner}, socket_path)
        try:
            await self.eventd.start()
        except OSError as exc:
            log.warning("event daemon socket %s unavailable: %s", socket_path, exc)
            self.eventd = None

    async def close(self) -> None:
        if self.eventd is not None:
            try:
                await self.eventd.close()
            except Exception:
                pass
            self.eventd = None
        try:
            await self.runner.close()
        except Exception:
            pass
