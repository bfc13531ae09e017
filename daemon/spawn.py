"""Starting a child process without the event loop waiting for it to exec.

``subprocess.Popen`` (and asyncio's subprocess transport, which calls it on the loop) returns
only once the child has exec'd: it reads an error pipe that the exec closes. The daemon runs
real-time (SCHED_RR) and its children do not (SCHED_RESET_ON_FORK, so a script cannot hog a
core), so when other real-time work keeps the cores busy the child waits for a CPU while the
loop sleeps in that read -- a priority inversion. In the lab (five daemons on two cores, all
recovering at once) the fast-profile soak saw loop stalls of 30-180 ms in which the loop used
~5 ms of CPU and waited ~1 ms for one; py-spy put them in Popen, for lock helpers and event
scripts. With a 60 ms dead timeout that is a node declared dead. Here Popen runs in a worker
thread and the loop awaits it, so the loop keeps serving heartbeats meanwhile; the exit is
watched through a pidfd (no SIGCHLD handler, no child-watcher thread).
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

def _run_like_the_main_thread() -> None:
    """A worker thread gets the main thread's scheduling policy. With SCHED_RESET_ON_FORK a new
    thread starts SCHED_OTHER, and a non-real-time thread that holds the GIL while real-time
    daemons keep the cores busy would stall the loop waiting for the GIL (the same inversion
    as the exec wait). Its children still start SCHED_OTHER (the flag is kept)."""
    main = os.getpid()       # the main thread's id is the process id (also after a fork,
    try:                     # where threading.main_thread().native_id is the parent's)
        os.sched_setscheduler(0, os.sched_getscheduler(main), os.sched_getparam(main))
    except (OSError, AttributeError):
        pass


def thread_pool(max_workers: int, name: str) -> ThreadPoolExecutor:
    """A thread pool whose threads run at the main thread's scheduling policy."""
    return ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name,
                              initializer=_run_like_the_main_thread)


#: Spawns are short and rare (a lock helper, one event script at a time); two threads let a
#: slow exec not hold up the next one.
_SPAWNER = thread_pool(2, "spawn")


async def popen(argv: list[str], **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen(argv, **kwargs)`` in a worker thread; raises what Popen raises. If
    the caller is cancelled meanwhile, the child is killed and reaped once it exists (a lock
    helper nobody waits for would take a lock for nobody)."""
    started = asyncio.get_running_loop().run_in_executor(
        _SPAWNER, functools.partial(subprocess.Popen, argv, **kwargs))
    try:
        return await asyncio.shield(started)
    except asyncio.CancelledError:
        started.add_done_callback(_kill_unwanted)
        raise


def _kill_unwanted(started: asyncio.Future[subprocess.Popen]) -> None:
    if started.cancelled() or started.exception() is not None:
        return
    proc = started.result()
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    watch_exit(proc)


def watch_exit(proc: subprocess.Popen) -> asyncio.Future[int]:
    """A future that gets the child's exit code when it exits (reaped then)."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[int] = loop.create_future()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:
        pidfd = None

    def reaped(code: int) -> None:
        if not exited.done():
            exited.set_result(code)

    if pidfd is None:
        # No pidfd (a kernel before 5.3): wait in a thread instead.
        loop.run_in_executor(None, proc.wait).add_done_callback(lambda f: reaped(proc.returncode))
        return exited

    def on_exit() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        code = proc.poll()
        reaped(proc.wait() if code is None else code)

    loop.add_reader(pidfd, on_exit)
    return exited


class _PipeWriter:
    """A child's stdin for the few bytes the daemon writes (never waits: a full pipe drops
    the byte -- the child is not reading and will be dealt with by its owner)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)

    def write(self, data: bytes) -> None:
        if self.fd < 0:
            return
        try:
            os.write(self.fd, data)
        except (BlockingIOError, BrokenPipeError):
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Process:
    """The parts of ``asyncio.subprocess.Process`` the daemon uses (``stdin.write/close``,
    ``stdout``/``stderr`` stream readers, ``wait``, ``returncode``, ``send_signal``, ``kill``),
    for a child started off the loop by :func:`start`."""

    def __init__(self, proc: subprocess.Popen, stdin: _PipeWriter | None,
                 stdout: asyncio.StreamReader | None, stderr: asyncio.StreamReader | None) -> None:
        self.popen = proc
        self.pid = proc.pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._exited = watch_exit(proc)

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def kill(self) -> None:
        self.popen.kill()


async def start(argv: list[str], *, stdin: bool = False, stdout: bool = False,
                stderr: bool = False, **kwargs: Any) -> Process:
    """Start `argv` off the loop with the chosen standard streams as pipes (the others from
    /dev/null); like ``asyncio.create_subprocess_exec`` otherwise."""
    pipe = {True: subprocess.PIPE, False: subprocess.DEVNULL}
    proc = await popen(argv, stdin=pipe[stdin], stdout=pipe[stdout], stderr=pipe[stderr],
                       bufsize=0, **kwargs)
    loop = asyncio.get_running_loop()

    async def reader(file: Any) -> asyncio.StreamReader:
        stream = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream), file)
        return stream

    try:
        out = await reader(proc.stdout) if stdout else None
        err = await reader(proc.stderr) if stderr else None
    except BaseException:
        proc.kill()
        watch_exit(proc)
        raise
    writer = None
    if stdin:
        writer = _PipeWriter(os.dup(proc.stdin.fileno()))
        proc.stdin.close()
    return Process(proc, writer, out, err)
