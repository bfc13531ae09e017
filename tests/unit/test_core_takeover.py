from __future__ import annotations

from ctdblab.daemon.core.takeover import (
    IPReport,
    Release,
    Take,
    nodes_to_ask_available,
    plan_takeover_run,
)
from ctdblab.daemon.protocol.constants import UNKNOWN_PNN, NodeFlag

IPS = ["198.19.8.1", "198.19.8.2", "198.19.8.3"]
D, U = NodeFlag.DISCONNECTED, NodeFlag.UNHEALTHY


def reports(owners, pnns):
    """Every node in `pnns` knows all IPS and believes `owners` (ip -> pnn)."""
    return {p: IPReport(p, {ip: owners.get(ip, UNKNOWN_PNN) for ip in IPS}) for p in pnns}


def test_fresh_cluster_spreads_ips_and_releases_redundantly():
    flags = [0, 0, 0]
    known = reports({}, [0, 1, 2])
    plan = plan_takeover_run(flags, known, {p: IPS for p in range(3)}, algorithm=2,
                             no_ip_failback=False, no_ip_takeover=False)
    assert sorted(plan.assignment.values()) == [0, 1, 2]
    assert sorted(t.pnn for t in plan.takes) == [0, 1, 2]
    # Every connected node that knows an IP but is not its owner gets a (redundant) release.
    assert len(plan.releases) == 6
    for r in plan.releases:
        assert plan.assignment[r.ip] == r.new_owner != r.pnn
    assert plan.ipreallocated == [0, 1, 2]
    assert {m[0] for m in plan.moves()} == set(IPS)


def test_dead_node_ip_moves_and_dead_node_gets_nothing():
    owners = {"198.19.8.1": 0, "198.19.8.2": 1, "198.19.8.3": 2}
    flags = [0, D | U, 0]
    known = reports(owners, [0, 2])
    plan = plan_takeover_run(flags, known, {0: IPS, 2: IPS}, algorithm=2,
                             no_ip_failback=False, no_ip_takeover=False)
    assert plan.assignment["198.19.8.1"] == 0 and plan.assignment["198.19.8.3"] == 2
    assert plan.assignment["198.19.8.2"] in (0, 2)
    assert all(x.pnn != 1 for x in plan.releases + plan.takes)
    assert plan.ipreallocated == [0, 2]
    assert plan.moves() == [("198.19.8.2", UNKNOWN_PNN, plan.assignment["198.19.8.2"])]


def test_no_ip_takeover_leaves_orphan_unhosted():
    owners = {"198.19.8.1": 0, "198.19.8.2": 1, "198.19.8.3": 2}
    flags = [0, D | U, 0]
    plan = plan_takeover_run(flags, reports(owners, [0, 2]), {0: IPS, 2: IPS}, algorithm=2,
                             no_ip_failback=False, no_ip_takeover=True)
    assert plan.assignment["198.19.8.2"] == UNKNOWN_PNN
    assert Release(0, "198.19.8.2", UNKNOWN_PNN) in plan.releases
    assert not any(t.ip == "198.19.8.2" for t in plan.takes)


def test_no_ip_failback_keeps_ips_off_returning_node():
    owners = {"198.19.8.1": 0, "198.19.8.2": 0, "198.19.8.3": 2}
    flags = [0, 0, 0]
    avail = {p: IPS for p in range(3)}
    kept = plan_takeover_run(flags, reports(owners, [0, 1, 2]), avail, algorithm=2,
                             no_ip_failback=True, no_ip_takeover=False)
    assert 1 not in kept.assignment.values()
    back = plan_takeover_run(flags, reports(owners, [0, 1, 2]), avail, algorithm=2,
                             no_ip_failback=False, no_ip_takeover=False)
    assert 1 in back.assignment.values()


def test_unhealthy_node_loses_its_ip():
    owners = {"198.19.8.1": 0, "198.19.8.2": 1, "198.19.8.3": 2}
    flags = [0, U, 0]
    # Node 1 is connected (knows IPs) but reports nothing available.
    plan = plan_takeover_run(flags, reports(owners, [0, 1, 2]), {0: IPS, 2: IPS}, algorithm=2,
                             no_ip_failback=False, no_ip_takeover=False)
    assert plan.assignment["198.19.8.2"] in (0, 2)
    assert Release(1, "198.19.8.2", plan.assignment["198.19.8.2"]) in plan.releases
    assert Take(plan.assignment["198.19.8.2"], "198.19.8.2") in plan.takes


def test_nothing_available_skips_allocation():
    flags = [0, 0]
    plan = plan_takeover_run(flags, reports({}, [0, 1]), {0: [], 1: []}, algorithm=2,
                             no_ip_failback=False, no_ip_takeover=False)
    assert plan.skipped_reason and not plan.takes and plan.ipreallocated == [0, 1]


def test_who_is_asked_for_available_ips():
    flags = [0, NodeFlag.BANNED, 0, D]
    known = {0: IPReport(0, {"198.19.8.1": 0}), 1: IPReport(1, {"198.19.8.1": 0}),
             2: IPReport(2, {})}
    assert nodes_to_ask_available(flags, known) == [0]


def test_deterministic_algorithm_and_ipv6_formatting():
    ips = ["198.19.8.1", "fd00::1"]
    known = {p: IPReport(p, {ip: UNKNOWN_PNN for ip in ips}) for p in (0, 1)}
    plan = plan_takeover_run([0, 0], known, {0: ips, 1: ips}, algorithm=0,
                             no_ip_failback=False, no_ip_takeover=False)
    assert set(plan.assignment) == {"198.19.8.1", "fd00::1"}
    assert sorted(plan.assignment.values()) == [0, 1]
