"""`run failover --check-data` end to end on pyctdbd: real SMB writes, real `ctdb pstore` commits,
a hard reset, the victim powered on again, and the data checker over the recorded history."""

from __future__ import annotations

import json

import pytest

from ctdblab.history import events_of_run, read_history
from ctdblab.scenarios import run_scenario
from ctdblab.scenarios.datacheck import check_data


@pytest.mark.parametrize("victim", ["nonleader", "leader"])
def test_pyctdbd_failover_loses_no_acknowledged_data(tmp_path, victim):
    out = tmp_path / "out"
    written = run_scenario("failover", daemon="pyctdbd", nodes=[3], repeat=1, tunables="default",
                           victim=victim, out=out, progress=lambda msg: None, check_data=True)
    assert "report.md" in {p.name for p in written}
    results = json.loads((out / "results.json").read_text())
    (run,) = results["runs"]
    data = run["data"]
    assert data["verdict"] == "ok", data["problems"]
    assert data["blocks"]["acked"] > 0 and data["blocks"]["lost"] == 0
    assert data["commits"]["acked"] > 0 and data["commits"]["lost"] == 0
    assert data["contention"]["verdict"] == "ok"
    # Every node's copy was read, the powered-on victim's included.
    assert {n["node"] for n in data["commits"]["nodes"]} == {0, 1, 2}
    assert all(n["unverified"] == 0 for n in data["commits"]["nodes"])
    assert results["data_summary"]["blocks_lost"] == 0
    assert "## Data checks" in (out / "report.md").read_text()

    events = events_of_run(read_history(out / "history.jsonl"), 0)
    t_cut = next(e["t"] for e in events if e.get("step") == "cut")
    victim_acks = [e for e in events if e.get("f") == "smb_write_block" and e["type"] == "ok"
                   and e.get("role") == "victim"]
    # The victim's writer wrote before the cut and, reconnected to the moved IP, after it.
    assert any(e["t"] < t_cut for e in victim_acks)
    assert any(e["t"] - e["latency_s"] > t_cut for e in victim_acks)

    # The rejoined victim committed too, and every node's copy holds those commits.
    rejoined = [e for e in events if e.get("f") == "pdb_store" and e["type"] == "ok"
                and e["process"] == f"pdb-writer-{run['victim']}-rejoined"]
    assert len(rejoined) >= 3 and min(e["t"] for e in rejoined) > run["t_power_on"]

    # The checker sees the real read-back: drop one acknowledged block from it and it says so.
    readback = next(e for e in events if e.get("what") == "file_blocks"
                    and e["file"] == victim_acks[0]["file"])
    del readback["blocks"][str(victim_acks[0]["block"])]
    damaged = check_data(events)
    assert damaged["verdict"] == "fail" and damaged["blocks"]["lost"] == 1
