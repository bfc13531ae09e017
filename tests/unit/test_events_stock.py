"""Debian's stock 10.interface runs as pyctdbd's own; a site's own script and other stock
scripts run as they are (daemon/events/stock.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ctdblab.daemon.events import (
    REPLACED_STOCK_SCRIPTS, SHIPPED_SCRIPTS_DIR, EventRunner, ScriptStatus, StockReplacements,
)


def script(path: Path, says: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "{says} $1"\n')
    path.chmod(0o755)
    return path


def layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """/etc/ctdb/events/legacy, Debian's /usr/share/ctdb/events/legacy and pyctdbd's scripts."""
    legacy, stock, own = (tmp_path / "etc" / "events" / "legacy", tmp_path / "stock",
                          tmp_path / "own")
    legacy.mkdir(parents=True)
    for name in ("00.ctdb", "10.interface"):
        script(stock / f"{name}.script", f"stock {name}")
    script(own / "10.interface.script", "own 10.interface")
    script(own / "50.samba.script", "own 50.samba")
    return legacy, stock, own


def outputs(legacy: Path, stock: Path, own: Path) -> dict[str, str]:
    runner = EventRunner(legacy, replacements=StockReplacements(stock, own))
    result = asyncio.run(asyncio.wait_for(runner.run("monitor"), 20))
    return {s.name: s.output.strip() for s in result.scripts if s.status is ScriptStatus.OK}


def test_stock_10_interface_linked_by_debian_runs_as_pyctdbds(tmp_path: Path) -> None:
    legacy, stock, own = layout(tmp_path)
    for name in ("00.ctdb", "10.interface"):
        (legacy / f"{name}.script").symlink_to(stock / f"{name}.script")
    assert outputs(legacy, stock, own) == {"00.ctdb": "stock 00.ctdb monitor",
                                           "10.interface": "own 10.interface monitor"}
    # without replacements (the runner's default) the stock script runs
    result = asyncio.run(EventRunner(legacy).run("monitor"))
    assert [s.output.strip() for s in result.scripts] == ["stock 00.ctdb monitor",
                                                          "stock 10.interface monitor"]


def test_a_sites_own_or_disabled_10_interface_is_left_alone(tmp_path: Path) -> None:
    legacy, stock, own = layout(tmp_path)
    site = script(legacy / "10.interface.script", "site 10.interface")
    assert outputs(legacy, stock, own) == {"10.interface": "site 10.interface monitor"}
    site.chmod(0o644)                                     # disabled: stays disabled
    runner = EventRunner(legacy, replacements=StockReplacements(stock, own))
    result = asyncio.run(runner.run("monitor"))
    assert [(s.name, s.status) for s in result.scripts] == [("10.interface", ScriptStatus.DISABLED)]


def test_only_the_listed_scripts_are_replaced(tmp_path: Path) -> None:
    legacy, stock, own = layout(tmp_path)
    script(stock / "50.samba.script", "stock 50.samba")
    (legacy / "50.samba.script").symlink_to(stock / "50.samba.script")
    assert outputs(legacy, stock, own) == {"50.samba": "stock 50.samba monitor"}
    assert REPLACED_STOCK_SCRIPTS == {"10.interface"}
    for name in REPLACED_STOCK_SCRIPTS:
        assert (SHIPPED_SCRIPTS_DIR / f"{name}.script").is_file()


def test_replaced_10_interface_reads_its_options_from_the_ctdb_base(tmp_path: Path) -> None:
    """Run from pyctdbd's directory, the shipped 10.interface still reads
    $CTDB_BASE/events/legacy/10.interface.options (where Debian's reads its own)."""
    base = tmp_path / "etc"
    legacy, stock = base / "events" / "legacy", tmp_path / "stock"
    legacy.mkdir(parents=True)
    script(stock / "10.interface.script", "stock 10.interface")
    (legacy / "10.interface.script").symlink_to(stock / "10.interface.script")
    (base / "public_addresses").write_text("198.19.8.1/20 lo\n198.19.8.2/20 ctdbx0\n")
    runner = EventRunner(legacy, replacements=StockReplacements(stock, SHIPPED_SCRIPTS_DIR))
    failed = asyncio.run(runner.run("monitor", timeout=10)).scripts[0]
    assert failed.output == "ERROR: Monitored interface ctdbx0 does not exist\n"
    (legacy / "10.interface.options").write_text("CTDB_PARTIALLY_ONLINE_INTERFACES=yes\n")
    assert asyncio.run(runner.run("monitor", timeout=10)).scripts[0].status is ScriptStatus.OK


def test_the_daemon_replaces_scripts_from_its_data_dir(tmp_path: Path) -> None:
    from ctdblab.daemon.config import Tunables
    from ctdblab.daemon.server.scripts import ScriptEvents
    legacy, stock, _ = layout(tmp_path)
    (legacy / "10.interface.script").symlink_to(stock / "10.interface.script")
    events = ScriptEvents(str(legacy), {}, None, Tunables(), stock_dir=str(stock))
    result = asyncio.run(asyncio.wait_for(events.run("monitor"), 20))
    # pyctdbd's 10.interface with no public_addresses: OK and silent (the stock one would echo)
    assert [(s.name, s.status, s.output) for s in result.scripts] == [
        ("10.interface", ScriptStatus.OK, "")]
