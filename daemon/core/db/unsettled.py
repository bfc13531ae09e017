"""Keys whose lmaster may not know their dmaster after the membership changed, settled when a
call first needs them instead of during the recovery.

Every record has one dmaster and an lmaster that knows it. When nodes are lost (or join), that
can stop being true for some keys:

* the key's slot moved to another lmaster (a lost node's slot, or a joining node's taken back),
  which has never heard of the key;
* its lmaster's copy names a lost node as dmaster (the newest surviving copy is elsewhere);
* a hand-off was cut off by the generation change (its REQ_DMASTER or REPLY_DMASTER dropped):
  the giver and receiver know those keys (:mod:`.handoffs`), and the recovery collects them.

CTDB repairs every record of every database during the recovery, while every smbd waits; an
earlier pyctdbd scanned every record for these keys and repaired them, still in the recovery.
Here the recovery only records an *epoch* per volatile database -- the map before and after,
the lost nodes, the collected hand-off keys -- and the key's lmaster settles it the first time
it needs to know where the record is:

* **Suspect** (`Unsettled.suspect`): the lmaster is about to act on what it knows of a key (it
  holds no copy, or its copy names another node) and, for some epoch the key has not been
  settled since, the key's slot moved, its copy names a node lost then, or it is a cut-off
  hand-off key. A copy naming this node itself is never suspect: at most one live node names
  itself dmaster of a key, so that claim is the truth.
* **Settling**: the calls and packets for the key wait here while every active node sends its
  copy (`GatherCopies` -> `CopiesGathered`). The merge is CTDB's recovery merge for that one key
  (`core/db/partial_recovery.plan_repairs`): a live node naming itself stays dmaster and the
  lmaster points at it; otherwise the newest copy (highest rsn) becomes the lmaster's own, with
  rsn + 1, so no stale copy can ever win against it. Then the waiting events run again.
* **A REQ_DMASTER settles a key at once**: the sender named itself dmaster when it sent it (only
  the dmaster gives a record away), so its claim is the truth, whatever the lmaster's copy says
  or whether a gather is still under way (its answers are then ignored). Hand-offs of the
  current generation always pass through the lmaster, and a node's REQ_DMASTER reaches it before
  that node's answer to a gather sent later (one TCP stream per direction): a gather therefore
  never misses a hand-off of the new generation.
* Copies elsewhere are not rewritten: a node that is not the lmaster sends a call for a record it
  does not hold to the lmaster (`lost_nodes`: a copy naming a lost node is sent there too), and
  only the lmaster follows a copy's pointer.

Epochs end two ways. A full recovery of the database (CTDB's merge of every record) drops them
all. And shortly after every membership change each node *sweeps* (:mod:`.sweep`): it settles
in the background every key it is lmaster of that an open epoch makes suspect, then *closes*
those epochs for its lmaster role (`Unsettled.close`): `suspect` no longer looks at them and the
keys settled under them are forgotten. Their lost nodes are kept (`lost_nodes`): a node that is
not the lmaster and whose copy names a dead node must still send its call to the lmaster --
closing the lmaster's epochs says nothing about copies elsewhere. Until then settled keys are
remembered per database (key -> epoch sequence); a key the vacuum deletes at its lmaster is
forgotten (settling it again finds no copy anywhere, which is cheap).
Deviation from CTDB: until the sweep has settled it (a few seconds after the recovery), a
traverse (`ctdb catdb`, `smbstatus`) does not show a record whose dmaster was lost -- CTDB's
recovery makes its newest surviving copy visible before the recovery ends.

Pure state; the migration core (:mod:`.migration`) turns it into actions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ...protocol.types import LtdbHeader
from .ltdbrules import Record, lmaster_of
from .partial_recovery import Copy, plan_repairs

#: s before a gather that could not reach every active node is tried again (a node that went
#: away makes a recovery, which abandons the gather anyway).
GATHER_RETRY = 0.2


@dataclass(frozen=True)
class Epoch:
    seq: int
    old_map: tuple[int, ...]
    new_map: tuple[int, ...]
    lost: frozenset[int]
    keys: frozenset[bytes] = frozenset()

    def touches(self, key: bytes, known_dmaster: int | None) -> bool:
        return (key in self.keys or (known_dmaster is not None and known_dmaster in self.lost)
                or lmaster_of(key, self.old_map) != lmaster_of(key, self.new_map))


@dataclass
class _Db:
    epochs: list[Epoch] = field(default_factory=list)
    settled: dict[bytes, int] = field(default_factory=dict)      # key -> epoch seq settled at
    swept_lost: frozenset[int] = frozenset()    # lost nodes of epochs closed by a sweep


class Unsettled:
    def __init__(self) -> None:
        self._dbs: dict[int, _Db] = {}
        self._seq = 0

    # -- epochs ----------------------------------------------------------------------------------
    def add_epoch(self, db_id: int, old_map: Sequence[int], new_map: Sequence[int],
                  keys: Iterable[bytes] = ()) -> bool:
        """A membership change from `old_map` to `new_map`; `keys` the hand-offs it cut off.
        The same maps as the latest epoch (the recovery's own report after the vnnmap change)
        add their keys to it. The same change again later (the same node lost a second time) is
        a new epoch: keys settled since the first one may name that node again. False when
        nothing can be unsettled (no map before, or the same map)."""
        old, new = tuple(old_map), tuple(new_map)
        if not old or not new or old == new:
            return False
        db = self._dbs.setdefault(db_id, _Db())
        keys = frozenset(bytes(k) for k in keys)
        if db.epochs and db.epochs[-1].old_map == old and db.epochs[-1].new_map == new:
            ep = db.epochs[-1]
            if not keys <= ep.keys:
                db.epochs[-1] = Epoch(ep.seq, old, new, ep.lost, ep.keys | keys)
            return True
        self._seq += 1
        db.epochs.append(Epoch(self._seq, old, new, frozenset(old) - frozenset(new), keys))
        return True

    def clear(self, db_id: int) -> None:
        """Every record of the database was merged (a full recovery) or it is gone."""
        self._dbs.pop(db_id, None)

    def close(self, db_id: int, upto: int) -> int:
        """A sweep settled every suspect key of this lmaster under the epochs up to sequence
        `upto`: they no longer make a key suspect, and the keys settled under them alone are
        forgotten. Their lost nodes stay for `lost_nodes`. Returns how many epochs closed."""
        db = self._dbs.get(db_id)
        if db is None:
            return 0
        closed = [ep for ep in db.epochs if ep.seq <= upto]
        db.epochs = [ep for ep in db.epochs if ep.seq > upto]
        db.swept_lost = db.swept_lost.union(*(ep.lost for ep in closed))
        db.settled = {k: seq for k, seq in db.settled.items() if seq > upto}
        return len(closed)

    def settled_count(self, db_id: int) -> int:
        db = self._dbs.get(db_id)
        return 0 if db is None else len(db.settled)

    def any(self, db_id: int) -> bool:
        """Any open epoch (one no sweep has closed yet)?"""
        db = self._dbs.get(db_id)
        return db is not None and bool(db.epochs)

    def epochs(self, db_id: int) -> list[Epoch]:
        db = self._dbs.get(db_id)
        return list(db.epochs) if db is not None else []

    def lost_nodes(self, db_id: int) -> frozenset[int]:
        """Nodes lost since the last full recovery (in an open epoch or one a sweep closed): a
        copy naming one of them is no guide to the record."""
        db = self._dbs.get(db_id)
        if db is None:
            return frozenset()
        return db.swept_lost.union(*(ep.lost for ep in db.epochs))

    # -- keys ------------------------------------------------------------------------------------
    def suspect(self, db_id: int, key: bytes, record: Record | None, pnn: int) -> bool:
        """Must the lmaster settle `key` before acting on `record` (its own copy)?"""
        db = self._dbs.get(db_id)
        if db is None or not db.epochs:
            return False
        known = None if record is None else record[0].dmaster
        if known == pnn:
            self.settle(db_id, key)         # a node naming itself dmaster is the truth
            return False
        since = db.settled.get(key, 0)
        return any(ep.seq > since and ep.touches(key, known) for ep in db.epochs)

    def settle(self, db_id: int, key: bytes) -> None:
        db = self._dbs.get(db_id)
        if db is not None and db.epochs:
            db.settled[bytes(key)] = db.epochs[-1].seq

    def forget(self, db_id: int, key: bytes) -> None:
        """The record was deleted everywhere (vacuuming)."""
        db = self._dbs.get(db_id)
        if db is not None:
            db.settled.pop(bytes(key), None)



def settle_copies(key: bytes, pnn: int, lmasters: Sequence[int], own: Record | None,
                  gathered: Iterable[Copy]) -> tuple[LtdbHeader, bytes] | None:
    """What the lmaster `pnn` stores for `key` once every active node's copy is in (`own` its
    own): CTDB's merge for one key, this node's part of it. None: nothing to store (no copy
    anywhere -- the key is new -- or this node's copy is already right)."""
    copies = [c for c in gathered if c.pnn != pnn]
    if own is not None:
        copies.append(Copy(pnn, own[0], bytes(own[1])))
    if not copies:
        return None
    repairs = plan_repairs(lmasters, {bytes(key): copies}).get(pnn, [])
    result = (repairs[-1].header, repairs[-1].data) if repairs else None
    # A pointer at a live dmaster must rank below the dmaster's own copy: CTDB's full recovery
    # (core/db/recovery_plan.py, ctdb_recovery_helper's recdb_add) keeps the first copy pulled on
    # an rsn tie, in node order, and smbd changes the dmaster's data without raising its rsn, so
    # an equal pointer could win with stale data. (A dmaster's copy at rsn 0 keeps a tie.)
    current = result if result is not None else (None if own is None else (own[0], bytes(own[1])))
    if current is not None and current[0].dmaster != pnn:
        header = current[0]
        top = next((c.header.rsn for c in copies
                    if c.pnn == header.dmaster and c.header.dmaster == c.pnn), 0)
        if top > 0 and header.rsn >= top:
            result = (LtdbHeader(rsn=top - 1, dmaster=header.dmaster, reserved1=header.reserved1,
                                 flags=header.flags), current[1])
    return result
