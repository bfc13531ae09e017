"""The cluster lock, held by a helper process that speaks CTDB's mutex-helper protocol.

`cluster lock = <file>` runs CTDB's fcntl helper if it is installed (or whatever
CTDB_CLUSTER_MUTEX_HELPER names, as with ctdbd), else pyctdbd's own `cluster_lock_helper.py` (same
protocol); `cluster lock = !command args` runs that command,
so Debian's ctdb_mutex_fcntl_helper or ctdb_etcd_lock work unchanged. The helper writes one
character: '0' held (it keeps running), '1' contention, '2' timeout, '3' error.

The daemon never blocks on it: `take()` is a coroutine with a deadline; a helper that does not
answer in time is killed and the attempt reported as a timeout. A held lock is lost when the
helper exits for any reason, which the daemon hears through `on_lost`. Anything the helper writes
on stderr goes to the log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..core.election import LockStatus

OWN_HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster_lock_helper.py")


def helper_argv(lock_file: str | None, command: Sequence[str] | None,
                fcntl_helper: str | None = None) -> list[str]:
    """What to run for a cluster-lock setting (a file or a `!command`). For a file: CTDB's
    fcntl helper when it is installed (`fcntl_helper`, normally
    /usr/libexec/ctdb/ctdb_mutex_fcntl_helper or $CTDB_CLUSTER_MUTEX_HELPER; a C program that
    starts in a millisecond or two), else pyctdbd's own `cluster_lock_helper.py`."""
    if command:
        return list(command)
    assert lock_file is not None
    if fcntl_helper and os.access(fcntl_helper, os.X_OK):
        return [fcntl_helper, lock_file]
    return [sys.executable, "-S", "-E", OWN_HELPER, lock_file]


@dataclass
class ClusterLock:
    argv: list[str]
    on_lost: Callable[[str], None]
    log: Callable[[str], None]
    timeout: float = 10.0
    _proc: asyncio.subprocess.Process | None = None
    _held: bool = False
    _watch: asyncio.Task | None = None
    _stderr_task: asyncio.Task | None = None

    @property
    def held(self) -> bool:
        return self._held

    @property
    def description(self) -> str:
        return " ".join(self.argv)

    async def take(self) -> LockStatus:
        """Run the helper and wait (at most `timeout`) for its answer."""
        if self._held:
            return LockStatus.HELD
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            self.log(f"Unable to run cluster lock helper {self.argv[0]}: {exc.strerror or exc}")
            return LockStatus.ERROR
        self._proc = proc
        self._stderr_task = asyncio.create_task(self._relay_stderr(proc))
        assert proc.stdout is not None
        try:
            answer = await asyncio.wait_for(proc.stdout.read(1), self.timeout)
        except asyncio.TimeoutError:
            self.log(f"Cluster lock helper ({self.description}) did not answer within "
                     f"{self.timeout:g} s: killing it and treating the lock as not taken")
            await self._kill(proc)
            return LockStatus.TIMEOUT
        except asyncio.CancelledError:
            await self._kill(proc)
            raise
        try:
            status = LockStatus(answer.decode("ascii", "replace"))
        except ValueError:
            code = await self._kill(proc)
            if answer:
                self.log(f"Cluster lock helper ({self.description}) wrote {answer!r}, not a status "
                         "character")
            else:
                self.log(f"Cluster lock helper ({self.description}) exited (status {code}) "
                         "without answering")
            return LockStatus.ERROR
        if status is not LockStatus.HELD:
            await self._kill(proc)
            return status
        self._held = True
        self._watch = asyncio.create_task(self._watch_helper(proc))
        return status

    async def release(self) -> None:
        """Stop holding the lock (SIGTERM to the helper)."""
        proc = self._proc
        self._held = False
        self._proc = None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if proc is not None:
            await self._kill(proc, signal.SIGTERM)

    def release_soon(self) -> None:
        """Fire-and-forget release (for synchronous callers)."""
        asyncio.get_running_loop().create_task(self.release())

    async def _watch_helper(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._proc is proc and self._held:
            self._held = False
            self._proc = None
            self.on_lost(f"cluster lock helper exited with status {code}")

    async def _relay_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        try:
            while True:
                line = await proc.stderr.readline()
                if not line:
                    return
                text = line.decode("utf-8", "replace").rstrip()
                if text:
                    self.log(f"cluster lock helper: {text}")
        except (asyncio.CancelledError, OSError):
            return

    async def _kill(self, proc: asyncio.subprocess.Process, sig: int = signal.SIGKILL) -> int | None:
        if proc.returncode is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except asyncio.TimeoutError:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
                await proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
        return proc.returncode
