"""One node's view of the cluster as one state machine: the failure detector, the election and
the node map behind a single entry, ``NodeCore.step(event, now) -> actions``.

Everything that decides what a peer's arrival, silence or death *means* lives here, and only
here: which peers are connected, when one is dead (our own detector, or a credible report from
another node), who leads, this node's own flags (monitor health, admin changes, bans and their
expiry), what the leader must do about a change (recover, run a takeover), and when a node cut
off from every leader must drop its public IPs (CTDB's RecoveryDropAllIPs). The shell
(`server/node.py`) turns the actions into packets, timers and calls on other services; a
simulated cluster (tests/unit/simcluster.py) turns them into messages on a fake network.

Conventions:

* When the core decides a peer is dead it disconnects it itself (node map, detector, election)
  and asks the shell to tear the connections down (`DropPeer`); the transport's own "peer down"
  that follows finds the peer already disconnected and changes nothing.
* Log lines the lab and operators grep for are produced here as `Log` actions, in CTDB's
  wording, so the simulated cluster sees the same story as the daemon's log.

Sans-I/O: `now` is the daemon's monotonic clock; `wall_offset` is that clock minus wall time
(the election's priority time is a wall-clock time, as in CTDB).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..protocol.constants import (
    BROADCAST_CONNECTED, CAP_DEFAULT, CAP_LMASTER, CAP_RECMASTER, KEEPALIVE_VERSION_4_17, UNKNOWN_PNN,
    NodeFlag, Runstate,
)
from .death_reports import DeathReports, Verdict
from .election import (
    BroadcastElection, BroadcastLeader, Election, ElectionMessage, ElectionSettings,
    ElectionStarted, LeaderChanged, LockStatus, ReleaseLock, SendLeader, TakeLock, VoteIgnored,
)
from .loglimit import LogLimiter
from .quorum import Quorum
from .membership import (
    DetectorSettings, FailureDetector, LoopStalled, PeerDead, PeerStalled, ProbeKernel, SendHeartbeat,
    SendKeepalive, SendWatch,
)
from .nodes import FlagChange, NodeMap

NOTICE = 25          # CTDB's NOTICE, as the daemon's log module defines it
LOCK_STAGGER = 0.1   # s per lower PNN before a node back among the majority races for the lock

RUNSTATE_NAMES = {Runstate.INIT: "INIT", Runstate.SETUP: "SETUP",
                  Runstate.FIRST_RECOVERY: "FIRST_RECOVERY", Runstate.STARTUP: "STARTUP",
                  Runstate.RUNNING: "RUNNING", Runstate.SHUTDOWN: "SHUTDOWN"}


@dataclass(frozen=True)
class NodeSettings:
    detector: DetectorSettings
    election: ElectionSettings
    drop_all_ips_after: float = 120.0     # s without any leader (CTDB's RecoveryDropAllIPs)
    allow_mixed_versions: bool = False    # CTDB's AllowMixedVersions
    keepalive_version: int = KEEPALIVE_VERSION_4_17   # what this node sends, (major << 16) | minor


# -- events ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """The node mesh is about to start: failure detection and the election begin now."""


@dataclass(frozen=True)
class PeerConnected:
    """Both connections to `pnn` are up."""

    pnn: int


@dataclass(frozen=True)
class PeerDisconnected:
    pnn: int
    reason: str


@dataclass(frozen=True)
class Traffic:
    """Any packet from `pnn` (it is alive)."""

    pnn: int


@dataclass(frozen=True)
class Heartbeats:
    """Fast-channel heartbeats read from the socket: (pnn, arrival time) pairs."""

    arrivals: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class KernelAnswers:
    """Peers' kernels answered ProbeKernel: (pnn, arrival time) pairs."""

    arrivals: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class PeerKeepalive:
    """CTDB's REQ_KEEPALIVE from `pnn`: its software version and uptime (version None: the
    header-only form of CTDB before 4.x carried neither)."""

    pnn: int
    version: int | None
    uptime: int


@dataclass(frozen=True)
class HeartbeatMessage:
    """A HEARTBEAT message on the reliable channel: watch (1), unwatch (0) or beat (2)."""

    pnn: int
    kind: int


@dataclass(frozen=True)
class DeathReport:
    """Node `reporter` says node `dead` is dead; the message came on node `src`'s connection."""

    dead: int
    reporter: int
    src: int


@dataclass(frozen=True)
class PeerState:
    """A NODE_STATE message from `src` about node `pnn`."""

    src: int
    pnn: int
    flags: int
    runstate: int
    capabilities: int


@dataclass(frozen=True)
class PeerFlags:
    """CTDB's PUSH_NODE_FLAGS from `src` about node `pnn`."""

    src: int
    pnn: int
    flags: int


@dataclass(frozen=True)
class LeaderAnnounced:
    """A LEADER message: node `src` says `pnn` leads (UNKNOWN_PNN: it calls an election)."""

    src: int
    pnn: int


@dataclass(frozen=True)
class ElectionVote:
    src: int
    message: ElectionMessage


@dataclass(frozen=True)
class LockAnswer:
    status: LockStatus


@dataclass(frozen=True)
class LeaderDroppedMe:
    """Connected node `src` tells us that `leader` reported us (`dead`) dead: it refuted the
    report, but the leader has given our public IPs to others."""

    src: int
    dead: int
    leader: int


@dataclass(frozen=True)
class LeaderElsewhere:
    """Connected node `witness` follows `leader` (PYCTDB_LEADER), asked while this node had no
    leader and met contention on the cluster lock."""

    leader: int
    witness: int


@dataclass(frozen=True)
class LockLost:
    reason: str


@dataclass(frozen=True)
class Tick:
    """The timer fired. `cpu`, `waited`: the loop thread's seconds on a CPU and waiting for one
    so far (server/loop_clock.py), so that a stall can say whether the loop was busy in its
    own work, waiting for a CPU, or blocked in the kernel."""

    cpu: float | None = None
    waited: float | None = None
    alarm: bool = False            # run at once by the heartbeat pacer's alarm


@dataclass(frozen=True)
class SetHealth:
    """The monitor decided this node is (un)healthy."""

    healthy: bool
    why: str = "monitor event"


@dataclass(frozen=True)
class Admin:
    """`ctdb disable|enable|stop|continue` on this node."""

    command: str


@dataclass(frozen=True)
class SetBan:
    """Ban this node for `seconds` (0 lifts the ban)."""

    seconds: int


@dataclass(frozen=True)
class SetRole:
    """Leader (CAP_RECMASTER) or lmaster (CAP_LMASTER) capability on or off."""

    capability: int
    on: bool


@dataclass(frozen=True)
class SetRunstate:
    runstate: int


@dataclass(frozen=True)
class NewSettings:
    settings: NodeSettings


Event = (Start | PeerConnected | PeerDisconnected | Traffic | PeerKeepalive | Heartbeats | KernelAnswers
         | HeartbeatMessage | DeathReport
         | PeerState | PeerFlags | LeaderAnnounced | ElectionVote | LockAnswer | LockLost | Tick
         | LeaderElsewhere | LeaderDroppedMe | SetHealth | Admin | SetBan | SetRole | SetRunstate | NewSettings)


# -- actions (besides the detector's and the election's, passed through) ---------------------
@dataclass(frozen=True)
class DropPeer:
    """Tear down both connections to `pnn`; the core already counts it as disconnected."""

    pnn: int
    reason: str


@dataclass(frozen=True)
class ReportDeath:
    """Tell every connected peer that our detector found `dead` dead."""

    dead: int


@dataclass(frozen=True)
class TellDropped:
    """Tell `pnn` that its death report by `leader` was refuted here (internal.NODE_DROPPED)."""

    pnn: int
    leader: int


@dataclass(frozen=True)
class ProbePeer:
    """Send `pnn` something it answers at once (a report says it is dead; we do not watch it)."""

    pnn: int


@dataclass(frozen=True)
class SendState:
    """Send this node's NODE_STATE to `dest` (a pnn, or BROADCAST_CONNECTED)."""

    dest: int


@dataclass(frozen=True)
class FailControls:
    """Controls waiting on `pnn` will never be answered: it disconnected (`gone`), or it has
    just connected, so they were sent while it was not connected -- queued for a connection
    still being made, their replies perhaps queued on the far side for a connection that went
    (seen: a recovery's GET_DBNAME waited its whole 30 s, the cluster without public IPs)."""

    pnn: int
    gone: bool = True

    @property
    def reason(self) -> str:
        return "node is disconnected" if self.gone else "node reconnected while the control waited"


@dataclass(frozen=True)
class PeerJoined:
    """`pnn` connected: hand it what it must learn from us (our tickle lists)."""

    pnn: int


@dataclass(frozen=True)
class LeaderWork:
    """This node leads and the cluster changed: recover and/or run a takeover."""

    recovery: bool
    takeover: bool
    reason: str


@dataclass(frozen=True)
class EnterRecoveryMode:
    """This node became inactive: recovery mode ACTIVE and an invalid vnnmap generation."""


@dataclass(frozen=True)
class DropAllIPs:
    reason: str


@dataclass(frozen=True)
class OwnFlagsChanged:
    change: FlagChange


@dataclass(frozen=True)
class RunstateChanged:
    runstate: int


@dataclass(frozen=True)
class Shutdown:
    """This node must stop (a peer runs another CTDB version and has been up longer)."""

    reason: str


@dataclass(frozen=True)
class Log:
    level: int
    text: str


Action = (SendHeartbeat | SendWatch | SendKeepalive | ProbeKernel | BroadcastLeader | SendLeader
          | BroadcastElection | TakeLock | ReleaseLock | LeaderChanged | DropPeer | ReportDeath
          | ProbePeer | TellDropped | SendState | FailControls | PeerJoined | LeaderWork | EnterRecoveryMode
          | DropAllIPs | OwnFlagsChanged | RunstateChanged | Shutdown | Log)


def stall_detail(ev: Tick, last: tuple[float, float, float | None] | None, now: float) -> str:
    """What the loop did during its stall, for the log line (formatted only then: every tick
    would cost idle CPU)."""
    if ev.cpu is None or last is None or now <= last[0]:
        return ""
    waited = ("" if ev.waited is None or last[2] is None
              else f" and waited {(ev.waited - last[2]) * 1000:.0f} ms for one")
    return (f" (this daemon used {(ev.cpu - last[1]) * 1000:.0f} ms of CPU{waited} in "
            f"the last {(now - last[0]) * 1000:.0f} ms)")


def tell_dropped(dead: int, reporter: int, leader: int) -> list[Action]:
    """We refuted `reporter`'s report that `dead` is dead: if the leader made it, it moves the
    node's IPs all the same, and the node may not know (the teardown can be lost): tell it."""
    return [TellDropped(dead, reporter)] if reporter == leader else []


_ADMIN = {"disable": NodeMap.disable, "enable": NodeMap.enable, "stop": NodeMap.stop,
          "continue": NodeMap.cont}
_ADMIN_LOG = {"disable": "Disable node", "enable": "Enable node", "stop": "Stopping node",
              "continue": "Continue node"}


@dataclass
class NodeCore:
    my_pnn: int
    nodemap: NodeMap
    settings: NodeSettings
    now: float
    wall_offset: float = 0.0              # monotonic clock minus wall clock
    capabilities: int = CAP_DEFAULT
    start_wall: float = 0.0               # wall-clock start (the election's priority time)
    port: int = 4379                      # the node mesh's port, for log lines
    peer_capabilities: dict[int, int] = field(default_factory=dict)
    connected_at: dict[int, float] = field(default_factory=dict)
    detector: FailureDetector = field(init=False)
    election: Election = field(init=False)
    death_reports: DeathReports = field(init=False)
    quorum: Quorum = field(init=False)
    #: Lines that peers' messages cause (ignored votes, refuted reports, elections) are
    #: rate-limited: a hostile or broken peer must not fill the disk through our log.
    log_limit: LogLimiter = field(default_factory=LogLimiter)
    _leaderless_deadline: float | None = None
    _cut_off_from_leader: int | None = None     # the leader a peer follows and we cannot reach
    _previous_leader: int | None = None         # the leader followed before it became unknown
    _last_tick: tuple[float, float, float | None] | None = None   # (now, cpu, waited) then

    def __post_init__(self) -> None:
        self.detector = FailureDetector(self.my_pnn, self.settings.detector, self.now)
        self.quorum = Quorum(1 + len(self.nodemap.peers()))
        self.quorum.update(1)
        self.election = Election(self.my_pnn, self.settings.election, self.start_wall,
                                 can_lead=self.can_lead)
        self.election.broadcast_align = lambda when: self.detector.on_look_grid(when)
        self.death_reports = DeathReports(self.settings.detector.dead_timeout,
                                          self.settings.detector.keepalive_interval)

    # -- queries ---------------------------------------------------------------------------------
    @property
    def leader(self) -> int:
        return self.election.leader

    @property
    def is_leader(self) -> bool:
        return self.election.is_leader

    def leader_followed(self, now: float) -> int:
        """The answer to PYCTDB_LEADER. While leaderless because another node called an election,
        the leader followed before it, if we still hear it well (silent for less than half the
        dead timeout): the node that asks is typically the one that called that election after
        losing its own link to a live leader, and "unknown" from every peer would leave it
        holding its IPs until the leader wins again (soak: 1.5 s of ARP from two nodes). A
        leader that froze or died is silent at least as long here as at the asker, so it is
        not named."""
        if self.election.leader != UNKNOWN_PNN or self._previous_leader is None:
            return self.election.leader
        prev = self._previous_leader
        silence = self.detector.silence(prev, now) if self._is_connected_peer(prev) else None
        fresh = self.death_reports.confirm_timeout
        return prev if silence is not None and silence < fresh else UNKNOWN_PNN

    @property
    def can_lead(self) -> bool:
        return (bool(self.capabilities & CAP_RECMASTER) and not self.nodemap.inactive
                and not self.quorum.cut_off)

    def hosting_refusal(self) -> str | None:
        """Why this node must not host public IPs now (core/quorum.py), or None."""
        if self.quorum.cut_off:
            return (f"cut off from the majority ({len(self.connected_peers()) + 1} of "
                    f"{self.quorum.members} nodes connected)")
        return None

    def connected_peers(self) -> set[int]:
        return {p for p in self.nodemap.connected_pnns() if p != self.my_pnn}

    def capabilities_of(self, pnn: int) -> int:
        return self.capabilities if pnn == self.my_pnn else self.peer_capabilities.get(pnn, CAP_DEFAULT)

    def lmaster_pnns(self) -> list[int]:
        """Active nodes with the lmaster capability (the vnnmap of the next recovery)."""
        return [p for p in self.nodemap.active_pnns() if self.capabilities_of(p) & CAP_LMASTER]

    def wants_heartbeats(self, now: float) -> bool:
        """Read the queued heartbeats before this tick (core/membership.py, heartbeats_wanted)."""
        return self.detector.heartbeats_wanted(now)

    def next_deadline(self) -> float:
        when = self.detector.next_deadline()
        for other in (self.election.next_deadline(), self._leaderless_deadline,
                      self.death_reports.next_deadline(),
                      self.nodemap.ban.expires_at() if self.nodemap.ban.banned else None):
            if other is not None and other < when:
                when = other
        return when

    # -- the one entry ---------------------------------------------------------------------------
    def step(self, event: Event, now: float) -> list[Action]:
        self.now = now
        handler = _HANDLERS[type(event)]
        return handler(self, event, now)

    # -- connectivity ----------------------------------------------------------------------------
    def _start(self, ev: Start, now: float) -> list[Action]:
        """Clocks start at the mesh's start, not at the core's creation (the init and setup
        events may run for a while before)."""
        self.detector = FailureDetector(self.my_pnn, self.settings.detector, now)
        return self._election(self.election.start(now), now)

    def _peer_connected(self, ev: PeerConnected, now: float) -> list[Action]:
        change = self.nodemap.mark_connected(ev.pnn)
        self.connected_at[ev.pnn] = now
        node = self.nodemap.nodes[ev.pnn]
        actions: list[Action] = [Log(logging.ERROR, f"{self.nodemap.me.address}:{self.port}: connected to "
                                                    f"{node.address}:{self.port} - "
                                                    f"{len(self.connected_peers())} connected")]
        actions += self.detector.peer_up(ev.pnn, now)
        actions += self._election(self.election.set_connected(self.connected_peers(), now), now)
        if change is not None:      # before anything below sends the node a new control
            actions.append(FailControls(ev.pnn, gone=False))
        actions += [SendState(ev.pnn), PeerJoined(ev.pnn)]
        if change is not None:
            actions += self._leader_work(True, True, f"node {ev.pnn} connected")
        return actions + self._check_quorum(now)

    def _peer_disconnected(self, ev: PeerDisconnected, now: float) -> list[Action]:
        return self._disconnect(ev.pnn, ev.reason, now)

    def _disconnect(self, pnn: int, reason: str, now: float) -> list[Action]:
        change = self.nodemap.mark_disconnected(pnn)
        if change is None:
            return []
        node = self.nodemap.nodes[pnn]
        actions: list[Action] = [
            Log(logging.ERROR, f"{self.nodemap.me.address}:{self.port}: node {node.address}:{self.port} "
                               f"is dead: {len(self.connected_peers())} connected ({reason})"),
            FailControls(pnn)]
        actions += self.detector.peer_down(pnn, now)
        self.death_reports.forget(pnn)
        actions += self._election(self.election.set_connected(self.connected_peers(), now), now)
        actions += self._election(self.election.peer_dead(pnn, now), now)
        actions += self._leader_work(True, True, f"node {pnn} disconnected")
        return actions + self._check_quorum(now)

    def _check_quorum(self, now: float) -> list[Action]:
        """core/quorum.py: a node cut off from the majority releases its IPs and does not lead."""
        connected = len(self.connected_peers()) + 1
        cut_off = self.quorum.update(connected)
        if cut_off is None:
            return []
        if cut_off:
            # Recovery mode too: a persistent commit made here now would reach no other node
            # and be acknowledged, then lost to the majority's copy when the node rejoins (seen
            # in the lab after a false death under load); the rejoin recovers it in full.
            actions: list[Action] = [
                Log(logging.WARNING, f"Only {connected} of {self.quorum.members} nodes connected: "
                                     "this node is cut off from the majority; releasing its public "
                                     "IPs, not leading, recovery mode until it is recovered again"),
                EnterRecoveryMode(),
                DropAllIPs(f"cut off from the majority ({connected} of {self.quorum.members} nodes)")]
            return actions + self._election(self.election.set_can_lead(self.can_lead, now), now)
        actions = [Log(NOTICE, f"{connected} of {self.quorum.members} nodes connected: back among "
                               "the majority")]
        # Nodes that reach a majority together (a cluster starting) would all race for the lock
        # at once; the lowest PNN goes first, the others a moment later per lower PNN present.
        lower = sum(1 for p in self.connected_peers() if p < self.my_pnn)
        return actions + self._election(self.election.set_can_lead(
            self.can_lead, now, lock_delay=lower * LOCK_STAGGER), now)

    def _declare_dead(self, pnn: int, reason: str, now: float) -> list[Action]:
        return [DropPeer(pnn, reason)] + self._disconnect(pnn, reason, now)

    # -- failure detection -----------------------------------------------------------------------
    def _traffic(self, ev: Traffic, now: float) -> list[Action]:
        self.detector.traffic(ev.pnn, now)
        return []

    def _peer_keepalive(self, ev: PeerKeepalive, now: float) -> list[Action]:
        """ctdbd's version rule (ctdb_keepalive.c): of two nodes running different versions,
        the one that has been up for less time shuts itself down (at equal uptimes, the lower
        version), so a node that joins with another build leaves again; AllowMixedVersions
        turns the check off. Traffic counts either way."""
        self.detector.traffic(ev.pnn, now)
        if self.settings.allow_mixed_versions:
            return []
        mine = self.settings.keepalive_version
        if ev.version is None:
            text = f"Keepalive version missing from node {ev.pnn}"
        elif ev.version == mine:
            return []
        else:
            my_uptime = int(now - self.wall_offset - self.start_wall)
            if ev.uptime < my_uptime or (ev.uptime == my_uptime and ev.version < mine):
                return []          # the peer is the newcomer: it will shut itself down
            text = f"Keepalive version mismatch 0x{mine:08x} != 0x{ev.version:08x} from node {ev.pnn}"
        return [Log(logging.ERROR, text),
                Log(logging.ERROR, "CTDB Cluster with mixed versions, cannot continue"),
                Shutdown("a peer runs another CTDB version")]

    def _heartbeats(self, ev: Heartbeats, now: float) -> list[Action]:
        for pnn, arrival in ev.arrivals:
            self.detector.fast_heartbeat(pnn, min(arrival, now))
        return []

    def _kernel_answers(self, ev: KernelAnswers, now: float) -> list[Action]:
        for pnn, arrival in ev.arrivals:
            self.detector.kernel_answer(pnn, min(arrival, now))
        return []

    def _heartbeat_message(self, ev: HeartbeatMessage, now: float) -> list[Action]:
        if ev.kind == 2:
            self.detector.fast_heartbeat(ev.pnn, now)
        else:
            self.detector.watch_request(ev.pnn, ev.kind == 1, now)
        return []

    def _detector(self, actions: list, now: float, busy: str = "") -> list[Action]:
        out: list[Action] = []
        for action in actions:
            if isinstance(action, PeerDead):
                out.append(Log(NOTICE, f"dead count reached for node {action.pnn} ({action.reason})"))
                if action.fast:
                    out.append(ReportDeath(action.pnn))
                out += self._declare_dead(action.pnn, action.reason, now)
                if action.fast:
                    out += self._ask_unwatched(action.pnn, now)
            elif isinstance(action, PeerStalled):
                out.append(Log(NOTICE, f"Node {action.pnn} was silent for {action.silence * 1000:.0f} ms "
                                       "while its kernel answered: a stall, not a death"))
            elif isinstance(action, LoopStalled):
                out.append(Log(logging.WARNING, f"Event loop stalled: timer ran {action.late * 1000:.0f} ms "
                                                f"late{busy}; restarting failure-detection timeouts instead "
                                                "of declaring peers dead"))
            else:
                out.append(action)
        return out

    def _death_report(self, ev: DeathReport, now: float) -> list[Action]:
        """Another node says `ev.dead` is dead: believed under core/death_reports.py's rules."""
        if ev.src != ev.reporter or not self._is_connected_peer(ev.src):
            why = (f"it names node {ev.reporter} as the reporter" if self._is_connected_peer(ev.src)
                   else "that node is not connected")
            return self._limited("report-ignored", logging.WARNING, f"Ignoring a report from node "
                                 f"{ev.src} that node {ev.dead} is dead: {why}", now)
        if ev.dead == self.my_pnn:
            return self._limited("report-about-me", logging.WARNING,
                                 f"Node {ev.reporter} declared this node dead; our connections will be re-made",
                                 now)
        if not self._is_connected_peer(ev.dead) or ev.dead == ev.reporter:
            return []
        held = self.detector.held(ev.dead, now)
        verdict = self.death_reports.judge(ev.dead, ev.reporter, self.detector.watching(ev.dead),
                                           self.detector.silence(ev.dead, now), now, held=held)
        if verdict is Verdict.BELIEVE:
            return self._believe_report(ev.dead, f"reported dead by node {ev.reporter}", now)
        if verdict is Verdict.REFUTED:
            silence = self.detector.silence(ev.dead, now) or 0.0
            evidence = "its kernel answers" if held else f"we heard from it {silence * 1000:.0f} ms ago"
            return (self._limited("report-refuted", logging.WARNING,
                                  f"Node {ev.reporter} reports node {ev.dead} dead, but {evidence}: keeping it", now)
                    + tell_dropped(ev.dead, ev.reporter, self.election.leader))
        if verdict is Verdict.PROBE:
            return [Log(logging.INFO, f"Node {ev.reporter} reports node {ev.dead} dead; asking node "
                                      f"{ev.dead} (we do not watch it)"), ProbePeer(ev.dead)]
        return []

    def _leader_dropped_me(self, ev: LeaderDroppedMe, now: float) -> list[Action]:
        """Our leader reported us dead and a peer refuted it. If the leader did drop us, it gives
        our IPs away while our link to it still looks up (soak: loss on our links, its teardown
        lost; two nodes answered ARP for 1.1 s). So we ask the leader: no answer within the
        confirm timeout and we have lost it (the cut-off path then drops our IPs, as the peers
        follow it); an answer and the notice was stale, or false."""
        leader = self.election.leader
        if (ev.dead != self.my_pnn or ev.leader != leader or leader in (UNKNOWN_PNN, self.my_pnn, ev.src)
                or not self._is_connected_peer(ev.src) or not self._is_connected_peer(leader)
                or not self.death_reports.ask(leader, ev.src, now)):
            return []
        return [Log(logging.WARNING, f"Node {ev.src} says leader {leader} declared this node dead: "
                                     "asking the leader"), ProbePeer(leader)]

    def _ask_unwatched(self, lost: int, now: float) -> list[Action]:
        """We lost a peer we watch: are we the one cut off? Ask the peers we do not watch."""
        asked = [p for p in sorted(self.connected_peers())
                 if not self.detector.watching(p) and self.death_reports.ask(p, self.my_pnn, now)]
        return [ProbePeer(p) for p in asked]

    def _settle_probes(self, now: float) -> list[Action]:
        pending = self.death_reports.pending()
        if not pending:
            return []
        actions: list[Action] = []
        heard = {p: self.detector.last_heard(p) for p in pending}
        for pnn, reporter, answered in self.death_reports.due(now, heard):
            waited = self.death_reports.confirm_timeout * 1000
            mine = reporter == self.my_pnn
            if answered:
                if not mine:
                    actions += self._limited("report-refuted", logging.WARNING,
                                             f"Node {reporter} reports node {pnn} dead, but node {pnn} "
                                             "answered: keeping it", now)
                    actions += tell_dropped(pnn, reporter, self.election.leader)
            else:
                why = "after a peer we watch died" if mine else f"reported dead by node {reporter}"
                actions += self._believe_report(pnn, f"{why}, no answer within {waited:.0f} ms", now)
        return actions

    def _believe_report(self, pnn: int, reason: str, now: float) -> list[Action]:
        return [Log(NOTICE, f"dead count reached for node {pnn} ({reason})")] + self._declare_dead(pnn, reason, now)

    def _is_connected_peer(self, pnn: int) -> bool:
        node = self.nodemap.get(pnn)
        return pnn != self.my_pnn and node is not None and node.connected

    def _limited(self, kind: str, level: int, text: str, now: float) -> list[Action]:
        line = self.log_limit.allow(kind, text, now)
        return [Log(level, line)] if line is not None else []

    # -- peers' flags ----------------------------------------------------------------------------
    def _peer_state(self, ev: PeerState, now: float) -> list[Action]:
        if ev.pnn != ev.src:
            return [Log(logging.WARNING, f"Node {ev.src} sent the state of node {ev.pnn}: ignored")]
        if self.nodemap.get(ev.src) is None or ev.src == self.my_pnn:
            return []
        self.peer_capabilities[ev.src] = ev.capabilities
        return self._apply_peer_flags(ev.src, ev.flags, ev.runstate)

    def _peer_flags(self, ev: PeerFlags, now: float) -> list[Action]:
        if ev.pnn != ev.src or ev.src == self.my_pnn:
            return []
        return self._apply_peer_flags(ev.src, ev.flags, None)

    def _apply_peer_flags(self, pnn: int, flags: int, runstate: int | None) -> list[Action]:
        change = self.nodemap.apply_pushed_state(pnn, flags, runstate)
        if change is None:
            return []
        actions: list[Action] = [Log(NOTICE, f"Node {pnn} has changed flags - 0x{change.old_flags:x} -> "
                                             f"0x{change.new_flags:x}")]
        moved = change.old_flags ^ change.new_flags
        if moved & (NodeFlag.INACTIVE | NodeFlag.DISABLED):
            actions += self._leader_work(bool(moved & NodeFlag.INACTIVE), True, str(change))
        return actions

    # -- election --------------------------------------------------------------------------------
    def _leader_announced(self, ev: LeaderAnnounced, now: float) -> list[Action]:
        if ev.src == self.my_pnn:
            return []
        if not self._is_connected_peer(ev.src) or ev.pnn not in (ev.src, UNKNOWN_PNN):
            # A leader announces itself, an election call names nobody; anything else is stray.
            return self._limited("leader-ignored", logging.WARNING,
                                 f"Ignoring a leader message from node {ev.src} naming node {ev.pnn}"
                                 + ("" if self._is_connected_peer(ev.src) else " (not connected)"), now)
        return self._election(self.election.leader_broadcast(ev.src, ev.pnn, now), now)

    def _election_vote(self, ev: ElectionVote, now: float) -> list[Action]:
        if ev.src == self.my_pnn:
            return []
        if not self._is_connected_peer(ev.src) or ev.message.pnn != ev.src:
            return self._limited("vote-ignored", logging.WARNING,
                                 f"Ignoring an election message from node {ev.src} for node "
                                 f"{ev.message.pnn}"
                                 + ("" if self._is_connected_peer(ev.src) else " (not connected)"), now)
        return self._election(self.election.election_message(ev.message, now), now)

    def _lock_answer(self, ev: LockAnswer, now: float) -> list[Action]:
        return self._election(self.election.lock_result(ev.status, now), now)

    def _leader_elsewhere(self, ev: LeaderElsewhere, now: float) -> list[Action]:
        """This node lost its link to the leader (declared it dead, tore the connection down),
        yet a peer it still reaches follows that leader: the leader is alive, saw the torn-down
        connection as this node's death and has given its public IPs to others. Keeping them
        would have two nodes answer ARP for them until the link comes back (soak: a burst of
        packet loss on one node, 3 of 30 loss faults). So they go now; the leader's takeover run
        hands IPs back once it reaches this node again. A frozen leader is no such case: the
        peers called an election too (this node's broadcast) and hear nothing from it."""
        if (self.election.leader != UNKNOWN_PNN or ev.leader in (UNKNOWN_PNN, self.my_pnn)
                or self._is_connected_peer(ev.leader) or not self._is_connected_peer(ev.witness)
                or self._cut_off_from_leader == ev.leader):
            return []
        self._cut_off_from_leader = ev.leader
        return [Log(logging.WARNING, f"Node {ev.witness} follows leader {ev.leader}, which this node "
                                     "cannot reach: releasing its public IPs until the leader "
                                     "reaches it again"),
                DropAllIPs(f"cut off from leader {ev.leader}")]

    def _lock_lost(self, ev: LockLost, now: float) -> list[Action]:
        return ([Log(logging.ERROR, f"Cluster lock lost: {ev.reason}")]
                + self._election(self.election.lock_lost(now), now))

    def _election(self, actions: list, now: float) -> list[Action]:
        out: list[Action] = []
        for action in actions:
            if isinstance(action, ElectionStarted):
                out += self._limited("election", logging.ERROR, f"Start election ({action.reason})", now)
            elif isinstance(action, VoteIgnored):
                out += self._limited("vote-ignored", logging.WARNING, f"Ignoring an {action.reason}", now)
            elif isinstance(action, LeaderChanged):
                out.append(action)
                out += self._leader_changed(action, now)
            else:
                out.append(action)
        return out

    def _leader_changed(self, change: LeaderChanged, now: float) -> list[Action]:
        actions: list[Action] = []
        if change.new == self.my_pnn:
            if self.settings.election.lock_enabled:
                actions.append(Log(logging.WARNING, f"Took cluster lock, leader={change.new}"))
            actions.append(Log(NOTICE, f"This node ({self.my_pnn}) is now the leader ({change.reason})"))
        elif change.new == UNKNOWN_PNN:
            actions.append(Log(NOTICE, f"Leader is unknown ({change.reason})"))
        else:
            actions.append(Log(NOTICE, f"Received leader broadcast, leader={change.new} ({change.reason})"))
        # CTDB's RecoveryDropAllIPs: a node cut off from any leader (it cannot take the cluster
        # lock, nobody broadcasts to it) must not keep serving IPs the cluster moved elsewhere.
        if change.new == UNKNOWN_PNN:
            self._leaderless_deadline = now + max(1.0, self.settings.drop_all_ips_after)
            if change.old not in (UNKNOWN_PNN, self.my_pnn):
                self._previous_leader = change.old
        else:
            self._previous_leader = None
            self._leaderless_deadline = None
            self._cut_off_from_leader = None
        if change.new == self.my_pnn:
            actions += self._leader_work(True, True, "became leader")
        return actions

    # -- this node's own flags -------------------------------------------------------------------
    def _set_health(self, ev: SetHealth, now: float) -> list[Action]:
        return self._own_flags(self.nodemap.set_healthy(ev.healthy), ev.why, now)

    def _admin(self, ev: Admin, now: float) -> list[Action]:
        try:
            change = _ADMIN[ev.command](self.nodemap)
        except KeyError:
            raise ValueError(f"unknown admin command {ev.command!r}") from None
        return [Log(logging.ERROR, _ADMIN_LOG[ev.command])] + self._own_flags(change, f"ctdb {ev.command}", now)

    def _set_ban(self, ev: SetBan, now: float) -> list[Action]:
        change = self.nodemap.set_ban(ev.seconds, now)
        text = f"Banning this node for {ev.seconds} seconds" if ev.seconds else "Unbanning this node"
        return [Log(NOTICE, text)] + self._own_flags(change, "ban" if ev.seconds else "unban", now)

    def _set_role(self, ev: SetRole, now: float) -> list[Action]:
        if ev.capability not in (CAP_LMASTER, CAP_RECMASTER):
            raise ValueError(f"capability 0x{ev.capability:x} is not a role")
        self.capabilities = (self.capabilities | ev.capability) if ev.on else (self.capabilities & ~ev.capability)
        return [SendState(BROADCAST_CONNECTED)] + self._election(
            self.election.set_can_lead(self.can_lead, now), now)

    def _set_runstate(self, ev: SetRunstate, now: float) -> list[Action]:
        if not self.nodemap.set_runstate(ev.runstate):
            return []
        name = RUNSTATE_NAMES.get(ev.runstate, str(ev.runstate))
        actions: list[Action] = [Log(NOTICE, f"Set runstate to {name} ({int(ev.runstate)})"),
                                 RunstateChanged(ev.runstate)]
        if ev.runstate == Runstate.RUNNING:
            actions.append(SendState(BROADCAST_CONNECTED))
        return actions

    def _own_flags(self, change: FlagChange | None, why: str, now: float) -> list[Action]:
        """This node's flags changed: tell everybody, step down or drop IPs as CTDB does."""
        if change is None:
            return []
        actions: list[Action] = [Log(NOTICE, f"This node's flags changed ({why}): {change}"),
                                 SendState(BROADCAST_CONNECTED)]
        became_inactive = bool(change.new_flags & NodeFlag.INACTIVE) and not change.old_flags & NodeFlag.INACTIVE
        now_active = not change.new_flags & NodeFlag.INACTIVE and bool(change.old_flags & NodeFlag.INACTIVE)
        if became_inactive:
            actions += [EnterRecoveryMode(), DropAllIPs("node became inactive")]
        priority = now - self.wall_offset if became_inactive else None
        actions += self._election(self.election.set_can_lead(self.can_lead, now, priority_time=priority), now)
        actions += self._leader_work(became_inactive or now_active, True, why)
        actions.append(OwnFlagsChanged(change))
        return actions

    def _leader_work(self, recovery: bool, takeover: bool, reason: str) -> list[Action]:
        return [LeaderWork(recovery, takeover, reason)] if self.election.is_leader else []

    # -- time and settings -----------------------------------------------------------------------
    def _tick(self, ev: Tick, now: float) -> list[Action]:
        last = self._last_tick
        if ev.cpu is not None:
            self._last_tick = (now, ev.cpu, ev.waited)
        detected = self.detector.tick(now, ev.alarm)
        busy = stall_detail(ev, last, now) if any(isinstance(a, LoopStalled) for a in detected) else ""
        actions = self._detector(detected, now, busy)
        actions += self._settle_probes(now)
        actions += self._election(self.election.tick(now), now)
        if self.nodemap.ban.banned and now >= self.nodemap.ban.expires_at():
            change = self.nodemap.expire_ban(now)
            if change is not None:
                actions += [Log(NOTICE, "Banning timed out")] + self._own_flags(change, "ban expired", now)
        if self._leaderless_deadline is not None and now >= self._leaderless_deadline:
            self._leaderless_deadline = None
            if self.election.leader == UNKNOWN_PNN:
                actions.append(DropAllIPs("no leader"))
        return actions

    def _new_settings(self, ev: NewSettings, now: float) -> list[Action]:
        self.settings = ev.settings
        self.election.settings = ev.settings.election
        self.death_reports.dead_timeout = ev.settings.detector.dead_timeout
        self.death_reports.keepalive_interval = ev.settings.detector.keepalive_interval
        return self._detector(self.detector.update_settings(ev.settings.detector, now), now)


_HANDLERS = {
    Start: NodeCore._start, PeerConnected: NodeCore._peer_connected, PeerDisconnected: NodeCore._peer_disconnected,
    Traffic: NodeCore._traffic, Heartbeats: NodeCore._heartbeats, KernelAnswers: NodeCore._kernel_answers,
    PeerKeepalive: NodeCore._peer_keepalive,
    HeartbeatMessage: NodeCore._heartbeat_message, DeathReport: NodeCore._death_report,
    PeerState: NodeCore._peer_state, PeerFlags: NodeCore._peer_flags,
    LeaderAnnounced: NodeCore._leader_announced, ElectionVote: NodeCore._election_vote,
    LockAnswer: NodeCore._lock_answer, LockLost: NodeCore._lock_lost, Tick: NodeCore._tick,
    LeaderElsewhere: NodeCore._leader_elsewhere, LeaderDroppedMe: NodeCore._leader_dropped_me,
    SetHealth: NodeCore._set_health, Admin: NodeCore._admin, SetBan: NodeCore._set_ban,
    SetRole: NodeCore._set_role, SetRunstate: NodeCore._set_runstate,
    NewSettings: NodeCore._new_settings,
}
