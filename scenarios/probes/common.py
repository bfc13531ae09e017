"""Plumbing shared by the probes: JSON-lines output, stop/trigger signals, common options.

Output: one JSON object per line on stdout, written under a lock and flushed at once, so the
orchestrator (reading a pipe with ``bufsize=0``) sees each event as it happens.  Every event has
``t`` (``time.time()``, epoch seconds; all network namespaces share the clock) and ``kind``.

Signals: the main thread of a probe sleeps in :meth:`Waker.wait`; signal handlers and worker
threads wake it through a pipe.  SIGTERM and SIGINT ask the probe to stop; SIGUSR1 is the
trigger of ``smb_retry``.  Nothing blocks the main thread anywhere else, so a probe always
answers SIGTERM promptly.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterable, TextIO

from ctdblab import events
from ctdblab.events import Event


class Emitter:
    """Writes history events (built by ``ctdblab.events``) as JSON lines; thread-safe; survives
    a closed pipe."""

    def __init__(self, probe: str, process: str, stream: TextIO | None = None,
                 on_broken: Callable[[], None] | None = None):
        self.probe = probe
        self.process = process
        self._stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()
        self.broken = False
        # Called once when stdout breaks: nobody can read us any more, so probes stop.
        self.on_broken = on_broken

    def write(self, event: Event) -> Event:
        line = json.dumps(event, sort_keys=True, default=str)
        newly_broken = False
        with self._lock:
            if not self.broken:
                try:
                    self._stream.write(line + "\n")
                    self._stream.flush()
                except (BrokenPipeError, ValueError, OSError):
                    # The orchestrator went away (or closed our stdout).
                    self.broken = newly_broken = True
        if newly_broken and self.on_broken is not None:
            self.on_broken()
        return event

    def capture(self, what: str, t: float | None = None, **fields: Any) -> Event:
        """A ``capture`` event of this probe."""
        return self.write(events.capture(self.probe, self.process, what, t=t, **fields))

    def note(self, text: str, **fields: Any) -> Event:
        return self.write(events.note(text, probe=self.probe, process=self.process, **fields))


class OpRecorder:
    """Numbers operations and emits their ``op`` events (invoke, then exactly one ok or fail)."""

    def __init__(self, emitter: Emitter, f: str, target: str, role: str | None):
        self.emitter = emitter
        self.f = f
        self.target = target
        self.role = role
        self._ids = iter(range(1, 1 << 62))
        self._lock = threading.Lock()

    def _common(self) -> dict[str, Any]:
        return {"target": self.target, "role": self.role, "probe": self.emitter.probe}

    def invoke(self, t: float | None = None, **fields: Any) -> int:
        with self._lock:
            op_id = next(self._ids)
        self.emitter.write(events.op_invoke(self.emitter.process, self.f, op_id, t=t,
                                            **self._common(), **fields))
        return op_id

    def ok(self, op_id: int, latency_s: float, t: float | None = None, **fields: Any) -> None:
        self.emitter.write(events.op_ok(self.emitter.process, self.f, op_id, latency_s=latency_s,
                                        t=t, **self._common(), **fields))

    def fail(self, op_id: int, latency_s: float, error: str, t: float | None = None,
             **fields: Any) -> None:
        self.emitter.write(events.op_fail(self.emitter.process, self.f, op_id,
                                          latency_s=latency_s, error=error, t=t,
                                          **self._common(), **fields))


def describe_error(exc: BaseException) -> str:
    """``Type: text`` of an exception, as put in ``error`` fields."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Waker:
    """Wakes the main thread from signal handlers and worker threads.

    ``post(reason)`` queues a reason and writes one byte to a pipe; ``wait()`` blocks on the
    pipe and returns the queued reasons.  Writing to a pipe is safe from a signal handler,
    unlike taking the lock inside ``threading.Event.set``.
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._reasons: collections.deque[str] = collections.deque()

    def post(self, reason: str) -> None:
        self._reasons.append(reason)
        try:
            os.write(self._write_fd, b"x")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already; the reason is queued

    def wait(self, timeout: float | None = None) -> list[str]:
        """Reasons posted since the last call; blocks until there is one (or ``timeout``)."""
        import select

        while not self._reasons:
            ready, _, _ = select.select([self._read_fd], [], [], timeout)
            if ready:
                self._empty_pipe()
            elif timeout is not None:
                break
        return self.drain()

    def fileno(self) -> int:
        """The pipe's read end, for callers that wait in their own selector."""
        return self._read_fd

    def drain(self) -> list[str]:
        """Reasons posted so far, without blocking."""
        self._empty_pipe()
        reasons = []
        while self._reasons:
            reasons.append(self._reasons.popleft())
        return reasons

    def _empty_pipe(self) -> None:
        try:
            while os.read(self._read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


STOP = "stop"


def install_stop_signals(waker: Waker, extra: Callable[[int], None] | None = None) -> None:
    """SIGTERM and SIGINT post ``stop`` to ``waker`` (and call ``extra(signum)`` first)."""

    def on_signal(signum: int, _frame: object) -> None:
        if extra is not None:
            extra(signum)
        waker.post(STOP)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port out of range 1..65535: {text!r}")
    return value


def ipv4_address(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IPv4 address: {text!r}") from None


def host_port(text: str) -> tuple[str, int]:
    """``IP:PORT`` → ``(ip, port)``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected IP:PORT, got {text!r}")
    return ipv4_address(host), port_number(port)


def add_process_option(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--process", default=default,
                        help=f"name of this client process in the history (default: {default})")


def run_main(main: Callable[[list[str] | None], int], argv: Iterable[str] | None = None) -> None:
    """Entry point wrapper: exit status from ``main``; a closed stdout is not an error."""
    try:
        status = main(None if argv is None else list(argv))
    except BrokenPipeError:
        status = 0
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError, OSError):
        # Silence the interpreter's own flush at exit on a pipe nobody reads.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(status)
