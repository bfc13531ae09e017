"""The node's side of the recovery after a membership change (server/partial_recovery.py) on
real TDB files: the hand-off report, the deferral that records the change and moves each
database to the recovery's generation, and the gather that sends this node's copies to a key's
lmaster (under the chain lock, waited for outside the loop when smbd holds it)."""

from __future__ import annotations

import asyncio

import pytest

from ctdblab.daemon.core.db.ltdbrules import lmaster_of
from ctdblab.daemon.protocol import (
    INVALID_GENERATION,
    Control, LtdbHeader, RecBuffer, RecBufferList, RecData, RecoveryDefer, RecoveryScan,
    unpack_reply,
)
from ctdblab.daemon.server.dispatch import Result
from ctdblab.daemon.server.partial_recovery import PartialRecoveryNode, RecoveryView
from ctdblab.daemon.store import DbDirs, DbKind, Store

OLD_MAP = (0, 1, 2)
NEW_MAP = (0, 1, 0)                 # node 2 lost


def H(rsn, dmaster):
    return LtdbHeader(rsn=rsn, dmaster=dmaster, reserved1=0, flags=0)


def key_with(lmaster: int, prefix: str) -> bytes:
    for i in range(10_000):
        key = f"{prefix}{i}".encode()
        if lmaster_of(key, OLD_MAP) == lmaster:
            return key
    raise AssertionError


@pytest.fixture
def node(tmp_path):
    for sub in ("v", "p", "s"):
        (tmp_path / sub).mkdir()
    store = Store(DbDirs(str(tmp_path / "v"), str(tmp_path / "p"), str(tmp_path / "s")), 0,
                  hash_size=101)
    db = store.attach("locking.tdb", DbKind.VOLATILE)
    generations = {}

    def set_generation(db_id, generation):
        generations[db_id] = generation
        return Result(0)

    handed_off = {db.db_id: {b"given"}}
    unsettled = []
    recovery = PartialRecoveryNode(store.by_id, lambda: RecoveryView(True, 41, OLD_MAP, NEW_MAP),
                                   set_generation,
                                   lambda db_id: (handed_off.get(db_id, set()), False),
                                   lambda *epoch: unsettled.append(epoch))
    recovery.epochs = unsettled
    yield recovery, db, generations
    store.close()


def _fill(db):
    keys = {"mine": key_with(1, "mine"), "lost": key_with(1, "lost")}
    records = {keys["mine"]: H(3, 0), keys["lost"]: H(5, 2)}

    async def write():
        for key, header in records.items():
            await db.store_ltdb(key, header, b"value-" + key)
    asyncio.run(write())
    return keys


def test_the_report_lists_the_cut_off_hand_offs_and_where_the_node_came_from(node):
    recovery, db, _ = node
    _fill(db)
    result = recovery.handoffs(RecoveryScan([0, 1], [db.db_id]))
    assert result.status == 0, result.errmsg
    report = unpack_reply(Control.PYCTDB_RECOVERY_HANDOFFS, result.data)
    assert report.came_from == 41
    assert [(r.key, r.data) for r in report.buffers[0].records] == [(b"given", b"")]


def test_the_deferral_records_the_change_and_moves_the_generation_without_touching_records(node):
    recovery, db, generations = node
    keys = _fill(db)
    before = dict(db.tdb.items())
    defer = RecoveryDefer(77, list(OLD_MAP), [RecBuffer(db.db_id, [RecData(0, b"given", b"")])])
    assert recovery.defer(defer).status == 0
    assert recovery.epochs == [(db.db_id, OLD_MAP, frozenset({b"given"}))]
    assert generations == {db.db_id: 77}
    assert dict(db.tdb.items()) == before and keys


def test_the_gather_sends_this_nodes_copies_and_waits_for_a_busy_chain_lock(node):
    recovery, db, _ = node
    keys = _fill(db)
    recovery.view = lambda: RecoveryView(False, 41, OLD_MAP, NEW_MAP)       # serving again
    request = RecBufferList([RecBuffer(db.db_id, [RecData(0, keys["lost"], b""),
                                                  RecData(0, b"absent", b"")])])

    async def main():
        held = db.try_lock(keys["lost"])                 # someone (smbd) holds the record
        task = asyncio.ensure_future(recovery.gather(request))
        await asyncio.sleep(0.05)
        assert not task.done()
        held.release()
        return await asyncio.wait_for(task, 10)
    result = asyncio.run(main())
    (buffer,) = unpack_reply(Control.PYCTDB_GATHER_COPIES, result.data).buffers
    assert [(r.key, r.split_header()[0].dmaster, r.split_header()[1]) for r in buffer.records] == [
        (keys["lost"], 2, b"value-" + keys["lost"])]


def test_outside_recovery_mode_and_for_unknown_databases_it_refuses(node):
    recovery, db, _ = node
    assert recovery.handoffs(RecoveryScan([0, 1], [0x1234])).status == -1
    assert recovery.defer(RecoveryDefer(1, list(OLD_MAP), [RecBuffer(0x1234, [])])).status == -1
    in_recovery = RecBufferList([RecBuffer(db.db_id, [RecData(0, b"k", b"")])])
    assert "recovery" in asyncio.run(recovery.gather(in_recovery)).errmsg     # copies are moving
    recovery.view = lambda: RecoveryView(False, 41, OLD_MAP, NEW_MAP)
    assert recovery.handoffs(RecoveryScan([0, 1], [db.db_id])).status == -1
    assert recovery.defer(RecoveryDefer(1, list(OLD_MAP), [RecBuffer(db.db_id, [])])).status == -1
    assert asyncio.run(recovery.gather(RecBufferList([RecBuffer(0x1234, [])]))).status == -1
    # in recovery mode, but its own last recovery never finished: not a fresh node
    recovery.view = lambda: RecoveryView(True, INVALID_GENERATION, OLD_MAP, NEW_MAP)
    assert "did not finish" in recovery.handoffs(RecoveryScan([0, 1], [db.db_id])).errmsg


def test_an_overflowed_hand_off_log_refuses_so_the_full_recovery_runs(node):
    recovery, db, _ = node
    recovery.handed_off = lambda db_id: (set(), True)
    assert "too many records" in recovery.handoffs(RecoveryScan([0, 1], [db.db_id])).errmsg
