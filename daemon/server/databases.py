"""This node's clustered databases: the registry of attached databases (`core.db.registry`, the
attach rules, health, sequence-number propagation) over the TDB files of `store/`, and the
answers of the database controls that need no record traffic (attach, detach, dbmap, paths,
open flags, names, health, read-only/sticky flags, seqnum). Record migration, persistent
commits and traverses are services of their own (record_calls.py, persistent_commits.py,
traverses.py) that find databases here and hear of attaches and detaches through listeners.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from itertools import count

from ..config import CtdbConf, Tunables
from ..core.db import registry as reg
from ..core.db.registry import DbInfo, Registry, RegistrySettings
from ..log import log
from ..protocol import Control, DbFlag, Runstate, pack_reply, pack_request
from ..store import Database, DbDirs, DbKind, Store, TdbError
from .dispatch import Result
from .messenger import Messenger
from .tasks import Tasks

#: What the attached databases' listeners are told: (info, attached).
Listener = Callable[[DbInfo, bool], None]


def kind_of(flags: int) -> DbKind:
    if flags & DbFlag.PERSISTENT:
        return DbKind.PERSISTENT
    if flags & DbFlag.REPLICATED:
        return DbKind.REPLICATED
    return DbKind.VOLATILE


class DatabaseService:
    def __init__(self, my_pnn: int, conf: CtdbConf, messenger: Messenger, tunables: Tunables,
                 tasks: Tasks, *, clock: Callable[[], float], force_recovery: Callable[[str], None],
                 env: dict[str, str] | None = None,
                 align: Callable[[float], float] = lambda when: when) -> None:
        self.my_pnn = my_pnn
        self.messenger = messenger
        self.tunables = tunables
        self.tasks = tasks
        self.clock = clock
        self.force_recovery = force_recovery
        self.align = align           # puts the registry's timer on the heartbeat ticks
        self.dirs = DbDirs.from_conf(conf)
        self.store = Store(self.dirs, my_pnn, mutexes=conf.tdb_mutexes, env=env,
                           log=lambda m: log.warning("%s", m), on_corrupt=self._store_corrupt)
        self.registry = Registry(my_pnn, RegistrySettings.from_tunables(tunables))
        self.listeners: list[Listener] = []
        self._pending: dict[int, asyncio.Future] = {}
        self._tickets = count(1)
        self._timer: asyncio.TimerHandle | None = None
        for directory in (self.dirs.volatile, self.dirs.persistent, self.dirs.state):
            if not os.path.isdir(directory):
                log.warning("Database directory %s does not exist: databases there cannot be "
                            "attached", directory)

    # -- queries ---------------------------------------------------------------------------------
    def database(self, db_id: int) -> Database | None:
        """The open file of an attached database (None if not attached)."""
        return self.store.by_id(db_id) if self.registry.get(db_id) is not None else None

    def info(self, db_id: int) -> DbInfo | None:
        return self.registry.get(db_id)

    def databases(self) -> list[DbInfo]:
        return self.registry.databases()

    def flags_of(self, info: DbInfo) -> DbFlag:
        """GET_DBMAP's flags: the kind, READONLY, STICKY."""
        return DbFlag(info.flags)

    # -- controls --------------------------------------------------------------------------------
    def attach(self, name: str | None, opcode: int, client_id: int | None,
               recovery: bool) -> asyncio.Future[Result]:
        """DB_ATTACH / DB_ATTACH_PERSISTENT / DB_ATTACH_REPLICATED; answers the db_id (u32).

        Stepped at once, not from a task: a peer's attach and the record calls it sends right
        after arrive in one read, and the calls must find the database (as ctdbd, which handles
        a connection's packets in order). The answer is done unless the attach is deferred
        (a client's, during recovery or before startup)."""
        return self._start(lambda ticket: reg.Attach(ticket, name, reg.attach_flags(opcode),
                                                     client_id, recovery))

    async def detach(self, db_id: int, client_id: int | None) -> Result:
        return await self._ask(lambda ticket: reg.Detach(ticket, db_id, client_id))

    async def set_healthy(self, db_id: int) -> Result:
        return await self._ask(lambda ticket: reg.SetHealthy(ticket, db_id))

    async def set_flag(self, db_id: int, flag: DbFlag) -> Result:
        return await self._ask(lambda ticket: reg.SetDbFlag(ticket, db_id, flag))

    async def enable_seqnum(self, db_id: int) -> Result:
        return await self._ask(lambda ticket: reg.EnableSeqnum(ticket, db_id))

    async def update_seqnum(self, db_id: int, src: int) -> Result:
        return await self._ask(lambda ticket: reg.UpdateSeqnum(ticket, db_id, src))

    def health(self, db_id: int) -> tuple[int, str | None]:
        return self.registry.health(db_id)

    def mark_unhealthy(self, db_id: int, reason: str) -> None:
        self._step(reg.MarkUnhealthy(db_id, reason))

    def _store_corrupt(self, name: str, reason: str) -> None:
        """The store found a database's file damaged: at attach (it kept a backup and created an
        empty file), or libtdb reported it since. Marked unhealthy on the next loop turn, when
        an attach that found it has been stepped and the registry knows the database."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_soon(self._mark_corrupt, name, reason)

    def _mark_corrupt(self, name: str, reason: str) -> None:
        info = self.registry.by_name(name)
        if info is not None:
            self.mark_unhealthy(info.db_id, reason)

    # -- what the rest of the daemon tells it -----------------------------------------------------
    def recovery_mode(self, active: bool) -> None:
        self._step(reg.SetRecoveryMode(active))

    def runstate(self, runstate: Runstate) -> None:
        self._step(reg.SetRunstate(runstate))

    def inactive(self, inactive: bool) -> None:
        self._step(reg.SetInactive(inactive))

    def client_gone(self, client_id: int) -> None:
        self._step(reg.ClientGone(client_id))

    def tunables_changed(self) -> None:
        self.registry.update_settings(RegistrySettings.from_tunables(self.tunables))
        self._reschedule()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_result(Result(-1, errmsg="shutting down"))
        self.store.close()

    # -- the core's loop --------------------------------------------------------------------------
    async def _ask(self, make: Callable[[int], reg.Event]) -> Result:
        ticket = next(self._tickets)
        future = asyncio.get_running_loop().create_future()
        self._pending[ticket] = future
        try:
            self._step(make(ticket))
            return await future
        finally:
            self._pending.pop(ticket, None)

    def _start(self, make: Callable[[int], reg.Event]) -> asyncio.Future[Result]:
        ticket = next(self._tickets)
        future = asyncio.get_running_loop().create_future()
        self._pending[ticket] = future
        future.add_done_callback(lambda _done: self._pending.pop(ticket, None))
        self._step(make(ticket))
        return future

    def _step(self, event: reg.Event) -> None:
        pending = [event]
        while pending:
            actions = self.registry.step(pending.pop(0), self.clock())
            for action in actions:
                follow_up = self._execute(action)
                if follow_up is not None:
                    pending.append(follow_up)
        self._reschedule()

    def _execute(self, action: reg.Action) -> reg.Event | None:
        """Carry out one action; an action that is answered by an event returns it."""
        if isinstance(action, reg.Reply):
            future = self._pending.get(action.ticket)
            if future is not None and not future.done():
                data = b"" if action.db_id is None else pack_reply(Control.DB_ATTACH, action.db_id)
                future.set_result(Result(action.status, data, action.error))
        elif isinstance(action, reg.OpenDatabase):
            return reg.Opened(action.name, self._open(action))
        elif isinstance(action, reg.BroadcastAttach):
            data = pack_request(action.opcode, action.name)
            for pnn in self.messenger.connected_peers():
                self.messenger.send_noreply(pnn, action.opcode, data)
        elif isinstance(action, reg.BroadcastDetach):
            data = pack_request(Control.DB_DETACH, action.db_id)
            for pnn in self.messenger.connected_peers():
                self.messenger.send_noreply(pnn, Control.DB_DETACH, data)
        elif isinstance(action, reg.CloseDatabase):
            info = DbInfo(action.name, action.db_id, DbFlag(0))
            self._tell(info, False)
            self.store.detach(action.name)
        elif isinstance(action, reg.ForceRecovery):
            self.force_recovery(action.reason)
        elif isinstance(action, reg.DbFlagsChanged):
            db = self.store.by_id(action.db_id)
            if db is not None:
                db.readonly = bool(action.flags & DbFlag.READONLY)
                db.sticky = bool(action.flags & DbFlag.STICKY)
        elif isinstance(action, (reg.EnableTdbSeqnum, reg.ReadSeqnum)):
            db = self.store.by_id(action.db_id)
            if db is not None:
                if isinstance(action, reg.EnableTdbSeqnum):
                    db.enable_seqnum()
                return reg.SeqnumRead(action.db_id, db.seqnum)
        elif isinstance(action, reg.BroadcastUpdateSeqnum):
            data = pack_request(Control.UPDATE_SEQNUM, action.db_id)
            for pnn in self.messenger.active_peers():
                self.messenger.send_noreply(pnn, Control.UPDATE_SEQNUM, data)
        elif isinstance(action, reg.BumpSeqnum):
            db = self.store.by_id(action.db_id)
            if db is not None:
                db.increment_seqnum()
                return reg.SeqnumBumped(action.db_id, db.seqnum)
        elif isinstance(action, reg.HealthChanged):
            pass            # the registry logged it; health is not kept across restarts (yet)
        elif isinstance(action, reg.Log):
            log.log(action.level, "%s", action.text)
        return None

    def _open(self, action: reg.OpenDatabase) -> str | None:
        try:
            db = self.store.attach(action.name, kind_of(action.flags))
        except (TdbError, ValueError, OSError) as exc:
            log.error("Failed to open database %s: %s", action.name, exc)
            return str(exc)
        info = DbInfo(action.name, db.db_id, DbFlag(action.flags))
        self._tell(info, True)
        return None

    def _tell(self, info: DbInfo, attached: bool) -> None:
        for listener in self.listeners:
            try:
                listener(info, attached)
            except Exception:
                log.exception("database %s listener failed", info.name)

    def _reschedule(self) -> None:
        when = self.registry.next_deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if when is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(self.align(max(when, loop.time())), self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._step(reg.Tick())

