"""benchmarks/common.py threads_cpu_ns: a thread's CPU time in nanoseconds, for idle figures finer
than /proc's 10 ms ticks."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import threads_cpu_ns  # noqa: E402


def test_a_busy_thread_shows_its_time_in_nanoseconds():
    before = threads_cpu_ns(os.getpid())
    if before is None:
        pytest.skip("this kernel keeps no schedstat")
    done = threading.Event()
    seen: dict[str, int] = {}

    def burn() -> None:
        seen["tid"] = threading.get_native_id()
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass
        seen["cpu_ns"] = time.thread_time_ns()
        done.wait(5)                     # stay alive until measured

    worker = threading.Thread(target=burn)
    worker.start()
    while "cpu_ns" not in seen:
        time.sleep(0.01)
    after = threads_cpu_ns(os.getpid())
    done.set()
    worker.join()
    assert after is not None and seen["tid"] in after and seen["tid"] not in before
    assert after[seen["tid"]] >= 0.9 * seen["cpu_ns"] >= 0.9 * 50_000_000
    assert threads_cpu_ns(2**22 + 12345) is None             # no such process
