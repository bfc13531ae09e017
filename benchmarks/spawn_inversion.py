"""How late a real-time daemon's event loop runs while it starts children on a busy core:
``subprocess.Popen`` in a worker thread against posix_spawn, with the child SCHED_OTHER from the
start and as pyctdbd starts it (daemon/spawn: real-time until it has exec'd), in one run.

    .venv/bin/python -m benchmarks.spawn_inversion [--seconds 3] [--cpu 1]

The situation of the lab's soak, made repeatable: the loop thread runs SCHED_FIFO 2 with
SCHED_RESET_ON_FORK (as pyctdbd's loop runs real-time and its children do not), a worker
thread at the same policy starts ``/bin/true`` over and over, and a spinner at SCHED_FIFO 1
keeps the same core busy, standing for the other real-time daemons. The child starts
SCHED_OTHER and waits behind the spinner before it can exec (the kernel's real-time throttling
lets it run in the last 50 ms of each second). Meanwhile the loop runs a 1 ms timer and the
benchmark prints how late it fired: p50, p99, max, and the children started. With Popen the
worker holds the GIL until the exec, so the loop, which needs the GIL, waits too; with
posix_spawn through ctypes it does not. pyctdbd's child runs real-time until it has exec'd, so
it does not wait behind the spinner at all: compare the children started.

Needs root (real-time scheduling). Everything is pinned to one core (``--cpu``); the spinner
ends by itself after ``--seconds`` + 0.5 s, and is killed when the benchmark exits.
No pass/fail: figures side by side (DESIGN.md).
"""

from __future__ import annotations

import argparse
import asyncio
import mmap
import os
import subprocess
import sys
import time

from ctdblab.daemon import spawn
from ctdblab.stats import percentile

SPINNER = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"
RESET_ON_FORK = getattr(os, "SCHED_RESET_ON_FORK", 0x40000000)


def realtime(priority: int) -> None:
    os.sched_setscheduler(0, os.SCHED_FIFO | RESET_ON_FORK, os.sched_param(priority))


def start_popen() -> None:
    subprocess.Popen(["/bin/true"], stdin=subprocess.DEVNULL, close_fds=True).wait()


def start_popen_fork() -> None:
    subprocess._USE_VFORK = False          # Python 3.11's switch: fork instead of vfork
    try:
        start_popen()
    finally:
        subprocess._USE_VFORK = True


def start_posix_spawn() -> None:
    spawn.Child(spawn.posix.spawn(["/bin/true"])).wait()


def start_realtime_until_exec() -> None:
    spawn.start_child_now(["/bin/true"]).wait()


async def measure(start_one, seconds: float, pool, remap: bool) -> tuple[list[float], int]:
    loop = asyncio.get_running_loop()
    lateness: list[float] = []
    stop = time.monotonic() + seconds

    async def ticker() -> None:
        while time.monotonic() < stop:
            asked = time.monotonic()
            if remap:                          # what allocating and freeing memory does
                mmap.mmap(-1, 1 << 20).close()
            await asyncio.sleep(0.001)
            lateness.append(time.monotonic() - asked - 0.001)

    async def starter() -> int:
        started = 0
        while time.monotonic() < stop:
            await loop.run_in_executor(pool, start_one)
            started += 1
        return started

    _, started = await asyncio.gather(ticker(), starter())
    return lateness, started


def run_mode(name: str, start_one, seconds: float, cpu: int, remap: bool,
             reset_on_fork: bool = True) -> dict:
    # Its thread is made before the core is busy.
    pool = spawn.thread_pool(1, "bench", reset_on_fork=reset_on_fork)
    spinner = subprocess.Popen(
        ["chrt", "-f", "1", "taskset", "-c", str(cpu), sys.executable, "-c",
         SPINNER.format(seconds=seconds + 0.5)])
    try:
        time.sleep(0.2)                       # the spinner is on the core
        lateness, started = asyncio.run(measure(start_one, seconds, pool, remap))
    finally:
        spinner.kill()
        spinner.wait()
        pool.shutdown()
    ms = [value * 1000 for value in lateness]
    return {"mode": name, "children": started, "ticks": len(ms),
            "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": max(ms)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--cpu", type=int, default=1)
    parser.add_argument("--remap", action="store_true",
                        help="the loop maps and unmaps 1 MiB each tick (needs the address space "
                             "lock a child sharing it may hold)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root: the loop and the spinner run SCHED_FIFO")
    os.sched_setaffinity(0, {args.cpu})
    realtime(2)
    rows = [run_mode("Popen in a thread", start_popen, args.seconds, args.cpu, args.remap),
            run_mode("Popen, fork not vfork", start_popen_fork, args.seconds, args.cpu, args.remap),
            run_mode("posix_spawn, SCHED_OTHER", start_posix_spawn, args.seconds, args.cpu,
                     args.remap),
            run_mode("posix_spawn (pyctdbd)", start_realtime_until_exec, args.seconds, args.cpu,
                     args.remap, reset_on_fork=False)]
    print(f"{'children started by':24} {'children':>8} {'ticks':>6} {'late p50':>9} "
          f"{'p99':>9} {'max':>9}")
    for row in rows:
        print(f"{row['mode']:24} {row['children']:8d} {row['ticks']:6d} {row['p50_ms']:7.2f}ms "
              f"{row['p99_ms']:7.2f}ms {row['max_ms']:7.2f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
