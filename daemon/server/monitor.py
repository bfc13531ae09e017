"""Start-up and monitoring: after the first recovery the "startup" event (retried every 5 s
until it succeeds, as CTDB), then RUNNING and the monitor event loop, whose results decide this
node's health (`core.health`); and bans this node puts on itself when its own event scripts
hang (CTDB bans a node whose takeip/releaseip/ipreallocated event times out)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..config import Tunables
from ..core.health import Health, MonitorResult
from ..core.node import NodeCore, SetBan, SetHealth, SetRunstate
from ..log import log, notice
from ..protocol import Control, NodeFlag, Runstate
from .messenger import Messenger
from .scripts import ScriptEvents
from .tasks import Tasks, wait_for_wakeup

STARTUP_RETRY = 5.0              # s between failed "startup" events (as CTDB)


class MonitorService:
    def __init__(self, core: NodeCore, step: Callable, scripts: ScriptEvents, messenger: Messenger,
                 tunables: Tunables, tasks: Tasks) -> None:
        self.core = core
        self.step = step              # NodeService.step: own flags and runstate go through the core
        self.scripts = scripts
        self.messenger = messenger
        self.tunables = tunables
        self.tasks = tasks
        self.health = Health()
        self._wakeup = asyncio.Event()
        self._started = False

    def wake(self) -> None:
        """Run the next monitor event now (this node's flags changed)."""
        self._wakeup.set()

    def first_recovery_done(self) -> None:
        """The first recovery finished: move on from FIRST_RECOVERY to STARTUP."""
        if self.core.nodemap.me.runstate == Runstate.FIRST_RECOVERY and not self._started:
            self._started = True
            self.step(SetRunstate(Runstate.STARTUP))
            self.tasks.spawn(self._startup(), "startup")

    async def _startup(self) -> None:
        while not self.tasks.shutting_down:
            notice('Running the "startup" event.')
            if (await self.scripts.run("startup")).ok:
                break
            log.error("startup event failed")
            await asyncio.sleep(STARTUP_RETRY)
        notice("startup event OK - enabling monitoring")
        self.step(SetRunstate(Runstate.RUNNING))
        for pnn in self.messenger.connected_peers():
            self.messenger.send_noreply(pnn, Control.STARTUP)
        self.tasks.spawn(self._monitor_loop(), "monitor")

    async def _monitor_loop(self) -> None:
        while not self.tasks.shutting_down:
            result = await self.scripts.run("monitor")
            failed = result.failed_script
            self.health.monitor_interval = float(self.tunables.get("MonitorInterval"))
            self.health.timeout_limit = self.tunables.get("MonitorTimeoutCount")
            verdict = self.health.result(
                MonitorResult(result.ok, result.timed_out, result.cancelled, failed.output if failed else ""),
                healthy_now=not self.core.nodemap.me.flags & NodeFlag.UNHEALTHY)
            for level, text in verdict.logs:
                log.log(level, "%s", text)
            if verdict.healthy is not None:
                self.step(SetHealth(verdict.healthy))
            await wait_for_wakeup(self._wakeup, verdict.wait)

    def ban_self(self, why: str) -> None:
        if not self.tunables.get("EnableBans"):
            log.error("%s; bans are disabled (EnableBans=0)", why)
            return
        period = self.tunables.get("RecoveryBanPeriod")
        log.error("%s: banning this node for %u seconds", why, period)
        self.step(SetBan(period))
