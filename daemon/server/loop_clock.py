"""The event-loop thread's CPU time and run-queue wait, so a stall can say why the loop was late.

A loop that ran late was either busy (its own work: CPU time grows with the lateness), waiting
for a CPU (other real-time tasks held both cores: the kernel's run-queue delay grows), or
blocked in the kernel (a lock, the disk, a netlink call waiting for rtnl: neither grows).
``/proc/thread-self/schedstat`` has both counters (nanoseconds: time on a CPU, time runnable but
waiting); the file is opened once and read with one pread per tick (a few microseconds). Without
it (no schedstats, no /proc) the CPU time comes from ``time.thread_time`` and the wait is
unknown.
"""

from __future__ import annotations

import os
import time
import weakref


class LoopClock:
    """Read on the loop's thread only: the file is opened at the first read and names the
    thread that opens it; it is closed when the clock is collected."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._tried = False

    def read(self) -> tuple[float, float | None]:
        """(seconds on a CPU, seconds waiting for one, or None when unknown)."""
        if not self._tried:
            self._tried = True
            try:
                self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
                weakref.finalize(self, os.close, self._fd)
            except OSError:
                self._fd = None
        if self._fd is not None:
            try:
                fields = os.pread(self._fd, 128, 0).split()
                return int(fields[0]) / 1e9, int(fields[1]) / 1e9
            except (OSError, ValueError, IndexError):
                pass
        return time.thread_time(), None
