"""The lab's cluster lock as a lease in an etcd cluster (``--lock etcd``), for both daemons.

With ``--lock file`` (the default) the cluster lock is a file in the shared directory, which both
sides of a partition reach and which a frozen holder keeps for ever.  ``--lock etcd`` puts it
where a real cluster keeps a lease-based lock:

* **One etcd member in each cluster node's namespace**, listening on the node's *private* address
  only (clients on :2379, peers on :2380).  Co-located members are the common small-cluster
  layout, and they make the lock follow the private network exactly: a node cut off from the
  majority is in an etcd minority too, so it can neither renew its lease nor take the lock; the
  majority keeps quorum (3 or 5 nodes: a minority of 1 or 2).  Nothing on the public network or in
  the root namespace can reach a member.  A powered-off node loses its member; power-on restarts
  it on the same data directory (the node's durable dir), so it rejoins as the same member.
* **Both daemons run CTDB's own helper**, Debian's ``/usr/libexec/ctdb/ctdb_etcd_lock``
  (``cluster lock = !/usr/bin/python3 /usr/libexec/ctdb/ctdb_etcd_lock``).  It is started through
  /usr/bin/python3 because its ``#!/usr/bin/env python3`` would find whichever python3 comes first
  on the daemon's PATH (here a pyenv shim without the ``etcd`` module).
* **Each node points the helper at its local member** through ``/etc/ctdb/etcd``, the helper's
  default config file (``$CTDB_BASE/etcd``): the node's own /etc/ctdb overlay (node.py), so the
  machine's real /etc is never touched.

Lease figures (``LOCK_TTL_S``, ``REFRESH_S``, ``READ_TIMEOUT_S``) and why:
the helper re-writes its key with a TTL of ``LOCK_TTL_S`` every ``REFRESH_S`` and gives up (exits,
so the daemon hears "lock lost") when a write does not answer within ``READ_TIMEOUT_S`` (a
minority member never answers a write).  A cut-off holder therefore knows it lost the lock at most
REFRESH_S + READ_TIMEOUT_S ≈ 2 s after its last renewal, while the majority can take it only
LOCK_TTL_S = 3 s after that renewal (etcd's v2 store expires keys on the leader's 0.5 s sync): the
old holder always hears first.  3 s is also below what the lab's fastest ctdbd setting
(``aggressive``: KeepaliveInterval 1 × KeepaliveLimit 2, then a 1 s election) takes to elect a new
leader, so that leader usually finds the key already expired; the helper's default (9 s) would
make every takeover after a partition wait for it.  The helper accepts whole seconds only
(it passes the values to ``time.sleep`` and to etcd's TTL as read: "0.5" stays a string), so
1/1/3 is the tightest safe setting.

Members use etcd's default raft timing (100 ms heartbeat, 1 s election timeout) and the v2 API,
which python-etcd (and so the helper) speaks; etcd 3.4 serves it only with ``--enable-v2``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

from ctdblab.errors import UserError

from .samba import NETBIOS_NAME     # the helper names its lock after smb.conf's netbios name

ETCD = "/usr/bin/etcd"
HELPER = "/usr/libexec/ctdb/ctdb_etcd_lock"
HELPER_PYTHON = "/usr/bin/python3"
HELPER_CONFIG = "etcd"           # in the node's /etc/ctdb: the helper's default ($CTDB_BASE/etcd)
CLIENT_PORT = 2379
PEER_PORT = 2380
LOCK_TTL_S = 3
REFRESH_S = 1
READ_TIMEOUT_S = 1
LOCKS_DIR = "_ctdb"
START_TIMEOUT_S = 60.0
DATA_SUBDIR = "etcd"             # under the node's durable dir
LOG_SUBDIR = "etcd"              # under the node's log dir


class LabLock:
    """How the lab's cluster lock is kept: the setting in ctdb.conf and the files it needs."""

    name = ""

    def setting(self, shared_dir: Path) -> str:
        raise NotImplementedError

    def node_files(self, pnn: int, node_ips: Sequence[str]) -> dict[str, str]:
        """Extra files for the node's /etc/ctdb (name -> text)."""
        return {}


class FileLock(LabLock):
    """A file in the shared directory (the "cluster filesystem"): reachable from both sides of
    any partition, released only when its holder process dies."""

    name = "file"

    def setting(self, shared_dir: Path) -> str:
        return str(shared_dir / ".ctdb" / "reclock")


class EtcdLock(LabLock):
    """CTDB's etcd helper against one etcd member per node (see the module docstring)."""

    name = "etcd"

    def setting(self, shared_dir: Path) -> str:
        # pyctdbd and ctdbd both split a `!command` on single blanks.
        return f"!{HELPER_PYTHON} {HELPER}"

    def node_files(self, pnn: int, node_ips: Sequence[str]) -> dict[str, str]:
        return {HELPER_CONFIG: helper_config_text(node_ips[pnn])}


LOCKS = {"file": FileLock, "etcd": EtcdLock}


def get_lab_lock(name: str) -> LabLock:
    try:
        return LOCKS[name]()
    except KeyError:
        raise UserError(f"unknown cluster lock {name!r}; choose one of {', '.join(LOCKS)}") from None


# -- configuration ------------------------------------------------------------------------------
def helper_config_text(local_ip: str) -> str:
    """The helper's ``key = value`` file.  Its parser splits every line on "=": no comments and
    no blank lines, or the helper dies before it answers."""
    values = {"host": local_ip, "port": CLIENT_PORT, "lock_ttl": LOCK_TTL_S,
              "lock_refresh": REFRESH_S, "read_timeout": READ_TIMEOUT_S, "locks_dir": LOCKS_DIR}
    return "".join(f"{key} = {value}\n" for key, value in values.items())


def lock_keys_path() -> str:
    """Where the helper keeps its lock keys (python-etcd's Lock: /_locks/NAME, one key per
    contender, the lowest holds it)."""
    return f"/_locks/{LOCKS_DIR}/{NETBIOS_NAME}"


def parse_lock_holder(v2_listing: str) -> int | None:
    """The PNN holding the lock in a ``GET /v2/keys/_locks/...`` answer, None if nobody does.
    The helper writes its key as ``<uuid>_<pnn>``; the lowest key holds the lock."""
    try:
        node = json.loads(v2_listing).get("node") or {}
    except (ValueError, AttributeError):
        raise ValueError(f"not an etcd v2 answer: {v2_listing[:200]!r}") from None
    keys = sorted((child["key"], child.get("value", "")) for child in node.get("nodes") or ()
                  if not child.get("dir"))
    if not keys:
        return None
    _, _, pnn = keys[0][1].rpartition("_")
    if not pnn.isdigit():
        raise ValueError(f"lock key {keys[0][0]} holds {keys[0][1]!r}, not <uuid>_<pnn>")
    return int(pnn)


def member_name(pnn: int) -> str:
    return f"node{pnn}"


def initial_cluster(node_ips: Sequence[str]) -> str:
    return ",".join(f"{member_name(p)}=http://{ip}:{PEER_PORT}" for p, ip in enumerate(node_ips))


def member_argv(pnn: int, node_ips: Sequence[str], data_dir: Path, token: str) -> list[str]:
    """The etcd command of node ``pnn``'s member: private address only, v2 API on.  With an
    existing data directory etcd ignores the --initial-* flags and rejoins as the same member."""
    ip = node_ips[pnn]
    client, peer = f"http://{ip}:{CLIENT_PORT}", f"http://{ip}:{PEER_PORT}"
    return [ETCD, "--name", member_name(pnn), "--data-dir", str(data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial_cluster(node_ips), "--initial-cluster-token", token,
            "--initial-cluster-state", "new", "--enable-v2=true",
            "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]


def check_installed() -> None:
    for path, package in ((ETCD, "etcd-server"), (HELPER, "ctdb"), (HELPER_PYTHON, "python3")):
        if not os.access(path, os.X_OK):
            raise UserError(f"{path} not found: --lock etcd needs Debian's {package} package "
                            "(./ctdblab.sh installs it)")
    if not Path("/usr/lib/python3/dist-packages/etcd/__init__.py").exists():
        raise UserError("the python3 `etcd` module is missing: --lock etcd needs Debian's "
                        "python3-etcd package (./ctdblab.sh installs it)")
    if shutil.which("curl") is None:
        raise UserError("`curl` not found: --lock etcd asks the members for their health with it")


# -- running the members inside the nodes -------------------------------------------------------
class EtcdMembers:
    """The etcd members of a Mininet cluster: one per node, started inside the node, its data in
    the node's durable directory and its log next to the node's other logs.  Members die with
    their node (power-off, teardown and ``ctdblab down`` kill every process in a node's
    namespace); ``remove_data`` deletes the data directories afterwards."""

    def __init__(self, node_ips: Sequence[str], token: str):
        self.node_ips = list(node_ips)
        self.token = token

    @staticmethod
    def data_dir(node) -> Path:
        return node.dirs.durable / DATA_SUBDIR

    @staticmethod
    def log_path(node) -> Path:
        return node.dirs.log / LOG_SUBDIR / "etcd.log"

    def start_script(self, node) -> str:
        argv = member_argv(node.index, self.node_ips, self.data_dir(node), self.token)
        log = shlex.quote(str(self.log_path(node)))
        return (f"mkdir -p -m 0700 {shlex.quote(str(self.data_dir(node)))} "
                f"{shlex.quote(str(self.log_path(node).parent))}\n"
                f"setsid {shlex.join(argv)} >>{log} 2>&1 </dev/null &")

    def start(self, node) -> None:
        """Start the node's member in the background (returns at once)."""
        result = node.run(self.start_script(node), timeout=20)
        if result.returncode != 0:
            raise RuntimeError(f"etcd failed to start on {node.name} (exit {result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()}")

    def healthy(self, node) -> bool:
        """The member answers /health with quorum (curl inside the node, private address)."""
        url = f"http://{self.node_ips[node.index]}:{CLIENT_PORT}/health"
        result = node.run(["curl", "-sf", "--max-time", "2", url], timeout=10)
        return result.returncode == 0 and '"health":"true"' in result.stdout.replace(" ", "")

    def lock_holder(self, node) -> int | None:
        """The PNN holding the cluster lock as node's member sees it (a local read: a minority
        member answers from what it last knew)."""
        url = f"http://{self.node_ips[node.index]}:{CLIENT_PORT}/v2/keys{lock_keys_path()}"
        result = node.run(["curl", "-s", "--max-time", "2", url], timeout=10)
        if result.returncode != 0:
            raise RuntimeError(f"etcd on {node.name} did not answer: curl exit {result.returncode}")
        if '"errorCode":100' in result.stdout.replace(" ", ""):     # key not found
            return None
        return parse_lock_holder(result.stdout)

    def wait_healthy(self, nodes: Sequence, timeout: float = START_TIMEOUT_S,
                     sleep: Callable[[float], None] = time.sleep) -> float:
        t0 = time.monotonic()
        pending = list(nodes)
        while pending:
            pending = [n for n in pending if not self.healthy(n)]
            if not pending:
                break
            if time.monotonic() - t0 > timeout:
                names = ", ".join(n.name for n in pending)
                raise RuntimeError(f"etcd not healthy within {timeout:g} s on {names}; see "
                                   f"{self.log_path(pending[0])}")
            sleep(0.2)
        return time.monotonic() - t0

    def remove_data(self, nodes: Sequence) -> None:
        for node in nodes:
            shutil.rmtree(self.data_dir(node), ignore_errors=True)


def lock_helper_pids(node) -> list[int]:
    """The node's running ctdb_etcd_lock processes (a fault that hangs the whole machine stops
    them along with the daemon)."""
    found = []
    for pid in node.processes():
        try:
            if HELPER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


def remove_data_under(workdir: Path) -> int:
    """Delete every node's etcd data directory of a cluster work dir (``ctdblab down``, after
    the members were killed).  Returns how many were removed."""
    removed = 0
    for data in sorted((workdir / "nodes").glob(f"*/durable/{DATA_SUBDIR}")):
        shutil.rmtree(data, ignore_errors=True)
        removed += 1
    return removed
