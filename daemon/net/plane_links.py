"""Node connections carried by the native node plane (daemon/native/node_plane.py) instead of
asyncio's transports, behind the same interface: `PlaneLinks.adopt(sock, kind, protocol)` hands
a connected socket to the plane and gives the protocol a transport look-alike (`write`,
`is_closing`, `get_write_buffer_size`, `abort`/`close`, `get_extra_info("peername")`), so
NodeTransport's bookkeeping (peers, standby connections, promotion, back-pressure) is the same
for both. Frames come from the plane already cut (its framing is PacketReader's node mode,
tests/unit/test_native_node_plane.py) and go to ``protocol.frames_received``; a close the plane
reports goes to ``protocol.connection_lost``, with the plane's reason.

On by default, with grants (`native_path_wanted` reads the environment variables). With grants
(``enable_grants``, server/native_grants.py) the plane's thread also answers the lmaster's grant
itself, and the loop's selector is wrapped (`RestSelector`) so the loop hands the plane its
"rest" while it sleeps and takes it back when it wakes (docs/native-hot-path.md).
"""

from __future__ import annotations

import asyncio
import selectors
import socket
from collections.abc import Callable, Mapping

from ..native import NATIVE_ENV, NativeBuildError
from ..native.node_plane import (
    CLIENT, CLOSED_BAD, CLOSED_STALLED, FRAME, RECEIVE, SEND, NodePlane, TdbFunctions, library,
)

__all__ = ["PlaneLinks", "PlaneLinkTransport", "RECEIVE", "SEND", "CLIENT", "CLOSED_BAD",
           "CLOSED_STALLED", "PlaneClosed", "ENV", "GRANTS_ENV", "CLIENTS_ENV", "native_path_wanted",
           "clients_in_plane_wanted", "plane_unavailable", "RestSelector"]

#: In the daemon's environment: "0" keeps the node connections on asyncio's transports (and so
#: no grants); "1" puts them in the plane also when grants are off.
ENV = "PYCTDBD_NODE_PLANE"
#: "0": the loop answers the lmaster's grant. By default the plane's thread does (since it had a
#: soak and a full lab suite in its latest form: docs/native-hot-path.md).
GRANTS_ENV = "PYCTDBD_NATIVE_GRANTS"
#: "0" keeps the local clients' connections (smbd, the ctdb tool) on asyncio's transports. By
#: default they go through the plane with the node connections (step 3 of
#: docs/native-hot-path.md: the plane's thread takes smbd's calls, server/native_calls.py).
CLIENTS_ENV = "PYCTDBD_CLIENT_PLANE"


def native_path_wanted(env: Mapping[str, str]) -> tuple[bool, bool]:
    """(plane, grants) as the daemon's environment asks. Both by default (since 2026-12-07: a
    soak and the full suite with them on); PYCTDBD_NATIVE_GRANTS=0 leaves the grants to the loop
    (and the plane too, unless PYCTDBD_NODE_PLANE=1); PYCTDBD_NODE_PLANE=0 or PYCTDBD_NATIVE=0:
    no plane, no grants."""
    if env.get(NATIVE_ENV, "1") == "0" or env.get(ENV, "") == "0":
        return False, False
    grants = env.get(GRANTS_ENV, "1") != "0"
    return grants or env.get(ENV, "0") == "1", grants


def clients_in_plane_wanted(env: Mapping[str, str]) -> bool:
    """Whether the local clients go in the plane: with the plane on (native_path_wanted) unless
    PYCTDBD_CLIENT_PLANE=0."""
    return env.get(CLIENTS_ENV, "1") != "0" and native_path_wanted(env)[0]


def plane_unavailable() -> str | None:
    """Why the plane cannot be used here, or None when it can."""
    try:
        library()
    except (OSError, AttributeError, NativeBuildError) as exc:
        return str(exc)
    return None


class PlaneClosed(ConnectionError):
    """Why the plane closed a connection (its words)."""


class PlaneLinkTransport:
    """One plane connection as NodeTransport's protocols expect a transport to look."""

    __slots__ = ("links", "conn", "protocol", "extra", "on_trouble", "_closing", "_queued")

    def __init__(self, links: PlaneLinks, conn: int, protocol, extra: dict,
                 on_trouble: Callable[[object, int, str], None] | None) -> None:
        self.links = links
        self.conn = conn
        self.protocol = protocol
        self.extra = extra
        self.on_trouble = on_trouble
        self._closing = False
        self._queued = 0

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        # None: the send failed, and the plane's CLOSED event follows with the reason
        self._queued = self.links.plane.send(self.conn, data) or 0

    def is_closing(self) -> bool:
        return self._closing

    def get_write_buffer_size(self) -> int:
        """Bytes queued after the latest write (the plane's own count then)."""
        return self._queued

    def get_extra_info(self, name: str, default=None):
        """"peername", and what the adopter gave (a client's "peercred")."""
        return self.extra.get(name, default)

    def abort(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.links._forget(self.conn)
        self.links.plane.close(self.conn)
        asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    close = abort

    def _closed_by_plane(self, reason: str) -> None:
        self._closing = True
        self.protocol.connection_lost(PlaneClosed(reason))


class PlaneLinks:
    """The plane, its connections by id, and the loop's reader of its wake descriptor."""

    def __init__(self, max_packet: int) -> None:
        self.plane = NodePlane(max_packet)
        self._links: dict[int, PlaneLinkTransport] = {}
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.plane.wake_fd, self._drain)

    def adopt(self, sock: socket.socket, kind: int, protocol, *, extra: dict | None = None,
              on_trouble: Callable[[object, int, str], None] | None = None) -> PlaneLinkTransport:
        """Hand ``sock`` (connected) to the plane; ``protocol.connection_made`` gets the
        transport look-alike (its ``get_extra_info`` answers "peername" and ``extra``'s names).
        ``on_trouble(protocol, kind, reason)`` hears of a close for what the other side sent
        (CLOSED_BAD, CLOSED_STALLED) before ``connection_lost``, to log it naming the peer."""
        try:
            peername = sock.getpeername()
        except OSError:
            peername = None
        conn = self.plane.add(sock, kind)
        transport = PlaneLinkTransport(self, conn, protocol, {"peername": peername, **(extra or {})},
                                       on_trouble)
        self._links[conn] = transport
        protocol.connection_made(transport)
        return transport

    def protocol_of(self, conn: int):
        """The protocol of plane connection ``conn``, None once it is closed."""
        link = self._links.get(conn)
        return None if link is None else link.protocol

    def _forget(self, conn: int) -> None:
        self._links.pop(conn, None)

    def _drain(self) -> None:
        """Deliver the plane's events in order, a connection's consecutive frames as one list."""
        batch: list[bytes] = []
        batch_link: PlaneLinkTransport | None = None
        for kind, conn, body in self.plane.events():
            link = self._links.get(conn)
            if link is None:
                continue                          # closed by the loop meanwhile
            if batch and (link is not batch_link or kind != FRAME):
                batch_link.protocol.frames_received(batch)
                batch = []
            batch_link = link
            if kind == FRAME:
                batch.append(body)
                continue
            self._links.pop(conn, None)
            if link.on_trouble is not None and kind in (CLOSED_BAD, CLOSED_STALLED):
                link.on_trouble(link.protocol, kind, body)
            link._closed_by_plane(body)
        if batch:
            batch_link.protocol.frames_received(batch)

    def enable_grants(self, functions: TdbFunctions, max_key: int, before_sleep: Callable[[], bool],
                      after_wake: Callable[[int], None]) -> bool:
        """Let the plane's thread grant while the loop sleeps: the loop's selector is wrapped so
        that ``before_sleep()`` runs before every wait that may sleep and, when it answers
        True, the rest is released for the wait and ``after_wake(flags)`` runs right after it
        (the rest taken back, before any callback). False when this loop's selector cannot be
        wrapped (not asyncio's own selector loop): then nothing changes."""
        loop = self._loop
        inner = getattr(loop, "_selector", None)
        if not isinstance(loop, asyncio.SelectorEventLoop) or not isinstance(inner, selectors.BaseSelector):
            return False
        self.plane.enable_grants(functions, max_key)
        # asyncio.BaseSelectorEventLoop keeps its selector in `_selector` and waits only in its
        # `select`; the daemon's loop runs already when the plane starts, so it is wrapped here
        # rather than built with a selector of ours.
        loop._selector = RestSelector(inner, self.plane, before_sleep, after_wake)   # type: ignore[attr-defined]
        return True

    def close(self) -> None:
        """Stop the plane: every connection it still holds is closed."""
        try:
            self._loop.remove_reader(self.plane.wake_fd)
        except (RuntimeError, ValueError):
            pass
        selector = getattr(self._loop, "_selector", None)
        if isinstance(selector, RestSelector) and selector.plane is self.plane:
            self._loop._selector = selector.inner      # type: ignore[attr-defined]
        self._links.clear()
        self.plane.destroy()


class RestSelector(selectors.BaseSelector):
    """The loop's selector, with the node plane's rest handed over while the loop sleeps. A
    wait with timeout 0 (callbacks ready) is not a sleep: the loop keeps the rest; so it does
    when ``before_sleep()`` says the thread has nothing to grant (a node no peer asks as its
    lmaster pays two calls less per wake-up)."""

    def __init__(self, inner: selectors.BaseSelector, plane: NodePlane,
                 before_sleep: Callable[[], bool], after_wake: Callable[[int], None]) -> None:
        self.inner = inner
        self.plane = plane
        self.before_sleep = before_sleep
        self.after_wake = after_wake

    def select(self, timeout: float | None = None):
        # before_sleep never raises (server/native_grants.py)
        if (timeout is not None and timeout <= 0) or not self.before_sleep():
            return self.inner.select(timeout)
        self.plane.rest_release()
        try:
            return self.inner.select(timeout)
        finally:
            self.after_wake(self.plane.rest_take())

    def register(self, fileobj, events, data=None):
        return self.inner.register(fileobj, events, data)

    def unregister(self, fileobj):
        return self.inner.unregister(fileobj)

    def modify(self, fileobj, events, data=None):
        return self.inner.modify(fileobj, events, data)

    def get_key(self, fileobj):
        return self.inner.get_key(fileobj)

    def get_map(self):
        return self.inner.get_map()

    def close(self) -> None:
        self.inner.close()
