"""Contended opens on clustered Samba: smbtorture's smb2.bench.path-contention-shared through one
node, then spread over all nodes, for real ctdbd and pyctdbd (clustered smbd) side by side.

    .venv/bin/python -m benchmarks.contended_opens                      # both daemons
    .venv/bin/python -m benchmarks.contended_opens --daemons ctdb       # real ctdbd alone
    .venv/bin/python -m benchmarks.contended_opens --repeat 3 --nprocs 6 --seconds 10

The bench opens and closes the share's root directory in a loop on ``--nprocs`` connections
(``--qdepth`` requests in flight on each) for ``--seconds``, and prints opens/s averaged over the
run.  Every open and close updates the same locking.tdb record, so through one node it stays on
that node, and spread over the nodes (``--option=torture:unclist=FILE`` with one public IP per
node: smbtorture takes the next line for each connection) it migrates between them through the
cluster daemon on every open.  smbtorture runs in the lab client; each daemon gets its own
3-node cluster (clustered smbd, aggressive tunables), all up at once and torn down at the end;
the runs alternate between the daemons, so load from elsewhere on the machine hits both alike.

A short uncounted warm-up round comes first (``--warmup``; the first run on a fresh cluster was
about 30 % slower).  Printed: opens/s per mode (median of ``--repeat`` runs, with the runs), the
spread/one-node ratio per daemon, and pyctdbd/ctdbd per mode when both ran.  Each run also
records the CPU all nodes' daemon processes spent per open (from ``/proc``), the packets they
received per open (smbd's and other nodes' record packets, from ``ctdb statistics``) and so
their CPU per packet, and how busy the whole machine was: on a small machine the one-node cell
is CPU-bound, and then the daemons' CPU per open decides it.  A daemon whose cluster does not come up is reported as not measured (the
other is still measured).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from contextlib import ExitStack

from ctdblab import chaos
from ctdblab.cluster.lab import ClusterNotReady, LabCluster
from ctdblab.cluster.samba import SHARE, SMB_PASSWORD, SMB_USER
from ctdblab.stats import median

from .common import TICK, cpu_ticks, progress, table

DAEMONS = ("ctdb", "pyctdbd")
SUMMARY = re.compile(r"open\[num/s=(\d+),avslat=([0-9.]+),minlat=([0-9.]+),maxlat=([0-9.]+)\]")


def bench(cluster: LabCluster, ips: list[str], args: argparse.Namespace,
          seconds: int | None = None) -> dict:
    """One smbtorture bench run with its connections spread round-robin over ``ips``."""
    seconds = args.seconds if seconds is None else seconds
    unclist = cluster.workdir / f"unclist-{len(ips)}"
    unclist.write_text("".join(f"//{ip}/{SHARE}\n" for ip in ips))
    conf = cluster.workdir / "smbtorture.conf"
    conf.write_text("[global]\n")
    argv = ["smbtorture", f"//{ips[0]}/{SHARE}", "-U", f"{SMB_USER}%{SMB_PASSWORD}",
            "-s", str(conf), f"--option=torture:unclist={unclist}",
            f"--option=torture:nprocs={args.nprocs}", f"--option=torture:qdepth={args.qdepth}",
            f"--option=torture:timelimit={seconds}", "--option=torture:progress=no",
            "smb2.bench.path-contention-shared"]
    packets_before = packets_in(cluster)
    cpu_before, smbd_before, busy_before = daemon_cpu(cluster), smbd_cpu(cluster), machine_busy()
    done = cluster.client(0).run(argv, timeout=seconds + 120)
    cpu_after, smbd_after, busy_after = daemon_cpu(cluster), smbd_cpu(cluster), machine_busy()
    packets_after = packets_in(cluster)
    found = SUMMARY.findall(done.stderr + done.stdout)    # comments go to stderr, verdicts to stdout
    if done.returncode != 0 or not found or "success: path-contention-shared" not in done.stdout:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise RuntimeError(f"smbtorture bench failed (exit {done.returncode}): {' / '.join(tail)}")
    opens, avg, low, high = found[-1]
    # smbtorture's count covers its --timelimit; the CPU windows add its connect and teardown,
    # a second or so of light work, so the per-open CPU is a slight overestimate for both daemons.
    total_opens = max(1, int(opens) * seconds)
    per_node = [(cpu_after[pnn] - cpu_before.get(pnn, 0)) / TICK * 1e6 / total_opens
                for pnn in sorted(cpu_after)]
    busy, elapsed = (a - b for a, b in zip(busy_after, busy_before))
    # Packets over the whole window (the statistics are read outside the CPU window, so the
    # ctdb tool's own control packets add a handful to thousands).
    packets = [(packets_after.get(pnn, 0) - packets_before.get(pnn, 0)) / total_opens
               for pnn in sorted(cpu_after)]
    return {"opens_s": int(opens), "avg_latency_ms": float(avg) * 1e3,
            "max_latency_ms": float(high) * 1e3, "daemon_cpu_us": per_node,
            "smbd_cpu_us": (smbd_after - smbd_before) / TICK * 1e6 / total_opens,
            "packets_per_open": packets,
            "machine_busy_pct": 100 * busy / elapsed if elapsed else 0.0}


#: The counters of ``ctdb statistics`` that count the packets a daemon handles in this bench:
#: everything its local clients (smbd) send it, and the record packets other nodes send it.
#: (ctdbd's node_packets_recv also counts the controls it routes to itself, so it is not used.)
PACKETS_IN = ("client_packets_recv", "node.req_call", "node.reply_call", "node.req_dmaster",
              "node.reply_dmaster", "node.reply_error")


def packets_in(cluster: LabCluster) -> dict[int, int]:
    """Each node's PACKETS_IN so far, from its own `ctdb -X statistics` (0 if unreadable)."""
    out = {}
    for node in cluster.nodes:
        try:
            lines = cluster.ctdb(node.index, "-X", "statistics").stdout.strip().splitlines()
            fields = dict(zip(lines[0].strip("|").split("|"), lines[1].strip("|").split("|")))
            out[node.index] = sum(int(fields[name]) for name in PACKETS_IN)
        except (subprocess.SubprocessError, IndexError, KeyError, ValueError):
            out[node.index] = 0
    return out


def daemon_cpu(cluster: LabCluster) -> dict[int, int]:
    """Each node's daemon processes' CPU so far, children reaped included, in clock ticks."""
    out = {}
    for node in cluster.nodes:
        ticks = 0
        for pid in chaos.daemon_processes(cluster, node.index):
            try:
                ticks += sum(cpu_ticks(pid))
            except OSError:           # a helper that ended between the listing and the read
                pass
        out[node.index] = ticks
    return out


#: smbd and the helpers it forks (their process names): the parent, the connections' smbds,
#: notifyd and cleanupd
SMBD_PROGRAMS = ("smbd", "smbd-notifyd", "cleanupd")


def smbd_cpu(cluster: LabCluster) -> int:
    """All nodes' smbd processes' CPU so far, in clock ticks: their own and what they reaped of
    their children (a connection's smbd that ended). What the daemon costs smbd shows here: with
    the same bench, a daemon that answers slower or wakes smbd more makes this grow."""
    ticks = 0
    for node in cluster.nodes:
        for pid, _name, _start in cluster.node(node.index).find_programs(SMBD_PROGRAMS):
            try:
                ticks += sum(cpu_ticks(pid))
            except OSError:               # ended between the listing and the read
                pass
    return ticks


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat: how loaded the machine was."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    # guest time is already inside user and nice; steal is the hypervisor's, not this VM's work
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait + steal


def start_cluster(daemon: str, args: argparse.Namespace, stack: ExitStack) -> tuple:
    """A cluster of ``daemon`` (torn down with ``stack``) and its public IPs, one per node."""
    progress(f"{daemon}: starting a {args.nodes}-node cluster with clustered smbd")
    cluster = stack.enter_context(LabCluster(args.nodes, daemon=daemon, tunables=args.tunables,
                                             clients=1, clustered_smbd=True, progress=progress))
    per_node = cluster.ip_per_node()
    return cluster, [per_node[n.index] for n in cluster.nodes]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.contended_opens", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--daemons", default="ctdb,pyctdbd",
                   help="comma-separated: ctdb, pyctdbd (default both; ctdb is the reference)")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--nprocs", type=int, default=6, help="bench connections (default 6)")
    p.add_argument("--qdepth", type=int, default=1, help="requests in flight per connection")
    p.add_argument("--seconds", type=int, default=10, help="bench time per run (default 10)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3,
                   help="seconds of an uncounted run per mode and daemon first (0: none; default 3)")
    p.add_argument("--tunables", default="aggressive")
    args = p.parse_args(argv)
    daemons = [d.strip() for d in args.daemons.split(",") if d.strip()]
    bad = [d for d in daemons if d not in DAEMONS]
    if bad or not daemons:
        p.error(f"--daemons takes {', '.join(DAEMONS)}, not {args.daemons!r}")
    if args.nodes < 2:
        p.error("--nodes must be at least 2 (one node against several)")

    # The main connection takes unclist line 1 and stays idle; the bench's connections take
    # the next ones, so with nprocs a multiple of the node count they spread evenly.
    counts = [0] * args.nodes
    for i in range(1, args.nprocs + 1):
        counts[i % args.nodes] += 1
    progress(f"spread runs put {counts} bench connections on nodes {list(range(args.nodes))}")
    results: dict[str, dict[str, list[dict]]] = {}
    failures: dict[str, str] = {}
    with ExitStack() as stack:
        clusters = {}
        for daemon in daemons:
            try:
                clusters[daemon] = start_cluster(daemon, args, stack)
            except (ClusterNotReady, subprocess.TimeoutExpired) as e:
                failures[daemon] = str(e).splitlines()[0]
                progress(f"{daemon}: not measured: {failures[daemon]}")
        modes = {d: {"one": ips[:1], "spread": ips} for d, (_, ips) in clusters.items()}
        # Interleaved (daemon by daemon within each mode and repetition), so that load from
        # elsewhere on the machine falls on both daemons alike.
        rounds = [("warm-up", args.warmup)] * bool(args.warmup) + [
            (f"run {r + 1}/{args.repeat}", args.seconds) for r in range(args.repeat)]
        for label, seconds in rounds:
            for mode in ("one", "spread"):
                for daemon, (cluster, _) in clusters.items():
                    if daemon in failures:
                        continue
                    try:
                        result = bench(cluster, modes[daemon][mode], args, seconds=seconds)
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        failures[daemon] = str(e).splitlines()[0]
                        progress(f"{daemon}: not measured: {failures[daemon]}")
                        continue
                    progress(f"{daemon} {label} {mode}: {result['opens_s']} opens/s, "
                             f"avg latency {result['avg_latency_ms']:.2f} ms, daemon CPU per open "
                             f"{sum(result['daemon_cpu_us']):.0f} us (nodes "
                             f"{', '.join(f'{c:.0f}' for c in result['daemon_cpu_us'])}), "
                             f"packets in per open {sum(result['packets_per_open']):.2f} (nodes "
                             f"{', '.join(f'{c:.2f}' for c in result['packets_per_open'])}), "
                             f"smbd CPU per open {result['smbd_cpu_us']:.0f} us, "
                             f"machine {result['machine_busy_pct']:.0f} % busy")
                    if label != "warm-up":
                        results.setdefault(daemon, {"one": [], "spread": []})[mode].append(result)

    print(f"\nsmb2.bench.path-contention-shared: {args.nprocs} connections x qdepth "
          f"{args.qdepth}, {args.seconds} s per run, {args.repeat} runs per mode; "
          f"{args.nodes} nodes, clustered smbd, tunables {args.tunables}; median opens/s (runs)\n")
    rows = []
    medians: dict[str, dict[str, float]] = {}
    for daemon in daemons:
        if daemon in failures:
            rows.append([daemon, "not measured"] + [""] * 8)
            continue
        runs = results[daemon]
        m = {mode: median([r["opens_s"] for r in runs[mode]]) for mode in runs}
        lat = {mode: median([r["avg_latency_ms"] for r in runs[mode]]) for mode in runs}
        cpu = {mode: median([sum(r["daemon_cpu_us"]) for r in runs[mode]]) for mode in runs}
        busy = {mode: median([r["machine_busy_pct"] for r in runs[mode]]) for mode in runs}
        smbd = {mode: median([r["smbd_cpu_us"] for r in runs[mode]]) for mode in runs}
        packets = {mode: median([sum(r["packets_per_open"]) for r in runs[mode]]) for mode in runs}
        per_packet = {mode: median([sum(r["daemon_cpu_us"]) / sum(r["packets_per_open"])
                                    if sum(r["packets_per_open"]) else 0.0 for r in runs[mode]])
                      for mode in runs}
        medians[daemon] = m
        rows.append([daemon,
                     f"{m['one']:.0f} ({', '.join(str(r['opens_s']) for r in runs['one'])})",
                     f"{m['spread']:.0f} ({', '.join(str(r['opens_s']) for r in runs['spread'])})",
                     f"{m['spread'] / m['one']:.2f}" if m["one"] else "-",
                     f"{lat['one']:.2f} / {lat['spread']:.2f}",
                     f"{cpu['one']:.0f} / {cpu['spread']:.0f}",
                     f"{packets['one']:.2f} / {packets['spread']:.2f}",
                     f"{per_packet['one']:.0f} / {per_packet['spread']:.0f}",
                     f"{smbd['one']:.0f} / {smbd['spread']:.0f}",
                     f"{busy['one']:.0f} / {busy['spread']:.0f}"])
    print(table(["daemon", "through 1 node", f"spread over {args.nodes}", "spread/one",
                 "avg latency ms (one / spread)", "daemon CPU us/open", "packets in/open",
                 "daemon CPU us/packet", "smbd CPU us/open", "machine busy %"], rows))
    print("\ndaemon CPU us/open: all nodes' daemon processes (helpers they reaped included) over a "
          "run, per open; packets in/open: what all daemons received per open (smbd's packets and "
          "the record packets of other nodes, from `ctdb statistics`), and the daemon CPU per such "
          "packet; smbd CPU us/open: all nodes' smbd processes (connections' smbds that ended "
          "included) per open; machine busy %: all CPUs, the whole machine, over the same run")
    if "ctdb" in medians and "pyctdbd" in medians:
        ref, py = medians["ctdb"], medians["pyctdbd"]
        print("\npyctdbd / ctdbd: " + ", ".join(
            f"{mode} {py[mode] / ref[mode]:.2f}x" if ref[mode] else f"{mode} -"
            for mode in ("one", "spread")))
    for daemon, reason in failures.items():
        print(f"\n{daemon} not measured: {reason}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
