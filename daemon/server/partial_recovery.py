"""This node's side of pyctdbd's recovery after nodes were lost or joined, which freezes nothing
(rules in `core/db/partial_recovery.py`, the leader's side in `server/partial_recovery_driver.py`):

* **PYCTDB_RECOVERY_SCAN** {nodes, db_ids}: only in recovery mode, after the new vnnmap (so no
  daemon moves a record meanwhile). The listed volatile databases are read by `tdb_traverse_read`
  — in the loop under an all-record lock taken without waiting when the file is small and no
  lock of it is held, else in one forked child (which may wait for smbd's chain locks: the loop
  never does) — keeping the records whose dmaster, or whose lmaster in the map this node
  served with, is not among `nodes`, or whose lmaster the new map changes, and those of the
  keys it handed off lately (`core/db/handoffs.py`; refused if that log overflowed). Answer:
  this node's `came_from` generation and one record buffer per database.
* **PYCTDB_RECOVERY_FETCH** {buffers of keys}: this node's copies of those keys (read as the
  scan reads).
* **PYCTDB_RECOVERY_APPLY** {generation, buffers}: each record is stored under its chain lock
  (header and value as sent); then each listed database's generation becomes the recovery's
  (refused for a frozen one), so SET_RECMODE NORMAL accepts it. Calls held during the recovery
  go out when recovery mode ends, when every node has applied its repairs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.db.partial_recovery import is_affected
from ..log import log
from ..net.transport import MAX_NODE_MESSAGE
from ..protocol import (
    INVALID_GENERATION, LTDB_HEADER_SIZE, Control, LtdbHeader, RecBuffer, RecBufferList, RecData,
    RecoveryApply, RecoveryScan, pack_reply, pack_scan_result,
)
from ..store import ChildError, Database, TdbError, TdbFile, jenkins_hash, run_in_child_over
from .dispatch import Result


@dataclass(frozen=True)
class RecoveryView:
    """What the node's recovery state says: recovery mode, the generation it came from, the
    map it served with, the map it has now."""

    recovering: bool
    came_from: int
    previous_map: tuple[int, ...]
    current_map: tuple[int, ...] = ()


def affected_records(db_id: int, old_map: tuple[int, ...], new_map: tuple[int, ...],
                     live: frozenset[int], handed_off: set[bytes]) -> Callable[[TdbFile], bytes]:
    """The scan: the records a membership change to `live` (and the map change) may have
    touched, and those of the keys in `handed_off`, packed as a `ctdb_rec_buffer` where the scan
    runs (a big one in the child, not in the daemon's loop)."""
    size, new_size = len(old_map), len(new_map)

    def scan(tdb: TdbFile) -> bytes:
        found: list[RecData] = []

        def visit(key: bytes, value: bytes) -> None:
            if len(value) < LTDB_HEADER_SIZE:
                return
            dmaster = int.from_bytes(value[8:12], "little")
            hashed = jenkins_hash(key)
            old_lmaster = old_map[hashed % size] if size else None
            new_lmaster = new_map[hashed % new_size] if new_size else None
            if is_affected(dmaster, old_lmaster, new_lmaster, live) or key in handed_off:
                found.append(RecData(0, bytes(key), bytes(value)))

        tdb.traverse_read(visit)
        return RecBuffer(db_id, found).pack()
    return scan


def copies_of(keys: list[bytes]) -> Callable[[TdbFile], list[tuple[bytes, bytes]]]:
    def fetch(tdb: TdbFile) -> list[tuple[bytes, bytes]]:
        found = []
        for key in keys:
            value = tdb.fetch(key)
            if value is not None and len(value) >= LTDB_HEADER_SIZE:
                found.append((key, value))
        return found
    return fetch


#: Files grown by up to this much since the daemon opened them (an empty volatile file is
#: already ~4 MiB of mutexes and hash table) are read in the loop when no lock of theirs is held
#: (a few milliseconds for smbd's usual databases); larger ones, and busy ones, in a child.
IN_LOOP_BYTES = 1 << 20
#: The largest scan answered: one reply, which a node connection must be able to carry.
MAX_SCAN_REPLY = MAX_NODE_MESSAGE
#: Records stored between two yields to the loop.
YIELD_EVERY = 500


async def read_databases(dbs: list[Database], work: list[Callable[[TdbFile], Any]]) -> list[Any]:
    """`work[i](dbs[i].tdb)` for every database: small and idle ones in the loop under an
    all-record lock taken without waiting, the rest in one forked child."""
    results: list[Any] = [None] * len(dbs)
    for i, (db, fn) in enumerate(zip(dbs, work)):
        if db.grown_since_open() <= IN_LOOP_BYTES:
            done, value = db.locker.try_whole(fn)
            if done:
                results[i] = value
            await asyncio.sleep(0)       # one database at a time (a walk of 100001 chains: ~3 ms)
    rest = [i for i, value in enumerate(results) if value is None]
    if rest:
        found = await run_in_child_over([dbs[i] for i in rest],
                                        lambda tdbs: [work[i](t) for i, t in zip(rest, tdbs)])
        for i, value in zip(rest, found):
            results[i] = value
    return results          # type: ignore[return-value]


class PartialRecoveryNode:
    def __init__(self, lookup: Callable[[int], Database | None], view: Callable[[], RecoveryView],
                 set_generation: Callable[[int, int], Result],
                 handed_off: Callable[[int], tuple[set[bytes], bool]]) -> None:
        self.lookup = lookup
        self.view = view
        self.set_generation = set_generation
        self.handed_off = handed_off        # db_id -> (keys, whether the log overflowed)

    async def scan(self, request: RecoveryScan) -> Result:
        view = self.view()
        if not view.recovering:
            return Result(-1, errmsg="not in recovery mode")
        if view.came_from == INVALID_GENERATION and view.previous_map:
            # Not a node that started afresh: one whose last recovery did not finish. What it
            # holds is for CTDB's full merge.
            return Result(-1, errmsg="this node's last recovery did not finish")
        dbs = []
        for db_id in request.db_ids:
            db = self.lookup(db_id)
            if db is None or db.persistent:
                return Result(-1, errmsg=f"no volatile database 0x{db_id:08x} here")
            dbs.append(db)
        live = frozenset(request.nodes)
        scans = []
        for db in dbs:
            keys, overflowed = self.handed_off(db.db_id)
            if overflowed:
                return Result(-1, errmsg="too many records handed off lately to list them")
            scans.append(affected_records(db.db_id, view.previous_map, view.current_map, live, keys))
        try:
            found = await read_databases(dbs, scans)
        except (ChildError, TdbError) as exc:
            log.error("Recovery scan failed: %s", exc)
            return Result(-1, errmsg=f"scan failed: {exc}")
        size = sum(len(packed) for packed in found)
        if size > MAX_SCAN_REPLY:
            # One reply carries it all. Streaming the scan as DB_PULL streams a database would
            # lift this; until then CTDB's full recovery runs.
            return Result(-1, errmsg=f"the scan found {size >> 20} MiB of records, more than one "
                                     f"reply carries ({MAX_SCAN_REPLY >> 20} MiB)")
        count = sum(int.from_bytes(packed[4:8], "little") for packed in found)
        log.info("Recovery scan: %d records of %d databases for nodes %s", count, len(found),
                 request.nodes)
        return Result(0, pack_scan_result(view.came_from, found))

    async def fetch(self, request: RecBufferList) -> Result:
        if not self.view().recovering:
            return Result(-1, errmsg="not in recovery mode")
        dbs = []
        for buffer in request.buffers:
            db = self.lookup(buffer.db_id)
            if db is None or db.persistent:
                return Result(-1, errmsg=f"no volatile database 0x{buffer.db_id:08x} here")
            dbs.append((db, [bytes(rec.key) for rec in buffer.records]))
        try:
            found = await read_databases([db for db, _ in dbs], [copies_of(keys) for _, keys in dbs])
        except (ChildError, TdbError) as exc:
            log.error("Recovery fetch failed: %s", exc)
            return Result(-1, errmsg=f"fetch failed: {exc}")
        reply = RecBufferList([RecBuffer(db.db_id, [RecData(0, k, v) for k, v in records])
                               for (db, _), records in zip(dbs, found)])
        return Result(0, pack_reply(Control.PYCTDB_RECOVERY_FETCH, reply))

    async def apply(self, request: RecoveryApply) -> Result:
        if not self.view().recovering:
            return Result(-1, errmsg="not in recovery mode")
        stored = 0
        for buffer in request.buffers:
            db = self.lookup(buffer.db_id)
            if db is None:
                return Result(-1, errmsg=f"Unknown db 0x{buffer.db_id:08x}")
            for rec in buffer.records:
                if len(rec.data) < LTDB_HEADER_SIZE:
                    return Result(-1, errmsg=f"a record for {db.name} is shorter than its header")
                header, value = LtdbHeader.split(rec.data)
                try:
                    await db.store_ltdb(rec.key, header, value)
                except TdbError as exc:
                    return Result(-1, errmsg=f"storing a record of {db.name} failed: {exc}")
                stored += 1
                if stored % YIELD_EVERY == 0:
                    await asyncio.sleep(0)     # heartbeats go on during a big repair
        for buffer in request.buffers:
            result = self.set_generation(buffer.db_id, request.generation)
            if result.status != 0:
                return result
        log.info("Recovery repairs: %d records stored in %d databases", stored, len(request.buffers))
        return Result(0)
