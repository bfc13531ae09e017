"""The heartbeat pacer: a thread that sends this node's fast heartbeats and reads its peers', so
the event loop does not wake for every beat (core/membership.py, "paced mode").

Why a thread: at 20 ms heartbeats the daemon's asyncio loop woke 60 times a second, and one
wake-up of an asyncio loop costs 120-320 µs of CPU on the lab VM against ~65 µs for a plain
Python thread that sleeps (docs/fast-profile-idle.md). The pacer sleeps on the heartbeat grid
(the same wall-clock grid on every node, so the beats of a whole cluster go out together), sends
the prepared frames, reads the socket (arrivals keep the kernel's receive time) and goes back to
sleep. The loop looks every few beats and takes the arrivals then (`take_arrivals`). It is woken
at once (`wake`) only when a watched peer has been silent for the detector's alarm silence: the
moment its kernel may need asking, from which on the detector ticks on every beat again.

What the loop owns and the thread only reads: the frames and their destinations, the watched
peers, the timing. Each is replaced whole by the loop (a tuple or frozenset, one reference
store), never mutated, so the thread sees either the old or the new value.

Two pacers do this job behind one interface: the native one (native/heartbeat_pacer.c, a C
thread that never takes the GIL), used when its library is built, and the Python thread it
falls back to. On the lab VM, one window, 3-node fast clusters: the C thread costs 23-25 µs of
CPU per beat (0.12 % of a core), the Python thread 79-81 µs (0.44 %).

A liveness stamp keeps the pacer honest: it sends only while the loop has looked within
`liveness_limit` seconds. A loop that is wedged (blocked in a call, not frozen: a frozen process
stops the thread too) therefore falls silent like a dead one, at most that much later than it
would without the pacer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from collections.abc import Callable

from ..core.membership import grid_point_after
from ..core.node import Action, Heartbeats, NewSettings, NodeCore, NodeSettings
from ..log import log, notice
from ..native import NATIVE_ENV, heartbeat_pacer_library, load_error
from ..spawn import run_like_the_main_thread
from .native_pacer import NativeHeartbeatPacer
from .pacer_types import FastChannel, PacerTiming

#: Heartbeats this often or more go to the pacer thread (the default 100 ms among them); slower
#: ones wake the loop at most five times a second and keep the simpler path. Unpaced, the
#: default's ten loop wake-ups a second cost an idle daemon 0.89 % of a core on the lab VM
#: (18 runs a second at ~500 us), paced at 50 ms 0.53 % (2026-12-07, one standing cluster).
PACE_AT_MOST = 0.2       # s
#: Paced, the detector looks every this many heartbeat intervals while no peer is suspect
#: (120 ms at 20 ms beats), and at least every LOOK_AT_MOST s. The alarm, not the look,
#: catches a silent peer, so the look only bounds how long a wedged loop keeps beating (the
#: liveness limit: look + dead timeout), how late a periodic service aligned to the ticks runs
#: and how soon the connection tracker finds a connection nobody registered (one look).
#: Every third beat cost a 3-node fast cluster 27-30 loop wake-ups a second per daemon, every
#: sixth 13-22 (one window, both).
LOOK_BEATS = 6
LOOK_AT_MOST = 0.6       # s


def look_interval(heartbeat_interval: float) -> float:
    """How often the loop looks at what the pacer read: LOOK_BEATS beats, at most LOOK_AT_MOST
    s, at least one beat (so the look stays on the heartbeat grid)."""
    beats = max(1, min(LOOK_BEATS, int(LOOK_AT_MOST / heartbeat_interval + 1e-9)))
    return beats * heartbeat_interval

#: s between retries when a beat failed with an unexpected error (logged once a minute).
ERROR_PAUSE = 0.1
ERROR_LOG_EVERY = 60.0


class HeartbeatPacer:
    def __init__(self, channel: FastChannel, timing: PacerTiming, *, wake: Callable[[], None],
                 warn: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.channel = channel
        self.timing = timing
        self.wake = wake              # thread-safe: wakes the loop for a look now
        self.warn = warn
        self.clock = clock            # the loop's clock (asyncio's is time.monotonic)
        self._targets: tuple[tuple[int, bytes], ...] = ()
        self._watched: frozenset[int] = frozenset()
        self._alive_at = clock()
        self._arrivals: list[tuple[int, float]] = []
        self._arrivals_lock = threading.Lock()
        self._last: dict[int, float] = {}        # thread only: latest arrival per peer
        self._alarmed: set[int] = set()          # thread only: alarm raised, no beat since
        self._known_watched: frozenset[int] = frozenset()   # thread only
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._error_logged = float("-inf")
        self.beats = 0                            # grid points served (for tests and stats)
        self.alarms = 0

    # -- the loop's side -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="heartbeat-pacer", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def close(self) -> None:
        """Stop the thread (it finishes the beat it is in; at most one interval)."""
        self._stopping = True
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(1.0, 2 * self.timing.interval))

    def set_targets(self, targets: tuple[tuple[int, bytes], ...]) -> None:
        """(pnn, frame) for every peer this node heartbeats."""
        self._targets = targets

    def set_watched(self, pnns: frozenset[int]) -> None:
        """The peers whose silence raises the alarm (those the detector's clock runs for)."""
        self._watched = pnns

    def set_timing(self, timing: PacerTiming) -> None:
        self.timing = timing

    def loop_alive(self, now: float) -> None:
        self._alive_at = now

    def take_arrivals(self) -> list[tuple[int, float]]:
        """Every heartbeat read since the last call: [(pnn, arrival on the loop clock)]."""
        if not self._arrivals:
            return []
        with self._arrivals_lock:
            arrivals, self._arrivals = self._arrivals, []
        return arrivals

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        # A real-time daemon's pacer must be real-time too, or a loaded machine delays the beats
        # (spawn/__init__.py says why a new thread does not inherit the policy by itself).
        run_like_the_main_thread()
        while not self._stopping:
            timing = self.timing
            now = self.clock()
            time.sleep(max(0.0, grid_point_after(now, timing.phase, timing.interval) - now))
            if self._stopping:
                break
            try:
                self.beat(timing)
            except Exception as exc:      # never let one bad beat end the heartbeats
                now = self.clock()
                if now - self._error_logged >= ERROR_LOG_EVERY:
                    self._error_logged = now
                    self.warn(f"heartbeat pacer: {exc!r}")
                time.sleep(ERROR_PAUSE)

    def beat(self, timing: PacerTiming) -> None:
        """One grid point: send, read, raise the alarm if a watched peer is silent too long."""
        self.beats += 1
        now = self.clock()
        if now - self._alive_at <= timing.liveness_limit:
            for pnn, frame in self._targets:
                self.channel.send_fast(pnn, frame)
        last = self._last
        watched = self._watched
        if watched is not self._known_watched:
            for pnn in watched - self._known_watched:   # newly watched: its clock starts anew
                last.pop(pnn, None)
                self._alarmed.discard(pnn)
            self._known_watched = watched
        arrivals = self.channel.drain_fast(now - time.time())
        if arrivals:
            with self._arrivals_lock:
                self._arrivals.extend(arrivals)
            for pnn, at in arrivals:
                if at > last.get(pnn, float("-inf")):
                    last[pnn] = at
                    self._alarmed.discard(pnn)
        alarm = False
        for pnn in watched:
            at = last.get(pnn)
            # A peer not heard since the pacer started has no clock yet (the detector's
            # `fast_seen`); one silent past the alarm raises it once per silence.
            if at is not None and now - at >= timing.alarm_silence and pnn not in self._alarmed:
                self._alarmed.add(pnn)
                alarm = True
        if alarm:
            self.alarms += 1
            self.wake()


Pacer = HeartbeatPacer | NativeHeartbeatPacer


class PacedHeartbeats:
    """The event loop's side of the pacer (server/node.py owns one): starts, retimes and stops
    the thread as the timing settings ask, feeds what it read to the node core, and hands it
    what the core decided (where to send, whose silence to watch). Runs on the loop only."""

    def __init__(self, core: NodeCore, channel: Callable[[], FastChannel | None],
                 frame_for: Callable[[int], bytes], *, clock: Callable[[], float],
                 tick_now: Callable[[], None] | None, native: bool | None = None) -> None:
        self.core = core
        self.channel = channel          # the node transport, once it is up
        self.frame_for = frame_for      # the heartbeat frame for a peer
        self.clock = clock
        self.tick_now = tick_now        # runs the daemon's timer at once (the pacer's alarm)
        self.pacer: Pacer | None = None
        self.failed = False             # the thread ended once: the loop keeps the beats
        # the native pacer when it is built, unless PYCTDBD_NATIVE=0 asks for the Python one
        self.native = os.environ.get(NATIVE_ENV, "1") != "0" if native is None else native
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_fd: int | None = None
        self._targets: tuple[int, ...] | None = None
        self._watched: frozenset[int] | None = None

    @property
    def active(self) -> bool:
        return self.pacer is not None

    def settings_for(self, settings: NodeSettings) -> NodeSettings:
        """Start, retime or stop the pacer for these settings; returns the settings the core
        gets (its detector paced or not)."""
        detector = settings.detector
        channel = self.channel()
        wanted = (detector.fast_path and detector.heartbeat_interval <= PACE_AT_MOST
                  and channel is not None and channel.has_fast_channel and self.tick_now is not None
                  and not self.failed)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            wanted = False
        if not wanted:
            if self.pacer is not None:
                notice("Heartbeats are sent from the event loop again")
            self.stop()
            return dataclasses.replace(settings, detector=dataclasses.replace(detector, look_interval=0.0))
        assert channel is not None
        look = look_interval(detector.heartbeat_interval)
        timing = PacerTiming(interval=detector.heartbeat_interval, phase=detector.wall_offset,
                             alarm_silence=detector.alarm_silence,
                             # the loop looks every `look` s; a wedged loop stops the beats
                             # one dead timeout after a look it missed
                             liveness_limit=look + detector.dead_timeout)
        if self.pacer is None:
            self.pacer, kind = self._new_pacer(channel, timing)
            self._targets = self._watched = None
            notice("Heartbeats every %.0f ms are sent by a pacer thread; the loop looks every %.0f ms (%s)",
                   detector.heartbeat_interval * 1000, look * 1000, kind)
        else:
            self.pacer.set_timing(timing)
        return dataclasses.replace(settings, detector=dataclasses.replace(detector, look_interval=look))

    def _new_pacer(self, channel: FastChannel, timing: PacerTiming) -> tuple[Pacer, str]:
        """The native pacer when its library is built and the channel offers its socket, else
        the Python thread; started. Also says which, for the log."""
        lib = heartbeat_pacer_library() if self.native else None
        if lib is None:
            reason = "Python: " + (load_error() or f"{NATIVE_ENV}=0")
        else:
            reason = "Python: the transport offers no socket of its own"
        if lib is not None and self._loop is not None and hasattr(channel, "fast_fileno"):
            wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            native = None
            try:
                native = NativeHeartbeatPacer(lib, channel, timing, wake_fd=wake_fd)
                native.loop_alive(self.clock())
                self._loop.add_reader(wake_fd, self._on_wake_fd, wake_fd)
                native.start()
            except Exception as exc:       # (OSError above all) never lose the beats over it
                log.warning("The native heartbeat pacer failed (%s): a Python thread paces the beats", exc)
                if native is not None:
                    native.close()
                self._close_wake_fd(wake_fd)
                reason = f"Python: the native pacer failed: {exc}"
            else:
                self._wake_fd = wake_fd
                return native, "native"
        pacer = HeartbeatPacer(channel, timing, wake=self._wake, warn=log.warning, clock=self.clock)
        pacer.loop_alive(self.clock())
        pacer.start()
        return pacer, reason

    def stop(self) -> None:
        """Stop the thread; the heartbeats it read and the core has not seen go to the core."""
        pacer, self.pacer = self.pacer, None
        if pacer is not None:
            pacer.close()
            if self._wake_fd is not None:
                self._close_wake_fd(self._wake_fd)
                self._wake_fd = None
            arrivals = pacer.take_arrivals()
            if arrivals:
                self.core.step(Heartbeats(tuple(arrivals)), self.clock())

    def _close_wake_fd(self, fd: int) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
        os.close(fd)

    def _on_wake_fd(self, fd: int) -> None:
        """The native pacer's alarm (it wrote the eventfd)."""
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            return
        self._alarm()

    def look(self, now: float) -> list[Action]:
        """The loop's timer ran: tell the pacer the loop lives and take what it read. If its
        thread has ended, the loop takes the heartbeats back for good (the actions of that
        change of settings are returned)."""
        pacer = self.pacer
        if pacer is None:
            return []
        if not pacer.running:
            log.error("The heartbeat pacer thread ended: heartbeats go out from the event loop again")
            self.failed = True
            return self.core.step(NewSettings(self.settings_for(self.core.settings)), now)
        pacer.loop_alive(now)
        if isinstance(pacer, NativeHeartbeatPacer):
            pacer.count()
        self.feed(now)
        return []

    def feed(self, now: float) -> None:
        """The heartbeats read since the last call, to the core."""
        if self.pacer is not None:
            arrivals = self.pacer.take_arrivals()
            if arrivals:
                self.core.step(Heartbeats(tuple(arrivals)), now)

    def sync(self) -> None:
        """After the core stepped: hand the pacer its watchers and watched peers if they changed."""
        pacer = self.pacer
        if pacer is None:
            return
        detector = self.core.detector
        targets = detector.heartbeat_targets()
        if targets != self._targets:
            self._targets = targets
            pacer.set_targets(tuple((pnn, self.frame_for(pnn)) for pnn in targets))
        watched = frozenset(detector.watched_peers())
        if watched != self._watched:
            self._watched = watched
            pacer.set_watched(watched)

    def _wake(self) -> None:
        """On the pacer's thread: a watched peer is silent; have the loop look now."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._alarm)

    def _alarm(self) -> None:
        if self.pacer is not None and self.tick_now is not None:
            self.tick_now()
