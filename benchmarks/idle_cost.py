"""Idle CPU and memory per daemon at 3, 8 and 16 nodes, pyctdbd next to real CTDB.

    .venv/bin/python -m benchmarks.idle_cost [--nodes 3,8,16] [--daemons pyctdbd,ctdb] [--window 30]

For each size a cluster starts (default tunables, smbd on every node), settles for 10 s, then the
CPU time of every daemon process is sampled from /proc over --window seconds.  Printed per node:
CPU of the daemon's own processes (% of one core), the same including the event scripts it ran
(children it reaped), RSS and PSS summed over the daemon's processes.  smbd is not counted.
Target for pyctdbd: ≤ 0.5 % of a core and ≤ 60 MiB per daemon.
"""

from __future__ import annotations

import argparse
import os
import time

from ctdblab import chaos
from ctdblab.cluster.lab import LabCluster
from ctdblab.stats import median

from .common import progress, table

TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(own utime+stime, reaped children's cutime+cstime) in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def memory_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def measure(cluster: LabCluster, window: float) -> list[dict]:
    procs = {n.index: list(chaos.daemon_processes(cluster, n.index)) for n in cluster.nodes}
    before = {pid: cpu_ticks(pid) for pids in procs.values() for pid in pids}
    t0 = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - t0
    rows = []
    for pnn, pids in procs.items():
        own = kids = rss = pss = 0
        for pid in pids:
            try:
                o, k = cpu_ticks(pid)
                r, p = memory_kib(pid)
            except OSError:
                continue
            own += o - before[pid][0]
            kids += k - before[pid][1]
            rss += r
            pss += p
        rows.append({"pnn": pnn, "procs": len(pids),
                     "cpu_pct": 100 * own / TICK / elapsed,
                     "cpu_with_scripts_pct": 100 * (own + kids) / TICK / elapsed,
                     "rss_mib": rss / 1024, "pss_mib": pss / 1024})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", default="3,8,16")
    p.add_argument("--daemons", default="pyctdbd,ctdb")
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--tunables", default="default")
    args = p.parse_args()
    out = []
    for daemon in args.daemons.split(","):
        for n in (int(x) for x in args.nodes.split(",")):
            progress(f"{daemon}: {n} nodes")
            with LabCluster(n, daemon=daemon, tunables=args.tunables, clients=0,
                            progress=progress) as cluster:
                time.sleep(10)
                rows = measure(cluster, args.window)
            med = lambda key: median(r[key] for r in rows)
            mx = lambda key: max(r[key] for r in rows)
            out.append([daemon, n, med("cpu_pct"), mx("cpu_pct"), med("cpu_with_scripts_pct"),
                        med("rss_mib"), mx("rss_mib"), med("pss_mib"), rows[0]["procs"]])
    print(f"\nidle cost per node over {args.window:.0f} s ({args.tunables} tunables; smbd not counted)")
    print(table(["daemon", "nodes", "cpu% p50", "cpu% max", "cpu%+scripts", "RSS MiB p50",
                 "RSS MiB max", "PSS MiB p50", "procs/node"], out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
