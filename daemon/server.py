"""The pyctdbd daemon object: wires the cores (membership, election, node map, takeover planning,
tickles) to the asyncio shell (node mesh, local socket, cluster lock, event scripts, host effects)
and carries out the actions the cores return.

Roles CTDB splits between ctdbd and ctdb-recoverd live in one process here: the leader's duties
(leader broadcasts, recovery of the vnnmap/generation, takeover runs) run as tasks of the daemon,
so a node death goes from the failure detector to a takeover run without crossing a socket.
Control handlers are in handlers.py.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .config import DaemonConfig, Tunables
from .core.election import (
    BroadcastElection, BroadcastLeader, Election, ElectionMessage, ElectionSettings, ElectionStarted,
    LeaderChanged, LockStatus, ReleaseLock, SendLeader, TakeLock,
)
from .core.membership import (
    DetectorSettings, FailureDetector, LoopStalled, PeerDead, SendHeartbeat, SendKeepalive,
    SendWatch,
)
from .control import Request, Result
from .core.nodes import FlagChange, NodeMap, flags_text
from .core.publicips import PublicIPs
from .core.tickles import TickleTable
from .effects import Effects
from .ipactions import PublicIPActions
from .leader import LeaderDuties
from .lock import ClusterLock, helper_argv
from .net import internal
from .net.local import Client, LocalServer
from .net.rpc import ControlClient, ControlError
from .net.transport import NodeTransport
from .tickling import TickleReplication
from .protocol import (
    BROADCAST_ACTIVE, BROADCAST_ALL, BROADCAST_CONNECTED, CAP_DEFAULT, CAP_LMASTER, CAP_RECMASTER,
    CTDB_PORT, CURRENT_NODE, INVALID_GENERATION, KEEPALIVE_VERSION_4_17, UNKNOWN_PNN, Control,
    ControlFlag, NodeFlag, Operation, ProtocolError, RecMode, ReplyControl, ReplyError, ReqControl,
    ReqKeepalive, ReqMessage, Runstate, Srvid, Timeval, VnnMap, decode_packet, encode_packet,
    pack_message, unpack_message,
)
from .protocol import ElectionMessage as WireElectionMessage
from .protocol.messages import pack_i32_reply

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
log = logging.getLogger("ctdblab.daemon")

_U32 = struct.Struct("<I")
_SRVID_LEN = struct.Struct("<QI")

STARTUP_RETRY = 5.0              # s between failed "startup" events (as CTDB)
DRAIN_EVERY = 2                  # read the heartbeat socket every this many timer runs
MONITOR_RETRY = 0.2              # s before a cancelled monitor event is tried again
BROADCASTS = (BROADCAST_ALL, BROADCAST_ACTIVE, BROADCAST_CONNECTED)


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


def notice(message: str, *args: object) -> None:
    log.log(NOTICE, message, *args)


class Daemon(LeaderDuties, PublicIPActions, TickleReplication):
    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        cfg = options.config
        self.conf = cfg.conf
        self.tunables: Tunables = cfg.tunables.copy()
        self.my_pnn = options.my_pnn
        self.addresses: list[str | None] = [None if n.deleted or n.address is None else str(n.address)
                                            for n in cfg.nodes]
        self.nodemap = NodeMap.from_addresses(self.addresses, self.my_pnn,
                                              start_disabled=self.conf.start_as_disabled,
                                              start_stopped=self.conf.start_as_stopped)
        self.capabilities = CAP_DEFAULT
        if not self.conf.leader_capability:
            self.capabilities &= ~CAP_RECMASTER
        if not self.conf.lmaster_capability:
            self.capabilities &= ~CAP_LMASTER
        self.peer_capabilities: dict[int, int] = {}
        self.failover_disabled = options.failover_disabled or self.conf.failover_disabled
        self.effects = options.effects
        self.public = PublicIPs.from_config(self.my_pnn, [
            (str(p.ip), p.prefixlen, p.ifaces) for p in cfg.public_addresses])
        self.tickles = TickleTable()
        self.tickles.set_public_ips(self.public.vnns)
        self.vnnmap = VnnMap(INVALID_GENERATION, [])
        self.recmode = RecMode.ACTIVE
        self.debug_level = self.conf.log_level
        self.start_wall = time.time()
        self.last_recovery_started = 0.0
        self.last_recovery_finished = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.transport: NodeTransport | None = None
        self.local: LocalServer | None = None
        self.rpc = ControlClient(self.my_pnn, self._send_frame_to_node)
        self.detector: FailureDetector | None = None
        self.election: Election | None = None
        self.cluster_lock: ClusterLock | None = None
        self.events = None
        self.eventd = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._tasks: set[asyncio.Task] = set()
        self._stop: asyncio.Future | None = None
        self._shutting_down = False
        self._exit_code = 0
        # Leader duties.
        self._need_recovery = False
        self._need_takeover = False
        self._takeover_requests: list[tuple[int, int]] = []   # (pnn, srvid) waiting for a reply
        self._orphan_requests: list[tuple[int, int]] = []     # arrived while nobody led
        self._force_rebalance: set[int] = set()
        self._leader_task: asyncio.Task | None = None
        self._leader_wakeup: asyncio.Event | None = None
        self._takeover_disabled_until = 0.0
        self._recovery_disabled_until = 0.0
        self._takeover_runs = 0
        self._retry_delay = 0.0
        self._ban_credits: dict[int, tuple[int, float]] = {}
        # Announcement bursts per IP (so a release can stop them).
        self._bursts: dict[str, asyncio.Task] = {}
        self._monitor_wakeup: asyncio.Event | None = None
        self._tickle_wakeup: asyncio.Event | None = None
        self._unsupported_seen: set[int] = set()
        self._init_tickle_tracking()
        self._monitor_timeouts = 0
        self._ban_timer: asyncio.TimerHandle | None = None
        self._leaderless_timer: asyncio.TimerHandle | None = None
        self._connected_at: dict[int, float] = {}
        self._started_at = 0.0
        self._startup_done = False
        self._warned_no_scripts = False
        self._heartbeat_frames: dict[int, bytes] = {}
        self._leader_frames: dict[tuple[int, int], bytes] = {}
        self._ticks = 0
        from . import handlers
        self._handlers = handlers.HANDLERS

    # ------------------------------------------------------------------------------------------
    # helpers
    # ------------------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        assert self.loop is not None
        return self.loop.time()

    @property
    def runstate(self) -> int:
        return self.nodemap.me.runstate

    def spawn(self, coro, name: str | None = None) -> asyncio.Task | None:
        if self._shutting_down and not (name or "").startswith("release"):
            coro.close()            # nothing new starts once shutdown has begun
            return None
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("internal task %s failed: %r", task.get_name(), exc, exc_info=exc)

    def ms(self, name: str) -> float:
        return self.tunables.get(name) / 1000.0

    def detector_settings(self) -> DetectorSettings:
        t = self.tunables
        interval = t.get("HeartbeatIntervalMs")
        dead = t.get("DeadTimeoutMs")
        if interval and dead and dead < 2 * interval:
            log.warning("DeadTimeoutMs=%u is less than twice HeartbeatIntervalMs=%u: using %u ms",
                        dead, interval, 3 * interval)
            dead = 3 * interval
        heartbeat = (interval or 1000) / 1000.0
        offset = self.loop.time() - time.time() if self.loop is not None else 0.0
        return DetectorSettings(
            heartbeat_interval=heartbeat,
            dead_timeout=dead / 1000.0 if interval else 0.0,
            keepalive_interval=max(1, t.get("KeepaliveInterval")),
            keepalive_limit=max(1, t.get("KeepaliveLimit")),
            wall_offset=offset)

    def election_settings(self) -> ElectionSettings:
        t = self.tunables
        election_ms = t.get("ElectionTimeoutMs") or t.get("ElectionTimeout") * 1000
        return ElectionSettings(
            lock_enabled=self.cluster_lock is not None,
            leader_timeout=float(max(1, self.conf.leader_timeout)),
            election_timeout=election_ms / 1000.0,
            lock_retry=max(0.2, election_ms / 1000.0),
            startup_grace=max(0.5, 2 * self.detector_settings().heartbeat_interval + 0.3))

    def can_lead(self) -> bool:
        return bool(self.capabilities & CAP_RECMASTER) and not self.nodemap.inactive

    def uptime_seconds(self) -> int:
        return int(time.time() - self.start_wall)

    # ------------------------------------------------------------------------------------------
    # lifecycle
    # ------------------------------------------------------------------------------------------
    async def run(self, ready: Callable[[], None] | None = None) -> int:
        """Start, run until shutdown, clean up. Returns the exit code."""
        from .events import EventDaemonServer, EventRunner
        self.loop = asyncio.get_running_loop()
        self._stop = self.loop.create_future()
        self._started_at = self.loop.time()
        self._leader_wakeup = asyncio.Event()
        self._monitor_wakeup = asyncio.Event()
        self._tickle_wakeup = asyncio.Event()
        me = self.nodemap.me
        notice("CTDB starting on node %u (%s), pyctdbd pid %d", self.my_pnn, me.address, os.getpid())
        notice("PNN is %u", self.my_pnn)
        lock_spec = self.options.config.cluster_lock
        if lock_spec is not None:
            argv = helper_argv(lock_spec.lock_file, lock_spec.command,
                               self.options.config.paths.cluster_mutex_helper)
            self.cluster_lock = ClusterLock(argv, self._lock_lost, lambda m: log.error("%s", m),
                                            timeout=max(5.0, float(self.conf.leader_timeout)))
            notice("Cluster lock: %s (helper: %s)", lock_spec.setting, " ".join(argv))
        else:
            log.warning("No cluster lock configured: leader elections use CTDB's no-lock rules")
        if self.failover_disabled:
            notice("Failover is disabled ([failover] disabled = true): public IPs are not managed")
        if not self.failover_disabled and len(self.public):
            try:
                self.effects.prepare({name for v in self.public for name in v.ifaces})
            except Exception as exc:         # an interface may appear later; takeover retries
                log.warning("Preparing failover sockets failed: %s", exc)
        self.events = EventRunner(self.options.event_dir, env=self.options.script_env,
                                  debug_script=self.conf.event_debug_script)
        self.nodemap.set_runstate(Runstate.INIT)
        notice("Set runstate to INIT (1)")
        if not await self._run_fatal_event("init"):
            return 1
        self.local = LocalServer(self.options.socket_path, self._on_client_frame,
                                 self._on_client_gone, lambda m: log.warning("%s", m))
        await self.local.start()
        notice("Listening on %s", self.options.socket_path)
        if self.options.eventd_socket:
            self.eventd = EventDaemonServer({"legacy": self.events}, self.options.eventd_socket)
            try:
                await self.eventd.start()
            except OSError as exc:
                log.warning("event daemon socket %s unavailable: %s", self.options.eventd_socket, exc)
                self.eventd = None
        self.nodemap.set_runstate(Runstate.SETUP)
        notice("Set runstate to SETUP (2)")
        if not await self._run_fatal_event("setup"):
            await self._close_sockets()
            return 1
        now = self.now
        self.detector = FailureDetector(self.my_pnn, self.detector_settings(), now)
        self.election = Election(self.my_pnn, self.election_settings(), self.start_wall,
                                 can_lead=self.can_lead())
        self.transport = NodeTransport(self.my_pnn, self.addresses, self.options.port,
                                       self._on_node_frame, self._on_peer_up, self._on_peer_down,
                                       lambda m: log.warning("%s", m))
        try:
            await self.transport.start()
        except OSError as exc:
            log.error("Cannot listen on %s:%u: %s", me.address, self.options.port, exc.strerror or exc)
            await self._close_sockets()
            return 1
        notice("Keepalive monitoring has been started")
        self.nodemap.set_runstate(Runstate.FIRST_RECOVERY)
        notice("Set runstate to FIRST_RECOVERY (3)")
        self._handle_election(self.election.start(now))
        self._reschedule()
        self.spawn(self._leader_loop(), "leader-duties")
        self.spawn(self._tickle_loop(), "tickles")
        if ready is not None:
            ready()
        code = await self._stop
        await self._shutdown()
        return code

    def request_shutdown(self, reason: str, code: int = 0) -> None:
        if self._stop is not None and not self._stop.done():
            notice("Shutdown requested: %s", reason)
            self._stop.set_result(code)

    async def run_event(self, event: str, args: list[str] | tuple[str, ...] = (), *,
                        timeout: float | None = None):
        """Run an event script event; a missing script directory means "no scripts" (logged
        once), any other runner error is logged and reported as a failed event."""
        from .events import EventResult, EventScriptError
        if timeout is None:
            timeout = self.tunables.get("EventScriptTimeout")
        now = time.time()
        if not os.path.isdir(self.options.event_dir):
            if not self._warned_no_scripts:
                self._warned_no_scripts = True
                log.warning("Event script directory %s does not exist: running no event scripts",
                            self.options.event_dir)
            return EventResult(event, tuple(args), 0, (), now, now)
        try:
            return await self.events.run(event, args, timeout)
        except (EventScriptError, ValueError) as exc:
            log.error("Cannot run the %s event: %s", event, exc)
            return EventResult(event, tuple(args), -errno.EIO, (), now, time.time())

    async def _run_fatal_event(self, event: str) -> bool:
        result = await self.run_event(event)
        if not result.ok:
            failed = result.failed_script
            log.error("%s event failed%s - exiting", event,
                      f" (script {failed.name}: {failed.output.strip()[:200]})" if failed else "")
            return False
        return True

    async def _shutdown(self) -> None:
        self._shutting_down = True
        self.nodemap.set_runstate(Runstate.SHUTDOWN)
        notice("Set runstate to SHUTDOWN (6)")
        if self.cluster_lock is not None and self.cluster_lock.held:
            await self.cluster_lock.release()
        if self.election is not None and self.election.is_leader:
            self._broadcast_message(Srvid.LEADER, pack_message(Srvid.LEADER, UNKNOWN_PNN))
        await self._release_all_ips("shutdown")
        try:
            await self.run_event("shutdown", timeout=self.tunables.get("EventScriptTimeout"))
        except Exception as exc:
            log.warning("shutdown event: %s", exc)
        for task in list(self._tasks):
            task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            await self.transport.close()
        await self._close_sockets()
        try:
            await self.events.close()
        except Exception:
            pass
        self.effects.close()
        notice("Shutdown complete")

    async def _close_sockets(self) -> None:
        if self.local is not None:
            await self.local.close()
        if self.eventd is not None:
            try:
                await self.eventd.close()
            except Exception:
                pass

    # ------------------------------------------------------------------------------------------
    # timers: failure detector and election share one loop timer
    # ------------------------------------------------------------------------------------------
    def _reschedule(self) -> None:
        if self.detector is None or self.election is None or self._shutting_down:
            return
        when = self.detector.next_deadline()
        other = self.election.next_deadline()
        if other is not None and other < when:
            when = other
        if self._timer is not None and not self._timer.cancelled() and self._timer_when == when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.now
        self._ticks += 1
        # Queued heartbeats carry their arrival time, so they need reading only every few
        # ticks, and always before a peer could be declared dead.
        if self.transport is not None and self.transport.has_fast_channel and (
                self._ticks % DRAIN_EVERY == 0 or self.detector.dead_deadline_due(now)):
            for pnn, arrival in self.transport.drain_fast(now - time.time()):
                self.detector.fast_heartbeat(pnn, min(arrival, now))
        self._handle_detector(self.detector.tick(now))
        self._handle_election(self.election.tick(now))
        try:
            self.tickle_poll(now)
        except Exception:       # never let connection tracking stop the heartbeat timer
            log.exception("connection tracking failed")
        self._reschedule()

    # ------------------------------------------------------------------------------------------
    # node transport
    # ------------------------------------------------------------------------------------------
    def _send_frame_to_node(self, pnn: int, frame: bytes) -> bool:
        if pnn == self.my_pnn:
            self.loop.call_soon(self._on_node_frame_local, frame)
            return True
        if self.transport is None:
            return False
        return self.transport.send(pnn, frame)

    def _on_node_frame_local(self, frame: bytes) -> None:
        self._on_node_frame(self.my_pnn, frame, local=True)

    def _on_node_frame(self, pnn: int, frame: bytes, local: bool = False) -> None:
        if self._shutting_down:
            return
        now = self.now
        if not local:
            self.detector.traffic(pnn, now)
            # Fast path for the two packets that make up nearly all idle traffic.
            op, = _U32.unpack_from(frame, 16)
            if op == Operation.REQ_KEEPALIVE:
                return
            if op == Operation.REQ_MESSAGE and len(frame) >= 48:
                srvid, datalen = _SRVID_LEN.unpack_from(frame, 32)
                if srvid == internal.HEARTBEAT and datalen >= 4:
                    self._heartbeat_message(pnn, _U32.unpack_from(frame, 44)[0], now)
                    return
        try:
            packet = decode_packet(frame)
        except ProtocolError as exc:
            log.error("Malformed packet from node %u: %s; dropping the connection", pnn, exc)
            if not local and self.transport is not None:
                self.transport.drop_peer(pnn, "malformed packet")
            return
        header, body = packet.header, packet.body
        op = header.operation
        if op == Operation.REQ_MESSAGE:
            self._on_message(pnn, body.srvid, body.data)
        elif op == Operation.REQ_CONTROL:
            self._on_peer_control(pnn, header, body)
        elif op == Operation.REPLY_CONTROL:
            if not self.rpc.reply_received(pnn, header.reqid, body):
                log.debug("unexpected control reply from node %u (reqid %u)", pnn, header.reqid)
        elif op == Operation.REQ_KEEPALIVE:
            pass
        else:
            log.info("Ignoring %s from node %u: clustered databases are not supported yet",
                     Operation(op).name, pnn)

    def _on_peer_up(self, pnn: int) -> None:
        if self._shutting_down:
            return
        now = self.now
        change = self.nodemap.mark_connected(pnn)
        self._connected_at[pnn] = now
        node = self.nodemap.nodes[pnn]
        log.error("%s:%u: connected to %s:%u - %u connected", self.nodemap.me.address,
                  self.options.port, node.address, self.options.port, len(self.nodemap.connected_pnns()) - 1)
        self._handle_detector(self.detector.peer_up(pnn, now))
        self._handle_election(self.election.set_connected(self._connected_peers(), now))
        self._send_node_state(pnn)
        self._push_all_tickle_lists(pnn)
        if change is not None and self.election.is_leader:
            self._schedule_leader_work(recovery=True, takeover=True, reason=f"node {pnn} connected")
        self._reschedule()

    def _on_peer_down(self, pnn: int, reason: str) -> None:
        if self._shutting_down:
            return
        now = self.now
        change = self.nodemap.mark_disconnected(pnn)
        node = self.nodemap.nodes[pnn]
        if change is not None:
            log.error("%s:%u: node %s:%u is dead: %u connected (%s)", self.nodemap.me.address,
                      self.options.port, node.address, self.options.port,
                      len(self.nodemap.connected_pnns()) - 1, reason)
        self.rpc.node_down(pnn)
        self._handle_detector(self.detector.peer_down(pnn, now))
        self._handle_election(self.election.set_connected(self._connected_peers(), now))
        self._handle_election(self.election.peer_dead(pnn, now))
        if change is not None and self.election.is_leader:
            self._schedule_leader_work(recovery=True, takeover=True, reason=f"node {pnn} disconnected")
        self._reschedule()

    def _connected_peers(self) -> set[int]:
        return {p for p in self.nodemap.connected_pnns() if p != self.my_pnn}

    def _handle_detector(self, actions: Iterable) -> None:
        if self._shutting_down:
            return
        for action in actions:
            if isinstance(action, SendHeartbeat):
                if self.transport.has_fast_channel:
                    frame = self._heartbeat_frames.get(action.pnn)
                    if frame is None:
                        frame = encode_packet(ReqKeepalive(KEEPALIVE_VERSION_4_17, 0),
                                              destnode=action.pnn, srcnode=self.my_pnn, reqid=0)
                        self._heartbeat_frames[action.pnn] = frame
                    self.transport.send_fast(action.pnn, frame)
                else:
                    self.send_message(action.pnn, internal.HEARTBEAT,
                                      internal.pack_heartbeat(internal.HEARTBEAT_BEAT))
            elif isinstance(action, SendWatch):
                self.send_message(action.pnn, internal.HEARTBEAT, internal.pack_heartbeat(
                    internal.HEARTBEAT_WATCH if action.watch else internal.HEARTBEAT_UNWATCH))
            elif isinstance(action, SendKeepalive):
                frame = encode_packet(ReqKeepalive(KEEPALIVE_VERSION_4_17, self.uptime_seconds()),
                                      destnode=action.pnn, srcnode=self.my_pnn, reqid=0)
                self.transport.send(action.pnn, frame)
            elif isinstance(action, PeerDead):
                notice("dead count reached for node %u (%s)", action.pnn, action.reason)
                if action.fast:
                    self._broadcast_message(internal.NODE_DEAD,
                                            internal.pack_node_dead(action.pnn, self.my_pnn),
                                            include_self=False)
                self.transport.drop_peer(action.pnn, action.reason)
            elif isinstance(action, LoopStalled):
                log.warning("Event loop stalled: timer ran %.0f ms late; restarting failure-detection "
                            "timeouts instead of declaring peers dead", action.late * 1000)

    # ------------------------------------------------------------------------------------------
    # messages
    # ------------------------------------------------------------------------------------------
    def send_message(self, dest: int, srvid: int, data: bytes) -> None:
        if dest == CURRENT_NODE:
            dest = self.my_pnn
        if dest in BROADCASTS:
            self._broadcast_message(srvid, data, dest)
            return
        if dest == self.my_pnn:
            self._on_message(self.my_pnn, srvid, data)
            return
        frame = encode_packet(ReqMessage(srvid, data), destnode=dest, srcnode=self.my_pnn, reqid=0)
        if self.transport is None or not self.transport.send(dest, frame):
            log.debug("message 0x%016x to node %u dropped: not connected", srvid, dest)

    def _broadcast_targets(self, dest: int) -> list[int]:
        if dest == BROADCAST_ALL:
            return [n.pnn for n in self.nodemap.nodes if not n.deleted]
        if dest == BROADCAST_ACTIVE:
            return self.nodemap.active_pnns()
        return self.nodemap.connected_pnns()

    def _broadcast_message(self, srvid: int, data: bytes, dest: int = BROADCAST_CONNECTED,
                           include_self: bool = True) -> None:
        for pnn in self._broadcast_targets(dest):
            if pnn == self.my_pnn:
                if include_self:
                    self._on_message(self.my_pnn, srvid, data)
                continue
            if self.transport is not None:
                self.transport.send(pnn, encode_packet(ReqMessage(srvid, data), destnode=pnn,
                                                       srcnode=self.my_pnn, reqid=0))

    def _on_message(self, src: int, srvid: int, data: bytes) -> None:
        """A message for this node (from a peer, a local client or ourselves): the daemon's own
        handlers first, then every local client that registered the srvid."""
        if srvid in internal.INTERNAL:
            if src != self.my_pnn:
                self._internal_message(src, srvid, data)
            return
        try:
            self._daemon_message(src, srvid, data)
        except ProtocolError as exc:
            log.warning("Malformed message 0x%016x from node %u: %s", srvid, src, exc)
        if self.local is not None and (self.local.has_srvid(srvid) or self.local.has_srvid(Srvid.ALL)):
            frame = encode_packet(ReqMessage(srvid, data), destnode=self.my_pnn, srcnode=src, reqid=0)
            self.local.deliver(srvid, frame)

    def _internal_message(self, src: int, srvid: int, data: bytes) -> None:
        now = self.now
        try:
            if srvid == internal.HEARTBEAT:
                self._heartbeat_message(src, internal.unpack_heartbeat(data), now)
            elif srvid == internal.NODE_DEAD:
                dead, reporter = internal.unpack_node_dead(data)
                if dead == self.my_pnn:
                    log.warning("Node %u declared this node dead; our connections will be re-made",
                                reporter)
                elif self.transport is not None and self.transport.is_connected(dead):
                    if self.detector.dead_report_credible(dead, now):
                        notice("dead count reached for node %u (reported dead by node %u)", dead, reporter)
                        self.transport.drop_peer(dead, f"reported dead by node {reporter}")
                    else:
                        log.warning("Node %u reports node %u dead, but we heard from it within the "
                                    "dead timeout: keeping it", reporter, dead)
            elif srvid == internal.RECOVERY_WANTED:
                if self.election.is_leader:
                    self._schedule_leader_work(recovery=True, reason=f"node {src} is in recovery mode")
            elif srvid == internal.NODE_STATE:
                state = internal.NodeState.unpack(data)
                if state.pnn != src:
                    log.warning("Node %u sent the state of node %u: ignored", src, state.pnn)
                    return
                self.peer_capabilities[src] = state.capabilities
                self._apply_peer_flags(src, state.flags, state.runstate)
        except ProtocolError as exc:
            log.warning("Malformed internal message 0x%016x from node %u: %s", srvid, src, exc)
        self._reschedule()

    def _heartbeat_message(self, src: int, kind: int, now: float) -> None:
        if kind == internal.HEARTBEAT_BEAT:
            self.detector.fast_heartbeat(src, now)
        else:
            self.detector.watch_request(src, kind == internal.HEARTBEAT_WATCH, now)

    def _daemon_message(self, src: int, srvid: int, data: bytes) -> None:
        """The messages ctdb-recoverd would handle."""
        now = self.now
        if srvid == Srvid.LEADER:
            if src == self.my_pnn:
                return
            pnn = unpack_message(srvid, data)
            self._handle_election(self.election.leader_broadcast(src, pnn, now))
            self._reschedule()
        elif srvid == Srvid.ELECTION:
            if src == self.my_pnn:
                return
            msg: WireElectionMessage = unpack_message(srvid, data)
            core = ElectionMessage(msg.num_connected, msg.priority_time.to_seconds(), msg.pnn,
                                   msg.node_flags)
            self._handle_election(self.election.election_message(core, now))
            self._reschedule()
        elif srvid == Srvid.TAKEOVER_RUN:
            request = unpack_message(srvid, data)
            if self.election.is_leader:
                self._schedule_leader_work(takeover=True, reason=f"requested by node {src}",
                                           reply_to=(request.pnn, request.srvid))
            elif self.election.leader == UNKNOWN_PNN:
                # An election is under way: whoever wins answers it (CTDB drops it and the
                # tool retries after its timeout).
                self._orphan_requests.append((request.pnn, request.srvid))
        elif srvid == Srvid.REBALANCE_NODE:
            pnn = unpack_message(srvid, data)
            if self.election.is_leader:
                self._force_rebalance.add(pnn)
                self._schedule_leader_work(takeover=True, reason=f"rebalance onto node {pnn}")
        elif srvid == Srvid.DISABLE_IP_CHECK:
            timeout = unpack_message(srvid, data)
            self._takeover_disabled_until = now + timeout
            notice("Takeover runs disabled for %u seconds (IP check disabled)", timeout)
        elif srvid in (Srvid.DISABLE_TAKEOVER_RUNS, Srvid.DISABLE_RECOVERIES):
            msg = unpack_message(srvid, data)
            until = now + msg.timeout if msg.timeout else 0.0
            what = "Takeover runs" if srvid == Srvid.DISABLE_TAKEOVER_RUNS else "Recoveries"
            if srvid == Srvid.DISABLE_TAKEOVER_RUNS:
                self._takeover_disabled_until = until
            else:
                self._recovery_disabled_until = until
            notice("%s %s", what, f"disabled for {msg.timeout} seconds" if msg.timeout else "re-enabled")
            if not msg.timeout and self._leader_wakeup is not None:
                self._leader_wakeup.set()
            if msg.srvid:
                self.send_message(msg.pnn, msg.srvid, pack_i32_reply(self.my_pnn))
        elif srvid == Srvid.PUSH_NODE_FLAGS:
            change = unpack_message(srvid, data)
            if change.pnn == src and src != self.my_pnn:
                self._apply_peer_flags(src, change.new_flags, None)

    def _apply_peer_flags(self, pnn: int, flags: int, runstate: int | None) -> None:
        change = self.nodemap.apply_pushed_state(pnn, flags, runstate)
        if change is None:
            return
        notice("Node %u has changed flags - 0x%x -> 0x%x", pnn, change.old_flags, change.new_flags)
        if self.election.is_leader:
            relevant = (change.old_flags ^ change.new_flags) & (NodeFlag.INACTIVE | NodeFlag.DISABLED)
            if relevant:
                self._schedule_leader_work(recovery=bool((change.old_flags ^ change.new_flags)
                                                         & NodeFlag.INACTIVE),
                                           takeover=True, reason=str(change))

    def _send_node_state(self, dest: int = BROADCAST_CONNECTED) -> None:
        me = self.nodemap.me
        state = internal.NodeState(self.my_pnn, me.flags, me.runstate, self.capabilities)
        if dest == BROADCAST_CONNECTED:
            self._broadcast_message(internal.NODE_STATE, state.pack(), include_self=False)
        else:
            self.send_message(dest, internal.NODE_STATE, state.pack())

    def own_flags_changed(self, change: FlagChange | None, why: str) -> None:
        """This node's flags changed: log, tell everybody, step down or drop IPs as CTDB does."""
        if change is None:
            return
        notice("This node's flags changed (%s): %s", why, change)
        self._send_node_state()
        became_inactive = bool(change.new_flags & NodeFlag.INACTIVE) and not change.old_flags & NodeFlag.INACTIVE
        now_active = not change.new_flags & NodeFlag.INACTIVE and bool(change.old_flags & NodeFlag.INACTIVE)
        if became_inactive:
            self.recmode = RecMode.ACTIVE
            self.vnnmap = VnnMap(INVALID_GENERATION, self.vnnmap.map)
            self.spawn(self._release_all_ips("node became inactive"), "release-all")
        if self.election is not None:
            self._handle_election(self.election.set_can_lead(
                self.can_lead(), self.now, priority_time=time.time() if became_inactive else None))
            if self.election.is_leader:
                self._schedule_leader_work(recovery=became_inactive or now_active, takeover=True, reason=why)
            self._reschedule()
        if self._monitor_wakeup is not None:
            self._monitor_wakeup.set()

    # ------------------------------------------------------------------------------------------
    # election
    # ------------------------------------------------------------------------------------------
    def _handle_election(self, actions: Iterable) -> None:
        if self._shutting_down:
            return
        for action in actions:
            if isinstance(action, BroadcastLeader):
                self._broadcast_leader(action.pnn)
            elif isinstance(action, SendLeader):
                self.send_message(action.to, Srvid.LEADER, pack_message(Srvid.LEADER, action.pnn))
            elif isinstance(action, BroadcastElection):
                m = action.message
                wire = WireElectionMessage(m.num_connected, Timeval.from_seconds(m.priority_time),
                                           m.pnn, m.node_flags)
                self._broadcast_message(Srvid.ELECTION, pack_message(Srvid.ELECTION, wire),
                                        BROADCAST_ALL, include_self=False)
            elif isinstance(action, TakeLock):
                self.spawn(self._take_lock(), "take-cluster-lock")
            elif isinstance(action, ReleaseLock):
                if self.cluster_lock is not None:
                    self.cluster_lock.release_soon()
            elif isinstance(action, ElectionStarted):
                log.error("Start election (%s)", action.reason)
            elif isinstance(action, LeaderChanged):
                self._leader_changed(action)

    def _broadcast_leader(self, leader: int) -> None:
        """The 1 Hz leader broadcast, to every connected node and local clients; the frames
        are built once per destination and reused."""
        data = pack_message(Srvid.LEADER, leader)
        for pnn in self.nodemap.connected_pnns():
            if pnn == self.my_pnn:
                self._on_message(self.my_pnn, Srvid.LEADER, data)
                continue
            key = (pnn, leader)
            frame = self._leader_frames.get(key)
            if frame is None:
                frame = encode_packet(ReqMessage(Srvid.LEADER, data), destnode=pnn,
                                      srcnode=self.my_pnn, reqid=0)
                self._leader_frames[key] = frame
            self.transport.send(pnn, frame)

    async def _take_lock(self) -> None:
        assert self.cluster_lock is not None
        notice("Attempting to take cluster lock (%s)", self.options.config.cluster_lock.setting)
        started = self.now
        status = await self.cluster_lock.take()
        took = (self.now - started) * 1000
        if status is LockStatus.HELD:
            notice("Cluster lock taken successfully (%.0f ms)", took)
        elif status is LockStatus.CONTENTION:
            notice("Unable to take cluster lock - contention (%.0f ms)", took)
        else:
            log.error("Unable to take cluster lock - %s (%.0f ms)", status.name.lower(), took)
        self._handle_election(self.election.lock_result(status, self.now))
        self._reschedule()

    def _lock_lost(self, reason: str) -> None:
        log.error("Cluster lock lost: %s", reason)
        self._handle_election(self.election.lock_lost(self.now))
        self._reschedule()

    def _leader_changed(self, change: LeaderChanged) -> None:
        if change.new == self.my_pnn:
            if self.cluster_lock is not None:
                log.warning("Took cluster lock, leader=%u", change.new)
            notice("This node (%u) is now the leader (%s)", self.my_pnn, change.reason)
            self._takeover_requests += [r for r in self._orphan_requests if r[1] != 0]
            self._orphan_requests.clear()
            self._schedule_leader_work(recovery=True, takeover=True, reason="became leader")
        elif change.new == UNKNOWN_PNN:
            notice("Leader is unknown (%s)", change.reason)
        else:
            notice("Received leader broadcast, leader=%u (%s)", change.new, change.reason)
        if change.new != UNKNOWN_PNN and change.new != self.my_pnn:
            self._orphan_requests.clear()
        if change.old == self.my_pnn and change.new != self.my_pnn:
            self._takeover_requests.clear()
            self._force_rebalance.clear()
        # CTDB's RecoveryDropAllIPs: a node cut off from any leader (it cannot take the cluster
        # lock, nobody broadcasts to it) must not keep serving public IPs the rest of the
        # cluster has moved elsewhere.
        if self._leaderless_timer is not None:
            self._leaderless_timer.cancel()
            self._leaderless_timer = None
        if change.new == UNKNOWN_PNN and self.loop is not None:
            self._leaderless_timer = self.loop.call_later(
                max(1, self.tunables.get("RecoveryDropAllIPs")), self._leaderless_too_long)

    def _leaderless_too_long(self) -> None:
        self._leaderless_timer = None
        if self.election.leader == UNKNOWN_PNN and self.public.held():
            log.error("No leader for %u seconds (RecoveryDropAllIPs): dropping all public IPs",
                      self.tunables.get("RecoveryDropAllIPs"))
            self.spawn(self._release_all_ips("no leader"), "release-all-leaderless")

    # ------------------------------------------------------------------------------------------
    # runstate, monitoring, bans
    # ------------------------------------------------------------------------------------------
    def recovery_finished(self) -> None:
        """SET_RECMODE NORMAL arrived: the first one moves us on from FIRST_RECOVERY."""
        self.last_recovery_finished = time.time()
        if self.runstate == Runstate.FIRST_RECOVERY and not self._startup_done:
            self._startup_done = True
            self.nodemap.set_runstate(Runstate.STARTUP)
            notice("Set runstate to STARTUP (4)")
            self.spawn(self._startup(), "startup")

    async def _startup(self) -> None:
        while not self._shutting_down:
            notice('Running the "startup" event.')
            result = await self.run_event("startup", timeout=self.tunables.get("EventScriptTimeout"))
            if result.ok:
                break
            log.error("startup event failed")
            await asyncio.sleep(STARTUP_RETRY)
        notice("startup event OK - enabling monitoring")
        self.nodemap.set_runstate(Runstate.RUNNING)
        notice("Set runstate to RUNNING (5)")
        self._send_node_state()
        for pnn in self._connected_peers():
            self.rpc.send_noreply(pnn, Control.STARTUP)
        self.spawn(self._monitor_loop(), "monitor")

    async def _monitor_loop(self) -> None:
        assert self._monitor_wakeup is not None
        interval = float(self.tunables.get("MonitorInterval"))
        while not self._shutting_down:
            result = await self.run_event("monitor", timeout=self.tunables.get("EventScriptTimeout"))
            changed = None
            if result.cancelled:
                # Another event ran; try again shortly rather than a whole interval later.
                log.error("Monitoring event was cancelled")
                await asyncio.sleep(MONITOR_RETRY)
                continue
            elif result.timed_out:
                self._monitor_timeouts += 1
                limit = self.tunables.get("MonitorTimeoutCount")
                log.error("monitor event timed out (%u of %u)", self._monitor_timeouts, limit)
                if self._monitor_timeouts >= limit:
                    changed = self.nodemap.set_healthy(False)
            else:
                self._monitor_timeouts = 0
                if result.ok:
                    changed = self.nodemap.set_healthy(True)
                    if changed is not None:
                        notice("monitor event OK - node re-enabled")
                        notice("Node became HEALTHY")
                else:
                    changed = self.nodemap.set_healthy(False)
                    if changed is not None:
                        failed = result.failed_script
                        notice("monitor event failed - disabling node")
                        notice("Node became UNHEALTHY (%s)", failed.output.strip()[:200] if failed else "")
            if changed is not None:
                self.own_flags_changed(changed, "monitor event")
                interval = min(5.0, float(self.tunables.get("MonitorInterval")))
            else:
                interval = min(interval * 2, float(self.tunables.get("MonitorInterval")))
            self._monitor_wakeup.clear()
            try:
                await asyncio.wait_for(self._monitor_wakeup.wait(), max(0.1, interval))
            except asyncio.TimeoutError:
                pass

    def set_ban(self, seconds: int) -> FlagChange | None:
        change = self.nodemap.set_ban(seconds, self.now)
        if self._ban_timer is not None:
            self._ban_timer.cancel()
            self._ban_timer = None
        if seconds:
            notice("Banning this node for %u seconds", seconds)
            self._ban_timer = self.loop.call_later(seconds, self._ban_expired)
        else:
            notice("Unbanning this node")
        self.own_flags_changed(change, "ban" if seconds else "unban")
        return change

    def _ban_expired(self) -> None:
        self._ban_timer = None
        change = self.nodemap.expire_ban(self.now)
        if change is not None:
            notice("Banning timed out")
            self.own_flags_changed(change, "ban expired")

    def _ban_self(self, why: str) -> None:
        if not self.tunables.get("EnableBans"):
            log.error("%s; bans are disabled (EnableBans=0)", why)
            return
        period = self.tunables.get("RecoveryBanPeriod")
        log.error("%s: banning this node for %u seconds", why, period)
        self.set_ban(period)

    # ------------------------------------------------------------------------------------------
    # controls
    # ------------------------------------------------------------------------------------------
    def dispatch_control(self, req: Request, reply: Callable[[Result], None]) -> None:
        handler = self._handlers.get(req.opcode)
        if handler is None:
            if req.opcode not in self._unsupported_seen:      # once per opcode: no log flood
                self._unsupported_seen.add(req.opcode)
                log.warning("Unsupported control %s from %s; answered with an error",
                            _control_name(req.opcode), _origin(req))
            reply(Result(-1, errmsg=_unsupported(req.opcode)))
            return
        try:
            outcome = handler(self, req)
        except ProtocolError as exc:
            log.warning("Malformed control %s from %s: %s", _control_name(req.opcode), _origin(req), exc)
            reply(Result(-1, errmsg=f"malformed request: {exc}"))
            return
        except Exception as exc:
            log.exception("Control %s from %s failed", _control_name(req.opcode), _origin(req))
            reply(Result(-1, errmsg=f"internal error: {exc}"))
            return
        if isinstance(outcome, Result):
            reply(outcome)
            return

        async def finish() -> None:
            try:
                res = await outcome
            except ProtocolError as exc:
                log.warning("Malformed control %s from %s: %s", _control_name(req.opcode),
                            _origin(req), exc)
                res = Result(-1, errmsg=f"malformed request: {exc}")
            except Exception as exc:
                log.exception("Control %s from %s failed", _control_name(req.opcode), _origin(req))
                res = Result(-1, errmsg=f"internal error: {exc}")
            reply(res)

        self.spawn(finish(), f"control-{req.opcode}")

    def _on_peer_control(self, pnn: int, header, body: ReqControl) -> None:
        req = Request(body.opcode, body.flags, body.srvid, body.client_id, body.data, pnn)
        noreply = bool(body.flags & ControlFlag.NOREPLY)

        def reply(res: Result) -> None:
            if not noreply:
                frame = encode_packet(ReplyControl(res.status, res.data if res.status == 0 else b"",
                                                   res.errmsg),
                                      destnode=pnn, srcnode=self.my_pnn, reqid=header.reqid)
                self.transport.send(pnn, frame)
            if res.after is not None:
                res.after()

        self.dispatch_control(req, reply)

    # ------------------------------------------------------------------------------------------
    # local clients
    # ------------------------------------------------------------------------------------------
    def _on_client_frame(self, client: Client, frame: bytes) -> None:
        try:
            packet = decode_packet(frame)
        except ProtocolError as exc:
            log.error("Malformed packet from client %u (pid %u): %s; disconnecting it",
                      client.client_id, client.pid, exc)
            client.close()
            return
        header, body = packet.header, packet.body
        op = header.operation
        if op == Operation.REQ_CONTROL:
            self._client_control(client, header, body)
        elif op == Operation.REQ_MESSAGE:
            dest = self.my_pnn if header.destnode == CURRENT_NODE else header.destnode
            if dest != self.my_pnn and dest not in BROADCASTS and self.nodemap.get(dest) is None:
                log.warning("Client %u (pid %u) sent a message to unknown node %u", client.client_id,
                            client.pid, dest)
                return
            self.send_message(dest, body.srvid, body.data)
        elif op == Operation.REQ_CALL:
            frame = encode_packet(ReplyError(-1, b"clustered databases are not supported by pyctdbd yet\0"),
                                  destnode=header.srcnode, srcnode=self.my_pnn, reqid=header.reqid)
            client.send(frame)
        else:
            log.warning("Client %u (pid %u) sent unsupported operation %u; ignored",
                        client.client_id, client.pid, op)

    def _client_control(self, client: Client, header, body: ReqControl) -> None:
        dest = self.my_pnn if header.destnode == CURRENT_NODE else header.destnode
        noreply = bool(body.flags & ControlFlag.NOREPLY)

        def answer(res: Result, srcnode: int = self.my_pnn) -> None:
            if not noreply:
                client.send(encode_packet(
                    ReplyControl(res.status, res.data if res.status == 0 else b"", res.errmsg),
                    destnode=header.srcnode, srcnode=srcnode, reqid=header.reqid))
            if res.after is not None:
                res.after()

        if dest == self.my_pnn:
            req = Request(body.opcode, body.flags, body.srvid, client.client_id, body.data,
                          self.my_pnn, client)
            self.dispatch_control(req, answer)
            return
        if dest in BROADCASTS:
            if not noreply:
                answer(Result(-1, errmsg="Attempt to broadcast control without NOREPLY"))
                return
            for pnn in self._broadcast_targets(dest):
                if pnn == self.my_pnn:
                    self.dispatch_control(Request(body.opcode, body.flags, body.srvid, client.client_id,
                                                  body.data, self.my_pnn, client), answer)
                else:
                    self.rpc.send_noreply(pnn, body.opcode, body.data, srvid=body.srvid, flags=body.flags)
            return
        node = self.nodemap.get(dest)
        if node is None or node.deleted:
            answer(Result(-1, errmsg=f"node {dest} does not exist"))
            return
        if not self.transport.is_connected(dest):
            answer(Result(-1, errmsg="ctdb_control to disconnected node"))
            return
        if noreply:
            self.rpc.send_noreply(dest, body.opcode, body.data, srvid=body.srvid, flags=body.flags)
            return

        async def forward() -> None:
            try:
                reply = await self.rpc.request(dest, body.opcode, body.data, flags=body.flags,
                                               srvid=body.srvid, client_id=client.client_id,
                                               timeout=float(self.tunables.get("ControlTimeout")))
                answer(Result(reply.status, reply.data, reply.errmsg), dest)
            except ControlError as exc:
                answer(Result(-1, errmsg=str(exc)))

        self.spawn(forward(), f"forward-{body.opcode}-to-{dest}")

    def _on_client_gone(self, client: Client) -> None:
        removed = self.tickles.drop_client(client.client_id)
        for conn in removed:
            vnn = self.public.find(conn.dst_ip)
            if vnn is not None and vnn.iface is not None:
                self.tickle_changed(conn, False)


def _control_name(opcode: int) -> str:
    try:
        return f"{Control(opcode).name} ({opcode})"
    except ValueError:
        return str(opcode)


def _unsupported(opcode: int) -> str:
    return f"control {_control_name(opcode)} is not supported by pyctdbd"


def _origin(req: Request) -> str:
    if req.client is not None:
        return f"client {req.client.client_id} (pid {req.client.pid})"
    return f"node {req.src}"


def flags_for_log(flags: int) -> str:
    return flags_text(flags)
