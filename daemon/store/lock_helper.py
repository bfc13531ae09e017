"""pyctdbd's own chain-lock helper: the argv protocol of CTDB's ``ctdb_lock_helper``, for hosts
without Debian's ctdb package (the daemon prefers the stock C helper; see :mod:`.locks`).

    lock_helper.py <parent-pid> <output-fd> RECORD <db-path> <db-flags> <hex-key | NULL>
    lock_helper.py <parent-pid> <output-fd> DB <db-path> <db-flags>

It opens the database with ``db-flags`` (strtol base 0, as the stock helper reads them), takes
``tdb_chainlock`` (RECORD) or ``tdb_lockall`` (DB) — blocking, that is its job — and writes one
byte to ``output-fd``: 0 locked, 1 failed (then exits 1). It then holds the lock until SIGTERM
(unlock, exit 0) or until the parent process is gone. Unlike the stock helper, which looks for the
parent every 5 s, it waits on a pidfd of the parent and so lets go as soon as the parent dies.

Standalone on purpose (started with ``python3 -S -E``): it imports only the stdlib and the
sibling ``libtdb.py``, which has no package imports.
"""

from __future__ import annotations

import os
import select
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import libtdb  # noqa: E402  (the sibling module, loaded without the package)


def _say(fd: int, ok: bool) -> None:
    try:
        os.write(fd, b"\0" if ok else b"\1")
    except OSError:
        pass


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[3] not in ("RECORD", "DB") or len(argv) != (7 if argv[3] == "RECORD" else 6):
        sys.stderr.write("usage: lock_helper.py <ctdbd-pid> <output-fd> RECORD <db-path> <db-flags> "
                         "<db-key>\n       lock_helper.py <ctdbd-pid> <output-fd> DB <db-path> "
                         "<db-flags>\n")
        return 1
    ppid, out_fd, kind, path, flags_text = int(argv[1]), int(argv[2]), argv[3], argv[4], argv[5]
    key = b""
    if kind == "RECORD" and argv[6] != "NULL":
        key = bytes.fromhex(argv[6])
    try:
        tdb_flags = int(flags_text, 0)
    except ValueError:
        tdb_flags = 0
    # SIGTERM before the lock is taken: die at once (nothing to undo). After: unlock first.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ctx = libtdb.lib.tdb_open_ex(os.fsencode(path), 0, tdb_flags, os.O_RDWR | os.O_CLOEXEC, 0o600,
                                 None, None)
    if not ctx:
        sys.stderr.write(f"locking: Error opening database {path}\n")
        _say(out_fd, False)
        return 1
    key_td = libtdb.key_data(key)
    ret = libtdb.lib.tdb_chainlock(ctx, key_td) if kind == "RECORD" else libtdb.lib.tdb_lockall(ctx)
    if ret != 0:
        what = "record" if kind == "RECORD" else "db"
        err = libtdb.lib.tdb_errorstr(ctx) or b"?"
        sys.stderr.write(f"locking: Error getting {what} lock ({err.decode(errors='replace')})\n")
        _say(out_fd, False)
        return 1

    def release(*_: object) -> None:
        if kind == "RECORD":
            libtdb.lib.tdb_chainunlock(ctx, key_td)
        else:
            libtdb.lib.tdb_unlockall(ctx)
        libtdb.lib.tdb_close(ctx)
        os._exit(0)

    signal.signal(signal.SIGTERM, release)
    _say(out_fd, True)
    try:
        parent = os.pidfd_open(ppid) if ppid > 1 else None
    except OSError:  # already gone
        release()
    while True:
        if parent is None:
            signal.pause()
        else:
            select.select([parent], [], [])  # readable when the parent exits
            release()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
