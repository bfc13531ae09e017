"""Keys settled on first use after a membership change (core/db/unsettled.py, core/db/settling.py):
which keys the lmaster must settle, the gather that settles them, a REQ_DMASTER that settles one
at once, and calls from nodes whose copy names a lost node."""

from __future__ import annotations

from ctdblab.daemon.core.db.ltdbrules import lmaster_of
from ctdblab.daemon.core.db.migration import (
    CopiesGathered, DbThawed, ForceRecovery, GatherCopies, KeysUnsettled, LocalCall, MigrationCore,
    MigrationSettings, PeerPacket, ReplyToClient, Requeue, SendPacket, StoreRecord, VnnMapChanged,
)
from ctdblab.daemon.core.db.partial_recovery import Copy, slot_stable_vnnmap
from ctdblab.daemon.core.db.unsettled import Unsettled, settle_copies
from ctdblab.daemon.protocol.packets import ReplyDmaster, ReqCall, ReqDmaster
from ctdblab.daemon.protocol.types import LtdbHeader, VnnMap
from test_db_migration import DB, MIGRATE, NULL, key_with_lmaster
from ctdblab.daemon.core.db.migration import DbAttached

OLD = (0, 1, 2)
NEW = tuple(slot_stable_vnnmap(list(OLD), [0, 1]))          # node 2 lost: (0, 1, 0)


def H(rsn: int, dmaster: int, flags: int = 0) -> LtdbHeader:
    return LtdbHeader(rsn=rsn, dmaster=dmaster, reserved1=0, flags=flags)


def moved_key() -> bytes:
    """A key of node 2's slot, now node 0's."""
    key = key_with_lmaster(2, 3, prefix=b"moved")
    assert lmaster_of(key, NEW) == 0
    return key


def kept_key(lmaster: int) -> bytes:
    key = key_with_lmaster(lmaster, 3, prefix=b"kept")
    assert lmaster_of(key, NEW) == lmaster
    return key


def core_after_loss(pnn: int = 0) -> MigrationCore:
    core = MigrationCore(MigrationSettings(pnn=pnn), VnnMap(5, list(OLD)))
    core.step(DbAttached(DB, "locking.tdb"))
    core.step(VnnMapChanged(VnnMap(6, list(NEW))), None, 0.0)
    return core


def call(key: bytes, reqid: int = 1) -> LocalCall:
    return LocalCall(("smbd", reqid), reqid, DB, key, NULL, MIGRATE)


# -- which keys are suspect ---------------------------------------------------------------------

def test_the_lmaster_suspects_moved_slots_lost_dmasters_and_cut_off_hand_offs_only():
    u = Unsettled()
    assert not u.add_epoch(DB, OLD, OLD)                 # the same map: nothing can be unsettled
    assert u.add_epoch(DB, OLD, NEW, [b"handed"])
    assert u.suspect(DB, moved_key(), None, 0)                        # slot moved, no copy
    assert u.suspect(DB, kept_key(1), (H(4, 2), b"x"), 1)             # names the lost node
    assert not u.suspect(DB, kept_key(1), (H(4, 0), b"x"), 1)         # names a live node
    assert u.suspect(DB, b"handed", None, lmaster_of(b"handed", NEW))
    assert not u.suspect(DB, moved_key(), (H(4, 0), b"x"), 0)         # names itself: the truth
    assert not u.suspect(DB, moved_key(), None, 0)                    # ... and is settled now
    u.add_epoch(DB, OLD, NEW, [b"later"])                # the recovery's keys join the epoch
    assert len(u.epochs(DB)) == 1 and b"later" in u.epochs(DB)[0].keys
    assert u.lost_nodes(DB) == {2}
    u.clear(DB)
    assert not u.any(DB) and not u.suspect(DB, moved_key(), None, 0)


def test_a_key_settled_before_a_second_change_is_suspect_again_if_that_change_touches_it():
    u = Unsettled()
    u.add_epoch(DB, OLD, NEW)
    key = kept_key(1)
    assert u.suspect(DB, key, (H(4, 2), b""), 1)
    u.settle(DB, key)
    assert not u.suspect(DB, key, (H(4, 2), b""), 1)
    u.add_epoch(DB, NEW, (0, 0, 0))                      # then node 1 is lost too
    assert u.suspect(DB, key, None, 0)                   # its slot moved again


def test_the_merge_keeps_a_live_self_claim_or_takes_the_newest_copy_with_a_higher_rsn():
    key = moved_key()
    # node 1 names itself: the lmaster (0) points at it, ranking below its copy (a full
    # recovery keeps the first of two equal rsns: the pointer's data may be stale)
    assert settle_copies(key, 0, NEW, None, [Copy(1, H(7, 1), b"v")]) == (H(6, 1), b"v")
    # nobody names itself (the dmaster was lost): the newest copy, rsn + 1, on the lmaster
    header, data = settle_copies(key, 0, NEW, (H(3, 2), b"old"), [Copy(1, H(6, 2), b"new")])
    assert (header.rsn, header.dmaster, data) == (7, 0, b"new")
    assert settle_copies(key, 0, NEW, None, []) is None          # no copy anywhere: a new key
    assert settle_copies(key, 0, NEW, (H(6, 1), b"v"), [Copy(1, H(7, 1), b"v")]) is None
    assert settle_copies(key, 0, NEW, (H(7, 1), b"v"), [Copy(1, H(7, 1), b"v")]) == (H(6, 1), b"v")
    assert settle_copies(key, 0, NEW, None, [Copy(1, H(0, 1), b"")]) == (H(0, 1), b"")


# -- on the migration core ----------------------------------------------------------------------

def test_the_new_lmaster_gathers_instead_of_making_itself_dmaster():
    core = core_after_loss(0)
    key = moved_key()
    assert core.step(call(key, 1), None, 1.0) == [GatherCopies(DB, key)]
    assert core.step(call(key, 2), None, 1.0) == []                  # waits behind the first
    actions = core.step(CopiesGathered(DB, key, (Copy(1, H(7, 1), b"v"),)), None, 1.1)
    stores = [a for a in actions if isinstance(a, StoreRecord)]
    assert [(s.header.dmaster, s.header.rsn) for s in stores] == [(1, 6)]
    requeued = [a.event for a in actions if isinstance(a, Requeue)]
    assert [e.reqid for e in requeued] == [1, 2] and all(e.requeued for e in requeued)
    # run again with the stored pointer: the call goes to node 1, the second collapses into it
    sent = core.step(requeued[0], (H(6, 1), b"v"), 1.2)
    assert [(a.dest, type(a.body)) for a in sent if isinstance(a, SendPacket)] == [(1, ReqCall)]
    assert core.step(requeued[1], (H(6, 1), b"v"), 1.2) == []
    assert core.stats.client_req_call == 2             # each call counted once


def test_a_req_dmaster_settles_the_key_at_once_and_the_gathers_answer_is_ignored():
    core = core_after_loss(0)
    key = moved_key()
    assert core.step(call(key), None, 1.0) == [GatherCopies(DB, key)]
    # node 1 named itself and gave the record to node 0 meanwhile: believed, though the
    # lmaster has no copy (without the epoch that forces a recovery)
    actions = core.step(PeerPacket(1, 40, 6, ReqDmaster(DB, 9, 0, key, b"v", 0)), None, 1.05)
    assert not any(isinstance(a, ForceRecovery) for a in actions)
    landed = [a for a in actions if isinstance(a, StoreRecord) and a.header.dmaster == 0]
    assert landed and landed[-1].data == b"v"
    assert any(isinstance(a, Requeue) and isinstance(a.event, LocalCall) for a in actions)
    assert core.step(CopiesGathered(DB, key, (Copy(1, H(9, 0), b"v"),)), (H(10, 0), b"v"), 1.1) == []
    assert core.settling.settled_by_handoff == 1


def test_without_an_epoch_a_req_dmaster_from_a_stranger_still_forces_a_recovery():
    core = MigrationCore(MigrationSettings(pnn=0), VnnMap(6, list(NEW)))
    core.step(DbAttached(DB, "locking.tdb"))
    key = moved_key()
    actions = core.step(PeerPacket(1, 40, 6, ReqDmaster(DB, 9, 0, key, b"v", 0)), None, 1.0)
    assert any(isinstance(a, ForceRecovery) for a in actions)


def test_a_peers_call_waits_at_the_lmaster_and_a_copy_naming_a_lost_node_is_no_guide():
    core = core_after_loss(0)
    key = moved_key()
    pkt = PeerPacket(1, 50, 6, ReqCall(MIGRATE, DB, NULL, 0, key, b""))
    assert core.step(pkt, None, 1.0) == [GatherCopies(DB, key)]
    actions = core.step(CopiesGathered(DB, key, (Copy(1, H(5, 2), b"stale"),)), None, 1.1)
    (store,) = [a for a in actions if isinstance(a, StoreRecord)]
    assert (store.header.dmaster, store.header.rsn, store.data) == (0, 6, b"stale")
    (again,) = [a.event for a in actions if isinstance(a, Requeue)]
    given = core.step(again, (store.header, store.data), 1.2)
    assert [a.dest for a in given if isinstance(a, SendPacket)] == [1]      # REPLY_DMASTER to 1
    assert isinstance([a for a in given if isinstance(a, SendPacket)][0].body, ReplyDmaster)

    # node 1, not the lmaster, holds a copy naming node 2 (lost): its call goes to the lmaster
    other = core_after_loss(1)
    sent = other.step(call(key), (H(5, 2), b"stale"), 1.0)
    assert [a.dest for a in sent if isinstance(a, SendPacket)] == [0]


def test_a_recovery_report_adds_the_cut_off_hand_offs_and_a_full_merge_drops_the_epoch():
    core = core_after_loss(1)
    key = kept_key(1)
    record = (H(4, 0), b"x")                     # names live node 0: trusted ...
    assert [type(a) for a in core.step(call(key), record, 1.0)] == [SendPacket]
    core = core_after_loss(1)
    core.step(KeysUnsettled(DB, OLD, frozenset([key])))    # ... unless its hand-off was cut off
    assert core.step(call(key), record, 1.0) == [GatherCopies(DB, key)]
    actions = core.step(DbThawed(DB))            # a full recovery merged every record
    assert any(isinstance(a, Requeue) for a in actions)
    assert not core.settling.unsettled.any(DB)


def test_a_map_change_abandons_the_gathers_under_way():
    core = core_after_loss(0)
    key = moved_key()
    core.step(call(key), None, 1.0)
    actions = core.step(VnnMapChanged(VnnMap(7, [0, 0, 0])), None, 2.0)
    assert [type(a.event) for a in actions if isinstance(a, Requeue)] == [LocalCall]
    assert core.step(CopiesGathered(DB, key, ()), None, 2.1) == []     # too late: ignored
    assert not any(isinstance(a, ReplyToClient) for a in actions)


def test_a_node_that_keeps_failing_the_gather_forces_a_recovery_and_the_calls_keep_waiting():
    from ctdblab.daemon.core.db.settling import MAX_FAILED_GATHERS
    core = core_after_loss(0)
    key = moved_key()
    core.step(call(key), None, 1.0)
    for attempt in range(1, MAX_FAILED_GATHERS + 1):
        actions = core.step(CopiesGathered(DB, key, (), complete=False), None, 1.0 + attempt)
        assert [a for a in actions if isinstance(a, GatherCopies)] == [GatherCopies(DB, key, 0.2)]
        forced = [a for a in actions if isinstance(a, ForceRecovery)]
        assert bool(forced) == (attempt == MAX_FAILED_GATHERS)
    assert not any(isinstance(a, (Requeue, ReplyToClient)) for a in actions)
    released = core.step(VnnMapChanged(VnnMap(7, [0, 0, 0])), None, 20.0)   # the recovery's map
    assert [type(a.event) for a in released if isinstance(a, Requeue)] == [LocalCall]


def test_no_gather_runs_in_recovery_mode_the_waiting_keys_gather_when_it_ends():
    from ctdblab.daemon.core.db.migration import RecoveryMode
    core = core_after_loss(0)
    key = moved_key()
    core.step(RecoveryMode(True))
    assert core.step(call(key), None, 1.0) == []                        # waits, no gather yet
    assert core.step(CopiesGathered(DB, key, (), complete=False), None, 1.1) == []   # no retry
    actions = core.step(RecoveryMode(False))
    assert GatherCopies(DB, key) in actions


def test_the_same_node_lost_a_second_time_opens_a_new_epoch():
    """Found by the data checker: node 0 lost, back, lost again gives the same maps twice; a key
    settled between the two (pointing at node 0 again) must be suspect after the second loss."""
    u = Unsettled()
    key = kept_key(1)
    u.add_epoch(DB, OLD, NEW)                            # node 2 lost
    u.settle(DB, key)
    u.add_epoch(DB, NEW, OLD)                            # node 2 back
    u.settle(DB, key)                                    # its record given to node 2 again
    assert not u.suspect(DB, key, (H(9, 2), b"v"), 1)
    u.add_epoch(DB, OLD, NEW)                            # node 2 lost again
    assert len(u.epochs(DB)) == 3
    assert u.suspect(DB, key, (H(9, 2), b"v"), 1)
    u.add_epoch(DB, OLD, NEW, [b"cut"])                  # the recovery's report of that change
    assert len(u.epochs(DB)) == 3 and b"cut" in u.epochs(DB)[-1].keys
