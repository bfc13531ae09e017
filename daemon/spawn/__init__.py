"""Starting a child process without the event loop waiting for it to exec.

``subprocess.Popen`` (and asyncio's subprocess transport, which calls it on the loop) returns
only once the child has exec'd: it reads an error pipe that the exec closes. The daemon runs
real-time (SCHED_RR) and its children do not (SCHED_RESET_ON_FORK, so a script cannot hog a
core), so when other real-time work keeps the cores busy the child waits for a CPU while the
loop sleeps in that read -- a priority inversion. In the lab (five daemons on two cores, all
recovering at once) the fast-profile soak saw loop stalls of 30-180 ms in which the loop used
~5 ms of CPU and waited ~1 ms for one; py-spy put them in Popen, for lock helpers and event
scripts. With a 60 ms dead timeout that is a node declared dead.

So children start in a worker thread through posix_spawn (:mod:`.posix`), whose ctypes call
lets go of the GIL while the child execs -- Popen in a thread was not enough: on Python 3.11 it
holds the GIL through the exec, and after the first fix the same soak still saw 77 stalls of
31-197 ms with the loop asleep (part of them waiting for that GIL; forks behind starved
children were the rest, see store/child.py). The exit is watched through a pidfd (no SIGCHLD
handler, no child-watcher thread).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import posix
from .posix import DEVNULL


def run_like_the_main_thread(reset_on_fork: bool = True) -> None:
    """A worker thread gets the main thread's scheduling policy. With SCHED_RESET_ON_FORK a new
    thread starts SCHED_OTHER, and a non-real-time thread that holds the GIL while real-time
    daemons keep the cores busy would stall the loop waiting for the GIL (the same inversion
    as the exec wait). Without ``reset_on_fork`` the thread drops that flag: for the spawn
    threads, whose children set their own policy (:func:`start_child_now`)."""
    main = os.getpid()       # the main thread's id is the process id (also after a fork,
    try:                     # where threading.main_thread().native_id is the parent's)
        policy = os.sched_getscheduler(main)
        if not reset_on_fork:
            policy &= ~posix.RESET_ON_FORK
        os.sched_setscheduler(0, policy, os.sched_getparam(main))
    except (OSError, AttributeError):
        pass


def thread_pool(max_workers: int, name: str, *, reset_on_fork: bool = True) -> ThreadPoolExecutor:
    """A thread pool whose threads run at the main thread's scheduling policy and all exist
    when it is returned. ThreadPoolExecutor starts a thread on demand, and Python's
    ``Thread.start`` waits until the new thread has run; a thread made by a real-time thread
    with SCHED_RESET_ON_FORK starts SCHED_OTHER, so when real-time work keeps the cores busy
    that wait lasts up to the kernel's real-time throttling period: an 800 ms loop stall
    measured with a real-time spinner on the loop's core, the first time it needed a thread.
    So they are all made at once, while the daemon starts."""
    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name,
                              initializer=functools.partial(run_like_the_main_thread,
                                                            reset_on_fork))
    # Tasks that wait for each other occupy distinct threads, so the pool makes them all.
    everyone = threading.Barrier(max_workers)
    for started in [pool.submit(everyone.wait, 30.0) for _ in range(max_workers)]:
        started.result()
    return pool


#: Spawns are short (a lock helper, an event script); a freeze starts one lock helper per
#: database at once, and four threads let execs overlap.
SPAWN_THREADS = 4
_spawner: tuple[int, ThreadPoolExecutor] | None = None


def start_spawner() -> ThreadPoolExecutor:
    """The spawn threads of this process, made now if they do not exist yet (the daemon calls
    this at start-up, after it has forked to detach: threads do not survive a fork)."""
    global _spawner
    if _spawner is None or _spawner[0] != os.getpid():
        _spawner = (os.getpid(), thread_pool(SPAWN_THREADS, "spawn",
                                             reset_on_fork=not posix.REALTIME_UNTIL_EXEC))
    return _spawner[1]


class Child:
    """A started program, like the parts of ``subprocess.Popen`` the daemon uses: ``pid``,
    ``returncode`` (negative: killed by that signal), ``poll``, ``wait``, ``send_signal``,
    ``kill``. Signals are only sent while it is unreaped, so the pid cannot be someone else's."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def _reap(self, options: int) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, options)
            except ChildProcessError:       # reaped elsewhere: nothing more to learn
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self) -> int:
        code = self._reap(0)
        assert code is not None
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __repr__(self) -> str:
        return f"Child(pid={self.pid}, returncode={self.returncode})"


def realtime_policy() -> tuple[int, os.sched_param] | None:
    """The calling thread's real-time policy (without SCHED_RESET_ON_FORK) and its parameters;
    None when it is not real-time."""
    try:
        policy = os.sched_getscheduler(0) & ~posix.RESET_ON_FORK
        if policy not in (os.SCHED_RR, os.SCHED_FIFO):
            return None
        return policy, os.sched_getparam(0)
    except (OSError, AttributeError):
        return None


def start_child_now(argv: list[str], **kwargs: Any) -> Child:
    """Start ``argv`` now (keywords as :func:`.posix.spawn`) and return once it has exec'd: for
    a spawn thread. From a real-time thread without SCHED_RESET_ON_FORK (the spawn threads),
    the child is real-time until it has exec'd.

    A child that starts SCHED_OTHER waits for a CPU behind the real-time daemons before it can
    exec -- a freeze's sixteen lock helpers one after the other, and all the while it shares
    the daemon's memory. So it inherits this thread's policy, adds SCHED_RESET_ON_FORK (set by
    the child before its file actions: nothing the new program forks is real-time) and is put
    back to SCHED_OTHER here as soon as posix_spawn returns, which is when it has exec'd. With
    a SCHED_FIFO 1 spinner on the core, a spawn thread at SCHED_FIFO 2 started 27-1168 children
    of /bin/true in 3 s the old way, 3665-4306 this way (``benchmarks.spawn_inversion``)."""
    realtime = realtime_policy()
    if realtime is None or os.sched_getscheduler(0) & posix.RESET_ON_FORK:
        return Child(posix.spawn(argv, **kwargs))      # starts SCHED_OTHER (or stays it)
    policy, param = realtime
    pid = posix.spawn(argv, scheduler=(policy | posix.RESET_ON_FORK, param.sched_priority),
                      **kwargs)
    child = Child(pid)
    try:
        os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
    except ProcessLookupError:          # gone already
        pass
    except OSError:                     # never leave a program real-time
        child.kill()
        child.wait()
        raise
    return child


async def start_child(argv: list[str], **kwargs: Any) -> Child:
    """Start ``argv`` in a worker thread (keywords as :func:`.posix.spawn`); raises OSError as
    posix_spawn fails (a missing program: FileNotFoundError). If the caller is cancelled
    meanwhile, the child is killed and reaped once it exists (a lock helper nobody waits for
    would take a lock for nobody)."""
    started = asyncio.get_running_loop().run_in_executor(
        start_spawner(), functools.partial(start_child_now, list(argv), **kwargs))
    try:
        return await asyncio.shield(started)
    except asyncio.CancelledError:
        started.add_done_callback(_kill_unwanted)
        raise


def _kill_unwanted(started: asyncio.Future[Child]) -> None:
    if started.cancelled() or started.exception() is not None:
        return
    proc = started.result()
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    watch_exit(proc)


def watch_exit(proc: Child) -> asyncio.Future[int]:
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

    def __init__(self, child: Child, stdin: _PipeWriter | None,
                 stdout: asyncio.StreamReader | None, stderr: asyncio.StreamReader | None) -> None:
        self.child = child
        self.pid = child.pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._exited = watch_exit(child)

    @property
    def returncode(self) -> int | None:
        return self.child.returncode

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        self.child.send_signal(sig)

    def kill(self) -> None:
        self.child.kill()


async def start(argv: list[str], *, stdin: bool = False, stdout: bool = False,
                stderr: bool | str = False, **kwargs: Any) -> Process:
    """Start `argv` off the loop with the chosen standard streams as pipes (the others from
    /dev/null; ``stderr="stdout"`` sends it into the stdout pipe); like
    ``asyncio.create_subprocess_exec`` otherwise (keywords as :func:`.posix.spawn`)."""
    loop = asyncio.get_running_loop()
    ours: list[int] = []     # the daemon's ends
    theirs: list[int] = []   # the child's ends, closed here once it has started

    def pipe(wanted: bool, child_reads: bool) -> int:
        if not wanted:
            return DEVNULL
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        ours.append(wfd if child_reads else rfd)
        theirs.append(rfd if child_reads else wfd)
        return theirs[-1]

    try:
        in_fd = pipe(stdin, True)
        out_fd = pipe(stdout, False)
        err_fd = out_fd if stderr == "stdout" else pipe(bool(stderr), False)
        child = await start_child(argv, stdin=in_fd, stdout=out_fd, stderr=err_fd, **kwargs)
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    ends = iter(ours)
    writer = _PipeWriter(next(ends)) if stdin else None
    out_end = next(ends) if stdout else None
    err_end = next(ends) if stderr is True else None

    async def reader(fd: int) -> asyncio.StreamReader:
        stream = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream),
                                     os.fdopen(fd, "rb", buffering=0))
        return stream

    try:
        out = await reader(out_end) if out_end is not None else None
        err = await reader(err_end) if err_end is not None else None
    except BaseException:
        child.kill()
        watch_exit(child)
        raise
    return Process(child, writer, out, err)
