"""The sweep after a node loss (core/db/sweep.py, server/sweeper.py), on a 3-node pyctdbd lab
cluster with clustered smbd: after a hard reset of one node, both survivors log a completed
sweep of smbd's volatile databases within a few seconds, and new files opened through SMB
afterwards make no lmaster gather any key. The control, first: with the sweep off
(SweepDelayMs 0) the same new files after the same loss do make the lmasters gather.

Observed through the survivors' daemon logs at DEBUG (``ctdb setdebug``): the sweep's INFO line
"swept db NAME: ..." and the shell's "gathering every node's copy" line for every gather.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ctdblab.cluster.lab import ClusterNotReady, LabCluster

sys.path.insert(0, str(Path(__file__).parent))
from clustered_pyctdbd import clustered_cluster, ctdb_ok  # noqa: E402

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

CLIENT = Path(__file__).with_name("clustered_smb_client.py")
VICTIM, SURVIVORS = 2, (0, 1)
SWEPT = ("locking.tdb", "smbXsrv_open_global.tdb")
GATHER = "gathering every node's copy"
#: s from the power-off to both survivors' completed sweeps (recovery + 1 s delay + the sweep).
SWEEP_WITHIN = 15.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from clustered_cluster(tmp_path_factory, "sweep")


def opens(cluster: LabCluster, ip: str, prefix: str, count: int) -> None:
    """`count` new files through `ip`, each opened and closed."""
    result = cluster.client(0).run([sys.executable, "-u", str(CLIENT), "opens", ip, "--file", prefix,
                                    "--count", str(count)], timeout=120)
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert lines and isinstance(lines[-1].get("result"), dict), (result.stdout, result.stderr[-2000:])
    assert lines[-1]["result"] == {"opened": count, "errors": []}, lines[-1]


def log_text(cluster: LabCluster, pnn: int) -> str:
    return cluster.daemon_log(cluster.node(pnn)).read_text(errors="replace")


def swept(cluster: LabCluster, pnn: int) -> dict[str, str]:
    """db name -> the last "swept db" line of it in node `pnn`'s log."""
    return {m.group(1): m.group(0) for m in re.finditer(r"swept db (\S+): .*", log_text(cluster, pnn))}


def sweep_count(cluster: LabCluster, pnn: int) -> int:
    return log_text(cluster, pnn).count("swept db ")


def survivors_ips(cluster: LabCluster) -> dict[int, str]:
    """A public IP each survivor hosts (the victim's moved to them)."""
    def spread() -> dict[int, str]:
        try:
            owners = cluster.ip_all(SURVIVORS[0])
        except (ClusterNotReady, subprocess.TimeoutExpired):
            return {}
        return {p: min(ip for ip, o in owners.items() if o == p)
                for p in SURVIVORS if p in owners.values()}
    cluster.wait_until(lambda: len(spread()) == len(SURVIVORS), 60, "the survivors hosting IPs")
    return spread()


def gathers(cluster: LabCluster, pnn: int) -> int:
    return log_text(cluster, pnn).count(GATHER)


def set_everywhere(cluster: LabCluster, pnns, *args: str) -> None:
    for pnn in pnns:
        ctdb_ok(cluster, pnn, *args)


def new_sweeps(cluster: LabCluster, pnn: int, seen: set[str]) -> set[str]:
    """The databases node `pnn` logged a sweep of that are not among the lines `seen`."""
    return {db for db, line in swept(cluster, pnn).items() if line not in seen}


def test_after_a_loss_the_survivors_sweep_and_new_files_need_no_gather(cluster):
    cluster.wait_healthy()
    ips = cluster.ip_per_node()
    everyone = (*SURVIVORS, VICTIM)
    set_everywhere(cluster, everyone, "setdebug", "DEBUG")
    tag = uuid.uuid4().hex[:8]

    # The control: without the sweep, new files after a loss make the lmasters gather.
    set_everywhere(cluster, everyone, "setvar", "SweepDelayMs", "0")
    opens(cluster, ips[VICTIM], f"{tag}-a-victim", 10)       # records the victim holds
    opens(cluster, ips[0], f"{tag}-a-n0", 10)
    # Sweeps before this point are the start-up's (its joins open epochs too); the power-off's
    # recovery stops any still running, and with the delay at 0 none may start after it.
    sweeps_before = {pnn: sweep_count(cluster, pnn) for pnn in SURVIVORS}
    cluster.power_off(VICTIM)
    ips = survivors_ips(cluster)
    time.sleep(3.0)
    before = {pnn: gathers(cluster, pnn) for pnn in SURVIVORS}
    for pnn in SURVIVORS:
        opens(cluster, ips[pnn], f"{tag}-a-new-n{pnn}", 20)
    time.sleep(1.0)
    control = {pnn: gathers(cluster, pnn) - before[pnn] for pnn in SURVIVORS}
    print("without the sweep, gathers for 40 new files:", control)
    assert sum(control.values()) > 0, "the control must show the gathers a sweep removes"
    assert {pnn: sweep_count(cluster, pnn) for pnn in SURVIVORS} == sweeps_before

    # The node comes back; with the sweep on, it is lost again.
    set_everywhere(cluster, SURVIVORS, "setvar", "SweepDelayMs", "1000")
    cluster.power_on(VICTIM)
    cluster.wait_healthy(120)
    ips = cluster.ip_per_node()
    set_everywhere(cluster, [VICTIM], "setdebug", "DEBUG")
    opens(cluster, ips[VICTIM], f"{tag}-b-victim", 10)
    opens(cluster, ips[1], f"{tag}-b-n1", 10)
    seen = {pnn: set(swept(cluster, pnn).values()) for pnn in SURVIVORS}
    off = time.monotonic()
    cluster.power_off(VICTIM)
    cluster.wait_until(lambda: all(set(SWEPT) <= new_sweeps(cluster, pnn, seen[pnn])
                                   for pnn in SURVIVORS), 60, "both survivors' sweeps", interval=0.5)
    took = time.monotonic() - off
    for pnn in SURVIVORS:
        for db in SWEPT:
            print(f"node {pnn}: {swept(cluster, pnn)[db]}")
    print(f"sweeps of {', '.join(SWEPT)} done on both survivors {took:.1f} s after the power-off")
    assert took < SWEEP_WITHIN

    time.sleep(2.0)                      # every database's sweep (not only the two waited for)
    ips = survivors_ips(cluster)
    after_sweep = {pnn: gathers(cluster, pnn) for pnn in SURVIVORS}
    for pnn in SURVIVORS:
        opens(cluster, ips[pnn], f"{tag}-b-new-n{pnn}", 20)
    time.sleep(1.0)
    final = {pnn: gathers(cluster, pnn) for pnn in SURVIVORS}
    print("after the sweeps, gathers for 40 new files:", {p: final[p] - after_sweep[p] for p in SURVIVORS})
    assert final == after_sweep
