"""The lmaster's side of settling keys after a membership change (rules in :mod:`.unsettled`):
which events must wait for a key to be settled, the gather that settles it, and what becomes
of the waiting events when it is settled or abandoned; and the background sweep's side in the
core (:mod:`.sweep`): its plan, the rules for applying its copies of a key, the closing of the
epochs. The migration core (:mod:`.migration`) asks it at the points where the lmaster acts on
what it knows of a key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .ltdbrules import Record, lmaster_of
from .migration_events import (
    Action, CopiesGathered, Event, ForceRecovery, GatherCopies, KeysUnsettled, LocalCall, Log,
    Requeue, StoreRecord, SweepFinished, SweptCopies,
)
from .sweep import Sweep, SweepPlan, Sweeps
from .unsettled import GATHER_RETRY, Unsettled, settle_copies

Key = tuple[int, bytes]
#: Gathers of one key that could not reach every node before a recovery is forced (about two
#: seconds at GATHER_RETRY).
MAX_FAILED_GATHERS = 10


class KeySettling:
    def __init__(self, pnn: int, databases: Mapping[int, Any]) -> None:
        self.pnn = pnn
        self.databases = databases      # db_id -> DbAttached (the migration core's)
        self.unsettled = Unsettled()
        self.sweeps = Sweeps()
        self.waiting: dict[Key, list[Event]] = {}       # events held while a key is settled
        self.failed_gathers: dict[Key, int] = {}
        self.recovering = False     # no gathers in recovery mode: copies are being moved
        self.settled_by_gather = 0
        self.settled_by_handoff = 0
        self.settled_by_sweep = 0

    def must_wait(self, db_id: int, key: bytes, record: Record | None, lmaster: int | None) -> bool:
        """Must an event that makes this node act as the key's lmaster wait for it to be
        settled? (Only this node as lmaster; a gather for the key may already be under way.)"""
        if lmaster != self.pnn:
            return False
        if (db_id, key) in self.waiting:        # (also after a sweep closed the epochs)
            return True
        return self.unsettled.any(db_id) and self.unsettled.suspect(db_id, key, record, self.pnn)

    def wait(self, db_id: int, key: bytes, event: Event) -> list[Action]:
        """Hold `event` until the key is settled; the first one starts the gather."""
        if isinstance(event, LocalCall):
            event = replace(event, requeued=True)      # counted when it arrived
        held = self.waiting.get((db_id, key))
        if held is not None:
            held.append(event)
            return []
        self.waiting[(db_id, key)] = [event]
        return [] if self.recovering else [GatherCopies(db_id, key)]

    def gathered(self, ev: CopiesGathered, record: Record | None, lmasters: tuple[int, ...],
                 lmaster: int | None) -> list[Action]:
        """Every active node's copy is in (under the key's chain lock, `record` our own)."""
        key = bytes(ev.key)
        held = self.waiting.pop((ev.db_id, key), None)
        if held is None:
            return []                   # settled by a REQ_DMASTER meanwhile, or abandoned
        if not ev.complete:
            self.waiting[(ev.db_id, key)] = held
            if self.recovering:
                return []               # gathered again when recovery mode ends
            tries = self.failed_gathers[(ev.db_id, key)] = self.failed_gathers.get((ev.db_id, key), 0) + 1
            if tries == MAX_FAILED_GATHERS:
                # A node that keeps failing to send its copy: CTDB's full recovery merges every
                # record (and the new map releases what waits here).
                text = (f"cannot settle a key of db 0x{ev.db_id:08x}: {tries} gathers of every "
                        "node's copy failed")
                return [Log(logging.ERROR, text), ForceRecovery(text),
                        GatherCopies(ev.db_id, key, GATHER_RETRY)]
            return [GatherCopies(ev.db_id, key, GATHER_RETRY)]
        self.failed_gathers.pop((ev.db_id, key), None)
        actions: list[Action] = []
        if lmaster == self.pnn:
            actions = self._merge(ev.db_id, key, record, lmasters, ev.copies, "a gather")
            self.settled_by_gather += 1
        return actions + [Requeue(e) for e in held]

    def _merge(self, db_id: int, key: bytes, record: Record | None, lmasters: tuple[int, ...],
               copies: tuple, how: str) -> list[Action]:
        """CTDB's merge of one key's copies at its lmaster; the key is settled."""
        actions: list[Action] = []
        result = settle_copies(key, self.pnn, lmasters, record, copies)
        if result is not None:
            header, data = result
            actions.append(StoreRecord(db_id, key, header, data))
            actions.append(Log(logging.DEBUG, f"settled a key of db 0x{db_id:08x} by {how}: "
                                              f"dmaster {header.dmaster}, rsn {header.rsn}"))
        self.unsettled.settle(db_id, key)
        return actions

    def handoff_is_truth(self, db_id: int, key: bytes, record: Record | None, lmaster: int | None) -> bool:
        """A REQ_DMASTER reached the lmaster while its copy may be stale: believe its sender."""
        return self.must_wait(db_id, key, record, lmaster)

    def settled_by(self, db_id: int, key: bytes) -> list[Action]:
        """A REQ_DMASTER settled the key: whatever waited for it runs again (a gather still
        under way is ignored when it comes back, also after a sweep closed the epochs)."""
        self.unsettled.settle(db_id, key)
        held = self.waiting.pop((db_id, key), None)
        if held is None:
            return []
        self.settled_by_handoff += 1
        return [Requeue(e) for e in held]

    def target(self, db_id: int, dmaster: int, lmaster: int | None) -> int:
        """Where a call goes that this node sends to the dmaster its copy names: to the lmaster
        instead when that node was lost (a copy naming it is no guide)."""
        if lmaster is not None and lmaster != self.pnn and dmaster in self.unsettled.lost_nodes(db_id):
            return lmaster
        return dmaster

    def recovery_mode(self, active: bool) -> list[Action]:
        """Leaving recovery mode starts the gathers of the keys that waited through it."""
        self.recovering = active
        if active:
            self.sweeps.abandon_all("recovery mode started")
            return []
        return [GatherCopies(db_id, key) for db_id, key in self.waiting]

    # -- what changes the epochs -----------------------------------------------------------------
    def keys_unsettled(self, ev: KeysUnsettled, current_map: tuple[int, ...], db: Any) -> list[Action]:
        """The recovery's word on the membership change (`db`: the database as attached, None
        when this node does not know it)."""
        if db is not None and not db.persistent:
            self.unsettled.add_epoch(ev.db_id, ev.old_map, current_map, ev.keys)
            self.sweeps.abandon(ev.db_id, "the recovery reported keys")
        return []

    def vnnmap_changed(self, old_map: tuple[int, ...], new_map: tuple[int, ...],
                       volatile_dbs: list[int]) -> list[Action]:
        """A new map: an epoch for every volatile database (the recovery adds its cut-off
        hand-offs later, before any call can leave a node); gathers under way are abandoned
        and their events run again under the new generation."""
        for db_id in volatile_dbs:
            self.unsettled.add_epoch(db_id, old_map, new_map)
        self.sweeps.abandon_all("the vnnmap changed")
        return self._release(lambda k: True)

    def database_merged(self, db_id: int) -> list[Action]:
        """A full recovery merged every record of the database (or it was detached)."""
        self.unsettled.clear(db_id)
        self.sweeps.abandon(db_id, "the database was merged or detached")
        return self._release(lambda k: k[0] == db_id)

    def forget(self, db_id: int, key: bytes) -> None:
        """The vacuum deleted the record everywhere (a sweep under way skips the key: its
        snapshot may predate the deletion)."""
        self.unsettled.forget(db_id, key)
        self.sweeps.forgotten(db_id, key)

    # -- the sweep (core/db/sweep.py) --------------------------------------------------------------
    def step(self, event: CopiesGathered | SweptCopies | SweepFinished, record: Record | None,
             lmasters: tuple[int, ...], now: float) -> list[Action]:
        """The settling events the migration core hands over (`record`: under the key's lock)."""
        if isinstance(event, CopiesGathered):
            return self.gathered(event, record, lmasters, lmaster_of(event.key, lmasters))
        if isinstance(event, SweptCopies):
            return self.swept(event, record, lmasters, now)
        return self.sweep_finished(event, now)

    def sweepable(self) -> list[int]:
        """Volatile databases with open epochs."""
        return [d for d, db in self.databases.items() if not db.persistent and self.unsettled.any(d)]

    def start_sweep(self, db_id: int, generation: int, lmasters: tuple[int, ...],
                    now: float) -> SweepPlan | None:
        """The plan of a new sweep of `db_id` (None: nothing to sweep, or in recovery mode)."""
        db = self.databases.get(db_id)
        if self.recovering or db is None or db.persistent:
            return None
        return self.sweeps.start(db_id, generation, self.pnn, lmasters, self.unsettled.epochs(db_id), now)

    def swept(self, ev: SweptCopies, record: Record | None, lmasters: tuple[int, ...],
              now: float) -> list[Action]:
        """Apply a sweep's copies of one key (under its chain lock; rules in :mod:`.sweep`)."""
        sweep = self.sweeps.current(ev.db_id, ev.sweep_id)
        if sweep is None:
            return []                   # abandoned meanwhile
        sweep.applied += 1
        key = bytes(ev.key)
        actions: list[Action] = []
        if (ev.db_id, key) in self.waiting:
            sweep.left_to_gather += 1   # the single-key gather under way settles it
        elif (key in sweep.forgotten or lmaster_of(key, lmasters) != self.pnn
              or not self.unsettled.suspect(ev.db_id, key, record, self.pnn)):
            sweep.skipped += 1
        else:
            actions = self._merge(ev.db_id, key, record, lmasters, ev.copies, "the sweep")
            sweep.settled += 1
            self.settled_by_sweep += 1
        return actions + self._close_if_done(sweep, now)

    def sweep_finished(self, ev: SweepFinished, now: float) -> list[Action]:
        sweep = self.sweeps.current(ev.db_id, ev.sweep_id)
        if sweep is None:
            return []
        if ev.failed:
            self.sweeps.abandon(ev.db_id, ev.failed)
            return []
        sweep.expected = ev.keys
        return self._close_if_done(sweep, now)

    def _close_if_done(self, sweep: Sweep, now: float) -> list[Action]:
        if not sweep.done:
            return []
        plan = sweep.plan
        covered = tuple(ep for ep in self.unsettled.epochs(plan.db_id) if ep.seq <= plan.upto)
        if covered != sweep.epochs:     # cannot happen: every change of them abandons the sweep
            self.sweeps.abandon(plan.db_id, "the epochs changed during the sweep")
            return [Log(logging.WARNING, f"sweep of db 0x{plan.db_id:08x} abandoned: its epochs changed")]
        self.unsettled.close(plan.db_id, plan.upto)
        self.sweeps.closed(sweep)
        db = self.databases.get(plan.db_id)
        name = db.name if db is not None and db.name else f"0x{plan.db_id:08x}"
        return [Log(logging.INFO, f"swept db {name}: {sweep.expected} keys, {sweep.settled} settled, "
                                  f"in {max(0.0, now - sweep.started):.2f} s")]

    def _release(self, which: Any) -> list[Action]:
        actions: list[Action] = []
        for k in [k for k in self.waiting if which(k)]:
            actions += [Requeue(e) for e in self.waiting.pop(k)]
            self.failed_gathers.pop(k, None)
        return actions
