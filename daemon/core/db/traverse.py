"""Cluster-wide traverses, as decisions. Both ends live here: the node whose client asked
(TRAVERSE_START / TRAVERSE_START_EXT: it fans TRAVERSE_ALL out, relays the records to the client
and ends the traverse) and every node that walks its own copy (TRAVERSE_ALL / TRAVERSE_ALL_EXT:
it sends its records back as TRAVERSE_DATA). ``Traverses.step(event, now) -> actions``; the
shell walks the TDB in a forked child (``store.Database.traverse``) and moves the packets.

CTDB's rules (Samba 4.17.12, ``ctdb/server/ctdb_traverse.c``; smbd's side
``source3/lib/ctdbd_conn.c`` ``ctdbd_traverse``):

* TRAVERSE_START {db_id, reqid, srvid} is TRAVERSE_START_EXT with withemptyrecords false. It is
  refused (-1) for an unknown database, and for an unhealthy one unless AllowUnhealthyDBRead;
  otherwise answered 0 at once and the records follow as messages.
* The originator allocates a reqid of its own and sends TRAVERSE_ALL {db_id, reqid, pnn = itself,
  client_reqid, srvid} — TRAVERSE_ALL_EXT (with withemptyrecords) only when empty records were
  asked for — NOREPLY, to: every active node (BROADCAST_ACTIVE: nodes not INACTIVE, itself
  included if it is active) for a volatile database; for a persistent or replicated one to itself
  only, or, when it is not in the vnnmap, to ``vnnmap[0]``.
* A node receiving TRAVERSE_ALL does not look at its own state: it refuses an unknown database
  and an unhealthy one (unless AllowUnhealthyDBRead), else forks a child that walks the file
  (``tdb_traverse_read``) and sends each record to the originator as TRAVERSE_DATA, a
  ``ctdb_rec_data`` {length, reqid = the originator's reqid, keylen, datalen, key, data = ltdb
  header + value}, then an end marker (same reqid, empty key and data) — also after a failed
  walk. Volatile databases send only records this node is dmaster of, and only non-empty ones
  (value longer than the 24-byte header) unless withemptyrecords. Persistent: every record,
  ``__db_sequence_number__`` included.
* The originator relays each record to the client as a REQ_MESSAGE to ``srvid`` (delivered to
  whichever local client registered it), payload a ``ctdb_rec_data`` with reqid = the
  *client's* reqid and the same key and data. For a volatile database it counts end markers and
  ends when the count equals the number of active nodes *then*; for the others the first end
  marker ends it. The end is the same message with empty key and data. smbd reads messages until
  it gets one (``ctdb timeout`` 0: for ever), and fails (EIO) on a record whose data is shorter
  than an ltdb header.
* TraverseTimeout (20 s) after the start the client gets the end marker anyway, and
  TRAVERSE_KILL {db_id, client_reqid, srvid} goes (NOREPLY) to every connected node, which stops
  its walks with that client_reqid and srvid. A client that disconnects mid-traverse causes the
  same TRAVERSE_KILL. Data for an unknown (finished) reqid is dropped.

Deviations, marked:

* **pyctdbd:** end markers are counted per node: the traverse ends when every node it was sent to
  has sent its end or has gone (``NodeGone``: disconnected, or no longer active); ctdbd counts
  markers against the active-node count of the moment, so a node that dies mid-traverse makes
  the client wait for the full TraverseTimeout, and a node turning inactive can end the
  traverse before a slower node finished. Records from a node that already ended or is not a
  target are dropped.
* **pyctdbd:** a traverse with no node to ask (no active node; empty vnnmap) ends at once; ctdbd
  waits for the timeout.
* **pyctdbd:** a node that refuses TRAVERSE_ALL (unknown or unhealthy database) still sends its
  end marker, so the originator need not wait for the timeout; the client sees the records the
  other nodes had, as it would after ctdbd's timeout.
* **pyctdbd:** a stored value shorter than the 24-byte header is not a record (``ctdb_ltdb``'s own
  rule) and is never sent; ctdbd sends it and smbd then fails with EIO.
* **pyctdbd:** when a database is detached (``DatabaseGone``) its traverses end at once with the
  end marker; ctdbd stops the local walks and lets the originator time out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Hashable

from ...config.tunables import Tunables
from ...log import NOTICE
from ...protocol.ltdb import LTDB_HEADER_SIZE
from ...protocol.types import (
    LtdbHeader, RecData, TraverseAll, TraverseAllExt, TraverseStart, TraverseStartExt,
)
from ..node import Log
from .registry import ClientGone, DbInfo, Tick

Ticket = Hashable
_U32 = 0xFFFFFFFF


def wanted_record(value: bytes, *, volatile: bool, with_empty: bool, my_pnn: int) -> bool:
    """Whether a node's walk sends this stored value (ctdb_traverse_local_fn)."""
    if len(value) < LTDB_HEADER_SIZE:
        return False                            # pyctdbd: not a record at all
    if not volatile:
        return True
    if len(value) == LTDB_HEADER_SIZE and not with_empty:
        return False
    return LtdbHeader.unpack_from(value, 0)[0].dmaster == my_pnn


def end_marker(reqid: int) -> RecData:
    return RecData(reqid, b"", b"")


def is_end_marker(rec: RecData) -> bool:
    return not rec.key and not rec.data


@dataclass(frozen=True)
class TraverseSettings:
    timeout: float = 20.0                # TraverseTimeout, s
    allow_unhealthy_read: bool = False   # AllowUnhealthyDBRead

    @classmethod
    def from_tunables(cls, tunables: Tunables) -> TraverseSettings:
        return cls(timeout=float(tunables.get("TraverseTimeout")),
                   allow_unhealthy_read=tunables.get("AllowUnhealthyDBRead") != 0)


# -- events ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StartTraverse:
    """TRAVERSE_START(_EXT) from local client `client_id` (a TraverseStart is taken as
    withemptyrecords false). `db`: the registry's entry for request.db_id. `active_nodes`:
    nodes not INACTIVE (this one included if it is); `vnnmap`: the current vnnmap."""

    ticket: Ticket
    client_id: int
    request: TraverseStartExt | TraverseStart
    db: DbInfo | None
    active_nodes: tuple[int, ...]
    vnnmap: tuple[int, ...]


@dataclass(frozen=True)
class TraverseAllReceived:
    """TRAVERSE_ALL(_EXT) from another node. `db`: the registry's entry for request.db_id."""

    request: TraverseAll | TraverseAllExt
    db: DbInfo | None


@dataclass(frozen=True)
class TraverseData:
    """TRAVERSE_DATA from node `src` (this node's own walk: src = my_pnn)."""

    src: int
    record: RecData


@dataclass(frozen=True)
class TraverseKill:
    """TRAVERSE_KILL from a node: stop walks for (db_id, client reqid, srvid)."""

    request: TraverseStart


@dataclass(frozen=True)
class LocalTraverseDone:
    """The walk `handle` ended (its end marker was sent, or it died)."""

    handle: int


@dataclass(frozen=True)
class NodeGone:
    """Node `pnn` disconnected or is no longer active."""

    pnn: int


@dataclass(frozen=True)
class DatabaseGone:
    db_id: int


Event = (StartTraverse | TraverseAllReceived | TraverseData | TraverseKill | LocalTraverseDone
         | NodeGone | DatabaseGone | ClientGone | Tick)


# -- actions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """Answer the TRAVERSE_START(_EXT) control `ticket` — before any message of its traverse."""

    ticket: Ticket
    status: int
    error: str | None = None


@dataclass(frozen=True)
class SendTraverseAll:
    """Send TRAVERSE_ALL (TraverseAll) or TRAVERSE_ALL_EXT (TraverseAllExt), NOREPLY, to `pnn`."""

    pnn: int
    request: TraverseAll | TraverseAllExt


@dataclass(frozen=True)
class RunLocalTraverse:
    """Walk the local copy of `db_id` in a child: for each (key, value) with ``wants(value)``
    send ``record(key, value)`` as TRAVERSE_DATA (NOREPLY) to `dest`, then ``end()`` — also
    if the walk failed — and feed LocalTraverseDone(handle). When `dest` is this node, feed
    TraverseData(my_pnn, ...) instead of sending."""

    handle: int
    db_id: int
    dest: int
    reqid: int
    volatile: bool
    with_empty: bool
    my_pnn: int

    def wants(self, value: bytes) -> bool:
        return wanted_record(value, volatile=self.volatile, with_empty=self.with_empty,
                             my_pnn=self.my_pnn)

    def record(self, key: bytes, value: bytes) -> RecData:
        return RecData(self.reqid, bytes(key), bytes(value))

    def end(self) -> RecData:
        return end_marker(self.reqid)


@dataclass(frozen=True)
class SendTraverseData:
    """Send TRAVERSE_DATA (NOREPLY) with `record` to node `dest`."""

    dest: int
    record: RecData


@dataclass(frozen=True)
class StopLocalTraverse:
    """Kill the walk `handle` (no end marker); no LocalTraverseDone is needed."""

    handle: int


@dataclass(frozen=True)
class MessageClient:
    """REQ_MESSAGE to the local client(s) registered for `srvid`, data ``record.pack()``."""

    srvid: int
    record: RecData


@dataclass(frozen=True)
class BroadcastTraverseKill:
    """Send TRAVERSE_KILL (NOREPLY) to every connected node but this one."""

    request: TraverseStart


Action = (Reply | SendTraverseAll | RunLocalTraverse | SendTraverseData | StopLocalTraverse
          | MessageClient | BroadcastTraverseKill | Log)


@dataclass
class _Walk:
    """A walk of the local copy on behalf of an originator."""

    db_id: int
    client_reqid: int
    srvid: int


@dataclass
class _Traverse:
    """A traverse this node's client started."""

    reqid: int
    client_id: int
    db: DbInfo
    client_reqid: int
    srvid: int
    waiting: set[int]
    deadline: float
    records: int = 0


@dataclass
class Traverses:
    my_pnn: int
    settings: TraverseSettings = field(default_factory=TraverseSettings)
    _mine: dict[int, _Traverse] = field(default_factory=dict)
    _walks: dict[int, _Walk] = field(default_factory=dict)
    _next_reqid: int = 1
    _next_handle: int = 1

    # -- queries ---------------------------------------------------------------------------------
    def active(self) -> list[int]:
        """The reqids of the traverses this node's clients are waiting for."""
        return list(self._mine)

    def walks(self) -> list[int]:
        return list(self._walks)

    def next_deadline(self) -> float | None:
        return min((t.deadline for t in self._mine.values()), default=None)

    def step(self, event: Event, now: float) -> list[Action]:
        return _HANDLERS[type(event)](self, event, now)

    # -- the originator --------------------------------------------------------------------------
    def _start(self, ev: StartTraverse, now: float) -> list[Action]:
        req = ev.request
        with_empty = isinstance(req, TraverseStartExt) and req.withemptyrecords
        db = ev.db
        if db is None or db.db_id != req.db_id:
            return self._refuse(ev.ticket, f"Unknown db 0x{req.db_id:08x} in traverse start")
        if db.unhealthy_reason is not None:
            if not self.settings.allow_unhealthy_read:
                return self._refuse(ev.ticket, f"db({db.name}) unhealty in ctdb_control_traverse_start: "
                                               f"{db.unhealthy_reason}")
        if db.volatile:
            targets = list(dict.fromkeys(ev.active_nodes))
        elif self.my_pnn in ev.vnnmap:
            targets = [self.my_pnn]
        else:
            targets = list(ev.vnnmap[:1])
        reqid = self._new_reqid()
        mine = _Traverse(reqid, ev.client_id, db, req.reqid, req.srvid, set(targets),
                         now + self.settings.timeout)
        self._mine[reqid] = mine
        actions: list[Action] = [Reply(ev.ticket, 0),
                                 Log(NOTICE, f"Starting traverse on DB {db.name} (id {reqid})")]
        if with_empty:
            request: TraverseAll | TraverseAllExt = TraverseAllExt(
                db.db_id, reqid, self.my_pnn, req.reqid, req.srvid, True)
        else:
            request = TraverseAll(db.db_id, reqid, self.my_pnn, req.reqid, req.srvid)
        for pnn in targets:
            if pnn == self.my_pnn:
                actions.append(self._walk(db, self.my_pnn, reqid, req.reqid, req.srvid, with_empty))
            else:
                actions.append(SendTraverseAll(pnn, request))
        if not targets:
            actions += self._finish(mine, timed_out=False)
        return actions

    @staticmethod
    def _refuse(ticket: Ticket, why: str) -> list[Action]:
        return [Log(logging.ERROR, why), Reply(ticket, -1, why)]

    def _new_reqid(self) -> int:
        while True:
            reqid = self._next_reqid
            self._next_reqid = self._next_reqid % _U32 + 1
            if reqid not in self._mine:
                return reqid

    def _data(self, ev: TraverseData, now: float) -> list[Action]:
        mine = self._mine.get(ev.record.reqid)
        if mine is None or ev.src not in mine.waiting:
            return []
        if is_end_marker(ev.record):
            mine.waiting.discard(ev.src)
            return [] if mine.waiting else self._finish(mine, timed_out=False)
        mine.records += 1
        return [MessageClient(mine.srvid, RecData(mine.client_reqid, ev.record.key, ev.record.data))]

    def _finish(self, mine: _Traverse, *, timed_out: bool) -> list[Action]:
        """Give the client its end marker; after a timeout also stop every node's walk."""
        del self._mine[mine.reqid]
        actions: list[Action] = [
            Log(NOTICE, f"Ending traverse on DB {mine.db.name} (id {mine.reqid}), records {mine.records}"),
            MessageClient(mine.srvid, end_marker(mine.client_reqid))]
        if timed_out:
            actions = [Log(logging.ERROR, f"Traverse all timeout on database:{mine.db.name}")] + actions
            actions += self._kill_everywhere(mine)
        return actions

    def _kill_everywhere(self, mine: _Traverse) -> list[Action]:
        kill = TraverseStart(mine.db.db_id, mine.client_reqid, mine.srvid)
        return self._kill_local(kill) + [BroadcastTraverseKill(kill)]

    def _node_gone(self, ev: NodeGone, now: float) -> list[Action]:
        actions: list[Action] = []
        for mine in list(self._mine.values()):
            if ev.pnn in mine.waiting:
                mine.waiting.discard(ev.pnn)
                if not mine.waiting:
                    actions += self._finish(mine, timed_out=False)
        return actions

    def _client_gone(self, ev: ClientGone, now: float) -> list[Action]:
        actions: list[Action] = []
        for mine in list(self._mine.values()):
            if mine.client_id == ev.client_id:
                del self._mine[mine.reqid]
                actions.append(Log(logging.ERROR, "Traverse cancelled by client disconnect for "
                                                  f"database:0x{mine.db.db_id:08x}"))
                actions += self._kill_everywhere(mine)
        return actions

    def _tick(self, ev: Tick, now: float) -> list[Action]:
        actions: list[Action] = []
        for mine in list(self._mine.values()):
            if mine.deadline <= now:
                actions += self._finish(mine, timed_out=True)
        return actions

    # -- every node: walks of the local copy -----------------------------------------------------
    def _traverse_all(self, ev: TraverseAllReceived, now: float) -> list[Action]:
        req = ev.request
        db = ev.db
        why = None
        if db is None or db.db_id != req.db_id:
            why = f"Unknown db 0x{req.db_id:08x} in ctdb_control_traverse_all"
        elif db.unhealthy_reason is not None and not self.settings.allow_unhealthy_read:
            why = f"db({db.name}) unhealty in ctdb_control_traverse_all: {db.unhealthy_reason}"
        if why is not None:
            # pyctdbd: answer with an end marker so the originator need not time out.
            return [Log(logging.ERROR, why)] + self._end_to(req.pnn, req.reqid)
        assert db is not None
        with_empty = isinstance(req, TraverseAllExt) and req.withemptyrecords
        return [self._walk(db, req.pnn, req.reqid, req.client_reqid, req.srvid, with_empty)]

    def _end_to(self, dest: int, reqid: int) -> list[Action]:
        """Just the end marker, to the originator (fed straight back when that is this node)."""
        end = end_marker(reqid)
        if dest == self.my_pnn:
            return self._data(TraverseData(dest, end), 0.0)
        return [SendTraverseData(dest, end)]

    def _walk(self, db: DbInfo, dest: int, reqid: int, client_reqid: int, srvid: int,
              with_empty: bool) -> RunLocalTraverse:
        handle = self._new_handle()
        self._walks[handle] = _Walk(db.db_id, client_reqid, srvid)
        return RunLocalTraverse(handle, db.db_id, dest, reqid, db.volatile, with_empty, self.my_pnn)

    def _new_handle(self) -> int:
        handle = self._next_handle
        self._next_handle += 1
        return handle

    def _kill(self, ev: TraverseKill, now: float) -> list[Action]:
        return self._kill_local(ev.request)

    def _kill_local(self, req: TraverseStart) -> list[Action]:
        actions: list[Action] = []
        for handle, walk in list(self._walks.items()):
            if (walk.db_id, walk.client_reqid, walk.srvid) == (req.db_id, req.reqid, req.srvid):
                del self._walks[handle]
                actions.append(StopLocalTraverse(handle))
        return actions

    def _walk_done(self, ev: LocalTraverseDone, now: float) -> list[Action]:
        self._walks.pop(ev.handle, None)
        return []

    def _database_gone(self, ev: DatabaseGone, now: float) -> list[Action]:
        actions: list[Action] = []
        for handle, walk in list(self._walks.items()):
            if walk.db_id == ev.db_id:
                del self._walks[handle]
                actions.append(StopLocalTraverse(handle))
        for mine in list(self._mine.values()):
            if mine.db.db_id == ev.db_id:
                actions += self._finish(mine, timed_out=False)
        return actions


_HANDLERS = {
    StartTraverse: Traverses._start, TraverseAllReceived: Traverses._traverse_all,
    TraverseData: Traverses._data, TraverseKill: Traverses._kill,
    LocalTraverseDone: Traverses._walk_done, NodeGone: Traverses._node_gone,
    DatabaseGone: Traverses._database_gone, ClientGone: Traverses._client_gone, Tick: Traverses._tick,
}
