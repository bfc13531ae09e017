"""store/naming.py: ctdbd's file names, directories, open flags and database ids."""

from __future__ import annotations

import pytest

from ctdblab.daemon.config.ctdbconf import parse_ctdb_conf
from ctdblab.daemon.protocol import DbFlag
from ctdblab.daemon.store import DbDirs, DbKind, check_db_name, db_id, tdb_flags


def test_paths_as_real_ctdbd_names_them():
    # `ctdb getdbmap` on a real ctdbd 4.17 in the lab (pnn 0, default directories).
    dirs = DbDirs()
    assert dirs.path("locking.tdb", 0, DbKind.VOLATILE) == "/var/lib/ctdb/volatile/locking.tdb.0"
    assert dirs.path("foo", 0, DbKind.VOLATILE) == "/var/lib/ctdb/volatile/foo.0"
    assert dirs.path("bar", 0, DbKind.PERSISTENT) == "/var/lib/ctdb/persistent/bar.0"
    assert dirs.path("secrets.tdb", 3, DbKind.PERSISTENT) == "/var/lib/ctdb/persistent/secrets.tdb.3"
    # replicated databases live in the volatile directory (ctdb_local_attach)
    assert dirs.path("r", 1, DbKind.REPLICATED) == "/var/lib/ctdb/volatile/r.1"
    assert dirs.state_path("persistent_health.tdb", 0) == "/var/lib/ctdb/state/persistent_health.tdb.0"


def test_directories_come_from_ctdb_conf():
    conf = parse_ctdb_conf("[database]\n volatile database directory = /tmp/v\n"
                           " persistent database directory = /srv/p\n"
                           " state database directory = /run/s\n")
    dirs = DbDirs.from_conf(conf)
    assert dirs == DbDirs("/tmp/v", "/srv/p", "/run/s")
    assert dirs.path("g_lock.tdb", 2, DbKind.VOLATILE) == "/tmp/v/g_lock.tdb.2"
    assert dirs.path("passdb.tdb", 2, DbKind.PERSISTENT) == "/srv/p/passdb.tdb.2"
    assert DbDirs.from_conf(parse_ctdb_conf("")) == DbDirs()


def test_trailing_slash_is_kept_like_ctdbd():
    assert DbDirs(volatile="/v/").path("a", 0, DbKind.VOLATILE) == "/v//a.0"


def test_flags_as_ctdb_db_tdb_flags():
    assert tdb_flags(DbKind.VOLATILE, mutexes=True, robust=True) == 0x1C41
    assert tdb_flags(DbKind.VOLATILE, mutexes=False) == 0xC41
    assert tdb_flags(DbKind.VOLATILE, mutexes=True, robust=False) == 0xC41
    assert tdb_flags(DbKind.PERSISTENT, mutexes=True, robust=True) == 0x400
    assert tdb_flags(DbKind.REPLICATED, mutexes=True, robust=True) == 0xC41  # never mutexes
    assert tdb_flags(DbKind.VOLATILE) == 0x1C41  # robust mutexes work on this machine


def test_db_ids():
    assert db_id("locking.tdb") == 0x7A19D84D
    assert db_id("foo") == 0xCD3F77E5
    assert db_id("bar") == 0xE72564A3


@pytest.mark.parametrize("bad", ["", "a/b", "../x", ".", "..", "a\0b"])
def test_names_that_would_leave_the_directory(bad):
    with pytest.raises(ValueError):
        check_db_name(bad)
    with pytest.raises(ValueError):
        DbDirs().path(bad, 0, DbKind.VOLATILE)


def test_kinds_and_dbmap_flags():
    assert DbKind.PERSISTENT.db_flags == DbFlag.PERSISTENT
    assert DbKind.REPLICATED.db_flags == DbFlag.REPLICATED
    assert DbKind.VOLATILE.db_flags == DbFlag(0)
    for kind in DbKind:
        assert DbKind.from_db_flags(kind.db_flags | DbFlag.STICKY) is kind


def test_keys_are_hashed_by_libtdb_once_it_agrees_with_the_pure_lookup3():
    """The daemon hashes keys for their lmaster with libtdb's tdb_jenkins_hash (ctypes); the core
    takes it only after checking it against its own lookup3, and refuses one that differs."""
    import random

    from ctdblab.daemon.core.db import ltdbrules
    from ctdblab.daemon.protocol.ltdb import jenkins_hash
    from ctdblab.daemon.store import libtdb

    rng = random.Random(5)
    keys = [rng.randbytes(rng.randrange(1, 80)) for _ in range(300)]
    try:
        assert ltdbrules.use_key_hash(libtdb.jenkins_hash)
        assert ltdbrules._hash_key is libtdb.jenkins_hash
        assert [ltdbrules.key_hash(k) for k in keys] == [jenkins_hash(k) for k in keys]
        assert [ltdbrules.lmaster_of(k, (0, 1, 2)) for k in keys] == [
            (0, 1, 2)[jenkins_hash(k) % 3] for k in keys]
        off_by_one = lambda key: (libtdb.jenkins_hash(key) + (len(key) == 13)) & 0xFFFFFFFF  # noqa: E731
        assert not ltdbrules.use_key_hash(off_by_one)          # one key of the check set differs
        assert ltdbrules._hash_key is libtdb.jenkins_hash           # the last good one stays
        assert not ltdbrules.use_key_hash(lambda key: 1 / 0)
    finally:
        assert ltdbrules.use_key_hash(jenkins_hash)
