"""The leader's duties: recovery runs (a new generation and vnnmap on every active node) and
takeover runs (GET_PUBLIC_IPS from every connected node, ipalloc, RELEASE_IP, TAKEOVER_IP,
IPREALLOCATED), answers to TAKEOVER_RUN requests, and bans for nodes that keep failing runs.
CTDB does this in ctdb-recoverd and ctdb_takeover_helper; here it runs in the daemon, so a
death goes from the failure detector to a takeover run without crossing a socket.

When to run what is decided by `core.scheduler.LeaderScheduler`; what a run does by
`core.recovery.plan_recovery` and `core.takeover.plan_takeover_run`. This service carries the
runs out and reports back.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from ..config import Tunables
from ..core.node import NodeCore
from ..core.scheduler import Ban, LeaderScheduler, SchedulerSettings, TakeoverJob
from ..core.recovery import plan_recovery
from ..core.takeover import IPReport, nodes_to_ask_available, plan_takeover_run
from ..log import log, notice
from ..net.rpc import ControlError
from ..protocol import (
    INVALID_GENERATION, UNKNOWN_PNN, BanState, Control, ControlFlag, PublicIpList, Srvid, VnnMap,
    internal, pack_i32_reply, pack_request, unpack_message, unpack_reply,
)
from .db_recovery_driver import DatabaseRecoveryDriver
from .messenger import Messenger
from .tasks import Tasks
from .wire import public_ip

#: The messages ctdb-recoverd handles, answered here.
LEADER_MESSAGES = frozenset({Srvid.TAKEOVER_RUN, Srvid.REBALANCE_NODE, Srvid.DISABLE_IP_CHECK,
                             Srvid.DISABLE_TAKEOVER_RUNS, Srvid.DISABLE_RECOVERIES,
                             internal.RECOVERY_WANTED})


def pnn_text(pnn: int) -> str:
    return "nobody" if pnn == UNKNOWN_PNN else f"node {pnn}"


class LeaderService:
    def __init__(self, node: NodeCore, messenger: Messenger, tunables: Tunables, tasks: Tasks, *,
                 started_at: float, clock: Callable[[], float], failover_disabled: bool,
                 ips_hosted: Callable[[], bool], ban_this_node: Callable[[int], None],
                 vnnmap: Callable[[], VnnMap] = lambda: VnnMap(INVALID_GENERATION, []),
                 recovery_pause: float = 0.0) -> None:
        self.node = node
        self.recovery_pause = recovery_pause    # lab fault injection (DaemonOptions)
        self.vnnmap = vnnmap                # this node's vnnmap in force
        self.messenger = messenger
        self.tunables = tunables
        self.tasks = tasks
        self.clock = clock
        self.failover_disabled = failover_disabled
        self.ips_hosted = ips_hosted
        self.ban_this_node = ban_this_node
        self.scheduler = LeaderScheduler(node.my_pnn, started_at)
        self.db_recovery = DatabaseRecoveryDriver(node.my_pnn, messenger, tunables, clock=clock)
        self.takeover_runs = 0
        self._wakeup = asyncio.Event()

    # -- inputs ----------------------------------------------------------------------------------
    def schedule(self, *, recovery: bool = False, takeover: bool = False, reason: str = "") -> None:
        self.scheduler.request(recovery=recovery, takeover=takeover)
        log.info("Leader work scheduled: recovery=%s takeover=%s (%s)", recovery, takeover, reason)
        self._wakeup.set()

    def leader_changed(self, old: int, new: int) -> None:
        self.scheduler.leader_changed(old, new)

    def recovery_wanted(self) -> None:
        """This node went into recovery mode at a client's request (`ctdb recover`): as in
        ctdb-recoverd, the leader recovers when a node is in recovery mode."""
        leader = self.node.leader
        if leader == self.node.my_pnn:
            self.schedule(recovery=True, reason="recovery mode set by a client")
        elif leader != UNKNOWN_PNN:
            self.messenger.send_message(leader, internal.RECOVERY_WANTED,
                                        internal.RecoveryWanted(self.node.my_pnn).pack())

    def on_message(self, src: int, srvid: int, data: bytes) -> None:
        """One of LEADER_MESSAGES (ProtocolError on a malformed payload)."""
        now = self.clock()
        if srvid == internal.RECOVERY_WANTED:
            internal.RecoveryWanted.unpack(data)
            if self.node.is_leader:
                self.schedule(recovery=True, reason=f"node {src} is in recovery mode")
        elif srvid == Srvid.TAKEOVER_RUN:
            request = unpack_message(srvid, data)
            if self.scheduler.takeover_requested(request.pnn, request.srvid, self.node.leader):
                log.info("Leader work scheduled: takeover (requested by node %u)", src)
                self._wakeup.set()
        elif srvid == Srvid.REBALANCE_NODE:
            # pyctdbd: the run starts at once; ctdb-recoverd only notes the node and waits for
            # the node's own allocation check to ask for a run (1-2 s later).
            pnn = unpack_message(srvid, data)
            if self.scheduler.rebalance(pnn):
                notice("Setting up rebalance of IPs to node %u", pnn)
                self._wakeup.set()
        elif srvid == Srvid.DISABLE_IP_CHECK:
            timeout = unpack_message(srvid, data)
            self.scheduler.disable_takeovers(now, timeout)
            notice("Takeover runs disabled for %u seconds (IP check disabled)", timeout)
        elif srvid in (Srvid.DISABLE_TAKEOVER_RUNS, Srvid.DISABLE_RECOVERIES):
            msg = unpack_message(srvid, data)
            if srvid == Srvid.DISABLE_TAKEOVER_RUNS:
                self.scheduler.disable_takeovers(now, msg.timeout)
                what = "Takeover runs"
            else:
                self.scheduler.disable_recoveries(now, msg.timeout)
                what = "Recoveries"
            notice("%s %s", what, f"disabled for {msg.timeout} seconds" if msg.timeout else "re-enabled")
            if not msg.timeout:
                self._wakeup.set()
            if msg.srvid:
                self.messenger.send_message(msg.pnn, msg.srvid, pack_i32_reply(self.node.my_pnn))

    # -- the loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        while not self.tasks.shutting_down:
            await self._wakeup.wait()
            self._wakeup.clear()
            delay = self.tunables.get("TakeoverRunDelayMs") / 1000.0
            if delay and self.scheduler.leading:
                await asyncio.sleep(delay)
            self.scheduler.settings = SchedulerSettings(
                enable_bans=bool(self.tunables.get("EnableBans")),
                ban_period=self.tunables.get("RecoveryBanPeriod"),
                grace_period=float(self.tunables.get("RecoveryGracePeriod")))
            job = self.scheduler.next_job(self.clock(), self.node.nodemap, self.node.connected_at,
                                          self.ips_hosted())
            for note in job.notes:
                notice("%s", note)
            if job.wake_at is not None:
                asyncio.get_running_loop().call_at(job.wake_at, self._wakeup.set)
            if job.empty:
                continue
            connected_before = self.node.nodemap.connected_pnns()
            runs = []
            if job.recovery:
                runs.append(self._recover())
            if job.takeover is not None:
                runs.append(self._takeover(job.takeover))
            ok = True
            for result in await asyncio.gather(*runs, return_exceptions=True):
                if isinstance(result, BaseException):
                    log.error("Leader work failed: %r", result)
                    ok = False
                elif result is False:
                    ok = False
            changed = self.node.nodemap.connected_pnns() != connected_before
            retry = self.scheduler.finished(ok, changed)
            if retry is not None:
                if changed:
                    # A node dropped out during the run (a death being detected right now).
                    log.info("Membership changed during the run: running again at once")
                else:
                    await asyncio.sleep(retry)
                self._wakeup.set()

    # -- recovery --------------------------------------------------------------------------------
    def _still_leading(self, what: str) -> bool:
        """Leadership can end while a run waits for its controls (cut off from the majority, or
        the cluster lock lost). A run that went on would act for a cluster this node no longer
        leads: seen in the lab, a leader cut off between two deaths recovered alone, left the
        recovery mode it had entered to protect persistent commits and gave itself every IP."""
        if self.node.is_leader:
            return True
        notice("%s abandoned: this node is no longer the leader", what)
        return False

    async def _recover(self) -> bool:
        if not self._still_leading("Recovery"):
            return False
        current = self.vnnmap()
        previous_map = current.map if current.generation != INVALID_GENERATION else []
        plan = plan_recovery(self.node.nodemap.active_pnns(), self.node.lmaster_pnns(),
                             self.node.my_pnn, random.randint(2, 0xFFFFFFFE), previous_map)
        timeout = float(self.tunables.get("RecoverTimeout"))
        notice("Recovery initiated: generation %u, vnnmap %s", plan.generation, plan.vnnmap.map)
        for stage in plan.stages:
            if not self._still_leading("Recovery"):
                return False
            if stage.databases:
                if self.recovery_pause > 0:
                    log.warning("Recovery paused for %.1f s before the databases "
                                "(PYCTDBD_RECOVERY_PAUSE_S, a lab fault-injection setting)",
                                self.recovery_pause)
                    await asyncio.sleep(self.recovery_pause)
                outcome = await self.db_recovery.recover(plan.targets, plan.generation,
                                                         old_map=previous_map,
                                                         new_map=plan.vnnmap.map)
                culprit = outcome.banning_culprit()
                # A node that is gone is not to blame (its death starts the next recovery).
                if culprit is not None and (culprit == self.node.my_pnn
                                            or self.messenger.is_connected(culprit)):
                    self._blame(culprit, "database recovery failed",
                                credits=len(self.node.nodemap.peers()) + 1)
                if not outcome:
                    return False
                continue
            data = b"" if stage.value is None else pack_request(stage.opcode, stage.value)
            replies = await self.messenger.controls(plan.targets, stage.opcode, data, timeout=timeout)
            bad = {p: r for p, r in replies.items() if isinstance(r, Exception)}
            for pnn, exc in bad.items():
                log.error("Recovery: %s failed on node %u: %s", stage.opcode.name, pnn, exc)
            if bad:
                return False
        notice("Recovery complete: generation %u on nodes %s", plan.generation, list(plan.targets))
        return True

    # -- takeover runs ---------------------------------------------------------------------------
    async def _takeover(self, job: TakeoverJob) -> bool:
        started = self.clock()
        ok = await self._takeover_run(job.force_rebalance)
        self.takeover_runs += 1
        result = self.node.my_pnn if ok else -1
        for pnn, srvid in job.requests:
            self.messenger.send_message(pnn, srvid, pack_i32_reply(result))
        if ok:
            notice("Takeover run completed successfully (%.1f ms)", (self.clock() - started) * 1000)
        else:
            log.error("Takeover run unsuccessful")
        return ok

    async def _takeover_run(self, force_rebalance: tuple[int, ...]) -> bool:
        if not self._still_leading("Takeover run"):
            return False
        notice("Takeover run starting")
        flags = [n.flags for n in self.node.nodemap.nodes]
        connected = self.node.nodemap.connected_pnns()
        deadline = self.clock() + 3.0 * self.tunables.get("TakeoverTimeout")

        def left() -> float:
            return max(0.05, deadline - self.clock())

        if self.failover_disabled:
            return await self._ipreallocated(connected, left())
        known: dict[int, IPReport] = {}
        for pnn, ips in (await self._public_ips(connected, 0, left())).items():
            if ips is None:
                return False
            known[pnn] = IPReport(pnn, {str(ip.addr.canonical()): ip.pnn for ip in ips.ips})
        ask = nodes_to_ask_available(flags, known)
        available: dict[int, list[str]] = {}
        for pnn, ips in (await self._public_ips(ask, ControlFlag.ONLY_AVAILABLE, left())).items():
            if ips is None:
                return False
            available[pnn] = [str(ip.addr.canonical()) for ip in ips.ips]
        if not self._still_leading("Takeover run"):
            return False
        try:
            plan = plan_takeover_run(
                flags, known, available, algorithm=self.tunables.get("IPAllocAlgorithm"),
                no_ip_failback=bool(self.tunables.get("NoIPFailback")),
                no_ip_takeover=bool(self.tunables.get("NoIPTakeover")),
                force_rebalance_nodes=force_rebalance, log=_ipalloc_log)
        except ValueError as exc:
            log.error("Takeover run: allocation failed: %s", exc)
            return False
        if plan.skipped_reason:
            notice("%s", plan.skipped_reason)
            return await self._ipreallocated(plan.ipreallocated, left())
        for pnn in force_rebalance:
            notice("Forcing rebalancing of IPs to node %u", pnn)
        for ip, old, new in plan.moves():
            notice("Takeover run: %s moves from %s to %s", ip, pnn_text(old), pnn_text(new))
        # RELEASE_IP to non-owners, then TAKEOVER_IP to owners, each stage in parallel.
        if not await self._each([(r.pnn, pack_request(Control.RELEASE_IP, public_ip(r.new_owner, r.ip)))
                                 for r in plan.releases], Control.RELEASE_IP, left()):
            return False
        if not self._still_leading("Takeover run"):
            return False
        if not await self._each([(t.pnn, pack_request(Control.TAKEOVER_IP, public_ip(t.pnn, t.ip)))
                                 for t in plan.takes], Control.TAKEOVER_IP, left()):
            return False
        return await self._ipreallocated(plan.ipreallocated, left())

    async def _public_ips(self, pnns: list[int], flags: int, timeout: float) -> dict[int, PublicIpList | None]:
        replies = await self.messenger.controls(pnns, Control.GET_PUBLIC_IPS, flags=flags, timeout=timeout)
        out: dict[int, PublicIpList | None] = {}
        for pnn, reply in replies.items():
            if isinstance(reply, Exception):
                log.error("Takeover run: GET_PUBLIC_IPS%s failed on node %u: %s",
                          " (available)" if flags else "", pnn, reply)
                out[pnn] = None
            else:
                out[pnn] = unpack_reply(Control.GET_PUBLIC_IPS, reply.data)
        return out

    async def _ipreallocated(self, pnns: list[int], timeout: float) -> bool:
        return await self._each([(p, b"") for p in pnns], Control.IPREALLOCATED, timeout)

    async def _each(self, calls: list[tuple[int, bytes]], opcode: Control, timeout: float) -> bool:
        """One control per (node, payload), all at once; failures earn their node ban credits."""
        async def one(pnn: int, data: bytes) -> tuple[int, ControlError | None]:
            try:
                await self.messenger.control(pnn, opcode, data, timeout=timeout)
                return pnn, None
            except ControlError as exc:
                return pnn, exc

        ok = True
        for pnn, exc in await asyncio.gather(*(one(p, d) for p, d in calls)):
            if exc is None:
                continue
            log.error("Takeover run: %s failed on node %u: %s", opcode.name, pnn, exc)
            ok = False
            # A node that is gone is not to blame; one that answers with a failure is.
            if pnn == self.node.my_pnn or self.messenger.is_connected(pnn):
                self._blame(pnn, f"{opcode.name} failed")
        return ok

    def _blame(self, pnn: int, why: str, credits: int = 1) -> None:
        ban = self.scheduler.blame(pnn, why, self.clock(), len(self.node.nodemap.peers()) + 1,
                                   credits=credits)
        if ban is not None:
            self._ban(ban)

    def _ban(self, ban: Ban) -> None:
        log.error("Node %u reached %u banning credits (%s) - banning it for %u seconds",
                  ban.pnn, ban.credits, ban.why, ban.seconds)
        if ban.pnn == self.node.my_pnn:
            self.ban_this_node(ban.seconds)
        else:
            self.tasks.spawn(self._ban_remote(ban.pnn, ban.seconds), f"ban-node-{ban.pnn}")

    async def _ban_remote(self, pnn: int, seconds: int) -> None:
        try:
            await self.messenger.control(pnn, Control.SET_BAN_STATE,
                                         pack_request(Control.SET_BAN_STATE, BanState(pnn, seconds)),
                                         timeout=5)
        except ControlError as exc:
            log.error("Banning node %u failed: %s", pnn, exc)


def _ipalloc_log(level: int, text: str) -> None:
    if level <= 1:
        log.warning("ipalloc: %s", text)
    else:
        log.debug("ipalloc: %s", text)
