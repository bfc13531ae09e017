"""Daemon launchers: the daemon under test, behind one interface.

``ctdb``     Debian's real ctdbd 4.17 in production mode (no CTDB_TEST_MODE), configured through
             the node's own /etc/ctdb (an overlay, see node.py), with Debian's stock event scripts
             00.ctdb, 01.reclock, 05.system, 10.interface plus our systemd-free 50.samba, and a
             clustered smbd.
``pyctdbd``  this project's daemon, on the very same files, with our 10.interface and 50.samba
             scripts and Debian's 00.ctdb, and a clustered smbd.

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

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ctdblab.errors import UserError

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
    stock_scripts: tuple[str, ...] = ()
    shipped_scripts: tuple[str, ...] = ()

    def __init__(self, smb_clustered: bool | None = None):
        if smb_clustered is not None:
            self.smb_clustered = bool(smb_clustered)

    def enabled_stock_scripts(self) -> tuple[str, ...]:
        return self.stock_scripts

    def check_installed(self) -> None:
        raise NotImplementedError

    def start_command(self, node: LabHost) -> list[str]:
        raise NotImplementedError

    # -- configuration -------------------------------------------------------------------------
    def node_config(self, *, node_ips: list[str], public_addresses: list[str], shared_dir: Path,
                    profile: Profile) -> NodeConfig:
        """A node's files, whichever backend puts them in place.  ``public_addresses`` are the
        lines of CTDB's public_addresses file (``IP/PREFIXLEN IFACE``); ``shared_dir`` is the
        cluster filesystem's path as the nodes see it."""
        files = {
            "nodes": "".join(f"{ip}\n" for ip in node_ips),
            "public_addresses": "".join(f"{line}\n" for line in public_addresses),
            "ctdb.tunables": tunables_file_text(profile, pyctdbd=self.name == "pyctdbd"),
            "ctdb.conf": self.ctdb_conf(shared_dir, profile),
            "script.options": "# written by ctdblab\nCTDB_SAMBA_CHECK_PORTS=445\n",
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
            shared_dir=shared_dir, profile=profile)
        etc = node.dirs.etc_ctdb
        for name, text in config.ctdb_files.items():
            (etc / name).write_text(text)
        self._enable_scripts(node.dirs.events)
        SnapshotLayout(shared_dir).create()
        (node.dirs.etc_samba / "smb.conf").write_text(config.smb_conf)

    def ctdb_conf(self, shared_dir: Path, profile: Profile) -> str:
        cluster = {"cluster lock": str(shared_dir / ".ctdb" / "reclock"), **profile.cluster_options}
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
    def start(self, node: LabHost) -> None:
        result = node.run(self.start_command(node), timeout=30)
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


LAUNCHERS = {"ctdb": CtdbLauncher, "pyctdbd": PyctdbdLauncher}


def get_launcher(name: str, *, smb_clustered: bool | None = None) -> DaemonLauncher:
    """The launcher of daemon ``name``; ``smb_clustered`` None keeps the daemon's default."""
    try:
        return LAUNCHERS[name](smb_clustered=smb_clustered)
    except KeyError:
        raise UserError(f"unknown daemon {name!r}; choose one of {', '.join(LAUNCHERS)}") from None
