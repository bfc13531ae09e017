"""Measurements of pyctdbd in network namespaces (root), printed as a small report.

    python tests/lab/measure_pyctdbd.py failover [--runs 5]
    python tests/lab/measure_pyctdbd.py idle --nodes 3 8 16 [--seconds 30]
    python tests/lab/measure_pyctdbd.py load [--seconds 120]

failover  hard reset of the node hosting a client's public IP, leader and non-leader victims:
          detection / takeover / client ECONNRESET, seconds after the cut (median, min..max).
idle      CPU (% of one core, from /proc/<pid>/stat over the window) and RSS per daemon.
load      two CPU-bound processes per core while the cluster idles: false DISCONNECTs counted
          from the daemons' logs ("dead count reached" / "is dead") during the window.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from pyctdbd_netns import HOLD_SERVER, NetnsCluster  # noqa: E402
from test_daemon_failover_netns import measure_failover  # noqa: E402


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}..{max(values):.3f}, n={len(values)})"


def started(n: int, root: Path, **kw) -> NetnsCluster:
    c = NetnsCluster(root, n, **kw)
    c.start()
    c.wait_for("healthy cluster", c.healthy, timeout=60)
    return c


def failover(runs: int) -> None:
    for leader in (False, True):
        results = []
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as tmp:
                c = started(3, Path(tmp))
                try:
                    for pnn in range(c.n):
                        c.spawn(f"hold{pnn}", c.ns(pnn), HOLD_SERVER)
                    time.sleep(0.3)
                    results.append(measure_failover(c, leader))
                finally:
                    c.stop()
        print(f"victim = {'leader' if leader else 'non-leader'}:")
        for key in ("detect", "takeover", "reset"):
            print(f"  {key:9s} {summary([r[key] for r in results])}")


def daemon_pids(c: NetnsCluster) -> list[int]:
    pids = []
    for pnn in range(c.n):
        with open(Path(c.socket(pnn)).parent / "ctdbd.pid") as f:
            pids.append(int(f.read()))
    return pids


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def idle(sizes: list[int], seconds: float) -> None:
    hz = os.sysconf("SC_CLK_TCK")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            c = started(n, Path(tmp))
            try:
                time.sleep(5)
                pids = daemon_pids(c)
                before = {p: cpu_ticks(p) for p in pids}
                time.sleep(seconds)
                cpu = [(cpu_ticks(p) - before[p]) / hz / seconds * 100 for p in pids]
                rss = [rss_kib(p) / 1024 for p in pids]
                leader = c.leader(0)
                print(f"{n:2d} daemons, {seconds:.0f} s idle: CPU % of one core per daemon "
                      f"median {statistics.median(cpu):.2f} max {max(cpu):.2f} "
                      f"(leader {cpu[leader]:.2f}); RSS MiB median {statistics.median(rss):.1f} "
                      f"max {max(rss):.1f}")
            finally:
                c.stop()


def load(seconds: float, realtime: bool = True) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        c = started(3, Path(tmp), realtime=realtime)
        hogs = []
        try:
            time.sleep(2)
            t0 = time.time()
            for _ in range(2 * (os.cpu_count() or 2)):
                hogs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
            time.sleep(seconds)
            false_alarms = []
            for pnn in range(c.n):
                false_alarms += c.log_events(pnn, r"dead count reached|is dead:|Event loop stalled", t0)
            print(f"{seconds:.0f} s with {len(hogs)} busy loops on {os.cpu_count()} cores "
                  f"({'SCHED_FIFO' if realtime else 'no real-time scheduling'}): "
                  f"{len(false_alarms)} false alarms")
            for t, line in false_alarms[:10]:
                print(f"  +{t - t0:.1f}s {line}")
            print("cluster healthy afterwards:", c.healthy())
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
            c.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("failover")
    f.add_argument("--runs", type=int, default=5)
    i = sub.add_parser("idle")
    i.add_argument("--nodes", type=int, nargs="+", default=[3, 8, 16])
    i.add_argument("--seconds", type=float, default=30)
    lo = sub.add_parser("load")
    lo.add_argument("--seconds", type=float, default=120)
    lo.add_argument("--no-realtime", action="store_true", help="daemons without SCHED_FIFO")
    args = p.parse_args()
    if args.what == "failover":
        failover(args.runs)
    elif args.what == "idle":
        idle(args.nodes, args.seconds)
    else:
        load(args.seconds, realtime=not args.no_realtime)


if __name__ == "__main__":
    main()
