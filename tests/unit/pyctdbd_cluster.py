"""A few pyctdbd daemons on loopback addresses, for tests that need no root.

Each node gets its own configuration directory (nodes, public_addresses, ctdb.conf,
ctdb.tunables), socket, pid file and log; the daemons run in the foreground (`-i`) as children
of the test so they can be stopped by PID. Public IPs are managed with `--fake-ip-effects`
(nothing on the host changes). Addresses are 127.x.y.1..N with x, y random, and the port is
random too, so parallel test runs do not collide.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

CTDB = shutil.which("ctdb") or "/usr/bin/ctdb"


def have_ctdb_cli() -> bool:
    return os.path.exists(CTDB)


class LocalCluster:
    def __init__(self, root: Path, n: int = 3, *, lock: bool = True,
                 tunables: dict[str, int] | None = None, public_ips: int = 3,
                 extra_conf: str = "", lock_command: str | None = None) -> None:
        self.root = root
        self.n = n
        net = (random.randint(100, 250), random.randint(1, 250))
        self.addresses = [f"127.{net[0]}.{net[1]}.{i + 1}" for i in range(n)]
        self.port = random.randint(20000, 60000)
        self.public = [f"198.19.{8 + net[1] % 8}.{i + 1}" for i in range(public_ips)]
        self.lock_file = root / "shared" / "reclock"
        self.tunables = {"HeartbeatIntervalMs": 100, "DeadTimeoutMs": 400, **(tunables or {})}
        self.procs: dict[int, subprocess.Popen] = {}
        self.lock = lock
        self.lock_command = lock_command
        self.extra_conf = extra_conf

    def node_dir(self, pnn: int) -> Path:
        return self.root / f"node{pnn}"

    def socket(self, pnn: int) -> str:
        return str(self.node_dir(pnn) / "run" / "ctdbd.socket")

    def log(self, pnn: int) -> Path:
        return self.node_dir(pnn) / "log.ctdb"

    def configure(self) -> None:
        (self.root / "shared").mkdir(parents=True, exist_ok=True)
        for pnn in range(self.n):
            d = self.node_dir(pnn)
            (d / "run").mkdir(parents=True, exist_ok=True)
            (d / "events" / "legacy").mkdir(parents=True, exist_ok=True)
            for kind in ("volatile", "persistent", "state"):
                (d / "db" / kind).mkdir(parents=True, exist_ok=True)
            (d / "nodes").write_text("".join(f"{a}\n" for a in self.addresses))
            (d / "public_addresses").write_text("".join(f"{ip}/20 lo\n" for ip in self.public))
            (d / "ctdb.tunables").write_text("".join(f"{k}={v}\n" for k, v in self.tunables.items()))
            conf = ["[logging]", f"  location = file:{self.log(pnn)}", "  log level = INFO",
                    "[cluster]", f"  node address = {self.addresses[pnn]}"]
            if self.lock_command:
                conf.append(f"  cluster lock = !{self.lock_command}")
            elif self.lock:
                conf.append(f"  cluster lock = {self.lock_file}")
            conf += ["[database]", *(f"  {kind} database directory = {d / 'db' / kind}"
                                     for kind in ("volatile", "persistent", "state")),
                     "[legacy]", "  realtime scheduling = false", self.extra_conf]
            (d / "ctdb.conf").write_text("\n".join(conf) + "\n")

    def start_node(self, pnn: int) -> None:
        d = self.node_dir(pnn)
        cmd = [sys.executable, "-m", "ctdblab.daemon.main", "-i", "--config-dir", str(d),
               "--socket", self.socket(pnn), "--port", str(self.port), "--fake-ip-effects"]
        err = open(d / "stderr", "ab")
        env = dict(os.environ, CTDB_BASE=str(d))
        self.procs[pnn] = subprocess.Popen(cmd, stdout=err, stderr=err, env=env,
                                           start_new_session=True)

    def start(self) -> None:
        self.configure()
        for pnn in range(self.n):
            self.start_node(pnn)

    def stop_node(self, pnn: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        proc = self.procs.get(pnn)
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop(self) -> None:
        for pnn in list(self.procs):
            self.stop_node(pnn)

    def signal(self, pnn: int, sig: int) -> None:
        os.kill(self.procs[pnn].pid, sig)

    def ctdb(self, pnn: int, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        env = dict(os.environ, CTDB_SOCKET=self.socket(pnn), CTDB_BASE=str(self.node_dir(pnn)))
        return subprocess.run([CTDB, *args], capture_output=True, text=True, env=env,
                              timeout=timeout)

    def ok(self, pnn: int, *args: str) -> str:
        result = self.ctdb(pnn, *args)
        assert result.returncode == 0, f"ctdb {' '.join(args)} on node {pnn}: {result.stderr}{result.stdout}"
        return result.stdout

    def status_flags(self, pnn: int) -> dict[int, str]:
        """pnn -> flags word from `ctdb status` as the given node sees them."""
        out = self.ctdb(pnn, "status").stdout
        flags = {}
        for line in out.splitlines():
            if line.startswith("pnn:"):
                parts = line.split()
                flags[int(parts[0][4:])] = parts[2]
        return flags

    def ips(self, pnn: int) -> dict[str, int]:
        out = self.ctdb(pnn, "ip", "all").stdout
        result = {}
        for line in out.splitlines()[1:]:
            ip, owner = line.split()
            result[ip] = int(owner)
        return result

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 15.0,
                 interval: float = 0.05) -> float:
        start = time.monotonic()
        while True:
            try:
                if check():
                    return time.monotonic() - start
            except Exception:
                pass
            if time.monotonic() - start > timeout:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n"
                                     + self.describe())
            time.sleep(interval)

    def healthy(self, pnns: list[int] | None = None) -> bool:
        pnns = list(range(self.n)) if pnns is None else pnns
        for pnn in pnns:
            flags = self.status_flags(pnn)
            if any(flags.get(p) != "OK" for p in pnns):
                return False
            ips = self.ips(pnn)
            if len(ips) != len(self.public) or any(owner not in pnns for owner in ips.values()):
                return False
        return True

    def settled(self, pnns: list[int] | None = None, quiet: float = 1.0) -> bool:
        """Healthy, one leader everywhere, and the IP allocation unchanged for `quiet` s
        (startup moves IPs around while nodes turn healthy one after the other)."""
        pnns = list(range(self.n)) if pnns is None else pnns
        if not self.healthy(pnns):
            return False
        before = (self.ips(pnns[0]), {self.ok(p, "leader").strip() for p in pnns})
        time.sleep(quiet)
        after = (self.ips(pnns[0]), {self.ok(p, "leader").strip() for p in pnns})
        return before == after and len(after[1]) == 1 and self.healthy(pnns)

    def describe(self) -> str:
        parts = []
        for pnn in range(self.n):
            try:
                tail = self.log(pnn).read_text().splitlines()[-15:]
            except OSError:
                tail = []
            parts.append(f"--- node {pnn} log tail ---\n" + "\n".join(tail))
        return "\n".join(parts)
