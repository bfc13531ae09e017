"""Synthetic run directories for the reports tests (written with the lab's History writer and
event constructors).

The builders are imported by the other test_reports_* modules; the tests here check that what
they write is a valid history and results file in the lab's format.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ctdblab import events as ev
from ctdblab.history import History, read_history
from ctdblab.scenarios.checkers import WHY

T0 = 1763900000.0
METRICS = ("detect_s", "takeover_s", "ping_s", "reset_s", "smb_resumed_s", "survivor_stall_s",
           "rejoin_s", "failback_s")

# (role, victim, metrics) per run; None = the metric did not happen in that run.
CTDB_RUNS = [
    ("nonleader", 1, [2.85, 3.36, 3.40, 3.39, 3.79, 3.26, 14.2, 15.0]),
    ("nonleader", 2, [2.80, 3.30, 3.35, 3.34, 3.75, 3.20, 14.0, 14.8]),
    ("nonleader", 1, [2.95, 3.45, 3.50, 3.49, 3.90, 3.31, 14.5, 15.3]),
    ("leader", 0, [4.80, 5.25, 5.30, 5.29, 5.80, 5.10, None, None]),
    ("leader", 0, [4.90, 5.35, 5.40, 5.38, 5.90, 5.20, 16.0, 16.9]),
]
PYCTDBD_RUNS = [
    ("nonleader", 1, [0.21, 0.25, 0.27, 0.26, 0.42, 0.30, 6.1, 6.5]),
    ("nonleader", 2, [0.19, 0.23, 0.25, 0.24, None, 0.28, 6.0, 6.4]),
    ("nonleader", 1, [0.22, 0.26, 0.28, 0.27, 0.45, 0.31, 6.2, 6.6]),
    ("leader", 0, [0.24, 0.29, 0.31, 0.30, 0.48, 0.33, 6.3, None]),
    ("leader", 0, [0.25, 0.30, 0.32, 0.31, 0.50, 0.35, 6.4, 6.9]),
]
NOTES = {
    ("ctdb", 3): "victim did not rejoin within 30 s: ctdbd on node 0 exited (rejoin, failback)",
    ("pyctdbd", 1): "no SMB read succeeded through 198.19.8.2 within 20 s",
    ("pyctdbd", 3): "no IP moved back to node 0 within 20 s",
}


def write_failover(directory: Path, daemon: str, runs=None, ops_per_run: int = 40, seed: int = 1) -> Path:
    """A failover run directory like the lab's: results.json plus a history with ops, faults, notes."""
    runs = runs if runs is not None else (CTDB_RUNS if daemon == "ctdb" else PYCTDBD_RUNS)
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    results_runs = []
    with History(directory / "history.jsonl") as history:
        for index, (role, victim, values) in enumerate(runs):
            history.run = index
            t_cut = T0 + 100.0 * index
            metrics = dict(zip(METRICS, values))
            why_null = [f"{name}: {WHY[name]}" for name, value in metrics.items() if value is None]
            results_runs.append({"run": index, "victim": victim, "victim_role": role, "t_cut": t_cut,
                                 **metrics, "notes": why_null})
            history.record(ev.run_start(index, scenario="failover", daemon=daemon, t=t_cut - 5,
                                        victim=victim, victim_role=role, vip="198.19.8.2"))
            history.record(ev.fault_begin("power_off", victim, t=t_cut - 0.01))
            history.record(ev.fault_step("power_off", victim, "cut", t=t_cut))
            history.record(ev.fault_step("power_off", victim, "killed", t=t_cut + 0.01))
            history.record(ev.fault_end("power_off", victim, t=t_cut + 0.01))
            history.record(ev.fault_begin("power_on", victim, t=t_cut + 5.0))
            stall = metrics["survivor_stall_s"] or 0.0
            for op_id in range(ops_per_run):
                target_role = "survivor" if op_id % 2 else "victim"
                start = t_cut - 2 + op_id * 0.1
                latency = rng.uniform(0.002, 0.04)
                ok = True
                if target_role == "survivor" and op_id == 21:
                    latency = stall  # the op caught in the cluster-wide freeze
                if target_role == "victim" and 0 <= start - t_cut < 2:
                    latency, ok = 0.5, False  # connect timeout while the IP is nowhere
                op = dict(target="198.19.8.2", role=target_role)
                history.record(ev.op_invoke(f"p{op_id % 4}", "read", op_id, t=start, **op))
                if ok:
                    history.record(ev.op_ok(f"p{op_id % 4}", "read", op_id, latency_s=latency,
                                            t=start + latency, **op))
                else:
                    history.record(ev.op_fail(f"p{op_id % 4}", "read", op_id, latency_s=latency,
                                              error="timed out", t=start + latency, **op))
            if (daemon, index) in NOTES:
                history.record(ev.note(NOTES[(daemon, index)], t=t_cut + 30))
            history.record(ev.run_end(index, t=t_cut + 40))
    results = {"scenario": "failover", "daemon": daemon, "nodes": 3, "tunables": "aggressive",
               "runs": results_runs, "summary": {}}
    (directory / "results.json").write_text(json.dumps(results, indent=1))
    return directory


SCALING_MB_S = {  # (client, nodes) -> repeats
    ("smbclient", 1): [11.9, 11.9, 11.8], ("smbclient", 2): [23.7, 23.6, 23.7],
    ("smbclient", 3): [35.2, 35.0, 35.3], ("smbclient", 4): [46.9, 46.8, 46.9],
    ("smbprotocol", 1): [11.7, 11.6, 11.7], ("smbprotocol", 2): [23.2, 23.1, 23.3],
    ("smbprotocol", 3): [35.1, 34.8, 35.1], ("smbprotocol", 4): [46.0, 45.9, 46.3],
}


def write_scaling(directory: Path, daemon: str = "ctdb", with_history: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    points = [{"nodes": nodes, "client": client, "mb_s": mb_s, "run": run}
              for (client, nodes), repeats in SCALING_MB_S.items() for run, mb_s in enumerate(repeats)]
    (directory / "results.json").write_text(json.dumps(
        {"scenario": "scaling", "daemon": daemon, "bw_mbit": 100, "points": points}))
    if with_history:
        with History(directory / "history.jsonl") as history:
            history.record(ev.note("files pre-read into the page cache", t=T0))
    return directory


def test_synthetic_failover_history_is_in_the_lab_format(tmp_path):
    run_dir = write_failover(tmp_path / "ctdb", "ctdb", ops_per_run=4)
    events = read_history(run_dir / "history.jsonl")
    kinds = {e["kind"] for e in events}
    assert kinds == {"run", "fault", "op", "note"}
    results = json.loads((run_dir / "results.json").read_text())
    assert len(results["runs"]) == len(CTDB_RUNS)
    assert results["runs"][3]["rejoin_s"] is None


def test_synthetic_scaling_has_two_clients(tmp_path):
    results = json.loads((write_scaling(tmp_path / "s") / "results.json").read_text())
    assert {p["client"] for p in results["points"]} == {"smbclient", "smbprotocol"}
