"""What the record-migration core (:mod:`.migration`) must know of recoveries: whether this node
is in recovery mode, which databases a recovery thawed (or merged in full) since the vnnmap
changed, and the hand-offs the generation change may have cut off (:mod:`.handoffs`). Pure
state with small answers; the core turns them into actions.

* ``may_send(db_id)``: a call goes on the wire outside recovery mode, or once its database was
  thawed in this recovery — only then does every node have the recovery's generation (the
  leader installs the vnnmap everywhere before it thaws anything); a packet reaching a node
  still on the old generation would be dropped there, and its call would wait for the collapse
  timeout.
* ``dropped(db_id, key, generation)``: a REQ_DMASTER or REPLY_DMASTER was not accepted. Only one
  of the generation just left counts (a forged packet of another generation must not start
  recoveries), and not in a database the recovery merged in full. Returns whether a recovery
  must be forced now: the drop came after recovery mode ended, or after the recovery's scan.
"""

from __future__ import annotations

from ...protocol.constants import INVALID_GENERATION
from .handoffs import HandoffLog


class RecoveryGate:
    def __init__(self) -> None:
        self.recovering = False            # this node's recovery mode is ACTIVE
        self.thawed: set[int] = set()      # databases thawed since the vnnmap last changed
        self.merged: set[int] = set()      # databases recovered in full in this generation
        self.handoffs = HandoffLog()
        self.previous_generation = INVALID_GENERATION
        self.late_drop_reported = INVALID_GENERATION

    def may_send(self, db_id: int) -> bool:
        return not self.recovering or db_id in self.thawed

    def vnnmap_changed(self, old_generation: int | None) -> None:
        self.thawed.clear()
        self.merged.clear()
        if old_generation is not None:
            self.previous_generation = old_generation

    def mode(self, active: bool) -> bool:
        """Recovery mode changed; True when it ended with a cut-off hand-off noticed after the
        recovery's scan (force one more recovery)."""
        self.recovering = active
        if active:
            self.thawed.clear()
            return False
        self.handoffs.reset_overflow()
        return self.handoffs.pending_drops() > 0

    def thawed_db(self, db_id: int) -> None:
        self.thawed.add(db_id)
        self.merged.add(db_id)
        self.handoffs.forget_drops(db_id)

    def dropped(self, db_id: int, key: bytes, generation: int, banned: bool) -> bool:
        if (banned or generation != self.previous_generation
                or generation == INVALID_GENERATION or db_id in self.merged):
            return False
        self.handoffs.dropped(db_id, key)
        return not self.recovering

    def late_drop_text(self, generation: int, what: str) -> str | None:
        """Why a recovery is forced for a cut-off hand-off — once per generation."""
        if self.late_drop_reported == generation:
            return None
        self.late_drop_reported = generation
        return (f"a record hand-off of generation {self.previous_generation} was cut off "
                f"({what})")
