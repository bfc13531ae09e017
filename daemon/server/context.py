"""What a control handler may use: the daemon's services, through their public methods only.

Handlers (`daemon/controls/`) get one `ControlContext`; nothing else of the daemon reaches
them, so a handler cannot depend on how a service keeps its state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..config import DaemonConfig, Tunables
from ..net.local import LocalServer
from .connections import ConnectionTracker
from .databases import DatabaseService
from .db_recovery import DatabaseRecoveryService
from .leader import LeaderService
from .partial_recovery import PartialRecoveryNode
from .messenger import Messenger
from .node import NodeService
from .persistent_commits import PersistentCommitService
from .public_ips import PublicIPService
from .recovery import RecoveryState
from .statistics import Statistics
from .traverses import TraverseService
from .vacuum import VacuumService


class Lifecycle(Protocol):
    """The daemon object's own part: its start time, shutdown and log level."""

    start_wall: float
    debug_level: int

    def request_shutdown(self, reason: str, code: int = 0) -> None: ...
    def set_debug_level(self, level: int) -> None: ...
    def apply_tunables(self) -> None: ...


@dataclass(frozen=True)
class ControlContext:
    daemon: Lifecycle
    config: DaemonConfig
    tunables: Tunables
    node: NodeService
    recovery: RecoveryState
    leader: LeaderService
    ips: PublicIPService
    connections: ConnectionTracker
    clients: LocalServer
    messenger: Messenger
    databases: DatabaseService
    persistent: PersistentCommitService
    traverses: TraverseService
    statistics: Statistics
    db_recovery: DatabaseRecoveryService
    partial_recovery: PartialRecoveryNode
    vacuum: VacuumService

    @property
    def pnn(self) -> int:
        return self.node.my_pnn
