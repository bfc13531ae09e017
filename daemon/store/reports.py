"""What a database file had to say, told to the daemon's log without flooding it.

Three kinds of report come out of the store for one attached database:

* libtdb's own messages (``TdbFile(log=...)``): logged as ctdbd's tdb_wrap logs them,
  ``tdb(<path>): <message>``;
* values shorter than the 24-byte ltdb header met by a record read or a traverse: ctdbd, and
  pyctdbd, read them as "no record", which a migration then replaces — the log says so;
* corruption: a libtdb message that names it (bad magic, corrupt, out of bounds), or a
  persistent file found damaged at attach. The first reason is kept (``corruption``) and handed
  to ``on_corrupt(reason)`` once, for the layers above to mark the database unhealthy.

Each kind is logged the first time at once; repeats are counted and summarised with the next
report of that kind at least ``period`` seconds later, so a hot corrupt record cannot flood the
log.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .libtdb import TDB_DEBUG_ERROR

#: How often repeats of one kind of report are summarised (seconds).
REPORT_PERIOD = 60.0
#: libtdb messages (FATAL/ERROR level) that mean the file's structure is damaged.
CORRUPTION_WORDS = ("magic", "corrupt", "beyond eof", "oob", "out of bounds", "bad hash")


def is_corruption(level: int, text: str) -> bool:
    lowered = text.lower()
    return level <= TDB_DEBUG_ERROR and any(word in lowered for word in CORRUPTION_WORDS)


class FileReports:
    def __init__(self, name: str, path: str, log: Callable[[str], None],
                 on_corrupt: Callable[[str], None] | None = None, *,
                 clock: Callable[[], float] = time.monotonic, period: float = REPORT_PERIOD) -> None:
        self.name = name
        self.path = path
        self.log = log
        self.on_corrupt = on_corrupt
        self.clock = clock
        self.period = period
        self.corruption: str | None = None
        self._seen: dict[str, list] = {}          # kind -> [repeats since last line, last time]

    def libtdb(self, level: int, text: str) -> None:
        """A libtdb message about the file (the TdbFile's ``log``)."""
        self._say(f"tdb:{text.split(' ', 1)[0]}", f"tdb({self.path}): {text}")
        if is_corruption(level, text):
            self.corrupt(f"tdb({self.path}): {text}")

    def short_record(self, key: bytes, size: int, where: str = "read") -> None:
        """A value of `size` < 24 bytes under `key` (a record read, or a traverse)."""
        self._say(f"short:{where}", f"database {self.name}: the record with key 0x{key[:64].hex()} "
                                    f"is {size} bytes, shorter than the 24-byte ltdb header; "
                                    f"{where} treats it as no record ({self.path})")

    def corrupt(self, reason: str) -> None:
        """The file is damaged: keep the first reason, tell the layers above once."""
        if self.corruption is not None:
            return
        self.corruption = reason
        self.log(f"database {self.name} is corrupt: {reason}")
        if self.on_corrupt is not None:
            try:
                self.on_corrupt(reason)
            except Exception as exc:                 # a report must not fail the I/O it came from
                self.log(f"database {self.name}: reporting corruption failed: {exc!r}")

    def _say(self, kind: str, text: str) -> None:
        now = self.clock()
        entry = self._seen.get(kind)
        if entry is None:
            self._seen[kind] = [0, now]
            self.log(text)
        elif now - entry[1] >= self.period:
            repeats = entry[0]
            entry[0], entry[1] = 0, now
            self.log(f"{text} (and {repeats} more like it in {self.period:.0f} s)" if repeats else text)
        else:
            entry[0] += 1
