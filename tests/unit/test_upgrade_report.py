"""The rolling upgrade's report: the per-step table, the errors and the timeline plot — from
results.json and the history alone."""

from __future__ import annotations

import json

import pytest
from upgrade_history import BUILDS, CLIENTS, Upgrade, step_begin

from ctdblab.errors import UserError
from ctdblab.reports import make_report

END = step_begin(3) + 2.0


def _run_dir(tmp_path, *, long_gap=False):
    up = Upgrade(tmp_path)
    up.all_steps()
    gap = (step_begin(1) + 0.2, step_begin(1) + (2.0 if long_gap else 0.75))
    up.clients(END, gaps={CLIENTS[1]: gap})
    up.fail(step_begin(1) + 0.3)
    up.window_end(END)
    checks = up.check()
    results = {"scenario": "upgrade", "daemon": "pyctdbd", "nodes": 3, "tunables": "default",
               "order": "pnn", "settle_s": 2.0, "builds": BUILDS,
               "plan": [s.as_dict() for s in up.plan], "checks": checks}
    (tmp_path / "results.json").write_text(json.dumps(results))
    return tmp_path, checks


def test_the_report_has_every_step_with_its_figures_and_a_timeline(tmp_path):
    out, checks = _run_dir(tmp_path)
    written = make_report(out)
    names = {p.name for p in written}
    assert {"upgrade_timeline.png", "upgrade_timeline.svg", "report.md"} <= names
    report = (out / "report.md").read_text()
    assert "## Rolling upgrade: pyctdbd (3 nodes)" in report
    assert "From 0.1.0 (working tree) to 0.1.0.post1 (working tree)" in report
    assert "Verdict: **passed**" in report
    assert "| 1 | 1 | 0.1.0 (101) -> 0.1.0.post1 (1101) |" in report
    assert f"0.60 ({CLIENTS[1]}) | 1 | 1 | 0 | ✓ |" in report
    assert "(absorbed by a retry)" in report
    assert "![Rolling upgrade timeline" in report


def test_a_missed_target_is_shown(tmp_path):
    out, checks = _run_dir(tmp_path, long_gap=True)
    make_report(out)
    report = (out / "report.md").read_text()
    assert "Verdict: **targets missed**" in report
    assert "- target missed: step 1 (node 1): worst interruption 1.800 s > 1 s" in report
    assert "| ✗ |" in report


def test_results_without_checks_are_refused(tmp_path):
    out, _ = _run_dir(tmp_path)
    (out / "results.json").write_text(json.dumps({"scenario": "upgrade", "daemon": "pyctdbd"}))
    with pytest.raises(UserError, match="missing field 'checks'"):
        make_report(out)
