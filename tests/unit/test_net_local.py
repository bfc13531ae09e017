"""The local Unix socket: peer credentials, SRVID routing, hostile clients, stale sockets — each
with the clients on asyncio's transports and in the native node plane (PYCTDBD_CLIENT_PLANE)."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from aio_helpers import until
from ctdblab.daemon.native import node_plane
from ctdblab.daemon.net.local import LocalServer, LocalSocketError
from ctdblab.daemon.net.plane_links import PlaneLinks
from ctdblab.daemon.protocol.packets import DEFAULT_MAX_PACKET_SIZE
from ctdblab.daemon.protocol import ReqMessage, Srvid, decode_packet, encode_packet


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


@pytest.fixture(params=["asyncio", "plane"])
def server_of(request):
    """LocalServer(...) with the clients on asyncio's transports or in a node plane of its own
    (made in the running loop, destroyed when the test ends)."""
    planes: list[PlaneLinks] = []
    if request.param == "plane":
        node_plane.library(build_if_missing=True)

    def make(*args, **kw) -> LocalServer:
        if request.param == "plane":
            planes.append(PlaneLinks(DEFAULT_MAX_PACKET_SIZE))
            kw["plane"] = planes[-1]
        return LocalServer(*args, **kw)
    yield make
    for links in planes:
        links.plane.destroy()


def test_credentials_registration_and_delivery(tmp_path, server_of):
    async def main():
        frames, gone, logs = [], [], []
        server = server_of(str(tmp_path / "s.sock"), lambda c, f: frames.append((c, f)),
                             gone.append, logs.append)
        await server.start()
        assert oct(os.stat(tmp_path / "s.sock").st_mode & 0o777) == "0o700"
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "s.sock"))
        await until(lambda: len(server) == 1)
        client = next(iter(server.clients.values()))
        assert client.pid == os.getpid() and client.client_id >= 1
        # An unpadded packet (smbd sends those) is fine.
        writer.write(encode_packet(ReqMessage(5, b"abc"), destnode=0, srcnode=0, reqid=1, pad=False))
        await until(lambda: frames)
        server.register_srvid(client, Srvid.LEADER)
        assert server.has_srvid(Srvid.LEADER) and server.pid_has_srvid(os.getpid(), Srvid.LEADER)
        msg = encode_packet(ReqMessage(Srvid.LEADER, b"\x01\x00\x00\x00"), destnode=0, srcnode=0, reqid=0)
        assert server.deliver(Srvid.LEADER, msg) == 1
        assert server.deliver(Srvid.RELEASE_IP, msg) == 0
        got = await reader.readexactly(len(msg))
        assert decode_packet(got).body.srvid == Srvid.LEADER
        assert server.deregister_srvid(client, Srvid.LEADER) and not server.has_srvid(Srvid.LEADER)
        writer.close()
        await until(lambda: gone)
        assert len(server) == 0
        await server.close()
        assert not (tmp_path / "s.sock").exists()
    run(main())


def test_garbage_disconnects_the_client_with_a_log_line(tmp_path, server_of):
    async def main():
        logs = []
        server = server_of(str(tmp_path / "s.sock"), lambda c, f: None, lambda c: None, logs.append)
        await server.start()
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "s.sock"))
        writer.write(b"\x10\x00\x00\x00short length")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert any("malformed data" in m and f"pid {os.getpid()}" in m for m in logs)
        await server.close()
    run(main())


def test_stale_socket_replaced_live_one_refused(tmp_path, server_of):
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()                                   # a leftover file nobody listens on

    async def main():
        server = server_of(str(path), lambda c, f: None, lambda c: None, lambda m: None)
        await server.start()
        other = server_of(str(path), lambda c, f: None, lambda c: None, lambda m: None)
        with pytest.raises(LocalSocketError, match="already listening"):
            await other.start()
        await server.close()
    run(main())
    path.write_text("not a socket")

    async def start_one():
        await server_of(str(path), lambda c, f: None, lambda c: None, lambda m: None).start()
    with pytest.raises(LocalSocketError, match="not a socket"):
        run(start_one())


def test_incomplete_packets_of_many_clients_are_bounded_together(tmp_path, server_of):
    """Twenty clients that each send the start of a large packet and stop used to pin 193 MiB;
    together they may hold `max_partial` bytes: the most stalled ones are disconnected, and
    clients that send whole packets, small or big, are served throughout."""
    async def main():
        frames, logs = [], []
        server = server_of(str(tmp_path / "s.sock"), lambda c, f: frames.append(f), lambda c: None,
                             logs.append, max_partial=4 * 1024 * 1024)
        await server.start()
        big = encode_packet(ReqMessage(5, b"x" * (2 * 1024 * 1024)), destnode=0, srcnode=0, reqid=1)
        loop = asyncio.get_running_loop()
        hogs = []
        for _ in range(20):
            hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            hog.setblocking(False)
            await loop.sock_connect(hog, str(tmp_path / "s.sock"))
            await loop.sock_sendall(hog, big[: 1024 * 1024])    # half a 2 MiB packet, then nothing
            await until(lambda: server.partial_bytes % (1024 * 1024) == 0)
            assert server.partial_bytes <= 4 * 1024 * 1024
            hogs.append(hog)
        assert sum("incomplete packets" in m for m in logs) == 16 and len(server) == 4
        # A client with ordinary packets, then one with two big ones, get through; the stalled
        # hogs make room for the big ones.
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "s.sock"))
        writer.write(encode_packet(ReqMessage(5, b"small"), destnode=0, srcnode=0, reqid=2))
        await until(lambda: len(frames) == 1)
        writer.write(big + big)
        await until(lambda: len(frames) == 3)
        assert server.partial_bytes <= 4 * 1024 * 1024
        for hog in hogs:
            hog.close()
        await until(lambda: len(server) == 1 and server.partial_bytes == 0)
        await server.close()
    run(main())
