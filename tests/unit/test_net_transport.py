"""The node mesh on loopback addresses: pairing, framing, hostile bytes, strangers, fast channel.
Every test runs twice: with asyncio's transports and with the native node plane carrying the
connections (net/plane_links.py)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket

import pytest
from aio_helpers import until
from ctdblab.daemon.net.transport import NodeTransport
from ctdblab.daemon.protocol import ReqKeepalive, ReqMessage, decode_packet, encode_packet


def _addresses(n=2):
    a, b = random.randint(100, 250), random.randint(1, 250)
    return [f"127.{a}.{b}.{i + 1}" for i in range(n)]


USE_PLANE = False


@pytest.fixture(autouse=True, params=[False, True], ids=["asyncio", "plane"])
def transport_kind(request):
    global USE_PLANE
    if request.param:
        from ctdblab.daemon.native import node_plane
        node_plane.library(build_if_missing=True)
    USE_PLANE = request.param
    yield request.param
    USE_PLANE = False


class Node:
    def __init__(self, pnn, addresses, port):
        self.frames, self.up, self.down, self.logs = [], [], [], []
        self.t = NodeTransport(pnn, addresses, port, lambda p, f: self.frames.append((p, f)),
                               self.up.append, lambda p, r: self.down.append((p, r)), self.logs.append,
                               use_plane=USE_PLANE)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


@contextlib.asynccontextmanager
async def connected_pair():
    """Nodes 0 and 1 on fresh loopback addresses, both up; (a, b, addresses, port). Both are
    closed afterwards, also when the test fails."""
    addrs = _addresses()
    port = random.randint(20000, 60000)
    a, b = Node(0, addrs, port), Node(1, addrs, port)
    await a.t.start()
    await b.t.start()
    try:
        await until(lambda: a.up == [1] and b.up == [0])
        yield a, b, addrs, port
    finally:
        await a.t.close()
        await b.t.close()


def test_pair_connects_and_carries_frames():
    async def main():
        async with connected_pair() as (a, b, addrs, port):
            frame = encode_packet(ReqMessage(0x1234, b"hello"), destnode=1, srcnode=0, reqid=7)
            assert a.t.send(1, frame)
            await until(lambda: b.frames)
            pnn, got = b.frames[0]
            assert pnn == 0 and decode_packet(got).body.data == b"hello"
            # Fast channel: a keepalive datagram, drained with its arrival time.
            beat = encode_packet(ReqKeepalive(1, 0), destnode=1, srcnode=0, reqid=0)
            assert a.t.send_fast(1, beat)
            await asyncio.sleep(0.05)
            drained = b.t.drain_fast(asyncio.get_running_loop().time() - __import__("time").time())
            assert [p for p, _ in drained] == [0]
            # Tearing down marks the peer down on both sides; the dial loop brings it back.
            a.t.drop_peer(1, "test")
            await until(lambda: a.down and b.down)
            await until(lambda: a.up == [1, 1] and b.up == [0, 0], timeout=5)
    run(main())


def test_garbage_from_a_peer_drops_only_that_connection():
    async def main():
        addrs = _addresses()
        port = random.randint(20000, 60000)
        b = Node(1, addrs, port)
        await b.t.start()
        try:
            # Pretend to be node 0: dial from its address and send non-CTDB bytes.
            loop = asyncio.get_running_loop()
            s = socket.socket()
            s.setblocking(False)
            s.bind((addrs[0], 0))
            await loop.sock_connect(s, (addrs[1], port))
            await loop.sock_sendall(s, b"\x28\x00\x00\x00NOT-A-CTDB-PACKET-AT-ALL-REALLY-NOT-IT")
            await until(lambda: any("malformed data" in m for m in b.logs))
            assert any("node 0" in m for m in b.logs if "malformed" in m)
            s.close()
            # Wrong length alignment on the node transport is fatal too.
            s = socket.socket()
            s.setblocking(False)
            s.bind((addrs[0], 0))
            await loop.sock_connect(s, (addrs[1], port))
            await loop.sock_sendall(s, b"\x21\x00\x00\x00BDTC")
            await until(lambda: sum("malformed data" in m for m in b.logs) >= 2)
            s.close()
        finally:
            await b.t.close()
    run(main())


def test_stranger_is_refused_and_bad_datagrams_are_dropped():
    async def main():
        addrs = _addresses(3)
        port = random.randint(20000, 60000)
        b = Node(1, addrs[:2], port)
        await b.t.start()
        try:
            loop = asyncio.get_running_loop()
            s = socket.socket()
            s.setblocking(False)
            s.bind((addrs[2], 0))          # not in b's nodes list
            await loop.sock_connect(s, (addrs[1], port))
            await until(lambda: any("not an address in the nodes list" in m for m in b.logs))
            assert not b.up
            s.close()
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind((addrs[0], 0))
            u.sendto(b"junk", (addrs[1], port))                   # from a node address, not CTDB
            fake = encode_packet(ReqKeepalive(1, 0), destnode=1, srcnode=5, reqid=0)
            u.sendto(fake, (addrs[1], port))                      # claims to be node 5
            u.close()
            await asyncio.sleep(0.05)
            assert b.t.drain_fast(0.0) == []
            assert any("bad or unknown heartbeat datagrams" in m for m in b.logs)
        finally:
            await b.t.close()
    run(main())


def test_a_second_connection_from_a_peer_replaces_the_working_one_only_once_it_talks():
    """Idle or garbled connections from a live peer's address must not displace its real
    connection (a fuzzer's idle connections caused a false failover); a restarted peer's new
    connection takes over with its first packet."""
    async def main():
        async with connected_pair() as (a, b, addrs, port):
            loop = asyncio.get_running_loop()

            async def dial_as_node_0() -> socket.socket:
                s = socket.socket()
                s.setblocking(False)
                s.bind((addrs[0], 0))
                await loop.sock_connect(s, (addrs[1], port))
                return s

            idle = [await dial_as_node_0() for _ in range(5)]         # silent, on node 0's address
            garbled = await dial_as_node_0()
            await loop.sock_sendall(garbled, b"\x28\x00\x00\x00NOT-A-CTDB-PACKET-AT-ALL-REALLY-NOT-IT")
            await until(lambda: any("dropping second connection" in m for m in b.logs))
            # The real connection still carries node 0's frames; nobody went down.
            frame = encode_packet(ReqMessage(0x1234, b"still here"), destnode=1, srcnode=0, reqid=1)
            assert a.t.send(1, frame)
            await until(lambda: b.frames)
            assert b.down == [] and a.down == []
            # A second connection that sends a real packet takes over (a restarted peer). Only
            # one standby is held, the newest: the idle ones above were closed one by one.
            talker = await dial_as_node_0()
            await loop.sock_sendall(talker, encode_packet(ReqMessage(0x99, b"new me"), destnode=1,
                                                          srcnode=0, reqid=2))
            await until(lambda: any(decode_packet(f).body.data == b"new me" for _, f in b.frames))
            assert any("its new connection replaces the old one" in m for m in b.logs)
            assert b.down == []
            for s in idle + [garbled, talker]:
                s.close()
    run(main())


def test_a_node_shutting_down_keeps_its_connections_but_is_not_reconnected():
    async def main():
        async with connected_pair() as (a, b, addrs, port):
            a.t.stop_admitting()                       # node 0 begins its shutdown
            frame = encode_packet(ReqMessage(0x1234, b"still here"), destnode=1, srcnode=0, reqid=7)
            assert a.t.send(1, frame)                  # what is up keeps working
            await until(lambda: b.frames)
            b.t.drop_peer(0, "declared dead")          # the peer gives up on it
            await until(lambda: a.down and b.down)
            await asyncio.sleep(1.5)                   # more than a reconnect interval
            assert a.up == [1] and b.up == [0]         # nobody brought the pair back
            assert not a.t.is_connected(1) and not b.t.is_connected(0)
    run(main())


def test_a_connection_lost_after_a_while_is_dialled_again_at_once_a_young_one_after_the_interval(
        monkeypatch):
    """After a death this node declared (the peer lost its connection and declares us dead in
    turn), the quick redial re-admits us before a whole reconnect interval has passed; a
    connection that keeps dying young waits the interval, so a flapping peer costs no storm."""
    from ctdblab.daemon.net import transport
    monkeypatch.setattr(transport, "RECONNECT_INTERVAL", 0.5)
    monkeypatch.setattr(transport, "QUICK_REDIAL", 0.02)

    async def main():
        loop = asyncio.get_running_loop()
        async with connected_pair() as (a, b, addrs, port):
            await asyncio.sleep(0.6)                      # an established connection
            t0 = loop.time()
            a.t.drop_peer(1, "test")
            await until(lambda: len(a.up) == 2 and len(b.up) == 2, timeout=5)
            quick = loop.time() - t0
            t1 = loop.time()
            a.t.drop_peer(1, "test again")                # young: it just came up
            await until(lambda: len(a.up) == 3 and len(b.up) == 3, timeout=5)
            slow = loop.time() - t1
        assert quick < 0.4, quick
        assert slow >= 0.45, slow
    run(main())


def test_frames_queued_for_a_peer_still_connecting_are_reported_when_thrown_away():
    """A peer connected to us while our connection to it is not up yet: frames for it wait.
    If its connection goes before ours comes up they are thrown away, and the owner hears of it
    (the controls among them would otherwise wait their whole timeout for a reply)."""
    async def main():
        addrs = _addresses()
        port = random.randint(20000, 60000)
        b = Node(1, addrs, port)
        undelivered = []
        b.t.on_undelivered = undelivered.append
        await b.t.start()
        try:
            loop = asyncio.get_running_loop()
            s = socket.socket()                    # node 0 dials in; nobody listens for it
            s.setblocking(False)
            s.bind((addrs[0], 0))
            await loop.sock_connect(s, (addrs[1], port))
            frame = encode_packet(ReqMessage(0x1234, b"for later"), destnode=0, srcnode=1, reqid=3)
            await until(lambda: b.t.send(0, frame))         # queued once the inbound is there
            assert undelivered == [] and b.down == []
            s.close()
            await until(lambda: undelivered == [0])
            assert b.down == []                             # it was never up: not a death
            assert not b.t.send(0, frame)
        finally:
            await b.t.close()
    run(main())
