"""pyctdbd's database I/O: CTDB's TDB files through the system libtdb (ctypes), laid out, opened
and locked as ctdbd 4.17 does, so clustered smbd shares them with the daemon.

Layers, bottom up: :mod:`.libtdb` (the binding), :mod:`.tdbfile` (one open file, synchronous
calls), :mod:`.naming` (paths, flags, db ids), :mod:`.locks` (chain and database locks that never
block the loop: try, else ctdbd's lock helper), :mod:`.child` (transactions and traverses in a
forked child), :mod:`.database` (the registry of attached databases). The record header codec is
:mod:`ctdblab.daemon.protocol.ltdb`.
"""

from __future__ import annotations

from .child import ChildError, run_in_child, transaction_in_child, traverse_in_child
from .database import Database, Store, run_in_child_over
from .libtdb import (
    TDB_INSERT, TDB_MODIFY, TDB_REPLACE, TdbErr, TdbError, jenkins_hash, robust_mutexes_available,
)
from .locks import (
    LOCK_PROCESSES_PER_DB, STOCK_LOCK_HELPER, ChainLocker, HeldLock, LockError, LockStats,
    lock_helper_argv,
)
from .naming import DATABASE_HASH_SIZE, DB_FILE_MODE, DbDirs, DbKind, check_db_name, db_id, tdb_flags
from .tdbfile import TdbFile

__all__ = [
    "DATABASE_HASH_SIZE", "DB_FILE_MODE", "LOCK_PROCESSES_PER_DB", "STOCK_LOCK_HELPER",
    "TDB_INSERT", "TDB_MODIFY", "TDB_REPLACE", "ChainLocker", "ChildError", "Database", "DbDirs",
    "DbKind", "HeldLock", "LockError", "LockStats", "Store", "TdbErr", "TdbError", "TdbFile",
    "check_db_name", "db_id", "jenkins_hash", "lock_helper_argv", "robust_mutexes_available",
    "run_in_child", "run_in_child_over", "tdb_flags", "transaction_in_child", "traverse_in_child",
]
