"""The lab's scenarios end to end, with regression thresholds (tests/lab/thresholds.toml).

Each test runs a real scenario exactly as `ctdblab run` does — cluster, daemon, smbd, probes,
faults, checkers, report — and fails when a figure exceeds its limit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctdblab import thresholds
from ctdblab.scenarios import run_scenario
from ctdblab.testing import assert_thresholds

LIMITS = thresholds.load(Path(__file__).with_name("thresholds.toml"))


def _run(tmp_path, scenario, **kwargs):
    out = tmp_path / "out"
    written = run_scenario(scenario, out=out, progress=lambda msg: None, **kwargs)
    results = json.loads((out / "results.json").read_text())
    names = {p.name for p in written}
    assert {"results.json", "history.jsonl", "report.md"} <= names
    assert any(n.endswith(".png") for n in names) and any(n.endswith(".svg") for n in names)
    return results


@pytest.mark.parametrize("victim", ["nonleader", "leader"])
def test_pyctdbd_failover_within_limits(tmp_path, victim):
    results = _run(tmp_path, "failover", daemon="pyctdbd", nodes=[3], repeat=1,
                   tunables="default", victim=victim, bw_mbit=None)
    (run,) = results["runs"]
    assert run["victim_role"] == victim
    assert_thresholds(results, LIMITS)


def test_ctdb_failover_within_limits(tmp_path):
    results = _run(tmp_path, "failover", daemon="ctdb", nodes=[3], repeat=1,
                   tunables="aggressive", victim="nonleader", bw_mbit=None)
    (run,) = results["runs"]
    # Real CTDB never resets a connection nobody registered; the lab must see that too.
    assert run["unregistered_reset_s"] is None
    assert run["tickled_reset_s"] is not None
    assert_thresholds(results, LIMITS)


def test_ctdb_scaling_is_near_linear(tmp_path):
    results = _run(tmp_path, "scaling", daemon="ctdb", nodes=[1, 2], repeat=1,
                   tunables="aggressive", victim="nonleader", bw_mbit=100)
    assert {(p["nodes"], p["client"]) for p in results["points"]} == {
        (1, "smbclient"), (1, "smbprotocol"), (2, "smbclient"), (2, "smbprotocol")}
    assert_thresholds(results, LIMITS)
