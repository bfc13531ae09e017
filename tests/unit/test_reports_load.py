"""Loading run directories: validation errors name the file, the field or the line."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_reports_synthetic import write_failover, write_scaling

from ctdblab.errors import UserError
from ctdblab.reports.load import find_run_dirs, load_datasets, load_run_dir
from ctdblab.reports.stats import scaling_rows
from ctdblab.reports.summary import render_report


def _error(path) -> str:
    with pytest.raises(UserError) as info:
        load_datasets(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def _failover_dir(tmp_path, runs=None):
    return write_failover(tmp_path / "run", "ctdb", runs=runs, ops_per_run=4)


def test_parent_directory_finds_run_dirs_in_order(tmp_path):
    write_failover(tmp_path / "out" / "pyctdbd", "pyctdbd", ops_per_run=2)
    write_failover(tmp_path / "out" / "ctdb", "ctdb", ops_per_run=2)
    write_scaling(tmp_path / "out" / "more" / "scaling")  # two levels down
    found = find_run_dirs(tmp_path / "out")
    assert [p.name for p in found] == ["ctdb", "scaling", "pyctdbd"]
    datasets = load_datasets(tmp_path / "out")
    assert [(d.scenario, d.daemon) for d in datasets] == [
        ("failover", "ctdb"), ("scaling", "ctdb"), ("failover", "pyctdbd")]


def test_same_daemon_twice_is_labelled_by_what_differs(tmp_path):
    write_failover(tmp_path / "a", "ctdb", ops_per_run=1)
    write_failover(tmp_path / "b", "ctdb", ops_per_run=1)
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    results["tunables"] = "default"
    (tmp_path / "b" / "results.json").write_text(json.dumps(results))
    labels = [d.label for d in load_datasets(tmp_path)]
    assert labels == ["ctdb aggressive", "ctdb default"]


def test_failover_runs_metrics_and_history_are_loaded(tmp_path):
    dataset = load_run_dir(_failover_dir(tmp_path))
    assert dataset.is_failover and dataset.daemon == "ctdb"
    assert dataset.params == {"scenario": "failover", "daemon": "ctdb", "nodes": 3, "tunables": "aggressive"}
    assert dataset.runs[3].victim_role == "leader"
    assert dataset.runs[3].metrics["rejoin_s"] is None
    assert dataset.runs[0].metrics["detect_s"] == 2.85
    assert len(dataset.ops) == 4 * len(dataset.runs)
    assert {op.role for op in dataset.ops} == {"survivor", "victim"}
    assert [n.run for n in dataset.notes] == [3]


def test_missing_directory_and_missing_results(tmp_path):
    assert "no such directory" in _error(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    message = _error(tmp_path / "empty")
    assert "no results.json" in message and "empty" in message


@pytest.mark.parametrize("text, expected", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, found an array"),
    ('{"daemon": "ctdb", "runs": []}', "missing field 'scenario'"),
    ('{"scenario": "failover", "runs": []}', "missing field 'daemon'"),
    ('{"scenario": "failover", "daemon": "ctdb"}', "missing field 'runs'"),
    ('{"scenario": "failover", "daemon": "ctdb", "runs": {}}', "field 'runs': expected an array"),
    ('{"scenario": "failover", "daemon": "ctdb", "runs": [{"run": 0, "detect_s": "2.8"}]}',
     "runs[0].detect_s: expected seconds"),
    ('{"scenario": "failover", "daemon": "ctdb", "runs": [{"run": 0, "detect_s": NaN}]}',
     "NaN is not a number JSON allows"),
    ('{"scenario": "failover", "daemon": "ctdb", "runs": [{"run": "zero"}]}', "runs[0].run"),
    ('{"scenario": "failover", "daemon": "ctdb", "runs": [3]}', "runs[0]: expected an object"),
    ('{"scenario": "scaling", "daemon": "ctdb", "points": [{"nodes": 0, "client": "x", "mb_s": 1}]}',
     "points[0].nodes: expected a positive integer"),
    ('{"scenario": "scaling", "daemon": "ctdb", "points": [{"nodes": 1, "client": "x", "mb_s": -1}]}',
     "points[0].mb_s"),
    ('{"scenario": "scaling", "daemon": "ctdb", "points": [{"nodes": 1, "mb_s": 1}]}', "points[0].client"),
])
def test_malformed_results_name_the_file_and_field(tmp_path, text, expected):
    run_dir = _failover_dir(tmp_path)
    (run_dir / "results.json").write_text(text)
    message = _error(run_dir)
    assert expected in message
    assert str(run_dir / "results.json") in message


def test_failover_without_history_is_an_error_scaling_only_a_warning(tmp_path):
    run_dir = _failover_dir(tmp_path)
    (run_dir / "history.jsonl").unlink()
    message = _error(run_dir)
    assert "history.jsonl" in message and "missing" in message
    scaling = load_run_dir(write_scaling(tmp_path / "s", with_history=False))
    assert scaling.points and any("history.jsonl is missing" in w for w in scaling.warnings)


@pytest.mark.parametrize("bad_line, expected", [
    ("this is not json", ":2: not a JSON history line"),
    ('{"kind": "op"}', ":2: 't' must be a number"),
    ('{"t": 1.0}', ":2: 'kind' must be a string"),
    ('[1]', ":2: expected a JSON object"),
    ('{"t": 1.0, "kind": "op", "type": "done"}', ":2: op 'type' must be invoke, ok or fail"),
    ('{"t": 1.0, "kind": "op", "type": "ok", "latency_s": "fast"}', ":2: op 'latency_s'"),
    ('{"t": 1.0, "kind": "note", "text": "x", "run": 1.5}', ":2: 'run' must be an integer"),
])
def test_malformed_history_line_names_file_and_line(tmp_path, bad_line, expected):
    run_dir = _failover_dir(tmp_path)
    history = run_dir / "history.jsonl"
    lines = history.read_text().splitlines()
    lines.insert(1, bad_line)
    history.write_text("\n".join(lines) + "\n")
    message = _error(run_dir)
    assert f"{history}{expected}" in message


def test_truncated_last_history_line_is_skipped_with_a_warning(tmp_path):
    run_dir = _failover_dir(tmp_path)
    history = run_dir / "history.jsonl"
    with history.open("a") as f:
        f.write('{"t": 1763900999.0, "kind": "op", "ty')  # killed mid-write: no newline
    dataset = load_run_dir(run_dir)
    assert any("truncated last line" in w for w in dataset.warnings)
    assert len(dataset.ops) == 4 * len(dataset.runs)


def test_old_history_with_milestone_lines_loads_and_ignores_them(tmp_path):
    run_dir = _failover_dir(tmp_path)
    history = run_dir / "history.jsonl"
    with history.open("a") as f:  # what histories held before milestones moved to results.json
        f.write('{"t": 1763900000.4, "kind": "milestone", "name": "detect", "run": 0}\n')
    dataset = load_run_dir(run_dir)
    assert "milestone" not in {e["kind"] for e in dataset.events}
    assert dataset.runs[0].metrics["detect_s"] == 2.85  # milestones come from results.json


def test_checker_notes_in_results_must_be_strings(tmp_path):
    run_dir = _failover_dir(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    results["runs"][0]["notes"] = "detect_s: no"
    (run_dir / "results.json").write_text(json.dumps(results))
    assert "runs[0].notes: expected an array of strings" in _error(run_dir)


def test_latency_is_paired_from_invoke_when_missing(tmp_path):
    run_dir = _failover_dir(tmp_path)
    (run_dir / "history.jsonl").write_text(
        '{"t": 10.0, "kind": "op", "type": "invoke", "process": 1, "id": 7, "role": "victim"}\n'
        '{"t": 10.25, "kind": "op", "type": "fail", "process": 1, "id": 7, "role": "victim", "error": "x"}\n')
    (op,) = load_run_dir(run_dir).ops
    assert op.latency_s == pytest.approx(0.25) and not op.ok and op.error == "x"


def test_scaling_rows_efficiency_against_one_node_median(tmp_path):
    dataset = load_run_dir(write_scaling(tmp_path / "s"))
    rows = {(r.client, r.nodes): r for r in scaling_rows(dataset.points)}
    four = rows[("smbclient", 4)]
    assert four.median == 46.9 and four.n == 3 and (four.low, four.high) == (46.8, 46.9)
    assert four.ideal == pytest.approx(4 * 11.9)
    assert four.efficiency == pytest.approx(46.9 / (4 * 11.9))


def test_scaling_without_one_node_point_has_no_efficiency(tmp_path):
    run_dir = tmp_path / "s"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps({"scenario": "scaling", "daemon": "ctdb", "points": [
        {"nodes": 2, "client": "smbclient", "mb_s": 20.0}]}))
    (row,) = scaling_rows(load_run_dir(run_dir).points)
    assert row.ideal is None and row.efficiency is None


# -- hostile input: anything JSON can say either loads or gives a UserError, never a crash -------
_junk = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=3) | st.lists(st.integers(0, 2), max_size=2) | st.just({"k": [1]})
_seconds = st.none() | st.floats(0, 30)


def _mostly(valid):
    """Valid nine times in ten, junk otherwise, so that fuzzing reaches the report as well."""
    return st.tuples(st.integers(0, 9), valid, _junk).map(lambda t: t[1] if t[0] else t[2])


_run = st.fixed_dictionaries({"run": st.integers(0, 3)}, optional={
    "victim": st.integers(0, 3) | _junk, "victim_role": st.sampled_from(["leader", "nonleader"]) | _junk,
    "t_cut": st.floats(0, 2e9) | _junk, "detect_s": _seconds, "rejoin_s": _seconds, "ping_s": _seconds | _junk,
    "extra": _junk})
_point = st.fixed_dictionaries({"nodes": _mostly(st.integers(1, 4)), "client": st.sampled_from(["a", "b"]),
                                "mb_s": _mostly(st.floats(0, 100))}, optional={"run": _junk})
_results = st.fixed_dictionaries(
    {"scenario": _mostly(st.sampled_from(["failover", "scaling", "other"])),
     "daemon": _mostly(st.sampled_from(["ctdb", "pyctdbd"]))},
    optional={"runs": st.lists(_run, max_size=3), "points": st.lists(_point, max_size=3),
              "summary": _junk | st.just({"detect_s": {"n": 9, "max": "x"}}), "nodes": _junk, "tunables": _junk,
              "bw_mbit": _junk})
_event = st.fixed_dictionaries(
    {"t": _mostly(st.floats(0, 2e9)), "kind": _mostly(st.sampled_from(["op", "note", "fault", "milestone"])),
     "type": _mostly(st.sampled_from(["invoke", "ok", "fail"]))},
    optional={"latency_s": _mostly(st.floats(0, 9)), "process": _junk, "id": _junk, "run": st.integers(0, 3),
              "role": _junk, "text": _junk, "fault": _junk, "phase": _junk, "error": _junk})


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(results=_results, events=st.lists(_event, max_size=5))
def test_hostile_results_and_history_load_or_fail_cleanly(tmp_path, results, events):
    run_dir = tmp_path / "fuzz"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(results))
    (run_dir / "history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    try:
        datasets = load_datasets(run_dir)
    except UserError as e:
        assert "\n" not in str(e) and str(run_dir) in str(e)
        event("rejected")
        return
    event("accepted")
    render_report(datasets, run_dir)  # must not raise on whatever was accepted
