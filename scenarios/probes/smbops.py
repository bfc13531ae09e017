"""SMB plumbing of the probes: smbprotocol's low-level API with deadlines we enforce ourselves.

smbprotocol has no request timeout (lab.md §9.3): a request to a vanished server waits for TCP
to give up (~15 min).  So every SMB step here runs under a :class:`Deadline` from one shared
:class:`Watchdog` thread; when it expires the watchdog shuts the connection's socket down, which
wakes smbprotocol's receive thread (EOF), which wakes every waiting request, which then raises
``SMBConnectionClosed`` in the caller within milliseconds.  The caller reports that as a deadline
failure (``Deadline.fired``).  A blocked TCP ``connect()`` cannot be reached that way (the socket
is not visible until connected), so the connect timeout is clamped to the deadline.

Signing stays on (``require_signing=True``): SMB 3.1.1 smbd refuses an unsigned tree connect.
Encryption is off unless asked for (it costs CPU and nothing in the measurements needs it).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from smbprotocol.connection import Connection
from smbprotocol.exceptions import EndOfFile, SMBConnectionClosed
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                              FilePipePrinterAccessMask, ImpersonationLevel, Open, ShareAccess)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from .common import add_process_option, describe_error, ipv4_address, port_number

__all__ = ["SmbTarget", "SmbClient", "Watchdog", "Deadline", "DeadlineExceeded",
           "add_smb_options", "smb_target_from_args", "failure_text", "watch_receiver"]


class _ReceiverWarnings(logging.Handler):
    """Keeps smbprotocol's receive-thread warnings, by thread, until someone asks.

    smbprotocol turns ECONNRESET into a plain EOF and only says so in a log warning
    ("socket aborted by peer (ECONNRESET), treating as EOF"); this is how we still tell an RST
    from a FIN.  Installing a handler also keeps Python's last-resort handler from printing
    those warnings on stderr.
    """

    LIMIT = 1024

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._by_thread: dict[int | None, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if len(self._by_thread) >= self.LIMIT:
            self._by_thread.clear()
        try:
            self._by_thread[record.thread] = record.getMessage()
        except Exception:
            pass  # a malformed log call must not break the receive thread

    def pop(self, thread_ident: int | None) -> str | None:
        return self._by_thread.pop(thread_ident, None)


RECEIVER_WARNINGS = _ReceiverWarnings()
_smb_logger = logging.getLogger("smbprotocol")
_smb_logger.addHandler(RECEIVER_WARNINGS)
_stderr_errors = logging.StreamHandler()
_stderr_errors.setLevel(logging.ERROR)
_stderr_errors.setFormatter(logging.Formatter("%(name)s: %(message)s"))
_smb_logger.addHandler(_stderr_errors)


class DeadlineExceeded(Exception):
    """An SMB step did not finish before its deadline (the socket was shut down)."""


@dataclass(frozen=True)
class SmbTarget:
    server: str
    share: str
    user: str
    password: str
    port: int = 445
    encrypt: bool = False

    @property
    def unc_share(self) -> str:
        return rf"\\{self.server}\{self.share}"


def add_smb_options(parser: argparse.ArgumentParser, *, process: str, role: str,
                    file_default: str | None = None) -> None:
    """The options every SMB probe shares."""
    parser.add_argument("target", type=ipv4_address, help="server IP (a public IP of the cluster)")
    parser.add_argument("--port", type=port_number, default=445)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", required=True)
    parser.add_argument("--share", default="share")
    if file_default is None:
        parser.add_argument("--file", required=True, help="file name inside the share")
    else:
        parser.add_argument("--file", default=file_default, help="file name inside the share")
    parser.add_argument("--role", choices=("victim", "survivor", "client"), default=role,
                        help=f"whose IP this is (default: {role}; client: no fault aims at it, "
                             "as in the rolling upgrade)")
    parser.add_argument("--encrypt", action="store_true",
                        help="require SMB3 encryption (default: signing only)")
    add_process_option(parser, process)


def smb_target_from_args(args: argparse.Namespace) -> SmbTarget:
    return SmbTarget(server=args.target, share=args.share, user=args.user,
                     password=args.password, port=args.port, encrypt=args.encrypt)


def failure_text(exc: BaseException, deadline: "Deadline | None") -> str:
    """The ``error`` of a failed step: the deadline if it fired, else the exception."""
    if deadline is not None and deadline.aborted:
        return f"aborted: the probe is stopping ({describe_error(exc)})"
    if deadline is not None and deadline.fired:
        return f"DeadlineExceeded: no answer within {deadline.seconds:g} s ({describe_error(exc)})"
    return describe_error(exc)


def shutdown_connection(conn: Connection | None) -> None:
    """Wake everything blocked on ``conn`` by shutting its socket down (never blocks)."""
    transport = getattr(conn, "transport", None)
    sock = getattr(transport, "_sock", None)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected (yet) or already closed


class Deadline:
    """A registered deadline on one connection; use as a context manager."""

    def __init__(self, watchdog: "Watchdog", conn: Connection, seconds: float):
        self.watchdog = watchdog
        self.conn = conn
        self.seconds = seconds
        self.expires = time.monotonic() + seconds
        self.fired = False     # the socket was shut down (deadline passed, or aborted)
        self.aborted = False   # ... because the probe is stopping, not because of the server
        self.done = False

    def remaining(self) -> float:
        return self.expires - time.monotonic()

    def check(self) -> None:
        if self.fired:
            raise DeadlineExceeded(f"no answer within {self.seconds:g} s")

    def __enter__(self) -> "Deadline":
        self.expires = time.monotonic() + self.seconds   # the clock starts when the step does
        self.watchdog._add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.done = True


class Watchdog:
    """One thread that shuts down the sockets of connections whose deadline passed.

    It sleeps on a condition until the earliest deadline, so it costs nothing while idle.
    :meth:`abort_all` fires every pending deadline at once (used when a probe stops).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._closed = False
        self._aborting = False   # after abort_all(), new steps are refused at once
        self._thread = threading.Thread(target=self._run, name="smb-watchdog", daemon=True)
        self._thread.start()

    def guard(self, conn: Connection, seconds: float) -> Deadline:
        return Deadline(self, conn, seconds)

    def _add(self, deadline: Deadline) -> None:
        with self._cond:
            if self._aborting:
                deadline.fired = deadline.aborted = True
                return
            heapq.heappush(self._heap, (deadline.expires, next(self._seq), deadline))
            self._cond.notify()

    def abort(self, deadline: Deadline) -> None:
        """Fire one deadline now (the probe no longer wants that step)."""
        with self._cond:
            if deadline.done or deadline.fired:
                return
            deadline.fired = deadline.aborted = True
        shutdown_connection(deadline.conn)

    def abort_all(self) -> int:
        """Fire every pending deadline now, and refuse new ones; returns how many there were."""
        with self._cond:
            self._aborting = True
            pending = [d for _, _, d in self._heap if not d.done and not d.fired]
            for d in pending:
                d.fired = d.aborted = True
        for d in pending:
            shutdown_connection(d.conn)
        return len(pending)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            expired: list[Deadline] = []
            with self._cond:
                while not self._closed:
                    while self._heap and self._heap[0][2].done:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait > 0:
                        self._cond.wait(wait)
                        continue
                    break
                if self._closed:
                    return
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, _, d = heapq.heappop(self._heap)
                    if not d.done and not d.fired:
                        d.fired = True
                        expired.append(d)
            for d in expired:
                shutdown_connection(d.conn)


def _new_connection(target: SmbTarget) -> Connection:
    return Connection(uuid.uuid4(), target.server, target.port, require_signing=True)


class SmbClient:
    """One SMB connection+session+tree, built step by step under a deadline.

    ``phase`` names the step in progress, so a failure says where it happened:
    connect (TCP + negotiate), session, tree, open, read, close.
    """

    def __init__(self, target: SmbTarget, watchdog: Watchdog):
        self.target = target
        self.watchdog = watchdog
        self.conn: Connection = _new_connection(target)
        self.session: Session | None = None
        self.tree: TreeConnect | None = None
        self.phase = "init"
        self.timings: dict[str, float] = {}   # seconds spent in each finished phase
        self._phase_began: float | None = None

    def _enter(self, phase: str) -> None:
        now = time.monotonic()
        self.end_phase(now)
        self.phase = phase
        self._phase_began = now

    def end_phase(self, now: float | None = None) -> None:
        """Book the time of the phase in progress (call once the last step returned)."""
        if self._phase_began is not None:
            now = time.monotonic() if now is None else now
            self.timings[self.phase] = round(self.timings.get(self.phase, 0.0)
                                             + now - self._phase_began, 6)
            self._phase_began = None

    def connect(self, deadline: Deadline, connect_timeout: float) -> None:
        """TCP connect (own timeout, at most the time left) + negotiate + session + tree."""
        self._enter("connect")
        deadline.check()
        tcp_timeout = max(0.01, min(connect_timeout, deadline.remaining()))
        self.conn.connect(timeout=tcp_timeout)
        deadline.check()
        self._enter("session")
        self.session = Session(self.conn, self.target.user, self.target.password,
                               require_encryption=self.target.encrypt)
        self.session.connect()
        deadline.check()
        self._enter("tree")
        self.tree = TreeConnect(self.session, self.target.unc_share)
        self.tree.connect()
        deadline.check()

    def open(self, name: str, deadline: Deadline) -> Open:
        assert self.tree is not None, "connect() first"
        self._enter("open")
        handle = Open(self.tree, name)
        handle.create(ImpersonationLevel.Impersonation,
                      FilePipePrinterAccessMask.GENERIC_READ,
                      FileAttributes.FILE_ATTRIBUTE_NORMAL,
                      ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE
                      | ShareAccess.FILE_SHARE_DELETE,
                      CreateDisposition.FILE_OPEN,
                      CreateOptions.FILE_NON_DIRECTORY_FILE)
        deadline.check()
        return handle

    def read(self, handle: Open, offset: int, length: int, deadline: Deadline) -> int:
        """Read up to ``length`` bytes from ``offset`` (stops early at end of file)."""
        self._enter("read")
        chunk_max = max(1, min(self.conn.max_read_size or 65536, 8 << 20))
        done = 0
        while done < length:
            chunk = min(chunk_max, length - done)
            try:
                data = handle.read(offset + done, chunk)
            except EndOfFile:
                break
            deadline.check()
            if not data:
                break
            done += len(data)
            if len(data) < chunk:
                break
        return done

    def close_file(self, handle: Open, deadline: Deadline) -> None:
        self._enter("close")
        handle.close()
        deadline.check()

    def local_address(self) -> tuple[str, int] | None:
        sock = getattr(self.conn.transport, "_sock", None)
        try:
            return sock.getsockname() if sock is not None else None
        except OSError:
            return None

    def drop(self) -> None:
        """Close the TCP connection without logoff (never waits for the server)."""
        transport = getattr(self.conn, "transport", None)
        if transport is None:
            return
        shutdown_connection(self.conn)
        try:
            self.conn.disconnect(close=False)
        except Exception:
            pass  # the connection is dead either way; nothing left to release


def is_connection_closed(exc: BaseException) -> bool:
    return isinstance(exc, SMBConnectionClosed)


def connection_info(client: SmbClient) -> dict[str, Any]:
    local = client.local_address()
    return {"local_ip": local[0], "local_port": local[1]} if local else {}


def watch_receiver(client: SmbClient, on_end: Callable[[float, str, str | None], None]) -> None:
    """Call ``on_end(t, how, detail)`` from a helper thread when the connection's receive
    thread ends: that is the moment smbprotocol saw the socket die.

    ``how`` is ``reset`` (ECONNRESET), ``eof`` (FIN, or our own shutdown) or ``error`` (the
    receive thread raised; ``detail`` is its exception).
    """
    worker = getattr(client.conn, "_t_worker", None)
    if worker is None:
        raise RuntimeError("watch_receiver() needs a connected SmbClient")

    def wait_for_end() -> None:
        worker.join()
        t = time.time()
        warning = RECEIVER_WARNINGS.pop(worker.ident)
        failure = getattr(client.conn, "_t_exc", None)
        if failure is not None:
            on_end(t, "error", describe_error(failure))
        elif warning and "ECONNRESET" in warning:
            on_end(t, "reset", warning)
        else:
            on_end(t, "eof", warning)

    threading.Thread(target=wait_for_end, name="smb-receiver-watch", daemon=True).start()
