"""The vacuum's triage of a slice (server/vacuum_triage.py) decides the same in C
(np_vacuum_triage, native/node_plane.c) as in Python (core/db/vacuum.py `triage`).

* Differential: random queued records (every rsn and flag relation to what the file holds:
  missing, short, empty or with data, this node's or another's, read-only flags) on two identical
  TDB files; the same verdicts, counts, files, delete queues and settled keys forgotten.
* A chain another process holds is busy for both, and its record queued again; a task of the
  daemon holding a lock of the file makes the native triage hand the slice to Python; a record
  libtdb complains about is done again in Python, which reports it.
"""

from __future__ import annotations

import random

import pytest

from ctdblab.daemon.core.db.ltdbrules import AUTOMATIC, MIGRATED_WITH_DATA, RO_FLAGS, lmaster_of
from ctdblab.daemon.core.db.vacuum import DeleteQueue, Triage
from ctdblab.daemon.native import node_plane
from ctdblab.daemon.protocol.types import LtdbHeader
from ctdblab.daemon.server.vacuum_triage import Counts, SliceTriage
from ctdblab.daemon.store import DbDirs, DbKind, Store, libtdb

from chain_holder import chain_held_elsewhere

PNN = 1
LMASTERS = (0, 1, 2)
NAME = "smbXsrv_open_global.tdb"


@pytest.fixture(scope="module")
def native():
    lib = node_plane.library(build_if_missing=True)
    return lib, node_plane.tdb_functions(libtdb.lib, libtdb.log_function_address())


def open_db(base):
    for sub in ("v", "p", "s"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    store = Store(DbDirs(str(base / "v"), str(base / "p"), str(base / "s")), PNN, hash_size=101)
    return store, store.attach(NAME, DbKind.VOLATILE)


def random_case(rng: random.Random) -> tuple[bytes, LtdbHeader, bytes | None]:
    """A key, the header it was queued with, and what the file holds for it now."""
    key = rng.randbytes(rng.choice([1, 4, 16, 17, 24, 40]))
    flags = rng.choice([0, AUTOMATIC, MIGRATED_WITH_DATA, MIGRATED_WITH_DATA | AUTOMATIC])
    queued = LtdbHeader(rng.randrange(1, 6), PNN, 0, flags)
    kind = rng.random()
    if kind < 0.12:
        return key, queued, None                                   # deleted meanwhile
    if kind < 0.16:
        return key, queued, rng.randbytes(rng.randrange(0, 24))    # short: reported, skipped
    rsn = queued.rsn if rng.random() < 0.7 else rng.randrange(0, 7)
    dmaster = PNN if rng.random() < 0.8 else rng.choice([0, 2, 3])
    now_flags = rng.choice([0, 0, 0, MIGRATED_WITH_DATA, RO_FLAGS & 0x01000000])
    data = b"" if rng.random() < 0.8 else rng.randbytes(rng.randrange(1, 30))
    return key, queued, LtdbHeader(rsn, dmaster, 0, now_flags).pack() + data


def contents(db) -> dict[bytes, bytes]:
    out = {}
    db.tdb.traverse_read(lambda key, value: out.__setitem__(bytes(key), bytes(value)))
    return out


def test_native_and_python_triage_decide_alike_on_random_records(tmp_path, native):
    rng = random.Random(8)
    store_py, db_py = open_db(tmp_path / "py")
    store_c, db_c = open_db(tmp_path / "c")
    try:
        chunk, seen = [], set()
        while len(chunk) < 1500:
            key, queued, value = random_case(rng)
            if key in seen:
                continue
            seen.add(key)
            chunk.append((key, queued))
            if value is not None:
                db_py.tdb.store(key, value)
                db_c.tdb.store(key, value)
        forgotten = {"py": [], "c": []}
        python = SliceTriage(PNN, lambda db_id, key: forgotten["py"].append(key), None)
        in_c = SliceTriage(PNN, lambda db_id, key: forgotten["c"].append(key), native)
        queue_py, queue_c = DeleteQueue(), DeleteQueue()
        counts_py, counts_c = Counts(), Counts()
        verdicts_py, verdicts_c = [], []
        for start in range(0, len(chunk), 200):        # slices, as a run does them
            part = chunk[start:start + 200]
            verdicts_py += python.run(db_py, queue_py, part, LMASTERS, counts_py)
            verdicts_c += in_c.run(db_c, queue_c, part, LMASTERS, counts_c)
        assert verdicts_c == verdicts_py
        assert counts_c == counts_py
        assert contents(db_c) == contents(db_py)
        assert forgotten["c"] == forgotten["py"]
        assert len(queue_c) == len(queue_py) == 0
        assert db_c.locker.stats.num_immediate == db_py.locker.stats.num_immediate == 1500
        # every verdict happened, and the C deleted some records itself
        assert {v for v in verdicts_c} == {Triage.SKIP, Triage.DELETE_NOW, Triage.DELETE_LIST, Triage.TO_LMASTER}
        assert counts_c.deleted > 50 and counts_c.skipped > 100, counts_c
        to_lmaster = [key for (key, _), v in zip(chunk, verdicts_c) if v is Triage.TO_LMASTER]
        assert all(lmaster_of(key, LMASTERS) != PNN for key in to_lmaster)
    finally:
        store_py.close()
        store_c.close()


def test_a_chain_another_process_holds_is_busy_and_queued_again(tmp_path, native):
    store, db = open_db(tmp_path / "n")
    try:
        keys = [bytes([i]) * 8 for i in range(3)]
        queued = LtdbHeader(2, PNN, 0, 0)
        for key in keys:
            db.tdb.store(key, queued.pack())
        with chain_held_elsewhere(db, keys[1]):
            queue, counts = DeleteQueue(), Counts()
            verdicts = SliceTriage(PNN, lambda *a: None, native).run(
                db, queue, [(key, queued) for key in keys], LMASTERS, counts)
        assert verdicts[1] is Triage.SKIP and counts.busy == 1 and keys[1] in queue and len(queue) == 1
        assert db.tdb.fetch(keys[1]) == queued.pack()
    finally:
        store.close()


def test_a_lock_held_by_a_task_of_the_daemon_hands_the_slice_to_python(tmp_path, native):
    store, db = open_db(tmp_path / "n")
    try:
        key = b"k" * 16
        queued = LtdbHeader(3, PNN, 0, 0)
        db.tdb.store(key, queued.pack())
        held = db.try_lock(b"another key")            # a task's chain lock: the turn is taken
        assert held is not None
        try:
            queue, counts = DeleteQueue(), Counts()
            verdicts = SliceTriage(PNN, lambda *a: None, native).run(db, queue, [(key, queued)], LMASTERS, counts)
        finally:
            held.release()
        assert verdicts == [Triage.SKIP] and counts.busy == 1 and key in queue   # Python's try_lock: busy
        assert db.tdb.fetch(key) == queued.pack()
    finally:
        store.close()


def test_a_record_libtdb_complains_about_is_done_again_in_python(tmp_path, native, caplog):
    """A short record is left to Python, which reports it (on_short_record) and skips it."""
    store, db = open_db(tmp_path / "n")
    try:
        shorts: list[bytes] = []
        db.tdb.on_short_record = lambda key, size: shorts.append(key)
        key = b"s" * 12
        db.tdb.store(key, b"tiny")
        queue, counts = DeleteQueue(), Counts()
        verdicts = SliceTriage(PNN, lambda *a: None, native).run(
            db, queue, [(key, LtdbHeader(1, PNN, 0, 0))], LMASTERS, counts)
        assert verdicts == [Triage.SKIP] and shorts == [key] and counts.skipped == 1
    finally:
        store.close()


def test_the_benchmark_prints_both_ways(capsys, native):
    from benchmarks import vacuum_triage
    vacuum_triage.main(["--records", "900", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "python/native" in out and "per record" in out
