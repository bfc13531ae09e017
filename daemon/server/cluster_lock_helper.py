"""pyctdbd's cluster-lock helper for `cluster lock = <file>`: CTDB's mutex-helper protocol
(ctdb/doc/cluster_mutex_helper.txt) over an fcntl lock, like Debian's ctdb_mutex_fcntl_helper.

    cluster_lock_helper.py FILE [RECHECK_SECONDS]

Writes one character to stdout: '0' the lock is held, '1' contention, '3' error (with a line on
stderr). While holding it, the helper exits and so releases the lock when it gets SIGTERM, when
its parent goes away (stdin reaches end-of-file, or the parent pid changes), or when FILE is
removed or replaced (checked every RECHECK_SECONDS, default 5; 0 disables the check), which is
how an operator moves the lock.

Standalone on purpose: stdlib only, started with `python3 -S -E`, so the daemon can spawn it in
a few milliseconds during an election.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import time
import sys


def _fail(message: str) -> int:
    sys.stderr.write(f"cluster_lock_helper: {message}\n")
    sys.stderr.flush()
    _answer("3")
    return 1


def _answer(char: str) -> None:
    os.write(1, char.encode())


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        return _fail("usage: cluster_lock_helper.py FILE [RECHECK_SECONDS]")
    path = argv[1]
    try:
        recheck = float(argv[2]) if len(argv) == 3 else 5.0
    except ValueError:
        return _fail(f"bad recheck interval {argv[2]!r}")
    parent = os.getppid()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        return _fail(f"unable to open {path}: {exc.strerror}")
    # One fcntl write lock on byte 0, as CTDB's helper takes it (lockf is F_SETLK underneath).
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0, os.SEEK_SET)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            _answer("1")
            return 0
        return _fail(f"failed to get lock on {path}: {exc.strerror}")
    held = os.fstat(fd)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    _answer("0")
    watch_stdin = True
    next_check = time.monotonic() + recheck
    while True:
        readable: list = []
        if watch_stdin:
            try:
                readable, _, _ = select.select([0], [], [], 1.0)
            except OSError:
                watch_stdin = False
        else:
            time.sleep(1.0)
        if readable:
            try:
                if not os.read(0, 4096):
                    return 0              # parent closed our stdin: it is gone
            except OSError:
                watch_stdin = False
        if os.getppid() != parent:
            return 0                      # parent died (never wait for pid 1)
        if recheck > 0 and time.monotonic() >= next_check:
            next_check = time.monotonic() + recheck
            try:
                now = os.stat(path)
            except OSError:
                sys.stderr.write(f"cluster_lock_helper: {path} disappeared; releasing the lock\n")
                return 2
            if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
                sys.stderr.write(f"cluster_lock_helper: {path} was replaced; releasing the lock\n")
                return 2

if __name__ == "__main__":
    sys.exit(main(sys.argv))
