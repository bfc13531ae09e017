"""benchmarks/migration_latency.py, its plumbing only: a few uses on a 3-node LocalCluster with
the smbd-like client processes (no timing is checked; the benchmark prints figures)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pyctdbd_cluster import have_ctdb_cli

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import migration_latency  # noqa: E402

pytestmark = [pytest.mark.skipif(not have_ctdb_cli(), reason="Debian's ctdb tool is not installed"),
              pytest.mark.timeout(120, method="thread")]


def test_every_mode_runs_and_every_use_is_counted(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "samples.json"
    status = migration_latency.main(["--daemons", "pyctdbd", "--rounds", "6", "--warmup", "2",
                                     "--duration", "0.3", "--gap", "3", "--json", str(out)])
    assert status == 0
    result = json.loads(out.read_text())["pyctdbd"]
    assert result["counter_ok"] and result["client_nodes"] == [1, 2]
    for mode in ("turns", "spaced"):
        assert len(result[mode]["uses_ms"]) == 6
        assert len(result[mode]["calls_ms"]) == result[mode]["migrations"] == 6
    assert len(result["contend"]["uses_ms"]) > 0
    # fresh: one new key per use, each migrated once from its (other) lmaster
    assert len(result["fresh"]["uses_ms"]) == 6 and result["fresh"]["migrations"] == 6
    # the daemons' own CPU is read from /proc for every mode (ticks: it may be 0 for 6 uses)
    assert all(result[mode]["daemon_cpu_s"] >= 0 for mode in ("turns", "spaced", "contend", "fresh"))
    assert result["contend"]["daemon_cpu_s"] > 0               # 0.3 s of busy daemons
    printed = capsys.readouterr().out
    assert "record migration latency" in printed and "lock-to-use p50" in printed
    assert "daemon CPU µs/migr" in printed
