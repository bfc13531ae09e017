"""The cluster lock, held by a helper process that speaks CTDB's mutex-helper protocol.

`cluster lock = <file>` runs pyctdbd's own `cluster_lock_helper.py` (CTDB's protocol over an
fcntl lock, plus a lease: it releases the lock when the daemon's event loop stops renewing it, so
a frozen or hung leader does not keep the cluster leaderless for ever; CTDB's fcntl helper holds
the lock for as long as the stopped daemon exists), or whatever CTDB_CLUSTER_MUTEX_HELPER names,
as with ctdbd; `cluster lock = !command args` runs that command, so Debian's
ctdb_mutex_fcntl_helper or ctdb_etcd_lock work unchanged. The helper writes one character: '0'
held (it keeps running), '1' contention, '2' timeout, '3' error.

pyctdbd's own helper is started *armed* one attempt ahead: it waits for a byte before it tries
the lock, so an election never waits for an interpreter to start. The spare for the next attempt
starts `spare_delay` after a lost attempt, not at once: an election follows a node's death, and
an interpreter start (tens of ms of CPU) is best kept out of the recovery and takeover that come
next. An attempt within that delay starts its helper itself, as without a spare.

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

from .. import spawn
from ..core.election import LockStatus

OWN_HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster_lock_helper.py")


def helper_argv(lock_file: str | None, command: Sequence[str] | None,
                fcntl_helper: str | None = None, lease: float = 0.0) -> list[str]:
    """What to run for a cluster-lock setting (a file or a `!command`). For a file: the helper
    the operator named in $CTDB_CLUSTER_MUTEX_HELPER (`fcntl_helper`) if any, else pyctdbd's
    own, with a `lease` (seconds; 0 for none)."""
    if command:
        return list(command)
    assert lock_file is not None
    if fcntl_helper and os.access(fcntl_helper, os.X_OK):
        return [fcntl_helper, lock_file]
    lease_args = ["--lease", f"{lease:g}"] if lease > 0 else []
    return [sys.executable, "-S", "-E", OWN_HELPER, *lease_args, lock_file]


def renewal_due(now: float, lease: float, align: Callable[[float], float]) -> float:
    """When to renew the lease next: on the first tick of the daemon's grid after a quarter lease
    (no wake-up of its own), unless that is more than half a lease away (the paced loop looks
    only every 600 ms at the default heartbeats, against a 1.6 s lease): then on the first tick.
    So renewals are never more than half a lease apart, and a loop that stalls less than half a
    lease keeps the lock."""
    due = align(now + lease / 4)
    if due - now > lease / 2:
        due = min(due, align(now))
    return due


def lock_lease(dead_timeout: float) -> float:
    """How long the own helper keeps the lock without a word from the daemon: four dead
    timeouts, at least a second. A loop that stalls this long has been declared dead by its
    peers anyway: unpaced after one dead timeout, paced once the pacer stops beating for it
    (one look and one dead timeout) and one dead timeout later (1.4 s at the default 100 ms
    heartbeats and 400 ms dead timeout, against a 1.6 s lease)."""
    return max(1.0, 4 * dead_timeout)


@dataclass
class ClusterLock:
    argv: list[str]
    on_lost: Callable[[str], None]
    log: Callable[[str], None]
    timeout: float = 10.0
    spare_delay: float = 2.0
    #: puts the lease renewals on the daemon's ticks (no wake-up of their own)
    align: Callable[[float], float] = lambda when: when
    _proc: spawn.Process | None = None
    _held: bool = False
    _watch: asyncio.Task | None = None
    _renew: asyncio.Task | None = None
    _spare: spawn.Process | None = None    # an armed own helper, started ahead
    _spare_task: asyncio.Task | None = None
    _spare_timer: asyncio.TimerHandle | None = None     # the spare's start, in its delay
    _closed: bool = False

    @property
    def own_helper(self) -> bool:
        return OWN_HELPER in self.argv

    @property
    def lease(self) -> float:
        if "--lease" in self.argv:
            return float(self.argv[self.argv.index("--lease") + 1])
        return 0.0

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
        await self._settle_spare()
        proc, self._spare = self._spare, None
        if proc is not None and proc.returncode is not None:
            proc = None
        if proc is None:
            try:
                proc = await self._spawn()
            except OSError as exc:
                self.log(f"Unable to run cluster lock helper {self.argv[0]}: {exc.strerror or exc}")
                return LockStatus.ERROR
        self._proc = proc
        if self.own_helper:
            assert proc.stdin is not None
            proc.stdin.write(b"T")          # armed: try the lock now
        try:
            return await self._answer(proc)
        finally:
            if not self._held:
                self._prepare_spare()

    async def _spawn(self) -> spawn.Process:
        argv = list(self.argv)
        if self.own_helper:
            argv.insert(argv.index(OWN_HELPER) + 1, "--armed")
        # Started off the loop (daemon/spawn: the loop must not wait for the exec).
        proc = await spawn.start(argv, stdin=True, stdout=True, stderr=True, new_session=True)
        asyncio.get_running_loop().create_task(self._relay_stderr(proc))
        return proc

    def _prepare_spare(self) -> None:
        """Start the next armed helper in the background, `spare_delay` from now (own helper
        only)."""
        if (not self.own_helper or self._closed or self._spare is not None
                or self._spare_task is not None or self._spare_timer is not None):
            return
        if self.spare_delay > 0:
            self._spare_timer = asyncio.get_running_loop().call_later(self.spare_delay,
                                                                      self._start_spare)
        else:
            self._start_spare()

    def _start_spare(self) -> None:
        self._spare_timer = None

        async def start_spare() -> None:
            try:
                self._spare = await self._spawn()
            except OSError:
                self._spare = None          # take() will try, and log, again
            finally:
                self._spare_task = None
        self._spare_task = asyncio.get_running_loop().create_task(start_spare())

    async def _settle_spare(self) -> None:
        """A spare still in its delay is dropped (no interpreter started yet); one starting is
        waited for."""
        if self._spare_timer is not None:
            self._spare_timer.cancel()
            self._spare_timer = None
        if self._spare_task is not None:
            await asyncio.shield(self._spare_task)

    async def _answer(self, proc: spawn.Process) -> LockStatus:
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
        if self.lease > 0:
            self._renew = asyncio.create_task(self._renew_lease(proc))
        return status

    async def _renew_lease(self, proc: spawn.Process) -> None:
        """A byte every quarter to half lease from the event loop, on its ticks (`renewal_due`):
        a frozen loop sends none."""
        assert proc.stdin is not None
        loop = asyncio.get_running_loop()
        try:
            while self._proc is proc and self._held:
                proc.stdin.write(b".")
                now = loop.time()
                await asyncio.sleep(max(0.0, renewal_due(now, self.lease, self.align) - now))
        except (OSError, RuntimeError):
            return                          # the helper is gone; _watch_helper reports it

    async def release(self) -> None:
        """Stop holding the lock (SIGTERM to the helper)."""
        proc = self._proc
        self._held = False
        self._proc = None
        for task in (self._watch, self._renew):
            if task is not None:
                task.cancel()
        self._watch = self._renew = None
        if proc is not None:
            await self._kill(proc, signal.SIGTERM)
        self._prepare_spare()

    async def close(self) -> None:
        """Release the lock and stop the spare helper (daemon shutdown)."""
        self._closed = True
        await self.release()
        await self._settle_spare()
        spare, self._spare = self._spare, None
        if spare is not None:
            await self._kill(spare, signal.SIGTERM)

    def release_soon(self) -> None:
        """Fire-and-forget release (for synchronous callers)."""
        asyncio.get_running_loop().create_task(self.release())

    async def _watch_helper(self, proc: spawn.Process) -> None:
        code = await proc.wait()
        if self._proc is proc and self._held:
            self._held = False
            self._proc = None
            self.on_lost(f"cluster lock helper exited with status {code}")
            self._prepare_spare()

    async def _relay_stderr(self, proc: spawn.Process) -> None:
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

    async def _kill(self, proc: spawn.Process, sig: int = signal.SIGKILL) -> int | None:
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
