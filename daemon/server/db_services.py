"""The clustered-database services of one node, built and wired together in one place: the
database registry over the TDB files (databases.py), record migration (record_calls.py) and the
sweep after a membership change (sweeper.py), persistent commits (persistent_commits.py) and traverses (traverses.py), and what each of them
must hear of the rest of the daemon (recovery mode and vnnmap, this node's flags and runstate,
peers and clients that went away, time)."""

from __future__ import annotations

import os
from collections.abc import Callable

from ..config import CtdbConf, Tunables
from ..core.db.ltdbrules import use_key_hash
from ..core.db.migration import MigrationCore, MigrationSettings
from ..core.db.registry import DbInfo
from ..core.nodes import NodeMap
from ..log import log
from ..net.local import Client
from ..protocol import NodeFlag, Runstate, VnnMap
from ..store import libtdb
from .databases import DatabaseService
from .db_recovery import DatabaseRecoveryService
from .messenger import Messenger
from .partial_recovery import PartialRecoveryNode, RecoveryView, gather_copies
from .persistent_commits import PersistentCommitService
from .record_calls import RecordCalls
from .sweeper import Sweeper
from .tasks import Tasks
from .traverses import TraverseService
from .vacuum import VacuumService
from .vacuum_triage import SliceTriage

TICK_EVERY = 1.0          # s between the migration core's ticks (collapse timeouts, pins)


class DatabaseServices:
    def __init__(self, my_pnn: int, conf: CtdbConf, messenger: Messenger, tunables: Tunables, tasks: Tasks,
                 nodemap: NodeMap, *, clock: Callable[[], float], force_recovery: Callable[[str], None],
                 vnnmap: Callable[[], VnnMap], recovery_view: Callable[[], RecoveryView],
                 env: dict[str, str] | None = None,
                 align: Callable[[float], float] = lambda when: when) -> None:
        if not use_key_hash(libtdb.jenkins_hash):    # libtdb's lookup3 for the keys' lmasters
            log.warning("libtdb's tdb_jenkins_hash disagrees with lookup3: keys are hashed in Python")
        self.databases = DatabaseService(my_pnn, conf, messenger, tunables, tasks, clock=clock,
                                         force_recovery=force_recovery, env=env, align=align)
        self.record_calls = RecordCalls(MigrationCore(MigrationSettings(my_pnn)), self.databases.database,
                                        messenger.send_frame, tasks, clock, force_recovery)
        shared = dict(lookup=self.databases.database, registry_info=self.databases.info,
                      vnnmap=lambda: vnnmap().map, active_nodes=nodemap.active_pnns, tunables=tunables,
                      spawn=tasks.spawn, clock=clock)
        self.recovery = DatabaseRecoveryService(my_pnn, self.databases, messenger, tunables, tasks,
                                                vnnmap=vnnmap, on_thawed=self.record_calls.db_thawed)
        self.partial_recovery = PartialRecoveryNode(self.databases.database, recovery_view,
                                                    self.recovery.set_generation,
                                                    self.record_calls.handed_off,
                                                    self.record_calls.keys_unsettled)
        self.record_calls.gather_copies = lambda db_id, key: gather_copies(messenger, db_id, key)
        self.sweeper = Sweeper(self.record_calls, self.databases.database, messenger, tasks.spawn, clock,
                               delay=lambda: int(tunables.get("SweepDelayMs")) / 1000.0)
        self.persistent = PersistentCommitService(my_pnn, messenger, force_recovery=force_recovery,
                                                  freeze_state=self.recovery.freeze_state,
                                                  generation=lambda: vnnmap().generation, **shared)
        self.traverses = TraverseService(my_pnn, messenger, **shared)
        self.vacuum = VacuumService(
            my_pnn, self.databases.database, self._is_volatile, messenger, self.record_calls,
            lmasters=lambda: tuple(vnnmap().map), active_peers=messenger.active_peers,
            interval=lambda: float(tunables.get("VacuumInterval")),
            buffer_limit=lambda: int(tunables.get("RecBufferSizeLimit")), spawn=tasks.spawn,
            fast_path_count=lambda: int(tunables.get("VacuumFastPathCount")),
            triage=SliceTriage.for_daemon(my_pnn, self.record_calls.forget_settled,
                                          os.environ if env is None else env))
        self.record_calls.on_schedule = self.vacuum.schedule
        self.record_calls.on_unschedule = self.vacuum.unschedule
        self._inactive = False
        self.databases.listeners.append(self._database_changed)
        self._banned = False
        self._next_tick = 0.0

    # -- what the rest of the daemon tells them ---------------------------------------------------
    def recovery_mode_changed(self, active: bool) -> None:
        self.databases.recovery_mode(active)
        self.persistent.set_recovery_mode(active)
        self.record_calls.recovery_mode(active)
        self.sweeper.recovery_mode(active)
        self.vacuum.recovery_mode(active)

    def recovery_finished(self) -> None:
        """END_RECOVERY: commits cut short by the recovery get their answer."""
        self.persistent.recovery_ended()

    def vnnmap_changed(self, vnnmap: VnnMap) -> None:
        self.record_calls.vnnmap_changed(vnnmap)

    def own_flags_changed(self, flags: int) -> None:
        inactive = bool(flags & NodeFlag.INACTIVE)
        self.databases.inactive(inactive)
        if inactive and not self._inactive:
            self.recovery.node_inactive()
        self._inactive = inactive
        banned = bool(flags & NodeFlag.BANNED)
        if banned != self._banned:
            self._banned = banned
            self.record_calls.set_banned(banned)

    def runstate_changed(self, runstate: int) -> None:
        self.databases.runstate(Runstate(runstate))

    def peer_gone(self, pnn: int) -> None:
        self.persistent.node_gone(pnn)
        self.traverses.node_gone(pnn)

    def client_gone(self, client: Client) -> None:
        self.databases.client_gone(client.client_id)
        self.record_calls.client_gone(client)
        self.persistent.client_gone(client.client_id)
        self.traverses.client_gone(client.client_id)

    def tick(self, now: float) -> None:
        if now >= self._next_tick:
            self._next_tick = now + TICK_EVERY
            self.record_calls.tick(now)
            self.vacuum.tick(now)

    def tunables_changed(self) -> None:
        self.databases.tunables_changed()

    def may_leave_recovery(self, generation: int) -> str | None:
        """SET_RECMODE NORMAL: why not (a database is still on another generation), or None."""
        return self.recovery.set_recmode_normal(generation)

    def close(self) -> None:
        self.recovery.close()
        self.sweeper.close()
        self.record_calls.close()
        self.persistent.close()
        self.traverses.close()
        self.databases.close()

    def _database_changed(self, info: DbInfo, attached: bool) -> None:
        if attached:
            self.record_calls.db_attached(info.db_id, info.name, not info.volatile)
            if info.volatile:
                self.vacuum.watch(info.db_id)
        else:
            self.record_calls.db_detached(info.db_id)
            self.traverses.database_gone(info.db_id)
            self.vacuum.database_gone(info.db_id)

    def _is_volatile(self, db_id: int) -> bool:
        info = self.databases.info(db_id)
        return info is not None and info.volatile
