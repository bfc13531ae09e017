"""A pyctdbd cluster in network namespaces, without Mininet, for failover measurements.

Layout (names carry a random 4-letter prefix, so parallel runs do not collide):
  <p>sw       a namespace holding the bridge `br0` (the "switch"); nothing in the root namespace
  <p>n1..nN   one namespace per node: eth0 with 198.18.S.i/24 (private) and, while it hosts
              them, public IPs 198.19.S.k/24
  <p>c1       a client: eth0 198.19.S.200/24
The daemons run with their real failover effects (addresses, gratuitous ARP, tickle ACKs); the
cluster lock is a file in the test's directory (fcntl works across namespaces: one kernel).

Hard reset = lab.md §6.3: cut the node's switch port, SIGKILL every process in its namespace,
delete its link. Every process here was started by this harness; cleanup kills them by PID and
deletes the namespaces even when a test fails.
"""

from __future__ import annotations

import os
import random
import re
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

from ctdblab.cluster.daemonlog import parse_line
from ctdblab.cluster.procs import kill_netns, named_netns



def sh(*args: str, check: bool = True, ns: str | None = None, **kw) -> subprocess.CompletedProcess:
    cmd = list(args)
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


class NetnsCluster:
    def __init__(self, root: Path, n: int = 3, *, public_ips: int = 3, tunables: dict | None = None,
                 lock: bool = True, realtime: bool = True) -> None:
        self.root = root
        self.n = n
        self.prefix = "p" + "".join(random.choice(string.ascii_lowercase) for _ in range(3))
        self.subnet = random.randint(100, 250)
        self.node_ips = [f"198.18.{self.subnet}.{i + 1}" for i in range(n)]
        self.public = [f"198.19.{self.subnet}.{k + 1}" for k in range(public_ips)]
        self.client_ip = f"198.19.{self.subnet}.200"
        self.tunables = tunables or {}
        self.lock = lock
        self.realtime = realtime
        self.switch = f"{self.prefix}sw"
        self.procs: dict[str, subprocess.Popen] = {}
        self.namespaces: list[str] = []

    def ns(self, pnn: int) -> str:
        return f"{self.prefix}n{pnn + 1}"

    @property
    def client_ns(self) -> str:
        return f"{self.prefix}c1"

    def node_dir(self, pnn: int) -> Path:
        return self.root / f"node{pnn}"

    def socket(self, pnn: int) -> str:
        return str(self.node_dir(pnn) / "run" / "ctdbd.socket")

    def log(self, pnn: int) -> Path:
        return self.node_dir(pnn) / "log.ctdb"

    # -- network ----------------------------------------------------------------------------------
    def _add_ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "link", "set", "lo", "up", ns=name)

    def _plug(self, ns: str, tag: str, address: str) -> None:
        a, b = f"{self.prefix}{tag}a", f"{self.prefix}{tag}b"
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        sh("ip", "link", "set", a, "netns", ns)
        sh("ip", "link", "set", b, "netns", self.switch)
        sh("ip", "link", "set", a, "name", "eth0", ns=ns)
        sh("ip", "addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        sh("ip", "link", "set", b, "master", "br0", ns=self.switch)
        sh("ip", "link", "set", b, "up", ns=self.switch)

    def build_network(self) -> None:
        self._add_ns(self.switch)
        sh("ip", "link", "add", "br0", "type", "bridge", ns=self.switch)
        sh("ip", "link", "set", "br0", "up", ns=self.switch)
        for pnn in range(self.n):
            self._add_ns(self.ns(pnn))
            self._plug(self.ns(pnn), f"n{pnn + 1}", self.node_ips[pnn])
            # Public IPs are in another subnet: an on-link route so the node answers clients.
            sh("ip", "route", "add", f"198.19.{self.subnet}.0/24", "dev", "eth0", ns=self.ns(pnn))
        self._add_ns(self.client_ns)
        self._plug(self.client_ns, "c1", self.client_ip)

    # -- daemons ----------------------------------------------------------------------------------
    def configure(self) -> None:
        (self.root / "shared").mkdir(parents=True, exist_ok=True)
        for pnn in range(self.n):
            d = self.node_dir(pnn)
            (d / "run").mkdir(parents=True, exist_ok=True)
            (d / "events" / "legacy").mkdir(parents=True, exist_ok=True)
            for kind in ("volatile", "persistent", "state"):
                (d / "db" / kind).mkdir(parents=True, exist_ok=True)
            (d / "nodes").write_text("".join(f"{ip}\n" for ip in self.node_ips))
            (d / "public_addresses").write_text("".join(f"{ip}/24 eth0\n" for ip in self.public))
            (d / "ctdb.tunables").write_text("".join(f"{k}={v}\n" for k, v in self.tunables.items()))
            conf = ["[logging]", f"  location = file:{self.log(pnn)}", "  log level = NOTICE",
                    "[database]", *(f"  {kind} database directory = {d / 'db' / kind}"
                                    for kind in ("volatile", "persistent", "state")),
                    "[cluster]"]
            if self.lock:
                conf.append(f"  cluster lock = {self.root / 'shared' / 'reclock'}")
            if not self.realtime:
                conf += ["[legacy]", "  realtime scheduling = false"]
            (d / "ctdb.conf").write_text("\n".join(conf) + "\n")

    def start_node(self, pnn: int) -> None:
        d = self.node_dir(pnn)
        out = open(d / "stderr", "ab")
        cmd = ["ip", "netns", "exec", self.ns(pnn), sys.executable, "-m", "ctdblab.daemon.main",
               "-i", "--config-dir", str(d), "--socket", self.socket(pnn)]
        self.procs[f"node{pnn}"] = subprocess.Popen(cmd, stdout=out, stderr=out)

    def start(self) -> None:
        self.build_network()
        self.configure()
        for pnn in range(self.n):
            self.start_node(pnn)

    def spawn(self, name: str, ns: str, code: str) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs[name] = proc
        return proc

    # -- queries ----------------------------------------------------------------------------------
    def ctdb(self, pnn: int, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, CTDB_SOCKET=self.socket(pnn), CTDB_BASE=str(self.node_dir(pnn)))
        # Its own session: a tool that runs out of time SIGTERMs its whole process group.
        return subprocess.run(["ctdb", *args], capture_output=True, text=True, env=env, timeout=30,
                              start_new_session=True)

    def ips(self, pnn: int) -> dict[str, int]:
        out = self.ctdb(pnn, "ip", "all").stdout
        return {line.split()[0]: int(line.split()[1]) for line in out.splitlines()[1:] if line.strip()}

    def flags(self, pnn: int) -> dict[int, str]:
        out = self.ctdb(pnn, "status").stdout
        return {int(l.split()[0][4:]): l.split()[2] for l in out.splitlines() if l.startswith("pnn:")}

    def leader(self, pnn: int) -> int:
        return int(self.ctdb(pnn, "leader").stdout.strip())

    def healthy(self, pnns: list[int] | None = None) -> bool:
        pnns = list(range(self.n)) if pnns is None else pnns
        for pnn in pnns:
            if any(self.flags(pnn).get(p) != "OK" for p in pnns):
                return False
            ips = self.ips(pnn)
            if len(ips) != len(self.public) or any(o not in pnns for o in ips.values()):
                return False
        return True

    def wait_for(self, what: str, check, timeout: float = 20.0, interval: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except Exception:
                pass
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what}\n{self.describe()}")

    def log_events(self, pnn: int, pattern: str, since: float) -> list[tuple[float, str]]:
        found = []
        try:
            lines = self.log(pnn).read_text().splitlines()
        except OSError:
            return found
        rx = re.compile(pattern)
        for text in lines:
            line = parse_line(text)
            if line is not None and line.program == "pyctdbd" and line.t >= since \
                    and rx.search(line.message):
                found.append((line.t, line.message))
        return found

    def describe(self) -> str:
        out = []
        for pnn in range(self.n):
            try:
                tail = self.log(pnn).read_text().splitlines()[-12:]
            except OSError:
                tail = []
            out.append(f"--- node {pnn} ---\n" + "\n".join(tail))
        return "\n".join(out)

    # -- faults ------------------------------------------------------------------------------------
    def hard_reset(self, pnn: int) -> float:
        """Cut the node's switch port, kill everything in its namespace, delete its link.
        Returns the wall-clock time of the cut."""
        port = f"{self.prefix}n{pnn + 1}b"
        t_cut = time.time()
        sh("ip", "link", "set", port, "down", ns=self.switch)
        kill_netns(named_netns(self.ns(pnn)))
        sh("ip", "link", "del", port, ns=self.switch, check=False)
        return t_cut

    # -- cleanup -----------------------------------------------------------------------------------
    def stop(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:
            for ident in filter(None, map(named_netns, self.namespaces)):
                kill_netns(ident)
        finally:
            for ns in reversed(self.namespaces):
                sh("ip", "netns", "del", ns, check=False)


HOLD_SERVER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5445)); s.listen(16)
held = []
while True:
    c, _ = s.accept(); c.sendall(b"hello\n"); held.append(c)
"""

BLOCKED_CLIENT = r"""
import socket, sys, time
vip = sys.argv[1] if len(sys.argv) > 1 else "{vip}"
c = socket.create_connection((vip, 5445), timeout=5)
c.settimeout(None)
assert c.recv(6) == b"hello\n"
print("connected", time.time(), flush=True)
try:
    data = c.recv(100)
    print("eof" if not data else "data", time.time(), flush=True)
except ConnectionResetError:
    print("reset", time.time(), flush=True)
except OSError as exc:
    print("error", exc.errno, time.time(), flush=True)
"""
