"""One node's part in a database recovery, as decisions: whether each database is frozen, its
recovery transaction (id, wiped, the records pushed into it), the push stream it listens to, its
generation, and what each recovery control answers in each state. ``NodeRecovery.step(event) ->
actions``; the shell (``server/db_recovery.py``) takes and gives back the database lock, streams
pulls, commits the transaction in a forked child and sends the replies.

CTDB's rules, Samba 4.17.12 (``ctdb/server/ctdb_freeze.c`` unless named otherwise):

* **DB_FREEZE** (``ctdb_control_db_freeze``): unknown db -1; already FROZEN answers 0 at once;
  otherwise the freeze starts (the all-record lock through the lock helper, once: a PENDING
  freeze gets more waiters) and the control is answered when the lock is there (0) or could not
  be had (-1, back to NONE). A lock helper that dies while FROZEN unfreezes the database
  ("Freeze db child died - unfreezing"): the transaction is cancelled.
* **DB_THAW** (``ctdb_control_db_thaw``): unknown -1; else the freeze is dropped whatever its
  state (PENDING waiters get -1), a started transaction is cancelled, the records' "invalid" mark
  cleared; 0.
* **DB_TRANSACTION_START** (``db_start_transaction``): unknown -1; not FROZEN -1 ("not frozen,
  cannot start transaction"); a started transaction is cancelled first; the transaction id is
  the request's tid (the recovery's generation); 0.
* **DB_TRANSACTION_CANCEL**: unknown -1; else cancelled (started or not), 0.
* **WIPE_DATABASE** (``ctdb_control_wipe_database``): unknown -1; not FROZEN -1; no transaction
  -1; another tid -1; else the transaction's view is emptied; 0.
* **DB_TRANSACTION_COMMIT** (``db_commit_transaction``): unknown -1; not FROZEN -1; no transaction
  -1; another tid -1 ("Incorrect transaction commit id"); a failed commit -1; success: no
  transaction, and the database's *generation* becomes the tid.
* **DB_PULL** (``ctdb_recover.c`` ``ctdb_control_db_pull``): unknown -1; not FROZEN -1; records
  marked invalid (this node went INACTIVE since) answer 0 records; else every record of the
  transaction's view (key, header + value, reqid 0) goes to ``srvid`` on the requesting node as
  ``ctdb_rec_buffer`` messages of at least RecBufferSizeLimit bytes (a buffer is sent once it
  reaches the limit), and the reply is the number of records sent.
* **DB_PUSH_START** (``ctdb_control_db_push_start``): unknown -1; not FROZEN -1; a push already
  started is replaced (its srvid dropped); then record buffers that arrive on ``srvid`` are
  stored (``db_push_msg_handler``): read-only flags stripped, ``ctdb_ltdb_store`` — volatile
  databases through ctdbd's store rules (``ltdbrules.store``: a record whose dmaster is this node
  gets rsn + 1), others as they are. A record shorter than its header fails the push: that
  buffer and every later one are not counted. ctdbd does not look at the buffer's db_id.
* **DB_PUSH_CONFIRM** (``ctdb_control_db_push_confirm``): unknown -1; not FROZEN -1; no push -1;
  else the number of records stored, and the srvid is dropped.
* **SET_RECMODE NORMAL** (``ctdb_recover.c`` ``ctdb_control_set_recmode``, only when the mode
  changes): -1 "Inconsistent DB generation" if any database's generation differs from the
  vnnmap's; then, if this node froze all its databases (it went INACTIVE), all are thawed.
* A database's generation starts as the vnnmap's at attach (``ctdb_local_attach``); a node that
  goes INACTIVE (``ctdb_node_become_inactive``) sets every generation to INVALID_GENERATION,
  freezes every database and marks volatile records invalid (``db_invalidate``).
* GET_DB_SEQNUM (served by the persistent-commit service) is refused while a database is frozen
  (PENDING or FROZEN) without a transaction: :meth:`NodeRecovery.freeze_state`.

Deviations, marked:

* **pyctdbd:** a DB_PULL of a *volatile* database whose file libtdb finds corrupt part-way sends
  the records read before the damage and answers their count (logged); ctdbd answers -1, the
  helper retries and then bans the node. A volatile database is a cache, the damaged records
  cannot be read anyway, and the recovery's wipe and push rewrite the file. A corrupt
  persistent database still fails the pull.
* **pyctdbd:** the transaction is kept here, as its contents (wiped or not, and the records
  written since), and written to the file in one TDB transaction at commit, in a forked child;
  ctdbd keeps a libtdb transaction open in the daemon from DB_TRANSACTION_START on. A pull after
  a wipe or push sees what ctdbd's would: the transaction's view.
* **pyctdbd:** DB_PUSH_START without a started transaction is refused (-1); ctdbd then writes
  pushed records straight into the file. Every CTDB user (recovery helper, ``ctdb restoredb``)
  starts a transaction first.
* **pyctdbd:** while a commit is being written, TRANSACTION_START/CANCEL/COMMIT and WIPE on that
  database answer -1 (ctdbd commits synchronously, so it never sees them then).
* **pyctdbd:** DB_THAW also drops a started push (ctdbd keeps its srvid registered).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import Enum

from ...log import NOTICE
from ...protocol.constants import INVALID_GENERATION, RecordFlag
from ...protocol.ltdb import LTDB_HEADER_SIZE
from ...protocol.types import LtdbHeader, RecData
from . import ltdbrules
from .registry import is_volatile

Ticket = Hashable
RO_FLAGS = int(RecordFlag.RO_FLAGS)


class FreezeMode(Enum):
    NONE = "none"
    PENDING = "pending"
    FROZEN = "frozen"


# -- events ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attached:
    """The database is open here; `generation` is the vnnmap's at this moment."""

    db_id: int
    name: str
    flags: int
    generation: int


@dataclass(frozen=True)
class Detached:
    db_id: int


@dataclass(frozen=True)
class Freeze:
    ticket: Ticket
    db_id: int


@dataclass(frozen=True)
class FreezeLocked:
    """The shell's answer to LockDatabase: `ok` False if the lock could not be had."""

    db_id: int
    ok: bool
    error: str | None = None


@dataclass(frozen=True)
class FreezeLost:
    """The lock helper holding a frozen database's lock died."""

    db_id: int


@dataclass(frozen=True)
class Thaw:
    ticket: Ticket
    db_id: int


@dataclass(frozen=True)
class TransactionStart:
    ticket: Ticket
    db_id: int
    tid: int


@dataclass(frozen=True)
class TransactionCancel:
    ticket: Ticket
    db_id: int


@dataclass(frozen=True)
class TransactionCommit:
    ticket: Ticket
    db_id: int
    tid: int


@dataclass(frozen=True)
class CommitDone:
    """The shell's answer to Commit: `error` None if the file has the transaction."""

    db_id: int
    error: str | None = None


@dataclass(frozen=True)
class Wipe:
    ticket: Ticket
    db_id: int
    tid: int


@dataclass(frozen=True)
class Pull:
    """DB_PULL from node `dest`, records to go to its `srvid`."""

    ticket: Ticket
    db_id: int
    srvid: int
    dest: int


@dataclass(frozen=True)
class PullDone:
    """The shell's answer to StreamPull: the records sent, or an error. `corrupt`: libtdb found
    the file corrupt part-way; `count` records were read and sent before that."""

    ticket: Ticket
    db_id: int
    count: int
    error: str | None = None
    corrupt: str | None = None


@dataclass(frozen=True)
class PushStart:
    ticket: Ticket
    db_id: int
    srvid: int


@dataclass(frozen=True)
class PushData:
    """Records of a buffer that arrived on a srvid this node listens to, in slices (the shell
    cuts big buffers so that the loop is yielded to between slices): `last` marks the buffer's
    last slice, when its records count. `lmasters`: the current vnnmap (ctdbd's store rules
    look up the lmaster of an empty record)."""

    srvid: int
    records: tuple[RecData, ...]
    lmasters: tuple[int, ...] = ()
    last: bool = True


@dataclass(frozen=True)
class PushInvalid:
    """A message on a push srvid that is not a ctdb_rec_buffer."""

    srvid: int
    error: str


@dataclass(frozen=True)
class PushConfirm:
    ticket: Ticket
    db_id: int


@dataclass(frozen=True)
class RecmodeNormal:
    """SET_RECMODE NORMAL while the mode is ACTIVE; `generation` the vnnmap's."""

    ticket: Ticket
    generation: int


@dataclass(frozen=True)
class GenerationSet:
    """pyctdbd's recovery after a node loss repaired this database without a freeze or a
    transaction (``core/db/partial_recovery.py``): it is now on `generation`. Refused (-1) for
    an unknown database and one that is frozen, freezing or in a recovery transaction."""

    ticket: Hashable
    db_id: int
    generation: int


@dataclass(frozen=True)
class Inactive:
    """This node became INACTIVE (banned or stopped)."""


Event = (Attached | Detached | Freeze | FreezeLocked | FreezeLost | Thaw | TransactionStart
         | TransactionCancel | TransactionCommit | CommitDone | Wipe | Pull | PullDone | PushStart
         | PushData | PushInvalid | PushConfirm | RecmodeNormal | GenerationSet | Inactive)


# -- actions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """Answer a control: `count` is the u32 payload of DB_PULL / DB_PUSH_CONFIRM."""

    ticket: Ticket
    status: int
    count: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class LockDatabase:
    """Take the all-record lock (freeze); answer with FreezeLocked."""

    db_id: int


@dataclass(frozen=True)
class UnlockDatabase:
    """Give the all-record lock back (or stop waiting for it) — after any commit being written."""

    db_id: int


@dataclass(frozen=True)
class Listen:
    """Hand messages on `srvid` to this core as PushData."""

    srvid: int


@dataclass(frozen=True)
class StopListening:
    srvid: int


@dataclass(frozen=True)
class StreamPull:
    """Send the records to (`dest`, `srvid`), then answer PullDone. `from_file`: the file's
    records, except `skip` keys; then `extra` (key, header + value) pairs."""

    ticket: Ticket
    db_id: int
    dest: int
    srvid: int
    from_file: bool
    skip: frozenset[bytes]
    extra: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class Commit:
    """Write the transaction to the file atomically (durably for persistent databases): wipe
    it first if `wiped`, then store each (key, header + value), or delete where it is None.
    Answer with CommitDone."""

    db_id: int
    wiped: bool
    writes: tuple[tuple[bytes, bytes | None], ...]


@dataclass(frozen=True)
class Log:
    level: int
    text: str


Action = (Reply | LockDatabase | UnlockDatabase | Listen | StopListening | StreamPull | Commit
          | Log)


# -- state -----------------------------------------------------------------------------------
@dataclass
class Transaction:
    """A recovery transaction: `tid`, whether the database was wiped in it, and the writes
    since (key -> header + value, None for a delete), in order."""

    tid: int
    wiped: bool = False
    writes: dict[bytes, bytes | None] = field(default_factory=dict)


@dataclass
class Push:
    srvid: int
    count: int = 0              # records of the buffers stored whole
    in_buffer: int = 0          # records of the buffer being stored
    failed: bool = False


@dataclass
class DbState:
    db_id: int
    name: str
    flags: int
    generation: int
    freeze: FreezeMode = FreezeMode.NONE
    waiters: list[Ticket] = field(default_factory=list)
    transaction: Transaction | None = None
    push: Push | None = None
    invalid_records: bool = False
    committing: tuple[Ticket, int] | None = None      # the COMMIT being written, its tid

    @property
    def volatile(self) -> bool:
        return is_volatile(self.flags)


class NodeRecovery:
    def __init__(self, my_pnn: int) -> None:
        self.my_pnn = my_pnn
        self.dbs: dict[int, DbState] = {}
        self.all_frozen = False          # the whole-node freeze of an INACTIVE node
        self._out: list[Action] = []

    # -- queries ---------------------------------------------------------------------------------
    def freeze_state(self, db_id: int) -> tuple[bool, bool]:
        """(frozen or freezing, recovery transaction started): what ``ctdb_db_allow_access``
        looks at (GET_DB_SEQNUM is refused when frozen without a transaction)."""
        db = self.dbs.get(db_id)
        if db is None:
            return False, False
        return db.freeze is not FreezeMode.NONE, db.transaction is not None

    def state(self, db_id: int) -> DbState | None:
        return self.dbs.get(db_id)

    def listening(self) -> set[int]:
        return {db.push.srvid for db in self.dbs.values() if db.push is not None}

    # -- the one entry ---------------------------------------------------------------------------
    def step(self, event: Event) -> list[Action]:
        self._out = []
        handler = getattr(self, "on_" + type(event).__name__)
        handler(event)
        out, self._out = self._out, []
        return out

    # -- plumbing --------------------------------------------------------------------------------
    def _emit(self, action: Action) -> None:
        self._out.append(action)

    def _log(self, level: int, text: str) -> None:
        self._emit(Log(level, text))

    def _reply(self, ticket: Ticket, status: int, count: int | None = None,
               error: str | None = None) -> None:
        if status != 0 and error:
            self._log(logging.ERROR, error)
        self._emit(Reply(ticket, status, count, error))

    def _known(self, ticket: Ticket, db_id: int, what: str) -> DbState | None:
        db = self.dbs.get(db_id)
        if db is None:
            self._reply(ticket, -1, error=f"{what} for unknown dbid 0x{db_id:08x}")
        return db

    def _frozen(self, ticket: Ticket, db: DbState, text: str) -> bool:
        if db.freeze is not FreezeMode.FROZEN:
            self._reply(ticket, -1, error=text)
            return False
        return True

    def _not_committing(self, ticket: Ticket, db: DbState) -> bool:
        if db.committing is not None:
            self._reply(ticket, -1, error=f"Database {db.name} is committing its recovery "
                                          "transaction")
            return False
        return True

    def _stop_push(self, db: DbState) -> None:
        push, db.push = db.push, None
        if push is not None and push.srvid not in self.listening():
            self._emit(StopListening(push.srvid))

    def _drop_freeze(self, db: DbState) -> None:
        """ctdb_db_freeze_handle_destructor: cancel the transaction, back to NONE, records
        valid again, waiters of a pending freeze answered -1, the lock given back."""
        if db.transaction is not None:
            db.transaction = None
        waiters, db.waiters = db.waiters, []
        for ticket in waiters:
            self._reply(ticket, -1, error=f"Freeze of db {db.name} abandoned")
        was = db.freeze
        db.freeze = FreezeMode.NONE
        db.invalid_records = False
        self._stop_push(db)
        if was is not FreezeMode.NONE:
            self._emit(UnlockDatabase(db.db_id))

    def _start_freeze(self, db: DbState) -> None:
        if db.freeze is FreezeMode.NONE:
            self._log(NOTICE, f"Freeze db: {db.name}")
            db.freeze = FreezeMode.PENDING
            self._emit(LockDatabase(db.db_id))

    # -- attach / detach -------------------------------------------------------------------------
    def on_Attached(self, ev: Attached) -> None:
        if ev.db_id not in self.dbs:
            self.dbs[ev.db_id] = DbState(ev.db_id, ev.name, int(ev.flags), ev.generation)

    def on_Detached(self, ev: Detached) -> None:
        db = self.dbs.pop(ev.db_id, None)
        if db is None:
            return
        if db.committing is not None:
            self._reply(db.committing[0], -1, error=f"Database {db.name} detached during its "
                                                    "recovery commit")
        self._drop_freeze(db)

    # -- freeze / thaw ---------------------------------------------------------------------------
    def on_Freeze(self, ev: Freeze) -> None:
        db = self._known(ev.ticket, ev.db_id, "Freeze db")
        if db is None:
            return
        if db.freeze is FreezeMode.FROZEN:
            self._log(logging.INFO, f"Freeze db: {db.name} frozen")
            self._reply(ev.ticket, 0)
            return
        self._start_freeze(db)
        db.waiters.append(ev.ticket)

    def on_FreezeLocked(self, ev: FreezeLocked) -> None:
        db = self.dbs.get(ev.db_id)
        if db is None or db.freeze is not FreezeMode.PENDING:
            if ev.ok:                    # thawed or detached meanwhile: give it back
                self._emit(UnlockDatabase(ev.db_id))
            return
        waiters, db.waiters = db.waiters, []
        if not ev.ok:
            db.freeze = FreezeMode.NONE
            self._log(logging.ERROR, f"Failed to get db lock for {db.name}"
                      + (f": {ev.error}" if ev.error else ""))
            for ticket in waiters:
                self._reply(ticket, -1, error=f"Failed to get db lock for {db.name}")
            return
        db.freeze = FreezeMode.FROZEN
        for ticket in waiters:
            self._reply(ticket, 0)

    def on_FreezeLost(self, ev: FreezeLost) -> None:
        db = self.dbs.get(ev.db_id)
        if db is None or db.freeze is not FreezeMode.FROZEN:
            return
        self._log(logging.ERROR, f"Freeze db child died - unfreezing {db.name}")
        self._drop_freeze(db)

    def on_Thaw(self, ev: Thaw) -> None:
        db = self._known(ev.ticket, ev.db_id, "Thaw db")
        if db is None:
            return
        self._log(NOTICE, f"Thaw db: {db.name} generation {db.generation}")
        self._drop_freeze(db)
        self._reply(ev.ticket, 0)

    # -- the transaction -------------------------------------------------------------------------
    def on_TransactionStart(self, ev: TransactionStart) -> None:
        db = self._known(ev.ticket, ev.db_id, "Transaction start")
        if db is None or not self._not_committing(ev.ticket, db):
            return
        if not self._frozen(ev.ticket, db, f"Database {db.name} not frozen, cannot start "
                                           "transaction"):
            return
        if db.transaction is not None:
            self._log(logging.INFO, f"Recovery transaction on {db.name} restarted")
        db.transaction = Transaction(ev.tid)
        self._reply(ev.ticket, 0)

    def on_TransactionCancel(self, ev: TransactionCancel) -> None:
        db = self._known(ev.ticket, ev.db_id, "Transaction cancel")
        if db is None or not self._not_committing(ev.ticket, db):
            return
        self._log(NOTICE, f"Recovery db transaction cancelled for {db.name}")
        db.transaction = None
        self._reply(ev.ticket, 0)

    def on_Wipe(self, ev: Wipe) -> None:
        db = self._known(ev.ticket, ev.db_id, "Wipe db")
        if db is None or not self._not_committing(ev.ticket, db):
            return
        if not self._frozen(ev.ticket, db, f"Failed to wipe {db.name} while not frozen"):
            return
        if db.transaction is None:
            self._reply(ev.ticket, -1, error=f"Wipe of {db.name}: transaction not started")
            return
        if db.transaction.tid != ev.tid:
            self._reply(ev.ticket, -1, error=f"Wipe of {db.name}: incorrect transaction id "
                                             f"0x{ev.tid:x}")
            return
        db.transaction.wiped = True
        db.transaction.writes.clear()
        self._reply(ev.ticket, 0)

    def on_TransactionCommit(self, ev: TransactionCommit) -> None:
        db = self._known(ev.ticket, ev.db_id, "Transaction commit")
        if db is None or not self._not_committing(ev.ticket, db):
            return
        if not self._frozen(ev.ticket, db, f"Database {db.name} not frozen, cannot commit "
                                           "transaction"):
            return
        if db.transaction is None:
            self._reply(ev.ticket, -1, error=f"Transaction not started on {db.name}")
            return
        if db.transaction.tid != ev.tid:
            self._reply(ev.ticket, -1, error=f"Incorrect transaction commit id 0x{ev.tid:08x} "
                                             f"for {db.name}")
            return
        db.committing = (ev.ticket, ev.tid)
        self._emit(Commit(db.db_id, db.transaction.wiped, tuple(db.transaction.writes.items())))

    def on_CommitDone(self, ev: CommitDone) -> None:
        db = self.dbs.get(ev.db_id)
        if db is None or db.committing is None:
            return
        (ticket, tid), db.committing = db.committing, None
        db.transaction = None
        if ev.error is not None:
            self._reply(ticket, -1, error=f"Failed to commit transaction for db {db.name}: "
                                          f"{ev.error}")
            return
        db.generation = tid
        self._reply(ticket, 0)

    # -- pull ------------------------------------------------------------------------------------
    def on_Pull(self, ev: Pull) -> None:
        db = self._known(ev.ticket, ev.db_id, "Pull db")
        if db is None:
            return
        if not self._frozen(ev.ticket, db, "rejecting ctdb_control_pull_db when not frozen"):
            return
        if db.invalid_records:
            self._reply(ev.ticket, 0, count=0)
            return
        trans = db.transaction
        if trans is None:
            self._emit(StreamPull(ev.ticket, db.db_id, ev.dest, ev.srvid, True, frozenset(), ()))
            return
        extra = tuple((k, v) for k, v in trans.writes.items() if v is not None)
        self._emit(StreamPull(ev.ticket, db.db_id, ev.dest, ev.srvid, not trans.wiped,
                              frozenset(trans.writes), extra))

    def on_PullDone(self, ev: PullDone) -> None:
        if ev.error is not None:
            self._reply(ev.ticket, -1, error=f"DB_PULL failed: {ev.error}")
            return
        if ev.corrupt is not None:
            db = self.dbs.get(ev.db_id)
            if db is None or not db.volatile:
                self._reply(ev.ticket, -1, error=f"DB_PULL failed: {ev.corrupt}")
                return
            self._log(logging.ERROR, f"DB_PULL of {db.name}: the file is corrupt ({ev.corrupt}); "
                                     f"sent the {ev.count} records read before it, the "
                                     "recovery's wipe rewrites the file")
        self._reply(ev.ticket, 0, count=ev.count)

    # -- push ------------------------------------------------------------------------------------
    def on_PushStart(self, ev: PushStart) -> None:
        db = self._known(ev.ticket, ev.db_id, "Push start")
        if db is None:
            return
        if not self._frozen(ev.ticket, db, "rejecting ctdb_control_db_push_start when not frozen"):
            return
        if db.transaction is None:
            self._reply(ev.ticket, -1, error=f"DB push for {db.name} outside a recovery "
                                             "transaction (pyctdbd)")
            return
        if db.push is not None:
            self._log(logging.WARNING, f"DB push already started for {db.name}")
            self._stop_push(db)
        already = ev.srvid in self.listening()
        db.push = Push(ev.srvid)
        if not already:
            self._emit(Listen(ev.srvid))
        self._reply(ev.ticket, 0)

    def _pushing(self, srvid: int) -> list[DbState]:
        return [db for db in self.dbs.values()
                if db.push is not None and db.push.srvid == srvid and not db.push.failed]

    def on_PushInvalid(self, ev: PushInvalid) -> None:
        for db in self._pushing(ev.srvid):
            db.push.failed = True    # type: ignore[union-attr]
            self._log(logging.ERROR, f"Invalid records pushed for {db.name}: {ev.error}")

    def on_PushData(self, ev: PushData) -> None:
        for db in self._pushing(ev.srvid):
            push = db.push
            assert push is not None
            if self._store_pushed(db, ev.records, ev.lmasters):
                push.in_buffer += len(ev.records)
                if ev.last:
                    push.count += push.in_buffer
                    push.in_buffer = 0

    def _store_pushed(self, db: DbState, records: tuple[RecData, ...],
                      lmasters: tuple[int, ...]) -> bool:
        push, trans = db.push, db.transaction
        assert push is not None
        if trans is None:
            push.failed = True
            self._log(logging.ERROR, f"Records pushed for {db.name} outside a transaction")
            return False
        for rec in records:
            if len(rec.data) < LTDB_HEADER_SIZE:
                self._log(logging.CRITICAL, f"bad ltdb record pushed for {db.name}")
                push.failed = True
                return False
            header, value = LtdbHeader.split(rec.data)
            header.flags &= ~RO_FLAGS
            if db.volatile:
                # ctdbd's rule looks at the lmaster only for an empty record (hashing every key
                # would cost more than the rest of the store together)
                lmaster = (ltdbrules.lmaster_of(rec.key, lmasters) if not value
                           else lmasters[0] if lmasters else None)
                stored = ltdbrules.store(header, value, pnn=self.my_pnn, lmaster=lmaster,
                                         persistent=False)
                trans.writes[rec.key] = stored.header.pack() + value if stored.keep else None
            else:
                trans.writes[rec.key] = header.pack() + value
        return True

    def on_PushConfirm(self, ev: PushConfirm) -> None:
        db = self._known(ev.ticket, ev.db_id, "Push confirm")
        if db is None:
            return
        if not self._frozen(ev.ticket, db,
                            "rejecting ctdb_control_db_push_confirm when not frozen"):
            return
        if db.push is None:
            self._reply(ev.ticket, -1, error=f"DB push not started for {db.name}")
            return
        count = db.push.count
        self._stop_push(db)
        self._reply(ev.ticket, 0, count=count)

    # -- recovery mode, inactivity ---------------------------------------------------------------
    def on_GenerationSet(self, ev: GenerationSet) -> None:
        db = self.dbs.get(ev.db_id)
        if db is None:
            self._reply(ev.ticket, -1, error=f"Unknown db 0x{ev.db_id:08x}")
        elif db.freeze is not FreezeMode.NONE or db.transaction is not None or self.all_frozen:
            self._reply(ev.ticket, -1, error=f"db {db.name} is frozen")
        else:
            db.generation = ev.generation
            self._reply(ev.ticket, 0)

    def on_RecmodeNormal(self, ev: RecmodeNormal) -> None:
        for db in self.dbs.values():
            if db.generation != ev.generation:
                self._reply(ev.ticket, -1, error=f"Inconsistent DB generation {db.generation} "
                                                 f"for {db.name}")
                return
        if self.all_frozen:
            self._log(NOTICE, "Thawing all")
            self.all_frozen = False
            for db in list(self.dbs.values()):
                self._drop_freeze(db)
        self._reply(ev.ticket, 0)

    def on_Inactive(self, ev: Inactive) -> None:
        self.all_frozen = True
        self._log(NOTICE, "Freeze all")
        for db in self.dbs.values():
            db.generation = INVALID_GENERATION
            if db.volatile:
                db.invalid_records = True
            self._start_freeze(db)
