"""The soak's generator: same seed, same schedule; targets resolved from the cluster's state."""

from __future__ import annotations

import json

import pytest

from ctdblab.scenarios.soak_schedule import (KINDS, ScheduledFault, make_schedule, partition_groups,
                                             resolve_target)


def _as_json(schedule):
    return json.dumps([f.as_dict() for f in schedule], sort_keys=True)


def test_the_same_seed_gives_the_same_schedule():
    assert _as_json(make_schedule(7, 200, 5)) == _as_json(make_schedule(7, 200, 5))


def test_another_seed_gives_another_schedule():
    assert _as_json(make_schedule(7, 50, 5)) != _as_json(make_schedule(8, 50, 5))


def test_a_long_schedule_holds_every_kind_of_fault():
    schedule = make_schedule(1, 200, 5)
    assert {f.kind for f in schedule} == set(KINDS)
    assert [f.index for f in schedule] == list(range(200))


def test_two_nodes_get_no_partitions():
    assert not any(f.kind.startswith("partition") for f in make_schedule(3, 200, 2))


def test_partitions_cut_off_a_minority_and_loss_has_a_share():
    for fault in make_schedule(5, 200, 5):
        if fault.kind.startswith("partition"):
            assert 1 <= fault.minority <= 2
        if fault.kind == "loss":
            assert 10 <= fault.percent <= 40


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        make_schedule(1, 0, 5)
    with pytest.raises(ValueError):
        make_schedule(1, 5, 1)


def _fault(kind, role, pick=0, minority=0):
    return ScheduledFault(0, kind, role, pick, 5.0, minority)


def test_targets_follow_the_role_and_the_pick():
    nodes = [0, 1, 2, 3, 4]
    assert resolve_target(_fault("freeze_leader", "leader"), nodes, leader=3) == 3
    assert resolve_target(_fault("freeze_nonleader", "nonleader", pick=0), nodes, leader=0) == 1
    assert resolve_target(_fault("power_cycle", "any", pick=7), nodes, leader=0) == 2
    # an unknown leader: the leader role falls back to the lowest PNN
    assert resolve_target(_fault("freeze_leader", "leader"), nodes, leader=None) == 0


def test_a_minority_partition_leaves_the_leader_on_the_large_side():
    for pick in range(50):
        small, large = partition_groups(_fault("partition_minority", "nonleader", pick, 2),
                                        [0, 1, 2, 3, 4], target=4, leader=1)
        assert 4 in small and 1 in large and len(small) == 2
        assert sorted(small + large) == [0, 1, 2, 3, 4]


def test_a_leader_partition_isolates_the_leader():
    small, large = partition_groups(_fault("partition_leader", "leader", 3, 1), [0, 1, 2, 3, 4],
                                    target=2, leader=2)
    assert small == [2] and large == [0, 1, 3, 4]


@pytest.mark.parametrize("kwargs, message", [
    ({"nodes": [1]}, "at least 2"), ({"nodes": [3, 4]}, "one node count"),
    ({"faults": 0}, "--faults must be at least 1"), ({"sample_period": 0.01}, "--sample-period")])
def test_bad_soak_options_are_refused_before_anything_is_built(tmp_path, kwargs, message):
    from ctdblab.errors import UserError
    from ctdblab.scenarios import run_scenario

    options = {"daemon": "pyctdbd", "nodes": [3], "repeat": 1, "tunables": "aggressive",
               "out": tmp_path / "out", "progress": lambda m: None, **kwargs}
    with pytest.raises(UserError, match=message):
        run_scenario("soak", **options)
    assert not (tmp_path / "out").exists()
