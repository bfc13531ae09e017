"""Daemon launchers: the daemon under test, behind one interface.

``ctdb``     Debian's real ctdbd 4.17 in production mode (no CTDB_TEST_MODE), configured through
             the node's own /etc/ctdb (an overlay, see node.py), with Debian's stock event scripts
             00.ctdb, 01.reclock, 05.system, 10.interface plus our systemd-free 50.samba, and a
             clustered smbd.
``pyctdbd``  this project's daemon, on the very same files, with our 10.interface and 50.samba
             scripts and Debian's 00.ctdb, and a clustered smbd.
``keepalived``  Debian's keepalived 2.2.7 (VRRPv3), the floating-IP tool operators pick instead:
             one config file per node in the node's run directory (keepalived_conf.py says how
             it is set up), and a standalone smbd — keepalived has no clustered database.  It
             has no ``ctdb`` tool either: ``answers_ctdb_tool`` is False, and the lab reads the
             IPs' owners from what each node really has configured (lab.py).

``smb_clustered`` (a launcher argument; ``ctdblab up --no-clustered-smbd``, ``LabCluster(...,
clustered_smbd=False)``) overrides the default (clustered).  With clustered smbd a pyctdbd node also
runs Debian's stock 00.ctdb, as a real ctdbd node does: its ``init`` checks the persistent
databases with tdbtool (refusing to start on a corrupt one) and its ``startup`` attaches the
persistent ``ctdb.tdb`` (``ctdb attach ctdb.tdb persistent``), the sixteenth database of a
clustered Samba node.  Non-clustered pyctdbd nodes keep their scripts as before.

A launcher writes a node's configuration (before the node's mounts exist, so straight into the
overlay's upper layer on the host) and starts the daemon inside the node.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ctdblab.errors import UserError

from .addressing import PREFIXLEN
from .etcd_lock import FileLock, LabLock
from .keepalived_conf import keepalived_conf
from .node import LabHost
from .profiles import Profile, tunables_file_text
from .samba import smb_conf
from .snapshots import SnapshotLayout

STOCK_EVENTS = Path("/usr/share/ctdb/events/legacy")
SHIPPED_EVENTS = Path(__file__).resolve().parent.parent / "daemon" / "events" / "scripts"
LOG_FILE = "/var/log/ctdb/log.ctdb"          # inside the node; node.dirs.log / "ctdb" on the host


@dataclass(frozen=True)
class NodeConfig:
    """Everything a launcher writes on a node: /etc/ctdb files, smb.conf, enabled event scripts
    (Debian's by name from STOCK_EVENTS, ours by name from the shipped scripts directory)."""

    ctdb_files: dict[str, str]        # file name in /etc/ctdb -> text
    smb_conf: str
    stock_scripts: tuple[str, ...]
    shipped_scripts: tuple[str, ...]


class DaemonLauncher:
    name = ""
    smb_clustered = False            # the daemon's default; an instance may override it
    answers_ctdb_tool = True         # `ctdb status`, `ip all`, `leader`, `addtickle` work on a node
    sends_tickles = True             # resets clients of a moved IP (tickle ACKs)
    # Failover metrics that cannot exist with this daemon, and why (results say "n/a", not null).
    not_applicable: dict[str, str] = {}
    stock_scripts: tuple[str, ...] = ()
    shipped_scripts: tuple[str, ...] = ()

    def __init__(self, smb_clustered: bool | None = None, lock: LabLock | None = None):
        if smb_clustered is not None:
            self.smb_clustered = bool(smb_clustered)
        self.lock = lock or FileLock()     # where the cluster lock lives (etcd_lock.py)
        #: Extra environment for the daemon on every start (e.g. a fault-injection setting).
        self.env: dict[str, str] = {}

    def enabled_stock_scripts(self) -> tuple[str, ...]:
        return self.stock_scripts

    def check_installed(self) -> None:
        raise NotImplementedError

    def start_command(self, node: LabHost) -> list[str]:
        raise NotImplementedError

    # -- configuration -------------------------------------------------------------------------
    def node_config(self, *, node_ips: list[str], public_addresses: list[str], shared_dir: Path,
                    profile: Profile, pnn: int = 0) -> NodeConfig:
        """A node's files, whichever backend puts them in place.  ``public_addresses`` are the
        lines of CTDB's public_addresses file (``IP/PREFIXLEN IFACE``); ``shared_dir`` is the
        cluster filesystem's path as the nodes see it; ``pnn`` the node's (its lock files may
        name its own address)."""
        files = {
            "nodes": "".join(f"{ip}\n" for ip in node_ips),
            "public_addresses": "".join(f"{line}\n" for line in public_addresses),
            "ctdb.tunables": tunables_file_text(profile, pyctdbd=self.name == "pyctdbd"),
            "ctdb.conf": self.ctdb_conf(shared_dir, profile),
            "script.options": "# written by ctdblab\nCTDB_SAMBA_CHECK_PORTS=445\n",
            **self.lock.node_files(pnn, node_ips),
        }
        snapshots = SnapshotLayout(shared_dir)
        return NodeConfig(ctdb_files=files,
                          smb_conf=smb_conf(shared_dir / "share", clustered=self.smb_clustered,
                                            snapshots=snapshots),
                          stock_scripts=self.enabled_stock_scripts(),
                          shipped_scripts=self.shipped_scripts)

    def configure(self, node: LabHost, *, node_ips: list[str], public_ips: list[str],
                  public_prefixlen: int, shared_dir: Path, profile: Profile) -> None:
        """Write a Mininet node's files into its overlay's upper layers on this machine."""
        iface = f"{node.name}-eth1"
        config = self.node_config(
            node_ips=node_ips, public_addresses=[f"{ip}/{public_prefixlen} {iface}" for ip in public_ips],
            shared_dir=shared_dir, profile=profile, pnn=node.index)
        etc = node.dirs.etc_ctdb
        for name, text in config.ctdb_files.items():
            (etc / name).write_text(text)
        self._enable_scripts(node.dirs.events)
        SnapshotLayout(shared_dir).create()
        (node.dirs.etc_samba / "smb.conf").write_text(config.smb_conf)

    def ctdb_conf(self, shared_dir: Path, profile: Profile) -> str:
        cluster = {"cluster lock": self.lock.setting(shared_dir), **profile.cluster_options}
        lines = ["# written by ctdblab", "[logging]", f"    location = file:{LOG_FILE}",
                 "    log level = NOTICE", "[cluster]"]
        lines += [f"    {k} = {v}" for k, v in cluster.items()]
        return "\n".join(lines) + "\n"

    def _enable_scripts(self, events_dir: Path) -> None:
        for old in events_dir.iterdir():
            old.unlink()
        for name in self.enabled_stock_scripts():
            (events_dir / f"{name}.script").symlink_to(STOCK_EVENTS / f"{name}.script")
        for name in self.shipped_scripts:
            source = SHIPPED_EVENTS / f"{name}.script"
            if not source.exists():
                raise UserError(f"shipped event script {source} is missing")
            (events_dir / f"{name}.script").symlink_to(source)

    # -- running -----------------------------------------------------------------------------------
    def start_command_for(self, node: LabHost) -> list[str]:
        """The command that starts the daemon on ``node`` (a launcher that installs builds per
        node, cluster/builds.py, overrides it)."""
        return self.start_command(node)

    def start(self, node: LabHost) -> None:
        command = self.start_command_for(node)
        if self.env:
            command = ["env", *(f"{k}={v}" for k, v in sorted(self.env.items())), *command]
        result = node.run(command, timeout=30)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"{self.name} failed to start on {node.name} "
                               f"(exit {result.returncode}): {' / '.join(tail)}")

    def log_path(self, node: LabHost) -> Path:
        return node.dirs.log / "ctdb" / Path(LOG_FILE).name


class CtdbLauncher(DaemonLauncher):
    """Debian's real ctdbd (the reference)."""

    name = "ctdb"
    smb_clustered = True
    stock_scripts = ("00.ctdb", "01.reclock", "05.system", "10.interface")
    shipped_scripts = ("50.samba",)

    def check_installed(self) -> None:
        for tool in ("ctdbd", "ctdb", "smbd", "smbpasswd"):
            if shutil.which(tool) is None:
                raise UserError(f"`{tool}` not found: install Debian's ctdb and samba packages "
                                "(./ctdblab.sh does it)")
        for name in self.enabled_stock_scripts():
            if not (STOCK_EVENTS / f"{name}.script").exists():
                raise UserError(f"{STOCK_EVENTS}/{name}.script missing: is the ctdb package complete?")

    def start_command(self, node: LabHost) -> list[str]:
        return [node.programs.get("ctdbd", "ctdbd")]


class PyctdbdLauncher(DaemonLauncher):
    """This project's daemon."""

    name = "pyctdbd"
    smb_clustered = True             # as with ctdbd: both daemons serve the same clustered Samba
    shipped_scripts = ("10.interface", "50.samba")
    clustered_stock_scripts = ("00.ctdb",)     # what a clustered smbd node gets from stock CTDB

    def enabled_stock_scripts(self) -> tuple[str, ...]:
        return self.clustered_stock_scripts if self.smb_clustered else ()

    def executable(self) -> str:
        candidate = Path(sys.executable).parent / "pyctdbd"
        if candidate.exists():
            return str(candidate)
        found = shutil.which("pyctdbd")
        if found is None:
            raise UserError("`pyctdbd` not found: run ./ctdblab.sh once to install it")
        return found

    def check_installed(self) -> None:
        self.executable()
        for tool in ("ctdb", "smbd", "smbpasswd"):
            if shutil.which(tool) is None:
                raise UserError(f"`{tool}` not found: install Debian's ctdb and samba packages "
                                "(./ctdblab.sh does it)")
        for name in self.enabled_stock_scripts():
            if not (STOCK_EVENTS / f"{name}.script").exists():
                raise UserError(f"{STOCK_EVENTS}/{name}.script missing: is the ctdb package complete?")

    def start_command(self, node: LabHost) -> list[str]:
        """The host's own pyctdbd when it has one (a remote host: the backend's copy), else
        the one next to this Python (a Mininet node shares this machine's files)."""
        return [node.programs.get("pyctdbd") or self.executable()]


class KeepalivedLauncher(DaemonLauncher):
    """keepalived: VRRPv3, one instance per public IP; smbd started next to it."""

    name = "keepalived"
    smb_clustered = False
    answers_ctdb_tool = False
    sends_tickles = False
    not_applicable = {
        "detect_s": "keepalived has no failure detector apart from the master-down timer, whose "
                    "expiry is the takeover itself",
        "rejoin_s": "keepalived has no membership: nothing says a node rejoined (failback_s is "
                    "when it took its IP back)",
        "tickled_reset_s": "keepalived keeps no tickle list (there is no `ctdb addtickle`)",
    }
    RUN_DIR = "/run/ctdb"            # inside the node: its volatile tmpfs, empty after a reset
    prefixlen = PREFIXLEN            # of the public IPs; configure() sets what it was given
    START_TIMEOUT_S = 10.0

    def __init__(self, smb_clustered: bool | None = None, lock: LabLock | None = None):
        if smb_clustered:
            raise UserError("keepalived has no clustered database: smbd runs standalone with it "
                            "(drop --clustered-smbd)")
        if lock is not None and not isinstance(lock, FileLock):
            raise UserError(f"keepalived takes no cluster lock: --lock {lock.name} is for the "
                            "CTDB daemons (ctdb, pyctdbd)")
        super().__init__(False)

    def check_installed(self) -> None:
        for tool in ("keepalived", "smbd", "smbpasswd"):
            if shutil.which(tool) is None:
                raise UserError(f"`{tool}` not found: install Debian's keepalived and samba "
                                "packages (./ctdblab.sh does it)")

    @staticmethod
    def conf_path(node: LabHost) -> Path:
        return node.dirs.root / "keepalived.conf"

    NOTIFY_FIFO = f"{RUN_DIR}/keepalived-notify.fifo"

    def log_path(self, node: LabHost) -> Path:
        return node.dirs.log / "keepalived" / "keepalived.log"

    def configure(self, node: LabHost, *, node_ips: list[str], public_ips: list[str],
                  public_prefixlen: int, shared_dir: Path, profile: Profile) -> None:
        self.log_path(node).parent.mkdir(parents=True, exist_ok=True)
        self.prefixlen = public_prefixlen
        self.conf_path(node).write_text(keepalived_conf(
            node.index, node_ips, public_ips, private_iface=f"{node.name}-eth0",
            public_iface=f"{node.name}-eth1", prefixlen=public_prefixlen,
            advert_s=profile.vrrp_advert_s, notify_fifo=self.NOTIFY_FIFO))
        snapshots = SnapshotLayout(shared_dir)
        snapshots.create()
        (node.dirs.etc_samba / "smb.conf").write_text(
            smb_conf(shared_dir / "share", clustered=False, snapshots=snapshots))

    def start_command(self, node: LabHost) -> list[str]:
        raise NotImplementedError("keepalived is started by start(node): it needs the node's paths")

    def node_start_script(self, node: LabHost) -> str:
        """Start smbd (no event script does it here) unless it runs, the reader of keepalived's
        notify FIFO (keepalived_notify.py), then keepalived in the foreground of its own
        session, its console log appended to the node's log."""
        q = shlex.quote
        run, fifo, log = self.RUN_DIR, self.NOTIFY_FIFO, q(str(self.log_path(node)))
        reader = [sys.executable, "-m", "ctdblab.cluster.keepalived_notify", fifo,
                  str(self.log_path(node)), str(self.prefixlen), f"{node.name}-eth1"]
        return "\n".join([
            "set -e",
            '[ -s /run/samba/smbd.pid ] && kill -0 "$(cat /run/samba/smbd.pid)" 2>/dev/null || smbd -D',
            f"[ -p {fifo} ] || mkfifo -m 600 {fifo}",
            f"setsid {shlex.join(reader)} >>{log} 2>&1 </dev/null &",
            f"setsid keepalived -n -l -D -G -P -f {q(str(self.conf_path(node)))} "
            f"-p {run}/keepalived.pid -r {run}/keepalived_vrrp.pid "
            f"-c {run}/keepalived_checkers.pid -b {run}/keepalived_bfd.pid "
            f">>{log} 2>&1 </dev/null &",
        ])

    def start(self, node: LabHost) -> None:
        result = node.run(self.node_start_script(node), timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"keepalived/smbd failed to start on {node.name} (exit "
                               f"{result.returncode}): {(result.stderr or result.stdout).strip()}")
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while time.monotonic() < deadline:
            if node.run(["test", "-s", f"{self.RUN_DIR}/keepalived_vrrp.pid"], timeout=10).returncode == 0:
                return
            time.sleep(0.1)
        tail = self.log_path(node).read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"keepalived's VRRP process did not start on {node.name} within "
                           f"{self.START_TIMEOUT_S:g} s: {' / '.join(tail)}")


LAUNCHERS = {"ctdb": CtdbLauncher, "pyctdbd": PyctdbdLauncher, "keepalived": KeepalivedLauncher}


def get_launcher(name: str, *, smb_clustered: bool | None = None,
                 lock: LabLock | None = None) -> DaemonLauncher:
    """The launcher of daemon ``name``; ``smb_clustered`` None keeps the daemon's default;
    ``lock`` None keeps the shared-directory file lock."""
    try:
        cls = LAUNCHERS[name]
    except KeyError:
        raise UserError(f"unknown daemon {name!r}; choose one of {', '.join(LAUNCHERS)}") from None
    return cls(smb_clustered=smb_clustered, lock=lock)
