"""Shared bits of the benchmarks: progress lines, plain-text tables and process CPU."""

from __future__ import annotations

import os
import sys
import time

T0 = time.monotonic()
#: Clock ticks per second (/proc/PID/stat counts CPU time in these).
TICK = os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def threads_cpu_ns(pid: int) -> dict[int, int] | None:
    """Each thread's time on a CPU so far, in nanoseconds (``/proc/PID/task/*/schedstat``), or
    None without schedstats. Finer than ``cpu_ticks``: an idle daemon's 30 s windows differ by a
    tick or two (0.033 % of a core each)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue                    # the thread ended meanwhile
            return None
    return out


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(own utime+stime, reaped children's cutime+cstime) in clock ticks (all threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
