"""The daemon's databases: one ``Database`` per attached name, each open once for the daemon's life.

``Store`` is the registry (what ctdbd's ``ctdb->db_list`` plus ``ctdb_local_attach`` are): it
names the file (:mod:`.naming`), opens it with ctdbd's flags, and hands out ``Database`` objects
by name or db_id. Policy — who may attach when, health, recovery, migration, vacuuming — belongs to
the layers above; this is I/O only.

A ``Database`` offers, all without blocking the event loop:

- record locks: ``try_lock(key)`` (synchronous, None when contended) and ``await lock(key)``
  (through the lock helper when contended), then the synchronous ``TdbFile`` calls on ``db.tdb``
  while the lock is held (they nest inside it and cannot wait);
- ``await lock_all()``: the all-record lock through the helper (freeze);
- ``await fetch(key)`` / ``await fetch_ltdb(key)`` / ``await store_ltdb(key, header, data)``:
  lock, one call, unlock;
- ``await transaction(fn)``: ``fn(tdb)`` inside a TDB transaction in a forked child (persistent
  commits fsync there);
- ``traverse()``: an async iterator over the records, read in a forked child;
- ``await run_in_child(fn)``: any other blocking work on the handle (a write traverse, a repack).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from ..protocol.constants import DbFlag, TdbFlag
from ..protocol.ltdb import DB_SEQNUM_TDB_KEY, LTDB_HEADER_SIZE, unpack_seqnum
from ..protocol.types import LtdbHeader
from . import child
from .libtdb import TdbError
from .locks import ChainLocker, HeldLock
from .naming import DATABASE_HASH_SIZE, DB_FILE_MODE, DbDirs, DbKind, db_id, tdb_flags
from .reports import FileReports
from .residency import release_mapped_pages
from .tdbfile import TdbFile


class Database:
    """One attached database."""

    def __init__(self, name: str, kind: DbKind, path: str, tdb: TdbFile, locker: ChainLocker,
                 reports: FileReports | None = None) -> None:
        self.name = name
        self.kind = kind
        self.path = path
        self.db_id = db_id(name)
        self.tdb = tdb
        self.locker = locker
        self.reports = reports
        self.readonly = False  # SET_DB_READONLY (tracking database not handled here)
        self.sticky = False  # SET_DB_STICKY

    @property
    def corruption(self) -> str | None:
        """Why the store believes the file is damaged (found at attach, or reported by libtdb
        since), or None. The first reason only; the layers above decide what it means."""
        return self.reports.corruption if self.reports is not None else None

    def __repr__(self) -> str:
        return f"Database({self.name!r}, {self.kind.value}, {self.db_id:#010x}, {self.path!r})"

    # --- what the controls report -----------------------------------------------------------

    @property
    def persistent(self) -> bool:
        return self.kind is DbKind.PERSISTENT

    @property
    def open_flags(self) -> int:
        """DB_OPEN_FLAGS: the file's current libtdb flags (0x1c41, 0x1cc1 after ENABLE_SEQNUM,
        0x400 persistent)."""
        return self.tdb.flags

    @property
    def db_flags(self) -> DbFlag:
        """GET_DBMAP's flags."""
        flags = self.kind.db_flags
        if self.readonly:
            flags |= DbFlag.READONLY
        if self.sticky:
            flags |= DbFlag.STICKY
        return flags

    @property
    def seqnum_enabled(self) -> bool:
        return bool(self.tdb.flags & TdbFlag.SEQNUM)

    def enable_seqnum(self) -> None:
        """ENABLE_SEQNUM."""
        self.tdb.enable_seqnum()

    @property
    def seqnum(self) -> int:
        """The TDB header's sequence number (what ctdbd polls every SeqnumInterval)."""
        return self.tdb.seqnum

    def increment_seqnum(self) -> None:
        """UPDATE_SEQNUM from a peer."""
        self.tdb.increment_seqnum_nonblock()

    # --- locks ------------------------------------------------------------------------------

    def try_lock(self, key: bytes) -> HeldLock | None:
        return self.locker.try_record(key)

    async def lock(self, key: bytes) -> HeldLock:
        return await self.locker.record(key)

    async def lock_all(self) -> HeldLock:
        return await self.locker.database()

    @contextlib.asynccontextmanager
    async def locked(self, key: bytes) -> AsyncIterator[HeldLock]:
        """``async with db.locked(key) as lock:`` — the chain lock for the block."""
        lock = await self.lock(key)
        try:
            yield lock
        finally:
            lock.release()

    # --- one-call conveniences --------------------------------------------------------------

    async def fetch(self, key: bytes) -> bytes | None:
        async with await self.lock(key):
            return self.tdb.fetch(key)

    async def fetch_ltdb(self, key: bytes) -> tuple[LtdbHeader, bytes] | None:
        async with await self.lock(key):
            return self.tdb.fetch_ltdb(key)

    async def store_ltdb(self, key: bytes, header: LtdbHeader, data: bytes = b"") -> None:
        async with await self.lock(key):
            self.tdb.store_ltdb(key, header, data)

    async def db_seqnum(self) -> int:
        """GET_DB_SEQNUM: the u64 in ``__db_sequence_number__\\0`` (0 if absent or not 8 bytes)."""
        record = await self.fetch_ltdb(DB_SEQNUM_TDB_KEY)
        return 0 if record is None else unpack_seqnum(record[1])

    # --- work in a child --------------------------------------------------------------------

    async def run_in_child(self, fn: Callable[[TdbFile], Any]) -> Any:
        """``fn(tdb)`` in a forked child (forked while no task holds a lock of this file)."""
        async with self.locker.quiet():
            started = child.start_call(lambda: fn(self.tdb))
        with self._child_reports():
            return await child.call_result(started)

    async def transaction(self, fn: Callable[[TdbFile], Any]) -> Any:
        """``fn(tdb)`` inside a TDB transaction, committed (with fsync unless NOSYNC) in a forked
        child; ChildError if ``fn`` raises (nothing written) or the commit fails."""
        async with self.locker.quiet():
            started = child.start_call(child.transaction_call(self.tdb, fn), realtime=True)
        with self._child_reports():
            return await child.call_result(started)

    async def traverse(self, read_only: bool = True) -> AsyncIterator[tuple[bytes, bytes]]:
        """Every (key, value) of the file (values include their ltdb header), from a child."""
        async with self.locker.quiet():
            started = child.start_traverse(self.tdb, read_only)
        with self._child_reports():
            async for item in child.traverse_records(started):
                if len(item[1]) < LTDB_HEADER_SIZE and self.reports is not None:
                    self.reports.short_record(item[0], len(item[1]), "a traverse")
                yield item

    @contextlib.contextmanager
    def _child_reports(self) -> Iterator[None]:
        """A child that met a corrupt file reports it here (what the child's libtdb said stays in
        the child): libtdb's CORRUPT in its error."""
        try:
            yield
        except child.ChildError as exc:
            if self.reports is not None and "CORRUPT" in str(exc):
                self.reports.corrupt(str(exc))
            raise

    def close(self) -> None:
        """Release the locks still held, then tdb_close."""
        if not self.tdb.closed:
            self.locker.release_all()
        self.tdb.close()


async def run_in_child_over(dbs: list[Database], fn: Callable[[list[TdbFile]], Any]) -> Any:
    """``fn([db.tdb, ...])`` in one forked child for several databases (one fork instead of one
    per database), forked while no task of this daemon holds a lock of any of their files: the
    databases' turns are taken in db_id order, so two such calls cannot wait on each other."""
    async with contextlib.AsyncExitStack() as turns:
        for db in sorted(dbs, key=lambda d: d.db_id):
            await turns.enter_async_context(db.locker.quiet())
        started = child.start_call(lambda: fn([db.tdb for db in dbs]))
    return await child.call_result(started)


class Store:
    """The attached databases of one node.

    Create it after the daemon has daemonized (forked): fcntl locks are not inherited, and the
    ACTIVE lock a volatile file's first opener holds is what stops a later opener (smbd) from
    wiping it under CLEAR_IF_FIRST."""

    def __init__(self, dirs: DbDirs, pnn: int, *, hash_size: int = DATABASE_HASH_SIZE,
                 mutexes: bool = True, helper_argv: list[str] | None = None,
                 env: Mapping[str, str] | None = None,
                 log: Callable[[str], None] | None = None,
                 on_corrupt: Callable[[str, str], None] | None = None) -> None:
        self.dirs = dirs
        self.pnn = pnn
        self.hash_size = hash_size
        self.mutexes = mutexes
        self.helper_argv = helper_argv
        self.env = env
        self.log = log or (lambda message: None)
        self.on_corrupt = on_corrupt       # (name, reason): a database's file is damaged
        self._by_name: dict[str, Database] = {}
        self._by_id: dict[int, Database] = {}

    def attach(self, name: str, kind: DbKind) -> Database:
        """Open ``name`` (creating the file) with ctdbd's flags, or return the open one. A name
        already attached as another kind is refused (ValueError), as is a db_id collision."""
        db = self._by_name.get(name)
        if db is not None:
            if db.kind is not kind:
                raise ValueError(f"database {name} is attached as {db.kind.value}, not {kind.value}")
            return db
        ident = db_id(name)
        other = self._by_id.get(ident)
        if other is not None:
            raise ValueError(f"db_id {ident:#x} hash collision. name1='{name}' name2='{other.name}'")
        path = self.dirs.path(name, self.pnn, kind)
        on_corrupt = self.on_corrupt
        reports = FileReports(name, path, self.log, None if on_corrupt is None
                              else (lambda reason: on_corrupt(name, reason)))
        flags = tdb_flags(kind, self.mutexes)
        # Like ctdbd, no directory is created: a missing one fails the open (TdbError ENOENT).
        if kind is DbKind.PERSISTENT:
            tdb = self._open_persistent(path, flags, reports)
        else:
            tdb = TdbFile(path, self.hash_size, flags, mode=DB_FILE_MODE, log=reports.libtdb)
        tdb.on_short_record = lambda key, size: reports.short_record(key, size, "a record read")
        release_mapped_pages(path)       # see residency.py: the mutex area need not stay resident
        locker = ChainLocker(tdb, name, helper_argv=self.helper_argv, env=self.env, log=self.log)
        db = Database(name, kind, path, tdb, locker, reports)
        self._by_name[name] = db
        self._by_id[ident] = db
        return db

    def _open_persistent(self, path: str, flags: int, reports: FileReports) -> TdbFile:
        """A persistent file, never wiped. libtdb opened with O_CREAT takes a file without TDB
        magic (or too short for a header) for a new one and wipes it; so an existing non-empty
        file is opened without O_CREAT first and checked (tdb_check, as ctdb_local_attach
        does). A damaged one is renamed as ctdbd's ctdb_backup_corrupted_tdb names it,
        ``<path>.corrupted.<UTC time>.0Z``, an empty file created in its place and the reason
        kept (``Database.corruption``; ctdbd marks the database unhealthy with it)."""
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            size = 0
        if size:
            # libtdb's messages during the check are logged; the reason kept is the backup's.
            probe = FileReports(reports.name, path, self.log)
            problem = None
            try:
                tdb = TdbFile(path, self.hash_size, flags, os.O_RDWR, DB_FILE_MODE, log=probe.libtdb)
            except TdbError as exc:
                if exc.c_errno != errno.EIO:        # not a format problem (EACCES, EMFILE, ...)
                    raise
                problem = f"not a TDB file ({exc})"
            else:
                problem = self._check(tdb)
                if problem is None:
                    tdb.log = reports.libtdb
                    return tdb
                tdb.close()
            backup = self._backup(path)
            self.log(f"ctdb_backup_corrupted_tdb({path}) renamed to {backup}: {problem}")
            reports.corrupt(f"ERROR - Backup of corrupted TDB in '{backup}'")
        return TdbFile(path, self.hash_size, flags, mode=DB_FILE_MODE, log=reports.libtdb)

    def _check(self, tdb: TdbFile) -> str | None:
        """tdb_check under the all-record read lock taken without waiting (a busy file, e.g.
        smbd committing, is not checked rather than stalling the daemon)."""
        try:
            if not tdb.lockall_read_nonblock():
                self.log(f"{tdb.path}: busy, not checked at attach")
                return None
        except TdbError as exc:
            self.log(f"{tdb.path}: cannot lock it for a check ({exc}), not checked at attach")
            return None
        try:
            return tdb.check()
        finally:
            try:
                tdb.unlockall_read()
            except TdbError:
                pass

    @staticmethod
    def _backup(path: str) -> str:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        backup = f"{path}.corrupted.{stamp}.0Z"
        n = 1
        while os.path.exists(backup):
            backup = f"{path}.corrupted.{stamp}.0Z.{n}"
            n += 1
        os.rename(path, backup)
        return backup

    def get(self, name: str) -> Database | None:
        return self._by_name.get(name)

    def by_id(self, ident: int) -> Database | None:
        return self._by_id.get(ident)

    def __iter__(self) -> Iterator[Database]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def detach(self, name: str) -> None:
        """Close and forget one database (DB_DETACH; volatile files are then wiped by the next
        first opener, as with ctdbd)."""
        db = self._by_name.pop(name, None)
        if db is not None:
            del self._by_id[db.db_id]
            db.close()

    def close(self) -> None:
        for name in list(self._by_name):
            self.detach(name)
