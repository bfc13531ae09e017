"""The leader's side of pyctdbd's recovery after nodes were lost or joined, which freezes only
what must be copied (rules in `core/db/partial_recovery.py`, each node's side in
`server/partial_recovery.py`). It runs first in the database stage of a recovery, after every
node holds the new vnnmap; the databases it does not settle get CTDB's full recovery
(`server/db_recovery_driver.py`) right after, on every node or on the few nodes named:

1. Only when the membership changed (nodes of the old map are missing, or nodes joined; not
   `ctdb recover` with the same nodes) and every live node of the old map is still in the new
   one. A database some node lacks is attached there first (ATTACH_RECOVERY), as CTDB's
   recovery does.
2. PYCTDB_RECOVERY_SCAN to every node: the volatile databases' suspect records and the
   generation each node came from. The nodes that came from one must all have come from the
   same one, and every other node must be new (started since: nothing to merge but what it
   reports); else everything is recovered in full. Most keys are settled from the reports
   alone (`settle_reported`); PYCTDB_RECOVERY_FETCH brings every node's copy of the few
   others (records handed off as the generation changed).
3. GET_DB_SEQNUM of every persistent database on every node: equal everywhere means nothing
   to do; otherwise the database is recovered CTDB's way on the node with the highest sequence
   number and the nodes behind it only (a rejoining node), the others keep serving it.
   Replicated databases are always recovered in full.
4. The repairs (`plan_repairs`) go to every node in one PYCTDB_RECOVERY_APPLY, which also moves
   each database it covers to the new generation.

Any failure leaves the databases to the full recovery, which rewrites them whatever the scan or
the repairs did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..core.db.partial_recovery import Copy, came_from_all, plan_repairs, settle_reported
from ..core.db.recovery_plan import DbToRecover
from ..core.db.registry import attach_opcode
from ..log import log, notice
from ..protocol import (
    INVALID_GENERATION, Control, ControlFlag, DbFlag, LtdbHeader, ProtocolError, RecBuffer,
    RecBufferList, RecData, RecoveryApply, RecoveryScan, iter_scan_result, pack_request,
    unpack_reply,
)
from .messenger import Messenger

#: Records decoded between two yields to the loop.
YIELD_EVERY = 2000


@dataclass
class PartialOutcome:
    settled: set[int] = field(default_factory=set)                 # nothing more to do
    narrowed: dict[int, tuple[int, ...]] = field(default_factory=dict)   # db_id -> nodes to recover

    def nodes_for(self, db_id: int, nodes: tuple[int, ...]) -> tuple[int, ...] | None:
        """Where the full recovery must still run for `db_id` (None: nowhere)."""
        if db_id in self.settled:
            return None
        return self.narrowed.get(db_id, nodes)


class PartialRecoveryDriver:
    def __init__(self, messenger: Messenger, timeout: Callable[[], float], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.messenger = messenger
        self.timeout = timeout
        self.clock = clock
        self.phases: list[str] = []

    async def recover(self, dbs: Sequence[DbToRecover], nodes: Sequence[int], generation: int,
                      old_map: Sequence[int], new_map: Sequence[int]) -> PartialOutcome:
        nodes = tuple(nodes)
        lost = sorted(set(old_map) - set(nodes))
        joined = sorted(set(new_map) - set(old_map))
        if not old_map or not (lost or joined):
            return PartialOutcome()
        if any(p in nodes and p not in new_map for p in old_map):
            return PartialOutcome()
        what = " and ".join(filter(None, [f"loss of node(s) {lost}" if lost else "",
                                          f"join of node(s) {joined}" if joined else ""]))
        started = self.clock()
        self.phases = []
        try:
            outcome, repaired = await self._run(dbs, nodes, generation, old_map, new_map)
        except _Abandon as exc:
            log.warning("Recovery after the %s: %s; recovering every database in full", what, exc)
            return PartialOutcome()
        narrowed = ", ".join(f"0x{db_id:08x} on {list(on)}" for db_id, on in outcome.narrowed.items())
        notice("Recovery after the %s: %d of %d databases settled without a freeze%s, %d records "
               "repaired (%.1f ms: %s)", what, len(outcome.settled), len(dbs),
               f", {len(outcome.narrowed)} copied to the nodes behind ({narrowed})" if narrowed else "",
               repaired, (self.clock() - started) * 1000, ", ".join(self.phases))
        return outcome

    def _phase(self, name: str, since: float) -> float:
        now = self.clock()
        self.phases.append(f"{name} {(now - since) * 1000:.1f}")
        return now

    async def _run(self, dbs: Sequence[DbToRecover], nodes: tuple[int, ...], generation: int,
                   old_map: Sequence[int], new_map: Sequence[int]) -> tuple[PartialOutcome, int]:
        mark = self.clock()
        await self._attach_missing(dbs, nodes)
        volatile = [db for db in dbs if not db.by_seqnum]
        persistent = [db for db in dbs if db.by_seqnum and not db.flags & DbFlag.REPLICATED]
        raw = await self._all(nodes, Control.PYCTDB_RECOVERY_SCAN,
                              RecoveryScan(list(nodes), [db.db_id for db in volatile]), decode=False)
        scans = {pnn: await _scan_reports(data) for pnn, data in raw.items()}
        came_from = {p: s[0] for p, s in scans.items() if s[0] != INVALID_GENERATION}
        if not came_from or came_from_all(came_from, INVALID_GENERATION) is None:
            raise _Abandon("the nodes were not all serving in the same generation")
        mark = self._phase("scan", mark)
        outcome = PartialOutcome({db.db_id for db in volatile})
        seqnums = await asyncio.gather(*(self._all(nodes, Control.GET_DB_SEQNUM, db.db_id)
                                         for db in persistent))
        for db, per_node in zip(persistent, seqnums):
            highest = max(per_node.values())
            behind = tuple(p for p in nodes if per_node[p] < highest)
            if not behind:
                outcome.settled.add(db.db_id)
            else:
                source = next(p for p in nodes if per_node[p] == highest)
                outcome.narrowed[db.db_id] = (source, *behind)
        mark = self._phase("seqnums", mark)
        repairs, total = await self._repairs(scans, volatile, nodes, old_map, new_map)
        mark = self._phase("plan", mark)
        for pnn in nodes:               # each database moves to the new generation here, unless
            listed = {b.db_id for b in repairs[pnn]}     # its full recovery on this node does
            covered = outcome.settled | {d for d, on in outcome.narrowed.items() if pnn not in on}
            repairs[pnn] += [RecBuffer(db_id, []) for db_id in sorted(covered - listed)]
        await self._apply(nodes, generation, repairs)
        self._phase("apply", mark)
        return outcome, total

    async def _attach_missing(self, dbs: Sequence[DbToRecover], nodes: tuple[int, ...]) -> None:
        for db in dbs:
            missing = [p for p in nodes if p not in db.holders]
            if not missing:
                continue
            name = unpack_reply(Control.GET_DBNAME, (await self._control(
                db.holders[0], Control.GET_DBNAME, pack_request(Control.GET_DBNAME, db.db_id))).data)
            opcode = attach_opcode(db.flags)
            for pnn in missing:
                reply = await self._control(pnn, opcode, pack_request(opcode, name),
                                            flags=ControlFlag.ATTACH_RECOVERY)
                if unpack_reply(opcode, reply.data) != db.db_id:
                    raise _Abandon(f"node {pnn} attached {name} under another db_id")

    async def _repairs(self, scans: dict, volatile: Sequence[DbToRecover], nodes: tuple[int, ...],
                       old_map: Sequence[int], new_map: Sequence[int]
                       ) -> tuple[dict[int, list[RecBuffer]], int]:
        repairs: dict[int, list[RecBuffer]] = {pnn: [] for pnn in nodes}
        planned: dict[int, dict[int, list]] = {db.db_id: {pnn: [] for pnn in nodes} for db in volatile}
        to_fetch: dict[int, list[bytes]] = {}
        for db in volatile:
            grouped: dict[bytes, list[Copy]] = {}
            for pnn in nodes:
                if db.db_id not in scans[pnn][1]:
                    raise _Abandon(f"node {pnn} sent no scan of database 0x{db.db_id:08x}")
                for key, header, value in scans[pnn][1][db.db_id]:
                    grouped.setdefault(key, []).append(Copy(pnn, header, value))
            keys = list(grouped)
            fetch: set[bytes] = set()
            for start in range(0, len(keys), YIELD_EVERY):      # a key's copies stay together
                chunk = {key: grouped[key] for key in keys[start:start + YIELD_EVERY]}
                decided, more = settle_reported(old_map, new_map, nodes, chunk)
                for pnn, records in decided.items():
                    planned[db.db_id][pnn] += records
                fetch |= more
                await asyncio.sleep(0)
            if fetch:
                to_fetch[db.db_id] = sorted(fetch)
        if to_fetch:
            request = RecBufferList([RecBuffer(db_id, [RecData(0, k, b"") for k in keys])
                                     for db_id, keys in to_fetch.items()])
            copies = await self._all(nodes, Control.PYCTDB_RECOVERY_FETCH, request)
            for db_id, keys in to_fetch.items():
                by_key: dict[bytes, list[Copy]] = {key: [] for key in keys}
                for pnn in nodes:
                    for rec in _buffer(copies[pnn].buffers, db_id).records:
                        key, header, value = _split(rec)
                        if key in by_key:
                            by_key[key].append(Copy(pnn, header, value))
                for pnn, records in plan_repairs(new_map, by_key).items():
                    planned[db_id][pnn] += records
        total = 0
        for db_id, per_node in planned.items():
            for pnn, records in per_node.items():
                packed: list[RecData] = []
                for start in range(0, len(records), YIELD_EVERY):
                    packed += [RecData.with_header(0, r.key, r.header, r.data)
                               for r in records[start:start + YIELD_EVERY]]
                    await asyncio.sleep(0)
                if packed:
                    repairs[pnn].append(RecBuffer(db_id, packed))
                    total += len(packed)
        return repairs, total

    async def _apply(self, nodes: tuple[int, ...], generation: int,
                     repairs: dict[int, list[RecBuffer]]) -> None:
        await asyncio.gather(*(self._control(
            pnn, Control.PYCTDB_RECOVERY_APPLY,
            pack_request(Control.PYCTDB_RECOVERY_APPLY, RecoveryApply(generation, repairs[pnn])))
            for pnn in nodes))

    async def _control(self, pnn: int, opcode: Control, data: bytes, *, flags: int = 0):
        try:
            return await self.messenger.control(pnn, opcode, data, flags=flags,
                                                timeout=self.timeout())
        except Exception as exc:       # ControlError; anything else is a bug: fall back
            raise _Abandon(f"{opcode.name} on node {pnn} failed: {exc}") from None

    async def _all(self, nodes: tuple[int, ...], opcode: Control, value: object, *,
                   decode: bool = True) -> dict:
        replies = await self.messenger.controls(nodes, opcode, pack_request(opcode, value),
                                                timeout=self.timeout())
        out = {}
        for pnn in nodes:
            reply = replies[pnn]
            if isinstance(reply, Exception):
                raise _Abandon(f"{opcode.name} failed on node {pnn}: {reply}")
            try:
                out[pnn] = unpack_reply(opcode, reply.data) if decode else reply.data
            except ProtocolError as exc:
                raise _Abandon(f"{opcode.name} from node {pnn}: {exc}") from None
        return out


class _Abandon(Exception):
    """The partial recovery cannot settle the databases; the full recovery will."""


async def _scan_reports(data: bytes) -> tuple[int, dict[int, list[tuple[bytes, LtdbHeader, bytes]]]]:
    """A scan's reply: came_from and {db_id: [(key, header, value)]}, decoded YIELD_EVERY
    records at a time (a big scan must not stop heartbeats)."""
    try:
        came_from, buffers = iter_scan_result(data)
        reports: dict[int, list[tuple[bytes, LtdbHeader, bytes]]] = {}
        for db_id, count, offset in buffers:
            records = reports.setdefault(db_id, [])
            for i in range(count):
                rec, offset = RecData.unpack_from(data, offset)
                records.append(_split(rec))
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)
    except ProtocolError as exc:
        raise _Abandon(f"a scan is malformed: {exc}") from None
    return came_from, reports


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
