"""The vacuum service: fast vacuum runs over each volatile database's delete queue, and the two
controls other nodes' runs send here (core/db/vacuum.py has the rules).

* Records enter the queue from SCHEDULE_FOR_DELETION (smbd's deletes) and from the migration
  core's own stores (`ScheduleForDeletion`); a store that keeps a record without scheduling it
  takes it off again (`UnscheduleDeletion`, ctdbd's remove_from_delete_queue): the lmaster's
  initial store of a record it then gives away never reaches a run.
* Every `VacuumInterval` seconds each database with a queue gets one run (never two at once):
  up to RUN_BATCH records, each read under a chain lock that is *tried*, never waited for (a busy
  record is queued again: vacuuming never holds up smbd); candidates this node is lmaster of are
  deleted at once or after TRY_DELETE_RECORDS on every other active node; the rest go to their
  lmaster in one VACUUM_FETCH per lmaster (NOREPLY, as ctdbd sends it). The loop is given back
  every SLICE records (here and in TRY_DELETE_RECORDS): a run over 20,000 records is ~0.5 s of
  work, and heartbeats must not wait for it.
* Every `VacuumFastPathCount`-th run of a database (and DB_VACUUM with full_vacuum_run) is a
  *full* run, as in ctdbd: first a traverse, in a forked child (`run_in_child_over`), queues every
  tombstone this node is dmaster of that the queue does not know -- those left from before a
  restart, or deleted by a client that never sent SCHEDULE_FOR_DELETION.
* VACUUM_FETCH here: each record is migrated to this node by a call with VACUUM_MIGRATION, which
  queues it here (the store rules say so for an empty record landing at its lmaster).
* TRY_DELETE_RECORDS here: every copy that may go is deleted; the reply lists the kept ones.

Nothing runs while the node is in recovery (the records are being moved around).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from ..core.db.ltdbrules import lmaster_of
from ..core.db.vacuum import DeleteQueue, Triage, may_delete_copy, may_delete_here
from ..log import log
from ..net.rpc import ControlError
from ..protocol import (
    LTDB_HEADER_SIZE, Control, ControlFlag, LtdbHeader, RecBuffer, RecData,
)
from ..store.child import ChildError
from ..store.database import Database, run_in_child_over
from ..store.tdbfile import TdbError, TdbFile
from .messenger import Messenger
from .record_calls import RecordCalls
from .vacuum_fetch import VacuumFetches
from .vacuum_triage import Counts, SliceTriage

RUN_BATCH = 20_000          # queued records looked at per run and database
SLICE = 200                 # records handled between two turns of the event loop (~5 ms)
CONTROL_TIMEOUT = 10.0      # s for TRY_DELETE_RECORDS


def tombstones_of(pnn: int, db_id: int) -> Callable[[list[TdbFile]], bytes]:
    """The full run's traverse (run in a child): every empty record this node is dmaster of,
    header only, as a packed RecBuffer."""
    def scan(tdbs: list[TdbFile]) -> bytes:
        found: list[RecData] = []

        def visit(key: bytes, value: bytes) -> None:
            if len(value) == LTDB_HEADER_SIZE and int.from_bytes(value[8:12], "little") == pnn:
                found.append(RecData(0, bytes(key), bytes(value)))
        tdbs[0].traverse_read(visit)
        return RecBuffer(db_id, found).pack()
    return scan


@dataclass
class VacuumCounters:
    runs: int = 0
    deleted: int = 0            # records this node deleted (its own runs and TRY_DELETE)
    sent_to_lmaster: int = 0
    skipped: int = 0            # revived, migrated away or no longer empty
    busy: int = 0               # chain lock busy: queued again
    kept_remotely: int = 0      # another node kept its copy: not deleted here
    fetched_for_vacuum: int = 0  # VACUUM_FETCH records this node migrated to itself
    full_runs: int = 0
    found_by_full_runs: int = 0  # tombstones a full run's traverse queued


class VacuumService:
    def __init__(self, my_pnn: int, lookup: Callable[[int], Database | None], is_volatile: Callable[[int], bool],
                 messenger: Messenger, record_calls: RecordCalls, *, lmasters: Callable[[], tuple[int, ...]],
                 active_peers: Callable[[], list[int]], interval: Callable[[], float],
                 buffer_limit: Callable[[], int], spawn: Callable,
                 fast_path_count: Callable[[], int] = lambda: 60,
                 triage: SliceTriage | None = None) -> None:
        self.pnn = my_pnn
        # steps 1-3 of a run (natively where the daemon has the library: db_services.py)
        self.triage = triage or SliceTriage(my_pnn, record_calls.forget_settled, None)
        self.lookup = lookup
        self.is_volatile = is_volatile
        self.messenger = messenger
        self.record_calls = record_calls
        self.lmasters = lmasters
        self.active_peers = active_peers
        self.interval = interval
        self.buffer_limit = buffer_limit
        self.spawn = spawn
        self.fast_path_count = fast_path_count
        self.queues: dict[int, DeleteQueue] = {}
        self._fast_runs: dict[int, int] = {}    # fast runs since the database's last full run
        self.counters = VacuumCounters()
        self._running: set[int] = set()
        self._next_run: dict[int, float] = {}
        self._recovering = False
        self.fetches = VacuumFetches(record_calls.daemon_call, record_calls.clock)

    # -- inputs ------------------------------------------------------------------------------------
    def schedule(self, db_id: int, key: bytes, header: LtdbHeader) -> None:
        queue = self.queues.get(db_id)         # once per record deleted: no new queue each time
        if queue is None:
            if not self.is_volatile(db_id):
                return
            queue = self.queues[db_id] = DeleteQueue()
        queue.add(key, header)

    def unschedule(self, db_id: int, key: bytes) -> None:
        """The record was stored and kept without being scheduled (given away by its lmaster,
        filled with data): a run has nothing to do with it (ctdbd removes it from its queue)."""
        queue = self.queues.get(db_id)
        if queue is not None:
            queue.discard(key)

    def recovery_mode(self, active: bool) -> None:
        self._recovering = active
        self.fetches.recovery_mode(active)

    def database_gone(self, db_id: int) -> None:
        self.fetches.database_gone(db_id)
        self.queues.pop(db_id, None)
        self._next_run.pop(db_id, None)
        self._fast_runs.pop(db_id, None)

    def watch(self, db_id: int) -> None:
        """A volatile database attached here: it gets runs (full ones too) even before anything
        is scheduled for deletion in it."""
        self.queues.setdefault(db_id, DeleteQueue())

    def tick(self, now: float) -> None:
        self.fetches.tick(now)
        if self._recovering:
            return
        interval = self.interval()
        if interval <= 0:
            return                      # VacuumInterval 0: vacuuming off, as in ctdbd
        for db_id, queue in list(self.queues.items()):
            if db_id in self._running:
                continue
            due = self._next_run.setdefault(db_id, now + interval)
            if now < due:
                continue
            self._next_run[db_id] = now + interval
            # ctdbd counts vacuum intervals, not runs: an idle database gets its full run too.
            self._fast_runs[db_id] = runs = self._fast_runs.get(db_id, 0) + 1
            full = runs >= max(1, self.fast_path_count())
            if queue or full:
                self._running.add(db_id)
                self.spawn(self._run(db_id, full), f"vacuum-0x{db_id:08x}")

    # -- a vacuum run ------------------------------------------------------------------------------
    async def run_now(self, db_id: int, full: bool = False) -> None:
        """One run over `db_id`'s queue, after a traverse for tombstones if `full` (DB_VACUUM,
        tests)."""
        if db_id in self._running:
            return
        self._running.add(db_id)
        await self._run(db_id, full)

    async def _full_traverse(self, db: Database, queue: DeleteQueue) -> None:
        self._fast_runs[db.db_id] = 0
        self.counters.full_runs += 1
        try:
            packed = await run_in_child_over([db], tombstones_of(self.pnn, db.db_id))
        except (ChildError, OSError, TdbError) as exc:
            log.warning("vacuum: full run over %s could not traverse it: %s", db.name, exc)
            return
        for rec in RecBuffer.unpack(packed).records:
            if rec.key not in queue:
                header, _ = rec.split_header()
                queue.add(bytes(rec.key), header)
                self.counters.found_by_full_runs += 1

    async def _run(self, db_id: int, full: bool = False) -> None:
        try:
            db, queue = self.lookup(db_id), self.queues.get(db_id)
            if db is None or queue is None or self._recovering:
                return
            if full:
                await self._full_traverse(db, queue)
                if self._recovering:
                    return
            self.counters.runs += 1
            lmasters = self.lmasters()
            to_lmaster: dict[int, list[tuple[bytes, LtdbHeader]]] = {}
            delete_list: list[tuple[bytes, LtdbHeader]] = []
            batch = queue.take(RUN_BATCH)
            counts = Counts()
            for done in range(0, len(batch), SLICE):
                if done:
                    await asyncio.sleep(0)
                    if self._recovering:
                        # Records are being moved: nothing more is sent or deleted in this run;
                        # what it looked at and did not delete is queued again.
                        for pending in [*batch[done:], *delete_list,
                                        *(r for recs in to_lmaster.values() for r in recs)]:
                            queue.add(*pending)
                        self._count(counts)
                        return
                chunk = batch[done:done + SLICE]
                for (key, queued), verdict in zip(chunk, self.triage.run(db, queue, chunk, lmasters, counts)):
                    if verdict is Triage.TO_LMASTER:
                        to_lmaster.setdefault(lmaster_of(key, lmasters), []).append((key, queued))
                    elif verdict is Triage.DELETE_LIST:
                        delete_list.append((key, queued))
            self._count(counts)
            for lmaster, pairs in to_lmaster.items():
                self._send_to_lmaster(db_id, lmaster, [RecData.with_header(0, k, h, b"") for k, h in pairs])
            if delete_list:
                await self._delete_everywhere(db, delete_list, lmasters)
        except Exception:               # a run must never take the daemon down
            log.exception("vacuum run of db 0x%08x failed", db_id)
        finally:
            self._running.discard(db_id)

    def _count(self, counts: Counts) -> None:
        self.counters.deleted += counts.deleted
        self.counters.skipped += counts.skipped
        self.counters.busy += counts.busy

    def _send_to_lmaster(self, db_id: int, lmaster: int, records: list[RecData]) -> None:
        limit = max(1, self.buffer_limit())
        batch: list[RecData] = []
        size = 0
        for rec in records + [None]:        # type: ignore[list-item]
            if rec is not None:
                batch.append(rec)
                size += 16 + len(rec.key) + len(rec.data)
            if batch and (rec is None or size >= limit):
                self.messenger.send_noreply(lmaster, Control.VACUUM_FETCH, RecBuffer(db_id, batch).pack(),
                                            flags=ControlFlag.NOREPLY)
                self.counters.sent_to_lmaster += len(batch)
                batch, size = [], 0

    async def _delete_everywhere(self, db: Database, delete_list: list[tuple[bytes, LtdbHeader]],
                                 lmasters: tuple[int, ...]) -> None:
        """Step 4: every other active node deletes its copy, then this node deletes its own."""
        kept: set[bytes] = set()
        payload = RecBuffer(db.db_id, [RecData.with_header(0, k, h, b"") for k, h in delete_list]).pack()
        for pnn in self.active_peers():
            try:
                reply = await self.messenger.control(pnn, Control.TRY_DELETE_RECORDS, payload,
                                                     timeout=CONTROL_TIMEOUT)
            except ControlError as exc:
                log.info("vacuum of %s: TRY_DELETE_RECORDS on node %u failed (%s); keeping %d records",
                         db.name, pnn, exc, len(delete_list))
                return
            kept |= {bytes(r.key) for r in RecBuffer.unpack(reply.data).records}
        self.counters.kept_remotely += len(kept)
        for done, (key, queued) in enumerate(delete_list):
            if done and done % SLICE == 0:
                await asyncio.sleep(0)
            if key in kept:
                continue
            lock = db.try_lock(key)
            if lock is None:
                self.counters.busy += 1
                continue
            try:
                if may_delete_here(queued, db.tdb.fetch_ltdb(key), self.pnn, lmaster_of(key, lmasters)):
                    db.tdb.delete(key)
                    self.counters.deleted += 1
                    self.record_calls.forget_settled(db.db_id, key)
                else:
                    self.counters.skipped += 1
            except TdbError as exc:
                log.warning("vacuum: cannot delete a record of %s: %s", db.name, exc)
            finally:
                lock.release()

    # -- what other nodes' runs ask of this node ---------------------------------------------------
    def vacuum_fetch(self, records: RecBuffer) -> None:
        """VACUUM_FETCH: migrate each record here with VACUUM_MIGRATION (it lands on our queue),
        a few calls at a time (server/vacuum_fetch.py)."""
        db = self.lookup(records.db_id)
        if db is None or not self.is_volatile(records.db_id) or self._recovering:
            return
        self.counters.fetched_for_vacuum += len(records.records)
        self.fetches.add(records.db_id, [bytes(rec.key) for rec in records.records])

    async def try_delete_records(self, records: RecBuffer) -> RecBuffer:
        """TRY_DELETE_RECORDS: delete the copies that may go; return the kept ones."""
        db = self.lookup(records.db_id)
        if db is None:
            return RecBuffer(records.db_id, list(records.records))
        lmasters = self.lmasters()
        kept: list[RecData] = []
        for done, rec in enumerate(records.records):
            if done and done % SLICE == 0:
                await asyncio.sleep(0)
            key = bytes(rec.key)
            try:
                sent, _ = rec.split_header()
            except Exception:
                kept.append(rec)
                continue
            lock = db.try_lock(key)
            if lock is None:
                kept.append(rec)
                continue
            try:
                current = db.tdb.fetch_ltdb(key)
                if not may_delete_copy(sent, current, self.pnn, lmaster_of(key, lmasters)):
                    kept.append(rec)
                elif current is not None:
                    db.tdb.delete(key)
                    self.counters.deleted += 1
            except TdbError:
                kept.append(rec)
            finally:
                lock.release()
        return RecBuffer(records.db_id, kept)
