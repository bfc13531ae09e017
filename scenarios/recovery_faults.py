"""A second fault while the cluster recovers from the failover's hard reset (``run failover
--then KIND``): the faults-during-recovery cases the data checker must survive.

death          another node (not the leader) is powered off;
leader-death   the leader running the recovery is powered off (the victim is a non-leader);
heal           a node partitioned away before the run (the cluster recovered without it) gets
               its network back: it rejoins while the recovery after the loss runs.

Persistent commits arriving mid-recovery come with every run: the data workload's ``ctdb pstore``
loops never stop.

*Mid-recovery* is made certain, not hoped for: every node's daemon log is watched from the cut
for "Recovery has started" (both daemons log it when the leader's recovery puts them in recovery
mode), and the second fault is injected the moment one appears.  Real ctdbd's recovery lasts
seconds; pyctdbd's takes ~20 ms after a loss, so the scenario starts pyctdbd with
``PYCTDBD_RECOVERY_PAUSE_S`` (RECOVERY_PAUSE_S): its leader waits that long with every node in
recovery mode and the new map in place, before the databases stage.  Whether the fault did land
inside the recovery is not assumed either: the fault's events carry ``during_recovery`` and the
log line that triggered it (``recovery_started_t``), and ``landed_mid_recovery`` decides from the
history, with the "Recovery has finished" lines the run imports from the logs.

Two of five nodes are lost at once in ``death`` and ``leader-death`` (three in ``heal`` for a
while): fewer than five nodes would leave no majority, and pyctdbd's majority rule would rightly
serve nothing.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

from ctdblab import events
from ctdblab.chaos import Heal, Nemesis, Partition, PowerOff, PowerOn
from ctdblab.cluster.daemonlog import parse_line
from ctdblab.cluster.lab import ClusterNotReady, LabCluster
from ctdblab.errors import UserError
from ctdblab.history import History

KINDS = ("death", "leader-death", "heal")
MIN_NODES = 5
#: s pyctdbd's leader waits inside each recovery (PYCTDBD_RECOVERY_PAUSE_S) in these runs.
RECOVERY_PAUSE_S = 1.5
#: s to wait for the log line that starts the recovery after the cut.
RECOVERY_START_TIMEOUT_S = 30.0
WATCH_INTERVAL_S = 0.02


def check_then(kind: str | None, nodes: int, victim_spec: str | int) -> None:
    """Refuse what cannot work, before a cluster is built."""
    if kind is None:
        return
    if kind not in KINDS:
        raise UserError(f"--then takes {', '.join(KINDS)}, not {kind!r}")
    if nodes < MIN_NODES:
        raise UserError(f"--then {kind} needs at least {MIN_NODES} nodes (two of them are lost at "
                        f"once; with {nodes} the survivors are no majority)")
    if kind == "leader-death" and victim_spec == "leader":
        raise UserError("--then leader-death powers off the leader while it recovers from the "
                        "victim's loss: the victim must be a non-leader (--victim nonleader)")


def daemon_env(daemon: str) -> dict[str, str]:
    """What the daemon is started with in these runs."""
    return {"PYCTDBD_RECOVERY_PAUSE_S": f"{RECOVERY_PAUSE_S:g}"} if daemon == "pyctdbd" else {}


class SecondFault:
    """One run's second fault: chosen before the victim, injected by a watcher thread the
    moment a recovery starts after the cut, undone once the window is over."""

    def __init__(self, kind: str, cluster: LabCluster, nemesis: Nemesis, history: History):
        self.kind = kind
        self.cluster = cluster
        self.nemesis = nemesis
        self.history = history
        self.target: int | None = None
        self.partitioned = False
        self.injected = threading.Event()
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self.error: str | None = None
        self._offsets: dict[int, int] = {}     # pnn -> bytes of its daemon log already read

    # -- before the cut --------------------------------------------------------------------------
    def prepare(self, leader: int | None) -> None:
        """heal: partition the highest non-leader away and wait until the rest serve every IP."""
        if self.kind != "heal":
            return
        cluster = self.cluster
        others = [n.index for n in cluster.nodes if n.index != leader]
        self.target = max(others)
        rest = [n.index for n in cluster.nodes if n.index != self.target]
        self.nemesis.inject(Partition([[self.target], rest]), during_recovery=False, role="second")
        self.partitioned = True
        observer = min(rest)
        wanted = set(cluster.public_ips())

        def settled() -> bool:
            try:
                owners = cluster.ip_all(observer)
                if not (set(owners) >= wanted and all(p in rest for p in owners.values())):
                    return False
                # ... and the recovery that left the partitioned node out is over everywhere.
                return all("Recovery mode:NORMAL" in cluster.ctdb(pnn, "status").stdout
                           for pnn in rest)
            except (ClusterNotReady, subprocess.TimeoutExpired):    # mid-recovery: ask again
                return False
        cluster.wait_until(settled, 60, f"the nodes other than {self.target} to host every IP "
                                        "and leave recovery mode")

    def choose_target(self, victim: int, leader: int | None) -> int:
        """The node the second fault hits (heal: the partitioned one)."""
        if self.kind == "leader-death":
            if leader is None or leader == victim:
                raise ClusterNotReady(f"--then leader-death: the leader ({leader}) is the victim or unknown")
            self.target = leader
        elif self.kind == "death":
            spare = [n.index for n in self.cluster.nodes if n.index not in (victim, leader)]
            self.target = max(spare)
        assert self.target is not None
        return self.target

    # -- at the cut ------------------------------------------------------------------------------
    def mark_logs(self) -> None:
        """Just before the cut: where each daemon log ends (only what follows is watched)."""
        for node in self.cluster.nodes:
            try:
                self._offsets[node.index] = self.cluster.daemon_log(node).stat().st_size
            except FileNotFoundError:
                self._offsets[node.index] = 0

    def arm(self, t_cut: float, victim: int) -> None:
        """Watch the logs of every node still up; inject the fault at the recovery's start."""
        watched = [n for n in self.cluster.nodes if n.index != victim and n.powered]
        self._watcher = threading.Thread(target=self._watch, args=(t_cut, watched), daemon=True,
                                         name="second-fault")
        self._watcher.start()

    def _watch(self, t_cut: float, nodes: list) -> None:
        deadline = time.time() + RECOVERY_START_TIMEOUT_S
        while not self._stop.is_set() and time.time() < deadline:
            started = self._recovery_started(t_cut, nodes)
            if started is not None:
                pnn, t_line = started
                tags: dict[str, Any] = {"during_recovery": True, "role": "second",
                                        "recovery_started_t": t_line, "recovery_seen_on": pnn}
                try:
                    if self.kind == "heal":
                        self.nemesis.inject(Heal(), **tags)
                        self.partitioned = False
                    else:
                        self.nemesis.inject(PowerOff(self.target), **tags)
                except Exception as exc:      # noqa: BLE001 - recorded; the run goes on
                    self.error = f"the second fault ({self.kind}) failed: {exc}"
                    self.history.record(events.note(self.error))
                self.injected.set()
                return
            time.sleep(WATCH_INTERVAL_S)
        if not self._stop.is_set():
            self.error = (f"no recovery started within {RECOVERY_START_TIMEOUT_S:.0f} s of the cut: "
                          f"the second fault ({self.kind}) was not injected")
            self.history.record(events.note(self.error))

    def _recovery_started(self, t_cut: float, nodes: list) -> tuple[int, float] | None:
        """The first "Recovery has started" after the cut in the new part of a node's log."""
        for node in nodes:
            path = self.cluster.daemon_log(node)
            try:
                with path.open("rb") as f:
                    f.seek(self._offsets.get(node.index, 0))
                    chunk = f.read()
            except FileNotFoundError:
                continue
            complete = chunk[:chunk.rfind(b"\n") + 1]      # a line still being written waits
            self._offsets[node.index] = self._offsets.get(node.index, 0) + len(complete)
            for raw in complete.decode(errors="replace").splitlines():
                line = parse_line(raw)
                if line is not None and line.t >= t_cut and "Recovery has started" in line.message:
                    return node.index, line.t
        return None

    # -- after the window ------------------------------------------------------------------------
    def restore(self) -> list[int]:
        """Undo what is left of the fault; the nodes that must rejoin besides the victim."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(10)
        if self.partitioned:
            self.nemesis.inject(Heal(), during_recovery=False, role="second")
            self.partitioned = False
        if self.kind in ("death", "leader-death") and self.injected.is_set() and self.error is None:
            self.nemesis.inject(PowerOn(self.target), role="second")
        return [self.target] if self.target is not None else []


def landed_mid_recovery(run_events: list[dict]) -> dict[str, Any]:
    """Did the second fault land inside a recovery? From the history alone: it took effect (a
    power-off's ``cut`` step; a heal's end) after the "Recovery has started" line that triggered
    it and before the first "Recovery has finished" line (imported from the logs) after that."""
    second = [e for e in run_events if e["kind"] == "fault" and e.get("during_recovery") is True]
    begins = [e for e in second if e.get("phase") == "begin"]
    if not begins:
        return {"verdict": "fail", "why": "no second fault was injected during a recovery"}
    begin = begins[0]
    started = begin["recovery_started_t"]
    effect = [e["t"] for e in second if (e.get("phase") == "step" and e.get("step") == "cut")
              or (e.get("phase") == "end" and e.get("fault") == "heal")]
    if not effect:
        return {"verdict": "fail", "why": f"the second fault ({begin.get('fault')}) never took effect"}
    t_effect = min(effect)
    finished = sorted(e["t"] for e in run_events if e["kind"] == "state" and e.get("what") == "log"
                      and e.get("event") == "recovery_end" and e["t"] >= started)
    first_end = finished[0] if finished else None
    inside = t_effect >= started and (first_end is None or t_effect < first_end)
    return {"commits_mid_recovery": commits_between(run_events, started, first_end),"verdict": "ok" if inside else "fail", "fault": begin.get("fault"),
            "node": begin.get("node"), "recovery_started_t": started, "fault_t": t_effect,
            "first_recovery_end_t": first_end, "after_start_s": round(t_effect - started, 3),
            **({} if inside else {"why": "the second fault took effect after the recovery finished"})}


def commits_between(run_events: list[dict], t0: float, t1: float | None) -> dict[str, int]:
    """How the ``ctdb pstore`` commits in flight at some point of [t0, t1) ended: ok, fail,
    info (unknown), none (killed with their node) -- the commits that met the recovery."""
    invoked = {(e["process"], e["id"]): e["t"] for e in run_events if e["kind"] == "op"
               and e.get("f") == "pdb_store" and e.get("type") == "invoke"}
    ended = {(e["process"], e["id"]): (e["t"], e["type"]) for e in run_events if e["kind"] == "op"
             and e.get("f") == "pdb_store" and e.get("type") in ("ok", "fail", "info")}
    counts = {"in_flight": 0, "ok": 0, "fail": 0, "info": 0, "none": 0}
    for op, t_invoke in invoked.items():
        t_end, outcome = ended.get(op, (None, "none"))
        if (t1 is None or t_invoke < t1) and (t_end is None or t_end >= t0):
            counts["in_flight"] += 1
            counts[outcome] += 1
    return counts
