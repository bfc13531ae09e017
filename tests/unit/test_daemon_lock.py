"""The cluster lock helper protocol: held, contention, hung helper, lost lock, !command."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from ctdblab.daemon.core.election import LockStatus
from ctdblab.daemon.server.cluster_lock import OWN_HELPER, ClusterLock, helper_argv, lock_lease

DEBIAN_HELPER = "/usr/libexec/ctdb/ctdb_mutex_fcntl_helper"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_argv_choice(tmp_path):
    assert helper_argv(None, ["/bin/x", "a b"]) == ["/bin/x", "a b"]
    assert helper_argv("/l", None, "/nonexistent/helper")[-2:] == [OWN_HELPER, "/l"]
    assert helper_argv("/l", None, None, lease=1.5)[-4:] == [OWN_HELPER, "--lease", "1.5", "/l"]
    assert helper_argv("/l", None, sys.executable) == [sys.executable, "/l"]
    assert lock_lease(0.25) == 1.0 and lock_lease(0.5) == 2.0


def test_a_frozen_daemon_loses_the_lock_after_its_lease_and_another_takes_it(tmp_path):
    """The own helper releases the lock when the daemon's loop stops renewing it (SIGSTOP of
    the daemon in the lab; a hung daemon on a host); Debian's helper would keep it."""
    async def main():
        lost, logs = [], []
        argv = helper_argv(str(tmp_path / "lock"), None, None, lease=1.0)
        holder = ClusterLock(argv, lost.append, logs.append)
        other = ClusterLock(argv, lambda r: None, logs.append)
        assert await holder.take() is LockStatus.HELD
        await asyncio.sleep(1.5)                      # renewed: still held
        assert holder.held and not lost
        assert await other.take() is LockStatus.CONTENTION
        holder._renew.cancel()                        # the loop "freezes" for this lock
        for _ in range(300):
            if lost:
                break
            await asyncio.sleep(0.01)
        assert lost and "status 4" in lost[0]
        assert any("no word from the daemon" in m for m in logs)
        assert await other.take() is LockStatus.HELD
        await other.close()
        await holder.close()
    run(main())


def test_lease_renewals_on_the_daemons_look_grid_keep_the_lock(tmp_path):
    """Renewals wait for the first look (120 ms grid) after a quarter lease, so they cost no
    wake-up of their own; the lock is still kept across several leases."""
    async def main():
        argv = helper_argv(str(tmp_path / "lock"), None, None, lease=1.0)
        asked: list[float] = []

        def on_grid(when: float) -> float:
            asked.append(when)
            return (when // 0.12 + 1) * 0.12
        lost: list[str] = []
        holder = ClusterLock(argv, lost.append, lambda m: None, align=on_grid)
        other = ClusterLock(argv, lambda r: None, lambda m: None)
        assert await holder.take() is LockStatus.HELD
        await asyncio.sleep(3.0)                     # three leases
        assert lost == [] and await other.take() is LockStatus.CONTENTION
        assert 8 <= len(asked) <= 14, asked          # a renewal every 250-370 ms
        await holder.close()
        await other.close()
    run(main())


def test_the_armed_spare_makes_a_lock_attempt_fast(tmp_path):
    async def main():
        argv = helper_argv(str(tmp_path / "lock"), None, None, lease=1.0)
        lock = ClusterLock(argv, lambda r: None, lambda m: None, spare_delay=0.1)
        blocker = ClusterLock(argv, lambda r: None, lambda m: None)
        assert await blocker.take() is LockStatus.HELD
        assert await lock.take() is LockStatus.CONTENTION       # cold: starts an interpreter
        assert lock._spare is None                               # not at once: after the delay
        await asyncio.sleep(1.1)                                 # the spare is ready by now
        assert lock._spare is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await lock.take() is LockStatus.CONTENTION
        warm = loop.time() - started
        await blocker.close()
        await asyncio.sleep(1.0)
        assert await lock.take() is LockStatus.HELD
        await lock.close()
        assert lock._spare is None
        # A spare answers without an interpreter start (tens of ms on this machine, more under
        # load); generous bound so a loaded CI machine does not fail it.
        assert warm < 0.25, warm
    run(main())


def test_an_attempt_within_the_spare_delay_starts_its_own_helper_and_drops_the_waiting_spare(tmp_path):
    async def main():
        argv = helper_argv(str(tmp_path / "lock"), None, None, lease=1.0)
        lock = ClusterLock(argv, lambda r: None, lambda m: None, spare_delay=30.0)
        blocker = ClusterLock(argv, lambda r: None, lambda m: None)
        assert await blocker.take() is LockStatus.HELD
        assert await lock.take() is LockStatus.CONTENTION
        waiting = lock._spare_timer
        assert waiting is not None and lock._spare_task is None    # in its delay, not started
        await blocker.close()
        assert await asyncio.wait_for(lock.take(), 10) is LockStatus.HELD   # not 30 s
        assert waiting.cancelled()
        assert lock._spare_timer is None and lock._spare_task is None and lock._spare is None
        await lock.close()
    run(main())


@pytest.mark.parametrize("use_debian", [False, True])
def test_held_then_contention_then_release(tmp_path, use_debian):
    if use_debian and not os.access(DEBIAN_HELPER, os.X_OK):
        pytest.skip("Debian's ctdb_mutex_fcntl_helper is not installed")

    async def main():
        lost, logs = [], []
        argv = helper_argv(str(tmp_path / "lock"), None, DEBIAN_HELPER if use_debian else None)
        first = ClusterLock(argv, lost.append, logs.append)
        second = ClusterLock(argv, lost.append, logs.append)
        assert await first.take() is LockStatus.HELD and first.held
        assert await second.take() is LockStatus.CONTENTION and not second.held
        await first.release()
        assert not lost                      # a release is not a loss
        assert await second.take() is LockStatus.HELD
        await second.close()
        await first.close()
    run(main())


def test_helper_death_is_a_lost_lock(tmp_path):
    async def main():
        lost = []
        lock = ClusterLock(helper_argv(str(tmp_path / "lock"), None), lost.append, lambda m: None)
        assert await lock.take() is LockStatus.HELD
        lock._proc.kill()
        for _ in range(200):
            if lost:
                break
            await asyncio.sleep(0.01)
        assert lost and "exited" in lost[0] and not lock.held
        await lock.close()
    run(main())


def test_hung_and_broken_helpers(tmp_path):
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nexec sleep 60\n")
    hang.chmod(0o755)
    mute = tmp_path / "mute"
    mute.write_text("#!/bin/sh\necho oops >&2\nexit 3\n")
    mute.chmod(0o755)
    noisy = tmp_path / "noisy"
    noisy.write_text("#!/bin/sh\nprintf 'X'\n")
    noisy.chmod(0o755)

    async def main():
        logs = []
        lock = ClusterLock([str(hang)], lambda r: None, logs.append, timeout=0.3)
        started = asyncio.get_running_loop().time()
        assert await lock.take() is LockStatus.TIMEOUT
        assert asyncio.get_running_loop().time() - started < 3
        assert any("did not answer within" in m for m in logs)
        assert await ClusterLock([str(mute)], lambda r: None, logs.append).take() is LockStatus.ERROR
        await asyncio.sleep(0.1)
        assert any("without answering" in m for m in logs) and any("oops" in m for m in logs)
        assert await ClusterLock([str(noisy)], lambda r: None, logs.append).take() is LockStatus.ERROR
        assert any("not a status character" in m for m in logs)
        assert await ClusterLock([str(tmp_path / "missing")], lambda r: None,
                                 logs.append).take() is LockStatus.ERROR
    run(main())


def grid(period: float):
    return lambda when: (when // period + 1) * period


def test_renewals_are_never_more_than_half_a_lease_apart_on_a_sparse_grid():
    """The default heartbeats' paced loop looks every 600 ms against a 1.6 s lease: the first
    tick after a quarter lease can be 1.0 s away, so the renewal takes the tick before it."""
    from ctdblab.daemon.server.cluster_lock import renewal_due
    on_look = grid(0.6)
    now, gaps = 0.013, []
    for _ in range(200):
        due = renewal_due(now, 1.6, on_look)
        assert due == on_look(due - 1e-9)            # on a tick: no wake-up of its own
        gaps.append(due - now)
        now = due + 0.0371                            # the loop runs a little after the tick
    assert min(gaps) > 0 and max(gaps) <= 0.8, (min(gaps), max(gaps))


def test_on_a_fine_grid_the_renewal_is_the_first_tick_after_a_quarter_lease():
    from ctdblab.daemon.server.cluster_lock import renewal_due
    on_look = grid(0.12)
    for now in (0.0, 0.05, 1.234, 7.77):
        assert renewal_due(now, 1.0, on_look) == on_look(now + 0.25)
    assert renewal_due(3.0, 1.0, lambda when: when) == 3.25   # no grid: a quarter lease
