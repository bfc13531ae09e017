"""pyctdbd's recovery after nodes were lost or joined, as decisions: the vnnmap, whether the
nodes served together, and CTDB's merge of one key's copies -- without freezing a database or
moving a record that the membership change had nothing to do with.

CTDB recovers every database the same way whatever happened: freeze everywhere, pull every
record of every node, push the merge back to every node, thaw. Its cost grows with the size of
the databases and every smbd on every node waits through it. When the nodes being recovered
were all recovered together last time and have served since, most of that is unnecessary:

* **Persistent databases** are written only by TRANS3_COMMIT (or by the tool's recovery-style
  wipe/restore), which every active node applies; recovery mode refuses new commits. Equal
  sequence numbers on every survivor mean equal contents: nothing to do. Unequal ones (a commit
  cut short by the loss) get CTDB's full recovery of that database.
* **Volatile records** had one dmaster and one lmaster. Only keys whose dmaster or lmaster was
  lost, whose slot moved, or whose hand-off the generation change cut off can have an lmaster
  that does not know their dmaster; the key's lmaster settles such a key the first time a call
  needs it (:mod:`.unsettled`), with `plan_repairs`, CTDB's merge for that key.

The vnnmap keeps its slots (`slot_stable_vnnmap`): a lost node's slots go to survivors, so only
the keys of those slots change lmaster (CTDB rebuilds the map from the live nodes and most keys
change lmaster, which is one reason it must move every record).

The result is what CTDB's recovery would leave in terms of data (the newest surviving copy of
every key), with the dmasters where the survivors already had them instead of all on the leader.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ...protocol.types import LtdbHeader
from .ltdbrules import lmaster_of


@dataclass(frozen=True)
class Copy:
    """One survivor's copy of a key, as it reported it."""

    pnn: int
    header: LtdbHeader
    data: bytes


@dataclass(frozen=True)
class Repair:
    """A record to store on one node: the whole record, header and value."""

    key: bytes
    header: LtdbHeader
    data: bytes


def slot_stable_vnnmap(previous: Sequence[int], lmasters: Sequence[int]) -> list[int]:
    """The new vnnmap: `previous` with every slot of a node that is no longer an lmaster given
    to the live lmaster holding the fewest slots (lowest pnn on a tie). A node that is an
    lmaster but not in `previous` (one that joined) means a fresh map — the sorted lmasters —
    as CTDB builds it; so does an empty `previous`."""
    live = sorted(set(lmasters))
    if not live:
        return []
    if not previous or not set(live) <= set(previous):
        return live
    slots = [p if p in live else None for p in previous]
    count = {p: slots.count(p) for p in live}
    for i, pnn in enumerate(slots):
        if pnn is None:
            chosen = min(live, key=lambda p: (count[p], p))
            slots[i] = chosen
            count[chosen] += 1
    return slots                    # type: ignore[return-value]


def came_from_all(came_from: Mapping[int, int], invalid: int) -> int | None:
    """The generation every node was last recovered into and served in, if they agree on a
    valid one; None means a node joined, missed a recovery or saw its last one fail: recover
    everything CTDB's way."""
    values = set(came_from.values())
    if len(values) != 1:
        return None
    (value,) = values
    return None if value == invalid else value


def plan_repairs(new_map: Sequence[int], copies: Mapping[bytes, Iterable[Copy]]
                 ) -> dict[int, list[Repair]]:
    """Per node, the records it must store so that each key in `copies` (every survivor's copy
    of it: the keys some survivor reported) has one dmaster, holding the newest copy, that its
    lmaster in `new_map` knows. CTDB's merge rule picks the copy to keep: the highest rsn, on a
    tie one whose holder names itself dmaster (then the lowest pnn). A holder naming itself
    stays dmaster; otherwise the key's lmaster becomes dmaster with that copy, its rsn + 1 so it
    beats every stale copy in any later merge. Every other copy is pointed at the dmaster."""
    repairs: dict[int, list[Repair]] = defaultdict(list)
    for key, key_copies in copies.items():
        found = sorted(key_copies, key=lambda c: c.pnn)
        lmaster = lmaster_of(key, new_map)
        if not found or lmaster is None:
            continue
        winner = max(found, key=lambda c: (c.header.rsn, c.header.dmaster == c.pnn))
        if winner.header.dmaster == winner.pnn:
            dmaster = winner.pnn
        else:
            dmaster = lmaster
            kept = LtdbHeader(rsn=winner.header.rsn + 1, dmaster=lmaster,
                              reserved1=winner.header.reserved1, flags=winner.header.flags)
            repairs[lmaster].append(Repair(key, kept, winner.data))
        for c in found:
            if c.pnn != dmaster and c.header.dmaster != dmaster:
                repairs[c.pnn].append(Repair(key, _with_dmaster(c.header, dmaster), c.data))
        if dmaster != lmaster and not any(c.pnn == lmaster for c in found):
            pointer = _with_dmaster(winner.header, dmaster)
            repairs[lmaster].append(Repair(key, pointer, winner.data))
    return dict(repairs)


def _with_dmaster(header: LtdbHeader, dmaster: int) -> LtdbHeader:
    return LtdbHeader(rsn=header.rsn, dmaster=dmaster, reserved1=header.reserved1, flags=header.flags)
