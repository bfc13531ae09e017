"""Every fault goes through the nemesis, which records it: begin, steps, end — or fail."""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import ClassVar

import pytest

from ctdblab.chaos import Fault, Nemesis, Outcome, Partition
from ctdblab.errors import UserError
from ctdblab.history import History, read_history


@dataclass
class FakePowerOff(Fault):
    node: int
    broken: bool = False
    name: ClassVar[str] = "power_off"

    def apply(self, cluster) -> Outcome:
        cluster.append(self.node)
        if self.broken:
            raise RuntimeError("port gone")
        t_cut = time.time()
        t_killed = time.time()
        return Outcome(value="done", steps=[("cut", t_cut), ("killed", t_killed)],
                       fields={"killed": 3})


def test_a_fault_is_recorded_with_its_steps(tmp_path):
    touched: list[int] = []
    with History(tmp_path / "h.jsonl") as history:
        assert Nemesis(touched, history).inject(FakePowerOff(2)) == "done"
    faults = [(e["phase"], e.get("step"), e["node"]) for e in read_history(tmp_path / "h.jsonl")
              if e["kind"] == "fault"]
    assert faults == [("begin", None, 2), ("step", "cut", 2), ("step", "killed", 2), ("end", None, 2)]
    assert touched == [2]


def test_a_failing_fault_is_recorded_as_failed_and_raises(tmp_path):
    with History(tmp_path / "h.jsonl") as history:
        with pytest.raises(RuntimeError, match="port gone"):
            Nemesis([], history).inject(FakePowerOff(1, broken=True))
    phases = [(e["phase"], e.get("error")) for e in read_history(tmp_path / "h.jsonl")]
    assert phases == [("begin", None), ("fail", "RuntimeError: port gone")]


def test_a_nemesis_without_a_history_is_refused():
    with pytest.raises(TypeError, match="History"):
        Nemesis([], None)


def test_a_bad_partition_is_refused_and_recorded_as_failed(tmp_path):
    three_nodes = SimpleNamespace(nodes=[SimpleNamespace(index=i) for i in range(3)])
    with History(tmp_path / "h.jsonl") as history:
        with pytest.raises(UserError, match="disjoint"):
            Nemesis(three_nodes, history).inject(Partition([[0, 1], [1, 2]]))
    phases = [(e["fault"], e["phase"]) for e in read_history(tmp_path / "h.jsonl")]
    assert phases == [("partition", "begin"), ("partition", "fail")]


def test_nodes_left_out_of_a_partition_form_one_more_group():
    four_nodes = SimpleNamespace(nodes=[SimpleNamespace(index=i) for i in range(4)])
    assert Partition([[0], [2]]).complete_groups(four_nodes) == [[0], [2], [1, 3]]


def test_tags_go_on_every_event_of_a_fault_also_when_it_fails(tmp_path):
    with History(tmp_path / "h.jsonl") as history:
        Nemesis([], history).inject(FakePowerOff(2), soak_index=7, target=2)
        with pytest.raises(RuntimeError):
            Nemesis([], history).inject(FakePowerOff(1, broken=True), soak_index=8)
    recorded = [(e["phase"], e["soak_index"]) for e in read_history(tmp_path / "h.jsonl")]
    assert recorded == [("begin", 7), ("step", 7), ("step", 7), ("end", 7), ("begin", 8), ("fail", 8)]
