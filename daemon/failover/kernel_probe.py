"""ICMP echoes to peers' kernels: is the host up, whatever its daemon is doing?

The fast failure detector (core/membership.py) asks a silent peer's kernel before it declares the
peer dead: a live host answers an echo request from its network stack even while its daemon is
blocked; a host that lost power, or one behind a partition, does not. This module sends those
requests and reads the answers, on the loop's thread, without a wake-up of its own: the node
shell drains the socket just before the detector's deadline, as it does the heartbeat socket, and
the kernel's receive timestamp says when each answer really came.

Raw ICMP sockets need CAP_NET_RAW, which the daemon has as root (it sends gratuitous ARPs). If
one cannot be opened the probe says so once in the log and stays off: the detector then declares
a silent peer dead after its timeout, as it did before the probe existed.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable, Sequence

from .packets import internet_checksum

ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129
SOL_RAW = 255
ICMP_FILTER = 1        # SOL_RAW: a mask of the ICMP types the socket does not want
ICMP6_FILTER = 1       # IPPROTO_ICMPV6: 256 bits, set = blocked
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_ECHO = struct.Struct("!BBHHH")       # type, code, checksum, identifier, sequence
PAYLOAD = b"pyctdbd kernel probe"


def echo_request(ident: int, seq: int, v6: bool) -> bytes:
    """An echo request; for IPv6 the kernel fills in the checksum (it covers a pseudo-header)."""
    kind = ICMP6_ECHO_REQUEST if v6 else ICMP_ECHO_REQUEST
    body = _ECHO.pack(kind, 0, 0, ident, seq & 0xFFFF) + PAYLOAD
    if v6:
        return body
    return body[:2] + struct.pack("!H", internet_checksum(body)) + body[4:]


def parse_echo_reply(packet: bytes, ident: int, v6: bool) -> bool:
    """True if `packet` (with its IPv4 header, as raw IPv4 sockets deliver it) is an echo
    reply to one of our requests."""
    if not v6:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return False
        packet = packet[(packet[0] & 0x0F) * 4:]
    if len(packet) < _ECHO.size:
        return False
    kind, code, _sum, got_ident, _seq = _ECHO.unpack_from(packet)
    want = ICMP6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY
    return kind == want and code == 0 and got_ident == ident and packet[_ECHO.size:].startswith(PAYLOAD)


class KernelProbe:
    """Echo requests to the nodes of `addresses` (indexed by PNN) and their answers; `pnn_at`
    names the node an answer came from (the transport's own lookup, which knows every
    spelling of a node's address)."""

    def __init__(self, addresses: Sequence[str | None], pnn_at: Callable[[str], int | None],
                 log: Callable[[str], None]) -> None:
        self.addresses = addresses       # the transport's list (PNN -> address; None: deleted)
        self._pnn_at = pnn_at
        self._log = log
        self.ident = os.getpid() & 0xFFFF
        self._seq = 0
        self._sockets: dict[int, socket.socket] = {}
        self._unavailable: set[int] = set()

    def send(self, pnn: int) -> bool:
        """Ask node `pnn`'s kernel; False if that cannot be done (no raw socket, no route)."""
        if not 0 <= pnn < len(self.addresses):
            return False
        address = self.addresses[pnn]
        if address is None:
            return False
        v6 = ":" in address
        sock = self._socket(socket.AF_INET6 if v6 else socket.AF_INET)
        if sock is None:
            return False
        self._seq += 1
        try:
            sock.sendto(echo_request(self.ident, self._seq, v6), (address, 0))
        except OSError:
            return False          # no route, or the neighbour is unresolved: no answer either
        return True

    def drain(self, wall_to_loop: float) -> list[tuple[int, float]]:
        """Answers queued since the last call: [(pnn, arrival on the loop clock)]."""
        out: list[tuple[int, float]] = []
        for family, sock in self._sockets.items():
            v6 = family == socket.AF_INET6
            for _ in range(4096):      # other processes' echo replies land here too
                try:
                    data, ancdata, _flags, source = sock.recvmsg(512, 64)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                pnn = self._pnn_at(source[0])
                if pnn is None or not parse_echo_reply(data, self.ident, v6):
                    continue
                arrival = time.time()
                for level, kind, raw in ancdata:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                        sec, nsec = _TIMESPEC.unpack_from(raw)
                        arrival = sec + nsec * 1e-9
                out.append((pnn, arrival + wall_to_loop))
        return out

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()

    def _socket(self, family: int) -> socket.socket | None:
        sock = self._sockets.get(family)
        if sock is not None or family in self._unavailable:
            return sock
        proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
        try:
            sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_NONBLOCK, proto)
        except OSError as exc:
            self._unavailable.add(family)
            self._log(f"cannot open a raw ICMP socket ({exc.strerror or exc}): a silent peer is "
                      "declared dead after its dead timeout without asking its kernel")
            return None
        try:
            if family == socket.AF_INET6:
                blocked = [0xFFFFFFFF] * 8
                blocked[ICMP6_ECHO_REPLY >> 5] &= ~(1 << (ICMP6_ECHO_REPLY & 31))
                sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("@8I", *blocked))
            else:
                sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("@I", 0xFFFFFFFF & ~(1 << ICMP_ECHO_REPLY)))
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            pass              # without the filter we read and skip other ICMP; still correct
        self._sockets[family] = sock
        return sock
