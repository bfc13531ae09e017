"""The database registry of one node and its attach rules, as decisions: which databases this
node has (name, db_id, kind flags, health, sequence-number watch), what an attach, a detach, a
health or a seqnum control answers, and what it makes the shell do. ``Registry.step(event, now)
-> actions``; the shell (the daemon's database service) opens and closes TDB files through
``daemon/store/``, sends the packets and feeds the results back.

CTDB's rules, Samba 4.17.12 (``ctdb/server/ctdb_ltdb_server.c`` unless named otherwise):

* **db_id** = Jenkins hash of the name and its NUL (``ctdb_local_attach``; ``protocol.ltdb.
  db_id_of``). Another name with the same id is refused ("hash collision").
* **Kinds** are the attach opcode's flags (``ctdb_control.c``): DB_ATTACH 0, DB_ATTACH_PERSISTENT
  ``DbFlag.PERSISTENT``, DB_ATTACH_REPLICATED ``DbFlag.REPLICATED``. READONLY and STICKY are
  set later (SET_DB_READONLY / SET_DB_STICKY, volatile databases only, ``ctdb_set_db_readonly``,
  ``ctdb_set_db_sticky``).
* **Attach** (``ctdb_control_db_attach``), in this order:
  1. AllowClientDBAttach = 0 refuses *every* attach, a peer's too;
  2. from a local client: refused while this node is INACTIVE; with the ATTACH_RECOVERY control
     flag refused unless recovery is active; without it *deferred* while recovery is active or
     the runstate is before STARTUP;
  3. an existing name answers its db_id if the database has every flag asked for
     (``(db.flags & asked) == asked``): a plain DB_ATTACH of a persistent database succeeds, a
     persistent attach of a volatile one fails;
  4. otherwise the database is created (opened) and, once it is, DB_ATTACH* is broadcast
     (NOREPLY) to every connected node, whichever way the attach came: a node receiving a
     peer's attach creates the database and broadcasts in turn (the echo stops at nodes that
     have it).
* **Deferred attaches**: each waits at most DeferredAttachTO (120 s), then fails with -1. When the
  recovery mode goes back to NORMAL (``ctdb_process_deferred_attach``, called from SET_RECMODE)
  every deferred attach is re-run one second later, through all the rules again (it may be
  deferred anew, with a fresh timeout). A client that disconnects takes its deferred attaches
  with it (no answer).
* **DB_DETACH** (``ctdb_control_db_detach``): unknown id, AllowClientDBAttach = 1, a persistent or
  replicated database, or recovery active: -1. From a local client: broadcast to every connected
  node (this one included), answer 0; the detach itself happens when a node's copy arrives.
  ctdbd does not check whether clients still have the database open.
* **Health** (``ctdb_control_db_get_health`` / ``_db_set_healthy``): GET_HEALTH answers the
  unhealthy reason, or nothing when healthy; SET_HEALTHY clears it and, if the database *was*
  unhealthy and the runstate is STARTUP, forces recovery mode (ctdbd sets recmode ACTIVE). ctdbd
  keeps reasons in ``persistent_health.tdb``; here they are state and ``HealthChanged`` asks the
  shell to store them.
* **Seqnum** (``ctdb_ltdb_enable_seqnum``, ``ctdb_ltdb_seqnum_check``, ``ctdb_ltdb_update_seqnum``):
  ENABLE_SEQNUM (unknown id: -1) turns on TDB_SEQNUM and remembers the file's seqnum; every
  SeqnumInterval ms afterwards the seqnum of each such database is read and, if it differs
  from the remembered one, UPDATE_SEQNUM is broadcast (NOREPLY) to the active nodes. A node
  receiving it ignores its own (0), refuses an unknown (-1) or unhealthy (-1) database, else bumps
  its file's seqnum and remembers the new value (so it does not broadcast it back). ENABLE_SEQNUM
  again re-reads the baseline (a change not yet seen is then never broadcast — ctdbd's too).

Deviations, marked:

* **pyctdbd:** names that are empty, contain '/' or NUL, are '.' or '..', or are longer than
  MAX_NAME_BYTES (the file ``<name>.<pnn>`` must fit NAME_MAX) are refused with a reason; ctdbd
  accepts any string. (``store/naming.check_db_name`` has the same rule minus the length; see
  ``check_name``.)
* **pyctdbd:** deferred attaches are also re-run (after the same delay) when the runstate reaches
  STARTUP while recovery is not active; ctdbd re-runs them only when the recovery mode goes
  NORMAL, so an attach deferred for the runstate alone waits for the next recovery or fails
  after DeferredAttachTO.
* **pyctdbd:** a detach from a local client is carried out here at once and broadcast to the
  *other* connected nodes; ctdbd broadcasts to itself too and detaches when that copy comes
  back (moments later, same result).
* **pyctdbd:** opening the file is an action (``OpenDatabase``) answered by ``Opened``; attaches
  of a name being opened wait for that one open. ctdbd opens synchronously.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Hashable

from ...config.tunables import Tunables
from ...log import NOTICE
from ...protocol.constants import Control, DbFlag, Runstate
from ...protocol.ltdb import db_id_of
from ..node import Log

#: ``<name>.<pnn>`` must fit NAME_MAX (255 bytes) for any pnn up to 4294967295 (".4294967295").
MAX_NAME_BYTES = 255 - len(".4294967295")
#: ctdb_process_deferred_attach re-runs deferred attaches this long after recovery ends.
DEFERRED_ATTACH_RETRY = 1.0
#: The kind bits; READONLY and STICKY are properties set after the attach.
KIND_FLAGS = DbFlag.PERSISTENT | DbFlag.REPLICATED

_ATTACH_FLAGS = {Control.DB_ATTACH: DbFlag(0), Control.DB_ATTACH_PERSISTENT: DbFlag.PERSISTENT,
                 Control.DB_ATTACH_REPLICATED: DbFlag.REPLICATED}

Ticket = Hashable


def attach_flags(opcode: int) -> DbFlag:
    """The flags an attach control asks for (ctdb_control.c)."""
    return _ATTACH_FLAGS[Control(opcode)]


def attach_opcode(flags: int) -> Control:
    """The control that attaches a database with these flags (what ctdbd broadcasts)."""
    if flags & DbFlag.PERSISTENT:
        return Control.DB_ATTACH_PERSISTENT
    if flags & DbFlag.REPLICATED:
        return Control.DB_ATTACH_REPLICATED
    return Control.DB_ATTACH


def is_volatile(flags: int) -> bool:
    return not flags & KIND_FLAGS


def check_name(name: object) -> str | None:
    """Why ``name`` cannot name a database, or None if it can."""
    if not isinstance(name, str) or not name:
        return "database name is empty"
    if "/" in name or "\0" in name or name in (".", ".."):
        return f"database name {name!r} is not a plain file name"
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME_BYTES:
        return f"database name is {size} bytes long, more than {MAX_NAME_BYTES}"
    return None


@dataclass(frozen=True)
class RegistrySettings:
    allow_client_attach: bool = True           # AllowClientDBAttach
    deferred_attach_timeout: float = 120.0     # DeferredAttachTO, s
    deferred_attach_retry: float = DEFERRED_ATTACH_RETRY
    seqnum_interval: float = 1.0               # SeqnumInterval (ms in the tunable)

    @classmethod
    def from_tunables(cls, tunables: Tunables) -> RegistrySettings:
        return cls(allow_client_attach=tunables.get("AllowClientDBAttach") != 0,
                   deferred_attach_timeout=float(tunables.get("DeferredAttachTO")),
                   seqnum_interval=max(1, tunables.get("SeqnumInterval")) / 1000.0)


@dataclass(frozen=True)
class DbInfo:
    name: str
    db_id: int
    flags: DbFlag
    unhealthy_reason: str | None = None
    seqnum_enabled: bool = False

    @property
    def volatile(self) -> bool:
        return is_volatile(self.flags)


# -- events ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attach:
    """DB_ATTACH*: `client_id` None means it came from another node (or this daemon itself);
    `recovery` is the ATTACH_RECOVERY control flag; `flags` the opcode's (attach_flags)."""

    ticket: Ticket
    name: str | None
    flags: DbFlag
    client_id: int | None = None
    recovery: bool = False


@dataclass(frozen=True)
class Opened:
    """The answer to OpenDatabase: `error` None if the file is open."""

    name: str
    error: str | None = None


@dataclass(frozen=True)
class Detach:
    ticket: Ticket
    db_id: int
    client_id: int | None = None


@dataclass(frozen=True)
class SetRecoveryMode:
    active: bool


@dataclass(frozen=True)
class SetRunstate:
    runstate: Runstate


@dataclass(frozen=True)
class SetInactive:
    """This node's own flags became (or stopped being) INACTIVE."""

    inactive: bool


@dataclass(frozen=True)
class ClientGone:
    client_id: int


@dataclass(frozen=True)
class SetHealthy:
    ticket: Ticket
    db_id: int


@dataclass(frozen=True)
class MarkUnhealthy:
    db_id: int
    reason: str


@dataclass(frozen=True)
class SetDbFlag:
    """SET_DB_READONLY / SET_DB_STICKY."""

    ticket: Ticket
    db_id: int
    flag: DbFlag


@dataclass(frozen=True)
class EnableSeqnum:
    ticket: Ticket
    db_id: int


@dataclass(frozen=True)
class SeqnumRead:
    """The file's TDB seqnum, read because of EnableTdbSeqnum or ReadSeqnum."""

    db_id: int
    seqnum: int


@dataclass(frozen=True)
class UpdateSeqnum:
    ticket: Ticket
    db_id: int
    src: int


@dataclass(frozen=True)
class SeqnumBumped:
    """The file's TDB seqnum after BumpSeqnum."""

    db_id: int
    seqnum: int


@dataclass(frozen=True)
class Tick:
    pass


Event = (Attach | Opened | Detach | SetRecoveryMode | SetRunstate | SetInactive | ClientGone
         | SetHealthy | MarkUnhealthy | SetDbFlag | EnableSeqnum | SeqnumRead | UpdateSeqnum
         | SeqnumBumped | Tick)


# -- actions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """Answer the control identified by `ticket` (the shell drops it for NOREPLY controls).
    `db_id` is the data of an attach's answer (a u32); `error` the optional error text."""

    ticket: Ticket
    status: int
    db_id: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class OpenDatabase:
    """Open (create) the file; answer with Opened(name, error)."""

    name: str
    db_id: int
    flags: DbFlag


@dataclass(frozen=True)
class BroadcastAttach:
    """Send `opcode` with `name` (NOREPLY) to every connected node but this one."""

    name: str
    opcode: Control


@dataclass(frozen=True)
class BroadcastDetach:
    """Send DB_DETACH `db_id` (NOREPLY) to every connected node but this one."""

    db_id: int


@dataclass(frozen=True)
class CloseDatabase:
    """The database is detached: end its traverses, vacuuming and migrations, close the file."""

    db_id: int
    name: str


@dataclass(frozen=True)
class HealthChanged:
    """Store the reason (None: healthy) where the node keeps database health."""

    db_id: int
    name: str
    reason: str | None


@dataclass(frozen=True)
class ForceRecovery:
    """Set this node's recovery mode to ACTIVE, so the leader runs a recovery."""

    reason: str


@dataclass(frozen=True)
class DbFlagsChanged:
    """READONLY or STICKY was set (READONLY: open the ``<path>.RO`` tracking database)."""

    db_id: int
    flags: DbFlag


@dataclass(frozen=True)
class EnableTdbSeqnum:
    """Turn on TDB_SEQNUM on the file, then answer SeqnumRead(db_id, tdb_get_seqnum)."""

    db_id: int


@dataclass(frozen=True)
class ReadSeqnum:
    """Answer SeqnumRead(db_id, tdb_get_seqnum)."""

    db_id: int


@dataclass(frozen=True)
class BroadcastUpdateSeqnum:
    """Send UPDATE_SEQNUM `db_id` (NOREPLY) to every active node but this one."""

    db_id: int


@dataclass(frozen=True)
class BumpSeqnum:
    """tdb_increment_seqnum_nonblock on the file, then answer SeqnumBumped(db_id, seqnum)."""

    db_id: int


Action = (Reply | OpenDatabase | BroadcastAttach | BroadcastDetach | CloseDatabase | HealthChanged
          | ForceRecovery | DbFlagsChanged | EnableTdbSeqnum | ReadSeqnum | BroadcastUpdateSeqnum
          | BumpSeqnum | Log)


@dataclass
class _Deferred:
    event: Attach
    deadline: float
    retry_at: float | None = None


@dataclass
class _Watch:
    """A database whose seqnum is watched: the last value seen (None until read) and when to
    look next."""

    baseline: int | None
    next_check: float


@dataclass
class Registry:
    """One node's databases and the rules above. Starts as ctdbd does: recovery active,
    runstate INIT, active."""

    my_pnn: int
    settings: RegistrySettings = field(default_factory=RegistrySettings)
    recovery_active: bool = True
    runstate: Runstate = Runstate.INIT
    inactive: bool = False
    _dbs: dict[int, DbInfo] = field(default_factory=dict)
    _opening: dict[str, tuple[DbInfo, list[Ticket]]] = field(default_factory=dict)
    _deferred: list[_Deferred] = field(default_factory=list)
    _watches: dict[int, _Watch] = field(default_factory=dict)

    # -- queries ---------------------------------------------------------------------------------
    def databases(self) -> list[DbInfo]:
        """GET_DBMAP's databases (open ones only), in attach order."""
        return list(self._dbs.values())

    def get(self, db_id: int) -> DbInfo | None:
        return self._dbs.get(db_id)

    def by_name(self, name: str) -> DbInfo | None:
        for info in self._dbs.values():
            if info.name == name:
                return info
        return None

    def health(self, db_id: int) -> tuple[int, str | None]:
        """DB_GET_HEALTH: (0, reason or None), or (-1, None) for an unknown database."""
        info = self._dbs.get(db_id)
        return (-1, None) if info is None else (0, info.unhealthy_reason)

    def deferred_count(self) -> int:
        return len(self._deferred)

    def next_deadline(self) -> float | None:
        times = [d.deadline for d in self._deferred]
        times += [d.retry_at for d in self._deferred if d.retry_at is not None]
        times += [w.next_check for w in self._watches.values()]
        return min(times) if times else None

    # -- the one entry ---------------------------------------------------------------------------
    def step(self, event: Event, now: float) -> list[Action]:
        return _HANDLERS[type(event)](self, event, now)

    # -- attach ----------------------------------------------------------------------------------
    def _attach(self, ev: Attach, now: float) -> list[Action]:
        why = check_name(ev.name)
        if why is not None:
            return [Log(logging.ERROR, f"DB Attach refused: {why}"), Reply(ev.ticket, -1, error=why)]
        name = ev.name
        assert name is not None
        if not self.settings.allow_client_attach:
            return self._refuse(ev.ticket, f"DB Attach to database {name} denied by tunable "
                                           "AllowClientDBAccess == 0")
        if ev.client_id is not None:
            if self.inactive:
                return self._refuse(ev.ticket, f"DB Attach to database {name} refused since node "
                                               "is inactive")
            if ev.recovery and not self.recovery_active:
                return self._refuse(ev.ticket, "Attach from recovery refused because recovery is "
                                               "not active")
            if not ev.recovery and (self.recovery_active or self.runstate < Runstate.STARTUP):
                self._deferred.append(_Deferred(ev, now + self.settings.deferred_attach_timeout))
                return [Log(logging.ERROR, f"DB Attach to database {name} deferred for client "
                                           f"{ev.client_id} since node is in recovery mode")]
        info = self.by_name(name)
        if info is not None:
            return self._existing(ev, info)
        if name in self._opening:
            pending, tickets = self._opening[name]
            if pending.flags & ev.flags != ev.flags:
                return self._flags_mismatch(ev, pending.flags)
            tickets.append(ev.ticket)
            return []
        db_id = db_id_of(name)
        clash = self._dbs.get(db_id) or next(
            (p for p, _ in self._opening.values() if p.db_id == db_id), None)
        if clash is not None:
            return self._refuse(ev.ticket, f"db_id 0x{db_id:x} hash collision. name1='{name}' "
                                           f"name2='{clash.name}'")
        info = DbInfo(name, db_id, DbFlag(ev.flags & KIND_FLAGS))
        self._opening[name] = (info, [ev.ticket])
        return [OpenDatabase(name, db_id, info.flags)]

    def _existing(self, ev: Attach, info: DbInfo) -> list[Action]:
        if info.flags & ev.flags != ev.flags:
            return self._flags_mismatch(ev, info.flags)
        return [Reply(ev.ticket, 0, db_id=info.db_id)]

    def _flags_mismatch(self, ev: Attach, has: int) -> list[Action]:
        return self._refuse(ev.ticket, f"Error: Failed to re-attach with 0x{int(ev.flags):x} flags, "
                                       f"database has 0x{int(has):x} flags")

    @staticmethod
    def _refuse(ticket: Ticket, why: str) -> list[Action]:
        return [Log(logging.ERROR, why), Reply(ticket, -1, error=why)]

    def _opened(self, ev: Opened, now: float) -> list[Action]:
        entry = self._opening.pop(ev.name, None)
        if entry is None:
            return []
        info, tickets = entry
        if ev.error is not None:
            why = f"Failed to attach to database '{ev.name}': {ev.error}"
            return [Log(logging.ERROR, why)] + [Reply(t, -1, error=why) for t in tickets]
        self._dbs[info.db_id] = info
        return ([Log(NOTICE, f"Attached to database '{ev.name}' (db_id 0x{info.db_id:08x}, "
                             f"flags 0x{int(info.flags):x})")]
                + [Reply(t, 0, db_id=info.db_id) for t in tickets]
                + [BroadcastAttach(ev.name, attach_opcode(info.flags))])

    # -- deferred attaches -----------------------------------------------------------------------
    def _set_recovery_mode(self, ev: SetRecoveryMode, now: float) -> list[Action]:
        was = self.recovery_active
        self.recovery_active = ev.active
        if was and not ev.active:
            self._schedule_retries(now)
        return []

    def _set_runstate(self, ev: SetRunstate, now: float) -> list[Action]:
        was = self.runstate
        self.runstate = Runstate(ev.runstate)
        if was < Runstate.STARTUP <= self.runstate and not self.recovery_active:
            self._schedule_retries(now)          # pyctdbd; see the module's deviations
        return []

    def _schedule_retries(self, now: float) -> None:
        for deferred in self._deferred:
            if deferred.retry_at is None:
                deferred.retry_at = now + self.settings.deferred_attach_retry

    def _set_inactive(self, ev: SetInactive, now: float) -> list[Action]:
        self.inactive = ev.inactive
        return []

    def _client_gone(self, ev: ClientGone, now: float) -> list[Action]:
        self._deferred = [d for d in self._deferred if d.event.client_id != ev.client_id]
        return []

    def _tick(self, ev: Tick, now: float) -> list[Action]:
        actions: list[Action] = []
        waiting = []
        due = []
        for deferred in self._deferred:
            retry = deferred.retry_at
            if retry is not None and retry <= now and retry <= deferred.deadline:
                due.append(deferred)
            elif deferred.deadline <= now:
                actions += [Log(logging.ERROR, f"DB Attach to database {deferred.event.name} timed out "
                                               f"after {self.settings.deferred_attach_timeout:g} s"),
                            Reply(deferred.event.ticket, -1)]
            else:
                waiting.append(deferred)
        self._deferred = waiting
        for deferred in due:
            actions += self._attach(deferred.event, now)
        for db_id, watch in self._watches.items():
            if watch.next_check <= now:
                watch.next_check = now + self.settings.seqnum_interval
                actions.append(ReadSeqnum(db_id))
        return actions

    # -- detach ----------------------------------------------------------------------------------
    def _detach(self, ev: Detach, now: float) -> list[Action]:
        info = self._dbs.get(ev.db_id)
        if info is None:
            return self._refuse(ev.ticket, f"Invalid dbid 0x{ev.db_id:08x} in DB detach")
        if self.settings.allow_client_attach:
            return self._refuse(ev.ticket, f"DB detach from database {info.name} denied. Clients are "
                                           "allowed access to databases (AllowClientDBAccess == 1)")
        if not info.volatile:
            return self._refuse(ev.ticket, f"Detaching non-volatile database {info.name} denied")
        if self.recovery_active:
            return self._refuse(ev.ticket, "DB detach denied while in recovery")
        del self._dbs[ev.db_id]
        self._watches.pop(ev.db_id, None)
        actions: list[Action] = [Log(NOTICE, f"Detached from database '{info.name}'"),
                                 CloseDatabase(info.db_id, info.name)]
        if ev.client_id is not None:
            actions.append(BroadcastDetach(info.db_id))
        return actions + [Reply(ev.ticket, 0)]

    # -- health and flags ------------------------------------------------------------------------
    def _set_healthy(self, ev: SetHealthy, now: float) -> list[Action]:
        info = self._dbs.get(ev.db_id)
        if info is None:
            return self._refuse(ev.ticket, f"Unknown db 0x{ev.db_id:x}")
        actions: list[Action] = []
        if info.unhealthy_reason is not None:
            self._dbs[ev.db_id] = replace(info, unhealthy_reason=None)
            actions += [Log(NOTICE, f"Updated db health for db({info.name}): OK"),
                        HealthChanged(info.db_id, info.name, None)]
            if self.runstate == Runstate.STARTUP:
                actions.append(ForceRecovery(f"db {info.name} become healthy - force recovery for "
                                             "startup"))
        return actions + [Reply(ev.ticket, 0)]

    def _mark_unhealthy(self, ev: MarkUnhealthy, now: float) -> list[Action]:
        info = self._dbs.get(ev.db_id)
        if info is None or info.unhealthy_reason == ev.reason:
            return []
        self._dbs[ev.db_id] = replace(info, unhealthy_reason=ev.reason)
        return [Log(logging.CRITICAL, f"Updated db health for db({info.name}) to: {ev.reason}"),
                HealthChanged(info.db_id, info.name, ev.reason)]

    def _set_db_flag(self, ev: SetDbFlag, now: float) -> list[Action]:
        if ev.flag not in (DbFlag.READONLY, DbFlag.STICKY):
            raise ValueError(f"SetDbFlag: 0x{int(ev.flag):x} is not READONLY or STICKY")
        info = self._dbs.get(ev.db_id)
        if info is None:
            return self._refuse(ev.ticket, f"Unknown db 0x{ev.db_id:x}")
        if info.flags & ev.flag:
            return [Reply(ev.ticket, 0)]
        if not info.volatile:
            what = "readonly" if ev.flag == DbFlag.READONLY else "sticky"
            return self._refuse(ev.ticket, f"Non-volatile databases do not support {what} flag")
        info = replace(info, flags=info.flags | ev.flag)
        self._dbs[ev.db_id] = info
        return [DbFlagsChanged(info.db_id, info.flags), Reply(ev.ticket, 0)]

    # -- sequence numbers ------------------------------------------------------------------------
    def _enable_seqnum(self, ev: EnableSeqnum, now: float) -> list[Action]:
        info = self._dbs.get(ev.db_id)
        if info is None:
            return self._refuse(ev.ticket, f"Unknown db_id 0x{ev.db_id:x} in ctdb_ltdb_enable_seqnum")
        watch = self._watches.get(ev.db_id)
        if watch is None:
            self._watches[ev.db_id] = _Watch(None, now + self.settings.seqnum_interval)
            self._dbs[ev.db_id] = replace(info, seqnum_enabled=True)
        else:
            watch.baseline = None
        return [EnableTdbSeqnum(ev.db_id), Reply(ev.ticket, 0)]

    def _seqnum_read(self, ev: SeqnumRead, now: float) -> list[Action]:
        watch = self._watches.get(ev.db_id)
        if watch is None:
            return []
        old, watch.baseline = watch.baseline, ev.seqnum
        if old is None or old == ev.seqnum:
            return []
        return [BroadcastUpdateSeqnum(ev.db_id)]

    def _update_seqnum(self, ev: UpdateSeqnum, now: float) -> list[Action]:
        if ev.src == self.my_pnn:
            return [Reply(ev.ticket, 0)]
        info = self._dbs.get(ev.db_id)
        if info is None:
            return self._refuse(ev.ticket, f"Unknown db_id 0x{ev.db_id:x} in ctdb_ltdb_update_seqnum")
        if info.unhealthy_reason is not None:
            return self._refuse(ev.ticket, f"db({info.name}) unhealty in ctdb_ltdb_update_seqnum: "
                                           f"{info.unhealthy_reason}")
        return [BumpSeqnum(ev.db_id), Reply(ev.ticket, 0)]

    def _seqnum_bumped(self, ev: SeqnumBumped, now: float) -> list[Action]:
        watch = self._watches.get(ev.db_id)
        if watch is not None:
            watch.baseline = ev.seqnum
        return []

    def update_settings(self, settings: RegistrySettings) -> None:
        self.settings = settings


_HANDLERS = {
    Attach: Registry._attach, Opened: Registry._opened, Detach: Registry._detach,
    SetRecoveryMode: Registry._set_recovery_mode, SetRunstate: Registry._set_runstate,
    SetInactive: Registry._set_inactive, ClientGone: Registry._client_gone,
    SetHealthy: Registry._set_healthy, MarkUnhealthy: Registry._mark_unhealthy,
    SetDbFlag: Registry._set_db_flag, EnableSeqnum: Registry._enable_seqnum,
    SeqnumRead: Registry._seqnum_read, UpdateSeqnum: Registry._update_seqnum,
    SeqnumBumped: Registry._seqnum_bumped, Tick: Registry._tick,
}
