"""The lab's own cost: building and tearing down 8- and 16-node clusters.

    .venv/bin/python -m benchmarks.lab_overhead [--nodes 8,16] [--repeat 3]

Per size: a bare network (nodes, one client, both bridges, per-node mounts) built and torn down
--repeat times, then a full pyctdbd cluster (daemon + smbd on every node) brought to healthy and
torn down once.  The CPU the lab process itself uses during a failover run is in every failover
results.json (``lab_overhead``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ctdblab.cluster.lab import LabCluster
from ctdblab.cluster.mininet_backend import MininetCluster
from ctdblab.stats import median

from .common import progress, table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", default="8,16")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.nodes.split(",")):
            builds, teardowns = [], []
            for r in range(args.repeat):
                net = MininetCluster(n, 1, workdir=Path(tmp) / f"n{n}-{r}")
                t0 = time.monotonic()
                try:
                    net.build()
                    builds.append(time.monotonic() - t0)
                finally:
                    t1 = time.monotonic()
                    net.teardown()
                    teardowns.append(time.monotonic() - t1)
            cluster = LabCluster(n, daemon="pyctdbd", clients=1, workdir=Path(tmp) / f"c{n}")
            t0 = time.monotonic()
            try:
                cluster.start()
                start = time.monotonic() - t0
            finally:
                t1 = time.monotonic()
                cluster.stop()
                stop = time.monotonic() - t1
            progress(f"{n} nodes: build {builds}, teardown {teardowns}, pyctdbd start {start:.1f}")
            rows.append([n, median(builds), max(builds), median(teardowns),
                         max(teardowns), start, stop])
    print("\nlab overhead (seconds)")
    print(table(["nodes", "build p50", "build max", "teardown p50", "teardown max",
                 "pyctdbd cluster start", "its teardown"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
