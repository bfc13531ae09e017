"""Online rolling upgrade: every node of a running cluster in turn, clients busy throughout.

Jepsen's parts, kept apart:

generator   ``upgrade_plan.make_plan``: one step per node (disable, stop, install, start,
            enable, settle), recorded in the run's start event
clients     per public IP one ``smb_writer`` (numbered blocks, WRITE+FLUSH every 0.1 s under an
            exclusive lock) and one ``smb_stall`` reader (open+read+close every 0.1 s); both
            reconnect to the same IP after any failure, i.e. they retry.  They run from before
            the first step until after the last one.
steps       ``UpgradeRun.step``: every phase's begin and end (or fail) goes to the history as an
            ``upgrade`` event; after each start (and once before the first step) the daemon's pid
            and command line on every node (``daemon_running``): the proof of which build runs
checker     ``upgrade_checks.check_upgrade`` over the history alone, after the run

pyctdbd → pyctdbd: two builds of this repository (``cluster/builds.py``: the working tree, and
the working tree with a bumped version, or ``--from REV --to REV``), installed per node; every
node starts on the "from" build and the step's install phase switches it to the "to" build.
ctdb: the same steps with a plain restart of Debian's ctdbd (the reference).

A phase that fails (times out, a command fails) is recorded and ends the upgrade there: an
operator would not take the next node out of a cluster that did not recover.  The clients keep
running until the end either way, and the checker reports the steps that did not complete.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from ctdblab import events
from ctdblab.chaos.processes import daemon_processes
from ctdblab.cluster.builds import Build, InstalledBuildLauncher, prepare_builds
from ctdblab.cluster.lab import ClusterNotReady, LabCluster
from ctdblab.cluster.samba import SHARE, SMB_PASSWORD, SMB_USER, ensure_test_file
from ctdblab.errors import UserError
from ctdblab.history import History, read_history

from .failover import StatePoller
from .proberun import ProbeProcess
from .upgrade_checks import Targets, check_upgrade
from .upgrade_plan import UpgradeStep, make_plan

READ_FILE = "upgrade-read.bin"
READ_FILE_SIZE = 1 << 20
WARMUP_TIMEOUT_S = 60.0
BASELINE_S = 3.0          # clients running undisturbed before the first and after the last step
SETTLE_S = 3.0
# The clients' TCP connect timeout: a SYN sent while the IP is between nodes is lost (the old
# node has let it go, the new one has not taken it yet), and the client only tries again after
# this; 0.5 s keeps the client's own retry pace from dominating a sub-second interruption.
CONNECT_TIMEOUT = "0.5"
PHASE_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
START_AS_DISABLED = "[legacy]\n    start as disabled = true\n"
CTDB_CONF = "/etc/ctdb/ctdb.conf"


def run_upgrade(*, daemon: str, nodes: int, tunables: str, out: Path,
                progress: Callable[[str], None], from_rev: str | None = None,
                to_rev: str | None = None, order: str = "pnn", settle_s: float = SETTLE_S,
                targets: Targets | None = None) -> dict[str, Any]:
    targets = targets or Targets()
    plan = make_plan(nodes, order)
    if daemon == "pyctdbd":
        progress("building the two pyctdbd builds (packaging/build) ...")
        old, new = prepare_builds(out / "builds", from_rev, to_rev)
        progress(f"  from {old.version} ({old.revision}) -> to {new.version} ({new.revision})")
        launcher: str | InstalledBuildLauncher = InstalledBuildLauncher(old)
        builds = [old.as_dict() | {"executable": str(old.executable)},
                  new.as_dict() | {"executable": str(new.executable)}]
    elif daemon == "ctdb":
        if from_rev or to_rev:
            raise UserError("--from/--to choose pyctdbd builds; ctdb is restarted as installed")
        old = new = None
        launcher = "ctdb"
        version = ctdbd_version()
        builds = [{"label": "from", "version": version, "revision": "Debian package",
                   "executable": "ctdbd"},
                  {"label": "to", "version": version, "revision": "Debian package",
                   "executable": "ctdbd"}]
    else:
        raise UserError(f"unknown daemon {daemon!r}")
    params = {"scenario": "upgrade", "daemon": daemon, "nodes": nodes, "tunables": tunables,
              "order": order, "settle_s": settle_s}
    history_path = out / "history.jsonl"
    t0 = time.monotonic()
    with History(history_path) as history, \
            LabCluster(nodes, daemon=launcher, tunables=tunables, clients=1,
                       workdir=out / "cluster", progress=progress) as cluster:
        ensure_test_file(cluster.shared_dir / "share", READ_FILE, READ_FILE_SIZE)
        history.run = 0
        history.record(events.run_start(0, **params, plan=[s.as_dict() for s in plan],
                                        builds=builds, public_ips=cluster.public_ips(),
                                        targets=targets.as_dict()))
        run = UpgradeRun(cluster, history, progress, new_build=new, settle_s=settle_s)
        try:
            run.start_clients()
            for node in cluster.nodes:
                run.record_daemon(node.index)
            time.sleep(BASELINE_S)
            for step in plan:
                if not run.step(step, len(plan)):
                    progress(f"upgrade stopped after a failed phase on node {step.node}")
                    break
            time.sleep(BASELINE_S)
            history.record(events.window_end())
        finally:
            run.stop_clients()
            history.record(events.run_end(0))
        history.run = None
    progress(f"checking {history_path} ...")
    checks = check_upgrade(read_history(history_path))
    return {**params, "builds": builds, "plan": [s.as_dict() for s in plan], "checks": checks,
            "lab_wall_s": round(time.monotonic() - t0, 1)}


def ctdbd_version() -> str | None:
    """The installed ctdb package's version (ctdbd itself has no --version)."""
    try:
        result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "ctdb"], capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


class PhaseFailed(RuntimeError):
    pass


class UpgradeRun:
    def __init__(self, cluster: LabCluster, history: History, progress: Callable[[str], None],
                 new_build: Build | None, settle_s: float):
        self.cluster = cluster
        self.history = history
        self.progress = progress
        self.new_build = new_build
        self.settle_s = settle_s
        self.clients: list[ProbeProcess] = []

    # -- clients ----------------------------------------------------------------------------------
    def start_clients(self) -> None:
        client = self.cluster.client(0)
        smb = ["--user", SMB_USER, "--password", SMB_PASSWORD, "--share", SHARE, "--role", "client"]
        for i, ip in enumerate(sorted(self.cluster.public_ips())):
            self.clients.append(ProbeProcess(
                client, "smb_writer", [ip, *smb, "--file", f"upgrade-w{i}.bin", "--writer", f"w{i}",
                                       "--setup-deadline", "5", "--op-deadline", "10",
                                       "--connect-timeout", CONNECT_TIMEOUT, "--retry-interval", "0.05",
                                       "--process", f"smb-writer-{ip}"], name=f"smb-writer-{ip}"))
            self.clients.append(ProbeProcess(
                client, "smb_stall", [ip, *smb, "--file", READ_FILE, "--read-size", "65536",
                                      "--op-deadline", "10", "--connect-timeout", CONNECT_TIMEOUT,
                                      "--process", f"smb-reader-{ip}"], name=f"smb-reader-{ip}"))
        for probe in self.clients:
            if probe.wait_for(lambda e: e.get("kind") == "op" and e.get("type") == "ok",
                              WARMUP_TIMEOUT_S) is None:
                raise ClusterNotReady(f"client {probe.name} had no successful operation within "
                                      f"{WARMUP_TIMEOUT_S:.0f} s: {probe.describe_failure()}")
        self.progress(f"{len(self.clients)} SMB clients reading and writing through "
                      f"{len(self.clients) // 2} public IPs")

    def stop_clients(self) -> None:
        for probe in self.clients:
            probe.stop()
            self.history.extend(probe.events)
            if probe.proc.returncode not in (0, None, -15):
                self.history.record(events.note(probe.describe_failure()))
        self.clients.clear()

    # -- one node ---------------------------------------------------------------------------------
    def step(self, step: UpgradeStep, total: int) -> bool:
        """Upgrade one node; False when a phase failed (recorded) and the upgrade must stop."""
        pnn = step.node
        observer = next(n.index for n in self.cluster.nodes if n.index != pnn)
        poller = StatePoller(self.cluster, observer, self.history)
        poller.start()
        self.history.record(events.upgrade_phase(pnn, "step", "begin", index=step.index))
        began = time.time()
        took: dict[str, float] = {}
        try:
            for phase in step.phases:
                t = time.time()
                self.history.record(events.upgrade_phase(pnn, phase, "begin", index=step.index))
                try:
                    fields = getattr(self, f"_{phase}")(pnn, observer) or {}
                except (PhaseFailed, ClusterNotReady, subprocess.TimeoutExpired, OSError,
                        UserError, RuntimeError) as e:
                    self.history.record(events.upgrade_phase(pnn, phase, "fail", index=step.index,
                                                             error=str(e)))
                    self.history.record(events.upgrade_phase(pnn, "step", "fail", index=step.index,
                                                             error=f"{phase}: {e}"))
                    self.progress(f"step {step.index + 1}/{total} node {pnn}: {phase} FAILED: {e}")
                    return False
                self.history.record(events.upgrade_phase(pnn, phase, "end", index=step.index,
                                                         **fields))
                took[phase] = time.time() - t
        finally:
            poller.stop()
        self.history.record(events.upgrade_phase(pnn, "step", "end", index=step.index))
        self.progress(f"step {step.index + 1}/{total} node {pnn} in {time.time() - began:.1f} s: "
                      + ", ".join(f"{p} {s:.1f}s" for p, s in took.items()))
        return True

    def _disable(self, pnn: int, observer: int) -> None:
        self._ctdb(pnn, "disable")
        self._wait(lambda: self._ips_hosted(observer, without=pnn), f"node {pnn}'s IPs moving away")

    def _stop(self, pnn: int, observer: int) -> dict:
        pids = list(daemon_processes(self.cluster, pnn))
        self._ctdb(pnn, "shutdown", timeout=STOP_TIMEOUT_S)
        self._wait(lambda: not daemon_processes(self.cluster, pnn),
                   f"the daemon's processes on node {pnn} to exit", timeout=STOP_TIMEOUT_S)
        return {"pids": pids}

    def _install(self, pnn: int, observer: int) -> dict:
        node = self.cluster.node(pnn)
        conf = self._read_conf(pnn)
        self._write_conf(pnn, conf.rstrip("\n") + "\n" + START_AS_DISABLED)
        launcher = self.cluster.launcher
        if isinstance(launcher, InstalledBuildLauncher) and self.new_build is not None:
            launcher.install(node, self.new_build)
            return {"build": self.new_build.label, "version": self.new_build.version}
        return {"build": "restart"}

    def _start(self, pnn: int, observer: int) -> None:
        cluster = self.cluster
        cluster.launcher.start(cluster.node(pnn))
        self._wait(lambda: self._seen_disabled_and_healthy(pnn),
                   f"node {pnn} connected, healthy and DISABLED on every node")
        self.record_daemon(pnn)
        node = cluster.node(pnn)
        self._wait(lambda: cluster.smbd_listening(node), f"smbd listening on node {pnn}")

    def _enable(self, pnn: int, observer: int) -> None:
        conf = self._read_conf(pnn)
        self._write_conf(pnn, conf.replace(START_AS_DISABLED, ""))
        self._ctdb(pnn, "enable")
        self._wait(lambda: self._ips_hosted(observer, on=pnn), f"node {pnn} hosting a public IP again")

    def _settle(self, pnn: int, observer: int) -> None:
        time.sleep(self.settle_s)

    # -- helpers ----------------------------------------------------------------------------------
    def record_daemon(self, pnn: int) -> None:
        """Which daemon process runs on the node: its pid (``ctdb getpid``) and command line."""
        result = self.cluster.ctdb(pnn, "getpid")
        answer = result.stdout.strip()
        pid = int(answer) if result.returncode == 0 and answer.isdigit() else None
        cmdline: list[str] = []
        if pid is not None:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            except OSError:
                pass
        launcher = self.cluster.launcher
        if isinstance(launcher, InstalledBuildLauncher):
            build = launcher.installed(self.cluster.node(pnn))
            version, label = build.version, build.label
        else:
            version, label = None, None
        self.history.record(events.daemon_running(pnn, pid=pid, cmdline=cmdline, version=version,
                                                  build=label))

    def _ctdb(self, pnn: int, *args: str, timeout: float = 30.0) -> None:
        result = self.cluster.ctdb(pnn, *args, timeout=timeout)
        if result.returncode != 0:
            raise PhaseFailed(f"`ctdb {' '.join(args)}` on node {pnn} exited {result.returncode}: "
                              f"{(result.stderr or result.stdout).strip()}")

    def _wait(self, predicate: Callable[[], bool], what: str, timeout: float = PHASE_TIMEOUT_S) -> None:
        self.cluster.wait_until(predicate, timeout, what, interval=0.1)

    def _ips_hosted(self, observer: int, *, without: int | None = None, on: int | None = None) -> bool:
        """Every public IP hosted (as ``observer`` sees it), none on ``without``, one on ``on``."""
        try:
            owners = self.cluster.ip_all(observer)
        except (ClusterNotReady, subprocess.TimeoutExpired):
            return False
        if len(owners) != len(self.cluster.public_ips()) or any(p < 0 for p in owners.values()):
            return False
        if without is not None and without in owners.values():
            return False
        return on is None or on in owners.values()

    def _seen_disabled_and_healthy(self, pnn: int) -> bool:
        for node in self.cluster.nodes:
            try:
                view = {s.pnn: s for s in self.cluster.status(node.index)}
            except (ClusterNotReady, ValueError, subprocess.TimeoutExpired):
                return False
            me = view.get(pnn)
            if me is None or not me.flags["disabled"]:
                return False
            if any(v for f, v in me.flags.items() if f not in ("disabled", "inactive")):
                return False
        return True

    def _read_conf(self, pnn: int) -> str:
        result = self.cluster.node(pnn).run(["cat", CTDB_CONF], timeout=10)
        if result.returncode != 0:
            raise PhaseFailed(f"cannot read {CTDB_CONF} on node {pnn}: {result.stderr.strip()}")
        return result.stdout

    def _write_conf(self, pnn: int, text: str) -> None:
        result = self.cluster.node(pnn).run(["sh", "-c", f"cat > {CTDB_CONF}"], input=text, timeout=10)
        if result.returncode != 0:
            raise PhaseFailed(f"cannot write {CTDB_CONF} on node {pnn}: {result.stderr.strip()}")


def recheck_upgrade(run_dir: Path) -> dict[str, Any]:
    """Check an upgrade's history again with the current checker and replace ``checks`` in its
    results.json; returns the new checks."""
    import json

    results_path = Path(run_dir) / "results.json"
    results = json.loads(results_path.read_text())
    if results.get("scenario") != "upgrade":
        raise UserError(f"{results_path}: not an upgrade run (scenario {results.get('scenario')!r})")
    results["checks"] = check_upgrade(read_history(Path(run_dir) / "history.jsonl"))
    results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
    return results["checks"]
