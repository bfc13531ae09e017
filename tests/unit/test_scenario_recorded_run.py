"""The failover checker on a history recorded by a real lab run, and nothing else.

``data/failover-pyctdbd/`` is the untouched output of

    ctdblab run failover --daemon pyctdbd --nodes 3 --repeat 1

(3 nodes, pyctdbd's default tunables, a non-leader victim): its ``history.jsonl`` and the
``results.json`` the run wrote.  The checker, given only the history, must find again what the
run reported; if a change to the checker or to the event vocabulary moves a figure, this fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctdblab.history import events_of_run, load_history
from ctdblab.reports.load import load_datasets
from ctdblab.reports.summary import render_report
from ctdblab.scenarios.checkers import METRICS, check_failover, failover_facts, failover_metrics

RUN_DIR = Path(__file__).parent / "data" / "failover-pyctdbd"


@pytest.fixture(scope="module")
def recorded() -> tuple[list[dict], dict]:
    loaded = load_history(RUN_DIR / "history.jsonl")
    assert loaded.warnings == [] and loaded.retired == 0
    return loaded.events, json.loads((RUN_DIR / "results.json").read_text())


def test_checker_finds_what_the_run_reported(recorded):
    events, results = recorded
    (checked,) = check_failover(events)
    (reported,) = results["runs"]
    # Fields may be added to a run record (never renamed): the recorded ones must match.
    assert {k: checked[k] for k in reported} == reported
    assert checked["not_applicable"] == {}          # pyctdbd has every metric
    assert checked["watched_s"] == round(failover_facts(events_of_run(events, 0)).window_end
                                         - reported["t_cut"], 3)


def test_facts_of_the_recorded_run(recorded):
    events, results = recorded
    (reported,) = results["runs"]
    facts = failover_facts(events_of_run(events, 0))
    assert (facts.victim, facts.vip) == (reported["victim"], reported["vip"])
    assert facts.t_cut == reported["t_cut"] and facts.t_killed == reported["t_killed"]
    assert facts.t_power_on == reported["t_power_on"]
    assert facts.t_cut < facts.t_killed < facts.window_end < facts.t_power_on


def test_every_metric_happened_in_order(recorded):
    events, _ = recorded
    metrics, notes = failover_metrics(events_of_run(events, 0))
    assert notes == [] and all(metrics[m] is not None for m in METRICS)
    # pyctdbd: the survivors declare the victim dead before they take its IP, and clients are
    # served again after that (each metric is seconds after the cut).
    assert 0 < metrics["detect_s"] <= metrics["takeover_s"] <= metrics["smb_resumed_s"]
    assert metrics["takeover_s"] <= metrics["reset_s"]
    assert metrics["power_on_s"] < metrics["rejoin_s"] <= metrics["failback_s"]


def test_a_history_cut_mid_line_gives_the_same_figures(recorded, tmp_path):
    _, results = recorded
    text = (RUN_DIR / "history.jsonl").read_text()
    (tmp_path / "history.jsonl").write_text(text + text.splitlines()[-1][:40])  # killed mid-write
    loaded = load_history(tmp_path / "history.jsonl")
    assert loaded.truncated_line is not None
    assert check_failover(loaded.events) == check_failover(load_history(RUN_DIR / "history.jsonl").events)
    (checked,) = check_failover(loaded.events)
    assert {k: checked[k] for k in results["runs"][0]} == results["runs"][0]


def test_the_report_reads_the_recorded_run():
    (dataset,) = load_datasets(RUN_DIR)
    assert dataset.warnings == []
    assert {op.role for op in dataset.ops} == {"survivor", "victim"}
    assert [(f.fault, f.phase) for f in dataset.faults if f.phase in ("begin", "end")] == [
        ("power_off", "begin"), ("power_off", "end"), ("power_on", "begin"), ("power_on", "end")]
    report = render_report([dataset], RUN_DIR)
    detect = dataset.runs[0].metrics["detect_s"]
    assert f"| `detect_s` | pyctdbd | non-leader victim | {detect:.3f} |" in report
