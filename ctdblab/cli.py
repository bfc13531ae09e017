"""ctdblab: bring lab clusters up, run failover and scaling scenarios, draw reports.

  ctdblab up --nodes 3 --daemon ctdb [--detach]     a cluster to play with
  ctdblab up --daemon pyctdbd --no-clustered-smbd    ... with a standalone smbd (no databases in the daemon)
  ctdblab up --daemon keepalived --tunables fast     keepalived (VRRPv3, 10 ms adverts), standalone smbd
  ctdblab up --daemon ctdb --lock etcd               cluster lock in etcd (one member per node, private net)
  ctdblab exec 0 -- ctdb status                      run a command inside node PNN 0 (c0 = client 0)
  ctdblab down                                       remove detached clusters
  ctdblab snapshot                                   snapshot the [snap] share (previous versions)
  ctdblab run failover --daemon pyctdbd --nodes 3 --repeat 3 --tunables aggressive --out DIR
  ctdblab run scaling --daemon ctdb --nodes 1..4 --bw 100 --out DIR
  ctdblab run soak --daemon pyctdbd --nodes 5 --faults 200 --seed 7 --out DIR
  ctdblab run upgrade --daemon pyctdbd --nodes 3 [--from REV --to REV] --out DIR
  ctdblab report DIR                                 (re)draw plots and report.md from DIR
  ctdblab report --recheck DIR                       soak, upgrade: check its history again, then draw
  ctdblab demo                                       3-node failover of pyctdbd and ctdb, with report

Real machines instead of Mininet (README, "Running on real blades"):
  ctdblab up --hosts inventory.toml --daemon pyctdbd [--detach]
  ctdblab exec --hosts inventory.toml 0 -- ctdb status
  ctdblab run failover --hosts inventory.toml --allow-hard-reset --daemon pyctdbd --out DIR
  ctdblab down --hosts inventory.toml
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from .errors import UserError

DAEMONS = ("ctdb", "pyctdbd", "keepalived")
LOCKS = ("file", "etcd")
LOCK_HELP = ("where the cluster lock lives: file (a file in the shared directory, reachable from "
             "both sides of a partition) or etcd (a lease in an etcd cluster of one member per "
             "node on the private network, through CTDB's ctdb_etcd_lock; default file)")


class Progress:
    """Progress lines on stderr with the elapsed time, for long runs."""

    def __init__(self, quiet: bool = False):
        self.t0 = time.monotonic()
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:7.1f}s] {message}", file=sys.stderr, flush=True)


def parse_node_range(text: str) -> list[int]:
    """``3`` -> [3]; ``1..4`` -> [1, 2, 3, 4]."""
    try:
        if ".." in text:
            lo, hi = (int(x) for x in text.split("..", 1))
        else:
            lo = hi = int(text)
    except ValueError:
        raise UserError(f"--nodes takes N or A..B (e.g. 3 or 1..4), not {text!r}") from None
    if lo < 1 or hi < lo:
        raise UserError(f"--nodes range {text!r} is empty or starts below 1")
    return list(range(lo, hi + 1))


def parse_link(items: list[str], bw: float | None) -> dict[str, str]:
    """``["bw=100", "delay=5ms"]`` -> {"bw": "100", "delay": "5ms"}; validated by LinkSpec."""
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--link takes KEY=VALUE (e.g. bw=100), not {item!r}")
        params[key.strip()] = value.strip()
    if bw is not None:
        params["bw"] = str(bw)
    return params


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctdblab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = sub.add_parser("up", help="bring a cluster up and keep it until Ctrl-C (or --detach)")
    up.add_argument("--nodes", type=int, default=None, help="default 3 (with --hosts: the inventory's)")
    up.add_argument("--hosts", type=Path, metavar="INVENTORY.toml",
                    help="real machines over SSH instead of Mininet (see README)")
    up.add_argument("--daemon", choices=DAEMONS, default="ctdb")
    up.add_argument("--tunables", default="default")
    up.add_argument("--clients", type=int, default=1)
    up.add_argument("--bw", type=float, default=None, metavar="MBIT",
                    help="cap each node's public link (htb)")
    up.add_argument("--link", action="append", default=[], metavar="KEY=VALUE",
                    help="node public-link shaping, e.g. bw=100 (htb only: this kernel has no netem)")
    up.add_argument("--clustered-smbd", action=argparse.BooleanOptionalAction, default=None,
                    help="run smbd with `clustering = yes` (its databases in the daemon) or not; "
                         "default: clustered, with either daemon")
    up.add_argument("--lock", choices=LOCKS, default="file", help=LOCK_HELP)
    up.add_argument("--detach", action="store_true", help="leave it running; `ctdblab down` removes it")

    ex = sub.add_parser("exec", help="run a command inside a node (PNN) or client (cN)")
    ex.add_argument("target", help="node PNN (0-based, as CTDB numbers nodes) or cN for client N")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    ex.add_argument("--cluster", help="prefix of the cluster (when several are up)")
    ex.add_argument("--hosts", type=Path, metavar="INVENTORY.toml",
                    help="run it on that inventory's host (PNN) or client (cN) over SSH")
    ex.add_argument("--timeout", type=float, default=600.0,
                    help="seconds before the command is killed (0: never)")

    down = sub.add_parser("down", help="remove running lab clusters")
    down.add_argument("--cluster", help="only this prefix")
    down.add_argument("--hosts", type=Path, metavar="INVENTORY.toml",
                      help="stop the daemon and smbd on that inventory's hosts, remove the lab's "
                           "nftables tables and floating IPs there")

    snap = sub.add_parser("snapshot", help="snapshot the [snap] share of a running cluster "
                                           "(its previous versions, vfs shadow_copy2)")
    snap.add_argument("--cluster", help="prefix of the cluster (when several are up)")
    snap.add_argument("--list", action="store_true", help="only list the snapshots")

    run = sub.add_parser("run", help="run a scenario; writes results.json, history.jsonl, plots")
    run.add_argument("scenario", help="failover, scaling, soak or upgrade")
    run.add_argument("--daemon", choices=DAEMONS, default="ctdb")
    run.add_argument("--nodes", default=None, help="N, or A..B for scaling (default 3; with --hosts: "
                                                  "the inventory's host count)")
    run.add_argument("--hosts", type=Path, metavar="INVENTORY.toml",
                     help="failover on real machines over SSH instead of Mininet (see README)")
    run.add_argument("--allow-hard-reset", action="store_true",
                     help="with --hosts: allow the hard reset (sysrq-b or the inventory's "
                          "off_command) of the victim host; never done without it")
    run.add_argument("--repeat", type=int, default=1)
    run.add_argument("--tunables", default=None,
                     help="tunables profile (default: aggressive for soak, default otherwise)")
    run.add_argument("--faults", type=int, default=20, help="soak: how many scheduled faults")
    run.add_argument("--seed", type=int, default=1, help="soak: seed of the fault schedule")
    run.add_argument("--sample-period", type=float, default=None, metavar="S",
                     help="soak: ground-truth sampling period (default 0.5 s)")
    run.add_argument("--from", dest="from_rev", default=None, metavar="REV",
                     help="upgrade (pyctdbd): git revision of the build every node starts on "
                          "(default: the working tree)")
    run.add_argument("--to", dest="to_rev", default=None, metavar="REV",
                     help="upgrade (pyctdbd): git revision each node is upgraded to (default: "
                          "the working tree; a same-version build gets its version bumped)")
    run.add_argument("--order", default="pnn",
                     help="upgrade: node order, pnn, reverse or a list like 2,0,1 (default pnn)")
    run.add_argument("--victim", default="nonleader", help="leader, nonleader or a PNN")
    run.add_argument("--bw", type=float, default=None, metavar="MBIT")
    run.add_argument("--link", action="append", default=[], metavar="KEY=VALUE",
                     help="node public-link shaping, e.g. bw=100 (htb only: no netem here)")
    run.add_argument("--lock", choices=LOCKS, default="file", help="failover, soak: " + LOCK_HELP)
    run.add_argument("--out", required=True, type=Path)
    run.add_argument("--clustered-smbd", action=argparse.BooleanOptionalAction, default=None,
                     help="failover: smbd with clustering = yes (its databases in the daemon) or "
                          "standalone; default: the daemon's (see `up`)")
    run.add_argument("--check-data", action="store_true",
                     help="failover: also write checksummed blocks over SMB through every node's "
                          "IP, contend for a dead client's file and commit `ctdb pstore` loops on "
                          "every node, then prove no acknowledged write or commit was lost "
                          "(off by default: it loads the nodes while the metrics are measured)")
    run.add_argument("--then", choices=("death", "leader-death", "heal"), default=None,
                     help="failover, 5+ nodes: a second fault the moment the recovery after the "
                          "hard reset starts: another node powered off (death), the leader "
                          "powered off (leader-death), or a node partitioned away before the run "
                          "gets its network back (heal); use with --check-data")
    run.add_argument("--check", type=Path, metavar="THRESHOLDS.toml",
                     help="exit with status 1 if a figure exceeds these limits (for CI)")

    rep = sub.add_parser("report", help="draw plots and report.md from a run directory")
    rep.add_argument("dir", type=Path)
    rep.add_argument("--recheck", action="store_true",
                     help="soak: check the history again with the current checkers first")

    demo = sub.add_parser("demo", help="3-node failover of pyctdbd and ctdb, then the report")
    demo.add_argument("--out", type=Path, default=None)
    demo.add_argument("--repeat", type=int, default=1)
    demo.add_argument("--daemons", default="pyctdbd,ctdb")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    progress = Progress(args.quiet)
    _terminate_on_sigterm()
    try:
        if args.command is None:
            parser.print_help()
            return 0
        handler = COMMANDS[args.command]
        return handler(args, progress) or 0
    except UserError as e:
        print(f"ctdblab: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ctdblab: interrupted; the lab was cleaned up", file=sys.stderr)
        return 130


def _terminate_on_sigterm() -> None:
    # SIGTERM unwinds like Ctrl-C, so every `with LabCluster(...)` tears its network down.
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


# -- commands -----------------------------------------------------------------------------------------
def cmd_up(args, progress) -> int:
    from .cluster.lab import LabCluster

    inventory = _load_hosts(args.hosts)
    nodes = args.nodes if args.nodes is not None else 3
    clients = args.clients
    if inventory is not None:
        if args.nodes is not None and args.nodes != len(inventory.hosts):
            raise UserError(f"--nodes {args.nodes} contradicts {args.hosts}, which has "
                            f"{len(inventory.hosts)} hosts (leave --nodes out)")
        nodes, clients = len(inventory.hosts), min(args.clients, len(inventory.clients))
    cluster = LabCluster(nodes, daemon=args.daemon, tunables=args.tunables,
                         clients=clients, link_params=parse_link(args.link, args.bw),
                         progress=progress, clustered_smbd=args.clustered_smbd, inventory=inventory,
                         lock=args.lock)
    with cluster:
        print(describe_cluster(cluster, hosts=args.hosts))
        if args.detach:
            cluster.detach()
            remove = f"--hosts {args.hosts}" if args.hosts else f"--cluster {cluster.backend.prefix}"
            print(f"left running; remove it with: ctdblab down {remove}")
            return 0
        print("Ctrl-C tears the cluster down.", flush=True)
        while True:
            time.sleep(3600)


def _load_hosts(path: Path | None):
    if path is None:
        return None
    from .cluster.inventory import load_inventory
    return load_inventory(path)


def describe_cluster(cluster, hosts: Path | None = None) -> str:
    ips = cluster.ip_all()
    smbd = "clustered smbd" if cluster.launcher.smb_clustered else "standalone smbd"
    lines = [f"cluster {cluster.backend.prefix}: {len(cluster.nodes)} nodes running "
             f"{cluster.launcher.name} with {smbd} (tunables {cluster.profile.name}, "
             f"{cluster.launcher.lock.name} cluster lock), "
             f"work dir {cluster.workdir}",
             "  PNN  node      private         public-if       public IPs hosted"]
    for node in cluster.nodes:
        hosted = " ".join(ip for ip, pnn in ips.items() if pnn == node.index)
        lines.append(f"  {node.index:<4} {node.name:<9} {cluster.plan.private_ip(node.index):<15} "
                     f"{cluster.plan.node_public_ip(node.index):<15} {hosted}")
    for client in cluster.clients:
        lines.append(f"  client c{client.index} {client.name}  {cluster.plan.client_ip(client.index)}")
    share_ip = cluster.public_ips()[0]
    from .cluster.samba import SHARE, SMB_PASSWORD, SMB_USER
    from .cluster.snapshots import SNAP_SHARE, SnapshotLayout
    snap_dir = SnapshotLayout(cluster.shared_dir).share_dir
    if hosts is not None:
        return "\n".join(lines + ["try:", f"  ctdblab exec --hosts {hosts} 0 -- ctdb status",
                                   f"  ctdblab exec --hosts {hosts} 0 -- ctdb ip all"])
    if cluster.launcher.answers_ctdb_tool:
        lines += ["try:", "  ctdblab exec 0 -- ctdb status", "  ctdblab exec 0 -- ctdb ip all"]
    else:
        lines += [f"({cluster.launcher.name} has no ctdb tool: the public IPs above are what each "
                  "node has configured)", "try:",
                  f"  ctdblab exec 0 -- ip -4 addr show dev {cluster.node(0).name}-eth1",
                  f"  less {cluster.launcher.log_path(cluster.node(0))}"]
    lines += [
              f"  ctdblab exec c0 -- smbclient //{share_ip}/{SHARE} -U {SMB_USER}%{SMB_PASSWORD} -c ls",
              f"  [{SNAP_SHARE}] (vfs shadow_copy2 offline) is {snap_dir}: put a file there, "
              "`ctdblab snapshot`, change it, then",
              f"  ctdblab exec c0 -- smbclient //{share_ip}/{SNAP_SHARE} -U {SMB_USER}%{SMB_PASSWORD} "
              "-c 'allinfo FILE'"]
    return "\n".join(lines)


def _find_cluster(prefix: str | None) -> dict:
    from .cluster.registry import running_clusters

    clusters = running_clusters()
    if prefix:
        clusters = [c for c in clusters if c["prefix"] == prefix]
        if not clusters:
            raise UserError(f"no running lab cluster {prefix!r}")
    if not clusters:
        raise UserError("no lab cluster is running; start one with `ctdblab up --detach` "
                        "(or keep `ctdblab up` running in another terminal)")
    if len(clusters) > 1:
        names = ", ".join(c["prefix"] for c in clusters)
        raise UserError(f"several clusters are up ({names}); choose one with --cluster")
    return clusters[0]


def cmd_exec(args, progress) -> int:
    from .cluster.procs import netns_of, node_env

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise UserError("nothing to run: ctdblab exec PNN -- COMMAND ...")
    target = args.target
    if target.startswith("c") and target[1:].isdigit():
        kind, index, what = "clients", int(target[1:]), "client"
    elif target.isdigit():
        kind, index, what = "nodes", int(target), "node"
    else:
        raise UserError(f"target must be a node PNN (e.g. 0) or a client (e.g. c0), not {target!r}")
    if args.hosts is not None:
        return _exec_on_host(_load_hosts(args.hosts), kind, index, what, cmd, args.timeout)
    state = _find_cluster(args.cluster)
    members = state[kind]
    if not 0 <= index < len(members):
        raise UserError(f"no {what} {target} in cluster {state['prefix']} "
                        f"(it has {len(members)} {what}s, numbered from 0)")
    member = members[index]
    if not member.get("pid") or netns_of(member["pid"]) != member.get("netns"):
        raise UserError(f"{what} {target} ({member['name']}) is powered off")
    argv = ["mnexec", "-a", str(member["pid"]), *cmd]
    try:
        return subprocess.run(argv, env=node_env(), timeout=args.timeout or None).returncode
    except subprocess.TimeoutExpired:
        raise UserError(f"command timed out after {args.timeout:g} s (use --timeout)") from None


def _exec_on_host(inventory, kind: str, index: int, what: str, cmd: list[str], timeout: float) -> int:
    import tempfile

    from .cluster.ssh import SshConnection

    entries = inventory.hosts if kind == "nodes" else inventory.clients
    if not 0 <= index < len(entries):
        raise UserError(f"no {what} {index} in {inventory.source} (it has {len(entries)} "
                        f"{what}s, numbered from 0)")
    entry = entries[index]
    with tempfile.TemporaryDirectory(prefix="ctdblab-ssh-", dir="/tmp") as control:
        conn = SshConnection(entry.name, entry.ssh, inventory.ssh, Path(control))
        try:
            code = subprocess.run(conn.argv(cmd, timeout=timeout or None),
                                  timeout=(timeout + inventory.ssh.connect_timeout + 5) if timeout else None
                                  ).returncode
        except subprocess.TimeoutExpired:
            raise UserError(f"command timed out after {timeout:g} s (use --timeout)") from None
    if code == 255:
        raise UserError(f"ssh to {entry.name} ({entry.ssh}) failed (exit 255; see above)")
    return code


def cmd_down(args, progress) -> int:
    from .cluster.registry import cleanup_prefix, running_clusters

    if args.hosts is not None:
        return _down_hosts(_load_hosts(args.hosts), progress)
    clusters = running_clusters()
    if args.cluster:
        clusters = [c for c in clusters if c["prefix"] == args.cluster]
    if not clusters:
        print("no running lab cluster")
        return 0
    for state in clusters:
        done = cleanup_prefix(state["prefix"])
        extra = ""
        if state.get("lock") == "etcd" and state.get("workdir"):
            from .cluster.etcd_lock import remove_data_under
            extra = f", {remove_data_under(Path(state['workdir']))} etcd data directories"
        print(f"removed {state['prefix']}: {done['processes']} processes, {done['links']} links"
              f"{extra}")
    return 0


def _down_hosts(inventory, progress) -> int:
    from .cluster.remote_backend import RemoteCluster
    from .cluster.ssh import SshError

    backend = RemoteCluster(inventory, len(inventory.hosts), 0, progress=progress)
    status = 0
    try:
        for node in backend.nodes:
            try:
                stopped = backend.stop_services(node)
            except (SshError, subprocess.TimeoutExpired, RuntimeError) as e:
                print(f"{node.name}: {e}", file=sys.stderr)
                status = 1
                continue
            print(f"{node.name}: stopped {', '.join(stopped) or 'nothing (none running)'}; "
                  f"nftables tables and floating IPs removed")
    finally:
        backend.release()
    return status


def cmd_snapshot(args, progress) -> int:
    from .cluster.snapshots import SnapshotError, SnapshotLayout, take_snapshot

    state = _find_cluster(args.cluster)
    layout = SnapshotLayout(Path(state["workdir"]) / "shared")   # MininetCluster.shared_dir
    try:
        if not args.list:
            name = take_snapshot(layout)
            print(f"{name}: a copy of {layout.share_dir} in {layout.snapdir}")
    except (SnapshotError, OSError) as e:
        raise UserError(f"snapshot of cluster {state['prefix']}: {e}") from None
    for name in layout.snapshots():
        print(f"  {name}")
    return 0


def cmd_run(args, progress) -> int:
    from .scenarios import run_scenario

    from . import thresholds

    limits = thresholds.load(args.check) if args.check else None
    tunables = args.tunables or ("aggressive" if args.scenario == "soak" else "default")
    if args.nodes is not None:
        nodes = parse_node_range(args.nodes)
    else:
        nodes = [] if args.hosts else [3]
    out = run_scenario(args.scenario, daemon=args.daemon, nodes=nodes,
                       repeat=args.repeat, tunables=tunables, victim=args.victim,
                       link_params=parse_link(args.link, args.bw), out=args.out,
                       progress=progress, clustered_smbd=args.clustered_smbd,
                       check_data=args.check_data, faults=args.faults, seed=args.seed,
                       sample_period=args.sample_period, from_rev=args.from_rev,
                       to_rev=args.to_rev, order=args.order, hosts=args.hosts,
                       allow_hard_reset=args.allow_hard_reset, lock=args.lock,
                       then=args.then)
    for path in out:
        print(path)
    if args.scenario == "soak":
        return _soak_verdict(args.out / "results.json")
    if args.scenario == "upgrade":
        return _upgrade_verdict(args.out / "results.json")
    status = 0
    if args.check_data:
        results = json.loads((args.out / "results.json").read_text())
        for run in results["runs"]:
            for problem in run["data"]["problems"]:
                print(f"DATA CHECK run {run['run']}: {problem}", file=sys.stderr)
                status = 1
    if limits is not None:
        results = json.loads((args.out / "results.json").read_text())
        violations = thresholds.check(results, limits)
        for violation in violations:
            print(f"REGRESSION: {violation}", file=sys.stderr)
        if violations:
            return 1
        print(f"all figures within {args.check}", file=sys.stderr)
    return status


def _soak_verdict(results_path: Path) -> int:
    """Print the soak's verdicts; exit status 1 when a check found a violation (for CI)."""
    checks = json.loads(results_path.read_text())["checks"]
    failed = {name: v["violations"] for name, v in checks["verdicts"].items() if not v["ok"]}
    for kind, c in checks["convergence"].items():
        print(f"{kind:<19} {c['converged']}/{c['faults']} converged, p50 {c['p50_s']} s, "
              f"max {c['max_s']} s", file=sys.stderr)
    for check, why in (checks.get("not_checked") or {}).items():
        print(f"{check}: not checked ({why})", file=sys.stderr)
    if failed:
        print("SAFETY VIOLATIONS: " + ", ".join(f"{k} {n}" for k, n in failed.items())
              + " (each with its history lines in report.md)", file=sys.stderr)
        return 1
    print("no invariant violated", file=sys.stderr)
    return 0


def _upgrade_verdict(results_path: Path) -> int:
    """Every step's figures; exit status 1 when a target was missed (for CI)."""
    checks = json.loads(results_path.read_text())["checks"]
    for step in checks["steps"]:
        worst = step.get("worst_interruption_s")
        print(f"step {step['index']} node {step['node']}: "
              + ("not run" if step.get("begin") is None else
                 f"worst interruption {'-' if worst is None else f'{worst:.3f} s'}, "
                 f"client errors {step['errors']} ({step['errors_absorbed']} absorbed by a retry, "
                 f"{step['errors_unrecovered']} unrecovered), "
                 f"{step['version_before']} -> {step['version_after']}"), file=sys.stderr)
    for failure in checks["failures"]:
        print(f"TARGET MISSED: {failure}", file=sys.stderr)
    if checks["passed"]:
        print("every step met the targets", file=sys.stderr)
    return 0 if checks["passed"] else 1


def cmd_report(args, progress) -> int:
    from .reports import make_report

    if args.recheck:
        results_path = args.dir / "results.json"
        try:
            scenario = json.loads(results_path.read_text()).get("scenario")
        except (OSError, ValueError) as e:
            raise UserError(f"{results_path}: cannot read it ({e})") from None
        if scenario == "upgrade":
            from .scenarios.upgrade import recheck_upgrade
            recheck_upgrade(args.dir)
        else:
            from .scenarios.soak import recheck_soak
            recheck_soak(args.dir)

    for path in make_report(args.dir):
        print(path)
    return 0


def cmd_demo(args, progress) -> int:
    from .reports import make_report
    from .scenarios import run_scenario

    out = args.out or Path.cwd() / "results" / time.strftime("demo-%Y%m%d-%H%M%S")
    daemons = [d.strip() for d in args.daemons.split(",") if d.strip()]
    for daemon in daemons:
        if daemon not in DAEMONS:
            raise UserError(f"unknown daemon {daemon!r} in --daemons")
        progress(f"demo: 3-node failover with {daemon}, non-leader victim, aggressive tunables")
        run_scenario("failover", daemon=daemon, nodes=[3], repeat=args.repeat,
                     tunables="aggressive", victim="nonleader", out=out / daemon,
                     progress=progress)
    written = make_report(out)
    report = next((p for p in written if p.name == "report.md"), None)
    print(f"report: {report}")
    for path in written:
        if path.suffix == ".png":
            print(f"plot:   {path}")
    return 0


COMMANDS = {"up": cmd_up, "exec": cmd_exec, "down": cmd_down, "snapshot": cmd_snapshot,
            "run": cmd_run, "report": cmd_report, "demo": cmd_demo}


if __name__ == "__main__":
    sys.exit(main())
