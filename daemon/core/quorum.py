"""Whether this node is cut off from the majority: pyctdbd's rule for partitions.

CTDB has no quorum: a node cut off from the rest keeps its public IPs until it has been without
a leader for RecoveryDropAllIPs (120 s), while the other side takes the same IPs over — for
clients, two servers answering ARP for one address. pyctdbd instead counts: a node that is
connected to fewer than half of the nodes in its nodes file (itself included; deleted entries do
not count) is *cut off*. A cut-off node releases its public IPs at once, does not lead (a
leader steps down and releases the cluster lock, so the majority can take it) and does not
take the lock until it is back among a majority.

The bound: an isolated node stops hearing the peers it watches after `DeadTimeoutMs`; at that
moment it asks the peers it does not watch (core/death_reports.py) and counts those that do not
answer within half a dead timeout as gone (a peer it watches is gone after one dead timeout
itself). With the defaults (HeartbeatIntervalMs 100, DeadTimeoutMs 400) it has decided within
0.6 s of the cut and released its IPs a moment later, about when the majority (which needs as
long to notice, then elects and runs a takeover) brings them up elsewhere.

An exact half (2 of 4, 1 of 2) is not cut off: there the cluster lock decides, as in CTDB. The
price of the rule is availability when most nodes are gone at once (1 of 3 serves nothing),
which is also when a cluster filesystem loses its own quorum.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Quorum:
    members: int              # nodes in the nodes file, deleted ones not counted
    cut_off: bool = False

    def update(self, connected: int) -> bool | None:
        """`connected` nodes (this one included) are connected now. Returns the new `cut_off`
        when it changed, else None."""
        cut_off = 2 * connected < self.members
        if cut_off == self.cut_off:
            return None
        self.cut_off = cut_off
        return cut_off
