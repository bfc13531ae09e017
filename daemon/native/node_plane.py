"""The native node plane (node_plane.c), loaded with ctypes: a thread that moves the node
connections' bytes and frames them without the Python loop, waking the loop once per burst.

The first part of the native path for hot record packets (docs/native-hot-path.md). The daemon
hands it the node connections only when PYCTDBD_NODE_PLANE=1 (net/plane_links.py): until the
next part lets it answer the lmaster's grant itself, it gains nothing. Tested on its own
(tests/unit/test_native_node_plane.py), including against PacketReader's framing rules.

Use from one thread (the event loop's): ``NodePlane(max_packet)``; ``add(sock, RECEIVE|SEND)``
takes over a connected socket (the plane closes it); ``send(id, frame)``; ``close(id)``;
``wake_fd`` becomes readable when events wait, and ``events()`` takes them all:
``(FRAME, id, frame)`` and ``(CLOSED, id, reason)``. After a CLOSED event, or ``close(id)``, the
id has no more events.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct

from . import HERE, NativeBuildError, build, library_path, load_library

SOURCE = HERE / "node_plane.c"
ABI = 1                       # NP_ABI in the source
FRAME, CLOSED = 1, 2          # event kinds
RECEIVE, SEND = 1, 2          # what a connection is for

_EVENT_HEAD = struct.Struct("=IiI")
_INITIAL_TAKE = 1 << 20

_SIGNATURES: dict[str, tuple[list, object]] = {
    "np_abi": ([], ctypes.c_int),
    "np_create": ([ctypes.c_int, ctypes.c_uint32], ctypes.c_void_p),
    "np_start": ([ctypes.c_void_p], ctypes.c_int),
    "np_add": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_int], ctypes.c_int32),
    "np_send": ([ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p, ctypes.c_uint32], ctypes.c_int64),
    "np_close": ([ctypes.c_void_p, ctypes.c_int32], None),
    "np_take": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64], ctypes.c_int64),
    "np_counters": ([ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_uint64)], ctypes.c_int),
    "np_wakes": ([ctypes.c_void_p], ctypes.c_uint64),
    "np_destroy": ([ctypes.c_void_p], None),
}

_loaded: ctypes.CDLL | None = None


def library(build_if_missing: bool = False) -> ctypes.CDLL:
    """The built library with its signatures declared; OSError (or NativeBuildError) if it is
    missing or unusable."""
    global _loaded
    if _loaded is not None:
        return _loaded
    path = library_path(SOURCE)
    if not path.exists():
        if not build_if_missing:
            raise OSError(f"{path.name} is not built (python3 -m pyctdbd.native builds it)")
        build(source=SOURCE)
    try:
        lib = load_library(path, _SIGNATURES, "np_abi", ABI)
    except OSError as exc:
        raise OSError(f"{path} cannot be loaded: {exc}") from None
    _loaded = lib
    return lib


class NodePlane:
    def __init__(self, max_packet: int, *, lib: ctypes.CDLL | None = None) -> None:
        self._lib = lib or library()
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._plane = self._lib.np_create(self.wake_fd, max_packet)
        if not self._plane:
            os.close(self.wake_fd)
            raise OSError(f"np_create({max_packet}) failed")
        rc = self._lib.np_start(self._plane)
        if rc != 0:
            self._lib.np_destroy(self._plane)
            os.close(self.wake_fd)
            raise OSError(-rc, f"the node plane's thread did not start: {os.strerror(-rc)}")
        self._buf = ctypes.create_string_buffer(_INITIAL_TAKE)

    def add(self, sock: socket.socket, kind: int) -> int:
        """Take over ``sock`` (connected; detached here, closed by the plane); its id."""
        sock.setblocking(False)
        fd = sock.detach()
        conn = self._lib.np_add(self._plane, fd, kind)
        if conn < 0:
            os.close(fd)
            raise OSError(-conn, f"the node plane cannot take the connection: {os.strerror(-conn)}")
        return conn

    def send(self, conn: int, frame: bytes) -> int | None:
        """Write or queue ``frame``; the bytes still queued on the connection, None if it is
        gone (its CLOSED event says why, unless the loop closed it)."""
        left = self._lib.np_send(self._plane, conn, frame, len(frame))
        return None if left < 0 else left

    def close(self, conn: int) -> None:
        self._lib.np_close(self._plane, conn)

    def events(self) -> list[tuple[int, int, bytes]]:
        """Every event waiting, in order (the wake descriptor is cleared first, so an event
        queued meanwhile wakes the loop again)."""
        try:
            os.eventfd_read(self.wake_fd)
        except BlockingIOError:
            pass
        out: list[tuple[int, int, bytes]] = []
        while True:
            got = self._lib.np_take(self._plane, self._buf, len(self._buf))
            if got < 0:                                   # one event larger than the buffer
                self._buf = ctypes.create_string_buffer(-got)
                continue
            if got == 0:
                return out
            raw = ctypes.string_at(self._buf, got)          # the taken bytes only, not the buffer
            pos = 0
            while pos < got:
                kind, conn, length = _EVENT_HEAD.unpack_from(raw, pos)
                body = raw[pos + 12:pos + 12 + length]
                out.append((kind, conn, body if kind == FRAME else body.decode("utf-8", "replace")))
                pos += (12 + length + 7) & ~7

    def counters(self, conn: int) -> tuple[int, int, int, int, int] | None:
        """(frames in, frames out, bytes in, bytes out, bytes queued) or None if gone."""
        out = (ctypes.c_uint64 * 5)()
        if self._lib.np_counters(self._plane, conn, out) != 0:
            return None
        return tuple(out)  # type: ignore[return-value]

    @property
    def wakes(self) -> int:
        """How often the plane has woken the loop."""
        return self._lib.np_wakes(self._plane)

    def destroy(self) -> None:
        """Stop the thread; close every connection it holds and the wake descriptor."""
        if self._plane:
            self._lib.np_destroy(self._plane)
            self._plane = None
            os.close(self.wake_fd)


__all__ = ["NodePlane", "library", "NativeBuildError", "FRAME", "CLOSED", "RECEIVE", "SEND"]
