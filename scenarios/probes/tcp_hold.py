"""tcp_hold probe: TCP connections that sit blocked in recv() until something happens to them.

    python -m ctdblab.scenarios.probes.tcp_hold IP:PORT [IP:PORT ...] [--greeting]
        [--local-ip IP] [--local-port N ...] [--connect-timeout 2] [--hold-timeout S]
        [--send-interval S] [--process NAME]

One thread per target.  Events (``kind: capture``, ``probe: tcp_hold``; ``conn`` = index of the
target on the command line, ``target`` = ``IP:PORT``):

``connected``  ``local_ip``, ``local_port``, ``remote_ip``, ``remote_port`` (what
               ``ctdb addtickle`` needs), ``connect_s``, ``greeting`` (with ``--greeting``)
``data``       bytes arrived while holding (``bytes``); the connection is still held
then exactly one final event per connection, ``t`` = the moment it happened:
``reset``      ECONNRESET (``errno``, ``error``)
``eof``        the peer closed (FIN)
``timeout``    ``--hold-timeout`` seconds passed with the connection still open
``error``      anything else (``phase``: connect|greeting|recv|send, ``errno`` when known)
``stopped``    the probe was told to stop (SIGTERM/SIGINT) while the connection was still held

With ``--send-interval S`` the connection sends one byte every S seconds (a "busy" client, which
learns of a moved IP from its own retransmissions instead of a tickle ACK).  The probe exits
by itself once every connection has its final event, after a ``stop`` event.
"""

from __future__ import annotations

import argparse
import errno as errno_mod
import select
import socket
import threading
import time
from typing import Any

from .common import (STOP, Emitter, Waker, add_process_option, describe_error, host_port,
                     install_stop_signals, ipv4_address, port_number, positive_float, run_main)

FINAL_EVENTS = ("reset", "eof", "timeout", "error", "stopped")
GREETING_MAX = 1024


class HeldConnection(threading.Thread):
    """One connection: connect, optionally read a greeting, then hold it and report its end."""

    def __init__(self, index: int, target: tuple[str, int], out: Emitter, waker: Waker, *,
                 local_ip: str | None, local_port: int | None, connect_timeout: float,
                 greeting: bool, greeting_timeout: float, hold_timeout: float | None,
                 send_interval: float | None):
        super().__init__(name=f"tcp_hold-{index}", daemon=True)
        self.index = index
        self.target = target
        self.out = out
        self.waker = waker
        self.local_ip = local_ip
        self.local_port = local_port
        self.connect_timeout = connect_timeout
        self.greeting = greeting
        self.greeting_timeout = greeting_timeout
        self.hold_timeout = hold_timeout
        self.send_interval = send_interval
        self._final_lock = threading.Lock()
        self.final: str | None = None

    @property
    def target_text(self) -> str:
        return f"{self.target[0]}:{self.target[1]}"

    def finish(self, what: str, t: float | None = None, **fields: Any) -> bool:
        """Emit the one final event of this connection; later calls do nothing. The event is
        written before `final` is set, under the lock: main() ends the process once every
        connection has a final, and a final set before its line was written lost the line."""
        with self._final_lock:
            if self.final is not None:
                return False
            self.out.capture(what, t=t, conn=self.index, target=self.target_text, **fields)
            self.final = what
        self.waker.post(f"done-{self.index}")
        return True

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:  # a bug must still end the connection's story
            self.finish("error", phase="probe", error=describe_error(e))

    def _run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if self.local_ip or self.local_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.local_ip or "0.0.0.0", self.local_port or 0))
            sock.settimeout(self.connect_timeout)
            began = time.time()
            try:
                sock.connect(self.target)
            except OSError as e:
                self._os_error(e, "connect")
                return
            connect_s = time.time() - began
            sock.settimeout(None)
            local = sock.getsockname()
            remote = sock.getpeername()
            info: dict[str, Any] = {"local_ip": local[0], "local_port": local[1],
                                    "remote_ip": remote[0], "remote_port": remote[1],
                                    "connect_s": round(connect_s, 6)}
            if self.greeting:
                text = self._read_greeting(sock)
                if text is None:
                    return
                info["greeting"] = text
            self.out.capture("connected", conn=self.index, target=self.target_text, **info)
            self._hold(sock, time.time())
        finally:
            sock.close()

    def _read_greeting(self, sock: socket.socket) -> str | None:
        deadline = time.monotonic() + self.greeting_timeout
        buf = b""
        while b"\n" not in buf and len(buf) < GREETING_MAX:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                self.finish("error", phase="greeting",
                            error=f"no greeting line within {self.greeting_timeout:g} s")
                return None
            try:
                chunk = sock.recv(GREETING_MAX - len(buf))
            except OSError as e:
                self._os_error(e, "greeting")
                return None
            if not chunk:
                self.finish("eof", phase="greeting")
                return None
            buf += chunk
        return buf.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")[:200]

    def _hold(self, sock: socket.socket, since: float) -> None:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        give_up = since + self.hold_timeout if self.hold_timeout else None
        next_send = since + self.send_interval if self.send_interval else None
        while True:
            now = time.time()
            waits = [x - now for x in (give_up, next_send) if x is not None]
            timeout_ms = None if not waits else max(0, int(min(waits) * 1000) + 1)
            if not poller.poll(timeout_ms):
                now = time.time()
                if give_up is not None and now >= give_up:
                    self.finish("timeout", held_s=round(now - since, 6))
                    return
                if next_send is not None and now >= next_send:
                    try:
                        sock.send(b".")
                    except OSError as e:
                        self._os_error(e, "send")
                        return
                    next_send += self.send_interval  # type: ignore[operator]
                    if next_send < now:
                        next_send = now + self.send_interval  # type: ignore[operator]
                continue
            try:
                data = sock.recv(65536)
            except OSError as e:
                self._os_error(e, "recv", held_s=round(time.time() - since, 6))
                return
            if not data:
                now = time.time()
                self.finish("eof", t=now, held_s=round(now - since, 6))
                return
            self.out.capture("data", conn=self.index, target=self.target_text, bytes=len(data))

    def _os_error(self, e: OSError, phase: str, **fields: Any) -> None:
        t = time.time()
        code = e.errno
        if isinstance(e, socket.timeout) or code is None:
            self.finish("error", t=t, phase=phase, error=describe_error(e) or "timed out",
                        **fields)
        elif code == errno_mod.ECONNRESET:
            self.finish("reset", t=t, phase=phase, errno=code, error=describe_error(e), **fields)
        else:
            self.finish("error", t=t, phase=phase, errno=code,
                        errno_name=errno_mod.errorcode.get(code, str(code)),
                        error=describe_error(e), **fields)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctdblab.scenarios.probes.tcp_hold",
                                     description="hold TCP connections blocked in recv()")
    parser.add_argument("targets", nargs="+", type=host_port, metavar="IP:PORT")
    parser.add_argument("--greeting", action="store_true",
                        help="read one greeting line after connecting (see tcp_listener --greeting)")
    parser.add_argument("--greeting-timeout", type=positive_float, default=5.0)
    parser.add_argument("--local-ip", type=ipv4_address, default=None,
                        help="source address to bind (default: the kernel's choice)")
    parser.add_argument("--local-port", type=port_number, action="append", default=[],
                        help="source port; repeat once per target, in order (default: ephemeral)")
    parser.add_argument("--connect-timeout", type=positive_float, default=2.0)
    parser.add_argument("--hold-timeout", type=positive_float, default=None,
                        help="give up (final event 'timeout') after this many seconds held")
    parser.add_argument("--send-interval", type=positive_float, default=None,
                        help="send one byte every S seconds while holding (a busy connection)")
    add_process_option(parser, "tcp_hold")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.local_port) > len(args.targets):
        parser.error(f"{len(args.local_port)} --local-port values for {len(args.targets)} targets")
    waker = Waker()
    out = Emitter("tcp_hold", args.process, on_broken=lambda: waker.post(STOP))
    install_stop_signals(waker)
    conns = [HeldConnection(i, target, out, waker,
                            local_ip=args.local_ip,
                            local_port=args.local_port[i] if i < len(args.local_port) else None,
                            connect_timeout=args.connect_timeout, greeting=args.greeting,
                            greeting_timeout=args.greeting_timeout,
                            hold_timeout=args.hold_timeout, send_interval=args.send_interval)
             for i, target in enumerate(args.targets)]
    for conn in conns:
        conn.start()
    reason = "all connections ended"
    while any(conn.final is None for conn in conns):
        if STOP in waker.wait():
            reason = "signal"
            break
    for conn in conns:
        conn.finish("stopped")
    out.capture("stop", reason=reason, finals=[conn.final for conn in conns])
    return 0


if __name__ == "__main__":
    run_main(main)
