"""pyctdbd's recovery after nodes were lost or joined, as decisions: which vnnmap, which records each survivor
reports, and which records each survivor must store so that every key again has exactly one
dmaster that its lmaster knows — without freezing a database or moving a record that the lost
nodes had nothing to do with.

CTDB recovers every database the same way whatever happened: freeze everywhere, pull every
record of every node, push the merge back to every node, thaw. Its cost grows with the size of
the databases and every smbd on every node waits through it. When nodes were only *lost* — the
nodes being recovered were all recovered together last time and have served since — most of
that is unnecessary:

* **Persistent databases** are written only by TRANS3_COMMIT (or by the tool's recovery-style
  wipe/restore), which every active node applies; recovery mode refuses new commits. Equal
  sequence numbers on every survivor mean equal contents: nothing to do. Unequal ones (a commit
  cut short by the loss) get CTDB's full recovery of that database.
* **Volatile records** had one dmaster and one lmaster. Only keys whose dmaster or lmaster was
  lost need repair. Once every survivor holds the recovery's generation, record traffic between
  daemons is quiescent (old packets are dropped, new calls are held until the recovery ends), and
  smbd only writes records its node is dmaster of, which does not change dmaster or rsn; so the
  survivors' copies can be read and repaired without a freeze.

The vnnmap keeps its slots (`slot_stable_vnnmap`): a lost node's slots go to survivors, so only
the keys of those slots change lmaster (CTDB rebuilds the map from the live nodes and most keys
change lmaster, which is one reason it must move every record).

Which keys: a survivor reports (`is_affected`) its copies whose dmaster, or whose lmaster in
the old map, was lost, or whose lmaster changes with the new map (the slots of a lost node, or
of a joining node, which takes its slots back); a node that joined reports everything it holds
(it started afresh: nothing); and each node the keys it handed to another node shortly before
the generation changed (`core/db/handoffs.py`): a REQ_DMASTER or REPLY_DMASTER of the old
generation is dropped where it arrives, so such a record may have been given away by one
survivor and not yet taken by another. Most keys are settled from the reports alone
(`plan_from_reports`, `settle_reported`); for the few that may be held unreported (a hand-off's
new dmaster) the leader fetches every survivor's copy, and `plan_repairs` merges copies as
CTDB's recovery merges every key.

The result is what CTDB's recovery would leave in terms of data (the newest surviving copy of
every key), with the dmasters where the survivors already had them instead of all on the leader.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
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


def is_affected(dmaster: int, old_lmaster: int | None, new_lmaster: int | None,
                live: Collection[int]) -> bool:
    """Does a node report this copy? Its dmaster or its old lmaster is gone, or its key changed
    lmaster (a lost node's slot given away, a joining node's slot given back)."""
    return (dmaster not in live or old_lmaster is None or old_lmaster not in live
            or old_lmaster != new_lmaster)


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


def plan_from_reports(old_map: Sequence[int], new_map: Sequence[int], live: Collection[int],
                      reports: Mapping[int, Iterable[tuple[bytes, LtdbHeader, bytes]]]
                      ) -> tuple[dict[int, list[Repair]], set[bytes]]:
    """The repairs the scan's reports alone decide, and the keys whose every copy must be
    fetched first. `reports[pnn]`: what node `pnn` reported, as (key, header, value).

    A key reported only because a lost node touched it, or because its slot moved, needs no
    more: every holder reports such a copy (its dmaster or lmaster is gone, or its lmaster
    changes), except copies pointing at live nodes, which are older than the ones pointing at
    the lost node, and — when the key's lmaster lives — the lmaster's own copy if it names a
    live dmaster. So: if the live lmaster did not report the key, it knows a live dmaster and
    the copies naming a lost node are pointed at it; otherwise the reported copies are merged
    (`plan_repairs`). A key some node reported as a hand-off (not for those reasons), or whose
    slot moved away from a live lmaster that did not report it, is fetched from every node:
    the new dmaster of a cut-off hand-off may hold it without reporting it."""
    by_key: dict[bytes, list[Copy]] = defaultdict(list)
    for pnn in sorted(reports):
        for key, header, data in reports[pnn]:
            by_key[bytes(key)].append(Copy(pnn, header, bytes(data)))
    return settle_reported(old_map, new_map, live, by_key)


def settle_reported(old_map: Sequence[int], new_map: Sequence[int], live: Collection[int],
                    by_key: Mapping[bytes, Sequence[Copy]]) -> tuple[dict[int, list[Repair]], set[bytes]]:
    """`plan_from_reports` over reports already grouped by key (each key's reported copies)."""
    live = frozenset(live)
    repairs: dict[int, list[Repair]] = defaultdict(list)
    fetch: set[bytes] = set()
    mergeable: dict[bytes, Sequence[Copy]] = {}
    for key, copies in by_key.items():
        old_lmaster, new_lmaster = lmaster_of(key, old_map), lmaster_of(key, new_map)
        if new_lmaster is None:
            continue
        if any(not is_affected(c.header.dmaster, old_lmaster, new_lmaster, live) for c in copies):
            fetch.add(key)
        elif old_lmaster in live and all(c.pnn != old_lmaster for c in copies):
            if old_lmaster != new_lmaster:
                fetch.add(key)
                continue
            for c in copies:
                if c.header.dmaster not in live:
                    repairs[c.pnn].append(Repair(key, _with_dmaster(c.header, old_lmaster), c.data))
        else:
            mergeable[key] = copies
    for pnn, planned in plan_repairs(new_map, mergeable).items():
        repairs[pnn] += planned
    return dict(repairs), fetch


def _with_dmaster(header: LtdbHeader, dmaster: int) -> LtdbHeader:
    return LtdbHeader(rsn=header.rsn, dmaster=dmaster, reserved1=header.reserved1, flags=header.flags)
