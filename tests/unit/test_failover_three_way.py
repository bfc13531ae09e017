"""pyctdbd, ctdb and keepalived side by side: the checker's n/a metrics, the benchmark's table,
the combined report and its plot, and the scenario's refusals for keepalived."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_reports_synthetic import PYCTDBD_RUNS, T0, write_failover

from ctdblab import events as ev
from ctdblab.errors import UserError
from ctdblab.reports import make_report
from ctdblab.reports.load import load_datasets
from ctdblab.reports.plots import missing_bar_text
from ctdblab.scenarios import run_scenario
from ctdblab.scenarios.checkers import failover_run_record

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.failover_vs_ctdb import (METRICS, comparison_table, metric_cells,  # noqa: E402
                                         parse_list, parse_tunables)

NOT_APPLICABLE = {"detect_s": "no failure detector", "rejoin_s": "no membership",
                  "tickled_reset_s": "no tickle list"}
KEEPALIVED_RUNS = [  # detect takeover ping reset smb_resumed stall rejoin failback
    ("nonleader", 2, [None, 0.21, 0.23, None, 0.28, 0.07, None, 12.6]),
    ("nonleader", 2, [None, 0.30, 0.31, None, 0.36, 0.05, None, 12.4]),
]


def keepalived_history(*, takeover_logged: bool = True, detect_polled: bool = True) -> list[dict]:
    """One keepalived run as its history would hold it (the checker's input)."""
    t_cut = T0
    events = [ev.run_start(0, scenario="failover", daemon="keepalived", victim=2, vip="198.19.8.3",
                           victim_role="nonleader", not_applicable=NOT_APPLICABLE, t=t_cut - 3),
              ev.fault_step("power_off", 2, "cut", t=t_cut),
              ev.fault_step("power_off", 2, "killed", t=t_cut + 0.02),
              ev.ip_owner(0, "198.19.8.3", -1, t=t_cut + 0.1),
              ev.ip_owner(0, "198.19.8.3", 0, t=t_cut + 0.3),
              ev.window_end(t=t_cut + 12.0)]
    if takeover_logged:
        events.append(ev.log_line(0, "takeover", "vip_198_19_8_3 entered MASTER: Takeover of IP "
                                  "198.19.8.3/20 on interface n1-eth1", "keepalived-notify",
                                  t=t_cut + 0.21, ip="198.19.8.3"))
    if detect_polled:   # a status poll would only exist if something asked: it must not count
        events.append(ev.node_state(0, 2, "DISCONNECTED", t=t_cut + 0.5))
    for e in events:
        e.setdefault("run", 0)
    return events


# -- the checker ----------------------------------------------------------------------------------
def test_not_applicable_metrics_are_none_with_an_na_note_even_if_something_looks_like_them():
    record = failover_run_record(keepalived_history())
    assert record["not_applicable"] == NOT_APPLICABLE
    assert record["detect_s"] is None and record["rejoin_s"] is None
    assert record["tickled_reset_s"] is None
    assert record["takeover_s"] == pytest.approx(0.21, abs=1e-4)       # the notify line
    assert "detect_s: n/a: no failure detector" in record["notes"]
    assert record["watched_s"] == pytest.approx(12.0)


def test_a_reset_that_never_came_says_how_long_the_run_watched():
    record = failover_run_record(keepalived_history())
    (note,) = [n for n in record["notes"] if n.startswith("reset_s")]
    assert "never got a reset" in note and "watched 12.0 s after the cut" in note
    assert not note.startswith("reset_s: n/a")        # it applies; it did not happen


def test_takeover_falls_back_to_the_ground_truth_poll():
    record = failover_run_record(keepalived_history(takeover_logged=False))
    assert record["takeover_s"] == pytest.approx(0.3, abs=1e-4)


def test_a_run_without_not_applicable_keeps_every_metric():
    events = keepalived_history()
    events[0] = {**events[0]}
    del events[0]["not_applicable"]
    record = failover_run_record(events)
    assert record["not_applicable"] == {}
    assert record["detect_s"] == pytest.approx(0.5, abs=1e-4)


# -- the benchmark's table ------------------------------------------------------------------------
def results_of(runs, not_applicable=None) -> dict:
    names = ("detect_s", "takeover_s", "ping_s", "reset_s", "smb_resumed_s", "survivor_stall_s",
             "rejoin_s", "failback_s")
    return {"runs": [{**dict(zip(names, values)), "victim_role": role,
                      "not_applicable": dict(not_applicable or {})}
                     for role, _, values in runs]}


def three_way_results() -> dict:
    py = [r for r in PYCTDBD_RUNS if r[0] == "nonleader"]
    ct = [("nonleader", 1, [2.85, 3.36, 3.40, 3.39, 3.79, 3.26, 14.2, 15.0]),
          ("nonleader", 2, [2.80, 3.30, 3.35, 3.34, 3.75, 3.20, 14.0, 14.8])]
    return {("pyctdbd", "nonleader"): results_of(py), ("ctdb", "nonleader"): results_of(ct),
            ("keepalived", "nonleader"): results_of(KEEPALIVED_RUNS, NOT_APPLICABLE),
            ("pyctdbd", "leader"): results_of([r for r in PYCTDBD_RUNS if r[0] == "leader"]),
            ("ctdb", "leader"): results_of(ct)}


def test_three_way_table_has_every_daemon_and_ratios_to_both_references():
    headers, rows = comparison_table(three_way_results(), ["pyctdbd", "ctdb", "keepalived"],
                                     ["nonleader", "leader"])
    assert headers[-2:] == ["py/ctdb", "py/keepalived"]
    assert len(rows) == 2 * len(METRICS)
    by_key = {(r[0], r[1]): dict(zip(headers, r)) for r in rows}
    takeover = by_key["nonleader", "takeover_s"]
    assert takeover["keepalived p50"] == pytest.approx(0.255)        # median of 0.21 and 0.30
    assert takeover["py/keepalived"] == f"{takeover['pyctdbd p50'] / 0.255:.3f}x"
    assert takeover["py/ctdb"] == f"{takeover['pyctdbd p50'] / takeover['ctdb p50']:.3f}x"


def test_keepalived_cells_say_na_never_and_no_leader_instead_of_numbers():
    headers, rows = comparison_table(three_way_results(), ["pyctdbd", "ctdb", "keepalived"],
                                     ["nonleader", "leader"])
    by_key = {(r[0], r[1]): dict(zip(headers, r)) for r in rows}
    detect = by_key["nonleader", "detect_s"]
    assert (detect["keepalived p50"], detect["py/keepalived"]) == ("n/a", None)
    reset = by_key["nonleader", "reset_s"]
    assert (reset["keepalived p50"], reset["keepalived null"]) == ("never", "2/2")
    assert reset["py/keepalived"] is None
    leader = by_key["leader", "smb_resumed_s"]
    assert leader["keepalived p50"] == "no leader" and leader["py/keepalived"] is None
    assert isinstance(leader["pyctdbd p50"], float)


def test_metric_cells_count_runs_where_it_did_not_happen():
    runs = [{"reset_s": 0.3}, {"reset_s": None}, {"reset_s": 0.5}]
    assert metric_cells(runs, "reset_s") == (0.4, 0.5, 1)


def test_command_line_lists_are_checked():
    assert parse_list("pyctdbd, ctdb,keepalived", ("pyctdbd", "ctdb", "keepalived"), "daemons") == \
        ["pyctdbd", "ctdb", "keepalived"]
    with pytest.raises(UserError, match="unknown 'vrrp'"):
        parse_list("pyctdbd,vrrp", ("pyctdbd", "ctdb", "keepalived"), "daemons")
    with pytest.raises(UserError, match="twice"):
        parse_list("ctdb,ctdb", ("pyctdbd", "ctdb"), "daemons")
    assert parse_tunables(["keepalived=fast"], ["ctdb", "keepalived"]) == \
        {"ctdb": "aggressive", "keepalived": "fast"}
    with pytest.raises(UserError, match="DAEMON=PROFILE"):
        parse_tunables(["pyctdbd=fast"], ["ctdb", "keepalived"])
    with pytest.raises(UserError, match="unknown tunables profile"):
        parse_tunables(["keepalived=slow"], ["keepalived"])


# -- the combined report: one plot with the three side by side ------------------------------------
def write_keepalived(directory: Path) -> Path:
    write_failover(directory, "keepalived", runs=KEEPALIVED_RUNS, ops_per_run=10, seed=3)
    results = json.loads((directory / "results.json").read_text())
    for run in results["runs"]:
        run["not_applicable"] = NOT_APPLICABLE
        run["watched_s"] = 12.0
        run["notes"] = [n for n in run["notes"] if n.split(":")[0] not in NOT_APPLICABLE] + \
            [f"{m}: n/a: {why}" for m, why in NOT_APPLICABLE.items()]
    (directory / "results.json").write_text(json.dumps(results))
    return directory


@pytest.fixture(scope="module")
def three_way_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("three")
    write_failover(out / "pyctdbd", "pyctdbd", ops_per_run=10)
    write_failover(out / "ctdb", "ctdb", ops_per_run=10, seed=2)
    write_keepalived(out / "keepalived")
    written = make_report(out)
    return out, written, (out / "report.md").read_text()


def test_the_summary_plot_draws_the_three_daemons_side_by_side(three_way_report):
    out, written, _ = three_way_report
    assert out / "failover_summary.png" in written and out / "failover_summary.svg" in written
    svg = (out / "failover_summary.svg").read_text()
    for label in ("pyctdbd: p50", "ctdb: p50", "keepalived: p50"):
        assert label in svg
    assert "n/a" in svg and "never within 12 s" in svg      # not a bar, and not "0"
    assert "Leader victim (no runs: keepalived)" in svg     # keepalived has no leader


def test_missing_bar_text(tmp_path):
    (dataset,) = load_datasets(write_keepalived(tmp_path / "k"))
    assert missing_bar_text(dataset.runs, "detect_s") == "n/a"
    assert missing_bar_text(dataset.runs, "reset_s") == "never within 12 s"
    assert missing_bar_text([], "reset_s") == "no runs"


def test_report_has_na_rows_and_pyctdbd_over_keepalived_ratios(three_way_report):
    _, _, report = three_way_report
    assert "| `detect_s` | keepalived | non-leader victim | n/a | n/a | n/a | 0 | n/a |" in report
    assert "## pyctdbd / ctdb" in report and "## pyctdbd / keepalived" in report
    section = report.split("## pyctdbd / keepalived")[1].split("\n## ")[0]
    assert "– (keepalived: n/a)" in section                 # detect: n/a, not "did not happen"
    assert "– (keepalived: did not happen)" in section      # client reset: it applies, never came
    # n/a metrics are not listed as "did not happen" in the notes
    notes = report.split("## Notes")[1]
    line = next(li for li in notes.splitlines() if li.startswith("- **keepalived, run 0**"))
    assert "`detect_s`" not in line.split("did not happen")[0]


# -- what the scenario refuses for keepalived (before touching the machine) -----------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"victim": "leader"}, "has no leader"),
    ({"check_data": True}, "--check-data needs"),
    ({"clustered_smbd": True}, "no clustered database"),
])
def test_failover_refuses_what_keepalived_cannot_do(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        run_scenario("failover", daemon="keepalived", nodes=[3], repeat=1, tunables="default",
                     out=tmp_path / "out", progress=lambda m: None, **kwargs)
    assert not (tmp_path / "out").exists()


def test_only_the_failover_scenario_runs_with_keepalived(tmp_path):
    with pytest.raises(UserError, match="failover scenario only"):
        run_scenario("soak", daemon="keepalived", nodes=[3], repeat=1, tunables="aggressive",
                     out=tmp_path / "out", progress=lambda m: None)


def test_the_benchmark_comparison_plot_has_only_its_metrics(three_way_report):
    from benchmarks.failover_vs_ctdb import draw_comparison

    out, _, _ = three_way_report
    png, svg = draw_comparison(out)
    assert png.name == "failover_comparison.png" and png.stat().st_size > 0
    text = svg.read_text()
    assert "keepalived: p50" in text and "SMB resumed" in text and "survivor stall" in text
    assert "failback" not in text and "rejoin" not in text
    # One colour and one legend entry per daemon, though each role is its own dataset.
    assert text.count("pyctdbd: p50") == 1 and text.count("keepalived: p50") == 1


def test_survivor_stall_counts_ops_up_to_the_settling_not_the_long_reset_watch():
    events = keepalived_history()
    t_cut = T0
    for op_id, (start, latency) in enumerate([(0.5, 0.4), (6.0, 1.5)]):   # the second: noise
        events.append(ev.op_ok("smb-stall", "smb_open_read_close", op_id, latency_s=latency,
                               t=t_cut + start + latency, role="survivor", target="198.19.8.1",
                               run=0))
    assert failover_run_record(events)["survivor_stall_s"] == 1.5          # no settling recorded
    events.append({**ev.settled(t=t_cut + 2.5), "run": 0})
    record = failover_run_record(events)
    assert record["survivor_stall_s"] == 0.4
    assert record["watched_s"] == pytest.approx(12.0)      # the reset was still watched for 12 s
