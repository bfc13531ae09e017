"""Records pinned to this node after they landed for its local clients (see
:mod:`.migration`, "A record that lands for waiting local clients is pinned"): how long a
landing pins its record, and how long a peer's call for a pinned record still waits. No I/O.
"""

from __future__ import annotations

from .flights import Flight
from .migration_events import MigrationSettings


def pin_for(flight: Flight, settings: MigrationSettings) -> float:
    """How long the record of `flight`, landed for local clients, stays here: the longer
    `contended_grace` when several local calls waited for it or a peer asked for it on its way,
    else `local_grace`."""
    return settings.contended_grace if flight.contended else settings.local_grace


class Pins:
    def __init__(self) -> None:
        self.until: dict[tuple[int, bytes], float] = {}

    def pin(self, db_id: int, key: bytes, until: float) -> None:
        self.until[(db_id, key)] = until

    def left(self, db_id: int, key: bytes, now: float) -> float:
        """Seconds the record is still pinned (0: not pinned)."""
        until = self.until.get((db_id, key))
        return 0.0 if until is None or until <= now else until - now

    def expire(self, now: float) -> None:
        for pin, until in list(self.until.items()):
            if until <= now:
                del self.until[pin]

    def drop_db(self, db_id: int) -> None:
        for pin in [p for p in self.until if p[0] == db_id]:
            del self.until[pin]

    def clear(self) -> None:
        self.until.clear()
