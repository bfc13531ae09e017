"""Idle CPU and memory per daemon at 3, 8 and 16 nodes, pyctdbd next to real CTDB.

    .venv/bin/python -m benchmarks.idle_cost [--nodes 3,8,16] [--daemons pyctdbd,ctdb] [--window 30]
    .venv/bin/python -m benchmarks.idle_cost --clustered-smbd --nodes 3    # with Samba's 16 databases

For each size a cluster starts (default tunables, a standalone smbd on every node unless
``--clustered-smbd``), settles for 10 s, then the
CPU time of every daemon process is sampled from /proc over --window seconds.  Printed per node:
CPU of the daemon's own processes (% of one core, from its threads' schedstat in nanoseconds where
the kernel keeps it, else from /proc/PID/stat's 10 ms ticks; over 40 s on an idle cluster the two
agreed within 0.015 % of a core), the same including the event scripts it ran (children it reaped,
in ticks), RSS and PSS summed over the daemon's processes.  smbd is not counted.
Target for pyctdbd: ≤ 0.5 % of a core and ≤ 60 MiB per daemon.

``--clustered-smbd``: smbd runs with ``clustering = yes`` (the lab's default), and before the window every node must have the databases a clustered Samba
has attached (reference/clustered-db.md §1: 9 volatile — smbXsrv_{open,tcon,session,client,
version}_global, leases, locking, brlock, g_lock — and 7 persistent — secrets, passdb,
account_policy, group_mapping, share_info, registry, ctdb): one SMB session per node
(smbclient on the node itself) attaches the per-session ones; the names attached are printed.
``--daemons pyctdbd,keepalived --tunables fast`` sets pyctdbd beside keepalived, the fast
profile's yardstick (smbd runs standalone with keepalived, which has no clustered database).
When the profile's heartbeats are faster than 100 ms, a bare asyncio loop waking at the heartbeat
interval and sending one datagram per peer (`benchmarks.wakeup_floor`) runs during each pyctdbd
window: the machine's floor for any Python daemon at that rate, printed beside the figures (it
moved from 0.70 % to 1.65 % of a core between two days on the lab VM).
``--daemons pyctdbd,pyctdbd-python,...``: ``pyctdbd-python`` is pyctdbd with its native heartbeat
pacer unused (``PYCTDBD_NATIVE=0``: the Python pacer thread paces the fast profile's beats),
printed with its ratio to pyctdbd, so the two pacers compare in one run.
``--profile SECONDS`` then records each pyctdbd with py-spy for that long after the window
(`py-spy record --format raw`; the files are named in the output).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ctdblab import chaos
from ctdblab.cluster.lab import LabCluster
from ctdblab.cluster.launchers import get_launcher
from ctdblab.cluster.profiles import get_profile
from ctdblab.cluster.samba import SHARE, SMB_PASSWORD, SMB_USER
from ctdblab.stats import median

from .common import TICK, cpu_ticks, progress, table, threads_cpu_ns

#: pyctdbd with the Python pacer thread instead of the native one
PYTHON_PACED = "pyctdbd-python"
#: The databases of a running clustered Samba 4.17 (reference/clustered-db.md §1).
SAMBA_DATABASES = (
    [f"smbXsrv_{x}_global.tdb" for x in ("open", "tcon", "session", "client", "version")]
    + ["leases.tdb", "locking.tdb", "brlock.tdb", "g_lock.tdb"]
    + [f"{x}.tdb" for x in ("secrets", "passdb", "account_policy", "group_mapping", "share_info",
                            "registry", "ctdb")])
PY_SPY = shutil.which("py-spy") or str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "py-spy")


def memory_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def start_floor(heartbeat_ms: int | None, peers: int, window: float) -> subprocess.Popen | None:
    """`benchmarks.wakeup_floor` for the window, at the heartbeat rate, on the host; None when
    the profile keeps CTDB's slow heartbeats (the floor is then far below any figure)."""
    if not heartbeat_ms or heartbeat_ms >= 100:
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.wakeup_floor", "--json", "--interval", str(heartbeat_ms / 1000),
         "--datagrams", str(peers), "--seconds", str(window)],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)


def floor_result(proc: subprocess.Popen | None) -> dict | None:
    if proc is None:
        return None
    out, _ = proc.communicate(timeout=120)
    try:
        return json.loads(out)
    except ValueError:
        progress(f"wakeup_floor printed no result (exit {proc.returncode})")
        return None


def measure(cluster: LabCluster, window: float, heartbeat_ms: int | None = None) -> tuple[list[dict], dict | None]:
    """Each node's daemon CPU and memory over `window`, and the wake-up floor measured meanwhile."""
    procs = {n.index: list(chaos.daemon_processes(cluster, n.index)) for n in cluster.nodes}
    before = {pid: cpu_ticks(pid) for pids in procs.values() for pid in pids}
    before_ns = {pid: threads_cpu_ns(pid) for pids in procs.values() for pid in pids}
    floor = start_floor(heartbeat_ms, len(cluster.nodes) - 1, window)
    t0 = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - t0
    rows = []
    for pnn, pids in procs.items():
        own = kids = rss = pss = 0
        own_ns: int | None = 0
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
            start, end = before_ns.get(pid), threads_cpu_ns(pid)
            if own_ns is not None and start is not None and end is not None:
                # a thread that ended in the window takes its share with it (pyctdbd's live on)
                own_ns += sum(ns - start.get(tid, 0) for tid, ns in end.items())
            else:
                own_ns = None
        own_s = own_ns / 1e9 if own_ns is not None else own / TICK
        rows.append({"pnn": pnn, "procs": len(pids),
                     "cpu_pct": 100 * own_s / elapsed,
                     "cpu_with_scripts_pct": 100 * (own_s + kids / TICK) / elapsed,
                     "rss_mib": rss / 1024, "pss_mib": pss / 1024})
    return rows, floor_result(floor)


def attached_databases(cluster: LabCluster, pnn: int) -> list[str]:
    result = cluster.ctdb(pnn, "getdbmap", timeout=30)
    return re.findall(r"^dbid:0x[0-9a-f]+ name:(\S+) ", result.stdout, re.M)


def attach_samba_databases(cluster: LabCluster, timeout: float = 90.0) -> dict[int, list[str]]:
    """Wait until every node has the databases a clustered Samba attaches; one SMB session per
    node (smbclient on the node, to its own smbd) brings the per-session ones. Returns each
    node's attached names (the wait ends after `timeout` either way: what is missing shows)."""
    for node in cluster.nodes:
        node.run(["smbclient", f"//127.0.0.1/{SHARE}", "-U", f"{SMB_USER}%{SMB_PASSWORD}",
                  "-c", "ls"], timeout=60)
    deadline = time.monotonic() + timeout
    while True:
        names = {n.index: attached_databases(cluster, n.index) for n in cluster.nodes}
        if all(set(SAMBA_DATABASES) <= set(v) for v in names.values()) or time.monotonic() > deadline:
            return names
        time.sleep(1)


def profile(cluster: LabCluster, seconds: float, out_dir: Path) -> list[Path]:
    """py-spy record (raw, --idle) of each node's pyctdbd for `seconds`; the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    procs, files = [], []
    for node in cluster.nodes:
        for pid in chaos.daemon_processes(cluster, node.index):
            path = out_dir / f"pyctdbd-node{node.index}-{pid}.txt"
            procs.append(subprocess.Popen(
                [PY_SPY, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "1000",
                 "--idle", "--format", "raw", "--output", str(path), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            files.append(path)
    for proc in procs:
        try:
            proc.wait(seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return [f for f in files if f.exists()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", default="3,8,16")
    p.add_argument("--daemons", default="pyctdbd,ctdb")
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--tunables", default="default")
    p.add_argument("--clustered-smbd", action="store_true",
                   help="clustered smbd with its 16 databases attached on every node")
    p.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                   help="py-spy each pyctdbd for SECONDS after the window")
    p.add_argument("--profile-dir", type=Path, default=Path("results") / time.strftime("idle-profile-%Y%m%d-%H%M%S"))
    args = p.parse_args()
    heartbeat_ms = get_profile(args.tunables).pyctdbd_tunables.get("HeartbeatIntervalMs")
    out = []
    notes = []
    for daemon in args.daemons.split(","):
        # keepalived has no clustered database: smbd runs standalone beside it
        clustered = bool(args.clustered_smbd) and daemon != "keepalived"
        for n in (int(x) for x in args.nodes.split(",")):
            progress(f"{daemon}: {n} nodes{' with clustered smbd' if clustered else ''}")
            launcher = get_launcher("pyctdbd" if daemon == PYTHON_PACED else daemon, smb_clustered=clustered)
            if daemon == PYTHON_PACED:
                launcher.env["PYCTDBD_NATIVE"] = "0"
            with LabCluster(n, daemon=launcher, tunables=args.tunables, clients=0, progress=progress) as cluster:
                dbs = None
                if clustered:
                    names = attach_samba_databases(cluster)
                    dbs = min(len(v) for v in names.values())
                    missing = sorted(set(SAMBA_DATABASES) - set.intersection(*map(set, names.values())))
                    extra = sorted(set.union(*map(set, names.values())) - set(SAMBA_DATABASES))
                    notes.append(f"{daemon} {n} nodes: {dbs}..{max(len(v) for v in names.values())} "
                                 f"databases per node; missing {missing or 'none'}; others {extra or 'none'}")
                    progress(notes[-1])
                time.sleep(10)
                rows, floor = measure(cluster, args.window, heartbeat_ms if daemon.startswith("pyctdbd") else None)
                if floor:
                    out.append([f"floor ({n - 1} datagrams/{heartbeat_ms} ms)", n, None, floor["cpu_pct"],
                                None, None, None, None, None, None])
                    notes.append(f"floor, {n} nodes: a bare asyncio loop waking every {heartbeat_ms} ms and "
                                 f"sending {n - 1} datagrams per wake-up, during the pyctdbd window: "
                                 f"{floor['us_per_wakeup']:.0f} µs of CPU per wake-up")
                if args.profile and daemon.startswith("pyctdbd"):
                    files = profile(cluster, args.profile, args.profile_dir / f"{n}-nodes")
                    notes.append(f"py-spy profiles ({args.profile:.0f} s each): "
                                 + ", ".join(map(str, files)))
            med = lambda key: median(r[key] for r in rows)
            mx = lambda key: max(r[key] for r in rows)
            out.append([daemon, n, dbs, med("cpu_pct"), mx("cpu_pct"), med("cpu_with_scripts_pct"),
                        med("rss_mib"), mx("rss_mib"), med("pss_mib"), rows[0]["procs"]])
    for n in (int(x) for x in args.nodes.split(",")):      # pyctdbd / each reference, same run
        py = next((r for r in out if r[0] == "pyctdbd" and r[1] == n), None)
        for reference, label in (("ctdb", "py/ctdb"), ("keepalived", "py/keepalived"),
                                 (PYTHON_PACED, "native/Python pacer")):
            ref = next((r for r in out if r[0] == reference and r[1] == n), None)
            if py and ref:
                out.append([f"ratio {label}", n, None]
                           + [a / b if a is not None and b else None for a, b in zip(py[3:9], ref[3:9])]
                           + [None])
    smbd = ("clustered smbd (standalone with keepalived), not counted" if args.clustered_smbd
            else "smbd not counted")
    print(f"\nidle cost per node over {args.window:.0f} s ({args.tunables} tunables; {smbd})")
    print(table(["daemon", "nodes", "dbs", "cpu% p50", "cpu% max", "cpu%+scripts", "RSS MiB p50",
                 "RSS MiB max", "PSS MiB p50", "procs/node"], out))
    for note in notes:
        print(f"  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
