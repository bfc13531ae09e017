"""The local Unix socket: clients (the `ctdb` tool, smbd, helpers), their SRVID registrations and
message delivery to them.

* The socket is created mode 0700 (as ctdbd); a stale socket file is replaced, but not a socket
  another live daemon still answers on.
* Each client gets a client id (never 0) and its pid from SO_PEERCRED.
* Framing is CTDB's packet format; clients may send unpadded packets (smbd does). A client that
  sends bytes that are not CTDB packets is disconnected with a log line naming its pid.
* `deliver(srvid, frame)` hands a REQ_MESSAGE to every client that registered `srvid` (and to
  those that registered the catch-all `Srvid.ALL`).
* A client that stops reading and lets `max_queue` bytes pile up is disconnected (CTDB's
  MaxQueueDropMsg counts messages; bytes are what actually hurts here).
* What clients have sent of packets not yet complete is held in memory; all clients together
  may hold `max_partial` bytes of it (default: one largest packet and a half). When they hold
  more, the client whose incomplete packet has made no progress for the longest time is
  disconnected with a log line, until the total fits or one client is left (a single client may
  always send one packet of the largest size). Twenty clients each sending the start of an 8 MiB
  packet and stopping used to pin 193 MiB; now stalled senders make room for a working one.

Dispatch of what clients send is the daemon's job: `on_frame(client, frame)`.

With ``plane`` (a PlaneLinks, net/plane_links.py; the daemon's default, PYCTDBD_CLIENT_PLANE=0
keeps asyncio's transports) the clients' connections go through the native node plane's thread:
it frames them by the same rules and enforces the same bound on incomplete packets
(node_plane.c), the loop gets whole frames and writes through the plane, and the same log lines
name the client. Its thread then also takes smbd's calls (server/native_calls.py, step 3 of
docs/native-hot-path.md).
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..protocol.constants import Srvid
from ..protocol.errors import ProtocolError
from ..protocol.header import peek_operation
from ..protocol.packets import PacketReader
from .plane_links import CLIENT, CLOSED_BAD, PlaneLinks

MAX_CLIENT_QUEUE = 64 * 1024 * 1024
MAX_PARTIAL_BYTES = 96 * 1024 * 1024
_UCRED = struct.Struct("3i")


class LocalSocketError(RuntimeError):
    """The socket path cannot be used (another daemon answers on it, or it is not a socket)."""


class Client(asyncio.Protocol):
    """One connected client."""

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        self.client_id = 0
        self.pid = 0
        self.uid = -1
        self.srvids: set[int] = set()
        self.transport: asyncio.Transport | None = None
        self.reader = PacketReader()
        self.closing = False
        self.packets_in = 0
        self.held = 0                # bytes of an incomplete packet, counted in the server's total
        self.progress_at = 0.0       # when that packet last grew

    def __repr__(self) -> str:
        return f"<client {self.client_id} pid {self.pid}>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        creds = transport.get_extra_info("peercred")         # read before the plane took it
        sock = transport.get_extra_info("socket")
        if creds is None and sock is not None:
            creds = _peer_credentials(sock)
        if creds is not None:
            self.pid, self.uid, _gid = creds
        self.server._register(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            frames = self.reader.feed(data)
        except ProtocolError as exc:
            self.server.log(f"client {self.client_id} (pid {self.pid}) sent malformed data: {exc}; "
                            "disconnecting it")
            self.close()
            return
        if self.reader.buffered > self.held:
            self.progress_at = time.monotonic()
            self._account(self.reader.buffered)
            self.server._enforce_partial_limit()
        else:
            self._account(self.reader.buffered)
        self.frames_received(frames)

    def frames_received(self, frames: list[bytes]) -> None:
        """Whole frames, from our reader or from the native plane's."""
        if self.closing:
            return
        received = self.server._received_ops
        for frame in frames:
            self.packets_in += 1
            op = peek_operation(frame)
            received[op] = received.get(op, 0) + 1
            self.server.on_frame(self, frame)
            if self.closing:
                break

    def send(self, frame: bytes) -> bool:
        transport = self.transport
        if transport is None or self.closing or transport.is_closing():
            return False
        try:
            transport.write(frame)
        except (RuntimeError, OSError):
            self.close()
            return False
        sent = self.server._sent_ops
        op = peek_operation(frame)
        sent[op] = sent.get(op, 0) + 1
        if transport.get_write_buffer_size() > self.server.max_queue:
            self.server.log(f"client {self.client_id} (pid {self.pid}) is not reading its messages "
                            f"({transport.get_write_buffer_size()} bytes queued); disconnecting it")
            self.close()
            return False
        return True

    def _account(self, held: int) -> None:
        """This client now holds `held` bytes of an incomplete packet."""
        self.server._partial_bytes += held - self.held
        self.held = held

    def close(self) -> None:
        self.closing = True
        self._account(0)
        self.reader = PacketReader()        # what it sent of a packet is dropped now
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._account(0)
        self.reader = PacketReader()
        self.server._unregister(self)


@dataclass
class LocalServer:
    path: str
    on_frame: Callable[[Client, bytes], None]
    on_disconnect: Callable[[Client], None]
    log: Callable[[str], None]
    max_queue: int = MAX_CLIENT_QUEUE
    max_partial: int = MAX_PARTIAL_BYTES
    plane: PlaneLinks | None = None
    clients: dict[int, Client] = field(default_factory=dict)
    _partial_bytes: int = 0          # incomplete packets held for all clients together
    _by_srvid: dict[int, set[Client]] = field(default_factory=dict)
    _next_id: int = 1
    _server: asyncio.base_events.Server | None = None
    _listener: socket.socket | None = None        # with the plane: our own accepting socket
    _sent_ops: dict[int, int] = field(default_factory=dict)        # frames by operation
    _received_ops: dict[int, int] = field(default_factory=dict)

    async def start(self) -> None:
        _clear_stale_socket(self.path)
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        loop = asyncio.get_running_loop()
        old_umask = os.umask(0o077)
        try:
            if self.plane is not None:
                self._listen_for_plane(loop)
            else:
                self._server = await loop.create_unix_server(lambda: Client(self), self.path, backlog=100)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o700)

    def _listen_for_plane(self, loop: asyncio.AbstractEventLoop) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
            listener.listen(100)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self.plane.plane.set_max_partial(self.max_partial)
        loop.add_reader(listener.fileno(), self._accept_for_plane)

    def _accept_for_plane(self) -> None:
        while self._listener is not None and self.plane is not None:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log(f"accepting a client failed: {exc}")
                return
            creds = _peer_credentials(sock)
            try:
                self.plane.adopt(sock, CLIENT, Client(self), extra={"peercred": creds},
                                 on_trouble=self._plane_trouble)
            except OSError as exc:
                sock.close()
                self.log(f"the native plane cannot take a client (pid {creds[0] if creds else '?'}): {exc}")

    def _plane_trouble(self, client: Client, kind: int, reason: str) -> None:
        """The plane closed a client for what it sent: the asyncio path's log lines."""
        if kind == CLOSED_BAD:
            self.log(f"client {client.client_id} (pid {client.pid}) sent {reason}; disconnecting it")
        else:
            self.log(f"client {client.client_id} (pid {client.pid}) {reason}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._listener is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._listener.fileno())
            except (RuntimeError, ValueError):
                pass
            self._listener.close()
            self._listener = None
        for client in list(self.clients.values()):
            client.close()
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except OSError:
            pass

    @property
    def partial_bytes(self) -> int:
        """Bytes of incomplete packets all clients hold now."""
        return self.plane.plane.client_partial if self.plane is not None else self._partial_bytes

    def _enforce_partial_limit(self) -> None:
        while self._partial_bytes > self.max_partial:
            holders = [c for c in self.clients.values() if c.held and not c.closing]
            if len(holders) <= 1:
                return
            stalled = min(holders, key=lambda c: c.progress_at)
            self.log(f"client {stalled.client_id} (pid {stalled.pid}) has sent {stalled.held} bytes of a "
                     f"packet and nothing for {time.monotonic() - stalled.progress_at:.1f} s while clients "
                     f"hold {self._partial_bytes} bytes of incomplete packets (limit {self.max_partial}); "
                     "disconnecting it")
            stalled.close()

    # -- registry --------------------------------------------------------------------------------
    def _register(self, client: Client) -> None:
        client.client_id = self._next_id
        self._next_id = self._next_id + 1 if self._next_id < 0xFFFFFFF0 else 1
        self.clients[client.client_id] = client

    def _unregister(self, client: Client) -> None:
        if self.clients.pop(client.client_id, None) is None:
            return
        for srvid in client.srvids:
            holders = self._by_srvid.get(srvid)
            if holders is not None:
                holders.discard(client)
                if not holders:
                    del self._by_srvid[srvid]
        client.srvids.clear()
        self.on_disconnect(client)

    def register_srvid(self, client: Client, srvid: int) -> None:
        client.srvids.add(srvid)
        self._by_srvid.setdefault(srvid, set()).add(client)

    def deregister_srvid(self, client: Client, srvid: int) -> bool:
        if srvid not in client.srvids:
            return False
        client.srvids.discard(srvid)
        holders = self._by_srvid.get(srvid)
        if holders is not None:
            holders.discard(client)
            if not holders:
                del self._by_srvid[srvid]
        return True

    def has_srvid(self, srvid: int) -> bool:
        return srvid in self._by_srvid

    def has_pid(self, pid: int) -> bool:
        return any(c.pid == pid for c in self.clients.values())

    def pid_has_srvid(self, pid: int, srvid: int) -> bool:
        return any(c.pid == pid for c in self._by_srvid.get(srvid, ()))

    def deliver(self, srvid: int, frame: bytes) -> int:
        """Send a REQ_MESSAGE frame to every client registered for `srvid`; returns how many."""
        targets = set(self._by_srvid.get(srvid, ()))
        targets |= self._by_srvid.get(Srvid.ALL, set())
        sent = 0
        for client in targets:
            if client.send(frame):
                sent += 1
        return sent

    def count_native(self, client: Client | None, *, received_op: int | None = None,
                     sent_op: int | None = None) -> None:
        """A frame of `client` the native plane took, and its answer, for statistics."""
        if received_op is not None:
            self._received_ops[received_op] = self._received_ops.get(received_op, 0) + 1
            if client is not None:
                client.packets_in += 1
        if sent_op is not None:
            self._sent_ops[sent_op] = self._sent_ops.get(sent_op, 0) + 1

    def traffic(self) -> tuple[dict[int, int], dict[int, int]]:
        """Frames sent to and received from clients since start, by operation (for statistics)."""
        return dict(self._sent_ops), dict(self._received_ops)

    def __len__(self) -> int:
        return len(self.clients)


def _peer_credentials(sock: socket.socket) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the client at the other end (SO_PEERCRED), None if unknown."""
    try:
        return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return None


def _clear_stale_socket(path: str) -> None:
    """Remove a leftover socket file, but refuse to steal one a live daemon answers on."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise LocalSocketError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)           # nobody listens: stale
        return
    finally:
        probe.close()
    raise LocalSocketError(f"another daemon is already listening on {path}")
