"""Persistent transactions (daemon/core/db/persistent.py): the TRANS3_COMMIT payload, the rsn
rule a node applies UPDATE_RECORD with, the commit's answers, and a simulated 3-node cluster with
smbd's commit-and-retry loop, including a node that dies mid-commit."""

from __future__ import annotations

import pytest

from ctdblab.daemon.config.tunables import Tunables
from ctdblab.daemon.core.db.persistent import (
    COMMIT_ENDED_BY_RECOVERY, COMMIT_OK, COMMIT_REFUSED, COMMIT_TIMEOUT, UPDATE_FAILED,
    UPDATE_REFUSED, ApplyUpdateRecord, CommitRecord, NodeGone, NodeReplied, PersistentCommits,
    PersistentSettings, RecoveryEnded, Reply, SendUpdateRecord, Start, UpdateRefused,
    commit_seqnum, db_seqnum_refusal, parse_commit, plan_update, rsn_refusal,
    update_record_refusal,
)
from ctdblab.daemon.core.db.registry import ClientGone, DbInfo, ForceRecovery, SetRecoveryMode, Tick
from ctdblab.daemon.protocol.constants import DbFlag
from ctdblab.daemon.protocol.errors import ProtocolError
from ctdblab.daemon.protocol.ltdb import (
    DB_SEQNUM_TDB_KEY, db_id_of, pack_record, pack_seqnum, unpack_record, unpack_seqnum,
)
from ctdblab.daemon.protocol.types import LtdbHeader, RecBuffer, RecData

DB = db_id_of("secrets.tdb")
KNOWN = frozenset({DB})


def payload(*records: tuple[bytes, int, bytes], db_id: int = DB, dmaster: int = 0) -> bytes:
    return RecBuffer(db_id, [RecData.with_header(0, key, LtdbHeader(rsn, dmaster), value)
                             for key, rsn, value in records]).pack()


def normal(pnn: int = 0, **settings) -> PersistentCommits:
    core = PersistentCommits(pnn, PersistentSettings(**settings))
    core.step(SetRecoveryMode(False), 0.0)
    return core


def of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def replies(actions):
    return [(r.commit_id, r.status) for r in of(actions, Reply)]


# -- the payload -----------------------------------------------------------------------------
def test_parse_commit_gives_keys_headers_and_values():
    raw = payload((b"SECRETS/MACHINE_PASSWORD/X", 4, b"pw\0"), (b"gone", 2, b""),
                  (DB_SEQNUM_TDB_KEY, 8, pack_seqnum(7)), dmaster=1)
    db_id, records = parse_commit(raw)
    assert db_id == DB
    assert records == [CommitRecord(b"SECRETS/MACHINE_PASSWORD/X", LtdbHeader(4, 1), b"pw\0"),
                       CommitRecord(b"gone", LtdbHeader(2, 1), b""),
                       CommitRecord(DB_SEQNUM_TDB_KEY, LtdbHeader(8, 1), pack_seqnum(7))]
    assert commit_seqnum(records) == 7
    assert commit_seqnum(records[:2]) is None


@pytest.mark.parametrize("raw", [
    b"",
    RecBuffer(DB, [RecData(0, b"k", b"short")]).pack(),               # no room for the header
    payload((b"k", 1, b"v"))[:-1],                                     # truncated
    RecBuffer(DB, [RecData(0, b"k", bytes(24))]).pack()[:8] + b"\x05\0\0\0",   # count lies
])
def test_parse_commit_refuses_malformed_payloads(raw):
    with pytest.raises(ProtocolError):
        parse_commit(raw)


# -- the rsn rule ----------------------------------------------------------------------------
def stored(rsn: int, value: bytes, dmaster: int = 0) -> bytes:
    return pack_record(LtdbHeader(rsn, dmaster), value)


@pytest.mark.parametrize("current,rsn,value,ok", [
    (None, 1, b"v", True),                       # new record
    (None, 0, b"v", False),                      # missing counts as rsn 0: 0 >= 0, data differ
    (None, 0, b"", True),                        # ... same (no) data is fine
    (b"short", 1, b"v", True),                   # < 24 bytes: not a record
    (stored(5, b"old"), 6, b"new", True),
    (stored(5, b"old"), 5, b"new", False),       # same rsn, other data
    (stored(5, b"old"), 4, b"new", False),       # regression
    (stored(5, b"same"), 5, b"same", True),      # idempotent replay
    (stored(5, b"same"), 3, b"same", True),      # ctdbd stores it (lower rsn) when data match
])
def test_rsn_refusal(current, rsn, value, ok):
    why = rsn_refusal(DB, current, CommitRecord(b"k", LtdbHeader(rsn, 0), value))
    assert (why is None) is ok
    if not ok:
        assert "larger RSN" in why


def test_plan_update_sees_earlier_records_of_the_same_buffer():
    _, records = parse_commit(payload((b"k", 1, b"a"), (b"k", 2, b"b"), (b"j", 1, b"c")))
    writes = plan_update(DB, records, {}.get, volatile=False)
    assert [(k, unpack_record(v)[0].rsn, bytes(unpack_record(v)[1])) for k, v in writes] == [
        (b"k", 1, b"a"), (b"k", 2, b"b"), (b"j", 1, b"c")]
    _, records = parse_commit(payload((b"k", 2, b"a"), (b"k", 2, b"b")))
    with pytest.raises(UpdateRefused):
        plan_update(DB, records, {}.get, volatile=False)


def test_plan_update_refuses_a_regression_against_the_file():
    _, records = parse_commit(payload((b"ok", 1, b"x"), (b"k", 3, b"new")))
    with pytest.raises(UpdateRefused, match="larger RSN 3 than new RSN 3"):
        plan_update(DB, records, {b"k": stored(3, b"old")}.get, volatile=False)


def test_plan_update_on_a_volatile_database_replaces_only():
    _, records = parse_commit(payload((b"here", 2, b"x"), (b"absent", 1, b"y")))
    writes = plan_update(DB, records, {b"here": stored(1, b"w")}.get, volatile=True)
    assert [k for k, _ in writes] == [b"here"]


def test_update_record_and_get_db_seqnum_refusals():
    db = DbInfo("secrets.tdb", DB, DbFlag.PERSISTENT)
    assert update_record_refusal(db, DB, recovery_active=False) is None
    assert "recovery" in update_record_refusal(db, DB, recovery_active=True)
    assert "Unknown" in update_record_refusal(None, DB, recovery_active=False)
    sick = DbInfo("secrets.tdb", DB, DbFlag.PERSISTENT, unhealthy_reason="corrupt")
    assert "corrupt" in update_record_refusal(sick, DB, recovery_active=False)
    assert db_seqnum_refusal(db, DB, frozen=False, transaction_started=False) is None
    assert db_seqnum_refusal(db, DB, frozen=True, transaction_started=True) is None
    assert db_seqnum_refusal(db, DB, frozen=True, transaction_started=False)
    assert db_seqnum_refusal(None, DB, frozen=False, transaction_started=False)


# -- the commit's answers --------------------------------------------------------------------
def start(core, commit_id="c", client=5, raw=None, targets=(0, 1, 2), now=0.0):
    return core.step(Start(commit_id, client, raw or payload((b"k", 1, b"v")), tuple(targets), KNOWN), now)


def test_fan_out_to_every_target_and_answer_when_all_applied():
    core = normal(pnn=1)
    raw = payload((b"k", 1, b"v"))
    actions = start(core, raw=raw, targets=(0, 1, 2))
    assert actions == [SendUpdateRecord("c", 0, raw), ApplyUpdateRecord("c", raw),
                       SendUpdateRecord("c", 2, raw)]
    assert core.step(NodeReplied("c", 1, 0), 0.1) == []
    assert core.step(NodeReplied("c", 1, 0), 0.1) == []          # a duplicate counts once
    assert core.step(NodeReplied("c", 0, 0), 0.1) == []
    assert core.step(NodeReplied("c", 9, 0), 0.1) == []          # not a target
    assert replies(core.step(NodeReplied("c", 2, 0), 0.2)) == [("c", COMMIT_OK)]
    assert core.in_flight() == []


def test_refused_during_recovery():
    core = normal()
    core.step(SetRecoveryMode(True), 0.0)
    actions = start(core)
    assert replies(actions) == [("c", COMMIT_REFUSED)] and "recovery" in of(actions, Reply)[0].error
    assert of(actions, SendUpdateRecord) == [] and of(actions, ApplyUpdateRecord) == []


def test_refused_for_an_unknown_database():
    core = normal()
    actions = start(core, raw=payload((b"x", 1, b"y"), db_id=0x1234))
    assert replies(actions) == [("c", COMMIT_REFUSED)] and "Unknown" in of(actions, Reply)[0].error
    assert of(actions, SendUpdateRecord) == [] and core.in_flight() == []


def test_one_commit_per_client_and_per_database():
    core = normal()
    start(core, "first", client=5)
    assert replies(start(core, "same-client", client=5)) == [("same-client", COMMIT_REFUSED)]
    assert replies(start(core, "same-db", client=6)) == [("same-db", COMMIT_REFUSED)]
    assert core.in_flight() == ["first"]


def test_bad_payload_is_refused_before_anything_is_sent():
    core = normal()
    actions = start(core, raw=RecBuffer(DB, [RecData(0, b"k", b"x")]).pack())
    assert replies(actions) == [("c", COMMIT_REFUSED)] and len(actions) == 2   # log + reply
    assert core.in_flight() == []


def test_no_target_answers_at_once():
    assert replies(start(normal(), targets=())) == [("c", COMMIT_OK)]


def test_a_failed_node_forces_recovery_and_end_recovery_answers_2():
    core = normal()
    start(core)
    core.step(NodeReplied("c", 0, 0), 0.1)
    actions = core.step(NodeReplied("c", 1, UPDATE_FAILED), 0.1)
    assert of(actions, ForceRecovery) and replies(actions) == []
    assert core.recovery_active
    assert replies(core.step(NodeReplied("c", 2, 0), 0.2)) == []   # during recovery: ignored
    assert replies(core.step(RecoveryEnded(), 5.0)) == []         # still ACTIVE: ctdbd skips
    core.step(SetRecoveryMode(False), 6.0)
    actions = core.step(RecoveryEnded(), 6.0)
    assert replies(actions) == [("c", COMMIT_ENDED_BY_RECOVERY)]
    assert of(actions, Reply)[0].error == "trans3 commit ended by recovery"
    assert core.in_flight() == []


def test_replies_during_recovery_are_ignored():
    core = normal()
    start(core, targets=(0, 1))
    core.step(SetRecoveryMode(True), 0.1)
    assert replies(core.step(NodeReplied("c", 0, 0), 0.2)) == []
    assert replies(core.step(NodeReplied("c", 1, 0), 0.2)) == []
    core.step(SetRecoveryMode(False), 1.0)
    assert replies(core.step(RecoveryEnded(), 1.0)) == [("c", COMMIT_ENDED_BY_RECOVERY)]


def test_timeout_answers_1_but_not_during_recovery():
    core = normal(control_timeout=60.0)
    start(core, "a", client=1, now=0.0)
    assert core.next_deadline() == 60.0
    assert core.step(Tick(), 59.9) == []
    assert replies(core.step(Tick(), 60.0)) == [("a", COMMIT_TIMEOUT)]
    start(core, "b", client=1, now=100.0)
    core.step(SetRecoveryMode(True), 120.0)
    assert replies(core.step(Tick(), 160.0)) == []             # ignored, and never again
    assert core.next_deadline() is None
    core.step(SetRecoveryMode(False), 170.0)
    assert replies(core.step(Tick(), 500.0)) == []
    assert replies(core.step(RecoveryEnded(), 500.0)) == [("b", COMMIT_ENDED_BY_RECOVERY)]


def test_client_leaving_mid_commit_forces_recovery_without_an_answer():
    core = normal()
    start(core, client=5)
    assert core.step(ClientGone(6), 0.1) == []
    actions = core.step(ClientGone(5), 0.1)
    assert of(actions, ForceRecovery) and replies(actions) == [] and core.in_flight() == []


def test_node_gone_fails_only_commits_waiting_for_it():
    core = normal()
    start(core, targets=(0, 1, 2))
    core.step(NodeReplied("c", 2, 0), 0.1)
    assert core.step(NodeGone(2), 0.2) == []                   # already answered
    assert core.step(NodeGone(7), 0.2) == []
    assert of(core.step(NodeGone(1), 0.2), ForceRecovery)


def test_settings_from_tunables():
    tunables = Tunables()
    tunables.set("ControlTimeout", 7)
    assert PersistentSettings.from_tunables(tunables).control_timeout == 7.0


# -- a simulated cluster ---------------------------------------------------------------------
class Node:
    """One node's copy of the persistent database and its UPDATE_RECORD handling."""

    def __init__(self, pnn: int) -> None:
        self.pnn = pnn
        self.tdb: dict[bytes, bytes] = {}
        self.alive = True

    def update_record(self, raw: bytes, recovery_active: bool) -> int:
        db = DbInfo("secrets.tdb", DB, DbFlag.PERSISTENT)
        if update_record_refusal(db, DB, recovery_active=recovery_active) is not None:
            return UPDATE_REFUSED
        _, records = parse_commit(raw)
        try:
            writes = plan_update(DB, records, self.tdb.get, volatile=False)
        except UpdateRefused:
            return UPDATE_FAILED                        # the transaction is cancelled
        self.tdb.update(writes)                         # ... or committed as a whole
        return 0

    def seqnum(self) -> int:
        value = self.tdb.get(DB_SEQNUM_TDB_KEY)
        return 0 if value is None else unpack_seqnum(unpack_record(value)[1])


class Cluster:
    """Three nodes; node 0's daemon runs the commit core; the network delivers when asked."""

    def __init__(self) -> None:
        self.nodes = [Node(p) for p in range(3)]
        self.core = normal(pnn=0)
        self.recovery_active = False
        self.in_transit: list[tuple[object, int, bytes]] = []
        self.answers: list[tuple[object, int]] = []
        self.recoveries = 0

    def run(self, actions) -> None:
        for action in actions:
            if isinstance(action, SendUpdateRecord):
                self.in_transit.append((action.commit_id, action.pnn, action.payload))
            elif isinstance(action, ApplyUpdateRecord):
                self.in_transit.append((action.commit_id, 0, action.payload))
            elif isinstance(action, Reply):
                self.answers.append((action.commit_id, action.status))
            elif isinstance(action, ForceRecovery):
                self.recovery_active = True

    def deliver_all(self) -> None:
        for pnn in range(3):
            self.deliver(pnn)

    def deliver(self, pnn: int) -> None:
        for item in [m for m in self.in_transit if m[1] == pnn]:
            self.in_transit.remove(item)
            commit_id, _, raw = item
            if self.nodes[pnn].alive:
                status = self.nodes[pnn].update_record(raw, self.recovery_active)
                self.run(self.core.step(NodeReplied(commit_id, pnn, status), 0.0))

    def kill(self, pnn: int) -> None:
        self.nodes[pnn].alive = False
        self.run(self.core.step(NodeGone(pnn), 0.0))

    def recover(self) -> None:
        """Persistent recovery: the copy of the live node with the highest seqnum goes to all
        live nodes; then SET_RECMODE NORMAL and END_RECOVERY."""
        self.recoveries += 1
        self.run(self.core.step(SetRecoveryMode(True), 0.0))
        live = [n for n in self.nodes if n.alive]
        best = max(live, key=Node.seqnum)
        for node in live:
            node.tdb = dict(best.tdb)
        self.recovery_active = False
        self.run(self.core.step(SetRecoveryMode(False), 0.0))
        self.run(self.core.step(RecoveryEnded(), 0.0))


class Smbd:
    """dbwrap_ctdb's transaction on node 0: read locally, rsn + 1, dmaster = self, seqnum + 1 as
    the last write, TRANS3_COMMIT; on a non-zero answer re-read the seqnum: unchanged -> retry,
    + 1 -> done."""

    def __init__(self, cluster: Cluster, client_id: int = 5) -> None:
        self.cluster = cluster
        self.client_id = client_id
        self.sent = 0

    def build(self, writes: dict[bytes, bytes]) -> tuple[bytes, int]:
        node = self.cluster.nodes[0]
        old = node.seqnum()
        records = []
        for key, value in list(writes.items()) + [(DB_SEQNUM_TDB_KEY, pack_seqnum(old + 1))]:
            current = node.tdb.get(key)
            rsn = unpack_record(current)[0].rsn if current else 0
            records.append((key, rsn + 1, value))
        return payload(*records, dmaster=0), old

    def commit(self, writes: dict[bytes, bytes], between=lambda attempt: None) -> str:
        raw, old = self.build(writes)
        for attempt in range(5):
            self.sent += 1
            commit_id = (self.client_id, self.sent)
            self.cluster.run(self.cluster.core.step(
                Start(commit_id, self.client_id, raw, (0, 1, 2) if all(n.alive for n in self.cluster.nodes)
                      else tuple(n.pnn for n in self.cluster.nodes if n.alive), KNOWN), 0.0))
            between(attempt)
            status = dict(self.cluster.answers).get(commit_id)
            assert status is not None, "the commit was never answered"
            if status == 0:
                return "ok"
            new = self.cluster.nodes[0].seqnum()
            if new == old + 1:
                return "completed by recovery"
            assert new == old, "seqnum moved by more than one"
        return "gave up"


def same_everywhere(cluster: Cluster, pnns=(0, 1, 2)) -> bool:
    return all(cluster.nodes[p].tdb == cluster.nodes[pnns[0]].tdb for p in pnns)


def test_three_nodes_commit():
    cluster = Cluster()
    smbd = Smbd(cluster)

    def deliver_all(attempt):
        answered = len(cluster.answers)
        cluster.deliver(0)
        cluster.deliver(1)
        assert len(cluster.answers) == answered            # node 2 has not applied yet
        cluster.deliver(2)

    assert smbd.commit({b"a": b"1", b"b": b"2"}, deliver_all) == "ok"
    assert smbd.commit({b"a": b"3"}, deliver_all) == "ok"
    assert same_everywhere(cluster)
    assert [n.seqnum() for n in cluster.nodes] == [2, 2, 2]
    assert bytes(unpack_record(cluster.nodes[2].tdb[b"a"])[1]) == b"3"
    assert cluster.recoveries == 0 and smbd.sent == 2


def test_node_dying_mid_commit_is_finished_by_recovery_and_smbd_sees_it_done():
    """Nodes 0 and 1 apply, node 2 dies before it does: no answer until recovery ends; recovery
    copies the highest-seqnum copy (the new one) to the live nodes; the answer is 2, and smbd,
    finding its seqnum + 1, takes the commit as done without resending."""
    cluster = Cluster()
    smbd = Smbd(cluster)

    def node_2_dies(attempt):
        cluster.deliver(0)
        cluster.deliver(1)
        cluster.kill(2)
        assert cluster.answers == []                       # nothing answered yet
        assert cluster.recovery_active                     # recovery was forced
        cluster.recover()

    assert smbd.commit({b"machine": b"pw"}, node_2_dies) == "completed by recovery"
    assert cluster.answers == [((5, 1), COMMIT_ENDED_BY_RECOVERY)]
    assert smbd.sent == 1
    assert same_everywhere(cluster, (0, 1)) and cluster.nodes[1].seqnum() == 1


def test_node_dying_before_anyone_applied_makes_smbd_resend():
    """Node 2 dies and recovery starts before any node applied: every node refuses (recovery
    active), recovery changes nothing, the answer is 2, smbd finds its seqnum unchanged and
    sends the commit again, which the two live nodes apply."""
    cluster = Cluster()
    smbd = Smbd(cluster)

    def first_attempt_overtaken(attempt):
        if attempt == 0:
            cluster.kill(2)
            cluster.deliver_all()
            assert [n.seqnum() for n in cluster.nodes] == [0, 0, 0]
            cluster.recover()
        else:
            assert cluster.in_transit and {m[1] for m in cluster.in_transit} == {0, 1}
            cluster.deliver_all()

    assert smbd.commit({b"k": b"v"}, first_attempt_overtaken) == "ok"
    assert [status for _, status in cluster.answers] == [COMMIT_ENDED_BY_RECOVERY, COMMIT_OK]
    assert smbd.sent == 2 and same_everywhere(cluster, (0, 1)) and cluster.nodes[0].seqnum() == 1


def test_recovery_in_the_middle_after_the_local_apply_completes_the_commit():
    """Node 0 applied, then a recovery starts and the peers refuse: recovery takes node 0's
    copy (highest seqnum) to all; the answer is 2 and smbd sees the commit done."""
    cluster = Cluster()
    smbd = Smbd(cluster)

    def recovery_between(attempt):
        cluster.deliver(0)
        cluster.run(cluster.core.step(SetRecoveryMode(True), 0.0))
        cluster.recovery_active = True
        cluster.deliver(1)
        cluster.deliver(2)
        assert [n.seqnum() for n in cluster.nodes] == [1, 0, 0]
        cluster.recover()

    assert smbd.commit({b"k": b"v"}, recovery_between) == "completed by recovery"
    assert smbd.sent == 1 and same_everywhere(cluster) and {n.seqnum() for n in cluster.nodes} == {1}


def test_recovery_active_at_commit_time_makes_smbd_retry_until_it_ends():
    cluster = Cluster()
    smbd = Smbd(cluster)
    cluster.run(cluster.core.step(SetRecoveryMode(True), 0.0))

    def end_recovery_after_first(attempt):
        if attempt == 0:
            assert cluster.answers[-1][1] == COMMIT_REFUSED   # refused at once, nothing sent
            assert cluster.in_transit == []
            cluster.recover()
        else:
            cluster.deliver_all()

    assert smbd.commit({b"k": b"v"}, end_recovery_after_first) == "ok"
    assert smbd.sent == 2 and same_everywhere(cluster)


def test_rsn_regression_on_one_node_fails_the_commit_into_recovery():
    """Node 2 holds a newer copy of the key (rsn 9): it refuses; recovery copies the highest
    seqnum copy (nodes 0 and 1 applied the commit) so all end up with the commit."""
    cluster = Cluster()
    cluster.nodes[2].tdb[b"k"] = stored(9, b"newer")
    smbd = Smbd(cluster)

    def deliver_then_recover(attempt):
        cluster.deliver_all()
        assert cluster.answers == [] and cluster.recovery_active
        cluster.recover()

    assert smbd.commit({b"k": b"v"}, deliver_then_recover) == "completed by recovery"
    assert same_everywhere(cluster) and cluster.nodes[2].seqnum() == 1
