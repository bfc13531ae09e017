"""The leader's side of pyctdbd's recovery after a node loss (rules in
`core/db/partial_recovery.py`, each node's side in `server/loss_recovery.py`). It runs first in
the database stage of a recovery, after every node holds the new vnnmap; the databases it does
not settle get CTDB's full recovery (`server/db_recovery_driver.py`) right after:

1. Only when nodes of the old map are missing from this recovery (a loss, not a join, not
   `ctdb recover` with everyone present), every node holds every database, and every live node
   of the old map is still in the new one.
2. PYCTDB_RECOVERY_SCAN to every node: the volatile databases' suspect records (touched by a
   lost node, or handed off as the generation changed), and the generation each node came
   from. Unless all came from the same one, everything is recovered in full. Then
   PYCTDB_RECOVERY_FETCH: every node's copy of every suspect key.
3. GET_DB_SEQNUM of every persistent database on every node: equal everywhere means nothing to
   do; otherwise that database is recovered in full. Replicated databases always are.
4. The repairs (`plan_repairs`) go to every node in one PYCTDB_RECOVERY_APPLY, which also moves
   each settled database to the new generation.

Any failure leaves the databases to the full recovery, which rewrites them whatever the scan or
the repairs did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from ..core.db.partial_recovery import Copy, came_from_all, plan_repairs
from ..core.db.recovery_plan import DbToRecover
from ..log import log, notice
from ..protocol import (
    INVALID_GENERATION, Control, DbFlag, LtdbHeader, ProtocolError, RecBuffer, RecBufferList,
    RecData, RecoveryApply, RecoveryScan, pack_request, unpack_reply,
)
from .messenger import Messenger


class LossRecoveryDriver:
    def __init__(self, messenger: Messenger, timeout: Callable[[], float], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.messenger = messenger
        self.timeout = timeout
        self.clock = clock

    async def recover(self, dbs: Sequence[DbToRecover], nodes: Sequence[int], generation: int,
                      old_map: Sequence[int], new_map: Sequence[int]) -> set[int]:
        """The db_ids settled; the caller recovers the others in full."""
        lost = sorted(set(old_map) - set(nodes))
        if not lost or any(set(db.holders) != set(nodes) for db in dbs):
            return set()
        if any(p in nodes and p not in new_map for p in old_map):
            return set()
        started = self.clock()
        self.phases: list[str] = []
        try:
            settled, repaired = await self._run(dbs, tuple(nodes), generation, new_map)
        except _Abandon as exc:
            log.warning("Recovery after the loss of node(s) %s: %s; recovering every database "
                        "in full", lost, exc)
            return set()
        notice("Recovery after the loss of node(s) %s: %d of %d databases settled without a "
               "freeze, %d records repaired (%.1f ms: %s)", lost, len(settled), len(dbs), repaired,
               (self.clock() - started) * 1000, ", ".join(self.phases))
        return settled

    async def _run(self, dbs: Sequence[DbToRecover], nodes: tuple[int, ...], generation: int,
                   new_map: Sequence[int]) -> tuple[set[int], int]:
        mark = self.clock()

        def phase(name: str) -> None:
            nonlocal mark
            now = self.clock()
            self.phases.append(f"{name} {(now - mark) * 1000:.1f}")
            mark = now

        volatile = [db for db in dbs if not db.by_seqnum]
        persistent = [db for db in dbs if db.by_seqnum and not db.flags & DbFlag.REPLICATED]
        scans = await self._all(nodes, Control.PYCTDB_RECOVERY_SCAN,
                                RecoveryScan(list(nodes), [db.db_id for db in volatile]))
        if came_from_all({p: s.came_from for p, s in scans.items()}, INVALID_GENERATION) is None:
            raise _Abandon("the nodes were not all serving in the same generation")
        phase("scan")
        settled = {db.db_id for db in volatile}
        seqnums = await asyncio.gather(*(self._all(nodes, Control.GET_DB_SEQNUM, db.db_id)
                                         for db in persistent))
        settled |= {db.db_id for db, per_node in zip(persistent, seqnums)
                    if len(set(per_node.values())) == 1}
        phase("seqnums")
        suspects = {db.db_id: sorted({bytes(rec.key) for pnn in nodes
                                      for rec in _buffer(scans[pnn].buffers, db.db_id).records})
                    for db in volatile}
        wanted = [db_id for db_id, keys in suspects.items() if keys]
        copies: dict[int, RecBufferList] = {}
        if wanted:
            request = RecBufferList([RecBuffer(db_id, [RecData(0, k, b"") for k in suspects[db_id]])
                                     for db_id in wanted])
            copies = await self._all(nodes, Control.PYCTDB_RECOVERY_FETCH, request)
            phase("fetch")
        repairs: dict[int, list[RecBuffer]] = {pnn: [] for pnn in nodes}
        total = 0
        for db_id in wanted:
            by_key: dict[bytes, list[Copy]] = {key: [] for key in suspects[db_id]}
            for pnn in nodes:
                for rec in _buffer(copies[pnn].buffers, db_id).records:
                    key, header, value = _split(rec)
                    if key in by_key:
                        by_key[key].append(Copy(pnn, header, value))
            for pnn, records in plan_repairs(new_map, by_key).items():
                repairs[pnn].append(RecBuffer(db_id, [RecData.with_header(0, r.key, r.header, r.data)
                                                      for r in records]))
                total += len(records)
        for pnn in nodes:                    # every settled database moves to the new generation
            listed = {b.db_id for b in repairs[pnn]}
            repairs[pnn] += [RecBuffer(db_id, []) for db_id in sorted(settled - listed)]
        await self._apply(nodes, generation, repairs)
        phase("apply")
        return settled, total

    async def _apply(self, nodes: tuple[int, ...], generation: int,
                     repairs: dict[int, list[RecBuffer]]) -> None:
        async def one(pnn: int) -> None:
            data = pack_request(Control.PYCTDB_RECOVERY_APPLY, RecoveryApply(generation, repairs[pnn]))
            try:
                await self.messenger.control(pnn, Control.PYCTDB_RECOVERY_APPLY, data,
                                             timeout=self.timeout())
            except Exception as exc:          # ControlError; anything else is a bug: fall back
                raise _Abandon(f"repairs on node {pnn} failed: {exc}") from None

        await asyncio.gather(*(one(pnn) for pnn in nodes))

    async def _all(self, nodes: tuple[int, ...], opcode: Control, value: object) -> dict:
        replies = await self.messenger.controls(nodes, opcode, pack_request(opcode, value),
                                                timeout=self.timeout())
        out = {}
        for pnn in nodes:
            reply = replies[pnn]
            if isinstance(reply, Exception):
                raise _Abandon(f"{opcode.name} failed on node {pnn}: {reply}")
            try:
                out[pnn] = unpack_reply(opcode, reply.data)
            except ProtocolError as exc:
                raise _Abandon(f"{opcode.name} from node {pnn}: {exc}") from None
        return out


class _Abandon(Exception):
    """The loss recovery cannot settle the databases; the full recovery will."""


def _buffer(buffers: Sequence[RecBuffer], db_id: int) -> RecBuffer:
    for buffer in buffers:
        if buffer.db_id == db_id:
            return buffer
    raise _Abandon(f"no scan of database 0x{db_id:08x}")


def _split(rec: RecData) -> tuple[bytes, LtdbHeader, bytes]:
    try:
        header, value = LtdbHeader.split(rec.data)
    except ProtocolError as exc:
        raise _Abandon(f"a scanned record is malformed: {exc}") from None
    return rec.key, header, value
