"""Event scripts and the eventd server where they need root: each test runs a helper inside a
fresh network + mount namespace (``unshare --net --mount``), so nothing touches the host's
interfaces, /run or Samba directories, and everything dies with the namespace's processes.

* 10.interface: takeip/releaseip/updateip on veth interfaces (198.19.0.0/16 only),
  idempotence, promote_secondaries, monitor on a missing carrier / a downed interface.
* 50.samba: Debian's real smbd started, monitored, killed (monitor must fail) and stopped.
* eventd at its default path /run/ctdb/eventd.socket: the stock ``ctdb scriptstatus`` and
  ``ctdb event run`` without CTDB_TEST_MODE.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REAL_EVENTD = Path("/usr/libexec/ctdb/ctdb-eventd")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network and mount namespaces)"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)"),
]

COMMON = r"""
import asyncio, json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
from ctdblab.daemon.events import EventRunner, SHIPPED_SCRIPTS_DIR

def sh(cmd):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout

def addrs(dev):
    out = sh(f"ip -o -4 addr show dev {dev}")
    return sorted(line.split()[3] for line in out.splitlines())

def base_with(tmp, *scripts):
    legacy = Path(tmp) / "etc" / "events" / "legacy"
    legacy.mkdir(parents=True)
    for name in scripts:
        shutil.copy(SHIPPED_SCRIPTS_DIR / f"{name}.script", legacy)
    return legacy

def event(runner, ev, *args, timeout=30):
    r = asyncio.run(runner.run(ev, list(args), timeout=timeout))
    s = r.scripts[0]
    return [s.status.value, s.output]
"""

INTERFACE_HELPER = COMMON + r"""
tmp = sys.argv[1]
sh("ip link set lo up")
for dev in ("cev0", "cev2"):                             # (no dummy module here: veths)
    sh(f"ip link add name {dev} type veth peer name {dev}p")
    sh(f"ip link set {dev}p up && ip link set {dev} up")
sh("ip link add name cev1 type veth peer name cev1p && ip link set cev1 up")  # peer down
sh("ip addr add 198.19.0.1/20 dev cev0")                  # the node's own address (primary)
sh("ip addr add 198.19.8.3/20 dev cev0")                  # a stale public IP
legacy = base_with(tmp, "10.interface")
base = legacy.parent.parent
(base / "public_addresses").write_text(
    "198.19.8.1/20 cev0\n198.19.8.2/20 cev0,cev2\n198.19.8.3/20 cev0\n")
runner = EventRunner(legacy)
out = {}
out["init"] = event(runner, "init")
out["after_init"] = addrs("cev0")
out["take1"] = event(runner, "takeip", "cev0", "198.19.8.1", "20")
out["take1_again"] = event(runner, "takeip", "cev0", "198.19.8.1", "20")
out["after_take"] = addrs("cev0")
out["release1"] = event(runner, "releaseip", "cev0", "198.19.8.1", "20")
out["release1_again"] = event(runner, "releaseip", "cev0", "198.19.8.1", "20")
out["after_release"] = addrs("cev0")
# promote_secondaries: releasing the first (primary) public IP must keep the second
with open("/proc/sys/net/ipv4/conf/cev2/promote_secondaries", "w") as f:
    f.write("0\n")
event(runner, "takeip", "cev2", "198.19.8.1", "20")
event(runner, "takeip", "cev2", "198.19.8.2", "20")
out["cev2_before"] = addrs("cev2")
out["release_primary"] = event(runner, "releaseip", "cev2", "198.19.8.1", "20")
out["cev2_after"] = addrs("cev2")
# updateip moves an address; releaseip finds it even on another interface than named
out["update"] = event(runner, "updateip", "cev2", "cev0", "198.19.8.2", "20")
out["after_update"] = [addrs("cev0"), addrs("cev2")]
event(runner, "updateip", "cev0", "cev2", "198.19.8.2", "20")
out["release_elsewhere"] = event(runner, "releaseip", "cev0", "198.19.8.2", "20")
out["after_release_elsewhere"] = [addrs("cev0"), addrs("cev2")]
# monitor
(base / "public_addresses").write_text("198.19.8.1/20 cev0\n198.19.8.2/20 cev1\n")
out["mon_nocarrier"] = event(runner, "monitor")
sh("ip link set cev1p up")
out["mon_ok"] = event(runner, "monitor")
sh("ip link set cev0 down")
out["mon_down"] = event(runner, "monitor")
sh("ip link set cev0 up")
event(runner, "takeip", "cev0", "198.19.8.1", "20")
out["shutdown"] = event(runner, "shutdown")
out["after_shutdown"] = addrs("cev0")
print(json.dumps(out))
"""

SAMBA_SETUP = COMMON + r"""
tmp = Path(sys.argv[1])
sh("ip link set lo up")
for sub, target in (("run", "/run/samba"), ("lib", "/var/lib/samba"),
                    ("cache", "/var/cache/samba"), ("log", "/var/log/samba")):
    (tmp / sub).mkdir()
    sh(f"mount --bind {tmp / sub} {target}")
(tmp / "lib" / "private").mkdir(mode=0o700)
(tmp / "share").mkdir()
conf = tmp / "smb.conf"
conf.write_text(f'''[global]
  server role = standalone server
  disable netbios = yes
  smb ports = 445
  log file = /var/log/samba/log.smbd
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  passdb backend = tdbsam
[share]
  path = {tmp / "share"}
  guest ok = yes
''')

def session(pid):
    out = sh("ps -eo pid=,sid=,stat=")
    return [int(p) for p, s, st in (l.split() for l in out.splitlines())
            if int(s) == pid and not st.startswith("Z")]

def kill_session(pid):
    for member in session(pid):
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass
"""

SAMBA_HELPER = SAMBA_SETUP + r"""
legacy = base_with(tmp, "50.samba")
(legacy.parent.parent / "script.options").write_text(f"CTDB_SAMBA_CONF={conf}\n")
runner = EventRunner(legacy)

out = {}
main = None
try:
    out["monitor_before"] = event(runner, "monitor")
    t0 = time.monotonic()
    out["startup"] = event(runner, "startup")
    out["startup_seconds"] = time.monotonic() - t0
    main = int(Path("/run/samba/smbd.pid").read_text())
    out["comm"] = Path(f"/proc/{main}/comm").read_text().strip()
    out["listening"] = sh("ss -ltnH 'sport = :445'").strip() != ""
    out["monitor_ok"] = event(runner, "monitor")
    os.kill(main, signal.SIGKILL)
    time.sleep(0.3)
    out["monitor_dead"] = event(runner, "monitor")
    out["startup_again"] = event(runner, "startup")
    main = int(Path("/run/samba/smbd.pid").read_text())
    out["members_before_shutdown"] = len(session(main))
    out["shutdown"] = event(runner, "shutdown")
    time.sleep(0.2)
    out["members_after_shutdown"] = session(main)
    out["monitor_after_shutdown"] = event(runner, "monitor")
finally:
    if main is not None:                       # never leave smbd behind
        kill_session(main)
print(json.dumps(out))
"""

REAL_EVENTD_HELPER = SAMBA_SETUP + r"""
# Debian's own ctdb-eventd (what the real ctdbd runs scripts with) in test mode, so its paths
# are under tmp; the script must behave there exactly as under pyctdbd.
legacy = base_with(tmp, "50.samba")
base = legacy.parent.parent
(base / "script.options").write_text(f"CTDB_SAMBA_CONF={conf}\n")
(base / "run").mkdir()
env = dict(os.environ, CTDB_TEST_MODE="1", CTDB_BASE=str(base), CTDB_INTERACTIVE="1")
eventd = subprocess.Popen(["/usr/libexec/ctdb/ctdb-eventd"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
sock = base / "run" / "eventd.socket"

def tool(*argv):
    p = subprocess.run(["/usr/libexec/ctdb/ctdb-event", *argv], env=env, capture_output=True,
                       text=True, timeout=60)
    return [p.returncode, p.stdout]

out = {}
main = None
try:
    for _ in range(100):
        if sock.exists():
            break
        time.sleep(0.05)
    out["startup"] = tool("run", "30", "legacy", "startup")
    main = int(Path("/run/samba/smbd.pid").read_text())
    out["monitor_ok"] = tool("run", "30", "legacy", "monitor")
    os.kill(main, signal.SIGKILL)
    time.sleep(0.3)
    out["monitor_dead"] = tool("run", "30", "legacy", "monitor")
    out["status_dead"] = tool("status", "legacy", "monitor")
    out["startup_again"] = tool("run", "30", "legacy", "startup")
    main = int(Path("/run/samba/smbd.pid").read_text())
    out["shutdown"] = tool("run", "30", "legacy", "shutdown")
    time.sleep(0.2)
    out["members_after_shutdown"] = session(main)
finally:
    eventd.terminate()
    try:
        eventd.wait(10)
    except subprocess.TimeoutExpired:
        eventd.kill()
    if main is not None:
        kill_session(main)
print(json.dumps(out))
"""

EVENTD_HELPER = COMMON + r"""
from ctdblab.daemon.events import EventDaemonServer, eventd_socket_path
tmp = Path(sys.argv[1])
(tmp / "run-ctdb").mkdir()
sh(f"mount --bind {tmp / 'run-ctdb'} /run/ctdb")
legacy = Path(tmp) / "etc" / "events" / "legacy"
legacy.mkdir(parents=True)
(legacy / "10.hello.script").write_text(
    '#!/bin/sh\necho "hello $1"\n[ "$1" = monitor ] && exit 4\nexit 0\n')
(legacy / "10.hello.script").chmod(0o755)
env = {k: v for k, v in os.environ.items() if k not in ("CTDB_TEST_MODE", "CTDB_BASE")}

async def main():
    runner = EventRunner(legacy)
    server = EventDaemonServer({"legacy": runner}, eventd_socket_path())
    await server.start()
    async def tool(*argv):
        p = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.STDOUT, env=env)
        o, _ = await asyncio.wait_for(p.communicate(), 15)
        return [p.returncode, o.decode()]
    try:
        return {"socket": str(eventd_socket_path()),
                "run": await tool("ctdb", "event", "run", "10", "legacy", "monitor"),
                "scriptstatus": await tool("ctdb", "scriptstatus"),
                "startup": await tool("ctdb", "event", "run", "10", "legacy", "startup"),
                "status": await tool("ctdb", "event", "status", "legacy", "startup")}
    finally:
        await server.close()
        await runner.close()
print(json.dumps(asyncio.run(main())))
"""


def in_namespaces(helper: str, tmp_path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        ["unshare", "--net", "--mount", "--propagation", "private", "--",
         sys.executable, "-c", helper, str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_interface_script(tmp_path: Path) -> None:
    out = in_namespaces(INTERFACE_HELPER, tmp_path)
    assert out["init"] == ["OK", "Removing public address 198.19.8.3/20 from device cev0\n"]
    assert out["after_init"] == ["198.19.0.1/20"]
    assert out["take1"] == ["OK", ""] and out["take1_again"] == ["OK", ""]
    assert out["after_take"] == ["198.19.0.1/20", "198.19.8.1/20"]
    assert out["release1"] == ["OK", ""] and out["release1_again"] == ["OK", ""]
    assert out["after_release"] == ["198.19.0.1/20"]
    assert out["cev2_before"] == ["198.19.8.1/20", "198.19.8.2/20"]
    assert out["release_primary"][0] == "OK"
    assert out["cev2_after"] == ["198.19.8.2/20"], "a secondary went with the primary"
    assert out["update"][0] == "OK"
    assert out["after_update"] == [["198.19.0.1/20", "198.19.8.2/20"], []]
    assert out["release_elsewhere"][0] == "OK"
    assert out["after_release_elsewhere"] == [["198.19.0.1/20"], []]
    assert out["mon_nocarrier"] == ["ERROR",
                                    "ERROR: No link on the public network interface cev1\n"]
    assert out["mon_ok"] == ["OK", ""]
    assert out["mon_down"] == ["ERROR", "ERROR: public network interface cev0 is down\n"]
    assert out["shutdown"][0] == "OK" and out["after_shutdown"] == ["198.19.0.1/20"]


@pytest.mark.skipif(shutil.which("smbd") is None, reason="needs Debian's samba package")
def test_samba_script_with_real_smbd(tmp_path: Path) -> None:
    out = in_namespaces(SAMBA_HELPER, tmp_path)
    assert out["monitor_before"][0] == "ERROR"
    assert out["startup"] == ["OK", ""], out
    assert out["startup_seconds"] < 20
    assert out["comm"] == "smbd" and out["listening"]
    assert out["monitor_ok"] == ["OK", ""]
    assert out["monitor_dead"] == [
        "ERROR", "ERROR: smbd is not running (no live smbd in /run/samba/smbd.pid)\n"]
    assert out["startup_again"] == ["OK", ""]
    assert out["members_before_shutdown"] >= 1
    assert out["shutdown"][0] == "OK"
    assert out["members_after_shutdown"] == []
    assert out["monitor_after_shutdown"][0] == "ERROR"


@pytest.mark.skipif(shutil.which("smbd") is None or not REAL_EVENTD.exists(),
                    reason="needs Debian's samba and ctdb packages")
def test_samba_script_under_the_real_ctdb_eventd(tmp_path: Path) -> None:
    out = in_namespaces(REAL_EVENTD_HELPER, tmp_path)
    assert out["startup"] == [0, ""], out
    assert out["monitor_ok"] == [0, ""]
    assert out["monitor_dead"] == [8, "Event monitor in legacy failed\n"]
    rc, text = out["status_dead"]
    assert rc == 1 and text.startswith("50.samba             ERROR")
    assert "  OUTPUT: ERROR: smbd is not running (no live smbd in /run/samba/smbd.pid)" in text
    assert out["startup_again"] == [0, ""]
    assert out["shutdown"] == [0, ""]
    assert out["members_after_shutdown"] == []


@pytest.mark.skipif(shutil.which("ctdb") is None, reason="needs Debian's ctdb package")
def test_stock_ctdb_tools_find_our_eventd_at_the_default_path(tmp_path: Path) -> None:
    out = in_namespaces(EVENTD_HELPER, tmp_path)
    assert out["socket"] == "/run/ctdb/eventd.socket"
    assert out["run"] == [8, "Event monitor in legacy failed\n"]
    rc, text = out["scriptstatus"]
    assert rc == 0 and text.startswith("10.hello             ERROR")
    assert "  OUTPUT: hello monitor" in text
    assert out["startup"] == [0, ""]
    rc, text = out["status"]
    assert rc == 0 and text.startswith("10.hello             OK")
