"""This node's recovery state: the vnnmap and generation, the recovery mode, and when the last
recovery started and finished (`ctdb uptime`). The leader's recovery sets them through the
SET_RECMODE, SETVNNMAP, START_RECOVERY and END_RECOVERY controls (controls/node.py); a node
that becomes inactive enters recovery mode on its own and stays there.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..core.nodes import NodeMap
from ..log import log, notice
from ..protocol import INVALID_GENERATION, RecMode, VnnMap
from .partial_recovery import RecoveryView


class RecoveryState:
    def __init__(self, nodemap: NodeMap, on_recovery_finished: Callable[[], None],
                 on_recmode: Callable[[bool], None] = lambda active: None,
                 on_vnnmap: Callable[[VnnMap], None] = lambda vnnmap: None,
                 may_leave: Callable[[int], str | None] = lambda generation: None) -> None:
        self.nodemap = nodemap
        self.on_recovery_finished = on_recovery_finished
        self.on_recmode = on_recmode             # told the first mode and every change (True: active)
        self.on_vnnmap = on_vnnmap               # told of every vnnmap installed
        self.may_leave = may_leave               # SET_RECMODE NORMAL: a reason to refuse, or None
        self.vnnmap = VnnMap(INVALID_GENERATION, [])
        self.recmode = RecMode.ACTIVE
        self.last_started = 0.0          # wall clock
        self.last_finished = 0.0
        # For pyctdbd's recovery after nodes were lost or joined (core/db/partial_recovery.py):
        # the generation this node left recovery mode in (its databases all recovered into it),
        # and, once a new vnnmap arrives, that generation if the node served in it up to then
        # (else INVALID) and the map it served with.
        self.served_generation = INVALID_GENERATION
        self.came_from = INVALID_GENERATION
        self.previous_map: list[int] = []
        on_recmode(True)

    def set_vnnmap(self, vnnmap: VnnMap) -> str | None:
        """SETVNNMAP; returns an error text if refused. An inactive node keeps the map but not
        the generation (it takes no part in the cluster's database traffic)."""
        if vnnmap.generation == INVALID_GENERATION and vnnmap.map:
            return "refusing the invalid generation"
        if vnnmap.generation != self.vnnmap.generation:
            served = self.served_generation == self.vnnmap.generation != INVALID_GENERATION
            self.came_from = self.vnnmap.generation if served else INVALID_GENERATION
            self.previous_map = list(self.vnnmap.map)
            self.served_generation = INVALID_GENERATION
        self.vnnmap = vnnmap if not self.nodemap.inactive else VnnMap(INVALID_GENERATION, vnnmap.map)
        self.on_vnnmap(self.vnnmap)
        return None

    def set_recmode(self, mode: int) -> str | None:
        if mode not in (RecMode.NORMAL, RecMode.ACTIVE):
            return f"invalid recovery mode {mode}"
        if mode == RecMode.NORMAL and self.nodemap.inactive:
            return None          # an inactive node stays in recovery mode
        if mode == RecMode.NORMAL and self.recmode == RecMode.ACTIVE:
            refused = self.may_leave(self.vnnmap.generation)
            if refused:
                log.error("Refusing to leave recovery mode: %s", refused)
                return refused
        if mode == RecMode.NORMAL:
            self.served_generation = self.vnnmap.generation
        if mode != self.recmode:
            self.recmode = RecMode(mode)
            notice("Recovery mode set to %s", "NORMAL" if mode == RecMode.NORMAL else "ACTIVE")
            self.on_recmode(mode == RecMode.ACTIVE)
        return None

    def view(self) -> RecoveryView:
        return RecoveryView(self.recmode == RecMode.ACTIVE, self.came_from, tuple(self.previous_map),
                            tuple(self.vnnmap.map))

    def recovery_started(self) -> None:
        self.last_started = time.time()
        log.error("Recovery has started")

    def recovery_finished(self) -> None:
        self.last_finished = time.time()
        log.error("Recovery has finished")
        self.on_recovery_finished()

    def enter_recovery_mode(self) -> None:
        """This node became inactive."""
        self.served_generation = self.came_from = INVALID_GENERATION
        if self.recmode != RecMode.ACTIVE:
            self.recmode = RecMode.ACTIVE
            self.on_recmode(True)
        self.vnnmap = VnnMap(INVALID_GENERATION, self.vnnmap.map)
