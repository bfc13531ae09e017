"""The pyctdbd daemon object: lifecycle, the packet routers (node mesh and local socket),
message routing, the one loop timer, and control dispatch. Everything else is a service that
owns its state (node.py, leader.py, public_ips.py, connections.py, monitor.py, recovery.py,
scripts.py); decisions live in the cores (`daemon/core/`), control handlers in
`daemon/controls/` (handed in as a registry).

Roles CTDB splits between ctdbd and ctdb-recoverd live in one process here: the leader's
duties run as a task of the daemon, so a node death goes from the failure detector to a
takeover run without crossing a socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import DaemonConfig
from ..core.node import (
    DeathReport, ElectionVote, HeartbeatMessage, LeaderAnnounced, LeaderDroppedMe, NodeCore, PeerConnected,
    PeerDisconnected, PeerFlags, PeerKeepalive, PeerState, SetRunstate, Start,
)
from ..core.nodes import NodeMap
from ..core.publicips import PublicIPs
from ..core.tickles import TickleTable
from ..failover.effects import Effects
from ..log import log, notice, python_level
from ..net.local import Client, LocalServer
from ..net import plane_links
from ..net.transport import MAX_NODE_MESSAGE, NodeTransport
from ..protocol import (
    CAP_DEFAULT, CAP_LMASTER, CAP_RECMASTER, CTDB_PORT, UNKNOWN_PNN, ControlFlag, Operation,
    ProtocolError, RecMode, ReplyControl, Runstate, Srvid, decode_packet, encode_packet, internal,
    pack_message, unpack_message,
)
from ..protocol.header import peek_operation
from ..protocol.packets import DEFAULT_MAX_PACKET_SIZE
from .cluster_lock import ClusterLock, helper_argv, lock_lease
from .connections import ConnectionTracker
from .context import ControlContext
from .client_requests import ClientRequests
from .db_services import DatabaseServices
from .statistics import Statistics
from .dispatch import ControlDispatcher, Registry, Request, Result
from .leader import LEADER_MESSAGES, LeaderService
from .memory import memory_report
from .messenger import Messenger
from . import native_calls
from .native_calls import NativeCalls
from .native_grants import NativeGrants
from .monitor import MonitorService
from .node import NodeService, node_settings
from .public_ips import PublicIPService
from .recovery import RecoveryState
from .scripts import ScriptEvents, debug_script_path
from .tasks import Tasks
from .wire import election_from_wire


@dataclass
class DaemonOptions:
    config: DaemonConfig
    my_pnn: int
    socket_path: str
    effects: Effects
    event_dir: str
    eventd_socket: str | None
    port: int = CTDB_PORT
    script_env: dict[str, str] = field(default_factory=dict)
    failover_disabled: bool = False
    #: Fault injection for lab tests only (PYCTDBD_RECOVERY_PAUSE_S): s the leader waits in each
    #: recovery once every node is in recovery mode with the new map, before the databases stage.
    recovery_pause: float = 0.0


class Daemon:
    def __init__(self, options: DaemonOptions, controls: Registry) -> None:
        self.options = options
        cfg = options.config
        conf = cfg.conf
        self.config = cfg
        self.tunables = cfg.tunables.copy()
        self.my_pnn = options.my_pnn
        self.start_wall = time.time()
        self.debug_level = conf.log_level
        self.clock = time.monotonic                  # the event loop's clock
        self.tasks = Tasks()
        self.failover_disabled = options.failover_disabled or conf.failover_disabled
        addresses = [None if n.deleted or n.address is None else str(n.address) for n in cfg.nodes]
        nodemap = NodeMap.from_addresses(addresses, self.my_pnn, start_disabled=conf.start_as_disabled,
                                         start_stopped=conf.start_as_stopped)
        capabilities = CAP_DEFAULT
        if not conf.leader_capability:
            capabilities &= ~CAP_RECMASTER
        if not conf.lmaster_capability:
            capabilities &= ~CAP_LMASTER
        lock_spec = cfg.cluster_lock
        # The fcntl helper only when the operator names one: pyctdbd's own has a lease.
        named_helper = os.environ.get("CTDB_CLUSTER_MUTEX_HELPER")
        dead_timeout = self.tunables.get("DeadTimeoutMs") / 1000.0 if self.tunables.get("HeartbeatIntervalMs") \
            else float(self.tunables.get("KeepaliveInterval"))
        self.cluster_lock = None if lock_spec is None else ClusterLock(
            helper_argv(lock_spec.lock_file, lock_spec.command, named_helper, lock_lease(dead_timeout)),
            lambda reason: self.node.lock_lost(reason), lambda m: log.error("%s", m),
            timeout=max(5.0, float(conf.leader_timeout)), align=lambda when: self.node.on_tick_grid(when))
        now = self.clock()
        core = NodeCore(self.my_pnn, nodemap, self._node_settings(), now, wall_offset=now - time.time(),
                        capabilities=capabilities, start_wall=self.start_wall, port=options.port)
        self.dispatcher = ControlDispatcher(controls, self.tasks.spawn)
        self.messenger = Messenger(self.my_pnn, nodemap, self.dispatcher, self.route_message)
        self._native_grants: NativeGrants | None = None
        self._native = _native_path()
        self.local = LocalServer(options.socket_path, lambda client, frame: self.clients.on_frame(client, frame),
                                 self._on_client_gone, lambda m: log.warning("%s", m))
        self.transport = NodeTransport(self.my_pnn, addresses, options.port, self._on_node_frame,
                                       self._on_peer_up, self._on_peer_down, lambda m: log.warning("%s", m),
                                       self._on_undelivered, use_plane=self._native[0])
        self.node = NodeService(core, self.messenger, self, lock=self.cluster_lock,
                                lock_setting=lock_spec.setting if lock_spec else "",
                                start_wall=self.start_wall, clock=self.clock, spawn=self.tasks.spawn,
                                reschedule=self._reschedule, tick_now=self._tick_now)
        self.scripts = ScriptEvents(options.event_dir, options.script_env,
                                    debug_script_path(conf.event_debug_script, cfg.paths.etc_dir),
                                    self.tunables, stock_dir=f"{cfg.paths.data_dir}/events/legacy")
        public = PublicIPs.from_config(self.my_pnn, [(str(p.ip), p.prefixlen, p.ifaces)
                                                     for p in cfg.public_addresses])
        tickles = TickleTable()
        tickles.set_public_ips(public.vnns)
        self.connections = ConnectionTracker(tickles, self.messenger, options.effects, self.tunables,
                                             self.tasks, held_ips=lambda: self.ips.held_ips(),
                                             failover_disabled=self.failover_disabled, clock=self.clock)
        self.monitor = MonitorService(core, self.node.step, self.scripts, self.messenger, self.tunables,
                                      self.tasks)
        self.ips = PublicIPService(public, nodemap, options.effects, self.connections, self.scripts,
                                   self.messenger, self.tunables, self.tasks,
                                   failover_disabled=self.failover_disabled, ban_self=self.monitor.ban_self,
                                   hosting_refusal=core.hosting_refusal)
        self.leader = LeaderService(core, self.messenger, self.tunables, self.tasks, started_at=now,
                                    clock=self.clock, failover_disabled=self.failover_disabled,
                                    ips_hosted=self.ips.any_hosted, ban_this_node=self.node.ban,
                                    vnnmap=lambda: self.recovery.vnnmap,
                                    recovery_pause=options.recovery_pause)
        self.db = DatabaseServices(self.my_pnn, conf, self.messenger, self.tunables, self.tasks, nodemap,
                                   clock=self.clock, force_recovery=self.force_recovery,
                                   vnnmap=lambda: self.recovery.vnnmap,
                                   recovery_view=lambda: self.recovery.view(), env=options.script_env,
                                   align=self.node.on_tick_grid)
        self.recovery = RecoveryState(nodemap, self._recovery_finished, self.db.recovery_mode_changed,
                                      self.db.vnnmap_changed, self.db.may_leave_recovery)
        self.statistics = Statistics(
            self.tunables, call_stats=lambda: self.db.record_calls.stats,
            db_call_stats=lambda db_id: self.db.record_calls.db_stats.get(db_id),
            lock_stats=lambda: {d.db_id: d.locker.stats for d in self.db.databases.store},
            node_traffic=self.transport.traffic, client_traffic=self.local.traffic,
            num_clients=lambda: len(self.local), childwrites=lambda: self.db.persistent.childwrites,
            recovering=lambda: self.recovery.recmode == RecMode.ACTIVE, align=self.node.on_tick_grid)
        self.clients = ClientRequests(self.my_pnn, nodemap, self.dispatcher, self.messenger,
                                      self.db.record_calls, self.tasks,
                                      lambda: float(self.tunables.get("ControlTimeout")))
        self.dispatcher.context = ControlContext(
            daemon=self, config=cfg, tunables=self.tunables, node=self.node, recovery=self.recovery,
            leader=self.leader, ips=self.ips, connections=self.connections, clients=self.local,
            messenger=self.messenger, databases=self.db.databases, persistent=self.db.persistent,
            traverses=self.db.traverses, statistics=self.statistics, db_recovery=self.db.recovery,
            partial_recovery=self.db.partial_recovery, vacuum=self.db.vacuum)
        self._message_handlers: dict[int, Callable[[int, int, bytes], None]] = {
            Srvid.LEADER: self._leader_message, Srvid.ELECTION: self._election_message,
            Srvid.PUSH_NODE_FLAGS: self._push_node_flags, Srvid.MEM_DUMP: self._memory_dump,
            **{srvid: self.leader.on_message for srvid in LEADER_MESSAGES}}
        self._packet_handlers: dict[int, Callable] = {
            Operation.REQ_MESSAGE: self._node_message, Operation.REQ_CONTROL: self._node_control,
            Operation.REPLY_CONTROL: self._node_control_reply, Operation.REQ_KEEPALIVE: self._keepalive,
            **{op: self.db.record_calls.node_packet for op in (
                Operation.REQ_CALL, Operation.REPLY_CALL, Operation.REQ_DMASTER, Operation.REPLY_DMASTER,
                Operation.REPLY_ERROR)}}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._timer_armed = False          # from the mesh's start until shutdown
        self._stop: asyncio.Future | None = None

    # -- what controls may ask of the daemon itself ----------------------------------------------
    def request_shutdown(self, reason: str, code: int = 0) -> None:
        if self._stop is not None and not self._stop.done():
            notice("Shutdown requested: %s", reason)
            self._stop.set_result(code)

    def set_debug_level(self, level: int) -> None:
        self.debug_level = level
        logging.getLogger("ctdblab").setLevel(python_level(level))

    def apply_tunables(self) -> None:
        """Timing tunables changed: push them into the running cores."""
        self.node.settings_changed(self._node_settings())
        self.db.tunables_changed()

    def force_recovery(self, reason: str) -> None:
        """A service found the databases inconsistent: recovery mode ACTIVE, as ctdbd does, and
        the leader is asked to recover."""
        log.error("Forcing recovery: %s", reason)
        self.recovery.set_recmode(RecMode.ACTIVE)
        self.leader.recovery_wanted()

    def _node_settings(self):
        return node_settings(self.tunables, self.config.conf, lock_enabled=self.cluster_lock is not None,
                             wall_offset=self.clock() - time.time())

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self, ready: Callable[[], None] | None = None) -> int:
        """Start, run until shutdown, clean up. Returns the exit code."""
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        me = self.node.nodemap.me
        notice("CTDB starting on node %u (%s), pyctdbd pid %d", self.my_pnn, me.address, os.getpid())
        notice("PNN is %u", self.my_pnn)
        if self.cluster_lock is not None:
            notice("Cluster lock: %s (helper: %s)", self.config.cluster_lock.setting, self.cluster_lock.description)
        else:
            log.warning("No cluster lock configured: leader elections use CTDB's no-lock rules")
        if self.failover_disabled:
            notice("Failover is disabled ([failover] disabled = true): public IPs are not managed")
        self.ips.prepare()
        self.node.step(SetRunstate(Runstate.INIT))
        if not await self.scripts.run_fatal("init"):
            return 1
        if self._native[0] and plane_links.clients_in_plane_wanted(os.environ):
            self.local.plane = self.transport.shared_plane = plane_links.PlaneLinks(DEFAULT_MAX_PACKET_SIZE)
            notice("Local clients go through the native node plane")
        await self.local.start()
        self.messenger.local = self.local
        notice("Listening on %s", self.options.socket_path)
        if self.options.eventd_socket:
            await self.scripts.serve_eventd(self.options.eventd_socket)
        self.node.step(SetRunstate(Runstate.SETUP))
        if not await self.scripts.run_fatal("setup"):
            await self._close_sockets()
            return 1
        try:
            await self.transport.start()
        except OSError as exc:
            log.error("Cannot listen on %s:%u: %s", me.address, self.options.port, exc.strerror or exc)
            await self._close_sockets()
            return 1
        self.messenger.transport = self.transport
        self._start_native_grants()
        notice("Keepalive monitoring has been started")
        self.node.step(SetRunstate(Runstate.FIRST_RECOVERY))
        self._timer_armed = True
        self.node.settings_changed(self._node_settings())   # the pacer, now the fast channel is up
        self.node.step(Start())
        self.tasks.spawn(self.leader.run(), "leader-duties")
        self.tasks.spawn(self.connections.run(), "tickles")
        self.tasks.spawn(self.statistics.run(), "stat-history")
        if ready is not None:
            ready()
        code = await self._stop
        await self._shutdown()
        return code

    async def _shutdown(self) -> None:
        self.tasks.shutting_down = True
        # Peers that lose us from now on must not reconnect and recover with a node that is
        # going (seen in a rolling upgrade: a second recovery, with a freeze, 1.9 s of stall).
        self.transport.stop_admitting()
        self.node.step(SetRunstate(Runstate.SHUTDOWN))
        self.node.stopped = True
        await self.node.close()
        if self.node.is_leader:
            self.messenger.broadcast(Srvid.LEADER, pack_message(Srvid.LEADER, UNKNOWN_PNN))
        await self.ips.release_all("shutdown")
        try:
            await self.scripts.run("shutdown")
        except Exception as exc:
            log.warning("shutdown event: %s", exc)
        self.tasks.cancel_all()
        if self._timer is not None:
            self._timer.cancel()
        if self._native_grants is not None:
            notice("%s", self._native_grants.summary())
            if self._native_grants.native_calls is not None:
                notice("%s", self._native_grants.native_calls.summary())
        await self.transport.close()
        await self._close_sockets()
        self.db.close()
        self.options.effects.close()
        notice("Shutdown complete")

    async def _close_sockets(self) -> None:
        await self.local.close()
        await self.scripts.close()
        if self.local.plane is not None:            # the clients' and the nodes' plane
            await asyncio.sleep(0)                  # the aborted clients' connection_lost first
            self.local.plane.close()
            self.local.plane = None

    # -- the timer: failure detector, election, bans, connection tracking ------------------------
    def _reschedule(self) -> None:
        if self.tasks.shutting_down or not self._timer_armed:
            return
        when = self.node.core.next_deadline()
        if self._timer is not None and not self._timer.cancelled() and self._timer_when == when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = when
        self._timer = asyncio.get_running_loop().call_at(when, self._on_timer)

    def _tick_now(self) -> None:
        """The heartbeat pacer's alarm: run the timer now instead of at its next look."""
        if self.tasks.shutting_down or not self._timer_armed:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._on_timer(alarm=True)

    def _on_timer(self, alarm: bool = False) -> None:
        self._timer = None
        now = self.clock()
        try:
            self.node.tick(now, alarm)
        except Exception:       # logged, and the timer lives on: without it nothing detects a death
            log.exception("failure-detection tick failed")
        try:
            self.db.tick(now)
            self.connections.poll(now)
            self.ips.verify(now, self.node.leader)
        except Exception:       # never let these checks stop the heartbeat timer
            log.exception("connection tracking or IP allocation check failed")
        self._reschedule()

    # -- the node mesh ---------------------------------------------------------------------------
    def _start_native_grants(self) -> None:
        links = self.transport.plane
        if links is None or not self._native[1]:
            return
        grants = NativeGrants(links, self.transport, self.db.record_calls, self.db.databases.database,
                              self.node.note_traffic)
        if grants.start():
            self._native_grants = grants
            notice("The native node plane answers the lmaster's grant")
            if self.local.plane is links and native_calls.wanted(os.environ):
                calls = NativeCalls(links, self.local, self.transport, self.db.record_calls,
                                    self.node.note_traffic)
                calls.start()
                grants.native_calls = calls
                notice("The native node plane takes smbd's calls")

    def _on_peer_up(self, pnn: int) -> None:
        self.node.step(PeerConnected(pnn))

    def _on_peer_down(self, pnn: int, reason: str) -> None:
        self.node.step(PeerDisconnected(pnn, reason))

    def _on_undelivered(self, pnn: int) -> None:
        """Frames queued for `pnn` while it connected were thrown away: no reply will come."""
        self.messenger.rpc.node_down(pnn)

    def _on_node_frame(self, pnn: int, frame: bytes) -> None:
        if self.tasks.shutting_down:
            return
        self.node.note_traffic(pnn, self.clock())
        # Fast path for the heartbeat messages that make up nearly all idle traffic.
        op = peek_operation(frame)
        kind = internal.peek_heartbeat(frame) if op == Operation.REQ_MESSAGE else None
        if kind is not None:
            self.node.step(HeartbeatMessage(pnn, kind))
            return
        try:
            packet = decode_packet(frame)
        except ProtocolError as exc:
            log.error("Malformed packet from node %u: %s; dropping the connection", pnn, exc)
            self.transport.drop_peer(pnn, "malformed packet")
            return
        handler = self._packet_handlers.get(packet.header.operation)
        if handler is None:
            log.info("Ignoring %s from node %u", Operation(packet.header.operation).name, pnn)
            return
        handler(pnn, packet.header, packet.body)

    def _node_message(self, pnn: int, header, body) -> None:
        self.route_message(pnn, body.srvid, body.data)

    def _node_control(self, pnn: int, header, body) -> None:
        req = Request(body.opcode, body.flags, body.srvid, body.client_id, body.data, pnn,
                      generation=header.generation)
        noreply = bool(body.flags & ControlFlag.NOREPLY)

        def reply(res: Result) -> None:
            if not noreply:
                if res.status == 0 and len(res.data) > MAX_NODE_MESSAGE:
                    # queued whole, it would cost the connection (net/transport.py)
                    log.error("Reply to control %u from node %u too large (%d bytes): answering -1",
                              body.opcode, pnn, len(res.data))
                    res = Result(-1, errmsg="reply too large for one packet")
                self.transport.send(pnn, encode_packet(
                    ReplyControl(res.status, res.data if res.status == 0 else b"", res.errmsg),
                    destnode=pnn, srcnode=self.my_pnn, reqid=header.reqid))
            if res.after is not None:
                res.after()

        self.dispatcher.dispatch(req, reply)

    def _keepalive(self, pnn: int, header, body) -> None:
        self.node.step(PeerKeepalive(pnn, None if body.legacy else body.version, body.uptime))

    def _node_control_reply(self, pnn: int, header, body) -> None:
        if not self.messenger.rpc.reply_received(pnn, header.reqid, body):
            log.debug("unexpected control reply from node %u (reqid %u)", pnn, header.reqid)

    # -- messages --------------------------------------------------------------------------------
    def route_message(self, src: int, srvid: int, data: bytes) -> None:
        """A message for this node (from a peer, a local client or ourselves): the daemon's
        own handlers first, then every local client that registered the srvid."""
        if srvid in internal.INTERNAL:
            if src != self.my_pnn:
                self._internal_message(src, srvid, data)
            return
        if self.messenger.handle_message(src, srvid, data):
            return
        handler = self._message_handlers.get(srvid)
        if handler is not None:
            try:
                handler(src, srvid, data)
            except ProtocolError as exc:
                log.warning("Malformed message 0x%016x from node %u: %s", srvid, src, exc)
        if self.local.has_srvid(srvid) or self.local.has_srvid(Srvid.ALL):
            self.messenger.deliver_local(srvid, data, src)

    def _internal_message(self, src: int, srvid: int, data: bytes) -> None:
        try:
            if srvid == internal.HEARTBEAT:
                self.node.step(HeartbeatMessage(src, internal.unpack_heartbeat(data)))
            elif srvid == internal.NODE_DEAD:
                report = internal.NodeDead.unpack(data)
                self.node.step(DeathReport(report.dead, report.reporter, src))
            elif srvid == internal.NODE_DROPPED:
                dropped = internal.NodeDead.unpack(data)
                self.node.step(LeaderDroppedMe(src, dropped.dead, dropped.reporter))
            elif srvid == internal.NODE_STATE:
                state = internal.NodeState.unpack(data)
                self.node.step(PeerState(src, state.pnn, state.flags, state.runstate, state.capabilities))
            elif srvid == internal.RECOVERY_WANTED:
                self.leader.on_message(src, srvid, data)
        except ProtocolError as exc:
            log.warning("Malformed internal message 0x%016x from node %u: %s", srvid, src, exc)

    def _leader_message(self, src: int, srvid: int, data: bytes) -> None:
        if src != self.my_pnn:
            self.node.step(LeaderAnnounced(src, unpack_message(srvid, data)))

    def _election_message(self, src: int, srvid: int, data: bytes) -> None:
        if src != self.my_pnn:
            self.node.step(ElectionVote(src, election_from_wire(unpack_message(srvid, data))))

    def _memory_dump(self, src: int, srvid: int, data: bytes) -> None:
        """`ctdb rddumpmemory`: what ctdb-recoverd answers; the leader duties live in this
        process, so its report is this process's."""
        if len(data) != 16:
            log.error("Wrong size of return address.")
            return
        reply_to = unpack_message(srvid, data)
        log.error("mem_dump_handler: recovery daemon memory dump")
        self.messenger.send_message(reply_to.pnn, reply_to.srvid, memory_report().encode())

    def _push_node_flags(self, src: int, srvid: int, data: bytes) -> None:
        change = unpack_message(srvid, data)
        self.node.step(PeerFlags(src, change.pnn, change.new_flags))

    # -- what the node core's decisions ask of the other services (NodeEvents) -------------------
    def leader_changed(self, old: int, new: int) -> None:
        self.leader.leader_changed(old, new)
        self.ips.reconcile_with(new)

    def leader_work(self, recovery: bool, takeover: bool, reason: str) -> None:
        self.leader.schedule(recovery=recovery, takeover=takeover, reason=reason)

    def enter_recovery_mode(self) -> None:
        self.recovery.enter_recovery_mode()

    def drop_all_ips(self, reason: str) -> None:
        self.ips.drop_all(reason)

    def peer_joined(self, pnn: int) -> None:
        self.connections.push_all(pnn)

    def own_flags_changed(self, flags: int) -> None:
        self.monitor.wake()
        self.db.own_flags_changed(flags)

    def runstate_changed(self, runstate: int) -> None:
        self.db.runstate_changed(runstate)

    def peer_gone(self, pnn: int) -> None:
        self.db.peer_gone(pnn)

    def _recovery_finished(self) -> None:
        """END_RECOVERY: commits cut short by the recovery get their answer; the first one
        moves this node on to STARTUP."""
        self.db.recovery_finished()
        self.monitor.first_recovery_done()

    # -- local clients ---------------------------------------------------------------------------
    def _on_client_gone(self, client: Client) -> None:
        self.connections.client_gone(client.client_id, self.ips.is_held)
        self.db.client_gone(client)


def _native_path() -> tuple[bool, bool]:
    """(node plane, grants): both unless the environment turns them off (plane_links.
    native_path_wanted, docs/native-hot-path.md); without the plane's library the daemon says so
    (a warning when the environment asked for it by name) and uses asyncio's transports."""
    plane, grants = plane_links.native_path_wanted(os.environ)
    if not plane:
        return False, False
    why = plane_links.plane_unavailable()
    if why is not None:
        asked = "1" in (os.environ.get(plane_links.ENV), os.environ.get(plane_links.GRANTS_ENV))
        (log.warning if asked else log.info)(
            "The native node plane cannot be used (%s): node connections stay on asyncio's "
            "transports", why)
        return False, False
    notice("Node connections go through the native node plane")
    return True, grants
