"""The etcd cluster lock (``--lock etcd``) fences like a real cluster, for both daemons.

3 nodes, one etcd member in each on the private network, CTDB's ctdb_etcd_lock helper:

(a) the cluster comes up with a leader, and that leader holds the lock key in etcd;
(b) a partition cutting the leader off from the other two: the majority elects a new leader that
    takes the lock (once the old lease expired) and hosts every public IP within
    TAKEOVER_BOUND_S — with ctdbd too, which keeps a shared-file lock across a partition;
(c) after teardown no etcd process of the cluster is left and its data directories are gone;
(d) a leader whose whole machine hangs (daemon and lock helper SIGSTOPped; the etcd member too)
    loses its lease: the majority takes over within the same bound.  (A freeze of the daemon
    alone keeps the lease — its helper goes on renewing it: tests/lab/measure_lock_freeze.py.)

The figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ctdblab.chaos.network import Heal, Partition
from ctdblab.chaos.processes import Freeze, Thaw
from ctdblab.cluster.etcd_lock import DATA_SUBDIR, LOCK_TTL_S, lock_helper_pids
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


def _settled_leader(cluster: LabCluster, timeout: float = 30.0) -> int:
    """The leader once every node names the same one and it holds the etcd lock."""
    deadline = time.monotonic() + timeout
    views, holder = set(), None
    while time.monotonic() < deadline:
        try:
            views = {cluster.leader(n.index) for n in cluster.nodes}
            if len(views) == 1:
                holder = cluster.etcd.lock_holder(cluster.node(next(iter(views))))
                if holder in views:
                    return holder
        except (ClusterNotReady, RuntimeError, subprocess.TimeoutExpired):
            pass
        time.sleep(0.3)
    raise AssertionError(f"no settled leader holding the etcd lock within {timeout:g} s "
                         f"(leaders named: {views}, lock holder: {holder})")


def _majority_takes_over(cluster: LabCluster, old_leader: int, watch_old: bool = True) -> dict:
    """Watch from the majority until its own leader holds the lock and every public IP (or
    TAKEOVER_BOUND_S passes); also when the old leader had no public IP left."""
    majority = [n.index for n in cluster.nodes if n.index != old_leader]
    t0 = time.monotonic()
    seen = {"new_leader": None, "leader_s": None, "takeover_s": None, "old_released_s": None}
    while time.monotonic() - t0 < TAKEOVER_BOUND_S and (
            seen["takeover_s"] is None or (watch_old and seen["old_released_s"] is None)):
        view = _majority_view(cluster, majority)
        if view is not None:
            lead, owners = view
            if lead in majority and seen["leader_s"] is None:
                seen["new_leader"], seen["leader_s"] = lead, round(time.monotonic() - t0, 2)
            if (seen["takeover_s"] is None and seen["leader_s"] is not None and owners
                    and all(o in majority for o in owners.values())
                    and cluster.etcd.lock_holder(cluster.node(majority[0])) in majority):
                seen["takeover_s"] = round(time.monotonic() - t0, 2)
        if (watch_old and seen["old_released_s"] is None
                and not cluster.configured_public_ips(cluster.node(old_leader))):
            seen["old_released_s"] = round(time.monotonic() - t0, 2)
        time.sleep(0.2)
    if seen["takeover_s"] is not None:
        # ground truth: the majority's nodes really have every public IP configured
        configured = set().union(*(cluster.configured_public_ips(cluster.node(p))
                                   for p in majority))
        assert configured == set(cluster.public_ips()), f"configured in the majority: {configured}"
    return seen


def _assert_nothing_left(workdir: Path, nodes: list) -> None:
    assert _etcd_pids(workdir) == []
    assert not [n.name for n in nodes if (n.dirs.durable / DATA_SUBDIR).exists()]


@pytest.mark.parametrize("daemon", ["ctdb", "pyctdbd"])
def test_etcd_lock_fences_a_partitioned_leader(daemon, tmp_path):
    workdir = tmp_path / "cluster"
    with LabCluster(3, daemon=daemon, tunables="aggressive", clients=0, workdir=workdir,
                    lock="etcd", progress=print) as cluster:
        assert cluster.etcd is not None
        conf = (cluster.node(0).dirs.etc_ctdb / "ctdb.conf").read_text()
        assert "cluster lock = !/usr/bin/python3 /usr/libexec/ctdb/ctdb_etcd_lock" in conf
        # (a) a leader, and it is the one holding the etcd lock
        leader = _settled_leader(cluster)

        # (b) cut the leader off the private network: the majority must take over
        majority = [n.index for n in cluster.nodes if n.index != leader]
        Partition(groups=[[leader], majority]).apply(cluster)
        try:
            seen = _majority_takes_over(cluster, leader)
        finally:
            Heal().apply(cluster)
        print(f"\n[{daemon}] partition of leader {leader}: {seen} (lock TTL {LOCK_TTL_S} s, "
              f"bound {TAKEOVER_BOUND_S:g} s)")
        assert seen["leader_s"] is not None, f"no new leader in the majority in {TAKEOVER_BOUND_S} s"
        assert seen["takeover_s"] is not None, (f"the majority did not take the lock and every "
                                                f"public IP within {TAKEOVER_BOUND_S} s")
        nodes = list(cluster.nodes)
    # (c) nothing of etcd is left
    _assert_nothing_left(workdir, nodes)


@pytest.mark.parametrize("daemon", ["ctdb", "pyctdbd"])
def test_etcd_lease_of_a_hung_leader_expires(daemon, tmp_path):
    workdir = tmp_path / "cluster"
    with LabCluster(3, daemon=daemon, tunables="aggressive", clients=0, workdir=workdir,
                    lock="etcd", progress=print) as cluster:
        leader = _settled_leader(cluster)
        node = cluster.node(leader)
        frozen = list(Freeze(leader).apply(cluster).value)
        helpers = lock_helper_pids(node)
        members = [pid for pid in _etcd_pids(workdir) if pid in node.processes()]
        assert helpers and members, f"lock helper {helpers}, etcd member {members} on {node.name}"
        node.signal_processes(helpers + members, signal.SIGSTOP)
        frozen += helpers + members
        try:
            seen = _majority_takes_over(cluster, leader, watch_old=False)
        finally:
            Thaw(leader, pids=frozen).apply(cluster)
        print(f"\n[{daemon}] hung leader {leader}: {seen} (lock TTL {LOCK_TTL_S} s)")
        assert seen["takeover_s"] is not None, (f"the majority did not take the lock and every "
                                                f"public IP within {TAKEOVER_BOUND_S} s")
        healed = cluster.wait_healthy(timeout=90)
        print(f"[{daemon}] healthy {healed:.1f} s after the thaw")
        nodes = list(cluster.nodes)
    _assert_nothing_left(workdir, nodes)
