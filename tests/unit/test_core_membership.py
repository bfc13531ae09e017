from __future__ import annotations

import pytest

from ctdblab.daemon.core.membership import (
    DetectorSettings,
    FailureDetector,
    LoopStalled,
    PeerDead,
    PeerStalled,
    ProbeKernel,
    SendHeartbeat,
    SendKeepalive,
    SendWatch,
)

FAST = DetectorSettings(heartbeat_interval=0.05, dead_timeout=0.25, keepalive_interval=5.0,
                        keepalive_limit=5, watchers=2)


def of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def run(det, start, end, step=0.05, feed=None):
    """Tick the detector every `step` from start to end; feed(now) may inject traffic."""
    out = []
    t = start
    while t <= end + 1e-9:
        if feed:
            feed(t)
        out += [(round(t, 3), a) for a in det.tick(t)]
        t += step
    return out


def test_ring_watchers_and_rewatch():
    det = FailureDetector(2, FAST, now=0.0)
    acts = []
    for p in (0, 1, 3, 4):
        acts += det.peer_up(p, 0.0)
    assert det.my_watchers == [3, 4]
    # Unwatch messages went to nodes that stopped being watchers while connected.
    assert SendWatch(0, watch=False) in acts or SendWatch(1, watch=False) in acts
    acts = det.peer_down(3, 0.1)
    assert det.my_watchers == [4, 0]
    assert acts == [SendWatch(0)]
    acts = det.tick(0.1)
    assert set(of(acts, SendHeartbeat)) == {SendHeartbeat(4), SendHeartbeat(0)}


def test_watched_peer_declared_dead_after_dead_timeout():
    det = FailureDetector(0, FAST, now=0.0)
    det.peer_up(1, 0.0)
    det.watch_request(1, True, 0.0)
    # Heartbeats until t=1.0, then silence.
    feed = lambda t: det.fast_heartbeat(1, t) if t <= 1.0 + 1e-9 else None
    out = run(det, 0.05, 2.0, feed=feed)
    deaths = [(t, a) for t, a in out if isinstance(a, PeerDead)]
    assert len(deaths) == 1
    t, dead = deaths[0]
    assert dead.pnn == 1 and dead.fast
    assert 1.25 <= t <= 1.30 + 1e-9         # dead timeout plus at most one tick
    assert det.silence(1, 2.0) is None       # forgotten once dead


def test_dead_deadline_is_a_timer_of_its_own():
    """The shell calls tick() at next_deadline(): detection is not rounded up to a tick."""
    det = FailureDetector(0, DetectorSettings(heartbeat_interval=0.1, dead_timeout=0.25), now=0.0)
    det.peer_up(1, 0.0)
    det.watch_request(1, True, 0.0)
    det.fast_heartbeat(1, 0.01)              # the last heartbeat, 10 ms after a tick
    t, deaths = 0.0, []
    while not deaths and t < 2:
        t = det.next_deadline()
        deaths = of(det.tick(t), PeerDead)
    # Its kernel was first asked on the tick at 0.2 s (190 ms of silence): the verdict waits a
    # quarter timeout for the answer, to 0.2625 s, not for the next tick at 0.3 s.
    assert deaths and t == pytest.approx(0.2625, abs=0.002)


def test_unwatched_peer_is_not_declared_by_fast_path():
    det = FailureDetector(0, FAST, now=0.0)
    det.peer_up(1, 0.0)                     # connected, but it never asked us to watch it
    out = run(det, 0.05, 3.0)
    assert not of([a for _, a in out], PeerDead)


def test_watch_starts_only_after_a_fast_heartbeat():
    det = FailureDetector(0, FAST, now=0.0)
    det.peer_up(1, 0.0)
    det.watch_request(1, True, 0.0)
    det.traffic(1, 0.5)                 # TCP traffic, but its fast channel never delivers
    assert det.watched_peers() == []
    out = run(det, 0.05, 3.0)
    assert not of([a for _, a in out], PeerDead)


def test_unwatch_disarms():
    det = FailureDetector(0, FAST, now=0.0)
    det.peer_up(1, 0.0)
    det.watch_request(1, True, 0.0)
    det.fast_heartbeat(1, 0.05)
    assert det.watched_peers() == [1]
    det.watch_request(1, False, 0.1)
    assert det.watched_peers() == []
    assert not of(det.tick(1.0), PeerDead)


def test_own_stall_does_not_blame_peers():
    det = FailureDetector(0, FAST, now=0.0)
    det.peer_up(1, 0.0)
    det.watch_request(1, True, 0.0)
    det.fast_heartbeat(1, 0.0)
    acts = det.tick(2.0)                    # we were frozen for two seconds
    assert of(acts, LoopStalled) and not of(acts, PeerDead)
    det.fast_heartbeat(1, 2.01)
    assert not of(det.tick(2.06), PeerDead)


def test_ctdb_keepalive_count():
    slow = DetectorSettings(heartbeat_interval=0.05, dead_timeout=0, keepalive_interval=1.0,
                            keepalive_limit=2)
    det = FailureDetector(0, slow, now=0.0)
    det.peer_up(1, 0.0)
    det.traffic(1, 0.5)
    assert det.next_deadline() == pytest.approx(0.05)
    acts = det.tick(1.0)
    assert acts == [SendKeepalive(1)]       # traffic seen: count reset
    acts = det.tick(2.0)
    assert acts == [SendKeepalive(1)]       # dead_count 1
    acts = det.tick(3.0)
    dead = of(acts, PeerDead)
    assert dead and not dead[0].fast and "keepalive intervals" in dead[0].reason


def test_evidence_queries_for_death_reports():
    det = FailureDetector(0, FAST, now=0.0)
    det.peer_up(1, 0.0)
    det.traffic(1, 1.0)
    assert det.last_heard(1) == 1.0 and det.silence(1, 1.05) == pytest.approx(0.05)
    assert not det.watching(1)                      # it never asked us to watch it
    det.watch_request(1, True, 1.0)
    assert not det.watching(1)                      # asked, but no fast heartbeat yet
    det.fast_heartbeat(1, 1.1)
    assert det.watching(1) and det.last_heard(1) == 1.1
    assert det.last_heard(7) is None and det.silence(7, 1.5) is None and not det.watching(7)


def test_next_deadline_on_the_phase_grid_and_settings_validation():
    det = FailureDetector(0, FAST, now=10.0)
    assert det.next_deadline() == pytest.approx(10.05)
    det = FailureDetector(0, DetectorSettings(heartbeat_interval=0.1, wall_offset=0.03), now=10.0)
    assert det.next_deadline() == pytest.approx(10.03)     # on the grid 0.03 + k * 0.1
    det = FailureDetector(0, DetectorSettings(heartbeat_interval=0.1, wall_offset=0.03), now=10.11)
    assert det.next_deadline() == pytest.approx(10.23)     # 10.13 is too close: skip to the next
    with pytest.raises(ValueError):
        DetectorSettings(heartbeat_interval=0)
    with pytest.raises(ValueError):
        DetectorSettings(watchers=0)


def test_fast_path_disabled_sends_no_heartbeats():
    det = FailureDetector(0, DetectorSettings(dead_timeout=0), now=0.0)
    assert det.peer_up(1, 0.0) == []
    assert not of(det.tick(0.1), SendHeartbeat)


def test_each_tick_heartbeats_the_watchers():
    det = FailureDetector(0, FAST, now=0.0)
    det.peer_up(1, 0.0)
    det.peer_up(2, 0.0)
    det.peer_up(3, 0.0)
    assert set(of(det.tick(0.05), SendHeartbeat)) == {SendHeartbeat(1), SendHeartbeat(2)}


def _run(det: FailureDetector, beats: list[float], until: float) -> float | None:
    """Feed `beats` from peer 1 and tick on time (det.next_deadline()) until `until`; the time
    peer 1 was declared dead, or None."""
    pending = sorted(beats)
    while True:
        due = det.next_deadline()
        if pending and pending[0] <= due:
            det.fast_heartbeat(1, pending.pop(0))
            continue
        if due > until:
            return None
        if any(isinstance(a, PeerDead) for a in det.tick(due)):
            return due


def _detector() -> FailureDetector:
    det = FailureDetector(0, DetectorSettings(heartbeat_interval=0.015, dead_timeout=0.06), now=0.0)
    det.peer_up(1, 0.0)
    det.watch_request(1, True, 0.0)
    return det


def test_a_quiet_peer_gets_the_plain_dead_timeout():
    det = _detector()
    beats = [0.001 + i * 0.015 for i in range(40)]
    dead_at = _run(det, beats, until=2.0)
    assert dead_at is not None and beats[-1] + 0.06 <= dead_at <= beats[-1] + 0.06 + 0.002


def test_jittery_heartbeats_stretch_the_timeout_so_a_late_one_does_not_kill():
    """The lab under stress-ng: heartbeats 15 ms apart now and then arrive 45 ms after the
    previous one. A 61 ms silence used to kill a live peer with a 60 ms dead timeout."""
    det = _detector()
    beats, t = [], 0.001
    for i in range(60):
        t += 0.045 if i % 7 == 3 else 0.015
        beats.append(t)
    beats.append(t + 0.061)                                    # a 61 ms silence, then alive
    assert _run(det, beats, until=beats[-1]) is None
    assert det.timeout_of(det._peers[1]) == pytest.approx(2 * 0.061, abs=0.001)   # its longest gap
    # It stops: dead after the stretched timeout, not the plain 60 ms (nor later).
    dead_at = _run(det, [], until=beats[-1] + 1.0)
    assert dead_at is not None and 0.122 <= dead_at - beats[-1] <= 0.124
    # After a long calm the stretch decays back to the plain timeout.
    calm = _detector()
    _run(calm, beats + [beats[-1] + k * 0.015 for k in range(1, 600)], until=beats[-1] + 600 * 0.015)
    assert calm.timeout_of(calm._peers[1]) == pytest.approx(0.06)


def _run_probing(det: FailureDetector, beats: list[float], until: float, answers: bool,
                 answer_until: float = float("inf")) -> tuple[float | None, list]:
    """As _run, and peer 1's kernel answers each ProbeKernel 0.2 ms later while `answers` and
    before `answer_until` (a host that is up; after that instant it lost power). Returns the
    time of death (or None) and every action."""
    pending = sorted(beats)
    answers_due: list[float] = []
    seen: list = []
    while True:
        due = det.next_deadline()
        nxt = min(pending[:1] + answers_due[:1], default=None)
        if nxt is not None and nxt <= due:
            if answers_due and answers_due[0] == nxt:
                det.kernel_answer(1, answers_due.pop(0))
            else:
                det.fast_heartbeat(1, pending.pop(0))
            continue
        if due > until:
            return None, seen
        acts = det.tick(due)
        seen += acts
        for a in of(acts, ProbeKernel):
            if answers and due < answer_until:
                answers_due.append(due + 0.0002)
        if of(acts, PeerDead):
            return due, seen


def _stall(at: float, length: float) -> list[float]:
    """15 ms heartbeats from peer 1 for 1 s with no beat in [at, at + length)."""
    beats = [0.001 + i * 0.015 for i in range(67)]
    return [b for b in beats if not at <= b < at + length]


def test_a_silent_peer_kernel_is_asked_on_the_ticks_before_its_deadline():
    det = _detector()
    dead_at, acts = _run_probing(det, [0.001 + i * 0.015 for i in range(10)], until=1.0, answers=False)
    last = 0.001 + 9 * 0.015
    probes = of(acts, ProbeKernel)
    assert probes == [ProbeKernel(1)] * 2                # the ticks at 44 and 59 ms of silence
    # No answer (powered off, partitioned): dead after the plain timeout, not a bit later.
    assert dead_at is not None and last + 0.06 <= dead_at <= last + 0.062
    reason = of(acts, PeerDead)[0].reason
    assert "kernel" not in reason


def test_a_stall_its_kernel_answers_through_is_not_a_death():
    """Fast soak seed 16: a daemon blocked 52 ms in the kernel was declared dead by a watcher
    with a 60 ms timeout. Its kernel answers an echo meanwhile: the watcher holds."""
    beats = _stall(0.3, 0.085)              # 85 ms without a heartbeat, then alive again
    det = _detector()
    dead_at, acts = _run_probing(det, beats, until=1.0, answers=True)
    assert dead_at is None
    stalls = of(acts, PeerStalled)
    assert len(stalls) == 1 and stalls[0].pnn == 1 and stalls[0].silence == pytest.approx(0.105)   # 6 beats missed
    # The same stall without kernel answers is a death: the test can fail.
    det = _detector()
    dead_at, _ = _run_probing(det, beats, until=1.0, answers=False)
    assert dead_at is not None


def test_a_frozen_peer_on_a_live_host_is_dead_after_three_timeouts():
    beats = [0.001 + i * 0.015 for i in range(20)]
    det = _detector()
    dead_at, acts = _run_probing(det, beats, until=2.0, answers=True)
    assert dead_at is not None and beats[-1] + 0.18 <= dead_at <= beats[-1] + 0.182
    assert "its kernel last answered" in of(acts, PeerDead)[0].reason


def test_a_host_that_loses_power_during_a_hold_is_dead_one_timeout_after_its_last_answer():
    beats = [0.001 + i * 0.015 for i in range(20)]
    det = _detector()
    # Its kernel answers the first probe (at ~45 ms of silence), then the host is gone.
    dead_at, acts = _run_probing(det, beats, until=2.0, answers=True, answer_until=beats[-1] + 0.05)
    first_answer = beats[-1] + 0.045 + 0.0002
    assert dead_at is not None and dead_at == pytest.approx(first_answer + 0.06, abs=0.0015)


def test_held_is_true_only_past_the_timeout_while_the_kernel_answers():
    det = _detector()
    det.fast_heartbeat(1, 0.001)
    assert not det.held(1, 0.03)
    det.kernel_answer(1, 0.045)
    assert not det.held(1, 0.05)                         # not past its timeout yet
    assert det.held(1, 0.07)
    assert not det.held(1, 0.11)                         # one timeout after its kernel's answer
    det.kernel_answer(1, 0.1)
    det.kernel_answer(1, 0.16)
    assert det.held(1, 0.175)
    assert not det.held(1, 0.185)                        # three timeouts of silence: no longer
    assert not det.held(2, 0.07)                         # unknown peer


@pytest.mark.parametrize("interval, wanted", [(0.015, False), (0.025, True)])
def test_heartbeats_are_read_before_a_tick_that_would_act_on_stale_arrivals(interval, wanted):
    """The shell reads the heartbeat socket every second tick. Two ticks of staleness are 30 ms
    at 15 ms heartbeats (no deadline or echo request is near: no read needed) but 50 ms at
    25 ms: a missed heartbeat with the deadline near (an echo would go to a live peer), and
    the deadline before the next tick (a wake-up of its own)."""
    det = FailureDetector(0, DetectorSettings(heartbeat_interval=interval, dead_timeout=0.06), now=0.0)
    det.peer_up(1, 0.0)
    det.watch_request(1, True, 0.0)
    det.fast_heartbeat(1, 1.0 + 0.0002)                 # read at the tick at 1.0
    now = 1.0 + 2 * interval                             # two ticks later, nothing read since
    assert det.heartbeats_wanted(now) is wanted
    assert det.heartbeats_wanted(1.0 + 0.07)             # past the deadline: always
    assert not FailureDetector(0, DetectorSettings(dead_timeout=0), now=0.0).heartbeats_wanted(5.0)


# -- paced mode: a pacer thread sends and reads the heartbeats; the detector looks less often ----
PACED = DetectorSettings(heartbeat_interval=0.02, dead_timeout=0.06, look_interval=0.06)
UNPACED = DetectorSettings(heartbeat_interval=0.02, dead_timeout=0.06)


def _beats_20ms(until: float, gap: tuple[float, float] | None = None) -> list[float]:
    """Peer 1's heartbeats on the 20 ms grid (0.3 ms on the wire), none inside `gap`."""
    beats = [k * 0.02 + 0.0003 for k in range(1, int(until / 0.02) + 1)]
    return [b for b in beats if gap is None or not gap[0] <= b < gap[1]]


def _run_shell(settings: DetectorSettings, beats: list[float], until: float, *, answers: bool = True,
               answer_until: float = float("inf"), alarms: bool = True):
    """The daemon's shell around peer 0's detector, as server/node.py and heartbeat_pacer.py
    drive it. Unpaced, the loop ticks at `next_deadline()` and reads arrivals first. Paced, a
    pacer on every 20 ms grid point raises the alarm (once per silence) when peer 1 has been
    silent for `alarm_silence`, which makes the loop tick at once; otherwise the loop ticks at
    `next_deadline()`. Peer 1's kernel answers a probe 0.2 ms later while `answers` and before
    `answer_until`. Returns (time of death or None, every action, loop wake-ups)."""
    det = FailureDetector(0, settings, now=0.0)
    det.peer_up(1, 0.0)
    det.watch_request(1, True, 0.0)
    pending = sorted(beats)
    answers_due: list[float] = []
    seen, wakes = [], 0
    grid = 0.02
    alarmed = False
    heard = float("-inf")                 # the pacer's view of peer 1's latest beat

    def loop_tick(now: float):
        nonlocal wakes
        wakes += 1
        while pending and pending[0] <= now:
            det.fast_heartbeat(1, pending.pop(0))
        while answers_due and answers_due[0] <= now:
            det.kernel_answer(1, answers_due.pop(0))
        acts = det.tick(now)
        seen.extend(acts)
        for _ in of(acts, ProbeKernel):
            if answers and now < answer_until:
                answers_due.append(now + 0.0002)
        return of(acts, PeerDead)

    while True:
        due = det.next_deadline()
        if settings.paced and grid <= due:
            now, grid = grid, round(grid + 0.02, 9)
            last = max((b for b in beats if b <= now), default=None)
            if last is not None and last > heard:
                heard, alarmed = last, False
            if alarms and det.watching(1) and now - heard >= settings.alarm_silence and not alarmed:
                alarmed = True
                if loop_tick(now):
                    return now, seen, wakes
            continue
        if due > until:
            return None, seen, wakes
        if loop_tick(due):
            return due, seen, wakes


def test_paced_detector_sends_no_heartbeats_and_looks_every_third_beat():
    _, acts, wakes = _run_shell(PACED, _beats_20ms(2.0), until=2.0)
    assert of(acts, SendHeartbeat) == [] and of(acts, PeerDead) == []
    _, unpaced_acts, unpaced_wakes = _run_shell(UNPACED, _beats_20ms(2.0), until=2.0)
    assert len(of(unpaced_acts, SendHeartbeat)) == unpaced_wakes      # one per tick
    assert 95 <= unpaced_wakes <= 101 and 31 <= wakes <= 35               # 20 ms against 60 ms


def test_paced_heartbeat_targets_are_the_watchers():
    det = FailureDetector(2, PACED, now=0.0)
    for p in (0, 1, 3, 4):
        det.peer_up(p, 0.0)
    assert det.heartbeat_targets() == (3, 4)
    det.peer_down(3, 0.1)
    assert det.heartbeat_targets() == (4, 0)


@pytest.mark.parametrize("settings", [PACED, UNPACED], ids=["paced", "unpaced"])
def test_paced_detection_equals_unpaced_for_a_power_off(settings):
    beats = _beats_20ms(1.0)
    dead_at, acts, _ = _run_shell(settings, beats, until=2.0, answers=False)
    assert dead_at is not None and beats[-1] + 0.06 <= dead_at <= beats[-1] + 0.0606
    assert len(of(acts, ProbeKernel)) >= 1           # its kernel was asked before the verdict


@pytest.mark.parametrize("settings", [PACED, UNPACED], ids=["paced", "unpaced"])
def test_paced_stall_with_kernel_answers_is_no_death_and_is_reported(settings):
    beats = _beats_20ms(1.0, gap=(0.5, 0.59))             # 90 ms without a beat, then alive
    dead_at, acts, _ = _run_shell(settings, beats, until=1.0)
    assert dead_at is None
    assert [s.pnn for s in of(acts, PeerStalled)] == [1]
    dead_at, _, _ = _run_shell(settings, beats, until=1.0, answers=False)
    assert dead_at is not None                            # without answers the same gap kills


@pytest.mark.parametrize("settings", [PACED, UNPACED], ids=["paced", "unpaced"])
def test_paced_frozen_peer_on_a_live_host_is_dead_after_three_timeouts(settings):
    beats = _beats_20ms(0.5)
    dead_at, acts, _ = _run_shell(settings, beats, until=2.0)
    assert dead_at is not None and beats[-1] + 0.18 <= dead_at <= beats[-1] + 0.1806
    assert "its kernel last answered" in of(acts, PeerDead)[0].reason


def test_paced_looks_return_to_every_beat_only_while_a_peer_is_suspect():
    det = FailureDetector(0, PACED, now=0.0)
    det.peer_up(1, 0.0)
    det.watch_request(1, True, 0.0)
    det.fast_heartbeat(1, 0.0203)
    det.tick(0.0205)
    assert det.next_deadline() == pytest.approx(0.06)    # quiet: the next look
    det.fast_heartbeat(1, 0.0403)
    det.tick(0.06)                                        # peer silent 19.7 ms: not suspect
    assert det.next_deadline() == pytest.approx(0.12)
    acts = det.tick(0.08)                                 # the pacer's alarm: 39.7 ms of silence
    assert of(acts, ProbeKernel) == [ProbeKernel(1)]      # its deadline (100.3 ms) is near
    assert det.next_deadline() == pytest.approx(0.1)      # every beat now
    det.fast_heartbeat(1, 0.1003)
    det.tick(0.1005)
    assert det.next_deadline() == pytest.approx(0.12)     # heard: back to the looks


def test_look_interval_is_validated():
    with pytest.raises(ValueError):
        DetectorSettings(look_interval=-1)
    assert not DetectorSettings(dead_timeout=0, look_interval=0.06).paced


def test_no_verdict_before_the_kernel_was_asked_even_when_the_alarm_comes_late():
    """The paced fast profile under stress-ng (2026-12-06): a watcher's look came 82 ms into a
    peer's silence -- its pacer's alarm or its loop held up by the load -- and declared the
    peer dead on the spot, its kernel never asked; the peer was only waiting for a CPU."""
    for answers in (True, False):
        det = FailureDetector(0, PACED, now=0.0)
        det.peer_up(1, 0.0)
        det.watch_request(1, True, 0.0)
        det.fast_heartbeat(1, 1.0003)
        det.tick(1.0005)
        det.tick(1.02)                                     # a look: 19.7 ms of silence
        assert det.next_deadline() == pytest.approx(1.08)  # the alarm (due at 1.04) never came
        acts = det.tick(1.0823)                            # the next look: 82 ms of silence
        assert of(acts, PeerDead) == [] and of(acts, ProbeKernel) == [ProbeKernel(1)]
        assert det.next_deadline() == pytest.approx(1.0823 + 0.015 + 0.0005)
        if answers:
            det.kernel_answer(1, 1.0825)
        acts = det.tick(det.next_deadline())
        if answers:                                        # held: a stall, not (yet) a death
            assert of(acts, PeerDead) == [] and det.held(1, 1.098)
        else:                                              # no answer: dead, 15 ms after the ask
            assert [a.pnn for a in of(acts, PeerDead)] == [1]


def test_a_watch_request_that_comes_before_the_connection_is_up_here_is_kept():
    """The watched node asks at its own peer_up; ours can come later (our second connection to
    it not up yet). A request dropped then left that node watched by nobody: a full suite's
    SIGSTOPped node was never declared dead by the fast path."""
    det = FailureDetector(0, FAST, now=0.0)
    det.watch_request(1, True, 0.01)                 # before peer_up(1): kept
    det.watch_request(2, True, 0.01)
    det.watch_request(2, False, 0.02)                # the latest word counts
    det.peer_up(1, 0.05)
    det.peer_up(2, 0.05)
    det.fast_heartbeat(1, 0.06)
    det.fast_heartbeat(2, 0.06)
    assert det.watched_peers() == [1]
    assert det.watching(1) and not det.watching(2)
