"""Failover: hard-reset the node holding a public IP and measure what clients saw.

One cluster serves all repetitions.  Each repetition:

1. waits until the cluster is healthy, picks the victim (the leader, the highest-PNN non-leader,
   or a given PNN) and a public IP it hosts (the *vip*);
2. starts the probes before the fault: ``ping -D -i 0.02 vip``; three TCP connections blocked in
   recv() — to smbd on vip:445 (smbd registers it with the daemon), to a plain listener on
   vip:7777 that nobody registers, and to vip:7778 registered with ``ctdb addtickle`` on every
   node; an SMB session reading every 0.2 s through the vip; open+read+close every 0.1 s through
   a survivor's IP (the survivor stall); and idle staggered SMB retriers for the vip;
3. powers the victim off (sysrq-b style: cut, kill, delete links) and triggers the retriers;
4. polls a survivor's ``ctdb -X status`` / ``ctdb -X ip all`` at 10 Hz and waits until the IP
   moved and every probe resolved (or the observation window ends);
5. powers the victim on and waits until it is OK again (rejoin) and hosts an IP (failback);
6. reads the survivors' daemon logs for the internal steps, and computes the metrics
   (checkers.py) from the run's history alone.

With ``check_data`` the run also carries the data workload (datarun.py: SMB block writers
through every node's IP, a share-mode/lock contender, ``ctdb pstore`` loops on every node),
waits in step 4 until every writer wrote again after the cut; its writers keep going through
step 5, and once the victim rejoined (and committed too) every file and every node's
persistent copy is read back; datacheck.py gives the verdict.

With keepalived (no ``ctdb`` tool, no leader, no membership, no tickles) the run differs where
it must: the victim is the highest PNN hosting an IP (``--victim leader`` is refused), no
``addtickle``, the poller records ground-truth IP owners (which node really has each IP
configured) and no node states, the window does not wait for a reset that cannot come but
watches at least ``NO_TICKLE_WATCH_S`` for one, rejoin means the victim has its IP back, and the
start event lists the metrics that do not apply (``not_applicable``) for the checker.

Everything the checker needs is recorded when it happens: the run's start event names the
victim and the vip, the nemesis records the power-off's cut and kill and the power-on, and a
``window_end`` event closes the observation.  The times the orchestrator keeps in memory only
steer the run (deadlines); the metrics never see them.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ctdblab import events
from ctdblab.chaos import Nemesis, PowerOff, PowerOn
from ctdblab.cluster.daemonlog import EVENTS, read_log
from ctdblab.cluster.lab import ClusterNotReady, LabCluster
from ctdblab.cluster.etcd_lock import get_lab_lock
from ctdblab.cluster.launchers import get_launcher
from ctdblab.cluster.samba import SHARE, SMB_PASSWORD, SMB_USER
from ctdblab.errors import UserError
from ctdblab.history import History, events_of_run, read_history
from ctdblab.stats import summarize

from .checkers import METRICS, PLAIN_PORT, SMB_PORT, TICKLED_PORT, failover_run_record
from .datacheck import check_data, summarize_data
from .datarun import DataWorkload
from .proberun import ProbeProcess
from .recovery_faults import SecondFault, check_then, daemon_env, landed_mid_recovery

PROBE_FILE = "failover-probe.bin"
PROBE_FILE_SIZE = 1 << 20
POLL_INTERVAL = 0.1
SETTLE_S = 2.0
AFTER_RESOLVED_S = 2.0
REJOIN_TIMEOUT_S = 180.0
NO_TICKLE_WATCH_S = 10.0   # a daemon without tickles: watch this long for a reset anyway


def parse_victim(spec: str, nodes: int) -> str | int:
    if spec in ("leader", "nonleader"):
        return spec
    try:
        pnn = int(spec)
    except ValueError:
        raise UserError(f"--victim takes leader, nonleader or a PNN, not {spec!r}") from None
    if not 0 <= pnn < nodes:
        raise UserError(f"--victim {pnn}: there is no such node (PNNs are 0..{nodes - 1})")
    return pnn


def observation_window(tunables: str) -> float:
    """How long to watch after the cut: CTDB's defaults take ~31 s, aggressive ~6 s."""
    return 120.0 if tunables == "default" else 60.0


def run_failover(*, daemon: str, nodes: int, repeat: int, tunables: str, victim: str,
                 bw_mbit: float | None, out: Path, progress: Callable[[str], None],
                 clustered_smbd: bool | None = None, check_data_loss: bool = False,
                 inventory=None, allow_hard_reset: bool = False, lock: str = "file",
                 then: str | None = None) -> dict:
    """``inventory`` (cluster/inventory.py) runs it on real hosts over SSH instead of Mininet;
    their hard reset needs ``allow_hard_reset``.  ``then``: a second fault during the recovery
    (recovery_faults.py)."""
    if nodes < 2:
        raise UserError("failover needs at least 2 nodes (a survivor must take the IP)")
    victim_spec = parse_victim(victim, nodes)
    check_then(then, nodes, victim_spec)
    launcher = get_launcher(daemon, smb_clustered=clustered_smbd, lock=get_lab_lock(lock))
    launcher.env.update(daemon_env(daemon) if then else {})
    window = observation_window(tunables)
    cpu0, wall0 = os.times(), time.monotonic()
    runs: list[dict[str, Any]] = []
    history_path = out / "history.jsonl"
    params = {"scenario": "failover", "daemon": daemon, "nodes": nodes, "tunables": tunables,
              "bw_mbit": bw_mbit, "check_data": check_data_loss, "lock": lock,
              **({"then": then, "daemon_env": dict(launcher.env)} if then else {})}
    with History(history_path) as history, \
            LabCluster(nodes, daemon=launcher, tunables=tunables, clients=1, bw_mbit=bw_mbit,
                       workdir=out / "cluster", progress=progress, clustered_smbd=clustered_smbd,
                       inventory=inventory, allow_hard_reset=allow_hard_reset,
                       lock=lock) as cluster:
        params["clustered_smbd"] = cluster.launcher.smb_clustered
        params["not_applicable"] = dict(cluster.launcher.not_applicable)
        cluster.ensure_share_file(PROBE_FILE, PROBE_FILE_SIZE)
        nemesis = Nemesis(cluster, history)
        if check_data_loss:
            DataWorkload.attach(cluster)
        for r in range(repeat):
            history.run = r
            progress(f"failover run {r + 1}/{repeat}")
            FailoverRun(cluster, history, nemesis, victim_spec, window, progress,
                        check_data_loss, then).execute(r, params)
            history.record(events.run_end(r))
            # The checker sees the history alone; its verdict goes to results.json only.
            run_events = events_of_run(read_history(history_path), r)
            run = failover_run_record(run_events)
            if check_data_loss:
                run["data"] = check_data(run_events)
            if then:
                run["second_fault"] = landed_mid_recovery(run_events)
            runs.append(run)
            progress("  " + ", ".join(f"{k[:-2]} {run[k]:.2f}s" for k in METRICS[:6]
                                      if run[k] is not None))
            if check_data_loss:
                progress("  " + data_line(run["data"]))
            if then:
                second = run["second_fault"]
                progress(f"  second fault ({then}): " + (
                    f"took effect {second['after_start_s']:.2f} s into the recovery"
                    if second["verdict"] == "ok" else f"NOT mid-recovery: {second['why']}"))
        history.run = None
    cpu1, wall1 = os.times(), time.monotonic()
    lab_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    # Reaped children: the probes and the `ctdb` status polls (run inside nodes and clients).
    kids_cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    return {
        **params, "victim_spec": victim, "runs": runs,
        "summary": {m: summarize(run.get(m) for run in runs) for m in METRICS},
        **({"data_summary": summarize_data([run["data"] for run in runs])}
           if check_data_loss else {}),
        "lab_overhead": {"cpu_s": round(lab_cpu, 2), "wall_s": round(wall1 - wall0, 1),
                         "cpu_pct_of_one_core": round(100 * lab_cpu / (wall1 - wall0), 2),
                         "probes_and_polls_cpu_s": round(kids_cpu, 2),
                         "probes_and_polls_cpu_pct": round(100 * kids_cpu / (wall1 - wall0), 2)},
    }


def data_line(data: dict) -> str:
    b, c, k = data["blocks"], data["commits"], data["contention"]
    return (f"data {data['verdict']}: blocks acked {b['acked']} lost {b['lost']} "
            f"indeterminate {b['indeterminate']}; commits acked {c['acked']} lost {c['lost']} "
            f"indeterminate {c['indeterminate']}; contention {k['verdict']} "
            f"(wait {k['wait_s']} s, {k['conflicts']} conflicts)"
            + (f"; {data['problems'][0]}" if data["problems"] else ""))


class FailoverRun:
    def __init__(self, cluster: LabCluster, history: History, nemesis: Nemesis,
                 victim_spec: str | int, window: float, progress: Callable[[str], None],
                 check_data_loss: bool = False, then: str | None = None):
        self.cluster = cluster
        self.then = then
        self.history = history
        self.nemesis = nemesis
        self.victim_spec = victim_spec
        self.window = window
        self.progress = progress
        self.probes: list[ProbeProcess] = []
        self.poller: StatePoller | None = None
        self.check_data_loss = check_data_loss
        self.data: DataWorkload | None = None

    # -- the run --------------------------------------------------------------------------------------
    def execute(self, run: int, params: dict[str, Any]) -> None:
        """One repetition; everything it learns goes to the history."""
        cluster = self.cluster
        cluster.wait_healthy(timeout=REJOIN_TIMEOUT_S)
        cluster.wait_until(lambda: all(cluster.smbd_listening(n) for n in cluster.nodes), 60,
                           "smbd listening on every node")
        self.wait_ips_spread()
        leader = cluster.leader() if cluster.launcher.answers_ctdb_tool else None
        second = (SecondFault(self.then, cluster, self.nemesis, self.history)
                  if self.then else None)
        if second is not None:
            second.prepare(leader)
        ips = cluster.ip_all()
        victim = self.choose_victim(leader, ips)
        spared = {victim, -1}      # neither the survivor IP's host nor the observer
        if second is not None:
            spared.add(second.choose_target(victim, leader))
        vip = min(ip for ip, pnn in ips.items() if pnn == victim)
        survivor_ip = min(ip for ip, pnn in ips.items() if pnn not in spared)
        observer = min(n.index for n in cluster.nodes if n.index not in spared)
        role = "leader" if victim == leader else "nonleader"
        self.history.record(events.run_start(
            run, **params, victim=victim, victim_role=role, vip=vip, leader=leader,
            survivor_ip=survivor_ip, observer=observer, ip_owners=ips, window_s=self.window,
            **({"second_target": second.target} if second is not None else {})))
        self.progress(f"  victim node {victim} ({role}) holding {vip}; survivor IP {survivor_ip}")
        self.poller = StatePoller(cluster, observer, self.history)
        self.poller.start()
        try:
            try:
                self.start_probes(victim, vip, survivor_ip)
                if self.check_data_loss:
                    self.data = DataWorkload(cluster, self.history, run, self._data_probe)
                    self.data.start(victim, vip, survivor_ip, ips)
                time.sleep(SETTLE_S)
                if second is not None:
                    second.mark_logs()
                off = self.nemesis.inject(PowerOff(victim))
                if second is not None:
                    second.arm(off["t_cut"], victim)
                self.retry.signal()
                if self.data is not None:
                    self.data.trigger()
                self.wait_resolved(vip, victim, deadline=off["t_cut"] + self.window,
                                   t_cut=off["t_cut"])
                self.history.record(events.window_end())
            finally:
                self.stop_probes()
            self.import_logs(off["t_cut"] - 1.0, victim)
            also = second.restore() if second is not None else []
            self.nemesis.inject(PowerOn(victim))
            for pnn in [victim, *also]:
                self.wait_rejoined(pnn)
            if self.data is not None:
                self.data.after_rejoin(victim, survivor_ip)
        finally:
            if self.data is not None:
                self.data.stop_writers()
            self.poller.stop()

    def wait_ips_spread(self, timeout: float = 60.0) -> None:
        """After a start or a rejoin the daemon may take a moment to give every node an IP."""
        cluster = self.cluster
        want = min(len(cluster.nodes), len(cluster.public_ips()))
        try:
            cluster.wait_until(lambda: len(set(cluster.ip_all().values()) - {-1}) >= want,
                               timeout, "public IPs spread over the nodes")
        except ClusterNotReady as e:
            self.history.record(events.note(str(e)))

    def choose_victim(self, leader: int | None, ips: dict[str, int]) -> int:
        hosting = {pnn for pnn in ips.values() if pnn >= 0}
        if self.victim_spec == "leader":
            if leader is None:
                raise UserError(f"{self.cluster.launcher.name} has no leader: use --victim "
                                "nonleader or a PNN")
            victim = leader
        elif self.victim_spec == "nonleader":
            candidates = hosting - {leader}
            if not candidates:
                raise ClusterNotReady(f"no non-leader node hosts a public IP: {ips}")
            victim = max(candidates)
        else:
            victim = int(self.victim_spec)
        if victim not in hosting:
            raise ClusterNotReady(f"the victim, node {victim}, hosts no public IP: {ips}")
        return victim

    # -- probes -------------------------------------------------------------------------------------
    def start_probes(self, victim: int, vip: str, survivor_ip: str) -> None:
        cluster = self.cluster
        client = cluster.client(0)
        smb = ["--user", SMB_USER, "--password", SMB_PASSWORD, "--share", SHARE,
               "--file", PROBE_FILE]
        listener = self._probe(cluster.node(victim), "tcp_listener",
                               ["--port", str(PLAIN_PORT), "--port", str(TICKLED_PORT)])
        if not listener.wait_for(lambda e: e.get("what") == "listening", 10):
            raise ClusterNotReady(listener.describe_failure())
        self._probe(client, "ping", [vip])
        hold = self._probe(client, "tcp_hold", [f"{vip}:{SMB_PORT}", f"{vip}:{PLAIN_PORT}",
                                                f"{vip}:{TICKLED_PORT}"])
        self._probe(client, "smb_hold", [vip, *smb, "--role", "victim"])
        self._probe(client, "smb_stall", [survivor_ip, *smb, "--role", "survivor"])
        self.retry = self._probe(client, "smb_retry", [vip, *smb, "--role", "victim"])
        tickled = hold.wait_for(lambda e: e.get("what") == "connected"
                                and e.get("target") == f"{vip}:{TICKLED_PORT}", 10)
        if tickled is None or not hold.wait_for(
                lambda e: e.get("what") == "connected" and e.get("target") == f"{vip}:{SMB_PORT}", 10):
            raise ClusterNotReady("the TCP probes could not connect: " + hold.describe_failure())
        client_end = f"{tickled['local_ip']}:{tickled['local_port']}"
        if cluster.launcher.answers_ctdb_tool:
            self.register_tickle(client_end, f"{vip}:{TICKLED_PORT}")
        else:
            self.history.record(events.note(f"{cluster.launcher.name} keeps no tickle list: "
                                            f"{client_end} -> {vip}:{TICKLED_PORT} not registered"))
        if not self.retry.wait_for(lambda e: e.get("what") == "ready", 20):
            raise ClusterNotReady(self.retry.describe_failure())

    def register_tickle(self, client_end: str, server_end: str) -> None:
        """``ctdb addtickle`` on every node, as a service that tracks its clients would."""
        for node in self.cluster.nodes:
            result = node.run(["ctdb", "addtickle", client_end, server_end], timeout=10)
            if result.returncode != 0:
                self.history.record(events.note(f"ctdb addtickle on node {node.index} failed: "
                                                f"{(result.stderr or result.stdout).strip()}"))

    def _probe(self, host, module: str, args: list[str]) -> ProbeProcess:
        probe = ProbeProcess(host, module, args + ["--process", f"{module.replace('_', '-')}"])
        self.probes.append(probe)
        return probe

    def _data_probe(self, host, module: str, args: list[str], process: str) -> ProbeProcess:
        probe = ProbeProcess(host, module, args + ["--process", process], name=process)
        self.probes.append(probe)
        return probe

    def stop_probes(self) -> None:
        for probe in self.probes:
            probe.stop()
            self.history.extend(probe.events)
            if probe.proc.returncode not in (0, None, -15) and probe.host.powered:
                self.history.record(events.note(probe.describe_failure()))
        self.probes.clear()

    def wait_resolved(self, vip: str, victim: int, deadline: float, t_cut: float) -> None:
        """Until the IP moved and every probe saw the outcome (then ``AFTER_RESOLVED_S`` more:
        the run is *settled*), or the window ends.  A daemon that sends no tickle ACK cannot
        reset the idle client: its run settles without that reset, and the probes keep
        watching for it until ``NO_TICKLE_WATCH_S`` after the cut."""
        probes = {p.name: p for p in self.probes}
        tickles = self.cluster.launcher.sends_tickles

        def outcome() -> tuple[bool, bool]:
            """(failover over as far as the run waits for it, the idle client on 445 saw its end)"""
            moved = self.poller.owner(vip) not in (None, -1, victim)
            hold = probes["tcp_hold"]
            smb445 = hold.find(lambda e: e.get("target") == f"{vip}:{SMB_PORT}"
                               and e.get("what") in ("reset", "eof", "error", "timeout"))
            # A probe that stopped has nothing more to tell: waiting on it only burns the window.
            smb445 = smb445 or hold.find(lambda e: e.get("what") == "stop")
            retried = probes["smb_retry"].find(lambda e: e.get("kind") == "op" and e.get("type") == "ok")
            data_resumed = self.data is None or self.data.resumed(t_cut)
            over = (moved and retried is not None and data_resumed
                    and (smb445 is not None or not tickles))
            return over, smb445 is not None

        settle_at: float | None = None
        recorded = False
        while time.time() < deadline:
            now = time.time()
            over, reset_seen = outcome()
            if over and settle_at is None:
                settle_at = now + AFTER_RESOLVED_S
            if settle_at is not None and now >= settle_at:
                if not recorded:
                    self.history.record(events.settled())
                    recorded = True
                # No tickle ACK will come from keepalived (lab.md Part C): watch a while, not forever.
                if reset_seen or now >= t_cut + NO_TICKLE_WATCH_S:
                    return
            time.sleep(0.1)

    # -- after the fault ------------------------------------------------------------------------------
    def import_logs(self, since: float, victim: int) -> None:
        """The survivors' log lines that mark failover steps, as history state events."""
        cluster = self.cluster
        addr_to_pnn = {cluster.plan.private_ip(n.index): n.index for n in cluster.nodes}
        for node in cluster.nodes:
            if node.index == victim:
                continue
            for line in read_log(cluster.daemon_log(node), since=since):
                for name, pattern in EVENTS.items():
                    m = pattern.search(line.message)
                    if not m:
                        continue
                    groups = {k: v for k, v in m.groupdict().items() if v is not None}
                    fields: dict[str, Any] = {}
                    if name == "detect":
                        dead = groups.get("pnn")
                        fields["dead_node"] = int(dead) if dead else addr_to_pnn.get(groups.get("addr"))
                    if "ip" in groups:
                        fields["ip"] = groups["ip"]
                    self.history.record(events.log_line(node.index, name, line.message[:300],
                                                        line.program, t=line.t, **fields))

    def wait_rejoined(self, victim: int) -> None:
        cluster = self.cluster
        deadline = time.time() + REJOIN_TIMEOUT_S
        membership = cluster.launcher.answers_ctdb_tool     # keepalived: the IP back is all there is
        while time.time() < deadline:
            if (not membership or self.poller.state(victim) == "OK") \
                    and victim in self.poller.owners().values():
                break
            time.sleep(0.1)
        else:
            self.history.record(events.note(f"node {victim} did not rejoin and get an IP back "
                                            f"within {REJOIN_TIMEOUT_S:.0f} s of power-on"))
            return
        node = cluster.node(victim)
        cluster.wait_until(lambda: cluster.smbd_listening(node), 60, f"smbd on node {victim}")


class StatePoller(threading.Thread):
    """10 Hz ``ctdb -X status`` and ``ctdb -X ip all`` on one node; records every change.
    Without a ctdb tool (keepalived): the IP owners as really configured, no node states."""

    def __init__(self, cluster: LabCluster, observer: int, history: History):
        super().__init__(daemon=True, name="state-poller")
        self.cluster = cluster
        self.observer = observer
        self.history = history
        self._states: dict[int, str] = {}
        self._owners: dict[str, int] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            t0 = time.time()
            try:
                status = (self.cluster.status(self.observer)
                          if self.cluster.launcher.answers_ctdb_tool else None)
                owners = self.cluster.ip_all(self.observer)
            except Exception:      # noqa: BLE001 - a busy or recovering daemon; try again
                status, owners = None, None
            t = time.time()
            with self._lock:
                for node in status or ():
                    state = node.state()
                    if self._states.get(node.pnn) != state:
                        self._states[node.pnn] = state
                        self.history.record(events.node_state(self.observer, node.pnn, state, t=t))
                for ip, pnn in (owners or {}).items():
                    if self._owners.get(ip) != pnn:
                        self._owners[ip] = pnn
                        self.history.record(events.ip_owner(self.observer, ip, pnn, t=t))
            self._halt.wait(max(0.0, POLL_INTERVAL - (time.time() - t0)))

    def state(self, pnn: int) -> str | None:
        with self._lock:
            return self._states.get(pnn)

    def owner(self, ip: str) -> int | None:
        with self._lock:
            return self._owners.get(ip)

    def owners(self) -> dict[str, int]:
        with self._lock:
            return dict(self._owners)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
