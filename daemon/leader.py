"""The leader's duties, as a part of the daemon: recovery of the vnnmap/generation/recovery
mode after membership changes, takeover runs (GET_PUBLIC_IPS from every connected node, ipalloc,
RELEASE_IP, TAKEOVER_IP, IPREALLOCATED), answers to TAKEOVER_RUN requests, and ban credits for
nodes that keep failing them. CTDB does this in ctdb-recoverd and ctdb_takeover_helper; here it
runs in the daemon, so a death goes from the failure detector to a takeover run directly."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable

from .control import Request, Result
from .convert import pnn_text, public_ip
from .core.takeover import IPReport, nodes_to_ask_available, plan_takeover_run
from .net.rpc import ControlError
from .protocol import (
    CAP_DEFAULT, CAP_LMASTER, UNKNOWN_PNN, Control, ControlFlag, NodeFlag, PublicIpList, RecMode,
    ReplyControl, VnnMap, pack_request, unpack_reply,
)
from .protocol.messages import pack_i32_reply

log = logging.getLogger("ctdblab.daemon")
NOTICE = 25
TAKEOVER_RETRY_DELAY = 0.2       # s before a failed takeover run is retried (doubling to 5 s)
STARTUP_SETTLE = 3.0             # s a starting node is waited for before the first allocation


def notice(message: str, *args: object) -> None:
    log.log(NOTICE, message, *args)


class LeaderDuties:
    """Mixed into Daemon; uses its node map, tunables, election and control paths."""

    def _schedule_leader_work(self, *, recovery: bool = False, takeover: bool = False, reason: str = "",
                              reply_to: tuple[int, int] | None = None) -> None:
        if recovery:
            self._need_recovery = True
        if takeover:
            self._need_takeover = True
        if reply_to is not None and reply_to[1] != 0:
            self._takeover_requests.append(reply_to)
        log.info("Leader work scheduled: recovery=%s takeover=%s (%s)", recovery, takeover, reason)
        if self._leader_wakeup is not None:
            self._leader_wakeup.set()

    async def _leader_loop(self) -> None:
        assert self._leader_wakeup is not None
        while not self._shutting_down:
            await self._leader_wakeup.wait()
            self._leader_wakeup.clear()
            if not self.election.is_leader:
                self._need_recovery = self._need_takeover = False
                continue
            delay = self.ms("TakeoverRunDelayMs")
            if delay:
                await asyncio.sleep(delay)
            now = self.now
            jobs = []
            if self._need_recovery and now >= self._recovery_disabled_until:
                self._need_recovery = False
                jobs.append(self._do_recovery())
            run_takeover = self._need_takeover
            if run_takeover and now < self._takeover_disabled_until:
                wait = self._takeover_disabled_until - now
                notice("Not running takeover run - disabled for %.1f more seconds", wait)
                self.loop.call_later(wait, self._leader_wakeup.set)
                run_takeover = False
            if run_takeover:
                self._need_takeover = False
                requests, self._takeover_requests = self._takeover_requests, []
                jobs.append(self._do_takeover_run(requests))
            if not jobs:
                continue
            connected_before = self.nodemap.connected_pnns()
            results = await asyncio.gather(*jobs, return_exceptions=True)
            failed = False
            for result in results:
                if isinstance(result, BaseException):
                    log.error("Leader work failed: %r", result)
                    failed = True
                elif result is False:
                    failed = True
            if failed and self.election.is_leader:
                if self.nodemap.connected_pnns() != connected_before:
                    # A node dropped out during the run (a death being detected right now):
                    # run again at once with the new membership.
                    log.info("Membership changed during the run: running again at once")
                else:
                    # Retry soon, backing off while the failure persists.
                    self._retry_delay = (min(5.0, self._retry_delay * 2) if self._retry_delay
                                         else TAKEOVER_RETRY_DELAY)
                    await asyncio.sleep(self._retry_delay)
                self._need_recovery = True
                self._need_takeover = True
                self._leader_wakeup.set()
            elif not failed:
                self._retry_delay = 0.0
                self._ban_credits.clear()

    async def _controls(self, pnns: Iterable[int], opcode: int, data: bytes = b"", *, flags: int = 0,
                        timeout: float) -> dict[int, ReplyControl | Exception]:
        """The same control to several nodes at once (this node included, answered in-process)."""
        pnns = list(pnns)

        async def one(pnn: int) -> ReplyControl | Exception:
            try:
                return await self.control(pnn, opcode, data, flags=flags, timeout=timeout)
            except ControlError as exc:
                return exc

        results = await asyncio.gather(*(one(p) for p in pnns))
        return dict(zip(pnns, results))

    async def control(self, pnn: int, opcode: int, data: bytes = b"", *, flags: int = 0,
                      timeout: float = 10.0) -> ReplyControl:
        """A control to any node; raises ControlError unless it succeeded."""
        if pnn == self.my_pnn:
            future = self.loop.create_future()
            req = Request(opcode, flags, 0, 0, data, self.my_pnn)
            self.dispatch_control(req, lambda res: future.done() or future.set_result(res))
            res: Result = await asyncio.wait_for(future, timeout)
            if res.after is not None:
                res.after()
            if res.status != 0:
                raise ControlError(f"control {opcode} on this node failed with status {res.status}"
                                   + (f": {res.errmsg}" if res.errmsg else ""), res.status)
            return ReplyControl(res.status, res.data, res.errmsg)
        return await self.rpc.call(pnn, opcode, data, flags=flags, timeout=timeout)

    async def _do_recovery(self) -> bool:
        generation = random.randint(2, 0xFFFFFFFE)
        active = [p for p in self.nodemap.active_pnns()
                  if (self.capabilities if p == self.my_pnn else self.peer_capabilities.get(p, CAP_DEFAULT))
                  & CAP_LMASTER]
        vnnmap = VnnMap(generation, active or [self.my_pnn])
        targets = self.nodemap.active_pnns()
        timeout = float(self.tunables.get("RecoverTimeout"))
        notice("Recovery initiated: generation %u, vnnmap %s", generation, vnnmap.map)
        stages = [
            (Control.SET_RECMODE, pack_request(Control.SET_RECMODE, RecMode.ACTIVE)),
            (Control.START_RECOVERY, b""),
            (Control.SETVNNMAP, pack_request(Control.SETVNNMAP, vnnmap)),
            (Control.SET_RECMODE, pack_request(Control.SET_RECMODE, RecMode.NORMAL)),
            (Control.END_RECOVERY, b""),
        ]
        for opcode, data in stages:
            replies = await self._controls(targets, opcode, data, timeout=timeout)
            bad = {p: r for p, r in replies.items() if isinstance(r, Exception)}
            if bad:
                for pnn, exc in bad.items():
                    log.error("Recovery: %s failed on node %u: %s", Control(opcode).name, pnn, exc)
                return False
        notice("Recovery complete: generation %u on nodes %s", generation, targets)
        return True

    def _nodes_still_starting(self) -> list[int]:
        """At a cluster's first start no IP is hosted yet and nodes turn healthy a few hundred
        milliseconds apart: allocating at once would give every IP to the first healthy node
        and then move them (resetting connections) as the others arrive. So while no IP is
        hosted and this daemon started moments ago, the nodes of the nodes file that are not
        connected yet, or still unhealthy, are waited for (each at most STARTUP_SETTLE).
        (Real ctdbd brings a fresh cluster's IPs up together after ~15-20 s.)"""
        if any(v.pnn != UNKNOWN_PNN for v in self.public):
            return []
        now = self.now
        if now - self._started_at >= 2 * STARTUP_SETTLE:
            return []
        starting = []
        connected = set(self.nodemap.connected_pnns())
        for node in self.nodemap.nodes:
            if node.deleted:
                continue
            if node.pnn not in connected:
                if now - self._started_at < STARTUP_SETTLE:
                    starting.append(node.pnn)          # not even connected yet
                continue
            seen = max(self._started_at, self._connected_at.get(node.pnn, self._started_at))
            if node.flags & NodeFlag.UNHEALTHY and now - seen < STARTUP_SETTLE:
                starting.append(node.pnn)
        return starting

    async def _do_takeover_run(self, requests: list[tuple[int, int]]) -> bool:
        starting = self._nodes_still_starting()
        if starting:
            notice("Takeover run deferred: node(s) %s are still starting", starting)
            self._takeover_requests += requests
            self._need_takeover = True
            self.loop.call_later(0.2, self._leader_wakeup.set)
            return True
        started = self.now
        ok = await self._takeover_run()
        self._takeover_runs += 1
        result = self.my_pnn if ok else -1
        for pnn, srvid in requests:
            self.send_message(pnn, srvid, pack_i32_reply(result))
        if ok:
            notice("Takeover run completed successfully (%.1f ms)", (self.now - started) * 1000)
        else:
            log.error("Takeover run unsuccessful")
        return ok

    async def _takeover_run(self) -> bool:
        notice("Takeover run starting")
        flags = [n.flags for n in self.nodemap.nodes]
        connected = [p for p in self.nodemap.connected_pnns()]
        timeout = 3.0 * self.tunables.get("TakeoverTimeout")
        deadline = self.now + timeout

        def left() -> float:
            return max(0.05, deadline - self.now)

        if self.failover_disabled:
            return await self._ipreallocated_all(connected, left())
        replies = await self._controls(connected, Control.GET_PUBLIC_IPS, timeout=left())
        known: dict[int, IPReport] = {}
        for pnn, reply in replies.items():
            if isinstance(reply, Exception):
                log.error("Takeover run: GET_PUBLIC_IPS failed on node %u: %s", pnn, reply)
                return False
            ips: PublicIpList = unpack_reply(Control.GET_PUBLIC_IPS, reply.data)
            known[pnn] = IPReport(pnn, {str(ip.addr.canonical()): ip.pnn for ip in ips.ips})
        ask = nodes_to_ask_available(flags, known)
        replies = await self._controls(ask, Control.GET_PUBLIC_IPS, flags=ControlFlag.ONLY_AVAILABLE,
                                       timeout=left())
        available: dict[int, list[str]] = {}
        for pnn, reply in replies.items():
            if isinstance(reply, Exception):
                log.error("Takeover run: GET_PUBLIC_IPS (available) failed on node %u: %s", pnn, reply)
                return False
            ips = unpack_reply(Control.GET_PUBLIC_IPS, reply.data)
            available[pnn] = [str(ip.addr.canonical()) for ip in ips.ips]
        force = sorted(self._force_rebalance)
        self._force_rebalance.clear()
        try:
            plan = plan_takeover_run(
                flags, known, available, algorithm=self.tunables.get("IPAllocAlgorithm"),
                no_ip_failback=bool(self.tunables.get("NoIPFailback")),
                no_ip_takeover=bool(self.tunables.get("NoIPTakeover")),
                force_rebalance_nodes=force, log=self._ipalloc_log)
        except ValueError as exc:
            log.error("Takeover run: allocation failed: %s", exc)
            return False
        if plan.skipped_reason:
            notice("%s", plan.skipped_reason)
            return await self._ipreallocated_all(plan.ipreallocated, left())
        for ip, old, new in plan.moves():
            notice("Takeover run: %s moves from %s to %s", ip, pnn_text(old), pnn_text(new))
        # RELEASE_IP to non-owners, then TAKEOVER_IP to owners, each stage in parallel.
        release_jobs = [self._one_control(r.pnn, Control.RELEASE_IP,
                                          pack_request(Control.RELEASE_IP, public_ip(r.new_owner, r.ip)),
                                          left()) for r in plan.releases]
        if not await self._all_ok(release_jobs, "RELEASE_IP"):
            return False
        take_jobs = [self._one_control(t.pnn, Control.TAKEOVER_IP,
                                       pack_request(Control.TAKEOVER_IP, public_ip(t.pnn, t.ip)), left())
                     for t in plan.takes]
        if not await self._all_ok(take_jobs, "TAKEOVER_IP"):
            return False
        return await self._ipreallocated_all(plan.ipreallocated, left())

    async def _one_control(self, pnn: int, opcode: int, data: bytes, timeout: float) -> tuple[int, Exception | None]:
        try:
            await self.control(pnn, opcode, data, timeout=timeout)
            return pnn, None
        except ControlError as exc:
            return pnn, exc

    async def _all_ok(self, jobs: list, what: str) -> bool:
        if not jobs:
            return True
        ok = True
        for pnn, exc in await asyncio.gather(*jobs):
            if exc is not None:
                log.error("Takeover run: %s failed on node %u: %s", what, pnn, exc)
                ok = False
                # A node that is gone is not to blame; one that answers with a failure is.
                if self.transport is None or pnn == self.my_pnn or self.transport.is_connected(pnn):
                    self._add_ban_credit(pnn, f"{what} failed")
        return ok

    def _add_ban_credit(self, pnn: int, why: str) -> None:
        """CTDB's culprit counting: a node that keeps failing takeover runs gets banned
        (2 x nodes credits, RecoveryBanPeriod seconds, unless EnableBans=0)."""
        now = self.now
        count, since = self._ban_credits.get(pnn, (0, now))
        if now - since > self.tunables.get("RecoveryGracePeriod"):
            count = 0
            since = now
        count += 1
        self._ban_credits[pnn] = (count, since)
        limit = 2 * len(self.nodemap.peers() + [self.nodemap.me])
        if count < limit or not self.tunables.get("EnableBans"):
            return
        self._ban_credits.pop(pnn, None)
        period = self.tunables.get("RecoveryBanPeriod")
        log.error("Node %u reached %u banning credits (%s) - banning it for %u seconds",
                  pnn, count, why, period)
        if pnn == self.my_pnn:
            self.set_ban(period)
        else:
            self.spawn(self._ban_remote(pnn, period), f"ban-node-{pnn}")

    async def _ban_remote(self, pnn: int, period: int) -> None:
        from .protocol import BanState
        try:
            await self.control(pnn, Control.SET_BAN_STATE,
                               pack_request(Control.SET_BAN_STATE, BanState(pnn, period)), timeout=5)
        except ControlError as exc:
            log.error("Banning node %u failed: %s", pnn, exc)

    async def _ipreallocated_all(self, pnns: list[int], timeout: float) -> bool:
        jobs = [self._one_control(p, Control.IPREALLOCATED, b"", timeout) for p in pnns]
        return await self._all_ok(jobs, "IPREALLOCATED")

    @staticmethod
    def _ipalloc_log(level: int, text: str) -> None:
        if level <= 1:
            log.warning("ipalloc: %s", text)
        else:
            log.debug("ipalloc: %s", text)
