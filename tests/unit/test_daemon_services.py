"""Small pieces of the daemon's services that need no running daemon."""

from __future__ import annotations

import re

from ctdblab.daemon.server.memory import memory_report
from ctdblab.daemon.server.scripts import debug_script_path


def test_the_memory_report_has_the_shape_of_a_talloc_report():
    report = memory_report()
    lines = report.splitlines()
    # As ctdbd's: a header, then indented "contains N bytes in M blocks" lines, newline at the end.
    assert re.fullmatch(r"full talloc report on 'pyctdbd' \(total +\d+ bytes in +\d+ blocks\)", lines[0])
    assert len(lines) > 10 and report.endswith("\n")
    assert all(re.fullmatch(r" {4,}\S.* contains +\d+ bytes in +\d+ blocks \(ref 0\)", line) for line in lines[1:])
    assert any(line.strip().startswith("dict ") for line in lines)


def test_the_debug_script_is_the_file_of_that_name_in_the_configuration_directory():
    assert debug_script_path(None, "/etc/ctdb") is None
    assert debug_script_path("debug-hung-script.sh", "/etc/ctdb") == "/etc/ctdb/debug-hung-script.sh"
    # CTDB's manual: any directory prefix is ignored.
    assert debug_script_path("/usr/local/bin/dbg.sh", "/etc/ctdb") == "/etc/ctdb/dbg.sh"
