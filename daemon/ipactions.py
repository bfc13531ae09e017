"""What this node does to its own public IPs: take one (address, gratuitous ARP and tickle-ACK
bursts, then the takeip event), release one (reset its connections, remove the address, then the
releaseip event), release all of them (inactive or shutting down)."""

from __future__ import annotations

import asyncio
import logging

from .control import Result
from .convert import conn_of
from .core.publicips import Vnn
from .protocol import BROADCAST_CONNECTED, UNKNOWN_PNN, ReqMessage, Srvid, encode_packet, pack_message

log = logging.getLogger("ctdblab.daemon")
NOTICE = 25


def notice(message: str, *args: object) -> None:
    log.log(NOTICE, message, *args)


class PublicIPActions:
    """Mixed into Daemon; uses its effects, public-IP table, tickle table and event runner."""

    def node_can_host(self) -> bool:
        return self.nodemap.can_host_ips()

    async def take_ip(self, vnn: Vnn) -> Result:
        """TAKEOVER_IP for this node (see handlers.takeover_ip for the checks before)."""
        iface = self.public.best_iface(vnn)
        if iface is None:
            log.error("Takeover of IP %s/%u failed: no usable interface", vnn.ip, vnn.prefixlen)
            return Result(-1, errmsg="no usable interface")
        vnn.update_in_flight = True
        try:
            if not self.failover_disabled:
                try:
                    self.effects.add_ip(iface, vnn.ip, vnn.prefixlen)
                except Exception as exc:
                    log.error("Takeover of IP %s/%u on interface %s failed: %s", vnn.ip, vnn.prefixlen,
                              iface, exc)
                    return Result(-1, errmsg=f"cannot add address: {exc}")
            self.public.assign(vnn, iface)
            notice("Takeover of IP %s/%u on interface %s", vnn.ip, vnn.prefixlen, iface)
            self._start_bursts(vnn, iface)
            if self._tickle_wakeup is not None:
                self._tickle_wakeup.set()      # start looking for connections to it now
            result = await self.run_event("takeip", [iface, vnn.ip, str(vnn.prefixlen)],
                                           timeout=self.tunables.get("EventScriptTimeout"))
            if result.timed_out:
                log.error("takeip event for %s timed out", vnn.ip)
                self._ban_self("takeip event timed out")
            elif not result.ok and not result.cancelled:
                failed = result.failed_script
                log.error("Failed to takeover IP %s on interface %s (takeip event: %s)", vnn.ip, iface,
                          failed.output.strip()[:200] if failed else result.summary)
                self._stop_bursts(vnn.ip)
                if not self.failover_disabled:
                    try:
                        self.effects.delete_ip(iface, vnn.ip, vnn.prefixlen)
                    except Exception as exc:
                        log.error("Removing %s after the failed takeip: %s", vnn.ip, exc)
                self.public.unassign(vnn)
                return Result(-1, errmsg="takeip event failed")
            self._local_message(Srvid.TAKE_IP, pack_message(Srvid.TAKE_IP, vnn.ip))
            return Result()
        finally:
            vnn.update_in_flight = False

    def _start_bursts(self, vnn: Vnn, iface: str) -> None:
        self._stop_bursts(vnn.ip)
        bursts = max(1, self.tunables.get("GratuitousArpBursts"))
        repeat = self.ms("GratuitousArpRepeatMs")
        # The first burst goes out right here, before anything else can run.
        self._announce(vnn, iface, 1, bursts)
        if bursts > 1:
            self._bursts[vnn.ip] = self.spawn(self._more_bursts(vnn, iface, bursts, repeat),
                                              f"announce-{vnn.ip}")
        else:
            self._after_bursts(vnn)

    async def _more_bursts(self, vnn: Vnn, iface: str, bursts: int, repeat: float) -> None:
        try:
            for n in range(2, bursts + 1):
                await asyncio.sleep(repeat)
                if vnn.iface is None:
                    return
                self._announce(vnn, iface, n, bursts)
            self._after_bursts(vnn)
        finally:
            if self._bursts.get(vnn.ip) is asyncio.current_task():
                del self._bursts[vnn.ip]

    def _announce(self, vnn: Vnn, iface: str, n: int, total: int) -> None:
        if self.failover_disabled:
            return
        conns = self.tickles.connections(vnn.ip)
        pairs = [((c.dst_ip, c.dst_port), (c.src_ip, c.src_port)) for c in conns]
        try:
            self.effects.announce(iface, vnn.ip)
        except Exception as exc:
            log.error("Gratuitous ARP for %s on %s failed: %s", vnn.ip, iface, exc)
        sent = 0
        if pairs:
            try:
                sent = self.effects.tickle(pairs)
            except Exception as exc:
                log.error("Tickle ACKs for %s failed: %s", vnn.ip, exc)
        log.info("Sent gratuitous ARP %u/%u for %s on %s and %u tickle ACKs", n, total, vnn.ip, iface, sent)

    def _after_bursts(self, vnn: Vnn) -> None:
        """The tickle rounds are over: forget connections to this IP that are not ours."""
        if self.failover_disabled or vnn.iface is None:
            return
        try:
            alive = [conn_of(server, client) for server, client in self.effects.established([vnn.ip])]
        except Exception as exc:
            log.debug("connection scan after takeover of %s failed: %s", vnn.ip, exc)
            return
        removed = self.tickles.prune_after_takeover(vnn.ip, alive)
        if removed:
            log.info("Forgot %u tickled connections to %s that did not survive the takeover",
                     len(removed), vnn.ip)
            self._push_tickle_list(vnn.ip, BROADCAST_CONNECTED)

    def _stop_bursts(self, ip: str) -> None:
        task = self._bursts.pop(ip, None)
        if task is not None:
            task.cancel()

    async def release_ip(self, vnn: Vnn, new_owner: int, reason: str = "") -> Result:
        self._stop_bursts(vnn.ip)
        iface = vnn.iface or (vnn.ifaces[0] if vnn.ifaces else "")
        vnn.update_in_flight = True
        try:
            notice("Release of IP %s/%u on interface %s  node:%d", vnn.ip, vnn.prefixlen, iface,
                   new_owner if new_owner != UNKNOWN_PNN else -1)
            if not self.failover_disabled:
                try:
                    killed = self.effects.kill_connections(vnn.ip)
                    if killed:
                        notice("Reset %u TCP connections to %s", killed, vnn.ip)
                except Exception as exc:
                    log.warning("Resetting connections to %s failed: %s", vnn.ip, exc)
                try:
                    self.effects.delete_ip(iface, vnn.ip, vnn.prefixlen)
                except Exception as exc:
                    log.error("Removing %s from %s failed: %s", vnn.ip, iface, exc)
            result = await self.run_event("releaseip", [iface, vnn.ip, str(vnn.prefixlen)],
                                           timeout=self.tunables.get("EventScriptTimeout"))
            if result.timed_out:
                self._ban_self("releaseip event timed out")
            if not self.failover_disabled and self.effects.have_ip(vnn.ip):
                log.error("IP %s still hosted during release IP callback, failing", vnn.ip)
                return Result(-1, errmsg="IP still hosted")
            self.public.unassign(vnn, new_owner)
            self._local_message(Srvid.RELEASE_IP, pack_message(Srvid.RELEASE_IP, vnn.ip))
            return Result()
        finally:
            vnn.update_in_flight = False

    async def _release_all_ips(self, reason: str) -> None:
        count = 0
        for vnn in list(self.public.held()):
            if vnn.update_in_flight:
                log.warning("Not releasing IP %s/%u, an update is already in progress",
                            vnn.ip, vnn.prefixlen)
                continue
            result = await self.release_ip(vnn, UNKNOWN_PNN, reason)
            if result.status == 0:
                count += 1
        if count or reason != "shutdown":
            notice("Released %d public IPs (%s)", count, reason)

    def _local_message(self, srvid: int, data: bytes) -> None:
        if self.local is not None:
            self.local.deliver(srvid, encode_packet(ReqMessage(srvid, data), destnode=self.my_pnn,
                                                    srcnode=self.my_pnn, reqid=0))
