"""store/tdbfile.py and store/libtdb.py: the ctypes binding of the system libtdb, on files in a
temporary directory; interoperability checked with Samba's own tools (tdbdump, ltdbtool)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest

from ctdblab.daemon.protocol import LtdbHeader, TdbFlag
from ctdblab.daemon.store import (
    TDB_INSERT, TDB_MODIFY, TdbErr, TdbError, TdbFile, robust_mutexes_available,
)
from ctdblab.daemon.store import libtdb

VOLATILE = 0x1C41
PERSISTENT = 0x400


@pytest.fixture
def vol(tmp_path):
    with TdbFile(str(tmp_path / "vol.tdb.0"), 101, VOLATILE) as tdb:
        yield tdb


@pytest.fixture
def pers(tmp_path):
    with TdbFile(str(tmp_path / "pers.tdb.0"), 101, PERSISTENT) as tdb:
        yield tdb


def test_robust_mutexes_work_here():
    # The facts the rest relies on: Debian 12's libtdb has robust mutexes, so ctdbd adds
    # MUTEX_LOCKING to volatile databases.
    assert robust_mutexes_available()


@pytest.mark.parametrize("flags", [VOLATILE, 0xC41, PERSISTENT])
def test_open_flags_are_kept(tmp_path, flags):
    with TdbFile(str(tmp_path / "x.tdb.0"), 101, flags) as tdb:
        assert tdb.flags == flags  # what DB_OPEN_FLAGS reports
        assert tdb.hash_size == 101
        assert os.stat(tdb.path).st_mode & 0o777 == 0o600


def test_enable_seqnum_gives_0x1cc1(vol):
    assert vol.seqnum == 0
    vol.enable_seqnum()
    assert vol.flags == 0x1CC1
    vol.store(b"k", b"v")
    vol.store(b"k", b"w")
    vol.delete(b"k")
    assert vol.seqnum == 3
    vol.increment_seqnum_nonblock()
    assert vol.seqnum == 4


def test_mutex_file_header(vol):
    # A TDB_MUTEX_LOCKING file starts with the mutex area and says so in the header, as the
    # files real ctdbd creates do (feature_flags 1, rwlocks 0xbad1a52).
    with open(vol.path, "rb") as f:
        head = f.read(168)
    assert head.startswith(b"TDB file\n")
    assert int.from_bytes(head[40:44], "little") == 0xBAD1A52
    assert int.from_bytes(head[60:64], "little") == 1


def test_fetch_store_delete(vol):
    assert vol.fetch(b"k") is None
    assert not vol.exists(b"k")
    vol.store(b"k", b"value")
    assert vol.fetch(b"k") == b"value"
    assert vol.exists(b"k")
    vol.store(b"k", b"")  # empty values are records too
    assert vol.fetch(b"k") == b""
    assert vol.delete(b"k") is True
    assert vol.delete(b"k") is False
    assert vol.fetch(b"k") is None


def test_empty_key_and_binary_data(pers):
    pers.store(b"", b"\0\xff\0")
    pers.store(b"\0k\0", b"")
    assert pers.fetch(b"") == b"\0\xff\0"
    assert pers.fetch(b"\0k\0") == b""


def test_insert_and_modify_flags(vol):
    vol.store(b"k", b"1", TDB_INSERT)
    with pytest.raises(TdbError) as exc:
        vol.store(b"k", b"2", TDB_INSERT)
    assert exc.value.ecode == TdbErr.EXISTS
    with pytest.raises(TdbError) as exc:
        vol.store(b"missing", b"2", TDB_MODIFY)
    assert exc.value.ecode == TdbErr.NOEXIST
    vol.store(b"k", b"3", TDB_MODIFY)
    assert vol.fetch(b"k") == b"3"


def test_storev_and_ltdb_records(vol):
    vol.storev(b"k", [b"ab", b"", b"cd"])
    assert vol.fetch(b"k") == b"abcd"
    header = LtdbHeader(rsn=7, dmaster=2, flags=0x10000)
    vol.store_ltdb(b"r", header, b"payload")
    assert vol.fetch(b"r") == header.pack() + b"payload"
    assert vol.fetch_ltdb(b"r") == (header, b"payload")
    assert vol.fetch_header(b"r") == header
    vol.store(b"short", b"x" * 23)  # ctdbd: shorter than a header is no record
    assert vol.fetch_ltdb(b"short") is None
    assert vol.fetch_header(b"short") is None
    assert vol.fetch_ltdb(b"missing") is None


def test_parse_reads_in_place(vol):
    vol.store(b"k", b"0123456789")
    seen = []

    def fn(view):
        seen.append(view)
        return bytes(view[2:4]), len(view)

    assert vol.parse(b"k", fn) == (b"23", 10)
    with pytest.raises(ValueError):  # released after the call: it pointed into the mmap
        bytes(seen[0])
    assert vol.parse(b"missing", fn, default="none") == "none"


def test_parse_and_traverse_raise_the_callbacks_exception(vol):
    vol.store(b"k", b"v")

    def boom(*_):
        raise KeyError("from callback")

    with pytest.raises(KeyError, match="from callback"):
        vol.parse(b"k", boom)
    with pytest.raises(KeyError, match="from callback"):
        vol.traverse_read(boom)
    assert vol.fetch(b"k") == b"v"  # and the handle still works


def test_traverse_read_and_write(pers):
    for i in range(50):
        pers.store(b"k%d" % i, b"v%d" % i)
    assert sorted(pers.items()) == sorted((b"k%d" % i, b"v%d" % i) for i in range(50))
    assert pers.traverse_read() == 50

    def drop_odd(key, value):
        if int(key[1:]) % 2:
            pers.delete(key)
        else:
            pers.store(key, value + b"!")

    assert pers.traverse(drop_odd) == 50
    assert sorted(pers.keys()) == sorted(b"k%d" % i for i in range(0, 50, 2))
    assert pers.fetch(b"k4") == b"v4!"
    # a true return stops the traverse
    assert pers.traverse_read(lambda k, v: True) == 1


def test_transactions(pers):
    pers.store(b"a", b"1")
    pers.transaction_start()
    assert pers.transaction_active
    pers.store(b"a", b"2")
    pers.store(b"b", b"2")
    pers.transaction_cancel()
    assert not pers.transaction_active
    assert (pers.fetch(b"a"), pers.fetch(b"b")) == (b"1", None)
    pers.transaction_start()
    pers.store(b"a", b"3")
    pers.delete(b"b")
    pers.transaction_prepare_commit()
    pers.transaction_commit()
    assert pers.fetch(b"a") == b"3"
    # DISALLOW_NESTING: a second start inside a transaction is an error
    pers.transaction_start()
    with pytest.raises(TdbError) as exc:
        pers.transaction_start()
    assert exc.value.ecode == TdbErr.NESTING
    pers.transaction_cancel()


def test_no_transaction_while_this_process_holds_a_chain_lock(pers):
    assert pers.chainlock_nonblock(b"k")
    with pytest.raises(TdbError) as exc:
        pers.transaction_start()
    assert exc.value.ecode == TdbErr.LOCK
    pers.chainunlock(b"k")
    pers.transaction_start()
    pers.transaction_cancel()


def test_chain_locks_nest_in_one_process(vol):
    assert vol.chainlock_nonblock(b"k")
    assert vol.chainlock_nonblock(b"k")  # libtdb counts per chain per process
    vol.store(b"k", b"v")  # nests inside the lock
    vol.chainunlock(b"k")
    vol.chainunlock(b"k")
    vol.chainlock_mark(b"k")
    vol.store(b"k", b"w")
    vol.chainlock_unmark(b"k")
    with pytest.raises(TdbError):
        vol.chainunlock(b"k")  # not held any more


def test_wipe_all_and_repack(pers):
    for i in range(20):
        pers.store(b"%d" % i, b"x" * 100)
    pers.wipe_all()
    assert pers.keys() == []
    pers.repack()
    assert pers.freelist_size() >= 0


def test_open_errors(tmp_path):
    with pytest.raises(TdbError) as exc:
        TdbFile(str(tmp_path / "missing" / "x.tdb.0"), 101, PERSISTENT)
    assert exc.value.c_errno == errno.ENOENT
    path = str(tmp_path / "once.tdb.0")
    with TdbFile(path, 101, PERSISTENT):
        with pytest.raises(TdbError) as exc:  # libtdb: one open per file per process
            TdbFile(path, 101, PERSISTENT)
        assert exc.value.c_errno == errno.EBUSY


def test_mutex_file_needs_the_mutex_flag(tmp_path):
    path = str(tmp_path / "m.tdb.0")
    with TdbFile(path, 101, VOLATILE):
        code = (
            "import os, sys; sys.path.insert(0, sys.argv[1]); import libtdb\n"
            "import ctypes\n"
            "ctx = libtdb.lib.tdb_open_ex(sys.argv[2].encode(), 0, int(sys.argv[3], 0), os.O_RDWR,"
            " 0o600, None, None)\n"
            "print(bool(ctx), ctypes.get_errno())\n")
        here = os.path.dirname(libtdb.__file__)
        with_flag = subprocess.run([sys.executable, "-c", code, here, path, hex(VOLATILE)],
                                   capture_output=True, text=True, check=True).stdout.split()
        without = subprocess.run([sys.executable, "-c", code, here, path, "0xc41"],
                                 capture_output=True, text=True, check=True).stdout.split()
    assert with_flag[0] == "True"
    assert without == ["False", str(errno.EINVAL)]


def test_closed_file(tmp_path):
    tdb = TdbFile(str(tmp_path / "c.tdb.0"), 101, PERSISTENT)
    tdb.close()
    tdb.close()
    assert tdb.closed
    with pytest.raises(TdbError):
        tdb.fetch(b"k")


# --- interoperability with Samba's tools ----------------------------------------------------

needs_tdbdump = pytest.mark.skipif(shutil.which("tdbdump") is None, reason="tdb-tools not installed")
needs_ltdbtool = pytest.mark.skipif(shutil.which("ltdbtool") is None, reason="ctdb not installed")


@needs_tdbdump
def test_tdbdump_reads_what_we_write_like_real_ctdbds_file(tmp_path):
    # The record `ctdb writekey foo k v` left in a real ctdbd's foo.0, as tdbdump printed it.
    real = ('{\nkey(1) = "k"\ndata(25) = "\\02\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00'
            '\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00v"\n}\n')
    path = str(tmp_path / "foo.0")
    with TdbFile(path, 1001, VOLATILE) as tdb:
        tdb.store_ltdb(b"k", LtdbHeader(rsn=2, dmaster=0), b"v")
        out = subprocess.run(["tdbdump", path], capture_output=True, text=True, check=True).stdout
    assert out == real


@needs_ltdbtool
def test_ltdbtool_reads_our_headers(tmp_path):
    # ltdbtool is CTDB's header-aware dump: it prints dmaster, rsn and flags from the 24 bytes.
    path = str(tmp_path / "bar.0")
    with TdbFile(path, 1001, PERSISTENT) as tdb:
        tdb.store_ltdb(b"pk", LtdbHeader(rsn=0x1_0000_0005, dmaster=3, flags=0x10000), b"pv")
    out = subprocess.run(["ltdbtool", "dump", "-p", path], capture_output=True, text=True,
                         check=True).stdout
    assert 'key(2) = "pk"\ndmaster: 3\nrsn: 4294967301\nflags: 0x10000\ndata(2) = "pv"' in out


def test_tdb_flag_constants_match_the_binding():
    assert VOLATILE == int(TdbFlag.CLEAR_IF_FIRST | TdbFlag.NOSYNC | TdbFlag.INCOMPATIBLE_HASH
                           | TdbFlag.DISALLOW_NESTING | TdbFlag.MUTEX_LOCKING)
    assert PERSISTENT == int(TdbFlag.DISALLOW_NESTING)


@pytest.mark.parametrize("size", [0, 5, 64 * 1024, 64 * 1024 + 1, 300_000])
def test_store_ltdb_writes_header_and_value_whole_below_and_above_the_join_limit(vol, size):
    # small values are joined and stored with tdb_store, big ones go through tdb_storev: the
    # file holds the same bytes either way, and fetch_ltdb / fetch_header read them back
    value = bytes(range(256)) * (size // 256) + bytes(size % 256)
    header = LtdbHeader(rsn=7, dmaster=2, reserved1=0, flags=0x10000)
    vol.store_ltdb(b"key", header, value)
    assert vol.fetch(b"key") == header.pack() + value
    assert vol.fetch_ltdb(b"key") == (header, value)
    assert vol.fetch_header(b"key") == header
    assert vol.fetch_ltdb(b"missing") is None
