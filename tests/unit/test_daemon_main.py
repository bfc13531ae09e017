"""The pyctdbd command: configuration errors, daemonising, pid file, log format, signals."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def write_config(d, address, *, conf_extra="", tunables="", nodes=None):
    (d / "run").mkdir(parents=True, exist_ok=True)
    (d / "nodes").write_text(nodes if nodes is not None else f"{address}\n")
    (d / "ctdb.tunables").write_text(tunables)
    (d / "ctdb.conf").write_text(
        f"[logging]\n  location = file:{d / 'log'}\n[cluster]\n  node address = {address}\n"
        f"[legacy]\n  realtime scheduling = false\n{conf_extra}")


def pyctdbd(d, *extra, port=None):
    port = port or random.randint(20000, 60000)
    return [sys.executable, "-m", "ctdblab.daemon.main", "--config-dir", str(d),
            "--socket", str(d / "run" / "ctdbd.socket"), "--port", str(port), "--fake-ip-effects",
            *extra]


def test_broken_files_are_named_with_their_line(tmp_path):
    addr = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.1"
    write_config(tmp_path, addr, conf_extra="[cluster]\n  leader timeout = soon\n")
    r = subprocess.run(pyctdbd(tmp_path, "-i"), capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "configuration error" in r.stderr and f"{tmp_path / 'ctdb.conf'}" in r.stderr
    assert "ctdb.conf:8:" in r.stderr and "leader timeout" in r.stderr, r.stderr
    write_config(tmp_path, addr, tunables="KeepaliveInterval=5\nBogusTunable=1\n")
    r = subprocess.run(pyctdbd(tmp_path, "-i"), capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "ctdb.tunables" in r.stderr and "BogusTunable" in r.stderr
    write_config(tmp_path, addr, nodes=f"{addr}\nnot-an-address\n")
    r = subprocess.run(pyctdbd(tmp_path, "-i"), capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "nodes" in r.stderr and "not-an-address" in r.stderr


def test_daemonises_writes_pid_file_and_stops_cleanly(tmp_path):
    addr = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.1"
    write_config(tmp_path, addr)
    started = time.monotonic()
    r = subprocess.run(pyctdbd(tmp_path), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - started < 10
    pidfile = tmp_path / "run" / "ctdbd.pid"
    pid = int(pidfile.read_text())
    try:
        assert os.path.exists(tmp_path / "run" / "ctdbd.socket")
        # A second daemon on the same pid file refuses to start, and says why.
        r2 = subprocess.run(pyctdbd(tmp_path), capture_output=True, text=True, timeout=30)
        assert r2.returncode == 1 and "pid file" in r2.stderr
        log = (tmp_path / "log").read_text()
        # ctdbd 4.17's file log: RFC 3339 stamp, host, program[pid].
        assert re.search(rf"^\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{6}}[+-]\d\d:\d\d \S+ "
                         rf"pyctdbd\[{pid}\]: ", log, re.M)
        # Recognised as ctdbd is (reference/ctdbd-gaps-spec.md §5, measured on ctdbd 4.17): the
        # pid file holds "<pid>\n", `ctdb getpid` answers that pid, and the process is named
        # ctdbd for pgrep -x / ps -C / killall; its command line still names pyctdbd.
        assert pidfile.read_text() == f"{pid}\n"
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "ctdbd"
        cmdline = Path(f"/proc/{pid}/cmdline").read_text()
        assert "pyctdbd" in cmdline or "ctdblab.daemon.main" in cmdline
        assert str(pid) in subprocess.run(["pgrep", "-x", "ctdbd"], capture_output=True, text=True).stdout.split()
        getpid = subprocess.run(["ctdb", "getpid"], capture_output=True, text=True, timeout=30,
                                env=dict(os.environ, CTDB_SOCKET=str(tmp_path / "run" / "ctdbd.socket")))
        assert getpid.stdout.strip() == str(pid), getpid
    finally:
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not pidfile.exists():
            break
        time.sleep(0.05)
    assert not pidfile.exists() and not os.path.exists(tmp_path / "run" / "ctdbd.socket")
    assert "Shutdown complete" in (tmp_path / "log").read_text()


def test_address_not_in_nodes_is_an_error(tmp_path):
    write_config(tmp_path, "127.0.0.1", nodes="198.18.255.254\n")
    (tmp_path / "ctdb.conf").write_text("[legacy]\n  realtime scheduling = false\n")
    r = subprocess.run(pyctdbd(tmp_path, "-i"), capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "none of this host's addresses is in the nodes list" in r.stderr


def test_the_recovery_pause_is_read_from_the_environment_and_checked():
    from ctdblab.daemon.main import recovery_pause_from_env

    assert recovery_pause_from_env({}) == 0.0
    assert recovery_pause_from_env({"PYCTDBD_RECOVERY_PAUSE_S": " "}) == 0.0
    assert recovery_pause_from_env({"PYCTDBD_RECOVERY_PAUSE_S": "1.5"}) == 1.5
    for bad in ("soon", "-1", "31", "nan"):
        with pytest.raises(RuntimeError, match="PYCTDBD_RECOVERY_PAUSE_S"):
            recovery_pause_from_env({"PYCTDBD_RECOVERY_PAUSE_S": bad})
