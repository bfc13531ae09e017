"""The event scripts we ship, run through EventRunner without root: 50.samba against a fake
smbd (a detached process named smbd that listens on a free high port), 10.interface's monitor
and argument checks. Address changes and a real smbd are in tests/lab/test_events_netns.py."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ctdblab.daemon.events import SHIPPED_SCRIPTS_DIR, EventRunner, ScriptStatus

FAKE_SMBD = '''#!/usr/bin/python3
# A stand-in for `smbd -D`: returns at once, leaves a daemon (new session, comm "smbd") that
# writes the pid file and listens on FAKE_SMBD_PORT; it exits by itself after 60 s.
import os, signal, socket, sys, time
env = os.environ
with open(env["FAKE_SMBD_ARGV"], "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
if env.get("FAKE_SMBD_FDS"):
    fds = " ".join(sorted(os.listdir("/proc/self/fd"), key=int))
    with open(env["FAKE_SMBD_FDS"], "w") as f:
        f.write(fds)
if env.get("FAKE_SMBD_FAIL"):
    sys.exit(3)
if os.fork():
    sys.exit(0)
os.setsid()
if env.get("FAKE_SMBD_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if env.get("FAKE_SMBD_WORKER"):
    worker = os.fork()
    if worker == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)
        os._exit(0)
    with open(env["FAKE_SMBD_WORKER"], "w") as f:
        f.write(f"{worker}\\n")
if not env.get("FAKE_SMBD_NOLISTEN"):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(env["FAKE_SMBD_PORT"])))
    s.listen()
with open(env["FAKE_SMBD_PIDFILE"], "w") as f:
    f.write(f"{os.getpid()}\\n")
time.sleep(60)
'''


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_dead(pid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.02)
    return not alive(pid)


class SambaRig:
    """A CTDB_BASE with the shipped 50.samba script, options and a fake smbd."""

    def __init__(self, tmp: Path) -> None:
        self.base = tmp / "etc-ctdb"
        self.legacy = self.base / "events" / "legacy"
        self.legacy.mkdir(parents=True)
        shutil.copy(SHIPPED_SCRIPTS_DIR / "50.samba.script", self.legacy)
        self.bin = tmp / "bin"
        self.bin.mkdir()
        smbd = self.bin / "smbd"
        smbd.write_text(FAKE_SMBD)
        smbd.chmod(0o755)
        self.pidfile = tmp / "run-samba" / "smbd.pid"
        self.pidfile.parent.mkdir()
        self.argv_log = tmp / "smbd.argv"
        self.worker_file = tmp / "worker.pid"
        self.port = free_port()
        self.conf = tmp / "smb.conf"
        (self.base / "script.options").write_text(
            f"CTDB_SAMBA_SMBD={smbd}\nCTDB_SAMBA_PIDFILE={self.pidfile}\n"
            f"CTDB_SAMBA_CHECK_PORTS={self.port}\nCTDB_SAMBA_CONF={self.conf}\n")
        self.env = {"FAKE_SMBD_ARGV": str(self.argv_log), "FAKE_SMBD_PORT": str(self.port),
                    "FAKE_SMBD_PIDFILE": str(self.pidfile)}

    def options(self, text: str) -> None:
        """Per-script options, next to the script (read after script.options)."""
        (self.legacy / "50.samba.options").write_text(text)

    def runner(self, **env: str) -> EventRunner:
        return EventRunner(self.legacy, env={**self.env, **env}, kill_grace=0.5)

    def event(self, event: str, timeout: float = 25.0, **env: str):
        return run(self.runner(**env).run(event, timeout=timeout)).scripts[0]

    def smbd_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def cleanup(self) -> None:
        for path in (self.pidfile, self.worker_file):
            try:
                os.kill(int(path.read_text()), signal.SIGKILL)
            except (FileNotFoundError, ValueError, ProcessLookupError):
                pass


@pytest.fixture
def samba(tmp_path: Path):
    rig = SambaRig(tmp_path)
    yield rig
    rig.cleanup()


def test_monitor_fails_when_smbd_is_not_running(samba: SambaRig) -> None:
    result = samba.event("monitor")
    assert result.status is ScriptStatus.ERROR
    assert result.output == f"ERROR: smbd is not running (no live smbd in {samba.pidfile})\n"


def test_startup_monitor_dead_smbd_shutdown(samba: SambaRig) -> None:
    started = samba.event("startup")
    assert started.status is ScriptStatus.OK, started.output
    assert samba.argv_log.read_text() == f"-D -s {samba.conf}\n"
    pid = samba.smbd_pid()
    assert pid and alive(pid)
    assert samba.event("monitor").status is ScriptStatus.OK

    again = samba.event("startup")                       # already running: not started twice
    assert again.status is ScriptStatus.OK and again.output == f"smbd already running (pid {pid})\n"
    assert samba.argv_log.read_text().count("-D") == 1

    os.kill(pid, signal.SIGKILL)                         # smbd dies: monitor must fail
    assert wait_dead(pid)
    dead = samba.event("monitor")
    assert dead.status is ScriptStatus.ERROR and dead.output.count("\n") == 1
    assert "smbd is not running" in dead.output

    assert samba.event("startup").status is ScriptStatus.OK   # and startup brings it back
    pid = samba.smbd_pid()
    stopped = samba.event("shutdown")
    assert stopped.status is ScriptStatus.OK
    assert wait_dead(pid)
    assert samba.event("monitor").status is ScriptStatus.ERROR


def test_monitor_fails_when_a_check_port_is_closed(samba: SambaRig) -> None:
    assert samba.event("startup").status is ScriptStatus.OK
    closed = free_port()
    samba.options(f"CTDB_SAMBA_CHECK_PORTS='{samba.port},{closed}'\n")
    result = samba.event("monitor")
    assert result.status is ScriptStatus.ERROR
    assert result.output == f"ERROR: samba not listening on TCP port {closed}\n"


def test_other_events_are_ignored(samba: SambaRig) -> None:
    for event in ("init", "setup", "takeip", "ipreallocated", "recovered"):
        assert samba.event(event).status is ScriptStatus.OK
    assert not samba.argv_log.exists()


def test_startup_reports_a_failing_smbd(samba: SambaRig) -> None:
    result = samba.event("startup", FAKE_SMBD_FAIL="1")
    assert result.status is ScriptStatus.ERROR
    assert "failed to start samba" in result.output and "exited with 3" in result.output


def test_startup_gives_up_when_smbd_never_listens(samba: SambaRig) -> None:
    samba.options("CTDB_SAMBA_START_TIMEOUT=1\n")
    t0 = time.monotonic()
    result = samba.event("startup", FAKE_SMBD_NOLISTEN="1")
    assert time.monotonic() - t0 < 5
    assert result.status is ScriptStatus.ERROR
    assert result.output == (f"ERROR: smbd not listening on TCP port {samba.port} "
                             "1s after start\n")


def test_stale_pid_file_is_not_a_running_smbd(samba: SambaRig) -> None:
    samba.pidfile.write_text(f"{os.getpid()}\n")         # a live process, but not smbd
    assert samba.event("monitor").status is ScriptStatus.ERROR
    samba.pidfile.write_text("garbage\n")
    assert samba.event("monitor").status is ScriptStatus.ERROR


def test_shutdown_kills_a_stubborn_smbd_and_its_session(samba: SambaRig) -> None:
    samba.options("CTDB_SAMBA_STOP_TIMEOUT=1\n")
    env = {"FAKE_SMBD_IGNORE_TERM": "1", "FAKE_SMBD_WORKER": str(samba.worker_file)}
    assert samba.event("startup", **env).status is ScriptStatus.OK
    pid, worker = samba.smbd_pid(), int(samba.worker_file.read_text())
    assert alive(worker)
    result = samba.event("shutdown", **env)
    assert result.status is ScriptStatus.OK
    assert "ignored SIGTERM" in result.output
    assert wait_dead(pid) and wait_dead(worker)


def test_smbd_inherits_no_descriptors_from_the_event_daemon(samba: SambaRig) -> None:
    # ctdb-eventd 4.17 leaks descriptors to scripts; the script must not pass them on to smbd.
    fds = samba.argv_log.parent / "fds"
    read_fd, write_fd = os.pipe()
    try:
        env = {**os.environ, **samba.env, "CTDB_BASE": str(samba.base),
               "FAKE_SMBD_FDS": str(fds)}
        proc = subprocess.run([str(samba.legacy / "50.samba.script"), "startup"], env=env,
                              pass_fds=(read_fd, write_fd), capture_output=True, timeout=30)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert proc.returncode == 0, proc.stdout
    # 0-2 plus the descriptor listdir() itself had open
    assert fds.read_text().split() == ["0", "1", "2", "3"]


def test_shutdown_without_smbd_is_fine(samba: SambaRig) -> None:
    assert samba.event("shutdown").status is ScriptStatus.OK


# -- 10.interface (what needs no root) -------------------------------------------------------
@pytest.fixture
def iface_base(tmp_path: Path) -> Path:
    legacy = tmp_path / "events" / "legacy"
    legacy.mkdir(parents=True)
    shutil.copy(SHIPPED_SCRIPTS_DIR / "10.interface.script", legacy)
    return tmp_path


def iface_event(base: Path, event: str, *args: str):
    return run(EventRunner(base / "events" / "legacy").run(event, args, timeout=10)).scripts[0]


def test_interface_monitor(iface_base: Path) -> None:
    pa = iface_base / "public_addresses"
    pa.write_text("# public IPs\n198.19.8.1/20 lo\n\n198.19.8.2/20   lo,ctdbx0\n")
    down = iface_event(iface_base, "monitor")
    assert down.status is ScriptStatus.ERROR
    assert down.output == "ERROR: Monitored interface ctdbx0 does not exist\n"

    (iface_base / "events" / "legacy" / "10.interface.options").write_text(
        "CTDB_PARTIALLY_ONLINE_INTERFACES=yes\n")
    assert iface_event(iface_base, "monitor").status is ScriptStatus.OK

    pa.write_text("198.19.8.2/20 ctdbx0\n")             # all down: fails even then
    assert iface_event(iface_base, "monitor").status is ScriptStatus.ERROR

    pa.write_text("198.19.8.1/20 lo\n")
    assert iface_event(iface_base, "monitor").status is ScriptStatus.OK
    assert iface_event(iface_base, "startup").status is ScriptStatus.OK
    pa.unlink()                                          # no public addresses: nothing to check
    assert iface_event(iface_base, "monitor").status is ScriptStatus.OK


def test_interface_argument_checks(iface_base: Path) -> None:
    (iface_base / "public_addresses").write_text("198.19.8.1/20 lo\n")
    bad = iface_event(iface_base, "takeip", "lo", "198.19.8.1")
    assert bad.status is ScriptStatus.ERROR
    assert bad.output == "ERROR: takeip needs 3 arguments, got 2: takeip lo 198.19.8.1\n"
    assert iface_event(iface_base, "updateip", "a", "b", "c").status is ScriptStatus.ERROR
    # releasing an address nobody holds is a no-op (idempotent)
    assert iface_event(iface_base, "releaseip", "lo", "198.19.8.1", "20").status \
        is ScriptStatus.OK
    assert iface_event(iface_base, "ipreallocated").status is ScriptStatus.OK


def test_shipped_scripts_are_executable_and_well_named() -> None:
    from ctdblab.daemon.events import list_scripts
    scripts = list_scripts(SHIPPED_SCRIPTS_DIR)
    assert [(s.name, s.enabled) for s in scripts] == [("10.interface", True),
                                                       ("50.samba", True)]
    for s in scripts:
        assert s.path.read_text().startswith("#!/bin/bash\n")
