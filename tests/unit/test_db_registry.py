"""The database registry core (daemon/core/db/registry.py): attach, deferral, detach, health and
seqnum rules of ctdbd 4.17, and a small simulated cluster where attaches spread by broadcast."""

from __future__ import annotations

from ctdblab.daemon.config.tunables import Tunables
from ctdblab.daemon.core.db.registry import (
    MAX_NAME_BYTES, Attach, BroadcastAttach, BroadcastDetach, BroadcastUpdateSeqnum, BumpSeqnum,
    ClientGone, CloseDatabase, DbFlagsChanged, Detach, EnableSeqnum, EnableTdbSeqnum,
    ForceRecovery, HealthChanged, MarkUnhealthy, OpenDatabase, Opened, ReadSeqnum, Registry,
    RegistrySettings, Reply, SeqnumBumped, SeqnumRead, SetDbFlag, SetHealthy, SetInactive,
    SetRecoveryMode, SetRunstate, Tick, UpdateSeqnum, attach_flags, attach_opcode, check_name,
)
from ctdblab.daemon.protocol.constants import Control, DbFlag, Runstate
from ctdblab.daemon.protocol.ltdb import db_id_of

VOLATILE = DbFlag(0)
PERSISTENT = DbFlag.PERSISTENT
REPLICATED = DbFlag.REPLICATED


def running(pnn: int = 0, **settings) -> Registry:
    reg = Registry(pnn, RegistrySettings(**settings))
    reg.step(SetRunstate(Runstate.RUNNING), 0.0)
    reg.step(SetRecoveryMode(False), 0.0)
    return reg


def of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def settle(reg: Registry, actions, now=0.0):
    """The actions plus those of completing every open they ask for (the store opened it)."""
    for op in of(actions, OpenDatabase):
        actions = actions + reg.step(Opened(op.name), now)
    return actions


def attach(reg: Registry, name: str, flags=VOLATILE, *, ticket="t", client=7, now=0.0, **kw):
    return settle(reg, reg.step(Attach(ticket, name, flags, client, **kw), now), now)


def tick(reg: Registry, now: float):
    return settle(reg, reg.step(Tick(), now), now)


def replies(actions):
    return [(r.ticket, r.status, r.db_id) for r in of(actions, Reply)]


# -- names and ids ---------------------------------------------------------------------------
def test_attach_answers_ctdbds_db_ids():
    reg = running()
    assert replies(attach(reg, "locking.tdb")) == [("t", 0, 0x7a19d84d)]
    assert replies(attach(reg, "secrets.tdb", PERSISTENT)) == [("t", 0, 0x7132c184)]
    assert [(d.name, d.db_id, d.flags) for d in reg.databases()] == [
        ("locking.tdb", 0x7a19d84d, VOLATILE), ("secrets.tdb", 0x7132c184, PERSISTENT)]


def test_bad_names_are_refused_with_a_reason():
    reg = running()
    for name in ("", None, "a/b", "../x", "..", ".", "nul\0byte", "x" * (MAX_NAME_BYTES + 1)):
        actions = reg.step(Attach("t", name, VOLATILE, 7), 0.0)
        assert of(actions, OpenDatabase) == []
        (reply,) = of(actions, Reply)
        assert reply.status == -1 and reply.error
    assert check_name("x" * MAX_NAME_BYTES) is None
    assert "bytes long" in check_name("é" * (MAX_NAME_BYTES // 2 + 1))
    assert reg.databases() == []


def test_opcodes_and_flags():
    assert attach_flags(Control.DB_ATTACH) == VOLATILE
    assert attach_flags(Control.DB_ATTACH_PERSISTENT) == PERSISTENT
    assert attach_flags(Control.DB_ATTACH_REPLICATED) == REPLICATED
    for opcode in (Control.DB_ATTACH, Control.DB_ATTACH_PERSISTENT, Control.DB_ATTACH_REPLICATED):
        assert attach_opcode(attach_flags(opcode)) == opcode


# -- attach ----------------------------------------------------------------------------------
def test_new_database_is_opened_then_answered_and_broadcast():
    reg = running()
    actions = reg.step(Attach("t", "brlock.tdb", VOLATILE, 7), 0.0)
    assert actions == [OpenDatabase("brlock.tdb", 0x4e66c2b2, VOLATILE)]
    assert reg.databases() == []                      # not open yet
    actions = reg.step(Opened("brlock.tdb"), 0.0)
    assert replies(actions) == [("t", 0, 0x4e66c2b2)]
    assert of(actions, BroadcastAttach) == [BroadcastAttach("brlock.tdb", Control.DB_ATTACH)]
    # again: the same id, no open, no broadcast
    actions = attach(reg, "brlock.tdb", ticket="u")
    assert actions == [Reply("u", 0, db_id=0x4e66c2b2)]


def test_attaches_during_the_open_wait_for_it():
    reg = running()
    assert of(reg.step(Attach("a", "g_lock.tdb", VOLATILE, 1), 0.0), OpenDatabase)
    assert reg.step(Attach("b", "g_lock.tdb", VOLATILE, 2), 0.0) == []
    assert reg.step(Attach("c", "g_lock.tdb", VOLATILE, None), 0.0) == []
    actions = reg.step(Opened("g_lock.tdb"), 0.0)
    assert replies(actions) == [(t, 0, 0x4d2a432b) for t in "abc"]
    assert len(of(actions, BroadcastAttach)) == 1


def test_failed_open_answers_minus_one_and_a_later_attach_tries_again():
    reg = running()
    reg.step(Attach("a", "x.tdb", VOLATILE, 1), 0.0)
    reg.step(Attach("b", "x.tdb", VOLATILE, 2), 0.0)
    actions = reg.step(Opened("x.tdb", "Permission denied"), 0.0)
    assert [(r.ticket, r.status) for r in of(actions, Reply)] == [("a", -1), ("b", -1)]
    assert all("Permission denied" in r.error for r in of(actions, Reply))
    assert of(actions, BroadcastAttach) == [] and reg.databases() == []
    assert of(reg.step(Attach("c", "x.tdb", VOLATILE, 1), 0.0), OpenDatabase)


def test_kind_rule_is_flags_subset():
    """ctdbd: (db.flags & asked) == asked. A plain attach of a persistent database succeeds."""
    reg = running()
    pid = replies(attach(reg, "passdb.tdb", PERSISTENT))[0][2]
    vid = replies(attach(reg, "leases.tdb", VOLATILE))[0][2]
    assert replies(attach(reg, "passdb.tdb", VOLATILE, ticket="p0")) == [("p0", 0, pid)]
    assert replies(attach(reg, "leases.tdb", PERSISTENT, ticket="v1")) == [("v1", -1, None)]
    assert replies(attach(reg, "passdb.tdb", REPLICATED, ticket="p2")) == [("p2", -1, None)]
    assert replies(attach(reg, "leases.tdb", VOLATILE, ticket="v0")) == [("v0", 0, vid)]
    # the mismatch while the file is being opened gets the same answer
    reg.step(Attach("o", "new.tdb", VOLATILE, 1), 0.0)
    assert replies(reg.step(Attach("p", "new.tdb", PERSISTENT, 1), 0.0)) == [("p", -1, None)]


def test_hash_collision_is_refused():
    a, b = "db69102.tdb", "db87195.tdb"           # found with libtdb's tdb_jenkins_hash
    assert db_id_of(a) == db_id_of(b) == 0x4ba25a19
    reg = running()
    assert replies(attach(reg, a))[0][1] == 0
    actions = attach(reg, b, ticket="b")
    assert replies(actions) == [("b", -1, None)] and "collision" in of(actions, Reply)[0].error
    assert [d.name for d in reg.databases()] == [a]


def test_allow_client_db_attach_zero_refuses_every_attach():
    reg = running(allow_client_attach=False)
    assert replies(attach(reg, "a.tdb", client=7)) == [("t", -1, None)]
    assert replies(attach(reg, "a.tdb", client=None)) == [("t", -1, None)]
    assert replies(attach(reg, "a.tdb", client=7, recovery=True)) == [("t", -1, None)]


def test_inactive_node_refuses_clients_but_not_peers():
    reg = running()
    reg.step(SetInactive(True), 0.0)
    assert replies(attach(reg, "a.tdb", client=7)) == [("t", -1, None)]
    assert replies(attach(reg, "a.tdb", client=None))[0][1] == 0
    reg.step(SetInactive(False), 0.0)
    assert replies(attach(reg, "a.tdb", client=7))[0][1] == 0


def test_recovery_flag_only_during_recovery():
    reg = running()
    assert replies(attach(reg, "a.tdb", recovery=True)) == [("t", -1, None)]
    reg.step(SetRecoveryMode(True), 0.0)
    assert replies(attach(reg, "a.tdb", recovery=True))[0][1] == 0      # not deferred


# -- deferred attaches -----------------------------------------------------------------------
def test_client_attach_during_recovery_is_deferred_and_rerun_a_second_after_it_ends():
    reg = running()
    reg.step(SetRecoveryMode(True), 10.0)
    assert replies(attach(reg, "a.tdb", now=10.0)) == []
    peer = attach(reg, "a.tdb", client=None, ticket="peer", now=10.0)
    assert replies(peer)[0][1] == 0                 # peers are not deferred
    assert reg.deferred_count() == 1
    assert reg.step(Tick(), 30.0) == []
    reg.step(SetRecoveryMode(False), 40.0)
    assert reg.next_deadline() == 41.0
    assert reg.step(Tick(), 40.5) == []
    actions = tick(reg, 41.0)
    assert replies(actions) == [("t", 0, db_id_of("a.tdb"))]     # the peer's attach opened it
    assert reg.deferred_count() == 0


def test_deferred_attach_times_out_with_minus_one():
    reg = running(deferred_attach_timeout=120.0)
    reg.step(SetRecoveryMode(True), 0.0)
    attach(reg, "a.tdb", now=5.0)
    assert reg.step(Tick(), 124.9) == []
    assert replies(reg.step(Tick(), 125.0)) == [("t", -1, None)]
    assert reg.deferred_count() == 0
    reg.step(SetRecoveryMode(False), 126.0)
    assert reg.step(Tick(), 200.0) == []            # answered once only


def test_timeout_before_the_rerun_wins():
    reg = running(deferred_attach_timeout=10.0)
    reg.step(SetRecoveryMode(True), 0.0)
    attach(reg, "a.tdb", now=0.0)
    reg.step(SetRecoveryMode(False), 9.5)           # rerun due at 10.5, timeout at 10.0
    assert replies(reg.step(Tick(), 11.0)) == [("t", -1, None)]


def test_rerun_during_a_new_recovery_is_deferred_again_with_a_fresh_timeout():
    reg = running(deferred_attach_timeout=120.0)
    reg.step(SetRecoveryMode(True), 0.0)
    attach(reg, "a.tdb", now=0.0)
    reg.step(SetRecoveryMode(False), 100.0)
    reg.step(SetRecoveryMode(True), 100.5)
    assert replies(reg.step(Tick(), 101.0)) == []   # rerun, deferred anew
    assert reg.deferred_count() == 1
    assert reg.step(Tick(), 150.0) == []            # old deadline (120) no longer applies
    assert replies(reg.step(Tick(), 221.0)) == [("t", -1, None)]


def test_runstate_before_startup_defers_and_startup_reruns():
    reg = Registry(0)
    reg.step(SetRecoveryMode(False), 0.0)            # recovery over, runstate still INIT
    attach(reg, "a.tdb", now=0.0)
    assert reg.deferred_count() == 1
    reg.step(SetRunstate(Runstate.FIRST_RECOVERY), 1.0)
    assert reg.step(Tick(), 5.0) == []
    reg.step(SetRunstate(Runstate.STARTUP), 5.0)     # pyctdbd: rerun 1 s later
    assert replies(tick(reg, 6.0)) == [("t", 0, db_id_of("a.tdb"))]


def test_client_that_leaves_takes_its_deferred_attaches_along():
    reg = running()
    reg.step(SetRecoveryMode(True), 0.0)
    attach(reg, "a.tdb", client=7, ticket="gone")
    attach(reg, "a.tdb", client=8, ticket="stays")
    reg.step(ClientGone(7), 1.0)
    reg.step(SetRecoveryMode(False), 2.0)
    assert replies(tick(reg, 3.0)) == [("stays", 0, db_id_of("a.tdb"))]


# -- detach ----------------------------------------------------------------------------------
def test_detach_rules():
    reg = running()
    vid = replies(attach(reg, "v.tdb"))[0][2]
    pid = replies(attach(reg, "p.tdb", PERSISTENT))[0][2]
    reg.update_settings(RegistrySettings(allow_client_attach=False))   # `ctdb detach` needs it
    assert replies(reg.step(Detach("d", 0x1234, 7), 0.0)) == [("d", -1, None)]
    assert replies(reg.step(Detach("d", pid, 7), 0.0)) == [("d", -1, None)]
    reg.step(SetRecoveryMode(True), 0.0)
    assert replies(reg.step(Detach("d", vid, 7), 0.0)) == [("d", -1, None)]
    reg.step(SetRecoveryMode(False), 0.0)
    actions = reg.step(Detach("d", vid, 7), 0.0)
    assert replies(actions) == [("d", 0, None)]
    assert of(actions, CloseDatabase) == [CloseDatabase(vid, "v.tdb")]
    assert of(actions, BroadcastDetach) == [BroadcastDetach(vid)]
    assert [d.name for d in reg.databases()] == ["p.tdb"]


def test_detach_refused_while_clients_may_attach_and_peer_detach_does_not_echo():
    reg = running()
    vid = replies(attach(reg, "v.tdb"))[0][2]
    assert replies(reg.step(Detach("d", vid, 7), 0.0)) == [("d", -1, None)]
    reg.update_settings(RegistrySettings(allow_client_attach=False))
    actions = reg.step(Detach("d", vid, None), 0.0)
    assert of(actions, BroadcastDetach) == [] and of(actions, CloseDatabase)


# -- health and flags ------------------------------------------------------------------------
def test_health_and_set_healthy():
    reg = running()
    pid = replies(attach(reg, "p.tdb", PERSISTENT))[0][2]
    assert reg.health(pid) == (0, None) and reg.health(1) == (-1, None)
    actions = reg.step(MarkUnhealthy(pid, "ERROR - Backup of corrupted TDB"), 0.0)
    assert of(actions, HealthChanged) == [HealthChanged(pid, "p.tdb", "ERROR - Backup of corrupted TDB")]
    assert reg.health(pid) == (0, "ERROR - Backup of corrupted TDB")
    actions = reg.step(SetHealthy("h", pid), 0.0)
    assert replies(actions) == [("h", 0, None)]
    assert of(actions, HealthChanged) == [HealthChanged(pid, "p.tdb", None)]
    assert of(actions, ForceRecovery) == []           # RUNNING: no forced recovery
    assert reg.health(pid) == (0, None)
    assert reg.step(SetHealthy("h", pid), 0.0) == [Reply("h", 0)]
    assert replies(reg.step(SetHealthy("h", 99), 0.0)) == [("h", -1, None)]


def test_set_healthy_in_startup_forces_recovery():
    reg = running()
    reg.step(SetRunstate(Runstate.STARTUP), 0.0)
    pid = replies(attach(reg, "p.tdb", PERSISTENT, client=None))[0][2]
    reg.step(MarkUnhealthy(pid, "bad"), 0.0)
    assert len(of(reg.step(SetHealthy("h", pid), 0.0), ForceRecovery)) == 1


def test_readonly_and_sticky_only_on_volatile():
    reg = running()
    vid = replies(attach(reg, "v.tdb"))[0][2]
    pid = replies(attach(reg, "p.tdb", PERSISTENT))[0][2]
    actions = reg.step(SetDbFlag("r", vid, DbFlag.READONLY), 0.0)
    assert of(actions, DbFlagsChanged) == [DbFlagsChanged(vid, DbFlag.READONLY)]
    assert reg.step(SetDbFlag("r", vid, DbFlag.READONLY), 0.0) == [Reply("r", 0)]
    actions = reg.step(SetDbFlag("s", vid, DbFlag.STICKY), 0.0)
    assert reg.get(vid).flags == DbFlag.READONLY | DbFlag.STICKY
    assert replies(reg.step(SetDbFlag("r", pid, DbFlag.READONLY), 0.0)) == [("r", -1, None)]
    assert replies(reg.step(SetDbFlag("s", pid, DbFlag.STICKY), 0.0)) == [("s", -1, None)]
    # READONLY does not count as a kind: a plain attach still matches
    assert replies(attach(reg, "v.tdb", ticket="again")) == [("again", 0, vid)]


# -- sequence numbers ------------------------------------------------------------------------
def test_seqnum_change_is_broadcast_once_per_interval():
    reg = running(seqnum_interval=1.0)
    vid = replies(attach(reg, "locking.tdb"))[0][2]
    assert replies(reg.step(EnableSeqnum("e", 0x99), 0.0)) == [("e", -1, None)]
    actions = reg.step(EnableSeqnum("e", vid), 0.0)
    assert of(actions, EnableTdbSeqnum) == [EnableTdbSeqnum(vid)] and replies(actions) == [("e", 0, None)]
    assert reg.get(vid).seqnum_enabled
    reg.step(SeqnumRead(vid, 5), 0.0)                 # the baseline
    assert reg.step(Tick(), 0.9) == []
    assert reg.step(Tick(), 1.0) == [ReadSeqnum(vid)]
    assert reg.step(SeqnumRead(vid, 5), 1.0) == []    # unchanged: nothing
    assert reg.step(Tick(), 1.5) == []
    assert reg.step(Tick(), 2.0) == [ReadSeqnum(vid)]
    assert reg.step(SeqnumRead(vid, 9), 2.0) == [BroadcastUpdateSeqnum(vid)]
    assert reg.step(Tick(), 3.0) == [ReadSeqnum(vid)]
    assert reg.step(SeqnumRead(vid, 9), 3.0) == []
    assert reg.next_deadline() == 4.0


def test_databases_without_enable_seqnum_are_never_read():
    reg = running()
    attach(reg, "brlock.tdb")
    assert reg.step(Tick(), 100.0) == [] and reg.next_deadline() is None


def test_update_seqnum_rules_and_no_echo():
    reg = running(pnn=1)
    vid = replies(attach(reg, "locking.tdb"))[0][2]
    reg.step(EnableSeqnum("e", vid), 0.0)
    reg.step(SeqnumRead(vid, 3), 0.0)
    assert reg.step(UpdateSeqnum("u", vid, 1), 0.0) == [Reply("u", 0)]       # from itself
    assert replies(reg.step(UpdateSeqnum("u", 0x77, 0), 0.0)) == [("u", -1, None)]
    actions = reg.step(UpdateSeqnum("u", vid, 0), 0.5)
    assert actions == [BumpSeqnum(vid), Reply("u", 0)]
    reg.step(SeqnumBumped(vid, 4), 0.5)
    reg.step(Tick(), 1.0)
    assert reg.step(SeqnumRead(vid, 4), 1.0) == []    # the bump is not sent back
    reg.step(MarkUnhealthy(vid, "bad"), 1.0)
    assert replies(reg.step(UpdateSeqnum("u", vid, 0), 1.0)) == [("u", -1, None)]


def test_settings_from_tunables():
    tunables = Tunables()
    tunables.set("SeqnumInterval", 250)
    tunables.set("DeferredAttachTO", 30)
    tunables.set("AllowClientDBAttach", 0)
    assert RegistrySettings.from_tunables(tunables) == RegistrySettings(
        allow_client_attach=False, deferred_attach_timeout=30.0, seqnum_interval=0.25)


# -- a simulated cluster ---------------------------------------------------------------------
def test_attach_spreads_to_every_node_and_the_echo_stops():
    """Node 0's client attaches; every node ends with the database under the same id, and the
    broadcasts stop at nodes that have it (ctdbd re-broadcasts from every node that creates)."""
    nodes = {pnn: running(pnn) for pnn in range(3)}
    queue: list[tuple[int, int, str, Control]] = []      # (from, to, name, opcode)
    sent = 0

    def run(pnn: int, actions) -> None:
        for action in actions:
            if isinstance(action, OpenDatabase):
                run(pnn, nodes[pnn].step(Opened(action.name), 0.0))
            elif isinstance(action, BroadcastAttach):
                queue.extend((pnn, other, action.name, action.opcode) for other in nodes if other != pnn)

    run(0, nodes[0].step(Attach("c", "smbXsrv_session_global.tdb", VOLATILE, 7), 0.0))
    while queue:
        src, dst, name, opcode = queue.pop(0)
        sent += 1
        run(dst, nodes[dst].step(Attach(("peer", src), name, attach_flags(opcode), None), 0.0))
    ids = {pnn: [(d.name, d.db_id) for d in reg.databases()] for pnn, reg in nodes.items()}
    expected = [("smbXsrv_session_global.tdb", db_id_of("smbXsrv_session_global.tdb"))]
    assert ids == {0: expected, 1: expected, 2: expected}
    assert sent == 3 * 2                                  # each creator told the two others once


def test_recovery_attach_of_a_persistent_database_reaches_a_node_in_recovery():
    """The recovery helper attaches missing databases with ATTACH_RECOVERY while recovery is
    active; peers' broadcasts during recovery are not deferred either."""
    reg = running(pnn=2)
    reg.step(SetRecoveryMode(True), 0.0)
    assert replies(attach(reg, "registry.tdb", PERSISTENT, recovery=True))[0][1] == 0
    assert replies(attach(reg, "share_info.tdb", PERSISTENT, client=None))[0][1] == 0
    assert {d.name for d in reg.databases()} == {"registry.tdb", "share_info.tdb"}
