"""The sweep after a membership change (core/db/sweep.py, core/db/settling.py): which keys a
node lists, the batches, the rules for applying a snapshot of a key's copies, the closing of
the epochs, and what abandons a sweep -- on the migration core directly, then on the migration
simulation (smbd-like clients, nodes lost and rejoining, sweeps running amid the traffic) over
many seeds."""

from __future__ import annotations

import logging

import pytest

from ctdblab.daemon.core.db.ltdbrules import lmaster_of
from ctdblab.daemon.core.db.migration import (
    GatherCopies, Log, PeerPacket, RecoveryMode, SendPacket, StoreRecord, SweepFinished,
    SweptCopies, VnnMapChanged,
)
from ctdblab.daemon.core.db.partial_recovery import Copy
from ctdblab.daemon.core.db.sweep import BATCH, batches, needs_sweep
from ctdblab.daemon.core.db.unsettled import Unsettled
from ctdblab.daemon.protocol.packets import ReqCall, ReqDmaster
from ctdblab.daemon.protocol.types import VnnMap
from test_db_migration import DB, MIGRATE, NULL, Sim, key_with_lmaster
from test_db_partial_recovery import _check_keys, _lose_node_and_recover, _rejoin
from test_db_migration import FetchLockClient
from test_db_unsettled import NEW, OLD, H, call, core_after_loss, kept_key, moved_key


# -- which keys, in which batches ---------------------------------------------------------------

def test_a_node_lists_the_keys_of_moved_slots_and_copies_naming_a_lost_node_for_their_lmaster():
    maps, lost = (OLD, NEW), frozenset({2})
    assert needs_sweep(moved_key(), H(4, 1), 0, NEW, maps, lost)          # slot moved to 0
    assert not needs_sweep(moved_key(), H(4, 1), 1, NEW, maps, lost)      # not 1's key
    assert needs_sweep(kept_key(1), H(4, 2), 1, NEW, maps, lost)          # names the lost node
    assert not needs_sweep(kept_key(1), H(4, 0), 1, NEW, maps, lost)      # names a live node
    assert not needs_sweep(kept_key(0), None, 0, NEW, maps, lost)


def test_keys_go_in_sorted_batches_without_duplicates():
    keys = [b"k%05d" % i for i in range(2 * BATCH + 1)] + [b"k00000"]
    got = batches(keys)
    assert [len(b) for b in got] == [BATCH, BATCH, 1]
    assert sum(got, []) == sorted(set(keys))
    assert batches([]) == []


# -- closing epochs -----------------------------------------------------------------------------

def test_closing_epochs_ends_suspicion_forgets_their_settled_keys_and_keeps_the_lost_nodes():
    u = Unsettled()
    u.add_epoch(DB, OLD, NEW)
    u.settle(DB, kept_key(1))
    first = u.epochs(DB)[-1].seq
    u.add_epoch(DB, NEW, (0, 0, 0))                       # node 1 lost too
    u.settle(DB, kept_key(0))
    assert u.close(DB, first) == 1                        # only the first epoch
    assert u.settled_count(DB) == 1                       # kept_key(0) was settled under the second
    assert u.any(DB) and u.lost_nodes(DB) == {1, 2}
    assert u.close(DB, u.epochs(DB)[-1].seq) == 1
    assert not u.any(DB) and u.settled_count(DB) == 0
    assert not u.suspect(DB, moved_key(), None, 0)
    assert u.lost_nodes(DB) == {1, 2}                    # copies elsewhere may still name them
    u.clear(DB)                                          # a full recovery merged everything
    assert u.lost_nodes(DB) == frozenset()


# -- applying a sweep on the core ---------------------------------------------------------------

def _start(core, now=1.0):
    return core.settling.start_sweep(DB, core.generation, core.lmasters, now)


def test_a_sweep_settles_suspect_keys_then_closes_and_a_new_key_of_a_moved_slot_needs_no_gather():
    core = core_after_loss(0)
    plan = _start(core)
    assert plan.lmaster == 0 and plan.lost == {2} and set(plan.maps) == {OLD, NEW}
    key = moved_key()
    actions = core.step(SweptCopies(DB, key, plan.sweep_id, (Copy(1, H(7, 1), b"v"),)), None, 1.1)
    assert [(a.header.dmaster, a.header.rsn) for a in actions if isinstance(a, StoreRecord)] == [(1, 6)]
    lost_dmaster = key_with_lmaster(2, 3, prefix=b"orphan")       # its dmaster was node 2
    actions = core.step(SweptCopies(DB, lost_dmaster, plan.sweep_id, (Copy(1, H(5, 2), b"o"),)),
                        None, 1.2)
    (store,) = [a for a in actions if isinstance(a, StoreRecord)]
    assert (store.header.dmaster, store.header.rsn, store.data) == (0, 6, b"o")   # visible now
    actions = core.step(SweepFinished(DB, plan.sweep_id, 2), None, 1.5)
    (done,) = [a for a in actions if isinstance(a, Log)]
    assert done.level == logging.INFO and done.text == "swept db locking.tdb: 2 keys, 2 settled, in 0.50 s"
    assert not core.settling.unsettled.any(DB)
    assert core.settling.sweeps.state(DB, plan.sweep_id) == "closed"
    new = key_with_lmaster(2, 3, prefix=b"brand-new")           # a new key of the moved slot
    assert not [a for a in core.step(call(new), None, 2.0) if isinstance(a, GatherCopies)]
    # a node that is not the lmaster still sends a call for a copy naming the dead node there
    other = core_after_loss(1)
    other.settling.unsettled.close(DB, 99)
    assert [a.dest for a in other.step(call(moved_key()), (H(5, 2), b""), 1.0)
            if isinstance(a, SendPacket)] == [0]


def test_a_key_settled_meanwhile_or_waiting_for_its_own_gather_is_left_alone():
    core = core_after_loss(0)
    plan = _start(core)
    settled, waiting = moved_key(), key_with_lmaster(2, 3, prefix=b"busy")
    # node 1 gave `settled` away through the lmaster after it was read: the REQ_DMASTER settles it
    core.step(PeerPacket(1, 40, 6, ReqDmaster(DB, 9, 0, settled, b"v", 0)), None, 1.05)
    stale = (Copy(1, H(8, 1), b"old"),)
    assert core.step(SweptCopies(DB, settled, plan.sweep_id, stale), (H(10, 0), b"v"), 1.1) == []
    # a call started a single-key gather for `waiting`: the sweep leaves it to that gather
    assert core.step(call(waiting), None, 1.1) == [GatherCopies(DB, waiting)]
    assert core.step(SweptCopies(DB, waiting, plan.sweep_id, stale), None, 1.2) == []
    sweep = core.settling.sweeps.running[DB]
    assert (sweep.skipped, sweep.left_to_gather, sweep.settled) == (1, 1, 0)
    core.step(SweepFinished(DB, plan.sweep_id, 2), None, 1.3)
    assert not core.settling.unsettled.any(DB)
    # the epochs are closed, the key still waits for its gather and later events join it
    pkt = PeerPacket(1, 41, 6, ReqCall(MIGRATE, DB, NULL, 0, waiting, b""))
    assert core.step(pkt, None, 1.31) == []
    from ctdblab.daemon.core.db.migration import CopiesGathered, Requeue
    actions = core.step(CopiesGathered(DB, waiting, (Copy(1, H(3, 1), b"w"),)), None, 1.4)
    assert len([a for a in actions if isinstance(a, Requeue)]) == 2


def test_the_epochs_close_only_once_every_fed_key_is_applied():
    core = core_after_loss(0)
    plan = _start(core)
    core.step(SweptCopies(DB, moved_key(), plan.sweep_id, ()), None, 1.1)
    assert core.step(SweepFinished(DB, plan.sweep_id, 2), None, 1.2) == []   # one still queued
    assert core.settling.unsettled.any(DB)
    other = key_with_lmaster(2, 3, prefix=b"late")
    actions = core.step(SweptCopies(DB, other, plan.sweep_id, ()), None, 1.3)
    assert any(isinstance(a, Log) and "2 keys" in a.text for a in actions)
    assert not core.settling.unsettled.any(DB)


@pytest.mark.parametrize("interruption", ["vnnmap", "recovery", "failed", "merged"])
def test_a_new_epoch_recovery_mode_or_a_failure_abandons_the_sweep(interruption):
    from ctdblab.daemon.core.db.migration import DbThawed
    core = core_after_loss(0)
    plan = _start(core)
    if interruption == "vnnmap":
        core.step(VnnMapChanged(VnnMap(7, [0, 0, 0])), None, 1.1)
    elif interruption == "recovery":
        core.step(RecoveryMode(True))
        assert _start(core) is None                      # and none starts in recovery mode
    elif interruption == "failed":
        core.step(SweepFinished(DB, plan.sweep_id, 0, failed="node 1 did not answer"))
    else:
        core.step(DbThawed(DB))
    assert core.settling.sweeps.state(DB, plan.sweep_id) != "running"
    assert core.step(SweptCopies(DB, moved_key(), plan.sweep_id, (Copy(1, H(7, 1), b"v"),)),
                     None, 1.2) == []                   # nothing applied after it
    assert core.step(SweepFinished(DB, plan.sweep_id, 1), None, 1.3) == []
    if interruption != "merged":
        assert core.settling.unsettled.any(DB)           # nothing closed
        assert core.settling.unsettled.suspect(DB, moved_key(), None, 0)


def test_a_key_the_vacuum_deleted_during_the_sweep_is_not_brought_back():
    core = core_after_loss(0)
    plan = _start(core)
    key = moved_key()
    core.settling.forget(DB, key)
    assert core.step(SweptCopies(DB, key, plan.sweep_id, (Copy(1, H(7, 2), b""),)), None, 1.1) == []


# -- on the simulation --------------------------------------------------------------------------

class SimSweeps:
    """The shell's sweep on the simulated cluster: each live node lists its keys when the
    request reaches it and answers over its link; each batch is gathered key by key under the
    chain locks and answered over the same link as the node's packets; each key's copies are
    applied at the sweeping node under its lock; then SweepFinished."""

    def __init__(self, sim: Sim, slow_gathers: float = 0.0) -> None:
        self.sim = sim
        self.gathers: dict[int, int] = {p: 0 for p in range(sim.n)}
        plain = sim.gather

        def counted(p, db_id, key):     # slow: a sweep's batch may overtake a key's own gather
            self.gathers[p] += 1
            sim.at(sim.now + slow_gathers, lambda: plain(p, db_id, key))
        sim.gather = counted

    def live(self) -> list[int]:
        return [q for q in range(self.sim.n) if q not in self.sim.dead]

    def link(self, src: int, dest: int, fn) -> None:
        sim = self.sim
        arrival = max(sim.now + sim.delay + sim.rng.uniform(0, sim.jitter), sim.link_free.get((src, dest), 0.0))
        sim.link_free[(src, dest)] = arrival
        sim.at(arrival, fn)

    def start(self, p: int) -> None:
        sim, core = self.sim, self.sim.nodes[p].core
        plan = core.settling.start_sweep(DB, core.generation, core.lmasters, sim.now)
        if plan is None:
            return
        keys, pending = set(plan.keys), set(self.live())

        def listed(q, found):
            keys.update(found)
            pending.discard(q)
            if not pending:
                self.batch(p, plan, batches(keys, 7), len(keys))

        for q in self.live():
            def serve(q=q):
                found = {k for k, (h, _) in sim.nodes[q].tdb.items()
                         if needs_sweep(k, h, p, plan.current_map, plan.maps, plan.lost)}
                if q == p:
                    listed(q, found)
                else:
                    self.link(q, p, lambda: listed(q, found))
            if q == p:
                sim.at(sim.now, serve)
            else:
                self.link(p, q, serve)

    def batch(self, p: int, plan, left: list, total: int) -> None:
        sim = self.sim
        if not left:
            sim.input(p, SweepFinished(DB, plan.sweep_id, total))
            return
        batch, peers = left[0], [q for q in self.live() if q != p]
        copies: dict[bytes, list] = {k: [] for k in batch}
        pending = set(peers)

        def answered(q):
            pending.discard(q)
            if pending:
                return
            for key in batch:
                sim.input(p, SweptCopies(DB, key, plan.sweep_id, tuple(copies[key])))
            sim.at(sim.now + 0.001, lambda: self.batch(p, plan, left[1:], total))

        if not peers:
            answered(None)
        for q in peers:
            def read(i, q=q):
                if i == len(batch):
                    self.link(q, p, lambda: answered(q))
                    return
                key = batch[i]

                def locked():
                    found = sim.nodes[q].tdb.get(key)
                    if found is not None:
                        copies[key].append(Copy(q, *found))
                    sim.release(q, key)
                    read(i + 1, q)
                sim.acquire(q, key, "sweep", locked)
            self.link(p, q, lambda q=q: read(0, q))

    def closed_everywhere(self) -> bool:
        """No open epoch and no settled key remembered on any live node."""
        return not any(self.sim.nodes[q].core.settling.unsettled.any(DB)
                       or self.sim.nodes[q].core.settling.unsettled.settled_count(DB)
                       for q in self.live())


def _clients(sim, keys, ops, base, nodes):
    clients = [FetchLockClient(sim, p, base + 10 * p + i, keys[(p + i) % len(keys)], ops=ops)
               for p in nodes for i in range(2)]
    for c in clients:
        c.start(sim.now + sim.rng.random() * 0.001)
    return clients


def _new_key_of_a_moved_slot(sim, sweeps, old_map, tag: bytes) -> None:
    """A key never used, whose slot the change from `old_map` moved: a call for it from a node
    that is not its lmaster completes without any gather."""
    key = next(k for k in (tag + b"%d" % i for i in range(10_000))
               if lmaster_of(k, sim.vnnmap.map) != lmaster_of(k, old_map))
    lmaster = lmaster_of(key, sim.vnnmap.map)
    caller = next(q for q in sweeps.live() if q != lmaster)
    before = dict(sweeps.gathers)
    client = sim.call(caller, key)
    sim.run(until=sim.now + 0.1)
    assert sim.replies[client], "the call was answered"
    assert sweeps.gathers == before, "no gather for a new key after the sweep"
    assert sim.dmasters(key) == [caller]


@pytest.mark.parametrize("seed", range(240))
def test_sweeps_amid_traffic_losses_and_rejoins_keep_the_invariants_and_end_the_gathers(seed):
    n = 3 + seed % 2
    lost = seed % n
    sim = Sim(n, seed=7000 + seed)
    sweeps = SimSweeps(sim, slow_gathers=0.005 if seed % 3 == 0 else 0.0)
    keys = [key_with_lmaster(i % n, n, prefix=b"w%d-%d-" % (seed, i)) for i in range(3 * n)]
    clients = _clients(sim, keys, 25, 0, range(n))
    sim.run(until=0.01 + 0.01 * sim.rng.random())
    kept, done_before = _lose_node_and_recover(sim, lost, 8, clients)
    for p in sweeps.live():               # sweeps start at random moments amid the traffic
        sim.at(sim.now + 0.004 * sim.rng.random(), lambda p=p: sweeps.start(p))
    sim.run(until=sim.now + 1.0)
    alive = [c for c in clients if c.pnn != lost]
    assert all(c.done == c.ops and not c.errors for c in alive), [
        (c.pnn, c.key, c.done, c.errors) for c in alive if c.done < c.ops]
    assert sweeps.closed_everywhere()
    # every key's lmaster knows its dmaster now (nothing is suspect any more) -- _check_keys
    # also checks one dmaster, no lost use and no stale copy outranking the dmaster
    _check_keys(sim, keys, kept, done_before, alive, gone=(lost,))
    for key in keys:
        lmaster = lmaster_of(key, sim.vnnmap.map)
        holders = sim.dmasters(key)
        if holders:
            assert sim.nodes[lmaster].tdb[key][0].dmaster == holders[0]
    _new_key_of_a_moved_slot(sim, sweeps, list(range(n)), b"fresh%d-" % seed)

    # the node comes back while the others are busy; sweeps run again, some interrupted by a
    # second loss of the same node in half of the seeds
    more = _clients(sim, keys, 20, 500, [p for p in range(n) if p != lost])
    sim.run(until=sim.now + 0.003 * sim.rng.random())
    before_rejoin = list(sim.vnnmap.map)
    kept, done_before = _rejoin(sim, lost, 9, more)
    for p in sweeps.live():
        sim.at(sim.now + 0.004 * sim.rng.random(), lambda p=p: sweeps.start(p))
    if seed % 2:
        sim.run(until=sim.now + 0.002 * sim.rng.random())
        kept, done_before = _lose_node_and_recover(sim, lost, 10, more)
        for p in sweeps.live():
            sim.at(sim.now + 0.004 * sim.rng.random(), lambda p=p: sweeps.start(p))
    sim.run(until=sim.now + 1.0)
    gone = (lost,) if seed % 2 else ()
    alive = [c for c in more if c.pnn not in gone]
    assert all(c.done == c.ops and not c.errors for c in alive), [
        (c.pnn, c.key, c.done, c.errors) for c in alive if c.done < c.ops]
    assert sweeps.closed_everywhere()
    _check_keys(sim, keys, kept, done_before, alive, gone=gone)
    _new_key_of_a_moved_slot(sim, sweeps, list(range(n)) if seed % 2 else before_rejoin,
                             b"again%d-" % seed)


# -- the key-list request ------------------------------------------------------------------------

def test_the_sweep_key_request_round_trips_and_malformed_ones_are_refused():
    import struct

    from ctdblab.daemon.protocol import Control, ProtocolError, SweepKeys, pack_request, unpack_request
    op = Control.PYCTDB_SWEEP_KEYS
    ask = SweepKeys(DB, 1, list(NEW), [2], [list(OLD), list(NEW)])
    assert unpack_request(op, pack_request(op, ask)) == ask
    packed = ask.pack()
    for cut in (0, 4, 8, 12, len(packed) - 1):
        with pytest.raises(ProtocolError):
            SweepKeys.unpack_from(packed[:cut])
    absurd = struct.pack("<III", DB, 1, 0xFFFFFFFF)          # a count that is not allocated
    with pytest.raises(ProtocolError):
        SweepKeys.unpack_from(absurd)
    absurd_map = struct.pack("<IIIII", DB, 1, 0, 0, 1) + struct.pack("<I", 0xFFFFFFFF)
    with pytest.raises(ProtocolError):
        SweepKeys.unpack_from(absurd_map)
