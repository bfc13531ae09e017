"""The native heartbeat pacer (daemon/native/heartbeat_pacer.c behind
server/native_pacer.py) on real loopback UDP sockets: what one beat sends,
reads, drops and raises, and its thread started and stopped. The same rules as the Python
pacer's (test_heartbeat_pacer.py)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from ctdblab.daemon import native
from ctdblab.daemon.protocol import KEEPALIVE_VERSION_4_17, ReqKeepalive, encode_packet
from ctdblab.daemon.net.transport import SO_TIMESTAMPNS
from ctdblab.daemon.server.native_pacer import NativeHeartbeatPacer
from ctdblab.daemon.server.pacer_types import PacerTiming

TIMING = PacerTiming(interval=0.02, phase=0.0, alarm_silence=0.03, liveness_limit=0.12)
ME, PEER1, PEER2, STRANGER = "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.9"


@pytest.fixture
def lib(native_pacer_library):
    return native_pacer_library


def keepalive(src: int, dest: int = 0) -> bytes:
    return encode_packet(ReqKeepalive(KEEPALIVE_VERSION_4_17, 0), destnode=dest, srcnode=src, reqid=0)


class Channel:
    """The transport's side for the native pacer: real sockets, the node's on ME."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind((ME, 0))
        self.port = self.sock.getsockname()[1]
        self.peers = {}
        for pnn, address in ((1, PEER1), (2, PEER2), (9, STRANGER)):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((address, self.port))
            s.settimeout(1.0)
            self.peers[pnn] = s
        self.counted: list[tuple[int, int, int]] = []

    def fast_fileno(self) -> int:
        return self.sock.fileno()

    def fast_peers(self) -> dict[int, str]:
        return {1: PEER1, 2: PEER2}

    def count_fast(self, sent: int, received: int, bad: int) -> None:
        self.counted.append((sent, received, bad))

    def from_peer(self, pnn: int, data: bytes) -> None:
        self.peers[pnn].sendto(data, (ME, self.port))

    def close(self) -> None:
        self.sock.close()
        for s in self.peers.values():
            s.close()


@pytest.fixture
def channel():
    c = Channel()
    yield c
    c.close()


@pytest.fixture
def wake_fd():
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    yield fd
    os.close(fd)


@pytest.fixture
def pacer(lib, channel, wake_fd):
    made = NativeHeartbeatPacer(lib, channel, TIMING, wake_fd=wake_fd)
    yield made
    made.close()


def woken(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def settle() -> None:
    time.sleep(0.02)          # loopback datagrams are queued by then


def test_a_beat_sends_the_frames_and_reads_the_peers_beats_with_their_kernel_time(pacer, channel):
    now = time.monotonic()
    pacer.loop_alive(now)
    pacer.set_targets(((1, b"to-1"), (2, b"to-2"), (7, b"no such peer")))
    channel.from_peer(1, keepalive(1))
    channel.from_peer(2, keepalive(2))
    settle()
    now = time.monotonic()
    assert not pacer.beat(now, now - time.time())
    assert channel.peers[1].recvfrom(64) == (b"to-1", (ME, channel.port))
    assert channel.peers[2].recvfrom(64) == (b"to-2", (ME, channel.port))
    arrivals = pacer.take_arrivals()
    assert [pnn for pnn, _ in arrivals] == [1, 2]
    for _, at in arrivals:                 # the kernel's receive time, on the loop clock
        assert now - 0.5 < at <= now + 0.005
    assert pacer.take_arrivals() == []
    pacer.count()
    assert channel.counted == [(2, 2, 0)]


def test_datagrams_that_are_not_the_senders_keepalive_are_dropped_and_counted(pacer, channel):
    channel.from_peer(1, keepalive(2))              # claims another node
    channel.from_peer(9, keepalive(9))              # from an address that is no node's
    channel.from_peer(1, keepalive(1)[:-1] + b"")   # shorter than its length field
    channel.from_peer(1, b"x" * 40)                 # no CTDB header
    channel.from_peer(2, keepalive(2)[:20])          # shorter than a header
    channel.from_peer(2, keepalive(2))              # the one good one
    settle()
    now = time.monotonic()
    pacer.beat(now, now - time.time())
    assert [pnn for pnn, _ in pacer.take_arrivals()] == [2]
    pacer.count()
    assert channel.counted == [(0, 1, 5)]


def test_no_beats_go_out_once_the_loop_has_not_looked_for_the_liveness_limit(pacer, channel):
    pacer.set_targets(((1, b"beat"),))
    pacer.loop_alive(100.0)
    pacer.beat(100.119, 0.0)
    pacer.beat(100.121, 0.0)                 # the loop is wedged: the node falls silent
    pacer.loop_alive(100.121)
    pacer.beat(100.122, 0.0)
    channel.peers[1].settimeout(0.2)
    got = []
    try:
        while True:
            got.append(channel.peers[1].recvfrom(64)[0])
    except TimeoutError:
        pass
    assert got == [b"beat", b"beat"]


def test_a_silent_watched_peer_raises_the_alarm_once_per_silence_through_the_eventfd(pacer, channel, wake_fd):
    wall_to_loop = time.monotonic() - time.time()
    pacer.set_watched(frozenset({1, 2}))
    channel.from_peer(1, keepalive(1))
    channel.from_peer(2, keepalive(2))
    settle()
    t0 = time.monotonic()
    assert not pacer.beat(t0, wall_to_loop)
    heard = max(at for _, at in pacer.take_arrivals())
    assert not pacer.beat(heard + 0.029, wall_to_loop) and woken(wake_fd) == 0
    channel.from_peer(2, keepalive(2))       # peer 2 beats again, peer 1 stays silent
    settle()
    later = time.monotonic()
    assert pacer.beat(later + 0.011, wall_to_loop)
    assert woken(wake_fd) == 1 and pacer.alarms == 1
    assert not pacer.beat(later + 0.031, wall_to_loop)    # the same silence: no second alarm
    channel.from_peer(1, keepalive(1))       # peer 1 is back; its next silence alarms again
    settle()
    back = time.monotonic()
    assert not pacer.beat(back, wall_to_loop)
    assert pacer.beat(back + 0.05, wall_to_loop) and pacer.alarms == 2


def test_a_peer_not_heard_since_it_became_watched_raises_no_alarm(pacer, channel):
    channel.from_peer(1, keepalive(1))
    settle()
    now = time.monotonic()
    pacer.beat(now, now - time.time())
    pacer.set_watched(frozenset({1}))       # newly watched: its clock starts anew
    assert not pacer.beat(now + 1.0, now - time.time())
    pacer.set_watched(frozenset({1, 5000}))  # a pnn beyond any node's is ignored
    assert not pacer.beat(now + 2.0, now - time.time())


def test_the_thread_beats_on_the_grid_and_hands_over_what_it_read_when_closed(lib, channel, wake_fd):
    pacer = NativeHeartbeatPacer(lib, channel, TIMING, wake_fd=wake_fd)
    pacer.set_targets(((1, b"beat"),))
    pacer.loop_alive(time.monotonic() + 60)      # a loop that keeps looking
    pacer.start()
    assert pacer.running
    channel.from_peer(2, keepalive(2))
    time.sleep(0.25)
    pacer.close()
    assert not pacer.running
    assert [pnn for pnn, _ in pacer.take_arrivals()] == [2]
    assert pacer.take_arrivals() == []
    channel.peers[1].settimeout(0.05)
    sent = 0
    try:
        while True:
            channel.peers[1].recvfrom(64)
            sent += 1
    except TimeoutError:
        pass
    assert 10 <= sent <= 14                      # 0.25 s of 20 ms beats
    assert channel.counted and channel.counted[-1][0] == sent


def test_sockaddr_and_address_keys_match_what_the_kernel_reports():
    assert native.sockaddr_bytes("198.18.0.1", 4379)[:8] == (
        socket.AF_INET.to_bytes(2, "little") + (4379).to_bytes(2, "big") + bytes([198, 18, 0, 1]))
    assert len(native.sockaddr_bytes("fd00::1", 4379)) == 28
    assert native.address_key("::ffff:198.18.0.1") == native.address_key("198.18.0.1")
    assert native.address_key("fd00::1")[0] == socket.AF_INET6
