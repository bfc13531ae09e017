"""The soak: a seeded schedule of every fault, applied one after another, checked on ground truth.

Jepsen's parts, kept apart:

generator   ``soak_schedule.make_schedule(seed, faults, nodes)``: the schedule, printed up front
            and recorded in the run's start event (same seed, same schedule, on either daemon)
nemesis     ``SoakNemesis.run_episode``: applies one scheduled fault through ``chaos.Nemesis``
            (every event tagged with its ``soak_index``), holds it, undoes it — also when
            applying failed (the failure is recorded, the soak goes on) — then waits until the
            live ground truth satisfies every invariant or ``settle + CONVERGE_SLACK_S`` passes,
            and dwells ``DWELL_S`` so the settled state is sampled before the next fault
checker     ``soak_checks.check_soak`` over the history alone, after the run

The ground truth comes from ``truth.TruthSampler`` (every node's configured addresses, the
leader and node states each daemon reports, daemon CPU and log size) and the ``arp`` probe in
the client.  The cluster is torn down at the end, on an error and on Ctrl-C (``with``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from ctdblab import events
from ctdblab.chaos import (ClearLoss, Crash, Flap, Freeze, Heal, Loss, Nemesis, Partition,
                           PowerOff, PowerOn, Restart, Thaw)
from ctdblab.cluster.lab import LabCluster
from ctdblab.errors import UserError
from ctdblab.history import History, load_numbered

from .soak_checks import Bounds, check_soak
from .soak_deaths import PROBE as DEATHS_PROBE, import_deaths, node_logs, nodes_file_addresses
from .soak_invariants import arp_violations, node_violations
from .soak_schedule import ScheduledFault, describe, make_schedule, partition_groups, resolve_target
from .truth import DEFAULT_PERIOD_S, TruthSampler, describe_macs

CONVERGE_SLACK_S = 15.0    # the nemesis waits this much beyond the settle bound before moving on
DWELL_S = 3.0              # settled time sampled after convergence, before the next fault
START_SETTLE_S = 90.0      # the freshly started cluster must satisfy every invariant first


def run_soak(*, daemon: str, nodes: int, faults: int, seed: int, tunables: str, out: Path,
             progress: Callable[[str], None], period: float = DEFAULT_PERIOD_S,
             bounds: Bounds | None = None, lock: str = "file") -> dict[str, Any]:
    bounds = bounds or Bounds()
    schedule = make_schedule(seed, faults, nodes)
    progress(f"soak schedule (seed {seed}, {faults} faults, {nodes} nodes):")
    for fault in schedule:
        progress("  " + describe(fault))
    history_path = out / "history.jsonl"
    params = {"scenario": "soak", "daemon": daemon, "nodes": nodes, "faults": faults,
              "seed": seed, "tunables": tunables, "sample_period_s": period, "lock": lock}
    t0 = time.monotonic()
    with History(history_path) as history, \
            LabCluster(nodes, daemon=daemon, tunables=tunables, clients=1,
                       workdir=out / "cluster", progress=progress, lock=lock) as cluster:
        history.run = 0
        history.record(events.run_start(
            0, **params, schedule=[f.as_dict() for f in schedule],
            public_ips=cluster.public_ips(), public_macs=describe_macs(cluster),
            bounds=bounds.as_dict()))
        sampler = TruthSampler(cluster, history, period)
        sampler.start_arp()
        sampler.start()
        soak = SoakNemesis(cluster, history, sampler, bounds, progress)
        try:
            if soak.wait_converged(time.time(), START_SETTLE_S) is None:
                history.record(events.note("the cluster did not satisfy every invariant before "
                                           "the first fault"))
                progress("warning: not converged before the first fault; going on")
            time.sleep(DWELL_S)
            for fault in schedule:
                soak.run_episode(fault, len(schedule), t0)
        finally:
            sampler.stop()
            try:
                import_deaths(history, [cluster.daemon_log(n) for n in cluster.nodes],
                              [cluster.plan.private_ip(n.index) for n in cluster.nodes])
            except OSError as e:        # the run's verdicts stand; false_deaths is not checked
                history.record(events.note(f"the daemons' logs could not be read: {e}"))
            history.record(events.run_end(0))
            cost = sampler.cost()
        history.run = None
    progress(f"checking {history_path} ...")
    checks = check_soak(load_numbered(history_path))
    return {**params, "schedule": [f.as_dict() for f in schedule], "checks": checks,
            "sampler_cost": cost}


class SoakNemesis:
    """Applies scheduled faults one at a time and waits for the cluster to converge."""

    def __init__(self, cluster: LabCluster, history: History, sampler: TruthSampler,
                 bounds: Bounds, progress: Callable[[str], None]):
        self.cluster = cluster
        self.history = history
        self.nemesis = Nemesis(cluster, history)
        self.sampler = sampler
        self.bounds = bounds
        self.progress = progress
        self.public_ips = cluster.public_ips()
        self.macs = describe_macs(cluster)
        self.last_convergence: float | None = None

    # -- live view (the same invariants the checker uses) --------------------------------------
    def live_violations(self, since: float) -> list[tuple[str, str]] | None:
        """What is wrong now, from the latest sample and ARP round taken after ``since``
        (None: none yet)."""
        truth = self.sampler.latest
        arp = self.sampler.arp.latest if self.sampler.arp else None
        if truth is None or arp is None or truth["t"] < since or arp["t"] < since:
            return None
        return (node_violations(truth["nodes"], self.public_ips)
                + arp_violations(arp.get("answers") or {}, self.macs, self.public_ips))

    def wait_converged(self, since: float, timeout: float) -> float | None:
        """Seconds from ``since`` until every invariant held, without a break for the bounds'
        ``stable_s`` as the checker requires (None: not within ``timeout``)."""
        deadline = time.time() + timeout
        good_since = None
        while time.time() < deadline:
            bad = self.live_violations(since)
            if bad:
                good_since = None
            elif bad == [] and good_since is None:
                good_since = time.time()
            if good_since is not None and time.time() - good_since >= self.bounds.stable_s:
                return good_since - since
            time.sleep(0.1)
        return None

    def leader(self) -> int | None:
        truth = self.sampler.latest
        if not truth:
            return None
        named = [n.get("leader") for n in truth["nodes"].values() if n.get("leader") is not None]
        return max(set(named), key=named.count) if named else None

    # -- one scheduled fault ---------------------------------------------------------------------
    def run_episode(self, fault: ScheduledFault, total: int, t0: float) -> None:
        powered = [n.index for n in self.cluster.nodes if n.powered]
        leader = self.leader()
        target = resolve_target(fault, powered, leader)
        tags = {"soak_index": fault.index, "target": target}
        what = f"{fault.kind} on node {target}" + (f" (leader {leader})" if leader is not None else "")
        try:
            self._apply(fault, target, leader, powered, tags)
        except Exception as e:  # noqa: BLE001 - recorded by the nemesis; the soak goes on
            self.history.record(events.note(f"soak fault {fault.index} ({fault.kind}) failed: {e}",
                                            soak_index=fault.index))
            what += f" FAILED ({type(e).__name__}: {e})"
        undone = time.time()
        timeout = self.bounds.settle(fault.kind) + CONVERGE_SLACK_S
        took = self.wait_converged(undone, timeout)
        if took is not None:
            self.last_convergence = took
        conv = f"converged in {took:.1f} s" if took is not None else f"NOT converged in {timeout:.0f} s"
        elapsed = time.monotonic() - t0
        self.progress(f"fault {fault.index + 1}/{total} {what}, hold {fault.hold_s:.1f} s: {conv} "
                      f"(elapsed {elapsed / 60:.1f} min)")
        time.sleep(DWELL_S)

    def _apply(self, fault: ScheduledFault, target: int, leader: int | None,
               powered: list[int], tags: dict[str, Any]) -> None:
        inject = self.nemesis.inject
        kind = fault.kind
        if kind == "flap":
            inject(Flap(target, down_s=fault.hold_s), **tags)
            return
        undo: Callable[[], Any]
        if kind == "power_cycle":
            undo = lambda: self.cluster.node(target).powered or inject(PowerOn(target), **tags)
            do = lambda: inject(PowerOff(target), **tags)
        elif kind == "crash_restart":
            do = lambda: inject(Crash(target), **tags)
            undo = lambda: inject(Restart(target), **tags)
        elif kind.startswith("freeze"):
            do = lambda: inject(Freeze(target), **tags)
            undo = lambda: inject(Thaw(target), **tags)        # every daemon process: also on failure
        elif kind.startswith("partition"):
            groups = partition_groups(fault, powered, target, leader)
            do = lambda: inject(Partition(groups), **tags)
            undo = lambda: inject(Heal(), **tags)
        elif kind == "loss":
            do = lambda: inject(Loss(target, percent=fault.percent), **tags)
            undo = lambda: inject(ClearLoss(target), **tags)
        else:
            raise ValueError(f"unknown soak fault kind {kind!r}")
        try:
            do()
            time.sleep(fault.hold_s)
        finally:
            undo()


def recheck_soak(run_dir: Path) -> dict[str, Any]:
    """Check a soak's history again with the current checkers (the bounds it ran with) and
    replace ``checks`` in its results.json; returns the new checks. A history from before the
    deaths (or the loop stalls) were imported gets them now from the logs the run left
    (``cluster/nodes/*``)."""
    import json

    results_path = Path(run_dir) / "results.json"
    results = json.loads(results_path.read_text())
    if results.get("scenario") != "soak":
        raise UserError(f"{results_path}: not a soak run (scenario {results.get('scenario')!r})")
    history_path = Path(run_dir) / "history.jsonl"
    numbered = load_numbered(history_path)
    reads = [e for _, e in numbered if e["kind"] == "capture" and e.get("probe") == DEATHS_PROBE]
    logs = node_logs(Path(run_dir) / "cluster")
    if logs and (not reads or not any("stalls" in e for e in reads)):
        with History(history_path) as history:
            import_deaths(history, logs, nodes_file_addresses(Path(run_dir) / "cluster"),
                          stalls_only=bool(reads))
        numbered = load_numbered(history_path)
    results["checks"] = check_soak(numbered)
    results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
    return results["checks"]
