"""Volatile record migration, as ctdbd 4.17 does it, behind one entry:
``MigrationCore.step(event, record, now) -> actions``.

Every record of a volatile database lives on exactly one authoritative node, its *dmaster*; the
record's *lmaster* (``vnnmap.map[jenkins(key) % size]``) always knows who that is. A node that
needs a record it does not hold sends a REQ_CALL; the dmaster gives the record up with a
REQ_DMASTER to the lmaster, which records the new owner and passes the record on with a
REPLY_DMASTER; the new owner stores it and answers its client. This core decides all of that;
the shell (``server/databases.py``) does the I/O.

The shell's contract
--------------------

* Feed every event through ``step``. For an event about one record — a ``LocalCall``, a
  ``Reissue``, a ``PeerPacket`` carrying REQ_CALL, REQ_DMASTER or REPLY_DMASTER —
  ``lock_target(event)`` names ``(db_id, key)``: take that chain lock (``Database.try_lock``, else
  ``await Database.lock``), read the record (``db.tdb.fetch_ltdb(key)``, None when missing), call
  ``step(event, record, now)``, carry out the actions in order, then unlock. ``lock_target`` is
  None for everything else (REPLY_CALL and REPLY_ERROR, which find their call by reqid; an unknown
  database; the global events): call ``step(event, None, now)`` without a lock.
* Keep the order of events per record: a packet that waits for a busy chain lock goes behind
  the ones that arrived before it for the same key (ctdbd's own per-key deferral,
  ``dmaster_defer_setup``, only exists to keep that order across its lock helper), and packets
  from one peer reach the core in the order sent (one TCP stream per direction does that). A
  REPLY_DMASTER must not be overtaken by a REQ_CALL sent after it.
* Requeued events are ordinary events: ask ``lock_target`` again when they come back.
* Actions: ``StoreRecord`` / ``DeleteRecord`` — write or delete that key (always the key of the
  event being handled, under its lock); ``ScheduleForDeletion`` / ``UnscheduleDeletion`` — put
  the key on the vacuum's queue or take it off (both may be ignored: a vacuum run checks the
  record again); ``SendPacket`` — encode ``body`` with the given destnode (never this node), srcnode
  (not always this node: a redirected REQ_CALL keeps its origin), reqid and generation, and send
  it; a packet for a node that is not connected is dropped (the call is re-sent after the
  recovery that follows);
  ``ReplyToClient`` — answer the local client (REPLY_CALL or REPLY_ERROR, the client's reqid;
  drop it if the client is gone); ``Requeue`` — feed the event again after ``delay`` seconds
  (0: on the next loop turn), through the same lock/read/step path, keeping the order of
  requeues; ``ForceRecovery`` — set recovery mode ACTIVE as ctdbd does; ``Log``.
* The background sweep after a membership change (``server/sweeper.py``, rules in
  :mod:`.sweep`) feeds ``SweptCopies`` (a record event: under the key's chain lock) and
  ``SweepFinished`` (without a lock); it asks ``settling.start_sweep`` for its plan.
* Also feed: ``DbAttached`` / ``DbDetached`` as the registry attaches and detaches databases,
  ``VnnMapChanged`` whenever a recovery installs a vnnmap, ``SetBanned`` with this node's ban,
  ``ClientGone`` when a local client disconnects, ``Tick`` about once a second.
* Local REQ_CALLs are ``LocalCall`` events (``client`` is the shell's token for the connection);
  node packets are ``PeerPacket`` events with the header's srcnode, reqid and generation.
* Statistics are read off ``core.stats`` and ``core.db_stats[db_id]`` (:mod:`.callstats`).

What ctdbd does, and this core too (``ctdb/server/ctdb_call.c``, ``ctdb_daemon.c``,
``ctdb_server.c``, ``ctdb_ltdb_server.c``, ``ctdb/common/ctdb_ltdb.c``; record rules in
:mod:`.ltdbrules`)
--------------------------------------------------------------------------------------------------

* A client call (``daemon_request_call_from_client``) reads the record; a missing one has the
  lmaster as dmaster. If this node is the dmaster the call runs here (``ctdb_call_local``: the
  call function, then a store, which bumps the rsn) and the client gets REPLY_CALL. Otherwise a
  REQ_CALL (hopcount 0, a new reqid, this node as srcnode) goes to the *believed* dmaster, the
  one in the local header. While it is under way, further client calls for the record wait and
  are re-run when it completes (FetchCollapse): one migration serves them all.
* A node that is not the dmaster redirects a REQ_CALL (``ctdb_call_send_redirect``): to the
  lmaster, or, when it is the lmaster, to the dmaster its header names; hopcount + 1; a warning
  when ``hopcount % 100 > 95``. There is no limit: MaxRedirectCount is obsolete in 4.17.
* The dmaster counts the hop count (``hop_count_bucket``, ``max_hop_count``, hot keys) and,
  for a call from another node, gives the record away whatever the call function and flags
  (IMMEDIATE_MIGRATION is not looked at; "a fetch is just as expensive as a migration"): data
  present sets MIGRATED_WITH_DATA; it stores its copy with the new dmaster and sends REQ_DMASTER
  {rsn, new dmaster, key, data, record flags} to the lmaster — or, being the lmaster itself,
  sends REPLY_DMASTER to the new dmaster at once. A call from itself (its own call come back)
  runs locally and completes its waiting call.
* The lmaster, on REQ_DMASTER (``ctdb_request_dmaster``), checks that the sender is the dmaster
  it knows (else: a recovery is forced, unless its copy is an untouched initial one), takes the
  sender's rsn and flags, stores the new dmaster and sends REPLY_DMASTER {rsn, key, data, flags};
  if the new dmaster is the lmaster itself, it becomes dmaster directly.
* The new dmaster (``ctdb_become_dmaster``) stores {rsn, dmaster = self, flags} with the data —
  the store bumps the rsn — runs the waiting call on it (another store, another bump) and answers
  its client. The rsn therefore grows with every landing and every daemon-side use.
* Node packets are dropped when this node is banned and when their generation is not the
  vnnmap's (REPLY_ERROR is neither checked nor counted, as in ``ctdb_input_pkt``); a REPLY_CALL
  must also carry its call's generation. When the generation changes, held peer calls are
  dropped (their origins re-send them), and when a recovery thaws a database (DB_THAW) every
  call of that database under way is sent again with a new reqid, routed as if it had arrived
  here from this node (``ctdb_call_resend_db``).
* A REQ_CALL or REQ_DMASTER for a database this node does not know gets REPLY_ERROR(-1,
  "Unknown database in request. db_id==0x%08x") to its srcnode; a REPLY_DMASTER for one is
  dropped.
* FETCH replies the value without header (empty = not found, which smbd's ``ctdbd_parse`` reads
  as ENOENT); FETCH_WITH_HEADER replies the 24-byte ``ctdb_ltdb_header`` then the value.

Deviations from CTDB
--------------------

* [pyctdbd] **A client call for an unknown database gets REPLY_ERROR** (-1, "Unknown database
  in request. db_id==0x%08x"). ctdbd drops it and smbd waits forever; smbd's ``ctdbd_migrate``
  and ``ctdbd_parse`` both turn REPLY_ERROR into EIO. (A REPLY_CALL with an error status would
  not do: ``ctdbd_migrate`` ignores the status and smbd would loop.)
* [pyctdbd] **A REPLY_ERROR for a call is passed on to its waiting clients** as REPLY_ERROR
  (ctdbd logs it and never answers the client). It is matched by reqid alone, as in ctdbd.
* [pyctdbd] **Peers' calls for a record that is on its way here wait here** — unless this node
  is the key's lmaster. ctdbd redirects them to the lmaster, from where they bounce back until
  the record lands, each bounce a hop. This core holds a peer's REQ_CALL while its own call for
  that record is under way and runs it when the record lands (or sends it on when the call ends
  otherwise). Its own calls are never held, and the lmaster never holds anything: it is where a
  node whose copy was deleted (an empty record given away) sends its call, so a waiting lmaster
  that held calls could wait for a node that waits for it (tests: a deadlock without this rule).
  Elsewhere a held call cannot close a circle: a node sends its call first to the node it last
  gave the record to, and those hand-overs are ordered in time. Held calls are dropped when the
  generation changes (their origins re-send them).
* [pyctdbd] **A record that lands for waiting local clients is pinned for ``local_grace``**
  (2 ms), or ``contended_grace`` (10 ms) when it is contended -- two or more local calls were
  waiting for it, or a peer asked for it while it was on its way: peers' calls meeting it in
  that window are requeued until it ends (CTDB pins records only in sticky databases,
  StickyPindown). Holding calls removes the bounce time that let smbd
  lock the record it had just been given: in the simulation (4 nodes, smbd-like loops on one
  key) held calls without a pin traded the record ~3,300 times in 5 simulated seconds for 11 to
  44 uses out of 40 to 80; with the pin every client finished in milliseconds (ctdbd's own
  scheme, bouncing, also finishes there, with higher hop counts).
* [pyctdbd] **Calls always collapse** (FetchCollapse = 1, ctdbd's default; 0 is not honoured).
  When a migration ends, the collapsed calls are re-run in order, as ctdbd does; after
  ``collapse_timeout`` (30 s, ctdbd's ``dfq_timeout``) the call is *sent again* with a new reqid
  and everyone keeps waiting for it (ctdbd instead re-runs the collapsed calls, one of which
  sends a new call).
* [pyctdbd] **A record seen local while a call for it is under way completes that call at
  once** (e.g. a recovery made this node the dmaster before the call was re-sent); ctdbd waits
  for its own REQ_CALL to come back to it.
* [pyctdbd] **No call leaves a node in recovery mode before its database is thawed**: it waits
  and goes with the thaw's re-sends (or when recovery mode ends; at once when the vnnmap
  changes outside recovery mode). The leader installs the new vnnmap on every node before it
  thaws any database, so a call sent after the thaw finds its generation everywhere; one sent
  earlier could reach a node still on the old generation, be dropped there, and wait 30 s for
  the collapse timeout (seen in the lab: a survivor's smbd stalled 30 s after a leader died).
* [pyctdbd] **No read-only delegations, no sticky records.** WANT_READONLY is dropped and the
  call runs as a normal one (what ctdbd does for a database without the READONLY flag); the
  READONLY and STICKY database flags are for the registry to keep. Records carrying RO flags are
  migrated like others.
* [pyctdbd] An unknown call id fails with status -1 on every path, without a store (ctdbd
  replies -1 to a peer but status 0 to a local client).
* [pyctdbd] A REQ_DMASTER reaching a node that is not the key's lmaster forces a recovery
  (ctdbd calls ``ctdb_fatal`` and exits).
* Not here: persistent-database transactions refusing migration (``persistent_state``), the
  vacuum engine (``VACUUM_MIGRATION`` calls work, the queue is only reported), freezes (the
  shell cannot take a chain lock of a frozen database, so events simply wait).

Sans-I/O: ``now`` is the daemon's monotonic clock; nothing here blocks, reads or writes.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from ...log import NOTICE
from ...protocol.constants import INVALID_GENERATION, CallFlag
from ...protocol.packets import ReplyCall, ReplyDmaster, ReplyError, ReqCall, ReqDmaster
from ...protocol.types import LtdbHeader, VnnMap
from .callstats import CallStatistics, DbCallStatistics
from .flights import Flight, FlightTable, FlightView, Waiter
from .ltdbrules import (
    MIGRATED_WITH_DATA, VACUUM_MIGRATED, Fetched, Record, Stored, call_function, fetch,
    lmaster_of, store,
)
from .migration_events import (
    Action, ClientGone, CopiesGathered, DbAttached, DbDetached, DbThawed, DeleteRecord, Event,
    ForceRecovery, GatherCopies, KeysUnsettled, LocalCall, Log, MigrationSettings, PeerPacket,
    RecoveryMode, Reissue, ReplyToClient, Requeue, ScheduleForDeletion, SendPacket, SetBanned,
    StoreRecord, SweepFinished, SweptCopies, Tick, UnscheduleDeletion, VnnMapChanged,
)
from .pins import Pins, pin_for
from .recovery_gate import RecoveryGate
from .settling import KeySettling

__all__ = [
    "Action", "ClientGone", "CopiesGathered", "DbAttached", "DbDetached", "DbThawed", "DeleteRecord",
    "Event", "FlightView", "ForceRecovery", "GatherCopies", "KeysUnsettled", "LocalCall", "Log",
    "MigrationCore", "MigrationSettings", "PeerPacket", "RecoveryMode", "Reissue", "ReplyToClient",
    "Requeue", "ScheduleForDeletion", "SendPacket", "SetBanned", "StoreRecord", "SweepFinished",
    "SweptCopies", "Tick", "UnscheduleDeletion", "VnnMapChanged", "granted_natively",
]

_WANT_READONLY = int(CallFlag.WANT_READONLY)
_VACUUM_MIGRATION = int(CallFlag.VACUUM_MIGRATION)


_last_map: tuple[VnnMap | None, tuple[int, ...]] = (None, ())


def _lmaster_list(vnnmap: VnnMap | None) -> tuple[int, ...]:
    """``vnnmap.map`` as a tuple, kept for the last map asked about (a core asks several times
    per event; a new map is a new object)."""
    global _last_map
    if vnnmap is not _last_map[0]:
        _last_map = (vnnmap, tuple(vnnmap.map) if vnnmap is not None else ())
    return _last_map[1]


def _with_dmaster(header: LtdbHeader, dmaster: int) -> LtdbHeader:
    # dataclasses.replace costs several times a direct construction, on every hand-off
    return LtdbHeader(header.rsn, dmaster, header.reserved1, header.flags)


def _with_flags(header: LtdbHeader, flags: int) -> LtdbHeader:
    return LtdbHeader(header.rsn, header.dmaster, header.reserved1, flags)


def _error_text(text: str) -> bytes:
    return text.encode() + b"\0"          # ctdb_send_error: msglen = strlen + 1


class MigrationCore:
    def __init__(self, settings: MigrationSettings, vnnmap: VnnMap | None = None) -> None:
        self.settings = settings
        self.pnn = settings.pnn
        self.vnnmap = vnnmap
        self.banned = False
        self.gate = RecoveryGate()
        self.handoffs = self.gate.handoffs      # for the recovery after a node loss
        self.databases: dict[int, DbAttached] = {}
        self.stats = CallStatistics()
        self.db_stats: dict[int, DbCallStatistics] = {}
        self.flights = FlightTable()
        self.pins = Pins()
        self.settling = KeySettling(self.pnn, self.databases)    # after a membership change

    # -- queries -------------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self.vnnmap.generation if self.vnnmap is not None else INVALID_GENERATION

    @property
    def lmasters(self) -> tuple[int, ...]:
        return _lmaster_list(self.vnnmap)

    def lmaster(self, key: bytes) -> int | None:
        return lmaster_of(key, self.lmasters)

    def lock_target(self, event: Event) -> tuple[int, bytes] | None:
        """(db_id, key) whose chain lock the shell must hold (and whose record it must read)
        while it steps `event`; None: step without a lock, with record None."""
        if isinstance(event, (LocalCall, Reissue, CopiesGathered, SweptCopies)):
            db_id, key = event.db_id, event.key
        elif isinstance(event, PeerPacket) and isinstance(event.body, (ReqCall, ReqDmaster, ReplyDmaster)):
            db_id, key = event.body.db_id, event.body.key
        else:
            return None
        return (db_id, bytes(key)) if db_id in self.databases else None

    def in_flight(self, db_id: int, key: bytes) -> FlightView | None:
        return self.flights.view(db_id, bytes(key))

    # -- the entry -----------------------------------------------------------------------------
    def step(self, event: Event, record: Record | None = None, now: float = 0.0) -> list[Action]:
        if isinstance(event, LocalCall):
            return self._local_call(event, record, now)
        if isinstance(event, PeerPacket):
            body = event.body
            if isinstance(body, ReqCall):
                return self._req_call(event, record, now)
            if isinstance(body, ReqDmaster):
                return self._req_dmaster(event, record, now)
            if isinstance(body, ReplyDmaster):
                return self._reply_dmaster(event, now)
            if isinstance(body, ReplyCall):
                return self._reply_call(event, now)
            if isinstance(body, ReplyError):
                return self._reply_error(event, now)
            raise TypeError(f"not a call or dmaster packet: {type(body).__name__}")
        if isinstance(event, Reissue):
            return self._reissue(event, record, now)
        if isinstance(event, (CopiesGathered, SweptCopies, SweepFinished)):
            return self.settling.step(event, record, self.lmasters, now)
        if isinstance(event, KeysUnsettled):
            return self.settling.keys_unsettled(event, self.lmasters, self.databases.get(event.db_id))
        if isinstance(event, VnnMapChanged):
            return self._vnnmap_changed(event)
        if isinstance(event, RecoveryMode):
            return self._recovery_mode(event.active)
        if isinstance(event, DbThawed):
            self.gate.thawed_db(event.db_id)
            return self.settling.database_merged(event.db_id) + self._resend_held(event.db_id)
        if isinstance(event, Tick):
            return self._tick(now)
        if isinstance(event, DbAttached):
            self.databases[event.db_id] = event
            self.db_stats.setdefault(event.db_id, DbCallStatistics())
            return []
        if isinstance(event, DbDetached):
            return self._detach(event.db_id, now)
        if isinstance(event, SetBanned):
            self.banned = event.banned
            return []
        if isinstance(event, ClientGone):        # its waiting calls get no reply
            self.stats.pending_calls -= self.flights.drop_client(event.client)
            return []
        raise TypeError(f"not a migration event: {type(event).__name__}")

    # -- client calls --------------------------------------------------------------------------
    def _local_call(self, ev: LocalCall, record: Record | None, now: float) -> list[Action]:
        started = now if ev.started is None else ev.started
        if not ev.requeued:
            self.stats.client_req_call += 1
            self.stats.total_calls += 1
            self.stats.pending_calls += 1
        waiter = Waiter(ev.client, ev.reqid, ev.callid, ev.flags & ~_WANT_READONLY,
                        bytes(ev.calldata), started)
        db = self.databases.get(ev.db_id)
        if db is None:
            text = f"Unknown database in request. db_id==0x{ev.db_id:08x}"
            self.stats.errors_sent += 1
            return [Log(logging.ERROR, text), self._answer(waiter, ReplyError(-1, _error_text(text)), now)]
        key = bytes(ev.key)
        flight = self.flights.get(db.db_id, key)
        if flight is None and self.settling.must_wait(db.db_id, key, record, self.lmaster(key)):
            return self.settling.wait(db.db_id, key, replace(ev, started=started))
        fetched = self._fetch(db, key, record)
        actions = self._initial_store(db, key, fetched)
        if flight is not None:
            flight.waiters.append(waiter)
            self.stats.collapsed_calls += 1
            if fetched is not None and fetched.header.dmaster == self.pnn:
                actions += self._complete_here(flight, fetched, now)
            return actions
        if fetched is not None and fetched.header.dmaster == self.pnn:
            status, reply, stores = self._call_local(db, key, fetched, waiter.callid)
            return actions + stores + [self._answer(waiter, ReplyCall(status, reply), now)]
        flight = Flight(db.db_id, key, self.flights.new_reqid(), self.generation, now, waiter, waiter)
        self.flights.add(flight)
        if fetched is None or not self.gate.may_send(db.db_id):
            flight.generation = INVALID_GENERATION      # held back: sent by _resend_held
            return actions
        dest = self.settling.target(db.db_id, fetched.header.dmaster, self.lmaster(key))
        return actions + [SendPacket(dest, self.pnn, flight.reqid, self.generation,
                                     self._call_packet(flight, hopcount=0))]

    # -- REQ_CALL ------------------------------------------------------------------------------
    def _req_call(self, pkt: PeerPacket, record: Record | None, now: float,
                  own: bool = False) -> list[Action]:
        body = pkt.body
        db = self.databases.get(body.db_id)
        if db is None:
            return self._unknown_db(pkt, now)
        if not own:
            if not self._accept(pkt):
                return []
            self.stats.node_req_call += 1
        key = bytes(body.key)
        if not own and self.settling.must_wait(db.db_id, key, record, self.lmaster(key)):
            return self.settling.wait(db.db_id, key, pkt)
        fetched = self._fetch(db, key, record)
        if fetched is None:
            return []
        actions = self._initial_store(db, key, fetched)
        header = fetched.header
        flight = self.flights.get(db.db_id, key)
        from_here = pkt.srcnode == self.pnn
        if header.dmaster != self.pnn:
            if flight is not None and not from_here:
                flight.peer_asked = True
                if self.lmaster(key) != self.pnn:
                    flight.deferred.append(pkt)
                    self.stats.deferred_calls += 1
                    return actions
            return actions + self._redirect(pkt, key, header)
        if flight is not None:
            # The record is here while a call for it is under way: that call is done.
            if from_here:
                self._count_hops(db, key, body.hopcount)
            actions += self._complete_here(flight, fetched, now)
            if from_here:
                return actions
            return actions + [Requeue(pkt, self.pins.left(db.db_id, key, now))]
        pinned = 0.0 if from_here else self.pins.left(db.db_id, key, now)
        if pinned > 0:
            return actions + [Requeue(pkt, pinned)]
        self._count_hops(db, key, body.hopcount)
        if not from_here:
            return actions + self._send_dmaster(db, key, fetched, pkt, now)
        # Our own call came back to us: ctdbd runs it and sends REPLY_CALL to itself, which
        # finds no waiting call (a stale one; the current one was completed above).
        _status, _reply, stores = self._call_local(db, key, fetched, body.callid)
        return actions + stores + [Log(logging.DEBUG, f"reqid {pkt.reqid} not found")]

    def _redirect(self, pkt: PeerPacket, key: bytes, header: LtdbHeader) -> list[Action]:
        body = pkt.body
        lmaster = self.lmaster(key)
        dest = header.dmaster if lmaster == self.pnn else lmaster
        hopcount = body.hopcount + 1
        self.stats.redirects += 1
        actions: list[Action] = []
        if hopcount % 100 > 95:
            actions.append(Log(logging.WARNING,
                               f"High hopcount {hopcount} dbid:{self.databases[body.db_id].name} "
                               f"reqid={pkt.reqid:08x} pnn:{self.pnn} src:{pkt.srcnode} "
                               f"lmaster:{lmaster} header->dmaster:{header.dmaster} dst:{dest}"))
        actions.append(SendPacket(dest, pkt.srcnode, pkt.reqid, self.generation,
                                  replace(body, hopcount=hopcount)))
        return actions

    def _send_dmaster(self, db: DbAttached, key: bytes, fetched: Fetched,
                      pkt: PeerPacket, now: float) -> list[Action]:
        """ctdb_call_send_dmaster: give the record to the call's origin."""
        header, data = fetched.header, fetched.data
        if data:
            header = _with_flags(header, header.flags | MIGRATED_WITH_DATA)
        self.stats.migrations_out += 1
        lmaster = self.lmaster(key)
        if lmaster == self.pnn:
            return self._dmaster_reply(db, key, header, data, pkt.srcnode, pkt.reqid, now)
        self.handoffs.gave(db.db_id, key, now)
        packet = ReqDmaster(db.db_id, header.rsn, pkt.srcnode, key, data, header.flags)
        stored = self._store(db, key, _with_dmaster(header, pkt.srcnode), data)
        return self._write(db, key, stored, data) + [
            SendPacket(lmaster, self.pnn, pkt.reqid, self.generation, packet)]

    def _dmaster_reply(self, db: DbAttached, key: bytes, header: LtdbHeader, data: bytes,
                       new_dmaster: int, reqid: int, now: float) -> list[Action]:
        """ctdb_send_dmaster_reply (the lmaster): record the new dmaster, pass the record on."""
        self.handoffs.gave(db.db_id, key, now)
        stored = self._store(db, key, _with_dmaster(header, new_dmaster), data)
        packet = ReplyDmaster(db.db_id, stored.header.rsn, key, data, stored.header.flags)
        return self._write(db, key, stored, data) + [
            SendPacket(new_dmaster, self.pnn, reqid, self.generation, packet)]

    # -- REQ_DMASTER / REPLY_DMASTER -----------------------------------------------------------
    def _req_dmaster(self, pkt: PeerPacket, record: Record | None, now: float) -> list[Action]:
        body = pkt.body
        db = self.databases.get(body.db_id)
        if db is None:
            return self._unknown_db(pkt, now)
        if not self._accept(pkt):
            return self._handoff_dropped(pkt)
        self.stats.node_req_dmaster += 1
        key = bytes(body.key)
        if self.lmaster(key) != self.pnn:
            text = (f"pnn {self.pnn} dmaster request to non-lmaster lmaster={self.lmaster(key)} "
                    f"gen={pkt.generation} curgen={self.generation}")
            return [Log(logging.CRITICAL, text), ForceRecovery(text)]
        truth = self.settling.handoff_is_truth(db.db_id, key, record, self.pnn)
        fetched = self._fetch(db, key, record)      # believed: no initial store of our own first
        actions = [] if truth else self._initial_store(db, key, fetched)
        actions += self.settling.settled_by(db.db_id, key)
        header = fetched.header
        if header.dmaster != pkt.srcnode and not truth:
            text = (f"pnn {self.pnn} dmaster request for new-dmaster {body.dmaster} from non-master "
                    f"{pkt.srcnode} real-dmaster={header.dmaster} dbid 0x{db.db_id:08x} "
                    f"c->rsn={body.rsn} header.rsn={header.rsn} reqid={pkt.reqid}")
            actions.append(Log(logging.CRITICAL, text))
            if header.rsn != 0 or header.dmaster != self.pnn:
                return actions + [Log(logging.ERROR, "ctdb_req_dmaster from non-master. Force a recovery."),
                                  ForceRecovery(text)]
        if header.rsn > body.rsn:
            actions.append(Log(logging.CRITICAL,
                               f"pnn {self.pnn} dmaster request with older RSN new-dmaster {body.dmaster} "
                               f"from {pkt.srcnode} c->rsn={body.rsn} header.rsn={header.rsn}"))
        flags = body.record_flags or 0
        if body.dmaster == self.pnn:
            return actions + self._land(db, key, body.data, body.rsn, flags, pkt.reqid, now)
        header = LtdbHeader(body.rsn, header.dmaster, header.reserved1, flags)
        return actions + self._dmaster_reply(db, key, header, bytes(body.data), body.dmaster,
                                             pkt.reqid, now)

    def _reply_dmaster(self, pkt: PeerPacket, now: float) -> list[Action]:
        body = pkt.body
        db = self.databases.get(body.db_id)
        if db is None:
            return [Log(logging.ERROR, f"Unknown db_id 0x{body.db_id:x} in ctdb_reply_dmaster")]
        if not self._accept(pkt):
            return self._handoff_dropped(pkt)
        self.stats.node_reply_dmaster += 1
        return self._land(db, bytes(body.key), body.data, body.rsn, body.record_flags or 0,
                          pkt.reqid, now)

    def _land(self, db: DbAttached, key: bytes, data: bytes, rsn: int, flags: int, reqid: int,
              now: float) -> list[Action]:
        """ctdb_become_dmaster: the record is ours; store it and run the waiting call."""
        data = bytes(data)
        flight = self.flights.get(db.db_id, key)
        if flight is not None and flight.call.flags & _VACUUM_MIGRATION:
            flags |= VACUUM_MIGRATED       # only for the store decision; never stored
        header = LtdbHeader(rsn=rsn, dmaster=self.pnn, reserved1=0, flags=flags)
        stored = self._store(db, key, header, data)
        actions = self._write(db, key, stored, data)
        self.stats.migrations_in += 1
        if flight is not None and flight.reqid == reqid and not db.persistent:
            self.db_stats.setdefault(db.db_id, DbCallStatistics()).count_migration(key, now)
        if flight is None:
            return actions + [Log(logging.ERROR,
                                  f"pnn {self.pnn} Invalid reqid {reqid} in ctdb_become_dmaster")]
        if flight.reqid != reqid:
            actions.append(Log(logging.INFO,
                               f"record landed for reqid {reqid}, call under way has {flight.reqid}"))
        return actions + self._complete_here(flight, Fetched(stored.header, data, None), now)

    # -- replies to our calls ------------------------------------------------------------------
    def _reply_call(self, pkt: PeerPacket, now: float) -> list[Action]:
        if not self._accept(pkt):
            return []
        self.stats.node_reply_call += 1
        flight = self.flights.with_reqid(pkt.reqid)
        if flight is None:
            return [Log(logging.ERROR, f"reqid {pkt.reqid} not found")]
        if pkt.generation != flight.generation:
            return [Log(logging.DEBUG, f"reply to reqid {pkt.reqid} of generation {pkt.generation}, "
                                       f"call has {flight.generation}")]
        self.flights.remove(flight)
        return self._end_flight(flight, ReplyCall(pkt.body.status, bytes(pkt.body.data)), now)

    def _reply_error(self, pkt: PeerPacket, now: float) -> list[Action]:
        self.stats.node_reply_error += 1
        flight = self.flights.with_reqid(pkt.reqid)
        if flight is None:
            return [Log(logging.ERROR, f"pnn {self.pnn} Invalid reqid {pkt.reqid} in ctdb_reply_error")]
        self.flights.remove(flight)
        error = ReplyError(pkt.body.status, bytes(pkt.body.msg))
        return [Log(logging.ERROR, f"call for db 0x{flight.db_id:08x} failed on node {pkt.srcnode}: "
                                   f"{error.msg.rstrip(bytes(1)).decode(errors='replace')}")
                ] + self._end_flight(flight, error, now, fail_all=True)

    # -- completing calls ----------------------------------------------------------------------
    def _complete_here(self, flight: Flight, fetched: Fetched, now: float) -> list[Action]:
        """The record is here: run the sent call for its client, re-run the collapsed calls,
        then let the held peers' calls in (after the pin if local clients were served:
        `contended_grace` when several local calls waited or a peer asked for the record on its
        way, else `local_grace`)."""
        self.flights.remove(flight)
        db = self.databases[flight.db_id]
        actions: list[Action] = []
        served = False
        if flight.primary is not None:
            status, reply, stores = self._call_local(db, flight.key, fetched, flight.call.callid)
            actions += stores
            actions.append(self._answer(flight.primary, ReplyCall(status, reply), now))
            served = True
        actions += [Requeue(self._rerun(flight, w)) for w in flight.waiters]
        served = served or bool(flight.waiters)
        delay = pin_for(flight, self.settings) if served else 0.0
        if delay > 0:
            self.pins.pin(flight.db_id, flight.key, now + delay)
        actions += [Requeue(p, delay) for p in flight.deferred]
        return actions

    def _end_flight(self, flight: Flight, reply: ReplyCall | ReplyError, now: float,
                    fail_all: bool = False) -> list[Action]:
        """The call ended without the record coming here: answer its client, re-run (or fail)
        the collapsed calls, send the held peers' calls on."""
        actions: list[Action] = []
        if flight.primary is not None:
            actions.append(self._answer(flight.primary, reply, now))
        for w in flight.waiters:
            actions.append(self._answer(w, reply, now) if fail_all else Requeue(self._rerun(flight, w)))
        actions += [Requeue(p) for p in flight.deferred]
        return actions

    @staticmethod
    def _rerun(flight: Flight, w: Waiter) -> LocalCall:
        return LocalCall(w.client, w.reqid, flight.db_id, flight.key, w.callid, w.flags, w.calldata,
                         requeued=True, started=w.started)

    # -- generation, time, databases, clients --------------------------------------------------
    def _vnnmap_changed(self, ev: VnnMapChanged) -> list[Action]:
        old = self.generation if self.vnnmap is not None else None
        old_map = self.lmasters
        self.vnnmap = ev.vnnmap
        if old == ev.vnnmap.generation:
            return []
        self.pins.clear()
        self.gate.vnnmap_changed(old)
        actions: list[Action] = self.settling.vnnmap_changed(
            old_map, self.lmasters, [d for d, db in self.databases.items() if not db.persistent])
        for flight in self.flights:
            if flight.deferred:
                actions.append(Log(logging.INFO, f"dropping {len(flight.deferred)} held calls of "
                                                 f"generation {flight.generation}"))
                flight.deferred.clear()
        if not self.gate.recovering:     # no thaw will follow: send them now
            actions += self._resend_held(None)
        return actions

    def _recovery_mode(self, active: bool) -> list[Action]:
        late, settle = self.gate.mode(active), self.settling.recovery_mode(active)
        if active:
            return settle
        return settle + self._resend_held(None) + self._late_drop(late, "after the scan")

    def _handoff_dropped(self, pkt: PeerPacket) -> list[Action]:
        late = self.gate.dropped(pkt.body.db_id, bytes(pkt.body.key), pkt.generation, self.banned)
        return self._late_drop(late, f"reqid {pkt.reqid} from node {pkt.srcnode}")

    def _late_drop(self, late: bool, what: str) -> list[Action]:
        text = self.gate.late_drop_text(self.generation, what) if late else None
        return [] if text is None else [Log(logging.ERROR, text), ForceRecovery(text)]

    def _resend_held(self, db_id: int | None) -> list[Action]:
        """ctdb_call_resend_db / _all at DB_THAW (and here also when recovery mode ends): every
        call of `db_id` (None: of every database) not on the current generation goes again."""
        return [Requeue(Reissue(f.db_id, f.key)) for f in self.flights
                if f.generation != self.generation and (db_id is None or f.db_id == db_id)]

    def _reissue(self, ev: Reissue, record: Record | None, now: float) -> list[Action]:
        """ctdb_call_resend: a new reqid and generation, then route it as a REQ_CALL arriving
        here from this node."""
        key = bytes(ev.key)
        flight = self.flights.get(ev.db_id, key)
        db = self.databases.get(ev.db_id)
        if flight is None or db is None or not self.lmasters:
            return []
        if self.settling.must_wait(db.db_id, key, record, self.lmaster(key)):
            return self.settling.wait(db.db_id, key, ev)
        if not self.gate.may_send(db.db_id):
            flight.generation = INVALID_GENERATION      # held back until the thaw
            return []
        self.flights.set_reqid(flight, self.flights.new_reqid())
        flight.generation = self.generation
        flight.sent_at = now
        self.stats.reissued_calls += 1
        pkt = PeerPacket(self.pnn, flight.reqid, self.generation, self._call_packet(flight, hopcount=0))
        return [Log(NOTICE, f"resent ctdb_call for db {db.name} reqid {flight.reqid} "
                            f"generation {self.generation}")] + self._req_call(pkt, record, now, own=True)

    def _tick(self, now: float) -> list[Action]:
        self.pins.expire(now)
        for stats in self.db_stats.values():
            stats.expire_migrations(now)
        actions: list[Action] = []
        for flight in self.flights:
            if now - flight.sent_at < self.settings.collapse_timeout:
                continue
            flight.sent_at = now           # held peers' calls stay held: the call starts again
            actions.append(Requeue(Reissue(flight.db_id, flight.key)))
        return actions

    def _detach(self, db_id: int, now: float) -> list[Action]:
        self.handoffs.forget_database(db_id)
        actions: list[Action] = self.settling.database_merged(db_id)
        for flight in self.flights:
            if flight.db_id != db_id:
                continue
            self.flights.remove(flight)
            error = ReplyError(-1, _error_text(f"database 0x{db_id:08x} detached"))
            actions += self._end_flight(flight, error, now, fail_all=True)
        self.databases.pop(db_id, None)
        self.pins.drop_db(db_id)
        return actions

    # -- helpers -------------------------------------------------------------------------------
    def _accept(self, pkt: PeerPacket) -> bool:
        """ctdb_input_pkt: banned nodes and other generations drop call and dmaster packets."""
        return not self.banned and self.vnnmap is not None and pkt.generation == self.generation

    def _unknown_db(self, pkt: PeerPacket, now: float) -> list[Action]:
        text = f"Unknown database in request. db_id==0x{pkt.body.db_id:08x}"
        self.stats.errors_sent += 1
        error = ReplyError(-1, _error_text(text))
        if pkt.srcnode == self.pnn:
            return self._reply_error(PeerPacket(self.pnn, pkt.reqid, self.generation, error), now)
        return [Log(logging.ERROR, text),
                SendPacket(pkt.srcnode, self.pnn, pkt.reqid, self.generation, error)]

    def _fetch(self, db: DbAttached, key: bytes, record: Record | None) -> Fetched | None:
        """The record as ctdbd reads it; None without a vnnmap (no lmaster, nothing to decide:
        calls wait for the first vnnmap, peers' packets cannot pass the generation check)."""
        if not self.lmasters:
            return None
        return fetch(record, key, pnn=self.pnn, lmasters=self.lmasters, persistent=db.persistent)

    def _initial_store(self, db: DbAttached, key: bytes, fetched: Fetched | None) -> list[Action]:
        if fetched is None or fetched.initial_store is None:
            return []
        return self._write(db, key, fetched.initial_store, b"")

    def _store(self, db: DbAttached, key: bytes, header: LtdbHeader, data: bytes) -> Stored:
        return store(header, data, pnn=self.pnn, lmaster=self.lmaster(key), persistent=db.persistent)

    def _write(self, db: DbAttached, key: bytes, stored: Stored, data: bytes) -> list[Action]:
        actions: list[Action] = []
        if stored.keep:
            actions.append(StoreRecord(db.db_id, key, stored.header, bytes(data)))
        else:
            actions.append(DeleteRecord(db.db_id, key))
        if stored.schedule_for_deletion:
            actions.append(ScheduleForDeletion(db.db_id, key, stored.header))
        elif stored.unschedule:
            actions.append(UnscheduleDeletion(db.db_id, key))
        return actions

    def _call_local(self, db: DbAttached, key: bytes, fetched: Fetched,
                    callid: int) -> tuple[int, bytes, list[Action]]:
        """ctdb_call_local: run the call function on the record, then store it (rsn + 1 on the
        dmaster). An unknown call id fails before the store."""
        result = call_function(callid, fetched.header, fetched.data)
        if result is None:
            return -1, b"", [Log(logging.ERROR, f"Unknown call id {callid}")]
        status, reply = result
        stored = self._store(db, key, fetched.header, fetched.data)
        return status, reply, self._write(db, key, stored, fetched.data)

    def _answer(self, waiter: Waiter, body: ReplyCall | ReplyError, now: float) -> ReplyToClient:
        self.stats.pending_calls -= 1
        self.stats.call_latency.add(max(0.0, now - waiter.started))
        return ReplyToClient(waiter.client, waiter.reqid, body)

    def _count_hops(self, db: DbAttached, key: bytes, hopcount: int) -> None:
        self.stats.count_hops(hopcount)
        self.db_stats.setdefault(db.db_id, DbCallStatistics()).count_hops(hopcount)

    def _call_packet(self, flight: Flight, hopcount: int) -> ReqCall:
        call = flight.call
        return ReqCall(call.flags, flight.db_id, call.callid, hopcount, flight.key, call.calldata)


def granted_natively(core: MigrationCore, db_id: int, key: bytes, hopcount: int, now: float) -> None:
    """The native node plane answered a peer's REQ_CALL for a record this node is lmaster and
    dmaster of (or nobody holds) with its REPLY_DMASTER: `_req_call` -> `_send_dmaster` ->
    `_dmaster_reply`, decided in C when no state of the core names the key
    (docs/native-hot-path.md). What that path leaves in the core: the statistics and the
    hand-off log (tests/unit/test_native_grants.py holds both paths to the same result)."""
    core.stats.node_req_call += 1
    core.stats.count_hops(hopcount)
    core.db_stats.setdefault(db_id, DbCallStatistics()).count_hops(hopcount)
    core.stats.migrations_out += 1
    core.handoffs.gave(db_id, key, now)
