"""Chain locks and database locks that never block the event loop.

Design (ctdbd's, ``ctdb/server/ctdb_lock.c`` and ``ctdb_lock_helper.c`` in Samba 4.17):

1. Try ``tdb_chainlock_nonblock`` in the daemon. Uncontended, that is the whole cost (a robust
   mutex trylock on volatile files, an fcntl F_SETLK on persistent ones).
2. Contended (EAGAIN): start the lock helper, which opens the file itself, blocks in
   ``tdb_chainlock`` (or ``tdb_lockall``), writes one byte (0 locked, 1 failed) on a pipe and then
   holds the lock until SIGTERM or until the daemon dies. The stock helper is Debian's
   ``/usr/libexec/ctdb/ctdb_lock_helper`` (``$CTDB_LOCK_HELPER`` overrides it, as for ctdbd);
   argv ``<daemon pid> <fd> RECORD <path> <tdb flags 0x%x> <hex key | NULL>`` or
   ``... DB <path> <flags>``; when it is not installed, :mod:`.lock_helper` speaks the same protocol.
3. Once the byte says "locked", the daemon *marks* the chain (``tdb_chainlock_mark``; for a
   database ``tdb_transaction_write_lock_mark`` + ``tdb_lockall_mark``), so its own libtdb calls on
   that chain nest instead of locking. Release: unmark, then SIGTERM the helper, which unlocks.
   (For a database, libtdb 1.4.8 refuses ``tdb_lockall_mark`` after the transaction mark outside
   a transaction, so the all-record mark is taken first.)

Why a helper process and not a thread or a polling loop: robust mutexes belong to the *thread*
that locked them and a TDB handle is not thread-safe, so a thread cannot lock on the daemon's
behalf; polling ``trylock`` starves against smbd, which waits in the kernel (futex / F_SETLKW) and
always wins. The helper waits in the kernel too, so it queues fairly, and it is as safe as the
lock itself: if the helper dies the mutex is robust (the next locker gets EOWNERDEAD and libtdb
repairs it) or the fcntl lock is dropped by the kernel; if the daemon dies the helper notices and
unlocks. A mark is only as good as its helper: a helper that exits while a lock is marked is
logged (``lost``), and such a lock must not be trusted for writes.

In-process exclusion: libtdb counts locks per chain per *process*, so two daemon tasks locking
keys of the same chain would both "succeed" (nesting), and a marked lock released by one would drop
the helper's real lock under the other. So each database has one *turn*: a task holds it while it
holds any chain or database lock of that file, waiting for the helper happens without it. Hold
record locks for short synchronous sections (fetch, decide, store, release), as ctdbd does.

Measured here (``tests/unit/test_store_locks.py -s``): with Debian's helper a contended record
lock is granted under 1 ms after the holder lets go (volatile, robust mutex; ~3.5 ms for fcntl
files); a database lock through a freshly spawned helper takes ~3 ms (pyctdbd's Python helper
~28 ms: interpreter start-up), and spawning blocks the loop for about a millisecond.

Statistics follow ctdbd's ``locks`` counters (num_calls, num_current, num_pending, num_failed,
latency buckets <1 ms, <10 ms, <100 ms, <1 s, <2, 4, 8, 16, 32, 64 s, more).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field

from ..spawn import Child, start_child, watch_exit
from .tdbfile import TdbFile

STOCK_LOCK_HELPER = "/usr/libexec/ctdb/ctdb_lock_helper"
OWN_LOCK_HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lock_helper.py")
#: ctdbd warns about a lock it has waited this long for (and every such period after).
LOCK_WARN_SECONDS = 10.0
#: ctdbd's LockProcessesPerDB tunable default: helpers running at once for one database.
LOCK_PROCESSES_PER_DB = 200
_BUCKET_LIMITS = (0.001, 0.01, 0.1, 1, 2, 4, 8, 16, 32, 64)


def lock_helper_argv(env: Mapping[str, str] | None = None) -> list[str]:
    """The command that starts a lock helper (its protocol arguments follow): $CTDB_LOCK_HELPER,
    else Debian's ctdb_lock_helper if installed, else pyctdbd's own."""
    env = os.environ if env is None else env
    override = env.get("CTDB_LOCK_HELPER")
    if override:
        return [override]
    if os.access(STOCK_LOCK_HELPER, os.X_OK):
        return [STOCK_LOCK_HELPER]
    return [sys.executable, "-S", "-E", OWN_LOCK_HELPER]


def lock_bucket(seconds: float) -> int:
    """ctdbd's lock_bucket_id: index of the latency bucket."""
    for index, limit in enumerate(_BUCKET_LIMITS):
        if seconds < limit:
            return index
    return len(_BUCKET_LIMITS)


class LockError(Exception):
    """A lock could not be taken (the helper failed, or the database is closed)."""


@dataclass
class LockStats:
    num_calls: int = 0  # locks granted through a helper or failed
    num_current: int = 0  # helpers running
    num_pending: int = 0  # waiting for a helper slot
    num_failed: int = 0
    num_immediate: int = 0  # taken without waiting (not counted by ctdbd)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(_BUCKET_LIMITS) + 1))
    latency_min: float | None = None
    latency_max: float = 0.0
    latency_total: float = 0.0

    def record(self, seconds: float, ok: bool) -> None:
        self.num_calls += 1
        if not ok:
            self.num_failed += 1
            return
        self.buckets[lock_bucket(seconds)] += 1
        self.latency_min = seconds if self.latency_min is None else min(self.latency_min, seconds)
        self.latency_max = max(self.latency_max, seconds)
        self.latency_total += seconds


class _Turn:
    """A FIFO mutex with a synchronous try, handed directly to the next waiter."""

    def __init__(self) -> None:
        self.busy = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        if self.busy or self._waiters:
            return False
        self.busy = True
        return True

    async def take(self) -> None:
        if self.try_take():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.give()  # it was handed to us as we were cancelled: pass it on
            else:
                self._waiters.remove(fut)
            raise

    def give(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # stays busy: ownership moves to that waiter
                return
        self.busy = False


class _Helper:
    """One running lock helper: the process, the status pipe and exit notification."""

    def __init__(self, proc: Child, rfd: int) -> None:
        self.proc = proc
        self.rfd = rfd
        self.exited = watch_exit(proc)

    @classmethod
    async def start(cls, command: list[str], args: list[str], env: Mapping[str, str]) -> _Helper:
        """Run ``command <daemon pid> 3 args...`` with the status pipe as its descriptor 3
        (started off the loop: daemon/spawn)."""
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        try:
            proc = await start_child([*command, str(os.getpid()), "3", *args], keep=[wfd],
                                     env=dict(env))
        except BaseException:
            os.close(rfd)
            raise
        finally:
            os.close(wfd)
        return cls(proc, rfd)

    async def answer(self) -> bool:
        """Wait for the status byte: True locked; False failed (byte 1, or exit without one)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(self.rfd, 1)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not fut.done():
                fut.set_result(data)

        os.set_blocking(self.rfd, False)
        loop.add_reader(self.rfd, readable)
        try:
            data = await fut
        finally:
            loop.remove_reader(self.rfd)
        return data == b"\0"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the helper (SIGTERM unlocks and exits; SIGKILL abandons a wait) and forget it;
        its exit is reaped through the pidfd."""
        if self.rfd >= 0:
            os.close(self.rfd)
            self.rfd = -1
        if self.proc.returncode is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass


class HeldLock:
    """A chain or database lock held by the daemon. ``release()`` (or leaving an ``async with``
    / ``with`` block) gives it back; releasing twice is harmless."""

    def __init__(self, locker: ChainLocker, key: bytes | None, helper: _Helper | None,
                 waited: float) -> None:
        self.locker = locker
        self.key = key  # None: the whole database
        self.helper = helper
        self.waited = waited
        self.released = False
        self.lost = False  # the helper exited while the lock was marked
        if helper is not None:
            helper.exited.add_done_callback(self._helper_gone)
        locker._held.add(self)

    @property
    def via_helper(self) -> bool:
        return self.helper is not None

    @property
    def tdb(self) -> TdbFile:
        return self.locker.tdb

    def _helper_gone(self, fut: asyncio.Future[int]) -> None:
        if not self.released:
            self.lost = True
            self.locker.log(f"lock helper for {self.locker.name} exited (status {fut.result()}) "
                            "while its lock was in use")

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.locker._release(self)

    async def __aenter__(self) -> HeldLock:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        what = "db" if self.key is None else f"key {self.key.hex()}"
        how = "helper" if self.helper else "direct"
        return f"HeldLock({self.locker.name}, {what}, {how}, released={self.released})"


class ChainLocker:
    """Non-blocking chain and database locks on one open TdbFile (one per database)."""

    def __init__(self, tdb: TdbFile, name: str | None = None, *,
                 helper_argv: list[str] | None = None, env: Mapping[str, str] | None = None,
                 log: Callable[[str], None] | None = None,
                 max_helpers: int = LOCK_PROCESSES_PER_DB,
                 warn_after: float = LOCK_WARN_SECONDS) -> None:
        self.tdb = tdb
        self.name = name or os.path.basename(tdb.path)
        self.helper_argv = list(helper_argv) if helper_argv is not None else lock_helper_argv(env)
        base_env = dict(os.environ if env is None else env)
        base_env.setdefault("CTDB_NOSETSCHED", "1")  # children start unprivileged (RESET_ON_FORK)
        self.env = base_env
        self.log = log or (lambda message: None)
        self.warn_after = warn_after
        self.stats = LockStats()
        self._turn = _Turn()
        self._slots = asyncio.Semaphore(max_helpers)
        self._held: set[HeldLock] = set()

    @property
    def busy(self) -> bool:
        """True while some task holds a lock of this database."""
        return self._turn.busy

    @contextlib.asynccontextmanager
    async def quiet(self) -> AsyncIterator[None]:
        """Hold the database's turn without locking anything: no task of this daemon holds a
        lock of the file meanwhile (fork a child that uses the handle inside this)."""
        await self._turn.take()
        try:
            yield
        finally:
            self._turn.give()

    @contextlib.contextmanager
    def turn_now(self) -> Iterator[bool]:
        """The database's turn at once if no task of this daemon holds a lock of it (True inside),
        for code that takes and releases chain locks itself within one synchronous call (the
        native vacuum triage); it adds the locks it took to ``stats.num_immediate``."""
        taken = self._turn.try_take()
        try:
            yield taken
        finally:
            if taken:
                self._turn.give()

    # --- records ---------------------------------------------------------------------------

    def try_record(self, key: bytes) -> HeldLock | None:
        """The lock now, or None (held by another process, or by another task of the daemon)."""
        if not self._turn.try_take():
            return None
        try:
            if self.tdb.chainlock_nonblock(key):
                self.stats.num_immediate += 1
                return HeldLock(self, key, None, 0.0)
        except BaseException:
            self._turn.give()
            raise
        self._turn.give()
        return None

    async def record(self, key: bytes) -> HeldLock:
        """The chain lock of ``key``: at once if free, else through the lock helper."""
        start = time.monotonic()
        await self._turn.take()
        try:
            if self.tdb.chainlock_nonblock(key):
                self.stats.num_immediate += 1
                return HeldLock(self, key, None, time.monotonic() - start)
        except BaseException:
            self._turn.give()
            raise
        self._turn.give()
        return await self._via_helper(key, start)

    # --- whole database --------------------------------------------------------------------

    async def database(self) -> HeldLock:
        """The all-record lock (what freezing a database takes), always through the helper like
        ctdbd, then marked: tdb_lockall_mark + tdb_transaction_write_lock_mark."""
        return await self._via_helper(None, time.monotonic())

    # --- helper path -------------------------------------------------------------------------

    def helper_args(self, key: bytes | None) -> list[str]:
        """What follows ``<pid> <fd>`` on the helper's command line, as ctdbd builds it
        (lock_helper_args): the flags are tdb_get_flags in ``0x%x``, the key upper-case hex."""
        flags = f"{self.tdb.flags:#x}"
        if key is None:
            return ["DB", self.tdb.path, flags]
        return ["RECORD", self.tdb.path, flags, key.hex().upper() if key else "NULL"]

    async def _via_helper(self, key: bytes | None, start: float) -> HeldLock:
        self.stats.num_pending += 1
        try:
            await self._slots.acquire()
        finally:
            self.stats.num_pending -= 1
        self.stats.num_current += 1
        helper: _Helper | None = None
        locked = False
        warn = _Warner(self, key, start)
        try:
            try:
                helper = await _Helper.start(self.helper_argv, self.helper_args(key), self.env)
            except OSError as exc:
                self.stats.record(time.monotonic() - start, False)
                raise LockError(f"cannot run lock helper {self.helper_argv[0]}: "
                                f"{exc.strerror or exc}") from None
            warn.arm()
            locked = await helper.answer()
            if not locked:
                self.stats.record(time.monotonic() - start, False)
                raise LockError(f"lock helper could not lock {self._what(key)}")
            await self._turn.take()
        except BaseException:
            if helper is not None:
                # Still waiting: SIGKILL abandons the wait (a waiter owns nothing). Locked but
                # never used: SIGTERM lets it unlock cleanly.
                helper.stop(signal.SIGTERM if locked else signal.SIGKILL)
            raise
        finally:
            warn.cancel()
            self.stats.num_current -= 1
            self._slots.release()
        try:
            if key is None:
                # ctdbd marks the transaction lock first; with libtdb 1.4.8 lockall_mark then
                # fails ("can't combine global and chain locks") unless a transaction is open, so
                # the all-record mark goes first here. Same marks, same unmarks.
                self.tdb.lockall_mark()
                try:
                    self.tdb.transaction_write_lock_mark()
                except BaseException:
                    self.tdb.lockall_unmark()
                    raise
            else:
                self.tdb.chainlock_mark(key)
        except BaseException:
            self._turn.give()
            helper.stop()
            raise
        waited = time.monotonic() - start
        self.stats.record(waited, True)
        return HeldLock(self, key, helper, waited)

    def _what(self, key: bytes | None) -> str:
        return f"database {self.name}" if key is None else f"key {key.hex()} of {self.name}"

    def release_all(self) -> int:
        """Release every lock still held (before the file is closed: libtdb's tdb_close does not
        unlock chains, and a robust mutex left locked in an unmapped file leaves a dangling
        entry in the thread's robust-mutex list — the next mutex operation crashed in tests)."""
        held = list(self._held)
        for lock in held:
            lock.release()
        return len(held)

    def _release(self, lock: HeldLock) -> None:
        self._held.discard(lock)
        try:
            if lock.helper is None:
                assert lock.key is not None
                self.tdb.chainunlock(lock.key)
            elif lock.key is None:
                self.tdb.transaction_write_lock_unmark()
                self.tdb.lockall_unmark()
            else:
                self.tdb.chainlock_unmark(lock.key)
        finally:
            self._turn.give()
            if lock.helper is not None:
                lock.helper.stop(signal.SIGTERM)



class _Warner:
    """Logs like ctdbd while a helper has not got its lock, every ``warn_after`` seconds."""

    def __init__(self, locker: ChainLocker, key: bytes | None, start: float) -> None:
        self.locker, self.key, self.start = locker, key, start
        self.handle: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.handle = asyncio.get_running_loop().call_later(self.locker.warn_after, self.fire)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def fire(self) -> None:
        elapsed = time.monotonic() - self.start
        name = self.locker.name
        if self.key is None:
            self.locker.log(f"Unable to get DB lock on database {name} for {elapsed:.0f} seconds")
        else:
            self.locker.log(f"Unable to get RECORD lock on database {name} for {elapsed:.0f} "
                            f"seconds (key {self.key.hex().upper()})")
        self.arm()
