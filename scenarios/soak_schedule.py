"""The soak's generator: a seeded schedule of faults, the same for every daemon.

``make_schedule(seed, faults, nodes)`` returns ``faults`` ``ScheduledFault``s drawn with
``random.Random(seed)`` only, so the same seed gives the same schedule on pyctdbd and on real
ctdbd, on any machine.  Targets that depend on the cluster's state (the leader) are not PNNs in
the schedule but a *role* and a *pick*: the nemesis resolves them when it applies the fault
(``resolve_target``), and the fault events record the PNN actually hit.

=====================  ===========================================================================
kind                   what the nemesis does (then it waits for the cluster to converge)
=====================  ===========================================================================
power_cycle            power_off the target (hard reset), hold, power_on
crash_restart          SIGKILL the target's daemon, hold, start it again
freeze_leader          SIGSTOP the leader's daemon, hold, SIGCONT
freeze_nonleader       the same on a non-leader
partition_minority     cut a minority of non-leaders off the private network, hold, heal
partition_leader       cut the leader (with a smaller minority, if any) off, hold, heal
flap                   the target's private link down for ``hold_s``, then up
loss                   drop ``percent`` % of the target's private packets, hold, clear
=====================  ===========================================================================

Hold times are drawn from ``HOLD_S`` per kind: long enough that the daemon must react (beyond
the aggressive profile's ~3 s dead-node detection) but short enough for 200 faults in ~1 hour.
Partitions hold at least 8 s, beyond the checkers' 5 s both-sides bound plus detection, so a
side that keeps its IPs is always caught.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("power_cycle", "crash_restart", "freeze_leader", "freeze_nonleader",
         "partition_minority", "partition_leader", "flap", "loss")

# (min, max) seconds each kind holds its fault before the nemesis undoes it.
HOLD_S = {
    "power_cycle": (4.0, 12.0),
    "crash_restart": (3.0, 10.0),
    "freeze_leader": (4.0, 12.0),
    "freeze_nonleader": (4.0, 12.0),
    "partition_minority": (8.0, 20.0),
    "partition_leader": (8.0, 20.0),
    "flap": (1.0, 6.0),
    "loss": (5.0, 12.0),
}
LOSS_PERCENT = (10, 40)


@dataclass(frozen=True)
class ScheduledFault:
    index: int
    kind: str
    role: str             # "any", "leader" or "nonleader": whom the pick chooses among
    pick: int             # index (mod the candidates) into the sorted candidate PNNs
    hold_s: float
    minority: int = 0     # partitions: how many nodes are on the small side
    percent: int = 0      # loss only

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v or k in ("index", "pick")}


def make_schedule(seed: int, faults: int, nodes: int) -> list[ScheduledFault]:
    """``faults`` faults for an ``nodes``-node cluster, from ``seed`` alone; every kind in turn
    is equally likely.  Partitions need 3+ nodes (a minority and a majority); with fewer, they
    are not drawn."""
    if faults < 1:
        raise ValueError(f"a soak needs at least 1 fault, not {faults}")
    if nodes < 2:
        raise ValueError(f"a soak needs at least 2 nodes, not {nodes}")
    rng = random.Random(seed)
    kinds = [k for k in KINDS if nodes >= 3 or not k.startswith("partition")]
    schedule = []
    for index in range(faults):
        kind = rng.choice(kinds)
        lo, hi = HOLD_S[kind]
        hold = round(rng.uniform(lo, hi), 1)
        pick = rng.randrange(1 << 16)
        role = {"freeze_leader": "leader", "partition_leader": "leader",
                "freeze_nonleader": "nonleader", "partition_minority": "nonleader"}.get(kind, "any")
        minority = percent = 0
        if kind.startswith("partition"):
            minority = rng.randint(1, (nodes - 1) // 2)
        if kind == "loss":
            percent = rng.randint(*LOSS_PERCENT)
        schedule.append(ScheduledFault(index, kind, role, pick, hold, minority, percent))
    return schedule


def resolve_target(fault: ScheduledFault, nodes: list[int], leader: int | None) -> int:
    """The PNN the fault hits, given the powered nodes and the current leader (None: unknown,
    then "leader" falls back to the lowest PNN and "nonleader" to any)."""
    if not nodes:
        raise ValueError("no powered node to fault")
    if fault.role == "leader":
        return leader if leader in nodes else min(nodes)
    candidates = sorted(n for n in nodes if fault.role == "any" or n != leader) or sorted(nodes)
    return candidates[fault.pick % len(candidates)]


def partition_groups(fault: ScheduledFault, nodes: list[int], target: int,
                     leader: int | None) -> list[list[int]]:
    """[small side, large side]: the target plus ``minority - 1`` more nodes (drawn with the
    fault's pick; never the leader in a minority partition) against everyone else."""
    size = max(1, min(fault.minority, (len(nodes) - 1) // 2))
    pool = sorted(n for n in nodes if n != target
                  and not (fault.kind == "partition_minority" and n == leader))
    random.Random(fault.pick).shuffle(pool)
    small = sorted([target] + pool[:size - 1])
    return [small, [n for n in sorted(nodes) if n not in small]]


def describe(fault: ScheduledFault) -> str:
    extra = ""
    if fault.minority:
        extra = f" minority={fault.minority}"
    if fault.percent:
        extra = f" {fault.percent}%"
    return f"#{fault.index:<3} {fault.kind:<18} {fault.role:<9} hold {fault.hold_s:4.1f}s{extra}"
