"""tcp_hold and tcp_listener on the loopback interface (no root, no namespaces)."""

from __future__ import annotations

import io
import json
import signal
import socket
import struct
import threading
import time

import pytest

from ctdblab.scenarios.probes import tcp_hold, tcp_listener
from ctdblab.scenarios.probes.common import STOP, Emitter, Waker
from ctdblab.scenarios.probes.tcp_hold import HeldConnection
from ctdblab.scenarios.probes.tcp_listener import Listener, open_listener


def events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def wait_for(predicate, timeout: float = 3.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


@pytest.fixture
def server():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock
    sock.close()


def hold(target, **options) -> tuple[HeldConnection, io.StringIO, Waker]:
    stream = io.StringIO()
    waker = Waker()
    settings = dict(local_ip=None, local_port=None, connect_timeout=2.0, greeting=False,
                    greeting_timeout=1.0, hold_timeout=None, send_interval=None)
    settings.update(options)
    conn = HeldConnection(0, target, Emitter("tcp_hold", "c1", stream), waker, **settings)
    conn.start()
    return conn, stream, waker


def test_reset_is_reported_once_with_errno_and_addresses(server):
    conn, stream, _ = hold(server.getsockname())
    peer, _ = server.accept()
    wait_for(lambda: any(e["what"] == "connected" for e in events(stream)))
    # SO_LINGER 0 + close sends an RST.
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    t_rst = time.time()
    peer.close()
    conn.join(3)
    connected, final = events(stream)
    assert connected["local_ip"] == "127.0.0.1" and connected["remote_port"] == server.getsockname()[1]
    assert connected["target"] == f"127.0.0.1:{server.getsockname()[1]}"
    assert final["what"] == "reset" and final["errno"] == 104 and final["phase"] == "recv"
    assert t_rst <= final["t"] < t_rst + 1
    assert conn.final == "reset"
    assert not conn.finish("stopped")     # exactly one final event
    assert len(events(stream)) == 2


def test_fin_is_eof(server):
    conn, stream, _ = hold(server.getsockname())
    peer, _ = server.accept()
    peer.close()
    conn.join(3)
    assert [e["what"] for e in events(stream)] == ["connected", "eof"]


def test_hold_timeout(server):
    conn, stream, _ = hold(server.getsockname(), hold_timeout=0.1)
    peer, _ = server.accept()
    conn.join(3)
    final = events(stream)[-1]
    assert final["what"] == "timeout" and 0.1 <= final["held_s"] < 1
    peer.close()


def test_refused_connect_is_an_error_with_errno():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                          # nothing listens there now
    conn, stream, _ = hold(("127.0.0.1", port))
    conn.join(3)
    (final,) = events(stream)
    assert final["what"] == "error" and final["phase"] == "connect"
    assert final["errno_name"] == "ECONNREFUSED"


def test_greeting_local_port_and_send_interval(server):
    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    local_port = spare.getsockname()[1]
    spare.close()
    conn, stream, _ = hold(server.getsockname(), greeting=True, local_port=local_port,
                           send_interval=0.05)
    peer, _ = server.accept()
    peer.sendall(b"hello there\r\nmore")
    wait_for(lambda: any(e["what"] == "connected" for e in events(stream)))
    time.sleep(0.3)
    peer.settimeout(1)
    sent = peer.recv(100)
    assert 2 <= len(sent) <= 10 and set(sent) == {ord(".")}
    connected = events(stream)[0]
    assert connected["greeting"] == "hello there" and connected["local_port"] == local_port
    conn.finish("stopped")
    peer.close()


def test_missing_greeting_is_an_error(server):
    conn, stream, _ = hold(server.getsockname(), greeting=True, greeting_timeout=0.1)
    peer, _ = server.accept()
    conn.join(3)
    (final,) = events(stream)
    assert final["what"] == "error" and final["phase"] == "greeting"
    peer.close()


def test_tcp_hold_options():
    args = tcp_hold.build_parser().parse_args(["198.19.8.1:445", "198.19.8.1:7777",
                                               "--local-port", "40000", "--greeting"])
    assert args.targets == [("198.19.8.1", 445), ("198.19.8.1", 7777)]
    assert args.local_port == [40000] and args.greeting
    with pytest.raises(SystemExit):
        tcp_hold.main(["198.19.8.1:445", "--local-port", "1", "--local-port", "2"])
    with pytest.raises(SystemExit):
        tcp_hold.build_parser().parse_args(["198.19.8.1"])


def run_listener(greeting: bytes | None = None):
    stream = io.StringIO()
    waker = Waker()
    sock = open_listener("127.0.0.1", 0, freebind=False)
    listener = Listener(Emitter("tcp_listener", "n1-lis", stream), waker, [sock], greeting)
    thread = threading.Thread(target=listener.run, daemon=True)
    thread.start()
    return listener, thread, waker, stream, sock.getsockname()


def test_listener_accepts_many_holds_them_and_never_answers():
    listener, thread, waker, stream, address = run_listener()
    clients = []
    try:
        for _ in range(200):
            clients.append(socket.create_connection(address, timeout=2))
        wait_for(lambda: listener.accepted == 200)
        for c in clients[:50]:
            c.sendall(b"x" * 1000)       # read and thrown away, never answered
        clients[0].setblocking(False)
        with pytest.raises(BlockingIOError):
            clients[0].recv(10)
        for c in clients[:10]:
            c.close()
        wait_for(lambda: len(listener.held) == 190)
    finally:
        waker.post(STOP)
        thread.join(3)
        listener.close()
        for c in clients:
            c.close()
    got = events(stream)
    accepted = [e for e in got if e["what"] == "accepted"]
    closed = [e for e in got if e["what"] == "closed"]
    assert len(accepted) == 200 and len({e["remote_port"] for e in accepted}) == 200
    assert accepted[-1]["open"] == 200 and accepted[0]["local_port"] == address[1]
    assert len(closed) == 10 and {e["how"] for e in closed} == {"eof"}
    assert not thread.is_alive()


def test_listener_greeting():
    listener, thread, waker, stream, address = run_listener(b"hi\n")
    try:
        with socket.create_connection(address, timeout=2) as c:
            assert c.recv(10) == b"hi\n"
    finally:
        waker.post(STOP)
        thread.join(3)
        listener.close()


def test_listener_options_and_port_in_use():
    args = tcp_listener.build_parser().parse_args(["--port", "7777", "--port", "7778"])
    assert args.port == [7777, 7778] and args.bind == "0.0.0.0"
    with pytest.raises(SystemExit):
        tcp_listener.build_parser().parse_args([])
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert tcp_listener.main(["--bind", "127.0.0.1", "--port", str(busy.getsockname()[1])]) == 1
    finally:
        busy.close()
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_listener_process_stops_when_nobody_reads_its_output():
    import subprocess
    import sys

    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()
    proc = subprocess.Popen([sys.executable, "-m", "ctdblab.scenarios.probes.tcp_listener",
                             "--bind", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert json.loads(proc.stdout.readline())["what"] == "listening"
        proc.stdout.close()                       # the orchestrator went away
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            assert proc.wait(10) == 0             # its "accepted" line had nowhere to go
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_final_is_set_only_once_its_line_is_written():
    """main() exits once every connection has a final; a final set before its event reached
    stdout lost the line (three resets at once: 'finals' said reset x3, one reset line)."""
    release = threading.Event()

    class SlowStream(io.StringIO):
        def write(self, text):
            release.wait(5)
            return super().write(text)

    stream = SlowStream()
    conn = HeldConnection(0, ("127.0.0.1", 9), Emitter("tcp_hold", "c1", stream), Waker(),
                          local_ip=None, local_port=None, connect_timeout=1.0, greeting=False,
                          greeting_timeout=1.0, hold_timeout=None, send_interval=None)
    writer = threading.Thread(target=conn.finish, args=("reset",))
    writer.start()
    time.sleep(0.1)
    assert conn.final is None            # its line is not out yet
    release.set()
    writer.join(5)
    assert conn.final == "reset"
    assert [e["what"] for e in events(stream)] == ["reset"]
