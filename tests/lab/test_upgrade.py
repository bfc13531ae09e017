"""A rolling upgrade of a 3-node pyctdbd cluster, end to end: two builds, every node upgraded
with SMB clients busy, the checker's figures per step, the report.

It asserts that the upgrade happened (each node's daemon after its step is a new process started
from the "to" build's executable) and that every step's figures were measured; it does not assert
the interruption target, which is the scenario's verdict to report (``checks.passed``), not this
test's to hide or to make flaky on a busy machine.
"""

from __future__ import annotations

import json

import pytest

from ctdblab.history import read_history
from ctdblab.scenarios import run_scenario


@pytest.mark.lab
def test_a_pyctdbd_rolling_upgrade_moves_every_node_to_the_new_build(tmp_path):
    out = tmp_path / "out"
    written = run_scenario("upgrade", daemon="pyctdbd", nodes=[3], repeat=1, tunables="default",
                           out=out, progress=lambda msg: None)
    assert {"results.json", "history.jsonl", "report.md", "upgrade_timeline.png"} <= {p.name for p in written}
    results = json.loads((out / "results.json").read_text())
    builds = {b["label"]: b for b in results["builds"]}
    assert builds["from"]["version"] != builds["to"]["version"]
    steps = results["checks"]["steps"]
    assert [s["node"] for s in steps] == [0, 1, 2]
    for step in steps:
        assert step["completed"], step.get("failed")
        assert step["upgraded"], step
        assert step["version_before"] == builds["from"]["version"]
        assert step["version_after"] == builds["to"]["version"]
        assert step["pid_after"] != step["pid_before"]
        assert builds["to"]["executable"] in step["cmdline_after"]
        assert isinstance(step["worst_interruption_s"], float) and step["worst_interruption_s"] > 0
        assert step["errors"] == step["errors_absorbed"] + step["errors_unrecovered"]
        assert set(step["phases_s"]) == {"disable", "stop", "install", "start", "enable", "settle"}
    # every client worked throughout: hundreds of successes each
    clients = results["checks"]["clients"]
    assert len(clients) == 6 and all(c["ok"] > 100 for c in clients.values())
    # the proof is in the history: the daemon's command line after each start
    history = read_history(out / "history.jsonl")
    running = [e for e in history if e.get("probe") == "daemon" and e.get("what") == "running"]
    assert len(running) == 3 + 3
    report = (out / "report.md").read_text()
    assert "## Rolling upgrade: pyctdbd (3 nodes)" in report
