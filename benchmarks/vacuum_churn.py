"""Vacuuming under SMB file churn: tombstones and TDB file sizes while files are created and
deleted through clustered smbd, real ctdbd and pyctdbd side by side.

    .venv/bin/python -m benchmarks.vacuum_churn                       # 100,000 files, 2 rounds
    .venv/bin/python -m benchmarks.vacuum_churn --files 3000 --rounds 2 --daemons pyctdbd

For each daemon a 3-node cluster starts with clustered smbd (ctdbd with the lab's "aggressive"
tunables, pyctdbd with its defaults, as recovery_size.py runs them: those profiles differ only
in failure-detection and recovery timers; neither sets a vacuum tunable, so VacuumInterval (10 s)
and VacuumFastPathCount are both daemons' defaults -- read back with ``ctdb getvar`` and stored).
Each round creates ``--files`` files (1 byte, ``put``) and then deletes them (``del``), spread
evenly over every public IP: one ``smbclient`` per IP from the client, reading its commands from
stdin, all IPs at once; the files sit in directories of ``--dir-files`` each (a create looks the
new name up case-insensitively, a scan of its directory). Every round uses the same names.

On every node a census (tdb_census.py) counts records, tombstones and file bytes of every
volatile database every ``--sample-every`` seconds. After a round's last delete the census goes
on until no tombstone is left anywhere (or ``--settle`` seconds). Reported per daemon and round
(vacuum_churn_report.py): the time from the last delete to tombstones <= 1 % of the round's
peak and to 0, the peak, file bytes at the peak and at the end; per database the file bytes at
the end of each round (do the files stop growing?). results.json and the plot go to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ctdblab.cluster.lab import ClusterNotReady, LabCluster
from ctdblab.cluster.samba import SHARE, SMB_PASSWORD, SMB_USER

from .common import progress
from .recovery_size import log_events
from .tdb_census import CENSUS, CensusError, parse_census
from .vacuum_churn_report import cluster_series, first_drained, growth_table, plot, summary_table

SETUPS = {"pyctdbd": "default", "ctdb": "aggressive"}
TRACKED = ["locking.tdb", "brlock.tdb", "smbXsrv_open_global.tdb"]   # named in the issue
VACUUM_TUNABLES = ("VacuumInterval", "VacuumFastPathCount")
CHURN_DIR = "churn"
NT_STATUS = re.compile(r"NT_STATUS_[A-Z_]+")


def layout(files: int, ips: int, dir_files: int) -> list[list[str]]:
    """Each IP's files (SMB paths, backslashes), spread evenly: file i goes to IP i mod ips."""
    out: list[list[str]] = [[] for _ in range(ips)]
    for i in range(files):
        k, j = i % ips, i // ips
        out[k].append(f"{CHURN_DIR}\\ip{k}\\d{j // dir_files:04d}\\f{i:07d}")
    return out


def directories(paths: list[str]) -> list[str]:
    """Every directory the paths need, parents first."""
    dirs: dict[str, None] = {}              # ordered set
    for path in paths:
        parts = path.split("\\")[:-1]
        for n in range(1, len(parts) + 1):
            dirs.setdefault("\\".join(parts[:n]))
    return list(dirs)


def smbclient_outcome(output: str) -> dict:
    """What one smbclient session reported: files put, and NT_STATUS errors by code."""
    errors: dict[str, int] = {}
    for code in NT_STATUS.findall(output):
        errors[code] = errors.get(code, 0) + 1
    return {"put": output.count("putting file "), "errors": errors}


class Churn:
    """The client side: smbclient sessions, one per public IP, fed from stdin."""

    def __init__(self, cluster: LabCluster, timeout: float) -> None:
        self.cluster = cluster
        self.ips = cluster.public_ips()
        self.timeout = timeout

    def session(self, ip: str, commands: list[str]) -> tuple[int, dict]:
        proc = self.cluster.client(0).popen(
            ["smbclient", f"//{ip}/{SHARE}", "-U", f"{SMB_USER}%{SMB_PASSWORD}", "-m", "SMB3"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate("\n".join(commands) + "\nexit\n", timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise RuntimeError(f"smbclient to {ip} did not finish {len(commands)} commands in "
                               f"{self.timeout:.0f} s") from None
        return proc.returncode, smbclient_outcome(out)

    def phase(self, commands_per_ip: list[list[str]]) -> dict:
        """Every IP's commands at once; wall-clock start and end, summed outcome."""
        started = time.time()
        with ThreadPoolExecutor(max_workers=len(commands_per_ip)) as pool:
            outcomes = list(pool.map(self.session, self.ips, commands_per_ip))
        ended = time.time()
        errors: dict[str, int] = {}
        for _, outcome in outcomes:
            for code, n in outcome["errors"].items():
                errors[code] = errors.get(code, 0) + n
        return {"span": [started, ended], "put": sum(o["put"] for _, o in outcomes), "errors": errors,
                "exit_codes": [rc for rc, _ in outcomes]}


class CensusProcesses:
    """One census process per node; its lines collected by a thread per node."""

    def __init__(self, cluster: LabCluster, every: float) -> None:
        self.samples: list[dict] = []
        self.bad: list[str] = []
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        self._lock = threading.Lock()
        for node in cluster.nodes:
            directory = volatile_dir(cluster, node.index)
            errors = cluster.workdir / f"census-{node.name}.err"     # a file: a pipe could fill up
            with errors.open("w") as stderr:
                proc = node.popen([sys.executable, "-c", CENSUS, directory, str(node.index), str(every)],
                                  stdout=subprocess.PIPE, stderr=stderr, text=True)
            self.procs.append((proc, errors))
            threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                sample = parse_census(line).to_json()
            except CensusError as exc:
                with self._lock:
                    self.bad.append(str(exc))
                continue
            with self._lock:
                self.samples.append(sample)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.samples)

    def stop(self) -> str:
        errors = []
        for proc, stderr in self.procs:
            if proc.poll() is not None:
                errors.append(stderr.read_text(errors="replace")[-1000:])
            proc.kill()
            proc.wait(10)
        return "\n".join(e for e in errors if e)


def volatile_dir(cluster: LabCluster, pnn: int) -> str:
    """Where this node's daemon keeps volatile databases (from ``ctdb getdbstatus locking.tdb``)."""
    out = cluster.ctdb(pnn, "getdbstatus", "locking.tdb")
    m = re.search(r"^path: (\S+)$", out.stdout, re.M)
    if out.returncode != 0 or not m:
        raise ClusterNotReady(f"node {pnn}: ctdb getdbstatus locking.tdb: {out.stdout.strip()} "
                              f"{out.stderr.strip()}")
    return os.path.dirname(m.group(1))


def tunables(cluster: LabCluster) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for name in VACUUM_TUNABLES:
        m = re.search(r"=\s*(\d+)", cluster.ctdb(0, "getvar", name).stdout)
        found[name] = int(m.group(1)) if m else None
    return found


def files_left(share: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(share / CHURN_DIR))


def recoveries(cluster: LabCluster, start: float, end: float) -> int:
    """"Recovery has started" lines (both daemons log them) between start and end, most on any
    node: a recovery during the churn means a node was lost or rejoined -- the SMB sessions
    and the vacuum's figures of that round are not the quiet case."""
    counts = []
    for node in cluster.nodes:
        log = cluster.workdir / "nodes" / node.name / "log" / "ctdb" / "log.ctdb"
        events = log_events(log, start) if log.exists() else []
        counts.append(sum(1 for t, text in events if t <= end and "Recovery has started" in text))
    return max(counts, default=0)


def settle(census: CensusProcesses, pnns: list[int], last_delete: float, limit: float, every: float) -> float:
    """Wait until a census wholly after the last delete counts no tombstone, or `limit` s."""
    deadline = last_delete + limit
    while time.time() < deadline:
        time.sleep(every)
        if first_drained(cluster_series(census.snapshot(), pnns), last_delete, 0) is not None:
            time.sleep(every)           # one census more: the plot shows the level after the drain
            break
    return time.time()


def one(daemon: str, args: argparse.Namespace, workdir: Path) -> dict:
    result: dict = {"daemon": daemon, "tunables": SETUPS[daemon], "files": args.files, "rounds": [],
                    "samples": [], "sample_every": args.sample_every}
    with LabCluster(3, daemon=daemon, tunables=SETUPS[daemon], clients=1, workdir=workdir) as cluster:
        cluster.wait_healthy()
        result["pnns"] = [node.index for node in cluster.nodes]
        result["vacuum_tunables"] = tunables(cluster)
        source = cluster.workdir / "churn-source"
        source.write_bytes(b"x")
        churn = Churn(cluster, timeout=args.phase_timeout)
        paths = layout(args.files, len(churn.ips), args.dir_files)
        setup = churn.phase([[f"mkdir {d}" for d in directories(p)] for p in paths])
        share = cluster.shared_dir / "share"
        progress(f"{daemon}: {len(churn.ips)} IPs, vacuum tunables {result['vacuum_tunables']}, "
                 f"directories made ({setup['errors'] or 'no errors'})")
        census = CensusProcesses(cluster, args.sample_every)
        try:
            result["t0"] = time.time()
            time.sleep(2 * args.sample_every)          # a baseline before the churn
            for number in range(1, args.rounds + 1):
                created = churn.phase([[f'put "{source}" {p}' for p in ps] for ps in paths])
                on_disk = files_left(share)
                progress(f"{daemon} round {number}: {created['put']} put in "
                         f"{created['span'][1] - created['span'][0]:.1f} s, {on_disk} on disk, "
                         f"errors {created['errors']}")
                deleted = churn.phase([[f"del {p}" for p in ps] for ps in paths])
                left = files_left(share)
                progress(f"{daemon} round {number}: deleted in {deleted['span'][1] - deleted['span'][0]:.1f} s, "
                         f"{left} left, errors {deleted['errors']}; settling")
                end = settle(census, result["pnns"], deleted["span"][1], args.settle, args.sample_every)
                result["rounds"].append({
                    "round": number, "files": args.files, "create": created["span"],
                    "delete": deleted["span"], "settle_end": end, "created": created["put"],
                    "on_disk": on_disk, "deleted": on_disk - left, "left": left,
                    "recoveries": recoveries(cluster, created["span"][0], end), "create_errors": sum(created["errors"].values()),
                    "delete_errors": sum(deleted["errors"].values()),
                    "errors": {"create": created["errors"], "delete": deleted["errors"]},
                    "exit_codes": created["exit_codes"] + deleted["exit_codes"]})
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            result["error"] = str(exc)
        finally:
            failed = census.stop()
            result["samples"] = census.snapshot()
            result["census_bad_lines"] = census.bad[:20]
            if failed:
                result["census_failed"] = failed
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=100_000, help="files created and deleted per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--settle", type=float, default=60.0,
                   help="s to wait after a round's last delete for the tombstones to drain")
    p.add_argument("--daemons", default="pyctdbd,ctdb")
    p.add_argument("--sample-every", type=float, default=2.0, help="s between two censuses of a node")
    p.add_argument("--dir-files", type=int, default=500, help="files per directory")
    p.add_argument("--phase-timeout", type=float, default=7200.0, help="s for one smbclient session")
    p.add_argument("--out", type=Path, default=Path("results") / time.strftime("bench-vacuum-%Y%m%d-%H%M%S"))
    p.add_argument("--replot", type=Path, metavar="RESULTS_JSON",
                   help="print the tables and draw the plot of an earlier run (into its folder)")
    args = p.parse_args(argv)
    if args.replot is not None:
        return report(json.loads(args.replot.read_text()), args.replot.parent)
    daemons = args.daemons.split(",")
    unknown = [d for d in daemons if d not in SETUPS]
    if unknown or args.files < 1 or args.rounds < 1 or args.sample_every <= 0 or args.dir_files < 1:
        p.error(f"daemons must be among {', '.join(SETUPS)}; --files, --rounds, --dir-files >= 1; "
                f"--sample-every > 0" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for daemon in daemons:
        try:
            result = one(daemon, args, args.out / daemon)
        except (ClusterNotReady, RuntimeError, subprocess.TimeoutExpired) as exc:
            progress(f"{daemon}: not measured: {exc}")
            result = {"daemon": daemon, "files": args.files, "error": str(exc), "rounds": [], "samples": []}
        results.append(result)
        (args.out / "results.json").write_text(json.dumps(results))
    return report(results, args.out)


def report(results: list[dict], out: Path) -> int:
    print("All volatile databases, sums over the 3 nodes:")
    print(summary_table(results))
    print(f"\nOnly {', '.join(TRACKED)}:")
    print(summary_table(results, TRACKED))
    print("\nFile bytes per database at the end of each round (sum over the nodes):")
    print(growth_table(results))
    for r in results:
        if r.get("error"):
            print(f"{r['daemon']}: {r['error']}")
    image = plot(results, out)
    print(f"results: {out / 'results.json'}" + (f"; plot: {image}" if image else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
