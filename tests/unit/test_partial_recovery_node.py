"""The node's side of the partial recovery (server/partial_recovery.py) on real TDB files:
the scan reports what the lost node touched and what this node handed off, read in the loop when
the file is idle and in a forked child when a lock of it is held; fetch returns this node's
copies; apply stores the repairs and moves each database to the recovery's generation."""

from __future__ import annotations

import asyncio

import pytest

from ctdblab.daemon.core.db.ltdbrules import lmaster_of
from ctdblab.daemon.protocol import (
    INVALID_GENERATION,
    Control, LtdbHeader, RecBuffer, RecBufferList, RecData, RecoveryApply, RecoveryScan,
    unpack_reply,
)
from ctdblab.daemon.server import partial_recovery
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
    recovery = PartialRecoveryNode(store.by_id, lambda: RecoveryView(True, 41, OLD_MAP, NEW_MAP),
                                   set_generation,
                                lambda db_id: (handed_off.get(db_id, set()), False))
    yield recovery, db, generations
    store.close()


def _fill(db):
    keys = {
        "intact": key_with(1, "intact"),          # lmaster 1, dmaster 0: untouched by the loss
        "dm_lost": key_with(1, "dmlost"),         # our copy names lost node 2
        "lm_lost": key_with(2, "lmlost"),         # lmaster was node 2
    }
    records = {keys["intact"]: H(3, 0), keys["dm_lost"]: H(5, 2), keys["lm_lost"]: H(7, 0),
               b"given": H(9, 1)}

    async def write():
        for key, header in records.items():
            await db.store_ltdb(key, header, b"value-" + key)
    asyncio.run(write())
    return keys


def _scan(recovery, db):
    result = asyncio.run(recovery.scan(RecoveryScan([0, 1], [db.db_id])))
    assert result.status == 0, result.errmsg
    scan = unpack_reply(Control.PYCTDB_RECOVERY_SCAN, result.data)
    assert scan.came_from == 41
    return sorted(rec.key for rec in scan.buffers[0].records)


@pytest.mark.parametrize("in_loop_bytes", [1 << 20, 0], ids=["in-loop", "child"])
def test_scan_reports_what_the_loss_touched_and_what_was_handed_off(node, monkeypatch, in_loop_bytes):
    monkeypatch.setattr(partial_recovery, "IN_LOOP_BYTES", in_loop_bytes)
    recovery, db, _ = node
    keys = _fill(db)
    assert _scan(recovery, db) == sorted([keys["dm_lost"], keys["lm_lost"], b"given"])


def test_a_busy_file_is_scanned_in_a_child(node):
    recovery, db, _ = node
    keys = _fill(db)
    held = db.try_lock(keys["intact"])          # the daemon holds a chain lock of the file
    assert held is not None
    try:
        assert db.locker.try_whole(lambda tdb: 1) == (False, None)
    finally:
        held.release()
    assert _scan(recovery, db) == sorted([keys["dm_lost"], keys["lm_lost"], b"given"])


def test_fetch_returns_copies_and_apply_stores_repairs_and_the_generation(node):
    recovery, db, generations = node
    keys = _fill(db)
    request = RecBufferList([RecBuffer(db.db_id, [RecData(0, keys["dm_lost"], b""),
                                                  RecData(0, b"absent", b"")])])
    result = asyncio.run(recovery.fetch(request))
    (buffer,) = unpack_reply(Control.PYCTDB_RECOVERY_FETCH, result.data).buffers
    assert [(r.key, r.split_header()[0].dmaster) for r in buffer.records] == [(keys["dm_lost"], 2)]
    repair = RecData.with_header(0, keys["dm_lost"], H(6, 1), b"repaired")
    assert asyncio.run(recovery.apply(RecoveryApply(77, [RecBuffer(db.db_id, [repair])]))).status == 0
    assert db.tdb.fetch_ltdb(keys["dm_lost"]) == (H(6, 1), b"repaired")
    assert generations == {db.db_id: 77}


def test_outside_recovery_mode_and_for_unknown_databases_it_refuses(node):
    recovery, db, _ = node
    assert asyncio.run(recovery.scan(RecoveryScan([0, 1], [0x1234]))).status == -1
    assert asyncio.run(recovery.apply(RecoveryApply(1, [RecBuffer(0x1234, [])]))).status == -1
    short = RecData(0, b"k", b"short")
    assert asyncio.run(recovery.apply(RecoveryApply(1, [RecBuffer(db.db_id, [short])]))).status == -1
    recovery.view = lambda: RecoveryView(False, 41, OLD_MAP, NEW_MAP)
    assert asyncio.run(recovery.scan(RecoveryScan([0, 1], [db.db_id]))).status == -1
    # in recovery mode, but its own last recovery never finished: not a fresh node
    recovery.view = lambda: RecoveryView(True, INVALID_GENERATION, OLD_MAP, NEW_MAP)
    assert "did not finish" in asyncio.run(recovery.scan(RecoveryScan([0, 1], [db.db_id]))).errmsg


def test_a_node_that_started_afresh_reports_everything_it_holds(node):
    recovery, db, _ = node
    _fill(db)
    recovery.view = lambda: RecoveryView(True, INVALID_GENERATION, (), (0, 1, 2))
    result = asyncio.run(recovery.scan(RecoveryScan([0, 1, 2], [db.db_id])))
    scan = unpack_reply(Control.PYCTDB_RECOVERY_SCAN, result.data)
    assert scan.came_from == INVALID_GENERATION and len(scan.buffers[0].records) == 4


def test_growth_by_another_process_is_seen_so_a_big_file_is_not_read_in_the_loop(node):
    """smbd writes through its own handle: the daemon's libtdb map size stays where it was (a
    10^6-record database was once scanned in the loop, and the node was declared dead)."""
    import subprocess
    import sys
    _, db, _ = node
    before = db.tdb.map_size
    writer = (
        "import sys\n"
        "from ctdblab.daemon.protocol import LtdbHeader\n"
        "from ctdblab.daemon.store import DbKind, TdbFile\n"
        "from ctdblab.daemon.store.naming import tdb_flags\n"
        "tdb = TdbFile(sys.argv[1], 0, tdb_flags(DbKind.VOLATILE) & ~1)\n"
        "for i in range(1500):\n"
        "    tdb.store_ltdb(b'big%d' % i, LtdbHeader(rsn=1), b'x' * 1024)\n")
    subprocess.run([sys.executable, "-c", writer, db.path], check=True, timeout=60)
    assert db.tdb.map_size == before
    assert db.grown_since_open() > partial_recovery.IN_LOOP_BYTES


def test_a_scan_too_big_for_one_reply_is_refused_so_the_full_recovery_runs(node, monkeypatch):
    recovery, db, _ = node
    _fill(db)
    monkeypatch.setattr(partial_recovery, "MAX_SCAN_REPLY", 100)
    result = asyncio.run(recovery.scan(RecoveryScan([0, 1], [db.db_id])))
    assert result.status == -1 and "more than one reply carries" in result.errmsg
