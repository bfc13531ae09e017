"""Run CTDB event scripts the way ctdb-eventd 4.17 does, inside the daemon's asyncio loop.

One ``EventRunner`` serves one script directory (CTDB's "legacy" component). Behaviour follows
``ctdb/common/run_event.c`` and ``run_proc.c`` at samba-4.17.12:

* An event runs every script of the directory in name order as ``<script> <event> [args...]``,
  with stdout and stderr captured together, stdin from /dev/null, in a new process group.
  The first failing script stops the chain (its result becomes the event's *summary* and later
  scripts are not reported) unless ``run_all`` is set.
* A script's *result* is CTDB's integer: 0 OK; the exit code if positive; ``-ENOEXEC`` when not
  executable (DISABLED, does not stop the chain); ``-ETIMEDOUT``; ``-EINTR`` when a signal killed
  it; and CTDB's quirk that exit codes 64..254 mean ``-(code-64)`` (exit 77 = 64+EACCES reads as
  DISABLED, exit 64 as OK), because run_proc reserves them for exec errors.
* Serialization: one event at a time. A new event cancels a running ``monitor`` (its process
  group gets SIGKILL; the result has summary ``-ECANCELED`` and is not stored). A ``monitor``
  requested while another event runs is dropped at once (also ``-ECANCELED``). Other events queue.
* The timeout covers the whole event (one deadline for all scripts); ``timeout=0`` times out at
  once, as in CTDB; ``None`` means no timeout.

Deliberate differences from 4.17, for a daemon that must not leak processes:

* On timeout CTDB 4.17 leaves the script running unless an ``[event] debug script`` is set (then
  it runs the debug script and SIGTERMs the group afterwards; verified with the real binaries).
  We always SIGTERM the script's process group (after the optional debug script) and SIGKILL it
  ``kill_grace`` seconds later.
* Scripts inherit no descriptors but 0-2 (ctdb-eventd leaks several).
* Captured output is capped at ``output_limit`` bytes (511, CTDB's ``MAX_SCRIPT_OUTPUT``);
  ctdb-eventd keeps all of it.
* In ``run_all`` mode, scripts after the deadline are marked TIMEDOUT without being started
  (CTDB starts them and abandons them at once).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import stat
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..log import NOTICE
from .. import spawn
from ..spawn import start_child, watch_exit
from .scriptdir import EventScriptError, ScriptInfo, list_scripts, set_script_enabled
from .stock import StockReplacements

log = logging.getLogger("ctdblab.daemon.events")

MONITOR = "monitor"
OUTPUT_LIMIT = 511            # MAX_SCRIPT_OUTPUT in ctdb/protocol/protocol.h
DEFAULT_KILL_GRACE = 2.0      # seconds between SIGTERM and SIGKILL of a timed-out script
DEBUG_SCRIPT_TIMEOUT = 30.0
_READS_PER_WAKEUP = 16        # bounded reads per callback: a chatty script cannot hog the loop
_READ_SIZE = 65536


class ScriptStatus(str, Enum):
    """How ``ctdb event status`` prints a script's result."""

    OK = "OK"
    ERROR = "ERROR"
    TIMEDOUT = "TIMEDOUT"
    DISABLED = "DISABLED"
    CANNOT_RUN = "CANNOT RUN"


def status_of(result: int) -> ScriptStatus:
    if result == 0:
        return ScriptStatus.OK
    if result == -errno.ETIMEDOUT:
        return ScriptStatus.TIMEDOUT
    if result == -errno.ENOEXEC:
        return ScriptStatus.DISABLED
    if result < 0:
        return ScriptStatus.CANNOT_RUN
    return ScriptStatus.ERROR


def result_of_returncode(returncode: int) -> int:
    """CTDB's script result for a reaped script (``Popen.returncode`` convention: negative means
    killed by that signal)."""
    if returncode < 0:
        return -errno.EINTR
    if 64 <= returncode < 255:          # run_proc: 64+errno is an exec failure report
        err = returncode - 64
        if err == 0:
            return 0
        return -errno.ENOEXEC if err == errno.EACCES else -err
    return returncode


def result_of_exec_error(err: int) -> int:
    return -errno.ENOEXEC if err == errno.EACCES else -err


@dataclass(frozen=True)
class ScriptResult:
    name: str                 # "10.interface"
    result: int               # CTDB's integer, see status_of()
    begin: float              # wall clock, epoch seconds
    end: float
    output: str = ""          # stdout+stderr, at most output_limit bytes
    returncode: int | None = None   # as Popen: exit code, or -signal; None if not reaped/run

    @property
    def status(self) -> ScriptStatus:
        return status_of(self.result)

    @property
    def failed(self) -> bool:
        """Whether this result stops the chain (DISABLED does not)."""
        return self.result != 0 and self.result != -errno.ENOEXEC

    @property
    def duration(self) -> float:
        return self.end - self.begin


@dataclass(frozen=True)
class EventResult:
    event: str
    args: tuple[str, ...]
    summary: int              # 0, the failing script's result, -ETIMEDOUT, or -ECANCELED
    scripts: tuple[ScriptResult, ...]
    begin: float
    end: float

    @property
    def ok(self) -> bool:
        return self.summary == 0

    @property
    def cancelled(self) -> bool:
        return self.summary == -errno.ECANCELED

    @property
    def timed_out(self) -> bool:
        return self.summary == -errno.ETIMEDOUT

    @property
    def failed_script(self) -> ScriptResult | None:
        for script in self.scripts:
            if script.failed:
                return script
        return None


@dataclass
class _Request:
    event: str
    args: tuple[str, ...]
    timeout: float | None
    run_all: bool
    future: asyncio.Future[EventResult]
    cancel: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def is_monitor(self) -> bool:
        return self.event == MONITOR


class _OutputCollector:
    """Reads a script's output pipe from the event loop, keeping the first ``limit`` bytes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, limit: int) -> None:
        self._loop = loop
        self._fd = fd
        self._limit = limit
        self._data = bytearray()
        self._open = True
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._read_available)

    def _read_available(self) -> None:
        for _ in range(_READS_PER_WAKEUP):
            if not self._open:
                return
            try:
                chunk = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            if not chunk:
                self.close()
                return
            room = self._limit - len(self._data)
            if room > 0:
                self._data += chunk[:room]

    def finish(self) -> str:
        """Take what is in the pipe now (the script has exited or timed out) and close it;
        a grandchild that still holds the pipe does not delay the result (as in CTDB)."""
        self._read_available()
        self.close()
        return self.text()

    def snapshot(self) -> str:
        """What the script wrote so far, leaving the pipe open and read: a timed-out script
        must not die of SIGPIPE on its next write (its shell reports a killed child on stderr)
        before its SIGTERM trap runs, as it would if the pipe were closed; ctdb-eventd keeps
        reading too."""
        self._read_available()
        return self.text()

    def text(self) -> str:
        return self._data.decode("utf-8", errors="replace").replace("\0", "")

    def close(self) -> None:
        if self._open:
            self._open = False
            self._loop.remove_reader(self._fd)
            os.close(self._fd)


def _check_word(what: str, value: str) -> None:
    if not isinstance(value, str) or not value or "\0" in value:
        raise ValueError(f"invalid {what} {value!r}: must be a non-empty string without NUL")


def _killpg(pgid: int, sig: int) -> bool:
    """Signal a process group; False if it no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("not allowed to signal process group %d", pgid)
        return False


class EventRunner:
    """Runs the event scripts of ``script_dir`` with CTDB's serialization rules.

    ``env`` is layered over the daemon's own environment; the runner adds ``CTDB_BASE`` (the
    directory two levels above ``script_dir``, i.e. /etc/ctdb for /etc/ctdb/events/legacy) and
    ``CTDB_DEBUGLEVEL`` (NOTICE) unless given, and ``CTDB_SCRIPT_VARDIR`` when ``vardir`` is set.
    With ``replacements``, Debian's stock scripts named there run as pyctdbd's own (see stock.py).
    """

    def __init__(self, script_dir: str | os.PathLike[str], *,
                 env: Mapping[str, str] | None = None,
                 vardir: str | os.PathLike[str] | None = None,
                 debug_script: str | os.PathLike[str] | None = None,
                 kill_grace: float = DEFAULT_KILL_GRACE,
                 output_limit: int = OUTPUT_LIMIT,
                 replacements: StockReplacements | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.script_dir = Path(script_dir)
        self.replacements = replacements
        self._announced_replacements: set[Path] = set()
        self.vardir = Path(vardir) if vardir is not None else None
        self.debug_script = Path(debug_script) if debug_script is not None else None
        self.kill_grace = kill_grace
        self.output_limit = output_limit
        self._clock = clock
        self.env = self._build_env(env)
        self._queue: deque[_Request] = deque()
        self._current: _Request | None = None
        self._worker: asyncio.Task[None] | None = None
        self._last: dict[str, EventResult] = {}
        self._background: set[asyncio.Future] = set()
        self._live_groups: set[int] = set()      # timed-out process groups not yet SIGKILLed
        self._closed = False

    def _build_env(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in (extra or {}).items():
            if not key or "=" in key or "\0" in key or "\0" in str(value):
                raise ValueError(f"invalid environment variable {key!r}={value!r}")
            env[key] = str(value)
        env.setdefault("CTDB_BASE", str(self.script_dir.parent.parent))
        env.setdefault("CTDB_DEBUGLEVEL", "NOTICE")
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        if self.vardir is not None:
            env["CTDB_SCRIPT_VARDIR"] = str(self.vardir)
        return env

    # -- queries and script management -------------------------------------------------------
    def script_list(self) -> list[ScriptInfo]:
        return list_scripts(self.script_dir)

    def enable_script(self, name: str) -> None:
        set_script_enabled(self.script_dir, name, True)

    def disable_script(self, name: str) -> None:
        set_script_enabled(self.script_dir, name, False)

    def last_result(self, event: str) -> EventResult | None:
        """The last completed (not cancelled) run of ``event``, as ``ctdb event status`` shows."""
        return self._last.get(event)

    @property
    def running_event(self) -> str | None:
        return self._current.event if self._current is not None else None

    @property
    def queued_events(self) -> list[str]:
        return [r.event for r in self._queue]

    # -- running ------------------------------------------------------------------------------
    async def run(self, event: str, args: Sequence[str] = (), timeout: float | None = 30.0, *,
                  run_all: bool = False) -> EventResult:
        """Run ``event``; see the module docstring for the rules. Raises ``EventScriptError``
        when the script directory cannot be read, ``ValueError`` on bad arguments."""
        _check_word("event", event)
        args = tuple(args)
        for arg in args:
            _check_word("argument", arg)
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, not {timeout}")
        if self._closed:
            raise EventScriptError(errno.ESHUTDOWN, "event runner is closed")
        loop = asyncio.get_running_loop()

        current = self._current
        if current is not None:
            if current.is_monitor:
                log.debug("%s event cancels the running monitor event", event)
                self._cancel_current()
            elif event == MONITOR:
                log.debug("monitor event dropped: %s event is running", current.event)
                now = self._clock()
                return EventResult(event, args, -errno.ECANCELED, (), now, now)

        request = _Request(event, args, timeout, run_all, loop.create_future())
        self._queue.append(request)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work(), name="event-runner")
        # The event completes even if our caller goes away (as in eventd).
        return await asyncio.shield(request.future)

    def _cancel_current(self) -> None:
        if self._current is not None:
            self._current.cancel.set()
            self._current = None            # as run_event_cancel(): nothing runs any more

    async def _work(self) -> None:
        while self._queue:
            request = self._queue.popleft()
            self._current = request
            try:
                result = await self._execute(request)
            except asyncio.CancelledError:
                if not request.future.done():
                    request.future.set_exception(
                        EventScriptError(errno.ESHUTDOWN, "event runner is closed"))
                raise
            except EventScriptError as exc:
                if not request.future.done():
                    request.future.set_exception(exc)
            except Exception as exc:    # a bug here must not kill the queue
                log.exception("running %s event failed", request.event)
                if not request.future.done():
                    request.future.set_exception(exc)
            else:
                if not result.cancelled:
                    self._last[request.event] = result
                if not request.future.done():
                    request.future.set_result(result)
            finally:
                if self._current is request:
                    self._current = None

    async def _execute(self, request: _Request) -> EventResult:
        loop = asyncio.get_running_loop()
        begin = self._clock()
        scripts = self._scripts_to_run()
        if self.vardir is not None:
            self.vardir.mkdir(parents=True, exist_ok=True)
        deadline = None if request.timeout is None else loop.time() + request.timeout
        log.debug("Running event %s with args %r", request.event, request.args)

        results: list[ScriptResult] = []
        summary = 0
        for info in scripts:
            if request.cancel.is_set():
                return EventResult(request.event, request.args, -errno.ECANCELED,
                                   tuple(results), begin, self._clock())
            script = await self._run_script(info, request, deadline)
            if script is None:          # cancelled while it ran
                return EventResult(request.event, request.args, -errno.ECANCELED,
                                   tuple(results), begin, self._clock())
            results.append(script)
            if script.failed:
                summary = script.result
                if not request.run_all:
                    break
        if summary != 0:
            log.warning("%s event %s", request.event,
                        "timed out" if summary == -errno.ETIMEDOUT else "failed")
        return EventResult(request.event, request.args, summary, tuple(results), begin,
                           self._clock())

    def _scripts_to_run(self) -> list[ScriptInfo]:
        scripts = list_scripts(self.script_dir)
        if self.replacements is None:
            return scripts
        chosen = [self.replacements.apply(info) for info in scripts]
        for listed, info in zip(scripts, chosen):
            if info is not listed and info.path not in self._announced_replacements:
                self._announced_replacements.add(info.path)
                log.log(NOTICE, "Running %s in place of Debian's %s", info.path, listed.path)
        return chosen

    async def _run_script(self, info: ScriptInfo, request: _Request,
                          deadline: float | None) -> ScriptResult | None:
        loop = asyncio.get_running_loop()
        begin = self._clock()

        def finished(result: int, output: str = "", returncode: int | None = None) -> ScriptResult:
            return ScriptResult(info.name, result, begin, self._clock(), output, returncode)

        try:
            st = os.stat(info.path)
        except OSError as exc:          # dangling symlink or vanished: CTDB reports -errno
            return finished(-(exc.errno or errno.EIO))
        if not st.st_mode & stat.S_IXUSR:
            return finished(-errno.ENOEXEC)
        if deadline is not None and loop.time() >= deadline:
            return finished(-errno.ETIMEDOUT)

        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            # Started off the loop (daemon/spawn: the loop must not wait for the exec).
            proc = await start_child(
                [info.name, request.event, *request.args],
                executable=str(info.path), stdout=write_fd, stderr=write_fd, env=self.env,
                cwd="/", new_process_group=True)
        except OSError as exc:
            os.close(read_fd)
            return finished(result_of_exec_error(exc.errno or errno.EIO))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)

        collector = _OutputCollector(loop, read_fd, self.output_limit)
        exited = watch_exit(proc)
        self._keep(exited)
        cancelled = loop.create_task(request.cancel.wait())
        try:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            await asyncio.wait({exited, cancelled}, timeout=remaining,
                               return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:          # runner closing
            _killpg(proc.pid, signal.SIGKILL)
            collector.close()
            raise
        finally:
            cancelled.cancel()

        if exited.done():
            output = collector.finish()
            returncode = exited.result()
            script = finished(result_of_returncode(returncode), output, returncode)
            self._log_output(script)
            return script
        if request.cancel.is_set():
            _killpg(proc.pid, signal.SIGKILL)   # as CTDB's proc_destructor
            collector.close()
            return None
        script = finished(-errno.ETIMEDOUT, collector.snapshot())
        self._log_output(script)
        self._keep(loop.create_task(self._stop_timed_out(proc.pid, request.event, collector)))
        return script

    def _log_output(self, script: ScriptResult) -> None:
        level = logging.WARNING if script.failed else logging.INFO
        for line in script.output.splitlines():
            log.log(level, "%s: %s", script.name, line)

    async def _stop_timed_out(self, pgid: int, event: str, output: _OutputCollector) -> None:
        """Debug script (if any), then SIGTERM the group, then SIGKILL after the grace; the
        group's output pipe is drained until then."""
        self._live_groups.add(pgid)
        try:
            if self.debug_script is not None:
                await self._run_debug_script(pgid, event)
            if _killpg(pgid, signal.SIGTERM):
                await asyncio.sleep(self.kill_grace)
                _killpg(pgid, signal.SIGKILL)
        finally:
            self._live_groups.discard(pgid)
            output.close()

    async def _run_debug_script(self, pid: int, event: str) -> None:
        try:
            proc = await spawn.start([str(self.debug_script), str(pid), event], stdout=True,
                                     stderr="stdout", env=self.env, cwd="/",
                                     new_process_group=True)
        except OSError as exc:
            log.warning("cannot run debug script %s: %s", self.debug_script, exc.strerror)
            return

        async def output() -> bytes:
            assert proc.stdout is not None
            out = await proc.stdout.read()
            await proc.wait()
            return out

        try:
            out = await asyncio.wait_for(output(), DEBUG_SCRIPT_TIMEOUT)
        except asyncio.TimeoutError:
            _killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            log.warning("debug script %s timed out", self.debug_script)
            return
        for line in out.decode(errors="replace").splitlines():
            log.error("event_debug: %s", line)

    def _keep(self, task: asyncio.Future) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- shutdown -----------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop: queued events fail with ESHUTDOWN, the running one is killed (SIGKILL to its
        group), timed-out groups still waiting for their SIGKILL get it now."""
        self._closed = True
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(
                    EventScriptError(errno.ESHUTDOWN, "event runner is closed"))
        worker = self._worker
        if worker is not None and not worker.done():
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
        for pgid in list(self._live_groups):
            _killpg(pgid, signal.SIGKILL)
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def format_status(result: EventResult | None, event: str, component: str = "legacy") -> str:
    """Text as ``ctdb event status <component> <event>`` prints it (for logs and tests)."""
    if result is None:
        return f"Event {event} has never run in {component}\n"
    lines = []
    for s in result.scripts:
        stamp = time.ctime(int(s.begin))
        st = s.status
        if st is ScriptStatus.TIMEDOUT:
            lines.append(f"{s.name:<20} {'TIMEDOUT':<10} {stamp}")
        elif st is ScriptStatus.DISABLED:
            lines.append(f"{s.name:<20} {'DISABLED':<10}")
        elif st is ScriptStatus.CANNOT_RUN:
            lines.append(f"{s.name:<20} {'CANNOT RUN':<10} ({os.strerror(-s.result)})")
        else:
            lines.append(f"{s.name:<20} {st.value:<10} {s.duration:.3f} {stamp}")
        if st is not ScriptStatus.OK and st is not ScriptStatus.DISABLED:
            lines.append(f"  OUTPUT: {s.output}")
    return "".join(line + "\n" for line in lines)
