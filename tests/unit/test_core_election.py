"""Election outcomes on a simulated cluster: messages are delivered instantly, the cluster lock
is one shared owner variable, time is a plain float."""
from __future__ import annotations

from ctdblab.daemon.core.election import (
    BroadcastElection,
    BroadcastLeader,
    Election,
    ElectionMessage,
    ElectionSettings,
    LeaderChanged,
    LockStatus,
    ReleaseLock,
    SendLeader,
    TakeLock,
)
from ctdblab.daemon.protocol.constants import UNKNOWN_PNN, NodeFlag


class Cluster:
    def __init__(self, n, lock=True, priority=None, auto_lock=True):
        self.settings = ElectionSettings(lock_enabled=lock, leader_timeout=5.0,
                                         election_timeout=0.5, lock_retry=0.5)
        pt = priority or [100.0 + i for i in range(n)]
        self.nodes = {i: Election(i, self.settings, pt[i]) for i in range(n)}
        self.alive = set(range(n))
        self.lock_owner = None
        self.pending_locks = []          # nodes whose TakeLock awaits an answer
        self.auto_lock = auto_lock
        self.log = []
        self.now = 0.0
        for e in self.nodes.values():
            e.set_connected(set(range(n)) - {e.my_pnn}, 0.0)

    def handle(self, pnn, actions):
        queue = [(pnn, a) for a in actions]
        while queue:
            src, a = queue.pop(0)
            self.log.append((self.now, src, a))
            if isinstance(a, BroadcastLeader):
                for dst in sorted(self.alive - {src}):
                    queue += [(dst, x) for x in self.nodes[dst].leader_broadcast(src, a.pnn, self.now)]
            elif isinstance(a, SendLeader):
                if a.to in self.alive:
                    queue += [(a.to, x) for x in self.nodes[a.to].leader_broadcast(src, a.pnn, self.now)]
            elif isinstance(a, BroadcastElection):
                for dst in sorted(self.alive - {src}):
                    queue += [(dst, x) for x in self.nodes[dst].election_message(a.message, self.now)]
            elif isinstance(a, TakeLock):
                if self.auto_lock:
                    queue += [(src, x) for x in self.take_lock(src)]
                else:
                    self.pending_locks.append(src)
            elif isinstance(a, ReleaseLock):
                if self.lock_owner == src:
                    self.lock_owner = None

    def take_lock(self, pnn):
        if self.lock_owner in (None, pnn):
            self.lock_owner = pnn
            return self.nodes[pnn].lock_result(LockStatus.HELD, self.now)
        return self.nodes[pnn].lock_result(LockStatus.CONTENTION, self.now)

    def start(self):
        for p in sorted(self.alive):
            self.handle(p, self.nodes[p].start(self.now))

    def advance(self, until, step=0.01):
        while self.now < until - 1e-9:
            self.now = round(self.now + step, 6)
            for p in sorted(self.alive):
                self.handle(p, self.nodes[p].tick(self.now))

    def kill(self, pnn, notify=True):
        self.alive.discard(pnn)
        if self.lock_owner == pnn:
            self.lock_owner = None           # fcntl lock dies with its holder
        if notify:
            for p in sorted(self.alive):
                self.handle(p, self.nodes[p].set_connected(self.alive - {p}, self.now))
                self.handle(p, self.nodes[p].peer_dead(pnn, self.now))

    def leaders(self):
        return {p: self.nodes[p].leader for p in sorted(self.alive)}

    def changes(self, after=0.0):
        return [(t, p, a) for t, p, a in self.log if t >= after and isinstance(a, LeaderChanged)]


def test_lock_election_at_startup_gives_one_leader():
    c = Cluster(3)
    c.start()
    c.advance(1.5)
    leaders = set(c.leaders().values())
    assert len(leaders) == 1 and UNKNOWN_PNN not in leaders
    assert c.lock_owner == leaders.pop()


def test_existing_leader_answers_a_newcomer_at_once():
    c = Cluster(3)
    c.start()
    c.advance(1.5)
    leader = c.lock_owner
    newcomer = Election(3, c.settings, 500.0)
    c.nodes[3] = newcomer
    c.alive.add(3)
    c.handle(3, newcomer.start(c.now))
    c.handle(leader, c.nodes[leader].set_connected({p for p in c.alive if p != leader}, c.now))
    assert newcomer.leader == leader


def test_leader_death_elects_immediately_with_lock():
    c = Cluster(3)
    c.start()
    c.advance(1.5)
    old = c.lock_owner
    c.kill(old)
    # No time passes: the survivors raced for the lock within the same instant.
    leaders = set(c.leaders().values())
    assert len(leaders) == 1 and old not in leaders and UNKNOWN_PNN not in leaders
    assert c.lock_owner in leaders


def test_follower_death_changes_nothing():
    c = Cluster(3)
    c.start()
    c.advance(1.5)
    leader = c.lock_owner
    follower = next(p for p in c.alive if p != leader)
    t = c.now
    c.kill(follower)
    c.advance(t + 10)
    assert set(c.leaders().values()) == {leader}
    assert not c.changes(after=t)


def test_without_failure_detector_leader_timeout_elects():
    c = Cluster(3)
    c.start()
    c.advance(1.5)
    old = c.lock_owner
    t = c.now
    c.kill(old, notify=False)                 # silent death, nobody told
    c.advance(t + 3.0)                        # last broadcast was at t - 0.5 at the latest
    assert set(c.leaders().values()) == {old}
    c.advance(t + 5.0)
    leaders = set(c.leaders().values())
    assert len(leaders) == 1 and old not in leaders


def test_lock_contention_then_retry_when_released():
    c = Cluster(3)
    c.lock_owner = 99                         # held by someone outside the cluster
    c.start()
    c.advance(2.0)
    assert set(c.leaders().values()) == {UNKNOWN_PNN}
    c.lock_owner = None
    c.advance(3.0)
    leaders = set(c.leaders().values())
    assert len(leaders) == 1 and UNKNOWN_PNN not in leaders


def test_hung_lock_helper_does_not_block_forever():
    c = Cluster(2, auto_lock=False)
    c.start()
    c.advance(1.5)
    assert sorted(c.pending_locks) == [0, 1]   # nobody ever answers
    assert set(c.leaders().values()) == {UNKNOWN_PNN}
    c.pending_locks.clear()
    c.advance(6.5)                             # leader timeout: a fresh election, fresh attempt
    assert c.pending_locks
    # The shell kills a helper that does not answer in time and reports a timeout; the node
    # then retries after lock_retry instead of waiting for another leader timeout.
    for p in c.pending_locks:
        c.handle(p, c.nodes[p].lock_result(LockStatus.TIMEOUT, c.now))
    c.pending_locks.clear()
    c.auto_lock = True
    c.advance(c.now + 0.6)
    leaders = set(c.leaders().values())
    assert len(leaders) == 1 and UNKNOWN_PNN not in leaders
    # A late answer to a given-up attempt is released, never kept.
    e = c.nodes[0]
    e.lock_pending = False
    assert e.lock_result(LockStatus.HELD, c.now) == [ReleaseLock()]


def test_lock_lost_forces_election():
    c = Cluster(3)
    c.start()
    c.advance(1.5)
    old = c.lock_owner
    c.lock_owner = None
    c.handle(old, c.nodes[old].lock_lost(c.now))
    leaders = set(c.leaders().values())
    assert len(leaders) == 1 and UNKNOWN_PNN not in leaders


def test_banned_leader_steps_down_at_once():
    c = Cluster(3)
    c.start()
    c.advance(1.5)
    old = c.lock_owner
    c.handle(old, c.nodes[old].set_can_lead(False, c.now, priority_time=c.now))
    leaders = set(c.leaders().values())
    assert len(leaders) == 1 and old not in leaders and UNKNOWN_PNN not in leaders
    assert c.lock_owner != old


def test_no_lock_oldest_node_wins_and_round_ends_early():
    c = Cluster(4, lock=False, priority=[103.0, 101.0, 102.0, 104.0])
    c.start()
    c.advance(1.0)                             # startup grace ends at 1.0: one round, no timeout
    assert set(c.leaders().values()) == {1}
    rounds_end = [t for t, p, a in c.changes() if a.new == 1]
    assert rounds_end and max(rounds_end) <= 1.0


def test_no_lock_tie_goes_to_higher_pnn_and_inactive_loses():
    c = Cluster(3, lock=False, priority=[100.0, 100.0, 100.0])
    c.start()
    c.advance(1.0)
    assert set(c.leaders().values()) == {2}
    mine = Election(0, c.settings, 100.0).my_message(0.0).rank()
    inactive = ElectionMessage(3, 50.0, 1, int(NodeFlag.BANNED))
    assert mine < inactive.rank()
    assert not mine < ElectionMessage(3, 50.0, 1, 0).rank()
    assert mine < ElectionMessage(3, 150.0, 1, 0).rank()


def test_no_lock_leader_death_and_fallback_timeout():
    c = Cluster(3, lock=False, priority=[100.0, 101.0, 102.0])
    c.start()
    c.advance(1.0)
    assert set(c.leaders().values()) == {0}
    c.kill(0)
    assert set(c.leaders().values()) == {1}
    # A peer that never votes: the round ends on the election timeout instead.
    lone = Election(5, c.settings, 10.0)
    lone.set_connected({6}, 0.0)
    acts = lone.force_election(0.0, "test")
    assert any(isinstance(a, BroadcastElection) for a in acts)
    assert lone.leader == UNKNOWN_PNN
    acts = lone.tick(0.6)
    assert lone.is_leader and BroadcastLeader(5) in acts


def test_cannot_lead_never_wins():
    c = Cluster(2, lock=False, priority=[1.0, 2.0])
    c.nodes[0].can_lead = False
    c.start()
    c.advance(1.0)
    assert set(c.leaders().values()) == {1}
    c2 = Cluster(2, lock=True)
    c2.nodes[0].can_lead = False
    c2.start()
    c2.advance(1.5)
    assert c2.lock_owner == 1


def _attempt_times(settings: ElectionSettings, until: float, *, peer_calls: float | None = None,
                   held_at: float | None = None) -> tuple[list[float], Election]:
    """Times one node asks for the lock while every answer is contention (HELD from `held_at`
    on), ticking every 0.1 s; `peer_calls`: another node calls an election at that time."""
    e = Election(0, settings, 100.0)
    e.start(0.0)
    attempts: list[float] = []
    for step in range(int(until * 10) + 1):
        now = round(step * 0.1, 1)
        actions = e.tick(now)
        if peer_calls is not None and now == peer_calls:
            actions += e.leader_broadcast(1, UNKNOWN_PNN, now)
        if any(isinstance(a, TakeLock) for a in actions):
            attempts.append(now)
            held = held_at is not None and now >= held_at
            e.lock_result(LockStatus.HELD if held else LockStatus.CONTENTION, now)
    return attempts, e


def test_command_helper_lock_attempts_back_off_after_two_failures():
    # ctdb_etcd_lock leaves a failed attempt's key until its TTL: a node retrying faster than
    # that never gets the lock, so after two failures the next attempt waits lock_retry_max.
    backoff = ElectionSettings(lock_enabled=True, leader_timeout=5.0, lock_retry=0.5,
                               lock_retry_max=5.0, startup_grace=1.0)
    attempts, _ = _attempt_times(backoff, 12.0)
    assert attempts == [1.0, 1.5, 6.5, 11.5]
    # ... whatever calls the election meanwhile (here a peer at 3.0)
    attempts, _ = _attempt_times(backoff, 12.0, peer_calls=3.0)
    assert attempts == [1.0, 1.5, 6.5, 11.5]
    # A success ends the backoff.
    attempts, e = _attempt_times(backoff, 12.0, held_at=6.5)
    assert attempts == [1.0, 1.5, 6.5] and e.is_leader and e.lock_held


def test_file_lock_attempts_keep_the_quick_retry():
    quick = ElectionSettings(lock_enabled=True, leader_timeout=5.0, lock_retry=0.5, startup_grace=1.0)
    attempts, _ = _attempt_times(quick, 3.0)
    assert attempts == [1.0, 1.5, 2.0, 2.5, 3.0]


def test_a_leader_broadcast_resets_the_backoff():
    backoff = ElectionSettings(lock_enabled=True, leader_timeout=5.0, lock_retry=0.5,
                               lock_retry_max=5.0, startup_grace=1.0)
    e = Election(0, backoff, 100.0)
    e.start(0.0)
    for now in (1.0, 1.5):
        assert any(isinstance(a, TakeLock) for a in e.tick(now))
        e.lock_result(LockStatus.CONTENTION, now)
    e.leader_broadcast(1, 1, 2.0)                 # node 1 leads: someone got the lock
    assert e.leader == 1
    e.leader_broadcast(1, UNKNOWN_PNN, 3.0)       # ... and calls a new election
    e.tick(3.0)
    assert e.lock_pending                         # raced at once, no backoff left over
