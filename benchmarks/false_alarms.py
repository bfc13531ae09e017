"""False DISCONNECTs of pyctdbd: an idle period, then one with both cores fully loaded.

    .venv/bin/python -m benchmarks.false_alarms [--minutes 10] [--nodes 3] [--daemon pyctdbd]
        [--tunables fast] [--load stress-ng|busy] [--idle-minutes M]

Nothing is broken during the run, so every "node X is dead" a daemon logs, and every non-OK
state seen by a 1 Hz `ctdb -X status` poll, is a false alarm.  In the loaded phase every core is
kept busy at normal priority on the host for the whole period: by `stress-ng --cpu N` (default,
Debian's stress-ng) or by one Python busy loop per core (``--load busy``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from ctdblab.cluster.daemonlog import find_events, read_log
from ctdblab.cluster.lab import LabCluster

from .common import progress, table


def watch(cluster: LabCluster, seconds: float) -> tuple[int, int]:
    """(log lines declaring a peer dead, status polls with a node not OK)."""
    t_start = time.time()
    bad_polls = 0
    while time.time() < t_start + seconds:
        try:
            if not all(s.ok for s in cluster.status(0)):
                bad_polls += 1
        except Exception:     # noqa: BLE001 - a poll that fails counts too
            bad_polls += 1
        time.sleep(1.0)
    dead = sum(len(find_events(read_log(cluster.launcher.log_path(n), since=t_start), "detect"))
               for n in cluster.nodes)
    return dead, bad_polls


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--daemon", default="pyctdbd")
    p.add_argument("--tunables", default="default")
    p.add_argument("--load", choices=("stress-ng", "busy"), default="stress-ng")
    p.add_argument("--idle-minutes", type=float, default=None,
                   help="length of the idle phase (default: --minutes)")
    args = p.parse_args()
    cores = os.cpu_count() or 2
    if args.load == "stress-ng" and shutil.which("stress-ng") is None:
        p.error("stress-ng is not installed (./ctdblab.sh installs it; or use --load busy)")
    seconds = args.minutes * 60
    rows = []
    with LabCluster(args.nodes, daemon=args.daemon, tunables=args.tunables, clients=0,
                    progress=progress) as cluster:
        idle = args.minutes if args.idle_minutes is None else args.idle_minutes
        progress(f"idle for {idle:g} min")
        rows.append(["idle", idle, *watch(cluster, idle * 60)])
        if args.load == "stress-ng":
            burners = [subprocess.Popen(["stress-ng", "--cpu", str(cores), "--quiet"],
                                        stdout=subprocess.DEVNULL, start_new_session=True)]
        else:
            burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
        try:
            progress(f"{cores} cores busy ({args.load}) for {args.minutes:g} min")
            rows.append([f"{cores} cores busy ({args.load})", args.minutes, *watch(cluster, seconds)])
        finally:
            for b in burners:
                if args.load == "stress-ng":
                    os.killpg(b.pid, 15)        # stress-ng's workers are its children
                else:
                    b.kill()
                b.wait()
    print(f"\nfalse alarms, {args.daemon} ({args.tunables} tunables), {args.nodes} nodes")
    print(table(["phase", "minutes", "'dead' log lines", "polls not all OK"], rows))
    return 0 if all(r[2] == 0 and r[3] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
