"""Leader election, as CTDB 4.17's recovery daemon does it, with pyctdbd's shortcuts.

With a cluster lock the leader is whoever holds the lock: an election broadcasts leader=UNKNOWN
and every node that may lead races for the lock; a node that already holds it keeps it
(stability). Without a lock, nodes exchange election messages and CTDB's win rule picks the
leader: an INACTIVE sender loses, then the earliest `priority_time` (longest-running node) wins,
then the higher PNN.

The leader broadcasts its PNN every second; a node that hears nothing for `leader timeout` calls
an election. What pyctdbd adds (each marked below):

* an election starts at once when the failure detector declares the leader dead (`peer_dead`),
  not `leader timeout` later;
* the winner broadcasts at once instead of on its next 1 s tick, and a leader answers an
  election call from a node that missed it with an immediate broadcast;
* in a no-lock election every node votes once per round and the round ends as soon as every
  connected peer has voted (the `election_timeout` after the last vote is only the fallback);
* after lock contention with no leader broadcast following, the race is retried every
  `lock_retry` seconds (the old holder's lock may take a moment to be released). With
  `lock_retry_max` set (a `!command` helper: pyctdbd cannot see how it keeps its lock) only the
  first retry comes that soon; after two failed attempts in a row the next waits
  `lock_retry_max`, and no attempt is made before then, whatever calls the election. Why: CTDB's
  ctdb_etcd_lock leaves the key of a failed attempt in etcd until its TTL expires, and that key,
  older than any new one, comes first in the next attempt's ordering, so nodes that retry faster
  than the TTL never get the lock (seen in the lab: 0.3-0.5 s retries, 3 s TTL, no leader for
  30 s). ctdbd tries once per election (5 s), which lets such keys expire.

What pyctdbd refuses, so that one stray or forged message cannot start an election storm (a
vote arriving after its round had ended used to open a new round, whose vote did the same on
the other side, for ever):

* with a cluster lock, election messages are ignored: the lock decides, pyctdbd nodes send
  none, and CTDB's "release the lock to a better candidate" would let any vote unseat the holder;
* without a lock, a vote outside a round opens one only when no leader is known, or at the
  leader when the sender outranks it (the leader then calls the election for everyone);
  anything else is a late vote of a finished round and is ignored;
* (NodeCore) votes and leader messages from a node that is not connected, or naming another
  node as their sender, are ignored, and the lines they cause are rate-limited.

Sans-I/O: inputs are method calls with the current time, outputs are action objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from ..protocol.constants import UNKNOWN_PNN, NodeFlag
from .membership import GRID_SLACK


@dataclass(frozen=True)
class ElectionSettings:
    lock_enabled: bool
    leader_timeout: float = 5.0       # s: [cluster] leader timeout
    election_timeout: float = 0.5     # s: no-lock fallback after the last vote
    lock_retry: float = 0.5           # s: re-race after contention without a leader broadcast
    lock_retry_max: float | None = None   # s: the wait after 2+ failed attempts (None: lock_retry)
    broadcast_interval: float = 1.0   # s: leader broadcast period (CTDB: 1 s)
    startup_grace: float = 1.0        # s: listen for an existing leader before electing


@dataclass(frozen=True)
class ElectionMessage:
    """CTDB's `election_message` (32 bytes on the wire)."""

    num_connected: int
    priority_time: float     # seconds since the epoch (a timeval on the wire)
    pnn: int
    node_flags: int

    @property
    def may_lead(self) -> bool:
        # Nodes that cannot lead send num_connected=0 (a live node always counts itself).
        return self.num_connected > 0 and not self.node_flags & NodeFlag.INACTIVE

    def rank(self) -> tuple[int, float, int]:
        """Sort key: the smallest rank wins."""
        return (0 if self.may_lead else 1, self.priority_time, -self.pnn)


class LockStatus(Enum):
    """The one character a cluster-mutex helper writes."""

    HELD = "0"
    CONTENTION = "1"
    TIMEOUT = "2"
    ERROR = "3"


# -- actions -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BroadcastLeader:
    pnn: int                 # UNKNOWN_PNN announces an election


@dataclass(frozen=True)
class SendLeader:
    """Tell one peer who the leader is (it just connected)."""

    to: int
    pnn: int


@dataclass(frozen=True)
class BroadcastElection:
    message: ElectionMessage


@dataclass(frozen=True)
class TakeLock:
    pass


@dataclass(frozen=True)
class ReleaseLock:
    pass


@dataclass(frozen=True)
class LeaderChanged:
    old: int
    new: int
    reason: str


@dataclass(frozen=True)
class ElectionStarted:
    reason: str


@dataclass(frozen=True)
class VoteIgnored:
    """An election message that may not start or change anything (see the module docstring)."""

    reason: str


Action = (BroadcastLeader | SendLeader | BroadcastElection | TakeLock | ReleaseLock
          | LeaderChanged | ElectionStarted | VoteIgnored)


@dataclass
class Election:
    my_pnn: int
    settings: ElectionSettings
    priority_time: float          # wall-clock start time of this node (reset when inactive)
    can_lead: bool = True         # leader capability and not INACTIVE
    leader: int = UNKNOWN_PNN
    in_election: bool = False
    lock_held: bool = False
    lock_pending: bool = False
    num_connected: int = 1        # nodes connected incl. this one (for our election message)
    _connected_peers: set[int] = field(default_factory=set)
    _votes: dict[int, ElectionMessage] = field(default_factory=dict)
    _voted: bool = False
    _leader_deadline: float | None = None
    _election_deadline: float | None = None
    _lock_retry_at: float | None = None
    _failed_attempts: int = 0                  # lock attempts failed in a row (for the backoff)
    _no_attempt_before: float | None = None    # the backoff, when lock_retry_max is set
    _next_broadcast: float | None = None
    #: where a leader broadcast may go: the paced loop's look grid (NodeCore sets it), so the
    #: broadcasts cost no wake-up of their own; None: every broadcast interval exactly
    broadcast_align: Callable[[float], float] | None = None

    # -- inputs ----------------------------------------------------------------------------------
    def start(self, now: float) -> list[Action]:
        """Daemon start: listen for an existing leader for a moment, then elect."""
        self._leader_deadline = now + self.settings.startup_grace
        return []

    def set_connected(self, peers: set[int], now: float) -> list[Action]:
        """The connected peers changed. A leader tells newcomers at once who leads."""
        new = peers - self._connected_peers
        self._connected_peers = set(peers)
        self.num_connected = len(peers) + 1
        actions: list[Action] = []
        if self.is_leader and not self.in_election:
            actions += [SendLeader(p, self.my_pnn) for p in sorted(new)]
        if self.in_election and not self.settings.lock_enabled:
            actions += self._maybe_finish_round(now)
        return actions

    def set_can_lead(self, can_lead: bool, now: float, priority_time: float | None = None,
                     lock_delay: float = 0.0) -> list[Action]:
        """Capability or INACTIVE state changed. A leader that may no longer lead steps down
        and calls an election so the others need not wait for the leader timeout.
        `lock_delay`: with a lock, race for it only after this long (NodeCore staggers nodes
        that may lead again at the same moment, so the lowest PNN takes it)."""
        if priority_time is not None:
            self.priority_time = priority_time
        if can_lead == self.can_lead:
            return []
        self.can_lead = can_lead
        if can_lead:
            if self.leader == UNKNOWN_PNN and not self.in_election:
                if lock_delay > 0 and self.settings.lock_enabled:
                    self.in_election = True
                    self._lock_retry_at = now + lock_delay
                    self._leader_deadline = now + self.settings.leader_timeout
                    return [ElectionStarted("this node may lead again and there is no leader")]
                return self.force_election(now, "this node may lead again and there is no leader")
            return []
        actions: list[Action] = []
        if self.lock_held or self.lock_pending:
            actions.append(ReleaseLock())
            self.lock_held = self.lock_pending = False
        if self.is_leader:
            actions += self._set_leader(UNKNOWN_PNN, "leader can no longer lead (inactive or no capability)")
            # Call the election ourselves so the others need not wait for the leader timeout.
            self.in_election = False
            self._election_deadline = None
            actions += self.force_election(now, "leader stepped down")
        return actions

    def leader_broadcast(self, src: int, pnn: int, now: float) -> list[Action]:
        """A LEADER message from node `src` announcing `pnn` (UNKNOWN = election called)."""
        actions: list[Action] = []
        if pnn == UNKNOWN_PNN:
            was_in_election = self.in_election
            self._leader_deadline = None
            if self.settings.lock_enabled:
                if self.is_leader and self.lock_held:
                    # pyctdbd: answer at once so the caller need not wait for our next tick.
                    return [BroadcastLeader(self.my_pnn)]
                self.in_election = True
                if not was_in_election:
                    actions += self._lock_election(now)
            elif not self.in_election:
                # Join the round at once (CTDB waits for the caller's message to arrive).
                self._begin_round(now)
                actions += [ElectionStarted(f"node {src} called an election"), self._vote(now)]
            # Whatever happens, do not wait forever for the outcome.
            self._leader_deadline = now + self.settings.leader_timeout
            return actions
        if pnn == self.my_pnn:
            return []
        if self.is_leader:
            if self.settings.lock_enabled and self.lock_held:
                return []      # we hold the lock: the other node is wrong and will find out
            return self.force_election(now, f"node {src} claims node {pnn} leads, but this node does")
        if not self.settings.lock_enabled and self.in_election:
            return []          # a stale broadcast from before the election; the vote decides
        self._leader_deadline = now + self.settings.leader_timeout
        self._lock_retry_at = None
        self._failed_attempts, self._no_attempt_before = 0, None    # someone leads
        if self.settings.lock_enabled:
            self.in_election = False
        if pnn != self.leader:
            actions += self._set_leader(pnn, f"leader broadcast from node {src}")
        return actions

    def election_message(self, msg: ElectionMessage, now: float) -> list[Action]:
        """A no-lock election vote from another node."""
        if msg.pnn == self.my_pnn:
            return []
        if self.settings.lock_enabled:
            return [VoteIgnored(f"election message from node {msg.pnn}: the cluster lock decides "
                                "who leads")]
        actions: list[Action] = []
        if not self.in_election:
            if self.leader != UNKNOWN_PNN and not (self.is_leader and msg.may_lead
                                                   and msg.rank() < self.my_message(now).rank()):
                return [VoteIgnored(f"election message from node {msg.pnn} outside an election "
                                    f"(node {self.leader} leads)")]
            if self.is_leader:
                # A better candidate: call the election for everyone, as a leader stepping down.
                actions += self._set_leader(UNKNOWN_PNN, f"node {msg.pnn} outranks this leader")
                actions += self.force_election(now, f"node {msg.pnn} outranks this leader")
                self._votes[msg.pnn] = msg
                return actions + self._maybe_finish_round(now)
            self._begin_round(now)
            actions.append(ElectionStarted(f"election message from node {msg.pnn}"))
        self._election_deadline = now + self.settings.election_timeout
        self._votes[msg.pnn] = msg
        if not self._voted:
            actions.append(self._vote(now))
        actions += self._maybe_finish_round(now)
        return actions

    def lock_result(self, status: LockStatus, now: float) -> list[Action]:
        if not self.lock_pending:
            # Answer to an attempt we gave up on: do not keep a lock we no longer want.
            return [ReleaseLock()] if status is LockStatus.HELD else []
        self.lock_pending = False
        self.in_election = False
        if status is LockStatus.HELD:
            self._failed_attempts, self._no_attempt_before = 0, None
            if not self.can_lead:
                return [ReleaseLock()]
            self.lock_held = True
            self._lock_retry_at = None
            return self._become_leader(now, "took the cluster lock")
        # Contention, timeout or error: someone else leads, or will shortly.
        self._failed_attempts += 1
        delay = self.settings.lock_retry
        if self.settings.lock_retry_max is not None:
            if self._failed_attempts > 1:
                delay = max(delay, self.settings.lock_retry_max)
            self._no_attempt_before = now + delay
        self._lock_retry_at = now + delay
        return []

    def lock_lost(self, now: float) -> list[Action]:
        """The lock helper went away: whatever we thought, we no longer hold the lock."""
        held = self.lock_held
        self.lock_held = False
        self.lock_pending = False
        if held and self.is_leader:
            actions = self._set_leader(UNKNOWN_PNN, "cluster lock lost")
            return actions + self.force_election(now, "cluster lock lost")
        return []

    def peer_dead(self, pnn: int, now: float) -> list[Action]:
        """The failure detector declared `pnn` dead."""
        self._connected_peers.discard(pnn)
        self.num_connected = len(self._connected_peers) + 1
        self._votes.pop(pnn, None)
        if pnn == self.leader:
            # pyctdbd: no leader timeout on this path.
            actions = self._set_leader(UNKNOWN_PNN, f"leader node {pnn} is dead")
            return actions + self.force_election(now, f"leader node {pnn} is dead")
        if self.in_election and not self.settings.lock_enabled:
            return self._maybe_finish_round(now)
        return []

    def force_election(self, now: float, reason: str) -> list[Action]:
        if self.in_election and (self.lock_pending or self._election_deadline is not None):
            return []      # no nested elections
        actions: list[Action] = [ElectionStarted(reason), BroadcastLeader(UNKNOWN_PNN)]
        self.in_election = True
        self._leader_deadline = now + self.settings.leader_timeout
        if self.settings.lock_enabled:
            return actions + self._lock_election(now)
        self._begin_round(now)
        actions += self._set_leader(UNKNOWN_PNN, "election in progress")
        actions.append(self._vote(now))
        actions += self._maybe_finish_round(now)
        return actions

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self._election_deadline is not None and now >= self._election_deadline:
            actions += self._finish_round(now)
        if self._lock_retry_at is not None and now >= self._lock_retry_at:
            self._lock_retry_at = None
            if self.leader == UNKNOWN_PNN and self.can_lead and not self.lock_pending:
                self.in_election = True
                actions += self._lock_election(now)
        if self._leader_deadline is not None and now >= self._leader_deadline:
            self._leader_deadline = None
            if not self.is_leader:
                self.in_election = False
                self._election_deadline = None
                self.lock_pending = False
                actions += self.force_election(now, "leader broadcast timeout")
        if self.is_leader and not self.in_election and self._next_broadcast is not None \
                and now >= self._next_broadcast - GRID_SLACK:
            self._next_broadcast = self._broadcast_after(now)
            actions.append(BroadcastLeader(self.my_pnn))
        return actions

    def next_deadline(self) -> float | None:
        times = [t for t in (self._leader_deadline, self._election_deadline, self._lock_retry_at,
                             self._next_broadcast if self.is_leader else None) if t is not None]
        return min(times) if times else None

    # -- queries ---------------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self.leader == self.my_pnn

    def my_message(self, now: float) -> ElectionMessage:
        if not self.can_lead:
            # As CTDB: "try to lose" with no connected nodes and a brand-new priority time.
            return ElectionMessage(0, now, self.my_pnn, 0)
        return ElectionMessage(self.num_connected, self.priority_time, self.my_pnn, 0)

    # -- internals -------------------------------------------------------------------------------
    def _broadcast_after(self, now: float) -> float:
        due = now + self.settings.broadcast_interval
        return due if self.broadcast_align is None else self.broadcast_align(due)

    def _set_leader(self, pnn: int, reason: str) -> list[Action]:
        if pnn == self.leader:
            return []
        old, self.leader = self.leader, pnn
        if pnn != self.my_pnn:
            self._next_broadcast = None
        return [LeaderChanged(old, pnn, reason)]

    def _become_leader(self, now: float, reason: str) -> list[Action]:
        self.in_election = False
        self._election_deadline = None
        self._leader_deadline = None
        actions = self._set_leader(self.my_pnn, reason)
        self._next_broadcast = self._broadcast_after(now)
        return actions + [BroadcastLeader(self.my_pnn)]

    def _lock_election(self, now: float) -> list[Action]:
        if not self.can_lead:
            self.in_election = False
            if self.lock_held:
                self.lock_held = False
                return [ReleaseLock()]
            return []
        if self.lock_held:
            return self._become_leader(now, "already holding the cluster lock")
        actions = self._set_leader(UNKNOWN_PNN, "election in progress")
        if self._no_attempt_before is not None and now < self._no_attempt_before:
            self._lock_retry_at = self._no_attempt_before      # backing off: try then
            return actions
        self.lock_pending = True
        return actions + [TakeLock()]

    def _begin_round(self, now: float) -> None:
        self.in_election = True
        self._votes = {}
        self._voted = False
        self._election_deadline = now + self.settings.election_timeout

    def _vote(self, now: float) -> BroadcastElection:
        self._voted = True
        return BroadcastElection(self.my_message(now))

    def _maybe_finish_round(self, now: float) -> list[Action]:
        if self._election_deadline is None or not self._voted:
            return []
        if self._connected_peers <= set(self._votes):
            return self._finish_round(now)
        return []

    def _finish_round(self, now: float) -> list[Action]:
        self._election_deadline = None
        self.in_election = False
        candidates = [m for m in self._votes.values() if m.may_lead]
        if self.can_lead:
            candidates.append(self.my_message(now))
        self._votes = {}
        self._voted = False
        if not candidates:
            self._leader_deadline = now + self.settings.leader_timeout
            return self._set_leader(UNKNOWN_PNN, "no node may lead")
        winner = min(candidates, key=ElectionMessage.rank).pnn
        if winner == self.my_pnn:
            return self._become_leader(now, "won the election")
        self._leader_deadline = now + self.settings.leader_timeout
        return self._set_leader(winner, f"node {winner} won the election")
