"""A synthetic rolling-upgrade history for the checker and report tests: explicit times, 3 nodes.

Two clients (a writer and a reader) succeed every 0.1 s from t=1 to t=``end``; each step
upgrades one node in 5 s (its phases one after the other) and the daemon_running captures name
the build each node runs.  Tests add gaps, failures and odd captures on top.
"""

from __future__ import annotations

from ctdblab import events
from ctdblab.history import History, read_history
from ctdblab.scenarios.upgrade_checks import Targets, check_upgrade
from ctdblab.scenarios.upgrade_plan import make_plan

OLD_EXE = "/run/x/builds/from-0.1.0/sbin/pyctdbd"
NEW_EXE = "/run/x/builds/to-0.1.0.post1/sbin/pyctdbd"
BUILDS = [{"label": "from", "version": "0.1.0", "revision": "working tree", "executable": OLD_EXE},
          {"label": "to", "version": "0.1.0.post1", "revision": "working tree", "executable": NEW_EXE}]
CLIENTS = ("smb-writer-198.19.8.1", "smb-reader-198.19.8.1")
PHASE_S = {"disable": 0.5, "stop": 0.5, "install": 0.1, "start": 1.5, "enable": 0.4, "settle": 2.0}
STEP_S = 5.0
FIRST_STEP_T = 3.0


def step_begin(index: int) -> float:
    return FIRST_STEP_T + index * STEP_S


class Upgrade:
    def __init__(self, tmp_path, nodes: int = 3, targets: Targets | None = None,
                 builds: list[dict] | None = None, old_exe: str = OLD_EXE):
        self.path = tmp_path / "history.jsonl"
        self.history = History(self.path)
        self.history.run = 0
        self.plan = make_plan(nodes)
        self.nodes = nodes
        self.pid = {p: 100 + p for p in range(nodes)}
        self.history.record(events.run_start(
            0, scenario="upgrade", daemon="pyctdbd", t=0.0, nodes=nodes,
            plan=[s.as_dict() for s in self.plan], builds=builds or BUILDS,
            public_ips=["198.19.8.1"], targets=(targets or Targets()).as_dict()))
        for p in range(nodes):
            self.running(0.5, p, old_exe)

    def running(self, t: float, node: int, exe: str, pid: int | None = None) -> None:
        self.history.record(events.daemon_running(node, pid=pid or self.pid[node],
                                                  cmdline=["/usr/bin/python3", "-I", exe],
                                                  version=None, build=None, t=t))

    def step(self, index: int, *, fail_in: str | None = None, new_exe: str = NEW_EXE,
             same_pid: bool = False) -> None:
        node = self.plan[index].node
        t = step_begin(index)
        self.history.record(events.upgrade_phase(node, "step", "begin", t=t, index=index))
        for phase in self.plan[index].phases:
            self.history.record(events.upgrade_phase(node, phase, "begin", t=t, index=index))
            t += PHASE_S[phase]
            if phase == fail_in:
                self.history.record(events.upgrade_phase(node, phase, "fail", t=t, index=index,
                                                         error="timed out"))
                self.history.record(events.upgrade_phase(node, "step", "fail", t=t, index=index,
                                                         error=f"{phase}: timed out"))
                return
            if phase == "start":
                if not same_pid:
                    self.pid[node] += 1000
                self.running(t - 0.01, node, new_exe)
            self.history.record(events.upgrade_phase(node, phase, "end", t=t, index=index))
        self.history.record(events.upgrade_phase(node, "step", "end", t=t, index=index))

    def all_steps(self) -> None:
        for i in range(len(self.plan)):
            self.step(i)

    def clients(self, end: float, *, gaps: dict[str, tuple[float, float]] | None = None) -> None:
        """Every client succeeds every 0.1 s from t=1 to ``end``, except inside its gap."""
        gaps = gaps or {}
        for process in CLIENTS:
            f = "smb_write_block" if "writer" in process else "smb_open_read_close"
            n, t = 0, 1.0
            while t <= end + 1e-9:
                a, b = gaps.get(process, (None, None))
                if a is None or not a < t < b:
                    n += 1
                    self.history.record(events.op_ok(process, f, n, latency_s=0.005,
                                                     target="198.19.8.1", role="client", t=t))
                t = round(t + 0.1, 6)

    def fail(self, t: float, process: str = CLIENTS[1], **fields) -> None:
        self.history.record(events.op_fail(process, "smb_open_read_close", 9999, latency_s=0.01,
                                           error="SMBConnectionClosed: closed", target="198.19.8.1",
                                           role="client", t=t, **fields))

    def window_end(self, t: float) -> None:
        self.history.record(events.window_end(t=t))

    def check(self) -> dict:
        self.history.close()
        return check_upgrade(read_history(self.path))
