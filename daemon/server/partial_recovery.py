"""This node's side of pyctdbd's recovery after nodes were lost or joined, which freezes and
copies nothing (rules in `core/db/unsettled.py`, the leader's side in
`server/partial_recovery_driver.py`):

* **PYCTDB_RECOVERY_HANDOFFS** {nodes, db_ids}: only in recovery mode, after the new vnnmap (so
  no daemon moves a record meanwhile). Answer: this node's `came_from` generation and, per listed
  volatile database, the keys it handed to another node shortly before the generation changed
  or whose hand-off to it was cut off (`core/db/handoffs.py`; refused if that log overflowed),
  without data. A node whose last recovery did not finish answers STALE_GENERATION and no keys.
* **PYCTDB_RECOVERY_DEFER** {generation, old map, per database the collected keys}: each listed
  volatile database gets an epoch (the migration core's lmaster settles its keys when a call
  first needs them); then each listed database's generation becomes the recovery's (refused for
  a frozen one), so SET_RECMODE NORMAL accepts it.
* **PYCTDB_GATHER_COPIES** {buffers of keys}: outside recovery mode, from a key's lmaster that
  is settling it (one key) or sweeping (a batch): this node's copy of each key, read under its
  chain lock (waited for in the lock helper, never in the loop).
* **PYCTDB_SWEEP_KEYS** {db_id, lmaster, current map, lost nodes, the epochs' maps}: outside
  recovery mode, from a node sweeping its keys (`core/db/sweep.py`): the keys of this node's
  copies that `needs_sweep` picks, with their headers, read by a traverse in a child.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from ..core.db.partial_recovery import Copy
from ..core.db.sweep import needs_sweep
from ..log import log
from ..protocol import (
    INVALID_GENERATION, LTDB_HEADER_SIZE, STALE_GENERATION, Control, LtdbHeader, ProtocolError,
    RecBuffer, RecBufferList, RecData, RecoveryDefer, RecoveryScan, SweepKeys, pack_reply,
    pack_request, pack_scan_result, unpack_reply,
)
from ..store import ChildError, Database, LockError, TdbError
from .dispatch import Result
from .messenger import Messenger


@dataclass(frozen=True)
class RecoveryView:
    """What the node's recovery state says: recovery mode, the generation it came from, the
    map it served with, the map it has now."""

    recovering: bool
    came_from: int
    previous_map: tuple[int, ...]
    current_map: tuple[int, ...] = ()


#: Keys read between two yields to the loop.
YIELD_EVERY = 500
#: s a key's lmaster waits for every node's copy before it tries again (a node that does not
#: answer is usually gone, and the recovery that follows abandons the gather anyway).
GATHER_TIMEOUT = 5.0


async def gather_copies(messenger: Messenger, db_id: int, key: bytes,
                        timeout: float = GATHER_TIMEOUT) -> tuple[tuple[Copy, ...], bool]:
    """Every active peer's copy of one key (PYCTDB_GATHER_COPIES), and whether all answered."""
    copies, complete = await gather_batch(messenger, db_id, [key], timeout, "Settling a key")
    return tuple(copies.get(bytes(key), ())), complete


async def gather_batch(messenger: Messenger, db_id: int, keys: list[bytes],
                       timeout: float = GATHER_TIMEOUT, what: str = "Sweeping"
                       ) -> tuple[dict[bytes, list[Copy]], bool]:
    """Every active peer's copies of `keys` (one PYCTDB_GATHER_COPIES per peer), by key, and
    whether every peer answered well (if not, the copies are empty)."""
    peers = messenger.active_peers()
    if not peers:
        return {}, True
    wanted = set(keys)
    request = pack_request(Control.PYCTDB_GATHER_COPIES,
                           RecBufferList([RecBuffer(db_id, [RecData(0, k, b"") for k in keys])]))
    replies = await messenger.controls(peers, Control.PYCTDB_GATHER_COPIES, request, timeout=timeout)
    copies: dict[bytes, list[Copy]] = {}
    for pnn in peers:
        reply = replies[pnn]
        if isinstance(reply, Exception):
            log.warning("%s of db 0x%08x: node %u did not send its copies (%s)", what, db_id, pnn, reply)
            return {}, False
        try:
            for buffer in unpack_reply(Control.PYCTDB_GATHER_COPIES, reply.data).buffers:
                for rec in buffer.records:
                    if buffer.db_id == db_id and bytes(rec.key) in wanted:
                        header, value = LtdbHeader.split(rec.data)
                        copies.setdefault(bytes(rec.key), []).append(Copy(pnn, header, bytes(value)))
        except ProtocolError as exc:
            log.warning("%s of db 0x%08x: node %u sent malformed copies: %s", what, db_id, pnn, exc)
            return {}, False
    return copies, True


class PartialRecoveryNode:
    def __init__(self, lookup: Callable[[int], Database | None], view: Callable[[], RecoveryView],
                 set_generation: Callable[[int, int], Result],
                 handed_off: Callable[[int], tuple[set[bytes], bool]],
                 unsettle: Callable[[int, tuple[int, ...], frozenset[bytes]], None]) -> None:
        self.lookup = lookup
        self.view = view
        self.set_generation = set_generation
        self.handed_off = handed_off        # db_id -> (keys, whether the log overflowed)
        self.unsettle = unsettle            # (db_id, old map, keys): the migration core's epoch

    def handoffs(self, request: RecoveryScan) -> Result:
        view = self.view()
        if not view.recovering:
            return Result(-1, errmsg="not in recovery mode")
        if view.came_from == INVALID_GENERATION and view.previous_map:
            # Not a node that started afresh: one whose last recovery did not finish (it entered
            # recovery mode on its own, e.g. cut off from the majority). Its hand-off log means
            # nothing now; the leader decides what becomes of its records (wiped if the
            # cluster recovered without it, else CTDB's full merge).
            return Result(0, pack_scan_result(STALE_GENERATION, []))
        buffers = []
        for db_id in request.db_ids:
            db = self.lookup(db_id)
            if db is None or db.persistent:
                return Result(-1, errmsg=f"no volatile database 0x{db_id:08x} here")
            keys, overflowed = self.handed_off(db_id)
            if overflowed:
                return Result(-1, errmsg="too many records handed off lately to list them")
            buffers.append(RecBuffer(db_id, [RecData(0, k, b"") for k in sorted(keys)]).pack())
        return Result(0, pack_scan_result(view.came_from, buffers))

    def defer(self, request: RecoveryDefer) -> Result:
        if not self.view().recovering:
            return Result(-1, errmsg="not in recovery mode")
        dbs = []
        for buffer in request.buffers:
            db = self.lookup(buffer.db_id)
            if db is None:
                return Result(-1, errmsg=f"Unknown db 0x{buffer.db_id:08x}")
            dbs.append((db, buffer))
        for db, buffer in dbs:
            if not db.persistent:
                self.unsettle(db.db_id, tuple(request.old_map),
                              frozenset(bytes(r.key) for r in buffer.records))
        for db, _ in dbs:
            result = self.set_generation(db.db_id, request.generation)
            if result.status != 0:
                return result
        keys = sum(len(b.records) for _, b in dbs)
        log.info("Recovery: %d databases settle their keys on first use (%d cut-off hand-offs)",
                 len(dbs), keys)
        return Result(0)

    async def gather(self, request: RecBufferList) -> Result:
        if self.view().recovering:
            return Result(-1, errmsg="in recovery mode")
        reply = []
        read = 0
        for buffer in request.buffers:
            db = self.lookup(buffer.db_id)
            if db is None or db.persistent:
                return Result(-1, errmsg=f"no volatile database 0x{buffer.db_id:08x} here")
            found = []
            for rec in buffer.records:
                try:
                    record = await db.fetch_ltdb(bytes(rec.key))
                except (TdbError, LockError) as exc:
                    log.error("Reading a copy of a %s record for its lmaster failed: %s", db.name, exc)
                    return Result(-1, errmsg=f"read failed: {exc}")
                if record is not None:
                    found.append(RecData.with_header(0, bytes(rec.key), record[0], record[1]))
                read += 1
                if read % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            reply.append(RecBuffer(db.db_id, found))
        return Result(0, pack_reply(Control.PYCTDB_GATHER_COPIES, RecBufferList(reply)))

    async def sweep_keys(self, request: SweepKeys) -> Result:
        if self.view().recovering:
            return Result(-1, errmsg="in recovery mode")
        db = self.lookup(request.db_id)
        if db is None or db.persistent:
            return Result(-1, errmsg=f"no volatile database 0x{request.db_id:08x} here")
        try:
            found = await list_sweep_keys(db, request.lmaster, tuple(request.current_map),
                                          [tuple(m) for m in request.maps], frozenset(request.lost))
        except (ChildError, TdbError, LockError) as exc:
            log.error("Listing the keys of %s for a sweep failed: %s", db.name, exc)
            return Result(-1, errmsg=f"traverse failed: {exc}")
        records = [RecData.with_header(0, key, header, b"") for key, header in found]
        return Result(0, pack_reply(Control.PYCTDB_SWEEP_KEYS,
                                    RecBufferList([RecBuffer(db.db_id, records)])))


async def list_sweep_keys(db: Database, lmaster: int, current_map: tuple[int, ...],
                          maps: list[tuple[int, ...]], lost: frozenset[int]
                          ) -> list[tuple[bytes, LtdbHeader]]:
    """This node's copies of `db` a sweep by `lmaster` must settle (`needs_sweep`), read by a
    traverse in a child; the loop runs on between records."""
    found = []
    seen = 0
    async for key, value in db.traverse():
        seen += 1
        if seen % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        if len(value) < LTDB_HEADER_SIZE:
            continue
        header = LtdbHeader.split(value)[0]
        if needs_sweep(bytes(key), header, lmaster, current_map, maps, lost):
            found.append((bytes(key), header))
    return found
