"""A running lab cluster: the network, the daemon under test and Samba on every node.

    with LabCluster(3, daemon="ctdb", tunables="aggressive", progress=print) as cluster:
        cluster.node(0).run("ctdb status")
        cluster.leader()

``clustered_smbd`` (None: the default, clustered with either daemon) chooses whether smbd runs
with ``clustering = yes``.  ``lock`` chooses where the cluster lock lives: "file" (the default, a
file in the shared directory) or "etcd" (a lease in an etcd cluster of one member per node on the
private network, through CTDB's ctdb_etcd_lock helper: etcd_lock.py says why and how).

The machines come from a backend: Mininet (mininet_backend.py, the default) or, given an
``inventory``, real hosts over SSH (remote_backend.py).  Both offer the same small interface —
nodes and clients with ``run``/``popen``, ``build``, ``configure_daemon``, ``power_off``/``power_on``,
``daemon_log``, ``ensure_share_file``, ``teardown`` — so scenarios and faults run unchanged.

With a daemon that has no ``ctdb`` tool to ask (keepalived: ``launcher.answers_ctdb_tool`` is
False) ``ip_all()`` reads ground truth instead — which node really has each public IP configured
— and ``status()``/``leader()`` raise ``NotApplicable``: keepalived has neither node states nor a
leader.  ``healthy()`` then means every public IP is configured on exactly one powered node.

``start()`` builds the network, writes each node's configuration, starts the daemon everywhere,
waits until every node is OK and every public IP is hosted, adds the SMB user and waits until smbd
listens on every node.  Leaving the ``with`` block (also by an exception or Ctrl-C) tears
everything down; a ``detach()``ed cluster is left running for ``ctdblab down``.
"""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ctdblab.errors import UserError

from .ctdbtool import NodeStatus, parse_ip_all, parse_status
from .etcd_lock import EtcdLock, EtcdMembers, get_lab_lock
from .etcd_lock import check_installed as check_etcd_installed
from .launchers import DaemonLauncher, get_launcher
from .mininet_backend import LinkSpec, MininetCluster
from .node import LabHost
from .profiles import get_profile
from .samba import add_user_command, add_user_input

if TYPE_CHECKING:
    from .inventory import Inventory

CTDB_TIMEOUT = 10.0


class ClusterNotReady(RuntimeError):
    pass


class NotApplicable(ClusterNotReady):
    """The daemon under test has no such thing (keepalived: no node status, no leader)."""


def configured_addresses(ip_json: str, wanted: set[str]) -> set[str]:
    """The addresses of ``wanted`` in ``ip -j -4 addr`` output."""
    try:
        links = json.loads(ip_json or "[]")
        return {a.get("local") for link in links for a in link.get("addr_info", [])
                if a.get("local") in wanted}
    except (ValueError, AttributeError, TypeError):
        raise ClusterNotReady(f"unreadable `ip -j addr` output: {ip_json[:200]!r}") from None


class LabCluster:
    def __init__(self, nodes: int, *, daemon: str | DaemonLauncher = "ctdb",
                 tunables: str = "default", clients: int = 1, bw_mbit: float | None = None,
                 link_params: dict | None = None, workdir: str | Path | None = None,
                 progress: Callable[[str], None] | None = None,
                 clustered_smbd: bool | None = None, inventory: "Inventory | None" = None,
                 allow_hard_reset: bool = False, lock: str | None = None):
        if isinstance(daemon, str):
            self.launcher = get_launcher(daemon, smb_clustered=clustered_smbd,
                                         lock=get_lab_lock(lock) if lock else None)
        else:
            self.launcher = daemon
            if clustered_smbd is not None and bool(clustered_smbd) != daemon.smb_clustered:
                raise ValueError("clustered_smbd contradicts the launcher passed as daemon")
            if lock is not None and lock != daemon.lock.name:
                raise ValueError("lock contradicts the launcher passed as daemon")
        if inventory is not None and isinstance(self.launcher.lock, EtcdLock):
            raise UserError("--lock etcd runs etcd members inside Mininet nodes; on remote hosts "
                            "configure your own lock service and keep --lock file")
        self.etcd: EtcdMembers | None = None
        self.profile = get_profile(tunables)
        params = dict(link_params or {})
        if bw_mbit is not None:
            params["bw"] = bw_mbit
        self.progress = progress or (lambda msg: None)
        if inventory is not None:
            # Real machines over SSH (remote_backend.py); imported here: nothing else needs it.
            from .remote_backend import RemoteCluster

            if params:
                raise UserError("link shaping (--bw/--link) is a Mininet option; remote hosts "
                                "keep their real links")
            self.backend = RemoteCluster(inventory, nodes, clients, workdir=workdir,
                                         progress=self.progress, allow_hard_reset=allow_hard_reset)
        else:
            self.backend = MininetCluster(nodes, clients, workdir=workdir,
                                          link=LinkSpec.from_params(params), progress=self.progress)
        self.started = False

    # -- shortcuts --------------------------------------------------------------------------------
    @property
    def nodes(self) -> list[LabHost]:
        return self.backend.nodes

    @property
    def clients(self) -> list[LabHost]:
        return self.backend.clients

    def node(self, pnn: int) -> LabHost:
        return self.backend.node(pnn)

    def client(self, index: int = 0) -> LabHost:
        return self.backend.client(index)

    @property
    def plan(self):
        return self.backend.plan

    @property
    def workdir(self) -> Path:
        return self.backend.workdir

    @property
    def shared_dir(self) -> Path:
        return self.backend.shared_dir

    def public_ips(self) -> list[str]:
        return self.backend.public_ips()

    # -- life cycle -------------------------------------------------------------------------------
    def __enter__(self) -> "LabCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> None:
        self.backend.check_prerequisites(self.launcher)
        if isinstance(self.launcher.lock, EtcdLock):
            check_etcd_installed()
        t0 = time.monotonic()
        self.backend.extra_state = {"daemon": self.launcher.name, "tunables": self.profile.name,
                                    "smb_clustered": self.launcher.smb_clustered,
                                    "lock": self.launcher.lock.name}
        self.backend.build(configure=self._configure)
        if isinstance(self.launcher.lock, EtcdLock):
            self._start_etcd()
        with ThreadPoolExecutor(max_workers=8) as pool:    # pyctdbd takes ~0.5 s to daemonise
            list(pool.map(self.launcher.start, self.nodes))
        self.progress(f"{self.launcher.name} started on {len(self.nodes)} nodes; waiting until "
                      f"every node is OK and every public IP is hosted")
        self.wait_healthy(timeout=timeout)
        t_healthy = time.monotonic() - t0
        self.setup_samba(timeout=60)
        self.started = True
        self.progress(f"cluster healthy after {t_healthy:.1f} s, smbd serving on every node after "
                      f"{time.monotonic() - t0:.1f} s")

    def stop(self) -> None:
        """Tear everything down — unless the cluster was detached, which then just lets go."""
        if self.backend.detached:
            self.backend.release()
        else:
            self.backend.teardown()
            if self.etcd is not None:            # its members died with their nodes
                self.etcd.remove_data(self.nodes)
        self.started = False

    def _start_etcd(self) -> None:
        """One etcd member per node, on the private network; wait until each has quorum."""
        ips = [self.plan.private_ip(n.index) for n in self.nodes]
        self.etcd = EtcdMembers(ips, token=f"ctdblab-{self.backend.prefix}")
        for node in self.nodes:
            self.etcd.start(node)
        took = self.etcd.wait_healthy(self.nodes)
        self.progress(f"etcd cluster of {len(self.nodes)} members healthy after {took:.1f} s")

    def detach(self) -> None:
        """Leave the cluster running after this process exits (``ctdblab down`` removes it)."""
        self.backend.detached = True
        self.backend._save_state()

    def _configure(self, node: LabHost) -> None:
        self.backend.configure_daemon(node, self.launcher, self.profile)

    # -- files on the nodes -----------------------------------------------------------------------
    def daemon_log(self, node: LabHost) -> Path:
        """A local copy of the node's daemon log, current as of this call (for parsing)."""
        return self.backend.daemon_log(node, self.launcher)

    def ensure_share_file(self, name: str, size: int) -> None:
        """A file of ``size`` random bytes in the cluster filesystem's ``[share]``, made once."""
        self.backend.ensure_share_file(name, size)

    # -- samba ------------------------------------------------------------------------------------
    def setup_samba(self, timeout: float = 60.0, nodes: list[LabHost] | None = None) -> None:
        """Add the SMB user (per node: passdb is per node unless smbd is clustered) and wait
        until smbd listens on 445 — the daemon's 50.samba event script starts it."""
        def add_user(node: LabHost) -> None:
            result = node.run(add_user_command(), input=add_user_input(), timeout=30)
            if result.returncode != 0:
                raise ClusterNotReady(f"smbpasswd failed on {node.name}: "
                                      f"{(result.stderr or result.stdout).strip()}")

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(add_user, nodes or self.nodes))
        self.wait_until(lambda: all(self.smbd_listening(n) for n in nodes or self.nodes),
                        timeout, "smbd listening on port 445 on every node")

    @staticmethod
    def smbd_listening(node: LabHost) -> bool:
        result = node.run(["ss", "-ltnH", "sport = :445"], timeout=10)
        return result.returncode == 0 and bool(result.stdout.strip())

    # -- asking the daemon (through the stock ctdb tool, inside a node) ---------------------------
    def ctdb(self, pnn: int, *args: str, timeout: float = CTDB_TIMEOUT) -> subprocess.CompletedProcess:
        self._need_ctdb_tool(f"ctdb {' '.join(args)}")
        return self.node(pnn).run(["ctdb", *args], timeout=timeout)

    def _need_ctdb_tool(self, what: str) -> None:
        if not self.launcher.answers_ctdb_tool:
            raise NotApplicable(f"{what}: {self.launcher.name} has no ctdb tool to ask")

    def any_powered(self) -> LabHost:
        for node in self.nodes:
            if node.powered:
                return node
        raise ClusterNotReady("every node is powered off")

    def status(self, pnn: int | None = None) -> list[NodeStatus]:
        self._need_ctdb_tool("node status")
        node = self.node(pnn) if pnn is not None else self.any_powered()
        result = node.run(["ctdb", "-X", "status"], timeout=CTDB_TIMEOUT)
        if result.returncode != 0 and "|" not in result.stdout:
            raise ClusterNotReady(f"ctdb status on {node.name}: {result.stderr.strip()}")
        return parse_status(result.stdout)

    def ip_all(self, pnn: int | None = None) -> dict[str, int]:
        """{public IP: PNN hosting it, -1 for none} as node ``pnn``'s daemon sees it; without a
        ctdb tool, ground truth (``pnn`` is then ignored: no node has a view of its own)."""
        if not self.launcher.answers_ctdb_tool:
            return self.configured_owners()
        node = self.node(pnn) if pnn is not None else self.any_powered()
        result = node.run(["ctdb", "-X", "ip", "all"], timeout=CTDB_TIMEOUT)
        if result.returncode != 0:
            raise ClusterNotReady(f"ctdb ip all on {node.name}: {result.stderr.strip()}")
        return parse_ip_all(result.stdout)

    def leader(self, pnn: int | None = None) -> int:
        self._need_ctdb_tool("leader")
        node = self.node(pnn) if pnn is not None else self.any_powered()
        result = node.run(["ctdb", "leader"], timeout=CTDB_TIMEOUT)
        if result.returncode != 0:
            raise ClusterNotReady(f"ctdb leader on {node.name}: {result.stderr.strip()}")
        return int(result.stdout.strip())

    def configured_public_ips(self, node: LabHost) -> set[str]:
        """The public IPs really configured on a powered node (``ip -4 addr`` inside it)."""
        result = node.run(["ip", "-j", "-4", "addr", "show", "dev", f"{node.name}-eth1"],
                          timeout=CTDB_TIMEOUT)
        if result.returncode != 0:
            raise ClusterNotReady(f"ip addr on {node.name}: {result.stderr.strip()}")
        return configured_addresses(result.stdout, set(self.public_ips()))

    def configured_owners(self) -> dict[str, int]:
        """Ground truth {public IP: lowest PNN that has it configured, or -1}.  (Two owners at
        once — a split brain — show as the lowest; the soak's truth sampler sees them all.)"""
        owners = {ip: -1 for ip in self.public_ips()}
        for node in self.nodes:
            if not node.powered:
                continue
            for ip in self.configured_public_ips(node):
                if owners[ip] == -1:
                    owners[ip] = node.index
        return owners

    def healthy(self) -> bool:
        """Every powered node OK (as seen from each of them) and every public IP hosted.
        Without a ctdb tool: every public IP configured on exactly one powered node."""
        if not self.launcher.answers_ctdb_tool:
            try:
                counts = {ip: 0 for ip in self.public_ips()}
                for node in self.nodes:
                    for ip in (self.configured_public_ips(node) if node.powered else ()):
                        counts[ip] += 1
                return all(n == 1 for n in counts.values())
            except (ClusterNotReady, subprocess.TimeoutExpired):
                return False
        try:
            powered = [n for n in self.nodes if n.powered]
            for node in powered:
                status = self.status(node.index)
                by_pnn = {s.pnn: s for s in status}
                if any(not by_pnn[n.index].ok for n in powered if n.index in by_pnn):
                    return False
            ips = self.ip_all()
            return len(ips) == len(self.public_ips()) and all(p >= 0 for p in ips.values())
        except (ClusterNotReady, ValueError, subprocess.TimeoutExpired, KeyError):
            return False

    def ip_per_node(self, timeout: float = 60.0) -> dict[int, str]:
        """Wait until every node hosts a public IP (a node that became healthy last may get its
        share only at the next takeover run); then {pnn: the first IP it hosts}."""
        def spread() -> dict[int, str]:
            try:
                owners = self.ip_all()
            except (ClusterNotReady, subprocess.TimeoutExpired):
                return {}
            return {n.index: min(ip for ip, pnn in owners.items() if pnn == n.index)
                    for n in self.nodes if n.index in owners.values()}

        self.wait_until(lambda: len(spread()) == len(self.nodes), timeout,
                        "every node hosting a public IP", interval=0.5)
        return spread()

    def wait_healthy(self, timeout: float = 180.0) -> float:
        return self.wait_until(self.healthy, timeout, "every node OK and every public IP hosted")

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str,
                   interval: float = 0.2) -> float:
        t0 = time.monotonic()
        deadline = t0 + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise ClusterNotReady(f"timed out after {timeout:.0f} s waiting for {what}; "
                                      f"node logs are under {self.workdir / 'nodes'}")
            time.sleep(interval)
        return time.monotonic() - t0

    # -- power --------------------------------------------------------------------------------------
    def power_off(self, pnn: int) -> dict[str, float]:
        return self.backend.power_off(self.node(pnn))

    def power_on(self, pnn: int) -> float:
        """Fresh node, same identity; the daemon is started again (it rejoins by itself)."""
        node = self.node(pnn)
        t_on = self.backend.power_on(node)
        if self.etcd is not None:
            # Its member rejoins from its data dir; not awaited: a rejoining member that has no
            # quorum yet is something the lock helper must cope with, as on a real node.
            self.etcd.start(node)
        self.launcher.start(node)
        return t_on
