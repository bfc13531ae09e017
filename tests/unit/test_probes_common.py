"""Event formatting and plumbing shared by the probes."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import threading
import time

import pytest

from ctdblab.history import KINDS
from ctdblab.scenarios.probes.common import (STOP, Emitter, OpRecorder, Waker, describe_error,
                                             host_port, install_stop_signals, port_number,
                                             positive_float, positive_int)


class FlushCounting(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_capture_event_is_one_flushed_history_line():
    stream = FlushCounting()
    out = Emitter("tcp_hold", "c1-hold", stream)
    before = time.time()
    out.capture("reset", conn=0, errno=104)
    (event,) = lines(stream)
    assert stream.flushes == 1
    assert event["kind"] == "capture" and event["kind"] in KINDS
    assert before <= event["t"] <= time.time()
    assert event == {"t": event["t"], "kind": "capture", "probe": "tcp_hold",
                     "process": "c1-hold", "what": "reset", "conn": 0, "errno": 104}


def test_explicit_time_is_kept():
    stream = io.StringIO()
    Emitter("ping", "p", stream).capture("reply", t=1795471424.654107, seq=1)
    assert lines(stream)[0]["t"] == 1795471424.654107


def test_op_events_follow_the_history_op_format():
    stream = io.StringIO()
    ops = OpRecorder(Emitter("smb_retry", "c1-retry", stream), "smb_connect_read",
                     "198.19.8.1", "victim")
    first = ops.invoke(loop=3)
    second = ops.invoke(loop=4)
    ops.ok(first, 0.0123456789, value=65536)
    ops.fail(second, 2.0, "DeadlineExceeded: no answer within 2 s", phase="read")
    inv1, inv2, ok, fail = lines(stream)
    assert (first, second) == (1, 2)
    for e in (inv1, inv2, ok, fail):
        assert e["kind"] == "op" and e["f"] == "smb_connect_read"
        assert e["process"] == "c1-retry" and e["role"] == "victim" and e["target"] == "198.19.8.1"
    assert inv1["type"] == "invoke" and inv1["id"] == 1 and inv1["loop"] == 3
    assert "latency_s" not in inv1
    assert ok["type"] == "ok" and ok["id"] == 1 and ok["latency_s"] == 0.012346
    assert ok["value"] == 65536
    assert fail["type"] == "fail" and fail["id"] == 2 and fail["phase"] == "read"
    assert fail["error"].startswith("DeadlineExceeded")


def test_op_ids_are_unique_across_threads():
    ops = OpRecorder(Emitter("x", "x", io.StringIO()), "f", "198.19.8.1", None)
    ids: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(200):
            i = ops.invoke()
            with lock:
                ids.append(i)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(ids) == list(range(1, 801))


def test_no_role_means_no_role_field():
    stream = io.StringIO()
    OpRecorder(Emitter("x", "x", stream), "f", "198.19.8.1", None).invoke()
    assert "role" not in lines(stream)[0]


class Broken(io.StringIO):
    def write(self, _text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_does_not_crash_the_probe():
    out = Emitter("ping", "p", Broken())
    out.capture("reply", seq=1)
    out.capture("reply", seq=2)
    assert out.broken


def test_describe_error():
    assert describe_error(ConnectionResetError(104, "Connection reset by peer")) == \
        "ConnectionResetError: [Errno 104] Connection reset by peer"
    assert describe_error(TimeoutError()) == "TimeoutError"


def test_waker_returns_reasons_and_times_out():
    waker = Waker()
    try:
        assert waker.wait(timeout=0.01) == []
        threading.Timer(0.02, waker.post, args=("go",)).start()
        began = time.monotonic()
        assert waker.wait() == ["go"]
        assert time.monotonic() - began < 2
        for _ in range(10000):   # more wake-ups than the pipe holds: reasons are still kept
            waker.post("x")
        assert len(waker.wait()) == 10000
    finally:
        waker.close()


def test_sigterm_posts_stop():
    waker = Waker()
    old_term, old_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        install_stop_signals(waker)
        os.kill(os.getpid(), signal.SIGTERM)
        assert STOP in waker.wait(timeout=2)
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
        waker.close()


@pytest.mark.parametrize("func,text,named", [
    (positive_float, "0", "'0'"), (positive_float, "-1", "'-1'"), (positive_float, "abc", "'abc'"),
    (positive_int, "0", "'0'"), (positive_int, "1.5", "'1.5'"), (port_number, "0", "'0'"),
    (port_number, "65536", "'65536'"), (host_port, "198.19.8.1", "'198.19.8.1'"),
    (host_port, ":445", "':445'"), (host_port, "host:445", "'host'"),
    (host_port, "198.19.8.1:x", "'x'"), (host_port, "300.1.1.1:445", "'300.1.1.1'"),
])
def test_bad_option_values_are_rejected_naming_the_value(func, text, named):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        func(text)
    assert named in str(info.value)


def test_good_option_values():
    assert host_port("198.19.8.1:445") == ("198.19.8.1", 445)
    assert positive_float("0.02") == 0.02 and positive_int("10") == 10 and port_number("7777") == 7777


def test_a_closed_pipe_calls_on_broken_once():
    calls = []
    out = Emitter("ping", "p", Broken(), on_broken=lambda: calls.append(1))
    out.capture("reply", seq=1)
    out.capture("reply", seq=2)
    assert calls == [1]
