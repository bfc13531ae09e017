"""store: what a damaged database file says, and that nothing in it is wiped without a copy.

libtdb's own messages reach a log (they are its only report of a corrupt record: its lookups
answer NOEXIST then), a corrupt hash chain is an error and not "no record", values shorter than
the ltdb header are reported, a persistent file that is not a TDB or fails tdb_check is kept as
ctdbd's ``<path>.corrupted.<time>.0Z`` backup instead of being wiped by libtdb's O_CREAT, and the
reports are rate-limited.
"""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from ctdblab.daemon.protocol import LtdbHeader
from ctdblab.daemon.store import ChildError, DbDirs, DbKind, Store, TdbErr, TdbError, TdbFile
from ctdblab.daemon.store.libtdb import TDB_DEBUG_ERROR, TDB_DEBUG_FATAL, format_log
from ctdblab.daemon.store.reports import FileReports

PERSISTENT = 0x400


def corrupt_record(path: str, key: bytes) -> None:
    """Overwrite the 24-byte TDB record header in front of `key` (its magic included)."""
    data = bytearray(open(path, "rb").read())
    at = data.find(key)
    assert at > 24
    data[at - 24:at] = b"\xaa" * 24
    with open(path, "r+b") as f:
        f.write(data)


def test_format_log_renders_what_the_format_names_and_no_more():
    words = (0xAAAAAAAA, 503616, 0, 0, 0, 0)
    assert format_log(b"tdb_rec_read bad magic 0x%x at offset=%u\n", words) == \
        "tdb_rec_read bad magic 0xaaaaaaaa at offset=503616"
    assert format_log(b"%d/%lld/%5u|%c|%%", (0xFFFFFFFF, 2 ** 64 - 1, 7, 65, 0, 0)) == "-1/-1/    7|A|%"
    assert format_log(b"%s at %p", (0, 0x1234, 0, 0, 0, 0)) == "(null) at 0x1234"
    # Floating point, '*' widths, more conversions than words: the bare format, nothing read.
    assert format_log(b"took %f s\n", words) == "took %f s"
    assert format_log(b"%*d", words) == "%*d"
    assert format_log(b"%d" * 7, words) == "%d" * 7
    assert format_log(b"%u and %s", words, word_args=False) == "%u and %s"


def test_libtdb_messages_reach_the_log_and_a_corrupt_chain_is_an_error(tmp_path):
    path = str(tmp_path / "p.tdb.0")
    with TdbFile(path, 101, PERSISTENT) as tdb:
        for i in range(5):
            tdb.store_ltdb(b"rkey%d" % i, LtdbHeader(1, 0), b"value")
    corrupt_record(path, b"rkey3")
    heard = []
    with TdbFile(path, 101, PERSISTENT, os.O_RDWR, log=lambda level, text: heard.append((level, text))) as tdb:
        # tdb_parse_record answers NOEXIST for a chain it cannot follow; the log tells why.
        with pytest.raises(TdbError) as err:
            tdb.fetch_ltdb(b"rkey3")
        assert err.value.ecode == TdbErr.CORRUPT and "bad magic 0xaaaaaaaa" in str(err.value)
        assert tdb.fetch_ltdb(b"not-there") is None
        assert tdb.fetch_ltdb(b"rkey1")[1] == b"value"
        assert tdb.check() is not None
    assert (TDB_DEBUG_FATAL, heard[0][1]) == heard[0] and heard[0][1].startswith("tdb_rec_read bad magic")


def test_short_values_are_reported_and_read_as_no_record(tmp_path):
    seen = []
    with TdbFile(str(tmp_path / "v.tdb.0"), 101, PERSISTENT) as tdb:
        tdb.on_short_record = lambda key, size: seen.append((key, size))
        tdb.store(b"short", b"tiny")
        tdb.store_ltdb(b"whole", LtdbHeader(3, 0), b"")
        assert tdb.fetch_ltdb(b"short") is None and tdb.fetch_header(b"short") is None
        assert tdb.fetch_header(b"whole").rsn == 3
    assert seen == [(b"short", 4), (b"short", 4)]


def test_reports_are_rate_limited_and_corruption_told_once():
    lines, told = [], []
    now = [0.0]
    reports = FileReports("x.tdb", "/d/x.tdb.0", lines.append, told.append, clock=lambda: now[0], period=60)
    for _ in range(100):
        reports.short_record(b"k", 3)
    assert len(lines) == 1 and "0x6b" in lines[0] and "3 bytes" in lines[0]
    now[0] = 61
    reports.short_record(b"k", 3)
    assert len(lines) == 2 and "and 99 more" in lines[1]
    reports.libtdb(TDB_DEBUG_ERROR, "tdb_rec_read bad magic 0x0 at offset=8")
    reports.libtdb(TDB_DEBUG_ERROR, "tdb_rec_read bad magic 0x0 at offset=16")
    assert told == ["tdb(/d/x.tdb.0): tdb_rec_read bad magic 0x0 at offset=8"]
    assert reports.corruption == told[0]
    reports.libtdb(TDB_DEBUG_ERROR, "tdb_transaction_start: cannot start a transaction with locks held")
    assert len(told) == 1


@pytest.fixture
def store(tmp_path):
    dirs = DbDirs(str(tmp_path / "volatile"), str(tmp_path / "persistent"), str(tmp_path / "state"))
    for d in (dirs.volatile, dirs.persistent, dirs.state):
        os.makedirs(d)
    lines, corrupt = [], []
    s = Store(dirs, 0, hash_size=1001, log=lines.append, on_corrupt=lambda n, r: corrupt.append((n, r)))
    s.lines, s.corrupt = lines, corrupt
    yield s
    s.close()


def test_persistent_file_of_garbage_is_backed_up_not_wiped(store):
    path = os.path.join(store.dirs.persistent, "g.tdb.0")
    garbage = random.Random(3).randbytes(70000)
    open(path, "wb").write(garbage)
    db = store.attach("g.tdb", DbKind.PERSISTENT)
    backups = [f for f in os.listdir(store.dirs.persistent) if f.startswith("g.tdb.0.corrupted.")]
    assert len(backups) == 1 and backups[0].endswith(".0Z")
    assert open(os.path.join(store.dirs.persistent, backups[0]), "rb").read() == garbage
    assert db.corruption == f"ERROR - Backup of corrupted TDB in '{path}.corrupted.{backups[0].split('.')[-2]}.0Z'"
    assert store.corrupt == [("g.tdb", db.corruption)]
    assert db.tdb.keys() == []                                   # a fresh, empty database
    assert any("renamed to" in line and "not a TDB file" in line for line in store.lines)


def test_persistent_file_failing_tdb_check_is_backed_up(store):
    path = os.path.join(store.dirs.persistent, "c.tdb.0")
    with TdbFile(path, 1001, PERSISTENT) as tdb:
        for i in range(10):
            tdb.store_ltdb(b"rec%d" % i, LtdbHeader(1, 0), b"v")
    corrupt_record(path, b"rec4")
    damaged = open(path, "rb").read()
    db = store.attach("c.tdb", DbKind.PERSISTENT)
    backups = [f for f in os.listdir(store.dirs.persistent) if f.startswith("c.tdb.0.corrupted.")]
    assert open(os.path.join(store.dirs.persistent, backups[0]), "rb").read() == damaged
    assert db.corruption.startswith("ERROR - Backup of corrupted TDB in ")
    assert any("Bad magic" in line for line in store.lines)     # libtdb's tdb_check message


def test_sound_persistent_file_is_kept_as_it_is(store):
    path = os.path.join(store.dirs.persistent, "ok.tdb.0")
    with TdbFile(path, 1001, PERSISTENT) as tdb:
        tdb.store_ltdb(b"k", LtdbHeader(5, 0), b"kept")
    db = store.attach("ok.tdb", DbKind.PERSISTENT)
    assert db.corruption is None and store.corrupt == []
    assert db.tdb.fetch_ltdb(b"k") == (LtdbHeader(5, 0), b"kept")
    assert os.listdir(store.dirs.persistent) == ["ok.tdb.0"]


def test_traverse_reports_short_values_and_corruption(store):
    async def body():
        db = store.attach("t.tdb", DbKind.PERSISTENT)
        db.tdb.store_ltdb(b"good", LtdbHeader(1, 0), b"v")
        db.tdb.store(b"bad", b"xy")
        items = [item async for item in db.traverse()]
        assert sorted(k for k, _ in items) == [b"bad", b"good"]
        assert any("0x626164" in line and "a traverse" in line for line in store.lines)
        for i in range(20):
            db.tdb.store_ltdb(b"more%d" % i, LtdbHeader(1, 0), b"v" * 10)
        corrupt_record(db.path, b"more7")
        with pytest.raises(ChildError):
            async for _ in db.traverse():
                pass
        assert db.corruption is not None and "CORRUPT" in db.corruption
        assert store.corrupt == [("t.tdb", db.corruption)]

    asyncio.run(body())
