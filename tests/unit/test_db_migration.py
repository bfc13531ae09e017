"""Volatile record migration (daemon/core/db/migration.py) on a simulated multi-node database.

The simulation is the shell of the core's contract, in miniature: every node has a dict as its
TDB file (key -> (LtdbHeader, data)), one chain lock per key shared by the daemon and the local
clients (granted in FIFO order, as the kernel's mutex and ctdbd's lock helper roughly do), and a
fake network that delivers every packet after `delay` plus random jitter, in order per link (TCP),
after a real encode/decode through the protocol codecs. The daemon side of a node takes the
key's lock, reads the record, steps the core and carries out the actions; `Requeue` goes back on
the event queue. Clients behave like smbd's fetch_locked loop: lock, read the header, use the
record if dmaster == this node, else unlock, ask the daemon to migrate (NULL_FUNC +
IMMEDIATE_MIGRATION) and try again when the reply comes.

Every store is checked as it happens: at most one node ever holds a copy that names itself
dmaster, a record landing on a node carries an rsn above every copy in the cluster, and a daemon
store on the dmaster raises the rsn.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import struct
from collections import defaultdict, deque
from dataclasses import replace

import pytest

from ctdblab.daemon.core.db.callstats import MAX_COUNT_BUCKETS, DbCallStatistics, hop_bucket
from ctdblab.daemon.core.db.ltdbrules import fetch as ltdb_fetch
from ctdblab.daemon.core.db.ltdbrules import lmaster_of, store as ltdb_store
from ctdblab.daemon.core.db.migration import (
    ClientGone, CopiesGathered, DbAttached, DbDetached, DbThawed, DeleteRecord, ForceRecovery,
    GatherCopies, LocalCall, Log, MigrationCore, MigrationSettings, PeerPacket, RecoveryMode, Reissue,
    ReplyToClient, Requeue, ScheduleForDeletion, SendPacket, SetBanned, StoreRecord, Tick,
    UnscheduleDeletion, VnnMapChanged,
)
from ctdblab.daemon.core.db.partial_recovery import Copy
from ctdblab.daemon.protocol.constants import CallFlag, CallFunc, RecordFlag
from ctdblab.daemon.protocol.ltdb import db_id_of, jenkins_hash
from ctdblab.daemon.protocol.packets import (
    ReplyCall, ReplyDmaster, ReplyError, ReqCall, ReqDmaster, decode_packet, encode_packet,
)
from ctdblab.daemon.protocol.types import LtdbHeader, VnnMap

DB = db_id_of("locking.tdb")
MIGRATE = int(CallFlag.IMMEDIATE_MIGRATION)
NULL, FETCH, FETCH_HDR = (int(CallFunc.NULL_FUNC), int(CallFunc.FETCH_FUNC),
                          int(CallFunc.FETCH_WITH_HEADER_FUNC))
COUNTER = struct.Struct("<Q")


def key_with_lmaster(lmaster: int, n: int, prefix: bytes = b"key") -> bytes:
    for i in itertools.count():
        key = prefix + str(i).encode()
        if jenkins_hash(key) % n == lmaster:
            return key


class Violation(AssertionError):
    pass


class Node:
    def __init__(self, pnn: int, core: MigrationCore) -> None:
        self.pnn = pnn
        self.core = core
        self.tdb: dict[bytes, tuple[LtdbHeader, bytes]] = {}
        self.owner: dict[bytes, object] = {}
        self.waiting: dict[bytes, deque] = defaultdict(deque)
        self.logs: list[Log] = []
        self.forced: list[ForceRecovery] = []


class Sim:
    def __init__(self, n: int, *, seed: int = 1, delay: float = 0.0005, jitter: float = 0.0005,
                 generation: int = 7, grace: float | None = None, attach=None) -> None:
        self.n = n
        self.now = 0.0
        self.rng = random.Random(seed)
        self.delay, self.jitter = delay, jitter
        self.heap: list = []
        self.seq = itertools.count()
        self.vnnmap = VnnMap(generation, list(range(n)))
        settings = [MigrationSettings(pnn=p) if grace is None else MigrationSettings(pnn=p, local_grace=grace)
                    for p in range(n)]
        self.nodes = [Node(p, MigrationCore(settings[p], self.vnnmap)) for p in range(n)]
        for node in self.nodes:
            if attach is None or node.pnn in attach:
                node.core.step(DbAttached(DB, "locking.tdb"))
        self.link_free: dict[tuple[int, int], float] = {}
        self.held_links: set[tuple[int, int]] = set()
        self.held: list[tuple[int, int, PeerPacket]] = []
        self.drop = lambda src, dest, pkt: False
        self.wire: list[tuple[float, int, int, PeerPacket]] = []     # (time, from, to, packet)
        self.clients: dict[object, object] = {}
        self.replies: dict[object, list] = defaultdict(list)
        self.landings: list[tuple[float, int, bytes, int]] = []       # (time, node, key, rsn)
        self.reqids = itertools.count(1000)
        self.dead: set[int] = set()      # lost nodes: their queued lock waiters never run

    # -- event queue ---------------------------------------------------------------------------
    def at(self, when: float, fn) -> None:
        heapq.heappush(self.heap, (when, next(self.seq), fn))

    def run(self, until: float | None = None, max_events: int = 500_000) -> None:
        for _ in range(max_events):
            if not self.heap or (until is not None and self.heap[0][0] > until):
                if until is not None:
                    self.now = max(self.now, until)
                return
            when, _, fn = heapq.heappop(self.heap)
            self.now = max(self.now, when)
            fn()
        raise AssertionError("simulation did not settle")

    # -- network -------------------------------------------------------------------------------
    def send(self, src: int, act: SendPacket) -> None:
        assert act.dest != src, "the core never sends to itself"
        frame = encode_packet(act.body, destnode=act.dest, srcnode=act.srcnode, reqid=act.reqid,
                              generation=act.generation)
        packet = decode_packet(frame)
        pkt = PeerPacket(packet.header.srcnode, packet.header.reqid, packet.header.generation, packet.body)
        self.wire.append((self.now, src, act.dest, pkt))
        if self.drop(src, act.dest, pkt):
            return
        if (src, act.dest) in self.held_links:
            self.held.append((src, act.dest, pkt))
            return
        self.transmit(src, act.dest, pkt)

    def transmit(self, src: int, dest: int, pkt: PeerPacket) -> None:
        arrival = max(self.now + self.delay + self.rng.uniform(0, self.jitter),
                      self.link_free.get((src, dest), 0.0))
        self.link_free[(src, dest)] = arrival
        self.at(arrival, lambda: self.input(dest, pkt))

    def hold_link(self, src: int, dest: int) -> None:
        self.held_links.add((src, dest))

    def release_link(self, src: int, dest: int) -> None:
        self.held_links.discard((src, dest))
        for s, d, pkt in [h for h in self.held if (h[0], h[1]) == (src, dest)]:
            self.transmit(s, d, pkt)
        self.held = [h for h in self.held if (h[0], h[1]) != (src, dest)]

    # -- chain locks ---------------------------------------------------------------------------
    def acquire(self, p: int, key: bytes, who, fn) -> None:
        node = self.nodes[p]
        if p in self.dead:
            return                      # a lost node runs nothing more
        if key in node.owner:
            node.waiting[key].append((who, fn))
            return
        node.owner[key] = who
        fn()

    def release(self, p: int, key: bytes) -> None:
        node = self.nodes[p]
        del node.owner[key]
        if node.waiting[key] and p not in self.dead:
            who, fn = node.waiting[key].popleft()
            node.owner[key] = who
            self.at(self.now, fn)

    # -- the daemon's shell --------------------------------------------------------------------
    def input(self, p: int, event) -> None:
        node = self.nodes[p]
        target = node.core.lock_target(event)
        if target is None:
            self.apply(p, node.core.step(event, None, self.now), None)
            return
        key = target[1]

        def locked():
            actions = node.core.step(event, node.tdb.get(key), self.now)
            self.apply(p, actions, key)
            self.release(p, key)
        self.acquire(p, key, "daemon", locked)

    def apply(self, p: int, actions, key: bytes | None) -> None:
        node = self.nodes[p]
        for a in actions:
            if isinstance(a, StoreRecord):
                assert a.key == key, "stores only touch the locked key"
                self.check_store(p, a)
                node.tdb[a.key] = (a.header, a.data)
            elif isinstance(a, DeleteRecord):
                assert a.key == key
                node.tdb.pop(a.key, None)
            elif isinstance(a, (ScheduleForDeletion, UnscheduleDeletion)):
                pass
            elif isinstance(a, SendPacket):
                self.send(p, a)
            elif isinstance(a, ReplyToClient):
                self.replies[a.client].append(a.body)
                client = self.clients.get(a.client)
                if client is not None:
                    self.at(self.now, lambda c=client, b=a.body: c.on_reply(b))
            elif isinstance(a, Requeue):
                self.at(self.now + a.delay, lambda e=a.event: self.input(p, e))
            elif isinstance(a, GatherCopies):
                self.at(self.now + a.delay, lambda a=a: self.gather(p, a.db_id, a.key))
            elif isinstance(a, ForceRecovery):
                node.forced.append(a)
            elif isinstance(a, Log):
                node.logs.append(a)
            else:
                raise AssertionError(f"unexpected action {a!r}")

    def gather(self, p: int, db_id: int, key: bytes) -> None:
        """The shell's gather: each live node reads its copy under the key's chain lock and
        answers over the same link as its packets (so a REQ_DMASTER it sent before answering
        arrives first); a node that does not answer makes the gather incomplete."""
        peers = [q for q in range(self.n) if q != p and not self.drop(p, q, None)]    # the live ones
        answers: dict[int, object] = {}

        def answered(q, copy):
            answers[q] = copy
            if len(answers) == len(peers):
                self.input(p, CopiesGathered(db_id, key, tuple(c for c in answers.values() if c)))

        if not peers:
            self.at(self.now, lambda: self.input(p, CopiesGathered(db_id, key, ())))
        for q in peers:
            def serve(q=q):
                def read():
                    found = self.nodes[q].tdb.get(key)
                    self.release(q, key)
                    arrival = max(self.now + self.delay, self.link_free.get((q, p), 0.0))
                    self.link_free[(q, p)] = arrival
                    copy = None if found is None else Copy(q, found[0], found[1])
                    self.at(arrival, lambda: answered(q, copy))
                self.acquire(q, key, "gather", read)
            arrival = max(self.now + self.delay, self.link_free.get((p, q), 0.0))
            self.link_free[(p, q)] = arrival
            self.at(arrival, serve)

    def check_store(self, p: int, a: StoreRecord) -> None:
        prev = self.nodes[p].tdb.get(a.key)
        copies = [n.tdb[a.key] for n in self.nodes if a.key in n.tdb]
        if a.header.dmaster == p:
            if prev is None or prev[0].dmaster != p:
                top = max((h.rsn for h, _ in copies), default=-1)
                if a.header.rsn <= top:
                    raise Violation(f"node {p}: record landed with rsn {a.header.rsn}, cluster has {top}")
                self.landings.append((self.now, p, a.key, a.header.rsn))
            elif a.header.rsn <= prev[0].rsn:
                raise Violation(f"node {p}: dmaster store without rsn increase "
                                f"({prev[0].rsn} -> {a.header.rsn})")
            others = [n.pnn for n in self.nodes
                      if n.pnn != p and a.key in n.tdb and n.tdb[a.key][0].dmaster == n.pnn]
            if others:
                raise Violation(f"node {p} becomes dmaster while {others} still are")

    # -- helpers for tests ---------------------------------------------------------------------
    def call(self, p: int, key: bytes, callid: int = NULL, flags: int = MIGRATE, client=None,
             db_id: int = DB) -> object:
        client = client if client is not None else ("probe", p, next(self.reqids))
        self.input(p, LocalCall(client, next(self.reqids), db_id, key, callid, flags))
        return client

    def seed(self, key: bytes, holder: int, data: bytes, *, rsn: int = 10, flags: int = 0) -> None:
        header = LtdbHeader(rsn=rsn, dmaster=holder, reserved1=0, flags=flags)
        self.nodes[holder].tdb[key] = (header, data)
        lmaster = lmaster_of(key, self.vnnmap.map)
        if lmaster != holder:
            self.nodes[lmaster].tdb[key] = (header, data)

    def dmasters(self, key: bytes) -> list[int]:
        return [n.pnn for n in self.nodes if key in n.tdb and n.tdb[key][0].dmaster == n.pnn]

    def packets(self, kind, src: int | None = None):
        return [(t, s, d, pkt) for t, s, d, pkt in self.wire
                if isinstance(pkt.body, kind) and (src is None or s == src)]

    def recover(self, leader: int, generation: int) -> None:
        """A recovery at one instant (no client holds a chain lock: the caller checks): for each
        key the copy with the highest rsn wins (on a tie, one whose holder names itself dmaster),
        every node gets it with dmaster = leader, then the new vnnmap."""
        assert not any(n.owner for n in self.nodes), "a recovery freezes the databases first"
        keys = {k for n in self.nodes for k in n.tdb}
        for key in keys:
            best = max(((n.tdb[key], n.pnn) for n in self.nodes if key in n.tdb),
                       key=lambda c: (c[0][0].rsn, c[0][0].dmaster == c[1]))[0]
            for n in self.nodes:
                n.tdb[key] = (replace(best[0], dmaster=leader), best[1])
        self.vnnmap = VnnMap(generation, list(range(self.n)))
        for n in self.nodes:
            self.apply(n.pnn, n.core.step(VnnMapChanged(self.vnnmap), None, self.now), None)


class FetchLockClient:
    """smbd's fetch_locked loop around one key; each use adds 1 to a u64 counter in the value."""

    def __init__(self, sim: Sim, pnn: int, cid: int, key: bytes, ops: int,
                 work: float = 0.0002, think: float = 0.0003, react: float = 0.00005,
                 write: bool = True) -> None:
        self.sim, self.pnn, self.key, self.ops, self.write = sim, pnn, key, ops, write
        self.work, self.think, self.react = work, think, react
        self.token = ("smbd", pnn, cid)
        self.done = 0
        self.migrations = 0
        self.errors: list = []
        self.waiting_since: float | None = None
        sim.clients[self.token] = self

    def start(self, when: float = 0.0) -> None:
        self.sim.at(when, self.attempt)

    def attempt(self) -> None:
        self.sim.acquire(self.pnn, self.key, self.token, self.locked)

    def locked(self) -> None:
        sim, node = self.sim, self.sim.nodes[self.pnn]
        record = node.tdb.get(self.key)
        if record is not None and record[0].dmaster == self.pnn:
            header, data = record
            if self.write:
                count = COUNTER.unpack(data)[0] if data else 0
                node.tdb[self.key] = (header, COUNTER.pack(count + 1))    # header unchanged
            self.done += 1

            def finish():
                sim.release(self.pnn, self.key)
                if self.done < self.ops:
                    sim.at(sim.now + self.think * (0.5 + sim.rng.random()), self.attempt)
            sim.at(sim.now + self.work, finish)
            return
        sim.release(self.pnn, self.key)
        self.migrations += 1
        self.waiting_since = sim.now
        sim.input(self.pnn, LocalCall(self.token, next(sim.reqids), DB, self.key, NULL, MIGRATE))

    def on_reply(self, body) -> None:
        self.waiting_since = None
        if isinstance(body, ReplyError):
            self.errors.append(body)
            return
        self.sim.at(self.sim.now + self.react, self.attempt)


def counter(sim: Sim, key: bytes) -> int:
    (holder,) = sim.dmasters(key)
    data = sim.nodes[holder].tdb[key][1]
    return COUNTER.unpack(data)[0]


def check_hop_bound(sim: Sim) -> int:
    """For every call (origin, reqid) that a dmaster served: its highest hop count is at most
    2 + 2 * (landings between its first send and the serving dmaster's REQ/REPLY_DMASTER).
    Returns the highest hop count seen."""
    sent: dict[tuple[int, int], list] = defaultdict(list)
    served: dict[tuple[int, int], float] = {}
    for t, _, dest, pkt in sim.wire:
        if isinstance(pkt.body, ReqCall):
            sent[(pkt.srcnode, pkt.reqid)].append((t, pkt.body.hopcount))
        elif isinstance(pkt.body, (ReqDmaster, ReplyDmaster)):
            # reqids are per origin: the new dmaster is the origin of the call being served
            origin = pkt.body.dmaster if isinstance(pkt.body, ReqDmaster) else dest
            if (origin, pkt.reqid) in sent:
                served.setdefault((origin, pkt.reqid), t)
    highest = 0
    for call, end in served.items():
        start = sent[call][0][0]
        moves = sum(1 for t, *_ in sim.landings if start <= t <= end)
        hops = max(h for _, h in sent[call])
        assert hops <= 2 + 2 * moves, (call, hops, moves)
        highest = max(highest, hops)
    return highest + 1


def all_idle(sim: Sim) -> bool:
    return all(len(n.core.flights) == 0 for n in sim.nodes)


# =============================================================================================
# Contention: smbd-like loops on several nodes
# =============================================================================================

@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("per_node,think", [(3, 0.0003), (1, 0.0), (1, 0.003)])
def test_contending_fetch_lock_loops_converge_with_one_dmaster(seed, per_node, think):
    n, ops = 4, 8
    sim = Sim(n, seed=seed)
    key = b"share-mode:" + str(seed).encode()
    clients = [FetchLockClient(sim, p, c, key, ops, think=think)
               for p in range(n) for c in range(per_node)]
    for i, c in enumerate(clients):
        c.start(sim.rng.uniform(0, 0.002))
    sim.run(until=1.0)            # it takes a few simulated milliseconds
    assert all(c.done == ops for c in clients), [(c.token, c.done) for c in clients]
    assert not any(c.errors for c in clients)
    assert all_idle(sim) and not sim.heap
    assert len(sim.dmasters(key)) == 1
    # The value travelled with every migration: no update was lost.
    assert counter(sim, key) == n * per_node * ops
    # Every landing carried a higher rsn than the one before it.
    rsns = [rsn for _, _, _, rsn in sim.landings]
    assert rsns == sorted(set(rsns)) and len(rsns) > n
    assert all(not node.forced for node in sim.nodes)
    # A call's hop count grows only while the record moves: at most 2 (stale first hop, the
    # lmaster) plus 2 for every landing during its chase (old holder -> lmaster -> new holder).
    assert check_hop_bound(sim) > 0


def test_contention_over_two_keys_and_generation_changes_keeps_every_update():
    n, ops = 3, 10
    sim = Sim(n, seed=11)
    keys = [key_with_lmaster(0, n, b"a"), key_with_lmaster(2, n, b"b")]
    clients = [FetchLockClient(sim, p, c, keys[c % 2], ops) for p in range(n) for c in range(2)]
    for c in clients:
        c.start(sim.rng.uniform(0, 0.001))
    generation = 7

    def maybe_recover():
        nonlocal generation
        if any(node.owner for node in sim.nodes):     # a client holds a chain lock: freeze waits
            sim.at(sim.now + 0.0001, maybe_recover)
            return
        generation += 1
        sim.recover(leader=generation % n, generation=generation)
    for t in (0.004, 0.011, 0.023):
        sim.at(t, maybe_recover)
    sim.run(until=60.0)
    assert generation == 10
    assert all(c.done == ops for c in clients), [(c.token, c.done) for c in clients]
    assert all_idle(sim)
    for key in keys:
        assert len(sim.dmasters(key)) == 1
        assert counter(sim, key) == n * ops
    assert sum(node.core.stats.reissued_calls for node in sim.nodes) > 0


# =============================================================================================
# Collapse, deferral, redirects
# =============================================================================================

def test_concurrent_local_requests_for_one_key_make_one_migration():
    sim = Sim(4, seed=3)
    key = key_with_lmaster(3, 4)
    sim.seed(key, holder=2, data=COUNTER.pack(0))
    clients = [FetchLockClient(sim, 0, c, key, ops=1) for c in range(5)]
    for c in clients:
        c.start(0.0)
    sim.run(until=1.0)
    assert [c.done for c in clients] == [1] * 5
    assert counter(sim, key) == 5 and sim.dmasters(key) == [0]
    calls_from_0 = [pkt for _, s, _, pkt in sim.packets(ReqCall, src=0) if pkt.srcnode == 0]
    assert len(calls_from_0) == 1
    assert [p for _, p, _, _ in sim.landings] == [0]
    core = sim.nodes[0].core
    assert core.stats.collapsed_calls == 4
    assert core.stats.total_calls == 5 and core.stats.pending_calls == 0
    assert core.stats.call_latency.num == 5


def _walk_record(sim: Sim, key: bytes, path) -> None:
    """Move the record along `path` by one smbd-like use on each node."""
    for i, p in enumerate(path):
        client = FetchLockClient(sim, p, 100 + i, key, ops=1)
        client.start(sim.now)
        sim.run()
        assert client.done == 1 and sim.dmasters(key) == [p]


def test_a_call_for_a_record_on_its_way_here_waits_here_and_is_served_on_landing():
    sim = Sim(4, seed=5, jitter=0.0)
    X, R, D, L = 0, 1, 2, 3
    key = key_with_lmaster(L, 4)
    _walk_record(sim, key, [X, R, D])           # X believes R, R believes D
    assert sim.nodes[X].tdb[key][0].dmaster == R and sim.nodes[R].tdb[key][0].dmaster == D

    sim.hold_link(R, D)                         # R's call to D is stuck for now
    r_client = FetchLockClient(sim, R, 1, key, ops=1)
    r_client.start(sim.now)
    sim.run()
    x_client = FetchLockClient(sim, X, 1, key, ops=1)
    x_start = sim.now
    x_client.start(x_start)
    sim.run()
    view = sim.nodes[R].core.in_flight(DB, key)
    assert view is not None and view.deferred_calls == 1 and view.waiting_clients == 1
    x_calls = [pkt for t, _, _, pkt in sim.packets(ReqCall) if pkt.srcnode == X and t >= x_start]
    assert len(x_calls) == 1 and x_calls[0].body.hopcount == 0    # X -> R, nothing further

    sim.release_link(R, D)
    sim.run()
    assert r_client.done == 1 and x_client.done == 1
    assert sim.dmasters(key) == [X]
    landed = [(p, t) for t, p, k, _ in sim.landings if k == key][-2:]
    assert [p for p, _ in landed] == [R, X]
    stats_r = sim.nodes[R].core.stats
    assert stats_r.deferred_calls == 1 and stats_r.redirects == 0
    assert stats_r.hop_count_bucket[0] >= 1            # X's call served at hop 0
    # X's call waited for R's client to use the record (R's local grace).
    assert landed[1][1] - landed[0][1] >= sim.nodes[R].core.settings.local_grace


def test_the_lmaster_routes_calls_even_while_it_waits_for_the_record_itself():
    """Two waiting nodes must never hold each other's calls. The lmaster is where calls go
    when a node's copy was deleted (an empty record given away), so it always routes."""
    sim = Sim(4, seed=7, jitter=0.0)
    L, R, N = 0, 2, 3
    key = key_with_lmaster(L, 4)
    sim.seed(key, holder=R, data=b"", rsn=5)           # empty, never migrated with data
    sim.hold_link(R, L)                                 # R's packets to the lmaster wait
    n_client = FetchLockClient(sim, N, 1, key, ops=1, write=False)
    n_client.start(sim.now)
    sim.run()
    assert key not in sim.nodes[R].tdb                  # R gave it to N and deleted its copy
    r_client = FetchLockClient(sim, R, 1, key, ops=1, write=False)
    r_client.start(sim.now)                             # R's call goes to the lmaster (held)
    sim.run()
    l_client = FetchLockClient(sim, L, 1, key, ops=1, write=False)
    l_client.start(sim.now)                             # L still believes R: its call waits at R
    sim.run()
    assert sim.nodes[R].core.in_flight(DB, key).deferred_calls == 1
    sim.release_link(R, L)                              # REQ_DMASTER, then R's call, reach L
    sim.run()
    assert [c.done for c in (n_client, r_client, l_client)] == [1, 1, 1]
    assert len(sim.dmasters(key)) == 1 and all_idle(sim)
    assert sim.nodes[L].core.stats.deferred_calls == 0


def test_a_record_landing_for_local_clients_is_pinned_for_the_local_grace():
    core = MigrationCore(MigrationSettings(pnn=0), VnnMap(5, [0, 1, 2]))
    core.step(DbAttached(DB, "locking.tdb"))
    grace = core.settings.local_grace
    assert grace > 0
    key = key_with_lmaster(1, 3)
    (send,) = [a for a in core.step(LocalCall("c", 1, DB, key, NULL, MIGRATE), None, 0.0)
               if isinstance(a, SendPacket)]
    landed = core.step(PeerPacket(1, send.reqid, 5, ReplyDmaster(DB, 8, key, b"v", 0)), None, 1.0)
    (store,) = [a for a in landed if isinstance(a, StoreRecord) and a.header.rsn == 10]
    record = (store.header, store.data)
    peer = PeerPacket(2, 31, 5, ReqCall(MIGRATE, DB, NULL, 0, key))
    (wait,) = core.step(peer, record, 1.0 + grace / 2)
    assert wait == Requeue(peer, pytest.approx(grace / 2))
    given = core.step(peer, record, 1.0 + grace)
    (req,) = [a for a in given if isinstance(a, SendPacket)]
    assert isinstance(req.body, ReqDmaster) and req.body.dmaster == 2 and req.dest == 1


def test_stale_dmaster_is_reached_through_redirects_via_the_lmaster():
    sim = Sim(4, seed=6, jitter=0.0)
    A, B, C, L = 0, 1, 2, 3
    key = key_with_lmaster(L, 4)
    _walk_record(sim, key, [A, B, C])
    assert sim.nodes[A].tdb[key][0].dmaster == B           # A's belief is stale
    before = [n.core.stats.redirects for n in sim.nodes]
    hops_before = sim.nodes[C].core.stats.hop_count_bucket[:]
    client = FetchLockClient(sim, A, 9, key, ops=1)
    client.start(sim.now)
    sim.run()
    assert client.done == 1 and sim.dmasters(key) == [A]
    redirects = [n.core.stats.redirects - b for n, b in zip(sim.nodes, before)]
    assert redirects == [0, 1, 0, 1]                       # B -> lmaster, lmaster -> C
    a_calls = [pkt.body.hopcount for _, _, _, pkt in sim.packets(ReqCall) if pkt.srcnode == A]
    assert a_calls[-3:] == [0, 1, 2]
    assert sim.nodes[C].core.stats.max_hop_count == 2
    bucket = [x - y for x, y in zip(sim.nodes[C].core.stats.hop_count_bucket, hops_before)]
    assert bucket[hop_bucket(2)] == 1 and sum(bucket) == 1
    # The record landed at A for A's own call: A counts it as a hot key (ctdbd 4.17), once
    # more than the landings _walk_record made there in the same one-second window.
    hot = dict((k, c) for c, k in sim.nodes[A].core.db_stats[DB].hot_keys)
    assert hot[key] == sim.nodes[A].core.db_stats[DB].migrations[key][1] >= 1


def test_redirect_at_the_lmaster_goes_to_the_dmaster_it_knows():
    core = MigrationCore(MigrationSettings(pnn=1), VnnMap(5, [0, 1, 2]))
    core.step(DbAttached(DB, "locking.tdb"))
    key = key_with_lmaster(1, 3)
    record = (LtdbHeader(rsn=4, dmaster=2, reserved1=0, flags=0), b"v")
    pkt = PeerPacket(0, 77, 5, ReqCall(MIGRATE, DB, NULL, 3, key))
    (send,) = core.step(pkt, record, 0.0)
    assert isinstance(send, SendPacket)
    assert (send.dest, send.srcnode, send.reqid, send.body.hopcount) == (2, 0, 77, 4)
    # ctdbd warns when hopcount % 100 > 95.
    hot = core.step(replace(pkt, body=replace(pkt.body, hopcount=95)), record, 0.0)
    (warning,) = [a for a in hot if isinstance(a, Log)]
    assert warning.level == logging.WARNING and warning.text.startswith("High hopcount 96 ")
    assert not any(isinstance(a, Log) for a in core.step(replace(pkt, body=replace(pkt.body, hopcount=99)),
                                                          record, 0.0))


# =============================================================================================
# Generations, errors, replies
# =============================================================================================

def test_a_lost_call_is_reissued_when_the_generation_changes():
    sim = Sim(3, seed=8)
    key = key_with_lmaster(2, 3)
    sim.seed(key, holder=1, data=COUNTER.pack(41))
    lost = []
    sim.drop = lambda s, d, pkt: (isinstance(pkt.body, ReqCall) and pkt.srcnode == 0 and not lost
                                  and not lost.append(pkt))
    client = FetchLockClient(sim, 0, 1, key, ops=1)
    client.start()
    sim.run()
    assert client.done == 0 and sim.nodes[0].core.in_flight(DB, key) is not None
    sim.drop = lambda s, d, pkt: False
    sim.recover(leader=2, generation=8)
    sim.run()
    assert client.done == 1 and counter(sim, key) == 42 and sim.dmasters(key) == [0]
    assert any("resent ctdb_call" in log.text for log in sim.nodes[0].logs)
    resent = [pkt for _, _, _, pkt in sim.packets(ReqCall) if pkt.srcnode == 0][-1]
    assert resent.generation == 8 and resent.reqid != lost[0].reqid


def test_packets_of_the_old_generation_are_dropped_after_a_recovery():
    sim = Sim(3, seed=9, jitter=0.0)
    R, D, L = 0, 1, 2
    key = key_with_lmaster(L, 3)
    sim.seed(key, holder=D, data=COUNTER.pack(5))
    sim.hold_link(L, R)                             # the REPLY_DMASTER to R is held
    client = FetchLockClient(sim, R, 1, key, ops=1)
    client.start()
    sim.run()
    assert [type(p.body) for _, _, p in sim.held] == [ReplyDmaster]
    sim.recover(leader=L, generation=8)
    received = sim.nodes[R].core.stats.node_reply_dmaster
    sim.release_link(L, R)                          # the old-generation packet arrives first
    sim.run()
    assert client.done == 1 and sim.dmasters(key) == [R] and counter(sim, key) == 6
    stale = [p for _, s, d, p in sim.wire if (s, d) == (L, R) and p.generation == 7]
    assert stale and sim.nodes[R].core.stats.node_reply_dmaster == received + 1   # only the new one


def test_a_local_call_for_an_unknown_database_gets_an_error():
    sim = Sim(2)
    client = sim.call(0, b"k", db_id=0xDEADBEEF)
    (reply,) = sim.replies[client]
    assert isinstance(reply, ReplyError) and reply.status == -1
    assert b"db_id==0xdeadbeef" in reply.msg and reply.msg.endswith(b"\0")
    assert sim.nodes[0].core.stats.pending_calls == 0


def test_a_peer_without_the_database_answers_with_an_error_that_reaches_the_client():
    sim = Sim(3, attach={0, 2})                     # node 1 never attached it
    key = key_with_lmaster(1, 3)
    client = FetchLockClient(sim, 0, 1, key, ops=1)
    client.start()
    sim.run()
    assert client.done == 0 and len(client.errors) == 1
    assert client.errors[0].status == -1
    errors = sim.packets(ReplyError, src=1)
    assert len(errors) == 1 and errors[0][2] == 0
    assert all_idle(sim) and sim.nodes[0].core.stats.pending_calls == 0


def test_a_reply_call_completes_the_call_and_releases_collapsed_and_held_calls():
    core = MigrationCore(MigrationSettings(pnn=0), VnnMap(3, [0, 1]))
    core.step(DbAttached(DB, "locking.tdb"))
    key = key_with_lmaster(1, 2)
    first = core.step(LocalCall("c1", 11, DB, key, FETCH), None, 0.0)
    (send,) = [a for a in first if isinstance(a, SendPacket)]
    assert send.dest == 1 and send.srcnode == 0 and send.body.hopcount == 0
    assert core.step(LocalCall("c2", 12, DB, key, FETCH), None, 0.1) == []
    held = PeerPacket(1, 500, 3, ReqCall(MIGRATE, DB, NULL, 0, key))
    assert core.step(held, None, 0.2) == []
    stale = core.step(PeerPacket(1, send.reqid, 2, ReplyCall(0, b"old")), None, 0.3)
    assert not any(isinstance(a, ReplyToClient) for a in stale)
    done = core.step(PeerPacket(1, send.reqid, 3, ReplyCall(0, b"value")), None, 0.4)
    assert done[0] == ReplyToClient("c1", 11, ReplyCall(0, b"value"))
    requeued = [a.event for a in done if isinstance(a, Requeue)]
    assert requeued[0].client == "c2" and requeued[0].requeued and requeued[0].started == 0.1
    assert requeued[1] == held
    assert core.in_flight(DB, key) is None


# =============================================================================================
# Reply contents: FETCH, FETCH_WITH_HEADER, data and flags
# =============================================================================================

def test_fetch_of_a_missing_record_returns_empty_on_the_lmaster_and_elsewhere():
    sim = Sim(3)
    key = key_with_lmaster(1, 3)
    on_lmaster = sim.call(1, key, FETCH, flags=0)
    sim.run()
    assert sim.replies[on_lmaster] == [ReplyCall(0, b"")]
    other = sim.call(0, key, FETCH, flags=0)
    sim.run()
    assert sim.replies[other] == [ReplyCall(0, b"")]
    assert sim.dmasters(key) == [0]            # a FETCH from another node migrates the record
    header, data = sim.nodes[0].tdb[key]
    assert data == b"" and header.flags & RecordFlag.AUTOMATIC == 0


def test_record_data_and_flags_travel_with_the_migration():
    sim = Sim(3, seed=4)
    key = key_with_lmaster(2, 3)
    extra = 0x100
    sim.seed(key, holder=0, data=b"share mode entry", rsn=20, flags=extra)
    client = sim.call(1, key, FETCH_HDR, flags=0)
    sim.run()
    (reply,) = sim.replies[client]
    header = LtdbHeader.unpack(reply.data[:24])
    assert reply.data[24:] == b"share mode entry"
    assert header.dmaster == 1 and header.flags == extra | RecordFlag.MIGRATED_WITH_DATA
    stored_header, stored = sim.nodes[1].tdb[key]
    assert stored == b"share mode entry" and stored_header.flags == header.flags
    # The reply shows the header before the call's own store, which bumped the rsn once more.
    assert stored_header.rsn == header.rsn + 1 > 20
    (_, _, _, req), = sim.packets(ReqDmaster)
    (_, _, _, rep), = sim.packets(ReplyDmaster)
    assert req.body.record_flags == rep.body.record_flags == header.flags
    assert req.body.data == rep.body.data == b"share mode entry"
    assert req.body.dmaster == 1 and req.body.rsn == rep.body.rsn == 20
    # The old dmaster keeps a copy naming the new one; the lmaster knows the new one.
    assert sim.nodes[0].tdb[key][0].dmaster == 1 and sim.nodes[2].tdb[key][0].dmaster == 1


def test_fetch_served_by_the_dmaster_itself_replies_the_value():
    sim = Sim(2)
    key = key_with_lmaster(0, 2)
    sim.seed(key, holder=0, data=b"abc", rsn=3)
    client = sim.call(0, key, FETCH, flags=0)
    sim.run()
    assert sim.replies[client] == [ReplyCall(0, b"abc")]
    assert sim.nodes[0].tdb[key][0].rsn == 4 and not sim.wire
    unknown = sim.call(0, key, 0x1234, flags=0)
    assert sim.replies[unknown] == [ReplyCall(-1, b"")]
    assert sim.nodes[0].tdb[key][0].rsn == 4


def test_want_readonly_is_a_normal_migration():
    sim = Sim(3)
    key = key_with_lmaster(2, 3)
    sim.seed(key, holder=0, data=b"x")
    client = sim.call(1, key, FETCH, flags=int(CallFlag.WANT_READONLY))
    sim.run()
    assert sim.replies[client] == [ReplyCall(0, b"x")] and sim.dmasters(key) == [1]
    assert all(pkt.body.flags == 0 for _, _, _, pkt in sim.packets(ReqCall))


# =============================================================================================
# Single-core edge cases
# =============================================================================================

def _core(pnn=0, lmasters=(0, 1, 2), generation=5):
    core = MigrationCore(MigrationSettings(pnn=pnn), VnnMap(generation, list(lmasters)))
    core.step(DbAttached(DB, "locking.tdb"))
    return core


def test_req_dmaster_from_a_node_that_is_not_the_dmaster_forces_a_recovery():
    core = _core(pnn=1)
    key = key_with_lmaster(1, 3)
    record = (LtdbHeader(rsn=9, dmaster=2, reserved1=0, flags=0), b"v")
    actions = core.step(PeerPacket(0, 3, 5, ReqDmaster(DB, 9, 0, key, b"v", 0)), record, 0.0)
    assert any(isinstance(a, ForceRecovery) for a in actions)
    assert not any(isinstance(a, (SendPacket, StoreRecord)) for a in actions)
    # ... also when the lmaster has no copy at all (its initial store made the rsn 1).
    actions = core.step(PeerPacket(0, 4, 5, ReqDmaster(DB, 9, 2, key, b"v", 0)), None, 0.0)
    assert any(isinstance(a, ForceRecovery) for a in actions)


def test_req_dmaster_to_a_node_that_is_not_the_lmaster_forces_a_recovery():
    core = _core(pnn=1)
    key = key_with_lmaster(0, 3)
    actions = core.step(PeerPacket(2, 3, 5, ReqDmaster(DB, 9, 0, key, b"v", 0)), None, 0.0)
    assert any(isinstance(a, ForceRecovery) for a in actions)


def test_banned_node_and_other_generations_drop_call_packets():
    core = _core(pnn=1)
    key = key_with_lmaster(1, 3)
    pkt = PeerPacket(0, 3, 5, ReqCall(MIGRATE, DB, NULL, 0, key))
    assert core.step(replace(pkt, generation=4), None, 0.0) == []
    core.step(SetBanned(True))
    assert core.step(pkt, None, 0.0) == []
    assert core.stats.node_req_call == 0
    core.step(SetBanned(False))
    assert any(isinstance(a, SendPacket) for a in core.step(pkt, None, 0.0))
    assert core.stats.node_req_call == 1


def test_peer_req_call_for_unknown_database_gets_reply_error_to_its_origin():
    core = _core(pnn=1)
    pkt = PeerPacket(2, 99, 5, ReqCall(MIGRATE, 0x1234, NULL, 1, b"k"))
    assert core.lock_target(pkt) is None
    actions = core.step(pkt, None, 0.0)
    (send,) = [a for a in actions if isinstance(a, SendPacket)]
    assert (send.dest, send.reqid) == (2, 99) and isinstance(send.body, ReplyError)
    frame = encode_packet(send.body, destnode=send.dest, srcnode=1, reqid=send.reqid)
    assert decode_packet(frame).body.msg == b"Unknown database in request. db_id==0x00001234\0"


def _sends(actions):
    return [a for a in actions if isinstance(a, SendPacket)]


def _reissues(actions):
    return [a.event for a in actions if isinstance(a, Requeue) and isinstance(a.event, Reissue)]


def test_in_recovery_a_call_waits_for_its_database_thaw_then_goes_with_the_new_generation():
    """The leader's order: recovery mode everywhere, the new vnnmap everywhere, then each
    database frozen, recovered and thawed. A call sent between this node's vnnmap change and a
    peer's would be dropped there (other generation) and wait 30 s for the collapse timeout."""
    core = _core(pnn=0, generation=5)
    other = db_id_of("brlock.tdb")
    core.step(DbAttached(other, "brlock.tdb"))
    key = key_with_lmaster(1, 3)
    (old,) = _sends(core.step(LocalCall("a", 1, DB, key, NULL, MIGRATE), None, 0.0))
    assert old.generation == 5
    core.step(RecoveryMode(True))
    assert core.step(VnnMapChanged(VnnMap(6, [0, 1, 2])), None, 0.1) == []   # nothing re-sent yet
    held = core.step(LocalCall("b", 2, other, key, NULL, MIGRATE), None, 0.2)
    assert _sends(held) == []                           # a new call waits too
    for timed_out in _reissues(core.step(Tick(), None, 40.0)):   # the collapse timeout
        assert _sends(core.step(timed_out, None, 40.0)) == []     # sends nothing either
    (again,) = _reissues(core.step(DbThawed(DB)))       # only the thawed database's call
    assert (again.db_id, again.key) == (DB, key)
    (sent,) = _sends(core.step(again, None, 0.3))
    assert sent.generation == 6 and sent.reqid != old.reqid
    thawed_key = key_with_lmaster(2, 3, prefix=b"thawed")
    assert _sends(core.step(LocalCall("c", 3, DB, thawed_key, NULL, MIGRATE), None, 0.3))
    (rest,) = _reissues(core.step(RecoveryMode(False)))
    assert (rest.db_id, rest.key) == (other, key)
    (sent,) = _sends(core.step(rest, None, 0.4))
    assert sent.generation == 6
    assert _reissues(core.step(RecoveryMode(False))) == []       # nothing stale is left


def test_a_vnnmap_change_outside_recovery_mode_resends_at_once():
    core = _core(pnn=0, generation=5)
    key = key_with_lmaster(1, 3)
    _sends(core.step(LocalCall("a", 1, DB, key, NULL, MIGRATE), None, 0.0))
    (again,) = _reissues(core.step(VnnMapChanged(VnnMap(6, [0, 1, 2])), None, 0.1))
    assert _sends(core.step(again, None, 0.1))[0].generation == 6


def test_collapse_timeout_resends_the_call_and_releases_held_calls():
    core = _core(pnn=0)
    key = key_with_lmaster(1, 3)
    (send,) = [a for a in core.step(LocalCall("c", 1, DB, key, NULL, MIGRATE), None, 0.0)
               if isinstance(a, SendPacket)]
    held = PeerPacket(2, 40, 5, ReqCall(MIGRATE, DB, NULL, 0, key))
    core.step(held, None, 1.0)
    assert core.step(Tick(), None, 29.0) == []
    (requeue,) = core.step(Tick(), None, 30.5)
    assert requeue.event.key == key
    assert core.step(Tick(), None, 31.0) == []              # not again before the next timeout
    resend = core.step(requeue.event, None, 30.5)
    (again,) = [a for a in resend if isinstance(a, SendPacket)]
    assert again.reqid != send.reqid and again.dest == 1 and again.body.hopcount == 1
    assert core.stats.reissued_calls == 1
    assert core.in_flight(DB, key).deferred_calls == 1       # the held call waits on
    # The record lands for the re-sent call: the client is answered, the held call let in.
    landed = core.step(PeerPacket(1, again.reqid, 5, ReplyDmaster(DB, 8, key, b"v", 0)), None, 31.0)
    assert ReplyToClient("c", 1, ReplyCall(0, b"")) in landed
    # a peer asked while the record was on its way: the longer, contended pin
    assert Requeue(held, core.settings.contended_grace) in landed


def _landing_pin(core: MigrationCore, key: bytes, *, collapsed: bool, peer_asks: bool,
                 lmaster_here: bool = False) -> float:
    """Land `key` for a local call (maybe with a second local call collapsed into it, maybe
    with a peer's call arriving on the way) and return how long a peer's call then waits.
    `lmaster_here`: this node is the key's lmaster and node 2 the dmaster; the record comes
    back as node 2's REQ_DMASTER (and a peer's call on the way is routed on, not held)."""
    held = (LtdbHeader(3, 2), b"old") if lmaster_here else None
    (send,) = _sends(core.step(LocalCall("a", 1, DB, key, NULL, MIGRATE), held, 0.0))
    if collapsed:
        assert _sends(core.step(LocalCall("b", 2, DB, key, NULL, MIGRATE), held, 0.1)) == []
    if peer_asks:
        on_way = core.step(PeerPacket(1, 40, 5, ReqCall(MIGRATE, DB, NULL, 0, key)), held, 0.2)
        assert bool(_sends(on_way)) == lmaster_here      # routed by the lmaster, else held
    if lmaster_here:
        arrival = PeerPacket(2, 9, 5, ReqDmaster(DB, 9, 0, key, b"v", 0))
    else:
        arrival = PeerPacket(1, send.reqid, 5, ReplyDmaster(DB, 8, key, b"v", 0))
    landed = core.step(arrival, held, 1.0)
    store = [a for a in landed if isinstance(a, StoreRecord) and a.header.dmaster == 0][-1]
    later = PeerPacket(1, 41, 5, ReqCall(MIGRATE, DB, NULL, 0, key))
    (wait,) = core.step(later, (store.header, store.data), 1.0)
    assert isinstance(wait, Requeue)
    return wait.delay


def test_a_contended_record_is_pinned_longer_than_one_handed_over():
    """One local client, nobody else asking on the way: the short pin (two nodes taking turns
    wait 2 ms, not 10). Two local clients collapsed into the call, or a peer asking while the
    record was on its way (held here, or routed on by the lmaster): contended_grace."""
    settings = MigrationSettings(pnn=0)
    assert 0 < settings.local_grace < settings.contended_grace

    def pin(lmaster: int = 1, **kwargs) -> float:
        core = MigrationCore(settings, VnnMap(5, [0, 1, 2]))
        core.step(DbAttached(DB, "locking.tdb"))
        return _landing_pin(core, key_with_lmaster(lmaster, 3), **kwargs)

    assert pin(collapsed=False, peer_asks=False) == pytest.approx(settings.local_grace)
    assert pin(collapsed=True, peer_asks=False) == pytest.approx(settings.contended_grace)
    assert pin(collapsed=False, peer_asks=True) == pytest.approx(settings.contended_grace)
    assert pin(lmaster=0, collapsed=False, peer_asks=False, lmaster_here=True) == \
        pytest.approx(settings.local_grace)
    assert pin(lmaster=0, collapsed=False, peer_asks=True, lmaster_here=True) == \
        pytest.approx(settings.contended_grace)


def test_client_gone_and_detach():
    core = _core(pnn=0)
    key = key_with_lmaster(1, 3)
    core.step(LocalCall("a", 1, DB, key, NULL, MIGRATE), None, 0.0)
    core.step(LocalCall("b", 2, DB, key, NULL, MIGRATE), None, 0.0)
    core.step(LocalCall("c", 3, DB, key, NULL, MIGRATE), None, 0.0)
    core.step(ClientGone("b"))
    assert core.in_flight(DB, key).waiting_clients == 2 and core.stats.pending_calls == 2
    other = key_with_lmaster(2, 3)
    (send,) = [a for a in core.step(LocalCall("d", 5, DB, other, FETCH), None, 0.0)
               if isinstance(a, SendPacket)]
    core.step(LocalCall("e", 6, DB, other, FETCH), None, 0.0)
    core.step(ClientGone("d"))                  # the client whose call went out
    assert core.stats.pending_calls == 3
    landed = core.step(PeerPacket(2, send.reqid, 5, ReplyDmaster(DB, 3, other, b"w", 0)), None, 0.5)
    assert not any(isinstance(a, ReplyToClient) for a in landed)    # nobody to answer ...
    (rerun,) = [a.event for a in landed if isinstance(a, Requeue)]  # ... but "e" runs again
    assert rerun.client == "e" and rerun.requeued
    assert StoreRecord(DB, other, LtdbHeader(rsn=4, dmaster=0, reserved1=0, flags=0), b"w") in landed
    done = core.step(rerun, (LtdbHeader(rsn=4, dmaster=0, reserved1=0, flags=0), b"w"), 0.6)
    assert ReplyToClient("e", 6, ReplyCall(0, b"w")) in done and core.stats.pending_calls == 2
    actions = core.step(DbDetached(DB))
    replies = [(a.client, type(a.body)) for a in actions if isinstance(a, ReplyToClient)]
    assert replies == [("a", ReplyError), ("c", ReplyError)]
    assert core.in_flight(DB, key) is None and core.stats.pending_calls == 0
    assert core.lock_target(LocalCall("a", 4, DB, key, NULL)) is None


def test_calls_wait_for_a_vnnmap():
    core = MigrationCore(MigrationSettings(pnn=0))
    core.step(DbAttached(DB, "locking.tdb"))
    mine = (LtdbHeader(rsn=2, dmaster=0, reserved1=0, flags=0), b"m")
    assert core.step(LocalCall("a", 1, DB, b"k", FETCH), None, 0.0) == []
    assert core.step(LocalCall("b", 2, DB, b"m", FETCH), mine, 0.0) == []
    assert core.step(PeerPacket(1, 9, 1, ReqCall(0, DB, FETCH, 0, b"m")), mine, 0.0) == []
    actions = core.step(VnnMapChanged(VnnMap(3, [1, 1])), None, 0.1)
    reissue = {a.event.key: a.event for a in actions}
    assert sorted(reissue) == [b"k", b"m"]
    sent = core.step(reissue[b"k"], None, 0.1)
    (send,) = [a for a in sent if isinstance(a, SendPacket)]
    assert send.dest == 1 and send.body.hopcount == 1          # re-sent as ctdb_call_resend does
    served = core.step(reissue[b"m"], mine, 0.1)
    assert ReplyToClient("b", 2, ReplyCall(0, b"m")) in served


def test_own_call_reaching_a_node_that_became_dmaster_completes_it_locally():
    core = _core(pnn=0)
    key = key_with_lmaster(1, 3)
    (send,) = [a for a in core.step(LocalCall("c", 5, DB, key, FETCH), None, 0.0)
               if isinstance(a, SendPacket)]
    # A recovery made node 0 the dmaster; its call comes back to it.
    record = (LtdbHeader(rsn=3, dmaster=0, reserved1=0, flags=0), b"mine")
    back = PeerPacket(0, send.reqid, 5, replace(send.body, hopcount=2))
    actions = core.step(back, record, 0.1)
    assert ReplyToClient("c", 5, ReplyCall(0, b"mine")) in actions
    (store,) = [a for a in actions if isinstance(a, StoreRecord)]
    assert store.header.rsn == 4 and core.in_flight(DB, key) is None


# =============================================================================================
# Record rules and statistics
# =============================================================================================

def test_store_rules_follow_ctdb_ltdb_store_server():
    h = LtdbHeader(rsn=5, dmaster=2, reserved1=0, flags=0)
    # Empty, never migrated with data, neither lmaster nor dmaster: deleted.
    assert not ltdb_store(h, b"", pnn=0, lmaster=1, persistent=False).keep
    # The lmaster keeps it; no rsn change when it is not the dmaster.
    kept = ltdb_store(h, b"", pnn=1, lmaster=1, persistent=False)
    assert kept.keep and kept.header.rsn == 5
    # The dmaster's store bumps the rsn; an empty one goes on the vacuum queue.
    mine = ltdb_store(replace(h, dmaster=0), b"", pnn=0, lmaster=1, persistent=False)
    assert mine.keep and mine.header.rsn == 6 and mine.schedule_for_deletion
    # Persistent databases: kept, rsn untouched; read-only flags suppress the bump too.
    assert ltdb_store(replace(h, dmaster=0), b"x", pnn=0, lmaster=1, persistent=True).header.rsn == 5
    ro = replace(h, dmaster=0, flags=int(RecordFlag.RO_HAVE_READONLY))
    assert ltdb_store(ro, b"x", pnn=0, lmaster=1, persistent=False).header.rsn == 5
    # AUTOMATIC and VACUUM_MIGRATED never reach the file.
    auto = replace(h, flags=int(RecordFlag.AUTOMATIC | RecordFlag.VACUUM_MIGRATED | 0x100))
    assert ltdb_store(auto, b"x", pnn=0, lmaster=1, persistent=False).header.flags == 0x100


def test_a_missing_record_reads_as_an_initial_header_owned_by_the_lmaster():
    key = key_with_lmaster(1, 3)
    elsewhere = ltdb_fetch(None, key, pnn=0, lmasters=[0, 1, 2], persistent=False)
    assert elsewhere.header.dmaster == 1 and elsewhere.initial_store is None
    assert elsewhere.header.flags == RecordFlag.AUTOMATIC and elsewhere.header.rsn == 0
    on_lmaster = ltdb_fetch(None, key, pnn=1, lmasters=[0, 1, 2], persistent=False)
    assert on_lmaster.initial_store.keep and on_lmaster.header.rsn == 1
    assert on_lmaster.header.flags == 0 and on_lmaster.initial_store.schedule_for_deletion


def test_lmaster_is_the_vnnmap_entry_at_the_jenkins_hash_of_the_key():
    key = b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d"
    vnnmap = [4, 7, 9]
    assert lmaster_of(key, vnnmap) == vnnmap[jenkins_hash(key) % 3]
    assert lmaster_of(key, []) is None


def test_hop_buckets_match_ctdbd():
    def ctdbd(hopcount):          # the loop in ctdb_request_call, samba-4.17.12
        tmp, bucket = hopcount, 0
        while tmp:
            tmp >>= 1
            bucket += 1
        return min(bucket, MAX_COUNT_BUCKETS - 1)
    assert [hop_bucket(h) for h in range(300)] == [ctdbd(h) for h in range(300)]
    assert [hop_bucket(h) for h in (0, 1, 2, 3, 4, 7, 8, 2 ** 40)] == [0, 1, 2, 2, 3, 3, 4, 15]


def test_hot_keys_are_the_keys_migrated_here_most_often_smallest_first():
    stats = DbCallStatistics()
    for i in range(15):
        for _ in range(i):
            stats.count_migration(b"k%d" % i, 0.0)       # k_i lands i times in one window
    assert len(stats.hot_keys) == 10
    assert [c for c, _ in stats.hot_keys] == list(range(5, 15))      # smallest first
    stats.note_hot_key(b"k9", 2)                     # a lower count never lowers an entry
    assert (9, b"k9") in stats.hot_keys
    stats.note_hot_key(b"new", 5)                    # not above the smallest: not taken
    assert all(k != b"new" for _, k in stats.hot_keys)
    stats.note_hot_key(b"new", 40)                   # replaces the smallest
    assert stats.hot_keys[-1] == (40, b"new") and stats.hot_keys[0] == (6, b"k6")
    # A new window starts the count again at 1; expired windows are forgotten.
    stats.count_migration(b"k14", 1.5)
    assert stats.migrations[b"k14"] == (1.5, 1)
    stats.expire_migrations(3.0)
    assert stats.migrations == {}


def test_statistics_carry_ctdb_field_names():
    core = _core()
    fields = core.stats.ctdb_fields()
    assert {"node.req_call", "node.reply_dmaster", "client.req_call", "total_calls",
            "pending_calls", "max_hop_count", "hop_count_bucket", "call_latency"} <= set(fields)
    assert len(fields["hop_count_bucket"]) == MAX_COUNT_BUCKETS

