"""The leader's recovery of the cluster's databases, what ctdbd's `ctdb_recovery_helper` does between
SETVNNMAP and SET_RECMODE NORMAL: every database of every recovered node is merged and written
back to all of them. Rules and data (which databases, merge, buffers) are in
`core.db.recovery_plan`; each node's side of the controls in `server/db_recovery.py`.

`DatabaseRecoveryDriver.recover(nodes, generation)`:

1. GET_DBMAP from every node; the union of their databases (`union_dbmaps`).
2. Every database at once, each tried NUM_RETRIES times (`_recover_db`): GET_DBNAME where it
   exists; DB_ATTACH* with ATTACH_RECOVERY where it does not; DB_FREEZE; DB_TRANSACTION_START
   {db_id, generation}; collect — volatile: DB_PULL from each node in turn, merged into one
   `RecordSet`; persistent/replicated: GET_DB_SEQNUM everywhere, DB_PULL from the first node with
   the highest; WIPE_DATABASE; DB_PUSH_START, the buffers as messages to its srvid, DB_PUSH_CONFIRM
   (every node must have stored all records); DB_TRANSACTION_COMMIT; DB_THAW.
3. The outcome: true only if every database was recovered; ban credits for the nodes that failed
   an attach, a freeze or a pull, or answered another database name (the helper's rules).

Pulled buffers arrive as messages on a srvid of this node (`Messenger.add_handler`) and are merged
as they arrive; the pull's reply, which comes after its buffers on the same connection, must count
exactly the records received. Pushed buffers are sent to every node, this one included (its own
copy goes through the router like any message); after every SYNC_BYTES sent, a GET_PNN to each
peer waits until the peer has read them, so a big database never piles up in a socket's queue.
A database that fails all its attempts keeps its freeze and has its transaction cancelled; the
caller retries the recovery.

Cost: every record of every node travels to the leader and back to every node, as in CTDB —
except after nodes were lost or joined, when `PartialRecoveryDriver` settles first what it can
without a freeze.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..config import Tunables
from ..core.db.recovery_plan import (
    NUM_RETRIES, DbRecoveryPlan, DbToRecover, PlanError, PushBatcher, RecordSet, SrvidPool,
    agreed_name, plan_database, push_record, seqnum_source, union_dbmaps,
)
from ..log import log, notice
from ..net.rpc import ControlError
from ..protocol import (
    LMASTER_ANY, Control, ControlFlag, ProtocolError, PullDbExt, RecBuffer, ReplyControl,
    pack_request, unpack_reply,
)
from .messenger import Messenger
from .partial_recovery_driver import PartialRecoveryDriver

#: Bytes of pushed buffers after which the driver waits for every peer to have read them.
SYNC_BYTES = 8 * 1024 * 1024
#: Records merged or packed between two yields to the loop.
YIELD_EVERY = 500


class StepFailed(Exception):
    """One step of a database's recovery failed; `culprit` earns a ban credit."""

    def __init__(self, text: str, culprit: int | None = None) -> None:
        super().__init__(text)
        self.culprit = culprit


@dataclass
class RecoveryOutcome:
    ok: bool
    recovered: int = 0
    total: int = 0
    ban_credits: dict[int, int] = field(default_factory=dict)
    records_pushed: int = 0
    settled: int = 0              # of `recovered`: settled without a freeze (partial recovery)
    seconds: float = 0.0
    error: str | None = None

    def __bool__(self) -> bool:
        return self.ok

    def banning_culprit(self) -> int | None:
        """The node to blame for a failed recovery, as CTDB's recovery helper picks it: the one
        that failed the most steps, if that is at least NUM_RETRIES (a database failed every
        attempt because of it). The leader gives it one credit per node: two such recoveries
        ban it. Not one credit per failed step: with a dozen databases, one recovery that a
        flapping node broke would ban it at once."""
        if not self.ban_credits:
            return None
        pnn, failures = max(self.ban_credits.items(), key=lambda item: (item[1], -item[0]))
        return pnn if failures >= NUM_RETRIES else None


class DatabaseRecoveryDriver:
    def __init__(self, my_pnn: int, messenger: Messenger, tunables: Tunables, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.my_pnn = my_pnn
        self.messenger = messenger
        self.tunables = tunables
        self.clock = clock
        self.srvids = SrvidPool(random.randrange(1 << 40))
        self.partial = PartialRecoveryDriver(messenger, lambda: self.timeout, clock=clock)

    @property
    def timeout(self) -> float:
        return float(self.tunables.get("RecoverTimeout"))

    async def recover(self, nodes: Sequence[int], generation: int, *, old_map: Sequence[int] = (),
                      new_map: Sequence[int] = ()) -> RecoveryOutcome:
        """Recover every database of `nodes` (this one among them) into transaction `generation`
        (the recovery's new generation). With the vnnmaps before and after it, a recovery after
        nodes were lost or joined first settles what it can without a freeze, and narrows the
        rest to the nodes that need it (`PartialRecoveryDriver`)."""
        started = self.clock()
        nodes = tuple(nodes)
        outcome = RecoveryOutcome(False)
        try:
            dbmaps = await self._all(nodes, Control.GET_DBMAP, b"", "GET_DBMAP")
            dbs = union_dbmaps([(pnn, [(d.db_id, d.flags) for d in
                                       unpack_reply(Control.GET_DBMAP, dbmaps[pnn].data).dbs])
                                for pnn in nodes])
        except (StepFailed, PlanError, ProtocolError) as exc:
            outcome.error = str(exc)
            log.error("Database recovery failed: %s", exc)
            return outcome
        outcome.total = len(dbs)
        partial = await self.partial.recover(dbs, nodes, generation, old_map, new_map)
        full = [(db, on) for db in dbs if (on := partial.nodes_for(db.db_id, nodes)) is not None]
        results = await asyncio.gather(*(self._recover_db(db, on, generation, outcome)
                                         for db, on in full))
        outcome.settled = len(dbs) - len(full)
        outcome.recovered = outcome.settled + sum(results)
        outcome.ok = outcome.recovered == outcome.total
        outcome.seconds = self.clock() - started
        level = logging.INFO if outcome.ok else logging.ERROR
        log.log(level, "%d of %d databases recovered (%.1f ms, %d records pushed)",
                outcome.recovered, outcome.total, outcome.seconds * 1000, outcome.records_pushed)
        return outcome

    # -- one database ------------------------------------------------------------------------------
    async def _recover_db(self, db: DbToRecover, nodes: tuple[int, ...], generation: int,
                          outcome: RecoveryOutcome) -> bool:
        plan = plan_database(db, nodes, generation)
        notice("recover database 0x%08x", db.db_id)
        for attempt in range(1, NUM_RETRIES + 1):
            if attempt > 1:
                notice("recover database 0x%08x, attempt %d", db.db_id, attempt)
            try:
                pushed = await self._attempt(plan)
                outcome.records_pushed += pushed
                return True
            except StepFailed as exc:
                log.error("Recovery of database 0x%08x failed: %s", db.db_id, exc)
                if exc.culprit is not None:
                    outcome.ban_credits[exc.culprit] = outcome.ban_credits.get(exc.culprit, 0) + 1
        # Give up: no transaction left open anywhere; the freeze stays until a later recovery.
        await self.messenger.controls(plan.nodes, Control.DB_TRANSACTION_CANCEL,
                                      pack_request(Control.DB_TRANSACTION_CANCEL, db.db_id),
                                      timeout=self.timeout)
        return False

    async def _attempt(self, plan: DbRecoveryPlan) -> int:
        name = await self._name(plan)
        if plan.attach_to:
            replies = await self._all(plan.attach_to, plan.attach_opcode,
                                      pack_request(plan.attach_opcode, name), "DB_ATTACH",
                                      flags=ControlFlag.ATTACH_RECOVERY, blame=True)
            for pnn, reply in replies.items():
                if unpack_reply(plan.attach_opcode, reply.data) != plan.db_id:
                    raise StepFailed(f"node {pnn} attached {name} under another db_id", pnn)
        db_id = pack_request(Control.DB_FREEZE, plan.db_id)
        transdb = pack_request(Control.DB_TRANSACTION_START, plan.transdb)
        await self._all(plan.nodes, Control.DB_FREEZE, db_id, f"FREEZE_DB {name}", blame=True)
        await self._all(plan.nodes, Control.DB_TRANSACTION_START, transdb, f"TRANSACTION_DB {name}")
        records = RecordSet(plan.db_id, self.my_pnn)
        sources = plan.nodes if plan.volatile else (await self._seqnum_source(plan, name),)
        for pnn in sources:
            await self._pull(plan, pnn, records, name)
        await self._all(plan.nodes, Control.WIPE_DATABASE, transdb, f"WIPEDB {name}")
        pushed = await self._push(plan, records, name)
        await self._all(plan.nodes, Control.DB_TRANSACTION_COMMIT, transdb,
                        f"DB_TRANSACTION_COMMIT {name}")
        await self._all(plan.nodes, Control.DB_THAW, db_id, f"DB_THAW {name}")
        return pushed

    async def _name(self, plan: DbRecoveryPlan) -> str:
        request = pack_request(Control.GET_DBNAME, plan.db_id)
        replies = await self._all(plan.holders, Control.GET_DBNAME, request, "GET_DBNAME")
        try:
            return agreed_name(plan.db_id, [(pnn, unpack_reply(Control.GET_DBNAME, replies[pnn].data))
                                            for pnn in plan.holders])
        except PlanError as exc:
            raise StepFailed(str(exc), exc.culprit) from None

    async def _seqnum_source(self, plan: DbRecoveryPlan, name: str) -> int:
        request = pack_request(Control.GET_DB_SEQNUM, plan.db_id)
        replies = await self._all(plan.nodes, Control.GET_DB_SEQNUM, request,
                                  f"GET_DB_SEQNUM {name}")
        seqnums = [(pnn, unpack_reply(Control.GET_DB_SEQNUM, replies[pnn].data))
                   for pnn in plan.nodes]
        source = seqnum_source(seqnums)
        log.info("Pull persistent db %s from node %d with seqnum 0x%x", name, source,
                 dict(seqnums)[source])
        return source

    async def _pull(self, plan: DbRecoveryPlan, pnn: int, records: RecordSet, name: str) -> None:
        srvid = self.srvids.next()
        merge = _PullMerge(records, name)
        self.messenger.add_handler(srvid, merge.on_buffer)
        try:
            request = pack_request(Control.DB_PULL, PullDbExt(plan.db_id, LMASTER_ANY, srvid))
            try:
                reply = await self.messenger.control(pnn, Control.DB_PULL, request,
                                                     timeout=self.timeout)
            except ControlError as exc:
                raise StepFailed(f"control DB_PULL failed for {name} on node {pnn}: {exc}",
                                 pnn) from None
            count = unpack_reply(Control.DB_PULL, reply.data)
            dropped = records.dropped
            await merge.drained()
            if count != merge.received:
                raise StepFailed(f"mismatch ({count} != {merge.received}) in DB_PULL records for "
                                 f"db {name}", pnn)
            log.info("Pulled %d records for db %s from node %d", merge.received, name, pnn)
            if records.dropped > dropped:
                log.warning("Dropped %d records shorter than their header pulled from node %d "
                            "for db %s", records.dropped - dropped, pnn, name)
        finally:
            self.messenger.remove_handler(srvid)
            merge.stop()

    async def _push(self, plan: DbRecoveryPlan, records: RecordSet, name: str) -> int:
        srvid = self.srvids.next()
        await self._all(plan.nodes, Control.DB_PUSH_START,
                        pack_request(Control.DB_PUSH_START, PullDbExt(plan.db_id, 0, srvid)),
                        f"DB_PUSH_START {name}")
        batcher = PushBatcher(plan.db_id, max(1, int(self.tunables.get("RecBufferSizeLimit"))))
        sent = unsynced = seen = 0
        peers = [p for p in plan.nodes if p != self.my_pnn]

        async def send(payload: bytes, count: int) -> None:
            nonlocal sent, unsynced
            for pnn in plan.nodes:
                if pnn != self.my_pnn and not self.messenger.is_connected(pnn):
                    raise StepFailed(f"Sending recovery records failed for {name}: node {pnn} "
                                     "is not connected")
                self.messenger.send_message(pnn, srvid, payload)
            sent += count
            unsynced += len(payload)
            if unsynced >= SYNC_BYTES and peers:
                await self._all(peers, Control.GET_RUNSTATE, b"", "GET_RUNSTATE (push flow control)")
                unsynced = 0

        for key, data in records.records.items():
            rec = push_record(key, data, volatile=plan.volatile, leader=self.my_pnn)
            if rec is not None:
                full = batcher.add(rec)
                if full is not None:
                    await send(*full)
            seen += 1
            if seen % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        await send(*batcher.finish())
        replies = await self._all(plan.nodes, Control.DB_PUSH_CONFIRM,
                                  pack_request(Control.DB_PUSH_CONFIRM, plan.db_id),
                                  f"DB_PUSH_CONFIRM {name}")
        for pnn in plan.nodes:
            stored = unpack_reply(Control.DB_PUSH_CONFIRM, replies[pnn].data)
            if stored != sent:
                raise StepFailed(f"Node {pnn} received {stored} of {sent} records for {name}")
        log.info("Pushed %d records for db %s", sent, name)
        return sent

    # -- controls to several nodes ----------------------------------------------------------------
    async def _all(self, pnns: Sequence[int], opcode: Control, data: bytes, what: str, *,
                   flags: int = 0, blame: bool = False) -> dict[int, ReplyControl]:
        """The same control to `pnns` at once; StepFailed names the first node (in `pnns`
        order) that failed, as a culprit if `blame`."""
        replies = await self.messenger.controls(pnns, opcode, data, flags=flags,
                                                timeout=self.timeout)
        for pnn in pnns:
            reply = replies[pnn]
            if isinstance(reply, Exception):
                raise StepFailed(f"control {what} failed on node {pnn}: {reply}",
                                 pnn if blame else None)
        return replies      # type: ignore[return-value]


class _PullMerge:
    """The buffers of one pull, merged into the record set as they arrive, YIELD_EVERY records
    at a time (a task drains the queue; `drained()` waits for it)."""

    def __init__(self, records: RecordSet, name: str) -> None:
        self.records = records
        self.name = name
        self.received = 0
        self.broken: str | None = None
        self.queue: deque[bytes] = deque()
        self.task: asyncio.Task | None = None

    def on_buffer(self, src: int, srvid: int, data: bytes) -> None:
        if self.broken is None:
            self.queue.append(data)
            if self.task is None:
                self.task = asyncio.get_running_loop().create_task(self._merge())

    async def _merge(self) -> None:
        try:
            while self.queue and self.broken is None:
                data = self.queue.popleft()
                try:
                    buffer = RecBuffer.unpack(data)
                    for start in range(0, max(1, len(buffer.records)), YIELD_EVERY):
                        part = buffer.records[start:start + YIELD_EVERY]
                        self.received += self.records.add_buffer(RecBuffer(buffer.db_id, part))
                        await asyncio.sleep(0)
                except (ProtocolError, PlanError) as exc:
                    self.broken = str(exc)
                    log.error("Invalid data received for DB_PULL messages for %s: %s",
                              self.name, exc)
        finally:
            self.task = None

    async def drained(self) -> None:
        while self.task is not None:
            await asyncio.shield(self.task)

    def stop(self) -> None:
        self.queue.clear()
        if self.task is not None:
            self.task.cancel()
