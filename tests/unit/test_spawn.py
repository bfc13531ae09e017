"""daemon/spawn.py: children started off the event loop, their exit watched through a pidfd."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ctdblab.daemon import spawn


def test_start_child_runs_the_child_and_watch_exit_gives_its_code():
    async def main():
        proc = await spawn.start_child([sys.executable, "-c", "import sys; sys.exit(3)"])
        return await spawn.watch_exit(proc), proc.returncode
    assert asyncio.run(main()) == (3, 3)


def test_a_child_killed_by_a_signal_has_a_negative_returncode_like_popens():
    async def main():
        proc = await spawn.start_child([sys.executable, "-c", "import time; time.sleep(60)"])
        proc.send_signal(signal.SIGTERM)
        code = await spawn.watch_exit(proc)
        proc.send_signal(signal.SIGTERM)       # reaped: nothing is signalled, no error
        return code
    assert asyncio.run(main()) == -signal.SIGTERM


def test_a_missing_program_raises_file_not_found_like_popen():
    async def main():
        await spawn.start_child(["/nonexistent/ctdblab-no-such-program"])
    with pytest.raises(FileNotFoundError):
        asyncio.run(main())


def test_the_loop_keeps_running_while_a_child_is_started():
    # A slow exec is simulated by a slow spawn: the loop's timer must not wait for it.
    spawn.start_spawner()                            # the pool exists

    async def main():
        loop = asyncio.get_running_loop()
        ticks = []
        timer = loop.call_later(0.01, lambda: ticks.append(loop.time()))
        start = loop.time()
        original = spawn.posix.spawn

        def slow_spawn(*args, **kwargs):
            time.sleep(0.2)
            return original(*args, **kwargs)
        spawn.posix.spawn = slow_spawn
        try:
            proc = await spawn.start_child([sys.executable, "-c", "pass"])
        finally:
            spawn.posix.spawn = original
        await spawn.watch_exit(proc)
        timer.cancel()
        return ticks, start
    ticks, start = asyncio.run(main())
    assert ticks and ticks[0] - start < 0.15


def test_start_gives_stream_pipes_and_a_process_like_asyncios():
    script = "import sys; c = sys.stdin.buffer.read(1); sys.stdout.buffer.write(c * 2); " \
             "sys.stdout.flush(); sys.stderr.write('line\\n'); sys.exit(0)"

    async def main():
        proc = await spawn.start([sys.executable, "-c", script], stdin=True, stdout=True,
                                 stderr=True)
        proc.stdin.write(b"x")
        out = await asyncio.wait_for(proc.stdout.read(2), 10)
        err = await asyncio.wait_for(proc.stderr.readline(), 10)
        code = await proc.wait()
        proc.stdin.close()
        proc.stdin.write(b"y")                # closed: ignored, not an error
        return out, err, code, proc.returncode
    assert asyncio.run(main()) == (b"xx", b"line\n", 0, 0)


def test_start_can_send_stderr_into_the_stdout_pipe():
    script = "import sys; sys.stdout.write('out\\n'); sys.stdout.flush(); sys.stderr.write('err\\n')"

    async def main():
        proc = await spawn.start([sys.executable, "-c", script], stdout=True, stderr="stdout")
        out = await asyncio.wait_for(proc.stdout.read(), 10)
        return out, await proc.wait(), proc.stderr
    assert asyncio.run(main()) == (b"out\nerr\n", 0, None)


def _running_with(token: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def test_a_caller_cancelled_while_the_child_starts_leaves_no_child_behind():
    token = f"spawn-test-{os.getpid()}-{time.monotonic_ns()}"

    async def main():
        loop = asyncio.get_running_loop()
        task = loop.create_task(spawn.start_child(
            [sys.executable, "-c", "import time; time.sleep(60)", token]))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):                 # killed and reaped once it has started
            await asyncio.sleep(0.05)
            if not _running_with(token):
                return []
        return _running_with(token)
    assert asyncio.run(main()) == []


def test_worker_threads_take_the_main_threads_scheduling_policy():
    # Run in a child interpreter: it may change its own policy (root: SCHED_RR; otherwise the
    # unprivileged SCHED_BATCH stands in for "not the default").
    # It forks first, as the daemon does when it detaches.
    script = r"""
import asyncio, os, sys
from ctdblab.daemon import spawn
if os.fork():
    os.wait()
    sys.exit(0)
try:
    os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(1))
except PermissionError:
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
main = os.sched_getscheduler(0)
worker = spawn.start_spawner().submit(os.sched_getscheduler, 0).result()
print(main, worker)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    main, worker = map(int, out.stdout.split())
    # The spawn threads drop SCHED_RESET_ON_FORK: their children set their own policy.
    assert main & ~os.SCHED_RESET_ON_FORK == worker and main != os.SCHED_OTHER, out.stderr


#: Prints its own policy and that of a child it forks, once its parent has had time to act.
FORKING_CHILD = """
import os, time
time.sleep(0.3)
pid = os.fork()
if pid == 0:
    print(os.sched_getscheduler(0), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print(os.sched_getscheduler(0), flush=True)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="real-time scheduling needs root")
def test_a_child_of_a_realtime_daemon_is_sched_other_once_started_and_so_is_what_it_forks():
    script = r"""
import asyncio, os, sys
from ctdblab.daemon import spawn
os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(1))
async def main():
    rfd, wfd = os.pipe()
    child = await spawn.start_child([sys.executable, "-c", sys.argv[1]], stdout=wfd)
    os.close(wfd)
    at_start = os.sched_getscheduler(child.pid)
    code = await spawn.watch_exit(child)
    print(at_start, code, *os.read(rfd, 100).decode().split())
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script, FORKING_CHILD], capture_output=True,
                         text=True, timeout=30)
    other = str(os.SCHED_OTHER)
    # at start, exit code, the grandchild's policy, the child's own
    assert out.stdout.split() == [other, "0", other, other], out.stderr


def test_a_thread_pool_has_all_its_threads_when_it_is_returned():
    # A thread made on demand by a busy real-time daemon stalls its loop (Thread.start waits
    # for a thread that starts SCHED_OTHER), so none may be made later.
    before = {t.name for t in threading.enumerate()}
    pool = spawn.thread_pool(3, "prestart-test")
    try:
        made = {t.name for t in threading.enumerate()} - before
        assert len([name for name in made if name.startswith("prestart-test")]) == 3
    finally:
        pool.shutdown()


def test_the_spawner_is_made_again_in_a_forked_child():
    # The daemon forks to detach: a pool made before has no threads in the child.
    script = r"""
import asyncio, os, sys
from ctdblab.daemon import spawn
before = spawn.start_spawner()
pid = os.fork()
if pid:
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
after = spawn.start_spawner()
async def main():
    child = await spawn.start_child([sys.executable, "-c", "pass"])
    return await spawn.watch_exit(child)
code = asyncio.run(asyncio.wait_for(main(), 20))
os._exit(0 if after is not before and code == 0 else 3)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
