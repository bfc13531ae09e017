"""pyctdbd's cluster-lock helper for `cluster lock = <file>`: CTDB's mutex-helper protocol
(ctdb/doc/cluster_mutex_helper.txt) over an fcntl lock, like Debian's ctdb_mutex_fcntl_helper,
plus a lease.

    cluster_lock_helper.py [--armed] [--lease SECONDS] FILE [RECHECK_SECONDS]

Writes one character to stdout: '0' the lock is held, '1' contention, '3' error (with a line on
stderr). While holding it, the helper exits and so releases the lock when it gets SIGTERM, when
its parent goes away (stdin reaches end-of-file, or the parent pid changes), or when FILE is
removed or replaced (checked every RECHECK_SECONDS, default 5; 0 disables the check), which is
how an operator moves the lock.

--lease: while holding the lock, the daemon writes a byte to our stdin at least every SECONDS
  (from its event loop). If none comes, the daemon is frozen or hung: the lock is released (exit
  4), as a cluster filesystem or lock service lets a silent holder's lease run out, so the other
  nodes can elect a leader. Debian's helper keeps the lock for as long as a stopped daemon exists.
--armed: wait for one byte on stdin before trying the lock. The daemon starts the next helper
  ahead of time, so an election does not wait for an interpreter to start.

Standalone on purpose: stdlib only, started with `python3 -S -E`.
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
    args = argv[1:]
    armed = False
    lease = 0.0
    while args and args[0].startswith("--"):
        option = args.pop(0)
        if option == "--armed":
            armed = True
        elif option == "--lease" and args:
            try:
                lease = float(args.pop(0))
            except ValueError:
                return _fail("bad --lease value")
        else:
            return _fail(f"unknown option {option}")
    if len(args) not in (1, 2):
        return _fail("usage: cluster_lock_helper.py [--armed] [--lease SECONDS] FILE [RECHECK_SECONDS]")
    path = args[0]
    try:
        recheck = float(args[1]) if len(args) == 2 else 5.0
    except ValueError:
        return _fail(f"bad recheck interval {args[1]!r}")
    if armed:
        try:
            if not os.read(0, 1):
                return 0                  # discarded before it was needed
        except OSError:
            return 0
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
    renewed = time.monotonic()
    tick = min(1.0, lease / 4) if lease > 0 else 1.0
    while True:
        readable: list = []
        if watch_stdin:
            try:
                readable, _, _ = select.select([0], [], [], tick)
            except OSError:
                watch_stdin = False
        else:
            time.sleep(tick)
        if readable:
            try:
                if not os.read(0, 4096):
                    return 0              # parent closed our stdin: it is gone
                renewed = time.monotonic()
            except OSError:
                watch_stdin = False
        if os.getppid() != parent:
            return 0                      # parent died (never wait for pid 1)
        if lease > 0 and time.monotonic() - renewed > lease:
            sys.stderr.write(f"cluster_lock_helper: no word from the daemon for {lease:g} s "
                             "(frozen or hung?); releasing the lock\n")
            return 4
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
