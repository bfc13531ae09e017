"""Clustered Samba on a 3-node lab cluster, for each daemon: real ctdbd (the reference) and
pyctdbd with clustered smbd.

What is checked (each through a different node than the one that made the change, so only the
cluster daemon can have carried it):

- the 16 databases a clustered smbd uses are attached on every node (``ctdb getdbmap``);
- ``smbpasswd -a`` on one node lets the new user log in through every public IP (passdb.tdb is a
  persistent CTDB database) — and a wrong password is refused everywhere;
- ``net conf setparm`` on node 0 shows in ``net conf list`` on node 2 (registry.tdb);
- ``smbstatus`` on nodes 1 and 2 lists the session, open file and byte-range lock held through
  node 0 (cluster-wide traverses of smbXsrv_session_global, locking and brlock);
- coherence across nodes: an exclusive open (share access none) through node 0 makes an open
  through node 2 fail with STATUS_SHARING_VIOLATION; a byte-range lock through node 0 refuses a
  conflicting one through node 2 on ``[nolock]`` (``posix locking = no``: no kernel lock exists,
  which the test checks in /proc/locks, so the conflict comes from brlock.tdb); a batch oplock
  and an RWH lease held through node 0 are broken by a write-open through node 2, whose open
  waits for the break.

The SMB clients run inside the lab client (tests/lab/clustered_smb_client.py, smbprotocol).
One cluster per daemon serves all checks of this module (module-scoped fixture; with
pytest-xdist a worker that gets checks of a daemon builds its own); ``with LabCluster`` tears it
down also when a check or the start fails.
"""

from __future__ import annotations

import json
import pwd
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ctdblab.cluster.lab import LabCluster
from ctdblab.cluster.samba import SHARE, SHARE_NO_POSIX_LOCKING, SMB_USER

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

CLIENT = Path(__file__).with_name("clustered_smb_client.py")

DAEMONS = [
    pytest.param(("ctdb", None), id="ctdb"),
    pytest.param(("pyctdbd", True), id="pyctdbd-clustered"),
]

# clustered-db.md §1: the databases of a running clustered Samba node (name -> persistent).
CLUSTERED_SAMBA_DBS = {
    "smbXsrv_open_global.tdb": False, "smbXsrv_tcon_global.tdb": False,
    "smbXsrv_session_global.tdb": False, "smbXsrv_client_global.tdb": False,
    "smbXsrv_version_global.tdb": False, "leases.tdb": False, "locking.tdb": False,
    "brlock.tdb": False, "g_lock.tdb": False,
    "secrets.tdb": True, "passdb.tdb": True, "account_policy.tdb": True,
    "group_mapping.tdb": True, "share_info.tdb": True, "registry.tdb": True, "ctdb.tdb": True,
}

# An account every Debian system has; the nodes share the host's /etc/passwd.  The lab's own
# SMB user (root) is added on every node by setup_samba; this one is added on ONE node only.
NEW_USER = "backup"
NEW_PASSWORD = "Backup-Pass-7"

A, B = 0, 2           # "through node A" / "through node B": the PNNs whose public IPs are used


@pytest.fixture(scope="module", params=DAEMONS)
def cluster(request, tmp_path_factory):
    daemon, clustered_smbd = request.param
    workdir = tmp_path_factory.mktemp(f"clustered-samba-{daemon}")
    with LabCluster(3, daemon=daemon, tunables="aggressive", clients=1, workdir=workdir,
                    clustered_smbd=clustered_smbd) as lab:
        assert lab.launcher.smb_clustered, "smbd must run clustered for these checks"
        yield lab


# -- helpers ------------------------------------------------------------------------------------
def ip_of(cluster: LabCluster, pnn: int) -> str:
    """A public IP node ``pnn`` hosts (waiting until every node hosts one)."""
    return cluster.ip_per_node()[pnn]


def client_check(cluster: LabCluster, *args: str, timeout: float = 120) -> dict:
    """Run clustered_smb_client.py inside the lab client; its result object."""
    result = cluster.client(0).run([sys.executable, "-u", str(CLIENT), *args], timeout=timeout)
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert lines and "result" in lines[-1], (
        f"client {args[0]} gave no result (exit {result.returncode}): "
        f"{result.stdout.strip()} {result.stderr.strip()[-2000:]}")
    assert isinstance(lines[-1]["result"], dict), f"client {args[0]}: {lines[-1]}"
    return lines[-1]["result"]


def node_run(cluster: LabCluster, pnn: int, argv: list[str], *, input: str | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
    return cluster.node(pnn).run(argv, input=input, timeout=timeout)


def share_file(cluster: LabCluster, name: str, size: int = 4096) -> Path:
    """A file in the shared directory both shares export, made on the host."""
    path = cluster.shared_dir / "share" / name
    path.write_bytes(b"c" * size)
    path.chmod(0o644)
    return path


# -- databases ------------------------------------------------------------------------------------
def dbmap(cluster: LabCluster, pnn: int) -> dict[str, bool]:
    """name -> persistent, from ``ctdb -X getdbmap`` on node ``pnn``."""
    result = node_run(cluster, pnn, ["ctdb", "-X", "getdbmap"], timeout=15)
    assert result.returncode == 0, f"ctdb getdbmap on node {pnn}: {result.stderr.strip()}"
    found = {}
    for line in result.stdout.splitlines()[1:]:
        fields = line.strip("|").split("|")
        if len(fields) >= 4:
            found[fields[1]] = fields[3] == "1"
    return found


def test_clustered_samba_databases_attached_on_every_node(cluster):
    def complete() -> bool:
        return all(set(CLUSTERED_SAMBA_DBS) <= set(dbmap(cluster, n.index)) for n in cluster.nodes)

    try:
        cluster.wait_until(complete, 30, "the 16 databases attached on every node", interval=1)
    except Exception:
        pass                      # the assertions below say what is missing where
    for node in cluster.nodes:
        attached = dbmap(cluster, node.index)
        missing = sorted(set(CLUSTERED_SAMBA_DBS) - set(attached))
        assert not missing, f"node {node.index} lacks {missing}; it has {sorted(attached)}"
        wrong = {name: attached[name] for name, persistent in CLUSTERED_SAMBA_DBS.items()
                 if attached[name] != persistent}
        assert not wrong, f"node {node.index}: persistent flag wrong for {wrong}"


# -- passdb ---------------------------------------------------------------------------------------
def test_smbpasswd_on_one_node_logs_in_through_every_public_ip(cluster):
    pwd.getpwnam(NEW_USER)        # KeyError here: the host lacks the account the test relies on
    ips = sorted(cluster.public_ips())
    login = ["--user", NEW_USER]
    # Before: the user is unknown everywhere.  (An unknown user maps to guest, which the client
    # refuses because it requires signing, so this is a failed login, not a guest session.)
    for ip in ips:
        before = client_check(cluster, "login", ip, *login, "--password", NEW_PASSWORD)
        assert not before["ok"], f"{NEW_USER} logged in through {ip} before being added: {before}"

    added = node_run(cluster, 1, ["smbpasswd", "-s", "-a", NEW_USER],
                     input=f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n")
    assert added.returncode == 0, f"smbpasswd -a on node 1: {added.stderr or added.stdout}"
    try:
        for ip in ips:
            good = client_check(cluster, "login", ip, *login, "--password", NEW_PASSWORD)
            assert good == {"ok": True, "guest": False}, (
                f"{NEW_USER} (added on node 1 only) through {ip} (node "
                f"{cluster.ip_all()[ip]}): {good}")
            bad = client_check(cluster, "login", ip, *login, "--password", "wrong-Pass-0")
            assert bad == {"ok": False, "error": "STATUS_LOGON_FAILURE"}, (
                f"a wrong password for {NEW_USER} through {ip}: {bad}")
        for node in cluster.nodes:
            listed = node_run(cluster, node.index, ["pdbedit", "-L"])
            users = {line.split(":", 1)[0] for line in listed.stdout.splitlines()}
            assert {NEW_USER, SMB_USER} <= users, f"pdbedit -L on node {node.index}: {listed.stdout}"
    finally:
        node_run(cluster, 1, ["smbpasswd", "-x", NEW_USER])


# -- registry configuration ------------------------------------------------------------------------
def test_net_conf_setparm_on_node0_shows_on_node2(cluster):
    section = "ctdblabprobe"
    value = f"set on node 0 {uuid.uuid4().hex[:8]}"
    before = node_run(cluster, 2, ["net", "conf", "list"])
    assert before.returncode == 0, f"net conf list on node 2: {before.stderr}"
    assert value not in before.stdout

    setparm = node_run(cluster, 0, ["net", "conf", "setparm", section, "comment", value])
    assert setparm.returncode == 0, f"net conf setparm on node 0: {setparm.stderr or setparm.stdout}"
    try:
        listed = node_run(cluster, 2, ["net", "conf", "list"])
        assert listed.returncode == 0, f"net conf list on node 2: {listed.stderr}"
        assert f"[{section}]" in listed.stdout and f"comment = {value}" in listed.stdout, listed.stdout
        got = node_run(cluster, 1, ["net", "conf", "getparm", section, "comment"])
        assert got.stdout.strip() == value, f"net conf getparm on node 1: {got.stdout} {got.stderr}"
        # The registry section is configuration data only: smb.conf has no `include = registry`,
        # so the served shares stay the lab's own.
        served = node_run(cluster, 2, ["testparm", "-s", "--suppress-prompt"])
        assert f"[{section}]" not in served.stdout and f"[{SHARE}]" in served.stdout
    finally:
        dropped = node_run(cluster, 1, ["net", "conf", "delshare", section])
    assert dropped.returncode == 0, f"net conf delshare on node 1: {dropped.stderr}"
    after = node_run(cluster, 2, ["net", "conf", "list"])
    assert f"[{section}]" not in after.stdout, f"deleted on node 1, still on node 2: {after.stdout}"


# -- smbstatus ---------------------------------------------------------------------------------------
def test_smbstatus_on_other_nodes_lists_sessions_and_locks_held_through_node0(cluster):
    name = "smbstatus-held.dat"
    share_file(cluster, name)
    ip = ip_of(cluster, 0)
    hold = cluster.client(0).popen(
        [sys.executable, "-u", str(CLIENT), "hold", ip, "--file", name, "--lock"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        opened = json.loads(hold.stdout.readline() or "{}")
        assert opened.get("event") == "opened", f"hold through {ip}: {opened} {hold.stderr.read()}"
        client_port = opened["local"][1]
        for pnn in (1, 2):
            result = node_run(cluster, pnn, ["smbstatus", "-j", "-B"])
            assert result.returncode == 0, f"smbstatus on node {pnn}: {result.stderr}"
            status = json.loads(result.stdout)
            sessions = [s for s in status.get("sessions", {}).values()
                        if s["hostname"].endswith(f":{client_port}")]
            assert sessions, f"node {pnn} does not list the session of port {client_port}: {status}"
            assert {s["server_id"]["vnn"] for s in sessions} == {"0"}, sessions
            opens = [o for f in status.get("open_files", {}).values() if f["filename"] == name
                     for o in f["opens"].values()]
            assert opens and all(o["server_id"]["vnn"] == "0" for o in opens), (
                f"node {pnn}: open of {name} through node 0 missing: {status.get('open_files')}")
            locks = [lk for f in status.get("byte_range_locks", {}).values()
                     if f["file_name"] == name for lk in f["locks"]]
            assert locks and all(lk["server_id"]["vnn"] == "0" for lk in locks), (
                f"node {pnn}: byte-range lock on {name} missing: {status.get('byte_range_locks')}")
    finally:
        try:
            hold.stdin.close()
            hold.wait(15)
        except Exception:
            hold.kill()


# -- coherence across nodes ------------------------------------------------------------------------
def test_exclusive_open_through_one_node_is_a_sharing_violation_through_another(cluster):
    name = "sharing.dat"
    share_file(cluster, name)
    out = client_check(cluster, "sharing", ip_of(cluster, A), ip_of(cluster, B), "--file", name)
    assert out == {"b_open_while_a_exclusive": "STATUS_SHARING_VIOLATION",
                   "b_open_after_a_closed": "OK"}, out


def test_byte_range_lock_through_one_node_blocks_a_conflicting_one_through_another(cluster):
    name = "brlock.dat"
    inode = share_file(cluster, name).stat().st_ino
    common = [ip_of(cluster, A), ip_of(cluster, B), "--file", name, "--inode", str(inode)]
    # [nolock] has `posix locking = no`: smbd takes no kernel lock, so only brlock.tdb can refuse.
    out = client_check(cluster, "brlock", *common, "--share", SHARE_NO_POSIX_LOCKING)
    assert out["kernel_locks_while_a_holds"] == [], out
    assert {k: v for k, v in out.items() if k != "kernel_locks_while_a_holds"} == {
        "a_lock": "OK", "b_conflicting_lock": "STATUS_LOCK_NOT_GRANTED", "b_other_range": "OK",
        "a_unlock": "OK", "b_lock_after_unlock": "OK"}, out
    # Control: on [share] (posix locking on) the same lock is also a kernel lock, so the
    # /proc/locks probe above would have seen one.
    control = client_check(cluster, "brlock", *common, "--share", SHARE)
    assert control["b_conflicting_lock"] == "STATUS_LOCK_NOT_GRANTED", control
    assert control["kernel_locks_while_a_holds"], control


@pytest.mark.parametrize("kind,granted", [("oplock", 0x09), ("lease", 0xFF)])
def test_caching_through_one_node_is_broken_by_a_write_open_through_another(cluster, kind, granted):
    name = f"break-{kind}.dat"
    share_file(cluster, name)
    out = client_check(cluster, kind, ip_of(cluster, A), ip_of(cluster, B), "--file", name)
    assert out["a_granted_oplock_level"] == granted, out       # batch oplock / lease
    assert out["break"] is not None, f"no {kind} break reached the holder through node {A}: {out}"
    assert out["break"]["kind"] == kind, out
    if kind == "lease":
        assert out["break"]["current_state"] & 0x2, out         # it held write caching
    assert not out["b_done_before_break"], f"the open through node {B} did not wait: {out}"
    assert out["b_write_open"] == "OK", out
    # Well below smbd's 35 s break timeout: the holder's answer (its close) released the open.
    assert out["b_write_open_s"] < 10, out
