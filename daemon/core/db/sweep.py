"""The sweep: after a membership change, each node settles in the background every key it is
lmaster of that an open epoch makes suspect (:mod:`.unsettled`), then closes those epochs for
its lmaster role -- so a new key of a moved slot no longer costs a gather round trip, a lost
dmaster's records become visible to traverses, and `Unsettled.settled` stops growing.

How a sweep runs (the shell, ``server/sweeper.py``, does the I/O; this module and
:mod:`.settling` decide):

1. **Plan** (`Sweeps.start`): once recovery mode has ended, for a volatile database with open
   epochs: the generation, the epochs up to the newest one (`upto`), every map they name, their
   lost nodes and cut-off hand-off keys.
2. **Keys**: every active node lists the keys of its copies for which `needs_sweep` holds --
   whose lmaster under the current map is the sweeping node and that an epoch could make
   suspect there (lmaster under one of the epochs' maps is another node, or the copy names a
   lost node); the request carries the plan, so the answering node needs no state of the
   lmaster's. The lmaster applies the same filter to its own records and adds the hand-off keys.
3. **Copies**, in batches (`batches`): every active node's copy of each key of a batch, with the
   existing gather (one PYCTDB_GATHER_COPIES request per node and batch).
4. **Apply**, per key under its chain lock (`SweptCopies`, in :mod:`.settling`): a key a
   single-key gather waits for is left to it; a key no longer suspect (a REQ_DMASTER or a gather
   settled it meanwhile, or the lmaster's copy names itself) is skipped; a key the vacuum
   deleted during the sweep is skipped; otherwise the merge is the gather's (`settle_copies`).
5. **Close** (`SweepFinished` and the last apply): when every key is applied and the sweep was
   not abandoned meanwhile, the epochs up to `upto` are closed (`Unsettled.close`).

Why applying a snapshot is safe
-------------------------------

The copies of a key are read at some moment (each node under the key's chain lock); the key is
applied later. A suspect key's dmaster can change in between only through the lmaster, and that
settles the key, so the snapshot is then skipped:

* A dmaster gives a record away with a REQ_DMASTER to the lmaster (`_send_dmaster`: the store of
  its copy naming the new dmaster and the REQ_DMASTER are actions of one core step, carried out
  in one loop turn of the shell; the lmaster's REQ_DMASTER handler settles the key,
  `KeySettling.settled_by`). A node answers the gather only after it read the key under its lock,
  and its REQ_DMASTER and its answer travel on the same TCP stream to the lmaster: a hand-off
  before the read arrives before the answer, so before the apply; a hand-off after the read
  settles the key before or after the apply -- either way what the lmaster stores agrees with
  the hand-off (the apply points the lmaster at the live node that named itself; the REQ_DMASTER
  then comes from the node it names).
* The lmaster itself gives a record away only as its dmaster: its copy names itself, which is
  never suspect (`Unsettled.suspect` settles the key on sight).
* A call that needs a suspect key at the lmaster starts a single-key gather (the key waits in
  `KeySettling.waiting`): the sweep leaves that key to it.
* A new generation (vnnmap), recovery mode, a full merge, a detach or new cut-off keys abandon
  the sweep: nothing of it is applied under a generation it did not start in; the next sweep
  covers every open epoch again.

Why closing is safe: after the epochs are closed, `suspect` ignores them, so a key must need no
settling under them any more. A key is suspect under an epoch only if its slot moved, its
lmaster's copy names a lost node, or it is a cut-off hand-off key. The hand-off keys are swept;
a key whose slot moved or whose copies name a lost node was listed by every node holding a copy
when it was asked -- and a copy that appears on a node after its listing came through a hand-off
of the current generation, through the lmaster, which settled the key. A key with no copy
anywhere is new: whoever creates it asks its lmaster, which acts on the current truth.

Failures (a node that does not answer, a malformed reply, recovery mode) abandon the sweep; the
shell retries with a backoff. The keys settled so far stay settled.

Limit: a node's key list travels as one control reply, at most 16 MiB (`MAX_NODE_MESSAGE`):
some 200,000 suspect keys of 40 bytes. A longer list fails that node's answer, so the sweep is
abandoned and retried every minute, and the keys are settled on first use as without a sweep.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ...protocol.types import LtdbHeader
from .ltdbrules import lmaster_of
from .unsettled import Epoch

#: Keys per gather request of a sweep.
BATCH = 500


@dataclass(frozen=True)
class SweepPlan:
    """What the sweeping lmaster asks the other nodes for, and what it closes when done."""

    db_id: int
    sweep_id: int
    generation: int
    lmaster: int                        # the sweeping node
    current_map: tuple[int, ...]
    maps: tuple[tuple[int, ...], ...]   # every map the epochs name (old and new)
    lost: frozenset[int]
    keys: frozenset[bytes]              # the epochs' cut-off hand-off keys
    upto: int                           # the newest epoch's sequence: closed when done


def needs_sweep(key: bytes, header: LtdbHeader | None, lmaster: int, current_map: Sequence[int],
                maps: Iterable[Sequence[int]], lost: frozenset[int]) -> bool:
    """Could an open epoch make this copy's key suspect at `lmaster`? (A superset of
    `Epoch.touches` without the hand-off keys: any epoch map giving the key another lmaster.)"""
    if lmaster_of(key, current_map) != lmaster:
        return False
    if header is not None and header.dmaster in lost:
        return True
    return any(lmaster_of(key, m) != lmaster for m in maps if m)


def batches(keys: Iterable[bytes], size: int = BATCH) -> list[list[bytes]]:
    ordered = sorted(set(bytes(k) for k in keys))
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


@dataclass
class Sweep:
    plan: SweepPlan
    epochs: tuple[Epoch, ...]           # as they were at the start: a change abandons the sweep
    started: float
    expected: int | None = None         # keys the shell fed; known at SweepFinished
    applied: int = 0
    settled: int = 0                    # keys stored by this sweep's merge
    skipped: int = 0                    # settled meanwhile, not suspect, or vacuumed
    left_to_gather: int = 0             # a single-key gather was under way
    forgotten: set[bytes] = field(default_factory=set)      # vacuumed during the sweep

    @property
    def done(self) -> bool:
        return self.expected is not None and self.applied >= self.expected


class Sweeps:
    """The running sweep of each database and how the last ones ended."""

    def __init__(self) -> None:
        self.running: dict[int, Sweep] = {}
        self.ended: dict[int, tuple[int, str]] = {}      # db_id -> (sweep_id, "closed"/reason)
        self._ids = itertools.count(1)
        self.completed = 0
        self.abandoned = 0

    def start(self, db_id: int, generation: int, pnn: int, current_map: tuple[int, ...],
              epochs: list[Epoch], now: float) -> SweepPlan | None:
        if not epochs or not current_map:
            return None
        self.abandon(db_id, "a new sweep started")
        maps = tuple(sorted({m for ep in epochs for m in (ep.old_map, ep.new_map)}))
        plan = SweepPlan(db_id, next(self._ids), generation, pnn, tuple(current_map), maps,
                         frozenset().union(*(ep.lost for ep in epochs)),
                         frozenset().union(*(ep.keys for ep in epochs)), epochs[-1].seq)
        self.running[db_id] = Sweep(plan, tuple(epochs), now)
        return plan

    def current(self, db_id: int, sweep_id: int) -> Sweep | None:
        sweep = self.running.get(db_id)
        return sweep if sweep is not None and sweep.plan.sweep_id == sweep_id else None

    def state(self, db_id: int, sweep_id: int) -> str:
        """"running", "closed", or why it was abandoned."""
        if self.current(db_id, sweep_id) is not None:
            return "running"
        ended = self.ended.get(db_id)
        return ended[1] if ended is not None and ended[0] == sweep_id else "unknown sweep"

    def forgotten(self, db_id: int, key: bytes) -> None:
        sweep = self.running.get(db_id)
        if sweep is not None:
            sweep.forgotten.add(bytes(key))

    def closed(self, sweep: Sweep) -> None:
        self.running.pop(sweep.plan.db_id, None)
        self.ended[sweep.plan.db_id] = (sweep.plan.sweep_id, "closed")
        self.completed += 1

    def abandon(self, db_id: int, reason: str) -> bool:
        sweep = self.running.pop(db_id, None)
        if sweep is None:
            return False
        self.ended[db_id] = (sweep.plan.sweep_id, reason)
        self.abandoned += 1
        return True

    def abandon_all(self, reason: str) -> None:
        for db_id in list(self.running):
            self.abandon(db_id, reason)
