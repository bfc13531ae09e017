"""The rolling upgrade's checker: per step the worst client interruption, the client errors
(absorbed by a retry vs never recovered) and the proof of the upgrade — from the history alone."""

from __future__ import annotations

import pytest
from upgrade_history import CLIENTS, NEW_EXE, OLD_EXE, Upgrade, step_begin

from ctdblab.scenarios.upgrade_checks import (ClientSeries, IncompleteHistory, Targets, build_of,
                                              check_upgrade, gap_owner, gaps, window_figures)

END = step_begin(3) + 2.0


def test_a_smooth_upgrade_passes_with_every_step_proved(tmp_path):
    up = Upgrade(tmp_path)
    up.all_steps()
    up.clients(END, gaps={CLIENTS[1]: (step_begin(1) + 0.2, step_begin(1) + 0.75)})
    up.fail(step_begin(1) + 0.3)               # the reader's connection was reset; its retry worked
    up.window_end(END)
    checks = up.check()
    assert checks["passed"], checks["failures"]
    steps = checks["steps"]
    assert [s["node"] for s in steps] == [0, 1, 2]
    assert all(s["upgraded"] and s["completed"] and s["target_met"] for s in steps)
    assert [(s["version_before"], s["version_after"]) for s in steps] == [("0.1.0", "0.1.0.post1")] * 3
    assert steps[0]["pid_before"] == 100 and steps[0]["pid_after"] == 1100
    # the gap: last success before it at +0.2, first after at +0.8
    assert steps[1]["worst_interruption_s"] == pytest.approx(0.6, abs=1e-6)
    assert steps[1]["worst_client"] == CLIENTS[1]
    assert (steps[1]["errors"], steps[1]["errors_absorbed"], steps[1]["errors_unrecovered"]) == (1, 1, 0)
    assert steps[0]["worst_interruption_s"] == pytest.approx(0.1, abs=1e-6)
    assert steps[0]["errors"] == 0
    assert steps[1]["phases_s"]["start"] == pytest.approx(1.5)
    assert checks["outside_steps"]["errors"] == 0
    assert checks["clients"][CLIENTS[0]]["fail"] == 0


def test_a_long_interruption_misses_the_target(tmp_path):
    up = Upgrade(tmp_path)
    up.all_steps()
    up.clients(END, gaps={CLIENTS[0]: (step_begin(2) + 1.0, step_begin(2) + 2.5)})
    up.window_end(END)
    checks = up.check()
    assert not checks["passed"]
    s = checks["steps"][2]
    assert s["worst_interruption_s"] == pytest.approx(1.5, abs=1e-6)   # successes at +1.0 and +2.5
    assert not s["target_met"] and checks["steps"][1]["target_met"]
    assert any("step 2 (node 2): worst interruption 1.500 s > 1 s" in f for f in checks["failures"])


def test_the_target_is_taken_from_the_history(tmp_path):
    up = Upgrade(tmp_path, targets=Targets(max_interruption_s=2.0))
    up.all_steps()
    up.clients(END, gaps={CLIENTS[0]: (step_begin(2) + 1.0, step_begin(2) + 2.5)})
    up.window_end(END)
    assert up.check()["passed"]


def test_an_error_never_recovered_fails_and_leaves_an_open_gap(tmp_path):
    up = Upgrade(tmp_path)
    up.all_steps()
    # the reader stops succeeding in the last step and never comes back
    up.clients(END, gaps={CLIENTS[1]: (step_begin(2) + 1.0, END + 1)})
    up.fail(step_begin(2) + 1.05)
    up.fail(step_begin(2) + 1.6)
    up.window_end(END)
    checks = up.check()
    s = checks["steps"][2]
    assert (s["errors"], s["errors_absorbed"], s["errors_unrecovered"]) == (2, 0, 2)
    # open gap: from the last success (+1.0) to the window end
    assert s["worst_interruption_s"] == pytest.approx(END - (step_begin(2) + 1.0), abs=1e-6)
    assert not checks["passed"]
    assert any("2 client errors never recovered" in f for f in checks["failures"])


def test_aborted_operations_are_not_errors(tmp_path):
    up = Upgrade(tmp_path)
    up.all_steps()
    up.clients(END)
    up.fail(step_begin(0) + 1.0, aborted=True)
    up.window_end(END)
    checks = up.check()
    assert checks["passed"] and all(s["errors"] == 0 for s in checks["steps"])


def test_no_proof_of_the_new_build_fails_the_step(tmp_path):
    up = Upgrade(tmp_path)
    up.step(0)
    up.step(1, new_exe=OLD_EXE)        # restarted, but still the old build
    up.step(2, same_pid=True)          # the same process: it was never restarted
    up.clients(END)
    up.window_end(END)
    checks = up.check()
    steps = checks["steps"]
    assert steps[0]["upgraded"]
    assert not steps[1]["upgraded"] and steps[1]["version_after"] == "0.1.0"
    assert not steps[2]["upgraded"] and steps[2]["pid_before"] == steps[2]["pid_after"]
    assert not checks["passed"]
    assert sum("no proof the node runs the new build" in f for f in checks["failures"]) == 2


def test_a_failed_phase_ends_the_upgrade_and_is_reported(tmp_path):
    up = Upgrade(tmp_path)
    up.step(0)
    up.step(1, fail_in="start")
    up.clients(step_begin(2) + 2)
    up.window_end(step_begin(2) + 2)
    checks = up.check()
    steps = checks["steps"]
    assert steps[1]["failed"] == "start: timed out" and not steps[1]["completed"]
    assert steps[2]["begin"] is None and steps[2]["note"] == "not run"
    assert "step 2 (node 2) did not run" in checks["failures"]
    assert any(f.startswith("step 1 (node 1) failed: start") for f in checks["failures"])


def test_errors_outside_the_steps_are_counted_apart(tmp_path):
    up = Upgrade(tmp_path)
    up.all_steps()
    up.clients(END)
    up.fail(2.0)
    up.window_end(END)
    checks = up.check()
    assert checks["outside_steps"]["errors"] == 1 and checks["outside_steps"]["errors_absorbed"] == 1
    assert all(s["errors"] == 0 for s in checks["steps"])
    assert checks["outside_steps"]["worst_interruption_before_s"] == pytest.approx(0.1, abs=1e-6)


def test_a_history_without_an_upgrade_start_is_refused(tmp_path):
    with pytest.raises(IncompleteHistory):
        check_upgrade([{"t": 1.0, "kind": "run", "event": "start", "scenario": "soak", "run": 0}])


def test_gaps_and_windows():
    series = ClientSeries(oks=[1.0, 1.1, 2.0], fails=[{"t": 1.5, "kind": "op"}])
    assert gaps(series, 2.5) == [(1.0, 1.1), (1.1, 2.0), (2.0, 2.5)]
    fig = window_figures({"c": series}, 1.6, 1.7, 2.5)
    assert fig["worst_interruption_s"] == pytest.approx(0.9) and fig["errors"] == 0
    fig = window_figures({"c": series}, 1.4, 1.7, 2.5)
    assert fig["errors_absorbed"] == 1 and fig["error_list"][0]["recovered"]


def test_build_of_matches_the_executable():
    builds = [{"label": "from", "executable": OLD_EXE}, {"label": "to", "executable": NEW_EXE},
              {"label": "ref", "executable": "ctdbd"}]
    assert build_of(["/usr/bin/python3", "-I", NEW_EXE], builds)["label"] == "to"
    assert build_of(["/usr/sbin/ctdbd"], builds)["label"] == "ref"
    assert build_of(["/usr/bin/python3", "/elsewhere/pyctdbd"], builds) is None


CTDB = [{"label": "from", "version": "2:4.17.12", "revision": "Debian package", "executable": "ctdbd"},
        {"label": "to", "version": "2:4.17.12", "revision": "Debian package", "executable": "ctdbd"}]


def test_ctdb_steps_are_restarts_proved_by_a_new_pid(tmp_path):
    up = Upgrade(tmp_path, builds=CTDB, old_exe="ctdbd")
    up.step(0, new_exe="/usr/sbin/ctdbd")
    up.step(1, new_exe="ctdbd", same_pid=True)
    up.step(2, new_exe="ctdbd")
    up.clients(END)
    up.window_end(END)
    steps = up.check()["steps"]
    assert [s["upgraded"] for s in steps] == [True, False, True]
    assert steps[0]["version_before"] == steps[0]["version_after"] == "2:4.17.12"


def test_a_gap_belongs_to_the_step_it_ended_in(tmp_path):
    up = Upgrade(tmp_path)
    up.all_steps()
    # began in step 0's last moment (its settle), caused by step 1's disable: step 1's alone
    up.clients(END, gaps={CLIENTS[0]: (step_begin(1) - 0.05, step_begin(1) + 0.85)})
    up.window_end(END)
    steps = up.check()["steps"]
    assert steps[1]["worst_interruption_s"] == pytest.approx(1.0, abs=1e-6)
    assert steps[0]["worst_interruption_s"] == pytest.approx(0.1, abs=1e-6)


def test_gap_owner():
    windows = [(0.0, 5.0), (5.01, 10.0)]
    assert gap_owner(4.9, 5.5, windows) == 1
    assert gap_owner(9.5, 12.0, windows) == 1       # ended after the last step: where it began
    assert gap_owner(1.0, 2.0, windows) == 0
    assert gap_owner(11.0, 12.0, windows) is None
