"""Work that may wait on disk or on other processes' locks, run in a forked child, as ctdbd does.

ctdbd applies a persistent update (``UPDATE_RECORD``) in a forked child that takes a TDB
transaction and commits it — commits fsync several times, tens of milliseconds on a real disk —
and sends each node's share of a traverse from a forked child too (``ctdb_traverse.c``). The
daemon's loop only waits for a pipe. pyctdbd does the same with ``os.fork()``:

- the child inherits the daemon's open ``TdbFile`` handles, so no second open is needed (libtdb
  refuses one per process anyway); fcntl locks are per process, so the child's transaction locks
  conflict properly with the daemon's own chain locks, and robust mutexes are per thread;
- the child runs only the given function and libtdb calls, writes its result to a pipe and leaves
  with ``os._exit`` (no atexit handlers, no stdio flush, no loop); it first resets the signal
  handlers and the asyncio wake-up fd it inherited, so a signal sent to it is not mistaken for one
  sent to the daemon;
- the daemon must hold no lock of that file while it forks (libtdb refuses a transaction with
  locks held and a traverse would misjudge them): :class:`~.database.Database` forks while it
  holds the database's turn;
- the child's exit is watched with a pidfd (no SIGCHLD handler, no child-watcher thread).

Measured on this project's VM (2 cores, ext4 on virtio; ``tests/unit/test_store_child.py -s``
prints them):

- the fork blocks the loop for 0.9 ms at 25 MB RSS (1.5 ms at 60 MB, 5.4 ms at 210 MB: page
  tables); a whole child round trip (fork, run, pickle, exit, reap) is ~3.5 ms;
- 100 fsyncing commits in children: ~7.5 ms each, a 10 ms timer late by 0.9 ms (median) and
  8 ms (max). This VM's disk acknowledges fdatasync in ~50 us, so in-loop commits look cheap
  here (0.7 ms each); with fsync slowed to 10 ms by an LD_PRELOAD shim (4 syncs per commit),
  committing in the loop stalled the timer by 40+ ms per commit, in a child by at most 11 ms;
  at 50 ms per fsync, 217 ms against 3 ms.

Threads were measured too (max lateness 4 ms at 10 ms fsync: no fork) and rejected: a TDB handle
is not thread-safe, so any stray use of the handle by the loop during a commit would corrupt the
transaction instead of waiting on a lock, and a commit stuck in the kernel or on another
process's transaction lock cannot be cancelled — a child can be killed (the half-written
transaction is undone by libtdb's recovery area) and the database given back.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import struct
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..spawn import realtime_policy
from .libtdb import libc
from .tdbfile import TdbFile

_PR_SET_PDEATHSIG = 1

_FRAME = struct.Struct("<cII")  # kind, key length, data length
_RESET_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                  signal.SIGCHLD)


class ChildError(Exception):
    """The child failed: its exception, re-raised in the daemon as text."""


def _child_setup() -> None:
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass
    for sig in _RESET_SIGNALS:
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (ValueError, OSError):
            pass
    # Daemon dies -> child dies (it would otherwise hold a transaction open on nobody's behalf;
    # libtdb's recovery area undoes a half-written commit at the next lock).
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _take_policy(policy: tuple[int, os.sched_param] | None) -> None:
    if policy is not None:
        try:
            os.sched_setscheduler(0, *policy)
        except OSError:
            pass


class _Child:
    """A forked child, its result pipe, and its exit.

    A child starts SCHED_OTHER (the daemon's SCHED_RESET_ON_FORK) but takes the daemon's
    real-time policy to exit, and for all of its work when ``realtime`` (transactions): while
    it writes back the file's pages (fsync) and while it unmaps them at exit, it holds the
    lock of the file's mappings that the daemon's next fork must take for writing. Kept off
    the CPU by real-time daemons, a SCHED_OTHER child held it for tens of milliseconds: the
    daemon's loop slept in fork (dup_mmap) for 22-69 ms at recovery commits, seen with the
    tasks' kernel stacks in a 5-node fast-profile cluster -- a false death at a 60 ms dead
    timeout."""

    def __init__(self, body: Callable[[int], None], realtime: bool = False) -> None:
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        policy = realtime_policy()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                os.close(rfd)
                _child_setup()
                if realtime:
                    _take_policy(policy)
                body(wfd)
            except BaseException:
                code = 1
            finally:
                _take_policy(policy)
                os._exit(code)
        os.close(wfd)
        self.pid = pid
        self.rfd = rfd
        os.set_blocking(rfd, False)
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int] = loop.create_future()
        self._pidfd: int | None = os.pidfd_open(pid)
        loop.add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        try:
            _, status = os.waitpid(self.pid, os.WNOHANG)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped by someone else's waitpid(-1)
            code = -1
        if not self.exited.done():
            self.exited.set_result(code)

    def kill(self) -> None:
        if not self.exited.done():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self.rfd >= 0:
            try:
                asyncio.get_running_loop().remove_reader(self.rfd)
            except RuntimeError:
                pass
            os.close(self.rfd)
            self.rfd = -1

    async def read_all(self) -> bytes:
        """Everything the child writes, until it closes the pipe (exits)."""
        loop = asyncio.get_running_loop()
        chunks: list[bytes] = []
        done: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            while True:
                try:
                    data = os.read(self.rfd, 65536)
                except BlockingIOError:
                    return
                if not data:
                    if not done.done():
                        done.set_result(None)
                    return
                chunks.append(data)

        loop.add_reader(self.rfd, readable)
        try:
            await done
        finally:
            loop.remove_reader(self.rfd)
        return b"".join(chunks)


def start_call(fn: Callable[[], Any], realtime: bool = False) -> _Child:
    """Fork now; the child runs ``fn()`` and reports its (picklable) result. Await it with
    :func:`call_result`. ``realtime``: the child runs ``fn`` at the daemon's real-time policy
    (for transactions; see :class:`_Child`)."""
    def body(wfd: int) -> None:
        try:
            payload = pickle.dumps((True, fn()))
        except BaseException as exc:  # reported to the parent
            payload = pickle.dumps((False, f"{type(exc).__name__}: {exc}"))
        _write_all(wfd, payload)
    return _Child(body, realtime)


async def call_result(child: _Child) -> Any:
    """The result of a :func:`start_call` child, or ChildError. Cancelling kills the child."""
    try:
        data = await child.read_all()
        await child.exited
    except BaseException:
        child.kill()
        raise
    finally:
        child.close()
    if not data:
        raise ChildError(f"child {child.pid} exited (status {child.exited.result()}) "
                         "without a result")
    ok, value = pickle.loads(data)
    if not ok:
        raise ChildError(value)
    return value


async def run_in_child(fn: Callable[[], Any], realtime: bool = False) -> Any:
    """Run ``fn()`` in a forked child; return its (picklable) result or raise ChildError."""
    return await call_result(start_call(fn, realtime))


def transaction_call(tdb: TdbFile, fn: Callable[[TdbFile], Any]) -> Callable[[], Any]:
    """The child's work for a transaction: start, ``fn(tdb)``, commit (cancel if ``fn`` raises)."""
    def work() -> Any:
        tdb.transaction_start()
        try:
            result = fn(tdb)
        except BaseException:
            tdb.transaction_cancel()
            raise
        tdb.transaction_commit()
        return result
    return work


async def transaction_in_child(tdb: TdbFile, fn: Callable[[TdbFile], Any]) -> Any:
    """``tdb_transaction_start``, ``fn(tdb)``, ``tdb_transaction_commit`` in a forked child (the
    commit's fsyncs happen there). An exception in ``fn`` cancels the transaction and is raised
    here as ChildError; nothing is written then."""
    return await run_in_child(transaction_call(tdb, fn), realtime=True)


def start_traverse(tdb: TdbFile, read_only: bool = True, batch: int = 65536) -> _Child:
    """Fork now; the child traverses ``tdb`` and streams the records. Read them with
    :func:`traverse_records`."""
    def body(wfd: int) -> None:
        buf = bytearray()

        def emit(key: bytes, value: bytes) -> None:
            buf.extend(_FRAME.pack(b"R", len(key), len(value)))
            buf.extend(key)
            buf.extend(value)
            if len(buf) >= batch:
                _write_all(wfd, bytes(buf))
                buf.clear()

        try:
            if read_only:
                tdb.traverse_read(emit)
            else:
                tdb.traverse(emit)
        except BaseException as exc:
            message = f"{type(exc).__name__}: {exc}".encode()
            buf.extend(_FRAME.pack(b"X", 0, len(message)) + message)
        else:
            buf.extend(_FRAME.pack(b"E", 0, 0))
        _write_all(wfd, bytes(buf))
    return _Child(body)


async def traverse_records(child: _Child) -> AsyncIterator[tuple[bytes, bytes]]:
    """The (key, value) pairs a :func:`start_traverse` child sends; ChildError if it fails or
    dies before its end marker. Leaving the loop early kills the child."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2 ** 26)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                os.fdopen(child.rfd, "rb", buffering=0))
    child.rfd = -1  # owned by the transport now
    finished = False
    try:
        while True:
            try:
                head = await reader.readexactly(_FRAME.size)
            except asyncio.IncompleteReadError:
                raise ChildError(f"traverse child {child.pid} exited before the end marker") from None
            kind, klen, dlen = _FRAME.unpack(head)
            body = await reader.readexactly(klen + dlen) if klen + dlen else b""
            if kind == b"R":
                yield body[:klen], body[klen:]
            elif kind == b"E":
                finished = True
                return
            else:
                raise ChildError(body.decode("utf-8", "replace"))
    finally:
        transport.close()
        if not finished:
            child.kill()
        await child.exited


async def traverse_in_child(tdb: TdbFile, *, read_only: bool = True
                            ) -> AsyncIterator[tuple[bytes, bytes]]:
    """Every (key, value) of the file, read by ``tdb_traverse_read`` (or ``tdb_traverse``) in a
    forked child and streamed over a pipe."""
    async for item in traverse_records(start_traverse(tdb, read_only)):
        yield item
