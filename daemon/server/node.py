"""The shell around `core.node.NodeCore`: every membership, election and own-flag event goes in
through `step`, and the actions that come out become packets (heartbeats, keepalives, leader
and election messages, death reports, node state), cluster-lock attempts, log lines, and calls
on the daemon's other services through the small `NodeEvents` port.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from ..core.election import (
    BroadcastElection, BroadcastLeader, LeaderChanged, LockStatus, ReleaseLock, SendLeader, TakeLock,
)
from ..core.membership import ProbeKernel, SendHeartbeat, SendKeepalive, SendWatch
from ..config import CtdbConf, Tunables
from ..core.election import ElectionSettings
from ..core.membership import DetectorSettings, grid_point_after
from ..core.node import (
    Admin, DropAllIPs, DropPeer, EnterRecoveryMode, Event, FailControls, Heartbeats, KernelAnswers,
    LeaderElsewhere, LeaderWork, LockAnswer, LockLost, Log, NewSettings, NodeCore, NodeSettings,
    OwnFlagsChanged, PeerJoined, ProbePeer, ReportDeath, RunstateChanged, SendState, SetBan,
    SetRole, Shutdown, TellDropped, Tick,
)
from ..core.nodes import NodeMap
from ..log import log, notice
from ..failover.kernel_probe import KernelProbe
from ..net.rpc import ControlError
from ..protocol import (
    BROADCAST_ALL, BROADCAST_CONNECTED, KEEPALIVE_VERSION_4_17, UNKNOWN_PNN, Control, ProtocolError,
    ReqKeepalive, ReqMessage, Srvid, encode_packet, pack_message, unpack_reply,
)
from ..protocol import internal
from .cluster_lock import ClusterLock
from .heartbeat_pacer import PacedHeartbeats
from .loop_clock import LoopClock
from .messenger import Messenger
from .wire import election_to_wire

#: s a peer has to say which leader it follows (a control it answers at once).
PEER_LEADER_TIMEOUT = 0.5

DRAIN_EVERY = 2          # read the heartbeat socket every this many timer runs
PROBE_ANSWERS_FOR = 1.0  # s after an echo request during which its socket is read every tick


class NodeEvents(Protocol):
    """What the node core's decisions ask of the rest of the daemon."""

    def leader_changed(self, old: int, new: int) -> None: ...
    def leader_work(self, recovery: bool, takeover: bool, reason: str) -> None: ...
    def enter_recovery_mode(self) -> None: ...
    def drop_all_ips(self, reason: str) -> None: ...
    def peer_joined(self, pnn: int) -> None: ...
    def own_flags_changed(self, flags: int) -> None: ...
    def runstate_changed(self, runstate: int) -> None: ...
    def peer_gone(self, pnn: int) -> None: ...
    def request_shutdown(self, reason: str, code: int = 0) -> None: ...


class NodeService:
    def __init__(self, core: NodeCore, messenger: Messenger, events: NodeEvents, *,
                 lock: ClusterLock | None, lock_setting: str, start_wall: float,
                 clock: Callable[[], float], spawn: Callable, reschedule: Callable[[], None],
                 tick_now: Callable[[], None] | None = None) -> None:
        self.core = core
        self.messenger = messenger
        self.events = events
        self.lock = lock
        self.lock_setting = lock_setting
        self.start_wall = start_wall
        self.clock = clock
        self.spawn = spawn
        self.reschedule = reschedule
        self.stopped = False
        self._ticks = 0
        self._loop_clock = LoopClock()       # read every tick, on the loop's thread
        self._heartbeat_frames: dict[int, bytes] = {}
        self._kernel_probe: KernelProbe | None = None
        self._probe_answers_until = 0.0
        self._leader_frames: dict[tuple[int, int], bytes] = {}
        # tick_now runs the daemon's timer at once: the pacer's alarm
        self.paced = PacedHeartbeats(core, lambda: messenger.transport, self._heartbeat_frame,
                                     clock=clock, tick_now=tick_now)

    # -- queries ---------------------------------------------------------------------------------
    @property
    def my_pnn(self) -> int:
        return self.core.my_pnn

    @property
    def nodemap(self) -> NodeMap:
        return self.core.nodemap

    @property
    def capabilities(self) -> int:
        return self.core.capabilities

    @property
    def leader(self) -> int:
        return self.core.leader

    def leader_followed(self) -> int:
        """PYCTDB_LEADER's answer (core/node.py, NodeCore.leader_followed)."""
        return self.core.leader_followed(self.clock())

    @property
    def is_leader(self) -> bool:
        return self.core.is_leader

    @property
    def runstate(self) -> int:
        return self.core.nodemap.me.runstate

    def on_tick_grid(self, when: float) -> float:
        """The first heartbeat tick at or after `when` (the detector's grid, to the bit): a
        service timer set there fires in the same loop turn as the tick, so periodic work
        costs the daemon no wake-up of its own."""
        detector = self.core.settings.detector
        period = detector.look_interval if detector.paced else detector.heartbeat_interval
        return grid_point_after(when, detector.wall_offset, period)

    # -- what controls ask -----------------------------------------------------------------------
    def admin(self, command: str) -> None:
        """`ctdb disable|enable|stop|continue`."""
        self.step(Admin(command))

    def ban(self, seconds: int) -> None:
        self.step(SetBan(seconds))

    def set_role(self, capability: int, on: bool) -> None:
        self.step(SetRole(capability, on))

    def settings_changed(self, settings: NodeSettings) -> None:
        """Timing tunables changed: the detector and the election use them from now on (with
        the pacer thread, or without, as the new heartbeat interval calls for)."""
        if not self.stopped:
            self.step(NewSettings(self.paced.settings_for(settings)))

    # -- inputs ----------------------------------------------------------------------------------
    def step(self, event: Event) -> None:
        if self.stopped:
            return
        now = self.clock()
        # Paced, the core hears the heartbeats read since the last look before anything that
        # may judge a peer's silence (a death report above all).
        self.paced.feed(now)
        self.execute(self.core.step(event, now))
        self.paced.sync()
        self.reschedule()

    def note_traffic(self, pnn: int, now: float) -> None:
        """Any packet from a peer: the hot path, straight to the detector."""
        self.core.detector.traffic(pnn, now)

    def tick(self, now: float, alarm: bool = False) -> None:
        """The timer fired. Queued heartbeats carry their arrival time, so they need reading
        only every few ticks, and always before a peer could be declared dead."""
        self._ticks += 1
        transport = self.messenger.transport
        if self.paced.active:
            self.execute(self.paced.look(now))
        elif transport is not None and transport.has_fast_channel and (
                self._ticks % DRAIN_EVERY == 0 or self.core.wants_heartbeats(now)):
            arrivals = transport.drain_fast(now - time.time())
            if arrivals:
                self.core.step(Heartbeats(tuple(arrivals)), now)
        if self._kernel_probe is not None and now < self._probe_answers_until:
            answers = self._kernel_probe.drain(now - time.time())
            if answers:
                self.core.step(KernelAnswers(tuple(answers)), now)
        cpu, waited = self._loop_clock.read()
        self.execute(self.core.step(Tick(cpu, waited, alarm), now))
        self.paced.sync()

    # -- actions ---------------------------------------------------------------------------------
    def execute(self, actions: Iterable) -> None:
        for action in actions:
            if self.stopped:
                return
            handler = self._ACTIONS.get(type(action))
            if handler is not None:
                handler(self, action)

    def _log(self, action: Log) -> None:
        log.log(action.level, "%s", action.text)

    def _heartbeat_frame(self, pnn: int) -> bytes:
        frame = self._heartbeat_frames.get(pnn)
        if frame is None:
            frame = encode_packet(ReqKeepalive(KEEPALIVE_VERSION_4_17, 0), destnode=pnn,
                                  srcnode=self.core.my_pnn, reqid=0)
            self._heartbeat_frames[pnn] = frame
        return frame

    def _send_heartbeat(self, action: SendHeartbeat) -> None:
        transport = self.messenger.transport
        if transport is not None and transport.has_fast_channel:
            transport.send_fast(action.pnn, self._heartbeat_frame(action.pnn))
        else:
            self.messenger.send_message(action.pnn, internal.HEARTBEAT,
                                        internal.pack_heartbeat(internal.HEARTBEAT_BEAT))

    def _probe_kernel(self, action: ProbeKernel) -> None:
        """An echo request to a silent peer's host (failover/kernel_probe.py), read on later ticks."""
        transport = self.messenger.transport
        if transport is None:
            return
        if self._kernel_probe is None:
            self._kernel_probe = KernelProbe(transport.addresses, transport.pnn_at, log.warning)
        if self._kernel_probe.send(action.pnn):
            self._probe_answers_until = self.clock() + PROBE_ANSWERS_FOR

    def _send_watch(self, action: SendWatch) -> None:
        kind = internal.HEARTBEAT_WATCH if action.watch else internal.HEARTBEAT_UNWATCH
        self.messenger.send_message(action.pnn, internal.HEARTBEAT, internal.pack_heartbeat(kind))

    def _send_keepalive(self, action: SendKeepalive) -> None:
        uptime = int(time.time() - self.start_wall)
        self.messenger.send_frame(action.pnn, encode_packet(
            ReqKeepalive(KEEPALIVE_VERSION_4_17, uptime), destnode=action.pnn,
            srcnode=self.core.my_pnn, reqid=0))

    def _drop_peer(self, action: DropPeer) -> None:
        if self.messenger.transport is not None:
            self.messenger.transport.drop_peer(action.pnn, action.reason)

    def _report_death(self, action: ReportDeath) -> None:
        self.messenger.broadcast(internal.NODE_DEAD, internal.NodeDead(action.dead, self.core.my_pnn).pack(),
                                 include_self=False)

    def _tell_dropped(self, action: TellDropped) -> None:
        self.messenger.send_message(action.pnn, internal.NODE_DROPPED,
                                    internal.NodeDead(action.pnn, action.leader).pack())

    def _probe_peer(self, action: ProbePeer) -> None:
        """GET_PNN, which every CTDB node answers at once: the answer (any packet from the
        peer, in fact) is the proof of life the node core waits for."""
        async def probe() -> None:
            try:
                await self.messenger.control(action.pnn, Control.GET_PNN, timeout=5.0)
            except (ControlError, asyncio.TimeoutError):
                pass          # silence is the answer the core is looking for
        self.spawn(probe(), f"probe-node-{action.pnn}")

    def _send_state(self, action: SendState) -> None:
        me = self.core.nodemap.me
        data = internal.NodeState(self.core.my_pnn, me.flags, me.runstate, self.core.capabilities).pack()
        if action.dest == BROADCAST_CONNECTED:
            self.messenger.broadcast(internal.NODE_STATE, data, include_self=False)
        else:
            self.messenger.send_message(action.dest, internal.NODE_STATE, data)

    def _fail_controls(self, action: FailControls) -> None:
        self.messenger.rpc.node_down(action.pnn, action.reason)
        if action.gone:
            self.events.peer_gone(action.pnn)

    def _broadcast_leader(self, action: BroadcastLeader) -> None:
        """The 1 Hz leader broadcast, to every connected node and local clients; the frames
        are built once per destination and reused."""
        data = pack_message(Srvid.LEADER, action.pnn)
        for pnn in self.core.nodemap.connected_pnns():
            if pnn == self.core.my_pnn:
                self.messenger.route(pnn, Srvid.LEADER, data)
                continue
            key = (pnn, action.pnn)
            frame = self._leader_frames.get(key)
            if frame is None:
                frame = encode_packet(ReqMessage(Srvid.LEADER, data), destnode=pnn,
                                      srcnode=self.core.my_pnn, reqid=0)
                self._leader_frames[key] = frame
            self.messenger.send_frame(pnn, frame)

    def _send_leader(self, action: SendLeader) -> None:
        self.messenger.send_message(action.to, Srvid.LEADER, pack_message(Srvid.LEADER, action.pnn))

    def _broadcast_election(self, action: BroadcastElection) -> None:
        wire = election_to_wire(action.message)
        self.messenger.broadcast(Srvid.ELECTION, pack_message(Srvid.ELECTION, wire), BROADCAST_ALL,
                                 include_self=False)

    def _take_lock(self, action: TakeLock) -> None:
        self.spawn(self._lock_attempt(), "take-cluster-lock")

    def _release_lock(self, action: ReleaseLock) -> None:
        if self.lock is not None:
            self.lock.release_soon()

    def _leader_changed(self, action: LeaderChanged) -> None:
        self.events.leader_changed(action.old, action.new)

    def _leader_work(self, action: LeaderWork) -> None:
        self.events.leader_work(action.recovery, action.takeover, action.reason)

    def _enter_recovery_mode(self, action: EnterRecoveryMode) -> None:
        self.events.enter_recovery_mode()

    def _drop_all_ips(self, action: DropAllIPs) -> None:
        self.events.drop_all_ips(action.reason)

    def _peer_joined(self, action: PeerJoined) -> None:
        self.events.peer_joined(action.pnn)

    def _own_flags_changed(self, action: OwnFlagsChanged) -> None:
        self.events.own_flags_changed(action.change.new_flags)

    def _runstate_changed(self, action: RunstateChanged) -> None:
        self.events.runstate_changed(action.runstate)

    def _shutdown(self, action: Shutdown) -> None:
        self.events.request_shutdown(action.reason)

    _ACTIONS: dict[type, Callable] = {
        Log: _log, SendHeartbeat: _send_heartbeat, ProbeKernel: _probe_kernel, SendWatch: _send_watch,
        SendKeepalive: _send_keepalive, DropPeer: _drop_peer, ReportDeath: _report_death,
        ProbePeer: _probe_peer, TellDropped: _tell_dropped,
        SendState: _send_state, FailControls: _fail_controls, BroadcastLeader: _broadcast_leader,
        SendLeader: _send_leader, BroadcastElection: _broadcast_election, TakeLock: _take_lock,
        ReleaseLock: _release_lock, LeaderChanged: _leader_changed, LeaderWork: _leader_work,
        EnterRecoveryMode: _enter_recovery_mode, DropAllIPs: _drop_all_ips,
        PeerJoined: _peer_joined, OwnFlagsChanged: _own_flags_changed, Shutdown: _shutdown,
        RunstateChanged: _runstate_changed,
    }

    # -- the cluster lock ------------------------------------------------------------------------
    async def _lock_attempt(self) -> None:
        assert self.lock is not None
        notice("Attempting to take cluster lock (%s)", self.lock_setting)
        started = self.clock()
        status = await self.lock.take()
        took = (self.clock() - started) * 1000
        if status is LockStatus.HELD:
            notice("Cluster lock taken successfully (%.0f ms)", took)
        elif status is LockStatus.CONTENTION:
            notice("Unable to take cluster lock - contention (%.0f ms)", took)
            if self.core.leader == UNKNOWN_PNN:
                self.spawn(self._ask_peers_for_leader(), "ask-peers-for-leader")
        else:
            log.error("Unable to take cluster lock - %s (%.0f ms)", status.name.lower(), took)
        self.step(LockAnswer(status))

    async def _ask_peers_for_leader(self) -> None:
        """Someone holds the lock while this node has no leader: do the peers it reaches follow
        a leader it cannot reach? (core/node.py, LeaderElsewhere). A peer of an older build
        answers the control as unknown: no answer, no conclusion."""
        peers = self.messenger.connected_peers()
        if not peers:
            return
        replies = await self.messenger.controls(peers, Control.PYCTDB_LEADER,
                                                timeout=PEER_LEADER_TIMEOUT)
        for pnn in peers:
            reply = replies[pnn]
            if isinstance(reply, Exception):          # a failed control is a ControlError
                continue
            try:
                leader = unpack_reply(Control.PYCTDB_LEADER, reply.data)
            except ProtocolError:
                continue
            if leader != UNKNOWN_PNN:
                self.step(LeaderElsewhere(leader, pnn))
                return

    def lock_lost(self, reason: str) -> None:
        self.step(LockLost(reason))

    async def close(self) -> None:
        """Shutdown: stop the pacer, close the echo sockets, release the lock and stop the
        spare helper."""
        self.paced.stop()
        if self._kernel_probe is not None:
            self._kernel_probe.close()
        if self.lock is not None:
            await self.lock.close()



def node_settings(tunables: Tunables, conf: CtdbConf, *, lock_enabled: bool, wall_offset: float) -> NodeSettings:
    """The node core's timing from the tunables and ctdb.conf."""
    interval = tunables.get("HeartbeatIntervalMs")
    dead = tunables.get("DeadTimeoutMs")
    if interval and dead and dead < 2 * interval:
        log.warning("DeadTimeoutMs=%u is less than twice HeartbeatIntervalMs=%u: using %u ms",
                    dead, interval, 3 * interval)
        dead = 3 * interval
    heartbeat = (interval or 1000) / 1000.0
    detector = DetectorSettings(
        heartbeat_interval=heartbeat,
        dead_timeout=dead / 1000.0 if interval else 0.0,
        keepalive_interval=max(1, tunables.get("KeepaliveInterval")),
        keepalive_limit=max(1, tunables.get("KeepaliveLimit")),
        wall_offset=wall_offset)
    election_ms = tunables.get("ElectionTimeoutMs") or tunables.get("ElectionTimeout") * 1000
    leader_timeout = float(max(1, conf.leader_timeout))
    lock = conf.cluster_lock_spec() if lock_enabled else None
    election = ElectionSettings(
        lock_enabled=lock_enabled,
        leader_timeout=leader_timeout,
        election_timeout=election_ms / 1000.0,
        lock_retry=max(0.2, election_ms / 1000.0),
        # A `!command` helper may keep a failed attempt's trace for a while (election.py):
        # back off up to the leader timeout, ctdbd's own pace of attempts.
        lock_retry_max=leader_timeout if lock is not None and lock.is_command else None,
        startup_grace=max(0.5, 2 * heartbeat + 0.3))
    return NodeSettings(detector, election, drop_all_ips_after=float(tunables.get("RecoveryDropAllIPs")),
                        allow_mixed_versions=bool(tunables.get("AllowMixedVersions")))
