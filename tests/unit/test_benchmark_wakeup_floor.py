"""benchmarks/wakeup_floor.py and the way idle_cost starts it: the loop wakes at its interval
and reports what it did (no figure is checked: the benchmark prints figures)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import idle_cost, wakeup_floor  # noqa: E402


def test_the_loop_wakes_at_its_interval_and_counts_its_wakeups():
    result = wakeup_floor.measure(interval=0.01, datagrams=2, seconds=0.3)
    assert 10 <= result["wakeups"] <= 32        # 30 intervals, less if the machine is slow
    assert result["cpu_pct"] >= 0 and result["us_per_wakeup"] > 0


def test_idle_cost_measures_the_floor_only_for_fast_heartbeats():
    assert idle_cost.start_floor(None, 2, 1.0) is None           # CTDB's own heartbeats
    assert idle_cost.start_floor(100, 2, 1.0) is None
    proc = idle_cost.start_floor(10, 2, 0.3)
    result = idle_cost.floor_result(proc)
    assert result is not None and result["datagrams"] == 2 and result["wakeups"] >= 10


def test_bad_arguments_are_refused(capsys, monkeypatch):
    for argv in (["--interval", "0"], ["--seconds", "-1"], ["--datagrams", "-2"]):
        monkeypatch.setattr(sys, "argv", ["wakeup_floor", *argv])
        try:
            wakeup_floor.main()
        except SystemExit as exit:
            assert exit.code == 2
        else:
            raise AssertionError(f"{argv} accepted")
    assert "must be positive" in capsys.readouterr().err


def test_json_output_is_one_object(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["wakeup_floor", "--json", "--seconds", "0.1", "--interval", "0.02"])
    assert wakeup_floor.main() == 0
    assert set(json.loads(capsys.readouterr().out)) >= {"wakeups", "cpu_pct", "us_per_wakeup"}
