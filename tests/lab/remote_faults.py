#!/usr/bin/env python3
"""Run by test_remote_hosts.py inside the operator's station: ``remote_faults.py INVENTORY OUT``.

Brings the inventory's hosts up as a cluster (over SSH only), injects crash/restart,
freeze/thaw, partition/heal and loss/clear_loss through the nemesis, and after each fault and
each undo waits for what the fault must cause as seen by the cluster itself (``ctdb status`` of
a node that was not touched); writes a JSON report to OUT:
``{"steps": [{"fault", "expect", "seen_after_s" | "error"}], "history": PATH}``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ctdblab.chaos import ClearLoss, Crash, Freeze, Heal, Loss, Nemesis, Partition, Restart, Thaw
from ctdblab.cluster.inventory import load_inventory
from ctdblab.cluster.lab import ClusterNotReady, LabCluster
from ctdblab.history import History

WAIT_S = 60.0


def seen_as(cluster: LabCluster, observer: int, subject: int, states: tuple[str, ...]) -> bool:
    try:
        by_pnn = {s.pnn: s for s in cluster.status(observer)}
    except Exception:  # noqa: BLE001 - a busy daemon: ask again
        return False
    return subject in by_pnn and any(w in by_pnn[subject].state() for w in states)


def main(inventory_path: str, out_path: str) -> int:
    inventory = load_inventory(inventory_path)
    out = Path(out_path)
    steps: list[dict] = []
    history_path = out.with_suffix(".history.jsonl")
    with History(history_path) as history, \
            LabCluster(len(inventory.hosts), daemon="pyctdbd", tunables="aggressive", clients=1,
                       workdir=out.parent / "faults-cluster", inventory=inventory) as cluster:
        nemesis = Nemesis(cluster, history)

        def step(fault, expect: str, check) -> None:
            t0 = time.monotonic()
            try:
                nemesis.inject(fault)
                cluster.wait_until(check, WAIT_S, expect, interval=0.2)
                steps.append({"fault": fault.name, "expect": expect,
                              "seen_after_s": round(time.monotonic() - t0, 2)})
            except (ClusterNotReady, RuntimeError, OSError) as e:
                steps.append({"fault": fault.name, "expect": expect, "error": str(e)})

        gone = ("DISCONNECTED",)
        step(Crash(1), "node 0 sees node 1 DISCONNECTED", lambda: seen_as(cluster, 0, 1, gone))
        step(Restart(1), "cluster healthy again", cluster.healthy)
        step(Freeze(2), "node 0 sees node 2 DISCONNECTED", lambda: seen_as(cluster, 0, 2, gone))
        step(Thaw(2), "cluster healthy again", cluster.healthy)
        step(Partition([[0], [1, 2]]), "node 1 sees node 0 DISCONNECTED",
             lambda: seen_as(cluster, 1, 0, gone))
        step(Heal(), "cluster healthy again", cluster.healthy)
        step(Loss(2, 100.0), "node 0 sees node 2 DISCONNECTED", lambda: seen_as(cluster, 0, 2, gone))
        step(ClearLoss(2), "cluster healthy again", cluster.healthy)
        tables = {n.name: n.run(["nft", "list", "tables"], timeout=10).stdout for n in cluster.nodes}
    out.write_text(json.dumps({"steps": steps, "history": str(history_path),
                               "nft_tables_after": tables}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
