"""Failure detection: CTDB's keepalive counting plus pyctdbd's millisecond heartbeats.

Two detectors run side by side on the same traffic (any packet from a peer counts as life):

* **CTDB's** (`KeepaliveInterval` s, `KeepaliveLimit`): every interval each connected peer that
  sent nothing since the last check gets `dead_count += 1`; at the limit it is dead ("dead count
  reached for node N"). A keepalive goes to every connected peer every interval.
* **pyctdbd's fast path** (`HeartbeatIntervalMs`, `DeadTimeoutMs`): a full mesh of heartbeats
  every few tens of milliseconds would cost O(N) packets per node per interval, too much CPU at
  16 nodes. Instead each node asks its next `watchers` connected peers in PNN ring order to watch
  it and heartbeats only them. The request travels on the reliable channel (`SendWatch`, TCP);
  the heartbeats themselves on the fast channel (`SendHeartbeat`, UDP datagrams the shell reads
  on its own tick, so receiving them costs no extra wakeup). A watcher arms on "watch me",
  disarms on "stop watching me" (sent when the ring changes) or when the connection drops, so
  watchers and watched never need to agree on a view of the ring; it starts the clock only once
  a fast heartbeat actually arrived, so a node whose fast channel is blocked is never declared
  dead by it (the CTDB path still covers that node). A watched peer silent for `DeadTimeoutMs`
  is dead; the shell broadcasts that verdict so every node acts on it at once.

A watcher whose own loop stalled (its tick arrives much later than scheduled) grants its watched
peers a fresh timeout instead of blaming them for its own stall.

A *peer's* stall looks like its death: its heartbeats stop. Their kernels tell them apart. A
host whose daemon is blocked for a few tens of milliseconds (in a system call, descheduled on a
loaded machine) still answers an ICMP echo from its network stack; a host that lost power, or
sits behind a partition, does not. So when a watched peer has missed a heartbeat and its deadline
comes before the next tick but one, the detector asks its kernel (`ProbeKernel`, once a
heartbeat tick while the silence lasts; `_probe_due`), and an answer received during the
silence holds the verdict: the peer is dead one timeout after its kernel's last answer, but
never later than three times its timeout of silence (`HOLD_FACTOR`). A power-off is declared exactly
as before (no answer ever comes); a frozen or wedged daemon on a live host is declared dead after
three timeouts instead of one. The fast soak found the case (seed 16): a daemon blocked 52 ms
in the kernel, against 60 ms timeouts with 15 ms heartbeats, was declared dead by its watcher;
with a hold of two timeouts, seed 19 found a daemon blocked 123 ms in a fork at a recovery
(12 ms of CPU), its kernel answering, declared dead at 121 ms: the hold is three timeouts since.
No fast-path verdict is given before the peer's kernel was asked during its silence and had
`answer_wait` to answer: a watcher whose own tick came too late to ask in time (its loop
waited for a CPU) asks then, and decides `answer_wait` later.

A peer's timeout also stretches with the jitter its heartbeats have shown lately: it is the
larger of `DeadTimeoutMs` and twice the longest gap between its recent heartbeats (the gap
decays by 0.5 % a beat; at most four dead timeouts). On a quiet network the gaps are one
heartbeat interval and the timeout is `DeadTimeoutMs`; when the machine is so loaded that
packets wait tens of milliseconds in the kernel (the lab under stress-ng: gaps of 60 ms with
15 ms heartbeats), a late heartbeat no longer kills a live peer, while a peer that stops
altogether is still declared dead after its (stretched) timeout.

**Paced mode** (`look_interval` > 0). A Python event loop that wakes on every heartbeat tick
costs more CPU than the beats themselves (docs/fast-profile-idle.md). So at short intervals the
shell hands the beats to a pacer thread (server/heartbeat_pacer.py, native_pacer.py): it sends them on the
heartbeat grid, reads the arrivals, and wakes the loop only when a watched peer's silence
reaches `ALARM_BEATS` intervals -- the silence at which a kernel probe starts to be due. The
detector then no longer emits `SendHeartbeat` on its ticks (`heartbeat_targets()` tells the
shell where the pacer sends), and it looks every `look_interval` while no watched peer is
*suspect* (silent for `ALARM_BEATS` intervals); a suspect peer brings back the tick on every
heartbeat grid point until it is heard or dead, exactly as without the pacer. Dead deadlines of
peers that are not suspect set no timer: the pacer's alarm comes first. Detection times do not
change: the alarm arrives on the grid point where the unpaced detector would have probed; an
alarm held up past the deadline still gets the kernel asked before any verdict (above).

Sans-I/O: inputs are calls with the current time, outputs are action objects; the shell calls
`tick()` at `next_deadline()` (and, paced, also when the pacer raises its alarm).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DetectorSettings:
    heartbeat_interval: float = 0.05   # s; our HeartbeatIntervalMs
    dead_timeout: float = 0.25         # s; our DeadTimeoutMs; 0 disables the fast path
    keepalive_interval: float = 5.0    # s; CTDB's KeepaliveInterval
    keepalive_limit: int = 5           # CTDB's KeepaliveLimit
    watchers: int = 2                  # peers that watch each node on the fast path
    #: Ticks fall on multiples of their interval in the *wall* clock (offset = this clock minus
    #: wall time), so every node of the cluster ticks at the same instants: peers' heartbeats
    #: and keepalives arrive together, and a node wakes up once where it would wake up N times
    #: (this is what keeps idle CPU low at 16 nodes).
    wall_offset: float = 0.0
    #: s between the detector's looks while no peer is suspect, when a pacer thread sends and
    #: reads the heartbeats (module docstring); 0: the detector ticks on every heartbeat.
    look_interval: float = 0.0

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat interval must be positive")
        if self.dead_timeout < 0 or self.keepalive_interval <= 0 or self.keepalive_limit < 1:
            raise ValueError("dead timeout, keepalive interval and limit must be sensible")
        if self.watchers < 1:
            raise ValueError("at least one watcher is needed")
        if self.look_interval < 0:
            raise ValueError("look interval must not be negative")

    @property
    def fast_path(self) -> bool:
        return self.dead_timeout > 0

    @property
    def paced(self) -> bool:
        """Heartbeats are sent and read by the shell's pacer thread."""
        return self.fast_path and self.look_interval > 0

    @property
    def alarm_silence(self) -> float:
        """A watched peer silent this long is suspect (paced: the pacer wakes the loop)."""
        return ALARM_BEATS * self.heartbeat_interval


#: s: a deadline moved onto the look grid (`on_look_grid`) may come out an ulp after the look
#: it was meant for (the grid's floats are computed along different paths); a tick that early
#: takes it too, instead of a second tick at the same moment.
GRID_SLACK = 1e-6


def grid_point_after(when: float, phase: float, interval: float) -> float:
    """The first point of the grid `phase + k * interval` after `when` (computed the same way
    everywhere, so that timers meant to coincide get the same float)."""
    return phase + ((when - phase) // interval + 1) * interval


# -- actions -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SendHeartbeat:
    """Send a fast-channel heartbeat to `pnn`."""

    pnn: int


@dataclass(frozen=True)
class SendWatch:
    """Ask `pnn` (reliably) to watch this node, or (`watch` False) to stop watching it."""

    pnn: int
    watch: bool = True


@dataclass(frozen=True)
class SendKeepalive:
    pnn: int


@dataclass(frozen=True)
class PeerDead:
    pnn: int
    reason: str
    fast: bool          # detected by the millisecond path (True) or CTDB's keepalive count


@dataclass(frozen=True)
class ProbeKernel:
    """Ask `pnn`'s kernel whether its host is up (an ICMP echo); the answer comes back as
    `kernel_answer`."""

    pnn: int


@dataclass(frozen=True)
class PeerStalled:
    """`pnn`'s heartbeats resumed after `silence` seconds, past its timeout, while its kernel
    answered: a stall, not a death."""

    pnn: int
    silence: float


@dataclass(frozen=True)
class LoopStalled:
    """Our own tick came `late` seconds after it was due: timeouts were restarted, not fired."""

    late: float


Action = SendHeartbeat | SendWatch | SendKeepalive | PeerDead | ProbeKernel | PeerStalled | LoopStalled


#: How a peer's timeout follows the jitter of its heartbeats (see the module docstring).
GAP_FACTOR = 2.0
GAP_DECAY = 0.995
MAX_STRETCH = 4.0
#: How far a silent peer's kernel's answers can hold the verdict (multiple of its timeout;
#: never past MAX_STRETCH dead timeouts). Held silences that ended in the fast soaks lasted
#: 60-166 ms (60 ms timeouts); a fork blocked 123 ms at a recovery. The cost falls on a frozen
#: or wedged daemon on a live host only: it is declared dead after 180 ms instead of 120.
HOLD_FACTOR = 3.0
#: A peer silent for this many heartbeat intervals has missed a beat: its kernel may be asked,
#: and a paced detector looks at it on every heartbeat tick.
ALARM_BEATS = 1.5


@dataclass
class _Peer:
    last_rx: float
    rx_count: int = 0          # packets since the last keepalive check
    dead_count: int = 0
    watched: bool = False      # we watch it on the fast path (it asked us to)
    fast_seen: bool = False    # a fast heartbeat arrived since it asked: its clock runs
    recent_gap: float = 0.0    # longest recent silence between its heartbeats (decaying)
    kernel_rx: float = float("-inf")   # its kernel's latest answer to ProbeKernel
    asked_at: float = float("-inf")    # the first ProbeKernel of its current silence
    stalled_for: float = 0.0   # a held silence that ended with a heartbeat, to be reported


@dataclass
class FailureDetector:
    my_pnn: int
    settings: DetectorSettings
    now: float
    _peers: dict[int, _Peer] = field(default_factory=dict)   # connected peers only
    _my_watchers: list[int] = field(default_factory=list)
    _heartbeats: list[SendHeartbeat] = field(default_factory=list)
    _next_fast: float = 0.0
    _next_slow: float = 0.0
    _last_fast_tick: float = 0.0
    _alarm_until: float = float("-inf")      # paced: tick on every beat until then (an alarm)
    _early_watch: dict[int, bool] = field(default_factory=dict)   # watch asked before our peer_up

    def __post_init__(self) -> None:
        self._next_fast = self._grid_after(self.now, self.settings.heartbeat_interval)
        self._next_slow = self._slow_after(self.now)
        self._last_fast_tick = self.now

    # -- inputs ----------------------------------------------------------------------------------
    def update_settings(self, settings: DetectorSettings, now: float) -> list[Action]:
        self.settings = settings
        self._next_fast = min(self._next_fast, self._grid_after(now, settings.heartbeat_interval))
        self._next_slow = min(self._next_slow, self._slow_after(now))
        for peer in self._peers.values():
            peer.last_rx = max(peer.last_rx, now)    # a new timeout starts now
        return self._rewatch()

    def peer_up(self, pnn: int, now: float) -> list[Action]:
        """Both connections to `pnn` are up."""
        if pnn == self.my_pnn or pnn in self._peers:
            return []
        self._peers[pnn] = _Peer(last_rx=now)
        if self._early_watch.pop(pnn, False):
            self.watch_request(pnn, True, now)
        return self._rewatch()

    def peer_down(self, pnn: int, now: float) -> list[Action]:
        """`pnn` is no longer connected (transport dropped, or declared dead)."""
        if self._peers.pop(pnn, None) is None:
            return []
        return self._rewatch()

    def traffic(self, pnn: int, now: float) -> None:
        peer = self._peers.get(pnn)
        if peer is not None:
            peer.rx_count += 1
            if now > peer.last_rx:
                self._note_held_silence(peer, now)
                peer.last_rx = now

    def watch_request(self, pnn: int, watch: bool, now: float) -> None:
        """`pnn` asked us (on the reliable channel) to watch it, or to stop."""
        peer = self._peers.get(pnn)
        if peer is None:
            # It counted both its connections to us up before we did (it asks at its peer_up):
            # keep the request for ours, or it is lost and nobody fast-watches it.
            self._early_watch[pnn] = watch
            return
        self.traffic(pnn, now)
        if watch and not peer.watched:
            peer.watched = True
            peer.fast_seen = False
            peer.last_rx = now
        elif not watch:
            peer.watched = False
            peer.fast_seen = False

    def fast_heartbeat(self, pnn: int, now: float) -> None:
        """A heartbeat from `pnn` arrived on the fast channel (it is also traffic)."""
        peer = self._peers.get(pnn)
        if peer is None:
            return
        peer.rx_count += 1
        if now > peer.last_rx:
            if peer.watched and peer.fast_seen:
                self._note_held_silence(peer, now)
                peer.recent_gap = max(now - peer.last_rx, peer.recent_gap * GAP_DECAY)
            peer.last_rx = now
        if peer.watched:
            peer.fast_seen = True

    def kernel_answer(self, pnn: int, at: float) -> None:
        """`pnn`'s kernel answered a `ProbeKernel` (`at`: when the answer arrived)."""
        peer = self._peers.get(pnn)
        if peer is not None and at > peer.kernel_rx:
            peer.kernel_rx = at

    def tick(self, now: float, alarm: bool = False) -> list[Action]:
        s = self.settings
        actions: list[Action] = []
        stalled = None
        if alarm and s.paced:
            # The pacer saw a watched peer's heartbeats stop. This clock may not call it silent
            # yet: a frame the loop took late counted as traffic when it was taken. So tick on
            # every beat for one dead timeout, not only while a peer is suspect here: without
            # that, a missed alarm waited for the next look (0.6 s at the default heartbeats).
            self._alarm_until = now + s.dead_timeout + s.heartbeat_interval
        # Paced, a suspect peer turns a look into a heartbeat tick at once: this is the pacer's
        # alarm, or a peer that fell silent just before a look.
        suspect = s.paced and (now < self._alarm_until or self._any_suspect(now))
        alarmed = suspect and self._next_fast - now > s.heartbeat_interval / 2
        if now >= self._next_fast or alarmed:
            late = max(0.0, now - self._next_fast)
            self._last_fast_tick = now
            # The next grid point after now, not after the missed deadline: no catch-up bursts;
            # paced, the next look unless a peer is suspect.
            period = s.look_interval if s.paced and not suspect else s.heartbeat_interval
            self._next_fast = self._grid_after(now, period)
            if s.fast_path:
                if not s.paced:
                    actions += self._heartbeats
                if late > s.dead_timeout / 2:
                    stalled = late
                else:
                    actions += self._probes_and_stalls(now)
        if s.fast_path:
            due = self._earliest_dead_deadline()
            if stalled is None and due is not None and now - due > s.dead_timeout / 2:
                stalled = now - due
            if stalled is not None:
                # We were not running: whatever we did not receive is on us, not on them.
                for peer in self._peers.values():
                    if peer.last_rx < now:
                        peer.last_rx = now
                actions.append(LoopStalled(stalled))
            elif due is not None and now > due:
                actions += self._check_dead(now)
        if now >= self._next_slow - GRID_SLACK:
            actions += self._slow_tick(now)
        return actions

    def next_deadline(self) -> float:
        """When to call `tick` next: the next heartbeat or keepalive tick (paced: the next look),
        or the moment a watched peer's dead timeout runs out (so detection is not rounded up to
        a tick; paced, only a suspect peer's counts: the pacer's alarm covers the others)."""
        when = self._next_fast if self._next_fast < self._next_slow else self._next_slow
        due = self._earliest_dead_deadline(
            suspects_only=self.settings.paced and self._last_fast_tick >= self._alarm_until)
        if due is not None and due + 0.0005 < when:
            return due + 0.0005
        return when

    def heartbeats_wanted(self, now: float) -> bool:
        """True when the shell must read its queued heartbeats before calling `tick`: as far as
        we know, a watched peer's dead deadline falls before the next heartbeat tick (it would
        cost a wake-up of its own, or a death), or its kernel is due to be asked. The shell
        reads the socket only every few ticks otherwise, so "as far as we know" can be a tick
        or two stale: with 25 ms heartbeats that staleness alone once cost 20 extra wake-ups a
        second, and an echo request every other tick."""
        if not self.settings.fast_path:
            return False
        horizon = now + self.settings.heartbeat_interval
        for p in self._peers.values():
            if p.watched and p.fast_seen and (self._probe_due(p, now) or self._dead_at(p) <= horizon):
                return True
        return False

    def heartbeat_targets(self) -> tuple[int, ...]:
        """The peers this node heartbeats (its watchers): where a pacer sends."""
        return tuple(h.pnn for h in self._heartbeats)

    def _suspect(self, peer: _Peer, now: float) -> bool:
        """A watched peer that has missed a beat: silent for the alarm silence or longer."""
        return peer.watched and peer.fast_seen and now - peer.last_rx >= self.settings.alarm_silence

    def _any_suspect(self, now: float) -> bool:
        return any(self._suspect(p, now) for p in self._peers.values())

    def _earliest_dead_deadline(self, suspects_only: bool = False) -> float | None:
        if not self.settings.fast_path:
            return None
        earliest = None
        for p in self._peers.values():
            if p.watched and p.fast_seen:
                if suspects_only and not self._suspect(p, self._last_fast_tick):
                    continue        # not suspect at the last tick: the pacer's alarm covers it
                due = self._dead_at(p)
                if earliest is None or due < earliest:
                    earliest = due
        return earliest

    def timeout_of(self, peer: _Peer) -> float:
        """The peer's dead timeout, stretched by the jitter of its recent heartbeats."""
        base = self.settings.dead_timeout
        return min(max(base, GAP_FACTOR * peer.recent_gap), MAX_STRETCH * base)

    def _dead_at(self, peer: _Peer) -> float:
        """When the watched `peer` is dead if nothing more arrives: one timeout of silence, or,
        if its kernel answered during the silence, one timeout after that answer, within
        HOLD_FACTOR timeouts of silence."""
        timeout = self.timeout_of(peer)
        due = peer.last_rx + timeout
        if peer.kernel_rx > peer.last_rx:
            hold = min(HOLD_FACTOR * timeout, MAX_STRETCH * self.settings.dead_timeout)
            due = max(due, min(peer.kernel_rx + timeout, peer.last_rx + hold))
        if peer.asked_at > peer.last_rx:
            # Its kernel's answer needs time to come and be read (the next tick).
            due = max(due, peer.asked_at + self.answer_wait)
        return due

    @property
    def answer_wait(self) -> float:
        """How long a verdict waits after the kernel's first echo request of a silence: a
        heartbeat interval (the answer is read on the next tick), at most a quarter timeout."""
        return min(self.settings.heartbeat_interval, self.settings.dead_timeout / 4)

    def _note_held_silence(self, peer: _Peer, now: float) -> None:
        """`peer` is heard again: if its kernel answered during the silence and the silence
        outlasted the timeout, it was a stall the hold saved (reported on the next tick)."""
        gap = now - peer.last_rx
        if (peer.kernel_rx > peer.last_rx and peer.watched and peer.fast_seen
                and gap > self.timeout_of(peer)):
            peer.stalled_for = gap

    def _probe_due(self, peer: _Peer, now: float) -> bool:
        """Ask `peer`'s kernel on this tick: a heartbeat is missed (its silence passed one and a
        half intervals) and its deadline comes before the tick after next, so the answer is in
        before the deadline (a fixed fraction of the timeout fell just after the last tick
        before the deadline at 20 ms heartbeats: the echo went out too late to count)."""
        horizon = now + 1.5 * self.settings.heartbeat_interval
        return now - peer.last_rx >= self.settings.alarm_silence and self._dead_at(peer) <= horizon

    def held(self, pnn: int, now: float) -> bool:
        """`pnn` is past its timeout of silence but its kernel answers: we are holding it."""
        peer = self._peers.get(pnn)
        return (peer is not None and peer.watched and peer.fast_seen and peer.kernel_rx > peer.last_rx
                and peer.last_rx + self.timeout_of(peer) <= now < self._dead_at(peer))

    # -- queries ---------------------------------------------------------------------------------
    @property
    def my_watchers(self) -> list[int]:
        return list(self._my_watchers)

    def watched_peers(self) -> list[int]:
        """Peers whose fast-path clock is running."""
        return sorted(p for p, peer in self._peers.items() if peer.watched and peer.fast_seen)

    def silence(self, pnn: int, now: float) -> float | None:
        peer = self._peers.get(pnn)
        return None if peer is None else now - peer.last_rx

    def last_heard(self, pnn: int) -> float | None:
        peer = self._peers.get(pnn)
        return None if peer is None else peer.last_rx

    def watching(self, pnn: int) -> bool:
        """`pnn`'s fast heartbeats reach us: we have fresh evidence of its life."""
        peer = self._peers.get(pnn)
        return peer is not None and peer.watched and peer.fast_seen

    # -- internals -------------------------------------------------------------------------------
    def _slow_after(self, now: float) -> float:
        """The next keepalive tick: on the keepalive grid and, paced, at the first look from
        there (keepalives are seconds apart: a look late costs nothing, a wake-up of their own
        would)."""
        return self.on_look_grid(self._grid_after(now, self.settings.keepalive_interval))

    def on_look_grid(self, when: float) -> float:
        """Paced, the first look at or after `when` (where periodic sends go: no wake-up of
        their own); `when` itself otherwise."""
        if not self.settings.paced:
            return when
        return grid_point_after(when - GRID_SLACK, self.settings.wall_offset, self.settings.look_interval)

    def _grid_after(self, now: float, interval: float) -> float:
        t = grid_point_after(now, self.settings.wall_offset, interval)
        if t - now < interval / 4:          # too close: a tick right now would be a waste
            t += interval
        return t

    def _ring_successors(self) -> list[int]:
        """Connected peers after us in PNN order, wrapping around."""
        pnns = sorted(self._peers)
        after = [p for p in pnns if p > self.my_pnn]
        before = [p for p in pnns if p < self.my_pnn]
        return (after + before)[: self.settings.watchers]

    def _rewatch(self) -> list[Action]:
        if not self.settings.fast_path:
            old, self._my_watchers = self._my_watchers, []
            self._heartbeats = []
            return [SendWatch(p, watch=False) for p in old if p in self._peers]
        new = self._ring_successors()
        actions: list[Action] = [SendWatch(p, watch=False)
                                 for p in self._my_watchers if p not in new and p in self._peers]
        actions += [SendWatch(p) for p in new if p not in self._my_watchers]
        self._my_watchers = new
        self._heartbeats = [SendHeartbeat(p) for p in new]
        return actions

    def _probes_and_stalls(self, now: float) -> list[Action]:
        """On a heartbeat tick: ask the kernels of peers whose probe is due, and report held
        silences that ended."""
        actions: list[Action] = []
        for pnn, peer in self._peers.items():
            if not (peer.watched and peer.fast_seen):
                continue
            if peer.stalled_for:
                actions.append(PeerStalled(pnn, peer.stalled_for))
                peer.stalled_for = 0.0
            if self._probe_due(peer, now):
                actions.append(self._ask_kernel(pnn, peer, now))
        return actions

    @staticmethod
    def _ask_kernel(pnn: int, peer: _Peer, now: float) -> ProbeKernel:
        """An echo request to `peer`'s host; the first of a silence starts `answer_wait`."""
        if peer.asked_at <= peer.last_rx:
            peer.asked_at = now
        return ProbeKernel(pnn)

    def _check_dead(self, now: float) -> list[Action]:
        s = self.settings
        actions: list[Action] = []
        for pnn in sorted(self._peers):
            peer = self._peers[pnn]
            if peer.watched and peer.fast_seen and now > self._dead_at(peer):
                if peer.asked_at <= peer.last_rx:
                    # No verdict before its kernel was asked: this tick came too late to ask
                    # in time (the loop or the pacer's alarm was held up, on a loaded machine).
                    actions.append(self._ask_kernel(pnn, peer, now))
                    continue
                timeout = self.timeout_of(peer)
                silent_ms = (now - peer.last_rx) * 1000
                stretched = f", stretched to {timeout * 1000:.0f} ms by jitter" if timeout > s.dead_timeout else ""
                held = (f"; its kernel last answered {(now - peer.kernel_rx) * 1000:.0f} ms ago"
                        if peer.kernel_rx > peer.last_rx else "")
                actions.append(PeerDead(pnn, f"no traffic for {silent_ms:.0f} ms "
                                             f"(dead timeout {s.dead_timeout * 1000:.0f} ms{stretched}{held})", True))
        dead = [a.pnn for a in actions if isinstance(a, PeerDead)]
        for pnn in dead:
            self._peers.pop(pnn, None)
        if dead:
            actions += self._rewatch()
        return actions

    def _slow_tick(self, now: float) -> list[Action]:
        s = self.settings
        late = now - self._next_slow
        self._next_slow = self._slow_after(now)
        actions: list[Action] = []
        stalled = late > s.keepalive_interval
        for pnn in sorted(self._peers):
            peer = self._peers[pnn]
            if peer.rx_count == 0 and not stalled:
                peer.dead_count += 1
            else:
                peer.dead_count = 0
            peer.rx_count = 0
            if peer.dead_count >= s.keepalive_limit:
                actions.append(PeerDead(pnn, f"{peer.dead_count} keepalive intervals of "
                                             f"{s.keepalive_interval:g} s without traffic", False))
            actions.append(SendKeepalive(pnn))
        dead = [a.pnn for a in actions if isinstance(a, PeerDead)]
        for pnn in dead:
            self._peers.pop(pnn, None)
        if dead:
            actions += self._rewatch()
        return actions
