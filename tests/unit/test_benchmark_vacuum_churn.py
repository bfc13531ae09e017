"""benchmarks/vacuum_churn.py without a lab: the census of a real TDB file, its lines parsed
back, the cluster-wide series, drain times, tables and the plot of a synthetic result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import vacuum_churn, vacuum_churn_report as report  # noqa: E402
from benchmarks.tdb_census import CENSUS, CensusError, DbCount, parse_census  # noqa: E402
from ctdblab.daemon.protocol import LtdbHeader  # noqa: E402
from ctdblab.daemon.store import DbKind, TdbFile  # noqa: E402
from ctdblab.daemon.store.naming import tdb_flags  # noqa: E402


def census(t: float, pnn: int, **dbs: tuple[int, int, int]) -> dict:
    return {"t": t, "pnn": pnn, "took": 0.01,
            "dbs": {f"{name}.tdb": list(counts) for name, counts in dbs.items()}, "errors": {}}


# -- the census in a node ------------------------------------------------------------------------
def test_census_counts_records_tombstones_and_bytes_of_this_nodes_files_only(tmp_path):
    tdb = TdbFile(str(tmp_path / "locking.tdb.0"), 101, tdb_flags(DbKind.VOLATILE))
    for i in range(5):
        tdb.store_ltdb(b"live-%d" % i, LtdbHeader(rsn=1, dmaster=0, reserved1=0, flags=0), b"data")
    for i in range(3):
        tdb.store_ltdb(b"gone-%d" % i, LtdbHeader(rsn=2, dmaster=0, reserved1=0, flags=0))
    other = TdbFile(str(tmp_path / "locking.tdb.1"), 101, tdb_flags(DbKind.VOLATILE))
    other.store_ltdb(b"x", LtdbHeader(rsn=1, dmaster=1, reserved1=0, flags=0))
    (tmp_path / "notes.txt").write_text("not a database of node 0")
    proc = subprocess.Popen([sys.executable, "-c", CENSUS, str(tmp_path), "0", "0.05"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first, second = proc.stdout.readline(), proc.stdout.readline()   # the daemon's file stays open
    finally:
        proc.kill()
        stderr = proc.communicate(timeout=10)[1]
    assert first, stderr
    for line in (first, second):
        counted = parse_census(line)
        assert counted.pnn == 0 and counted.errors == {}
        assert counted.dbs == {"locking.tdb": DbCount(8, 3, (tmp_path / "locking.tdb.0").stat().st_size)}
    tdb.close()
    other.close()


def test_a_database_that_cannot_be_read_is_an_error_not_a_count(tmp_path):
    (tmp_path / "broken.tdb.2").write_bytes(b"not a tdb at all" * 10)
    proc = subprocess.run([sys.executable, "-c", CENSUS.replace("while True:", "for _ in range(1):"),
                           str(tmp_path), "2", "0"], capture_output=True, text=True, timeout=60)
    counted = parse_census(proc.stdout.splitlines()[0])
    assert counted.dbs == {} and list(counted.errors) == ["broken.tdb"]


@pytest.mark.parametrize("line", [
    "", "not json", '{"t": 1, "pnn": 0}', '{"t": 1, "pnn": 0, "dbs": {"a": [1, 2, 3]}}',
    '{"t": 1, "pnn": 0, "dbs": {"a": [1, 1]}}', '{"t": "x", "pnn": 0, "dbs": {}}'])
def test_lines_that_are_no_census_are_refused(line):
    with pytest.raises(CensusError):
        parse_census(line)


def test_a_census_survives_the_trip_through_results_json():
    raw = census(5.5, 1, locking=(10, 4, 4096))
    assert parse_census(json.dumps(raw)).to_json() == raw
    assert parse_census(raw).dbs["locking.tdb"] == DbCount(10, 4, 4096)


# -- cluster-wide series and drain ---------------------------------------------------------------
def test_a_point_needs_every_node_and_sums_their_latest_censuses():
    samples = [census(1.0, 0, locking=(10, 5, 100)), census(2.0, 1, locking=(20, 6, 200), g_lock=(3, 3, 50)),
               census(3.0, 0, locking=(1, 0, 100))]
    points = report.cluster_series(samples, [0, 1])
    assert [(p.t, p.t_oldest, p.records, p.tombstones, p.bytes) for p in points] == [
        (2.0, 1.0, 33, 14, 350), (3.0, 2.0, 24, 9, 350)]
    only = report.cluster_series(samples, [0, 1], ["locking.tdb"])
    assert [p.tombstones for p in only] == [11, 6]


def test_a_failed_database_keeps_the_nodes_previous_count():
    failed = census(3.0, 0)
    failed["errors"] = {"locking.tdb": "tdb_traverse_read: corrupt"}
    points = report.cluster_series([census(1.0, 0, locking=(10, 5, 100)), census(2.0, 1),
                                    failed], [0, 1])
    assert [p.tombstones for p in points] == [5, 5]


def test_drain_counts_only_censuses_taken_wholly_after_the_last_delete():
    points = report.cluster_series([census(9.0, 0, a=(0, 0, 1)), census(11.0, 1, a=(0, 0, 1)),
                                    census(12.0, 0, a=(50, 50, 1)), census(14.0, 1, a=(2, 2, 1)),
                                    census(15.0, 0, a=(0, 0, 1)), census(17.0, 1, a=(0, 0, 1))], [0, 1])
    # The first zero (t=11) has node 0's census from before the last delete at 10.
    assert report.first_drained(points, 10.0, 0) == pytest.approx(7.0)
    assert report.first_drained(points, 10.0, 2) == pytest.approx(5.0)
    assert report.first_drained(points, 20.0, 0) is None


def synthetic_result(daemon: str = "pyctdbd") -> dict:
    """Two rounds: 100 tombstones at the peak of round 1 on node 0, drained to 1 at t=30 and 0 at
    t=40; round 2 peaks at 80 and never drains to 0. Files grow in round 1 only."""
    levels = [(0, 0, 1000), (4, 60, 1400), (8, 100, 1500), (16, 40, 1500), (30, 1, 1500), (40, 0, 1500),
              (50, 0, 1500), (54, 80, 1500), (62, 30, 1500), (100, 3, 1500)]
    samples = []
    for t, tomb, size in levels:
        samples.append(census(1000.0 + t, 0, locking=(tomb + 5, tomb, size), brlock=(0, 0, 300)))
        samples.append(census(1000.0 + t + 0.5, 1, locking=(5, 0, 1000)))
    rounds = [{"round": 1, "files": 50, "create": [1002.0, 1006.0], "delete": [1006.0, 1010.0],
               "settle_end": 1045.0, "created": 50, "deleted": 50, "create_errors": 0, "delete_errors": 0, "recoveries": 0},
              {"round": 2, "files": 50, "create": [1052.0, 1056.0], "delete": [1056.0, 1060.0],
               "settle_end": 1101.0, "created": 50, "deleted": 49, "create_errors": 0, "delete_errors": 1, "recoveries": 2}]
    return {"daemon": daemon, "files": 50, "t0": 1000.0, "pnns": [0, 1], "rounds": rounds, "samples": samples}


def test_round_summaries_of_a_synthetic_run():
    first, second = report.summaries(synthetic_result())
    assert first["peak_tombstones"] == 100 and first["bytes_at_peak"] == 2800
    assert first["drain_1pct_s"] == pytest.approx(20.0) and first["drain_0_s"] == pytest.approx(30.0)
    assert first["start_bytes"] == 2300 and first["grew_bytes"] == 500 and first["end_tombstones"] == 0
    assert first["create_per_s"] == pytest.approx(12.5)
    assert second["peak_tombstones"] == 80 and second["grew_bytes"] == 0
    assert second["drain_1pct_s"] is None and second["drain_0_s"] is None
    assert second["end_tombstones"] == 3 and second["smb_errors"] == 1
    assert first["recoveries"] == 0 and second["recoveries"] == 2
    assert second["end_bytes_by_db"] == {"brlock.tdb": 300, "locking.tdb": 2500}


def test_tables_and_plot_of_a_synthetic_run(tmp_path):
    results = [synthetic_result("pyctdbd"), synthetic_result("ctdb"),
               {"daemon": "ctdb", "files": 50, "error": "cluster did not start", "rounds": [], "samples": []}]
    text = report.summary_table(results)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["daemon", "round", "files"] and len(lines) == 2 + 5
    assert "30.000" in lines[2] and lines[3].split()[-2:] == ["-", "-"]
    growth = report.growth_table(results)
    assert "locking.tdb" in growth and "1.000" in growth
    pytest.importorskip("matplotlib")
    path = report.plot(results, tmp_path)
    assert path is not None and path.stat().st_size > 10_000 and (tmp_path / "vacuum_churn.svg").exists()


def test_replot_prints_the_tables_of_a_results_file(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / "results.json").write_text(json.dumps([synthetic_result()]))
    assert vacuum_churn.main(["--replot", str(tmp_path / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "drain 1% s" in out and (tmp_path / "vacuum_churn.png").exists()


# -- the churn's plumbing ------------------------------------------------------------------------
def test_files_are_spread_evenly_over_the_ips_in_bounded_directories():
    paths = vacuum_churn.layout(10, 3, 2)
    assert [len(p) for p in paths] == [4, 3, 3]
    assert len({x for p in paths for x in p}) == 10
    assert paths[0][:3] == ["churn\\ip0\\d0000\\f0000000", "churn\\ip0\\d0000\\f0000003",
                            "churn\\ip0\\d0001\\f0000006"]
    assert vacuum_churn.directories(paths[0]) == ["churn", "churn\\ip0", "churn\\ip0\\d0000", "churn\\ip0\\d0001"]


def test_smbclient_output_is_counted():
    out = ("putting file /w/churn-source as \\churn\\ip0\\d0000\\f0000000 (0.1 kb/s) (average 0.1 kb/s)\n"
           "smb: \\> NT_STATUS_OBJECT_NAME_NOT_FOUND deleting remote file \\churn\\x\n"
           "putting file /w/churn-source as \\churn\\ip0\\d0000\\f0000003 (0.1 kb/s) (average 0.1 kb/s)\n"
           "NT_STATUS_OBJECT_NAME_NOT_FOUND\nNT_STATUS_ACCESS_DENIED opening remote file\n")
    assert vacuum_churn.smbclient_outcome(out) == {
        "put": 2, "errors": {"NT_STATUS_OBJECT_NAME_NOT_FOUND": 2, "NT_STATUS_ACCESS_DENIED": 1}}


def test_recoveries_are_counted_from_every_nodes_log_within_the_round(tmp_path):
    from datetime import datetime, timezone
    from types import SimpleNamespace

    def line(t: float, text: str) -> str:
        stamp = datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "")
        return f"{stamp}+00:00 vm pyctdbd[42]: {text}\n"
    nodes = [SimpleNamespace(name=f"n{i}") for i in range(3)]
    for node, times in zip(nodes, ([100.0, 150.0, 150.5, 300.0], [150.2], [])):
        log = tmp_path / "nodes" / node.name / "log" / "ctdb" / "log.ctdb"
        log.parent.mkdir(parents=True)
        log.write_text("".join(line(t, "Recovery has started") for t in times) + line(160.0, "Recovery has finished"))
    cluster = SimpleNamespace(nodes=nodes + [SimpleNamespace(name="never-started")], workdir=tmp_path)
    assert vacuum_churn.recoveries(cluster, 140.0, 200.0) == 2
    assert vacuum_churn.recoveries(cluster, 400.0, 500.0) == 0


@pytest.mark.parametrize("argv", [["--daemons", "samba"], ["--files", "0"], ["--sample-every", "0"]])
def test_bad_arguments_get_a_clear_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        vacuum_churn.main(argv)
    assert exc.value.code == 2 and "daemons must be among" in capsys.readouterr().err
