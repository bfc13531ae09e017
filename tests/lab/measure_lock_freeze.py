"""What a frozen (SIGSTOP) leader does to the cluster, per daemon and cluster lock (root).

    python tests/lab/measure_lock_freeze.py --daemon ctdb --lock etcd [--watch 45] [--freeze-helper]

3 nodes, aggressive tunables.  The leader's daemon processes are frozen (chaos ``freeze``: not
its lock helper, which is a process of its own; ``--freeze-helper`` stops the etcd lock helper
too, as when the whole machine hangs); for ``--watch`` seconds a surviving node is
asked who leads and who hosts the public IPs, and (with ``--lock etcd``) etcd who holds the lock.
Printed: when the majority had a leader of its own, when it hosted every public IP, and the lock
holder at the end; then the leader is thawed and the time until the cluster is healthy again.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ctdblab.chaos.processes import Freeze, Thaw
from ctdblab.cluster.etcd_lock import lock_helper_pids
from ctdblab.cluster.lab import ClusterNotReady, LabCluster


def settled_leader(cluster: LabCluster, timeout: float = 30.0) -> int:
    """The leader once every node names the same one (and, with etcd, it holds the lock)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            views = {cluster.leader(n.index) for n in cluster.nodes}
            if len(views) == 1:
                (leader,) = views
                if cluster.etcd is None or cluster.etcd.lock_holder(cluster.node(leader)) == leader:
                    return leader
        except (ClusterNotReady, ValueError, RuntimeError, subprocess.TimeoutExpired):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"no settled leader within {timeout:g} s")
        time.sleep(0.5)


def watch(cluster: LabCluster, frozen: int, seconds: float) -> dict:
    majority = [n.index for n in cluster.nodes if n.index != frozen]
    t0 = time.monotonic()
    seen: dict = {"leader_s": None, "new_leader": None, "ips_s": None, "holders": []}
    while time.monotonic() - t0 < seconds:
        try:
            lead, owners = cluster.leader(majority[0]), cluster.ip_all(majority[0])
        except (ClusterNotReady, ValueError, subprocess.TimeoutExpired):
            lead, owners = None, {}
        now = round(time.monotonic() - t0, 1)      # when the answer was complete
        if lead in majority and seen["leader_s"] is None:
            seen["leader_s"], seen["new_leader"] = now, lead
        if seen["ips_s"] is None and owners and all(o in majority for o in owners.values()):
            seen["ips_s"] = now
        if cluster.etcd is not None:
            try:
                holder = cluster.etcd.lock_holder(cluster.node(majority[0]))
            except (RuntimeError, ValueError):
                holder = "?"
            now = round(time.monotonic() - t0, 1)
            if not seen["holders"] or seen["holders"][-1][1] != holder:
                seen["holders"].append((now, holder))
        time.sleep(0.5)
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--daemon", choices=("ctdb", "pyctdbd"), default="ctdb")
    parser.add_argument("--lock", choices=("file", "etcd"), default="etcd")
    parser.add_argument("--watch", type=float, default=45.0, help="seconds frozen")
    parser.add_argument("--freeze-helper", action="store_true",
                        help="also SIGSTOP the leader's ctdb_etcd_lock helper")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lockfreeze-", dir="/var/tmp") as tmp, \
            LabCluster(3, daemon=args.daemon, tunables="aggressive", clients=0,
                       workdir=Path(tmp) / "cluster", lock=args.lock,
                       progress=lambda m: print(m, file=sys.stderr)) as cluster:
        leader = settled_leader(cluster)
        outcome = Freeze(leader).apply(cluster)
        frozen = list(outcome.value)
        if args.freeze_helper:
            helpers = lock_helper_pids(cluster.node(leader))
            cluster.node(leader).signal_processes(helpers, signal.SIGSTOP)
            frozen += helpers
            print(f"also frozen: lock helper pids {helpers}", file=sys.stderr)
        try:
            seen = watch(cluster, leader, args.watch)
        finally:
            Thaw(leader, pids=frozen).apply(cluster)
        try:
            healed = round(cluster.wait_healthy(timeout=120), 1)
        except ClusterNotReady as e:
            healed = f"not within 120 s ({e})"
        helper = ", lock helper frozen too" if args.freeze_helper else ""
        print(f"{args.daemon}, {args.lock} lock{helper}: leader {leader} frozen {args.watch:g} s; "
              f"majority leader {seen['new_leader']} after {seen['leader_s']} s, every public IP "
              f"in the majority after {seen['ips_s']} s; lock holder over time "
              f"(s, pnn) {seen['holders']}; healthy {healed} s after the thaw")
    return 0


if __name__ == "__main__":
    sys.exit(main())
