"""The loop thread's CPU and run-queue clock (server/loop_clock.py)."""

from __future__ import annotations

import time

from ctdblab.daemon.server.loop_clock import LoopClock


def test_cpu_time_grows_with_work_and_not_with_sleep():
    clock = LoopClock()
    cpu0, wait0 = clock.read()
    deadline = time.monotonic() + 10
    while clock.read()[0] - cpu0 < 0.03:     # spin until 30 ms of CPU are counted
        assert time.monotonic() < deadline, "the CPU clock does not move"
    cpu1, wait1 = clock.read()
    time.sleep(0.2)
    cpu2, wait2 = clock.read()
    assert cpu2 - cpu1 < 0.1                 # 200 ms asleep: next to no CPU
    if wait0 is not None:                    # /proc/thread-self/schedstat is there on Linux
        assert wait2 >= wait1 >= wait0
