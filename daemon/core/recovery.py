"""The leader's recovery of the cluster, as data: a new generation and vnnmap, and what every
active node gets, in order:

1. SET_RECMODE ACTIVE        every active node stops serving records and notes the recovery
2. START_RECOVERY            ("Recovery has started"; the start time `ctdb uptime` shows)
3. SETVNNMAP                 the new generation and the lmaster nodes
4. the databases             every database of every node recovered into the new generation
                             (server/db_recovery_driver.py: freeze, pull, merge, push, commit).
                             After SETVNNMAP, as CTDB does: the thaw lets record traffic run
                             again, and it must find the new lmasters holding the merged copy
5. SET_RECMODE NORMAL        back to serving (refused while a database is on another generation)
6. END_RECOVERY              ("Recovery has finished"; a starting node moves on to STARTUP)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..protocol.constants import Control, RecMode
from ..protocol.types import VnnMap
from .db.partial_recovery import slot_stable_vnnmap


@dataclass(frozen=True)
class RecoveryStage:
    opcode: Control | None        # None: the database stage, not one control
    value: object = None          # the control's request value (None: empty payload)

    @property
    def databases(self) -> bool:
        return self.opcode is None


@dataclass(frozen=True)
class RecoveryPlan:
    generation: int
    vnnmap: VnnMap
    targets: tuple[int, ...]      # the nodes that get every stage
    stages: tuple[RecoveryStage, ...]


def plan_recovery(active: list[int], lmasters: list[int], my_pnn: int, generation: int,
                  previous_map: Sequence[int] = ()) -> RecoveryPlan:
    """`active`: connected active nodes (this one included); `lmasters`: those of them with the
    lmaster capability. With no lmaster at all the leader serves as one, as CTDB does.
    [pyctdbd] The map keeps the slots of `previous_map` (the vnnmap in force) when nodes were
    only lost: their slots go to survivors (`slot_stable_vnnmap`), so only the keys of those
    slots change lmaster; CTDB rebuilds it from the live nodes."""
    vnnmap = VnnMap(generation, slot_stable_vnnmap(previous_map, lmasters) or [my_pnn])
    stages = (RecoveryStage(Control.SET_RECMODE, RecMode.ACTIVE), RecoveryStage(Control.START_RECOVERY),
              RecoveryStage(Control.SETVNNMAP, vnnmap), RecoveryStage(None),
              RecoveryStage(Control.SET_RECMODE, RecMode.NORMAL), RecoveryStage(Control.END_RECOVERY))
    return RecoveryPlan(generation, vnnmap, tuple(active), stages)
