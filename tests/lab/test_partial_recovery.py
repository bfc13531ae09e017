"""pyctdbd's recovery after a node loss, on a 3-node lab cluster with clustered smbd: a hard
reset of the node holding the newest copy of some records and the only copy of others.

Checked through the stock ctdb tool on the survivors:
- the recovery settles every database without a freeze (the leader's log says so);
- records whose newest copy a survivor holds keep it; records only the lost node held are
  readable (an older surviving copy or empty, as CTDB's recovery leaves them) and writable
  again through either survivor, and both survivors' catdb agree;
- a persistent record stored while the node is off is on the node after it comes back (the
  rejoin recovers persistent databases from the highest sequence number).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from ctdblab.cluster.lab import LabCluster

sys.path.insert(0, str(Path(__file__).parent))
from clustered_pyctdbd import clustered_cluster, ctdb_ok  # noqa: E402

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

DB = "losstest.tdb"
PDB = "losstest_persistent.tdb"
VICTIM, SURVIVORS = 2, (0, 1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from clustered_cluster(tmp_path_factory, "loss")


def readkey(cluster: LabCluster, pnn: int, key: str) -> str:
    out = ctdb_ok(cluster, pnn, "readkey", DB, key)
    match = re.search(r"Data: size:\d+ ptr:\[(.*)\]", out, re.S)
    assert match, out
    return match.group(1)


def catdb(cluster: LabCluster, pnn: int) -> dict[str, str]:
    out = ctdb_ok(cluster, pnn, "catdb", DB)
    return dict(re.findall(r'key\(\d+\) = "([^"]*)"\n.*?data\(\d+\) = "([^"]*)"', out, re.S))


def leader_log(cluster: LabCluster) -> str:
    leader = cluster.leader(SURVIVORS[0])
    return (cluster.workdir / "nodes" / cluster.node(leader).name / "log" / "ctdb" / "log.ctdb").read_text()


def test_a_lost_node_costs_only_what_it_alone_held(cluster):
    cluster.wait_healthy()
    ctdb_ok(cluster, 0, "attach", DB)
    ctdb_ok(cluster, 0, "attach", PDB, "persistent")
    for i in range(20):                       # the victim becomes dmaster of k0..k19
        ctdb_ok(cluster, VICTIM, "writekey", DB, f"k{i}", f"victim-{i}")
    for i in range(10):                       # node 1 takes k0..k9 over, with newer values
        ctdb_ok(cluster, 1, "writekey", DB, f"k{i}", f"survivor-{i}")
    for i in range(20, 30):
        ctdb_ok(cluster, 0, "writekey", DB, f"k{i}", f"node0-{i}")

    cluster.power_off(VICTIM)
    cluster.wait_until(lambda: "settled without a freeze" in leader_log(cluster), 30,
                       "the recovery after the loss")
    cluster.wait_healthy(60)
    line = [x for x in leader_log(cluster).splitlines() if "settled without a freeze" in x][-1]
    print(line)
    assert re.search(r"(\d+) of \1 databases settled", line), line

    for pnn in SURVIVORS:
        for i in range(10):
            assert readkey(cluster, pnn, f"k{i}") == f"survivor-{i}"
        for i in range(20, 30):
            assert readkey(cluster, pnn, f"k{i}") == f"node0-{i}"
        for i in range(10, 20):               # only the victim had these values
            assert readkey(cluster, pnn, f"k{i}") in ("", f"victim-{i}")
    for i in range(10, 20):
        ctdb_ok(cluster, i % 2, "writekey", DB, f"k{i}", f"after-{i}")
        assert readkey(cluster, 1 - i % 2, f"k{i}") == f"after-{i}"
    records = catdb(cluster, 0)
    assert len(records) >= 30 and records == catdb(cluster, 1)

    ctdb_ok(cluster, 0, "pstore", PDB, "while-off", "stored-while-node-2-was-off")
    cluster.power_on(VICTIM)
    cluster.wait_healthy(120)
    out = ctdb_ok(cluster, VICTIM, "pfetch", PDB, "while-off")
    assert "stored-while-node-2-was-off" in out
