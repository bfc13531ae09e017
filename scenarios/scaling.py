"""Scaling: SMB read throughput through all public IPs for N = 1..K nodes.

For each N a fresh N-node cluster is built with every node's public link capped (htb, ``--bw``)
and one uncapped client.  N readers run at once, reader k reading its own file through public IP
k, with two tools:

``smbclient``    ``get FILE /dev/null`` of a file sized for about 10 s at the cap;
                 aggregate = N × size / makespan (first start to last finish).
``smbprotocol``  1 MiB reads, one outstanding, for a fixed time, all starting together;
                 aggregate = Σ bytes / (last end − first start).

MB/s is 10^6 bytes per second, so a 100 Mbit/s cap is 12.5 MB/s.  The files hold pseudo-random
bytes and are read once on the host first so the page cache serves them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from ctdblab import events
from ctdblab.cluster.lab import LabCluster
from ctdblab.cluster.samba import SHARE, SMB_PASSWORD, SMB_USER, ensure_test_file
from ctdblab.errors import UserError
from ctdblab.history import History
from ctdblab.stats import summarize

CLIENT_TOOLS = ("smbclient", "smbprotocol")
READ_SECONDS = 10.0


def file_size(bw_mbit: float | None) -> int:
    """About READ_SECONDS of reading at the cap; 1 GiB when uncapped."""
    if bw_mbit is None:
        return 1 << 30
    mib = int(bw_mbit / 8 * READ_SECONDS * 1e6 / (1 << 20)) + 1
    return max(16, min(mib, 1024)) << 20


def run_scaling(*, daemon: str, node_counts: list[int], bw_mbit: float | None, tunables: str,
                repeat: int, out: Path, progress: Callable[[str], None]) -> dict:
    if max(node_counts) > 16:
        raise UserError("scaling runs up to 16 nodes (one client link carries them all)")
    size = file_size(bw_mbit)
    results: dict = {"scenario": "scaling", "daemon": daemon, "bw_mbit": bw_mbit,
                     "tunables": tunables, "file_bytes": size, "points": []}
    with History(out / "history.jsonl") as history:
        for n in node_counts:
            progress(f"scaling: N={n} ({daemon}, {bw_mbit or 'uncapped'} Mbit/s per node)")
            with LabCluster(n, daemon=daemon, tunables=tunables, clients=1, bw_mbit=bw_mbit,
                            workdir=out / "cluster", progress=progress) as cluster:
                files = [ensure_test_file(cluster.shared_dir / "share", f"scale-{k}.bin", size).name
                         for k in range(n)]
                _warm_page_cache(cluster.shared_dir / "share", files)
                ips = _one_ip_per_node(cluster)
                for run in range(repeat):
                    history.run = run
                    history.record(events.run_start(run, scenario="scaling", daemon=daemon,
                                                    nodes=n, bw_mbit=bw_mbit, tunables=tunables,
                                                    file_bytes=size, ips=ips))
                    for tool in CLIENT_TOOLS:
                        mb_s = _measure(cluster, tool, ips, files, size, history)
                        results["points"].append({"nodes": n, "client": tool, "mb_s": mb_s,
                                                  "run": run})
                        progress(f"  N={n} run {run + 1}/{repeat} {tool}: {mb_s:.1f} MB/s")
                    history.record(events.run_end(run))
                history.run = None
                for name in files:       # large and regenerated on demand: do not leave them
                    (cluster.shared_dir / "share" / name).unlink(missing_ok=True)
    results["summary"] = {
        tool: {str(n): summarize(p["mb_s"] for p in results["points"]
                                 if p["nodes"] == n and p["client"] == tool)
               for n in node_counts}
        for tool in CLIENT_TOOLS}
    return results


def _one_ip_per_node(cluster: LabCluster) -> list[str]:
    by_node: dict[int, str] = {}
    for ip, pnn in sorted(cluster.ip_all().items()):
        by_node.setdefault(pnn, ip)
    if len(by_node) != len(cluster.nodes):
        raise RuntimeError(f"expected every node to host a public IP, got {by_node}")
    return [by_node[p] for p in sorted(by_node)]


def _warm_page_cache(share: Path, files: list[str]) -> None:
    for name in files:
        with open(share / name, "rb") as f:
            while f.read(8 << 20):
                pass


def _measure(cluster: LabCluster, tool: str, ips: list[str], files: list[str], size: int,
             history: History) -> float:
    client = cluster.client(0)
    if tool == "smbclient":
        procs = []
        t0 = time.time()
        for k, (ip, name) in enumerate(zip(ips, files)):
            history.record(events.op_invoke(f"smbclient-{k}", "smb_get", k, target=ip,
                                            role="survivor"))
            procs.append(client.popen(
                ["smbclient", f"//{ip}/{SHARE}", "-U", f"{SMB_USER}%{SMB_PASSWORD}", "-m", "SMB3",
                 "-c", f"get {name} /dev/null"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True))
        for k, proc in enumerate(procs):
            output, _ = proc.communicate(timeout=600)
            t = time.time()
            if proc.returncode != 0:
                history.record(events.op_fail(f"smbclient-{k}", "smb_get", k, latency_s=t - t0,
                                              error=output.strip()[-300:], target=ips[k],
                                              role="survivor", t=t))
                raise RuntimeError(f"smbclient from {ips[k]} failed: {output.strip()[-300:]}")
            history.record(events.op_ok(f"smbclient-{k}", "smb_get", k, latency_s=t - t0,
                                        target=ips[k], role="survivor", t=t, bytes=size))
        makespan = time.time() - t0
        return len(ips) * size / makespan / 1e6
    # smbprotocol readers: common start time, fixed duration
    start_at = time.time() + 3.0
    procs = [client.popen([sys.executable, "-m", "ctdblab.scenarios.smbread", "--server", ip,
                           "--share", SHARE, "--file", name, "--user", SMB_USER,
                           "--password", SMB_PASSWORD, "--duration", str(READ_SECONDS),
                           "--start-at", str(start_at)], stdout=subprocess.PIPE, text=True)
             for ip, name in zip(ips, files)]
    reports = []
    for k, proc in enumerate(procs):
        output, _ = proc.communicate(timeout=READ_SECONDS + 120)
        line = output.strip().splitlines()[-1] if output.strip() else "{}"
        report = json.loads(line)
        if "error" in report or proc.returncode != 0:
            raise RuntimeError(f"smbprotocol reader from {ips[k]} failed: {report.get('error')}")
        history.record(events.op_ok(f"smbprotocol-{k}", "smb_read_for", k,
                                    latency_s=report["t_end"] - report["t_start"], target=ips[k],
                                    role="survivor", t=report["t_end"], bytes=report["bytes"]))
        reports.append(report)
    span = max(r["t_end"] for r in reports) - min(r["t_start"] for r in reports)
    return sum(r["bytes"] for r in reports) / span / 1e6
