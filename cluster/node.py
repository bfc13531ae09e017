"""One machine of the lab: a Mininet host, its directories and its mounts.

Inside every cluster node the package's default paths are the node's own, so Debian's stock
``ctdb``, ``ctdbd``, ``smbd`` and ``smbclient`` (and pyctdbd) find that node's daemon and Samba
exactly as on a real host::

    /etc/ctdb            overlay: the installed /etc/ctdb below, the node's files on top
    /etc/ctdb/events/legacy   the node's enabled event scripts
    /etc/samba           overlay with the node's smb.conf
    /run/ctdb /run/samba /var/cache/samba /var/lib/ctdb/{volatile,state}
                         volatile: a tmpfs, empty again after every power-on
    /var/lib/ctdb /var/lib/samba
                         durable: survive a reset, like a local disk
    /var/log/ctdb /var/log/samba
                         the node's logs (durable; readable from the host for parsing)

The mounts live in the node's private mount namespace and never show in the host's.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .procs import (DEFAULT_TIMEOUT, kill_netns, netns_of, popen_in, program_name, run_in,
                    signal_pids, start_time, stop_process)


@dataclass
class NodeDirs:
    """A node's directories on the host (under the cluster's work directory)."""

    root: Path

    @property
    def etc_ctdb(self) -> Path:        # overlay upper layer: nodes, ctdb.conf, ...
        return self.root / "etc-ctdb" / "upper"

    @property
    def etc_samba(self) -> Path:
        return self.root / "etc-samba" / "upper"

    @property
    def events(self) -> Path:          # bound over /etc/ctdb/events/legacy
        return self.root / "events-legacy"

    @property
    def volatile(self) -> Path:        # a tmpfs is mounted here inside the node
        return self.root / "volatile"

    @property
    def durable(self) -> Path:
        return self.root / "durable"

    @property
    def log(self) -> Path:
        return self.root / "log"

    def create(self) -> None:
        for d in (self.etc_ctdb, self.etc_ctdb.parent / "work", self.etc_samba,
                  self.etc_samba.parent / "work", self.events, self.volatile,
                  self.durable / "ctdb" / "persistent", self.durable / "samba" / "private",
                  self.log / "ctdb", self.log / "samba"):
            d.mkdir(parents=True, exist_ok=True)
        (self.durable / "samba" / "private").chmod(0o700)


# (mount point inside the node, source relative to the node dir) — order matters: parents first.
_VOLATILE_BINDS = [
    ("/run/ctdb", "run-ctdb"),
    ("/run/samba", "run-samba"),
    ("/var/cache/samba", "samba-cache"),
]
_DURABLE_BINDS = [
    ("/var/lib/ctdb", "ctdb"),
    ("/var/lib/samba", "samba"),
]
_VOLATILE_UNDER_DURABLE = [
    ("/var/lib/ctdb/volatile", "ctdb-volatile"),
    ("/var/lib/ctdb/state", "ctdb-state"),
]
_LOG_BINDS = [
    ("/var/log/ctdb", "ctdb"),
    ("/var/log/samba", "samba"),
]


def mount_script(dirs: NodeDirs) -> str:
    """The shell commands that set up a node's mount namespace (run inside the node)."""
    q = shlex.quote
    lines = ["set -e", f"mount -t tmpfs -o mode=0755 ctdblab-volatile {q(str(dirs.volatile))}"]
    for target, name in _VOLATILE_BINDS + _VOLATILE_UNDER_DURABLE:
        lines.append(f"mkdir -p {q(str(dirs.volatile / name))}")
    for target, name in _DURABLE_BINDS:
        lines.append(f"mkdir -p {q(target)} && mount --bind {q(str(dirs.durable / name))} {q(target)}")
    for target, name in _VOLATILE_BINDS + _VOLATILE_UNDER_DURABLE:
        lines.append(f"mkdir -p {q(target)} && mount --bind {q(str(dirs.volatile / name))} {q(target)}")
    for target, name in _LOG_BINDS:
        lines.append(f"mkdir -p {q(target)} && mount --bind {q(str(dirs.log / name))} {q(target)}")
    for target, layer in (("/etc/ctdb", dirs.etc_ctdb), ("/etc/samba", dirs.etc_samba)):
        work = layer.parent / "work"
        lines.append(f"mount -t overlay overlay -o lowerdir={q(target)},upperdir={q(str(layer))},"
                     f"workdir={q(str(work))} {q(target)}")
    lines.append(f"mkdir -p /etc/ctdb/events/legacy && "
                 f"mount --bind {q(str(dirs.events))} /etc/ctdb/events/legacy")
    return "\n".join(lines)


@dataclass
class LabHost:
    """A lab machine (cluster node or client) as a Mininet host plus the lab's bookkeeping.

    ``pid`` is a holder process that keeps the node's namespaces alive independently of
    Mininet's shell (so a ``--detach``ed cluster outlives the process that built it); every
    command enters the node through it, with a timeout.
    """

    name: str
    index: int                       # PNN for nodes, 0-based index for clients
    role: str                        # "node" or "client"
    ips: dict[str, str]              # interface name -> address/prefixlen
    macs: dict[str, str]             # interface name -> MAC
    dirs: NodeDirs | None = None
    host: object | None = None       # mininet.node.Host while powered
    pid: int | None = None
    netns: str | None = None
    holder: subprocess.Popen | None = None
    powered: bool = False
    background: list[subprocess.Popen] = field(default_factory=list)
    programs: dict[str, str] = field(default_factory=dict)   # none: a node runs this machine's

    # -- running things inside ------------------------------------------------------------------
    def run(self, command: str | Sequence[str], *, timeout: float = DEFAULT_TIMEOUT,
            check: bool = False, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside this host and wait at most ``timeout`` seconds."""
        return run_in(self._live_pid(), command, timeout=timeout, check=check, input=input)

    def popen(self, command: str | Sequence[str], **kwargs) -> subprocess.Popen:
        """Start a background process inside this host; it is killed at power-off/teardown."""
        proc = popen_in(self._live_pid(), command, **kwargs)
        self.background.append(proc)
        return proc

    def stop_process(self, proc: subprocess.Popen, timeout: float = 3.0) -> None:
        """SIGTERM a process started with ``popen`` (SIGKILL after ``timeout``)."""
        stop_process(proc, timeout)

    @staticmethod
    def python_argv() -> list[str]:
        """How to start the lab's Python modules inside (``+ ["-m", module]``): this
        machine's interpreter, whose files a Mininet node shares."""
        return [sys.executable]

    def _live_pid(self) -> int:
        if not self.powered or self.pid is None:
            raise RuntimeError(f"{self.name} is powered off")
        return self.pid

    def processes(self) -> list[int]:
        from .procs import pids_in_netns
        return pids_in_netns(self.netns) if self.netns else []

    def find_programs(self, names: Sequence[str]) -> list[tuple[int, str, int]]:
        """(pid, program, start time) of this host's processes running one of ``names``."""
        found = []
        for pid in self.processes():
            name = program_name(pid)
            if name in names:
                found.append((pid, name, start_time(pid)))
        return found

    @staticmethod
    def signal_processes(pids: Sequence[int], sig: int) -> None:
        signal_pids(pids, sig)

    def alive(self) -> bool:
        return self.pid is not None and netns_of(self.pid) == self.netns

    def kill_everything(self) -> int:
        """SIGKILL every process of this host (by namespace), including the holder."""
        if not self.netns:
            return 0
        killed = kill_netns(self.netns)
        self._reap()
        return killed

    def _reap(self) -> None:
        for proc in self.background + ([self.holder] if self.holder else []):
            try:
                proc.wait(0.5)
            except (subprocess.TimeoutExpired, ChildProcessError):
                pass
        self.background.clear()
        self.holder = None

    def describe(self) -> dict:
        return {"name": self.name, "index": self.index, "role": self.role, "pid": self.pid,
                "netns": self.netns, "ips": self.ips, "macs": self.macs,
                "dir": str(self.dirs.root) if self.dirs else None}


def start_holder(shell_pid: int) -> subprocess.Popen:
    """A process that keeps a node's namespaces alive: ``sleep infinity`` inside the node."""
    return subprocess.Popen(["mnexec", "-a", str(shell_pid), "sleep", "infinity"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
