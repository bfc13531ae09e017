"""The failover data checker (scenarios/datacheck.py) on synthetic histories, passing and failing,
and the pure helpers the data probes share (block format, tdbdump and getdbmap parsing)."""

from __future__ import annotations

import pytest

from ctdblab import events as ev
from ctdblab.scenarios.datacheck import (CONTENTION_GRACE_S, check_data, has_data_workload,
                                         summarize_data)
from ctdblab.scenarios.probes.blocks import BLOCK_SIZE, make_block, parse_block, scan_file
from ctdblab.scenarios.probes.pdb_dump import db_path, parse_tdbdump, unescape
from ctdblab.scenarios.probes.pdb_writer import commit_value

CUT, TAKEOVER = 1000.0, 1000.4
VIP, SURVIVOR = "198.19.8.1", "198.19.8.2"


def base() -> list[dict]:
    return [
        ev.run_start(0, scenario="failover", daemon="pyctdbd", nodes=3, t=990.0, victim=2,
                     victim_role="nonleader", vip=VIP, leader=0, survivor_ip=SURVIVOR),
        ev.fault_step("power_off", 2, "cut", t=CUT),
        ev.fault_step("power_off", 2, "killed", t=CUT + 0.02),
        ev.window_end(t=1008.0),
        ev.fault_step("power_on", 2, "up", t=1009.0),
        ev.log_line(0, "takeover", "Takeover of IP", "pyctdbd", t=TAKEOVER, ip=VIP),
    ]


def write(process: str, file: str, block: int, crc: int, t: float, ok: bool | None = True,
          role: str = "survivor") -> list[dict]:
    common = dict(target=VIP, role=role, file=file, writer=file[:-4], block=block, crc=crc)
    out = [ev.op_invoke(process, "smb_write_block", block, t=t - 0.01, **common)]
    if ok is True:
        out.append(ev.op_ok(process, "smb_write_block", block, latency_s=0.01, t=t, **common))
    elif ok is False:
        out.append(ev.op_fail(process, "smb_write_block", block, latency_s=0.01, t=t,
                              error="SMBConnectionClosed", **common))
    return out


def readback(file: str, blocks: dict[int, int], bad: list[int] = ()) -> dict:
    return ev.capture("smb_readback", "smb-readback", "file_blocks", t=1020.0, file=file,
                      writer=file[:-4], blocks={str(n): c for n, c in blocks.items()},
                      bad_slots=list(bad), size=0)


def commit(node: int, n: int, t: float, ok: bool = True) -> list[dict]:
    key = f"r0.n{node}.{n}"
    f = dict(target=f"node{node}", key=key, value=commit_value(key), db="x.tdb", node=node)
    out = [ev.op_invoke(f"pdb-writer-{node}", "pdb_store", n, t=t - 0.05, **f)]
    if ok:
        out.append(ev.op_ok(f"pdb-writer-{node}", "pdb_store", n, latency_s=0.05, t=t, **f))
    return out


def copy(node: int, keys: list[str], *, override: dict | None = None) -> dict:
    records = {k: commit_value(k) for k in keys}
    records.update(override or {})
    return ev.capture("pdb_dump", f"pdb-dump-{node}", "pdb_copy", t=1021.0, node=node,
                      db="x.tdb", path="/p", records=records, total=len(records))


def contention(*, baseline_conflict: bool = True, after: list[tuple[float, bool]] = ((1000.5, True),)
               ) -> list[dict]:
    """``after``: (end time, granted) of each attempt after the cut, each 0.05 s long."""
    p = "smb-contend"
    out = [ev.capture("smb_contend", p, "held", t=995.0, file="c"),
           ev.op_invoke(p, "contend_open_lock", 1, target=SURVIVOR, t=995.1, baseline=True)]
    if baseline_conflict:
        out.append(ev.op_fail(p, "contend_open_lock", 1, latency_s=0.05, error="SharingViolation",
                              target=SURVIVOR, t=995.15, baseline=True, phase="open",
                              conflict="sharing_violation"))
    else:
        out.append(ev.op_ok(p, "contend_open_lock", 1, latency_s=0.05, target=SURVIVOR,
                            t=995.15, baseline=True))
    for i, (t, granted) in enumerate(after, start=2):
        out.append(ev.op_invoke(p, "contend_open_lock", i, target=SURVIVOR, t=t - 0.05))
        if granted:
            out.append(ev.op_ok(p, "contend_open_lock", i, latency_s=0.05, target=SURVIVOR, t=t))
        else:
            out.append(ev.op_fail(p, "contend_open_lock", i, latency_s=0.05, target=SURVIVOR, t=t,
                                  error="SharingViolation", phase="open",
                                  conflict="sharing_violation"))
    return out


def without_contention(history: list[dict]) -> list[dict]:
    return [e for e in history
            if e.get("probe") != "smb_contend" and e.get("f") != "contend_open_lock"]


def good_history() -> list[dict]:
    h = base()
    h += write("w0", "f0.bin", 1, 11, 998.0) + write("w0", "f0.bin", 2, 12, 1001.0)
    h += write("w2", "f2.bin", 1, 21, 999.0, role="victim")
    h += write("w2", "f2.bin", 2, 22, 1000.2, ok=False, role="victim")   # in flight at the cut
    h += write("w2", "f2.bin", 3, 23, 1002.0, role="victim")
    h += [readback("f0.bin", {1: 11, 2: 12}), readback("f2.bin", {1: 21, 3: 23})]
    h += commit(0, 1, 998.0) + commit(2, 1, 999.0) + commit(2, 2, 999.9, ok=False)
    h += commit(1, 1, 1003.0)
    keys = ["r0.n0.1", "r0.n2.1", "r0.n1.1"]
    h += [copy(0, keys), copy(1, keys), copy(2, keys)]
    h += contention()
    return h


def test_a_clean_run_passes_with_its_counts():
    assert has_data_workload(good_history())
    d = check_data(good_history())
    assert d["verdict"] == "ok", d["problems"]
    assert (d["blocks"]["acked"], d["blocks"]["indeterminate"], d["blocks"]["lost"]) == (4, 1, 0)
    assert (d["commits"]["acked"], d["commits"]["indeterminate"], d["commits"]["lost"]) == (3, 1, 0)
    assert d["contention"]["verdict"] == "ok" and d["contention"]["wait_s"] == 0.5
    totals = summarize_data([d, d])
    assert totals["blocks_acked"] == 8 and totals["runs_ok"] == 2 and totals["commits_lost"] == 0


def test_an_unacknowledged_block_present_or_absent_is_not_lost():
    h = good_history()
    h = [e for e in h if e.get("what") != "file_blocks" or e["file"] != "f2.bin"]
    h.append(readback("f2.bin", {1: 21, 2: 22, 3: 23}))   # the in-flight write did land
    d = check_data(h)
    assert d["verdict"] == "ok" and d["blocks"]["unacked_present"] == 1


def test_a_lost_block_fails():
    h = [e for e in good_history() if e.get("what") != "file_blocks" or e["file"] != "f0.bin"]
    h.append(readback("f0.bin", {1: 11}))                   # acked block 2 is missing
    d = check_data(h)
    assert d["verdict"] == "fail" and d["blocks"]["lost"] == 1
    (w0,) = [w for w in d["blocks"]["writers"] if w["file"] == "f0.bin"]
    assert w0["lost_blocks"] == [{"block": 2, "found": "missing"}]


@pytest.mark.parametrize("blocks, bad, found", [({1: 11, 2: 99}, [], "other bytes"),
                                                ({1: 11}, [2], "corrupt")])
def test_a_bad_checksum_is_a_lost_block(blocks, bad, found):
    h = [e for e in good_history() if e.get("what") != "file_blocks" or e["file"] != "f0.bin"]
    h.append(readback("f0.bin", blocks, bad))
    d = check_data(h)
    assert d["verdict"] == "fail" and d["blocks"]["lost"] == 1
    assert any(w["lost_blocks"] == [{"block": 2, "found": found}] for w in d["blocks"]["writers"])


def test_a_file_never_read_back_is_unverified_and_fails():
    h = [e for e in good_history() if e.get("what") != "file_blocks" or e["file"] != "f2.bin"]
    h.append(ev.capture("smb_readback", "smb-readback", "file_read_failed", t=1020.0,
                        file="f2.bin", writer="f2", phase="open", error="timeout"))
    d = check_data(h)
    assert d["verdict"] == "fail" and d["blocks"]["unverified"] == 2 and d["blocks"]["lost"] == 0


def test_a_commit_missing_on_the_rejoined_node_fails():
    h = [e for e in good_history() if not (e.get("what") == "pdb_copy" and e["node"] == 2)]
    h.append(copy(2, ["r0.n0.1", "r0.n2.1"]))              # r0.n1.1 was committed while it was off
    d = check_data(h)
    assert d["verdict"] == "fail" and d["commits"]["lost"] == 1
    (n2,) = [n for n in d["commits"]["nodes"] if n["node"] == 2]
    assert n2["lost_keys"] == [{"key": "r0.n1.1", "found": None}]


def test_a_commit_with_another_value_or_an_unread_node_fails():
    h = [e for e in good_history() if not (e.get("what") == "pdb_copy" and e["node"] in (0, 1))]
    h.append(copy(0, ["r0.n0.1", "r0.n2.1", "r0.n1.1"], override={"r0.n0.1": "stale"}))
    d = check_data(h)                                       # node 1's copy was never read
    assert d["verdict"] == "fail"
    assert d["commits"]["lost"] == 1 and d["commits"]["unverified"] == 3


def test_a_run_that_proved_nothing_fails():
    h = [e for e in good_history() if e.get("f") != "smb_write_block"
         and not (e.get("f") == "pdb_store" and e["type"] == "ok")]
    problems = check_data(h)["problems"]
    assert any("no SMB data writer" in p for p in problems)
    assert any("no commit was acknowledged" in p for p in problems)


def test_contention_blocked_past_the_takeover_fails():
    late = TAKEOVER + CONTENTION_GRACE_S + 0.5
    h = without_contention(good_history())
    h += contention(after=[(1000.3, False), (late, False), (late + 0.3, True)])
    c = check_data(h)["contention"]
    assert c["verdict"] == "blocked" and c["conflicts"] == 2
    assert c["last_conflict_after_takeover_s"] == pytest.approx(CONTENTION_GRACE_S + 0.45)


def test_contention_refused_only_during_the_failover_passes():
    h = without_contention(good_history())
    h += contention(after=[(1000.3, False), (1001.0, False), (1001.3, True)])
    c = check_data(h)["contention"]
    assert c["verdict"] == "ok" and c["conflicts"] == 2 and c["wait_s"] == 1.3


@pytest.mark.parametrize("kwargs, verdict", [(dict(baseline_conflict=False), "invalid"),
                                             (dict(after=[(1001.0, False)]), "never_granted")])
def test_contention_that_proves_nothing_or_never_succeeds_fails(kwargs, verdict):
    h = without_contention(good_history()) + contention(**kwargs)
    d = check_data(h)
    assert d["verdict"] == "fail" and d["contention"]["verdict"] == verdict


# -- helpers of the probes ------------------------------------------------------------------------
def test_blocks_round_trip_and_detect_damage():
    one, crc1 = make_block("r0-n1", 1)
    two, crc2 = make_block("r0-n1", 2)
    assert len(one) == BLOCK_SIZE and parse_block(one, "r0-n1", 1) == crc1
    assert parse_block(one, "r0-n2", 1) is None and parse_block(one, "r0-n1", 2) is None
    flipped = bytearray(two)
    flipped[100] ^= 1
    content = bytes(BLOCK_SIZE) + one + bytes(flipped) + bytes(BLOCK_SIZE) + two[:10]
    valid, bad = scan_file(content, "r0-n1")
    assert valid == {1: crc1} and bad == [2, 4]


def test_tdbdump_and_getdbmap_parsing():
    assert unescape(r"a\00\5C\22b") == b'a\x00\\"b'
    dump = ('{\nkey(7) = "r0.n1.1"\ndata(30) = "'
            + "\\00" * 24 + 'value!"\n}\n{\nkey(3) = "a\\0Ab"\ndata(0) = ""\n}\n')
    records = parse_tdbdump(dump)
    assert records[b"r0.n1.1"][24:] == b"value!" and records[b"a\nb"] == b""
    with pytest.raises(ValueError):
        parse_tdbdump('key(9) = "short"\n')
    dbmap = ("|ID|Name|Path|Persistent|Sticky|Unhealthy|ReadOnly|Replicated|\n"
             "|0x1|ctdblab_check.tdb|/var/lib/ctdb/persistent/ctdblab_check.tdb.0|1|0|0|0|0|\n")
    assert db_path(dbmap, "ctdblab_check.tdb") == "/var/lib/ctdb/persistent/ctdblab_check.tdb.0"
    assert db_path(dbmap, "other.tdb") is None


def test_check_data_is_refused_outside_the_failover_scenario(tmp_path):
    from ctdblab.errors import UserError
    from ctdblab.scenarios import run_scenario

    with pytest.raises(UserError, match="--check-data"):
        run_scenario("scaling", daemon="ctdb", nodes=[1, 2], repeat=1, tunables="default",
                     out=tmp_path / "out", progress=lambda msg: None, check_data=True)
    assert not (tmp_path / "out").exists()
