"""The native heartbeat pacer: the C thread of native/heartbeat_pacer.c behind the Python
pacer's interface (server/heartbeat_pacer.py says what a pacer does and why)."""

from __future__ import annotations

import ctypes
import os

from ..native import address_key, main_thread_scheduling, sockaddr_bytes
from ..protocol.constants import CTDB_MAGIC, CTDB_PROTOCOL_VERSION, Operation
from .pacer_types import NativeChannel, PacerTiming


class NativeHeartbeatPacer:
    """The C pacer thread (native/heartbeat_pacer.c) behind HeartbeatPacer's interface. It owns
    no Python object: it reads and writes the transport's socket through a descriptor of its own
    and wakes the loop through `wake_fd`, an eventfd the loop reads. Raises OSError when the
    library cannot make one."""

    TAKE_BATCH = 256

    def __init__(self, lib: ctypes.CDLL, channel: NativeChannel, timing: PacerTiming, *,
                 wake_fd: int) -> None:
        fd = channel.fast_fileno()
        if fd is None:
            raise OSError("the fast channel has no socket")
        self.lib = lib
        self.channel = channel
        self._peers = peers = channel.fast_peers()     # fixed for the transport's life
        self._npnn = max(peers, default=0) + 1
        # Its own descriptor of the socket: the thread never sends into a number the transport
        # closed and the kernel gave to another file.
        self._fd = os.dup(fd)
        handle = lib.hp_create(self._fd, wake_fd, self._npnn, CTDB_MAGIC, CTDB_PROTOCOL_VERSION,
                               int(Operation.REQ_KEEPALIVE))
        if not handle:
            os.close(self._fd)
            raise OSError("hp_create failed")
        self._handle: int | None = handle
        self._pnns = (ctypes.c_int32 * self.TAKE_BATCH)()
        self._ats = (ctypes.c_double * self.TAKE_BATCH)()
        self._counted = (0, 0, 0)
        self._leftover: list[tuple[int, float]] = []
        self._started = False
        keys = [address_key(address) for address in peers.values()]
        try:
            self._check(lib.hp_set_peers(handle, len(peers), _int32s([family for family, _ in keys]),
                                         b"".join(raw for _, raw in keys), _int32s(list(peers))))
        except OSError:
            self.close()
            raise
        self.set_timing(timing)

    @staticmethod
    def _check(rc: int) -> None:
        if rc != 0:
            raise OSError(-rc, os.strerror(-rc))

    def start(self) -> None:
        # The thread takes the main thread's policy itself, as run_like_the_main_thread does
        # for a Python thread (a thread a real-time thread makes starts SCHED_OTHER).
        policy, priority = main_thread_scheduling()
        assert self._handle is not None
        rc = self.lib.hp_start(self._handle, policy, priority)
        if rc != 0:
            raise OSError(rc, f"the native pacer thread did not start: {os.strerror(rc)}")
        self._started = True

    @property
    def running(self) -> bool:
        return self._handle is not None and self._started and bool(self.lib.hp_running(self._handle))

    def close(self) -> None:
        """Stop the thread (it finishes the beat it is in) and free it; what it read and the
        loop has not taken stays for `take_arrivals`."""
        handle = self._handle
        if handle is None:
            return
        self.count()
        self._leftover = self._take(handle)
        self._handle = None
        self.lib.hp_destroy(handle)
        os.close(self._fd)

    def set_targets(self, targets: tuple[tuple[int, bytes], ...]) -> None:
        port, peers = self.channel.port, self._peers
        known = [(pnn, frame) for pnn, frame in targets if pnn in peers]
        tos = [sockaddr_bytes(peers[pnn], port) for pnn, _ in known]
        frames = [frame for _, frame in known]
        if self._handle is not None:
            self._check(self.lib.hp_set_targets(self._handle, len(known), b"".join(tos),
                                                _int32s([len(to) for to in tos]), b"".join(frames),
                                                _int32s([len(frame) for frame in frames])))

    def set_watched(self, pnns: frozenset[int]) -> None:
        inside = sorted(pnn for pnn in pnns if 0 <= pnn < self._npnn)
        if self._handle is not None:
            self._check(self.lib.hp_set_watched(self._handle, len(inside), _int32s(inside)))

    def set_timing(self, timing: PacerTiming) -> None:
        self.timing = timing
        if self._handle is not None:
            self.lib.hp_set_timing(self._handle, timing.interval, timing.phase, timing.alarm_silence,
                                   timing.liveness_limit)

    def loop_alive(self, now: float) -> None:
        if self._handle is not None:
            self.lib.hp_loop_alive(self._handle, now)

    def take_arrivals(self) -> list[tuple[int, float]]:
        if self._handle is None:
            leftover, self._leftover = self._leftover, []
            return leftover
        return self._take(self._handle)

    def _take(self, handle: int) -> list[tuple[int, float]]:
        out: list[tuple[int, float]] = []
        while True:
            n = self.lib.hp_take(handle, self._pnns, self._ats, self.TAKE_BATCH)
            out += zip(self._pnns[:n], self._ats[:n])
            if n < self.TAKE_BATCH:
                return out

    def beat(self, now: float, wall_to_loop: float) -> bool:
        """One grid point now (the unit tests' way in; the thread runs its own)."""
        assert self._handle is not None
        return bool(self.lib.hp_beat(self._handle, now, wall_to_loop))

    def _counters(self) -> tuple[int, ...]:
        if self._handle is None:
            return (0,) * 5
        raw = (ctypes.c_uint64 * 5)()
        self.lib.hp_counters(self._handle, raw)
        return tuple(raw)

    @property
    def beats(self) -> int:
        return self._counters()[0]

    @property
    def alarms(self) -> int:
        return self._counters()[1]

    def count(self) -> None:
        """Hand the transport what the thread sent, received and dropped since the last call."""
        sent, received, bad = self._counters()[2:]
        last_sent, last_received, last_bad = self._counted
        self._counted = (sent, received, bad)
        if sent > last_sent or received > last_received or bad > last_bad:
            self.channel.count_fast(sent - last_sent, received - last_received, bad - last_bad)


def _int32s(values: list[int]) -> ctypes.Array:
    return (ctypes.c_int32 * max(1, len(values)))(*values)
