"""Vacuuming of volatile databases: which deleted records may go, as pure decisions.

smbd deletes a record of a clustered database by storing an empty value (the 24-byte header
alone) and telling the daemon (SCHEDULE_FOR_DELETION); the daemon's own stores schedule empty
records the same way (:func:`.ltdbrules.store`). Left alone, such tombstones are correct but
the TDB files only grow. A fast vacuum run, per database every `VacuumInterval` seconds, works
through the *delete queue* as ctdbd 4.17 does (ctdb/server/ctdb_vacuum.c; facts re-stated):

1. Each queued record is looked at under its chain lock (not waited for: a busy record stays
   queued). It is a candidate only while it is still empty, this node is still its dmaster and
   its rsn is the one queued (otherwise it was revived or migrated since: skipped, dropped from
   the queue).
2. A candidate whose lmaster is another node is sent to that lmaster (VACUUM_FETCH), which
   migrates it to itself with a VACUUM_MIGRATION call and so queues it there.
3. A candidate this node is lmaster of is deleted at once when it never left the node with data
   (no MIGRATED_WITH_DATA: no other node can hold a copy of it); otherwise it goes on the
   *delete list*.
4. The delete list is sent to every other active node (TRY_DELETE_RECORDS). A node deletes its
   copy unless it is the key's lmaster, its copy is newer (higher rsn), has read-only flags, or
   it is the dmaster; it answers with the records it kept. What no node kept is deleted here,
   after the same checks as in 1 (and this node must still be the lmaster).

Deleting the copies elsewhere before the lmaster's own is what keeps the rule "a node without
the record and being its lmaster is its dmaster" true: no stale copy with a higher rsn survives
to win a later recovery.

Pure functions and a bounded queue; the shell (server/vacuum.py) does the locking and I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

from ...protocol.types import LtdbHeader
from .ltdbrules import MIGRATED_WITH_DATA, RO_FLAGS, Record

#: Queued records per database; beyond it the oldest are forgotten (they stay as tombstones,
#: which is correct, until deleted again).
QUEUE_LIMIT = 100_000


class Triage(Enum):
    SKIP = "skip"                    # revived, migrated away, or not empty: forget it
    DELETE_NOW = "delete now"        # lmaster and dmaster, never migrated with data
    DELETE_LIST = "delete list"      # lmaster and dmaster, copies may exist elsewhere
    TO_LMASTER = "to lmaster"        # dmaster, another node is lmaster: VACUUM_FETCH


def still_deletable(queued: LtdbHeader, current: Record | None, pnn: int) -> bool:
    """The record is as it was queued: present, empty, this node its dmaster, same rsn, no
    read-only flags."""
    if current is None:
        return False
    header, data = current
    return (not data and header.dmaster == pnn and header.rsn == queued.rsn
            and not header.flags & RO_FLAGS)


def triage(queued: LtdbHeader, current: Record | None, pnn: int, lmaster: int | None) -> Triage:
    """What step 1-3 do with one queued record (`current` as read under its chain lock)."""
    if lmaster is None or not still_deletable(queued, current, pnn):
        return Triage.SKIP
    if lmaster != pnn:
        return Triage.TO_LMASTER
    if queued.flags & MIGRATED_WITH_DATA:
        return Triage.DELETE_LIST
    return Triage.DELETE_NOW


def may_delete_copy(sent: LtdbHeader, current: Record | None, pnn: int, lmaster: int | None) -> bool:
    """TRY_DELETE_RECORDS on a node that holds a copy: True when its copy is gone or may be
    deleted (ctdbd's delete_tdb_record). A copy that does not parse is treated as deletable."""
    if lmaster is None or lmaster == pnn:
        return False
    if sent.flags & RO_FLAGS:
        return False
    if current is None:
        return True
    header, _ = current
    return header.rsn <= sent.rsn and not header.flags & RO_FLAGS and header.dmaster != pnn


def may_delete_here(queued: LtdbHeader, current: Record | None, pnn: int, lmaster: int | None) -> bool:
    """Step 4, on the lmaster after every other node deleted its copy."""
    return lmaster == pnn and still_deletable(queued, current, pnn)


@dataclass
class DeleteQueue:
    """One database's records scheduled for deletion: key -> header as scheduled (a later
    schedule of the same key replaces the earlier one)."""

    limit: int = QUEUE_LIMIT
    dropped: int = 0                 # forgotten because the queue was full

    def __post_init__(self) -> None:
        self._items: OrderedDict[bytes, LtdbHeader] = OrderedDict()

    def add(self, key: bytes, header: LtdbHeader) -> None:
        key = bytes(key)
        self._items.pop(key, None)
        self._items[key] = header
        while len(self._items) > self.limit:
            self._items.popitem(last=False)
            self.dropped += 1

    def discard(self, key: bytes) -> None:
        self._items.pop(bytes(key), None)

    def take(self, count: int) -> list[tuple[bytes, LtdbHeader]]:
        """Up to `count` of the oldest entries, removed from the queue (a busy one is put back
        with `add`)."""
        out = []
        while self._items and len(out) < count:
            out.append(self._items.popitem(last=False))
        return out

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: bytes) -> bool:
        return bytes(key) in self._items
