"""The sweep's I/O (decisions and the safety argument in `core/db/sweep.py`): shortly after
recovery mode ends, for each volatile database with open epochs, this node lists the keys it is
lmaster of that an epoch makes suspect (its own records and every active node's, by
PYCTDB_SWEEP_KEYS), gathers every active node's copies of them in batches
(PYCTDB_GATHER_COPIES), hands each key's copies to the migration core (`SweptCopies`, applied
under the key's chain lock by `RecordCalls`), then tells it the sweep is complete
(`SweepFinished`), and the core closes the epochs once every key is applied.

It starts SweepDelayMs after recovery mode ends (0: never). One sweep at a time, databases one
after the other, a short pause between batches: it runs in the background at low priority. A
failure (a node that does not answer -- also one of an older build, which does not know
PYCTDB_SWEEP_KEYS --, a malformed reply, recovery mode, a new generation) abandons that
database's sweep with a WARNING and the sweep goes on with the next; the abandoned ones are
tried again after a backoff (doubling, at most `MAX_BACKOFF`), and a new recovery starts afresh.
The core logs one INFO line per database when a sweep completes, and counts sweeps completed
and abandoned (`KeySettling.sweeps`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..core.db.migration import SweepFinished, SweptCopies
from ..core.db.sweep import SweepPlan, batches
from ..log import log
from ..protocol import Control, LtdbHeader, ProtocolError, SweepKeys, pack_request, unpack_reply
from ..store import ChildError, Database, LockError, TdbError
from .messenger import Messenger
from .partial_recovery import GATHER_TIMEOUT, gather_batch, list_sweep_keys
from .record_calls import RecordCalls

#: s a peer may take to list its keys (a traverse of the whole database in a child).
LIST_TIMEOUT = 30.0
#: s to wait for the core to apply every key fed (some may wait for chain locks smbd holds).
APPLY_TIMEOUT = 30.0
#: s between two batches.
BATCH_PAUSE = 0.01
#: Backoff after a failed sweep: first and largest (s).
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0


class SweepFailed(Exception):
    pass


class Sweeper:
    def __init__(self, record_calls: RecordCalls, lookup: Callable[[int], Database | None],
                 messenger: Messenger, spawn: Callable[..., asyncio.Task | None],
                 clock: Callable[[], float], *, delay: Callable[[], float] = lambda: 1.0,
                 gather: Callable[..., Awaitable] = gather_batch) -> None:
        self.calls = record_calls
        self.core = record_calls.core
        self.lookup = lookup
        self.messenger = messenger
        self.spawn = spawn
        self.clock = clock
        self.delay = delay          # s after recovery mode ends (SweepDelayMs; 0 = no sweep)
        self.gather = gather
        self.task: asyncio.Task | None = None
        self.backoff = FIRST_BACKOFF

    def recovery_mode(self, active: bool) -> None:
        """Recovery mode ACTIVE stops a sweep (the core abandons it too); NORMAL starts one
        after `delay()` seconds (the calls the recovery held go first), unless that is 0."""
        self._stop()
        delay = self.delay()
        if not active and delay > 0:
            self.backoff = FIRST_BACKOFF
            self._start(delay)

    def close(self) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.task = None

    def _start(self, delay: float) -> None:
        self.task = self.spawn(self._run(delay), "sweep")

    async def _run(self, delay: float) -> None:
        await asyncio.sleep(delay)
        abandoned = []
        for db_id in self.core.settling.sweepable():
            try:
                await self.sweep(db_id)
            except Exception as exc:        # SweepFailed, or a bug: never into the loop
                # The others go on: what failed one database (a key list too big for a packet,
                # a listing that failed there) need not touch the next one.
                name = self._name(db_id)
                log.warning("sweep of db %s abandoned: %s", name, exc)
                abandoned.append(name)
        if abandoned:
            log.warning("sweep abandoned for %s; next try in %.0f s",
                        ", ".join(abandoned), self.backoff)
            self.task = None
            self._start(self.backoff)
            self.backoff = min(MAX_BACKOFF, self.backoff * 2)
            return
        self.backoff = FIRST_BACKOFF

    async def sweep(self, db_id: int) -> bool:
        """Sweep one database; True when its epochs closed, False when there was nothing to
        sweep (raises SweepFailed, or whatever stopped it, after abandoning it in the core)."""
        plan = self.core.settling.start_sweep(db_id, self.core.generation, self.core.lmasters,
                                              self.clock())
        if plan is None:
            return False
        try:
            return await self._sweep(plan)
        except asyncio.CancelledError:      # recovery mode (a new one follows it) or shutdown
            log.warning("sweep of db %s abandoned: recovery mode or shutdown", self._name(db_id))
            self.calls.feed(SweepFinished(db_id, plan.sweep_id, 0, failed="cancelled"))
            raise
        except Exception as exc:
            self.calls.feed(SweepFinished(db_id, plan.sweep_id, 0, failed=str(exc) or repr(exc)))
            raise

    def _name(self, db_id: int) -> str:
        db = self.lookup(db_id)
        return db.name if db is not None else f"0x{db_id:08x}"

    async def _sweep(self, plan: SweepPlan) -> bool:
        db_id = plan.db_id
        keys = set(plan.keys) | await self._list_keys(plan)
        for batch in batches(keys):
            self._check(plan)
            copies, complete = await self.gather(self.messenger, db_id, batch, GATHER_TIMEOUT)
            if not complete:
                raise SweepFailed("a node did not send its copies")
            self._check(plan)
            for key in batch:
                self.calls.feed(SweptCopies(db_id, key, plan.sweep_id, tuple(copies.get(key, ()))))
            await asyncio.sleep(BATCH_PAUSE)
        self.calls.feed(SweepFinished(db_id, plan.sweep_id, len(keys)))
        deadline = self.clock() + APPLY_TIMEOUT
        while (state := self._state(plan)) == "running":
            if self.clock() > deadline:
                raise SweepFailed(f"not every key applied after {APPLY_TIMEOUT:.0f} s")
            await asyncio.sleep(0.05)
        if state != "closed":
            raise SweepFailed(state)
        return True

    def _state(self, plan: SweepPlan) -> str:
        return self.core.settling.sweeps.state(plan.db_id, plan.sweep_id)

    def _check(self, plan: SweepPlan) -> None:
        state = self._state(plan)
        if state != "running":
            raise SweepFailed(state)

    async def _list_keys(self, plan: SweepPlan) -> set[bytes]:
        db = self.lookup(plan.db_id)
        if db is None:
            raise SweepFailed("the database is not open here")
        maps = [tuple(m) for m in plan.maps]
        try:
            own = await list_sweep_keys(db, plan.lmaster, plan.current_map, maps, plan.lost)
        except (ChildError, TdbError, LockError) as exc:
            raise SweepFailed(f"listing this node's keys failed: {exc}") from exc
        keys = {k for k, _ in own}
        peers = self.messenger.active_peers()
        if not peers:
            return keys
        request = pack_request(Control.PYCTDB_SWEEP_KEYS, SweepKeys(
            plan.db_id, plan.lmaster, list(plan.current_map), sorted(plan.lost), [list(m) for m in maps]))
        replies = await self.messenger.controls(peers, Control.PYCTDB_SWEEP_KEYS, request,
                                                timeout=LIST_TIMEOUT)
        for pnn in peers:
            reply = replies[pnn]
            if isinstance(reply, Exception):
                raise SweepFailed(f"node {pnn} did not list its keys ({reply})")
            try:
                for buffer in unpack_reply(Control.PYCTDB_SWEEP_KEYS, reply.data).buffers:
                    if buffer.db_id != plan.db_id:
                        raise ProtocolError(f"keys of db 0x{buffer.db_id:08x}")
                    for rec in buffer.records:
                        LtdbHeader.split(rec.data)
                        keys.add(bytes(rec.key))
            except ProtocolError as exc:
                raise SweepFailed(f"node {pnn} sent a malformed key list: {exc}") from exc
        return keys
