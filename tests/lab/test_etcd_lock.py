"""The etcd cluster lock (``--lock etcd``) fences like a real cluster, for both daemons.

3 nodes, one etcd member in each on the private network, CTDB's ctdb_etcd_lock helper:

(a) the cluster comes up with a leader, and that leader holds the lock key in etcd;
(b) a partition cutting the leader off from the other two: the majority elects a new leader that
    takes the lock (once the old lease expired) and hosts every public IP within
    TAKEOVER_BOUND_S — with ctdbd too, which keeps a shared-file lock across a partition;
(c) after teardown no etcd process of the cluster is left and its data directories are gone.

The figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from ctdblab.chaos.network import Heal, Partition
from ctdblab.cluster.etcd_lock import DATA_SUBDIR, LOCK_TTL_S
from ctdblab.cluster.lab import ClusterNotReady, LabCluster

# Bound on partition -> majority has a new leader holding the lock and every public IP.  What it
# is made of (aggressive tunables): ctdbd marks the cut-off leader dead after KeepaliveInterval 1 s
# x KeepaliveLimit 2 (+1), elects in ElectionTimeout 1 s, finds the old key gone LOCK_TTL_S = 3 s
# after its last renewal, recovers and takes the IPs over (TakeoverTimeout 3 s).  If the first
# winner still meets the old key it bans itself (CTDB: "Unable to get cluster lock, banning
# node") and the third node wins the next election: one more election period.
TAKEOVER_BOUND_S = 30.0


def _etcd_pids(workdir: Path) -> list[int]:
    """etcd processes whose command line names this cluster's work dir."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"etcd") and str(workdir).encode() in b" ".join(cmdline):
            try:
                state = Path(f"/proc/{entry.name}/stat").read_text().split(") ", 1)[1][0]
            except (OSError, IndexError):
                continue
            if state != "Z":                      # a zombie is dead, only not yet reaped
                found.append(int(entry.name))
    return found


def _majority_view(cluster: LabCluster, majority: list[int]) -> tuple[int, dict[str, int]] | None:
    """(leader, {IP: owner}) as a majority node sees it, or None while it cannot answer."""
    try:
        return cluster.leader(majority[0]), cluster.ip_all(majority[0])
    except (ClusterNotReady, ValueError, OSError, subprocess.TimeoutExpired):
        return None    # a node in recovery may not answer the ctdb tool for a while


@pytest.mark.parametrize("daemon", ["ctdb", "pyctdbd"])
def test_etcd_lock_fences_a_partitioned_leader(daemon, tmp_path):
    workdir = tmp_path / "cluster"
    with LabCluster(3, daemon=daemon, tunables="aggressive", clients=0, workdir=workdir,
                    lock="etcd", progress=print) as cluster:
        assert cluster.etcd is not None
        # (a) a leader, and it is the one holding the etcd lock
        leader = cluster.leader(0)
        holder = None
        deadline = time.monotonic() + 10
        while holder != leader and time.monotonic() < deadline:
            holder = cluster.etcd.lock_holder(cluster.node(leader))
            time.sleep(0.2)
        assert holder == leader, f"leader {leader} but the etcd lock is held by {holder}"
        conf = (cluster.node(0).dirs.etc_ctdb / "ctdb.conf").read_text()
        assert "cluster lock = !/usr/bin/python3 /usr/libexec/ctdb/ctdb_etcd_lock" in conf

        # (b) cut the leader off the private network: the majority must take over
        majority = [n.index for n in cluster.nodes if n.index != leader]
        t0 = time.monotonic()
        Partition(groups=[[leader], majority]).apply(cluster)
        try:
            new_leader, t_leader, t_ips, t_old_released = None, None, None, None
            deadline = t0 + TAKEOVER_BOUND_S
            while time.monotonic() < deadline and (t_ips is None or t_old_released is None):
                view = _majority_view(cluster, majority)
                now = time.monotonic() - t0
                if view is not None:
                    lead, owners = view
                    if lead in majority and t_leader is None:
                        new_leader, t_leader = lead, now
                    if (t_ips is None and t_leader is not None and owners
                            and all(o in majority for o in owners.values())
                            and cluster.etcd.lock_holder(cluster.node(majority[0])) in majority):
                        t_ips = now
                if t_old_released is None and not cluster.configured_public_ips(cluster.node(leader)):
                    t_old_released = time.monotonic() - t0
                time.sleep(0.2)
            print(f"\n[{daemon}] partition of leader {leader}: majority leader {new_leader} "
                  f"after {t_leader} s, lock and every public IP in the majority after {t_ips} s, "
                  f"old leader without public IPs after {t_old_released} s "
                  f"(lock TTL {LOCK_TTL_S} s, bound {TAKEOVER_BOUND_S:g} s)")
            assert t_leader is not None, f"no new leader in the majority within {TAKEOVER_BOUND_S} s"
            assert t_ips is not None, (f"the majority did not take the lock and every public IP "
                                       f"within {TAKEOVER_BOUND_S} s")
            # ground truth: the majority's nodes really have every public IP configured
            configured = set().union(*(cluster.configured_public_ips(cluster.node(p))
                                       for p in majority))
            assert configured == set(cluster.public_ips())
        finally:
            Heal().apply(cluster)
        nodes = list(cluster.nodes)

    # (c) nothing of etcd is left
    assert _etcd_pids(workdir) == []
    assert not [n.name for n in nodes if (n.dirs.durable / DATA_SUBDIR).exists()]
