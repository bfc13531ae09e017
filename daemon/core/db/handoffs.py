"""The records this node gave away lately, and the hand-offs to it that a generation change cut
off — the keys pyctdbd's recovery after a node loss must look at besides the lost node's
(``core/db/partial_recovery.py``).

A record changes hands with a REQ_DMASTER (dmaster -> lmaster) and a REPLY_DMASTER (lmaster ->
new dmaster); the giver's copy then names the new dmaster. When the generation changes while one
of those packets is under way, the packet is dropped where it arrives, and no node holds the
record as its dmaster: CTDB's recovery heals that because it merges every record of every node;
a recovery that looks only at some keys must know these. The giver knows what it handed off;
the receiver knows what it dropped.

* ``gave(db_id, key, now)``: this node sent a REQ_DMASTER or REPLY_DMASTER for the key. Kept for
  `window` seconds (a hand-off is delivered within milliseconds; a packet waiting longer at
  its receiver behind a busy chain lock is the receiver's to report), at most `limit` entries:
  an entry evicted younger than the window makes ``overflowed`` true until ``reset_overflow``
  (when recovery mode ends), and the recovery then merges every record instead.
* ``dropped(db_id, key)``: a hand-off of the previous generation arrived here after the change.
* ``take(db_id, now)``: the keys to report for a database; its dropped hand-offs are handed
  over (a drop noticed after the report is ``pending_drops()``, for one more recovery).
"""

from __future__ import annotations

from collections import OrderedDict


class HandoffLog:
    def __init__(self, window: float = 5.0, limit: int = 50_000) -> None:
        self.window = window
        self.limit = limit
        self.given: OrderedDict[tuple[int, bytes], float] = OrderedDict()
        self.drops: set[tuple[int, bytes]] = set()
        self.overflowed = False

    def gave(self, db_id: int, key: bytes, now: float) -> None:
        entry = (db_id, key)
        self.given[entry] = now
        self.given.move_to_end(entry)
        self._prune(now)
        while len(self.given) > self.limit:
            _, when = self.given.popitem(last=False)
            if now - when < self.window:
                self.overflowed = True

    def dropped(self, db_id: int, key: bytes) -> None:
        self.drops.add((db_id, key))

    def take(self, db_id: int, now: float) -> set[bytes]:
        self._prune(now)
        keys = {key for (d, key) in self.given if d == db_id}
        taken = {entry for entry in self.drops if entry[0] == db_id}
        self.drops -= taken
        return keys | {key for _, key in taken}

    def reset_overflow(self) -> None:
        self.overflowed = False

    def pending_drops(self) -> int:
        return len(self.drops)

    def forget_drops(self, db_id: int) -> None:
        """The database was recovered in full: whatever was cut off was merged."""
        self.drops = {e for e in self.drops if e[0] != db_id}

    def forget_database(self, db_id: int) -> None:
        for entry in [e for e in self.given if e[0] == db_id]:
            del self.given[entry]
        self.forget_drops(db_id)

    def _prune(self, now: float) -> None:
        while self.given:
            entry, when = next(iter(self.given.items()))
            if now - when < self.window:
                return
            del self.given[entry]
