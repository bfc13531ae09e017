"""Database recovery after a node's hard reset against the size of a volatile database, real
ctdbd and pyctdbd side by side.

    .venv/bin/python -m benchmarks.recovery_size                         # 10^3, 10^4, 10^5 records
    .venv/bin/python -m benchmarks.recovery_size --sizes 1000,1000000 --daemons pyctdbd,ctdb

For each daemon and size a 3-node cluster starts (clustered smbd; ctdbd with aggressive
tunables, pyctdbd with its defaults), attaches a volatile database ``recbench.tdb`` and fills it
with that many records (100-byte values) spread evenly over the nodes, written into each node's
file as smbd writes records it holds: on the record's dmaster, with its lmaster's copy pointing
there (so the cluster's state is what migrations would have left). Then a non-leader node is
powered off (sysrq-b style) while two processes on the survivors keep reading one record in turn
(``ctdb readkey``, which migrates it: every read needs the cluster database). Measured, from the
survivors' own logs and the readers' timestamps:

- recovery: "Recovery has started" to "Recovery has finished" (both daemons log these words) in
  the first recovery after the cut;
- cut to finished: from the power cut to that "Recovery has finished";
- survivor stall: the longest gap between two completed reads from the cut on;
- first use: afterwards, `ctdb readkey` of 40 keys whose lmaster was the lost node, twice each
  (p50 of each round): pyctdbd's recovery leaves such keys to be settled by the first call that
  needs them, so their first use carries what its recovery did not.

Printed per size: both daemons and pyctdbd/ctdbd; a plot (log-log) goes to --out.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from ctdblab.cluster.lab import ClusterNotReady, LabCluster

from .common import progress, table

DB = "recbench.tdb"
SETUPS = {"pyctdbd": "default", "ctdb": "aggressive"}
VALUE_SIZE = 100

#: Runs inside a node with the project's Python: writes this node's share of the records into
#: its own file of the database, as smbd does (chain locks through libtdb).
FILLER = r"""
import sys
from ctdblab.daemon.core.db.ltdbrules import lmaster_of
from ctdblab.daemon.protocol import LtdbHeader
from ctdblab.daemon.store import DbKind, TdbFile
from ctdblab.daemon.store.naming import tdb_flags
path, pnn, count, nodes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
vnnmap = [int(x) for x in sys.argv[5].split(",")]
tdb = TdbFile(path, 0, tdb_flags(DbKind.VOLATILE) & ~1)     # no CLEAR_IF_FIRST: the daemon has it open
value = b"v" * %d
written = 0
for i in range(count):
    key = b"rec-%%08d" %% i
    owner = i %% nodes
    lmaster = lmaster_of(key, vnnmap)
    if owner == pnn:
        tdb.store_ltdb(key, LtdbHeader(rsn=2, dmaster=pnn, reserved1=0, flags=0), value)
        written += 1
    elif lmaster == pnn:
        tdb.store_ltdb(key, LtdbHeader(rsn=1, dmaster=owner, reserved1=0, flags=0), value)
        written += 1
print(written)
""" % VALUE_SIZE

#: Reads one record in a loop; prints the wall-clock time of each completed read.
READER = r"""
import subprocess, sys, time
end = time.time() + float(sys.argv[1])
while time.time() < end:
    r = subprocess.run(["ctdb", "readkey", "%s", "hot"], capture_output=True, timeout=120)
    if r.returncode == 0:
        print(f"{time.time():.4f}", flush=True)
""" % DB

#: Reads each key twice through the stock tool, timing each: the first use of a key after the
#: recovery (pyctdbd settles a key of a moved slot there) against a second one.
FIRST_USE = r"""
import json, subprocess, sys, time
times = {"first": [], "second": []}
for round_ in ("first", "second"):
    for key in sys.argv[1:]:
        t = time.monotonic()
        subprocess.run(["ctdb", "readkey", "%s", key], capture_output=True, timeout=120)
        times[round_].append(time.monotonic() - t)
print(json.dumps(times))
""" % DB
FIRST_USE_KEYS = 40

LOG_TIME = re.compile(r"^(\S+?)(?:\+00:00)? \S+ (\S+?)\[\d+\]: (.*)$")


def log_events(path: Path, after: float) -> list[tuple[float, str]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = LOG_TIME.match(line)
        if not m:
            continue
        try:
            t = datetime.fromisoformat(m.group(1) + "+00:00").timestamp()
        except ValueError:
            continue
        if t >= after:
            out.append((t, m.group(3)))
    return out


def fill(cluster: LabCluster, count: int) -> float:
    started = time.monotonic()
    out = cluster.ctdb(0, "attach", DB)
    if out.returncode != 0:
        raise ClusterNotReady(f"ctdb attach {DB}: {out.stderr.strip()}")
    status = cluster.ctdb(0, "getdbstatus", DB).stdout
    path = re.search(r"^path: (\S+)$", status, re.M).group(1).rsplit(".", 1)[0]
    vnnmap = cluster.ctdb(0, "status").stdout
    lmasters = ",".join(re.findall(r"lmaster:(\d+)", vnnmap))
    procs = []
    for node in cluster.nodes:
        procs.append(node.popen([sys.executable, "-c", FILLER, f"{path}.{node.index}", str(node.index),
                                 str(count), str(len(cluster.nodes)), lmasters],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        out, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"filler failed: {err.strip()[-2000:]}")
    return time.monotonic() - started


def one(daemon: str, count: int, workdir: Path) -> dict:
    with LabCluster(3, daemon=daemon, tunables=SETUPS[daemon], clients=1, workdir=workdir) as cluster:
        cluster.wait_healthy()
        progress(f"{daemon} {count}: filling")
        filled = fill(cluster, count)
        lmasters = [int(x) for x in re.findall(r"lmaster:(\d+)", cluster.ctdb(0, "status").stdout)]
        leader = cluster.leader()
        victim = next(n.index for n in cluster.nodes if n.index != leader)
        survivors = [n.index for n in cluster.nodes if n.index != victim]
        cluster.ctdb(survivors[0], "writekey", DB, "hot", "x")
        readers = [cluster.node(p).popen([sys.executable, "-c", READER, "3600"], stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True) for p in survivors]
        time.sleep(3.0)
        progress(f"{daemon} {count}: filled in {filled:.1f} s; power off node {victim}")
        cut = cluster.power_off(victim)["t_cut"]
        log = cluster.workdir / "nodes" / cluster.node(leader).name / "log" / "ctdb" / "log.ctdb"
        deadline = time.time() + 600
        started = finished = None
        while time.time() < deadline:
            events = log_events(log, cut)
            started = next((t for t, text in events if "Recovery has started" in text), None)
            finished = next((t for t, text in events if "Recovery has finished" in text
                             and started is not None and t >= started), None)
            if finished is not None:
                break
            time.sleep(0.5)
        time.sleep(2.0)                     # reads after the recovery, to close the last gap
        reads = []
        for proc in readers:
            proc.terminate()
            out, _ = proc.communicate(timeout=120)
            reads += [float(x) for x in out.split()]
        reads = sorted(t for t in reads if t >= cut - 1.0)
        stall = max((b - a for a, b in zip(reads, reads[1:]) if b >= cut), default=None)
        first_use = first_use_times(cluster, survivors[0], victim, count, lmasters)
        return {"daemon": daemon, "records": count, "fill_s": filled,
                "recovery_s": None if finished is None else finished - started,
                "cut_to_finished_s": None if finished is None else finished - cut,
                "survivor_stall_s": stall, "reads": len(reads),
                "first_use_p50_s": _median(first_use["first"]),
                "second_use_p50_s": _median(first_use["second"])}


def first_use_times(cluster: LabCluster, reader: int, victim: int, count: int,
                    lmasters: list[int]) -> dict[str, list[float]]:
    """`ctdb readkey` of keys the victim was lmaster of (their slot moved), twice each."""
    from ctdblab.daemon.core.db.ltdbrules import lmaster_of
    keys = [k for k in (b"rec-%08d" % i for i in range(0, count, max(1, count // 2000)))
            if lmaster_of(k, lmasters) == victim][:FIRST_USE_KEYS]
    out = cluster.node(reader).run([sys.executable, "-c", FIRST_USE, *(k.decode() for k in keys)],
                                   timeout=600).stdout
    return json.loads(out)


def _median(values: list[float]) -> float | None:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else None


def plot(results: list[dict], out: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for daemon, style in (("ctdb", "o-"), ("pyctdbd", "s-")):
        points = sorted((r["records"], r["recovery_s"]) for r in results
                        if r["daemon"] == daemon and r.get("recovery_s"))
        if points:
            ax.plot(*zip(*points), style, label={"ctdb": "real ctdbd 4.17", "pyctdbd": "pyctdbd"}[daemon])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("records in the volatile database (3 nodes)")
    ax.set_ylabel("recovery after a hard reset (s)")
    ax.set_title("Database recovery time against database size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path = out / "recovery_size.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.savefig(out / "recovery_size.svg")
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--daemons", default="pyctdbd,ctdb")
    p.add_argument("--out", type=Path, default=Path("results") / time.strftime("bench-recovery-%Y%m%d-%H%M%S"))
    args = p.parse_args()
    sizes = [int(float(x)) for x in args.sizes.split(",")]
    daemons = args.daemons.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for count in sizes:
        for daemon in daemons:
            try:
                result = one(daemon, count, args.out / f"{daemon}-{count}")
            except (ClusterNotReady, RuntimeError, subprocess.TimeoutExpired) as exc:
                progress(f"{daemon} {count}: not measured: {exc}")
                result = {"daemon": daemon, "records": count, "error": str(exc)}
            progress(f"{daemon} {count}: {json.dumps(result)}")
            results.append(result)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    rows = []
    for count in sizes:
        by = {r["daemon"]: r for r in results if r["records"] == count}
        py, ct = by.get("pyctdbd", {}), by.get("ctdb", {})
        ratio = (py["recovery_s"] / ct["recovery_s"]
                 if py.get("recovery_s") and ct.get("recovery_s") else None)
        rows.append([count, ct.get("recovery_s"), py.get("recovery_s"), ratio,
                     ct.get("survivor_stall_s"), py.get("survivor_stall_s"),
                     ct.get("cut_to_finished_s"), py.get("cut_to_finished_s")])
    print(table(["records", "ctdbd rec s", "pyctdbd rec s", "py/ctdb", "ctdbd stall s",
                 "pyctdbd stall s", "ctdbd cut->done s", "pyctdbd cut->done s"], rows))
    uses = [[count, *(by.get(d, {}).get(f) for d in ("ctdb", "pyctdbd")
                      for f in ("first_use_p50_s", "second_use_p50_s"))]
            for count in sizes for by in [{r["daemon"]: r for r in results if r["records"] == count}]]
    print(f"\nFirst use after the recovery ({FIRST_USE_KEYS} keys of the lost node's slot, `ctdb readkey`"
          " twice each, p50 s):")
    print(table(["records", "ctdbd first", "ctdbd second", "pyctdbd first", "pyctdbd second"], uses))
    image = plot(results, args.out)
    print(f"results: {args.out / 'results.json'}" + (f"; plot: {image}" if image else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
