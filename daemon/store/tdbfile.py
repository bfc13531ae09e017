"""One open TDB file, through the system libtdb: the synchronous layer of the store.

``TdbFile`` wraps a ``struct tdb_context *``. It is what ctdbd's ``tdb_wrap`` is to ctdbd: one
handle per file per process for the daemon's whole life (libtdb refuses a second open of the
same file in a process, and closing any descriptor of a file drops every fcntl lock the process
holds on it; a volatile file reopened later could be wiped by CLEAR_IF_FIRST).

Everything here is a direct, synchronous libtdb call. Calls that can wait for another process
(``chainlock``, ``lockall``, ``transaction_start``, ``traverse``, and — unless the caller already
holds the chain — ``fetch``/``parse``/``store``) block the calling thread. The daemon's event loop
must not use them directly: :mod:`.locks` takes the chain lock without blocking first (then the
data calls nest inside it and cannot wait), and :mod:`.child` runs transactions and traverses in a
forked child, as ctdbd does.

Keys and values are bytes. Empty keys are legal in TDB (ctdb uses them for "no key").
"""

from __future__ import annotations

import ctypes
import errno
import os
import weakref
from collections.abc import Callable, Sequence
from typing import TypeVar

from ..protocol.ltdb import LTDB_HEADER_SIZE
from ..protocol.types import LtdbHeader
from .libtdb import (
    PARSER, TDB_DATA, TDB_INSERT, TDB_KEY, TDB_MODIFY, TDB_REPLACE, TRAVERSER, TdbErr, TdbError,
    TDB_DEBUG_ERROR, drop_logging, key_data, lib, libc, logging_context,
)

T = TypeVar("T")

__all__ = ["TDB_INSERT", "TDB_MODIFY", "TDB_REPLACE", "TdbError", "TdbFile"]


#: store_ltdb joins header and value up to this size (tdb_store), above it uses tdb_storev.
_JOIN_LIMIT = 64 * 1024


class _Call:
    """State of one parse/traverse callback, found again through ``private_data``."""

    __slots__ = ("fn", "result", "error", "count")

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.result: object = None
        self.error: BaseException | None = None
        self.count = 0


def _view(data: TDB_DATA) -> memoryview:
    if not data.dsize:
        return memoryview(b"")
    array = (ctypes.c_ubyte * data.dsize).from_address(ctypes.addressof(data.dptr.contents))
    return memoryview(array).cast("B")


def _bytes(data: TDB_DATA) -> bytes:
    return ctypes.string_at(data.dptr, data.dsize) if data.dsize else b""


def _call_of(private: int) -> _Call:
    # ``private`` is id(call) of a _Call the caller keeps alive (CPython: id is the address).
    return ctypes.cast(private, ctypes.py_object).value


@PARSER
def _parser(key: TDB_DATA, data: TDB_DATA, private: int) -> int:
    call = _call_of(private)
    view = _view(data)
    try:
        call.result = call.fn(view)
    except BaseException as exc:  # re-raised by parse() after libtdb returns
        call.error = exc
    finally:
        view.release()
    return 0


@TRAVERSER
def _traverser(_tdb: int, key: TDB_DATA, data: TDB_DATA, private: int) -> int:
    call = _call_of(private)
    call.count += 1
    try:
        stop = call.fn(_bytes(key), _bytes(data))
    except BaseException as exc:
        call.error = exc
        return 1
    return 1 if stop else 0


class _Sink:
    """libtdb's messages about one file, to the TdbFile (held weakly: the table of sinks must not
    keep a file nobody closed alive)."""

    __slots__ = ("file",)

    def __init__(self, file: TdbFile) -> None:
        self.file = weakref.ref(file)

    def __call__(self, level: int, text: str) -> None:
        file = self.file()
        if file is not None:
            file.heard(level, text)


class TdbFile:
    """An open TDB file. ``tdb_flags`` are libtdb's (``TdbFlag``); ``hash_size`` applies only
    when the file is created; ``open_flags`` get O_CLOEXEC added, as in Samba's tdb_wrap.

    ``log(level, text)``, if given, receives libtdb's own messages about this file (level
    ``TDB_DEBUG_FATAL``..``WARNING``; see :func:`.libtdb.format_log`): the only report libtdb
    gives of a corrupt record, which its lookups answer as "no such record".
    ``on_short_record(key, size)``, if set, hears of every value shorter than the ltdb header
    that :meth:`fetch_ltdb` / :meth:`fetch_header` meet (they answer None for it, as ctdbd's
    ``ctdb_ltdb_fetch`` treats it as no record)."""

    def __init__(self, path: str, hash_size: int, tdb_flags: int,
                 open_flags: int = os.O_RDWR | os.O_CREAT, mode: int = 0o600,
                 log: Callable[[int, str], None] | None = None) -> None:
        self.path = path
        self.on_short_record: Callable[[bytes, int], None] | None = None
        self.log = log
        self.complaints = 0              # libtdb messages at FATAL/ERROR level so far
        self.last_complaint: str | None = None
        log_ctx, self._log_token = logging_context(_Sink(self))
        ctypes.set_errno(0)
        ctx = lib.tdb_open_ex(os.fsencode(path), hash_size, tdb_flags, open_flags | os.O_CLOEXEC,
                              mode, ctypes.addressof(log_ctx), None)
        if not ctx:
            err = ctypes.get_errno()
            drop_logging(self._log_token)
            raise TdbError("tdb_open_ex", TdbErr.IO, err, path,
                           f"hash_size {hash_size}, tdb_flags {tdb_flags:#x}")
        self._ctx: int | None = ctx
        self.open_tdb_flags = tdb_flags

    def heard(self, level: int, text: str) -> None:
        """A libtdb message about this file (the logging context's sink)."""
        if level <= TDB_DEBUG_ERROR:
            self.complaints += 1
            self.last_complaint = text
        if self.log is not None:
            self.log(level, text)

    # --- life --------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def close(self) -> None:
        """tdb_close. Drops the fcntl locks this process holds on the file — but not chain
        *mutexes*: closing a mutex file with a chain locked leaves the thread's robust-mutex list
        pointing into the unmapped area, and the next mutex operation of the thread crashes.
        Unlock first (``Database.close`` does)."""
        ctx, self._ctx = self._ctx, None
        if ctx:
            lib.tdb_close(ctx)
            drop_logging(self._log_token)

    def __enter__(self) -> TdbFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._ctx is None else f"flags {self.flags:#x}"
        return f"TdbFile({self.path!r}, {state})"

    @property
    def context(self) -> int:
        """The libtdb context (``struct tdb_context *``), for native code that shares this open
        file (the node plane's grant, daemon/native/node_plane.c): it must be used only while
        this process makes no other libtdb call on it."""
        return self._h()

    def _h(self) -> int:
        if self._ctx is None:
            raise TdbError("tdb", TdbErr.EINVAL, errno.EBADF, self.path, "file is closed")
        return self._ctx

    def _fail(self, op: str) -> TdbError:
        err = ctypes.get_errno()
        ecode = lib.tdb_error(self._ctx) if self._ctx else TdbErr.EINVAL
        return TdbError(op, ecode, err, self.path)

    def _check(self, op: str, ret: int) -> int:
        if ret != 0:
            raise self._fail(op)
        return ret

    # --- properties ----------------------------------------------------------------------------

    @property
    def flags(self) -> int:
        """tdb_get_flags: what ctdbd answers to DB_OPEN_FLAGS (0x1cc1 once seqnum is on)."""
        return lib.tdb_get_flags(self._h())

    @property
    def hash_size(self) -> int:
        return lib.tdb_hash_size(self._h())

    @property
    def fd(self) -> int:
        return lib.tdb_fd(self._h())

    @property
    def map_size(self) -> int:
        return lib.tdb_map_size(self._h())

    def add_flags(self, flags: int) -> None:
        """tdb_add_flags (ctdbd's recovery sets TDB_NOLOCK around its transaction calls)."""
        lib.tdb_add_flags(self._h(), flags)

    def remove_flags(self, flags: int) -> None:
        lib.tdb_remove_flags(self._h(), flags)

    # --- records -------------------------------------------------------------------------------

    def fetch(self, key: bytes) -> bytes | None:
        """The value, or None if there is no record (one copy, out of libtdb's malloc). For the
        small values of smbd's records that copy is cheaper than parse()'s callback from C into
        Python (about 2 us a read here), so the hot path's readers use it. A failed lookup that
        libtdb complained about is a corrupt chain, as in :meth:`parse`."""
        complaints = self.complaints
        ctypes.set_errno(0)
        data = lib.tdb_fetch(self._h(), key_data(key))
        if not data.dptr:
            if self.complaints != complaints:   # what libtdb logged says why (bad magic...)
                raise TdbError("tdb_fetch", TdbErr.CORRUPT, 0, self.path, self.last_complaint)
            if lib.tdb_error(self._ctx) in (TdbErr.NOEXIST, TdbErr.SUCCESS):
                return None
            raise self._fail("tdb_fetch")
        try:
            return ctypes.string_at(data.dptr, data.dsize)
        finally:
            libc.free(ctypes.cast(data.dptr, ctypes.c_void_p))

    def parse(self, key: bytes, fn: Callable[[memoryview], T], default: T | None = None) -> T | None:
        """tdb_parse_record: ``fn(view)`` on the value in place, without copying it (a view into
        the file's mmap). The view is valid only during ``fn``: it is released afterwards, but
        slices of it are not — copy what you keep with ``bytes()``. Returns what ``fn`` returns,
        or ``default`` if there is no record."""
        call = _Call(fn)  # alive until the call returns; the callback finds it by address
        complaints = self.complaints
        ctypes.set_errno(0)
        ret = lib.tdb_parse_record(self._h(), key_data(key), _parser, id(call))
        if call.error is not None:
            raise call.error
        if ret != 0:
            if lib.tdb_error(self._ctx) == TdbErr.NOEXIST:
                if self.complaints != complaints:
                    # libtdb answers NOEXIST for any failed lookup, a corrupt chain included
                    # (tdb_parse_record); only its log says why. Not "no record", then.
                    raise TdbError("tdb_parse_record", TdbErr.CORRUPT, 0, self.path,
                                   self.last_complaint)
                return default
            raise self._fail("tdb_parse_record")
        return call.result  # type: ignore[return-value]

    def exists(self, key: bytes) -> bool:
        return bool(lib.tdb_exists(self._h(), key_data(key)))

    def store(self, key: bytes, value: bytes, flag: int = TDB_REPLACE) -> None:
        """tdb_store. ``flag`` TDB_INSERT fails with EXISTS on an existing key, TDB_MODIFY with
        NOEXIST on a missing one."""
        ctypes.set_errno(0)
        self._check("tdb_store", lib.tdb_store(self._h(), key_data(key), key_data(value), flag))

    def storev(self, key: bytes, parts: Sequence[bytes], flag: int = TDB_REPLACE) -> None:
        """tdb_storev: store the concatenation of ``parts`` without joining them first."""
        array = (TDB_KEY * len(parts))(*[key_data(p) for p in parts])
        ctypes.set_errno(0)
        self._check("tdb_storev", lib.tdb_storev(self._h(), key_data(key), array, len(parts), flag))

    def delete(self, key: bytes) -> bool:
        """tdb_delete; False if there was no record."""
        ctypes.set_errno(0)
        if lib.tdb_delete(self._h(), key_data(key)) == 0:
            return True
        if lib.tdb_error(self._ctx) == TdbErr.NOEXIST:
            return False
        raise self._fail("tdb_delete")

    # --- CTDB records: 24-byte header + data ---------------------------------------------------

    def fetch_ltdb(self, key: bytes) -> tuple[LtdbHeader, bytes] | None:
        """(header, data) as ctdbd reads it; None if missing or shorter than the header
        (``ctdb_ltdb_fetch`` treats both as no record; a short one is reported to
        ``on_short_record``). One tdb_fetch (see :meth:`fetch`)."""
        value = self.fetch(key)
        if value is None:
            return None
        if len(value) < LTDB_HEADER_SIZE:
            return self._ltdb(key, len(value))
        return LtdbHeader.unpack_from(value, 0)[0], value[LTDB_HEADER_SIZE:]

    def fetch_header(self, key: bytes) -> LtdbHeader | None:
        """Only the header (e.g. to look at dmaster); the data is not copied."""
        def head(view: memoryview) -> LtdbHeader | int:
            if len(view) < LTDB_HEADER_SIZE:
                return len(view)
            return LtdbHeader.unpack_from(view, 0)[0]
        return self._ltdb(key, self.parse(key, head))

    def _ltdb(self, key: bytes, found: T | int | None) -> T | None:
        if not isinstance(found, int):
            return found
        if self.on_short_record is not None:     # after libtdb returned: no callback under its lock
            try:
                self.on_short_record(key, found)
            except Exception:
                pass
        return None

    def store_ltdb(self, key: bytes, header: LtdbHeader, data: bytes = b"") -> None:
        """Header + data in one tdb_storev, as ``ctdb_ltdb_store`` does."""
        if len(data) <= _JOIN_LIMIT:      # one small value: a join is cheaper than an iovec array
            self.store(key, header.pack() + data)
        else:
            self.storev(key, (header.pack(), data))

    # --- chain locks ---------------------------------------------------------------------------

    def chainlock(self, key: bytes) -> None:
        """Blocking tdb_chainlock — only for helper processes and tests, never the event loop."""
        self._check("tdb_chainlock", lib.tdb_chainlock(self._h(), key_data(key)))

    def chainlock_nonblock(self, key: bytes) -> bool:
        """Try the chain lock; False if another process holds it (EAGAIN), TdbError otherwise."""
        return self._try("tdb_chainlock_nonblock", lib.tdb_chainlock_nonblock(self._h(), key_data(key)))

    def chainunlock(self, key: bytes) -> None:
        self._check("tdb_chainunlock", lib.tdb_chainunlock(self._h(), key_data(key)))

    def chainlock_read_nonblock(self, key: bytes) -> bool:
        """Try a shared chain lock (mutex files have no shared locks: it is exclusive there)."""
        return self._try("tdb_chainlock_read_nonblock",
                         lib.tdb_chainlock_read_nonblock(self._h(), key_data(key)))

    def chainunlock_read(self, key: bytes) -> None:
        self._check("tdb_chainunlock_read", lib.tdb_chainunlock_read(self._h(), key_data(key)))

    def chainlock_mark(self, key: bytes) -> None:
        """Record the chain as locked by this process without locking it (another process — the
        lock helper — holds the real lock for us). Data calls then nest instead of locking."""
        self._check("tdb_chainlock_mark", lib.tdb_chainlock_mark(self._h(), key_data(key)))

    def chainlock_unmark(self, key: bytes) -> None:
        self._check("tdb_chainlock_unmark", lib.tdb_chainlock_unmark(self._h(), key_data(key)))

    def _try(self, op: str, ret: int) -> bool:
        if ret == 0:
            return True
        err = ctypes.get_errno()
        # ctdbd counts EAGAIN, EACCES and EDEADLK as contention (ctdb_ltdb_lock_requeue).
        if lib.tdb_error(self._ctx) == TdbErr.LOCK and err in (errno.EAGAIN, errno.EACCES, errno.EDEADLK):
            return False
        raise self._fail(op)

    # --- whole-database locks --------------------------------------------------------------------

    def lockall(self) -> None:
        """Blocking tdb_lockall — helper processes and tests only."""
        self._check("tdb_lockall", lib.tdb_lockall(self._h()))

    def lockall_nonblock(self) -> bool:
        return self._try("tdb_lockall_nonblock", lib.tdb_lockall_nonblock(self._h()))

    def unlockall(self) -> None:
        self._check("tdb_unlockall", lib.tdb_unlockall(self._h()))

    def lockall_mark(self) -> None:
        """Mark the whole database as locked (a helper holds tdb_lockall for us). ctdbd also marks
        the transaction write lock: :meth:`transaction_write_lock_mark`."""
        self._check("tdb_lockall_mark", lib.tdb_lockall_mark(self._h()))

    def lockall_unmark(self) -> None:
        self._check("tdb_lockall_unmark", lib.tdb_lockall_unmark(self._h()))

    def transaction_write_lock_mark(self) -> None:
        self._check("tdb_transaction_write_lock_mark", lib.tdb_transaction_write_lock_mark(self._h()))

    def transaction_write_lock_unmark(self) -> None:
        self._check("tdb_transaction_write_lock_unmark",
                    lib.tdb_transaction_write_lock_unmark(self._h()))

    # --- transactions ----------------------------------------------------------------------------

    def transaction_start(self) -> None:
        """Blocking tdb_transaction_start (waits for another process's transaction). Fails with
        LOCK if this process holds chain locks on the file (libtdb's rule)."""
        ctypes.set_errno(0)
        self._check("tdb_transaction_start", lib.tdb_transaction_start(self._h()))

    def transaction_start_nonblock(self) -> bool:
        ctypes.set_errno(0)
        return self._try("tdb_transaction_start_nonblock",
                         lib.tdb_transaction_start_nonblock(self._h()))

    def transaction_prepare_commit(self) -> None:
        """Writes the recovery area and, without TDB_NOSYNC, fsyncs: the slow part."""
        self._check("tdb_transaction_prepare_commit", lib.tdb_transaction_prepare_commit(self._h()))

    def transaction_commit(self) -> None:
        self._check("tdb_transaction_commit", lib.tdb_transaction_commit(self._h()))

    def transaction_cancel(self) -> None:
        self._check("tdb_transaction_cancel", lib.tdb_transaction_cancel(self._h()))

    @property
    def transaction_active(self) -> bool:
        return bool(lib.tdb_transaction_active(self._h()))

    # --- traversal -------------------------------------------------------------------------------

    def traverse(self, fn: Callable[[bytes, bytes], object] | None = None) -> int:
        """tdb_traverse (write traverse: ``fn`` may store and delete, the current record
        included). ``fn(key, value)`` returning true stops. Returns the records visited."""
        return self._traverse("tdb_traverse", lib.tdb_traverse, fn)

    def traverse_read(self, fn: Callable[[bytes, bytes], object] | None = None) -> int:
        """tdb_traverse_read: a read-locked traverse; ``fn`` must not write."""
        return self._traverse("tdb_traverse_read", lib.tdb_traverse_read, fn)

    def _traverse(self, op: str, cfn: Callable, fn: Callable[[bytes, bytes], object] | None) -> int:
        call = _Call(fn if fn is not None else (lambda k, v: None))
        ctypes.set_errno(0)
        ret = cfn(self._h(), _traverser, id(call))
        if call.error is not None:
            raise call.error
        if ret < 0:
            raise self._fail(op)
        return call.count

    def keys(self) -> list[bytes]:
        out: list[bytes] = []
        self.traverse_read(lambda k, v: out.append(k))
        return out

    def items(self) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        self.traverse_read(lambda k, v: out.append((k, v)))
        return out

    def check(self) -> str | None:
        """tdb_check: None if the file's structure is sound, else what libtdb said (its log
        messages reach ``log``). Takes the all-record read lock: callers that must not wait
        take it without blocking first (``lockall_read_nonblock``), which tdb_check then uses."""
        ctypes.set_errno(0)
        if lib.tdb_check(self._h(), None, None) == 0:
            return None
        return str(self._fail("tdb_check"))

    def lockall_read_nonblock(self) -> bool:
        return self._try("tdb_lockall_read_nonblock", lib.tdb_lockall_read_nonblock(self._h()))

    def unlockall_read(self) -> None:
        self._check("tdb_unlockall_read", lib.tdb_unlockall_read(self._h()))

    # --- sequence number, maintenance ------------------------------------------------------------

    @property
    def seqnum(self) -> int:
        """tdb_get_seqnum (the header's u32; only maintained with TDB_SEQNUM)."""
        return lib.tdb_get_seqnum(self._h()) & 0xFFFFFFFF

    def enable_seqnum(self) -> None:
        """tdb_enable_seqnum: what ENABLE_SEQNUM does in ctdbd (adds TDB_SEQNUM to the flags)."""
        lib.tdb_enable_seqnum(self._h())

    def increment_seqnum_nonblock(self) -> None:
        """tdb_increment_seqnum_nonblock: what ctdbd does on UPDATE_SEQNUM from a peer."""
        lib.tdb_increment_seqnum_nonblock(self._h())

    def wipe_all(self) -> None:
        """tdb_wipe_all (recovery's WIPE_DATABASE). Takes the all-record lock: helper-held or
        marked first when other processes may use the file."""
        self._check("tdb_wipe_all", lib.tdb_wipe_all(self._h()))

    def repack(self) -> None:
        self._check("tdb_repack", lib.tdb_repack(self._h()))

    def freelist_size(self) -> int:
        ret = lib.tdb_freelist_size(self._h())
        if ret < 0:
            raise self._fail("tdb_freelist_size")
        return ret
