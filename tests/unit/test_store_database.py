"""store/database.py: attaching databases as ctdbd does, and sharing the files with another
process that opens them the way smbd does (with the flags DB_OPEN_FLAGS reports)."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys

import pytest

from ctdblab.daemon.config.ctdbconf import parse_ctdb_conf
from ctdblab.daemon.protocol import DbFlag, LtdbHeader
from ctdblab.daemon.store import DbDirs, DbKind, Store, TdbError, libtdb
import ctdblab.daemon.store.database as database_module

LIBDIR = os.path.dirname(libtdb.__file__)

# Opens PATH with FLAGS like smbd (tdb_open with ctdbd's flags), prints the value of KEY (hex,
# or "-"), then stores KEY2=VALUE2 unless KEY2 is "-".
SMBD_LIKE = r"""
import ctypes, os, sys
sys.path.insert(0, sys.argv[1])
import libtdb
path, flags, key, key2, value2 = sys.argv[2], int(sys.argv[3], 0), sys.argv[4], sys.argv[5], sys.argv[6]
ctx = libtdb.lib.tdb_open_ex(path.encode(), 0, flags, os.O_RDWR, 0o600, None, None)
if not ctx:
    print("open-failed", ctypes.get_errno()); sys.exit(0)
data = libtdb.lib.tdb_fetch(ctx, libtdb.key_data(key.encode()))
print(ctypes.string_at(data.dptr, data.dsize).hex() if data.dptr else "-")
if key2 != "-":
    k = libtdb.key_data(key2.encode())
    assert libtdb.lib.tdb_chainlock(ctx, k) == 0
    assert libtdb.lib.tdb_store(ctx, k, libtdb.key_data(bytes.fromhex(value2)), 1) == 0
    libtdb.lib.tdb_chainunlock(ctx, k)
libtdb.lib.tdb_close(ctx)
"""


def smbd_like(db_path: str, flags: int, key: str, key2: str = "-", value2: bytes = b"") -> str:
    return subprocess.run([sys.executable, "-c", SMBD_LIKE, LIBDIR, db_path, hex(flags), key, key2,
                           value2.hex()], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def dirs(tmp_path):
    for sub in ("v", "p", "s"):
        (tmp_path / sub).mkdir()
    return DbDirs(str(tmp_path / "v"), str(tmp_path / "p"), str(tmp_path / "s"))


def test_attach_as_ctdbd(dirs):
    with_store = Store(dirs, 2)
    try:
        locking = with_store.attach("locking.tdb", DbKind.VOLATILE)
        secrets = with_store.attach("secrets.tdb", DbKind.PERSISTENT)
        repl = with_store.attach("repl", DbKind.REPLICATED)
        assert locking.path == f"{dirs.volatile}/locking.tdb.2"
        assert secrets.path == f"{dirs.persistent}/secrets.tdb.2"
        assert repl.path == f"{dirs.volatile}/repl.2"
        assert (locking.db_id, secrets.db_id) == (0x7A19D84D, 0x7132C184)
        assert (locking.open_flags, secrets.open_flags, repl.open_flags) == (0x1C41, 0x400, 0xC41)
        assert locking.tdb.hash_size == 100001  # DatabaseHashSize
        assert not locking.seqnum_enabled
        locking.enable_seqnum()
        assert locking.open_flags == 0x1CC1 and locking.seqnum_enabled
        assert locking.db_flags == DbFlag(0)
        assert secrets.db_flags == DbFlag.PERSISTENT
        assert repl.db_flags == DbFlag.REPLICATED
        secrets.readonly = secrets.sticky = True
        assert secrets.db_flags == DbFlag.PERSISTENT | DbFlag.READONLY | DbFlag.STICKY
        # open once: attaching again gives the same handle
        assert with_store.attach("locking.tdb", DbKind.VOLATILE) is locking
        assert with_store.get("locking.tdb") is locking
        assert with_store.by_id(0x7132C184) is secrets
        assert with_store.by_id(1) is None
        assert sorted(db.name for db in with_store) == ["locking.tdb", "repl", "secrets.tdb"]
        with pytest.raises(ValueError):
            with_store.attach("locking.tdb", DbKind.PERSISTENT)
        with_store.detach("repl")
        assert with_store.get("repl") is None and len(with_store) == 2
        assert repl.tdb.closed
    finally:
        with_store.close()
    assert locking.tdb.closed and secrets.tdb.closed


def test_directories_from_ctdb_conf_and_no_mutexes(tmp_path):
    (tmp_path / "vol").mkdir()
    conf = parse_ctdb_conf(f"[database]\n volatile database directory = {tmp_path}/vol\n"
                           " tdb mutexes = false\n")
    store = Store(DbDirs.from_conf(conf), 0, hash_size=1001, mutexes=conf.tdb_mutexes)
    try:
        db = store.attach("g_lock.tdb", DbKind.VOLATILE)
        assert db.path == f"{tmp_path}/vol/g_lock.tdb.0"
        assert db.open_flags == 0xC41
    finally:
        store.close()


def test_missing_directory_is_an_error_like_ctdbd(tmp_path):
    store = Store(DbDirs(str(tmp_path / "none"), str(tmp_path / "none"), str(tmp_path)), 0)
    with pytest.raises(TdbError) as exc:
        store.attach("foo", DbKind.VOLATILE)
    assert exc.value.c_errno == errno.ENOENT
    assert len(store) == 0


def test_db_id_collision_is_refused(dirs, monkeypatch):
    store = Store(dirs, 0, hash_size=1001)
    try:
        store.attach("one", DbKind.VOLATILE)
        monkeypatch.setattr(database_module, "db_id", lambda name: 0xCD3F77E5 if name else 0)
        store2 = Store(dirs, 1, hash_size=1001)
        store2.attach("a", DbKind.VOLATILE)
        with pytest.raises(ValueError, match="hash collision"):
            store2.attach("b", DbKind.VOLATILE)
        store2.close()
    finally:
        store.close()


@pytest.mark.parametrize("kind", [DbKind.VOLATILE, DbKind.PERSISTENT])
def test_another_process_shares_the_file_with_the_reported_flags(dirs, kind):
    store = Store(dirs, 0, hash_size=1001)
    try:
        db = store.attach("locking.tdb", kind)
        header = LtdbHeader(rsn=9, dmaster=0)

        async def write():
            await db.store_ltdb(b"ours", header, b"from the daemon")
        asyncio.run(write())
        # smbd: tdb_open with DB_OPEN_FLAGS' value, fetch, chainlock + store
        out = smbd_like(db.path, db.open_flags, "ours", "theirs", header.pack() + b"from smbd")
        assert bytes.fromhex(out) == header.pack() + b"from the daemon"

        async def read():
            async with db.locked(b"theirs") as lock:
                assert not lock.via_helper and db.locker.busy
                return db.tdb.fetch_ltdb(b"theirs"), lock
        record, lock = asyncio.run(read())
        assert record == (header, b"from smbd") and lock.released
        assert asyncio.run(db.db_seqnum()) == 0  # no sequence-number record yet
    finally:
        store.close()


def test_clear_if_first_needs_the_daemon_to_keep_volatile_files_open(dirs):
    store = Store(dirs, 0, hash_size=1001)
    db = store.attach("locking.tdb", DbKind.VOLATILE)
    db.tdb.store(b"k", b"kept")
    path, flags = db.path, db.open_flags
    # While the daemon has it open, a later opener (smbd) does not wipe it...
    assert smbd_like(path, flags, "k") == b"kept".hex()
    assert db.tdb.fetch(b"k") == b"kept"
    store.close()
    # ...but the first opener after the last close does (CLEAR_IF_FIRST): why ctdbd never closes.
    assert smbd_like(path, flags, "k") == "-"


def test_a_new_volatile_database_does_not_stay_in_the_daemons_resident_memory(tmp_path):
    """Creating a mutex TDB writes ~4 MB of robust mutexes through the daemon's shared mapping;
    the store drops those pages from its resident set (they stay in the page cache), and the
    database still works."""
    for kind in ("volatile", "persistent", "state"):
        (tmp_path / kind).mkdir()
    store = Store(DbDirs(str(tmp_path / "volatile"), str(tmp_path / "persistent"), str(tmp_path / "state")), 0)

    def rss_kib() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    before = rss_kib()
    dbs = [store.attach(f"big{i}.tdb", DbKind.VOLATILE) for i in range(4)]
    grown = rss_kib() - before
    try:
        assert grown < 4 * 1024, f"{grown} KiB resident after creating 4 mutex databases"
        lock = dbs[0].try_lock(b"k")
        assert lock is not None
        dbs[0].tdb.store(b"k", b"value")
        lock.release()
        assert dbs[0].tdb.fetch(b"k") == b"value"
    finally:
        store.close()
