"""When the leader recovers and runs takeovers: CTDB's ctdb-recoverd main loop as a pure core.

Inputs are what happened (the cluster changed and needs a recovery or a takeover run, a node
asked for a takeover run, a run finished, a node failed a control in a run, takeover runs or
recoveries were disabled for a while); outputs are the next job (`Job`), how long to back off
after a failed run, and bans (`Ban`). The shell (`server/leader.py`) sleeps, runs the jobs'
controls and reports back.

Rules, CTDB's unless marked:

* a recovery and a takeover run may be due at once; both run in one job;
* `ctdb disable... takeover runs/recoveries` (and DISABLE_IP_CHECK) hold them back until the
  window ends; a takeover run held back is run when it ends;
* TAKEOVER_RUN requests from nodes (`ctdb ipreallocate`) are answered after the next run
  completes; pyctdbd: a request that arrives while no node leads is kept and answered by
  whoever wins the election (CTDB drops it and the tool retries after its timeout);
* a failed run is retried after 0.2 s, doubling to 5 s while failures persist; pyctdbd: when
  membership changed during the failed run (a death being detected right then) it reruns at
  once;
* a node that keeps failing runs collects ban credits: 2 × nodes within RecoveryGracePeriod
  bans it for RecoveryBanPeriod (unless EnableBans = 0); a failed takeover control earns one,
  the culprit of a failed database recovery one per node (two such recoveries ban it);
* pyctdbd: at a fresh cluster's start (no IP hosted yet, daemon started moments ago) the first
  allocation waits for nodes that are not connected or still unhealthy, each at most
  `startup_settle` seconds, so IPs are not handed around node by node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol.constants import UNKNOWN_PNN, NodeFlag
from .nodes import NodeMap

RETRY_FIRST = 0.2            # s before a failed run is retried
RETRY_MAX = 5.0              # s, the longest back-off
STARTUP_SETTLE = 3.0         # s a starting node is waited for before the first allocation
DEFERRED_RECHECK = 0.2       # s between looks at nodes that are still starting


@dataclass(frozen=True)
class SchedulerSettings:
    enable_bans: bool = True
    ban_period: int = 300            # s, RecoveryBanPeriod
    grace_period: float = 120.0      # s, RecoveryGracePeriod (credits older than this are forgotten)


@dataclass(frozen=True)
class TakeoverJob:
    requests: tuple[tuple[int, int], ...]     # (pnn, srvid) to answer when the run ends
    force_rebalance: tuple[int, ...]


@dataclass(frozen=True)
class Job:
    """What to run now. Either part may be absent; `wake_at` asks to look again then;
    `notes` are log lines (NOTICE) about what was held back."""

    recovery: bool = False
    takeover: TakeoverJob | None = None
    wake_at: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.recovery and self.takeover is None


@dataclass(frozen=True)
class Ban:
    pnn: int
    seconds: int
    credits: int
    why: str


@dataclass
class LeaderScheduler:
    my_pnn: int
    started_at: float
    settings: SchedulerSettings = field(default_factory=SchedulerSettings)
    leading: bool = False
    need_recovery: bool = False
    need_takeover: bool = False
    requests: list[tuple[int, int]] = field(default_factory=list)
    orphan_requests: list[tuple[int, int]] = field(default_factory=list)
    force_rebalance: set[int] = field(default_factory=set)
    takeover_disabled_until: float = 0.0
    recovery_disabled_until: float = 0.0
    retry_delay: float = 0.0
    ban_credits: dict[int, tuple[int, float]] = field(default_factory=dict)

    # -- inputs ----------------------------------------------------------------------------------
    def request(self, *, recovery: bool = False, takeover: bool = False,
                reply_to: tuple[int, int] | None = None) -> None:
        self.need_recovery |= recovery
        self.need_takeover |= takeover
        if reply_to is not None and reply_to[1] != 0:
            self.requests.append(reply_to)

    def takeover_requested(self, pnn: int, srvid: int, leader: int) -> bool:
        """A node asked for a takeover run (Srvid.TAKEOVER_RUN). True if a run is now due."""
        if self.leading:
            self.request(takeover=True, reply_to=(pnn, srvid))
            return True
        if leader == UNKNOWN_PNN:
            self.orphan_requests.append((pnn, srvid))
        return False

    def rebalance(self, pnn: int) -> bool:
        """Srvid.REBALANCE_NODE: move IPs onto `pnn` at the next run. True if a run is due."""
        if not self.leading:
            return False
        self.force_rebalance.add(pnn)
        self.request(takeover=True)
        return True

    def leader_changed(self, old: int, new: int) -> None:
        self.leading = new == self.my_pnn
        if new == self.my_pnn:
            self.requests += [r for r in self.orphan_requests if r[1] != 0]
            self.orphan_requests.clear()
        elif new != UNKNOWN_PNN:
            self.orphan_requests.clear()
        if old == self.my_pnn and new != self.my_pnn:
            self.requests.clear()
            self.force_rebalance.clear()

    def disable_takeovers(self, now: float, seconds: float) -> None:
        self.takeover_disabled_until = now + seconds if seconds else 0.0

    def disable_recoveries(self, now: float, seconds: float) -> None:
        self.recovery_disabled_until = now + seconds if seconds else 0.0

    # -- the next job ----------------------------------------------------------------------------
    def next_job(self, now: float, nodemap: NodeMap, connected_at: dict[int, float],
                 ips_hosted: bool) -> Job:
        if not self.leading:
            self.need_recovery = self.need_takeover = False
            return Job()
        recovery = False
        if self.need_recovery and now >= self.recovery_disabled_until:
            self.need_recovery = False
            recovery = True
        if not self.need_takeover:
            return Job(recovery)
        if now < self.takeover_disabled_until:
            wait = self.takeover_disabled_until - now
            return Job(recovery, wake_at=self.takeover_disabled_until,
                       notes=(f"Not running takeover run - disabled for {wait:.1f} more seconds",))
        starting = [] if ips_hosted else nodes_still_starting(now, self.started_at, nodemap, connected_at)
        if starting:
            return Job(recovery, wake_at=now + DEFERRED_RECHECK,
                       notes=(f"Takeover run deferred: node(s) {starting} are still starting",))
        self.need_takeover = False
        job = TakeoverJob(tuple(self.requests), tuple(sorted(self.force_rebalance)))
        self.requests = []
        self.force_rebalance.clear()
        return Job(recovery, job)

    def finished(self, ok: bool, membership_changed: bool) -> float | None:
        """A job ended. None when nothing more is due; else seconds to wait before both a
        recovery and a takeover run are tried again (0: at once)."""
        if ok:
            self.retry_delay = 0.0
            self.ban_credits.clear()
            return None
        if not self.leading:
            return None
        if membership_changed:
            delay = 0.0
        else:
            self.retry_delay = min(RETRY_MAX, self.retry_delay * 2) if self.retry_delay else RETRY_FIRST
            delay = self.retry_delay
        self.need_recovery = self.need_takeover = True
        return delay

    def blame(self, pnn: int, why: str, now: float, node_count: int,
              credits: int = 1) -> Ban | None:
        """`pnn` failed a control of a run (`credits`: 1), or was the culprit of a failed
        database recovery (the shell gives node_count, as CTDB's banning message does); a node
        that is gone is not to blame: the shell does not call this for it. Returns a ban once
        it collected 2 × node_count credits."""
        count, since = self.ban_credits.get(pnn, (0, now))
        if now - since > self.settings.grace_period:
            count, since = 0, now
        count += credits
        self.ban_credits[pnn] = (count, since)
        if count < 2 * node_count or not self.settings.enable_bans:
            return None
        del self.ban_credits[pnn]
        return Ban(pnn, self.settings.ban_period, count, why)


def nodes_still_starting(now: float, started_at: float, nodemap: NodeMap,
                         connected_at: dict[int, float]) -> list[int]:
    """At a cluster's first start no IP is hosted yet and nodes turn healthy a few hundred
    milliseconds apart: allocating at once would give every IP to the first healthy node and
    then move them (resetting connections) as the others arrive. So while no IP is hosted and
    this daemon started moments ago, nodes of the nodes file that are not connected yet, or
    still unhealthy, are waited for (each at most STARTUP_SETTLE). (Real ctdbd brings a fresh
    cluster's IPs up together after ~15-20 s.)"""
    if now - started_at >= 2 * STARTUP_SETTLE:
        return []
    starting = []
    connected = set(nodemap.connected_pnns())
    for node in nodemap.nodes:
        if node.deleted:
            continue
        if node.pnn not in connected:
            if now - started_at < STARTUP_SETTLE:
                starting.append(node.pnn)          # not even connected yet
            continue
        seen = max(started_at, connected_at.get(node.pnn, started_at))
        if node.flags & NodeFlag.UNHEALTHY and now - seen < STARTUP_SETTLE:
            starting.append(node.pnn)
    return starting
