"""A short soak on pyctdbd, end to end: schedule, nemesis, ground-truth sampling, checkers, report.

It asserts that the run completes and is checked over real samples, not that pyctdbd has no
violations: the daemon's known safety bugs (an isolated node keeping its IPs) are the soak's to
report, not this test's to hide.
"""

from __future__ import annotations

import json

from ctdblab.history import read_history
from ctdblab.scenarios import run_scenario
from ctdblab.scenarios.soak_checks import CHECKS


def test_a_short_pyctdbd_soak_is_checked_on_ground_truth(tmp_path):
    out = tmp_path / "out"
    written = run_scenario("soak", daemon="pyctdbd", nodes=[3], repeat=1, tunables="aggressive",
                           faults=4, seed=3, out=out, progress=lambda msg: None)
    names = {p.name for p in written}
    assert {"results.json", "history.jsonl", "report.md", "soak_timeline.png"} <= names
    results = json.loads((out / "results.json").read_text())
    checks = results["checks"]
    # the daemons' deaths were read from their logs, so false_deaths is checked too
    assert set(checks["verdicts"]) == set(CHECKS) | {"false_deaths"} and checks["not_checked"] == {}
    deaths = [e for e in read_history(out / "history.jsonl") if e.get("probe") == "daemonlog"]
    assert len(deaths) == 1 and deaths[0]["logs"] == 3
    assert len(checks["episodes"]) == 4
    assert [e["kind"] for e in checks["episodes"]] == [f["kind"] for f in results["schedule"]]
    # real samples: every node sampled many times, addresses read, ARP answered
    assert checks["observations"]["truth_samples"] > 40
    assert checks["observations"]["arp_rounds"] > 40
    history = read_history(out / "history.jsonl")
    samples = [e for e in history if e.get("probe") == "truth"]
    assert all(len(s["nodes"]) == 3 for s in samples)
    assert any(n.get("addrs") for s in samples for n in s["nodes"].values())
    rounds = [e for e in history if e.get("probe") == "arp" and e.get("what") == "answers"]
    assert any(any(macs for macs in r["answers"].values()) for r in rounds)
    # every episode was applied and undone, and the report cites the verdicts
    assert all(e["undone"] is not None for e in checks["episodes"])
    report = (out / "report.md").read_text()
    assert "## Soak: pyctdbd (seed 3, 4 faults, 3 nodes)" in report
    assert results["sampler_cost"]["rounds"] > 40
