"""The leader's recovery of the cluster's shape, as data: a new generation and vnnmap, and the
controls every active node gets, in order (CTDB's recovery without databases; the database
stages of the clustered-database work slot in between START_RECOVERY and SET_RECMODE NORMAL).

1. SET_RECMODE ACTIVE        every active node stops serving records and notes the recovery
2. START_RECOVERY            ("Recovery has started"; the start time `ctdb uptime` shows)
3. SETVNNMAP                 the new generation and the lmaster nodes
4. SET_RECMODE NORMAL        back to serving
5. END_RECOVERY              ("Recovery has finished"; a starting node moves on to STARTUP)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.constants import Control, RecMode
from ..protocol.types import VnnMap


@dataclass(frozen=True)
class RecoveryStage:
    opcode: Control
    value: object = None          # the control's request value (None: empty payload)


@dataclass(frozen=True)
class RecoveryPlan:
    generation: int
    vnnmap: VnnMap
    targets: tuple[int, ...]      # the nodes that get every stage
    stages: tuple[RecoveryStage, ...]


def plan_recovery(active: list[int], lmasters: list[int], my_pnn: int, generation: int) -> RecoveryPlan:
    """`active`: connected active nodes (this one included); `lmasters`: those of them with the
    lmaster capability. With no lmaster at all the leader serves as one, as CTDB does."""
    vnnmap = VnnMap(generation, list(lmasters) or [my_pnn])
    stages = (RecoveryStage(Control.SET_RECMODE, RecMode.ACTIVE), RecoveryStage(Control.START_RECOVERY),
              RecoveryStage(Control.SETVNNMAP, vnnmap), RecoveryStage(Control.SET_RECMODE, RecMode.NORMAL),
              RecoveryStage(Control.END_RECOVERY))
    return RecoveryPlan(generation, vnnmap, tuple(active), stages)
