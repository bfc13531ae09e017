"""core/db/recovery_node.py: one node's answers to the recovery controls in every state (ctdbd
4.17's ctdb_freeze.c / ctdb_recover.c rules), and what it asks the shell to do."""

from __future__ import annotations

import itertools

from ctdblab.daemon.core.db import recovery_node as rn
from ctdblab.daemon.protocol import INVALID_GENERATION, DbFlag, LtdbHeader, RecData
from ctdblab.daemon.protocol.constants import RecordFlag

ME = 1
VOL, PERS = 0x11111111, 0x22222222
_tickets = itertools.count(1)


def node() -> rn.NodeRecovery:
    core = rn.NodeRecovery(ME)
    core.step(rn.Attached(VOL, "vol.tdb", 0, 7))
    core.step(rn.Attached(PERS, "pers.tdb", int(DbFlag.PERSISTENT), 7))
    return core


def replies(actions) -> list[rn.Reply]:
    return [a for a in actions if isinstance(a, rn.Reply)]


def ask(core, make):
    """Step a control event; its single reply (status, count)."""
    ticket = next(_tickets)
    actions = core.step(make(ticket))
    mine = [r for r in replies(actions) if r.ticket == ticket]
    assert len(mine) == 1, actions
    return mine[0].status, mine[0].count


def frozen(core, db_id=VOL) -> None:
    ticket = next(_tickets)
    assert rn.LockDatabase(db_id) in core.step(rn.Freeze(ticket, db_id))
    assert replies(core.step(rn.FreezeLocked(db_id, True))) == [rn.Reply(ticket, 0)]


def in_transaction(core, db_id=VOL, tid=9) -> None:
    frozen(core, db_id)
    assert ask(core, lambda t: rn.TransactionStart(t, db_id, tid)) == (0, None)


def rec(key: bytes, rsn: int, dmaster: int, value: bytes, flags: int = 0) -> RecData:
    return RecData(0, key, LtdbHeader(rsn=rsn, dmaster=dmaster, flags=flags).pack() + value)


def push(core, srvid, *records, lmasters=(0, 1, 2), last=True):
    return core.step(rn.PushData(srvid, tuple(records), lmasters, last))


def test_unknown_database_is_minus_one_for_every_control():
    core = node()
    for make in (lambda t: rn.Freeze(t, 5), lambda t: rn.Thaw(t, 5),
                 lambda t: rn.TransactionStart(t, 5, 9), lambda t: rn.TransactionCancel(t, 5),
                 lambda t: rn.TransactionCommit(t, 5, 9), lambda t: rn.Wipe(t, 5, 9),
                 lambda t: rn.Pull(t, 5, 77, 0), lambda t: rn.PushStart(t, 5, 77),
                 lambda t: rn.PushConfirm(t, 5)):
        assert ask(core, make)[0] == -1


def test_freeze_waits_for_the_lock_once_and_answers_every_waiter():
    core = node()
    first = core.step(rn.Freeze("a", VOL))
    assert first == [rn.Log(first[0].level, "Freeze db: vol.tdb"), rn.LockDatabase(VOL)]
    assert core.step(rn.Freeze("b", VOL)) == []             # pending: one lock, two waiters
    assert core.freeze_state(VOL) == (True, False)           # GET_DB_SEQNUM refused already
    assert replies(core.step(rn.FreezeLocked(VOL, True))) == [rn.Reply("a", 0), rn.Reply("b", 0)]
    assert ask(core, lambda t: rn.Freeze(t, VOL)) == (0, None)    # frozen: at once
    assert core.state(PERS).freeze is rn.FreezeMode.NONE


def test_a_freeze_that_cannot_lock_fails_its_waiters_and_can_be_tried_again():
    core = node()
    core.step(rn.Freeze("a", VOL))
    assert [r.status for r in replies(core.step(rn.FreezeLocked(VOL, False, "helper died")))] == [-1]
    assert core.freeze_state(VOL) == (False, False)
    assert rn.LockDatabase(VOL) in core.step(rn.Freeze("b", VOL))


def test_thaw_of_a_pending_freeze_fails_its_waiters_and_gives_up_the_lock():
    core = node()
    core.step(rn.Freeze("a", VOL))
    actions = core.step(rn.Thaw("t", VOL))
    assert rn.UnlockDatabase(VOL) in actions
    assert {(r.ticket, r.status) for r in replies(actions)} == {("a", -1), ("t", 0)}
    # the lock arriving late is given straight back
    assert core.step(rn.FreezeLocked(VOL, True)) == [rn.UnlockDatabase(VOL)]
    assert ask(core, lambda t: rn.Thaw(t, VOL)) == (0, None)     # thaw when not frozen: 0


def test_the_transaction_needs_a_frozen_database_and_its_tid():
    core = node()
    assert ask(core, lambda t: rn.TransactionStart(t, VOL, 9))[0] == -1     # not frozen
    in_transaction(core, tid=9)
    assert core.freeze_state(VOL) == (True, True)
    assert ask(core, lambda t: rn.Wipe(t, VOL, 8))[0] == -1                 # another tid
    assert ask(core, lambda t: rn.TransactionCommit(t, VOL, 8))[0] == -1
    assert ask(core, lambda t: rn.Wipe(t, VOL, 9)) == (0, None)
    assert core.state(VOL).transaction.wiped
    # a second start cancels the first: the wipe is forgotten
    assert ask(core, lambda t: rn.TransactionStart(t, VOL, 10)) == (0, None)
    assert core.state(VOL).transaction == rn.Transaction(10)
    assert ask(core, lambda t: rn.TransactionCancel(t, VOL)) == (0, None)
    assert ask(core, lambda t: rn.Wipe(t, VOL, 10))[0] == -1                # not started
    assert ask(core, lambda t: rn.TransactionCommit(t, VOL, 10))[0] == -1
    assert ask(core, lambda t: rn.TransactionCancel(t, VOL)) == (0, None)   # cancel again: 0


def test_commit_writes_the_transaction_and_takes_the_generation():
    core = node()
    in_transaction(core, tid=42)
    core.step(rn.Wipe("w", VOL, 42))
    core.step(rn.PushStart("p", VOL, 500))
    push(core, 500, rec(b"k", 4, 2, b"v"))
    actions = core.step(rn.TransactionCommit("c", VOL, 42))
    assert actions == [rn.Commit(VOL, True, ((b"k", LtdbHeader(4, 2).pack() + b"v"),))]
    # while the commit is written, the transaction cannot change
    for make in (lambda t: rn.Wipe(t, VOL, 42), lambda t: rn.TransactionCancel(t, VOL),
                 lambda t: rn.TransactionStart(t, VOL, 43), lambda t: rn.TransactionCommit(t, VOL, 42)):
        assert ask(core, make)[0] == -1
    assert core.state(VOL).generation == 7
    assert replies(core.step(rn.CommitDone(VOL))) == [rn.Reply("c", 0)]
    assert core.state(VOL).generation == 42
    assert core.freeze_state(VOL) == (True, False)


def test_a_failed_commit_is_minus_one_and_keeps_the_old_generation():
    core = node()
    in_transaction(core, tid=42)
    core.step(rn.TransactionCommit("c", VOL, 42))
    [reply] = replies(core.step(rn.CommitDone(VOL, "ChildError: disk full")))
    assert reply.status == -1 and "disk full" in reply.error
    assert core.state(VOL).generation == 7 and core.state(VOL).transaction is None


def test_a_thaw_during_the_commit_still_answers_the_commit():
    core = node()
    in_transaction(core, tid=42)
    core.step(rn.TransactionCommit("c", VOL, 42))
    assert rn.UnlockDatabase(VOL) in core.step(rn.Thaw("t", VOL))
    assert replies(core.step(rn.CommitDone(VOL))) == [rn.Reply("c", 0)]
    assert core.state(VOL).generation == 42


def test_detach_during_a_commit_fails_it():
    core = node()
    in_transaction(core, tid=42)
    core.step(rn.TransactionCommit("c", VOL, 42))
    actions = core.step(rn.Detached(VOL))
    assert rn.UnlockDatabase(VOL) in actions
    assert [(r.ticket, r.status) for r in replies(actions)] == [("c", -1)]
    assert core.step(rn.CommitDone(VOL)) == []


def test_volatile_push_follows_ctdbd_store_rules():
    core = node()
    in_transaction(core)
    assert ask(core, lambda t: rn.PushStart(t, VOL, 500)) == (0, None)
    key_lm = {k: rn.ltdbrules.lmaster_of(k, (0, 1, 2)) for k in (b"a", b"b", b"c", b"d", b"e", b"f")}
    not_mine = next(k for k, lm in key_lm.items() if lm != ME)
    push(core, 500,
         rec(b"mine", 5, ME, b"x", int(RecordFlag.RO_HAVE_READONLY)),     # dmaster here: rsn + 1
         rec(b"theirs", 5, 2, b"y", int(RecordFlag.AUTOMATIC)),          # kept as is, AUTOMATIC off
         rec(not_mine, 3, 2, b""))                                        # empty, not ours: delete
    writes = core.state(VOL).transaction.writes
    assert writes[b"mine"] == LtdbHeader(6, ME, 0, 0).pack() + b"x"      # RO flags stripped
    assert writes[b"theirs"] == LtdbHeader(5, 2, 0, 0).pack() + b"y"
    assert writes[not_mine] is None
    assert ask(core, lambda t: rn.PushConfirm(t, VOL)) == (0, 3)


def test_persistent_push_stores_records_as_they_are():
    core = node()
    in_transaction(core, PERS)
    core.step(rn.PushStart("p", PERS, 600))
    push(core, 600, rec(b"k", 5, ME, b"v"), rec(b"e", 1, 0, b""))
    assert core.state(PERS).transaction.writes == {
        b"k": LtdbHeader(5, ME).pack() + b"v", b"e": LtdbHeader(1, 0).pack()}


def test_a_bad_record_fails_the_push_and_its_count_stops():
    core = node()
    in_transaction(core)
    core.step(rn.PushStart("p", VOL, 500))
    push(core, 500, rec(b"a", 1, 2, b"v"))
    actions = push(core, 500, rec(b"b", 1, 2, b"v"), RecData(0, b"short", b"123"))
    assert any(isinstance(a, rn.Log) and "bad ltdb record" in a.text for a in actions)
    push(core, 500, rec(b"c", 1, 2, b"v"))                   # ignored after the failure
    assert set(core.state(VOL).transaction.writes) == {b"a", b"b"}
    assert ask(core, lambda t: rn.PushConfirm(t, VOL)) == (0, 1)
    # garbage instead of a buffer fails a push too
    core.step(rn.PushStart("p2", VOL, 501))
    core.step(rn.PushInvalid(501, "rec_buffer: too short"))
    assert core.state(VOL).push.failed


def test_a_buffer_in_slices_counts_once_whole():
    core = node()
    in_transaction(core)
    core.step(rn.PushStart("p", VOL, 500))
    push(core, 500, rec(b"a", 1, 2, b"v"), last=False)
    assert core.state(VOL).push.count == 0
    push(core, 500, rec(b"b", 1, 2, b"v"))
    assert core.state(VOL).push.count == 2
    push(core, 500, rec(b"c", 1, 2, b"v"), last=False)         # a buffer whose second slice
    push(core, 500, RecData(0, b"d", b"bad"))                    # has a bad record: not counted
    assert ask(core, lambda t: rn.PushConfirm(t, VOL)) == (0, 2)


def test_push_needs_frozen_and_a_transaction_and_confirm_needs_a_push():
    core = node()
    assert ask(core, lambda t: rn.PushStart(t, VOL, 500))[0] == -1           # not frozen
    frozen(core)
    assert ask(core, lambda t: rn.PushStart(t, VOL, 500))[0] == -1           # no transaction
    assert ask(core, lambda t: rn.PushConfirm(t, VOL))[0] == -1              # not started
    assert push(core, 500, rec(b"a", 1, 2, b"v")) == []                       # nobody listens


def test_srvid_listening_is_shared_and_a_restarted_push_replaces_the_old():
    core = node()
    in_transaction(core, VOL)
    in_transaction(core, PERS)
    assert rn.Listen(500) in core.step(rn.PushStart("a", VOL, 500))
    assert rn.Listen(500) not in core.step(rn.PushStart("b", PERS, 500))
    push(core, 500, rec(b"k", 1, 2, b"v"))                   # ctdbd ignores the buffer's db_id
    assert b"k" in core.state(PERS).transaction.writes
    actions = core.step(rn.PushConfirm("c", VOL))
    assert rn.StopListening(500) not in actions              # PERS still listens
    actions = core.step(rn.PushStart("d", PERS, 501))        # restarted on another srvid
    assert rn.StopListening(500) in actions and rn.Listen(501) in actions
    assert core.state(PERS).push.count == 0


def test_pull_answers_by_state():
    core = node()
    assert ask(core, lambda t: rn.Pull(t, VOL, 77, 0))[0] == -1               # not frozen
    frozen(core)
    [stream] = core.step(rn.Pull("p", VOL, 77, 0))
    assert stream == rn.StreamPull("p", VOL, 0, 77, True, frozenset(), ())
    assert replies(core.step(rn.PullDone("p", VOL, 12))) == [rn.Reply("p", 0, 12)]
    [failed] = replies(core.step(rn.PullDone("q", VOL, 3, "node 0 is not connected")))
    assert failed.status == -1
    # a corrupt file: a volatile database sends what could be read, a persistent one fails
    assert replies(core.step(rn.PullDone("r", VOL, 4, corrupt="CORRUPT"))) == [rn.Reply("r", 0, 4)]
    [failed] = replies(core.step(rn.PullDone("s", PERS, 4, corrupt="CORRUPT")))
    assert failed.status == -1
    # inside a transaction a pull sees the transaction's view
    core.step(rn.TransactionStart("t", VOL, 9))
    core.step(rn.PushStart("s", VOL, 500))
    push(core, 500, rec(b"new", 1, 2, b"v"))
    [stream] = core.step(rn.Pull("p2", VOL, 77, 0))
    assert stream.from_file and stream.skip == {b"new"} and [k for k, _ in stream.extra] == [b"new"]
    core.step(rn.Wipe("w", VOL, 9))
    [stream] = core.step(rn.Pull("p3", VOL, 77, 0))
    assert not stream.from_file and stream.extra == ()


def test_helper_death_unfreezes_and_cancels_the_transaction():
    core = node()
    in_transaction(core)
    actions = core.step(rn.FreezeLost(VOL))
    assert rn.UnlockDatabase(VOL) in actions
    assert core.freeze_state(VOL) == (False, False)


def test_set_recmode_normal_needs_every_generation_and_thaws_an_inactive_node():
    core = node()
    assert ask(core, lambda t: rn.RecmodeNormal(t, 7)) == (0, None)
    [bad] = replies(core.step(rn.RecmodeNormal("r", 8)))
    assert bad.status == -1 and "Inconsistent DB generation 7 for vol.tdb" in bad.error
    # going INACTIVE: every database frozen, generations invalid, volatile records invalid
    actions = core.step(rn.Inactive())
    assert {a.db_id for a in actions if isinstance(a, rn.LockDatabase)} == {VOL, PERS}
    assert {db.generation for db in core.dbs.values()} == {INVALID_GENERATION}
    for db_id in (VOL, PERS):
        core.step(rn.FreezeLocked(db_id, True))
    assert ask(core, lambda t: rn.Pull(t, VOL, 77, 0)) == (0, 0)             # invalid: nothing
    assert isinstance(core.step(rn.Pull("p", PERS, 77, 0))[0], rn.StreamPull)
    # a recovery commits VOL in generation 20; PERS stays behind
    core.step(rn.TransactionStart("t", VOL, 20))
    core.step(rn.TransactionCommit("c", VOL, 20))
    core.step(rn.CommitDone(VOL))
    assert ask(core, lambda t: rn.RecmodeNormal(t, 20))[0] == -1
    core.step(rn.TransactionStart("t2", PERS, 20))
    core.step(rn.TransactionCommit("c2", PERS, 20))
    core.step(rn.CommitDone(PERS))
    actions = core.step(rn.RecmodeNormal("n", 20))
    assert replies(actions) == [rn.Reply("n", 0)]
    assert {a.db_id for a in actions if isinstance(a, rn.UnlockDatabase)} == {VOL, PERS}
    assert not core.all_frozen
    assert core.freeze_state(VOL) == (False, False) and not core.state(VOL).invalid_records


def test_a_detach_gives_back_the_lock_and_the_srvid():
    core = node()
    in_transaction(core)
    core.step(rn.PushStart("p", VOL, 500))
    actions = core.step(rn.Detached(VOL))
    assert rn.UnlockDatabase(VOL) in actions and rn.StopListening(500) in actions
    assert core.freeze_state(VOL) == (False, False)
    assert ask(core, lambda t: rn.Freeze(t, VOL))[0] == -1
