"""The node shell's use of the heartbeat pacer (server/node.py): when it runs, what the core is
told, what happens when its thread ends. A real NodeCore and pacer thread; the transport and the
messenger are fakes."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ctdblab.daemon.core.election import ElectionSettings
from ctdblab.daemon.core.membership import DetectorSettings
from ctdblab.daemon.core.node import NodeCore, NodeSettings, PeerConnected, Start
from ctdblab.daemon.core.nodes import NodeMap
from ctdblab.daemon.server.heartbeat_pacer import LOOK_BEATS, look_interval
from ctdblab.daemon.server.node import NodeService


class Events:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class FakeTransport:
    has_fast_channel = True
    addresses: dict = {}

    def __init__(self) -> None:
        self.sent: list[int] = []

    def send_fast(self, pnn: int, frame: bytes) -> bool:
        self.sent.append(pnn)
        return True

    def drain_fast(self, wall_to_loop: float) -> list[tuple[int, float]]:
        return []

    def pnn_at(self, address: str):
        return None


class FakeMessenger:
    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.rpc = Events()

    def __getattr__(self, name):           # every other send is a no-op here
        return lambda *args, **kwargs: None


def settings(interval: float) -> NodeSettings:
    return NodeSettings(DetectorSettings(heartbeat_interval=interval, dead_timeout=3 * interval),
                        ElectionSettings(lock_enabled=False, leader_timeout=5.0, election_timeout=0.3,
                                         lock_retry=0.3, startup_grace=0.5))


async def service(interval: float) -> tuple[NodeService, list[int]]:
    loop = asyncio.get_running_loop()
    nodemap = NodeMap.from_addresses(["198.18.0.1", "198.18.0.2", "198.18.0.3"], 0)
    core = NodeCore(0, nodemap, settings(interval), loop.time())
    alarms: list[int] = []
    node = NodeService(core, FakeMessenger(), Events(), lock=None, lock_setting="", start_wall=0.0,
                       clock=loop.time, spawn=lambda coro, name: coro.close(), reschedule=lambda: None,
                       tick_now=lambda: alarms.append(1))
    node.settings_changed(settings(interval))
    node.step(Start())
    for pnn in (1, 2):
        node.step(PeerConnected(pnn))
    return node, alarms


def test_short_heartbeats_are_paced_and_go_to_the_watchers():
    async def main():
        node, _ = await service(0.02)
        try:
            assert node.core.settings.detector.paced
            assert node.core.settings.detector.look_interval == pytest.approx(LOOK_BEATS * 0.02)
            await asyncio.sleep(0.2)
            node.tick(asyncio.get_running_loop().time())
            sent = node.messenger.transport.sent
            assert set(sent) == {1, 2} and len(sent) >= 10        # the thread sends, every 20 ms
            look = LOOK_BEATS * 0.02                # service timers land on the look grid
            point = node.on_tick_grid(1.001)
            assert 1.001 < point <= 1.001 + look and node.on_tick_grid(point) == pytest.approx(point + look)
        finally:
            await node.close()
    asyncio.run(main())


def test_the_default_heartbeats_are_paced_and_looked_at_every_600_ms():
    async def main():
        node, _ = await service(0.1)
        try:
            assert node.core.settings.detector.paced
            assert node.core.settings.detector.look_interval == pytest.approx(0.6)
            point = node.on_tick_grid(1.001)
            assert 1.001 < point <= 1.601 and node.on_tick_grid(point) == pytest.approx(point + 0.6)
        finally:
            await node.close()
    asyncio.run(main())


def test_the_look_is_six_beats_at_most_600_ms_at_least_one_beat():
    assert look_interval(0.02) == pytest.approx(0.12)
    assert look_interval(0.1) == pytest.approx(0.6)
    assert look_interval(0.15) == pytest.approx(0.6)          # four beats
    assert look_interval(0.2) == pytest.approx(0.6)           # three
    assert look_interval(0.7) == pytest.approx(0.7)           # never less than one beat


def test_slow_heartbeats_are_not_paced_and_a_slower_setting_stops_the_pacer():
    async def main():
        node, _ = await service(0.5)
        assert not node.core.settings.detector.paced
        await node.close()
        node, _ = await service(0.02)
        assert node.core.settings.detector.paced
        node.settings_changed(settings(0.5))
        assert not node.core.settings.detector.paced and not node.paced.active
        await node.close()
    asyncio.run(main())


def test_a_pacer_thread_that_ends_hands_the_heartbeats_back_to_the_loop_for_good(caplog):
    async def main():
        node, _ = await service(0.02)
        node.paced.pacer.close()                  # the thread is gone (as if it had died)
        with caplog.at_level(logging.ERROR, logger="ctdblab"):
            node.tick(asyncio.get_running_loop().time())
        assert "pacer thread ended" in caplog.text
        assert not node.core.settings.detector.paced and not node.paced.active
        node.settings_changed(settings(0.02))            # not started again
        assert not node.core.settings.detector.paced
        await node.close()
    asyncio.run(main())


class SocketTransport(FakeTransport):
    """A transport that offers the native pacer its socket (a descriptor that cannot be used
    when `fileno` is -1)."""

    port = 4379

    def __init__(self, fileno: int) -> None:
        super().__init__()
        self.fileno = fileno

    def fast_fileno(self) -> int:
        return self.fileno

    def fast_peers(self) -> dict[int, str]:
        return {1: "198.18.0.2", 2: "198.18.0.3"}

    def count_fast(self, sent: int, received: int, bad: int) -> None:
        pass


def test_the_native_pacer_is_used_when_offered_a_socket_and_a_failing_one_falls_back_to_python(
        caplog, native_pacer_library):
    import socket

    from ctdblab.daemon.server.heartbeat_pacer import HeartbeatPacer
    from ctdblab.daemon.server.native_pacer import NativeHeartbeatPacer

    async def run_with(transport) -> tuple[type, str]:
        node, _ = await service(0.5)              # slow: no pacer until the transport is set
        node.messenger.transport = transport
        with caplog.at_level(logging.INFO, logger="ctdblab"):
            node.settings_changed(settings(0.02))
        kind = type(node.paced.pacer)
        await node.close()
        return kind, caplog.text

    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            kind, _ = await run_with(SocketTransport(sock.fileno()))
            assert kind is NativeHeartbeatPacer
            kind, said = await run_with(SocketTransport(-1))      # os.dup fails
            assert kind is HeartbeatPacer
            assert "The native heartbeat pacer failed" in said
            assert "(Python: the native pacer failed" in said
        finally:
            sock.close()
    asyncio.run(main())
