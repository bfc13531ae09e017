"""The loop thread's CPU and run-queue clock (server/loop_clock.py)."""

from __future__ import annotations

import time

from ctdblab.daemon.server.loop_clock import LoopClock


def test_cpu_time_grows_with_work_and_not_with_sleep():
    clock = LoopClock()
    cpu0, wait0 = clock.read()
    end = time.monotonic() + 0.05
    while time.monotonic() < end:
        pass
    cpu1, wait1 = clock.read()
    time.sleep(0.05)
    cpu2, wait2 = clock.read()
    assert cpu1 - cpu0 >= 0.03            # 50 ms of spinning, most of it on a CPU
    assert cpu2 - cpu1 < 0.02             # 50 ms asleep
    if wait0 is not None:                 # /proc/thread-self/schedstat is there on Linux
        assert wait2 >= wait1 >= wait0
