"""The history's vocabulary, its writer and its one reader."""

from __future__ import annotations

import json

import pytest

from ctdblab import events as ev
from ctdblab.history import (History, HistoryError, events_of_run, load_history, load_numbered,
                             read_history, run_indexes)


def test_writer_stamps_the_current_run_and_keeps_explicit_ones(tmp_path):
    with History(tmp_path / "h.jsonl") as history:
        history.record(ev.note("before any run", t=1.0))
        history.run = 3
        history.record(ev.note("in run 3", t=2.0))
        history.record(ev.run_end(4, t=3.0))
    runs = [e.get("run") for e in read_history(tmp_path / "h.jsonl")]
    assert runs == [None, 3, 4]


def test_writer_refuses_kinds_outside_the_vocabulary(tmp_path):
    with History(tmp_path / "h.jsonl") as history:
        with pytest.raises(ValueError, match="milestone"):
            history.record({"t": 1.0, "kind": "milestone", "name": "detect"})


def test_constructors_enforce_the_fault_vocabulary():
    assert ev.fault_step("power_off", 2, "cut", t=5.0) == {
        "t": 5.0, "kind": "fault", "fault": "power_off", "node": 2, "phase": "step", "step": "cut"}
    with pytest.raises(ValueError, match="no step"):
        ev.fault_step("crash", 2, "cut")
    with pytest.raises(ValueError, match="unknown fault"):
        ev.fault_begin("meteor", 2)


def test_op_constructors_round_latency_and_omit_an_empty_role():
    ok = ev.op_ok("p", "read", 7, latency_s=0.12345678, target="198.19.8.1", t=2.0)
    assert ok == {"t": 2.0, "kind": "op", "process": "p", "f": "read", "type": "ok", "id": 7,
                  "target": "198.19.8.1", "latency_s": 0.123457}


def _write(path, lines: list[str]) -> None:
    path.write_text("".join(lines))


def test_reader_orders_by_time_stably(tmp_path):
    path = tmp_path / "h.jsonl"
    _write(path, [json.dumps(e) + "\n" for e in (
        ev.note("b", t=2.0), ev.note("a1", t=1.0), ev.note("a2", t=1.0))])
    assert [e["text"] for e in read_history(path)] == ["a1", "a2", "b"]


def test_reader_skips_a_truncated_last_line_only(tmp_path):
    path = tmp_path / "h.jsonl"
    _write(path, [json.dumps(ev.note("kept", t=1.0)) + "\n", '{"t": 2.0, "kind": "no'])
    loaded = load_history(path)
    assert [e["text"] for e in loaded.events] == ["kept"]
    assert loaded.truncated_line == 2 and "truncated last line 2" in loaded.warnings[0]
    _write(path, ['{"t": 2.0, "kind": "no\n', json.dumps(ev.note("x", t=1.0)) + "\n"])
    with pytest.raises(HistoryError, match=r"h\.jsonl:1: not a JSON history line"):
        load_history(path)


@pytest.mark.parametrize("line, message", [
    ('{"kind": "note"}', "'t' must be a number"),
    ('{"t": NaN, "kind": "note"}', "not a JSON history line"),
    ('{"t": 1.0, "kind": 5}', "'kind' must be a string"),
    ('{"t": 1.0, "kind": "note", "run": "0"}', "'run' must be an integer"),
    ('{"t": 1.0, "kind": "op", "type": "done"}', "op 'type' must be invoke, ok or fail"),
    ('[1.0]', "expected a JSON object"),
])
def test_reader_names_file_and_line_of_a_bad_event(tmp_path, line, message):
    path = tmp_path / "h.jsonl"
    _write(path, [json.dumps(ev.note("fine", t=1.0)) + "\n", line + "\n"])
    with pytest.raises(HistoryError, match=message) as info:
        load_history(path)
    assert str(info.value).startswith(f"{path}:2: ")


def test_reader_ignores_the_retired_milestone_kind(tmp_path):
    path = tmp_path / "h.jsonl"
    _write(path, [json.dumps(ev.run_start(0, scenario="failover", daemon="ctdb", t=1.0)) + "\n",
                  '{"t": 1.5, "kind": "milestone", "name": "detect", "run": 0}\n'])
    loaded = load_history(path)
    assert [e["kind"] for e in loaded.events] == ["run"] and loaded.retired == 1


def test_runs_are_selected_by_index():
    events = [ev.run_start(0, scenario="s", daemon="d", t=1.0), dict(ev.note("x", t=2.0), run=0),
              ev.run_start(1, scenario="s", daemon="d", t=3.0), dict(ev.note("y", t=4.0), run=1)]
    assert run_indexes(events) == [0, 1]
    assert [e.get("text") for e in events_of_run(events, 1)] == [None, "y"]


def test_numbered_reading_keeps_each_event_s_line_in_the_file(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps({"t": 2.0, "kind": "note", "text": "b"}) + "\n\n"
                    + json.dumps({"t": 1.0, "kind": "note", "text": "a"}) + "\n"
                    + json.dumps({"t": 3.0, "kind": "milestone"}) + "\n")
    assert [(line, e["text"]) for line, e in load_numbered(path)] == [(3, "a"), (1, "b")]
    assert [e["text"] for e in load_history(path).events] == ["a", "b"]
