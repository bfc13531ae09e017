"""ctdbd's rules for one record of a clustered database, as pure functions: where a key's lmaster
is, what a read of a missing record yields, what a store by the daemon writes (or deletes), and
the three built-in call functions. The migration core (:mod:`.migration`) is built on these.

Facts (Samba 4.17 ``ctdb/common/ctdb_ltdb.c``, ``ctdb/common/common.c``,
``ctdb/server/ctdb_ltdb_server.c``, ``ctdb/server/ctdb_client.c``):

- ``ctdb_lmaster``: ``vnnmap.map[ctdb_hash(key) % vnnmap.size]``; ``ctdb_hash`` is
  ``tdb_jenkins_hash`` (lookup3 ``hashlittle`` with initval 0) of the key bytes as stored, i.e.
  :func:`~ctdblab.daemon.protocol.ltdb.jenkins_hash`;
- ``ctdb_ltdb_fetch`` of a record that is missing (or shorter than its 24-byte header) returns an
  initial header ``{rsn 0, dmaster = lmaster, flags AUTOMATIC}`` and empty data; when that makes
  this node the dmaster (it is the lmaster) it also *stores* the initial header, which goes through
  the store rules below (so the lmaster ends up holding an empty record with rsn 1);
- ``ctdb_ltdb_store_server`` keeps the record if it has data, carries read-only flags, belongs to a
  persistent database, is AUTOMATIC, was MIGRATED_WITH_DATA, or this node is its lmaster (an empty
  record that came back to its lmaster by VACUUM_MIGRATION is also queued for deletion) or its
  dmaster; otherwise it *deletes* it: an empty, never-migrated-with-data record given away by a
  node that is not its lmaster is gone from that node. A kept record of a non-persistent
  database whose dmaster is this node and that has no read-only flags gets ``rsn + 1``; an empty
  one of those is scheduled for deletion (vacuuming). The flags VACUUM_MIGRATED and AUTOMATIC
  never reach the file;
- the call functions: NULL_FUNC replies nothing, FETCH_FUNC replies the data, FETCH_WITH_HEADER
  replies the 24-byte header (as it was *before* the call's own store) followed by the data;
  ``ctdb_call_local`` then stores the record through the rules above (another ``rsn + 1`` on the
  dmaster). An unknown call id fails before any store.

Pure functions, no I/O (the key hash can be swapped for libtdb's own, `use_key_hash`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ...protocol.constants import CallFunc, RecordFlag
from ...protocol.ltdb import jenkins_hash
from ...protocol.types import LtdbHeader

AUTOMATIC = int(RecordFlag.AUTOMATIC)
MIGRATED_WITH_DATA = int(RecordFlag.MIGRATED_WITH_DATA)
VACUUM_MIGRATED = int(RecordFlag.VACUUM_MIGRATED)
RO_FLAGS = int(RecordFlag.RO_FLAGS)

#: (header, data) of a record as the shell read it under the chain lock; None when missing.
Record = tuple[LtdbHeader, bytes]


def lmaster_of(key: bytes, lmasters: Sequence[int]) -> int | None:
    """The key's lmaster in a vnnmap whose pnn list is `lmasters` (None if the map is empty)."""
    if not lmasters:
        return None
    return lmasters[key_hash(bytes(key)) % len(lmasters)]


@functools.lru_cache(maxsize=4096)
def key_hash(key: bytes) -> int:
    """jenkins_hash of a record key, remembered: one migration asks for its key's lmaster two
    or three times on each node it passes, and the hash in Python costs several microseconds."""
    return _hash_key(key)


_hash_key: Callable[[bytes], int] = jenkins_hash
#: keys the two implementations must agree on before a faster one is used: lengths around
#: lookup3's 12-byte blocks, and every byte value
_CHECK_KEYS = tuple(bytes(range(n)) for n in range(0, 40)) + (bytes(range(256)),
                                                              b"\xff" * 13, b"\x80" * 25)


def use_key_hash(fn: Callable[[bytes], int]) -> bool:
    """Hash keys with `fn` from now on: the daemon passes libtdb's own lookup3 (through ctypes,
    5-10 times faster than the pure one; keys of random ids, new on every open, miss the cache).
    Refused (the hash in use stays) unless `fn` agrees with the pure one on a set of keys."""
    global _hash_key
    try:
        same = all(fn(key) == jenkins_hash(key) for key in _CHECK_KEYS)
    except Exception:
        same = False
    if same:
        _hash_key = fn
        key_hash.cache_clear()
    return same


def initial_header(lmaster: int) -> LtdbHeader:
    """``ltdb_initial_header``: a missing record's dmaster is its lmaster."""
    return LtdbHeader(rsn=0, dmaster=lmaster, reserved1=0, flags=AUTOMATIC)


@dataclass(frozen=True)
class Stored:
    """What a daemon store does: write `header` + data (keep) or delete the key; whether the
    record goes on the vacuum queue."""

    keep: bool
    header: LtdbHeader
    schedule_for_deletion: bool
    #: ctdbd's remove_from_delete_queue: a record kept and not scheduled leaves the vacuum queue
    #: (a give-away store at the lmaster, a store with data), so no run looks at it in vain.
    unschedule: bool = False


def store(header: LtdbHeader, data: bytes, *, pnn: int, lmaster: int | None,
          persistent: bool) -> Stored:
    """``ctdb_ltdb_store_server``. Returns the header as stored (the caller's header is not
    changed; ctdbd changes it in place, so callers continue with ``Stored.header``)."""
    flags = header.flags
    rsn = header.rsn
    keep = False
    schedule = False
    unschedule = False                      # ctdbd: only when it went through the rules below
    if lmaster is None:                     # no vnnmap: ctdbd stores as is
        keep = True
    else:
        if data:
            keep = True
        elif flags & RO_FLAGS:
            keep = True
        elif persistent:
            keep = True
        elif flags & AUTOMATIC:
            keep = True
            schedule = True
        elif flags & MIGRATED_WITH_DATA:
            keep = True
        elif pnn == lmaster:
            if flags & VACUUM_MIGRATED and pnn == header.dmaster:
                keep = True
                schedule = True
            if not flags & VACUUM_MIGRATED:
                keep = True
            elif pnn != header.dmaster:
                keep = True
        elif pnn == header.dmaster:
            keep = True
        if keep and not persistent and pnn == header.dmaster and not flags & RO_FLAGS:
            rsn += 1
            if not data:
                schedule = True
        unschedule = keep and not schedule
    if not persistent:
        # ctdbd stores a persistent record's header as given (an initial AUTOMATIC one too).
        flags &= ~(VACUUM_MIGRATED | AUTOMATIC)
    return Stored(keep, LtdbHeader(rsn, header.dmaster, header.reserved1, flags), schedule and keep,
                  unschedule)


@dataclass(frozen=True)
class Fetched:
    """A record as ``ctdb_ltdb_fetch`` returns it, and the initial store it made, if any."""

    header: LtdbHeader
    data: bytes
    initial_store: Stored | None


def fetch(record: Record | None, key: bytes, *, pnn: int, lmasters: Sequence[int],
          persistent: bool) -> Fetched:
    """``ctdb_ltdb_fetch``: the record, or an initial header (stored at once when this node is
    the lmaster, or the database persistent)."""
    if record is not None:
        header, data = record
        return Fetched(LtdbHeader(header.rsn, header.dmaster, header.reserved1, header.flags),
                       bytes(data), None)
    lmaster = lmaster_of(key, lmasters)
    if lmaster is None:
        raise ValueError("no vnnmap: a missing record has no lmaster")
    header = initial_header(lmaster)
    if persistent or header.dmaster == pnn:
        stored = store(header, b"", pnn=pnn, lmaster=lmaster, persistent=persistent)
        return Fetched(stored.header, b"", stored)
    return Fetched(header, b"", None)


def call_function(callid: int, header: LtdbHeader, data: bytes) -> tuple[int, bytes] | None:
    """The built-in call functions: (status, reply data), or None for an unknown call id."""
    if callid == CallFunc.NULL_FUNC:
        return 0, b""
    if callid == CallFunc.FETCH_FUNC:
        return 0, bytes(data)
    if callid == CallFunc.FETCH_WITH_HEADER_FUNC:
        return 0, header.pack() + bytes(data)
    return None
