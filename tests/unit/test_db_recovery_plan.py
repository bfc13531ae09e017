"""core/db/recovery_plan.py: the leader's side of a database recovery as ctdbd 4.17's
ctdb_recovery_helper does it — the database union, names, seqnum source, the merge rule and the
push buffers."""

from __future__ import annotations

import pytest

from ctdblab.daemon.core.db.recovery_plan import (
    RECOVERY_SRVID_BASE, PlanError, RecordSet, SrvidPool, agreed_name, plan_database,
    seqnum_source, union_dbmaps,
)
from ctdblab.daemon.protocol import Control, DbFlag, LtdbHeader, RecBuffer, RecData, TransDb
from ctdblab.daemon.protocol.constants import RecordFlag

LEADER = 0
P, RO, ST, RP = int(DbFlag.PERSISTENT), int(DbFlag.READONLY), int(DbFlag.STICKY), int(DbFlag.REPLICATED)


def value(rsn: int, dmaster: int, data: bytes = b"v", flags: int = 0) -> bytes:
    return LtdbHeader(rsn=rsn, dmaster=dmaster, flags=flags).pack() + data


def test_union_masks_readonly_and_sticky_and_keeps_node_order():
    dbs = union_dbmaps([(0, [(1, 0), (2, P)]), (1, [(2, P), (1, RO | ST)]), (2, [(3, RP)])])
    assert [(d.db_id, d.flags, d.holders, d.by_seqnum) for d in dbs] == [
        (1, 0, (0, 1), False), (2, P, (0, 1), True), (3, RP, (2,), True)]


def test_union_refuses_a_database_with_two_kinds():
    with pytest.raises(PlanError, match="Incompatible database flags"):
        union_dbmaps([(0, [(1, 0)]), (1, [(1, P)])])


def test_names_must_agree_and_the_odd_node_is_blamed():
    assert agreed_name(5, [(0, "a.tdb"), (2, "a.tdb")]) == "a.tdb"
    with pytest.raises(PlanError) as err:
        agreed_name(5, [(0, "a.tdb"), (1, "a.tdb"), (2, "b.tdb")])
    assert err.value.culprit == 2


@pytest.mark.parametrize("seqnums, source", [
    ([(0, 0), (1, 0), (2, 0)], 0),           # all zero: the first node
    ([(0, 3), (1, 9), (2, 9)], 1),           # the first of the highest
    ([(1, 5), (2, 4)], 1),
    ([(0, 0), (2, 1)], 2),
])
def test_persistent_source_is_the_first_node_with_the_highest_seqnum(seqnums, source):
    assert seqnum_source(seqnums) == source


def test_plan_attaches_where_missing_with_the_kind_of_the_database():
    [vol, pers] = union_dbmaps([(0, [(1, 0), (2, P)]), (2, [(1, 0)])])
    plan = plan_database(vol, (0, 1, 2), 77)
    assert plan.attach_to == (1,) and plan.attach_opcode == Control.DB_ATTACH
    assert plan.transdb == TransDb(1, 77) and plan.volatile
    plan = plan_database(pers, (0, 1, 2), 77)
    assert plan.attach_to == (1, 2) and plan.attach_opcode == Control.DB_ATTACH_PERSISTENT
    assert not plan.volatile


def test_merge_highest_rsn_wins_and_ties_replace_only_the_leaders_copy():
    records = RecordSet(9, LEADER)
    records.add(b"a", value(5, 1, b"n1"))
    records.add(b"a", value(4, 2, b"n2"))          # lower rsn: kept out
    records.add(b"a", value(6, 2, b"n2'"))         # higher rsn: wins
    records.add(b"b", value(5, 1, b"n1"))
    records.add(b"b", value(5, 2, b"n2"))          # tie, held copy not the leader's: kept
    records.add(b"c", value(5, LEADER, b"lead"))
    records.add(b"c", value(5, 2, b"n2"))          # tie, held copy is the leader's: replaced
    assert records.records == {b"a": value(6, 2, b"n2'"), b"b": value(5, 1, b"n1"),
                               b"c": value(5, 2, b"n2")}
    records.add(b"d", b"short")                    # shorter than a header: dropped, counted
    assert b"d" not in records.records and records.dropped == 1


def test_a_pulled_buffer_of_another_database_fails_and_short_records_are_dropped():
    records = RecordSet(9, LEADER)
    with pytest.raises(PlanError):
        records.add_buffer(RecBuffer(8, [RecData(0, b"a", value(1, 1))]))
    received = records.add_buffer(RecBuffer(9, [RecData(0, b"a", value(1, 1)),
                                                RecData(0, b"b", b"x"), RecData(0, b"c", value(1, 1))]))
    assert received == 3 and set(records.records) == {b"a", b"c"} and records.dropped == 1


def unpack_all(buffers):
    out = []
    for payload, count in buffers:
        buf = RecBuffer.unpack(payload)
        assert len(buf.records) == count and buf.db_id == 9
        out.append(buf)
    return out


def test_push_drops_empty_records_and_makes_the_leader_dmaster_of_volatile_ones():
    records = RecordSet(9, 3)
    records.add(b"a", value(5, 1, b"x", int(RecordFlag.AUTOMATIC)))
    records.add(b"empty", value(9, 1, b""))
    [buf] = unpack_all(records.push_buffers(volatile=True, limit=10 ** 6))
    assert [(r.key, r.split_header()) for r in buf.records] == [
        (b"a", (LtdbHeader(5, 3, 0, int(RecordFlag.AUTOMATIC | RecordFlag.MIGRATED_WITH_DATA)), b"x"))]
    [buf] = unpack_all(records.push_buffers(volatile=False, limit=10 ** 6))
    assert [(r.key, r.data) for r in buf.records] == [(b"a", records.records[b"a"])]


def test_push_buffers_are_cut_once_over_the_limit_and_the_last_one_always_goes():
    records = RecordSet(9, LEADER)
    for i in range(10):
        records.add(b"k%d" % i, value(1, 1, b"x" * 100))
    one = 16 + 2 + 24 + 100
    buffers = unpack_all(records.push_buffers(volatile=False, limit=8 + 3 * one))
    # a buffer goes out when its length *exceeds* the limit: 4 records each, then the rest
    assert [len(b.records) for b in buffers] == [4, 4, 2]
    assert sum(len(b.records) for b in buffers) == 10
    empty = unpack_all(RecordSet(9, LEADER).push_buffers(volatile=True, limit=100))
    assert [len(b.records) for b in empty] == [0]


def test_srvids_count_up_from_the_recovery_base():
    pool = SrvidPool(41)
    assert (pool.next(), pool.next()) == (RECOVERY_SRVID_BASE + 42, RECOVERY_SRVID_BASE + 43)
