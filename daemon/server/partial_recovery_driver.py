"""The leader's side of pyctdbd's recovery after nodes were lost or joined, which freezes and
copies nothing for the volatile databases and only what must be copied for the persistent ones
(rules in `core/db/unsettled.py`, each node's side in `server/partial_recovery.py`). It runs
first in the database stage of a recovery, after every node holds the new vnnmap; the databases
it does not settle get CTDB's full recovery (`server/db_recovery_driver.py`) right after, on
every node or on the few nodes named:

1. Only when the membership changed (nodes of the old map are missing, or nodes joined; not
   `ctdb recover` with the same nodes) and every live node of the old map is still in the new
   one. A database some node lacks is attached there first (ATTACH_RECOVERY), as CTDB's
   recovery does.
2. PYCTDB_RECOVERY_HANDOFFS to every node: the keys of each volatile database whose hand-off
   the generation change cut off, and the generation each node came from. The nodes that came
   from one must all have come from the same one, and every other node must be new (started
   since: it holds nothing); else everything is recovered in full. A joining node whose last
   recovery did not finish (it entered recovery mode on its own, cut off from the majority,
   which recovered without it) has its volatile databases wiped -- freeze, transaction,
   WIPE_DATABASE, commit, thaw on that node alone -- and then counts as new.
3. GET_DB_SEQNUM of every persistent database on every node: equal everywhere means nothing
   to do; otherwise the database is recovered CTDB's way on the node with the highest sequence
   number and the nodes behind it only (a rejoining node), the others keep serving it.
   Replicated databases are always recovered in full.
4. PYCTDB_RECOVERY_DEFER to every node: the old map and, per volatile database, every node's
   cut-off keys together; each node records the change, and each key's lmaster settles the key
   when a call first needs it. Every database it covers moves to the new generation.

The work is proportional to the hand-offs of the last seconds, not to the databases' size.
Any failure leaves the databases to the full recovery, which rewrites them whatever happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..core.db.partial_recovery import came_from_all
from ..core.db.recovery_plan import DbToRecover
from ..core.db.registry import attach_opcode
from ..log import log, notice
from ..protocol import (
    INVALID_GENERATION, STALE_GENERATION, Control, ControlFlag, DbFlag, ProtocolError, RecBuffer,
    RecData, RecoveryDefer, RecoveryScan, TransDb, pack_request, unpack_reply,
)
from .messenger import Messenger


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
            outcome, cut_off = await self._run(dbs, nodes, generation, old_map, new_map)
        except _Abandon as exc:
            log.warning("Recovery after the %s: %s; recovering every database in full", what, exc)
            return PartialOutcome()
        narrowed = ", ".join(f"0x{db_id:08x} on {list(on)}" for db_id, on in outcome.narrowed.items())
        notice("Recovery after the %s: %d of %d databases settled without a freeze%s, %d cut-off "
               "hand-offs to settle on first use (%.1f ms: %s)", what, len(outcome.settled), len(dbs),
               f", {len(outcome.narrowed)} copied to the nodes behind ({narrowed})" if narrowed else "",
               cut_off, (self.clock() - started) * 1000, ", ".join(self.phases))
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
        reports = await self._all(nodes, Control.PYCTDB_RECOVERY_HANDOFFS,
                                  RecoveryScan(list(nodes), [db.db_id for db in volatile]))
        stale = sorted(p for p, r in reports.items() if r.came_from == STALE_GENERATION)
        if stale:
            if any(p in old_map for p in stale):
                raise _Abandon(f"node(s) {stale} of the old map did not finish their last recovery")
            # Joining nodes that entered recovery mode on their own (cut off from the majority)
            # and kept their records: the cluster recovered without them, so what they hold is
            # stale -- a self-claim of theirs could contradict a dmaster settled since. Wiped,
            # they join as a restarted node would; only they freeze, for the wipe.
            await self._wipe(volatile, stale, generation)
            mark = self._phase(f"wiped {stale}", mark)
        came_from = {p: r.came_from for p, r in reports.items()
                     if r.came_from not in (INVALID_GENERATION, STALE_GENERATION)}
        if not came_from or came_from_all(came_from, INVALID_GENERATION) is None:
            raise _Abandon("the nodes were not all serving in the same generation")
        cut_off: dict[int, set[bytes]] = {db.db_id: set() for db in volatile}
        for pnn, report in reports.items():
            for buffer in report.buffers:
                if buffer.db_id not in cut_off:
                    raise _Abandon(f"node {pnn} reported on database 0x{buffer.db_id:08x}, not asked for")
                cut_off[buffer.db_id] |= {bytes(r.key) for r in buffer.records}
        mark = self._phase("hand-offs", mark)
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
        deferrals = {}
        for pnn in nodes:               # each database moves to the new generation here, unless
            covered = outcome.settled | {d for d, on in outcome.narrowed.items() if pnn not in on}
            deferrals[pnn] = RecoveryDefer(generation, list(old_map), [    # its full recovery does
                RecBuffer(db_id, [RecData(0, k, b"") for k in sorted(cut_off.get(db_id, ()))])
                for db_id in sorted(covered)])
        await asyncio.gather(*(self._control(pnn, Control.PYCTDB_RECOVERY_DEFER,
                                             pack_request(Control.PYCTDB_RECOVERY_DEFER, deferrals[pnn]))
                               for pnn in nodes))
        self._phase("defer", mark)
        return outcome, sum(len(keys) for keys in cut_off.values())

    async def _wipe(self, volatile: Sequence[DbToRecover], nodes: Sequence[int], generation: int) -> None:
        """Empty every volatile database on `nodes` the way CTDB's recovery does on each node
        (freeze, transaction, WIPE_DATABASE, commit, thaw), without pulling or pushing a record."""
        async def one(db: DbToRecover, pnn: int) -> None:
            db_id = pack_request(Control.DB_FREEZE, db.db_id)
            transdb = pack_request(Control.DB_TRANSACTION_START, TransDb(db.db_id, generation))
            for opcode, data in ((Control.DB_FREEZE, db_id), (Control.DB_TRANSACTION_START, transdb),
                                 (Control.WIPE_DATABASE, transdb),
                                 (Control.DB_TRANSACTION_COMMIT, transdb), (Control.DB_THAW, db_id)):
                await self._control(pnn, opcode, data)

        await asyncio.gather(*(one(db, pnn) for db in volatile for pnn in nodes))
        notice("Recovery: node(s) %s did not finish their last recovery and the cluster recovered "
               "without them: their %d volatile databases wiped, as after a restart", list(nodes),
               len(volatile))

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
