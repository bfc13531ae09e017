"""The leader's recovery of the cluster's databases, as rules and data: which databases to recover
and where each is missing, the per-database plan, the merge of pulled records and the record
buffers to push. The shell that sends the controls and messages is ``server/db_recovery_driver.py``;
each node's side of the controls is :mod:`.recovery_node`.

CTDB's rules, Samba 4.17.12 ``ctdb/server/ctdb_recovery_helper.c``:

* **Databases** (``recovery_dbmap_done``, ``db_list_check_and_add``): the union of every recovered
  node's GET_DBMAP, with READONLY and STICKY masked out (they are set only where a client
  attached). The same db_id with other flags on two nodes fails the recovery ("Incompatible
  database flags").
* **Per database** (``recover_db_send``), all databases at once, each tried NUM_RETRIES (3) times:
  GET_DBNAME on the nodes that have it (names must agree; a node that disagrees earns a ban
  credit); DB_ATTACH / _PERSISTENT / _REPLICATED with the ATTACH_RECOVERY control flag on the
  nodes that lack it; DB_FREEZE on all; DB_TRANSACTION_START ``{db_id, tid = generation}``;
  collect; WIPE_DATABASE; push; DB_TRANSACTION_COMMIT; DB_THAW.
* **Collect, volatile** (``collect_all_db_send``, ``recdb_add_traverse``): DB_PULL from every node
  in node order into one record set. A pulled record replaces the one held if its rsn is higher,
  or equal and the held copy's dmaster is the leader (the node running the recovery). A record
  shorter than its 24-byte header fails that pull (pyctdbd: see below). **Persistent and replicated**
  (``collect_highseqnum_db_send``): GET_DB_SEQNUM on every node; the first node with the highest
  ``__db_sequence_number__`` (comparison starts at 0 with the first node) is the only one pulled.
  A pull whose reply count differs from the records received fails (EIO); the failing node earns
  a ban credit.
* **Push** (``recbuf_filter_add``, ``recdb_file``, ``push_database_send``): records without a value
  (header only) are dropped; volatile records get ``dmaster = leader`` and MIGRATED_WITH_DATA;
  persistent ones go as they are. A buffer is sent once its length exceeds RecBufferSizeLimit;
  the last one is always sent, even empty. DB_PUSH_START ``{db_id, srvid}`` on every node, the
  buffers as messages to that srvid, then DB_PUSH_CONFIRM: every node must have stored exactly
  the records sent (EPROTO).
* **Srvids**: CTDB_SRVID_RECOVERY (0xF001000000000000) + n, one per pull and per push.

Deviations, marked:

* **pyctdbd:** a database that fails all its attempts has its transaction cancelled on every
  node (the helper leaves it open; the next DB_TRANSACTION_START cancels it). Like ctdbd, it
  stays frozen until a later recovery thaws it: smbd must not write into a half-recovered
  database.
* **pyctdbd:** the ban credits are returned to the caller (the leader's scheduler); the helper
  bans the node with NUM_RETRIES credits itself.
* **pyctdbd:** a pulled record shorter than its ltdb header is dropped and counted
  (``RecordSet.dropped``); the helper fails the pull, so one such record — only a misbehaving
  client writes one — fails every recovery until the node holding it is banned. Nodes still
  send such records in DB_PULL, as ctdbd does, and refuse them in a push.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ...protocol.constants import Control, DbFlag, RecordFlag, Srvid
from ...protocol.ltdb import LTDB_HEADER_SIZE, unpack_header
from ...protocol.types import LtdbHeader, RecBuffer, RecData, TransDb
from .registry import attach_opcode

NUM_RETRIES = 3
#: READONLY and STICKY only exist where a client attached: not compared, not attached with.
MASKED_FLAGS = int(DbFlag.READONLY | DbFlag.STICKY)
REPLICATED_KINDS = int(DbFlag.PERSISTENT | DbFlag.REPLICATED)
MIGRATED_WITH_DATA = int(RecordFlag.MIGRATED_WITH_DATA)
RECOVERY_SRVID_BASE = Srvid.RECOVERY


class PlanError(Exception):
    """The recovery cannot go on; `culprit` is the node to blame, if one is."""

    def __init__(self, text: str, culprit: int | None = None) -> None:
        super().__init__(text)
        self.culprit = culprit


@dataclass(frozen=True)
class DbToRecover:
    db_id: int
    flags: int                   # READONLY / STICKY masked out
    holders: tuple[int, ...]     # the nodes that have it, in node order

    @property
    def by_seqnum(self) -> bool:
        """Persistent or replicated: the copy of the node with the highest seqnum wins."""
        return bool(self.flags & REPLICATED_KINDS)


def union_dbmaps(dbmaps: Sequence[tuple[int, Sequence[tuple[int, int]]]]) -> list[DbToRecover]:
    """`dbmaps`: (pnn, [(db_id, flags), ...]) per node in node order. The databases in the order
    first seen; PlanError on a db_id with different flags on two nodes."""
    order: list[int] = []
    flags: dict[int, int] = {}
    holders: dict[int, list[int]] = {}
    for pnn, dbs in dbmaps:
        for db_id, db_flags in dbs:
            db_flags = int(db_flags) & ~MASKED_FLAGS
            if db_id not in flags:
                order.append(db_id)
                flags[db_id] = db_flags
                holders[db_id] = []
            elif flags[db_id] != db_flags:
                raise PlanError(f"Incompatible database flags for 0x{db_id:x} "
                                f"(0x{db_flags:x} != 0x{flags[db_id]:x})")
            if pnn not in holders[db_id]:
                holders[db_id].append(pnn)
    return [DbToRecover(d, flags[d], tuple(holders[d])) for d in order]


def agreed_name(db_id: int, names: Sequence[tuple[int, str]]) -> str:
    """GET_DBNAME's answers (pnn, name) in node order must agree; PlanError names the first
    node that disagrees with the first answer."""
    if not names:
        raise PlanError(f"no node has database 0x{db_id:08x}")
    first = names[0][1]
    for pnn, name in names[1:]:
        if name != first:
            raise PlanError(f"Incompatible database name for 0x{db_id:x} ({name} != {first}) "
                            f"on node {pnn}", culprit=pnn)
    return first


def seqnum_source(seqnums: Sequence[tuple[int, int]]) -> int:
    """The node to pull a persistent database from: (pnn, seqnum) in node order -> the first
    node with the highest seqnum (the first node if all are 0)."""
    if not seqnums:
        raise PlanError("no seqnum answers")
    best_pnn, best = seqnums[0][0], 0
    for pnn, seqnum in seqnums:
        if best < seqnum:
            best_pnn, best = pnn, seqnum
    return best_pnn


@dataclass(frozen=True)
class DbRecoveryPlan:
    """One database's recovery: `nodes` get every control; `attach_to` lack the database and get
    `attach_opcode` (with ATTACH_RECOVERY) first; `transdb` is the transaction (tid = the new
    generation); `by_seqnum` tells how to collect."""

    db_id: int
    flags: int
    nodes: tuple[int, ...]
    holders: tuple[int, ...]
    attach_to: tuple[int, ...]
    attach_opcode: Control
    transdb: TransDb
    by_seqnum: bool

    @property
    def volatile(self) -> bool:
        return not self.by_seqnum


def plan_database(db: DbToRecover, nodes: Sequence[int], generation: int) -> DbRecoveryPlan:
    nodes = tuple(nodes)
    return DbRecoveryPlan(db.db_id, db.flags, nodes, db.holders,
                          tuple(p for p in nodes if p not in db.holders), attach_opcode(db.flags),
                          TransDb(db.db_id, generation), db.by_seqnum)


class RecordSet:
    """The helper's recdb: the records collected for one database, merged by ctdbd's rule.
    `leader` is the pnn of the node running the recovery."""

    def __init__(self, db_id: int, leader: int) -> None:
        self.db_id = db_id
        self.leader = leader
        self.records: dict[bytes, bytes] = {}      # key -> header + value
        self.dropped = 0                           # records shorter than their header

    def __len__(self) -> int:
        return len(self.records)

    def add(self, key: bytes, data: bytes) -> None:
        """One pulled record (one shorter than its header is dropped and counted)."""
        if len(data) < LTDB_HEADER_SIZE:
            self.dropped += 1
            return
        prev = self.records.get(key)
        if prev is not None:
            rsn = unpack_header(data).rsn
            held = unpack_header(prev)
            if rsn < held.rsn or (rsn == held.rsn and held.dmaster != self.leader):
                return
        self.records[key] = data

    def add_buffer(self, buffer: RecBuffer) -> int:
        """A DB_PULL message's records; PlanError for another database's records. Returns the
        number of records in the buffer (dropped ones included: they were received)."""
        if buffer.db_id != self.db_id:
            raise PlanError(f"Invalid dbid:{buffer.db_id:08x} for DB_PULL messages for "
                            f"0x{self.db_id:08x}")
        for rec in buffer.records:
            self.add(rec.key, rec.data)
        return len(buffer.records)

    def push_buffers(self, *, volatile: bool, limit: int) -> Iterator[tuple[bytes, int]]:
        """The DB_PUSH messages: (ctdb_rec_buffer payload, records in it)."""
        batcher = PushBatcher(self.db_id, limit)
        for key, data in self.records.items():
            rec = push_record(key, data, volatile=volatile, leader=self.leader)
            if rec is not None:
                full = batcher.add(rec)
                if full is not None:
                    yield full
        yield batcher.finish()


def push_record(key: bytes, data: bytes, *, volatile: bool, leader: int) -> RecData | None:
    """``recbuf_filter_add``: None for a record without a value; a volatile record gets
    dmaster = leader and MIGRATED_WITH_DATA."""
    if len(data) <= LTDB_HEADER_SIZE:
        return None
    if volatile:
        header, value = LtdbHeader.split(data)
        header.dmaster = leader
        header.flags |= MIGRATED_WITH_DATA
        data = header.pack() + value
    return RecData(0, key, data)


class PushBatcher:
    """Cuts the pushed records into buffers: one is full once its length exceeds `limit`; the
    last one always goes (``recdb_file``)."""

    def __init__(self, db_id: int, limit: int) -> None:
        self.db_id = db_id
        self.limit = limit
        self.batch: list[RecData] = []
        self.size = 8

    def add(self, rec: RecData) -> tuple[bytes, int] | None:
        """Add a record; a full buffer (payload, records) to send, or None."""
        self.batch.append(rec)
        self.size += RecData.HEAD_SIZE + len(rec.key) + len(rec.data)
        if self.size > self.limit:
            return self.finish()
        return None

    def finish(self) -> tuple[bytes, int]:
        """The buffer as it is (perhaps empty), and a fresh one started."""
        batch, self.batch, self.size = self.batch, [], 8
        return RecBuffer(self.db_id, batch).pack(), len(batch)


class SrvidPool:
    """CTDB_SRVID_RECOVERY + n, n counting up from `start` (srvid_next)."""

    def __init__(self, start: int = 0) -> None:
        self.n = start

    def next(self) -> int:
        self.n = (self.n + 1) & 0xFFFFFFFFFFFF
        return RECOVERY_SRVID_BASE + self.n
