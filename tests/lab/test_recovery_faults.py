"""Faults during a recovery, on a 5-node pyctdbd cluster with clustered smbd and the data
workload (`run failover --then KIND --check-data`): while the recovery after a hard reset runs,
another node dies, the leader running it dies, or a node partitioned away gets its network back;
`ctdb pstore` commits are in flight throughout. The cluster must converge (every writer writes
again, both powered-off nodes rejoin) and lose no acknowledged block or commit."""

from __future__ import annotations

import json

import pytest

from ctdblab.scenarios import run_scenario

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]


@pytest.mark.parametrize("kind", ["death", "leader-death", "heal"])
def test_a_second_fault_mid_recovery_loses_nothing(tmp_path, kind):
    out = tmp_path / "out"
    run_scenario("failover", daemon="pyctdbd", nodes=[5], repeat=1, tunables="default",
                 victim="nonleader", out=out, progress=lambda msg: None, check_data=True, then=kind)
    results = json.loads((out / "results.json").read_text())
    assert results["then"] == kind
    assert results["daemon_env"] == {"PYCTDBD_RECOVERY_PAUSE_S": "1.5"}
    (run,) = results["runs"]
    second = run["second_fault"]
    print(kind, second)
    assert second["verdict"] == "ok", second          # it took effect inside the recovery
    assert second["commits_mid_recovery"]["in_flight"] >= 1
    data = run["data"]
    assert data["verdict"] == "ok", data["problems"]
    assert data["blocks"]["acked"] > 0 and data["blocks"]["lost"] == 0
    assert data["commits"]["acked"] > 0 and data["commits"]["lost"] == 0
    # Every node's copy was read after both lost nodes rejoined (or the partition healed).
    assert {n["node"] for n in data["commits"]["nodes"]} == {0, 1, 2, 3, 4}
    assert all(n["unverified"] == 0 for n in data["commits"]["nodes"])
    assert run["smb_resumed_s"] is not None
