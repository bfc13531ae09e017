"""The lab's link shaping keeps Mininet's tc error report for real errors only."""

from __future__ import annotations

import pytest

pytest.importorskip("mininet.link", reason="Debian's mininet package is not installed")

from mininet.link import TCIntf  # noqa: E402

from ctdblab.cluster.mininet_backend import _quiet_tc_intf  # noqa: E402


def test_htb_quantum_warning_is_dropped_and_other_output_kept(monkeypatch):
    said = {}
    monkeypatch.setattr(TCIntf, "tc", lambda self, cmd, tc="tc": said[cmd])
    quiet = _quiet_tc_intf()
    intf = object.__new__(quiet)          # no node needed: only tc() is exercised
    said["a"] = "Warning: sch_htb: quantum of class 50001 is big. Consider r2q change.\n"
    said["b"] = ""
    said["c"] = ("Warning: sch_htb: quantum of class 50001 is big. Consider r2q change.\n"
                 "Error: Exclusivity flag on, cannot modify.\n")
    assert intf.tc("a") == ""
    assert intf.tc("b") == ""
    assert intf.tc("c") == "Error: Exclusivity flag on, cannot modify.\n"
