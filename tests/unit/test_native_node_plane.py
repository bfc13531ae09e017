"""The native node plane (daemon/native/node_plane.c): framing exactly as PacketReader's node
mode, sends in order through full socket buffers, closes and their reasons, one loop wake-up per
burst. Socket pairs stand in for node connections."""

from __future__ import annotations

import os
import random
import select
import socket
import struct
import time

import pytest

from ctdblab.daemon.native import node_plane
from ctdblab.daemon.native.node_plane import CLIENT, CLOSED, CLOSED_BAD, FRAME, RECEIVE, SEND, NodePlane
from ctdblab.daemon.protocol.constants import CTDB_MAGIC, CTDB_PROTOCOL_VERSION
from ctdblab.daemon.protocol.errors import ProtocolError
from ctdblab.daemon.protocol.packets import PacketReader

MAX = 1 << 20


@pytest.fixture(scope="session")
def lib():
    return node_plane.library(build_if_missing=True)


@pytest.fixture
def plane(lib):
    p = NodePlane(MAX, lib=lib)
    yield p
    p.destroy()


def frame(length: int, op: int = 7, fill: int = 0) -> bytes:
    head = struct.pack("<8I", length, CTDB_MAGIC, CTDB_PROTOCOL_VERSION, 1, op, 0, 1, fill)
    return head + bytes((fill + i) & 0xFF for i in range(length - 32))


def wait_events(p: NodePlane, until, timeout: float = 5.0) -> list:
    """Events until ``until(events)`` holds (or the timeout)."""
    got: list = []
    deadline = time.monotonic() + timeout
    while not until(got) and time.monotonic() < deadline:
        select.select([p.wake_fd], [], [], 0.05)
        got += p.events()
    return got


def test_frames_arrive_whole_and_in_order_however_the_stream_is_cut(plane):
    rng = random.Random(5)
    ours, theirs = socket.socketpair()
    conn = plane.add(ours, RECEIVE)
    frames = [frame(32 + 8 * rng.randrange(0, 300), fill=i) for i in range(400)]
    stream = b"".join(frames)
    pos = 0
    while pos < len(stream):
        step = rng.choice([1, 3, 7, 31, 32, 33, 500, 4096, 70000])
        theirs.sendall(stream[pos:pos + step])
        pos += step
    got = wait_events(plane, lambda ev: len(ev) >= len(frames))
    assert [(k, c) for k, c, _ in got] == [(FRAME, conn)] * len(frames)
    assert [body for _, _, body in got] == frames
    assert plane.counters(conn)[:3] == (len(frames), 0, len(stream))
    theirs.close()


def corrupt(rng: random.Random, f: bytes) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return struct.pack("<I", rng.randrange(0, 32)) + f[4:]            # shorter than a header
    if kind == 1:
        return struct.pack("<I", len(f) + rng.choice([1, 3, 5])) + f[4:]  # not a multiple of 8
    if kind == 2:
        return struct.pack("<I", MAX + 8) + f[4:]                          # over the limit
    if kind == 3:
        return f[:4] + struct.pack("<I", 0x44425443) + f[8:]               # bad magic
    return f[:8] + struct.pack("<I", 2) + f[12:]                           # bad version


@pytest.mark.parametrize("kind", [RECEIVE, CLIENT], ids=["node", "client"])
@pytest.mark.parametrize("seed", range(12))
def test_framing_and_its_errors_match_packet_reader(plane, seed, kind):
    """Random streams, some with a malformed header somewhere, cut at random: the plane passes
    on every frame before the malformed header and fails as PacketReader fails — in node mode
    for node connections, in client mode (unpadded packets welcome) for local clients.
    (PacketReader, fed whole reads, drops the frames of the read that holds the error, so the
    reference here is fed byte by byte, where no frame shares a feed with the error.)"""
    rng = random.Random(seed)
    node = kind == RECEIVE
    frames = [frame(32 + (8 if node else 1) * rng.randrange(0, 40 if node else 320), fill=i)
              for i in range(rng.randrange(1, 60))]
    if seed % 3:
        bad = rng.randrange(len(frames))
        frames[bad] = corrupt(rng, frames[bad])
    stream = b"".join(frames)
    chunks, pos = [], 0
    while pos < len(stream):
        step = rng.randrange(1, 300)
        chunks.append(stream[pos:pos + step])
        pos += step

    reader = PacketReader(MAX, node_transport=node)
    expected, error = [], None
    for i in range(len(stream)):
        try:
            expected += reader.feed(stream[i:i + 1])
        except ProtocolError as exc:
            error = str(exc)
            break

    ours, theirs = socket.socketpair()
    conn = plane.add(ours, kind)
    for chunk in chunks:
        try:
            theirs.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):   # the plane closed after the malformed header
            assert error is not None
            break
    got = wait_events(plane, lambda ev: any(k in (CLOSED, CLOSED_BAD) for k, _, _ in ev)
                      or (error is None and len(ev) >= len(expected)))
    assert [body for kind, _, body in got if kind == FRAME] == expected
    assert not any(kind == CLOSED for kind, _, _ in got)       # bad data is its own kind
    closes = [reason for kind, c, reason in got if kind == CLOSED_BAD]
    if error is None:
        assert closes == []
    else:
        assert closes == [f"malformed data: {error}"]
        assert plane.send(conn, frame(32)) is None        # gone once it failed
    theirs.close()


def test_a_burst_wakes_the_loop_once(plane):
    ours, theirs = socket.socketpair()
    plane.add(ours, RECEIVE)
    theirs.sendall(b"".join(frame(64, fill=i) for i in range(50)))
    time.sleep(0.2)
    assert plane.wakes == 1
    assert len(plane.events()) == 50
    assert plane.events() == []
    theirs.sendall(frame(40))
    assert len(wait_events(plane, lambda ev: len(ev) >= 1)) == 1
    assert plane.wakes == 2
    theirs.close()


def test_a_frame_larger_than_the_take_buffer_arrives_intact(plane):
    ours, theirs = socket.socketpair()
    plane.add(ours, RECEIVE)
    big = frame(MAX - 8, fill=3)
    theirs.setblocking(True)
    theirs.sendall(big + frame(48))
    got = wait_events(plane, lambda ev: len(ev) >= 2)
    assert [body for _, _, body in got] == [big, frame(48)]
    theirs.close()


def test_sends_queue_behind_a_full_socket_and_go_out_in_order(plane):
    ours, theirs = socket.socketpair()
    conn = plane.add(ours, SEND)
    frames = [frame(65536, fill=i) for i in range(120)]          # ~7.5 MiB, far over the buffer
    queued = [plane.send(conn, f) for f in frames]
    assert queued[0] == 0 and queued[-1] > 0                      # the first fits, later ones wait
    assert queued == sorted(queued)
    theirs.setblocking(True)
    want = b"".join(frames)
    got = bytearray()
    while len(got) < len(want):
        got += theirs.recv(1 << 20)
    assert bytes(got) == want
    deadline = time.monotonic() + 5
    while plane.counters(conn)[4] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert plane.counters(conn)[1:] == (len(frames), 0, len(want), 0)
    theirs.close()


def test_closes_say_why(plane):
    rx, rx_peer = socket.socketpair()
    tx, tx_peer = socket.socketpair()
    broken, broken_peer = socket.socketpair()
    rx_id, tx_id = plane.add(rx, RECEIVE), plane.add(tx, SEND)
    broken_id = plane.add(broken, SEND)
    rx_peer.close()                                  # the peer went away
    tx_peer.sendall(b"x" * 24)                       # a send-only connection must stay silent
    broken_peer.close()
    got = wait_events(plane, lambda ev: len(ev) >= 3)
    assert sorted((c, kind, reason) for kind, c, reason in got) == sorted([
        (rx_id, CLOSED, "closed by the peer"),
        (tx_id, CLOSED_BAD, "sent 24 bytes on a send-only connection"),
        (broken_id, CLOSED, "closed by the peer")])      # a send-only one notices too
    assert plane.send(broken_id, frame(32)) is None
    time.sleep(0.1)
    assert plane.events() == []                           # one CLOSED each, nothing after


def test_a_write_that_fails_closes_with_the_error(plane):
    ours, theirs = socket.socketpair()
    conn = plane.add(ours, SEND)
    theirs.shutdown(socket.SHUT_RD)                        # no reader, no EOF for the plane
    results = [plane.send(conn, frame(32)) for _ in range(3)]
    assert None in results
    got = wait_events(plane, lambda ev: len(ev) >= 1)
    assert len(got) == 1 and got[0][:2] == (CLOSED, conn)
    assert got[0][2] == "write failed: Broken pipe", got
    theirs.close()


def test_the_loop_closing_a_connection_closes_its_socket_and_silences_it(plane):
    ours, theirs = socket.socketpair()
    conn = plane.add(ours, RECEIVE)
    theirs.sendall(frame(32))
    assert len(wait_events(plane, lambda ev: len(ev) >= 1)) == 1
    plane.close(conn)
    theirs.settimeout(5)
    assert theirs.recv(10) == b""                   # the plane closed its end
    try:
        theirs.sendall(frame(32))
    except OSError:
        pass
    time.sleep(0.1)
    assert plane.events() == []
    assert plane.send(conn, frame(32)) is None and plane.counters(conn) is None


def test_destroy_closes_what_the_plane_holds(lib):
    p = NodePlane(MAX, lib=lib)
    ours, theirs = socket.socketpair()
    p.add(ours, SEND)
    p.destroy()
    theirs.settimeout(5)
    assert theirs.recv(10) == b""
    p.destroy()                                      # twice is harmless


def test_bad_arguments_are_refused(plane, lib):
    ours, theirs = socket.socketpair()
    with pytest.raises(OSError):
        plane.add(ours, 9)
    theirs.close()
    with pytest.raises(OSError):
        NodePlane(16, lib=lib)                       # below a header


@pytest.mark.skipif(os.geteuid() != 0, reason="setting SCHED_RR needs root (the suite runs as root)")
def test_the_planes_thread_takes_the_loops_real_time_policy(lib):
    """The daemon's loop runs SCHED_RR (as ctdbd's); a thread it starts would run SCHED_OTHER, and
    the loop, blocked on a mutex that thread holds, would wait behind every ordinary process."""
    import threading
    main = os.getpid()
    assert threading.current_thread() is threading.main_thread()
    before = set(os.listdir("/proc/self/task"))
    saved = os.sched_getscheduler(main), os.sched_getparam(main)
    # as the daemon runs: RR, reset on fork (so its children and new threads start SCHED_OTHER)
    os.sched_setscheduler(main, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(1))
    try:
        p = NodePlane(MAX, lib=lib)
        try:
            new = [int(t) for t in set(os.listdir("/proc/self/task")) - before]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not any(os.sched_getscheduler(t) & 0xFF == os.SCHED_RR
                                                          for t in new):
                time.sleep(0.01)
            assert [os.sched_getscheduler(t) & 0xFF for t in new] == [os.SCHED_RR]
            assert os.sched_getparam(new[0]).sched_priority == 1
        finally:
            p.destroy()
    finally:
        os.sched_setscheduler(main, saved[0], saved[1])
