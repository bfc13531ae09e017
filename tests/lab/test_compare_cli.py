"""Differential test: Debian's stock `ctdb` tool gives the same output against pyctdbd as
against real ctdbd 4.17 for the same 3-node cluster state (status, ip, ip all, ping, pnn,
listnodes, uptime, leader, getvar/setvar/listvars, disable/enable, stop/continue, ban/unban,
moveip, gettickles/addtickle/deltickle, runstate, getcapabilities, shutdown, ...)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from compare_cli import compare  # noqa: E402


@pytest.mark.skipif(shutil.which("ctdbd") is None, reason="Debian's ctdbd is not installed")
def test_stock_ctdb_tool_output_matches_real_ctdbd(capsys):
    report = compare()
    out = capsys.readouterr().out
    different = [label for label, same in report if not same]
    assert len(report) >= 40, out[-4000:]
    assert not different, "\n".join(different) + "\n\n" + out[-8000:]
