"""store/locks.py: chain and database locks that never block the event loop.

A second process (a small script on the same libtdb binding) holds a chain lock the way smbd
does; the daemon side must keep its loop running, get the lock through the lock helper (Debian's
stock ``ctdb_lock_helper`` and pyctdbd's own, which speak one protocol) once the holder lets go,
and survive a holder that is SIGKILLed with the lock held (robust mutexes; fcntl for persistent
files). A libtdb call that blocked by mistake would hang in C, so these tests use pytest-timeout's
thread method, which can end such a run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from ctdblab.daemon.protocol import LtdbHeader
from ctdblab.daemon.store import DbDirs, DbKind, LockError, Store, lock_helper_argv
from ctdblab.daemon.store import libtdb
from ctdblab.daemon.store.locks import OWN_LOCK_HELPER, STOCK_LOCK_HELPER, lock_bucket

pytestmark = pytest.mark.timeout(60, method="thread")

LIBDIR = os.path.dirname(libtdb.__file__)

# Holds (blocking) the chain lock of KEY, or the whole database if KEY is "-", in the file
# PATH opened with FLAGS; prints "held"; releases on a line on stdin; prints "released".
HOLDER = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
import libtdb
path, flags, key = sys.argv[2], int(sys.argv[3], 0), sys.argv[4]
ctx = libtdb.lib.tdb_open_ex(path.encode(), 0, flags, os.O_RDWR, 0o600, None, None)
assert ctx, "open failed"
k = libtdb.key_data(key.encode())
ret = libtdb.lib.tdb_lockall(ctx) if key == "-" else libtdb.lib.tdb_chainlock(ctx, k)
assert ret == 0
print("held", flush=True)
sys.stdin.readline()
libtdb.lib.tdb_unlockall(ctx) if key == "-" else libtdb.lib.tdb_chainunlock(ctx, k)
print("released", flush=True)
"""

# Tries the chain lock of KEY without blocking and prints "free" or "busy".
PROBE = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
import libtdb
ctx = libtdb.lib.tdb_open_ex(sys.argv[2].encode(), 0, int(sys.argv[3], 0), os.O_RDWR, 0o600, None, None)
k = libtdb.key_data(sys.argv[4].encode())
ok = libtdb.lib.tdb_chainlock_nonblock(ctx, k) == 0
print("free" if ok else "busy")
"""

HELPERS = {
    "stock": [STOCK_LOCK_HELPER],
    "own": [sys.executable, "-S", "-E", OWN_LOCK_HELPER],
}


def helper_param():
    return pytest.mark.parametrize("helper", [
        pytest.param("stock", marks=pytest.mark.skipif(not os.access(STOCK_LOCK_HELPER, os.X_OK),
                                                        reason="Debian's ctdb not installed")),
        "own"])


class Holder:
    def __init__(self, db, key: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, LIBDIR, db.path,
                                      hex(db.open_flags), key],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()


def probe(db, key: str) -> str:
    return subprocess.run([sys.executable, "-c", PROBE, LIBDIR, db.path, hex(db.open_flags), key],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def make_store(tmp_path):
    stores = []

    def make(helper: str = "own", **kwargs):
        for sub in ("v", "p", "s"):
            (tmp_path / sub).mkdir(exist_ok=True)
        store = Store(DbDirs(str(tmp_path / "v"), str(tmp_path / "p"), str(tmp_path / "s")), 0,
                      hash_size=1001, helper_argv=HELPERS[helper], **kwargs)
        stores.append(store)
        return store
    yield make
    for store in stores:
        store.close()


class Ticker:
    """A 10 ms periodic task: proves the loop keeps running, and measures its lateness."""

    def __init__(self, period: float = 0.01) -> None:
        self.period = period
        self.ticks = 0
        self.max_late = 0.0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self.period
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            self.max_late = max(self.max_late, loop.time() - due)
            self.ticks += 1
            due += self.period

    def stop(self) -> None:
        self.task.cancel()


def test_uncontended_lock_is_taken_directly(make_store):
    db = make_store().attach("foo.tdb", DbKind.VOLATILE)

    async def main():
        lock = db.try_lock(b"k")
        assert lock is not None and not lock.via_helper
        db.tdb.store_ltdb(b"k", LtdbHeader(1, 0), b"v")
        lock.release()
        lock.release()  # harmless
        async with await db.lock(b"k") as again:
            assert not again.via_helper
        assert await db.fetch_ltdb(b"k") == (LtdbHeader(1, 0), b"v")
        assert db.locker.stats.num_immediate == 3 and db.locker.stats.num_calls == 0

    asyncio.run(main())


@helper_param()
@pytest.mark.parametrize("kind", [DbKind.VOLATILE, DbKind.PERSISTENT])
def test_contended_lock_waits_in_the_helper_not_in_the_loop(make_store, helper, kind):
    db = make_store(helper).attach("foo.tdb", kind)
    db.tdb.store_ltdb(b"k", LtdbHeader(1, 0), b"old")
    holder = Holder(db, "k")

    async def main():
        assert db.try_lock(b"k") is None  # EAGAIN: another process holds it
        ticker = Ticker()
        task = asyncio.create_task(db.lock(b"k"))
        await asyncio.sleep(0.3)
        assert not task.done()
        assert ticker.ticks >= 15  # the loop ran the whole time
        released = time.monotonic()
        holder.release()
        lock = await asyncio.wait_for(task, 10)
        grant = time.monotonic() - released
        ticker.stop()
        assert lock.via_helper and lock.waited >= 0.3
        # The helper holds the real lock; our handle is marked, so our writes nest instead of
        # waiting, and other processes still see the chain locked.
        db.tdb.store_ltdb(b"k", LtdbHeader(2, 0), b"new")
        assert await asyncio.to_thread(probe, db, "k") == "busy"
        lock.release()
        await asyncio.wait_for(asyncio.shield(lock.helper.exited), 5)
        assert await asyncio.to_thread(probe, db, "k") == "free"
        assert db.tdb.fetch_ltdb(b"k") == (LtdbHeader(2, 0), b"new")
        print(f"\n[{helper} helper, {kind.value}] lock granted {grant * 1000:.1f} ms after the "
              f"holder's release; loop max lateness while waiting {ticker.max_late * 1000:.1f} ms")
        assert db.locker.stats.num_calls == 1 and db.locker.stats.num_failed == 0

    try:
        asyncio.run(main())
    finally:
        holder.close()


@helper_param()
@pytest.mark.parametrize("kind", [DbKind.VOLATILE, DbKind.PERSISTENT])
def test_holder_killed_with_the_lock_held(make_store, helper, kind):
    # smbd SIGKILLed inside tdb_chainlock: the robust mutex (fcntl for persistent files) is
    # recovered and the record stays usable.
    db = make_store(helper).attach("foo.tdb", kind)
    db.tdb.store_ltdb(b"k", LtdbHeader(5, 0), b"v")
    holder = Holder(db, "k")

    async def main():
        task = asyncio.create_task(db.lock(b"k"))
        await asyncio.sleep(0.2)
        assert not task.done()
        holder.kill()
        lock = await asyncio.wait_for(task, 10)
        assert db.tdb.fetch_ltdb(b"k") == (LtdbHeader(5, 0), b"v")
        db.tdb.store_ltdb(b"k", LtdbHeader(6, 0), b"w")
        lock.release()
        await asyncio.wait_for(asyncio.shield(lock.helper.exited), 5)
        again = db.try_lock(b"k")
        assert again is not None
        assert db.tdb.fetch_ltdb(b"k") == (LtdbHeader(6, 0), b"w")
        again.release()

    try:
        asyncio.run(main())
    finally:
        holder.close()


def test_killed_holder_then_direct_try(make_store):
    # Without any helper: the next trylock gets EOWNERDEAD inside libtdb, which repairs the mutex.
    db = make_store().attach("foo.tdb", DbKind.VOLATILE)
    holder = Holder(db, "k")
    assert db.try_lock(b"k") is None
    holder.kill()
    lock = db.try_lock(b"k")
    assert lock is not None
    lock.release()


def test_cancelling_a_waiting_lock_kills_its_helper(make_store):
    db = make_store().attach("foo.tdb", DbKind.VOLATILE)
    holder = Holder(db, "k")

    async def main():
        task = asyncio.create_task(db.lock(b"k"))
        while db.locker.stats.num_current == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the helper is blocked in tdb_chainlock
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert db.locker.stats.num_current == 0
        holder.release()
        await asyncio.sleep(0.2)
        # had the helper survived, it would now hold the lock
        assert await asyncio.to_thread(probe, db, "k") == "free"
        lock = db.try_lock(b"k")
        assert lock is not None
        lock.release()

    try:
        asyncio.run(main())
    finally:
        holder.close()


def test_tasks_of_the_daemon_take_turns_on_a_database(make_store):
    # libtdb nests locks per process, so the store itself keeps two tasks apart.
    db = make_store().attach("foo.tdb", DbKind.VOLATILE)

    async def main():
        order = []
        first = await db.lock(b"a")
        assert db.try_lock(b"b") is None  # held by this daemon, not by another process
        second = asyncio.create_task(db.lock(b"b"))
        await asyncio.sleep(0.05)
        assert not second.done()
        order.append("release a")
        first.release()
        lock_b = await asyncio.wait_for(second, 5)
        order.append("got b")
        assert not lock_b.via_helper
        lock_b.release()
        assert order == ["release a", "got b"]

    asyncio.run(main())


@helper_param()
def test_database_lock(make_store, helper):
    db = make_store(helper).attach("foo.tdb", DbKind.VOLATILE)
    holder = Holder(db, "k")

    async def main():
        task = asyncio.create_task(db.lock_all())
        await asyncio.sleep(0.2)
        assert not task.done()  # one chain is held: the all-record lock waits
        holder.release()
        lock = await asyncio.wait_for(task, 10)
        assert lock.key is None and lock.via_helper
        assert await asyncio.to_thread(probe, db, "other") == "busy"
        db.tdb.store(b"x", b"written under the marked lock")
        assert db.try_lock(b"x") is None  # the daemon's turn is held by the database lock
        lock.release()
        await asyncio.wait_for(asyncio.shield(lock.helper.exited), 5)
        assert await asyncio.to_thread(probe, db, "other") == "free"
        assert db.tdb.fetch(b"x") == b"written under the marked lock"

    try:
        asyncio.run(main())
    finally:
        holder.close()


def test_helper_that_fails(make_store, tmp_path):
    store = make_store()
    store.helper_argv = ["/bin/false"]
    db = store.attach("foo.tdb", DbKind.VOLATILE)

    async def main():
        with pytest.raises(LockError):
            await db.lock_all()  # exits without its status byte
        assert db.locker.stats.num_failed == 1
        lock = db.try_lock(b"k")
        assert lock is not None  # nothing left held
        lock.release()

    asyncio.run(main())


def test_helper_that_cannot_run(make_store):
    store = make_store()
    store.helper_argv = ["/nonexistent/ctdb_lock_helper"]
    db = store.attach("foo.tdb", DbKind.VOLATILE)

    async def main():
        with pytest.raises(LockError, match="cannot run lock helper"):
            await db.lock_all()
        assert db.locker.stats.num_failed == 1 and db.locker.stats.num_current == 0

    asyncio.run(main())


def test_helper_cannot_open_the_database(make_store):
    db = make_store().attach("foo.tdb", DbKind.VOLATILE)
    db.locker.helper_args = lambda key: ["DB", "/nonexistent/x.tdb", "0x1c41"]

    async def main():
        with pytest.raises(LockError):
            await db.lock_all()  # the helper writes 1

    asyncio.run(main())


def test_slow_lock_is_logged_and_a_lost_helper_noticed(make_store):
    logged = []
    db = make_store(log=logged.append).attach("foo.tdb", DbKind.VOLATILE)
    db.locker.warn_after = 0.1
    holder = Holder(db, "k")

    async def main():
        task = asyncio.create_task(db.lock(b"k"))
        await asyncio.sleep(0.35)
        holder.release()
        lock = await asyncio.wait_for(task, 10)
        warnings = [m for m in logged if m.startswith("Unable to get RECORD lock")]
        assert len(warnings) >= 2
        assert warnings[0] == "Unable to get RECORD lock on database foo.tdb for 0 seconds (key 6B)"
        count = len(warnings)
        await asyncio.sleep(0.25)
        assert len([m for m in logged if m.startswith("Unable")]) == count  # stopped when granted
        os.kill(lock.helper.proc.pid, signal.SIGKILL)
        await asyncio.wait_for(asyncio.shield(lock.helper.exited), 5)
        assert lock.lost
        assert any("exited" in m and "while its lock was in use" in m for m in logged)
        lock.release()

    try:
        asyncio.run(main())
    finally:
        holder.close()


def test_helper_arguments_are_ctdbds(make_store):
    db = make_store().attach("foo.tdb", DbKind.VOLATILE)
    assert db.locker.helper_args(b"k\x01\xff") == ["RECORD", db.path, "0x1c41", "6B01FF"]
    assert db.locker.helper_args(b"") == ["RECORD", db.path, "0x1c41", "NULL"]
    assert db.locker.helper_args(None) == ["DB", db.path, "0x1c41"]
    db.enable_seqnum()
    assert db.locker.helper_args(None) == ["DB", db.path, "0x1cc1"]


def test_which_helper():
    assert lock_helper_argv({"CTDB_LOCK_HELPER": "/x/helper"}) == ["/x/helper"]
    expected = ([STOCK_LOCK_HELPER] if os.access(STOCK_LOCK_HELPER, os.X_OK)
                else [sys.executable, "-S", "-E", OWN_LOCK_HELPER])
    assert lock_helper_argv({}) == expected


def test_latency_buckets_are_ctdbds():
    assert [lock_bucket(t) for t in (0.0005, 0.005, 0.05, 0.5, 1.5, 3, 7, 15, 31, 63, 65)] == \
        list(range(11))


@helper_param()
def test_helper_path_cost(make_store, helper):
    # The database lock always goes through the helper: spawn, lock, answer, mark. Figures only;
    # the bound is a sanity check, not a benchmark.
    db = make_store(helper).attach("foo.tdb", DbKind.VOLATILE)

    async def main():
        ticker = Ticker()
        times = []
        for _ in range(20):
            start = time.monotonic()
            lock = await db.lock_all()
            times.append(time.monotonic() - start)
            lock.release()
            await lock.helper.exited
        ticker.stop()
        times.sort()
        print(f"\n[{helper} helper] DB lock via helper: median {times[10] * 1000:.1f} ms, "
              f"max {times[-1] * 1000:.1f} ms; loop max lateness {ticker.max_late * 1000:.1f} ms")
        assert times[10] < 2.0

    asyncio.run(main())


def test_closing_releases_held_locks(make_store, tmp_path):
    # tdb_close with a chain mutex still locked corrupted this thread's robust-mutex list (a
    # later mutex operation on another file segfaulted): closing must release first.
    store = make_store()
    db = store.attach("foo.tdb", DbKind.VOLATILE)
    lock = db.try_lock(b"k")
    assert lock is not None
    store.close()
    assert lock.released and db.tdb.closed
    lock.release()  # harmless after close
    for round_ in range(3):
        other = make_store().attach(f"other{round_}.tdb", DbKind.VOLATILE)
        other.enable_seqnum()
        for i in range(100):
            other.tdb.store(b"%d" % i, b"v")
        assert other.seqnum == 100
