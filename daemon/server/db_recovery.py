"""This node's side of database recovery: the shell of `core.db.recovery_node.NodeRecovery`.

Controls (handlers in `controls/recovery.py`) go into the core as events; its actions are carried
out here:

* **LockDatabase** (DB_FREEZE): `Database.lock_all()` — ctdbd's lock helper takes the all-record
  lock in its own process (waiting in the kernel for smbd's chain locks), then the daemon marks
  it and holds the database's turn, so smbd is kept out and every other service of the daemon
  that wants a lock of this file (record migrations, persistent updates, traverses) waits until
  the thaw. The helper dying while frozen is FreezeLost.
* **StreamPull** (DB_PULL): the records are read by `tdb_traverse_read` in a forked child
  (`store.traverse_in_child`; the child inherits the marked lock and takes no locks of its own)
  and streamed back over a pipe; here they are packed into `ctdb_rec_buffer`s and sent as
  messages to the puller's srvid each time a buffer reaches RecBufferSizeLimit bytes, with the
  loop yielded to every YIELD_EVERY records. The reply (the count) is sent after the last buffer:
  both go the same way (one TCP connection per peer, or this node's own client socket), so
  the puller has every buffer before the count.
* **Listen / StopListening** (DB_PUSH_START / DB_PUSH_CONFIRM): a handler on the messenger for
  the push srvid queues each buffer as it arrives; one task per srvid decodes them and steps
  their records into the core YIELD_EVERY at a time, yielding the loop in between. DB_PUSH_CONFIRM,
  which arrives after the buffers on the same path, waits until that queue is empty, so it
  counts them all.
* **Commit** (DB_TRANSACTION_COMMIT): one TDB transaction in a forked child (`store.run_in_child`),
  as ctdbd's recovery does it: with the freeze lock held by the helper, the child drops its copy
  of the marks, sets TDB_NOLOCK, starts a transaction, wipes the file if the transaction was
  wiped, stores the pushed records and commits — the fsyncs of a persistent database happen in
  the child, the loop only waits for its pipe.
* **UnlockDatabase** (DB_THAW, detach): the lock is given back once no child is using the file
  without locks (a commit is never killed half-way: with TDB_NOLOCK nobody would repair it
  before smbd reads). DB_THAW is answered after the lock is released.

Also offered: `freeze_state(db_id)` (for GET_DB_SEQNUM), `set_recmode_normal(generation)` (the
check SET_RECMODE NORMAL makes, and the thaw of an INACTIVE node's whole freeze) and
`node_inactive()`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from itertools import count
from typing import Any, Protocol

from ..config import Tunables
from ..core.db import recovery_node as rn
from ..core.db.registry import DbInfo
from ..log import log
from ..protocol import (
    Control, ProtocolError, PullDbExt, RecBuffer, RecData, TdbFlag, TransDb, VnnMap, pack_reply,
)
from ..store import (
    ChildError, Database, HeldLock, LockError, TdbError, TdbFile, run_in_child, traverse_in_child,
)
from .dispatch import Result
from .messenger import MessageHandler
from .tasks import Tasks

#: Records streamed by a pull, or stored from a push, between two yields to the loop.
YIELD_EVERY = 500


class DatabasesPort(Protocol):
    """What the service needs of the database service."""

    listeners: list[Callable[[DbInfo, bool], None]]

    def database(self, db_id: int) -> Database | None: ...
    def databases(self) -> list[DbInfo]: ...


class MessagesPort(Protocol):
    my_pnn: int

    def send_message(self, dest: int, srvid: int, data: bytes) -> None: ...
    def is_connected(self, pnn: int) -> bool: ...
    def add_handler(self, srvid: int, handler: MessageHandler) -> None: ...
    def remove_handler(self, srvid: int) -> None: ...


class PullStreamError(Exception):
    """A pull could not be sent."""


def commit_in_child(tdb: TdbFile, wiped: bool,
                    writes: Iterable[tuple[bytes, bytes | None]]) -> Callable[[], int]:
    """The child's work for a recovery commit (``tdb`` frozen and marked by the daemon): drop
    the child's copy of the marks (a transaction cannot start over them), then, with TDB_NOLOCK
    as ctdbd's db_transaction_*_handler: transaction, wipe, writes, commit. Returns the writes.
    TDB_NOLOCK is added to the open handle only: a CLEAR_IF_FIRST file *opened* with it would be
    wiped (the ACTIVE lock that tells the first opener apart is not taken then)."""
    def work() -> int:
        tdb.transaction_write_lock_unmark()
        tdb.lockall_unmark()
        tdb.add_flags(TdbFlag.NOLOCK)
        tdb.transaction_start()
        done = 0
        try:
            if wiped:
                tdb.wipe_all()
            for key, value in writes:
                if value is None:
                    tdb.delete(key)
                else:
                    tdb.store(key, value)
                done += 1
        except BaseException:
            tdb.transaction_cancel()
            raise
        tdb.transaction_commit()
        return done
    return work


class _Batch:
    """Records of one pull, packed into buffers and sent as each reaches `limit` bytes."""

    def __init__(self, db_id: int, limit: int, send: Callable[[bytes], None]) -> None:
        self.db_id = db_id
        self.limit = limit
        self.send = send
        self.records: list[RecData] = []
        self.size = 8
        self.sent = 0

    def add(self, key: bytes, value: bytes) -> None:
        self.records.append(RecData(0, key, value))
        self.size += RecData.HEAD_SIZE + len(key) + len(value)
        if self.size >= self.limit:
            self.flush()

    def flush(self) -> None:
        if self.records:
            self.send(RecBuffer(self.db_id, self.records).pack())
            self.sent += len(self.records)
            self.records, self.size = [], 8


class DatabaseRecoveryService:
    """`databases`: the database service (open files, attach/detach listeners); `messenger`:
    messages to any node and handlers of srvids; `vnnmap()`: the current vnnmap."""

    def __init__(self, my_pnn: int, databases: DatabasesPort, messenger: MessagesPort,
                 tunables: Tunables, tasks: Tasks, *, vnnmap: Callable[[], VnnMap],
                 on_thawed: Callable[[int], None] = lambda db_id: None) -> None:
        self.my_pnn = my_pnn
        self.databases = databases
        self.messenger = messenger
        self.tunables = tunables
        self.tasks = tasks
        self.vnnmap = vnnmap
        self.on_thawed = on_thawed          # after a DB_THAW that succeeded, the lock given back
        self.core = rn.NodeRecovery(my_pnn)
        self._tickets = count(1)
        self._pending: dict[int, asyncio.Future[Result]] = {}
        self._queue: deque[rn.Event] = deque()
        self._stepping = False
        self._locks: dict[int, HeldLock] = {}                 # frozen: the marked lock
        self._locking: dict[int, asyncio.Task] = {}           # freezing: waiting for it
        self._releasing: dict[int, asyncio.Task] = {}
        self._busy: dict[int, asyncio.Lock] = {}              # children using a frozen file
        self._pushed: dict[int, deque[bytes]] = {}            # srvid -> buffers not stored yet
        self._storing: dict[int, asyncio.Task] = {}           # srvid -> the task storing them
        self._work: set[asyncio.Task] = set()
        self._closed = False
        databases.listeners.append(self._db_changed)
        for info in databases.databases():
            self._db_changed(info, True)

    # -- controls --------------------------------------------------------------------------------
    async def freeze(self, db_id: int) -> Result:
        return await self._ask(lambda t: rn.Freeze(t, db_id))

    async def thaw(self, db_id: int) -> Result:
        result = await self._ask(lambda t: rn.Thaw(t, db_id))
        releasing = self._releasing.get(db_id)
        if releasing is not None:
            await asyncio.shield(releasing)
        if result.status == 0:
            self.on_thawed(db_id)
        return result

    def transaction_start(self, transdb: TransDb) -> Result:
        return self._ask_now(lambda t: rn.TransactionStart(t, transdb.db_id, transdb.tid))

    def transaction_cancel(self, db_id: int) -> Result:
        return self._ask_now(lambda t: rn.TransactionCancel(t, db_id))

    async def transaction_commit(self, transdb: TransDb) -> Result:
        return await self._ask(lambda t: rn.TransactionCommit(t, transdb.db_id, transdb.tid))

    def wipe(self, transdb: TransDb) -> Result:
        return self._ask_now(lambda t: rn.Wipe(t, transdb.db_id, transdb.tid))

    async def pull(self, pulldb: PullDbExt, src: int) -> Result:
        return await self._ask(lambda t: rn.Pull(t, pulldb.db_id, pulldb.srvid, src))

    def push_start(self, pulldb: PullDbExt) -> Result:
        return self._ask_now(lambda t: rn.PushStart(t, pulldb.db_id, pulldb.srvid))

    async def push_confirm(self, db_id: int) -> Result:
        state = self.core.state(db_id)
        if state is not None and state.push is not None:
            storing = self._storing.get(state.push.srvid)
            if storing is not None:
                await asyncio.shield(storing)
        return self._ask_now(lambda t: rn.PushConfirm(t, db_id))

    # -- for the rest of the daemon --------------------------------------------------------------
    def freeze_state(self, db_id: int) -> tuple[bool, bool]:
        """(frozen or freezing, recovery transaction started) — GET_DB_SEQNUM's refusal rule."""
        return self.core.freeze_state(db_id)

    def set_recmode_normal(self, generation: int) -> str | None:
        """SET_RECMODE NORMAL while recovery is active: the refusal text (a database's generation
        is not the vnnmap's), or None — then an INACTIVE node's whole freeze is thawed too."""
        result = self._ask_now(lambda t: rn.RecmodeNormal(t, generation))
        return None if result.status == 0 else (result.errmsg or "refused")

    def set_generation(self, db_id: int, generation: int) -> Result:
        """The database was repaired without a freeze (server/partial_recovery.py): its generation
        becomes `generation`, unless it is frozen or in a recovery transaction."""
        return self._ask_now(lambda t: rn.GenerationSet(t, db_id, generation))

    def node_inactive(self) -> None:
        """This node became INACTIVE: freeze everything, generations invalid, volatile records
        invalid (ctdb_node_become_inactive)."""
        self._feed(rn.Inactive())

    def frozen_databases(self) -> list[int]:
        return [db_id for db_id in self.core.dbs if self.core.freeze_state(db_id)[0]]

    def close(self) -> None:
        self._closed = True
        for task in [*self._locking.values(), *self._releasing.values(), *self._work,
                     *self._storing.values()]:
            task.cancel()
        for lock in self._locks.values():
            lock.release()
        self._locks.clear()
        for srvid in self.core.listening():
            self.messenger.remove_handler(srvid)
        for future in self._pending.values():
            if not future.done():
                future.set_result(Result(-1, errmsg="shutting down"))

    # -- the core's loop -------------------------------------------------------------------------
    def _ticket(self) -> tuple[int, asyncio.Future[Result]]:
        ticket = next(self._tickets)
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending[ticket] = future
        return ticket, future

    async def _ask(self, make: Callable[[int], rn.Event]) -> Result:
        ticket, future = self._ticket()
        try:
            self._feed(make(ticket))
            return await future
        finally:
            self._pending.pop(ticket, None)

    def _ask_now(self, make: Callable[[int], rn.Event]) -> Result:
        """A control the core answers at once."""
        ticket, future = self._ticket()
        try:
            self._feed(make(ticket))
            if not future.done():
                raise RuntimeError("the recovery core did not answer at once")
            return future.result()
        finally:
            self._pending.pop(ticket, None)

    def _feed(self, event: rn.Event) -> None:
        self._queue.append(event)
        if self._stepping:
            return
        self._stepping = True
        try:
            while self._queue:
                for action in self.core.step(self._queue.popleft()):
                    try:
                        self._execute(action)
                    except Exception:
                        log.exception("database recovery action %r failed", action)
        finally:
            self._stepping = False

    def _execute(self, action: rn.Action) -> None:
        if isinstance(action, rn.Reply):
            future = self._pending.get(action.ticket)
            if future is not None and not future.done():
                data = b"" if action.count is None else pack_reply(Control.DB_PULL, action.count)
                future.set_result(Result(action.status, data, action.error))
        elif isinstance(action, rn.LockDatabase):
            self._spawn_lock(action.db_id)
        elif isinstance(action, rn.UnlockDatabase):
            self._unlock(action.db_id)
        elif isinstance(action, rn.Listen):
            self.messenger.add_handler(action.srvid, self._on_push_message)
        elif isinstance(action, rn.StopListening):
            self.messenger.remove_handler(action.srvid)
            self._pushed.pop(action.srvid, None)
        elif isinstance(action, rn.StreamPull):
            self._start(self._stream_pull(action), f"db-pull-{action.db_id:08x}")
        elif isinstance(action, rn.Commit):
            self._start(self._commit(action), f"db-commit-{action.db_id:08x}")
        elif isinstance(action, rn.Log):
            log.log(action.level, "%s", action.text)

    def _start(self, coro: Any, name: str) -> None:
        task = self.tasks.spawn(coro, name)
        if task is not None:
            self._work.add(task)
            task.add_done_callback(self._work.discard)

    # -- inputs from elsewhere ---------------------------------------------------------------------
    def _db_changed(self, info: DbInfo, attached: bool) -> None:
        if attached:
            self._feed(rn.Attached(info.db_id, info.name, int(info.flags),
                                   self.vnnmap().generation))
        else:
            self._feed(rn.Detached(info.db_id))

    def _on_push_message(self, src: int, srvid: int, data: bytes) -> None:
        self._pushed.setdefault(srvid, deque()).append(data)
        if srvid not in self._storing:
            task = self.tasks.spawn(self._store_pushed(srvid), f"db-push-{srvid:016x}")
            if task is not None:
                self._storing[srvid] = task

    async def _store_pushed(self, srvid: int) -> None:
        try:
            while True:
                queue = self._pushed.get(srvid)
                if not queue:
                    return
                data = queue.popleft()
                try:
                    records = RecBuffer.unpack(data).records
                except ProtocolError as exc:
                    self._feed(rn.PushInvalid(srvid, str(exc)))
                    continue
                lmasters = tuple(self.vnnmap().map)
                start = 0
                while True:
                    end = start + YIELD_EVERY
                    self._feed(rn.PushData(srvid, tuple(records[start:end]), lmasters,
                                           end >= len(records)))
                    if end >= len(records):
                        break
                    start = end
                    await asyncio.sleep(0)
                await asyncio.sleep(0)
        finally:
            self._storing.pop(srvid, None)

    # -- the freeze lock ---------------------------------------------------------------------------
    def _spawn_lock(self, db_id: int) -> None:
        task = self.tasks.spawn(self._take_lock(db_id), f"db-freeze-{db_id:08x}")
        if task is None:
            self._feed(rn.FreezeLocked(db_id, False, "shutting down"))
            return
        self._locking[db_id] = task

    async def _take_lock(self, db_id: int) -> None:
        db = self.databases.database(db_id)
        try:
            previous = self._releasing.get(db_id)
            if previous is not None:
                await asyncio.shield(previous)
            if db is None:
                raise LockError("database is not attached")
            lock = await db.lock_all()
        except (LockError, TdbError, OSError) as exc:
            self._locking.pop(db_id, None)
            self._feed(rn.FreezeLocked(db_id, False, str(exc)))
            return
        self._locking.pop(db_id, None)
        self._locks[db_id] = lock
        if lock.helper is not None:
            lock.helper.exited.add_done_callback(lambda _: self._helper_exited(db_id, lock))
        self._feed(rn.FreezeLocked(db_id, True))

    def _helper_exited(self, db_id: int, lock: HeldLock) -> None:
        if not lock.released and self._locks.get(db_id) is lock and not self._closed:
            self._feed(rn.FreezeLost(db_id))

    def _unlock(self, db_id: int) -> None:
        locking = self._locking.pop(db_id, None)
        if locking is not None:
            locking.cancel()                 # the helper still waiting is killed
        lock = self._locks.pop(db_id, None)
        if lock is None:
            return
        busy = self._busy.get(db_id)
        if busy is None or not busy.locked():
            lock.release()
            return

        async def release_after_children() -> None:
            async with busy:
                lock.release()

        task = self.tasks.spawn(release_after_children(), f"release-db-{db_id:08x}")
        if task is None:
            lock.release()
            return
        self._releasing[db_id] = task
        task.add_done_callback(lambda t: self._releasing.pop(db_id, None)
                               if self._releasing.get(db_id) is t else None)

    def _usable_lock(self, db_id: int) -> HeldLock:
        lock = self._locks.get(db_id)
        if lock is None or lock.released or lock.lost:
            raise PullStreamError("the database's freeze lock is not held")
        return lock

    def _busy_lock(self, db_id: int) -> asyncio.Lock:
        return self._busy.setdefault(db_id, asyncio.Lock())

    # -- pull, commit ------------------------------------------------------------------------------
    async def _stream_pull(self, action: rn.StreamPull) -> None:
        error: str | None = None
        corrupt: str | None = None
        batch = _Batch(action.db_id, max(1, int(self.tunables.get("RecBufferSizeLimit"))),
                       lambda data: self._send(action.dest, action.srvid, data))
        try:
            db = self.databases.database(action.db_id)
            if db is None:
                raise PullStreamError("database is not attached")
            async with self._busy_lock(action.db_id):
                self._usable_lock(action.db_id)
                if action.from_file:
                    try:
                        await self._stream_file(db, action.skip, batch)
                    except ChildError as exc:
                        if "CORRUPT" not in str(exc):
                            raise
                        corrupt = str(exc)          # the core decides what that means
                for key, value in action.extra:
                    batch.add(key, value)
                batch.flush()
        except (PullStreamError, ChildError, TdbError, OSError) as exc:
            error = str(exc)
        self._feed(rn.PullDone(action.ticket, action.db_id, batch.sent, error, corrupt))

    async def _stream_file(self, db: Database, skip: frozenset[bytes], batch: _Batch) -> None:
        seen = 0
        async for key, value in traverse_in_child(db.tdb):
            if key not in skip:
                batch.add(key, value)
            seen += 1
            if seen % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    def _send(self, dest: int, srvid: int, data: bytes) -> None:
        if dest != self.my_pnn and not self.messenger.is_connected(dest):
            raise PullStreamError(f"node {dest} is not connected")
        self.messenger.send_message(dest, srvid, data)

    async def _commit(self, action: rn.Commit) -> None:
        error: str | None = None
        try:
            db = self.databases.database(action.db_id)
            if db is None:
                raise PullStreamError("database is not attached")
            async with self._busy_lock(action.db_id):
                self._usable_lock(action.db_id)
                await run_in_child(commit_in_child(db.tdb, action.wiped, action.writes),
                                   realtime=True)
        except (PullStreamError, ChildError, TdbError, OSError) as exc:
            error = str(exc)
        self._feed(rn.CommitDone(action.db_id, error))
        if error is not None:
            log.error("Recovery commit of db 0x%08x failed: %s", action.db_id, error)

