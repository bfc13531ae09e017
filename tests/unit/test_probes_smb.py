"""SMB probes without a server: the stagger schedule, options, and the deadline watchdog."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

import pytest

from ctdblab.scenarios.probes import smb_hold, smb_retry, smb_stall
from ctdblab.scenarios.probes.smb_retry import aligned_connect_timeout, next_start, stagger_offsets
from ctdblab.scenarios.probes.smbops import SmbTarget, Watchdog, failure_text, smb_target_from_args


def test_stagger_offsets_default_is_every_50_ms():
    offsets = stagger_offsets(10, 0.5)
    assert offsets == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45])
    assert stagger_offsets(1, 0.5) == [0.0]
    with pytest.raises(ValueError):
        stagger_offsets(0, 0.5)
    with pytest.raises(ValueError):
        stagger_offsets(3, 0)


def test_next_start_is_the_next_slot_or_at_once():
    # Loop with origin 10.0 and interval 0.5: slots 10.0, 10.5, 11.0, ...
    # A refused connection fails at once: wait for the loop's next slot.
    assert next_start(10.0, 10.001, 0.5, 10.0) == 10.5
    # A connect timeout that ends a little after the slot: retry at once.
    assert next_start(10.0, 10.52, 0.5, 10.0) == 10.52
    # Started late (after a long attempt): the next slot is still on the grid.
    assert next_start(12.3, 12.31, 0.5, 10.0) == pytest.approx(12.5)
    # A 2 s deadline: retry at once.
    assert next_start(10.0, 12.0, 0.5, 10.0) == 12.0
    # Float noise just below a slot does not count as the slot before.
    assert next_start(10.5 - 1e-12, 10.6, 0.5, 10.0) == pytest.approx(11.0)


def test_connect_timeout_is_trimmed_to_end_on_a_slot():
    # On time: the full 0.5 s.
    assert aligned_connect_timeout(10.5, 10.0, 0.5, 0.5) == pytest.approx(0.5)
    # 7 ms late (the previous connect timed out): 7 ms shorter, ends on the next slot.
    assert aligned_connect_timeout(10.507, 10.0, 0.5, 0.5) == pytest.approx(0.493)
    # 0.3 s late (after a long attempt): realign on the slot nearest to 0.5 s from now.
    assert aligned_connect_timeout(10.3, 10.0, 0.5, 0.5) == pytest.approx(0.7)
    # A connect timeout much shorter than the interval is left alone.
    assert aligned_connect_timeout(10.2, 10.0, 0.5, 0.1) == pytest.approx(0.1)
    # A longer one is aligned too.
    assert aligned_connect_timeout(10.01, 10.0, 0.5, 2.0) == pytest.approx(1.99)


def simulated_starts(loops: int, interval: float, duration, horizon: float) -> list[float]:
    """Attempt start times of all loops; ``duration(start, connect_timeout)`` says how long
    each attempt lasts."""
    starts = []
    for offset in stagger_offsets(loops, interval):
        t = offset
        while t < horizon:
            starts.append(t)
            end = t + duration(t, aligned_connect_timeout(t, offset, interval, 0.5))
            t = next_start(t, end, interval, offset)
    return sorted(starts)


@pytest.mark.parametrize("duration,worst_gap", [
    (lambda t, ct: 0.001, 0.05),                        # refused at once
    (lambda t, ct: 0.03, 0.05),                         # a quick success or SMB-level failure
    (lambda t, ct: ct, 0.05),                           # dead server: the connect times out
    (lambda t, ct: ct + 0.003, 0.053),                  # ... plus 3 ms of thread overhead
    (lambda t, ct: ct + 0.010 * ((t * 7919) % 1), 0.06),  # ... plus 0..10 ms of jitter
])
def test_resolution_of_the_schedule_is_interval_over_k(duration, worst_gap):
    # Over a 30 s outage the loops stay 50 ms apart: the overhead of one attempt shows up in
    # one gap at most, it does not accumulate.
    starts = simulated_starts(10, 0.5, duration, horizon=30.0)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert max(gaps) <= worst_gap + 1e-9
    assert len(starts) >= 30 / 0.5 * 10 * 0.85


def test_long_attempts_keep_the_loops_staggered():
    # Attempts that hang until the 2 s deadline (TCP up, SMB blocked): every loop restarts at
    # once, so 10 attempts are always in flight and their starts stay 50 ms apart.
    starts = simulated_starts(10, 0.5, lambda t, ct: 2.0, horizon=10.0)
    phases = sorted({round(t % 2.0, 9) for t in starts})
    assert phases == pytest.approx(stagger_offsets(10, 0.5))
    assert len(starts) == 10 * 5


COMMON = ["198.19.8.1", "--password", "secret", "--file", "probe.dat"]


def test_smb_retry_options_and_defaults():
    args = smb_retry.build_parser().parse_args(COMMON)
    assert (args.loops, args.interval, args.connect_timeout, args.deadline) == (10, 0.5, 0.5, 2.0)
    assert (args.read_size, args.stop_after_success, args.role) == (65536, 3, "victim")
    assert (args.user, args.share, args.port, args.process) == ("root", "share", 445, "smb_retry")
    target = smb_target_from_args(args)
    assert target == SmbTarget("198.19.8.1", "share", "root", "secret", 445, False)
    assert target.unc_share == r"\\198.19.8.1\share"


@pytest.mark.parametrize("bad", [
    ["--loops", "0"], ["--interval", "-1"], ["--role", "leader"], ["--port", "70000"],
    ["--deadline", "x"],
])
def test_smb_retry_rejects_bad_options(bad):
    with pytest.raises(SystemExit):
        smb_retry.build_parser().parse_args(COMMON + bad)


def test_password_and_file_are_required():
    with pytest.raises(SystemExit):
        smb_retry.build_parser().parse_args(["198.19.8.1", "--file", "f"])
    with pytest.raises(SystemExit):
        smb_hold.build_parser().parse_args(["198.19.8.1", "--password", "p"])


def test_smb_hold_and_stall_defaults():
    hold = smb_hold.build_parser().parse_args(COMMON)
    assert (hold.period, hold.read_size, hold.role) == (0.2, 4096, "victim")
    assert hold.op_deadline >= 60   # must outlast a real failover, see the module doc
    stall = smb_stall.build_parser().parse_args(COMMON)
    assert (stall.period, stall.read_size, stall.role) == (0.1, 1 << 20, "survivor")


def fake_connection() -> tuple[SimpleNamespace, socket.socket, socket.socket]:
    """An object shaped like smbprotocol's Connection, over a socketpair."""
    ours, theirs = socket.socketpair()
    conn = SimpleNamespace(transport=SimpleNamespace(_sock=ours))
    return conn, ours, theirs


def blocked_reader(sock: socket.socket) -> tuple[threading.Thread, list[float]]:
    woke: list[float] = []

    def read() -> None:
        sock.recv(10)          # returns b"" once the watchdog shuts the socket down
        woke.append(time.monotonic())

    th = threading.Thread(target=read, daemon=True)
    th.start()
    return th, woke


def test_watchdog_shuts_the_socket_down_at_the_deadline():
    watchdog = Watchdog()
    conn, ours, theirs = fake_connection()
    try:
        reader, woke = blocked_reader(ours)
        began = time.monotonic()
        with watchdog.guard(conn, 0.1) as deadline:
            reader.join(3)
        assert woke, "the blocked recv() was not woken"
        assert 0.09 <= woke[0] - began < 1.0
        assert deadline.fired and not deadline.aborted
        assert "DeadlineExceeded: no answer within 0.1 s" in failure_text(OSError("x"), deadline)
    finally:
        watchdog.close()
        ours.close()
        theirs.close()


def test_watchdog_leaves_finished_steps_alone():
    watchdog = Watchdog()
    conn, ours, theirs = fake_connection()
    try:
        with watchdog.guard(conn, 0.05) as deadline:
            pass
        time.sleep(0.15)
        assert not deadline.fired
        theirs.send(b"ok")
        assert ours.recv(10) == b"ok"   # the socket still works
    finally:
        watchdog.close()
        ours.close()
        theirs.close()


def test_abort_all_wakes_every_pending_step_and_marks_it_aborted():
    watchdog = Watchdog()
    pairs = [fake_connection() for _ in range(3)]
    try:
        readers = []
        deadlines = []
        for conn, ours, _ in pairs:
            readers.append(blocked_reader(ours))
            deadline = watchdog.guard(conn, 60)
            deadline.__enter__()
            deadlines.append(deadline)
        assert watchdog.abort_all() == 3
        for reader, woke in readers:
            reader.join(3)
            assert woke
        assert all(d.fired and d.aborted for d in deadlines)
        assert failure_text(OSError("x"), deadlines[0]).startswith("aborted")
    finally:
        watchdog.close()
        for _, ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_after_abort_all_new_steps_are_refused():
    watchdog = Watchdog()
    conn, ours, theirs = fake_connection()
    try:
        watchdog.abort_all()
        with watchdog.guard(conn, 60) as deadline:
            assert deadline.fired and deadline.aborted
            with pytest.raises(Exception, match="no answer"):
                deadline.check()
    finally:
        watchdog.close()
        ours.close()
        theirs.close()
