"""A minimal synchronous netlink socket (rtnetlink and sock_diag), stdlib only.

Why not pyroute2: its 0.9 synchronous ``IPRoute`` drives an asyncio loop of its own with
``run_until_complete`` and raises ``RuntimeError: This event loop is already running`` when
called from inside the daemon's loop; through a helper thread it works but costs ~1 ms per
call. The kernel answers these requests at once, so a plain blocking socket is both simpler
and 10-50x faster (tens of microseconds), and safe to call from an event loop.

Messages are ``struct nlmsghdr`` (16 bytes) + family header + attributes (``struct nlattr``,
4-byte aligned). A request either gets an ACK (``NLMSG_ERROR`` with error 0) or, for a dump,
a run of multipart messages ending in ``NLMSG_DONE``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

NETLINK_ROUTE = 0
NETLINK_SOCK_DIAG = 4

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12

NLMSGHDR = struct.Struct("=IHHII")
NLATTR = struct.Struct("=HH")
_ERRNO = struct.Struct("=i")
_RECV_SIZE = 1 << 16


class NetlinkError(OSError):
    """The kernel refused a netlink request (``errno`` holds the reason)."""


def align4(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, value: bytes) -> bytes:
    """One ``struct nlattr`` with its value, padded to 4 bytes."""
    length = NLATTR.size + len(value)
    return NLATTR.pack(length, kind) + value + b"\0" * (align4(length) - length)


def parse_attrs(data: bytes | memoryview, offset: int, end: int) -> dict[int, bytes]:
    """The attributes between ``offset`` and ``end`` as ``{type: value}`` (last one wins).

    Truncated or malformed attributes end the walk instead of raising: these bytes come
    from the kernel, and a partial view is better than a crash.
    """
    found: dict[int, bytes] = {}
    while offset + NLATTR.size <= end:
        length, kind = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size or offset + length > end:
            break
        found[kind & 0x3FFF] = bytes(data[offset + NLATTR.size: offset + length])
        offset += align4(length)
    return found


class NetlinkSocket:
    """One blocking netlink socket of a given protocol, in the netns where it was made."""

    def __init__(self, protocol: int) -> None:
        self.protocol = protocol
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        try:
            self._sock.bind((0, 0))
            # Extended ACKs give a human-readable reason with some errors; harmless if absent.
            try:
                self._sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            except OSError:
                pass
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0
        self._buf = bytearray(_RECV_SIZE)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NetlinkSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def message(self, msg_type: int, flags: int, payload: bytes) -> tuple[int, bytes]:
        """A framed message and the sequence number it carries."""
        seq = self._next_seq()
        return seq, NLMSGHDR.pack(NLMSGHDR.size + len(payload), msg_type, flags, seq, 0) + payload

    def _receive(self) -> memoryview:
        n = self._sock.recv_into(self._buf)
        return memoryview(self._buf)[:n]

    def _messages(self, data: memoryview) -> Iterator[tuple[int, int, int, int, int]]:
        """(offset, length, type, flags, seq) of each message in one datagram."""
        offset = 0
        while offset + NLMSGHDR.size <= len(data):
            length, msg_type, flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
            if length < NLMSGHDR.size or offset + length > len(data):
                break
            yield offset, length, msg_type, flags, seq
            offset += align4(length)

    @staticmethod
    def _error_of(data: memoryview, offset: int) -> int:
        (code,) = _ERRNO.unpack_from(data, offset + NLMSGHDR.size)
        return -code

    def request(self, msg_type: int, flags: int, payload: bytes, what: str) -> None:
        """Send one request with NLM_F_ACK and wait for its ACK; raise NetlinkError on refusal."""
        self.request_many([(msg_type, flags, payload)], what, tolerate=())

    def request_many(
        self,
        requests: list[tuple[int, int, bytes]],
        what: str,
        tolerate: tuple[int, ...] = (),
    ) -> list[int]:
        """Send several ACKed requests in one datagram; return each one's errno (0 = done).

        Errors listed in ``tolerate`` are returned; any other error raises NetlinkError
        (after all ACKs were read, so the socket stays in step).
        """
        pending: dict[int, int] = {}
        chunks = []
        for index, (msg_type, flags, payload) in enumerate(requests):
            seq, msg = self.message(msg_type, flags | NLM_F_REQUEST | NLM_F_ACK, payload)
            pending[seq] = index
            chunks.append(msg)
        if not chunks:
            return []
        self._sock.send(b"".join(chunks))
        results = [0] * len(requests)
        while pending:
            data = self._receive()
            for offset, _length, msg_type, _flags, seq in self._messages(data):
                if seq not in pending or msg_type != NLMSG_ERROR:
                    continue
                results[pending.pop(seq)] = self._error_of(data, offset)
        for code in results:
            if code and code not in tolerate:
                raise NetlinkError(code, f"{what}: {os.strerror(code)}")
        return results

    def get(self, msg_type: int, payload: bytes, what: str) -> bytes:
        """Send a single (non-dump) request and return the body of its one reply."""
        seq, msg = self.message(msg_type, NLM_F_REQUEST, payload)
        self._sock.send(msg)
        while True:
            data = self._receive()
            for offset, length, kind, _flags, reply_seq in self._messages(data):
                if reply_seq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    code = self._error_of(data, offset)
                    raise NetlinkError(code or errno.EPROTO, f"{what}: {os.strerror(code or errno.EPROTO)}")
                return bytes(data[offset + NLMSGHDR.size: offset + length])

    def dump(self, msg_type: int, payload: bytes, what: str, flags: int = NLM_F_DUMP,
             attempts: int = 3) -> list[bytes]:
        """Send a dump request and return every reply's body (after the nlmsghdr).

        The whole dump is read before returning, so the socket never holds stale replies.
        A dump the kernel marks inconsistent (changed while being dumped) is retried.
        """
        for _ in range(attempts - 1):
            try:
                return self._dump_once(msg_type, payload, what, flags)
            except NetlinkError as exc:
                if exc.errno != errno.EINTR:
                    raise
        return self._dump_once(msg_type, payload, what, flags)

    def _dump_once(self, msg_type: int, payload: bytes, what: str, flags: int) -> list[bytes]:
        seq, msg = self.message(msg_type, flags | NLM_F_REQUEST, payload)
        self._sock.send(msg)
        bodies: list[bytes] = []
        interrupted = False
        while True:
            data = self._receive()
            for offset, length, kind, msg_flags, reply_seq in self._messages(data):
                if reply_seq != seq:
                    continue
                if msg_flags & NLM_F_DUMP_INTR:
                    interrupted = True
                if kind == NLMSG_DONE:
                    if interrupted:
                        raise NetlinkError(errno.EINTR, f"{what}: dump interrupted by a concurrent change")
                    return bodies
                if kind == NLMSG_ERROR:
                    code = self._error_of(data, offset)
                    if code:
                        raise NetlinkError(code, f"{what}: {os.strerror(code)}")
                    continue
                if kind in (NLMSG_NOOP, NLMSG_OVERRUN):
                    continue
                bodies.append(bytes(data[offset + NLMSGHDR.size: offset + length]))
