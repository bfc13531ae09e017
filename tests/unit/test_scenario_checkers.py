"""Failover checkers compute each metric from the history alone."""

from __future__ import annotations

import pytest

from ctdblab import events as ev
from ctdblab.scenarios.checkers import (IncompleteHistory, check_failover, failover_facts,
                                        failover_metrics)

CUT, KILLED, ON = 1000.0, 1000.02, 1010.0
VIP = "198.19.8.3"


def ev_(t, kind, **f):
    return {"t": t, "kind": kind, "run": 0, **f}


def facts_events(*, power_on: bool = True, window: bool = True) -> list[dict]:
    """What the orchestrator and the nemesis record around the fault."""
    found = [
        ev.run_start(0, scenario="failover", daemon="pyctdbd", t=990.0, victim=2,
                     victim_role="nonleader", vip=VIP, leader=0, survivor_ip="198.19.8.1"),
        ev.fault_begin("power_off", 2, t=999.99),
        ev.fault_step("power_off", 2, "cut", t=CUT),
        ev.fault_step("power_off", 2, "killed", t=KILLED),
        ev.fault_end("power_off", 2, t=1000.03, killed=12),
        ev.window_end(t=1005.0),
        ev.fault_begin("power_on", 2, t=ON - 0.5),
        ev.fault_step("power_on", 2, "up", t=ON),
        ev.fault_end("power_on", 2, t=ON + 0.4),
        ev.run_end(0, t=1020.0),
    ]
    if not power_on:
        found = [e for e in found if e.get("fault") != "power_on"]
    if not window:
        found = [e for e in found if e.get("event") != "window_end"]
    for e in found:
        e.setdefault("run", 0)
    return found


def observations() -> list[dict]:
    return [
        ev_(999.0, "capture", probe="ping", what="reply", target=VIP),          # before the cut
        ev_(1000.01, "capture", probe="ping", what="reply", target=VIP),        # in flight: ignored
        ev_(1000.40, "state", what="log", event="detect", dead_node=2, node=0),
        ev_(1000.35, "state", what="node_state", subject=2, value="DISCONNECTED", node=0),
        ev_(1000.45, "state", what="log", event="takeover", ip=VIP, node=1),
        ev_(1000.47, "capture", probe="ping", what="reply", target=VIP),
        ev_(1000.46, "capture", probe="tcp_hold", what="reset", target=f"{VIP}:445"),
        ev_(1000.46, "capture", probe="tcp_hold", what="stopped", target=f"{VIP}:7777"),
        ev_(1000.60, "op", process="smb-retry", type="ok", latency_s=0.1),
        ev_(1000.30, "op", process="smb-retry", type="ok", latency_s=0.5),      # invoked before cut
        ev_(1000.20, "op", role="survivor", type="ok", latency_s=0.15),
        ev_(1003.00, "op", role="survivor", type="fail", latency_s=9.0, aborted=True),
        ev_(1012.0, "state", what="node_state", subject=2, value="OK", node=0),
        ev_(1013.0, "state", what="ip_owner", ip=VIP, value=2, node=0),
    ]


def test_metrics_from_events():
    m, notes = failover_metrics(facts_events() + observations())
    assert m["detect_s"] == 0.4          # the log wins over the poll
    assert m["takeover_s"] == 0.45
    assert m["ping_s"] == 0.47           # the reply in flight during the kill is not counted
    assert m["reset_s"] == 0.46
    assert m["smb_resumed_s"] == 0.6     # the retry invoked before the cut does not count
    assert m["survivor_stall_s"] == 0.15  # aborted ops are skipped
    assert m["power_on_s"] == 10.0
    assert m["rejoin_s"] == 12.0 and m["failback_s"] == 13.0
    assert m["unregistered_reset_s"] is None
    assert any(n.startswith("unregistered_reset_s:") for n in notes)


def test_facts_come_from_the_recorded_events():
    facts = failover_facts(facts_events())
    assert (facts.victim, facts.vip, facts.t_cut, facts.t_killed) == (2, VIP, CUT, KILLED)
    assert (facts.t_power_on, facts.window_end) == (ON, 1005.0)


def test_poll_is_the_fallback_for_detection():
    events = [e for e in observations() if e.get("event") != "detect"]
    m, _ = failover_metrics(facts_events(power_on=False) + events)
    assert m["detect_s"] == 0.35
    assert m["rejoin_s"] is None and m["power_on_s"] is None


def test_survivor_stall_counts_only_ops_started_inside_the_window():
    late = ev_(1007.0, "op", role="survivor", type="ok", latency_s=1.5)     # started 1005.5
    m, _ = failover_metrics(facts_events() + observations() + [late])
    assert m["survivor_stall_s"] == 0.15
    m, _ = failover_metrics(facts_events(window=False) + observations() + [late])
    assert m["survivor_stall_s"] == 1.5  # no window end recorded: no upper bound


def test_a_power_off_of_another_node_is_not_the_cut():
    events = [dict(e, node=1) if e.get("fault") == "power_off" else e for e in facts_events()]
    with pytest.raises(IncompleteHistory, match="never powered off"):
        failover_metrics(events + observations())


def test_a_run_without_its_start_event_cannot_be_checked():
    events = [e for e in facts_events() if e.get("event") != "start"]
    with pytest.raises(IncompleteHistory, match="one run start"):
        failover_metrics(events)


def test_check_failover_splits_a_history_by_run():
    first = facts_events() + observations()
    second = [dict(e, run=1, t=e["t"] + 100) for e in first]
    for e in second:
        if e.get("event") in ("start", "end"):
            e["run"] = 1
    records = check_failover(first + second)
    assert [r["run"] for r in records] == [0, 1]
    assert [r["detect_s"] for r in records] == [0.4, 0.4]
    assert records[1]["t_cut"] == CUT + 100
    assert records[0]["leader_before"] == 0 and records[0]["victim_role"] == "nonleader"
    assert any(n.startswith("unregistered_reset_s:") for n in records[0]["notes"])


def test_smb_resume_steps_come_from_the_retry_that_ended_smb_resumed():
    from ctdblab.scenarios.checkers import smb_resume_steps
    events = observations() + [
        # began after the cut, but ended later than the one at 1000.60: not the resuming retry
        ev_(1000.70, "op", process="smb-retry", type="ok", latency_s=0.65,
            steps={"connect": 0.6, "session": 0.05}),
        ev_(1000.59, "op", process="smb-retry", type="fail", latency_s=0.2),
    ]
    events[[i for i, e in enumerate(events) if e["t"] == 1000.60][0]]["steps"] = {
        "connect": 0.04, "session": 0.03, "tree": 0.01, "open": 0.01, "read": 0.005, "close": 0.005,
        "unknown_phase": 9.0}
    steps = smb_resume_steps(facts_events() + events, CUT)
    assert steps == {"began_s": 0.5, "connect": 0.04, "session": 0.03, "tree": 0.01, "open": 0.01,
                     "read": 0.005, "close": 0.005, "done_s": 0.6}
    assert list(steps) == ["began_s", "connect", "session", "tree", "open", "read", "close", "done_s"]


def test_smb_resume_steps_without_a_resuming_retry_is_none():
    from ctdblab.scenarios.checkers import smb_resume_steps
    before_cut_only = [ev_(1000.30, "op", process="smb-retry", type="ok", latency_s=0.5)]
    assert smb_resume_steps(facts_events() + before_cut_only, CUT) is None
