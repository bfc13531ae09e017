"""Read-only failover calls in the current namespace, without root, from a running event loop.

pyroute2 0.9's synchronous IPRoute fails inside a running asyncio loop ("This event loop is
already running"); our netlink sockets are plain blocking sockets and must not.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from ctdblab.daemon.failover import AddressManager, InterfaceNotFound, SockDiag, established_connections


def test_address_reads_work_inside_a_running_event_loop():
    async def main() -> tuple[dict[str, bool], str | None, str | None]:
        with AddressManager() as am:
            return am.interfaces(), am.where("127.0.0.1"), am.where("198.19.255.254")

    interfaces, lo, nowhere = asyncio.run(main())
    assert "lo" in interfaces
    assert lo == "lo" and nowhere is None


def test_missing_interface_is_named():
    with AddressManager() as am, pytest.raises(InterfaceNotFound, match="'nosuch-if0'"):
        am.link_up("nosuch-if0")


def test_established_connections_over_loopback():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        async def poll() -> list:
            with SockDiag() as diag:
                return established_connections({"127.0.0.1"}, diag=diag)

        got = asyncio.run(poll())
        # Both ends are local on 127.0.0.1, so both appear, each as (local, remote).
        assert (server.getsockname(), server.getpeername()) in got
        assert (client.getsockname(), client.getpeername()) in got
    finally:
        for sock in (client, server, listener):
            sock.close()
