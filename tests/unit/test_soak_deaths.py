"""False deaths in a soak (scenarios/soak_deaths.py): the daemons' "node X is dead" lines read
from their logs, and judged against the faults under way."""

from __future__ import annotations

from soak_history import Soak

from ctdblab import events
from ctdblab.history import History, load_numbered
from ctdblab.scenarios.soak_deaths import PROBE, import_deaths, nodes_file_addresses

ADDRS = ["198.18.0.1", "198.18.0.2", "198.18.0.3"]


def _death(soak, t, me, dead):
    soak.history.record(events.log_line(me, "detect", f"{ADDRS[me]}:4379: node {ADDRS[dead]}:4379 "
                                        "is dead: 1 connected", "pyctdbd", t=t, dead_node=dead))


def _read(soak):
    soak.history.record(events.capture(PROBE, "soak", "read", logs=3, deaths=0))


def _freeze_soak(tmp_path):
    soak = Soak(tmp_path, [{"index": 0, "kind": "freeze_nonleader", "role": "nonleader",
                            "pick": 0, "hold_s": 5}])
    soak.steady(1.0, 10.0)
    soak.fault(10.0, "freeze", 2, "begin", 0)
    soak.fault(10.01, "freeze", 2, "end", 0)
    soak.fault(15.0, "thaw", 2, "begin", 0)
    soak.fault(15.01, "thaw", 2, "end", 0)
    soak.steady(15.5, 40.0)
    return soak


def test_deaths_involving_the_fault_are_explained_and_others_are_false_failovers(tmp_path):
    soak = _freeze_soak(tmp_path)
    _death(soak, 10.2, 0, 2)            # the frozen node, by a peer
    _death(soak, 15.3, 2, 1)            # the thawed node's late timers, within the grace
    _death(soak, 12.0, 0, 1)            # node 1: no fault on 0 or 1 -> false
    _death(soak, 26.0, 1, 2)            # the thawed node, 11 s after the thaw -> false
    _read(soak)
    result = soak.check()
    found = [v for v in result["violations"] if v["check"] == "false_deaths"]
    assert [(v["node"], round(v["t_first"])) for v in found] == [(1, 12), (2, 26)]
    assert "node 0 declared node 1 dead" in found[0]["message"] and found[0]["lines"]
    assert result["verdicts"]["false_deaths"] == {"ok": False, "violations": 2}


def test_a_partition_explains_deaths_across_it_but_not_within_a_side(tmp_path):
    soak = Soak(tmp_path, [{"index": 0, "kind": "partition_minority", "role": "nonleader",
                            "pick": 0, "hold_s": 15, "minority": 1}])
    soak.steady(1.0, 10.0)
    soak.fault(10.0, "partition", None, "begin", 0, groups=[[0], [1, 2]])
    soak.fault(10.01, "partition", None, "end", 0, groups=[[0], [1, 2]])
    soak.fault(25.0, "heal", None, "begin", 0)
    soak.fault(25.01, "heal", None, "end", 0)
    soak.steady(25.5, 40.0)
    _death(soak, 10.3, 1, 0)
    _death(soak, 10.3, 0, 2)
    _death(soak, 11.0, 1, 2)            # both on the majority side
    _read(soak)
    result = soak.check()
    found = [v for v in result["violations"] if v["check"] == "false_deaths"]
    assert [(v["node"], v["lines"] != []) for v in found] == [(2, True)]


def test_a_clean_soak_with_the_deaths_read_passes_and_one_without_says_not_checked(tmp_path):
    soak = _freeze_soak(tmp_path / "a")
    _death(soak, 10.2, 0, 2)
    _read(soak)
    result = soak.check()
    assert result["verdicts"]["false_deaths"] == {"ok": True, "violations": 0}
    assert result["not_checked"] == {}
    older = _freeze_soak(tmp_path / "b")             # a history from before the import
    result = older.check()
    assert "false_deaths" not in result["verdicts"]
    assert "no deaths" in result["not_checked"]["false_deaths"]


def _import(tmp_path, texts: list[str]) -> tuple[int, list[dict]]:
    """Node PNN's log holds texts[PNN]; the import's count of deaths, and the history after."""
    logs = []
    for pnn, text in enumerate(texts):
        path = tmp_path / f"n{pnn}.log"
        path.write_text(text)
        logs.append(path)
    history_path = tmp_path / "history.jsonl"
    with History(history_path) as history:
        found = import_deaths(history, logs, ADDRS)
    return found, [e for _, e in load_numbered(history_path)]


def test_import_reads_both_daemons_death_lines_and_maps_addresses_to_pnns(tmp_path):
    found, got = _import(tmp_path, [
        "2026-12-05T12:47:19.299482+00:00 vm ctdbd[25335]: 198.18.0.1:4379: node 198.18.0.3:4379 "
        "is dead: 3 connected\n"
        "2026-12-05T12:47:19.3+00:00 vm ctdbd[25335]: dead count reached for node 2\n",
        "2026-12-05T12:48:00.000001+00:00 vm pyctdbd[77]: 198.18.0.2:4379: node 198.18.0.1:4379 "
        "is dead: 1 connected (reported dead by node 2)\nnot a log line\n",
    ])
    assert found == 2
    deaths = [(e["node"], e["dead_node"], e["program"]) for e in got if e.get("event") == "detect"]
    assert deaths == [(0, 2, "ctdbd"), (1, 0, "pyctdbd")]
    assert got[-1]["probe"] == PROBE and got[-1]["deaths"] == 2 and got[-1]["logs"] == 2


def test_the_nodes_file_gives_the_addresses_in_pnn_order(tmp_path):
    nodes = tmp_path / "nodes" / "cx0n1" / "etc-ctdb" / "upper"
    nodes.mkdir(parents=True)
    (nodes / "nodes").write_text("198.18.0.1\n#198.18.0.2\n\n198.18.0.3:4379\n")
    assert nodes_file_addresses(tmp_path) == ADDRS


def _stall(soak, t, node, late_ms, cpu_ms=None, span_ms=None, wait_ms=None):
    cpu = {} if cpu_ms is None else {"cpu_ms": cpu_ms, "span_ms": span_ms}
    if wait_ms is not None:
        cpu["wait_ms"] = wait_ms
    soak.history.record(events.log_line(node, "stall", f"Event loop stalled: timer ran {late_ms} ms late",
                                        "pyctdbd", t=t, late_ms=late_ms, **cpu))


def test_a_false_death_in_a_stall_of_either_node_says_so_and_stays_a_violation(tmp_path):
    soak = _freeze_soak(tmp_path)
    _death(soak, 22.0, 0, 1)
    _stall(soak, 22.3, 1, 400, cpu_ms=9, span_ms=480, wait_ms=390)   # node 1 did not run
    _death(soak, 30.0, 1, 0)
    _stall(soak, 30.2, 1, 350, cpu_ms=340, span_ms=420)    # the declaring node, busy
    _death(soak, 35.0, 0, 1)
    _stall(soak, 37.0, 1, 300)                             # 1.7 s later: not this death's
    _death(soak, 38.0, 0, 1)
    _stall(soak, 38.1, 1, 100, cpu_ms=2, span_ms=115, wait_ms=5)
    _read(soak)
    found = [v for v in soak.check()["violations"] if v["check"] == "false_deaths"]
    assert len(found) == 4
    assert found[0]["message"].endswith("; node 1's daemon had stalled 400 ms, using 9 ms of CPU "
                                        "and waiting 390 ms for one in 480 ms (waiting for a CPU)")
    assert len(found[0]["lines"]) == 2
    assert "using 340 ms of CPU in 420 ms (busy in its own work)" in found[1]["message"]
    assert "stalled" not in found[2]["message"] and len(found[2]["lines"]) == 1
    assert found[3]["message"].endswith("(blocked in the kernel)")


def test_import_reads_stall_lines_with_and_without_the_cpu_note(tmp_path):
    found, got = _import(tmp_path, [
        "2026-12-05T12:47:19.3+00:00 vm pyctdbd[5]: Event loop stalled: timer ran 401 ms late; "
        "restarting failure-detection timeouts instead of declaring peers dead\n",
        "2026-12-05T12:48:00.0+00:00 vm pyctdbd[6]: Event loop stalled: timer ran 319 ms late "
        "(this daemon used 7 ms of CPU in the last 402 ms); restarting failure-detection "
        "timeouts instead of declaring peers dead\n",
        "2026-12-05T12:49:00.0+00:00 vm pyctdbd[7]: Event loop stalled: timer ran 61 ms late "
        "(this daemon used 8 ms of CPU and waited 50 ms for one in the last 76 ms); restarting "
        "failure-detection timeouts instead of declaring peers dead\n",
    ])
    assert found == 0
    stalls = [(e["node"], e["late_ms"], e.get("cpu_ms"), e.get("span_ms"), e.get("wait_ms"))
              for e in got if e.get("event") == "stall"]
    assert stalls == [(0, 401, None, None, None), (1, 319, 7, 402, None), (2, 61, 8, 76, 50)]
    assert got[-1]["stalls"] == 3


def test_node_logs_come_in_pnn_order_past_nine_nodes(tmp_path):
    from ctdblab.scenarios.soak_deaths import node_logs
    for n in (1, 2, 10, 11):
        d = tmp_path / "nodes" / f"cx0n{n}" / "log" / "ctdb"
        d.mkdir(parents=True)
        (d / "log.ctdb").write_text("")
    assert [p.parts[-4] for p in node_logs(tmp_path)] == ["cx0n1", "cx0n2", "cx0n10", "cx0n11"]
