"""This node's public IPs: the table of configured addresses and who holds each one
(`core.publicips`), and what this node does to the ones it takes or releases — add the address,
gratuitous ARP and tickle-ACK bursts, the takeip event; reset its connections, remove the
address, the releaseip event — plus runtime changes to the configured list (reloadips,
addip/delip) and the interfaces' link state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from ..config import Tunables
from ..core.nodes import NodeMap
from ..core.publicips import Interface, PublicIPs, Vnn, given_away
from ..failover.effects import Effects
from ..log import log, notice
from ..net.rpc import ControlError
from ..protocol import (
    UNKNOWN_PNN, Control, ProtocolError, Srvid, SrvidMessage, pack_message, unpack_reply,
)
from .wire import address_of
from .connections import ConnectionTracker
from .dispatch import Result
from .messenger import Messenger
from .scripts import ScriptEvents
from .tasks import Tasks

VERIFY_WAIT = 10.0           # s to wait for a requested takeover run before asking again
RECONCILE_TIMEOUT = 2.0      # s for the leader's table of public IPs


class PublicIPService:
    def __init__(self, table: PublicIPs, nodemap: NodeMap, effects: Effects, connections: ConnectionTracker,
                 scripts: ScriptEvents, messenger: Messenger, tunables: Tunables, tasks: Tasks, *,
                 failover_disabled: bool, ban_self: Callable[[str], None],
                 hosting_refusal: Callable[[], str | None] = lambda: None) -> None:
        self.table = table
        #: Why this node must not host public IPs now (cut off from the majority), or None.
        self.hosting_refusal = hosting_refusal
        self._refused = False       # hosting was refused since the last takeover run asked for
        self.nodemap = nodemap
        self.effects = effects
        self.connections = connections
        self.scripts = scripts
        self.messenger = messenger
        self.tunables = tunables
        self.tasks = tasks
        self.failover_disabled = failover_disabled
        self.ban_self = ban_self
        self._bursts: dict[str, asyncio.Task] = {}
        self._next_verify = 0.0
        self._asked_until = 0.0            # a takeover run we asked for is still awaited

    # -- queries ---------------------------------------------------------------------------------
    def find(self, ip: str) -> Vnn | None:
        return self.table.find(ip)

    def all(self) -> list[Vnn]:
        return list(self.table)

    def held(self) -> list[Vnn]:
        return self.table.held()

    def held_ips(self) -> list[str]:
        return [v.ip for v in self.table.held()]

    def is_held(self, ip: str) -> bool:
        vnn = self.table.find(ip)
        return vnn is not None and vnn.iface is not None

    def any_hosted(self) -> bool:
        """Does this node know of any IP that some node hosts?"""
        return any(v.pnn != UNKNOWN_PNN for v in self.table)

    def available(self) -> list[Vnn]:
        """The IPs this node could host now (CTDB's ONLY_AVAILABLE)."""
        if self.hosting_refusal() is not None:
            self._refused = True
            return []
        can_host = self.nodemap.can_host_ips()
        return [v for v in self.table if self.table.available(v, can_host)]

    def interfaces(self, vnn: Vnn | None = None) -> list[Interface]:
        if vnn is None:
            return self.table.interface_list()
        return [self.table.ifaces[name] for name in vnn.ifaces if name in self.table.ifaces]

    def __len__(self) -> int:
        return len(self.table)

    def holds_on_host(self, vnn: Vnn) -> bool:
        """Is the address really configured here (our record alone when failover is off)?"""
        if self.failover_disabled:
            return vnn.iface is not None
        return self.effects.have_ip(vnn.ip)

    # -- TAKEOVER_IP / RELEASE_IP ---------------------------------------------------------------
    async def takeover(self, ip: str | None, pnn: int) -> Result:
        my_pnn = self.nodemap.my_pnn
        if pnn != my_pnn:
            log.error("takeoverip called for an ip '%s' with pnn %d, but we're node %d", ip, pnn, my_pnn)
            return Result(-1, errmsg="wrong node")
        vnn = self.table.find(ip) if ip else None
        if vnn is None:
            log.info("takeoverip called for an ip '%s' that is not a public address", ip)
            return Result(0)
        refusal = self.hosting_refusal()
        if refusal is not None:
            self._refused = True
            log.error("Takeover of IP %s/%u refused: this node is %s", vnn.ip, vnn.prefixlen, refusal)
            return Result(-1, errmsg=f"this node is {refusal}")
        if vnn.iface is not None and self.holds_on_host(vnn):
            log.info("Redundant takeover of IP %s/%u on interface %s (ip already held)", vnn.ip,
                     vnn.prefixlen, vnn.iface)
            vnn.pnn = my_pnn
            return Result(0)
        if vnn.update_in_flight:
            notice("Takeover of IP %s/%u rejected update for this IP already in flight", vnn.ip, vnn.prefixlen)
            return Result(-1, errmsg="update already in flight")
        result = await self.take(vnn)
        refusal = self.hosting_refusal()
        if result.status == 0 and refusal is not None:
            # Cut off while the takeip event ran: the release of all IPs skipped this one.
            log.error("Releasing IP %s/%u just taken: this node is now %s", vnn.ip, vnn.prefixlen, refusal)
            await self.release_held(vnn, UNKNOWN_PNN)
            return Result(-1, errmsg=f"this node is {refusal}")
        return result

    async def release(self, ip: str | None, new_owner: int) -> Result:
        vnn = self.table.find(ip) if ip else None
        if vnn is None:
            log.info("releaseip called for an ip '%s' that is not a public address", ip)
            return Result(0)
        self._stop_bursts(vnn.ip)
        if not self.holds_on_host(vnn):
            log.debug("Redundant release of IP %s/%u (ip not held)", vnn.ip, vnn.prefixlen)
            self.table.unassign(vnn, new_owner)
            self._forget_if_deleted(vnn)
            return Result(0)
        if vnn.update_in_flight:
            notice("Release of IP %s/%u rejected update for this IP already in flight", vnn.ip, vnn.prefixlen)
            return Result(-1, errmsg="update already in flight")
        return await self.release_held(vnn, new_owner)

    # -- taking an IP ----------------------------------------------------------------------------
    async def take(self, vnn: Vnn) -> Result:
        iface = self.table.best_iface(vnn)
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
            self.table.assign(vnn, iface)
            notice("Takeover of IP %s/%u on interface %s", vnn.ip, vnn.prefixlen, iface)
            self._start_bursts(vnn, iface)
            self.connections.ip_taken()
            result = await self.scripts.run("takeip", [iface, vnn.ip, str(vnn.prefixlen)])
            if result.timed_out:
                log.error("takeip event for %s timed out", vnn.ip)
                self.ban_self("takeip event timed out")
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
                self.table.unassign(vnn)
                return Result(-1, errmsg="takeip event failed")
            self.messenger.deliver_local(Srvid.TAKE_IP, pack_message(Srvid.TAKE_IP, vnn.ip))
            return Result()
        finally:
            vnn.update_in_flight = False

    def _start_bursts(self, vnn: Vnn, iface: str) -> None:
        self._stop_bursts(vnn.ip)
        bursts = max(1, self.tunables.get("GratuitousArpBursts"))
        repeat = self.tunables.get("GratuitousArpRepeatMs") / 1000.0
        # The first burst goes out right here, before anything else can run.
        self.announce(vnn, iface, 1, bursts)
        if bursts > 1:
            task = self.tasks.spawn(self._more_bursts(vnn, iface, bursts, repeat), f"announce-{vnn.ip}")
            if task is not None:
                self._bursts[vnn.ip] = task
        elif not self.failover_disabled and vnn.iface is not None:
            self.connections.after_takeover(vnn.ip)

    async def _more_bursts(self, vnn: Vnn, iface: str, bursts: int, repeat: float) -> None:
        try:
            for n in range(2, bursts + 1):
                await asyncio.sleep(repeat)
                if vnn.iface is None:
                    return
                self.announce(vnn, iface, n, bursts)
            if not self.failover_disabled and vnn.iface is not None:
                self.connections.after_takeover(vnn.ip)
        finally:
            if self._bursts.get(vnn.ip) is asyncio.current_task():
                del self._bursts[vnn.ip]

    def announce(self, vnn: Vnn | None, iface: str, n: int = 1, total: int = 1, ip: str | None = None) -> None:
        """One burst: gratuitous ARP (or unsolicited NA) and a tickle ACK per known connection."""
        if self.failover_disabled:
            return
        ip = vnn.ip if vnn is not None else ip
        assert ip is not None
        pairs = [((c.dst_ip, c.dst_port), (c.src_ip, c.src_port)) for c in self.connections.connections(ip)]
        try:
            self.effects.announce(iface, ip)
        except Exception as exc:
            log.error("Gratuitous ARP for %s on %s failed: %s", ip, iface, exc)
        sent = 0
        if pairs:
            try:
                sent = self.effects.tickle(pairs)
            except Exception as exc:
                log.error("Tickle ACKs for %s failed: %s", ip, exc)
        log.info("Sent gratuitous ARP %u/%u for %s on %s and %u tickle ACKs", n, total, ip, iface, sent)

    def _stop_bursts(self, ip: str) -> None:
        task = self._bursts.pop(ip, None)
        if task is not None:
            task.cancel()

    # -- releasing IPs ---------------------------------------------------------------------------
    async def release_held(self, vnn: Vnn, new_owner: int) -> Result:
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
            result = await self.scripts.run("releaseip", [iface, vnn.ip, str(vnn.prefixlen)])
            if result.timed_out:
                self.ban_self("releaseip event timed out")
            if not self.failover_disabled and self.effects.have_ip(vnn.ip):
                log.error("IP %s still hosted during release IP callback, failing", vnn.ip)
                return Result(-1, errmsg="IP still hosted")
            self.table.unassign(vnn, new_owner)
            self._forget_if_deleted(vnn)
            self.messenger.deliver_local(Srvid.RELEASE_IP, pack_message(Srvid.RELEASE_IP, vnn.ip))
            return Result()
        finally:
            vnn.update_in_flight = False

    async def release_all(self, reason: str) -> int:
        count = 0
        for vnn in list(self.table.held()):
            if vnn.update_in_flight:
                log.warning("Not releasing IP %s/%u, an update is already in progress", vnn.ip, vnn.prefixlen)
                continue
            if (await self.release_held(vnn, UNKNOWN_PNN)).status == 0:
                count += 1
        if count or reason != "shutdown":
            notice("Released %d public IPs (%s)", count, reason)
        return count

    def release_all_soon(self, reason: str) -> None:
        self.tasks.spawn(self.release_all(reason), f"release-all-{reason.replace(' ', '-')}")

    def drop_all(self, reason: str) -> None:
        """The node core wants every held IP gone (inactive, or cut off from any leader)."""
        if reason == "no leader":
            if not self.table.held():
                return
            log.error("No leader for %u seconds (RecoveryDropAllIPs): dropping all public IPs",
                      self.tunables.get("RecoveryDropAllIPs"))
        self.release_all_soon(reason)

    def verify(self, now: float, leader: int) -> None:
        """ctdb-recoverd's check of this node's allocation, once a second: an IP nobody hosts
        that this node could serve (a fresh `ctdb addip`, or one a failed run left behind)
        asks the leader for a takeover run. One request per run: the next waits for the
        IPREALLOCATED that ends it (or 10 s)."""
        if now < self._next_verify or now < self._asked_until:
            return
        self._next_verify = now + max(1, self.tunables.get("RecoverInterval"))
        if self.failover_disabled or leader == UNKNOWN_PNN or self.nodemap.me.flags:
            return
        if self._refused and self.hosting_refusal() is None:
            # The runs while it was cut off gave it nothing, and its rejoining the majority
            # changes no flag that would make the leader run again: ask, once.
            self._refused = False
            notice("This node may host public IPs again (no longer cut off from the majority)")
        else:
            unassigned = [v for v in self.available() if v.pnn == UNKNOWN_PNN]
            if not unassigned:
                return
            for vnn in unassigned:
                log.warning("Unassigned IP %s can be served by this node", vnn.ip)
        notice("Trigger takeoverrun")
        self._asked_until = now + VERIFY_WAIT
        self.messenger.send_message(leader, Srvid.TAKEOVER_RUN,
                                    pack_message(Srvid.TAKEOVER_RUN, SrvidMessage(self.nodemap.my_pnn, 0)))

    def reconcile_with(self, leader: int) -> None:
        """This node (re)found a leader: let go of what it gave to others meanwhile."""
        if leader in (UNKNOWN_PNN, self.nodemap.my_pnn) or not self.table.held() or self.failover_disabled:
            return
        self.tasks.spawn(self._reconcile_with(leader), "reconcile-ips-with-leader")

    async def _reconcile_with(self, leader: int) -> None:
        try:
            reply = await self.messenger.control(leader, Control.GET_PUBLIC_IPS, timeout=RECONCILE_TIMEOUT)
            view = unpack_reply(Control.GET_PUBLIC_IPS, reply.data)
        except (ControlError, ProtocolError) as exc:
            log.warning("Could not compare this node's public IPs with the leader's (node %u): %s",
                        leader, exc)
            return
        held = {v.ip: v for v in self.table.held() if not v.update_in_flight}
        leader_view = [(ip, p.pnn) for p in view.ips if (ip := address_of(p.addr)) is not None]
        for ip, owner in given_away(held, leader_view, self.nodemap.my_pnn):
            vnn = held[ip]
            if vnn.update_in_flight or vnn not in self.table.held():
                continue
            log.warning("Public IP %s is node %u's in the leader's table (it moved while this node "
                        "was out of touch with the leader): releasing it here", ip, owner)
            await self.release_held(vnn, owner)

    async def ipreallocated(self) -> Result:
        """The takeover run is over everywhere: the ipreallocated event, then tell clients."""
        self._asked_until = 0.0
        result = await self.scripts.run("ipreallocated")
        if result.timed_out:
            self.ban_self("ipreallocated event timed out")
        elif not result.ok and not result.cancelled:
            failed = result.failed_script
            log.error("ipreallocated event failed%s", f": {failed.output.strip()[:200]}" if failed else "")
            return Result(-1, errmsg="ipreallocated event failed")
        self.messenger.deliver_local(Srvid.IPREALLOCATED, b"")
        return Result(0)

    def gratuitous_arp(self, iface: str, ip: str) -> None:
        """`ctdb gratarp`: one announcement plus tickles for the connections we know to `ip`
        (effects' errors propagate to the caller)."""
        self.effects.announce(iface, ip)
        conns = self.connections.connections(ip)
        if conns:
            self.effects.tickle([((c.dst_ip, c.dst_port), (c.src_ip, c.src_port)) for c in conns])

    # -- the configured list ---------------------------------------------------------------------
    def add_ip(self, ip: str, prefixlen: int, iface_list: str) -> Result:
        """ADD_PUBLIC_IP (`ctdb addip`): runtime only, as ctdbd (public_addresses is not
        written). The new IP has no owner until a takeover run places it; the tool asks the
        leader for one with a REBALANCE_NODE message."""
        notice("Add IP %s", ip)
        version = 6 if ":" in ip else 4
        if not 0 < prefixlen <= (128 if version == 6 else 32):
            # pyctdbd: ctdbd accepts any mask and then fails every takeip, which gets the node
            # banned; refusing it here is the clear error.
            log.error("Invalid prefix length %u for public address %s", prefixlen, ip)
            return Result(-1, errmsg=f"invalid prefix length {prefixlen}")
        ifaces = [name for name in iface_list.split(",") if name]
        if not ifaces:
            log.error("No interface given for public address %s", ip)
            return Result(-1, errmsg="no interface")
        if not self.failover_disabled:
            for name in ifaces:
                if self.effects.link_up(name) is None:
                    log.error("Unknown interface %s for public address %s", name, ip)
                    log.error("Failed to add public address")
                    return Result(-1, errmsg=f"unknown interface {name}")
        if not self.table.add(ip, prefixlen, ifaces):
            log.error("Duplicate public IP address '%s'", ip)
            return Result(-1, errmsg="duplicate public IP address")
        self.connections.set_public_ips(self.table.vnns)
        if not self.failover_disabled:
            self.prepare()
        return Result(0)

    def delete_ip(self, ip: str) -> Result:
        """DEL_PUBLIC_IP (`ctdb delip`): an IP this node hosts stays until the next takeover
        run releases it (ctdbd's "delete pending"); any other is forgotten now."""
        notice("Delete IP %s", ip)
        outcome = self.table.delete(ip)
        if outcome == "unknown":
            log.error("Delete IP of unknown public IP address %s", ip)
            return Result(-1, errmsg="not a public address")
        if outcome == "deleted":
            self.connections.set_public_ips(self.table.vnns)
        return Result(0)

    def _forget_if_deleted(self, vnn: Vnn) -> None:
        if vnn.delete_pending and vnn.iface is None:
            self.table.forget(vnn.ip)
            self.connections.set_public_ips(self.table.vnns)

    async def reload(self, entries: Iterable[tuple[str, int, Iterable[str]]], source: str) -> None:
        added, removed = self.table.reload(entries)
        notice("Reloaded public addresses from %s: %u added, %u removed", source, len(added), len(removed))
        for ip in removed:
            vnn = self.table.find(ip)
            if vnn is not None and vnn.iface is not None:
                await self.release_held(vnn, UNKNOWN_PNN)
            self.table.forget(ip)
        self.connections.set_public_ips(self.table.vnns)

    def set_link(self, name: str, up: bool) -> bool:
        """Record an interface's link state; True if it changed. KeyError if unknown."""
        return self.table.set_link(name, up)

    def prepare(self) -> None:
        """Open the failover sockets for our interfaces before any takeover needs them."""
        if self.failover_disabled or not len(self.table):
            return
        try:
            self.effects.prepare({name for v in self.table for name in v.ifaces})
        except Exception as exc:         # an interface may appear later; takeover retries
            log.warning("Preparing failover sockets failed: %s", exc)

