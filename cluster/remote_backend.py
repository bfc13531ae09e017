"""The remote-hosts backend: the lab's cluster on real machines, driven only over SSH.

It offers LabCluster the Mininet backend's interface (nodes and clients with ``run``/``popen``,
``build``, ``configure_daemon``, ``power_off``/``power_on``, ``daemon_log``,
``ensure_share_file``, ``teardown``), so the scenarios, faults and checkers run unchanged and
write the same history.  It never assumes a file is shared with this machine: pyctdbd and the
probes are copied to every host (payload.py), configuration is written over SSH, daemon logs are
copied back into the run's directory (``<workdir>/nodes/<name>/``) before they are parsed.  The
only shared path is the cluster filesystem the inventory names (``shared_dir``), on the hosts.

What a fault means on a real host (commands: remote_commands.py):

power_off   sysrq-b (``echo b > /proc/sysrq-trigger`` over SSH) or the inventory's
            ``off_command`` (e.g. IPMI power off), run here.  Refused unless the operator passed
            --allow-hard-reset AND the inventory says how the host comes back (power.on).
power_on    the inventory's ``on_command``, or just waiting; then until SSH answers again; the
            daemon is started again by LabCluster, as in Mininet.
crash, freeze, partition, loss
            the same as in Mininet (signals to the daemon's processes found on the host; nftables
            tables ``ctdblab_partition``/``ctdblab_loss`` on the host, removed by teardown and by
            ``ctdblab down --hosts``).
flap        refused: pulling a cable at the switch needs the switch.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ctdblab.errors import UserError

from . import payload, remote_commands
from .inventory import Inventory, expand_command
from .remote_host import RemoteHost, lib_dir_of
from .ssh import SshConnection, SshError, with_hangup_default

if TYPE_CHECKING:
    from .launchers import DaemonLauncher
    from .profiles import Profile

LOG_FILE = "/var/log/ctdb/log.ctdb"          # launchers.LOG_FILE: ctdb.conf sends the log there
STOP_WAIT_S = 10.0
DAEMON_AND_SAMBA = ("ctdbd", "ctdb-recoverd", "ctdb-eventd", "pyctdbd", "smbd")
POWER_COMMAND_TIMEOUT = 120.0


class RemotePlan:
    """The address plan of an inventory, with AddressPlan's calls (by PNN / client index)."""

    def __init__(self, inventory: Inventory):
        self.inventory = inventory

    def private_ip(self, pnn: int) -> str:
        return self.inventory.hosts[pnn].private_address

    def node_public_ip(self, pnn: int) -> str:
        return self.inventory.hosts[pnn].own_public_ip

    def client_ip(self, index: int) -> str:
        return self.inventory.clients[index].address


class RemoteCluster:
    def __init__(self, inventory: Inventory, nodes: int, clients: int, *,
                 workdir: str | Path | None = None, progress: Callable[[str], None] | None = None,
                 allow_hard_reset: bool = False):
        if nodes != len(inventory.hosts):
            raise UserError(f"{inventory.source} has {len(inventory.hosts)} hosts, not {nodes}: "
                            f"with --hosts the inventory decides the node count")
        if clients > len(inventory.clients):
            raise UserError(f"{inventory.source}: the run needs {clients} client host(s) and the "
                            f"inventory has {len(inventory.clients)} ([[client]] entries)")
        self.inventory = inventory
        self.num_nodes = nodes
        self.num_clients = clients
        self.allow_hard_reset = allow_hard_reset
        self.plan = RemotePlan(inventory)
        self.prefix = inventory.source.stem          # the cluster's name in messages
        # Logs land here; made only when something is written (``down --hosts`` writes nothing).
        self.workdir = (Path(workdir).resolve() if workdir
                        else Path("/var/tmp/ctdblab") / f"hosts-{self.prefix}")
        self.progress = progress or (lambda msg: None)
        self.detached = False
        self.extra_state: dict = {}
        self._private_ifaces: dict[int, str] = {}
        # Short: a ControlPath must fit a Unix socket address (108 bytes).
        self._control_dir = Path(tempfile.mkdtemp(prefix="ctdblab-ssh-", dir="/tmp"))
        lib = lib_dir_of(inventory.install_dir)
        pyctdbd = payload.pyctdbd_path(inventory.install_dir)
        self.nodes = [RemoteHost(name=h.name, index=i, role="node", ssh=self._connection(h.name, h.ssh),
                                 ips={"private": h.private_address, h.public_interface: h.public_address},
                                 lib_dir=lib)
                      for i, h in enumerate(inventory.hosts)]
        for node in self.nodes:
            node.programs = {"pyctdbd": pyctdbd}
        self.clients = [RemoteHost(name=c.name, index=i, role="client", ssh=self._connection(c.name, c.ssh),
                                   ips={"address": c.address}, python=c.python, lib_dir=lib)
                        for i, c in enumerate(inventory.clients[:clients])]

    def _connection(self, name: str, target: str) -> SshConnection:
        return SshConnection(name, target, self.inventory.ssh, self._control_dir)

    # -- names and addresses ------------------------------------------------------------------------
    @property
    def shared_dir(self) -> Path:
        """The cluster filesystem's path on the hosts (not on this machine)."""
        return Path(self.inventory.shared_dir)

    def node(self, pnn: int) -> RemoteHost:
        if not 0 <= pnn < len(self.nodes):
            raise UserError(f"no node with PNN {pnn} (nodes are 0..{len(self.nodes) - 1})")
        return self.nodes[pnn]

    def client(self, index: int) -> RemoteHost:
        if not 0 <= index < len(self.clients):
            raise UserError(f"no client {index} (clients are 0..{len(self.clients) - 1})")
        return self.clients[index]

    def public_ips(self) -> list[str]:
        return self.inventory.public_ips()

    def iface(self, host: RemoteHost, network: str) -> str:
        if host.role != "node":
            raise UserError(f"{host.name} is a client: the backend manages no interface of it")
        if network == "public":
            return self.inventory.hosts[host.index].public_interface
        if network == "private":
            if host.index not in self._private_ifaces:
                raise UserError(f"{host.name}: its private interface is learnt when the cluster starts")
            return self._private_ifaces[host.index]
        raise UserError(f"{host.name} has no link on network {network!r} (it has: private, public)")

    def set_link(self, host: RemoteHost, network: str, up: bool) -> float:
        raise UserError("link flaps need the switch (a cable pulled at the far end); on remote "
                        "hosts use partition or loss, which act on the host itself")

    # -- prerequisites and build ----------------------------------------------------------------------
    def _each(self, fn, hosts) -> list:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(fn, hosts))

    def check_prerequisites(self, launcher: "DaemonLauncher") -> None:
        """Connect to every host and check what the run needs there; every problem at once."""
        if shutil.which("ssh") is None:
            raise UserError("`ssh` not found here: install Debian's openssh-client")
        if launcher.name not in remote_commands.REMOTE_DAEMONS:
            raise UserError(f"daemon {launcher.name!r} is not supported on remote hosts")
        self.progress(f"connecting to {len(self.nodes)} hosts and {len(self.clients)} clients over SSH")

        def check(host: RemoteHost) -> list[str]:
            try:
                host.ssh.start_master()
                if host.role == "node":
                    entry = self.inventory.hosts[host.index]
                    report = host.run(remote_commands.node_check_command(
                        launcher.name, launcher.enabled_stock_scripts(), self.inventory.shared_dir),
                        timeout=30).stdout
                    problems, private_iface = remote_commands.node_problems(entry, report)
                    if private_iface:
                        self._private_ifaces[host.index] = private_iface
                    if not problems:
                        # The daemon starts smbd itself (50.samba): Debian's smbd.service
                        # must not hold port 445 already.
                        running = host.find_programs(("ctdbd", "pyctdbd", "smbd"))
                        if running:
                            problems.append(
                                "runs already: " + ", ".join(sorted({n for _, n, _ in running}))
                                + " (pids " + " ".join(str(p) for p, _, _ in running) + "): stop "
                                f"and disable those services (`ctdblab down --hosts "
                                f"{self.inventory.source}` stops ours)")
                    return problems
                entry = self.inventory.clients[host.index]
                report = host.run(remote_commands.client_check_command(entry.python), timeout=30).stdout
                return remote_commands.client_problems(entry, report)
            except (SshError, subprocess.TimeoutExpired) as e:
                return [str(e)]

        problems = [f"{host.name}: {p}" for host, found in
                    zip(self.nodes + self.clients, self._each(check, self.nodes + self.clients))
                    for p in found]
        if problems:
            raise UserError(f"the hosts of {self.inventory.source} are not ready:\n  "
                            + "\n  ".join(problems))

    def build(self, configure: Callable[[RemoteHost], None] | None = None) -> None:
        """Copy the payload to every host, make the shared directories, write each node's files."""
        t0 = time.monotonic()
        data = payload.build_payload()
        digest = payload.digest(data)
        installed = self._each(lambda h: self._install_payload(h, data, digest), self.nodes + self.clients)
        self.nodes[0].run(remote_commands.shared_dirs_command(self.inventory.shared_dir),
                          timeout=30, check=True)
        if configure:
            self._each(configure, self.nodes)
        self.progress(f"{len(self.nodes)} hosts ready in {time.monotonic() - t0:.1f} s (payload "
                      f"{len(data) // 1024} KiB sent to {sum(installed)} of "
                      f"{len(self.nodes) + len(self.clients)} hosts, the rest had it)")

    def _install_payload(self, host: RemoteHost, data: bytes, digest: str) -> bool:
        install = self.inventory.install_dir
        have = host.run(["cat", f"{install}/payload.sha256"], timeout=15).stdout.strip()
        if have == digest:
            return False
        result = host.ssh.run([host.python, "-c", payload.INSTALL_SCRIPT, install, digest,
                               payload.launcher_text(install)], input=data, text=False, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{host.name}: installing the payload in {install} failed: "
                               f"{result.stderr.decode(errors='replace').strip()[-300:]}")
        return True

    def configure_daemon(self, node: RemoteHost, launcher: "DaemonLauncher", profile: "Profile") -> None:
        entry = self.inventory.hosts[node.index]
        config = launcher.node_config(
            node_ips=[h.private_address for h in self.inventory.hosts],
            public_addresses=[f"{ip}/{entry.public_prefixlen} {entry.public_interface}"
                              for ip in entry.public_ips],
            shared_dir=self.shared_dir, profile=profile)
        spec = remote_commands.config_spec(config, payload.shipped_scripts_dir(self.inventory.install_dir))
        result = node.run([node.python, "-c", remote_commands.WRITE_CONFIG], input=json.dumps(spec),
                          timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"{node.name}: writing the daemon's configuration failed: "
                               f"{result.stderr.strip()[-300:]}")

    # -- files ----------------------------------------------------------------------------------------
    def daemon_log(self, node: RemoteHost, launcher: "DaemonLauncher") -> Path:
        """Copy the node's daemon log into the run's directory; the local copy's path."""
        local = self.workdir / "nodes" / node.name / Path(LOG_FILE).name
        local.parent.mkdir(parents=True, exist_ok=True)
        if node.powered:
            result = node.run(["cat", LOG_FILE], timeout=60)
            if result.returncode == 0:
                local.write_text(result.stdout)
        return local

    def ensure_share_file(self, name: str, size: int) -> None:
        path = f"{self.inventory.shared_dir}/share/{name}"
        self.nodes[0].run(remote_commands.ensure_file_command(path, size), timeout=120, check=True)

    # -- power ----------------------------------------------------------------------------------------
    def power_off(self, host: RemoteHost) -> dict[str, float]:
        """A hard reset (see the module's docstring); {t_cut, t_killed, killed} as in Mininet."""
        self.inventory.power.check_hard_reset(self.allow_hard_reset, str(self.inventory.source))
        if not host.powered:
            raise UserError(f"{host.name} is already powered off")
        entry = self.inventory.hosts[host.index]
        plan = remote_commands.power_off_plan(self.inventory.power, entry, host.ssh)
        t_sent = time.time()
        try:
            result = subprocess.run(with_hangup_default(plan.argv), stdin=subprocess.DEVNULL, capture_output=True,
                                    text=True, timeout=plan.timeout, start_new_session=True)
            returncode, output = result.returncode, result.stdout
        except subprocess.TimeoutExpired:
            returncode, output = None, ""        # sysrq: the host died under the command
        t_done = time.time()
        if plan.local and returncode != 0:
            raise RuntimeError(f"{host.name}: power-off command {plan.argv} failed "
                               f"(exit {returncode}): {output.strip()[-300:]}")
        host.powered = False
        host.forget_background()
        host.ssh.close()
        timing = remote_commands.cut_times(output, t_sent=t_sent, t_done=t_done, local=plan.local)
        if not plan.local and host.ssh.reachable(timeout=3):
            raise RuntimeError(f"{host.name} still answers SSH after sysrq-b: is "
                               f"/proc/sysrq-trigger writable there?")
        return timing

    def power_on(self, host: RemoteHost) -> float:
        """The inventory's power-on (command or wait), then until SSH answers: that instant."""
        if host.powered:
            raise UserError(f"{host.name} is already powered on")
        policy = self.inventory.power
        entry = self.inventory.hosts[host.index]
        if policy.on == "command":
            argv = expand_command(policy.on_command, entry)
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                    timeout=POWER_COMMAND_TIMEOUT, start_new_session=True)
            if result.returncode != 0:
                raise RuntimeError(f"{host.name}: power-on command {argv} failed "
                                   f"(exit {result.returncode}): {result.stderr.strip()[-300:]}")
        t_up = host.ssh.wait_reachable(policy.boot_timeout)
        host.ssh.start_master()
        host.powered = True
        return t_up

    # -- teardown -------------------------------------------------------------------------------------
    def teardown(self) -> None:
        """Stop the daemon and smbd, drop our nftables tables and the floating IPs on every node
        that answers; copy the logs into the run's directory; close the SSH connections."""
        def clean(host: RemoteHost) -> None:
            try:
                self.stop_services(host)
                self._collect_logs(host)
            except (SshError, subprocess.TimeoutExpired, RuntimeError) as e:
                self.progress(f"teardown: {host.name}: {e}")

        self._each(clean, [n for n in self.nodes if n.powered])
        for node in self.nodes:
            if not node.powered:       # a run stopped between power-off and power-on
                policy = self.inventory.power
                how = (f"power it on with: {' '.join(expand_command(policy.on_command, self.inventory.hosts[node.index]))}"
                       if policy.on == "command" else "it comes back by itself")
                self.progress(f"teardown: {node.name} was left powered off by the run; {how}, "
                              f"then `ctdblab down --hosts {self.inventory.source}`")
        for host in self.nodes + self.clients:
            host.forget_background()
        self.release()

    def stop_services(self, host: RemoteHost) -> list[str]:
        """SIGTERM the daemon and smbd (SIGKILL what is left after STOP_WAIT_S), then remove our
        nftables tables and the floating IPs from the public interface.  Returns what it stopped."""
        found = host.find_programs(DAEMON_AND_SAMBA)
        host.signal_processes([pid for pid, _, _ in found], signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        left = found
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = host.find_programs(DAEMON_AND_SAMBA)
        if left:
            host.signal_processes([pid for pid, _, _ in left], signal.SIGKILL)
        entry = self.inventory.hosts[host.index]
        host.run(remote_commands.cleanup_command(entry), timeout=30)
        return sorted({name for _, name, _ in found})

    def _collect_logs(self, host: RemoteHost) -> None:
        local = self.workdir / "nodes" / host.name
        local.mkdir(parents=True, exist_ok=True)
        result = host.ssh.run(remote_commands.logs_archive_command(), text=False, timeout=120)
        if result.returncode == 0 and result.stdout:
            (local / "logs.tar.gz").write_bytes(result.stdout)

    def release(self) -> None:
        """Close the SSH connections; leave whatever runs on the hosts running."""
        for host in self.nodes + self.clients:
            host.ssh.close()
        shutil.rmtree(self._control_dir, ignore_errors=True)

    def describe(self) -> dict:
        return {"prefix": self.prefix, "inventory": str(self.inventory.source),
                "workdir": str(self.workdir), "nodes": [h.describe() for h in self.nodes],
                "clients": [h.describe() for h in self.clients], "public_ips": self.public_ips(),
                **self.extra_state}

    def _save_state(self) -> None:
        """Nothing to save: ``ctdblab down --hosts INVENTORY`` needs only the inventory."""
