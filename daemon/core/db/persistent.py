"""Persistent-database transactions across the cluster, as decisions: a client's TRANS3_COMMIT
fans out as UPDATE_RECORD to every active node (this one included), and the commit is answered
when all of them applied it, when a recovery ends it, or when it times out.
``PersistentCommits.step(event, now) -> actions`` tracks the commits in flight; the pure functions
below parse the payload and decide what a node may write (``plan_update``), which the shell runs
inside a TDB transaction in a forked child (``store.Database.transaction``).

How smbd commits (``source3/lib/dbwrap/dbwrap_ctdb.c``, ``db_ctdb_transaction_store`` and
``db_ctdb_transaction_commit``): under the g_lock ``transaction_db_0x%08x`` it reads locally,
buffers each write as a ``ctdb_rec_data`` whose data is a new ltdb header (the old one with
``rsn + 1`` and ``dmaster`` = its node) plus the value (a delete is an empty value; a key may
appear several times, each with a higher rsn), adds ``__db_sequence_number__\\0`` = old + 1 as the
last write, and sends the ``ctdb_marshall_buffer`` {u32 db_id, u32 count, records} as
TRANS3_COMMIT (header srvid = db_id). On **any** non-zero status it re-reads its local seqnum:
unchanged -> it sends the same commit again at once; old + 1 -> success (a recovery completed the
commit); anything else -> the transaction fails. So statuses 1, 2 and -1 mean the same to smbd;
what matters is that when the answer is not 0 every node holds either the old or the new copy.

The daemon (``ctdb/server/ctdb_persistent.c``, ``ctdb_update_record.c``, Samba 4.17.12):

* TRANS3_COMMIT is refused (-1) while recovery is active, when the client already has a commit in
  flight, for an unknown database, and while another commit of that database is in flight;
* it sends UPDATE_RECORD (the payload unchanged) to every vnnmap node that is not INACTIVE,
  itself included; no such node: answered 0 at once;
* a node's reply arriving while recovery is active is ignored; a failed reply (non-zero, or
  -1 "node is disconnected" / "ctdb_control timed out" for a node that went away) sets this
  node's recovery mode ACTIVE, so the leader recovers, and the commit is not answered then;
  when all replied 0 the answer is 0;
* END_RECOVERY (with recovery mode NORMAL again) answers every commit still in flight with
  status 2, "trans3 commit ended by recovery": persistent recovery copies the database of the
  node with the highest ``__db_sequence_number__`` to all, so the commit is either everywhere
  or nowhere;
* ControlTimeout (60 s) without recovery: status 1, "timeout in ctdb_persistent_state"; a
  timeout that fires during recovery is ignored (END_RECOVERY answers);
* a client that disconnects with a commit in flight forces recovery; its commit is dropped;
* a node applying UPDATE_RECORD refuses (-1) during recovery, for an unknown or unhealthy
  database; otherwise it writes all records in one TDB transaction in a child (status 1 if that
  fails): a record is refused — and the whole transaction cancelled — if the stored copy has an
  rsn >= the new one *and different data*; for a volatile database (never from smbd) records
  that do not exist locally are skipped. A missing or short (< 24 bytes) stored value counts as
  rsn 0 with no data;
* ``__db_sequence_number__`` is an ordinary record to the daemon; only smbd bumps it, and
  recovery and GET_DB_SEQNUM read it (u64, 0 unless exactly 8 bytes; ``ctdb_get_db_seqnum``,
  which refuses -1 for an unknown database or one frozen without a recovery transaction).

Deviations, marked:

* **pyctdbd:** a TRANS3_COMMIT payload that does not parse (short buffer, a record shorter than its
  ltdb header) is refused with -1 before anything is sent; ctdbd sends it on and every node
  fails its transaction, which forces a recovery.
* **pyctdbd:** a node that disconnects while its reply is awaited counts as a failed reply at once
  (``NodeGone``); ctdbd fails such a daemon control only at ControlTimeout. Either way recovery
  follows and answers 2.
* **pyctdbd:** replies are tracked per node (a duplicate reply counts once); ctdbd counts them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Sequence

from ...config.tunables import Tunables
from ...protocol.errors import ProtocolError
from ...protocol.ltdb import DB_SEQNUM_TDB_KEY, LTDB_HEADER_SIZE, pack_record, unpack_seqnum
from ...protocol.types import LtdbHeader, RecBuffer
from ..node import Log
from .registry import ClientGone, DbInfo, ForceRecovery, SetRecoveryMode, Tick

#: TRANS3_COMMIT answers.
COMMIT_OK = 0
COMMIT_REFUSED = -1
COMMIT_TIMEOUT = 1
COMMIT_ENDED_BY_RECOVERY = 2
#: UPDATE_RECORD answers: refused at once, or the node's transaction failed.
UPDATE_REFUSED = -1
UPDATE_FAILED = 1

Ticket = Hashable


# -- the payload -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CommitRecord:
    key: bytes
    header: LtdbHeader
    data: bytes


def parse_commit(payload: bytes) -> tuple[int, list[CommitRecord]]:
    """A TRANS3_COMMIT / UPDATE_RECORD payload as (db_id, records); ProtocolError if it is not a
    marshall buffer of records that each start with an ltdb header."""
    buffer = RecBuffer.unpack(payload)
    records = []
    for index, rec in enumerate(buffer.records):
        if len(rec.data) < LTDB_HEADER_SIZE:
            raise ProtocolError(f"commit record {index}: {len(rec.data)} bytes of data, "
                                f"less than the {LTDB_HEADER_SIZE}-byte ltdb header")
        header, data = rec.split_header()
        records.append(CommitRecord(rec.key, header, data))
    return buffer.db_id, records


def commit_seqnum(records: Iterable[CommitRecord]) -> int | None:
    """The ``__db_sequence_number__`` a commit writes (its last such record), or None."""
    value = None
    for rec in records:
        if rec.key == DB_SEQNUM_TDB_KEY:
            value = unpack_seqnum(rec.data)
    return value


# -- what a node may write -------------------------------------------------------------------
class UpdateRefused(Exception):
    """An UPDATE_RECORD record may not be written: the transaction must be cancelled."""


def rsn_refusal(db_id: int, current: bytes | None, record: CommitRecord) -> str | None:
    """Why `record` may not replace the stored value `current` (None: it may): the stored rsn
    is >= the new one and the data differ (``ctdb_persistent_store``)."""
    if current is None or len(current) < LTDB_HEADER_SIZE:
        old_rsn, old_data = 0, b""
    else:
        old_rsn, old_data = LtdbHeader.split(current)[0].rsn, current[LTDB_HEADER_SIZE:]
    if old_rsn >= record.header.rsn and bytes(old_data) != record.data:
        return (f"existing header for db_id 0x{db_id:08x} has larger RSN {old_rsn} than new RSN "
                f"{record.header.rsn} in ctdb_persistent_store")
    return None


def plan_update(db_id: int, records: Sequence[CommitRecord], fetch: Callable[[bytes], bytes | None],
                *, volatile: bool) -> list[tuple[bytes, bytes]]:
    """The (key, stored value) writes of one UPDATE_RECORD, in order, given `fetch(key)` -> the
    value stored now (None if absent). Earlier records of the same buffer count as stored.
    Raises UpdateRefused on an rsn regression (write nothing then)."""
    written: dict[bytes, bytes] = {}
    out = []
    for record in records:
        current = written[record.key] if record.key in written else fetch(record.key)
        if volatile and not current:
            continue                     # UPDATE_FLAGS_REPLACE_ONLY
        why = rsn_refusal(db_id, current, record)
        if why is not None:
            raise UpdateRefused(why)
        value = pack_record(record.header, record.data)
        written[record.key] = value
        out.append((record.key, value))
    return out


def update_record_refusal(db: DbInfo | None, db_id: int, *, recovery_active: bool) -> str | None:
    """Why this node refuses an UPDATE_RECORD at once (status -1), or None."""
    if recovery_active:
        return "rejecting ctdb_control_update_record when recovery active"
    if db is None:
        return f"Unknown database 0x{db_id:08x} in ctdb_control_update_record"
    if db.unhealthy_reason is not None:
        return f"db({db.name}) unhealty in ctdb_control_update_record: {db.unhealthy_reason}"
    return None


def db_seqnum_refusal(db: DbInfo | None, db_id: int, *, frozen: bool,
                      transaction_started: bool) -> str | None:
    """Why GET_DB_SEQNUM answers -1, or None (the value is then ``store.Database.db_seqnum()``)."""
    if db is None:
        return f"Unknown db 0x{db_id:08x}"
    if frozen and not transaction_started:
        return f"db {db.name} is frozen"
    return None


# -- the commits in flight -------------------------------------------------------------------
@dataclass(frozen=True)
class PersistentSettings:
    control_timeout: float = 60.0      # ControlTimeout, s

    @classmethod
    def from_tunables(cls, tunables: Tunables) -> PersistentSettings:
        return cls(control_timeout=float(tunables.get("ControlTimeout")))


@dataclass(frozen=True)
class Start:
    """A TRANS3_COMMIT from `client_id`. `targets`: the vnnmap nodes that are not INACTIVE
    (this node among them if it is). `known_dbs`: the db_ids this node has attached."""

    commit_id: Ticket
    client_id: int
    payload: bytes
    targets: tuple[int, ...]
    known_dbs: frozenset[int]


@dataclass(frozen=True)
class NodeReplied:
    """A node's (or this node's own) answer to the commit's UPDATE_RECORD."""

    commit_id: Ticket
    pnn: int
    status: int
    error: str | None = None


@dataclass(frozen=True)
class NodeGone:
    """Node `pnn` disconnected."""

    pnn: int


@dataclass(frozen=True)
class RecoveryEnded:
    """END_RECOVERY arrived (after SET_RECMODE NORMAL)."""


Event = Start | NodeReplied | NodeGone | SetRecoveryMode | RecoveryEnded | ClientGone | Tick


@dataclass(frozen=True)
class Reply:
    """Answer the TRANS3_COMMIT control `commit_id`."""

    commit_id: Ticket
    status: int
    error: str | None = None


@dataclass(frozen=True)
class SendUpdateRecord:
    """Send UPDATE_RECORD with `payload` to node `pnn`; feed its answer as NodeReplied."""

    commit_id: Ticket
    pnn: int
    payload: bytes


@dataclass(frozen=True)
class ApplyUpdateRecord:
    """Apply `payload` on this node as an UPDATE_RECORD from itself (update_record_refusal,
    then plan_update inside a TDB transaction); feed the status as NodeReplied(my_pnn)."""

    commit_id: Ticket
    payload: bytes


Action = Reply | SendUpdateRecord | ApplyUpdateRecord | ForceRecovery | Log


@dataclass
class _Commit:
    commit_id: Ticket
    client_id: int
    db_id: int
    waiting: set[int]
    deadline: float | None
    failed: bool = False


@dataclass
class PersistentCommits:
    my_pnn: int
    settings: PersistentSettings = field(default_factory=PersistentSettings)
    recovery_active: bool = True
    _commits: dict[Ticket, _Commit] = field(default_factory=dict)

    def in_flight(self) -> list[Ticket]:
        return list(self._commits)

    def next_deadline(self) -> float | None:
        times = [c.deadline for c in self._commits.values() if c.deadline is not None]
        return min(times) if times else None

    def step(self, event: Event, now: float) -> list[Action]:
        return _HANDLERS[type(event)](self, event, now)

    # -- a commit starts -------------------------------------------------------------------------
    def _start(self, ev: Start, now: float) -> list[Action]:
        if self.recovery_active:
            return self._refuse(ev.commit_id, "rejecting ctdb_control_trans3_commit when recovery "
                                              "active", logging.INFO)
        try:
            db_id, _ = parse_commit(ev.payload)
        except ProtocolError as exc:
            return self._refuse(ev.commit_id, f"trans3_commit: bad payload: {exc}")
        for other in self._commits.values():
            if other.client_id == ev.client_id:
                return self._refuse(ev.commit_id, f"trans3_commit: client {ev.client_id} has a commit "
                                                  f"active on db 0x{other.db_id:08x}")
        if db_id not in ev.known_dbs:
            return self._refuse(ev.commit_id, "ctdb_control_trans3_commit: Unknown database "
                                              f"db_id[0x{db_id:08x}]")
        if any(c.db_id == db_id for c in self._commits.values()):
            return self._refuse(ev.commit_id, "ctdb_control_trans3_commit called while a "
                                              f"transaction commit is active. db_id[0x{db_id:08x}]")
        targets = list(dict.fromkeys(ev.targets))
        if not targets:
            return [Reply(ev.commit_id, COMMIT_OK)]
        commit = _Commit(ev.commit_id, ev.client_id, db_id, set(targets),
                         now + self.settings.control_timeout)
        self._commits[ev.commit_id] = commit
        return [ApplyUpdateRecord(ev.commit_id, ev.payload) if pnn == self.my_pnn
                else SendUpdateRecord(ev.commit_id, pnn, ev.payload) for pnn in targets]

    @staticmethod
    def _refuse(commit_id: Ticket, why: str, level: int = logging.ERROR) -> list[Action]:
        return [Log(level, why), Reply(commit_id, COMMIT_REFUSED, why)]

    # -- answers ---------------------------------------------------------------------------------
    def _node_replied(self, ev: NodeReplied, now: float) -> list[Action]:
        commit = self._commits.get(ev.commit_id)
        if commit is None or ev.pnn not in commit.waiting:
            return []
        if self.recovery_active:
            return [Log(logging.INFO, "ctdb_persistent_callback: ignoring reply during recovery")]
        if ev.status != 0:
            return self._failed(commit, f"ctdb_persistent_callback failed with status {ev.status} "
                                        f"({ev.error or 'no error message given'}) from node {ev.pnn}")
        commit.waiting.discard(ev.pnn)
        if commit.waiting or commit.failed:
            return []
        del self._commits[commit.commit_id]
        return [Reply(commit.commit_id, COMMIT_OK)]

    def _failed(self, commit: _Commit, why: str) -> list[Action]:
        """A node could not apply the commit: recovery will make the copies equal again and
        END_RECOVERY answers the commit."""
        commit.failed = True
        self.recovery_active = True
        return [Log(logging.ERROR, why), ForceRecovery(f"trans3 commit on db 0x{commit.db_id:08x} "
                                                       "failed on a node")]

    def _node_gone(self, ev: NodeGone, now: float) -> list[Action]:
        if self.recovery_active:
            return []
        actions: list[Action] = []
        for commit in self._commits.values():
            if ev.pnn in commit.waiting and not commit.failed:
                actions += self._failed(commit, f"ctdb_persistent_callback failed with status -1 "
                                                f"(node {ev.pnn} is disconnected)")
        return actions

    # -- recovery, clients, time -----------------------------------------------------------------
    def _set_recovery_mode(self, ev: SetRecoveryMode, now: float) -> list[Action]:
        self.recovery_active = ev.active
        return []

    def _recovery_ended(self, ev: RecoveryEnded, now: float) -> list[Action]:
        if self.recovery_active:
            return [Log(logging.INFO, "ctdb_persistent_finish_trans3_commits: skipping execution "
                                      "when recovery is active")]
        actions: list[Action] = []
        for commit in self._commits.values():
            actions.append(Reply(commit.commit_id, COMMIT_ENDED_BY_RECOVERY,
                                 "trans3 commit ended by recovery"))
        self._commits.clear()
        return actions

    def _client_gone(self, ev: ClientGone, now: float) -> list[Action]:
        for commit in list(self._commits.values()):
            if commit.client_id == ev.client_id:
                del self._commits[commit.commit_id]
                self.recovery_active = True
                return [Log(logging.ERROR, "client exit while transaction commit active. Forcing "
                                           "recovery."),
                        ForceRecovery(f"client {ev.client_id} left during a trans3 commit")]
        return []

    def _tick(self, ev: Tick, now: float) -> list[Action]:
        actions: list[Action] = []
        for commit in list(self._commits.values()):
            if commit.deadline is None or commit.deadline > now:
                continue
            commit.deadline = None
            if self.recovery_active:
                actions.append(Log(logging.INFO, "ctdb_persistent_store_timeout: ignoring timeout "
                                                 "during recovery"))
                continue
            del self._commits[commit.commit_id]
            actions.append(Reply(commit.commit_id, COMMIT_TIMEOUT, "timeout in ctdb_persistent_state"))
        return actions


_HANDLERS = {
    Start: PersistentCommits._start, NodeReplied: PersistentCommits._node_replied,
    NodeGone: PersistentCommits._node_gone, SetRecoveryMode: PersistentCommits._set_recovery_mode,
    RecoveryEnded: PersistentCommits._recovery_ended, ClientGone: PersistentCommits._client_gone,
    Tick: PersistentCommits._tick,
}
