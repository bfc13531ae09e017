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
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
                self.pid, self.uid, _gid = _UCRED.unpack(creds)
            except OSError:
                pass
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
    clients: dict[int, Client] = field(default_factory=dict)
    _partial_bytes: int = 0          # incomplete packets held for all clients together
    _by_srvid: dict[int, set[Client]] = field(default_factory=dict)
    _next_id: int = 1
    _server: asyncio.base_events.Server | None = None
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
            self._server = await loop.create_unix_server(lambda: Client(self), self.path, backlog=100)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o700)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for client in list(self.clients.values()):
            client.close()
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except OSError:
            pass

    @property
    def partial_bytes(self) -> int:
        return self._partial_bytes

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

    def traffic(self) -> tuple[dict[int, int], dict[int, int]]:
        """Frames sent to and received from clients since start, by operation (for statistics)."""
        return dict(self._sent_ops), dict(self._received_ops)

    def __len__(self) -> int:
        return len(self.clients)


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
