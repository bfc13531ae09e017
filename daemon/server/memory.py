"""`ctdb dumpmemory` and `ctdb rddumpmemory` for a Python daemon: a report in the shape of
talloc's (a "full talloc report" header, then one indented "contains N bytes in M blocks" line
per entry), so tools and eyes used to ctdbd's dumps read it the same way. Entries: the Python
allocator's totals, the process's resident memory, and the object types that hold the most
memory (shallow sizes, from the garbage collector's view)."""

from __future__ import annotations

import gc
import os
import sys
from collections import Counter

TOP_TYPES = 40


def memory_report(name: str = "pyctdbd") -> str:
    sizes: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        kind = type(obj).__name__
        counts[kind] += 1
        try:
            sizes[kind] += sys.getsizeof(obj)
        except TypeError:
            pass
    total_bytes = sum(sizes.values())
    total_blocks = sum(counts.values())
    lines = [f"full talloc report on '{name}' (total {total_bytes:6d} bytes in {total_blocks:3d} blocks)"]
    rss = _resident_bytes()
    if rss is not None:
        lines.append(_line(1, "resident memory (RSS)", rss, 1))
    lines.append(_line(1, "python allocated blocks", 0, sys.getallocatedblocks()))
    lines.append(_line(1, "tracked objects", total_bytes, total_blocks))
    for kind, size in sizes.most_common(TOP_TYPES):
        lines.append(_line(2, kind, size, counts[kind]))
    return "\n".join(lines) + "\n"


def _line(depth: int, name: str, size: int, blocks: int) -> str:
    return f"{' ' * (4 * depth)}{name:<30} contains {size:6d} bytes in {blocks:3d} blocks (ref 0)"


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
