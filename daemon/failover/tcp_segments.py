"""Hand-made TCP segments (tickle ACKs and spoofed RSTs) from persistent raw IP sockets.

A tickle ACK goes from public-IP:port to the client (ACK only, seq 0, ack 0, window 1234,
TTL 255). The client, whose connection was served by the old owner, answers with a
challenge ACK carrying its real numbers; the new owner's kernel has no socket for it and
resets the connection with exactly the right sequence number. The caller must have sent the
gratuitous ARP first, or the client's answer goes to the dead owner's MAC.

Sockets: IPv4 ``SOCK_RAW/IPPROTO_RAW`` with ``IP_HDRINCL`` (the kernel fills in the IP id
and checksum), IPv6 ``SOCK_RAW/IPPROTO_RAW`` (header included implicitly on Linux). Both are
opened on first use, kept, and non-blocking. Source addresses are not checked by the kernel,
so sending works whether or not this node holds the public IP yet.
"""

from __future__ import annotations

import socket

from .errors import FailoverError
from .netns import NetnsGuard
from .packets import Endpoint, parse_ip, tcp_reset, tickle_ack


class TcpSegmentSender:
    """Sends hand-made TCP segments (tickles and resets)."""

    def __init__(self) -> None:
        self._sockets: dict[int, socket.socket] = {}
        self._netns = NetnsGuard("TcpSegmentSender")

    def _socket(self, version: int) -> socket.socket:
        sock = self._sockets.get(version)
        if sock is not None:
            return sock
        self._netns.check()
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        try:
            sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.IPPROTO_RAW)
        except OSError as exc:
            raise FailoverError(f"cannot open a raw IPv{version} socket (needs CAP_NET_RAW): {exc}") from exc
        if version == 4:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        sock.setblocking(False)
        self._sockets[version] = sock
        return sock

    def prepare(self) -> None:
        """Open both sockets now (e.g. at start-up) rather than on the first tickle."""
        self._socket(4)
        self._socket(6)

    def send_segment(self, segment: bytes, destination: str) -> None:
        """Send a complete IP packet (from ``packets``) to ``destination``."""
        dst = parse_ip(destination)
        sock = self._socket(dst.version)
        try:
            sent = sock.sendto(segment, (str(dst), 0))
        except OSError as exc:
            raise FailoverError(f"send TCP segment to {dst}: {exc}") from exc
        if sent != len(segment):
            raise FailoverError(f"send TCP segment to {dst}: only {sent} of {len(segment)} bytes sent")

    def tickle(self, server: Endpoint, client: Endpoint) -> None:
        """One tickle ACK from ``server`` (public ip, port) to ``client`` (ip, port)."""
        self.send_segment(tickle_ack(server, client), client[0])

    def tickle_all(self, connections: list[tuple[Endpoint, Endpoint]]) -> int:
        """One tickle per (server, client) pair; returns how many were sent.

        A failure on one connection (e.g. no route to that client) does not stop the
        others; the first error is raised after the loop.
        """
        sent = 0
        first_error: FailoverError | None = None
        for server, client in connections:
            try:
                self.tickle(server, client)
                sent += 1
            except FailoverError as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return sent

    def reset(self, src: Endpoint, dst: Endpoint, seq: int, ack: int = 0) -> None:
        """A spoofed RST+ACK from ``src`` to ``dst``; ``dst`` accepts it only if ``seq`` is exact."""
        self.send_segment(tcp_reset(src, dst, seq, ack), dst[0])

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()

    def __enter__(self) -> TcpSegmentSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
