"""The shell of the record-migration core (:mod:`ctdblab.daemon.core.db.migration`): REQ_CALLs of
local clients (smbd's migrate and fetch) and the five call/dmaster packets of peers go in, chain
locks are taken, records read and written in the TDB files of :mod:`ctdblab.daemon.store`, and
the core's actions become packets, client replies, timers and recovery requests. It follows the
core's "shell's contract" (its module docstring) to the letter.

API (``RecordCalls``)
---------------------

``RecordCalls(core, lookup, send_frame, tasks, clock, force_recovery, *, max_key_size=...)``
    ``lookup(db_id) -> Database | None`` (``Store.by_id``); ``send_frame(pnn, frame) -> bool``
    (``Messenger.send_frame``; False = not connected, the packet is dropped); ``tasks`` the
    daemon's ``Tasks``; ``clock()`` the daemon's monotonic clock; ``force_recovery(reason)`` sets
    recovery mode ACTIVE (what ctdbd does on a REQ_DMASTER from a node that is not the dmaster).
``client_call(client, header, body: ReqCall)``
    a REQ_CALL from a local client; the reply (REPLY_CALL or REPLY_ERROR) goes back with
    ``client.send(frame)``: the client's reqid, ``destnode = header.srcnode``, srcnode this node.
``node_packet(pnn, header, body)``
    REQ_CALL, REPLY_CALL, REQ_DMASTER, REPLY_DMASTER or REPLY_ERROR from a peer (decoded).
``db_attached(db_id, name, persistent)`` / ``db_detached(db_id)``
    after the Store has opened the database / once it is detached (waiting calls get REPLY_ERROR).
``vnnmap_changed(vnnmap)``, ``recovery_mode(active)``, ``db_thawed(db_id)``
    a recovery installed a vnnmap; this node's recovery mode changed (leaving it sends the calls
    held back); a recovery thawed a database (its calls under way are sent again).
``set_banned(banned)``, ``client_gone(client)``, ``tick(now)``
    this node's ban; a local client disconnected; about once a second (collapse timeouts, pins,
    error summaries).
``stats`` / ``db_stats`` / ``counters``
    the core's ``CallStatistics`` and ``{db_id: DbCallStatistics}`` (for STATISTICS and
    GET_DB_STATISTICS), and this shell's own :class:`ShellCounters`.
``close()``
    at shutdown: cancel timers and the tasks waiting for contended chain locks.

How it runs
-----------

* **Hot path, synchronous**: an event about one record (``core.lock_target``) whose key has no
  queue yet tries the chain lock (``Database.try_lock``); when that succeeds the record is read,
  the core stepped, the actions carried out and the lock released in the same callback: no task,
  no await.
* **Contended chain lock** (smbd holds it, or another task of the daemon holds the database's
  turn): the event starts a per-key FIFO queue and one task drains it, taking the lock with
  ``await Database.lock`` (ctdbd's lock helper waits in the kernel, the loop runs on). Every
  later event for the same (db_id, key) — packets, client calls, requeues — goes behind it in
  arrival order until the queue is empty, so a REPLY_DMASTER is never overtaken by a REQ_CALL that
  came after it.
* **Requeue**: delay 0 -> ``loop.call_soon`` (FIFO); a delay -> one heap ordered by (due, arrival)
  behind one ``loop.call_at`` timer, so requeues with equal delays keep their order (the loop's own
  timer heap does not promise that for equal deadlines).
* **Events without a lock target** (REPLY_CALL, REPLY_ERROR, unknown databases, the global
  events) are stepped at once with record None.

Errors: nothing here raises into the router. Each cause (a vanished database, a failing lock
helper, a libtdb error, an oversized key, a bug) is logged once and then counted, with a summary
at most once a minute (:meth:`tick`); the call it hit is answered with REPLY_ERROR (a local
client directly, a peer's REQ_CALL to its origin, a re-sent call of this node to its waiting
clients) so that smbd never hangs; a record in transit (REQ_DMASTER, REPLY_DMASTER) that cannot
be read or stored forces a recovery, which re-sends the calls (ctdbd calls ``ctdb_fatal`` when the
new dmaster's store fails). A failed store stops the rest of that event's stores and packets
(the record is never handed on when our own copy could not be written) and turns its client
replies into REPLY_ERROR. A database the core knows but the store no longer has is detached from
the core (its waiting calls get REPLY_ERROR) and the event stepped again without it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

from ..core.db.callstats import CallStatistics, DbCallStatistics
from ..core.db.migration import (
    Action, ClientGone, CopiesGathered, DbAttached, DbDetached, DbThawed, DeleteRecord, Event,
    ForceRecovery, GatherCopies, KeysUnsettled, LocalCall, Log, MigrationCore, PeerPacket,
    RecoveryMode, Reissue, ReplyToClient, Requeue, ScheduleForDeletion, SendPacket, SetBanned,
    StoreRecord, Tick, UnscheduleDeletion, VnnMapChanged,
)
from ..log import log
from ..net.local import Client
from ..protocol.header import Header
from ..protocol.packets import (
    ReplyCall, ReplyDmaster, ReplyError, ReqCall, ReqDmaster, encode_packet,
)
from ..protocol.types import LtdbHeader, VnnMap
from ..store import Database, HeldLock, LockError, TdbError
from .tasks import Tasks

#: Largest key accepted from a client or a peer. TDB has no limit; smbd's keys are file ids,
#: server ids and lock names (tens of bytes).
MAX_KEY_SIZE = 64 * 1024
#: How often a repeated error is summarised in the log (seconds).
COMPLAINT_PERIOD = 60.0
#: A task draining a long per-key queue lets the loop run after this many events.
DRAIN_BATCH = 64

_NODE_BODIES = (ReqCall, ReplyCall, ReqDmaster, ReplyDmaster, ReplyError)
_RECORD_WRITES = (StoreRecord, DeleteRecord)

Target = tuple[int, bytes]


def _error(text: str) -> ReplyError:
    return ReplyError(-1, text.encode() + b"\0")     # ctdb_send_error: NUL included


@dataclass
class ShellCounters:
    """What the shell itself did (the core counts calls and migrations)."""

    immediate: int = 0          # events handled under a lock taken at once (the hot path)
    contended: int = 0          # events that waited for their chain lock in a task
    queued: int = 0             # events that went behind an earlier one for the same key
    requeued: int = 0           # Requeue actions carried out
    stores: int = 0
    deletes: int = 0
    packets_sent: int = 0
    packets_dropped: int = 0    # peer not connected
    vacuum_candidates: int = 0  # ScheduleForDeletion: handed to the vacuum service
    gathers: int = 0            # GatherCopies: a key settled on first use (core/db/settling.py)
    errors: dict[str, int] = field(default_factory=dict)   # by kind of cause


class _Complaints:
    """Log a cause of trouble once, count its repeats, summarise them now and then."""

    def __init__(self, counters: ShellCounters, period: float = COMPLAINT_PERIOD) -> None:
        self.counters = counters
        self.period = period
        self.seen: dict[Hashable, list] = {}       # cause -> [repeats, last report, text]

    def __call__(self, kind: str, cause: Hashable, text: str, now: float,
                 exc: BaseException | None = None) -> None:
        self.counters.errors[kind] = self.counters.errors.get(kind, 0) + 1
        entry = self.seen.get((kind, cause))
        if entry is None:
            self.seen[(kind, cause)] = [0, now, text]
            log.error("%s", text, exc_info=exc if kind == "bug" else None)
            return
        entry[0] += 1
        entry[2] = text

    def flush(self, now: float) -> None:
        for entry in self.seen.values():
            if entry[0] and now - entry[1] >= self.period:
                log.error("%s (and %d more times)", entry[2], entry[0])
                entry[0], entry[1] = 0, now


class RecordCalls:
    """The migration core's shell: locks, record I/O, packets, replies, timers."""

    def __init__(self, core: MigrationCore, lookup: Callable[[int], Database | None],
                 send_frame: Callable[[int, bytes], bool], tasks: Tasks, clock: Callable[[], float],
                 force_recovery: Callable[[str], None], *, max_key_size: int = MAX_KEY_SIZE) -> None:
        self.core = core
        self.lookup = lookup
        self.send_frame = send_frame
        self.tasks = tasks
        self.clock = clock
        self.force_recovery = force_recovery
        self.max_key_size = max_key_size
        self.counters = ShellCounters()
        self.complain = _Complaints(self.counters)
        self.waiting: dict[Target, deque[Event]] = {}      # per-key FIFO behind a contended lock
        self.drains: dict[Target, asyncio.Task] = {}
        self.current: dict[Target, Event] = {}             # the event a drain is working on
        self.callers: dict[tuple[Hashable, int], int] = {}   # (client, reqid) -> header.srcnode
        self.timers: list[tuple[float, int, Event]] = []     # delayed requeues: (due, seq, event)
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due = 0.0
        self.seq = itertools.count()
        #: Where the core's ScheduleForDeletion goes (the vacuum service's queue).
        self.on_schedule: Callable[[int, bytes, LtdbHeader], None] | None = None
        #: Where the core's UnscheduleDeletion goes (the same queue).
        self.on_unschedule: Callable[[int, bytes], None] | None = None
        #: Reads every active node's copy of a key for the core's GatherCopies: (copies, whether
        #: every node answered).
        self.gather_copies: Callable[[int, bytes], Awaitable[tuple[tuple, bool]]] | None = None

    # -- queries -------------------------------------------------------------------------------
    @property
    def pnn(self) -> int:
        return self.core.pnn

    @property
    def stats(self) -> CallStatistics:
        return self.core.stats

    @property
    def db_stats(self) -> dict[int, DbCallStatistics]:
        return self.core.db_stats

    # -- inputs --------------------------------------------------------------------------------
    def client_call(self, client: Client, header: Header, body: ReqCall) -> None:
        """A REQ_CALL from a local client (smbd)."""
        if len(body.key) > self.max_key_size:
            self.complain("key-size", ("client", body.db_id),
                          f"REQ_CALL from a client with a {len(body.key)}-byte key for db "
                          f"0x{body.db_id:08x} refused (limit {self.max_key_size})", self.clock())
            self._send_client(client, header.reqid, header.srcnode, _error("key too long"))
            return
        self.callers[(client, header.reqid)] = header.srcnode
        self._feed(LocalCall(client, header.reqid, body.db_id, bytes(body.key), body.callid,
                             body.flags, bytes(body.calldata)))

    def daemon_call(self, caller: Hashable, db_id: int, key: bytes, callid: int, flags: int) -> None:
        """A call the daemon makes itself (the vacuum's VACUUM_MIGRATION); `caller.send(frame)`
        gets the reply."""
        self._feed(LocalCall(caller, 0, db_id, bytes(key), callid, flags, b""))

    def node_packet(self, pnn: int, header: Header, body: object) -> None:
        """A REQ_CALL, REPLY_CALL, REQ_DMASTER, REPLY_DMASTER or REPLY_ERROR from peer `pnn`."""
        if not isinstance(body, _NODE_BODIES):
            self.complain("packet", type(body).__name__,
                          f"{type(body).__name__} from node {pnn} is not a record call packet",
                          self.clock())
            return
        key = getattr(body, "key", b"")
        if len(key) > self.max_key_size:
            text = (f"{type(body).__name__} from node {pnn} with a {len(key)}-byte key refused "
                    f"(limit {self.max_key_size})")
            self.complain("key-size", ("node", pnn), text, self.clock())
            if isinstance(body, ReqCall):
                self._fail_origin(header.srcnode, header.reqid, "key too long")
            return
        self._feed(PeerPacket(header.srcnode, header.reqid, header.generation, body))

    def db_attached(self, db_id: int, name: str, persistent: bool) -> None:
        self._run_unlocked(DbAttached(db_id, name, persistent))

    def db_detached(self, db_id: int) -> None:
        """The core fails this database's calls; events queued behind one of its chain locks are
        taken off the queue (their lock waits end) and answered as for an unknown database."""
        self._run_unlocked(DbDetached(db_id))
        targets = [t for t in self.waiting if t[0] == db_id]
        running = asyncio.current_task() if targets else None
        for target in targets:
            queue = self.waiting.pop(target)
            events = list(queue)
            queue.clear()                   # its task, if it goes on, has nothing left
            task = self.drains.pop(target, None)
            current = self.current.pop(target, None)
            if task is not None and task is not running:
                task.cancel()               # it was waiting for the lock with `current`
                if current is not None:
                    events.insert(0, current)
            for event in events:
                self._feed(event)

    def vnnmap_changed(self, vnnmap: VnnMap) -> None:
        self._run_unlocked(VnnMapChanged(vnnmap))

    def handed_off(self, db_id: int) -> tuple[set[bytes], bool]:
        """For the recovery scan: the keys of `db_id` this node gave away lately or whose
        hand-off to it was cut off by the generation change, and whether the log overflowed."""
        return self.core.handoffs.take(db_id, self.clock()), self.core.handoffs.overflowed

    def recovery_mode(self, active: bool) -> None:
        self._run_unlocked(RecoveryMode(active))

    def keys_unsettled(self, db_id: int, old_map: tuple[int, ...], keys: frozenset[bytes]) -> None:
        """A recovery after a membership change (core/db/unsettled.py)."""
        self._run_unlocked(KeysUnsettled(db_id, tuple(old_map), frozenset(keys)))

    def forget_settled(self, db_id: int, key: bytes) -> None:
        """The vacuum deleted the record at its lmaster, everywhere."""
        self.core.settling.forget(db_id, key)

    def feed(self, event: Event) -> None:
        """An event from another service of this node (the sweep's): the normal path."""
        self._feed(event)

    def db_thawed(self, db_id: int) -> None:
        self._run_unlocked(DbThawed(db_id))

    def set_banned(self, banned: bool) -> None:
        self._run_unlocked(SetBanned(banned))

    def client_gone(self, client: Client) -> None:
        for caller in [c for c in self.callers if c[0] is client]:
            del self.callers[caller]
        self._run_unlocked(ClientGone(client))

    def tick(self, now: float) -> None:
        self._run_unlocked(Tick(), now)
        self.complain.flush(now)

    def close(self) -> None:
        """Shutdown: no more timers; the tasks waiting for chain locks are cancelled."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.timers.clear()
        for task in self.drains.values():
            task.cancel()
        self.drains.clear()
        self.waiting.clear()
        self.current.clear()

    # -- routing events ------------------------------------------------------------------------
    def _feed(self, event: Event) -> None:
        """One event about a record, or a lockless one: the whole path up to its actions."""
        try:
            target = self.core.lock_target(event)
        except Exception as exc:            # a bug; never into the router
            self._bug(event, exc)
            return
        if target is None:
            self._run_unlocked(event)
            return
        queue = self.waiting.get(target)
        if queue is not None:
            queue.append(event)
            self.counters.queued += 1
            return
        db = self.lookup(target[0])
        if db is None:
            self._vanished(target[0], event)
            return
        try:
            lock = db.try_lock(target[1])
        except (TdbError, LockError) as exc:
            self._lock_failed(db, event, exc)
            return
        if lock is None:
            self._contend(target, event)
            return
        self.counters.immediate += 1
        self._run_locked(db, lock, target, event)

    def _contend(self, target: Target, event: Event) -> None:
        queue: deque[Event] = deque([event])
        self.waiting[target] = queue
        task = self.tasks.spawn(self._drain(target, queue), f"record-lock-{target[0]:08x}")
        if task is None:                    # shutting down: nothing new starts
            del self.waiting[target]
            self._fail_event(event, "the daemon is shutting down")
            return
        self.drains[target] = task

    async def _drain(self, target: Target, queue: deque[Event]) -> None:
        """Events for one key, in arrival order, each under its chain lock."""
        try:
            for done in itertools.count(1):
                if not queue:
                    break
                event = queue.popleft()
                self.current[target] = event
                try:
                    await self._contended_step(target, event)
                finally:
                    if self.current.get(target) is event:
                        del self.current[target]
                if done % DRAIN_BATCH == 0:
                    await asyncio.sleep(0)  # locks granted at once never suspend: let others run
        finally:
            if self.waiting.get(target) is queue:
                del self.waiting[target]
                self.drains.pop(target, None)

    async def _contended_step(self, target: Target, event: Event) -> None:
        """One queued event: wait for its chain lock, then the synchronous section. The lock is
        taken on the handle the store had when the wait began; a handle closed meanwhile fails
        the lock (libtdb error), so a granted lock is always on an open file."""
        try:
            db = self.lookup(target[0])
            if db is None or self.core.lock_target(event) != target:
                self._rerun(target, event)
                return
            try:
                lock = await db.lock(target[1])
            except (TdbError, LockError) as exc:
                if self.lookup(target[0]) is None or self.core.lock_target(event) != target:
                    self._rerun(target, event)      # detached while we waited
                else:
                    self._lock_failed(db, event, exc)
                return
            self.counters.contended += 1
            if self.core.lock_target(event) != target:      # the core dropped the database
                lock.release()
                self._rerun(target, event)
                return
            if lock.lost:
                lock.release()
                self._lock_failed(db, event, LockError("the lock helper exited"))
                return
            self._run_locked(db, lock, target, event)
        except Exception as exc:            # a bug: the queue goes on
            self._bug(event, exc)

    def _rerun(self, target: Target, event: Event) -> None:
        """The event's database went away under it: the core no longer knows it (step the event
        as one for an unknown database) or the store no longer has it."""
        if self.core.lock_target(event) is None:
            self._run_unlocked(event)
        elif self.lookup(target[0]) is None:
            self._vanished(target[0], event)
        else:                                # cannot happen; never loop on it
            self._fail_event(event, "the database changed while the call waited")

    # -- stepping ------------------------------------------------------------------------------
    def _run_unlocked(self, event: Event, now: float | None = None) -> None:
        try:
            actions = self.core.step(event, None, self.clock() if now is None else now)
        except Exception as exc:
            self._bug(event, exc)
            return
        self._execute(actions, None, None)

    def _run_locked(self, db: Database, lock: HeldLock, target: Target, event: Event) -> None:
        """Read, step, act, unlock: the contract's critical section (synchronous)."""
        try:
            try:
                record = db.tdb.fetch_ltdb(target[1])
            except TdbError as exc:
                self.complain("tdb", (db.db_id, "read"), f"cannot read a record of {db.name}: {exc}",
                              self.clock())
                self._fail_event(event, f"cannot read the record: {exc}")
                return
            try:
                actions = self.core.step(event, record, self.clock())
            except Exception as exc:
                self._bug(event, exc)
                return
            self._execute(actions, db, target)
        finally:
            try:
                lock.release()
            except TdbError as exc:
                self.complain("tdb", (db.db_id, "unlock"), f"cannot unlock a chain of {db.name}: "
                              f"{exc}", self.clock())

    # -- actions -------------------------------------------------------------------------------
    def _execute(self, actions: list[Action], db: Database | None, target: Target | None) -> None:
        failed: str | None = None
        for action in actions:
            try:
                if isinstance(action, _RECORD_WRITES):
                    if failed is None:
                        failed = self._write(action, db, target)
                elif isinstance(action, SendPacket):
                    if failed is None:
                        self._send(action)
                elif isinstance(action, ReplyToClient):
                    body = action.body if failed is None else _error(failed)
                    self._reply(action.client, action.reqid, body)
                elif isinstance(action, Requeue):
                    self._requeue(action.event, action.delay)
                elif isinstance(action, GatherCopies):
                    self._gather(action)
                elif isinstance(action, ForceRecovery):
                    self._force_recovery(action.reason)
                elif isinstance(action, Log):
                    log.log(action.level, "%s", action.text)
                elif isinstance(action, ScheduleForDeletion):
                    self.schedule_deletion(action.db_id, bytes(action.key), action.header)
                elif isinstance(action, UnscheduleDeletion):
                    # after a failed store the queue keeps the key (ctdbd: neither happens)
                    if failed is None:
                        self.unschedule_deletion(action.db_id, bytes(action.key))
                else:
                    raise TypeError(f"unknown action {type(action).__name__}")
            except Exception as exc:        # one bad action must not stop the others
                self.complain("bug", ("action", type(action).__name__),
                              f"carrying out {type(action).__name__} failed: {exc!r}", self.clock(), exc)

    def schedule_deletion(self, db_id: int, key: bytes, header: LtdbHeader) -> None:
        """A store put the record on the vacuum's queue: the core's ScheduleForDeletion, or the
        same store made by the native plane (server/native_grants.py, native_calls.py)."""
        self.counters.vacuum_candidates += 1
        if self.on_schedule is not None:
            self.on_schedule(db_id, key, header)

    def unschedule_deletion(self, db_id: int, key: bytes) -> None:
        """A store kept the record without scheduling it: off the vacuum's queue."""
        if self.on_unschedule is not None:
            self.on_unschedule(db_id, key)

    def _write(self, action: StoreRecord | DeleteRecord, db: Database | None,
               target: Target | None) -> str | None:
        """Store or delete under the event's lock; the reason it failed, or None."""
        if db is None or target != (action.db_id, bytes(action.key)):
            self.complain("bug", ("write", action.db_id),
                          f"{type(action).__name__} for db 0x{action.db_id:08x} outside the "
                          "event's chain lock: not written", self.clock())
            return "record write outside its lock"
        try:
            if isinstance(action, StoreRecord):
                db.tdb.store_ltdb(target[1], action.header, action.data)
                self.counters.stores += 1
            else:
                db.tdb.delete(target[1])
                self.counters.deletes += 1
            return None
        except TdbError as exc:
            text = f"cannot store a record of {db.name}: {exc}"
            self.complain("tdb", (db.db_id, "store"), text, self.clock())
            self._force_recovery(text)
            return f"store failed: {exc}"

    def _send(self, action: SendPacket) -> None:
        if action.dest == self.pnn:         # the core never does this; loop it back if it did
            self.complain("bug", "self-send", "a packet for this node itself: handled locally",
                          self.clock())
            self._requeue(PeerPacket(action.srcnode, action.reqid, action.generation, action.body), 0)
            return
        frame = encode_packet(action.body, destnode=action.dest, srcnode=action.srcnode,
                              reqid=action.reqid, generation=action.generation)
        if self.send_frame(action.dest, frame):
            self.counters.packets_sent += 1
        else:
            self.counters.packets_dropped += 1
            log.debug("%s to node %u dropped: not connected", type(action.body).__name__, action.dest)

    def _reply(self, client: Hashable, reqid: int, body: ReplyCall | ReplyError) -> None:
        srcnode = self.callers.pop((client, reqid), self.pnn)
        self._send_client(client, reqid, srcnode, body)

    def _send_client(self, client: Hashable, reqid: int, destnode: int,
                     body: ReplyCall | ReplyError) -> None:
        # A client that went away drops the reply (Client.send returns False).
        client.send(encode_packet(body, destnode=destnode, srcnode=self.pnn, reqid=reqid))

    def _requeue(self, event: Event, delay: float) -> None:
        self.counters.requeued += 1
        loop = asyncio.get_running_loop()
        if delay <= 0:
            loop.call_soon(self._feed, event)
            return
        heapq.heappush(self.timers, (loop.time() + delay, next(self.seq), event))
        self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.timers:
            return
        due = self.timers[0][0]
        if self.timer is not None:
            if self.timer_due <= due:
                return
            self.timer.cancel()
        self.timer = loop.call_at(due, self._fire)
        self.timer_due = due

    def _fire(self) -> None:
        self.timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self.timers and self.timers[0][0] <= now:
            self._feed(heapq.heappop(self.timers)[2])
        self._arm(loop)

    def _gather(self, action: GatherCopies) -> None:
        self.counters.gathers += 1
        log.debug("settling a key of db 0x%08x: gathering every node's copy", action.db_id)
        if self.tasks.spawn(self._gather_copies(action), f"gather-{action.db_id:08x}") is None:
            log.debug("not settling a key of db 0x%08x: shutting down", action.db_id)

    async def _gather_copies(self, action: GatherCopies) -> None:
        """Every active node's copy, then the core settles the key under its chain lock."""
        if action.delay > 0:
            await asyncio.sleep(action.delay)
        copies: tuple = ()
        complete = False
        try:
            if self.gather_copies is None:
                raise RuntimeError("no way to reach the other nodes")
            copies, complete = await self.gather_copies(action.db_id, bytes(action.key))
        except Exception as exc:            # incomplete: the core tries again a little later
            self.complain("gather", action.db_id, f"gathering copies of a record of db "
                          f"0x{action.db_id:08x} failed: {exc!r}", self.clock())
        self._feed(CopiesGathered(action.db_id, bytes(action.key), tuple(copies), complete))

    def _force_recovery(self, reason: str) -> None:
        try:
            self.force_recovery(reason)
        except Exception as exc:
            self.complain("bug", "force_recovery", f"forcing a recovery failed: {exc!r}",
                          self.clock(), exc)

    # -- failures ------------------------------------------------------------------------------
    def _vanished(self, db_id: int, event: Event) -> None:
        """The core knows the database, the store does not: detach it from the core (its
        waiting calls get REPLY_ERROR), then the event is one for an unknown database."""
        self.complain("vanished", db_id, f"database 0x{db_id:08x} is attached in the migration "
                      "core but not open in the store: detaching it", self.clock())
        self.db_detached(db_id)
        if self.core.lock_target(event) is None:
            self._run_unlocked(event)
        else:                                # should not happen: fail it rather than loop
            self._fail_event(event, f"database 0x{db_id:08x} is not available")

    def _lock_failed(self, db: Database, event: Event, exc: Exception) -> None:
        self.complain("lock", (db.db_id, type(exc).__name__),
                      f"cannot lock a record of {db.name}: {exc}", self.clock())
        self._fail_event(event, f"cannot lock the record: {exc}")

    def _bug(self, event: Event, exc: Exception) -> None:
        self.complain("bug", (type(event).__name__, type(exc).__name__),
                      f"migration of a record failed on {type(event).__name__}: {exc!r}",
                      self.clock(), exc)
        self._fail_event(event, "internal error")

    def _fail_event(self, event: Event, text: str) -> None:
        """Answer what waits for an event that could not be stepped."""
        if isinstance(event, LocalCall):
            if event.requeued:              # the core counted it as pending: it ends here
                self.core.stats.pending_calls -= 1
            self.core.stats.errors_sent += 1
            self._reply(event.client, event.reqid, _error(text))
        elif isinstance(event, PeerPacket) and isinstance(event.body, ReqCall):
            self._fail_origin(event.srcnode, event.reqid, text)
        elif isinstance(event, PeerPacket) and isinstance(event.body, (ReqDmaster, ReplyDmaster)):
            self._force_recovery(f"{type(event.body).__name__} for db 0x{event.body.db_id:08x} "
                                 f"from node {event.srcnode} could not be handled: {text}")
        elif isinstance(event, Reissue):
            view = self.core.in_flight(event.db_id, event.key)
            if view is not None:            # end the call: its clients get the error
                self._run_unlocked(PeerPacket(self.pnn, view.reqid, self.core.generation, _error(text)))

    def _fail_origin(self, srcnode: int, reqid: int, text: str) -> None:
        """REPLY_ERROR for a REQ_CALL, to the node that made the call."""
        self.core.stats.errors_sent += 1
        error = _error(text)
        if srcnode == self.pnn:
            self._run_unlocked(PeerPacket(self.pnn, reqid, self.core.generation, error))
        else:
            self._send(SendPacket(srcnode, self.pnn, reqid, self.core.generation, error))
