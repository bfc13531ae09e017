"""The cluster lock helper protocol: held, contention, hung helper, lost lock, !command."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from ctdblab.daemon.core.election import LockStatus
from ctdblab.daemon.server.cluster_lock import OWN_HELPER, ClusterLock, helper_argv

DEBIAN_HELPER = "/usr/libexec/ctdb/ctdb_mutex_fcntl_helper"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_argv_choice(tmp_path):
    assert helper_argv(None, ["/bin/x", "a b"]) == ["/bin/x", "a b"]
    assert helper_argv("/l", None, "/nonexistent/helper")[-2:] == [OWN_HELPER, "/l"]
    assert helper_argv("/l", None, sys.executable) == [sys.executable, "/l"]


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
        await second.release()
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
