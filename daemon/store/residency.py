"""Keeping a TDB file's mapped pages out of the daemon's resident set.

Creating a volatile database initialises one robust mutex per hash chain: 100001 chains x 40
bytes, about 4 MB written through the daemon's shared mapping of the file, and all of it stays
counted in the daemon's RSS although the daemon only ever touches the chains it locks. Those
pages belong to the page cache, shared with every smbd that maps the file. Dropping them from
this process's page tables (madvise MADV_DONTNEED on the MAP_SHARED mapping) changes no data;
a later access faults the page back in from the cache.
"""

from __future__ import annotations

import ctypes
import os

from .libtdb import libc

MADV_DONTNEED = 4
libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
libc.madvise.restype = ctypes.c_int


def release_mapped_pages(path: str) -> int:
    """Drop this process's resident pages of every shared mapping of `path`; returns the bytes
    of mapping covered (0 when the file is not mapped). Errors are not fatal: the pages just
    stay resident."""
    target = os.path.realpath(path)
    released = 0
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            lines = maps.readlines()
    except OSError:
        return 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5].strip() != target or not fields[1].endswith("s"):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if libc.madvise(start, end - start, MADV_DONTNEED) == 0:
            released += end - start
    return released
