"""The soak's checkers on synthetic histories: clean ones pass, each kind of violation fails with
the history lines that prove it."""

from __future__ import annotations

import pytest

from soak_history import IPS, Soak

from ctdblab.scenarios.soak_checks import Bounds
from ctdblab.scenarios.soak_invariants import node_violations

def _freeze_schedule():
    return [{"index": 0, "kind": "freeze_nonleader", "role": "nonleader", "pick": 0, "hold_s": 5}]


def _freeze(soak, t_begin=10.0, t_thaw=15.0):
    soak.fault(t_begin, "freeze", 2, "begin", 0)
    soak.fault(t_begin + 0.01, "freeze", 2, "end", 0)
    soak.fault(t_thaw, "thaw", 2, "begin", 0)
    soak.fault(t_thaw + 0.01, "thaw", 2, "end", 0)


def test_a_clean_soak_passes_every_check_and_measures_convergence(tmp_path):
    soak = Soak(tmp_path, _freeze_schedule())
    soak.steady(1.0, 10.0)
    moved = {"198.19.8.1": [0], "198.19.8.2": [1], "198.19.8.3": [1]}
    soak.steady(10.0, 15.0, owners=moved, powered=(0, 1, 2),
                status={0: {"0": "OK", "1": "OK", "2": "DISCONNECTED"}})
    _freeze(soak)
    soak.steady(15.5, 17.0, owners=moved)           # IP 3 not yet back on node 2: converged anyway
    soak.steady(17.0, 40.0)
    result = soak.check()
    assert result["violations"] == []
    assert all(v["ok"] for v in result["verdicts"].values())
    (episode,) = result["episodes"]
    assert episode["kind"] == "freeze_nonleader" and episode["target"] == 2
    assert episode["convergence_s"] == pytest.approx(0.59, abs=0.02)
    assert result["convergence"]["freeze_nonleader"]["faults"] == 1
    assert result["observations"]["truth_samples"] > 50


def test_an_ip_on_two_nodes_once_settled_is_a_violation_citing_its_samples(tmp_path):
    soak = Soak(tmp_path, _freeze_schedule())
    soak.steady(1.0, 10.0)
    _freeze(soak)
    soak.steady(15.5, 20.0)
    double = {"198.19.8.1": [0, 2], "198.19.8.2": [1], "198.19.8.3": [2]}
    soak.steady(20.0, 23.0, owners=double)
    soak.steady(23.0, 30.0)
    result = soak.check()
    assert not result["verdicts"]["settled"]["ok"]
    messages = [v["message"] for v in result["violations"] if v["check"] == "settled"]
    assert any("198.19.8.1 configured on nodes 0, 2" in m for m in messages)
    assert any("198.19.8.1 answered over ARP by nodes 0, 2" in m for m in messages)
    lines = [line for v in result["violations"] for line in v["lines"]]
    text = soak.path.read_text().splitlines()
    assert all('"198.19.8.1": ["02:00:00:00:00:00", "02:00:00:00:00:02"]' in text[line - 1]
               or '"addrs": ["198.19.8.1"' in text[line - 1] for line in lines)


def test_a_cluster_that_never_converges_fails(tmp_path):
    soak = Soak(tmp_path, _freeze_schedule())
    soak.steady(1.0, 10.0)
    _freeze(soak)
    soak.steady(15.5, 60.0, leaders={0: 0, 1: 0, 2: 2})    # node 2 believes it leads
    result = soak.check()
    (v,) = [v for v in result["violations"] if v["check"] == "converged"]
    assert "did not converge within 30 s (never)" in v["message"]
    assert "nodes disagree on the leader" in v["message"]
    assert result["episodes"][0]["convergence_s"] is None
    assert result["convergence"]["freeze_nonleader"]["converged"] == 0


def test_slow_convergence_beyond_the_settle_bound_fails(tmp_path):
    soak = Soak(tmp_path, _freeze_schedule(), Bounds(settle_s={"freeze_nonleader": 5.0}))
    soak.steady(1.0, 10.0)
    _freeze(soak)
    soak.steady(15.5, 22.0, status={p: {"0": "OK", "1": "OK", "2": "UNHEALTHY"} for p in range(3)})
    soak.steady(22.0, 30.0)
    result = soak.check()
    (v,) = [v for v in result["violations"] if v["check"] == "converged"]
    assert "after 7.0 s" in v["message"] and v["bound_s"] == 5.0
    assert result["verdicts"]["nodes_ok_bound"]["ok"]      # 7 s < node_ok_s (45 s)


def test_a_node_not_ok_within_its_bound_fails(tmp_path):
    soak = Soak(tmp_path, _freeze_schedule(), Bounds(node_ok_s=3.0))
    soak.steady(1.0, 10.0)
    _freeze(soak)
    soak.steady(15.5, 20.0, status={p: {"0": "OK", "1": "OK", "2": "BANNED"} for p in range(3)})
    soak.steady(20.0, 30.0)
    result = soak.check()
    assert not result["verdicts"]["nodes_ok_bound"]["ok"]
    assert result["episodes"][0]["nodes_ok_s"] == pytest.approx(4.99, abs=0.02)


def _partition_schedule():
    return [{"index": 0, "kind": "partition_leader", "role": "leader", "pick": 0, "hold_s": 15,
             "minority": 1}]


def _partition(soak, t0=10.0, t1=25.0):
    soak.fault(t0, "partition", None, "begin", 0, groups=[[0], [1, 2]])
    soak.fault(t0 + 0.01, "partition", None, "end", 0, groups=[[0], [1, 2]])
    soak.fault(t1, "heal", None, "begin", 0)
    soak.fault(t1 + 0.01, "heal", None, "end", 0)


@pytest.mark.parametrize("keeps_for, fails", [(4.0, False), (12.0, True)])
def test_an_ip_held_on_both_sides_of_a_partition_fails_beyond_the_bound(tmp_path, keeps_for, fails):
    soak = Soak(tmp_path, _partition_schedule())
    soak.steady(1.0, 10.0)
    both = {"198.19.8.1": [0, 1], "198.19.8.2": [1], "198.19.8.3": [2]}
    moved = {"198.19.8.1": [1], "198.19.8.2": [1], "198.19.8.3": [2]}
    soak.steady(10.0, 10.0 + keeps_for, owners=both)
    soak.steady(10.0 + keeps_for, 25.0, owners=moved)
    _partition(soak)
    soak.steady(25.5, 40.0)
    result = soak.check()
    found = [v for v in result["violations"] if v["check"] == "both_sides"]
    assert bool(found) == fails
    if fails:
        assert found[0]["ip"] == "198.19.8.1" and found[0]["duration_s"] > 5
        assert "[[0], [1, 2]]" in found[0]["message"]


def _power_schedule():
    return [{"index": 0, "kind": "power_cycle", "role": "any", "pick": 0, "hold_s": 15}]


@pytest.mark.parametrize("taken_over", [True, False])
def test_the_ips_of_a_powered_off_node_must_move_to_one_live_node(tmp_path, taken_over):
    soak = Soak(tmp_path, _power_schedule())
    soak.steady(1.0, 10.0)
    soak.fault(10.0, "power_off", 2, "begin", 0)
    soak.fault(10.1, "power_off", 2, "end", 0)
    after = ({"198.19.8.1": [0], "198.19.8.2": [1], "198.19.8.3": [0]} if taken_over
             else {"198.19.8.1": [0], "198.19.8.2": [1], "198.19.8.3": []})
    soak.steady(10.1, 12.0, owners={**after, "198.19.8.3": []}, powered=(0, 1),
                status={p: {"0": "OK", "1": "OK", "2": "DISCONNECTED"} for p in range(2)})
    soak.steady(12.0, 25.0, owners=after, powered=(0, 1),
                status={p: {"0": "OK", "1": "OK", "2": "DISCONNECTED"} for p in range(2)})
    soak.fault(25.0, "power_on", 2, "begin", 0)
    soak.fault(25.1, "power_on", 2, "end", 0)
    soak.steady(26.0, 40.0)
    result = soak.check()
    found = [v for v in result["violations"] if v["check"] == "takeover"]
    assert bool(found) != taken_over
    if found:
        assert found[0]["ip"] == "198.19.8.3" and "no node" in found[0]["message"]


def test_a_daemon_spinning_after_a_fault_is_a_runaway(tmp_path):
    soak = Soak(tmp_path, _freeze_schedule())
    soak.steady(1.0, 10.0)
    _freeze(soak)
    soak.steady(15.5, 60.0, cpu_rate={1: 0.9}, log_rate={2: 50000})
    result = soak.check()
    found = sorted((v["node"], v["message"].split()[2]) for v in result["violations"]
                   if v["check"] == "runaway")
    assert found == [(1, "cpu"), (2, "log")]


def test_a_fault_never_undone_is_reported(tmp_path):
    soak = Soak(tmp_path, _freeze_schedule())
    soak.steady(1.0, 10.0)
    soak.fault(10.0, "freeze", 2, "begin", 0)
    soak.steady(10.0, 12.0)
    result = soak.check()
    assert "never undone" in result["violations"][0]["message"]


def test_node_violations_name_what_is_wrong():
    nodes = {"0": {"powered": True, "addrs": IPS, "leader": None, "status": None},
             "1": {"powered": False}}
    found = node_violations(nodes, IPS)
    assert ("leader_agreed", "no leader answer from node 0") in found
    assert ("nodes_ok", "node 0 did not answer ctdb status") in found
    assert not any(kind == "ip_unique" for kind, _ in found)


def test_bounds_round_trip_and_unknown_names_are_refused():
    bounds = Bounds(both_sides_s=3.0, settle_s={"flap": 9.0})
    again = Bounds.from_dict(bounds.as_dict())
    assert again.both_sides_s == 3.0 and again.settle("flap") == 9.0
    assert again.settle("power_cycle") == 45.0
    with pytest.raises(ValueError, match="unknown bounds: bogus"):
        Bounds.from_dict({"bogus": 1})


def test_a_blip_once_settled_is_forgiven_but_a_doubled_arp_answer_is_reported(tmp_path):
    soak = Soak(tmp_path, _freeze_schedule())
    soak.steady(1.0, 10.0)
    soak.fault(10.0, "freeze", 2, "begin", 0)
    soak.fault(10.01, "freeze", 2, "end", 0)
    soak.fault(15.0, "thaw", 2, "begin", 0)
    soak.fault(15.01, "thaw", 2, "end", 0)
    soak.steady(15.5, 20.0)
    soak.sample(20.0, owners={"198.19.8.1": [0], "198.19.8.2": [1], "198.19.8.3": []})  # mid-move
    soak.arp(20.1)
    soak.sample(20.5, leaders={0: None})                                # one slow answer
    soak.arp(20.6, owners={"198.19.8.1": [0, 2], "198.19.8.2": [1], "198.19.8.3": [2]})
    soak.steady(21.0, 30.0)
    result = soak.check()
    (v,) = result["violations"]
    assert v["check"] == "arp_exclusive" and "answered over ARP by nodes 0, 2" in v["message"]
    assert result["verdicts"]["settled"]["ok"]


@pytest.mark.parametrize("replied_after_thaw", [False, True])
def test_an_arp_round_counts_after_the_undo_only_if_answered_after_it(tmp_path, replied_after_thaw):
    """A round asked 0.3 s before the thaw is answered at once, by the nodes as they were during
    the freeze; its window closes after the thaw.  Only a reply that came after the thaw shows
    two nodes holding the IP once the fault was undone."""
    soak = Soak(tmp_path, _freeze_schedule())
    soak.steady(1.0, 10.0)
    _freeze(soak)
    moved = {"198.19.8.1": [0], "198.19.8.2": [1], "198.19.8.3": [1]}
    soak.steady(10.5, 14.5, owners=moved, status={0: {"0": "OK", "1": "OK", "2": "DISCONNECTED"}})
    doubled = {"198.19.8.1": [0], "198.19.8.2": [1], "198.19.8.3": [1, 2]}
    replied = 15.2 if replied_after_thaw else 14.701
    soak.arp(15.1, owners=doubled, t_sent=14.7, t_replied=replied)
    soak.steady(15.5, 25.0)
    result = soak.check()
    found = [v for v in result["violations"] if v["check"] == "arp_exclusive"]
    if replied_after_thaw:
        (v,) = found
        assert "198.19.8.3 answered over ARP by nodes 1, 2" in v["message"]
    else:
        assert found == [] and result["verdicts"]["arp_exclusive"]["ok"]


def test_one_consistent_instant_mid_takeover_is_not_convergence(tmp_path):
    soak = Soak(tmp_path, _freeze_schedule())
    soak.steady(1.0, 10.0)
    _freeze(soak)
    moving = {"198.19.8.1": [0], "198.19.8.2": [1], "198.19.8.3": []}
    soak.steady(15.5, 17.0, owners=moving)
    soak.sample(17.0)
    soak.arp(17.1)                                   # all fine, for one round
    soak.sample(17.5, owners=moving)
    soak.arp(17.6, owners=moving)
    soak.steady(18.0, 30.0)
    result = soak.check()
    # the ARP round at 18.1 is the first to show the IP back: the stable stretch starts there
    assert result["episodes"][0]["convergence_s"] == pytest.approx(18.1 - 15.01, abs=0.01)


def test_a_doubled_ip_is_followed_past_the_heal_until_one_side_lets_go(tmp_path):
    soak = Soak(tmp_path, _partition_schedule())
    soak.steady(1.0, 10.0)
    both = {"198.19.8.1": [0, 1], "198.19.8.2": [1], "198.19.8.3": [2]}
    soak.steady(10.0, 22.0)
    soak.steady(22.0, 29.0, owners=both)          # 3 s in the partition, 4 s after the heal
    _partition(soak)
    soak.steady(29.0, 45.0)
    result = soak.check()
    (v,) = [v for v in result["violations"] if v["check"] == "both_sides"]
    assert v["t_first"] == 22.0 and v["t_last"] == 29.0     # the last ARP round still showed it


@pytest.mark.parametrize("after_thaw, counted", [(0.004, False), (0.3, True)])
def test_a_thawed_nodes_own_arp_answers_count_only_after_its_first_moments(tmp_path, after_thaw,
                                                                         counted):
    soak = Soak(tmp_path, _freeze_schedule())
    soak.steady(1.0, 10.0)
    moved = {"198.19.8.1": [0], "198.19.8.2": [1], "198.19.8.3": [1]}
    soak.steady(10.0, 15.0, owners=moved, status={0: {"0": "OK", "1": "OK", "2": "DISCONNECTED"}})
    _freeze(soak)                                  # thawed at 15.01
    both = {"198.19.8.1": [0], "198.19.8.2": [1], "198.19.8.3": [1, 2]}
    soak.arp(15.01 + after_thaw + 0.4, owners=both, t_sent=15.01 + after_thaw,
             t_replied=15.01 + after_thaw)
    soak.steady(15.6, 40.0)
    found = [v for v in soak.check()["violations"] if v["check"] == "arp_exclusive"]
    assert bool(found) == counted
