"""The remote-hosts backend's commands, asserted as argv lists and scripts — no SSH, no host.

A fault on a remote host must mean what it means in Mininet; here: which command each fault and
each step sends, and how the answers are read.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from ctdblab.chaos import ClearLoss, Crash, Freeze, Heal, KillSmbd, Loss, Partition, Thaw
from ctdblab.cluster import remote_commands as rc
from ctdblab.cluster.inventory import PowerPolicy, SshSettings, parse_inventory
from ctdblab.cluster.launchers import get_launcher
from ctdblab.cluster.profiles import get_profile
from ctdblab.cluster.remote_backend import RemotePlan
from ctdblab.cluster.remote_host import FIND_PROGRAMS, RemoteHost, RemotePopen
from ctdblab.cluster.ssh import SshConnection, remote_command_text
from ctdblab.errors import UserError

INVENTORY = {
    "cluster": {"shared_dir": "/cfs"},
    "ssh": {"identity_file": "/keys/lab", "known_hosts_file": "/keys/known", "connect_timeout": 4},
    "power": {"on": "wait"},
    "host": [{"name": f"b{i}", "ssh": f"root@b{i}", "private_address": f"198.18.0.{i}",
              "public_interface": "eth1", "public_address": f"198.19.0.{i}/20",
              "public_ips": ["198.19.8.1", "198.19.8.2"]} for i in (1, 2, 3)],
    "client": [{"name": "c1", "ssh": "root@c1", "address": "198.19.4.1"}],
}


@pytest.fixture
def inventory():
    return parse_inventory(json.loads(json.dumps(INVENTORY)), Path("inv.toml"))


class RecordingSsh(SshConnection):
    """Records every command instead of running it; answers from ``answers`` (first match)."""

    def __init__(self, name: str, settings: SshSettings, answers: dict[str, str] | None = None):
        super().__init__(name, f"root@{name}", settings, Path("/tmp/ctl"))
        self.sent: list[tuple[object, str | None]] = []
        self.answers = answers or {}

    def run(self, command, *, timeout=None, input=None, check=False, text=True):
        self.sent.append((command, input))
        flat = command if isinstance(command, str) else " ".join(command)
        out = next((v for k, v in self.answers.items() if k in flat), "")
        return subprocess.CompletedProcess(command, 0, out, "")


def remote_cluster(inventory, answers=None):
    """What the faults see of a LabCluster on remote hosts: nodes, plan, backend.iface."""
    nodes = [RemoteHost(name=h.name, index=i, role="node",
                        ssh=RecordingSsh(h.name, inventory.ssh, answers), ips={})
             for i, h in enumerate(inventory.hosts)]
    backend = SimpleNamespace(iface=lambda node, network: {"private": "eth0", "public": "eth1"}[network])
    return SimpleNamespace(nodes=nodes, node=lambda p: nodes[p], plan=RemotePlan(inventory),
                           backend=backend, launcher=SimpleNamespace(name="pyctdbd"))


# -- ssh -----------------------------------------------------------------------------------------------
def test_ssh_argv_never_prompts_and_shares_a_master(inventory):
    conn = SshConnection("b1", "root@b1", inventory.ssh, Path("/tmp/ctl"))
    argv = conn.argv(["ctdb", "-X", "status"], timeout=10)
    assert argv[0] == "ssh"
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert {"BatchMode=yes", "ConnectTimeout=4", "ControlMaster=no", "ControlPath=/tmp/ctl/b1.sock",
            "StrictHostKeyChecking=yes", "UserKnownHostsFile=/keys/known", "ServerAliveInterval=2",
            "ServerAliveCountMax=3"} <= set(opts)
    assert argv[argv.index("-i") + 1] == "/keys/lab"
    assert argv[-3:] == ["root@b1", "--", "timeout -k 2 10 ctdb -X status"]
    master = conn.base_argv(master=True)
    assert "ControlMaster=yes" in master and "ControlPersist=600" in master


def test_remote_command_text_quotes():
    assert remote_command_text(["echo", "a b", "$x"], None) == "echo 'a b' '$x'"
    assert remote_command_text("ls /; echo $HOME", 5) == "timeout -k 2 5 sh -c 'ls /; echo $HOME'"


# -- power -------------------------------------------------------------------------------------------
def test_hard_reset_default_is_sysrq_over_ssh(inventory):
    conn = SshConnection("b1", "root@b1", inventory.ssh, Path("/tmp/ctl"))
    plan = rc.power_off_plan(inventory.power, inventory.hosts[0], conn)
    assert not plan.local and plan.timeout == rc.SYSRQ_TIMEOUT
    assert plan.argv[:1] == ["ssh"] and plan.argv[-1] == "sh -c 'echo b > /proc/sysrq-trigger'"
    assert "timeout" not in plan.argv[-1]           # nothing on the host outlives the reset anyway


def test_off_command_runs_here_with_placeholders(inventory):
    policy = PowerPolicy(off_command=("ipmitool", "-H", "{name}-bmc", "power", "off", "{private_address}"),
                         on="wait")
    plan = rc.power_off_plan(policy, inventory.hosts[1], None)
    assert plan.local and plan.argv == ["ipmitool", "-H", "b2-bmc", "power", "off", "198.18.0.2"]


def test_cut_times_from_the_hook_or_the_clock():
    said = rc.cut_times('noise\n{"ok": true, "t_cut": 10.5, "t_killed": 10.6, "killed": 7}\n',
                        t_sent=1, t_done=20, local=True)
    assert said == {"t_cut": 10.5, "t_killed": 10.6, "killed": 7}
    assert rc.cut_times("", t_sent=1.0, t_done=20.0, local=True) == {"t_cut": 20.0, "t_killed": 20.0,
                                                                      "killed": None}
    assert rc.cut_times("", t_sent=1.0, t_done=4.0, local=False)["t_cut"] == 1.0   # sysrq: when sent


# -- process faults ----------------------------------------------------------------------------------
PS = "4711 pyctdbd 900\n4700 pyctdbd 800\n"


def test_crash_kills_the_oldest_daemon_process_over_ssh(inventory):
    cluster = remote_cluster(inventory, {"import os, sys": PS})
    assert Crash(1).apply(cluster).value == 4700
    ssh = cluster.node(1).ssh
    (find, _), (kill, _) = ssh.sent
    assert find[1:3] == ["-c", FIND_PROGRAMS] and find[3:] == ["pyctdbd"]
    assert kill == ["kill", "-s", "KILL", "4700"]
    assert cluster.node(0).ssh.sent == []          # only the victim is touched


def test_freeze_thaw_and_kill_smbd(inventory):
    cluster = remote_cluster(inventory, {"smbd": "88 smbd 5\n", "import os, sys": PS})
    assert Freeze(0).apply(cluster).value == [4700, 4711]
    assert cluster.node(0).ssh.sent[-1][0] == ["kill", "-s", "STOP", "4700", "4711"]
    Thaw(0, pids=[4700, 4711]).apply(cluster)
    assert cluster.node(0).ssh.sent[-1][0] == ["kill", "-s", "CONT", "4700", "4711"]
    KillSmbd(2).apply(cluster)
    assert cluster.node(2).ssh.sent[-1][0] == ["kill", "-s", "KILL", "88"]


def test_find_programs_is_limited_to_the_hosts_network_namespace():
    # In the lab the stand-in blades share one PID namespace with everything else.
    assert 'os.readlink("/proc/self/ns/net")' in FIND_PROGRAMS


# -- network faults ----------------------------------------------------------------------------------
def test_partition_and_heal_are_nftables_on_the_hosts(inventory):
    cluster = remote_cluster(inventory)
    Partition([[0], [1, 2]]).apply(cluster)
    command, script = cluster.node(0).ssh.sent[0]
    assert command == ["nft", "-f", "-"]
    assert "table inet ctdblab_partition" in script
    assert 'iifname "eth0" ip saddr { 198.18.0.2, 198.18.0.3 } drop' in script
    _, script2 = cluster.node(2).ssh.sent[0]
    assert "ip daddr { 198.18.0.1 } drop" in script2
    Heal().apply(cluster)
    assert cluster.node(1).ssh.sent[-1][0] == ["nft", "delete", "table", "inet", "ctdblab_partition"]


def test_loss_is_a_numgen_rule_like_in_mininet(inventory):
    cluster = remote_cluster(inventory)
    Loss(1, 12.5, network="public").apply(cluster)
    command, script = cluster.node(1).ssh.sent[0]
    assert command == ["nft", "-f", "-"]
    assert 'oifname "eth1" numgen random mod 10000 < 1250 drop' in script
    Loss(2, 100).apply(cluster)                   # nft has no "< 10000": a plain drop
    assert 'oifname "eth0" drop; }' in cluster.node(2).ssh.sent[0][1]
    ClearLoss(1).apply(cluster)
    assert cluster.node(1).ssh.sent[-1][0] == ["nft", "delete", "table", "inet", "ctdblab_loss"]


def test_cleanup_removes_our_tables_and_floating_ips(inventory):
    text = rc.cleanup_command(inventory.hosts[0])
    assert "nft delete table inet ctdblab_partition" in text
    assert "nft delete table inet ctdblab_loss" in text
    assert "ip addr del 198.19.8.2/20 dev eth1" in text


# -- set-up ------------------------------------------------------------------------------------------
def test_config_spec_for_pyctdbd(inventory):
    launcher = get_launcher("pyctdbd")
    host = inventory.hosts[0]
    config = launcher.node_config(node_ips=[h.private_address for h in inventory.hosts],
                                  public_addresses=[f"{ip}/20 eth1" for ip in host.public_ips],
                                  shared_dir=Path("/cfs"), profile=get_profile("aggressive"))
    spec = rc.config_spec(config, "/opt/ctdblab/lib/ctdblab/daemon/events/scripts")
    files = spec["files"]
    assert files["/etc/ctdb/nodes"] == "198.18.0.1\n198.18.0.2\n198.18.0.3\n"
    assert files["/etc/ctdb/public_addresses"] == "198.19.8.1/20 eth1\n198.19.8.2/20 eth1\n"
    assert "cluster lock = /cfs/.ctdb/reclock" in files["/etc/ctdb/ctdb.conf"]
    assert "path = /cfs/share" in files["/etc/samba/smb.conf"]
    assert spec["links"] == {
        "00.ctdb.script": "/usr/share/ctdb/events/legacy/00.ctdb.script",
        "10.interface.script": "/opt/ctdblab/lib/ctdblab/daemon/events/scripts/10.interface.script",
        "50.samba.script": "/opt/ctdblab/lib/ctdblab/daemon/events/scripts/50.samba.script"}


NODE_REPORT = """missing nft
python 3.9
addr lo 127.0.0.1/8
addr eth0 198.18.0.1/20
addr eth1@if9 198.19.0.9/20
link lo
link eth0@if7
link eth1@if9
no-shared-dir
"""


def test_node_problems_name_what_is_wrong(inventory):
    problems, private_iface = rc.node_problems(inventory.hosts[0], NODE_REPORT)
    assert private_iface == "eth0"
    text = "\n".join(problems)
    assert "`nft` is not installed" in text
    assert "python3 is 3.9" in text
    assert "eth1 does not carry 198.19.0.1/20" in text
    assert "cluster filesystem is not there" in text
    problems, private_iface = rc.node_problems(inventory.hosts[1], NODE_REPORT.replace("lo\n", "lo\n", 1))
    assert private_iface is None
    assert any("has no address 198.18.0.2 (private_address)" in p for p in problems)


def test_a_good_node_has_no_problems(inventory):
    report = "python 3.11\naddr eth0 198.18.0.1/20\naddr eth1 198.19.0.1/20\nlink eth0\nlink eth1\n"
    assert rc.node_problems(inventory.hosts[0], report) == ([], "eth0")


def test_client_problems(inventory):
    assert rc.client_problems(inventory.clients[0], "addr eth0 198.19.4.1/20\n") == []
    problems = rc.client_problems(inventory.clients[0], "no-smbprotocol\naddr eth0 198.19.4.2/20\n")
    assert any("cannot import smbprotocol" in p for p in problems)
    assert any("has no address 198.19.4.1" in p for p in problems)


# -- the probes' wrapper -------------------------------------------------------------------------------
def test_remote_popen_forwards_signals_and_reads_exit_like_a_local_popen(tmp_path):
    # The wrapper itself, run locally with bash (what the host runs behind ssh).
    from ctdblab.cluster.remote_host import SIGNAL_WRAPPER

    marker = tmp_path / "got"
    child = f"trap 'echo usr1 >> {marker}' USR1; trap 'exit 0' INT; while :; do sleep 0.05; done"
    proc = RemotePopen(["bash", "-c", SIGNAL_WRAPPER, "w", "bash", "-c", child],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        import time
        time.sleep(0.3)
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.read_text() == "usr1\n"
        proc.stdin.close()                    # EOF: the wrapper TERMs the command
        assert proc.wait(5) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()


def test_flap_is_refused_on_remote_hosts(inventory):
    from ctdblab.cluster.remote_backend import RemoteCluster

    backend = RemoteCluster(inventory, 3, 1)
    try:
        with pytest.raises(UserError, match="need the switch"):
            backend.set_link(backend.node(0), "private", up=False)
        with pytest.raises(UserError, match="3 hosts, not 4"):
            RemoteCluster(inventory, 4, 1)
    finally:
        backend.release()


# -- failures are errors, never hangs (a real ssh client; the "network" is a ProxyCommand) -----------
def _conn(proxy: str, **settings) -> SshConnection:
    # An address literal: ssh then looks nothing up (a name would go to the resolver first,
    # which here has no server to ask and can take longer than any connect timeout).
    return SshConnection("blade9", "root@198.18.0.9", SshSettings(options=("-o", f"ProxyCommand={proxy}"),
                                                              **settings), Path("/tmp/ctl-none"))


def test_an_ssh_failure_names_the_host_and_the_command():
    from ctdblab.cluster.ssh import SshError

    with pytest.raises(SshError) as e:
        _conn("false").run(["ctdb", "-X", "status"], timeout=5)
    assert str(e.value).startswith("blade9: ssh root@198.18.0.9 failed running `ctdb -X status`")


def test_a_silent_host_is_an_error_within_the_connect_timeout():
    import time

    from ctdblab.cluster.ssh import SshError

    t0 = time.monotonic()
    # The command's own limit is far away (10 s + 1 s + 2 s): ssh's ConnectTimeout must end it,
    # also on a loaded machine (the suite's lab tests run beside it).
    with pytest.raises(SshError, match=r"^blade9: ssh root@198\.18\.0\.9 failed running `true`: .*timed out"):
        _conn("sleep 30", connect_timeout=1.0).run(["true"], timeout=10.0)
    assert time.monotonic() - t0 < 8


def test_a_hung_command_is_killed_here_at_its_deadline():
    import time

    from ctdblab.cluster.ssh import SshTimeout

    class Hanging(SshConnection):
        def argv(self, command, timeout=None):      # what a connected but hung ssh looks like
            return ["sleep", "30"]

    conn = Hanging("blade9", "root@blade9", SshSettings(connect_timeout=1.0), Path("/tmp/ctl-none"))
    t0 = time.monotonic()
    with pytest.raises(SshTimeout) as e:
        conn.run(["ctdb", "status"], timeout=1.0)
    assert time.monotonic() - t0 < 6                # limit + connect timeout + 2 s
    assert str(e.value) == "blade9: `ctdb status` did not finish within 1 s"
    assert isinstance(e.value, subprocess.TimeoutExpired)      # LabCluster's polls catch it
