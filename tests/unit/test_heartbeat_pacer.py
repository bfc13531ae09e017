"""The heartbeat pacer thread (server/heartbeat_pacer.py): what one beat sends, reads and raises,
and a real thread started and stopped."""

from __future__ import annotations

import threading
import time

from ctdblab.daemon.server.heartbeat_pacer import HeartbeatPacer, PacerTiming

TIMING = PacerTiming(interval=0.02, phase=0.0, alarm_silence=0.03, liveness_limit=0.12)


class FakeChannel:
    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.queued: list[tuple[int, float]] = []

    def send_fast(self, pnn: int, frame: bytes) -> bool:
        self.sent.append((pnn, frame))
        return True

    def drain_fast(self, wall_to_loop: float) -> list[tuple[int, float]]:
        out, self.queued = self.queued, []
        return out


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pacer_at(clock: Clock, channel: FakeChannel):
    wakes: list[float] = []
    pacer = HeartbeatPacer(channel, TIMING, wake=lambda: wakes.append(clock.now), warn=print, clock=clock)
    pacer.loop_alive(clock.now)
    return pacer, wakes


def test_a_beat_sends_to_the_targets_and_hands_the_arrivals_to_the_loop():
    clock, channel = Clock(), FakeChannel()
    pacer, wakes = pacer_at(clock, channel)
    pacer.set_targets(((1, b"to-1"), (2, b"to-2")))
    channel.queued = [(1, 99.99), (2, 99.995)]
    pacer.beat(TIMING)
    assert channel.sent == [(1, b"to-1"), (2, b"to-2")]
    assert pacer.take_arrivals() == [(1, 99.99), (2, 99.995)]
    assert pacer.take_arrivals() == [] and wakes == []


def test_no_beats_go_out_once_the_loop_has_not_looked_for_the_liveness_limit():
    clock, channel = Clock(), FakeChannel()
    pacer, _ = pacer_at(clock, channel)
    pacer.set_targets(((1, b"x"),))
    clock.now += 0.119
    pacer.beat(TIMING)
    assert len(channel.sent) == 1
    clock.now += 0.002                       # the loop is wedged: the node falls silent
    pacer.beat(TIMING)
    assert len(channel.sent) == 1
    pacer.loop_alive(clock.now)
    pacer.beat(TIMING)
    assert len(channel.sent) == 2


def test_a_silent_watched_peer_raises_the_alarm_once_per_silence():
    clock, channel = Clock(), FakeChannel()
    pacer, wakes = pacer_at(clock, channel)
    pacer.set_watched(frozenset({1, 2}))
    channel.queued = [(1, clock.now - 0.0197), (2, clock.now - 0.0197)]
    pacer.beat(TIMING)
    assert wakes == []
    clock.now += 0.02                        # peer 2 beats, peer 1 misses one: 39.7 ms
    channel.queued = [(2, clock.now - 0.0197)]
    pacer.beat(TIMING)
    assert wakes == [clock.now] and pacer.alarms == 1
    clock.now += 0.02                        # still silent: no second alarm
    channel.queued = [(2, clock.now - 0.0197)]
    pacer.beat(TIMING)
    assert len(wakes) == 1
    clock.now += 0.02                        # heard again, then silent again: a new alarm
    channel.queued = [(1, clock.now - 0.0197), (2, clock.now - 0.0197)]
    pacer.beat(TIMING)
    clock.now += 0.04
    channel.queued = [(2, clock.now - 0.0197)]
    pacer.beat(TIMING)
    assert len(wakes) == 2


def test_an_unwatched_or_never_heard_peer_raises_no_alarm_and_a_new_watch_starts_its_clock_anew():
    clock, channel = Clock(), FakeChannel()
    pacer, wakes = pacer_at(clock, channel)
    channel.queued = [(3, clock.now - 0.5)]
    pacer.set_watched(frozenset({4}))        # 3 is not watched, 4 never heard
    pacer.beat(TIMING)
    assert wakes == []
    pacer.set_watched(frozenset({3, 4}))     # 3 watched from now on: its old beat does not count
    clock.now += 0.02
    pacer.beat(TIMING)
    assert wakes == []


def test_the_thread_beats_on_the_grid_until_closed_and_survives_a_failing_channel():
    class Flaky(FakeChannel):
        calls = 0

        def drain_fast(self, wall_to_loop):
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise OSError("boom")
            return super().drain_fast(wall_to_loop)

    channel = Flaky()
    warned = []
    pacer = HeartbeatPacer(channel, PacerTiming(0.005, 0.0, 0.0075, 10.0), wake=lambda: None,
                           warn=warned.append)
    pacer.set_targets(((1, b"x"),))
    pacer.loop_alive(time.monotonic())
    pacer.start()
    try:
        deadline = time.monotonic() + 5
        while pacer.beats < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pacer.running and pacer.beats >= 5
        assert warned and "boom" in warned[0]
    finally:
        pacer.close()
    assert not pacer.running
    assert not any(t.name == "heartbeat-pacer" for t in threading.enumerate())
