"""The node-to-node TCP mesh, as CTDB builds it.

* The daemon listens on its own node address, port 4379 (SO_REUSEADDR).
* It dials every other node from its own address: one *outbound* connection per peer, used only
  to send; the peer's dial is our *inbound* connection, used only to receive. A connect that
  fails, or gets no answer within a second, is retried every second.
* An inbound connection is identified by its source address, which must be a live entry of the
  nodes list; anything else is refused with a log line. A second inbound connection from the
  same node is held as a *standby* while the first one works: it replaces the first as soon as
  it delivers a well-formed packet (the peer restarted and talks on its new connection; CTDB
  refuses it until the old one times out) or the first one closes. A silent or garbled second
  connection from a peer's address never displaces a working one (it used to, and a fuzzer's
  idle connections caused a false failover of a live peer). One standby per peer; a newer one
  replaces it.
* A peer is *connected* when both directions are up; either one dropping makes it disconnected.
* Framing is strict (PacketReader in node mode): a bad length, magic or version drops the
  connection with a log line naming the peer.

Beside the TCP mesh there is pyctdbd's *fast channel*: a UDP socket on the same address and port
that carries only the millisecond heartbeats. It is deliberately not watched by the event loop:
the daemon drains it on its own heartbeat tick (`drain_fast`), so a heartbeat costs its receiver
no wakeup; the kernel's receive timestamp (SO_TIMESTAMPNS) tells when each one really arrived.

Callbacks (all run on the event loop): `on_frame(pnn, frame)`, `on_peer_up(pnn)`,
`on_peer_down(pnn, reason)`.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..protocol.constants import Operation
from ..protocol.errors import ProtocolError
from ..protocol.header import keepalive_source, peek_operation
from ..protocol.packets import DEFAULT_MAX_PACKET_SIZE, PacketReader
from .plane_links import RECEIVE, SEND, PlaneLinks, PlaneLinkTransport

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)          # Linux value
_TIMESPEC = struct.Struct("=qq")

RECONNECT_INTERVAL = 1.0          # s, as CTDB
#: s before dialling again after losing a connection that had been up for a RECONNECT_INTERVAL
#: or more. When this node declares a live peer dead (a burst of packet loss that just ended),
#: the peer sees the connection torn down, declares this node dead in turn and -- if it leads --
#: gives this node's public IPs away, while this node keeps them until it hears the leader again:
#: one reconnect interval of two nodes answering ARP for one IP. Dialling again at once shrinks
#: that to a round trip. A connection that dies young waits the full interval, so a peer that
#: keeps dropping us costs at most one quick redial per interval.
QUICK_REDIAL = 0.02
CONNECT_TIMEOUT = 1.0             # s without SYN-ACK before starting over
MAX_WRITE_BUFFER = 32 * 1024 * 1024   # a peer that stops reading this much is dropped
#: The largest single message worth queueing to a peer: a packet over DEFAULT_MAX_PACKET_SIZE
#: makes its reader drop the connection, and one near MAX_WRITE_BUFFER makes ours drop it when
#: the peer is busy (a 45 MB control reply did).
MAX_NODE_MESSAGE = min(DEFAULT_MAX_PACKET_SIZE, MAX_WRITE_BUFFER) // 2
MAX_WAITING = 1000                    # frames held while our dial to a peer completes

Log = Callable[[str], None]


@dataclass
class _Peer:
    pnn: int
    address: str
    outbound: _Outbound | None = None        # protocol of our dial, once connected
    inbound: _Inbound | None = None
    standby: _Inbound | None = None          # a second dial from its address, not yet proven
    connected: bool = False                  # both directions up (as last reported)
    dial_task: asyncio.Task | None = None
    # Frames for a peer whose connection to us is up while ours to it is still being set up
    # (it can send us a control before our dial completes): held until our dial is done.
    waiting: list[bytes] = field(default_factory=list)
    tx_packets: int = 0
    rx_packets: int = 0


class _Outbound(asyncio.Protocol):
    """Our dial to a peer: send-only. Anything the peer sends back is a protocol violation."""

    def __init__(self, mesh: NodeTransport, peer: _Peer) -> None:
        self.mesh = mesh
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _tune_socket(sock)

    def data_received(self, data: bytes) -> None:
        self.mesh._dropping_bad(self, f"sent {len(data)} bytes on a send-only connection")
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)
        self.mesh._outbound_lost(self, exc)


class _Inbound(asyncio.Protocol):
    """A peer's dial to us: receive-only."""

    def __init__(self, mesh: NodeTransport) -> None:
        self.mesh = mesh
        self.peer: _Peer | None = None
        self.transport: asyncio.Transport | None = None
        self.reader = PacketReader(node_transport=True)
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _tune_socket(sock)
        peername = transport.get_extra_info("peername")
        self.mesh._inbound_made(self, peername[0] if peername else "?")

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or self.closing:
            return
        try:
            frames = self.reader.feed(data)
        except ProtocolError as exc:
            self.mesh._dropping_bad(self, f"malformed data: {exc}")
            self.close()
            return
        self.frames_received(frames)

    def frames_received(self, frames: list[bytes]) -> None:
        """Whole frames, from our reader or from the native plane's."""
        peer = self.peer
        if peer is None or self.closing:
            return
        if frames and peer.standby is self:
            self.mesh._promote(self, "it sent a packet")
        on_frame = self.mesh.on_frame
        received = self.mesh._received_ops
        for frame in frames:
            peer.rx_packets += 1
            op = peek_operation(frame)
            received[op] = received.get(op, 0) + 1
            on_frame(peer.pnn, frame)
            if self.closing:
                break

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.mesh._inbound_lost(self, exc)


def _tune_socket(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        pass


@dataclass
class NodeTransport:
    my_pnn: int
    addresses: list[str | None]           # PNN -> address (None: deleted)
    port: int
    on_frame: Callable[[int, bytes], None]
    on_peer_up: Callable[[int], None]
    on_peer_down: Callable[[int, str], None]
    log: Log
    #: Frames queued for a peer not connected yet were thrown away (its connection went first):
    #: the controls among them will get no reply.
    on_undelivered: Callable[[int], None] = lambda pnn: None
    _peers: dict[int, _Peer] = field(default_factory=dict)
    _server: asyncio.base_events.Server | None = None
    _by_address: dict[str, int] = field(default_factory=dict)
    _closed: bool = False
    _leaving: bool = False
    _udp: socket.socket | None = None
    _bad_fast: int = 0
    _bad_fast_logged: float = 0.0
    #: Carry the connections' bytes in the native node plane (net/plane_links.py) instead of
    #: asyncio's transports.
    use_plane: bool = False
    #: A plane the daemon made and closes itself (it carries the local clients too); without
    #: one, ``use_plane`` makes a plane of the transport's own.
    shared_plane: PlaneLinks | None = None
    _plane: PlaneLinks | None = None
    _listener: socket.socket | None = None
    _sent_ops: dict[int, int] = field(default_factory=dict)        # frames by operation
    _received_ops: dict[int, int] = field(default_factory=dict)
    _fast_sent: int = 0
    _fast_received: int = 0

    def _log(self, text: str) -> None:
        self.log(text)

    @property
    def my_address(self) -> str:
        address = self.addresses[self.my_pnn]
        assert address is not None
        return address

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for pnn, address in enumerate(self.addresses):
            if address is None or pnn == self.my_pnn:
                continue
            self._peers[pnn] = _Peer(pnn, address)
            self._by_address[_canon(address)] = pnn
        if self.use_plane:
            self._plane = self.shared_plane or PlaneLinks(DEFAULT_MAX_PACKET_SIZE)
            self._listen_for_plane(loop)
        else:
            self._server = await loop.create_server(
                lambda: _Inbound(self), host=self.my_address, port=self.port, reuse_address=True,
                backlog=64)
        try:
            udp = socket.socket(_family(self.my_address), socket.SOCK_DGRAM)
            udp.setblocking(False)
            udp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            udp.bind((self.my_address, self.port))
            self._udp = udp
        except OSError as exc:
            self._log(f"fast heartbeat channel (udp {self.my_address}:{self.port}) unavailable: "
                      f"{exc}; heartbeats go over TCP")
            self._udp = None
        for peer in self._peers.values():
            peer.dial_task = loop.create_task(self._dial_loop(peer), name=f"dial-node-{peer.pnn}")

    def stop_admitting(self) -> None:
        """Shutting down: no new connections either way (the listener closes, lost connections
        are not dialled again), while the ones up stay for what the shutdown still sends. Peers
        that declare this node dead cannot reconnect to it and start a recovery that includes a
        node about to go."""
        self._leaving = True
        if self._server is not None:
            self._server.close()
        self._close_listener()

    async def close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        self._close_listener()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        tasks = []
        for peer in self._peers.values():
            if peer.dial_task is not None:
                peer.dial_task.cancel()
                tasks.append(peer.dial_task)
            if peer.outbound is not None and peer.outbound.transport is not None:
                peer.outbound.transport.abort()
            for inbound in (peer.standby, peer.inbound):
                if inbound is not None:
                    inbound.close()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._plane is not None:
            await asyncio.sleep(0)            # the aborted connections' connection_lost first
            if self._plane is not self.shared_plane:
                self._plane.close()
            self._plane = None

    # -- sending ----------------------------------------------------------------------------------
    def send(self, pnn: int, frame: bytes) -> bool:
        """Queue `frame` on our connection to `pnn`; False if there is none."""
        peer = self._peers.get(pnn)
        if peer is None:
            return False
        if peer.outbound is None or peer.outbound.transport is None:
            if peer.inbound is not None and not peer.inbound.closing and len(peer.waiting) < MAX_WAITING:
                peer.waiting.append(frame)
                return True
            return False
        transport = peer.outbound.transport
        if transport.is_closing():
            return False
        try:
            transport.write(frame)
        except (RuntimeError, OSError) as exc:
            self._log(f"write to node {pnn} ({peer.address}) failed: {exc}")
            return False
        peer.tx_packets += 1
        op = peek_operation(frame)
        self._sent_ops[op] = self._sent_ops.get(op, 0) + 1
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self._log(f"node {pnn} ({peer.address}) is not reading: "
                      f"{transport.get_write_buffer_size()} bytes queued; dropping the connection")
            transport.abort()
        return True

    @property
    def has_fast_channel(self) -> bool:
        return self._udp is not None

    def send_fast(self, pnn: int, frame: bytes) -> bool:
        peer = self._peers.get(pnn)
        if self._udp is None or peer is None:
            return False
        try:
            self._udp.sendto(frame, (peer.address, self.port))
        except OSError:
            return False          # full buffer or no route: a lost heartbeat, nothing more
        self._fast_sent += 1
        return True

    def drain_fast(self, wall_to_loop: float) -> list[tuple[int, float]]:
        """Read every queued heartbeat datagram: [(pnn, arrival time on the loop clock)].
        Datagrams that are not a CTDB keepalive from the node their address belongs to are
        dropped (and counted in an occasional log line)."""
        if self._udp is None:
            return []
        out: list[tuple[int, float]] = []
        recvmsg = self._udp.recvmsg
        by_address = self._by_address
        for _ in range(4096):
            try:
                data, ancdata, _flags, source = recvmsg(256, 64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            pnn = by_address.get(source[0])
            if pnn is None:
                pnn = by_address.get(_canon(source[0]))
            if pnn is None or keepalive_source(data) != pnn:
                self._note_bad_fast(source[0])
                continue
            arrival = None
            for level, kind, raw in ancdata:
                if kind == SO_TIMESTAMPNS and level == socket.SOL_SOCKET and len(raw) >= 16:
                    sec, nsec = _TIMESPEC.unpack_from(raw)
                    arrival = sec + nsec * 1e-9 + wall_to_loop
            out.append((pnn, arrival if arrival is not None else time.time() + wall_to_loop))
        self._fast_received += len(out)
        return out

    # -- for a pacer that reads and writes the fast socket itself (native/) ---------------------
    def fast_fileno(self) -> int | None:
        return self._udp.fileno() if self._udp is not None else None

    def fast_peers(self) -> dict[int, str]:
        """PNN -> address of every node whose heartbeats count."""
        return {pnn: peer.address for pnn, peer in self._peers.items()}

    def count_fast(self, sent: int, received: int, bad: int) -> None:
        """Heartbeats a pacer sent, received and dropped on this socket (statistics, the
        occasional bad-datagram log line)."""
        self._fast_sent += sent
        self._fast_received += received
        if bad:
            self._note_bad_fast(None, bad)

    def _note_bad_fast(self, address: str | None, count: int = 1) -> None:
        self._bad_fast += count
        now = time.monotonic()
        if now - self._bad_fast_logged > 10:
            self._bad_fast_logged = now
            latest = f" (latest from {address})" if address else ""
            self._log(f"dropped {self._bad_fast} bad or unknown heartbeat datagrams{latest}")
            self._bad_fast = 0

    def pnn_at(self, address: str) -> int | None:
        """The node whose address this is (any spelling the kernel gives it), or None."""
        return self._by_address.get(_canon(address))

    def is_connected(self, pnn: int) -> bool:
        peer = self._peers.get(pnn)
        return bool(peer and peer.connected)

    def drop_peer(self, pnn: int, reason: str) -> None:
        """Tear down both connections to `pnn` (CTDB's "Tearing down connection to dead node");
        the dial loop reconnects when the peer answers again."""
        peer = self._peers.get(pnn)
        if peer is None:
            return
        self._log(f"Tearing down connection to dead node :{pnn} ({reason})")
        self._discard_waiting(peer)
        if peer.outbound is not None and peer.outbound.transport is not None:
            peer.outbound.transport.abort()
        for inbound in (peer.standby, peer.inbound):
            if inbound is not None:
                inbound.close()
        self._update(peer, reason)

    def stats(self, pnn: int) -> tuple[int, int]:
        peer = self._peers.get(pnn)
        return (peer.tx_packets, peer.rx_packets) if peer else (0, 0)

    def traffic(self) -> tuple[dict[int, int], dict[int, int]]:
        """Frames sent and received since start, all peers, by operation (for statistics).
        The fast channel's heartbeats are REQ_KEEPALIVE packets and count as such."""
        sent, received = dict(self._sent_ops), dict(self._received_ops)
        keepalive = int(Operation.REQ_KEEPALIVE)
        if self._fast_sent:
            sent[keepalive] = sent.get(keepalive, 0) + self._fast_sent
        if self._fast_received:
            received[keepalive] = received.get(keepalive, 0) + self._fast_received
        return sent, received

    # -- the native plane ------------------------------------------------------------------------
    @property
    def plane(self) -> PlaneLinks | None:
        """The native node plane carrying the connections, if it does."""
        return self._plane

    def plane_links(self) -> list[tuple[int, int, int]]:
        """(plane connection id, pnn, role) for the plane's grants: role 1 the peer's current
        inbound connection, 2 ours to it (only while it is up and no frame waits for it)."""
        out = []
        for pnn, peer in self._peers.items():
            inbound = peer.inbound
            if inbound is not None and not inbound.closing and isinstance(inbound.transport, PlaneLinkTransport):
                out.append((inbound.transport.conn, pnn, 1))
            outbound = peer.outbound.transport if peer.outbound is not None else None
            if isinstance(outbound, PlaneLinkTransport) and not outbound.is_closing() and not peer.waiting:
                out.append((outbound.conn, pnn, 2))
        return out

    def count_native(self, pnn: int, *, sent_op: int | None = None, received_op: int | None = None) -> None:
        """One frame the native plane sent to or took from `pnn` for a client's call (statistics)."""
        peer = self._peers.get(pnn)
        if sent_op is not None:
            self._sent_ops[sent_op] = self._sent_ops.get(sent_op, 0) + 1
            if peer is not None:
                peer.tx_packets += 1
        if received_op is not None:
            self._received_ops[received_op] = self._received_ops.get(received_op, 0) + 1
            if peer is not None:
                peer.rx_packets += 1

    def count_answered(self, pnn: int, received_op: int, sent_op: int, count: int) -> None:
        """`count` frames from `pnn` the plane answered itself, one frame each (statistics)."""
        peer = self._peers.get(pnn)
        if peer is not None:
            peer.rx_packets += count
            peer.tx_packets += count
        self._received_ops[received_op] = self._received_ops.get(received_op, 0) + count
        self._sent_ops[sent_op] = self._sent_ops.get(sent_op, 0) + count

    # -- the native plane's listener ------------------------------------------------------------
    def _listen_for_plane(self, loop: asyncio.AbstractEventLoop) -> None:
        listener = socket.socket(_family(self.my_address), socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.my_address, self.port))
            listener.listen(64)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        loop.add_reader(listener.fileno(), self._accept_for_plane)

    def _plane_trouble(self, protocol, _kind: int, reason: str) -> None:
        self._dropping_bad(protocol, reason)

    def _accept_for_plane(self) -> None:
        while self._listener is not None and self._plane is not None:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._log(f"accepting a node connection failed: {_describe(exc)}")
                return
            _tune_socket(sock)
            self._plane.adopt(sock, RECEIVE, _Inbound(self), on_trouble=self._plane_trouble)

    def _close_listener(self) -> None:
        if self._listener is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._listener.fileno())
            except RuntimeError:
                pass
            self._listener.close()
            self._listener = None

    def _dropping_bad(self, protocol: _Inbound | _Outbound, what: str) -> None:
        """Log why a connection from or to a peer is dropped for what it sent."""
        peer = protocol.peer
        if peer is None:
            return
        if isinstance(protocol, _Outbound):
            self._log(f"node {peer.pnn} ({peer.address}) {what} (our outbound one): dropping it")
            return
        which = "second connection" if peer.standby is protocol else "connection"
        self._log(f"dropping {which} from node {peer.pnn} ({peer.address}): {what}")

    # -- connection bookkeeping ------------------------------------------------------------------
    def _discard_waiting(self, peer: _Peer) -> None:
        if peer.waiting:
            peer.waiting.clear()
            self.on_undelivered(peer.pnn)

    def _update(self, peer: _Peer, reason: str = "") -> None:
        both = (peer.outbound is not None and peer.inbound is not None
                and peer.outbound.transport is not None and not peer.outbound.transport.is_closing()
                and not peer.inbound.closing)
        if both and not peer.connected:
            peer.connected = True
            self.on_peer_up(peer.pnn)
        elif not both and peer.connected:
            peer.connected = False
            self.on_peer_down(peer.pnn, reason or "connection lost")

    async def _dial_loop(self, peer: _Peer) -> None:
        loop = asyncio.get_running_loop()
        last_error = ""
        while not self._closed and not self._leaving:
            try:
                sock = socket.socket(_family(peer.address), socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.bind((self.my_address, 0))
                await asyncio.wait_for(loop.sock_connect(sock, (peer.address, self.port)),
                                       CONNECT_TIMEOUT)
                if self._plane is not None:
                    _tune_socket(sock)
                    protocol = _Outbound(self, peer)
                    self._plane.adopt(sock, SEND, protocol, on_trouble=self._plane_trouble)
                else:
                    _, protocol = await loop.create_connection(lambda: _Outbound(self, peer), sock=sock)
            except asyncio.CancelledError:
                raise
            except (OSError, asyncio.TimeoutError) as exc:
                try:
                    sock.close()
                except Exception:
                    pass
                error = _describe(exc)
                if error != last_error:
                    self._log(f"connect to node {peer.pnn} ({peer.address}:{self.port}) failed: "
                              f"{error}; retrying every {RECONNECT_INTERVAL:g} s")
                    last_error = error
                await asyncio.sleep(RECONNECT_INTERVAL)
                continue
            last_error = ""
            assert isinstance(protocol, _Outbound)
            peer.outbound = protocol
            waiting, peer.waiting = peer.waiting, []
            for frame in waiting:
                self.send(peer.pnn, frame)
            self._update(peer)
            established = loop.time()
            await protocol.lost
            lasted = loop.time() - established
            await asyncio.sleep(0 if self._closed else
                                QUICK_REDIAL if lasted >= RECONNECT_INTERVAL else RECONNECT_INTERVAL)

    def _outbound_lost(self, protocol: _Outbound, exc: Exception | None) -> None:
        peer = protocol.peer
        if peer.outbound is protocol:
            peer.outbound = None
            self._update(peer, f"outbound connection lost ({_describe(exc) if exc else 'closed'})")

    def _inbound_made(self, protocol: _Inbound, address: str) -> None:
        pnn = self.pnn_at(address)
        if pnn is None:
            self._log(f"refusing node connection from {address}: not an address in the nodes list")
            protocol.close()
            return
        peer = self._peers[pnn]
        protocol.peer = peer
        if peer.inbound is None or peer.inbound.closing:
            peer.inbound = protocol
            self._update(peer)
            return
        if peer.standby is not None:
            peer.standby.peer = None
            peer.standby.close()
        else:
            self._log(f"node {pnn} ({address}) connected again while its connection works; "
                      "holding the new one until it sends a packet")
        peer.standby = protocol

    def _promote(self, protocol: _Inbound, why: str) -> None:
        """The standby connection replaces the peer's inbound connection."""
        peer = protocol.peer
        assert peer is not None and peer.standby is protocol
        old, peer.inbound, peer.standby = peer.inbound, protocol, None
        if old is not None:
            self._log(f"node {peer.pnn} ({peer.address}): its new connection replaces the old one ({why})")
            old.peer = None
            old.close()
        self._update(peer)

    def _inbound_lost(self, protocol: _Inbound, exc: Exception | None) -> None:
        peer = protocol.peer
        if peer is None:
            return
        if peer.standby is protocol:
            peer.standby = None
            return
        if peer.inbound is not protocol:
            return
        peer.inbound = None
        if peer.standby is not None and not peer.standby.closing:
            self._promote(peer.standby, "the old one closed")
            return
        self._discard_waiting(peer)
        self._update(peer, f"inbound connection lost ({_describe(exc) if exc else 'closed'})")


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _canon(address: str) -> str:
    if address.startswith("::ffff:") and "." in address:
        return address[7:]
    return address


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "closed"
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)} ({exc.strerror})"
    return str(exc) or type(exc).__name__
