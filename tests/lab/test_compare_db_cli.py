"""Differential test of the database commands: Debian's stock `ctdb` tool gives the same output
against pyctdbd as against real ctdbd 4.17 for the same 3-node cluster and the same commands
(attach, detach, getdbmap, getdbstatus, setdbreadonly/sticky, pstore/pfetch/pdelete/ptrans,
catdb/cattdb, readkey/writekey/deletekey, getdbseqnum, statistics/dbstatistics shape and the
counters the traffic moves, backupdb/dumpdbbackup/restoredb/wipedb).

Only the checks listed in compare_db_cli.KNOWN_DIFFERENT may differ (each with its diagnosis);
they are reported as warnings, and so is a listed check that has become SAME (then drop it from
the list)."""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from compare_db_cli import KNOWN_DIFFERENT, compare, unexpected  # noqa: E402


@pytest.mark.skipif(shutil.which("ctdbd") is None, reason="Debian's ctdbd is not installed")
def test_stock_ctdb_database_commands_match_real_ctdbd(capsys):
    report = compare()
    out = capsys.readouterr().out
    assert len(report) >= 120, out[-4000:]
    bad = unexpected(report)
    assert not bad, "\n".join(bad) + "\n\n" + out[-8000:]
    outcome = dict(report)
    for label, why in KNOWN_DIFFERENT.items():
        if label not in outcome:
            warnings.warn(f"KNOWN_DIFFERENT names a check that did not run: {label}")
        elif outcome[label]:
            warnings.warn(f"now SAME, drop it from KNOWN_DIFFERENT: {label}")
        else:
            warnings.warn(f"known DIFFERENT: {label}: {why}")
