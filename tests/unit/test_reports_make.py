"""make_report end to end on synthetic runs: files written, and report.md's numbers match the input."""

from __future__ import annotations

import json
import statistics
import xml.etree.ElementTree as ET

import pytest
from test_reports_synthetic import CTDB_RUNS, METRICS, NOTES, PYCTDBD_RUNS, SCALING_MB_S, write_failover, \
    write_scaling

from ctdblab.reports import make_report
from ctdblab.scenarios.checkers import WHY
from ctdblab.reports.__main__ import main as reports_main
from ctdblab.reports.load import load_datasets
from ctdblab.reports.summary import brief_lines, render_report

PLOT_STEMS = ("failover_timeline", "failover_summary", "latency_cdf", "throughput_vs_nodes")


@pytest.fixture(scope="module")
def combined(tmp_path_factory):
    """One parent directory with both daemons' failover runs and a scaling run, reported once."""
    out = tmp_path_factory.mktemp("out")
    write_failover(out / "pyctdbd", "pyctdbd", ops_per_run=20)
    write_failover(out / "ctdb", "ctdb", ops_per_run=20, seed=2)
    write_scaling(out / "scaling")
    written = make_report(out)
    return out, written, (out / "report.md").read_text()


def _values(runs, metric, role):
    index = METRICS.index(metric)
    return [values[index] for r, _, values in runs if r == role and values[index] is not None]


def _p90(values):
    ordered = sorted(values)
    position = (len(ordered) - 1) * 0.9
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _row(report: str, *first_cells: str) -> list[str]:
    """The cells of the markdown table row that starts with these cells."""
    prefix = "| " + " | ".join(first_cells) + " |"
    matches = [line for line in report.splitlines() if line.startswith(prefix)]
    assert len(matches) == 1, f"{len(matches)} rows start with {prefix!r}"
    return [cell.strip() for cell in matches[0].strip("|").split("|")]


def test_every_plot_is_written_as_png_and_svg(combined):
    out, written, _ = combined
    expected = {out / f"{stem}.{ext}" for stem in PLOT_STEMS for ext in ("png", "svg")} | {out / "report.md"}
    assert set(written) == expected
    for stem in PLOT_STEMS:
        png = (out / f"{stem}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert width >= 1000 and height >= 500  # 130 dpi on figures at least 8 inches wide
        root = ET.parse(out / f"{stem}.svg").getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"


def test_metric_table_has_p50_p90_max_n_from_the_runs(combined):
    _, _, report = combined
    for label, runs in (("ctdb", CTDB_RUNS), ("pyctdbd", PYCTDBD_RUNS)):
        for metric in ("detect_s", "smb_resumed_s", "rejoin_s"):
            for role, title in (("nonleader", "non-leader victim"), ("leader", "leader victim")):
                values = _values(runs, metric, role)
                total = sum(r == role for r, _, _ in runs)
                cells = _row(report, f"`{metric}`", label, title)
                assert cells[3] == f"{statistics.median(values):.3f}"
                assert cells[4] == f"{_p90(values):.3f}"
                assert cells[5] == f"{max(values):.3f}"
                assert cells[6] == str(len(values))
                assert cells[7] == f"{total - len(values)} of {total}"


def test_nulls_are_reported_as_did_not_happen_with_their_notes(combined):
    out, _, report = combined
    rejoin = 4 + METRICS.index("rejoin_s")  # dataset, run, victim, role, then the metrics
    ctdb_run3 = _row(report, "ctdb", "3")
    assert ctdb_run3[rejoin] == "did not happen" and ctdb_run3[rejoin + 1] == "did not happen"
    assert _row(report, "ctdb", "0")[rejoin] == "14.200"
    notes = report.split("## Notes", 1)[1].split("## Plots", 1)[0]
    ctdb_note = [line for line in notes.splitlines() if line.startswith("- **ctdb failover, run 3**")]
    assert len(ctdb_note) == 1
    assert "`rejoin_s`, `failback_s` did not happen" in ctdb_note[0]
    assert NOTES[("ctdb", 3)] in ctdb_note[0]                 # the history's note
    assert f"rejoin_s: {WHY['rejoin_s']}" in ctdb_note[0]      # the checker's, from results.json
    assert NOTES[("pyctdbd", 1)] in notes
    # The timeline says so too, as text (not a point at zero).
    svg = (out / "failover_timeline.svg").read_text()
    assert "did not happen: rejoin, failback" in svg
    assert "did not happen: SMB resumed" in svg


def test_ratio_pyctdbd_over_ctdb(combined):
    _, _, report = combined
    ours = statistics.median(_values(PYCTDBD_RUNS, "smb_resumed_s", "nonleader"))
    theirs = statistics.median(_values(CTDB_RUNS, "smb_resumed_s", "nonleader"))
    cells = _row(report, "`smb_resumed_s`", "non-leader victim")
    assert cells[2:5] == [f"{ours:.3f}", f"{theirs:.3f}", f"{ours / theirs:.3g}×"]
    # ctdb's leader-victim failback happened once, pyctdbd's once: the ratio is still given.
    failback = _row(report, "`failback_s`", "leader victim")
    assert failback[4] == f"{6.9 / 16.9:.3g}×"


def test_scaling_table_with_efficiency(combined):
    _, _, report = combined
    for client in ("smbclient", "smbprotocol"):
        one = statistics.median(SCALING_MB_S[(client, 1)])
        for nodes in (1, 4):
            median = statistics.median(SCALING_MB_S[(client, nodes)])
            cells = _row(report, client, str(nodes))
            assert cells[2] == f"{median:.1f}"
            assert cells[5] == f"{nodes * one:.1f}"
            assert cells[6] == f"{median / (nodes * one):.1%}"
            assert cells[7] == f"{median / (nodes * 100 / 8):.1%}"  # of line rate at 100 Mbit/s
    assert "109 / 201 / 278 / 308 MB/s" in report


def test_report_links_every_plot(combined):
    _, _, report = combined
    for stem in PLOT_STEMS:
        assert f"]({stem}.png)" in report and f"]({stem}.svg)" in report


def test_single_failover_dir_without_ratio(tmp_path):
    run_dir = write_failover(tmp_path / "ctdb", "ctdb", ops_per_run=2)
    report = render_report(load_datasets(run_dir), run_dir)
    assert "pyctdbd / ctdb" not in report
    assert _row(report, "`detect_s`", "ctdb", "leader victim")[3] == "4.850"
    assert "No plots were drawn." in report  # render_report alone draws nothing


def test_summary_that_disagrees_with_runs_is_flagged(tmp_path):
    run_dir = write_failover(tmp_path / "ctdb", "ctdb", ops_per_run=1)
    results = json.loads((run_dir / "results.json").read_text())
    results["summary"] = {"detect_s": {"p50": 2.9, "p90": 4.8, "max": 9.9, "n": 5},
                          "takeover_s": {"p50": 3.45, "p90": 5.31, "max": 5.35, "n": 5}}
    (run_dir / "results.json").write_text(json.dumps(results))
    report = render_report(load_datasets(run_dir), run_dir)
    assert "`detect_s` max: summary 9.9, runs 4.900" in report
    assert "takeover_s` max" not in report


def test_brief_lines_for_ci(tmp_path):
    write_failover(tmp_path / "out" / "ctdb", "ctdb", ops_per_run=1)
    write_scaling(tmp_path / "out" / "scaling")
    lines = brief_lines(load_datasets(tmp_path / "out"))
    assert lines[0].startswith("ctdb failover, non-leader victim (3 runs): detect 2.850s")
    assert "rejoin 14.200s" in lines[0]
    assert "smbclient N=4 46.9 MB/s (98.5%)" in lines[-1]


def test_command_line_reports_bad_input_in_one_line(tmp_path, capsys):
    (tmp_path / "results.json").write_text("{")
    assert reports_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ctdblab: ") and "results.json: not valid JSON" in err and err.count("\n") == 1


def test_large_latency_samples_are_thinned_but_keep_the_tail():
    from ctdblab.reports.plots import _plotted_ranks
    assert _plotted_ranks(10) == list(range(10))
    ranks = _plotted_ranks(100_000)
    assert len(ranks) < 2_100 and ranks[0] == 0
    assert ranks[-500:] == list(range(99_500, 100_000))  # every one of the slowest 500 ops


def test_smb_resumed_breakdown_gives_the_p50_of_each_phase_of_the_resuming_retry(tmp_path):
    from ctdblab import events as ev
    from test_reports_synthetic import T0
    run_dir = write_failover(tmp_path / "pyctdbd", "pyctdbd", ops_per_run=1)
    results = json.loads((run_dir / "results.json").read_text())
    lines = []
    for run in results["runs"][:3]:                       # the three non-leader runs
        t_cut, k = run["t_cut"], run["run"]
        steps = {"connect": 0.02 + 0.01 * k, "session": 0.03, "tree": 0.004, "open": 0.005,
                 "read": 0.002, "close": 0.001}
        began = t_cut + 0.08 + 0.01 * k
        lines.append(ev.op_ok("smb-retry", "smb_connect_read", 1, latency_s=0.07, t=began + 0.07,
                              target="198.19.8.2", role="victim", steps=steps) | {"run": k})
        # a retry begun before the cut that ended after it is not the resuming one
        lines.append(ev.op_ok("smb-retry", "smb_connect_read", 0, latency_s=0.5, t=t_cut + 0.05,
                              target="198.19.8.2", role="victim", steps={"connect": 0.4}) | {"run": k})
    with (run_dir / "history.jsonl").open("a") as f:
        f.writelines(json.dumps(e) + "\n" for e in lines)
    assert T0 <= results["runs"][0]["t_cut"]
    report = render_report(load_datasets(run_dir), run_dir)
    section = report.split("## SMB resumed: where the time went", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| pyctdbd")]
    assert rows == ["| pyctdbd | non-leader victim | 3 | 0.090 | 0.030 | 0.030 | 0.004 | 0.005 | 0.002 "
                    "| 0.001 | 0.160 |"]


def test_no_smb_resumed_breakdown_without_smb_retries(combined):
    assert "SMB resumed: where the time went" not in combined[2]
