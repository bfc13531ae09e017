"""tcp_listener probe (runs inside cluster *nodes*): accept and hold connections, never answer.

    python -m ctdblab.scenarios.probes.tcp_listener --port 7777 [--port 7778 ...]
        [--bind 0.0.0.0] [--freebind] [--greeting TEXT] [--process NAME]

One thread, one epoll selector: listening sockets, accepted connections and the stop pipe.
Incoming bytes are read and thrown away (so a busy client never fills our receive window);
nothing is ever sent except the optional greeting line right after accept.

Events (``kind: capture``, ``probe: tcp_listener``):

``listening``  once: ``ports``, ``bind``
``accepted``   per connection: ``conn`` (a running number), ``local_ip``, ``local_port``,
               ``remote_ip``, ``remote_port``, ``open`` (connections held now)
``closed``     the peer went away: ``conn``, ``how`` (eof|reset|error), ``held_s``, ``errno``
``error``      accept failed (``errno``, ``error``); on EMFILE accepting pauses 0.1 s
``stop``       once at the end: ``accepted`` (total) and ``open``
"""

from __future__ import annotations

import argparse
import errno as errno_mod
import resource
import selectors
import socket
import time
from dataclasses import dataclass

from .common import (STOP, Emitter, Waker, add_process_option, describe_error, install_stop_signals,
                     ipv4_address, port_number, run_main)

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
# accept() errors that mean "out of a resource right now": pause instead of spinning.
RESOURCE_ERRNOS = {errno_mod.EMFILE, errno_mod.ENFILE, errno_mod.ENOBUFS, errno_mod.ENOMEM}
ACCEPT_PAUSE_S = 0.1


@dataclass
class Held:
    conn: int
    sock: socket.socket
    since: float


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def open_listener(bind: str, port: int, freebind: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if freebind:
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    sock.bind((bind, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


class Listener:
    def __init__(self, out: Emitter, waker: Waker, listeners: list[socket.socket],
                 greeting: bytes | None):
        self.out = out
        self.waker = waker
        self.listeners = listeners
        self.greeting = greeting
        self.selector = selectors.DefaultSelector()
        self.held: dict[int, Held] = {}   # by fd
        self.accepted = 0
        self.paused_until: float | None = None
        self.last_error_report = 0.0

    def run(self) -> None:
        self.selector.register(self.waker.fileno(), selectors.EVENT_READ, "waker")
        self._listen(True)
        while True:
            timeout = None
            if self.paused_until is not None:
                timeout = max(0.0, self.paused_until - time.monotonic())
            for key, _ in self.selector.select(timeout):
                if key.data == "waker":
                    if STOP in self.waker.drain():
                        return
                elif key.data == "listener":
                    self._accept(key.fileobj)  # type: ignore[arg-type]
                else:
                    self._readable(key.data)
            if self.paused_until is not None and time.monotonic() >= self.paused_until:
                self.paused_until = None
                self._listen(True)

    def close(self) -> None:
        for held in self.held.values():
            held.sock.close()
        for sock in self.listeners:
            sock.close()
        self.selector.close()

    def _listen(self, on: bool) -> None:
        for sock in self.listeners:
            if on:
                self.selector.register(sock, selectors.EVENT_READ, "listener")
            else:
                self.selector.unregister(sock)

    def _accept(self, listener: socket.socket) -> None:
        # Drain the backlog: many clients may connect at once.
        for _ in range(256):
            try:
                sock, _peer = listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in RESOURCE_ERRNOS:
                    self._report_error(e)
                    self._listen(False)
                    self.paused_until = time.monotonic() + ACCEPT_PAUSE_S
                    return
                if e.errno == errno_mod.ECONNABORTED:
                    continue
                self._report_error(e)
                return
            t = time.time()
            sock.setblocking(False)
            self.accepted += 1
            conn = self.accepted
            local, remote = sock.getsockname(), sock.getpeername()
            if self.greeting:
                try:
                    sock.send(self.greeting)
                except OSError:
                    pass  # the peer is already gone; we will see it as closed below
            self.held[sock.fileno()] = Held(conn, sock, t)
            self.selector.register(sock, selectors.EVENT_READ, sock.fileno())
            self.out.capture("accepted", t=t, conn=conn, local_ip=local[0], local_port=local[1],
                             remote_ip=remote[0], remote_port=remote[1], open=len(self.held))

    def _readable(self, fd: int) -> None:
        held = self.held[fd]
        how, code = None, None
        try:
            while True:
                data = held.sock.recv(65536)
                if not data:
                    how = "eof"
                    break
        except BlockingIOError:
            return  # bytes thrown away; still held
        except ConnectionResetError as e:
            how, code = "reset", e.errno
        except OSError as e:
            how, code = "error", e.errno
        t = time.time()
        self.selector.unregister(held.sock)
        del self.held[fd]
        held.sock.close()
        fields = {"errno": code} if code is not None else {}
        self.out.capture("closed", t=t, conn=held.conn, how=how, held_s=round(t - held.since, 6),
                         open=len(self.held), **fields)

    def _report_error(self, e: OSError) -> None:
        now = time.monotonic()
        if now - self.last_error_report >= 1.0:   # at most one line a second
            self.last_error_report = now
            self.out.capture("error", errno=e.errno, error=describe_error(e), open=len(self.held))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctdblab.scenarios.probes.tcp_listener",
                                     description="accept and hold TCP connections, never answer")
    parser.add_argument("--port", type=port_number, action="append", required=True,
                        help="port to listen on; repeat for several")
    parser.add_argument("--bind", type=ipv4_address, default="0.0.0.0",
                        help="address to bind (default 0.0.0.0: also every IP taken over later)")
    parser.add_argument("--freebind", action="store_true",
                        help="IP_FREEBIND: bind an address this node does not hold (yet)")
    parser.add_argument("--greeting", default=None,
                        help="send this line (plus newline) to each accepted connection")
    add_process_option(parser, "tcp_listener")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    waker = Waker()
    out = Emitter("tcp_listener", args.process, on_broken=lambda: waker.post(STOP))
    install_stop_signals(waker)
    raise_fd_limit()
    listeners: list[socket.socket] = []
    try:
        for port in dict.fromkeys(args.port):
            listeners.append(open_listener(args.bind, port, args.freebind))
    except OSError as e:
        for sock in listeners:
            sock.close()
        out.capture("error", error=f"cannot listen on {args.bind}:{port}: {describe_error(e)}",
                    errno=e.errno)
        return 1
    greeting = (args.greeting + "\n").encode() if args.greeting is not None else None
    listener = Listener(out, waker, listeners, greeting)
    out.capture("listening", ports=list(dict.fromkeys(args.port)), bind=args.bind)
    try:
        listener.run()
    finally:
        out.capture("stop", accepted=listener.accepted, open=len(listener.held))
        listener.close()
    return 0


if __name__ == "__main__":
    run_main(main)
