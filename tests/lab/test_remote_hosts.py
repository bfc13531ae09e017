"""The remote-hosts backend end to end: `ctdblab run failover --hosts` against SSH-only "blades".

Three Mininet nodes stand in for blades and one Mininet client for a client machine; inside
each runs nothing but an sshd (listening on the node's own public address only, a throw-away
host key, a throw-away client key).  A fourth Mininet host is the operator's station: the
`ctdblab run` under test runs there (`mnexec`), so it reaches the blades only over their network,
as it would reach real ones.  The backend installs its payload, writes the configuration and
starts pyctdbd and smbd over SSH; nothing of the run uses Mininet.

What the blades share with this machine is what real blades would not: the filesystem.  So each
blade gets its own directories where the backend writes — /etc/ctdb, /etc/samba, /var/lib/ctdb,
/var/log/ctdb ... (the Mininet node mounts, cluster/node.py) and the inventory's install_dir
(a bind mount per blade) — and the "cluster filesystem" is one directory of this test.

The hard reset is the lab's own power-off of that Mininet node, reached through the inventory's
off_command/on_command: blade_power.py asks this test (a Unix socket) to power the node off or on;
on power-on the node's sshd starts again, as a rebooted blade's would.  /proc/sysrq-trigger is
never touched.  The run needs --allow-hard-reset; without it the CLI refuses (checked first).

The same failover also runs on Mininet (the reference): results.json and history.jsonl of the
SSH run must have the same shape — the same keys, the same event kinds.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ctdblab.cluster.mininet_backend import MininetCluster
from ctdblab.cluster.node import LabHost
from ctdblab.cluster.procs import netns_of, pids_in_netns
from ctdblab.history import read_history

HERE = Path(__file__).parent
CTDBLAB = Path(sys.executable).parent / "ctdblab"
RUN_TIMEOUT = 900


class Blades:
    """The Mininet stand-ins and their sshds; a power server for blade_power.py."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.ssh_dir = tmp / "ssh"
        self.install_mount = tmp / "install"          # the inventory's install_dir
        self.shared = tmp / "clusterfs"
        self.socket_path = tmp / "power.sock"
        self.empty_bashrc = tmp / "ssh" / "bashrc"
        self.net = MininetCluster(3, 2, workdir=tmp / "net")
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.power_log: list[str] = []

    # -- set-up ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self.ssh_dir.mkdir(mode=0o700)
        self.install_mount.mkdir()
        (self.shared).mkdir()
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"ctdblab-test-{key}",
                            "-f", str(self.ssh_dir / key)], check=True, timeout=30)
        (self.ssh_dir / "authorized_keys").write_text((self.ssh_dir / "client_key.pub").read_text())
        self.empty_bashrc.write_text("")
        self.net.build()
        host_pub = (self.ssh_dir / "host_key.pub").read_text().split()[:2]
        (self.ssh_dir / "known_hosts").write_text("".join(
            f"{self.ssh_address(b)} {' '.join(host_pub)}\n" for b in self.blades()))
        for blade in self.blades():
            self.boot(blade)
        self._serve_power()

    def blades(self) -> list[LabHost]:
        return self.net.nodes + [self.net.client(1)]

    @property
    def station(self) -> LabHost:
        return self.net.client(0)

    def ssh_address(self, blade: LabHost) -> str:
        if blade.role == "node":
            return self.net.plan.node_public_ip(blade.index)
        return self.net.plan.client_ip(blade.index)

    def boot(self, blade: LabHost) -> None:
        """What a booting blade does here: its own install_dir, then sshd and nothing else."""
        own = self.tmp / "blade-disks" / blade.name / "install"
        own.mkdir(parents=True, exist_ok=True)
        config = self.ssh_dir / f"sshd_config.{blade.name}"
        config.write_text("\n".join([
            f"ListenAddress {self.ssh_address(blade)}", "Port 22",
            f"HostKey {self.ssh_dir / 'host_key'}",
            f"AuthorizedKeysFile {self.ssh_dir / 'authorized_keys'}",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            f"PidFile {self.ssh_dir / f'sshd.{blade.name}.pid'}",
            "MaxSessions 64", "MaxStartups 64", "LogLevel ERROR", ""]))
        # Root's ~/.bashrc here (bash sources it for every SSH command) is this machine's, not
        # a blade's: it put pyenv first on PATH and cost ~0.4 s per command.  A blade gets an
        # empty one, so its commands see Debian's plain root environment.
        result = blade.run(f"mount --bind {own} {self.install_mount} && mkdir -p /run/sshd && "
                           f"mount --bind {self.empty_bashrc} /root/.bashrc", timeout=10)
        assert result.returncode == 0, result.stderr
        log = open(self.ssh_dir / f"sshd.{blade.name}.log", "ab")
        blade.popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                    stderr=log)
        log.close()
        for _ in range(100):
            if blade.run(["ss", "-ltnH", "sport = :22"], timeout=5).stdout.strip():
                return
            threading.Event().wait(0.05)
        raise AssertionError(f"sshd did not listen on {blade.name}: "
                             f"{(self.ssh_dir / f'sshd.{blade.name}.log').read_text()[-500:]}")

    # -- the power hook's other end --------------------------------------------------------------------
    def _serve_power(self) -> None:
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.socket_path))
        self._server.listen(4)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return                     # closed by stop()
            with conn:
                action, name = conn.makefile().readline().split()
                self.power_log.append(f"{action} {name}")
                try:
                    node = next(n for n in self.net.nodes if n.name == name)
                    if action == "off":
                        answer = {"ok": True, **self.net.power_off(node)}
                    else:
                        self.net.power_on(node)
                        self.boot(node)
                        answer = {"ok": True}
                except Exception as e:     # noqa: BLE001 - the hook reports it to the backend
                    answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                conn.sendall((json.dumps(answer) + "\n").encode())

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.net.teardown()

    # -- the inventory --------------------------------------------------------------------------------
    def inventory(self) -> Path:
        hook = [sys.executable, str(HERE / "blade_power.py"), str(self.socket_path)]
        plan = self.net.plan
        lines = ["[cluster]", f'shared_dir = "{self.shared}"', f'install_dir = "{self.install_mount}"',
                 "", "[ssh]", 'user = "root"', f'identity_file = "{self.ssh_dir / "client_key"}"',
                 f'known_hosts_file = "{self.ssh_dir / "known_hosts"}"',
                 'strict_host_key_checking = "yes"', "connect_timeout = 3", "command_timeout = 30",
                 "", "[power]", f"off_command = {json.dumps(hook + ['off', '{lab_node}'])}",
                 'on = "command"', f"on_command = {json.dumps(hook + ['on', '{lab_node}'])}",
                 "boot_timeout = 60", ""]
        public_ips = json.dumps([plan.public_ip(k) for k in range(3)])
        for node in self.net.nodes:
            lines += ["[[host]]", f'name = "blade{node.index + 1}"',
                      f'ssh = "{plan.node_public_ip(node.index)}"',
                      f'private_address = "{plan.private_ip(node.index)}"',
                      f'public_interface = "{self.net.iface(node, "public")}"',
                      f'public_address = "{plan.node_public_ip(node.index)}/20"',
                      f"public_ips = {public_ips}", f'vars = {{ lab_node = "{node.name}" }}', ""]
        lines += ["[[client]]", 'name = "client1"', f'ssh = "{plan.client_ip(1)}"',
                  f'address = "{plan.client_ip(1)}"',
                  # The probes need smbprotocol: this venv's interpreter has it (on a real client:
                  # any Python with `pip install smbprotocol`).  The probes' code is the payload's.
                  f'python = "{sys.executable}"', ""]
        path = self.tmp / "inventory.toml"
        path.write_text("\n".join(lines))
        return path


@pytest.fixture(scope="module")
def blades(tmp_path_factory):
    b = Blades(tmp_path_factory.mktemp("blades"))
    try:
        b.start()
        yield b
    finally:
        b.stop()


def _shape(out: Path) -> tuple[dict, set]:
    results = json.loads((out / "results.json").read_text())
    # Which probes spoke, not what each said: whether a probe records reads (ops) or only its
    # setup failure depends on the run (a loaded machine), not on the backend.
    sub = {"run": "event", "fault": "fault", "state": "what"}
    kinds = {("probe", e["probe"]) if e["kind"] in ("op", "capture") else (e["kind"], e.get(sub.get(e["kind"], ""), ""))
             for e in read_history(out / "history.jsonl") if e["kind"] != "note"}
    return results, kinds


def _keys(results: dict) -> dict:
    return {"top": set(results), "run": set(results["runs"][0]), "summary": set(results["summary"]),
            "overhead": set(results["lab_overhead"])}


def _root_sshds() -> list[int]:
    root = netns_of(1)
    return [p for p in pids_in_netns(root) if _comm(p) == "sshd"]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_failover_over_ssh_writes_what_mininet_writes(tmp_path, blades):
    blades.power_log.clear()
    sshds_before = _root_sshds()
    inventory = blades.inventory()
    station = blades.station
    base = [str(CTDBLAB), "-q", "run", "failover", "--hosts", str(inventory), "--daemon", "pyctdbd",
            "--tunables", "aggressive"]

    refused = station.run(base + ["--out", str(tmp_path / "refused")], timeout=60)
    assert refused.returncode == 2 and "--allow-hard-reset" in refused.stderr, refused.stderr
    assert blades.power_log == []

    out = tmp_path / "ssh-run"
    run = station.run(base + ["--allow-hard-reset", "--out", str(out)], timeout=RUN_TIMEOUT)
    assert run.returncode == 0, f"ctdblab run --hosts failed:\n{run.stderr[-3000:]}"
    victim_name = blades.net.node(json.loads((out / "results.json").read_text())["runs"][0]["victim"]).name
    assert blades.power_log == [f"off {victim_name}", f"on {victim_name}"]

    ref = tmp_path / "mininet-run"
    mininet = subprocess.run([str(CTDBLAB), "-q", "run", "failover", "--daemon", "pyctdbd", "--nodes", "3",
                              "--tunables", "aggressive", "--out", str(ref)],
                             capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert mininet.returncode == 0, mininet.stderr[-3000:]

    got, got_kinds = _shape(out)
    want, want_kinds = _shape(ref)
    assert _keys(got) == _keys(want)
    assert got_kinds == want_kinds, (got_kinds ^ want_kinds)
    run0 = got["runs"][0]
    # The failover happened and was measured, not just recorded: the IP moved, clients resumed.
    for metric in ("takeover_s", "smb_resumed_s", "rejoin_s"):
        assert run0[metric] is not None and run0[metric] > 0, (metric, run0)
    # The survivors' daemon logs came back over SSH into the history.
    assert any(e["kind"] == "state" and e["what"] == "log" for e in read_history(out / "history.jsonl"))
    # Logs were collected into the run's directory at teardown.
    assert list((out / "cluster" / "nodes").glob("*/logs.tar.gz"))
    assert _root_sshds() == sshds_before


def test_process_and_network_faults_over_ssh(tmp_path, blades):
    """crash/restart, freeze/thaw, partition/heal, loss/clear_loss on the SSH-only blades: each
    has the effect it has in Mininet, as the cluster itself sees it (remote_faults.py)."""
    blades.power_log.clear()
    report_path = tmp_path / "faults.json"
    run = blades.station.run([sys.executable, str(HERE / "remote_faults.py"), str(blades.inventory()),
                              str(report_path)], timeout=RUN_TIMEOUT)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(report_path.read_text())
    steps = [(s["fault"], s.get("error")) for s in report["steps"]]
    assert steps == [(f, None) for f in ("crash", "restart", "freeze", "thaw", "partition", "heal",
                                         "loss", "clear_loss")], report["steps"]
    # Every fault is in the history, begun and ended, none failed.
    faults = [(e["fault"], e["phase"]) for e in read_history(Path(report["history"]))
              if e["kind"] == "fault"]
    assert all((f, "end") in faults for f, _ in steps) and not any(p == "fail" for _, p in faults)
    # heal and clear_loss removed the backend's nftables tables.
    assert all("ctdblab_" not in t for t in report["nft_tables_after"].values())
    assert blades.power_log == []


def test_failover_over_ssh_with_real_ctdbd(tmp_path, blades):
    """The reference daemon through the same backend: Debian's ctdbd, configured and started over SSH."""
    blades.power_log.clear()
    out = tmp_path / "ssh-ctdb"
    run = blades.station.run([str(CTDBLAB), "-q", "run", "failover", "--hosts", str(blades.inventory()),
                              "--daemon", "ctdb", "--tunables", "aggressive", "--allow-hard-reset",
                              "--out", str(out)], timeout=RUN_TIMEOUT)
    assert run.returncode == 0, f"ctdblab run --hosts --daemon ctdb failed:\n{run.stderr[-3000:]}"
    results = json.loads((out / "results.json").read_text())
    (run0,) = results["runs"]
    assert results["daemon"] == "ctdb"
    for metric in ("detect_s", "takeover_s", "smb_resumed_s", "rejoin_s"):
        assert run0[metric] is not None and run0[metric] > 0, (metric, run0)
    assert len(blades.power_log) == 2 and blades.power_log[0].startswith("off ")


def test_up_exec_down_over_ssh(tmp_path, blades):
    """`up --detach` leaves the cluster running on the blades, `exec` reaches a node over SSH,
    `down` stops what runs there and removes the floating IPs."""
    inventory = str(blades.inventory())
    cli = [str(CTDBLAB), "-q"]
    up = blades.station.run(cli + ["up", "--hosts", inventory, "--daemon", "pyctdbd", "--tunables",
                                   "aggressive", "--detach"], timeout=RUN_TIMEOUT)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        assert f"ctdblab down --hosts {inventory}" in up.stdout
        status = blades.station.run(cli + ["exec", "--hosts", inventory, "1", "--", "ctdb", "-X", "status"],
                                    timeout=60)
        assert status.returncode == 0, status.stderr
        rows = [line for line in status.stdout.splitlines() if line[:3] in ("|0|", "|1|", "|2|")]
        assert len(rows) == 3 and all(r.split("|")[3:10] == ["0"] * 7 for r in rows), status.stdout
        ip = blades.net.plan.public_ip(0)
        assert any(ip in blades.net.node(p).run(["ip", "-4", "addr"], timeout=10).stdout for p in range(3))
    finally:
        down = blades.station.run(cli + ["down", "--hosts", inventory], timeout=120)
    assert down.returncode == 0, down.stderr
    assert "blade1: stopped" in down.stdout and "pyctdbd" in down.stdout, down.stdout
    for p in range(3):
        node = blades.net.node(p)
        assert not [pid for pid, _, _ in node.find_programs(["pyctdbd", "smbd"])]
        assert blades.net.plan.public_ip(0) not in node.run(["ip", "-4", "addr"], timeout=10).stdout
