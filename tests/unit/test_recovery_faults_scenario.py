"""The faults-during-recovery option of the failover scenario (scenarios/recovery_faults.py):
what it refuses, how the daemon is started, and the verdict on whether the second fault landed
inside a recovery, from made-up histories."""

from __future__ import annotations

import pytest

from ctdblab.cluster.launchers import get_launcher
from ctdblab.errors import UserError
from ctdblab.scenarios.recovery_faults import check_then, daemon_env, landed_mid_recovery


def test_what_cannot_work_is_refused_before_a_cluster_is_built():
    check_then(None, 3, "leader")
    check_then("death", 5, "leader")
    check_then("leader-death", 5, "nonleader")
    with pytest.raises(UserError, match="takes death, leader-death, heal"):
        check_then("reboot", 5, "nonleader")
    with pytest.raises(UserError, match="at least 5 nodes"):
        check_then("heal", 4, "nonleader")
    with pytest.raises(UserError, match="must be a non-leader"):
        check_then("leader-death", 5, "leader")


def test_only_pyctdbd_is_told_to_pause_its_recoveries():
    assert daemon_env("pyctdbd") == {"PYCTDBD_RECOVERY_PAUSE_S": "1.5"}
    assert daemon_env("ctdb") == {}


def test_the_launcher_starts_the_daemon_with_its_extra_environment():
    class Node:
        programs: dict = {}
        ran: list = []

        def run(self, command, timeout):
            self.ran.append(command)

            class Done:
                returncode = 0
            return Done()

    launcher = get_launcher("ctdb")
    node = Node()
    launcher.start(node)
    launcher.env["PYCTDBD_RECOVERY_PAUSE_S"] = "1.5"
    launcher.start(node)
    assert node.ran[0] == ["ctdbd"]
    assert node.ran[1] == ["env", "PYCTDBD_RECOVERY_PAUSE_S=1.5", "ctdbd"]


def second_fault(t_begin: float, t_cut: float, started: float, fault: str = "power_off") -> list[dict]:
    tags = {"kind": "fault", "fault": fault, "node": 3, "during_recovery": True,
            "recovery_started_t": started}
    out = [{"t": t_begin, "phase": "begin", **tags}]
    if fault == "power_off":
        out.append({"t": t_cut, "phase": "step", "step": "cut", **tags})
    out.append({"t": t_cut + 0.05, "phase": "end", **tags})
    return out


def recovery_end(t: float) -> dict:
    return {"t": t, "kind": "state", "what": "log", "node": 0, "event": "recovery_end"}


def test_a_fault_between_the_start_and_the_end_of_a_recovery_landed_mid_recovery():
    verdict = landed_mid_recovery([recovery_end(99.0), *second_fault(100.1, 100.2, 100.0),
                                   recovery_end(101.6)])
    assert verdict["verdict"] == "ok" and verdict["after_start_s"] == 0.2
    assert verdict["first_recovery_end_t"] == 101.6


def test_a_fault_that_took_effect_after_the_recovery_finished_did_not():
    verdict = landed_mid_recovery([*second_fault(100.01, 100.3, 100.0), recovery_end(100.02)])
    assert verdict["verdict"] == "fail" and "after the recovery finished" in verdict["why"]


def test_a_heal_counts_from_its_end_and_a_missing_fault_fails():
    heal = second_fault(100.1, 100.2, 100.0, fault="heal")
    assert landed_mid_recovery([*heal, recovery_end(100.5)])["verdict"] == "ok"
    assert landed_mid_recovery([*heal, recovery_end(100.22)])["verdict"] == "fail"
    assert landed_mid_recovery([recovery_end(100.5)])["verdict"] == "fail"
    begin_only = second_fault(100.1, 100.2, 100.0)[:1]
    assert "never took effect" in landed_mid_recovery(begin_only)["why"]


def pstore(process: str, op_id: int, t_invoke: float, t_end: float | None, outcome: str = "ok") -> list[dict]:
    base = {"kind": "op", "f": "pdb_store", "process": process, "id": op_id}
    out = [{"t": t_invoke, "type": "invoke", **base}]
    if t_end is not None:
        out.append({"t": t_end, "type": outcome, **base})
    return out


def test_the_commits_that_met_the_recovery_are_counted_by_outcome():
    from ctdblab.scenarios.recovery_faults import commits_between

    history = [*pstore("w0", 1, 98.0, 99.0),            # over before the recovery
               *pstore("w0", 2, 99.5, 100.5),           # invoked before, answered during
               *pstore("w1", 1, 100.2, 102.0, "fail"),   # invoked during, answered after
               *pstore("w2", 1, 100.3, None),           # its node died with it
               *pstore("w0", 3, 101.5, 101.7)]          # after the recovery
    assert commits_between(history, 100.0, 101.0) == {"in_flight": 3, "ok": 1, "fail": 1,
                                                      "info": 0, "none": 1}
