"""The shell of `core.db.persistent.PersistentCommits`: persistent-database transactions across
the cluster, and this node's part in other nodes' transactions.

* **TRANS3_COMMIT** from a local client (smbd's ``db_ctdb_transaction_commit``): `commit` hands
  it to the core as `Start` (targets: the vnnmap nodes that are active; this node's attached
  databases) and waits for the core's `Reply`. The core's `SendUpdateRecord` becomes an
  UPDATE_RECORD control to that node (`Messenger.control`, ControlTimeout), its `ApplyUpdateRecord`
  the local apply below; each outcome goes back in as `NodeReplied` (a failed or timed-out
  control: its status, -1 for a disconnect or timeout). `ForceRecovery` calls the
  `force_recovery` port (set this node's recovery mode ACTIVE).
* **UPDATE_RECORD** from a peer, and this node's own share of a commit: `update_record_refusal`
  (recovery active, unknown or unhealthy database: -1), then one TDB transaction in a forked
  child (`store.Database.transaction`) that runs `plan_update` against the file's own values and
  stores its writes; an rsn regression (`UpdateRefused`) or any failure there cancels the whole
  transaction and answers 1, as ctdbd's child write does.
* **GET_DB_SEQNUM**: `db_seqnum_refusal`, then ``__db_sequence_number__`` from the file.
* Inputs the daemon feeds: `set_recovery_mode` (SET_RECMODE), `recovery_ended` (END_RECOVERY),
  `node_gone` (a peer disconnected), `client_gone` (a local client left). Deadlines
  (ControlTimeout per commit) are kept by this service's own loop timer; `tick(now)` runs them
  by hand.

Events that arise while actions run (a reply that comes back at once) are queued and stepped in
order, never re-entrantly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from ..config import Tunables
from ..core.db.persistent import (
    UPDATE_FAILED, UPDATE_REFUSED, ApplyUpdateRecord, Event, NodeGone, NodeReplied,
    PersistentCommits, PersistentSettings, RecoveryEnded, Reply, SendUpdateRecord, Start,
    db_seqnum_refusal, parse_commit, plan_update, update_record_refusal,
)
from ..core.db.callstats import ChildWrites
from ..core.db.ltdbrules import fetch as ltdb_fetch
from ..core.db.registry import ClientGone, DbInfo, ForceRecovery, SetRecoveryMode, Tick
from ..core.node import Log
from ..log import log
from ..net.rpc import ControlError
from ..protocol import Control, ProtocolError
from ..protocol.ltdb import DB_SEQNUM_TDB_KEY, unpack_seqnum
from ..store import ChildError, Database, TdbFile
from .dispatch import Result
from .messenger import Messenger

Lookup = Callable[[int], Database | None]
RegistryInfo = Callable[[int], DbInfo | None]
Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task | None"]


class SeqnumRefused(Exception):
    """GET_DB_SEQNUM is answered -1 with this text."""


def not_frozen(db_id: int) -> tuple[bool, bool]:
    return False, False


class PersistentCommitService:
    """`lookup(db_id)`: the store's open database; `registry_info(db_id)`: the registry's entry;
    `vnnmap()` / `active_nodes()`: the current vnnmap and the nodes that are not INACTIVE;
    `force_recovery(reason)`: set this node's recovery mode ACTIVE; `freeze_state(db_id)`:
    (frozen, recovery transaction started) — while frozen the daemon holds the database lock,
    so GET_DB_SEQNUM reads the file without taking a chain lock; `spawn(coro, name)`: the
    daemon's `Tasks.spawn`."""

    def __init__(self, my_pnn: int, messenger: Messenger, *, lookup: Lookup,
                 registry_info: RegistryInfo, vnnmap: Callable[[], Sequence[int]],
                 active_nodes: Callable[[], Iterable[int]], tunables: Tunables,
                 force_recovery: Callable[[str], None], spawn: Spawn,
                 clock: Callable[[], float] = time.monotonic,
                 freeze_state: Callable[[int], tuple[bool, bool]] = not_frozen,
                 generation: Callable[[], int] = lambda: 0) -> None:
        self.my_pnn = my_pnn
        self.generation = generation        # this node's vnnmap generation
        self.messenger = messenger
        self.lookup = lookup
        self.registry_info = registry_info
        self.vnnmap = vnnmap
        self.active_nodes = active_nodes
        self.tunables = tunables
        self.force_recovery = force_recovery
        self.spawn = spawn
        self.clock = clock
        self.freeze_state = freeze_state
        self.childwrites = ChildWrites()           # for STATISTICS (ctdbd's childwrite_*)
        self.core = PersistentCommits(my_pnn, PersistentSettings.from_tunables(tunables))
        self._waiting: dict[int, tuple[int, asyncio.Future[Result]]] = {}
        self._next_commit = 1
        self._queue: deque[tuple[Event, float | None]] = deque()
        self._stepping = False
        self._tasks: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when: float | None = None
        self._closed = False

    # -- queries ---------------------------------------------------------------------------------
    @property
    def recovery_active(self) -> bool:
        return self.core.recovery_active

    def in_flight(self) -> list[int]:
        """The commits waiting for their nodes."""
        return list(self.core.in_flight())

    def next_deadline(self) -> float | None:
        return self.core.next_deadline()

    # -- controls --------------------------------------------------------------------------------
    async def commit(self, client_id: int, payload: bytes) -> Result:
        """TRANS3_COMMIT from local client `client_id`: answered when the core says."""
        commit_id = self._next_commit
        self._next_commit += 1
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting[commit_id] = (client_id, future)
        self.core.settings = PersistentSettings.from_tunables(self.tunables)
        self._feed(Start(commit_id, client_id, payload, self._targets(), self._known(payload)))
        return await future

    async def update_record(self, payload: bytes, generation: int = 0) -> Result:
        """UPDATE_RECORD from a peer: apply it here and answer the status. One sent in another
        generation is refused: a commit that a recovery overtook (its UPDATE_RECORD reached this
        node only after the recovery had made every copy equal) would make this copy differ
        from the others' -- seen in the lab, a leader powered off mid-recovery: one node refused
        a late update for an rsn regression while the others applied it. Refused, the sender's
        commit fails, forces a recovery, and the client learns from the sequence number whether
        its commit happened. 0 (a sender that claims no generation) is not checked."""
        current = self.generation()
        if generation and current and generation != current:
            why = (f"UPDATE_RECORD of generation {generation} refused in generation {current} "
                   "(sent before a recovery)")
            log.warning("%s", why)
            return Result(-1, errmsg=why)
        status, error = await self.apply(payload)
        return Result(status, errmsg=error)

    async def db_seqnum(self, db_id: int) -> int:
        """GET_DB_SEQNUM; SeqnumRefused if it is answered -1."""
        frozen, started = self.freeze_state(db_id)
        why = db_seqnum_refusal(self.registry_info(db_id), db_id, frozen=frozen,
                                transaction_started=started)
        db = self.lookup(db_id)
        if why is None and db is None:
            why = f"Unknown db 0x{db_id:08x}"
        if why is not None:
            log.error("%s", why)
            raise SeqnumRefused(why)
        assert db is not None
        if frozen:
            return self._read_seqnum(db)
        async with db.locked(DB_SEQNUM_TDB_KEY):
            return self._read_seqnum(db)

    def _read_seqnum(self, db: Database) -> int:
        """The seqnum record, read as ctdb_ltdb_fetch reads it: a missing one gets its initial
        header stored where ctdbd stores it (always in a persistent database, AUTOMATIC kept;
        on the key's lmaster in a volatile one), so the file looks as ctdbd would leave it."""
        record = db.tdb.fetch_ltdb(DB_SEQNUM_TDB_KEY)
        if record is not None:
            return unpack_seqnum(record[1])
        lmasters = tuple(self.vnnmap())
        if lmasters:
            fetched = ltdb_fetch(None, DB_SEQNUM_TDB_KEY, pnn=self.my_pnn, lmasters=lmasters,
                                 persistent=db.persistent)
            if fetched.initial_store is not None and fetched.initial_store.keep:
                db.tdb.store_ltdb(DB_SEQNUM_TDB_KEY, fetched.initial_store.header, b"")
        return 0

    async def apply(self, payload: bytes) -> tuple[int, str | None]:
        """One UPDATE_RECORD on this node: (status, error). 0 applied, -1 refused at once, 1 the
        transaction failed (nothing written)."""
        try:
            db_id, records = parse_commit(payload)
        except ProtocolError as exc:
            why = f"ctdb_control_update_record: bad payload: {exc}"
            log.error("%s", why)
            return UPDATE_REFUSED, why
        info = self.registry_info(db_id)
        why = update_record_refusal(info, db_id, recovery_active=self.core.recovery_active)
        db = self.lookup(db_id)
        if why is None and db is None:
            why = f"Unknown database 0x{db_id:08x} in ctdb_control_update_record"
        if why is not None:
            log.log(logging.INFO if self.core.recovery_active else logging.ERROR, "%s", why)
            return UPDATE_REFUSED, why
        assert info is not None and db is not None
        volatile = info.volatile

        def write(tdb: TdbFile) -> int:          # runs in the forked child
            writes = plan_update(db_id, records, tdb.fetch, volatile=volatile)
            for key, value in writes:
                tdb.store(key, value)
            return len(writes)

        self.childwrites.calls += 1
        self.childwrites.pending += 1
        started = self.clock()
        try:
            await db.transaction(write)
        except ChildError as exc:          # an rsn regression (UpdateRefused) or a TDB failure
            log.error("Failed to write persistent data for db 0x%08x: %s", db_id, exc)
            return UPDATE_FAILED, str(exc)
        except Exception as exc:
            log.exception("Failed to write persistent data for db 0x%08x", db_id)
            return UPDATE_FAILED, str(exc)
        finally:
            self.childwrites.pending -= 1
            self.childwrites.latency.add(max(0.0, self.clock() - started))
        return 0, None

    # -- inputs ----------------------------------------------------------------------------------
    def set_recovery_mode(self, active: bool) -> None:
        self._feed(SetRecoveryMode(active))

    def recovery_ended(self) -> None:
        self._feed(RecoveryEnded())

    def node_gone(self, pnn: int) -> None:
        self._feed(NodeGone(pnn))

    def client_gone(self, client_id: int) -> None:
        """A local client disconnected: its commit (if any) forces recovery and is not answered
        (its control is finished with -1, which nobody reads)."""
        self._feed(ClientGone(client_id))
        alive = set(self.core.in_flight())
        for commit_id, (owner, future) in list(self._waiting.items()):
            if owner == client_id and commit_id not in alive:
                del self._waiting[commit_id]
                if not future.done():
                    future.set_result(Result(-1, errmsg="client gone"))

    def tick(self, now: float | None = None) -> None:
        self._feed(Tick(), now)

    def close(self) -> None:
        """Stop the timer and the work in flight (shutdown)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()
        for _, future in self._waiting.values():
            if not future.done():
                future.set_result(Result(-1, errmsg="shutting down"))
        self._waiting.clear()

    # -- the core --------------------------------------------------------------------------------
    def _targets(self) -> tuple[int, ...]:
        active = set(self.active_nodes())
        # once each: a node may hold several slots of the vnnmap
        return tuple(pnn for pnn in dict.fromkeys(self.vnnmap()) if pnn in active)

    def _known(self, payload: bytes) -> frozenset[int]:
        try:
            db_id, _ = parse_commit(payload)
        except ProtocolError:
            return frozenset()                   # the core refuses the payload itself
        return frozenset({db_id}) if self.registry_info(db_id) is not None else frozenset()

    def _feed(self, event: Event, now: float | None = None) -> None:
        self._queue.append((event, now))
        if self._stepping:
            return
        self._stepping = True
        try:
            while self._queue:
                ev, at = self._queue.popleft()
                self._execute(self.core.step(ev, self.clock() if at is None else at))
        finally:
            self._stepping = False
        self._arm()

    def _execute(self, actions: Iterable) -> None:
        for action in actions:
            if isinstance(action, Reply):
                self._reply(action)
            elif isinstance(action, SendUpdateRecord):
                self._start_task(self._send(action), f"update-record-{action.pnn}")
            elif isinstance(action, ApplyUpdateRecord):
                self._start_task(self._apply_here(action), "update-record-local")
            elif isinstance(action, ForceRecovery):
                self.force_recovery(action.reason)
            elif isinstance(action, Log):
                log.log(action.level, "%s", action.text)

    def _reply(self, action: Reply) -> None:
        waiting = self._waiting.pop(action.commit_id, None)
        if waiting is not None and not waiting[1].done():
            waiting[1].set_result(Result(action.status, errmsg=action.error))

    def _start_task(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        if self._closed:
            coro.close()
            return
        task = self.spawn(coro, name)
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, action: SendUpdateRecord) -> None:
        timeout = float(self.tunables.get("ControlTimeout"))
        try:
            await self.messenger.control(action.pnn, Control.UPDATE_RECORD, action.payload,
                                         timeout=timeout, generation=self.generation())
            status, error = 0, None
        except ControlError as exc:
            status, error = exc.status or -1, str(exc)
        self._feed(NodeReplied(action.commit_id, action.pnn, status, error))

    async def _apply_here(self, action: ApplyUpdateRecord) -> None:
        status, error = await self.apply(action.payload)
        self._feed(NodeReplied(action.commit_id, self.my_pnn, status, error))

    # -- the timer -------------------------------------------------------------------------------
    def _arm(self) -> None:
        deadline = None if self._closed else self.core.next_deadline()
        if deadline == self._timer_when:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_when = None
        if deadline is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(max(0.0, deadline - self.clock()), self._on_timer)
        self._timer_when = deadline

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_when = None
        self.tick()
