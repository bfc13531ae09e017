"""The local Unix socket: peer credentials, SRVID routing, hostile clients, stale sockets."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from aio_helpers import until
from ctdblab.daemon.net.local import LocalServer, LocalSocketError
from ctdblab.daemon.protocol import ReqMessage, Srvid, decode_packet, encode_packet


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_credentials_registration_and_delivery(tmp_path):
    async def main():
        frames, gone, logs = [], [], []
        server = LocalServer(str(tmp_path / "s.sock"), lambda c, f: frames.append((c, f)),
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


def test_garbage_disconnects_the_client_with_a_log_line(tmp_path):
    async def main():
        logs = []
        server = LocalServer(str(tmp_path / "s.sock"), lambda c, f: None, lambda c: None, logs.append)
        await server.start()
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "s.sock"))
        writer.write(b"\x10\x00\x00\x00short length")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert any("malformed data" in m and f"pid {os.getpid()}" in m for m in logs)
        await server.close()
    run(main())


def test_stale_socket_replaced_live_one_refused(tmp_path):
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()                                   # a leftover file nobody listens on

    async def main():
        server = LocalServer(str(path), lambda c, f: None, lambda c: None, lambda m: None)
        await server.start()
        other = LocalServer(str(path), lambda c, f: None, lambda c: None, lambda m: None)
        with pytest.raises(LocalSocketError, match="already listening"):
            await other.start()
        await server.close()
    run(main())
    path.write_text("not a socket")
    with pytest.raises(LocalSocketError, match="not a socket"):
        run(LocalServer(str(path), lambda c, f: None, lambda c: None, lambda m: None).start())
