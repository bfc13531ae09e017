"""The failover's data workload (``--check-data``): who writes what, and the reads afterwards.

Before the fault (``start``):

- one ``smb_writer`` per node, on the client, through that node's (lowest) public IP — the
  victim's writer through the vip — each with a file of its own, ``datacheck-r<run>-n<pnn>.bin``;
- ``smb_contend``: a client holds ``datacheck-r<run>-contend.bin`` through the vip (open for
  writing, exclusive byte-range lock), and at the cut a client through a survivor's IP starts
  asking for the same file with a deny-write open and the same lock;
- one ``pdb_writer`` inside every node: ``ctdb pstore`` of numbered keys ``r<run>.n<pnn>.<n>``
  into the persistent database DB (attached once per cluster).

The writers keep going through the power-on and the rejoin (commits racing the recovery that
brings the victim back; the SMB writers through a failback).  Once the victim rejoined
(``after_rejoin``) a ``pdb_writer`` also commits from the victim itself; when it and every SMB
writer have had a write acknowledged since the rejoin (or AFTER_REJOIN_S passed) all writers
stop, and the final reads follow: ``smb_readback`` of every writer's file through a survivor's
IP, and ``pdb_dump`` of every node's own copy of DB.  All of it lands in the history as ops and
captures; ``datacheck.check_data`` judges it.
"""

from __future__ import annotations

import time
from typing import Callable

from ctdblab import events
from ctdblab.cluster.lab import ClusterNotReady, LabCluster
from ctdblab.cluster.samba import SHARE, SMB_PASSWORD, SMB_USER
from ctdblab.history import History

from .proberun import ProbeProcess

DB = "ctdblab_check.tdb"
FINAL_READ_TIMEOUT_S = 90.0
AFTER_REJOIN_S = 20.0
REJOINED_COMMITS = 3

ProbeLauncher = Callable[..., ProbeProcess]


def writer_file(run: int, pnn: int) -> str:
    return f"datacheck-r{run}-n{pnn}.bin"


class DataWorkload:
    def __init__(self, cluster: LabCluster, history: History, run: int, launch: ProbeLauncher):
        self.cluster = cluster
        self.history = history
        self.run = run
        self.launch = launch        # (host, module, args, name) -> a probe the run stops at window end
        self.writers: list[tuple[ProbeProcess, str, str]] = []   # probe, file, writer id
        self.running: list[ProbeProcess] = []                     # writers, stopped by stop_writers
        self.contend: ProbeProcess | None = None

    def _writer(self, host, module: str, args: list[str], process: str) -> ProbeProcess:
        probe = ProbeProcess(host, module, args + ["--process", process], name=process)
        self.running.append(probe)
        return probe

    def stop_writers(self) -> None:
        """Stop every writer and put what it recorded into the history (idempotent)."""
        while self.running:
            probe = self.running.pop(0)
            probe.stop()
            self.history.extend(probe.events)
            # -9: killed with its node at the power-off
            if probe.proc.returncode not in (0, None, -15, -9) and probe.host.powered:
                self.history.record(events.note(probe.describe_failure()))

    @staticmethod
    def attach(cluster: LabCluster) -> None:
        """Attach DB as persistent (idempotent; the daemon spreads it to every node)."""
        node = cluster.any_powered()
        result = node.run(["ctdb", "attach", DB, "persistent"], timeout=30)
        if result.returncode != 0:
            raise ClusterNotReady(f"ctdb attach {DB} persistent failed on node {node.index}: "
                                  f"{(result.stderr or result.stdout).strip()}")

    def start(self, victim: int, vip: str, survivor_ip: str, ips: dict[str, int]) -> None:
        cluster = self.cluster
        client = cluster.client(0)
        smb = ["--user", SMB_USER, "--password", SMB_PASSWORD, "--share", SHARE]
        per_node = {}
        for ip, pnn in sorted(ips.items()):
            if pnn >= 0:
                per_node.setdefault(pnn, ip)
        per_node[victim] = vip
        for pnn, ip in sorted(per_node.items()):
            name, wid = writer_file(self.run, pnn), f"r{self.run}-n{pnn}"
            role = "victim" if pnn == victim else "survivor"
            probe = self._writer(client, "smb_writer", [ip, *smb, "--file", name, "--writer", wid,
                                                        "--role", role],
                                 f"smb-writer-n{pnn}")
            self.writers.append((probe, name, wid))
        self.contend = self.launch(client, "smb_contend",
                                   [vip, *smb, "--file", f"datacheck-r{self.run}-contend.bin",
                                    "--survivor", survivor_ip], "smb-contend")
        for node in cluster.nodes:
            self._writer(node, "pdb_writer", ["--db", DB, "--prefix", f"r{self.run}.n{node.index}",
                                              "--node", str(node.index)],
                         f"pdb-writer-{node.index}")
        ready = self.contend.wait_for(lambda e: e.get("what") in ("ready", "hold_failed", "stop"), 30)
        if ready is None or ready.get("what") != "ready":
            self.history.record(events.note("smb_contend did not get ready: "
                                            + self.contend.describe_failure()))

    def trigger(self) -> None:
        """At the cut: the survivor's client starts contending."""
        if self.contend is not None:
            self.contend.signal()

    def resumed(self, t_cut: float) -> bool:
        """Every writer had a block acknowledged after the cut, and the contention was settled."""
        for probe, _, _ in self.writers:
            if probe.find(lambda e: e.get("f") == "smb_write_block" and e.get("type") == "ok"
                          and e["t"] - e.get("latency_s", 0) > t_cut) is None:
                return False
        return self.contend is None or self.contend.find(
            lambda e: e.get("what") in ("done", "stop")) is not None

    def after_rejoin(self, victim: int, survivor_ip: str) -> None:
        """Commit from the rejoined victim too, let every writer write once more, stop them all,
        then read everything back."""
        t_rejoined = time.time()
        committer = self._writer(self.cluster.node(victim), "pdb_writer",
                                 ["--db", DB, "--prefix", f"r{self.run}.n{victim}.rejoined",
                                  "--node", str(victim)], f"pdb-writer-{victim}-rejoined")

        def acked_since(probe: ProbeProcess, f: str) -> int:
            return sum(1 for e in list(probe.events) if e.get("f") == f and e.get("type") == "ok"
                       and e["t"] - e.get("latency_s", 0) > t_rejoined)

        deadline = time.time() + AFTER_REJOIN_S
        while time.time() < deadline:
            if acked_since(committer, "pdb_store") >= REJOINED_COMMITS and all(
                    acked_since(probe, "smb_write_block") > 0 for probe, _, _ in self.writers):
                break
            time.sleep(0.2)
        else:
            self.history.record(events.note(
                f"after the rejoin not every writer had a write acknowledged within "
                f"{AFTER_REJOIN_S:.0f} s"))
        self.stop_writers()
        self.final_reads(survivor_ip)

    def final_reads(self, survivor_ip: str) -> None:
        """Read back every writer's file and every node's copy of DB into the history."""
        cluster = self.cluster
        files = [f"{name}:{wid}" for _, name, wid in self.writers]
        probes = [ProbeProcess(cluster.client(0), "smb_readback",
                               [survivor_ip, "--password", SMB_PASSWORD, "--user", SMB_USER,
                                "--share", SHARE, *sum((["--file", f] for f in files), [])],
                               name="smb-readback")]
        prefixes = sum((["--prefix", f"r{self.run}.n{n.index}."] for n in cluster.nodes), [])
        for node in cluster.nodes:
            probes.append(ProbeProcess(node, "pdb_dump", ["--db", DB, "--node", str(node.index),
                                                          *prefixes], name=f"pdb-dump-{node.index}"))
        def answered(e: dict) -> bool:
            return e.get("what") == "stop" or e.get("probe") == "pdb_dump"

        for probe in probes:
            probe.wait_for(answered, FINAL_READ_TIMEOUT_S)
            probe.stop()            # joins its reader: every line it wrote is in probe.events
            if probe.find(answered) is None:
                self.history.record(events.note(f"final read {probe.name} gave no answer: "
                                                + probe.describe_failure()))
            self.history.extend(probe.events)
