"""The soak's report: verdicts, convergence per kind, violations with their history lines, and the
fault timeline plot — from results.json and the history alone."""

from __future__ import annotations

import json

import pytest
from soak_history import Soak

from ctdblab.errors import UserError
from ctdblab.reports import make_report


def _soak_dir(tmp_path):
    schedule = [{"index": 0, "kind": "freeze_nonleader", "role": "nonleader", "pick": 0,
                 "hold_s": 5}]
    soak = Soak(tmp_path, schedule)
    soak.steady(1.0, 10.0)
    soak.fault(10.0, "freeze", 2, "begin", 0)
    soak.fault(10.01, "freeze", 2, "end", 0)
    soak.fault(15.0, "thaw", 2, "begin", 0)
    soak.fault(15.01, "thaw", 2, "end", 0)
    soak.steady(15.5, 20.0)
    soak.steady(20.0, 23.0, owners={"198.19.8.1": [0, 2], "198.19.8.2": [1], "198.19.8.3": [2]})
    soak.steady(23.0, 30.0)
    checks = soak.check()
    results = {"scenario": "soak", "daemon": "pyctdbd", "nodes": 3, "faults": 1, "seed": 4,
               "tunables": "aggressive", "schedule": schedule, "checks": checks,
               "sampler_cost": {"rounds": 58, "wall_s": 29.0, "cpu_pct_of_one_core": 5.0}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    return tmp_path, checks


def test_the_report_lists_every_violation_with_its_history_lines(tmp_path):
    out, checks = _soak_dir(tmp_path)
    written = make_report(out)
    report = (out / "report.md").read_text()
    assert "## Soak: pyctdbd (seed 4, 1 faults, 3 nodes)" in report
    assert "| settled | **FAILED** | 2 |" in report and "| converged | ok | 0 |" in report
    assert "| freeze_nonleader | 1 | 1 |" in report
    for v in checks["violations"]:
        assert ", ".join(str(n) for n in v["lines"]) in report
    assert "198.19.8.1 configured on nodes 0, 2" in report
    assert (out / "soak_timeline.png") in written and (out / "soak_timeline.png").stat().st_size > 0


def test_a_soak_results_file_without_checks_is_refused(tmp_path):
    out, _ = _soak_dir(tmp_path)
    data = json.loads((out / "results.json").read_text())
    del data["checks"]
    (out / "results.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="missing field 'checks'"):
        make_report(out)
