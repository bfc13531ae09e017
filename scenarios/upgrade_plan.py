"""The rolling upgrade's generator: which node is upgraded when, and the phases of each step.

A step upgrades one node; the steps run one after another, so at most one node is ever out of
service.  Each step runs these phases (``ctdblab.events.UPGRADE_PHASES`` names them):

=========  ============================================================================================
disable    ``ctdb disable`` on the node; done when ``ctdb ip all`` shows every public IP hosted and
           none on it (the clients through its IPs moved to the other nodes)
stop       ``ctdb shutdown`` on the node; done when no daemon process is left on it
install    switch the node to the new build (pyctdbd); ctdbd: nothing (a plain restart) — and set
           ``[legacy] start as disabled`` in its ctdb.conf, so it comes back without taking IPs
start      start the daemon; done when every running node sees it connected, healthy and still
           DISABLED, and smbd listens on it again
enable     ``ctdb enable`` (and drop ``start as disabled`` again); done when the node hosts a public
           IP and every public IP is hosted (the rebalance brought clients back to it)
settle     a pause, so the clients' reconnections after the rebalance fall inside the step
=========  ============================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from ctdblab.errors import UserError
from ctdblab.events import UPGRADE_PHASES

STEP_PHASES = tuple(p for p in UPGRADE_PHASES if p != "step")


@dataclass(frozen=True)
class UpgradeStep:
    index: int
    node: int
    phases: tuple[str, ...] = STEP_PHASES

    def as_dict(self) -> dict:
        return {"index": self.index, "node": self.node, "phases": list(self.phases)}


def parse_order(spec: str, nodes: int) -> list[int]:
    """``pnn`` (0, 1, ..., N-1), ``reverse`` (N-1, ..., 0) or an explicit permutation "2,0,1"."""
    if spec == "pnn":
        return list(range(nodes))
    if spec == "reverse":
        return list(range(nodes - 1, -1, -1))
    try:
        order = [int(part) for part in spec.split(",")]
    except ValueError:
        raise UserError(f"--order takes pnn, reverse or a list of PNNs like 2,0,1, not {spec!r}") from None
    if sorted(order) != list(range(nodes)):
        raise UserError(f"--order {spec}: must name every PNN 0..{nodes - 1} exactly once")
    return order


def make_plan(nodes: int, order: str = "pnn") -> list[UpgradeStep]:
    if nodes < 2:
        raise UserError("a rolling upgrade needs at least 2 nodes (the others serve the clients)")
    return [UpgradeStep(index=i, node=pnn) for i, pnn in enumerate(parse_order(order, nodes))]
