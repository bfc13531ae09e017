"""Ground-truth sampling during a scenario: what is really configured, not what a daemon says.

``TruthSampler(cluster, history, period)`` is a thread that, every ``period`` seconds, records one
``capture``/``truth``/``sample`` event (``events.truth_sample``) with, per node:

- the public IPs configured in the node's namespace (``ip -j -4 addr``),
- the leader its daemon names (``ctdb leader``) and the node states in its ``ctdb -X status``,
  each under ``timeout``: a frozen or hung daemon is recorded as no answer (null), never waited
  for,
- the CPU seconds of its daemon's processes (read from ``/proc`` on the host) and the size of
  its daemon log (a stat on the host).

Cost: one ``mnexec … sh`` per node per round, all nodes in parallel (the shell runs ``ip`` and
two ``ctdb`` calls); daemon PIDs are looked up by namespace only when a known one is gone or
every ``PID_REFRESH_S``.  ``cost()`` reports the sampler's CPU: its thread plus every child the
orchestrator reaped meanwhile — the shells, the ARP probe, and also the nemesis' few ``nft`` and
daemon-start commands, so it is an upper bound.

Alongside runs the ``arp`` probe in a client (``ArpWatcher``), whose rounds are copied into the
history as they arrive: who answers ARP for each public IP as a client sees it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import time
from typing import Any

from ctdblab import events
from ctdblab.chaos import daemon_processes
from ctdblab.cluster.ctdbtool import parse_status
from ctdblab.cluster.lab import LabCluster
from ctdblab.cluster.procs import netns_of, node_env
from ctdblab.history import History

from .proberun import ProbeProcess

DEFAULT_PERIOD_S = 0.5
CTDB_ANSWER_TIMEOUT_S = 1.0     # a daemon that answers slower than this is "no answer"
SHELL_TIMEOUT_S = 4.0           # the whole per-node shell (ip + two ctdb calls) at worst
PID_REFRESH_S = 5.0
_SEP = "@@ctdblab@@"


def node_script(timeout_s: float = CTDB_ANSWER_TIMEOUT_S) -> str:
    """The one shell command run inside a node per round; sections split by a marker line."""
    t = f"{timeout_s:g}"
    return "; ".join([
        "ip -j -4 addr show 2>/dev/null", f"echo {_SEP}",
        f"timeout -k 0.3 {t} ctdb leader 2>/dev/null", f"echo {_SEP}$?",
        f"timeout -k 0.3 {t} ctdb -X status 2>/dev/null", f"echo {_SEP}$?",
    ])


def parse_node_output(text: str, public_ips: set[str]) -> dict[str, Any]:
    """``addrs``, ``leader`` and ``status`` from what ``node_script`` printed."""
    parts = text.split(_SEP)
    result: dict[str, Any] = {"addrs": None, "leader": None, "status": None}
    if len(parts) < 3:
        return result
    try:
        links = json.loads(parts[0] or "[]")
        result["addrs"] = sorted({a.get("local") for link in links for a in link.get("addr_info", [])
                                  if a.get("local") in public_ips})
    except (ValueError, AttributeError, TypeError):
        pass
    # parts: [ip json, leader output, "<leader rc>\n" + status output, "<status rc>\n"]
    leader_rc, _, status_text = parts[2].partition("\n")
    leader_text = parts[1].strip()
    if leader_rc.strip() == "0" and leader_text.lstrip("-").isdigit():
        result["leader"] = int(leader_text)
    if len(parts) >= 4 and parts[3].strip() == "0":
        try:
            result["status"] = {str(s.pnn): s.state() for s in parse_status(status_text)}
        except ValueError:
            pass
    return result


class TruthSampler(threading.Thread):
    def __init__(self, cluster: LabCluster, history: History,
                 period: float = DEFAULT_PERIOD_S):
        super().__init__(daemon=True, name="truth-sampler")
        self.cluster = cluster
        self.history = history
        self.period = period
        self.public_ips = set(cluster.public_ips())
        self.latest: dict[str, Any] | None = None        # the last sample event
        self.rounds = 0
        self._pids: dict[int, list[int]] = {}
        self._pids_at: dict[int, float] = {}
        self._halt = threading.Event()
        self._cpu0 = self._cpu1 = self._children0 = 0.0
        self._wall0 = self._wall1 = 0.0
        self.arp: ArpWatcher | None = None

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        self._wall0 = time.monotonic()
        self._cpu0 = time.thread_time()
        self._children0 = _children_cpu()
        while not self._halt.is_set():
            t0 = time.monotonic()
            try:
                self.sample_once()
            except Exception as e:  # noqa: BLE001 - a sampler must not die mid-soak
                self.history.record(events.note(f"truth sampler round failed: {e!r}"))
            if self.arp is not None:
                self.arp.flush()
            self._halt.wait(max(0.0, self.period - (time.monotonic() - t0)))
        self._cpu1 = time.thread_time()
        self._wall1 = time.monotonic()

    def sample_once(self) -> dict[str, Any]:
        t = time.time()
        procs: dict[int, subprocess.Popen | None] = {}
        script = node_script()
        for node in self.cluster.nodes:
            if node.powered and node.pid is not None:
                try:
                    procs[node.index] = subprocess.Popen(
                        ["mnexec", "-a", str(node.pid), "sh", "-c", script],
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL, text=True, env=node_env(),
                        start_new_session=True)
                except OSError:
                    procs[node.index] = None
        nodes: dict[str, dict[str, Any]] = {}
        for node in self.cluster.nodes:
            entry: dict[str, Any] = {"powered": node.powered}
            proc = procs.get(node.index)
            if node.index in procs:
                entry.update(self._collect(proc))
                entry["cpu_s"] = self._daemon_cpu(node.index)
                entry["log_bytes"] = self._log_bytes(node)
            nodes[str(node.index)] = entry
        sample = events.truth_sample(nodes, t=t)
        self.history.record(sample)
        self.latest = sample
        self.rounds += 1
        return sample

    def _collect(self, proc: subprocess.Popen | None) -> dict[str, Any]:
        if proc is None:
            return {"addrs": None, "leader": None, "status": None}
        try:
            out, _ = proc.communicate(timeout=SHELL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            out, _ = proc.communicate()
        return parse_node_output(out or "", self.public_ips)

    # -- daemon CPU and log, from the host ------------------------------------------------------
    def _daemon_cpu(self, pnn: int) -> float | None:
        node = self.cluster.node(pnn)
        pids = self._pids.get(pnn, [])
        stale = (not pids or time.monotonic() - self._pids_at.get(pnn, 0) > PID_REFRESH_S
                 or any(netns_of(p) != node.netns for p in pids))
        if stale:
            try:
                pids = list(daemon_processes(self.cluster, pnn))
            except Exception:  # noqa: BLE001 - a node powering off under us
                pids = []
            self._pids[pnn], self._pids_at[pnn] = pids, time.monotonic()
        if not pids:
            return None
        total, tick = 0.0, os.sysconf("SC_CLK_TCK")
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                continue
        return round(total, 3)

    def _log_bytes(self, node) -> int | None:
        try:
            return self.cluster.launcher.log_path(node).stat().st_size
        except (OSError, AttributeError):
            return None

    # -- control --------------------------------------------------------------------------------
    def start_arp(self, client_index: int = 0) -> None:
        self.arp = ArpWatcher(self.cluster, self.history, self.period, client_index)

    def stop(self) -> None:
        self._halt.set()
        self.join(SHELL_TIMEOUT_S + 2)
        if self.arp is not None:
            self.arp.stop()

    def cost(self) -> dict[str, float]:
        """CPU the sampler spent: its own thread and the shells it ran (reaped children).
        Children's CPU is process-wide, so it includes other children reaped meanwhile."""
        wall = max(1e-9, (self._wall1 or time.monotonic()) - self._wall0)
        own = (self._cpu1 or time.thread_time()) - self._cpu0
        kids = _children_cpu() - self._children0
        return {"rounds": self.rounds, "wall_s": round(wall, 1), "thread_cpu_s": round(own, 2),
                "children_cpu_s": round(kids, 2),
                "cpu_pct_of_one_core": round(100 * (own + kids) / wall, 1)}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class ArpWatcher:
    """The ``arp`` probe in a client, its rounds copied into the history as they come."""

    def __init__(self, cluster: LabCluster, history: History, period: float, client_index: int):
        client = cluster.client(client_index)
        iface = cluster.backend.iface(client, "public")
        self.history = history
        self.probe = ProbeProcess(client, "arp", ["--iface", iface, "--period", f"{period:g}",
                                                  *cluster.public_ips()])
        self._copied = 0
        self._lock = threading.Lock()
        self.latest: dict[str, Any] | None = None

    def flush(self) -> None:
        with self._lock:
            new = self.probe.events[self._copied:]
            self._copied += len(new)
        if new:
            self.history.extend(new)
            answers = [e for e in new if e.get("what") == "answers"]
            if answers:
                self.latest = answers[-1]

    def stop(self) -> None:
        self.probe.stop()
        self.flush()
        if self.probe.proc.returncode not in (0, None, -15):
            self.history.record(events.note(self.probe.describe_failure()))


def describe_macs(cluster: LabCluster) -> dict[str, int]:
    """MAC of each node's public interface -> PNN, for the history's run start (the checkers map
    ARP answers to nodes with it)."""
    macs: dict[str, int] = {}
    for node in cluster.nodes:
        iface = cluster.backend.iface(node, "public")
        mac = node.macs.get(iface)
        if mac:
            macs[mac.lower()] = node.index
    return macs


__all__ = ["TruthSampler", "ArpWatcher", "describe_macs", "node_script", "parse_node_output"]
