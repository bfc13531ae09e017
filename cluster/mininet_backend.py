"""The Mininet backend: a cluster of N nodes and M clients on two Linux bridges.

    private switch <prefix>sp  (198.18.x.0/20)   node eth0 — the CTDB node network
    public switch  <prefix>su  (198.19.x.0/20)   node eth1 (public IPs live here), clients

Only Mininet's object model is used (Host, LinuxBridge, Link, TCIntf); no Mininet() object, no
controller, no Open vSwitch.  After a host is built every command goes through ``mnexec -a``
with a timeout (procs.py), never through Mininet's shell.

Hard reset (power_off) follows the only order that leaks no FIN/RST (reference lab.md §6.3): cut
the node's switch-side ports, SIGSTOP+SIGKILL every process in its namespace, then delete its
links.  power_on builds a fresh host with the same name, addresses and MACs and re-applies the
link caps; the daemon launcher then starts the daemon again.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ctdblab.errors import UserError

from .addressing import PREFIXLEN, AddressPlan
from .node import LabHost, NodeDirs, mount_script, start_holder
from .prereq import check_lab
from .procs import mntns_of, netns_of
from .registry import SlotLease, acquire_slot, cleanup_prefix, write_state
from .samba import ensure_test_file

if TYPE_CHECKING:
    from .launchers import DaemonLauncher
    from .profiles import Profile

log = logging.getLogger(__name__)

MAX_NODES = 64
MAX_CLIENTS = 32
MAX_BW_MBIT = 1000           # Mininet silently ignores htb rates above this
NETEM_PARAMS = ("delay", "jitter", "loss", "max_queue_size")
NETWORKS = ("private", "public")    # a node's eth0 and eth1; a client has only the public one


@dataclass
class LinkSpec:
    """Per-node public-link shaping.  Only htb bandwidth exists here: this kernel has no netem."""

    bw_mbit: float | None = None

    @classmethod
    def from_params(cls, params: dict | None) -> "LinkSpec":
        params = dict(params or {})
        netem = [p for p in NETEM_PARAMS if params.get(p) not in (None, 0, "0", "")]
        if netem:
            raise UserError(f"link parameter(s) {', '.join(netem)} need netem, which this kernel "
                            "lacks (Mininet would silently ignore them); use the `loss` fault "
                            "(nftables inside a node) instead")
        bw = params.pop("bw", None)
        unknown = set(params) - set(NETEM_PARAMS)
        if unknown:
            raise UserError(f"unknown link parameter(s): {', '.join(sorted(unknown))}")
        if bw is not None:
            try:
                bw = float(bw)
            except (TypeError, ValueError):
                raise UserError(f"link bandwidth must be a number of Mbit/s, not {bw!r}") from None
            if not 0 < bw <= MAX_BW_MBIT:
                raise UserError(f"link bandwidth must be in (0, {MAX_BW_MBIT}] Mbit/s, not {bw:g} "
                                "(htb above 1000 Mbit/s is ignored by Mininet)")
        return cls(bw_mbit=bw)


class MininetCluster:
    """N cluster nodes and M clients.  ``build()`` makes the network; ``teardown()`` removes it."""

    def __init__(self, nodes: int, clients: int = 1, *, workdir: str | os.PathLike[str] | None = None,
                 link: LinkSpec | None = None, progress: Callable[[str], None] | None = None):
        if not isinstance(nodes, int) or not 1 <= nodes <= MAX_NODES:
            raise UserError(f"--nodes must be between 1 and {MAX_NODES}, not {nodes}")
        if not isinstance(clients, int) or not 0 <= clients <= MAX_CLIENTS:
            raise UserError(f"clients must be between 0 and {MAX_CLIENTS}, not {clients}")
        self.num_nodes = nodes
        self.num_clients = clients
        self.link = link or LinkSpec()
        self._workdir_arg = Path(workdir) if workdir else None
        self.progress = progress or (lambda msg: None)
        self.lease: SlotLease | None = None
        self.plan: AddressPlan | None = None
        self.prefix = ""
        self.workdir = Path()
        self.nodes: list[LabHost] = []
        self.clients: list[LabHost] = []
        self._switches: dict[str, object] = {}
        self.detached = False
        self.extra_state: dict = {}

    # -- names and addresses --------------------------------------------------------------------
    @property
    def shared_dir(self) -> Path:
        """The "cluster filesystem": a host directory every node sees at the same path."""
        return self.workdir / "shared"

    def switch_name(self, network: str) -> str:
        return f"{self.prefix}s{'p' if network == 'private' else 'u'}"

    def port_name(self, host: LabHost, network: str) -> str:
        """The switch-side end of the host's link on ``network`` (in the root namespace)."""
        self._check_network(host, network)
        return f"{self.switch_name(network)}-{host.name[len(self.prefix):]}"

    def iface(self, host: LabHost, network: str) -> str:
        """The host's own interface on ``network`` ("private" or "public"), inside its namespace:
        a node's eth0 is private and eth1 public; a client has only a public eth0."""
        return _iface_name(host.name, self._check_network(host, network))

    def networks_of(self, host: LabHost) -> list[str]:
        return list(NETWORKS) if host.role == "node" else ["public"]

    def _check_network(self, host: LabHost, network: str) -> int:
        """The index of ``network`` among the host's networks (UserError if it has no such link)."""
        networks = self.networks_of(host)
        if network not in networks:
            raise UserError(f"{host.name} has no link on network {network!r} "
                            f"(it has: {', '.join(networks)})")
        return networks.index(network)

    def node(self, pnn: int) -> LabHost:
        if not 0 <= pnn < len(self.nodes):
            raise UserError(f"no node with PNN {pnn} (nodes are 0..{len(self.nodes) - 1})")
        return self.nodes[pnn]

    def client(self, index: int) -> LabHost:
        if not 0 <= index < len(self.clients):
            raise UserError(f"no client {index} (clients are 0..{len(self.clients) - 1})")
        return self.clients[index]

    def public_ips(self) -> list[str]:
        return [self.plan.public_ip(k) for k in range(self.num_nodes)]

    # -- the daemon under test: LabCluster's backend interface (remote_backend.py has the same) ---
    def check_prerequisites(self, launcher: "DaemonLauncher") -> None:
        check_lab()
        launcher.check_installed()

    def configure_daemon(self, node: LabHost, launcher: "DaemonLauncher", profile: "Profile") -> None:
        """Write the node's files (before its mounts exist: straight into the overlay layers)."""
        launcher.configure(node, node_ips=[self.plan.private_ip(p) for p in range(self.num_nodes)],
                           public_ips=self.public_ips(), public_prefixlen=PREFIXLEN,
                           shared_dir=self.shared_dir, profile=profile)

    @staticmethod
    def daemon_log(node: LabHost, launcher: "DaemonLauncher") -> Path:
        """The daemon's log file of a node; a node's log directory is on this machine."""
        return launcher.log_path(node)

    def ensure_share_file(self, name: str, size: int) -> None:
        ensure_test_file(self.shared_dir / "share", name, size)

    # -- build ----------------------------------------------------------------------------------
    def build(self, configure: Callable[[LabHost], None] | None = None) -> None:
        """Build the network.  ``configure(node)`` writes a node's files before it is mounted."""
        from mininet.log import setLogLevel
        from mininet.nodelib import LinuxBridge

        setLogLevel("error")
        self.lease = acquire_slot()
        self.plan = AddressPlan(self.lease.slot)
        self.prefix = self.lease.prefix
        self.workdir = (self._workdir_arg or Path("/var/tmp/ctdblab") / self.prefix).resolve()
        if self.workdir.exists():
            shutil.rmtree(self.workdir / "nodes", ignore_errors=True)
        (self.shared_dir / "share").mkdir(parents=True, exist_ok=True)
        (self.shared_dir / ".ctdb").mkdir(parents=True, exist_ok=True)
        self._save_state()
        t0 = time.monotonic()
        for network, dpid in (("private", "1"), ("public", "2")):
            name = self.switch_name(network)
            self._switches[network] = LinuxBridge(name, dpid=dpid, inNamespace=False)
        plan = self.plan
        for pnn in range(self.num_nodes):
            name = f"{self.prefix}n{pnn + 1}"
            private, public = _iface_name(name, 0), _iface_name(name, 1)
            host = LabHost(
                name=name, index=pnn, role="node",
                ips={private: f"{plan.private_ip(pnn)}/{PREFIXLEN}",
                     public: f"{plan.node_public_ip(pnn)}/{PREFIXLEN}"},
                macs={private: _mac(plan.slot, 1, pnn), public: _mac(plan.slot, 2, pnn)},
                dirs=NodeDirs(self.workdir / "nodes" / name))
            host.dirs.create()
            if configure:
                configure(host)
            self.nodes.append(host)
        for c in range(self.num_clients):
            name = f"{self.prefix}c{c + 1}"
            public = _iface_name(name, 0)
            self.clients.append(LabHost(
                name=name, index=c, role="client",
                ips={public: f"{plan.client_ip(c)}/{PREFIXLEN}"},
                macs={public: _mac(plan.slot, 3, c)}))
        members = self.nodes + self.clients
        for host in members:
            self._make_mininet_host(host)
        # The in-host configuration is independent per host and mostly waits on subprocesses.
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(self._configure_inside, members))
        for switch in self._switches.values():
            switch.start([])
        self._save_state()
        self.progress(f"network of {self.num_nodes} nodes and {self.num_clients} clients built "
                      f"in {time.monotonic() - t0:.2f} s (prefix {self.prefix})")

    def _create_host(self, host: LabHost) -> None:
        """Make the Mininet host and its links, then configure it inside."""
        self._make_mininet_host(host)
        self._configure_inside(host)

    def _make_mininet_host(self, host: LabHost) -> None:
        """The Mininet host, its links and the holder process (Mininet is not thread-safe)."""
        from mininet.link import Link
        from mininet.node import Host

        mn_host = Host(host.name)
        links = []
        for network in self.networks_of(host):
            intf = self.iface(host, network)
            switch = self._switches[network]
            shaped = network == "public" and host.role == "node" and self.link.bw_mbit
            shaping = ({"cls1": _quiet_tc_intf(), "cls2": _quiet_tc_intf(),
                        "params1": {"bw": self.link.bw_mbit}, "params2": {"bw": self.link.bw_mbit}}
                       if shaped else {})
            links.append(Link(mn_host, switch, intfName1=intf, intfName2=self.port_name(host, network),
                              addr1=host.macs[intf], addr2=_switch_port_mac(host.macs[intf]),
                              **shaping))
        host.host = mn_host
        host.holder = start_holder(mn_host.pid)
        host.pid = host.holder.pid
        host.netns = netns_of(mn_host.pid)
        # mnexec joins the network namespace first and the mount namespace second: wait for
        # both, or a command entering through the holder could land in the host's mounts.
        _wait_for(lambda: netns_of(host.pid) == host.netns
                  and mntns_of(host.pid) == mntns_of(mn_host.pid), f"{host.name} holder", timeout=5)
        host.powered = True

    def _configure_inside(self, host: LabHost) -> None:
        """Addresses, sysctls and (for nodes) mounts, run inside the host with one command."""
        script = ["set -e", "ip link set lo up",
                  "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1",
                  "sysctl -qw net.ipv4.conf.all.promote_secondaries=1 "
                  "net.ipv4.conf.default.promote_secondaries=1"]
        for intf, addr in host.ips.items():
            script += [f"sysctl -qw net.ipv4.conf.{intf}.promote_secondaries=1",
                       f"ip addr add {addr} dev {intf}", f"ip link set {intf} up"]
        if host.role == "node":
            script.append(mount_script(host.dirs))
        script = "\n".join(script).replace("set -e", "set -ex", 1)   # trace: say what failed
        result = host.run(script, timeout=20)
        if result.returncode != 0:
            trace = [l for l in result.stderr.strip().splitlines()][-3:]
            raise RuntimeError(f"configuring {host.name} failed (exit {result.returncode}): "
                               f"{' / '.join(trace) or result.stdout.strip()[-200:]}")

    # -- power ------------------------------------------------------------------------------------
    def set_link(self, host: LabHost, network: str, up: bool) -> float:
        """Bring the switch-side port of the host's link on ``network`` up or down (the cable
        pulled at the switch: the host keeps running).  Returns the instant the kernel
        acknowledged it."""
        return self._set_ports(host, [network], up)

    def cut(self, host: LabHost) -> float:
        """Take the host's switch-side ports down: nothing leaves or reaches it any more."""
        return self._set_ports(host, self.networks_of(host), up=False)

    def _set_ports(self, host: LabHost, networks: list[str], up: bool) -> float:
        from pyroute2 import IPRoute

        ports = [self.port_name(host, network) for network in networks]
        with IPRoute() as ipr:
            for port in ports:
                index = ipr.link_lookup(ifname=port)
                if not index:
                    raise UserError(f"{host.name}: no switch port {port} (is it powered off?)")
                ipr.link("set", index=index[0], state="up" if up else "down")
            # Complete when the kernel has acknowledged every port: a frame sent before this
            # instant may still arrive; none sent after it can.
            return time.time()

    def power_off(self, host: LabHost) -> dict[str, float]:
        """sysrq-b: cut the ports, SIGKILL everything in the node, delete its links."""
        if not host.powered:
            raise UserError(f"{host.name} is already powered off")
        t_cut = self.cut(host)
        mn_host = host.host
        host.powered = False
        killed = host.kill_everything()
        t_killed = time.time()
        self._dispose_mininet_host(mn_host)
        for network in self.networks_of(host):
            _delete_link(self.port_name(host, network))
        host.host = None
        host.pid = None
        self._save_state()
        return {"t_cut": t_cut, "t_killed": t_killed, "killed": killed}

    def power_on(self, host: LabHost) -> float:
        """A fresh host with the same name, addresses and MACs, link caps re-applied."""
        if host.powered:
            raise UserError(f"{host.name} is already powered on")
        self._create_host(host)
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for network in self.networks_of(host):
                (port,) = ipr.link_lookup(ifname=self.port_name(host, network))
                (bridge,) = ipr.link_lookup(ifname=self.switch_name(network))
                ipr.link("set", index=port, master=bridge, state="up")
        self._save_state()
        return time.time()

    @staticmethod
    def _dispose_mininet_host(mn_host) -> None:
        # Hang up Mininet's shell if it still runs, close its ptys and reap it — without
        # Mininet's cmd(), which would block forever on a dead shell.
        if mn_host is None:
            return
        try:
            mn_host.terminate()
        except OSError:
            pass

    # -- teardown -------------------------------------------------------------------------------
    def teardown(self) -> None:
        """Kill every process of every host, delete links and bridges, give the slot back."""
        for host in self.nodes + self.clients:
            try:
                host.kill_everything()
            except TimeoutError as e:
                log.error("teardown: %s", e)
            host.powered = False
            self._dispose_mininet_host(host.host)
            host.host = None
        for switch in self._switches.values():
            try:
                switch.terminate()
            except OSError:
                pass
        if self.prefix:
            cleanup_prefix(self.prefix)
        if self.lease:
            self.lease.release()
            self.lease = None

    def release(self) -> None:
        """Give up ownership without touching the network (a detached cluster lives on)."""
        for host in self.nodes + self.clients:
            self._dispose_mininet_host(host.host)   # closes ptys; the holders keep the namespaces
            host.host = None
        if self.lease:
            self.lease.release()
            self.lease = None

    # -- state file -----------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"prefix": self.prefix, "slot": self.plan.slot if self.plan else None,
                "owner_pid": os.getpid(), "detached": self.detached, "workdir": str(self.workdir),
                "nodes": [h.describe() for h in self.nodes],
                "clients": [h.describe() for h in self.clients],
                "public_ips": self.public_ips() if self.plan else [],
                "bw_mbit": self.link.bw_mbit, **self.extra_state}

    def _save_state(self) -> None:
        if self.prefix:
            write_state(self.prefix, self.describe())


def _iface_name(host_name: str, index: int) -> str:
    return f"{host_name}-eth{index}"


def _mac(slot: int, kind: int, index: int) -> str:
    return f"02:c7:{slot:02x}:{kind:02x}:{index >> 8:02x}:{index & 0xff:02x}"


def _switch_port_mac(host_mac: str) -> str:
    return "02:c8" + host_mac[5:]


def _delete_link(name: str) -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if idx:
            try:
                ipr.link("del", index=idx[0])
            except NetlinkError as e:
                if e.code != 19:   # ENODEV: the kernel removed it with the namespace
                    raise


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.002)


_QUIET_TC_INTF = None


def _quiet_tc_intf():
    """Mininet's TCIntf, minus one harmless tc warning: an htb class at 100 Mbit/s or more
    makes tc say "quantum of class ... is big", which Mininet prints as "*** Error" once per
    link. Other tc output still reaches Mininet's error report."""
    global _QUIET_TC_INTF
    if _QUIET_TC_INTF is None:
        from mininet.link import TCIntf

        class QuietTCIntf(TCIntf):
            def tc(self, cmd, tc="tc"):
                output = super().tc(cmd, tc)
                return "".join(line for line in output.splitlines(True)
                               if "quantum of class" not in line and line.strip())

        _QUIET_TC_INTF = QuietTCIntf
    return _QUIET_TC_INTF

