"""pyctdbd's recovery after a node loss or join (core/db/partial_recovery.py, core/db/unsettled.py):
the vnnmap keeps its slots, the recovery only records the change and the cut-off hand-offs, and
each key's lmaster settles it on first use, leaving one dmaster its lmaster knows, holding the
newest surviving copy -- checked on the migration core's own simulation (smbd-like clients on
every node, nodes lost mid-run and rejoining)."""

from __future__ import annotations

import pytest

from ctdblab.daemon.core.db.ltdbrules import lmaster_of
from ctdblab.daemon.core.db.migration import KeysUnsettled, RecoveryMode, VnnMapChanged
from ctdblab.daemon.core.db.partial_recovery import (
    Copy, came_from_all, plan_repairs, slot_stable_vnnmap,
)
from ctdblab.daemon.core.recovery import plan_recovery
from ctdblab.daemon.protocol import (
    INVALID_GENERATION, Control, LtdbHeader, RecBuffer, RecData, RecoveryDefer, RecoveryScan,
    ScanResult, pack_reply, pack_request, unpack_reply, unpack_request,
)
from ctdblab.daemon.protocol.types import VnnMap
from ctdblab.daemon.core.db.migration import DbAttached, MigrationCore, MigrationSettings
from test_db_migration import COUNTER, DB, FetchLockClient, Node, Sim, key_with_lmaster


def H(rsn: int, dmaster: int) -> LtdbHeader:
    return LtdbHeader(rsn=rsn, dmaster=dmaster, reserved1=0, flags=0)


# -- the vnnmap -------------------------------------------------------------------------------

def test_slot_stable_vnnmap_gives_only_the_lost_slots_away():
    assert slot_stable_vnnmap([0, 1, 2], [0, 1]) == [0, 1, 0]
    assert slot_stable_vnnmap([0, 1, 2, 3], [0, 2, 3]) == [0, 0, 2, 3]
    assert slot_stable_vnnmap([0, 1, 0], [0]) == [0, 0, 0]
    assert slot_stable_vnnmap([0, 1, 2, 3], [1, 3]) == [1, 1, 3, 3]


def test_a_joining_node_or_no_previous_map_gives_a_fresh_map():
    assert slot_stable_vnnmap([0, 1, 0], [0, 1, 2]) == [0, 1, 2]
    assert slot_stable_vnnmap([], [2, 0]) == [0, 2]
    assert slot_stable_vnnmap([0, 1], []) == []
    plan = plan_recovery([0, 1], [0, 1], 0, 99, previous_map=[0, 1, 2])
    assert plan.vnnmap == VnnMap(99, [0, 1, 0])
    assert plan_recovery([0, 1, 2], [0, 1, 2], 0, 99).vnnmap.map == [0, 1, 2]


def test_only_keys_of_the_lost_slots_change_lmaster():
    keys = [b"k%d" % i for i in range(3000)]
    old, new = [0, 1, 2, 3], slot_stable_vnnmap([0, 1, 2, 3], [0, 1, 3])
    moved = [k for k in keys if lmaster_of(k, old) != lmaster_of(k, new)]
    assert moved and all(lmaster_of(k, old) == 2 for k in moved)
    rebuilt = [k for k in keys if lmaster_of(k, old) != lmaster_of(k, [0, 1, 3])]
    assert len(rebuilt) > 2 * len(moved)          # what CTDB's rebuilt map would move


# -- what is reported, and agreement ----------------------------------------------------------

def test_nodes_must_have_served_in_the_same_generation():
    assert came_from_all({0: 7, 1: 7}, INVALID_GENERATION) == 7
    assert came_from_all({0: 7, 1: 8}, INVALID_GENERATION) is None
    assert came_from_all({0: INVALID_GENERATION, 1: INVALID_GENERATION}, INVALID_GENERATION) is None


# -- repairs, case by case --------------------------------------------------------------------

NEW = [0, 1, 0]                      # node 2 was lost from [0, 1, 2]


def _repairs(key, *copies):
    return plan_repairs(NEW, {key: [Copy(p, h, d) for p, h, d in copies]})


def test_a_key_whose_copies_agree_needs_nothing():
    key = key_with_lmaster(1, 3)
    assert _repairs(key, (1, H(6, 0), b"lm"), (0, H(7, 0), b"mine")) == {}


def test_a_copy_pointing_at_the_lost_node_is_pointed_at_the_dmaster():
    key = key_with_lmaster(1, 3)
    repairs = _repairs(key, (0, H(7, 0), b"mine"), (1, H(5, 2), b"old"))
    assert [(r.header.dmaster, r.header.rsn) for r in repairs[1]] == [(0, 5)]
    assert 0 not in repairs


def test_a_key_whose_dmaster_was_lost_gets_the_newest_surviving_copy_at_its_lmaster():
    key = key_with_lmaster(1, 3)
    repairs = _repairs(key, (1, H(5, 2), b"lm"), (0, H(9, 2), b"newest"))
    (at_lmaster,) = repairs[1]
    assert (at_lmaster.header.dmaster, at_lmaster.header.rsn, at_lmaster.data) == (1, 10, b"newest")
    assert [(r.header.dmaster, r.data) for r in repairs[0]] == [(1, b"newest")]


def test_a_lost_lmaster_is_replaced_and_learns_the_live_dmaster():
    key = key_with_lmaster(2, 3)                           # now node 0's slot
    repairs = _repairs(key, (1, H(7, 1), b"mine"), (0, H(3, 2), b"stale"))
    assert 1 not in repairs                                # the dmaster keeps its record
    (pointer,) = repairs[0]
    assert (pointer.header.dmaster, pointer.header.rsn) == (1, 3)


def test_a_new_lmaster_without_a_copy_gets_a_pointer():
    key = key_with_lmaster(2, 3)
    repairs = _repairs(key, (1, H(7, 1), b"mine"))
    (pointer,) = repairs[0]
    assert (pointer.header.dmaster, pointer.data) == (1, b"mine")


def test_a_hand_off_cut_off_between_survivors_is_completed_at_the_lmaster():
    key = key_with_lmaster(1, 3)
    # node 0 gave the record to node 2 at rsn 30 (its copy names 2); the lmaster 1 never heard
    repairs = _repairs(key, (0, H(30, 1), b"newest"), (1, H(28, 0), b"lm"))
    (kept,) = repairs[1]
    assert (kept.header.dmaster, kept.header.rsn, kept.data) == (1, 31, b"newest")


def test_two_self_claims_keep_the_newer():
    key = key_with_lmaster(0, 3)
    repairs = _repairs(key, (0, H(4, 0), b"older"), (1, H(9, 1), b"newer"))
    assert [(r.header.dmaster, r.data) for r in repairs[0]] == [(1, b"older")]
    assert 1 not in repairs


# -- the payloads -----------------------------------------------------------------------------

def test_handoffs_and_defer_payloads_round_trip():
    ask = RecoveryScan([0, 1], [0x7A19D84D, 0x4E66C2B2])
    op = Control.PYCTDB_RECOVERY_HANDOFFS
    assert unpack_request(op, pack_request(op, ask)) == ask
    result = ScanResult(42, [RecBuffer(1, [RecData(0, b"k", b"")]), RecBuffer(2, [])])
    assert unpack_reply(op, pack_reply(op, result)) == result
    defer = RecoveryDefer(9, [0, 1, 0], [RecBuffer(1, [RecData(0, b"k", b"")])])
    op = Control.PYCTDB_RECOVERY_DEFER
    assert unpack_request(op, pack_request(op, defer)) == defer


@pytest.mark.parametrize("payload", [b"", b"\x01\x00\x00\x00",
                                     b"\x01\x00\x00\x00\x01\x00\x00\x00\x05"])
def test_malformed_payloads_are_refused(payload):
    from ctdblab.daemon.protocol import ProtocolError
    for decode in (lambda d: unpack_request(Control.PYCTDB_RECOVERY_HANDOFFS, d),
                   lambda d: unpack_request(Control.PYCTDB_RECOVERY_DEFER, d),
                   lambda d: unpack_reply(Control.PYCTDB_RECOVERY_HANDOFFS, d),
                   lambda d: unpack_request(Control.PYCTDB_GATHER_COPIES, d)):
        with pytest.raises(ProtocolError):
            decode(payload)
    with pytest.raises(ProtocolError):            # absurd counts are refused, not allocated
        unpack_request(Control.PYCTDB_RECOVERY_HANDOFFS, b"\xff\xff\xff\xff\x00\x00\x00\x00")
    with pytest.raises(ProtocolError):
        unpack_request(Control.PYCTDB_RECOVERY_DEFER, b"\x01\x00\x00\x00\xff\xff\xff\xff")


# -- on the migration simulation --------------------------------------------------------------

def _partial_recovery(sim: Sim, members: list[int], generation: int, clients: list
                      ) -> tuple[dict[bytes, int], dict[int, int]]:
    """pyctdbd's recovery of `members` after a membership change: recovery mode, the new
    slot-stable vnnmap, the cut-off hand-offs collected and handed to every node as the epoch's
    keys (KeysUnsettled), recovery mode off -- nothing is scanned or repaired; the keys'
    lmasters settle them on first use (core/db/unsettled.py). Returns per key the counter of
    the copy CTDB's merge would keep at this moment, and each client's uses then."""
    old_map = list(sim.vnnmap.map)
    for p in members:
        sim.apply(p, sim.nodes[p].core.step(RecoveryMode(True)), None)
    sim.vnnmap = VnnMap(generation, slot_stable_vnnmap(old_map, members))
    for p in members:
        sim.apply(p, sim.nodes[p].core.step(VnnMapChanged(sim.vnnmap), None, sim.now), None)
    sim.run(until=sim.now + 0.01)            # old packets in flight arrive and are dropped
    handed_off = set().union(*(sim.nodes[p].core.handoffs.take(DB, sim.now) for p in members))
    kept = {}
    for key in {k for p in members for k in sim.nodes[p].tdb}:
        found = [Copy(p, *sim.nodes[p].tdb[key]) for p in members if key in sim.nodes[p].tdb]
        winner = max(sorted(found, key=lambda c: c.pnn),
                     key=lambda c: (c.header.rsn, c.header.dmaster == c.pnn))
        kept[key] = COUNTER.unpack(winner.data)[0] if winner.data else 0
    done_at_recovery = {id(c): c.done for c in clients}
    for p in members:
        sim.apply(p, sim.nodes[p].core.step(KeysUnsettled(DB, tuple(old_map), frozenset(handed_off))),
                  None)
    for p in members:
        sim.apply(p, sim.nodes[p].core.step(RecoveryMode(False)), None)
    return kept, done_at_recovery


def _lose_node_and_recover(sim: Sim, lost: int, generation: int, clients: list):
    """`lost` dies (its records with it); the survivors recover."""
    plain_input = sim.input
    sim.input = lambda p, e: None if p == lost else plain_input(p, e)     # noqa: E731
    sim.drop = lambda s, d, pkt: lost in (s, d)
    sim.nodes[lost].tdb.clear()
    sim.dead = {lost}
    sim.restore_input = plain_input
    return _partial_recovery(sim, [n.pnn for n in sim.nodes if n.pnn != lost], generation, clients)


def _rejoin(sim: Sim, node: int, generation: int, clients: list):
    """`node` starts afresh (empty databases, a new daemon) and every node recovers together."""
    sim.input = sim.restore_input
    sim.drop = lambda s, d, pkt: False
    sim.dead = set()
    fresh = MigrationCore(MigrationSettings(pnn=node), sim.vnnmap)
    fresh.step(DbAttached(DB, "locking.tdb"))
    sim.nodes[node] = Node(node, fresh)
    return _partial_recovery(sim, [n.pnn for n in sim.nodes], generation, clients)


def _check_keys(sim: Sim, keys, kept, done_before, clients, gone=()) -> None:
    for key in keys:
        if not any(key in n.tdb for n in sim.nodes if n.pnn not in gone):
            continue                     # only the lost node ever had it
        holders = sim.dmasters(key)
        after = sum(c.done - done_before[id(c)] for c in clients if c.key == key)
        if not holders:
            # its dmaster was lost and no call needed it since: the first one settles it
            assert after == 0, key
            live = next(n.pnn for n in sim.nodes if n.pnn not in gone)
            sim.call(live, key)
            sim.run(until=sim.now + 0.5)
            holders = sim.dmasters(key)
        assert len(holders) == 1, (key, holders)
        value = sim.nodes[holders[0]].tdb[key][1]
        # every use after the recovery counted on top of the copy the recovery kept
        assert (COUNTER.unpack(value)[0] if value else 0) == kept.get(key, 0) + after
        lmaster = lmaster_of(key, sim.vnnmap.map)
        # the lmaster knows the dmaster, or has not needed to yet: it would settle the key first
        known = sim.nodes[lmaster].tdb.get(key)
        assert ((known is not None and known[0].dmaster == holders[0])
                or sim.nodes[lmaster].core.settling.unsettled.suspect(DB, key, known, lmaster))
        for node in sim.nodes:            # stale copies elsewhere never outrank the dmaster's
            if node.pnn not in gone and key in node.tdb and node.pnn != holders[0]:
                assert node.tdb[key][0].rsn < sim.nodes[holders[0]].tdb[key][0].rsn
    assert not [(n.pnn, f.reason) for n in sim.nodes for f in n.forced]


@pytest.mark.parametrize("seed", range(12))
def test_clients_finish_and_lose_nothing_after_a_loss_and_a_rejoin(seed):
    n, lost = 4, seed % 4
    sim = Sim(n, seed=seed)
    keys = [key_with_lmaster(i % n, n, prefix=b"s%d-%d-" % (seed, i)) for i in range(8)]
    clients = [FetchLockClient(sim, p, 10 * p + i, keys[(p + i) % len(keys)], ops=60)
               for p in range(n) for i in range(4)]
    for c in clients:
        c.start(sim.rng.random() * 0.001)
    sim.run(until=0.03 + 0.02 * sim.rng.random())
    kept, done_before = _lose_node_and_recover(sim, lost, 8, clients)
    sim.run(until=sim.now + 2.0)        # far less than the 30 s collapse timeout
    alive = [c for c in clients if c.pnn != lost]
    assert all(c.done == c.ops and not c.errors for c in alive), [
        (c.pnn, c.key, c.done, c.errors) for c in alive if c.done < c.ops]
    _check_keys(sim, keys, kept, done_before, alive, gone=(lost,))
    sim.run(until=sim.now + 6.0)        # past the hand-off log's window: only the map tells

    # the node comes back afresh while new clients on the others are busy; its own clients
    # start once it is back (smbd starts after the node's first recovery)
    more = [FetchLockClient(sim, p, 100 + 10 * p + i, keys[(p + 2 * i) % len(keys)], ops=40)
            for p in range(n) for i in range(3)]
    for c in more:
        if c.pnn != lost:
            c.start(sim.now + sim.rng.random() * 0.001)
    sim.run(until=sim.now + 0.005 + 0.01 * sim.rng.random())
    kept, done_before = _rejoin(sim, lost, 9, more)
    assert sim.vnnmap.map == list(range(n))           # the node took its slot back
    for c in more:
        if c.pnn == lost:
            c.start(sim.now)
    sim.run(until=sim.now + 2.0)
    assert all(c.done == c.ops and not c.errors for c in more), [
        (c.pnn, c.key, c.done, c.errors) for c in more if c.done < c.ops]
    _check_keys(sim, keys, kept, done_before, more)


# -- hand-offs cut off by the generation change -----------------------------------------------

def _core_on_generation_6():
    from ctdblab.daemon.core.db.migration import DbAttached, MigrationCore, MigrationSettings
    core = MigrationCore(MigrationSettings(pnn=0), VnnMap(5, [0, 1, 2]))
    core.step(DbAttached(DB, "locking.tdb"))
    core.step(VnnMapChanged(VnnMap(6, [0, 1, 0])), None, 0.0)
    return core


def _reply_dmaster(generation: int, key: bytes):
    from ctdblab.daemon.core.db.migration import PeerPacket
    from ctdblab.daemon.protocol import ReplyDmaster
    return PeerPacket(1, 77, generation, ReplyDmaster(DB, 9, key, b"v", 0))


def test_a_hand_off_of_the_previous_generation_dropped_after_recovery_forces_one_recovery():
    from ctdblab.daemon.core.db.migration import ForceRecovery
    core = _core_on_generation_6()
    forced = [a for a in core.step(_reply_dmaster(5, b"k1"), None, 0.1) if isinstance(a, ForceRecovery)]
    assert len(forced) == 1 and "generation 5" in forced[0].reason
    assert not [a for a in core.step(_reply_dmaster(5, b"k2"), None, 0.2) if isinstance(a, ForceRecovery)]
    assert core.handoffs.take(DB, 0.3) == {b"k1", b"k2"}     # the next recovery looks at both


def test_hand_offs_of_other_generations_are_not_believed():
    core = _core_on_generation_6()
    assert core.step(_reply_dmaster(1234, b"k"), None, 0.1) == []
    assert core.handoffs.take(DB, 0.2) == set()


def test_a_drop_during_recovery_is_reported_by_the_scan_or_forces_a_recovery_after_it():
    from ctdblab.daemon.core.db.migration import DbThawed, ForceRecovery
    core = _core_on_generation_6()
    core.step(RecoveryMode(True))
    assert core.step(_reply_dmaster(5, b"early"), None, 0.1) == []
    assert core.handoffs.take(DB, 0.1) == {b"early"}                  # the scan has it
    core.step(_reply_dmaster(5, b"late"), None, 0.2)                    # after the scan
    assert [a for a in core.step(RecoveryMode(False)) if isinstance(a, ForceRecovery)]
    merged = _core_on_generation_6()                                    # a full recovery merged
    merged.step(RecoveryMode(True))
    merged.step(_reply_dmaster(5, b"k"), None, 0.1)
    merged.step(DbThawed(DB))
    assert not [a for a in merged.step(RecoveryMode(False)) if isinstance(a, ForceRecovery)]


def test_the_hand_off_log_forgets_old_entries_and_says_when_it_overflowed():
    from ctdblab.daemon.core.db.handoffs import HandoffLog
    log = HandoffLog(window=5.0, limit=3)
    log.gave(DB, b"a", 0.0)
    log.gave(DB, b"b", 4.0)
    assert log.take(DB, 6.0) == {b"b"} and not log.overflowed
    for i, key in enumerate([b"c", b"d", b"e", b"f"]):
        log.gave(DB, key, 6.0 + i * 0.1)
    assert log.overflowed                       # "b" or "c" was evicted inside the window
    log.reset_overflow()
    assert not log.overflowed


@pytest.mark.parametrize("seed", range(6))
def test_a_second_loss_right_after_the_first_recovery_loses_nothing(seed):
    """Two nodes of five die one after the other, the second while clients are still catching
    up after the first recovery: each loss is settled by the partial recovery on its own map."""
    n = 5
    first, second = seed % n, (seed + 2) % n
    sim = Sim(n, seed=100 + seed)
    keys = [key_with_lmaster(i % n, n, prefix=b"t%d-%d-" % (seed, i)) for i in range(10)]
    clients = [FetchLockClient(sim, p, 10 * p + i, keys[(p + i) % len(keys)], ops=80)
               for p in range(n) for i in range(3)]
    for c in clients:
        c.start(sim.rng.random() * 0.001)
    sim.run(until=0.03 + 0.02 * sim.rng.random())
    _lose_node_and_recover(sim, first, 8, clients)
    sim.run(until=sim.now + 0.002 + 0.003 * sim.rng.random())     # clients barely restarted

    # the second loss: both dead nodes' packets are dropped from now on
    plain_input = sim.restore_input
    sim.input = lambda p, e: None if p in (first, second) else plain_input(p, e)      # noqa: E731
    sim.drop = lambda s, d, pkt: bool({first, second} & {s, d})
    sim.nodes[second].tdb.clear()
    sim.dead = {first, second}
    members = [p for p in range(n) if p not in (first, second)]
    kept, done_before = _partial_recovery(sim, members, 9, clients)
    assert sorted(set(sim.vnnmap.map)) == members
    sim.run(until=sim.now + 2.0)
    alive = [c for c in clients if c.pnn in members]
    assert all(c.done == c.ops and not c.errors for c in alive), [
        (c.pnn, c.key, c.done, c.errors) for c in alive if c.done < c.ops]
    _check_keys(sim, keys, kept, done_before, alive, gone=(first, second))


@pytest.mark.parametrize("seed", range(8))
def test_the_same_node_lost_again_after_it_rejoined_loses_nothing(seed):
    """Loss, rejoin, and the same loss again (the same maps twice): keys settled and handed to
    the node while it was back must be settled again after its second loss."""
    n, lost = 3, seed % 3
    sim = Sim(n, seed=300 + seed)
    keys = [key_with_lmaster(i % n, n, prefix=b"a%d-%d-" % (seed, i)) for i in range(9)]

    def busy(ops, base):
        clients = [FetchLockClient(sim, p, base + 10 * p + i, keys[(p + i) % len(keys)], ops=ops)
                   for p in range(n) for i in range(3)]
        for c in clients:
            c.start(sim.now + sim.rng.random() * 0.001)
        return clients

    clients = busy(40, 0)
    sim.run(until=0.03)
    _lose_node_and_recover(sim, lost, 8, clients)
    sim.run(until=sim.now + 2.0)
    _rejoin(sim, lost, 9, [])
    back = busy(40, 500)                               # the node takes records again
    sim.run(until=sim.now + 2.0)
    assert all(c.done == c.ops for c in back)
    again = busy(60, 900)
    sim.run(until=sim.now + 0.005)
    kept, done_before = _lose_node_and_recover(sim, lost, 10, again)
    sim.run(until=sim.now + 2.0)
    alive = [c for c in again if c.pnn != lost]
    assert all(c.done == c.ops and not c.errors for c in alive), [
        (c.pnn, c.key, c.done, c.errors) for c in alive if c.done < c.ops]
    _check_keys(sim, keys, kept, done_before, alive, gone=(lost,))
