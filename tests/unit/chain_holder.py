"""A chain lock held by another process (as smbd holds one), for tests of code that must leave
such a chain alone."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

from ctdblab.daemon.store import libtdb

_HOLDER = (
    "import sys, os; sys.path.insert(0, sys.argv[1]); import libtdb\n"
    "ctx = libtdb.lib.tdb_open_ex(sys.argv[2].encode(), 0, int(sys.argv[3], 0), os.O_RDWR, 0o600, None, None)\n"
    "assert libtdb.lib.tdb_chainlock(ctx, libtdb.key_data(bytes.fromhex(sys.argv[4]))) == 0\n"
    "print('locked', flush=True); sys.stdin.readline()\n")


@contextlib.contextmanager
def chain_held_elsewhere(db, key: bytes) -> Iterator[None]:
    """`key`'s chain of the database `db` locked by a child process for the block."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, os.path.dirname(libtdb.__file__), db.path, hex(db.open_flags),
         key.hex()], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        yield
    finally:
        holder.stdin.close()
        holder.wait(10)
