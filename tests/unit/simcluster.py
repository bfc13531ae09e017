"""A simulated pyctdbd cluster: the daemon's real cores (NodeCore, LeaderScheduler, the recovery
and takeover planners, the public-IP table) on a fake network with a fake clock. No processes,
no sockets: a minute of cluster time runs in milliseconds.

What is modelled, and how it maps to the daemon's shell (daemon/server/):

* the network delivers each message after `delay` seconds unless the link between the two
  nodes is cut (partition) or a node is powered off; every delivered message is also traffic
  for the receiver's failure detector, as every frame is in the daemon;
* a connection pair per two nodes: `DropPeer` tears it down (the other side hears of it only
  if the link works, as a RST would reach it); both sides re-dial every second, and a side
  that still thinks the pair is up hears nothing (the real transport replaces the inbound
  connection without a "peer down");
* the cluster lock is one owner variable; a powered-off holder loses it at once, as an fcntl
  lock does (set `lock_lease` to model a lock service whose lease has to run out first);
* the leader's jobs run instantly at `job_delay` after they are due; controls to a node the
  leader cannot reach fail; a node with `fail_takeover` set fails every TAKEOVER_IP it gets;
* a node's first recovery makes it RUNNING and healthy (its startup and monitor events pass);
* `freeze` stops a node's daemon for a while (a stall, or SIGSTOP): it neither ticks nor reads;
  what is sent to it waits in its kernel until the thaw, and its kernel still answers
  `ProbeKernel` (unless `kernel_answers` is off, as on a host without raw sockets);
* `paced` runs every node's detector in paced mode with the daemon's pacer thread modelled
  (server/heartbeat_pacer.py): on every heartbeat grid point each running node sends its beats
  and checks its watched peers; arrivals wait in the node until its core next steps, and a
  peer silent for the alarm silence makes the node tick at once (once per silence).

Every takeover plan a leader carries out is kept in `Sim.plans` for the tests to inspect.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from ctdblab.daemon.core.election import (
    BroadcastElection, BroadcastLeader, ElectionSettings, LeaderChanged, LockStatus, ReleaseLock,
    SendLeader, TakeLock,
)
from ctdblab.daemon.core.membership import DetectorSettings, ProbeKernel, SendHeartbeat, SendKeepalive, SendWatch
from ctdblab.daemon.core.node import (
    DeathReport, DropAllIPs, DropPeer, ElectionVote, EnterRecoveryMode, HeartbeatMessage, Heartbeats, KernelAnswers,
    LeaderAnnounced, LeaderDroppedMe, LeaderElsewhere, LeaderWork, LockAnswer, Log, NodeCore, NodeSettings,
    PeerConnected, PeerDisconnected, PeerState, ProbePeer, ReportDeath, SendState, SetBan, SetHealth,
    SetRunstate, Start, TellDropped, Tick, Traffic,
)
from ctdblab.daemon.core.nodes import NodeMap
from ctdblab.daemon.core.publicips import PublicIPs
from ctdblab.daemon.core.recovery import plan_recovery
from ctdblab.daemon.core.scheduler import LeaderScheduler, SchedulerSettings
from ctdblab.daemon.core.takeover import IPReport, TakeoverPlan, nodes_to_ask_available, plan_takeover_run
from ctdblab.daemon.protocol.constants import UNKNOWN_PNN, Runstate
from ctdblab.daemon.server.heartbeat_pacer import look_interval

RECONNECT = 1.0


@dataclass(frozen=True)
class _PacedBeat:
    """A heartbeat the receiver's pacer thread reads (paced mode)."""

    src: int
    at: float


@dataclass(frozen=True)
class _AskLeader:
    """The answer of `peer` to PYCTDB_LEADER, read when it arrives."""

    peer: int


@dataclass
class SimNode:
    pnn: int
    core: NodeCore
    scheduler: LeaderScheduler
    public: PublicIPs
    generation: int = 0
    fail_takeover: bool = False
    log: list[tuple[float, int, str]] = field(default_factory=list)
    job_due: float | None = None
    arrivals: list[tuple[int, float]] = field(default_factory=list)   # paced: read, not yet fed
    heard: dict[int, float] = field(default_factory=dict)             # paced: the pacer's view
    alarmed: set[int] = field(default_factory=set)

    @property
    def leader(self) -> int:
        return self.core.leader

    def held(self) -> list[str]:
        return sorted(v.ip for v in self.public.held())


class Sim:
    def __init__(self, n: int, *, lock: bool = True, ips_per_node: int = 2, delay: float = 0.001,
                 heartbeat: float = 0.1, dead_timeout: float = 0.4, drop_all_ips_after: float = 5.0,
                 no_ip_failback: bool = False, enable_bans: bool = True, lock_lease: float = 0.0,
                 job_delay: float = 0.01, seed: int = 1, kernel_answers: bool = True,
                 paced: bool = False) -> None:
        self.n = n
        self.paced = paced
        self.heartbeat = heartbeat
        self._next_beat = heartbeat
        self.kernel_answers = kernel_answers
        self.frozen: dict[int, float] = {}                  # pnn -> when its daemon runs again
        self.now = 0.0
        self.delay = delay
        self.lock_enabled = lock
        self.lock_owner: int | None = None
        self.lock_lease = lock_lease
        self.lock_free_at = 0.0
        self.no_ip_failback = no_ip_failback
        self.enable_bans = enable_bans
        self.job_delay = job_delay
        self.rng = random.Random(seed)
        self.addresses = [f"198.18.0.{p + 1}" for p in range(n)]
        self.ips = [f"198.19.8.{i + 1}" for i in range(n * ips_per_node)]
        self.settings = NodeSettings(
            DetectorSettings(heartbeat_interval=heartbeat, dead_timeout=dead_timeout,
                             keepalive_interval=5.0, keepalive_limit=5,
                             look_interval=look_interval(heartbeat) if paced else 0.0),
            ElectionSettings(lock_enabled=lock, leader_timeout=5.0, election_timeout=0.3,
                             lock_retry=0.3, startup_grace=max(0.5, 2 * heartbeat + 0.3)),
            drop_all_ips_after=drop_all_ips_after)
        self.nodes: dict[int, SimNode] = {}
        self.powered: set[int] = set()
        self.pairs: set[frozenset[int]] = set()           # connection pairs that are up
        self.groups: list[set[int]] | None = None          # a partition, or None
        self.dropped: set[tuple[int, int]] = set()         # one-way links that drop everything
        self.plans: list[tuple[float, int, TakeoverPlan]] = []
        self._queue: list[tuple[float, int, int, Any]] = []
        self._seq = itertools.count()
        self._next_dial = RECONNECT
        for pnn in range(n):
            self.power_on(pnn)

    # -- the cluster -------------------------------------------------------------------------------
    def power_on(self, pnn: int) -> None:
        nodemap = NodeMap.from_addresses(list(self.addresses), pnn)
        core = NodeCore(pnn, nodemap, self.settings, self.now, start_wall=1000.0 + self.now + pnn * 0.001)
        table = PublicIPs.from_config(pnn, [(ip, 24, ["eth1"]) for ip in self.ips])
        node = SimNode(pnn, core, LeaderScheduler(pnn, self.now, SchedulerSettings(
            enable_bans=self.enable_bans, ban_period=300, grace_period=120.0)), table)
        self.nodes[pnn] = node
        self.powered.add(pnn)
        self.step(pnn, SetRunstate(Runstate.FIRST_RECOVERY))
        self.step(pnn, Start())

    def power_off(self, pnn: int) -> None:
        """A hard reset: the node is gone at once; nothing it had in flight arrives."""
        self.powered.discard(pnn)
        self.pairs = {p for p in self.pairs if pnn not in p}
        self._queue = [q for q in self._queue if q[2] != pnn and q[3][0] != pnn]
        heapq.heapify(self._queue)
        if self.lock_owner == pnn:
            self.lock_owner = None
            self.lock_free_at = self.now + self.lock_lease

    def freeze(self, pnn: int, seconds: float) -> None:
        self.frozen[pnn] = self.now + seconds

    def partition(self, *groups: set[int]) -> None:
        self.groups = [set(g) for g in groups]

    def heal(self) -> None:
        self.groups = None

    def link_up(self, a: int, b: int) -> bool:
        if a not in self.powered or b not in self.powered or (a, b) in self.dropped:
            return False
        if self.groups is None:
            return True
        return any(a in g and b in g for g in self.groups)

    # -- time --------------------------------------------------------------------------------------
    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            when, what = self._next_event()
            if when > end:
                self.now = end
                return
            self.now = max(self.now, when)
            what()

    def run_until(self, condition, timeout: float, step: float = 0.01) -> float:
        """Run until `condition()` holds; returns the time it took. AssertionError on timeout."""
        start = self.now
        while not condition():
            if self.now - start > timeout:
                raise AssertionError(f"not reached within {timeout} s of simulated time")
            self.run(step)
        return self.now - start

    def _next_event(self):
        candidates = []
        if self._queue:
            when, _, dst, item = self._queue[0]
            candidates.append((when, self._deliver))
        candidates.append((self._next_dial, self._dial))
        if self.paced:
            candidates.append((self._next_beat, self._pacer_beat))
        for pnn in sorted(self.powered):
            node = self.nodes[pnn]
            if pnn in self.frozen:
                candidates.append((self.frozen[pnn], lambda p=pnn: self.frozen.pop(p)))
                continue
            candidates.append((node.core.next_deadline(), lambda p=pnn: self.step(p, Tick())))
            if node.job_due is not None:
                candidates.append((node.job_due, lambda p=pnn: self._leader_job(p)))
        return min(candidates, key=lambda c: c[0])

    def _dial(self) -> None:
        self._next_dial = self.now + RECONNECT
        for a, b in itertools.combinations(sorted(self.powered), 2):
            pair = frozenset((a, b))
            if pair in self.pairs or not self.link_up(a, b) or not self.link_up(b, a):
                continue
            self.pairs.add(pair)
            for me, peer in ((a, b), (b, a)):
                if not self.nodes[me].core.nodemap.nodes[peer].connected:
                    self.step(me, PeerConnected(peer))

    def _pacer_beat(self) -> None:
        """Every node's pacer thread on one heartbeat grid point: send, then raise alarms."""
        self._next_beat = round(self._next_beat + self.heartbeat, 9)
        running = [p for p in sorted(self.powered) if p not in self.frozen or self.now >= self.frozen[p]]
        for pnn in running:
            self.frozen.pop(pnn, None)
            for target in self.nodes[pnn].core.detector.heartbeat_targets():
                self.send(pnn, target, _PacedBeat(pnn, self.now + self.delay), traffic=False)
        alarm_after = self.settings.detector.alarm_silence
        for pnn in running:
            node = self.nodes[pnn]
            for src, at in node.arrivals:
                if at > node.heard.get(src, float("-inf")):
                    node.heard[src] = at
                    node.alarmed.discard(src)
            silent = [p for p in node.core.detector.watched_peers()
                      if p in node.heard and self.now - node.heard[p] >= alarm_after and p not in node.alarmed]
            if silent:
                node.alarmed.update(silent)
                self.step(pnn, Tick(alarm=True))

    # -- messages ----------------------------------------------------------------------------------
    def send(self, src: int, dst: int, event: Any, traffic: bool = True, after: float = 0.0) -> None:
        if dst == src or frozenset((src, dst)) not in self.pairs:
            return
        heapq.heappush(self._queue, (self.now + self.delay + after, next(self._seq), dst,
                                     (src, event, traffic)))

    def _deliver(self) -> None:
        when, _, dst, (src, event, traffic) = heapq.heappop(self._queue)
        if dst in self.frozen and self.now >= self.frozen[dst]:
            del self.frozen[dst]
        if dst in self.frozen:                       # waits in the kernel until the thaw
            heapq.heappush(self._queue, (self.frozen[dst], next(self._seq), dst, (src, event, traffic)))
            return
        if traffic is None:                          # kernel to kernel: no connection needed
            if self.link_up(src, dst):
                self.step(dst, event)
            return
        if not self.link_up(src, dst) or frozenset((src, dst)) not in self.pairs:
            return
        if traffic:
            self.nodes[dst].core.step(Traffic(src), self.now)
        if event is not None:
            self.step(dst, event)

    def step(self, pnn: int, event: Any) -> None:
        if pnn not in self.powered:
            return
        node = self.nodes[pnn]
        if isinstance(event, _PacedBeat):            # read by the pacer, fed at the next step
            node.arrivals.append((event.src, event.at))
            return
        if node.arrivals:
            arrivals, node.arrivals = node.arrivals, []
            for src, at in arrivals:
                if at > node.heard.get(src, float("-inf")):
                    node.heard[src] = at
                    node.alarmed.discard(src)
            node.core.step(Heartbeats(tuple(arrivals)), self.now)
        if isinstance(event, _AskLeader):            # a peer's PYCTDB_LEADER answer arrives
            leader = self.nodes[event.peer].core.leader_followed(self.now)
            if leader == UNKNOWN_PNN or node.core.leader != UNKNOWN_PNN:
                return
            event = LeaderElsewhere(leader, event.peer)
        for action in node.core.step(event, self.now):
            self._act(node, action)

    def _peers(self, node: SimNode) -> list[int]:
        return sorted(node.core.connected_peers())

    def _act(self, node: SimNode, a: Any) -> None:
        src = node.pnn
        if isinstance(a, Log):
            node.log.append((self.now, a.level, a.text))
        elif isinstance(a, SendHeartbeat):
            self.send(src, a.pnn, Heartbeats(((src, self.now + self.delay),)))
        elif isinstance(a, ProbeKernel):
            # The echo and its answer, from the peer's kernel: answered while the peer's host is
            # up and the links both ways work, whatever its daemon is doing.
            if self.kernel_answers and self.link_up(src, a.pnn) and self.link_up(a.pnn, src):
                at = self.now + 2 * self.delay
                heapq.heappush(self._queue, (at, next(self._seq), src,
                                             (a.pnn, KernelAnswers(((a.pnn, at),)), None)))
        elif isinstance(a, SendWatch):
            self.send(src, a.pnn, HeartbeatMessage(src, 1 if a.watch else 0))
        elif isinstance(a, SendKeepalive):
            self.send(src, a.pnn, None)
        elif isinstance(a, DropPeer):
            pair = frozenset((src, a.pnn))
            if pair in self.pairs:
                self.pairs.discard(pair)
                if self.link_up(src, a.pnn):        # the RST reaches it
                    self.step(a.pnn, PeerDisconnected(src, "connection reset"))
        elif isinstance(a, ReportDeath):
            for p in self._peers(node):
                self.send(src, p, DeathReport(a.dead, src, src))
        elif isinstance(a, TellDropped):
            self.send(src, a.pnn, LeaderDroppedMe(src, a.pnn, a.leader))
        elif isinstance(a, ProbePeer):
            # The control and its reply: the reply is traffic if the peer is up and reachable.
            if self.link_up(src, a.pnn):            # a frozen daemon answers once it thaws
                wait = max(0.0, self.frozen.get(a.pnn, self.now) - self.now)
                self.send(a.pnn, src, None, after=self.delay + wait)
        elif isinstance(a, SendState):
            me = node.core.nodemap.me
            state = PeerState(src, src, me.flags, me.runstate, node.core.capabilities)
            for p in (self._peers(node) if a.dest not in self.nodes else [a.dest]):
                self.send(src, p, state)
        elif isinstance(a, BroadcastLeader):
            for p in self._peers(node):
                self.send(src, p, LeaderAnnounced(src, a.pnn))
        elif isinstance(a, SendLeader):
            self.send(src, a.to, LeaderAnnounced(src, a.pnn))
        elif isinstance(a, BroadcastElection):
            for p in self._peers(node):
                self.send(src, p, ElectionVote(src, a.message))
        elif isinstance(a, TakeLock):
            self._take_lock(src)
        elif isinstance(a, ReleaseLock):
            if self.lock_owner == src:
                self.lock_owner = None
        elif isinstance(a, LeaderChanged):
            node.scheduler.leader_changed(a.old, a.new)
        elif isinstance(a, LeaderWork):
            node.scheduler.request(recovery=a.recovery, takeover=a.takeover)
            self._job_soon(node)
        elif isinstance(a, DropAllIPs):
            for vnn in node.public.held():
                node.public.unassign(vnn, UNKNOWN_PNN)
        elif isinstance(a, EnterRecoveryMode):
            node.generation = 0

    def _take_lock(self, pnn: int) -> None:
        if self.lock_owner is None and self.now >= self.lock_free_at:
            self.lock_owner = pnn
        status = LockStatus.HELD if self.lock_owner == pnn else LockStatus.CONTENTION
        heapq.heappush(self._queue, (self.now + 0.002, next(self._seq), pnn, (pnn, LockAnswer(status), False)))
        self.pairs.add(frozenset((pnn, pnn)))        # lets the answer "arrive" at pnn itself
        if status is LockStatus.CONTENTION:
            # The shell then asks the peers it reaches which leader they follow (PYCTDB_LEADER;
            # the first that names one is reported): their answer as of a round trip later.
            for p in sorted(self._peers(self.nodes[pnn])):
                if self.link_up(pnn, p) and self.link_up(p, pnn):
                    self.send(p, pnn, _AskLeader(p), traffic=False, after=self.delay + 0.002)

    # -- the leader's jobs -------------------------------------------------------------------------
    def _job_soon(self, node: SimNode, delay: float | None = None) -> None:
        due = self.now + (self.job_delay if delay is None else delay)
        if node.job_due is None or due < node.job_due:
            node.job_due = due

    def _reachable(self, leader: SimNode, pnn: int) -> bool:
        return pnn == leader.pnn or (frozenset((leader.pnn, pnn)) in self.pairs and self.link_up(leader.pnn, pnn)
                                     and self.link_up(pnn, leader.pnn))

    def _leader_job(self, pnn: int) -> None:
        node = self.nodes[pnn]
        node.job_due = None
        job = node.scheduler.next_job(self.now, node.core.nodemap, node.core.connected_at,
                                      any(v.pnn != UNKNOWN_PNN for v in node.public))
        if job.wake_at is not None:
            node.job_due = job.wake_at
        if job.empty:
            return
        before = node.core.nodemap.connected_pnns()
        ok = True
        if job.recovery:
            ok &= self._recover(node)
        if job.takeover is not None:
            ok &= self._takeover(node, job.takeover.force_rebalance)
        retry = node.scheduler.finished(ok, node.core.nodemap.connected_pnns() != before)
        if retry is not None:
            self._job_soon(node, retry)

    def _recover(self, leader: SimNode) -> bool:
        plan = plan_recovery(leader.core.nodemap.active_pnns(), leader.core.lmaster_pnns(), leader.pnn,
                             self.rng.randint(2, 0xFFFFFFFE))
        if not all(self._reachable(leader, p) for p in plan.targets):
            return False
        for p in plan.targets:
            target = self.nodes[p]
            target.generation = plan.generation
            if target.core.nodemap.me.runstate == Runstate.FIRST_RECOVERY:
                self.step(p, SetRunstate(Runstate.STARTUP))
                self.step(p, SetRunstate(Runstate.RUNNING))
                self.step(p, SetHealth(True))
        return True

    def _takeover(self, leader: SimNode, force: tuple[int, ...]) -> bool:
        flags = [n.flags for n in leader.core.nodemap.nodes]
        connected = leader.core.nodemap.connected_pnns()
        if not all(self._reachable(leader, p) for p in connected):
            return False
        known = {p: IPReport(p, {v.ip: v.pnn for v in self.nodes[p].public}) for p in connected}
        available = {}
        for p in nodes_to_ask_available(flags, known):
            target = self.nodes[p]
            can_host = target.core.nodemap.can_host_ips()
            available[p] = [v.ip for v in target.public if target.public.available(v, can_host)]
        plan = plan_takeover_run(flags, known, available, algorithm=2, no_ip_failback=self.no_ip_failback,
                                 no_ip_takeover=False, force_rebalance_nodes=force)
        self.plans.append((self.now, leader.pnn, plan))
        if plan.skipped_reason:
            return True
        for r in plan.releases:
            target = self.nodes[r.pnn]
            vnn = target.public.find(r.ip)
            target.public.unassign(vnn, r.new_owner)
        ok = True
        for t in plan.takes:
            target = self.nodes[t.pnn]
            if target.fail_takeover:
                ok = False
                ban = leader.scheduler.blame(t.pnn, "TAKEOVER_IP failed", self.now, self.n)
                if ban is not None:
                    if ban.pnn == leader.pnn:
                        self.step(leader.pnn, SetBan(ban.seconds))
                    elif self._reachable(leader, ban.pnn):
                        self.step(ban.pnn, SetBan(ban.seconds))
                continue
            vnn = target.public.find(t.ip)
            if vnn.iface is None:
                target.public.assign(vnn, "eth1")
            vnn.pnn = t.pnn
        return ok

    # -- what the tests look at --------------------------------------------------------------------
    def leaders(self, among: set[int] | None = None) -> set[int]:
        """The leaders the powered nodes (or `among`) believe in."""
        return {self.nodes[p].leader for p in (among or self.powered) if p in self.powered}

    def hosts(self) -> dict[str, list[int]]:
        """Public IP -> the powered nodes that hold it."""
        out: dict[str, list[int]] = {ip: [] for ip in self.ips}
        for p in sorted(self.powered):
            for ip in self.nodes[p].held():
                out[ip].append(p)
        return out

    def settled(self, among: set[int] | None = None) -> bool:
        """One agreed leader, and every public IP held by exactly one node of `among`."""
        among = among or set(self.powered)
        leaders = self.leaders(among)
        if len(leaders) != 1 or UNKNOWN_PNN in leaders or leaders.pop() not in among:
            return False
        return all(len([p for p in h if p in among]) == 1 for h in self.hosts().values())

    def logged(self, pnn: int, text: str) -> list[float]:
        return [t for t, _, line in self.nodes[pnn].log if text in line]
